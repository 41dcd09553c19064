"""Analysis of trained classifiers: the penultimate-layer picture and knowledge distillation.

``penultimate``: projection of activations onto the plane through three class templates and
measures of cluster tightness (Müller et al. 2019, Section 2). ``distill``: the distillation loss
and a teacher's smoothness index. Two modules import the lab and are not imported here: ``lab``
(the penultimate section of lab reports) and ``distill_lab`` (the distillation experiment,
``labelsmooth distill``).
"""

from __future__ import annotations

from .distill import distillation_loss, smoothness_index
from .penultimate import (
    ClusterMeasures,
    ProjectionPanel,
    TemplateSubspace,
    cluster_measures,
    plot_projection_grid,
    template_plane,
    template_subspace,
)

__all__ = [
    "ClusterMeasures",
    "ProjectionPanel",
    "TemplateSubspace",
    "cluster_measures",
    "distillation_loss",
    "plot_projection_grid",
    "smoothness_index",
    "template_plane",
    "template_subspace",
]
