"""Projection onto the plane through three class templates, and the cluster measures.

References are independent: constructed geometry with known answers, NumPy/SciPy formulas.
"""

import itertools

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from labelsmooth.analysis.penultimate import (
    ProjectionPanel,
    cluster_measures,
    plot_projection_grid,
    template_plane,
    template_subspace,
)


def random_rotation(dim: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def known_templates(dim: int = 6, seed: int = 0):
    """Templates (0,0,2,0..), (3,0,2,0..), (0,4,2,0..) rotated by a random orthogonal matrix."""
    w = np.zeros((3, dim))
    w[:, 2] = 2.0
    w[1, 0] = 3.0
    w[2, 1] = 4.0
    rotation = random_rotation(dim, seed)
    return w @ rotation.T, rotation


def test_activations_on_templates_project_to_known_coordinates():
    templates, rotation = known_templates()
    off_plane = np.zeros((3, templates.shape[1]))
    off_plane[:, 3:] = np.random.default_rng(1).standard_normal((3, templates.shape[1] - 3))
    activations = np.concatenate([templates, templates + off_plane @ rotation.T])
    coords = template_plane(templates, (0, 1, 2)).project(activations).numpy()
    expected = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]] * 2)
    np.testing.assert_allclose(coords, expected, atol=1e-12)


def test_point_in_the_plane_has_its_affine_coordinates():
    templates, _ = known_templates(seed=3)
    s, t = 0.25, -1.5
    point = templates[0] + s * (templates[1] - templates[0]) + t * (templates[2] - templates[0])
    coords = template_plane(torch.from_numpy(templates).float(), (0, 1, 2)).project(point[None])
    np.testing.assert_allclose(coords.numpy(), [[3 * s, 4 * t]], atol=1e-5)


def test_basis_is_orthonormal_and_spans_the_template_differences():
    w = np.random.default_rng(2).standard_normal((10, 50))
    basis = template_plane(w, (4, 7, 1)).basis.numpy()
    np.testing.assert_allclose(basis.T @ basis, np.eye(2), atol=1e-12)
    for difference in (w[7] - w[4], w[1] - w[4]):
        np.testing.assert_allclose(basis @ (basis.T @ difference), difference, atol=1e-12)


def test_order_of_the_classes_changes_coordinates_only_by_an_orthogonal_map():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((5, 20))
    activations = rng.standard_normal((30, 20))
    reference = template_plane(w, (0, 2, 3)).project(activations).numpy()
    for order in itertools.permutations((0, 2, 3)):
        coords = template_plane(w, order).project(activations).numpy()
        np.testing.assert_allclose(pdist(coords), pdist(reference), rtol=1e-10)
        transform, *_ = np.linalg.lstsq(reference, coords, rcond=None)
        np.testing.assert_allclose(transform.T @ transform, np.eye(2), atol=1e-10)
        np.testing.assert_allclose(reference @ transform, coords, atol=1e-10)


def test_subspace_of_all_templates_keeps_template_distances_and_drops_the_rest():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 12))
    subspace = template_subspace(w)
    assert subspace.classes == tuple(range(6)) and subspace.basis.shape == (12, 5)
    np.testing.assert_allclose(pdist(subspace.project(w).numpy()), pdist(w), rtol=1e-10)
    # a direction orthogonal to every template difference does not move the coordinates
    differences = (w[1:] - w[0]).T
    normal = rng.standard_normal(12)
    normal -= differences @ np.linalg.lstsq(differences, normal, rcond=None)[0]
    moved = subspace.project(w + 5.0 * normal).numpy()
    np.testing.assert_allclose(moved, subspace.project(w).numpy(), atol=1e-10)


def test_subspace_needs_enough_features():
    with pytest.raises(ValueError, match="at least 5 features"):
        template_subspace(np.random.default_rng(0).standard_normal((6, 4)))


@pytest.mark.parametrize("weight, classes, match", [
    (np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), (0, 1, 2), "one line"),
    (np.eye(3), (0, 1), "3 distinct"),
    (np.eye(3), (0, 1, 1), "3 distinct"),
    (np.eye(3), (0, 1, 5), r"\[0, 3\)"),
    (np.eye(3)[0], (0, 1, 2), "2 dimensions"),
])
def test_template_plane_rejects_bad_arguments(weight, classes, match):
    with pytest.raises(ValueError, match=match):
        template_plane(weight, classes)


def test_project_rejects_activations_of_another_width():
    plane = template_plane(np.eye(4), (0, 1, 2))
    with pytest.raises(ValueError, match="4 features"):
        plane.project(np.zeros((2, 3)))


def clusters(means: np.ndarray, scale: float, per_class: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(means)), per_class)
    return means[labels] + scale * rng.standard_normal((len(labels), means.shape[1])), labels


def reference_measures(points: np.ndarray, labels: np.ndarray, classes):
    means = np.stack([points[labels == k].mean(0) for k in classes])
    spread = [np.sqrt(np.mean(np.sum((points[labels == k] - means[i]) ** 2, axis=1)))
              for i, k in enumerate(classes)]
    distances = pdist(means)
    return spread, np.mean(spread) / distances.mean(), distances.std() / distances.mean()


@pytest.mark.parametrize("scale", [0.05, 1.0])
def test_cluster_measures_match_a_numpy_reference(scale):
    means = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 1.0], [0.0, 4.0, -1.0], [1.0, 1.0, 5.0]])
    points, labels = clusters(means, scale)
    classes = (3, 0, 2)
    m = cluster_measures(points, labels, classes)
    spread, tightness, cv = reference_measures(points, labels, classes)
    np.testing.assert_allclose(m.spread, spread, rtol=1e-12)
    np.testing.assert_allclose(m.tightness, tightness, rtol=1e-12)
    np.testing.assert_allclose(m.equidistance_cv, cv, rtol=1e-12)
    assert m.classes == classes


def test_tight_clusters_measure_tighter_than_loose_ones():
    means = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    tight = cluster_measures(*clusters(means, 0.1), (0, 1, 2))
    loose = cluster_measures(*clusters(means, 1.5), (0, 1, 2))
    # spread of an isotropic 2-D Gaussian is scale * sqrt(2); mean distance (5 + 5 + 5 sqrt 2) / 3
    mean_distance = (10 + 5 * np.sqrt(2)) / 3
    np.testing.assert_allclose(tight.tightness, 0.1 * np.sqrt(2) / mean_distance, rtol=0.05)
    np.testing.assert_allclose(loose.tightness, 1.5 * np.sqrt(2) / mean_distance, rtol=0.05)


def test_equidistant_means_have_zero_variation_and_a_right_triangle_does_not():
    equilateral = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
    right = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    labels = np.arange(3)
    assert cluster_measures(equilateral, labels, (0, 1, 2)).equidistance_cv == pytest.approx(0, abs=1e-12)
    sides = np.array([3.0, 4.0, 5.0])
    assert cluster_measures(right, labels, (0, 1, 2)).equidistance_cv == pytest.approx(sides.std() / 4)


def test_cluster_measures_reject_a_class_without_points_and_bad_labels():
    points = np.zeros((4, 2))
    with pytest.raises(ValueError, match="counts"):
        cluster_measures(points, np.array([0, 0, 1, 1]), (0, 2))
    with pytest.raises(ValueError, match="labels"):
        cluster_measures(points, np.array([0.0, 0, 1, 1]), (0, 1))


@pytest.mark.slow
def test_projection_grid_writes_a_png_with_one_panel_per_cell(tmp_path):
    templates, _ = known_templates()
    plane = template_plane(templates, (0, 1, 2))
    points, labels = clusters(templates, 0.3, per_class=20)
    panel = ProjectionPanel(plane.project(points), torch.from_numpy(labels), {0: "a", 1: "b", 2: "c"}, "title")
    path = tmp_path / "grid.png"
    fig = plot_projection_grid([[panel, panel], [panel, panel]], path)
    assert len(fig.axes) == 4
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="rectangular"):
        plot_projection_grid([[panel, panel], [panel]])


def test_projection_grid_with_shared_axes_gives_every_panel_the_range_of_all_points():
    labels = torch.tensor([0, 1, 2] * 5)
    names = {0: "a", 1: "b", 2: "c"}
    small = ProjectionPanel(torch.randn(15, 2, generator=torch.Generator().manual_seed(0)), labels, names, "small")
    wide = ProjectionPanel(10 * torch.randn(15, 2, generator=torch.Generator().manual_seed(1)) + 30, labels, names,
                           "wide")
    fig = plot_projection_grid([[small, wide]], share_axes=True)
    limits = {(ax.get_xlim(), ax.get_ylim()) for ax in fig.axes}
    assert len(limits) == 1  # one range for both panels
    (x_low, x_high), (y_low, y_high) = limits.pop()
    every = torch.cat([small.coords, wide.coords])
    assert x_low < every[:, 0].min() and every[:, 0].max() < x_high
    assert y_low < every[:, 1].min() and every[:, 1].max() < y_high
    assert x_high - x_low == pytest.approx(y_high - y_low)  # equal scales
    apart = plot_projection_grid([[small, wide]])
    assert apart.axes[0].get_xlim() != apart.axes[1].get_xlim()
