"""The functional core on a PyTorch device (``device="cpu"``, ``"cuda"``, ...).

The same algorithm as :mod:`._core`, step for step, so that the torch path and
the NumPy path choose the same K and, up to floating-point rounding, the same
partition (tested on CPU):

- the cosine affinity of the features
  (:func:`~sklearn_clasp.affinity.cosine_affinity_tensor`, the same values as
  :func:`~sklearn_clasp.affinity.cosine_affinity`);
- the leading eigenpairs by a block Krylov method with Rayleigh-Ritz
  extraction (:func:`leading_eigenpairs_torch`, checked by its residuals; a
  dense ``torch.linalg.eigh`` for small matrices or when it does not
  converge; the measurements behind the choice are in ``docs/device.md``);
- the eigengap rules and the one-segment tests on the eigenvalues (a few
  numbers, on the CPU);
- k-means (:func:`kmeans_torch`): scikit-learn's ``KMeans`` algorithm, greedy
  k-means++ seeding with the same random draws from the same seeds, Lloyd
  iterations with the same stopping rule and best-of-``n_init`` choice, the
  restarts run as one batch;
- the exact silhouettes (:func:`silhouette_scores_torch`) and the soft
  assignment.

The K selections other than ``"silhouette"`` and ``"eigengap"``, and the gap
statistic's one-segment test, take the eigenpairs to the CPU and run there
(they are not the default). A sparse affinity is clustered on the CPU.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from ..affinity import unit_rows_tensor
from . import _rules

logger = logging.getLogger("sklearn_clasp.spectral")

#: Up to this many samples the eigenpairs come from a dense ``eigh``.
DENSE_EIGH_MAX_N = 256

#: Block Krylov: the block is the wanted eigenpairs plus this many columns.
KRYLOV_OVERSAMPLING = 8

#: Krylov steps first tried, and the most tried before the dense ``eigh``.
KRYLOV_STEPS = (6, 12, 24)

#: A Ritz pair is accepted when its residual ``|A v - l v|`` is at most this
#: fraction of the largest eigenvalue's magnitude.
KRYLOV_TOL = 1e-5


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------
# the eigenpairs
# --------------------------------------------------------------------------
def _sign_flip(vecs):
    """Each column's largest-magnitude entry made positive (as scikit-learn's
    ``_deterministic_vector_sign_flip``)."""
    idx = vecs.abs().argmax(dim=0)
    signs = vecs.gather(0, idx[None, :]).sign()
    signs[signs == 0] = 1
    return vecs * signs


def _dense_eigh(M, k):
    import torch

    vals, vecs = torch.linalg.eigh(M)
    return vals.flip(0)[:k], vecs.flip(1)[:, :k]


def _block_krylov(M, k, steps, start):
    """Rayleigh-Ritz on the block Krylov space ``[Q, M Q, ..., M^steps Q]``.

    Returns the ``k`` algebraically largest Ritz values (descending), their
    vectors and their residual norms.
    """
    import torch

    Q = torch.linalg.qr(start.to(device=M.device, dtype=M.dtype))[0]
    basis, products = [Q], []
    for _ in range(steps):
        Z = M @ basis[-1]
        products.append(Z)
        B = torch.cat(basis, dim=1)
        for _ in range(2):  # classical Gram-Schmidt, twice
            Z = Z - B @ (B.T @ Z)
        basis.append(torch.linalg.qr(Z)[0])
    products.append(M @ basis[-1])
    B, MB = torch.cat(basis, dim=1), torch.cat(products, dim=1)
    T = (B.T @ MB).double()
    # the small Rayleigh-Ritz problem on the CPU (a GPU's eigh is slow at this size)
    w, U = torch.linalg.eigh(0.5 * (T + T.T).cpu())
    order = torch.argsort(w, descending=True)[:k]
    w, U = w[order], U[:, order].to(device=M.device, dtype=M.dtype)
    V = B @ U
    R = MB @ U - V * w.to(device=M.device, dtype=M.dtype)[None, :]
    return w, V, torch.linalg.vector_norm(R, dim=0).cpu()


def _krylov_tol(n, dtype):
    """The residual a Ritz pair must reach, relative to ``|l_1|``: ``1e-5``, or
    the rounding floor ``4 sqrt(n) eps`` of a product in ``dtype`` if larger."""
    import torch

    return max(KRYLOV_TOL, 4.0 * math.sqrt(n) * torch.finfo(dtype).eps)


def leading_eigenpairs_torch(M, n_components, *, start=None):
    """The ``n_components`` algebraically largest eigenpairs of a symmetric tensor.

    Matrices of at most 256 rows (or asking for nearly all their eigenpairs)
    use ``torch.linalg.eigh``. Larger ones use a block Krylov method: a block
    of ``n_components + 8`` starting vectors (``start``, when given, first;
    the others normal draws of a generator seeded with 0, so the result is
    repeatable), 6, then 12, then 24 Krylov steps, each block orthogonalised
    twice against the basis, and Rayleigh-Ritz extraction, until every
    wanted Ritz pair has a residual ``|M v - l v| <= 1e-5 |l_1|``, else
    ``eigh`` (the residual floor is ``4 sqrt(n) eps`` of the dtype when that
    is larger, 1.8e-5 for float32 at 1,376 rows). Works in the matrix's dtype
    (Rayleigh-Ritz in float64);
    eigenvector signs are made deterministic.

    Parameters
    ----------
    M : Tensor of shape (n, n)
        Symmetric.
    n_components : int
        At most ``n``.
    start : ndarray of shape (n,), default=None
        A starting vector (as ARPACK's ``v0``).

    Returns
    -------
    eigenvalues : Tensor of shape (n_components,), float64, descending
        On the CPU.
    eigenvectors : Tensor of shape (n, n_components), dtype of ``M``
        On ``M``'s device.
    """
    import torch

    n = M.shape[0]
    k = int(min(n_components, n))
    m = k + KRYLOV_OVERSAMPLING
    if n <= DENSE_EIGH_MAX_N or m >= n // 2:
        vals, vecs = _dense_eigh(M, k)
        return vals.double().cpu(), _sign_flip(vecs)
    block = torch.randn((n, m), generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    if start is not None:
        block[:, 0] = torch.as_tensor(np.asarray(start, np.float64))
    for steps in KRYLOV_STEPS:
        if (steps + 1) * m >= n:
            break
        w, V, res = _block_krylov(M, k, steps, block)
        if bool((res <= _krylov_tol(n, M.dtype) * max(float(w.abs().max()), 1e-30)).all()):
            return w, _sign_flip(V)
    logger.debug("block Krylov did not converge on %d x %d; dense eigh", n, n)
    vals, vecs = _dense_eigh(M, k)
    return vals.double().cpu(), _sign_flip(vecs)


def _numpy_start(rng, n, k, limit):
    """The random draws the NumPy path makes for ARPACK's start vector (none when
    it solves densely), so that the k-means seeds drawn after them are the same."""
    if n > limit and k < n - 1:
        return rng.uniform(-1, 1, n)
    return None


def _normalize_torch(A):
    """``D^-1/2 A D^-1/2`` (isolated nodes stay isolated)."""
    import torch

    degree = A.sum(dim=1, dtype=torch.float64)
    if bool((degree < 0).any()):
        raise ValueError(
            "the normalised spectrum needs non-negative affinities; some rows sum "
            "to a negative value. Clip negative affinities (CosineAffinity's "
            "clip_negative=True) or use spectrum='affinity'."
        )
    inv = torch.where(degree > 0, 1.0 / torch.sqrt(torch.where(degree > 0, degree, 1.0)),
                      torch.zeros_like(degree)).to(A.dtype)
    return A * inv[:, None] * inv[None, :]


# --------------------------------------------------------------------------
# k-means: scikit-learn's algorithm in torch
# --------------------------------------------------------------------------
def _sq_distances(X, x_sq, C):
    """``|x - c|^2`` of every row of ``X`` (n, d) to every centre of ``C`` (..., k, d)."""
    d = x_sq[..., :, None] - 2.0 * (X @ C.transpose(-1, -2)) + (C * C).sum(-1)[..., None, :]
    return d.clamp_(min=0.0)


def _kmeans_plusplus(X, x_sq, k, draws):
    """Greedy k-means++ of scikit-learn for every restart at once.

    ``draws`` (B, 1 + (k - 1) L) are each restart's uniform numbers, in the
    order ``numpy.random.RandomState`` gives them to scikit-learn.
    """
    import torch

    n = X.shape[0]
    B = draws.shape[0]
    L = 2 + int(np.log(k))
    cdf = np.full(n, 1.0 / n).cumsum()
    cdf /= cdf[-1]
    first = torch.as_tensor(cdf.searchsorted(draws[:, 0], side="right"), device=X.device)
    u = torch.as_tensor(draws[:, 1:], dtype=torch.float64, device=X.device)
    centres = torch.empty((B, k, X.shape[1]), dtype=X.dtype, device=X.device)
    centres[:, 0] = X[first]
    closest = _sq_distances(X, x_sq, centres[:, :1])[:, :, 0]  # (B, n)
    pot = closest.sum(dim=1)
    rows = torch.arange(B, device=X.device)
    for c in range(1, k):
        rand = u[:, (c - 1) * L: c * L] * pot[:, None]
        cand = torch.searchsorted(closest.cumsum(dim=1), rand.contiguous()).clamp_(max=n - 1)
        dist = _sq_distances(X, x_sq, X[cand])  # (B, n, L)
        dist = torch.minimum(closest[:, :, None], dist)
        pots = dist.sum(dim=1)  # (B, L)
        best = pots.argmin(dim=1)
        pot = pots[rows, best]
        closest = dist[rows, :, best]
        centres[:, c] = X[cand[rows, best]]
    return centres


def _assign(X, x_sq, C):
    d = _sq_distances(X, x_sq, C)
    dmin, labels = d.min(dim=-1)
    return labels, dmin


def _update(X, labels, C_old, dmin, k):
    """Mean of each cluster; empty clusters take the points farthest from their centre."""
    import torch

    B, n = labels.shape
    sums = torch.zeros((B, k, X.shape[1]), dtype=X.dtype, device=X.device)
    sums.scatter_add_(1, labels[:, :, None].expand(B, n, X.shape[1]),
                      X[None].expand(B, n, X.shape[1]))
    counts = torch.zeros((B, k), dtype=X.dtype, device=X.device)
    counts.scatter_add_(1, labels, torch.ones_like(labels, dtype=X.dtype))
    empty = counts == 0
    if bool(empty.any()):
        for b in torch.nonzero(empty.any(dim=1)).ravel().tolist():
            ids = torch.nonzero(empty[b]).ravel()
            if float(dmin[b].max()) == 0:
                continue
            far = torch.argsort(dmin[b], descending=True)[: ids.numel()]
            for new, idx in zip(ids.tolist(), far.tolist()):
                old = int(labels[b, idx])
                sums[b, old] -= X[idx]
                sums[b, new] = X[idx]
                counts[b, new] = 1
                counts[b, old] -= 1
    safe = torch.where(counts > 0, counts, torch.ones_like(counts))
    return torch.where((counts > 0)[..., None], sums / safe[..., None], C_old)


def _same_clustering(a, b, k):
    mapping = np.full(k, -1, np.int64)
    for x, y in zip(a, b):
        if mapping[x] == -1:
            mapping[x] = y
        elif mapping[x] != y:
            return False
    return True


def kmeans_torch(E, k, *, n_init, seed, max_iter=300, tol=1e-4):
    """scikit-learn's ``KMeans(n_clusters=k, n_init=n_init, random_state=seed)`` in torch.

    Greedy k-means++ seeding (``2 + log k`` local trials) with the same uniform
    draws from ``RandomState(seed)``, Lloyd iterations on the mean-centred
    data until the labels stop changing or the centres move less than
    ``tol`` times the mean variance (then one last assignment), empty
    clusters moved to the farthest points, and the restart with the lowest
    inertia kept. The restarts run as one batch. Distances in float64.

    Parameters
    ----------
    E : Tensor of shape (n, d)
    k : int
    n_init : int
    seed : int
    max_iter : int, default=300
    tol : float, default=1e-4

    Returns
    -------
    labels : ndarray of shape (n,), int64
    centers : ndarray of shape (k, d), float64
    inertia : float
    """
    import torch

    X64 = E.double()
    mean = X64.mean(dim=0)
    X = X64 - mean
    x_sq = (X * X).sum(dim=1)
    thresh = float(X.var(dim=0, unbiased=False).mean()) * tol
    rs = np.random.RandomState(seed)
    L = 2 + int(np.log(k))
    draws = np.stack([rs.random_sample(1 + (k - 1) * L) for _ in range(n_init)])
    C = _kmeans_plusplus(X, x_sq, k, draws)
    B = n_init
    labels_old = torch.full((B, X.shape[0]), -1, dtype=torch.int64, device=X.device)
    labels = labels_old.clone()
    active = torch.ones(B, dtype=torch.bool, device=X.device)
    for _ in range(max_iter):
        new_labels, dmin = _assign(X, x_sq, C)
        C_new = _update(X, new_labels, C, dmin, k)
        same = (new_labels == labels_old).all(dim=1)
        shift = ((C_new - C) ** 2).sum(dim=(1, 2))
        by_tol = active & ~same & (shift <= thresh)
        upd = active[:, None]
        labels = torch.where(upd, new_labels, labels)
        C = torch.where(upd[..., None], C_new, C)
        if bool(by_tol.any()):  # one last assignment to the final centres
            final, _ = _assign(X, x_sq, C)
            labels = torch.where(by_tol[:, None], final, labels)
        labels_old = torch.where(upd, new_labels, labels_old)
        active = active & ~same & ~by_tol
        if not bool(active.any()):
            break
    if bool(active.any()):  # max_iter reached: one last assignment
        final, _ = _assign(X, x_sq, C)
        labels = torch.where(active[:, None], final, labels)
    d = _sq_distances(X, x_sq, C)
    inertia = d.gather(2, labels[:, :, None])[:, :, 0].sum(dim=1).cpu().numpy()
    labels_np = labels.cpu().numpy()
    best = None
    for b in range(B):
        if best is None or (inertia[b] < inertia[best]
                            and not _same_clustering(labels_np[b], labels_np[best], k)):
            best = b
    centers = (C[best] + mean).cpu().numpy()
    return labels_np[best].astype(np.int64), centers, float(inertia[best])


def kmeans_partition_torch(E, k, *, n_init, rng):
    """:func:`._rules.kmeans_partition` (no restarts kept) on the device."""
    labels, centers, _ = kmeans_torch(E, k, n_init=n_init, seed=rng.randint(2**31 - 1))
    return _rules.Partition(labels, centers)


# --------------------------------------------------------------------------
# silhouettes and the soft assignment
# --------------------------------------------------------------------------
def _silhouette_from_sums(sums, sizes, labels):
    import torch

    n = sums.shape[0]
    rows = torch.arange(n, device=sums.device)
    own = sizes[labels]
    a = sums[rows, labels] / torch.clamp(own - 1, min=1)
    mean_other = sums / torch.clamp(sizes, min=1)[None, :]
    mean_other[rows, labels] = math.inf
    mean_other[:, sizes == 0] = math.inf
    b = mean_other.min(dim=1).values
    denom = torch.maximum(a, b)
    s = torch.where(denom > 0, (b - a) / torch.where(denom > 0, denom, 1.0),
                    torch.zeros_like(denom))
    s[own <= 1] = 0.0
    return float(s.mean())


def _onehot(labels, device):
    import torch

    lab = torch.as_tensor(np.asarray(labels), device=device, dtype=torch.int64)
    k = int(lab.max()) + 1
    oh = torch.zeros((lab.numel(), k), dtype=torch.float64, device=device)
    oh[torch.arange(lab.numel(), device=device), lab] = 1.0
    return lab, oh


def silhouette_scores_torch(labelings, *, features=None, metric="cosine", affinity=None,
                            block_bytes=64 * 2**20):
    """Exact mean silhouettes of several labelings, on the features' device.

    The torch form of :func:`~sklearn_clasp.spectral.silhouette_scores_cosine`
    (``metric="cosine"``, ``O(n d K)``),
    :func:`~sklearn_clasp.spectral.silhouette_scores_euclidean`
    (``metric="euclidean"``, row blocks) and, with ``affinity`` instead of
    features, of the silhouette under ``max(1 - A, 0)``. Float64.

    Parameters
    ----------
    labelings : list of ndarray of shape (n,)
        Integer labels ``0 .. K-1``, each with ``2 <= K <= n - 1``.
    features : Tensor of shape (n, d), default=None
    metric : {"cosine", "euclidean"}, default="cosine"
    affinity : Tensor of shape (n, n), default=None
        Used when ``features`` is None.
    block_bytes : int, default=64 MiB
        Block size of the Euclidean distances.

    Returns
    -------
    scores : list of float
    """
    import torch

    if not labelings:
        return []
    if features is not None:
        device = features.device
        X = features.double()
        if metric == "cosine":
            Xn = unit_rows_tensor(X)
            self_dist = 1.0 - (Xn * Xn).sum(dim=1)
            out = []
            for labels in labelings:
                lab, oh = _onehot(labels, device)
                sizes = oh.sum(dim=0)
                sums = sizes[None, :] - Xn @ (oh.T @ Xn).T
                sums.clamp_(min=0.0)
                sums[torch.arange(lab.numel(), device=device), lab] -= self_dist
                out.append(_silhouette_from_sums(sums, sizes, lab))
            return out
        X = X - X.mean(dim=0)
        sq = (X * X).sum(dim=1)
        labs, ohs = zip(*(_onehot(lab, device) for lab in labelings))
        stacked = torch.cat(ohs, dim=1)
        n = X.shape[0]
        sums = torch.empty((n, stacked.shape[1]), dtype=torch.float64, device=device)
        block = max(1, int(block_bytes) // (8 * n))
        for lo in range(0, n, block):
            hi = min(lo + block, n)
            D = (sq[lo:hi, None] + sq[None, :] - 2.0 * (X[lo:hi] @ X.T)).clamp_(min=0.0)
            D.sqrt_()
            D[torch.arange(hi - lo, device=device), torch.arange(lo, hi, device=device)] = 0.0
            sums[lo:hi] = D @ stacked
        out, start = [], 0
        for lab, oh in zip(labs, ohs):
            k = oh.shape[1]
            out.append(_silhouette_from_sums(sums[:, start:start + k], oh.sum(dim=0), lab))
            start += k
        return out
    device = affinity.device
    D = (1.0 - affinity.double()).clamp_(min=0.0)
    D.fill_diagonal_(0.0)
    out = []
    for labels in labelings:
        lab, oh = _onehot(labels, device)
        out.append(_silhouette_from_sums(D @ oh, oh.sum(dim=0), lab))
    return out


def row_normalize_torch(E):
    import torch

    norms = torch.linalg.vector_norm(E, dim=1, keepdim=True)
    return E / torch.where(norms > 0, norms, torch.ones_like(norms))


def soft_assignment_torch(E, C, labels):
    """:func:`._core.soft_assignment` in torch: returns float32 NumPy ``(n, K)``."""
    import torch

    E = E.double()
    C = torch.as_tensor(np.asarray(C, np.float64), device=E.device)
    k = C.shape[0]
    if k <= 1:
        return np.ones((E.shape[0], max(k, 1)), np.float32)
    d2 = ((E * E).sum(1)[:, None] - 2.0 * E @ C.T + (C * C).sum(1)[None, :]).clamp_(min=0.0)
    lab = torch.as_tensor(np.asarray(labels), device=E.device, dtype=torch.int64)
    own = d2[torch.arange(E.shape[0], device=E.device), lab]
    tau = max(float(own.mean()), 1e-12)
    P = torch.softmax(-(d2 - d2.min(dim=1, keepdim=True).values) / tau, dim=1)
    return P.to(torch.float32).cpu().numpy()


# --------------------------------------------------------------------------
# the clustering of one affinity
# --------------------------------------------------------------------------
def _second_normalized_eigenvalue_torch(A, rng):
    """Second eigenvalue of the normalized affinity (negative entries clipped to 0)."""
    P = A if bool(A.min() >= 0) else A.clamp(min=0.0)
    v0 = _numpy_start(rng, P.shape[0], 2, 64)
    return float(leading_eigenpairs_torch(_normalize_torch(P), 2, start=v0)[0][1])


def cluster_on_device(A, A_np, features, metric, *, spectrum, eigengap_rule, k_selection,
                      k_min, k_max, beta, single_segment_test, single_segment_threshold,
                      n_init, rng, device, bounds):
    """``_core._cluster`` with the affinity ``A`` (a tensor on ``device``) on the device.

    ``A_np`` is the same affinity as a NumPy array or ``None`` (needed only by
    the K selections that run on the CPU); ``features`` a tensor or ``None``.
    Returns NumPy ``labels``, ``info`` and the
    :class:`~._core.SpectralEmbedding`.
    """
    from ._core import SpectralEmbedding, _chosen, _one_segment, _one_segment_test, _select
    from ._eigen import _DENSE_EIGEN_MAX_N

    n = A.shape[0]
    lo, hi = bounds
    info = {"single_segment": False, "sparse_affinity": False, "n_landmarks": None,
            "spectrum": spectrum, "eigengap_rule": eigengap_rule, "beta": beta,
            "k_selection": k_selection, "k_scores": {}, "single_segment_test": {"test": None},
            "k_bounds": (lo, hi), "device": str(device)}
    timings = info["timings"] = {}
    testing = single_segment_test is not None and single_segment_threshold is not None
    start = time.perf_counter()
    M = _normalize_torch(A) if spectrum == "normalized" else A
    k_eig = min(max(hi + 1, _rules.ENTROPY_WINDOW), n)  # as the NumPy path
    v0 = _numpy_start(rng, n, k_eig, _DENSE_EIGEN_MAX_N)
    vals_t, vecs_t = leading_eigenpairs_torch(M, k_eig, start=v0)
    del M
    vals = vals_t.cpu().numpy()
    _sync(device)
    timings["eigen"] = time.perf_counter() - start
    info["eigenvalues"] = vals
    k0 = _rules.eigengap_k(vals, rule=eigengap_rule, k_min=max(lo, 2), k_max=hi)
    info["eigengap_k"] = int(k0)

    vecs = vecs_t.cpu().numpy()
    start = time.perf_counter()
    one = _one_segment_test(
        info, vals, vecs, spectrum=spectrum, test=single_segment_test if testing and lo == 1
        else None, threshold=single_segment_threshold, rng=rng,
        constant=lambda: bool(A.max() == A.min()),
        second_eigenvalue=lambda: _second_normalized_eigenvalue_torch(A, rng))
    timings["one_segment_test"] = time.perf_counter() - start
    if one or hi < 2:  # as the NumPy path
        return _one_segment(info, vals, vecs)

    start = time.perf_counter()
    if k_selection in ("silhouette", "eigengap"):
        k_lo = max(lo, 2)
        ks = ([int(min(max(k0, k_lo), hi))] if k_selection == "eigengap"
              else _rules.k_window(k0, beta=beta, k_min=lo, k_max=hi))
        parts = [kmeans_partition_torch(row_normalize_torch(vecs_t[:, :k]), k, n_init=n_init,
                                        rng=rng) for k in ks]
        valid = [p for p in parts if 2 <= p.k <= n - 1]
        computed = silhouette_scores_torch(
            [p.labels for p in valid], features=features, metric=metric,
            affinity=None if features is not None else A)
        silhouettes = {p.k: float("nan") for p in parts}
        for p, s in zip(valid, computed):
            silhouettes[p.k] = float(s)
        scores = {p.k: silhouettes[p.k] for p in parts}
        scored = [p for p in parts if not math.isnan(silhouettes[p.k])]
        part = max(scored, key=lambda p: (silhouettes[p.k], -p.k)) if scored else parts[0]
    else:  # the other selections run on the CPU
        A_cpu = A_np if A_np is not None else A.cpu().numpy()
        feats = None if features is None else features.cpu().numpy()
        part, scores, silhouettes = _select(
            A_cpu, feats, metric, vals, vecs, k0, k_selection=k_selection, lo=lo, hi=hi,
            beta=beta, n_init=n_init, rng=rng)
    E_t = row_normalize_torch(vecs_t[:, :part.dim])
    proba = soft_assignment_torch(E_t, part.centers, part.labels)
    E = E_t.cpu().numpy()
    _chosen(info, part, scores, silhouettes)
    _sync(device)
    timings["k_search"] = time.perf_counter() - start
    return part.labels, info, SpectralEmbedding(vals, vecs, E, part.centers, proba, None, None)


def spectral_extension_torch(A_new, V, eigenvalues, degrees_fit=None):
    """:func:`._core.spectral_extension` on tensors (the row-normalised extension)."""
    import torch

    A = A_new
    if degrees_fit is not None:
        d_new = A.sum(dim=1, dtype=torch.float64)
        inv_new = torch.where(d_new > 0, 1.0 / torch.sqrt(torch.where(d_new > 0, d_new, 1.0)),
                              torch.zeros_like(d_new))
        d_fit = torch.as_tensor(np.asarray(degrees_fit, np.float64), device=A.device)
        inv_fit = torch.where(d_fit > 0, 1.0 / torch.sqrt(torch.where(d_fit > 0, d_fit, 1.0)),
                              torch.zeros_like(d_fit))
        A = A.double() * inv_new[:, None] * inv_fit[None, :]
    lam = np.asarray(eigenvalues[: V.shape[1]], dtype=np.float64)
    scale = np.where(np.abs(lam) > 1e-12, 1.0 / np.where(lam == 0, 1, lam), 0.0)
    scale_t = torch.as_tensor(scale, device=A.device, dtype=torch.float64)
    return row_normalize_torch((A.double() @ V.double()) * scale_t[None, :])
