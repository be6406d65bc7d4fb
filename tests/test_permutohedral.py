"""Tests for the PyTorch permutohedral lattice (sklearn_clasp.permutohedral)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sklearn_clasp import permutohedral as _permutohedral  # noqa: E402
from sklearn_clasp.permutohedral import (  # noqa: E402
    build_lattice,
    lattice_filter,
    scale_lattice,
)


def _grid_points(n=41, extent=2.0):
    g = torch.linspace(-extent, extent, n)
    return torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)


def _random_points(n, d, seed=0, extent=3.0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(-extent, extent, (n, d)).astype(np.float32))


@pytest.mark.parametrize("d", [2, 5])
def test_filter_is_a_unit_gaussian_in_feature_units(d):
    points = _grid_points() if d == 2 else _random_points(20000, d)
    centre = int((points**2).sum(1).argmin())
    delta = torch.zeros((len(points), 1))
    delta[centre] = 1.0
    out = lattice_filter(build_lattice(points), delta)[:, 0].numpy()
    r2 = ((points - points[centre]) ** 2).sum(1).numpy()
    assert np.corrcoef(out, np.exp(-r2 / 2))[0, 1] > 0.97
    # log-linear fit of the response against squared distance: sigma ~ 1
    near = out > out.max() * 1e-3
    A = np.stack([np.ones(near.sum()), -r2[near] / 2], 1)
    _, inv_var = np.linalg.lstsq(A, np.log(out[near]), rcond=None)[0]
    assert 0.85 < 1 / np.sqrt(inv_var) < 1.2
    # far points do not interact
    assert out[r2 > 36].max(initial=0.0) == 0.0


def test_filter_is_linear_and_keeps_the_columns_apart():
    points = _random_points(3000, 3, seed=1)
    lattice = build_lattice(points)
    rng = np.random.default_rng(2)
    a = torch.from_numpy(rng.random((3000, 2)).astype(np.float32))
    b = torch.from_numpy(rng.random((3000, 2)).astype(np.float32))
    both = lattice_filter(lattice, torch.cat([a, b], 1))
    torch.testing.assert_close(both[:, :2], lattice_filter(lattice, a))
    torch.testing.assert_close(both[:, 2:], lattice_filter(lattice, b))
    torch.testing.assert_close(lattice_filter(lattice, 2 * a + b),
                               2 * both[:, :2] + both[:, 2:], rtol=1e-5, atol=1e-5)


def test_scale_lattice_scales_before_and_after():
    points = _random_points(2000, 2, seed=3)
    lattice = build_lattice(points)
    rng = np.random.default_rng(4)
    v = torch.from_numpy(rng.random((2000, 3)).astype(np.float32))
    before = torch.from_numpy(rng.uniform(0.5, 2, 2000).astype(np.float32))
    after = torch.from_numpy(rng.uniform(0.5, 2, 2000).astype(np.float32))
    expected = after[:, None] * lattice_filter(lattice, before[:, None] * v)
    got = lattice_filter(scale_lattice(lattice, before, after), v)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_row_keys_give_the_same_lattice_as_packed_keys(monkeypatch):
    points = _random_points(1501, 5, seed=5)
    packed = build_lattice(points, n_pad=3)
    monkeypatch.setattr(_permutohedral, "_CODE_BITS", 0)  # force the row-wise path
    rows = build_lattice(points, n_pad=3)
    assert rows.n_vertices == packed.n_vertices
    torch.testing.assert_close(rows.neighbours, packed.neighbours, rtol=0, atol=0)
    v = torch.rand(1501, 4)
    torch.testing.assert_close(lattice_filter(rows, v), lattice_filter(packed, v),
                               rtol=0, atol=0)


def test_padding_points_add_vertices_but_no_values():
    points = _random_points(1000, 5, seed=6, extent=1.0) + 20.0  # far from the origin
    plain = build_lattice(points)
    padded = build_lattice(points, n_pad=3)
    assert padded.n_vertices == plain.n_vertices + 6  # the origin's simplex
    v = torch.rand(1000, 2)
    torch.testing.assert_close(lattice_filter(padded, v), lattice_filter(plain, v))


def test_filter_adds_in_place():
    lattice = build_lattice(_random_points(500, 5, seed=7))
    v, acc = torch.rand(500, 3), torch.rand(500, 3)
    expected = acc + lattice_filter(lattice, v)
    out = lattice_filter(lattice, v, add_to=acc)
    assert out is acc
    torch.testing.assert_close(out, expected)
