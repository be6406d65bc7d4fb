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

__all__ = ["Lattice", "build_lattice", "lattice_filter", "scale_lattice"]

# Vertex keys are packed into one int64 per vertex when their ranges allow
# (mixed radix); otherwise rows are compared whole (slower, same result).
_CODE_BITS = 62

# Points handled at once by the per-point steps of the lattice's construction.
_CHUNK = 1 << 17


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

    # Rank of each coordinate of the remainder in decreasing order; of two
    # equal coordinates the first ranks lower (densecrf's comparisons).
    diff = elevated - rem0
    rank = torch.zeros((n, d + 1), dtype=torch.float32, device=f.device)
    for i in range(d):
        for j in range(i + 1, d + 1):
            c = (diff[:, i] < diff[:, j]).to(torch.float32)
            rank[:, i] += c
            rank[:, j] += 1.0 - c
    del diff

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
    """Keys (first ``d`` coordinates) of each point's vertices, (N, d + 1, d)."""
    d = rem0.shape[1] - 1
    r = torch.arange(d + 1, device=rem0.device)[None, :, None]
    # canonical simplex: vertex r adds r to the coordinates of rank <= d - r
    # and r - (d + 1) to the others
    return rem0[:, None, :d] + r - (d + 1) * (rank[:, None, :d] > d - r).to(torch.int64)


def _vertex_codes(rem0, rank, lo, strides):
    """Mixed-radix codes of each point's vertices, (N, d + 1), without the keys.

    The code of key ``k`` is ``sum_i (k_i - lo_i) * strides_i``, linear in
    the key: vertex ``r`` of a point is its remainder-0 point plus ``r`` on
    every coordinate, minus ``d + 1`` on the coordinates of rank above ``d - r``.
    """
    n, d1 = rem0.shape
    d = d1 - 1
    stride = torch.tensor(strides, dtype=torch.int64, device=rem0.device)
    base = ((rem0[:, :d] - lo) * stride).sum(1)
    # stride of the coordinate of each rank (0 for the implicit last coordinate)
    by_rank = torch.zeros((n, d + 1), dtype=torch.int64, device=rem0.device)
    by_rank.scatter_(1, rank[:, :d], stride.expand(n, d))
    above = torch.zeros((n, d + 1), dtype=torch.int64, device=rem0.device)
    above[:, 1:] = by_rank.flip(1).cumsum(1)[:, :d]  # ranks d - r + 1 .. d
    del by_rank
    r = torch.arange(d + 1, dtype=torch.int64, device=rem0.device)
    return base[:, None] + r * sum(strides) - (d + 1) * above


def _neighbour_keys(keys):
    """Keys of the two neighbours of each vertex along each lattice axis, (d + 1, 2, M, d)."""
    d = keys.shape[1]
    out = []
    for j in range(d + 1):
        n1, n2 = keys - 1, keys + 1
        if j < d:
            n1[:, j] += d + 1
            n2[:, j] -= d + 1
        out.append(torch.stack([n1, n2]))
    return torch.stack(out)


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
        Splat and slice matrices and blur neighbours, on the features' device.
    """
    n, d = features.shape
    device = features.device
    if n_pad:
        features = torch.cat([features, features.new_zeros((n_pad, d))])
    n_all = n + n_pad
    # per point, in chunks of bounded memory: remainder-0 point, ranks, weights
    rem0 = torch.empty((n_all, d + 1), dtype=torch.int32, device=device)
    rank = torch.empty((n_all, d + 1), dtype=torch.uint8, device=device)
    bary = torch.empty((n_all, d + 1), dtype=torch.float32, device=device)
    for a in range(0, n_all, _CHUNK):
        b = min(a + _CHUNK, n_all)
        rem0[a:b], rank[a:b], bary[a:b] = _simplex(features[a:b])
    # vertex keys lie within d + 1 of the remainder-0 points, their blur
    # neighbours within d more
    lo = rem0[:, :d].amin(dim=0).to(torch.int64) - 2 * (d + 1)
    radix = (rem0[:, :d].amax(dim=0).to(torch.int64) + 2 * (d + 1) - lo + 1).tolist()
    if sum(math.log2(r) for r in radix) <= _CODE_BITS:
        strides = [math.prod(radix[i + 1:]) for i in range(d)]
        codes = torch.empty((n_all, d + 1), dtype=torch.int64, device=device)
        for a in range(0, n_all, _CHUNK):
            b = min(a + _CHUNK, n_all)
            codes[a:b] = _vertex_codes(rem0[a:b].to(torch.int64),
                                       rank[a:b].to(torch.int64), lo, strides)
        codes = codes.reshape(-1)
        del rem0, rank
        sorted_codes, perm = torch.sort(codes, stable=True)
        del codes
        first = torch.ones_like(sorted_codes, dtype=torch.bool)
        first[1:] = sorted_codes[1:] != sorted_codes[:-1]
        uniq = sorted_codes[first]
        del sorted_codes
        vertex = first.cumsum(0) - 1  # vertex of each sorted entry
        del first
        m = uniq.numel()
        total = sum(strides)
        shifts = [(-total + (d + 1) * s, total - (d + 1) * s) for s in strides]
        shifts.append((-total, total))
        ncodes = uniq + torch.tensor(shifts, device=device)[:, :, None]  # (d + 1, 2, M)
        idx = torch.searchsorted(uniq, ncodes).clamp_(max=m - 1)
        found = uniq[idx] == ncodes
        del ncodes, uniq
    else:
        keys = _vertex_keys(rem0.to(torch.int64), rank.to(torch.int64)).reshape(-1, d)
        del rem0, rank
        uniq_keys, inverse = torch.unique(keys, dim=0, return_inverse=True)
        del keys
        m = uniq_keys.shape[0]
        nkeys = _neighbour_keys(uniq_keys).reshape(-1, d)
        _, ids = torch.unique(torch.cat([uniq_keys, nkeys]), dim=0, return_inverse=True)
        vertex_of = torch.full((int(ids.max()) + 1,), -1, dtype=torch.int64, device=device)
        vertex_of[ids[:m]] = torch.arange(m, device=device)
        idx = vertex_of[ids[m:]].reshape(d + 1, 2, m)
        found = idx >= 0
        vertex, perm = torch.sort(inverse, stable=True)
        del inverse
    neighbours = torch.zeros((d + 1, 2, m + 1), dtype=torch.int64, device=device)
    neighbours[:, :, 1:] = torch.where(found, idx + 1, torch.zeros_like(idx))
    del idx, found
    splat, slice_ = _weight_matrices(vertex, perm, bary, n, m)
    return Lattice(splat, slice_, neighbours)


def _alpha(d):
    """densecrf's final scaling of the filter, ``1.0f / (1 + powf(2, -d))``."""
    one = torch.tensor(1.0, dtype=torch.float32)
    return float(one / (one + torch.tensor(2.0 ** -d, dtype=torch.float32)))


def _weight_matrices(vertex, perm, bary, n, m):
    """The splat and slice matrices (CSR) of ``n`` points and ``m`` vertices.

    ``perm`` sorts the point-major entries (vertex ``r`` of point ``p`` at
    ``p * (d + 1) + r``, the padding points last) by vertex, stably;
    ``vertex`` is the vertex (0-based) of each sorted entry and ``bary`` the
    barycentric weights ``(n + n_pad, d + 1)``.
    """
    k = bary.shape[1]
    device = bary.device
    n_rows = m + 1
    index_dtype = torch.int32 if max(n_rows, k * n) < 2**31 - 1 else torch.int64
    if bary.shape[0] > n:  # drop the padding points' entries
        real = perm < k * n
        perm, vertex = perm[real], vertex[real]
        del real
    weights = bary[:n].reshape(-1)
    # splat: one row per vertex (after the empty row 0), its points in order
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=device)
    crow[2:] = torch.cumsum(torch.bincount(vertex, minlength=m), 0)
    splat_vals = weights[perm]
    splat_cols = torch.div(perm, k, rounding_mode="floor").to(index_dtype)
    # slice: one row per point, its d + 1 distinct vertices in increasing order
    offsets = torch.empty(k * n, dtype=index_dtype, device=device)
    offsets[perm] = (vertex + 1).to(index_dtype)
    del perm, vertex
    cols, order = offsets.reshape(n, k).sort(dim=1)
    del offsets
    slice_vals = weights.reshape(n, k).gather(1, order).reshape(-1) * _alpha(k - 1)
    del order
    slice_crow = torch.arange(0, k * n + 1, k, device=device, dtype=index_dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support")
        splat = torch.sparse_csr_tensor(
            crow.to(index_dtype), splat_cols, splat_vals, (n_rows, n),
            check_invariants=False)
        slice_ = torch.sparse_csr_tensor(
            slice_crow, cols.reshape(-1), slice_vals, (n, n_rows),
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


def lattice_filter(lattice, values, *, add_to=None):
    """Gaussian-filter ``values`` over the lattice's points (splat, blur, slice).

    Parameters
    ----------
    lattice : Lattice
        From :func:`build_lattice`.
    values : Tensor of shape (N, C), float32
        One row of values per point.
    add_to : Tensor of shape (N, C), float32, default=None
        If given, the filtered values are added to it in place (without a
        temporary of its size), and it is returned.

    Returns
    -------
    filtered : Tensor of shape (N, C), float32
        The filtered values (plus ``add_to``); a point's own value is included.
    """
    table = lattice.splat @ values
    for n1, n2 in lattice.neighbours:
        table = table + 0.5 * (table.index_select(0, n1) + table.index_select(0, n2))
    if add_to is None:
        return lattice.slice @ table
    return add_to.addmm_(lattice.slice, table)
