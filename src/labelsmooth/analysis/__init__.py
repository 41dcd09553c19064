"""Analysis of trained classifiers: the penultimate-layer picture and knowledge distillation.

``penultimate``: projection of activations onto the plane through three class templates and
measures of cluster tightness (Müller et al. 2019, Section 2). ``distill``: the distillation loss
and a teacher's smoothness index. A pure library: it imports only the core package. The lab uses
it for the penultimate-layer section of its reports (``labelsmooth.lab.report.penultimate``) and
for the distillation experiment (``labelsmooth.lab.distill``, ``labelsmooth distill``).
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
