"""Permutohedral lattice filtering in plain PyTorch (Adams, Baek & Davis, 2010).

A Gaussian filter over points with ``d``-dimensional features (pixel
position, or position and colour) in time linear in the number of points:
the values are *splatted* onto the vertices of the permutohedral lattice
that enclose each point (barycentric weights), *blurred* along each of the
``d + 1`` lattice axes with the kernel ``[1/2, 1, 1/2]``, and *sliced* back
at the points with the same weights.

This follows, step for step, the lattice of Krähenbühl & Koltun's densecrf
code (``permutohedral.cpp``, which ``pydensecrf`` wraps): the same elevation
and scaling (standard deviation 1 in feature units), rounding to the nearest
remainder-0 point, simplex ranks and barycentric weights in float32, the same
lattice vertices (the reference processes points in blocks of four and pads
the last block with points at the origin, which add vertices; ``n_pad``
reproduces that), the same blur order and the same final scaling
``1 / (1 + 2 ** -d)``. Only the order of floating-point sums differs.

Everything is a pure function on tensors, on whatever device the features
live: no compiled extension is needed.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

# Vertex keys are packed into one int64 per vertex when their ranges allow
# (mixed radix); otherwise rows are compared whole (slower, same result).
_CODE_BITS = 62


class Lattice(NamedTuple):
    """A permutohedral lattice built over ``N`` points with ``d`` features.

    The vertex table has ``M + 1`` rows: row 0 stays empty (it stands for
    neighbours outside the lattice), rows ``1 .. M`` are the vertices.

    Attributes
    ----------
    splat : sparse CSR Tensor of shape (M + 1, N), float32
        Barycentric weight of each point at each vertex: ``table = splat @ v``.
    slice : sparse CSR Tensor of shape (N, M + 1), float32
        The transposed weights times the filter's final scaling
        ``1 / (1 + 2 ** -d)``: ``out = slice @ table``.
    neighbours : Tensor of shape (d + 1, 2, M + 1), int64
        Rows of the two neighbours of every vertex along each lattice axis
        (0 where the neighbour is not in the lattice).
    """

    splat: torch.Tensor
    slice: torch.Tensor
    neighbours: torch.Tensor

    @property
    def dim(self) -> int:
        """Feature dimension ``d``."""
        return self.neighbours.shape[0] - 1

    @property
    def n_vertices(self) -> int:
        """Number of lattice vertices ``M``."""
        return self.neighbours.shape[2] - 1


def _scale_factors(d):
    """The diagonal of the elevation's scaling, float32, as densecrf computes it."""
    inv_std_dev = float(torch.tensor(math.sqrt(2.0 / 3.0) * (d + 1), dtype=torch.float32))
    return [float(torch.tensor(1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev,
                               dtype=torch.float32)) for i in range(d)]


def _simplex(features):
    """Remainder-0 point, ranks and barycentric weights of every point.

    Returns ``rem0`` (N, d + 1) int64, ``rank`` (N, d + 1) int64 and
    ``bary`` (N, d + 1) float32.
    """
    n, d = features.shape
    f = features.to(torch.float32)
    scale = _scale_factors(d)
    down = torch.tensor(1.0, dtype=torch.float32) / (d + 1)  # 1.0f / (d + 1)
    up = float(d + 1)

    # Elevate onto the hyperplane sum(x) = 0 of R^(d+1) (E p in the paper).
    elevated = torch.empty((n, d + 1), dtype=torch.float32, device=f.device)
    sm = torch.zeros(n, dtype=torch.float32, device=f.device)
    for j in range(d, 0, -1):
        cf = f[:, j - 1] * scale[j - 1]
        elevated[:, j] = sm - float(j) * cf
        sm = sm + cf
    elevated[:, 0] = sm

    # Closest remainder-0 point (round half to even, as SSE rounding does).
    v = torch.round(elevated * down)
    rem0 = v * up
    total = v.sum(dim=1)

    # Rank of each coordinate of the remainder in decreasing order.
    diff = elevated - rem0
    rank = torch.zeros((n, d + 1), dtype=torch.float32, device=f.device)
    for i in range(d):
        for j in range(i + 1, d + 1):
            c = (diff[:, i] < diff[:, j]).to(torch.float32)
            rank[:, i] += c
            rank[:, j] += 1.0 - c

    # Bring points off the plane (total != 0) back.
    rank += total[:, None]
    shift = (rank < 0).to(torch.float32) * up - (rank >= up).to(torch.float32) * up
    rank += shift
    rem0 += shift

    # Barycentric coordinates (each slot gets one + and one - term, so the
    # order of the two scatters does not change the float result).
    vb = (elevated - rem0) * down
    pos = (d - rank).to(torch.int64)
    bary = torch.zeros((n, d + 2), dtype=torch.float32, device=f.device)
    bary.scatter_add_(1, pos, vb)
    bary.scatter_add_(1, pos + 1, -vb)
    bary[:, 0] += 1.0 + bary[:, d + 1]
    return rem0.to(torch.int64), rank.to(torch.int64), bary[:, : d + 1]


def _vertex_keys(rem0, rank):
    """Keys (first ``d`` coordinates) of each point's vertices, (d + 1, N, d)."""
    d = rem0.shape[1] - 1
    r = torch.arange(d + 1, device=rem0.device)[:, None, None]
    rk = rank[None, :, :d]
    # canonical simplex: vertex r adds r to coordinates of rank <= d - r and
    # r - (d + 1) to the others
    return rem0[None, :, :d] + r - (d + 1) * (rk > d - r).to(torch.int64)


def _neighbour_keys(keys, d):
    """Keys of the two neighbours along each lattice axis, (d + 1, 2, M, d)."""
    out = []
    for j in range(d + 1):
        n1 = keys - 1
        n2 = keys + 1
        if j < d:
            n1[:, j] += d + 1
            n2[:, j] -= d + 1
        out.append(torch.stack([n1, n2]))
    return torch.stack(out)


def _pack(keys, lo, radix):
    """Mixed-radix int64 code of each key row (``keys - lo`` in ``[0, radix)``)."""
    code = torch.zeros(keys.shape[:-1], dtype=torch.int64, device=keys.device)
    for i in range(keys.shape[-1]):
        code = code * radix[i] + (keys[..., i] - lo[i])
    return code


def build_lattice(features, *, n_pad=0):
    """Build the lattice over points with the given features.

    Parameters
    ----------
    features : Tensor of shape (N, d), float32
        Point features, already divided by the kernel's standard deviations.
    n_pad : int, default=0
        Extra points at the origin that add their vertices to the lattice but
        carry no value (densecrf's padding of its last block of four points).

    Returns
    -------
    lattice : Lattice
        Offsets, weights and blur neighbours, on the features' device.
    """
    n, d = features.shape
    if n_pad:
        features = torch.cat([features, features.new_zeros((n_pad, d))])
    rem0, rank, bary = _simplex(features)
    keys = _vertex_keys(rem0, rank)  # (d + 1, N + n_pad, d)
    del rem0, rank
    device = features.device

    lo = keys.amin(dim=(0, 1)) - (d + 1)
    span = keys.amax(dim=(0, 1)) - lo + (d + 2)
    radix = [int(s) for s in span.tolist()]
    if sum(math.log2(s) for s in radix) <= _CODE_BITS:
        codes = _pack(keys, lo, radix)
        uniq, inverse = torch.unique(codes, sorted=True, return_inverse=True)
        del codes
        m = uniq.numel()
        vkeys = torch.empty((m, d), dtype=torch.int64, device=device)
        rest = uniq.clone()
        for i in range(d - 1, -1, -1):
            vkeys[:, i] = rest % radix[i] + lo[i]
            rest = rest // radix[i]
        ncodes = _pack(_neighbour_keys(vkeys, d), lo, radix)  # (d + 1, 2, M)
        idx = torch.searchsorted(uniq, ncodes).clamp_(max=m - 1)
        found = uniq[idx] == ncodes
    else:
        uniq_keys, inverse = torch.unique(keys.reshape(-1, d), dim=0, return_inverse=True)
        m = uniq_keys.shape[0]
        nkeys = _neighbour_keys(uniq_keys, d).reshape(-1, d)
        both, ids = torch.unique(torch.cat([uniq_keys, nkeys]), dim=0, return_inverse=True)
        vertex_of = torch.full((both.shape[0],), -1, dtype=torch.int64, device=device)
        vertex_of[ids[:m]] = torch.arange(m, device=device)
        idx = vertex_of[ids[m:]].reshape(d + 1, 2, m)
        found = idx >= 0
    neighbours = torch.zeros((d + 1, 2, m + 1), dtype=torch.int64, device=device)
    neighbours[:, :, 1:] = torch.where(found, idx + 1, torch.zeros_like(idx))
    del idx, found
    offsets = inverse.reshape(d + 1, n + n_pad)[:, :n] + 1  # (d + 1, N)
    weights = bary[:n].T  # (d + 1, N)
    return Lattice(*_weight_matrices(offsets, weights, m + 1), neighbours)


def _alpha(d):
    """densecrf's final scaling of the filter, ``1.0f / (1 + powf(2, -d))``."""
    one = torch.tensor(1.0, dtype=torch.float32)
    return float(one / (one + torch.tensor(2.0 ** -d, dtype=torch.float32)))


def _weight_matrices(offsets, weights, n_rows):
    """The splat and slice matrices (CSR) from each point's vertex rows and weights."""
    k, n = offsets.shape
    device = offsets.device
    index_dtype = torch.int32 if max(n, n_rows, k * n) < 2**31 - 1 else torch.int64
    # slice: one row per point, its d + 1 vertices (distinct) in increasing order
    cols, order = offsets.T.sort(dim=1)
    vals = weights.T.gather(1, order) * _alpha(k - 1)
    crow = torch.arange(0, k * n + 1, k, device=device, dtype=index_dtype)
    # splat: one row per vertex, its points in increasing order
    flat = offsets.reshape(-1)
    perm = torch.sort(flat, stable=True).indices
    counts = torch.bincount(flat, minlength=n_rows)
    splat_crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=device)
    splat_crow[1:] = torch.cumsum(counts, 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support")
        splat = torch.sparse_csr_tensor(
            splat_crow.to(index_dtype), (perm % n).to(index_dtype),
            weights.reshape(-1)[perm], (n_rows, n), check_invariants=False)
        slice_ = torch.sparse_csr_tensor(
            crow, cols.reshape(-1).to(index_dtype), vals.reshape(-1), (n, n_rows),
            check_invariants=False)
    return splat, slice_


def scale_lattice(lattice, before, after):
    """The lattice with its filter scaled per point: ``diag(after) K diag(before)``.

    Parameters
    ----------
    lattice : Lattice
        From :func:`build_lattice`.
    before, after : Tensor of shape (N,), float32
        Factors applied to each point's values before splatting and to each
        point's result after slicing.

    Returns
    -------
    lattice : Lattice
        A lattice whose :func:`lattice_filter` computes
        ``after[:, None] * K(before[:, None] * values)``.
    """
    splat, slice_ = lattice.splat, lattice.slice
    splat = torch.sparse_csr_tensor(
        splat.crow_indices(), splat.col_indices(),
        splat.values() * before[splat.col_indices().to(torch.int64)], splat.shape,
        check_invariants=False)
    n_per_row = slice_.values().numel() // slice_.shape[0]
    slice_ = torch.sparse_csr_tensor(
        slice_.crow_indices(), slice_.col_indices(),
        slice_.values() * after.repeat_interleave(n_per_row), slice_.shape,
        check_invariants=False)
    return Lattice(splat, slice_, lattice.neighbours)


def lattice_filter(lattice, values):
    """Gaussian-filter ``values`` over the lattice's points (splat, blur, slice).

    Parameters
    ----------
    lattice : Lattice
        From :func:`build_lattice`.
    values : Tensor of shape (N, C), float32
        One row of values per point.

    Returns
    -------
    filtered : Tensor of shape (N, C), float32
        The filtered values; a point's own value is included.
    """
    table = lattice.splat @ values
    for n1, n2 in lattice.neighbours:
        table = table + 0.5 * (table.index_select(0, n1) + table.index_select(0, n2))
    return lattice.slice @ table
