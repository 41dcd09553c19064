"""Analysis of trained classifiers: representations, distillation, robustness and shift.

``penultimate``: projection of activations onto the plane through three class templates and
measures of cluster tightness (Müller et al. 2019, Section 2). ``distill``: the distillation loss
and a teacher's smoothness index. ``representation``: linear probes on frozen features (transfer
to held-out classes) and class collapse (NC1). ``robustness``: FGSM and PGD attacks in pixel
space, white-box and transfer, and robust accuracy. ``shift``: rotated and noisy images, scores
for out-of-distribution inputs and their AUROC. ``pixels``: the pixel space those two work in.
A pure library: it imports only the core package. The lab uses it for its report sections and
experiments (``labelsmooth.lab``).
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
from .pixels import Standardize, check_pixels
from .representation import (
    ClassCollapse,
    ClassSubset,
    LinearProbe,
    ProbeChoice,
    choose_linear_probe,
    class_collapse,
    fit_linear_probe,
    select_classes,
    split_classes,
)
from .robustness import (
    ATTACK_LOSSES,
    ATTACKS,
    Attack,
    attack_loss,
    correct_predictions,
    craft_adversarial,
    fgsm,
    margin_loss,
    pgd,
    robust_correct,
)
from .shift import OOD_SCORES, SHIFTS, auroc, detection_auroc, energy, max_softmax, ood_score, rotate, shift_images

__all__ = [
    "ATTACKS",
    "ATTACK_LOSSES",
    "Attack",
    "ClassCollapse",
    "ClassSubset",
    "ClusterMeasures",
    "LinearProbe",
    "OOD_SCORES",
    "ProbeChoice",
    "ProjectionPanel",
    "SHIFTS",
    "Standardize",
    "TemplateSubspace",
    "attack_loss",
    "auroc",
    "check_pixels",
    "choose_linear_probe",
    "class_collapse",
    "cluster_measures",
    "correct_predictions",
    "craft_adversarial",
    "detection_auroc",
    "distillation_loss",
    "energy",
    "fgsm",
    "fit_linear_probe",
    "margin_loss",
    "max_softmax",
    "ood_score",
    "pgd",
    "plot_projection_grid",
    "robust_correct",
    "rotate",
    "select_classes",
    "shift_images",
    "smoothness_index",
    "split_classes",
    "template_plane",
    "template_subspace",
]
