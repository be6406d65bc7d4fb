"""Adaptive spectral clustering: CLASP's choice of K and its segmentation.

The functional core is :func:`adaptive_spectral_clustering`; the estimator
:class:`AdaptiveSpectralSegmenter` wraps it for plain matrices and for the
per-image records of the CLASP pipeline.

The algorithm, for one affinity matrix ``A`` of ``n`` patches:

1. Leading eigenpairs of ``A`` itself (the paper's ``spectrum="affinity"``)
   or of the normalised affinity ``D^-1/2 A D^-1/2`` (``spectrum="normalized"``;
   its eigenvalues are ``1 - mu`` for the eigenvalues ``mu`` of the normalised
   Laplacian, so "leading" means the smallest Laplacian eigenvalues). Only the
   ``k_max + 1`` needed are computed.
2. A first ``K0`` from the eigengaps ``d_i = l_i - l_(i+1)``: the largest
   relative gap (``K0 = argmax_i d_i / l_i``, ``i >= k_min``), the largest
   gap, or the paper's elbow (the gap index ``i*`` farthest from the straight
   line joining the first and last gaps, ``K0 = i* + 1``). Ties go to the
   smallest index.
3. Every ``K`` in ``[floor(K0 (1 - beta)), ceil(K0 (1 + beta))]`` clipped to
   ``[k_min, k_max]``: k-means on the row-normalised leading ``K``
   eigenvectors; the exact silhouette of that partition under the cosine
   distance of the features (``1 - affinity`` when only the affinity is
   known). With features it needs no ``n x n`` distance matrix at all: a
   sample's summed cosine distance to a cluster is ``n_c - x_i . s_c``.
   The best silhouette wins (ties: the smaller ``K``).
4. One segment (``K = 1``): see ``single_segment_threshold``. The silhouette
   is undefined for one cluster, so ``K = 1`` is decided by the spectrum
   instead: by Cheeger's inequality, when the second eigenvalue ``l_2`` of the
   normalised affinity is small, every cut of the graph has a high
   conductance (at least ``(1 - l_2) / 2``), i.e. no part of the image is
   markedly more similar to itself than to the rest.

Memory: no ``n x n`` matrix is made besides the affinity itself. Past
``max_dense_samples`` samples the estimator, when it builds the affinity
itself, clusters random landmark samples exactly and extends the result to
the others (Nystroem), so memory stays bounded whatever ``n``.
"""

from __future__ import annotations

import logging
import math
import numbers
import time

import numpy as np
from scipy import linalg, sparse
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin, _fit_context
from sklearn.cluster import KMeans
from sklearn.utils import check_random_state
from threadpoolctl import threadpool_limits
from sklearn.utils._param_validation import Interval, StrOptions, validate_params
from sklearn.utils.extmath import _deterministic_vector_sign_flip
from sklearn.utils.validation import (
    check_is_fitted,
    check_non_negative,
    check_symmetric,
    validate_data,
)

from .affinity import MAX_DENSE_SAMPLES, _unit_rows, cosine_affinity
from .records import check_records, grid_feature_matrix, is_record_sequence

__all__ = [
    "adaptive_spectral_clustering",
    "eigengap_k",
    "eigengap_scores",
    "leading_eigenpairs",
    "silhouette_scores_for_labels",
    "silhouette_scores_cosine",
    "AdaptiveSpectralSegmenter",
    "PAPER_SETTINGS",
]

logger = logging.getLogger(__name__)

#: Settings that reproduce the CLASP paper's K selection exactly: eigenvalues of
#: the affinity itself, the elbow rule, and no one-segment test.
PAPER_SETTINGS = {
    "spectrum": "affinity",
    "eigengap_rule": "elbow",
    "single_segment_threshold": None,
}

# Dense LAPACK (only the wanted eigenpairs) is faster than ARPACK up to about
# this many patches; past it ARPACK's matrix-vector products win (about 3x on
# image affinities of 1369 patches, on par on noise-like spectra).
_DENSE_EIGEN_MAX_N = 512

# Problems up to this many patches run on one BLAS thread (see
# _adaptive_spectral_clustering).
_SINGLE_THREAD_MAX_N = 2048


# --------------------------------------------------------------------------
# Spectrum
# --------------------------------------------------------------------------
def _is_symmetric(A, block=512):
    """Exact symmetry of a dense square matrix, block by block (no n x n copy)."""
    n = A.shape[0]
    for i in range(0, n, block):
        for j in range(i, n, block):
            if not np.array_equal(A[i:i + block, j:j + block], A[j:j + block, i:i + block].T):
                return False
    return True


def _as_float_affinity(affinity):
    """The affinity as a symmetric float matrix; float32 stays float32 (faster).

    Raises a clear error for a non-square, empty or non-finite affinity.
    """
    if sparse.issparse(affinity):
        A = affinity.tocsr()
        if A.dtype not in (np.float32, np.float64):
            A = A.astype(np.float64)
    else:
        A = np.asarray(affinity)
        if A.dtype == object or not (np.issubdtype(A.dtype, np.number) or A.dtype == bool):
            raise TypeError(f"the affinity must hold numbers; got dtype {A.dtype}.")
        if A.dtype not in (np.float32, np.float64):
            A = A.astype(np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(
            f"the affinity must be a square (n, n) matrix; got shape {A.shape}. "
            f"Pass features with features=..., or compute cosine_affinity(X) first."
        )
    if A.shape[0] == 0:
        raise ValueError("the affinity is empty (0 x 0); pass at least one sample.")
    values = A.data if sparse.issparse(A) else A
    # One pass, no n x n temporary: the float64 sum is finite iff every entry is
    # (for affinities, whose entries are far below 1e300).
    if not np.isfinite(values.sum(dtype=np.float64)):
        raise ValueError(
            "the affinity contains NaN or infinite values; check the features it "
            "was computed from (NaN or infinite features, or a bad image)."
        )
    if sparse.issparse(A):
        if (A != A.T).nnz:
            A = (0.5 * (A + A.T)).tocsr()
        return A
    if not _is_symmetric(A):
        A = 0.5 * (A + A.T)
    return A


def _inv_sqrt(degree):
    """``1 / sqrt(degree)``, 0 where the degree is 0 (isolated nodes stay isolated)."""
    inv_sqrt = np.zeros_like(degree)
    nz = degree > 0
    inv_sqrt[nz] = 1.0 / np.sqrt(degree[nz])
    return inv_sqrt


def _inv_sqrt_degree(A, dtype=None):
    """``D^-1/2`` as a vector (0 for isolated nodes); degrees summed in ``dtype``."""
    degree = np.asarray(A.sum(axis=1, dtype=dtype)).ravel()
    if np.any(degree < 0):
        raise ValueError(
            "the normalised spectrum needs non-negative affinities; some rows sum "
            "to a negative value. Clip negative affinities (CosineAffinity's "
            "clip_negative=True) or use spectrum='affinity'."
        )
    return _inv_sqrt(degree)


def _normalize(A):
    """``D^-1/2 A D^-1/2``; isolated nodes (zero degree) stay isolated."""
    inv_sqrt = _inv_sqrt_degree(A)
    if sparse.issparse(A):
        Dm = sparse.diags(inv_sqrt)
        return (Dm @ A @ Dm).tocsr()
    M = A * inv_sqrt[:, None]  # one n x n allocation, scaled in place
    M *= inv_sqrt[None, :]
    return M


def _second_normalized_eigenvalue(A, random_state):
    """``l_2`` of ``D+^-1/2 max(A, 0) D+^-1/2`` (the one-segment test).

    For a dense ``A`` the normalised matrix is never formed: ARPACK multiplies
    by ``D^-1/2 A D^-1/2`` as an operator, so the test needs no n x n copy
    (one only when ``A`` has negative entries to drop).
    """
    n = A.shape[0]
    if sparse.issparse(A) or n <= 64:
        positive = A.maximum(0) if sparse.issparse(A) else np.maximum(A, 0.0)
        return float(
            leading_eigenpairs(_normalize(positive), 2, solver="arpack",
                               random_state=random_state)[0][1]
        )
    positive = A if A.min() >= 0 else np.maximum(A, 0.0)
    inv_sqrt = _inv_sqrt_degree(positive, dtype=np.float64).astype(A.dtype)

    def matvec(v):
        v = np.asarray(v, dtype=A.dtype).reshape(n, -1)
        out = inv_sqrt[:, None] * (positive @ (inv_sqrt[:, None] * v))
        return out if out.shape[1] > 1 else out.ravel()

    op = LinearOperator((n, n), matvec=matvec, matmat=matvec, dtype=A.dtype)
    rng = check_random_state(random_state)
    v0 = rng.uniform(-1, 1, n).astype(A.dtype)
    try:
        vals = eigsh(op, k=2, which="LA", v0=v0, return_eigenvectors=False)
    except ArpackNoConvergence:
        logger.debug("ARPACK did not converge; using dense LAPACK")
        vals = linalg.eigh(_normalize(positive), eigvals_only=True,
                           subset_by_index=[n - 2, n - 1])
    return float(np.sort(vals)[0])


def leading_eigenpairs(matrix, n_components, *, solver="auto", random_state=None):
    """The ``n_components`` algebraically largest eigenpairs of a symmetric matrix.

    ``solver="auto"``: dense matrices up to 512 rows use LAPACK's ``syevr``
    restricted to the wanted eigenpairs; larger or sparse ones use ARPACK
    (Lanczos) with a starting vector drawn from ``random_state`` (and LAPACK
    if ARPACK does not converge). Both work in the matrix's own precision:
    float32 is about twice as fast as float64. Eigenvector signs are made
    deterministic.

    Parameters
    ----------
    matrix : ndarray or sparse matrix of shape (n, n)
        Symmetric matrix.
    n_components : int
        Number of eigenpairs, at most ``n``.
    solver : {"auto", "dense", "arpack"}, default="auto"
        Force LAPACK or ARPACK ("arpack" is much faster for one or two
        eigenpairs of a large dense matrix).
    random_state : int, RandomState instance or None, default=None
        Seeds ARPACK's starting vector.

    Returns
    -------
    eigenvalues : ndarray of shape (n_components,)
        In descending order.
    eigenvectors : ndarray of shape (n, n_components)
        Matching unit eigenvectors, as columns.

    Examples
    --------
    >>> import numpy as np
    >>> vals, vecs = leading_eigenpairs(np.diag([1.0, 3.0, 2.0]), 2)
    >>> vals
    array([3., 2.])
    """
    n = matrix.shape[0]
    k = int(min(n_components, n))
    dense = solver == "dense" or n <= 64 or (
        solver == "auto" and not sparse.issparse(matrix) and n <= _DENSE_EIGEN_MAX_N
    )
    if not sparse.issparse(matrix) and (dense or k >= n - 1):
        vals, vecs = linalg.eigh(
            np.asarray(matrix), subset_by_index=[n - k, n - 1], driver="evr"
        )
    else:
        if k >= n - 1:
            vals, vecs = linalg.eigh(matrix.toarray(), subset_by_index=[n - k, n - 1])
        else:
            rng = check_random_state(random_state)
            v0 = rng.uniform(-1, 1, n).astype(matrix.dtype)
            try:
                vals, vecs = eigsh(matrix, k=k, which="LA", v0=v0)
            except ArpackNoConvergence:
                if sparse.issparse(matrix) and n > 20000:
                    raise
                logger.debug("ARPACK did not converge; using dense LAPACK")
                dense_matrix = matrix.toarray() if sparse.issparse(matrix) else matrix
                vals, vecs = linalg.eigh(dense_matrix, subset_by_index=[n - k, n - 1])
    order = np.argsort(vals, kind="stable")[::-1]
    vals = vals[order]
    vecs = _deterministic_vector_sign_flip(vecs[:, order].T).T
    return vals, vecs


def eigengap_k(eigenvalues, *, rule="relative", k_min=1, k_max=None):
    """First estimate ``K0`` of the number of clusters from eigengaps.

    With eigenvalues ``l_1 >= l_2 >= ...`` and gaps ``d_i = l_i - l_(i+1)``:

    * ``"largest"``: the classic eigengap heuristic, ``K0 = argmax d_i``
      over ``k_min <= i <= k_max``.
    * ``"relative"``: ``K0 = argmax d_i / l_i`` over the same range (scale
      free: the gap measured against the eigenvalue it falls from; gaps below
      a non-positive eigenvalue count as 0).
    * ``"elbow"``: the CLASP paper's rule, ``K0 = i* + 1`` where ``i*`` is the
      gap index farthest from the straight line joining ``(1, d_1)`` and
      ``(m, d_m)``, over all gaps ``1 .. m`` (``m = k_max`` when given).

    Ties go to the smallest index.

    Parameters
    ----------
    eigenvalues : array-like of shape (m + 1,)
        Leading eigenvalues in descending order.
    rule : {"relative", "largest", "elbow"}, default="relative"
        Which rule.
    k_min : int, default=1
        Smallest K the "largest" and "relative" rules may return.
    k_max : int, default=None
        Only gaps ``d_1 .. d_k_max`` are considered (default: all).

    Returns
    -------
    k0 : int

    Examples
    --------
    >>> eigengap_k([1.0, 0.98, 0.97, 0.2, 0.1, 0.05], rule="largest")
    3
    """
    return eigengap_scores(eigenvalues, rule=rule, k_min=k_min, k_max=k_max)[4]


def eigengap_scores(eigenvalues, *, rule="relative", k_min=1, k_max=None):
    """The score each eigengap rule maximises, gap by gap.

    With eigenvalues ``l_1 >= l_2 >= ...`` and gaps ``d_i = l_i - l_(i+1)``,
    the score of gap ``i`` is ``d_i / l_i`` (``"relative"``; 0 below a
    non-positive eigenvalue), ``d_i`` (``"largest"``), or the distance of
    ``(i, d_i)`` to the chord joining the first and the last gap
    (``"elbow"``). The gap with the highest score among the eligible ones
    (ties: the first) is the one :func:`sklearn_clasp.spectral.eigengap_k`
    picks: ``K0 = i`` for ``"relative"`` and ``"largest"``, ``K0 = i + 1``
    for ``"elbow"``.

    Parameters
    ----------
    eigenvalues : array-like of shape (m + 1,)
        Leading eigenvalues, descending (``record.info["eigenvalues"]``).
    rule : {"relative", "largest", "elbow"}, default="relative"
        The eigengap rule.
    k_min : int, default=1
        Gaps below ``k_min`` are not eligible (``"relative"``, ``"largest"``).
    k_max : int, default=None
        Only gaps ``1 .. k_max`` are considered.

    Returns
    -------
    gap_index : ndarray of shape (m,), dtype int64
        ``1 .. m``.
    scores : ndarray of shape (m,)
        The rule's score of each gap.
    eligible : ndarray of shape (m,), dtype bool
        Gaps the rule may pick.
    best : int
        Index (1-based) of the winning gap, 0 when there is no gap.
    k0 : int
        The resulting first estimate of K.

    Examples
    --------
    >>> idx, scores, eligible, best, k0 = eigengap_scores(
    ...     [1.0, 0.9, 0.3, 0.25], rule="largest", k_min=1)
    >>> idx.tolist(), scores.round(2).tolist(), best, k0
    ([1, 2, 3], [0.1, 0.6, 0.05], 2, 2)
    >>> eigengap_scores([1.0, 0.9, 0.3, 0.25], rule="relative")[1].round(3).tolist()
    [0.1, 0.667, 0.167]
    """
    if rule not in ("relative", "largest", "elbow"):
        raise ValueError(
            f"unknown eigengap rule {rule!r}; use 'relative', 'largest' or 'elbow'"
        )
    lam = np.asarray(eigenvalues, dtype=np.float64).ravel()
    gaps = lam[:-1] - lam[1:]
    if k_max is not None:
        gaps = gaps[: max(1, int(k_max))]
    m = gaps.size
    index = np.arange(1, m + 1, dtype=np.int64)
    if m == 0:
        return index, gaps, np.zeros(0, bool), 0, 1
    if rule in ("largest", "relative"):
        lo = int(min(max(k_min, 1), m))
        if rule == "relative":
            top = lam[:m]
            scores = np.where(top > 0, gaps / np.where(top > 0, top, 1.0), 0.0)
        else:
            scores = gaps.copy()
        eligible = index >= lo
        # Rounding makes near-ties exact ties; argmax takes the first of them.
        best = int(np.argmax(np.round(scores[lo - 1:], 12))) + lo
        return index, scores, eligible, best, best
    # elbow
    eligible = np.ones(m, bool)
    if m < 3:
        best = int(np.argmax(gaps)) + 1
        return index, gaps.copy(), eligible, best, best + 1
    x = index.astype(np.float64)
    x0, y0, x1, y1 = x[0], gaps[0], x[-1], gaps[-1]
    dist = np.abs((y1 - y0) * x - (x1 - x0) * gaps + x1 * y0 - y1 * x0)
    dist /= math.hypot(y1 - y0, x1 - x0)
    best = int(np.argmax(np.round(dist, 12))) + 1
    return index, dist, eligible, best, best + 1


def _k_range(k0, *, beta, k_min, k_max):
    lo = max(k_min, int(math.floor(k0 * (1.0 - beta))))
    hi = min(k_max, int(math.ceil(k0 * (1.0 + beta))))
    if lo > hi:
        lo = hi = int(min(max(k0, k_min), k_max))
    return list(range(lo, hi + 1))


# --------------------------------------------------------------------------
# Silhouette
# --------------------------------------------------------------------------
def _distance_matrix(affinity):
    """Dense ``1 - affinity`` with a zero diagonal, for the silhouette when only
    the affinity is known (the cosine distance, capped at 1, for a cosine
    affinity with clipped negatives)."""
    S = affinity.toarray() if sparse.issparse(affinity) else np.asarray(affinity)
    D = 1.0 - S
    np.maximum(D, 0.0, out=D)
    np.fill_diagonal(D, 0.0)
    return D


def silhouette_scores_for_labels(distances, labelings):
    """Exact mean silhouette of several labelings sharing one distance matrix.

    Equal to :func:`sklearn.metrics.silhouette_score` with
    ``metric="precomputed"`` for each labeling, but the ``O(n^2)`` distances
    are given once; each labeling costs one ``(n, n) x (n, K)`` product.
    Samples alone in their cluster score 0, as in scikit-learn.

    Parameters
    ----------
    distances : ndarray of shape (n, n)
        Symmetric distances with a zero diagonal.
    labelings : list of ndarray of shape (n,)
        Integer labels ``0 .. K-1``, each with ``2 <= K <= n - 1``.

    Returns
    -------
    scores : list of float

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0], [0.1], [1.0], [1.1]])
    >>> D = np.abs(X - X.T)
    >>> round(silhouette_scores_for_labels(D, [np.array([0, 0, 1, 1])])[0], 4)
    0.8997
    """
    n = distances.shape[0]
    scores = []
    for labels in labelings:
        labels = np.asarray(labels)
        k = int(labels.max()) + 1
        onehot = np.zeros((n, k), dtype=distances.dtype)
        onehot[np.arange(n), labels] = 1.0
        sums = distances @ onehot  # (n, K): total distance to each cluster
        scores.append(_silhouette_from_sums(sums, onehot.sum(axis=0), labels))
    return scores


def silhouette_scores_cosine(features, labelings):
    """Exact mean cosine-distance silhouette of several labelings, in O(n d K).

    Equal to ``sklearn.metrics.silhouette_score(features, labels,
    metric="cosine")`` for each labeling, without any ``n x n`` matrix: with
    unit rows ``x_i``, the summed distance from ``x_i`` to cluster ``c`` is
    ``n_c - x_i . s_c`` where ``s_c`` is the sum of the cluster's rows.
    All-zero rows are at distance 1 from everything, as in scikit-learn.

    Parameters
    ----------
    features : ndarray of shape (n, n_features)
    labelings : list of ndarray of shape (n,)
        Integer labels ``0 .. K-1``, each with ``2 <= K <= n - 1``.

    Returns
    -------
    scores : list of float

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    >>> round(silhouette_scores_cosine(X, [np.array([0, 0, 1, 1])])[0], 4)
    0.9945
    """
    Xn = _unit_rows(np.asarray(features, dtype=np.float64))
    n = Xn.shape[0]
    self_dist = 1.0 - np.einsum("ij,ij->i", Xn, Xn)  # 0, or 1 for a zero row
    scores = []
    for labels in labelings:
        labels = np.asarray(labels)
        k = int(labels.max()) + 1
        onehot = np.zeros((n, k))
        onehot[np.arange(n), labels] = 1.0
        sizes = onehot.sum(axis=0)
        sums = sizes[None, :] - Xn @ (onehot.T @ Xn).T  # (n, K) summed distances
        np.maximum(sums, 0.0, out=sums)
        sums[np.arange(n), labels] -= self_dist  # the diagonal distance is 0
        scores.append(_silhouette_from_sums(sums, sizes, labels))
    return scores


def _silhouette_from_sums(sums, sizes, labels):
    """Mean silhouette from each sample's summed distance to each cluster."""
    n = sums.shape[0]
    own = sizes[labels]
    a = sums[np.arange(n), labels] / np.maximum(own - 1, 1)
    mean_other = sums / np.maximum(sizes, 1)[None, :]
    mean_other[np.arange(n), labels] = np.inf
    mean_other[:, sizes == 0] = np.inf
    b = mean_other.min(axis=1)
    denom = np.maximum(a, b)
    s = np.where(denom > 0, (b - a) / np.where(denom > 0, denom, 1.0), 0.0)
    s[own <= 1] = 0.0
    return float(s.mean())


def _silhouette_scores_sparse_affinity(affinity, labelings):
    """Exact silhouettes under ``D = max(1 - A, 0)`` (zero diagonal) for a sparse
    ``A``, without the dense ``n x n`` distance matrix: a sample's summed
    distance to cluster ``c`` is ``n_c - sum_(j in c, j != i) min(A_ij, 1)``
    (minus 1 for its own cluster, itself excluded)."""
    S = affinity.tocsr(copy=True)
    np.minimum(S.data, 1.0, out=S.data)
    S.setdiag(0)
    S.eliminate_zeros()
    n = S.shape[0]
    scores = []
    for labels in labelings:
        labels = np.asarray(labels)
        k = int(labels.max()) + 1
        onehot = sparse.csr_matrix(
            (np.ones(n), (np.arange(n), labels)), shape=(n, k)
        )
        sizes = np.bincount(labels, minlength=k).astype(np.float64)
        sums = sizes[None, :] - (S @ onehot).toarray()
        sums[np.arange(n), labels] -= 1.0
        scores.append(_silhouette_from_sums(sums, sizes, labels))
    return scores


# --------------------------------------------------------------------------
# Functional core
# --------------------------------------------------------------------------
def _adaptive_spectral_clustering(affinity, **kwargs):
    """As adaptive_spectral_clustering, also returning the eigenpairs."""
    shape = affinity.shape if hasattr(affinity, "shape") else np.shape(affinity)
    n = shape[0] if len(shape) else 0
    # Up to a few thousand patches every BLAS call here is small: waking BLAS
    # threads costs more than they save (and makes timings erratic), so the
    # whole search runs on one BLAS thread. Larger problems keep the caller's
    # setting.
    with threadpool_limits(limits=1 if n <= _SINGLE_THREAD_MAX_N else None, user_api="blas"):
        return _adaptive_spectral_clustering_impl(affinity, **kwargs)


def _check_k_bounds(k_min, k_max):
    if k_min > k_max:
        raise ValueError(
            f"k_min={k_min} is larger than k_max={k_max}; choose k_min <= k_max."
        )


def _effective_k_bounds(n, k_min, k_max, *, clip_k_min, name="the input"):
    """The K search bounds for ``n >= 3`` samples: K is at most ``n - 1``.

    ``k_max`` above ``n - 1`` is clipped. ``k_min`` above ``n - 1`` is clipped
    too when ``clip_k_min`` (images, whose grid size the embedder decides),
    else it is an error (a plain matrix: the caller chose its size).
    """
    hi = int(min(k_max, n - 1))
    if k_min > n - 1:
        if not clip_k_min:
            raise ValueError(
                f"k_min={k_min} needs at least {k_min + 1} samples (the silhouette "
                f"needs K <= n_samples - 1), but {name} has {n}; lower k_min to at "
                f"most {n - 1} or pass more samples."
            )
        lo = hi
    else:
        lo = int(k_min)
    if (lo, hi) != (k_min, k_max):
        logger.info("%s has %d samples: K searched in [%d, %d] instead of "
                    "[k_min=%d, k_max=%d]", name, n, lo, hi, k_min, k_max)
    return lo, hi


def _adaptive_spectral_clustering_impl(
    affinity,
    *,
    features=None,
    spectrum="affinity",
    eigengap_rule="relative",
    k_min=2,
    k_max=15,
    beta=0.5,
    single_segment_threshold=0.05,
    n_init=3,
    random_state=None,
    clip_k_min=False,
    name="the input",
):
    _check_k_bounds(k_min, k_max)
    A = _as_float_affinity(affinity)
    n = A.shape[0]
    if features is not None:
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[0] != n:
            raise ValueError(
                f"features must be an (n, n_features) matrix with one row per "
                f"affinity row; got shape {features.shape} for a {n} x {n} affinity."
            )
        if not np.all(np.isfinite(features)):
            raise ValueError(
                f"the features of {name} contain NaN or infinite values; remove or "
                f"impute them (or check the embedder's input image)."
            )
    rng = check_random_state(random_state)
    info = {"single_segment": False, "sparse_affinity": bool(sparse.issparse(A)),
            "n_landmarks": None}
    if n < 3:
        # Nothing to choose: one sample is one segment; two are two segments
        # unless the one-segment test (on the 2 x 2 matrix) joins them.
        second = np.nan
        if n == 2 and single_segment_threshold is not None:
            P = np.maximum(A.toarray() if sparse.issparse(A) else A, 0.0)
            second = float(linalg.eigvalsh(_normalize(P.astype(np.float64)))[0])
        k = 1 if n == 1 or second < single_segment_threshold else 2
        labels = np.arange(n, dtype=np.int64) if k == 2 else np.zeros(n, np.int64)
        info.update(n_clusters=k, eigengap_k=k, eigenvalues=np.ones(n),
                    silhouette_scores={}, silhouette=0.0, second_eigenvalue=second,
                    single_segment=bool(n == 2 and k == 1), k_bounds=(k, k))
        return labels, info, np.ones(n), np.eye(n)

    k_min_eff, k_max_eff = _effective_k_bounds(
        n, k_min, k_max, clip_k_min=clip_k_min, name=name
    )
    info["k_bounds"] = (k_min_eff, k_max_eff)
    timings = info["timings"] = {}
    start = time.perf_counter()
    n_eig = min(k_max_eff + 1, n)
    M = _normalize(A) if spectrum == "normalized" else A
    vals, vecs = leading_eigenpairs(M, n_eig, random_state=rng)
    del M
    timings["eigen"] = time.perf_counter() - start
    start = time.perf_counter()
    if spectrum == "normalized":
        second = float(vals[1])
    elif single_segment_threshold is not None:
        second = _second_normalized_eigenvalue(A, rng)
    else:
        second = float("nan")
    timings["one_segment_test"] = time.perf_counter() - start
    info["second_eigenvalue"] = second
    info["eigenvalues"] = vals
    k0 = eigengap_k(vals, rule=eigengap_rule, k_min=k_min_eff, k_max=k_max_eff)
    info["eigengap_k"] = int(k0)

    if single_segment_threshold is not None and second < single_segment_threshold:
        logger.debug("one segment: second eigenvalue %.3g < %.3g", second,
                     single_segment_threshold)
        info.update(n_clusters=1, silhouette_scores={}, silhouette=0.0,
                    single_segment=True)
        return np.zeros(n, dtype=np.int64), info, vals, vecs

    start = time.perf_counter()
    candidates = _k_range(k0, beta=beta, k_min=k_min_eff, k_max=k_max_eff)
    labelings = []
    # The embeddings are tiny (n x K): k-means is faster on one thread (OpenMP
    # and BLAS) than it is paying thread start-ups on every call. The
    # silhouettes from features are thin products too (n x d by d x K): one
    # BLAS thread, whatever n.
    with threadpool_limits(limits=1):
        for k in candidates:
            emb = _row_normalize(vecs[:, :k])
            km = KMeans(n_clusters=k, n_init=n_init, random_state=rng.randint(2**31 - 1))
            labelings.append(_relabel(km.fit_predict(emb)))
    valid = [i for i, lab in enumerate(labelings) if 2 <= lab.max() + 1 <= n - 1]
    to_score = [labelings[i] for i in valid]
    if features is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            computed = silhouette_scores_cosine(features, to_score)
    elif sparse.issparse(A):
        computed = _silhouette_scores_sparse_affinity(A, to_score)
    else:
        computed = silhouette_scores_for_labels(_distance_matrix(A), to_score)
    scores = dict.fromkeys(candidates, float("nan"))
    for i, s in zip(valid, computed):
        scores[candidates[i]] = s
    if valid:
        best = max(valid, key=lambda i: (scores[candidates[i]], -candidates[i]))
    else:
        best = 0
    labels = labelings[best]
    info.update(
        n_clusters=int(labels.max()) + 1,
        silhouette_scores=scores,
        silhouette=float(np.nan_to_num(scores[candidates[best]])),
    )
    timings["k_search"] = time.perf_counter() - start
    return labels, info, vals, vecs


_CORE_CONSTRAINTS = {
    "spectrum": [StrOptions({"normalized", "affinity"})],
    "eigengap_rule": [StrOptions({"relative", "largest", "elbow"})],
    "k_min": [Interval(numbers.Integral, 1, None, closed="left")],
    "k_max": [Interval(numbers.Integral, 1, None, closed="left")],
    "beta": [Interval(numbers.Real, 0, None, closed="left")],
    "single_segment_threshold": [Interval(numbers.Real, 0, 1, closed="both"), None],
    "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
    "random_state": ["random_state"],
}


@validate_params(
    {"affinity": ["array-like", "sparse matrix"], "features": ["array-like", None],
     **_CORE_CONSTRAINTS},
    prefer_skip_nested_validation=True,
)
def adaptive_spectral_clustering(
    affinity,
    *,
    features=None,
    spectrum="affinity",
    eigengap_rule="relative",
    k_min=2,
    k_max=15,
    beta=0.5,
    single_segment_threshold=0.05,
    n_init=3,
    random_state=None,
):
    """Cluster an affinity matrix, choosing the number of clusters itself.

    Read the module docstring for the algorithm.

    Parameters
    ----------
    affinity : ndarray or sparse matrix of shape (n, n)
        Symmetric non-negative affinity (an asymmetric one is symmetrised as
        ``(A + A.T) / 2``). Must be finite and not empty.
    features : ndarray of shape (n, n_features), default=None
        The features the affinity came from. When given, the silhouette uses
        their cosine distance; otherwise ``1 - affinity`` (computed from the
        non-zero entries alone for a sparse affinity, in ``O(nnz K)``).
    spectrum : {"affinity", "normalized"}, default="affinity"
        Decompose ``A`` itself (the paper) or the normalised affinity
        ``D^-1/2 A D^-1/2`` (equivalently the normalised Laplacian).
    eigengap_rule : {"relative", "largest", "elbow"}, default="relative"
        How ``K0`` is read off the eigengaps (see :func:`eigengap_k`).
    k_min : int, default=2
        Smallest K of the silhouette search, at most ``k_max`` and at most
        ``n - 1`` (a larger one raises ``ValueError``).
    k_max : int, default=15
        Largest K considered; clipped to ``n - 1`` (``info["k_bounds"]``).
    beta : float, default=0.5
        Relative half-width of the search around ``K0``, at least 0 (0 tries
        ``K0`` alone).
    single_segment_threshold : float or None, default=0.05
        Return one segment when the second eigenvalue of the normalised
        (non-negative part of the) affinity is below this value (no cut
        separates the patches; see the module docstring). ``None`` never
        returns one segment.
    n_init : int, default=3
        k-means restarts for each ``K``.
    random_state : int, RandomState instance or None, default=None
        Seeds k-means and the iterative eigensolver.

    Returns
    -------
    labels : ndarray of shape (n,), dtype int64
        Cluster of each sample, ``0 .. K-1``, numbered by first appearance.
        With fewer than 3 samples there is nothing to choose: one sample gets
        label 0; two get labels 0 and 1, or both 0 when the one-segment test
        (on their 2 x 2 affinity) joins them.
    info : dict
        ``n_clusters``, ``eigengap_k`` (K0), ``eigenvalues`` (the leading
        eigenvalues of the decomposed matrix, descending),
        ``silhouette_scores`` (dict K -> score, empty for one segment),
        ``silhouette`` (score of the result; 0.0 for one segment),
        ``second_eigenvalue`` (of the normalised affinity), ``single_segment``,
        ``k_bounds`` (the K search bounds actually used, ``(k_min,
        min(k_max, n - 1))``), ``sparse_affinity``, ``n_landmarks``
        (``None`` here; see :class:`AdaptiveSpectralSegmenter`) and
        ``timings`` (seconds spent on the ``"eigen"`` decomposition, the
        ``"one_segment_test"`` and the ``"k_search"``: k-means and
        silhouettes).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_clasp.affinity import cosine_affinity
    >>> rng = np.random.RandomState(0)
    >>> X = np.repeat(np.eye(3), 20, axis=0) + 0.05 * rng.randn(60, 3)
    >>> labels, info = adaptive_spectral_clustering(cosine_affinity(X), random_state=0)
    >>> info["n_clusters"], info["k_bounds"]
    (3, (2, 15))
    """
    labels, info, _, _ = _adaptive_spectral_clustering(
        affinity,
        features=features,
        spectrum=spectrum,
        eigengap_rule=eigengap_rule,
        k_min=k_min,
        k_max=k_max,
        beta=beta,
        single_segment_threshold=single_segment_threshold,
        n_init=n_init,
        random_state=random_state,
    )
    return labels, info


# --------------------------------------------------------------------------
# Many samples: landmarks and the Nystroem extension
# --------------------------------------------------------------------------
def _spectral_extension(A_new, V, eigenvalues, degrees_fit):
    """Row-normalised Nystroem extension ``a(x) V / lambda`` of new samples.

    ``A_new`` is their ``(n_new, n_fit)`` affinity to the fitted samples; with
    ``degrees_fit`` (normalised spectrum) it is normalised first.
    """
    A = A_new.toarray() if sparse.issparse(A_new) else np.asarray(A_new)
    if degrees_fit is not None:
        inv_new = _inv_sqrt(np.asarray(A.sum(axis=1)))
        A = A * inv_new[:, None] * _inv_sqrt(np.asarray(degrees_fit))[None, :]
    lam = np.asarray(eigenvalues[: V.shape[1]], dtype=np.float64)
    scale = np.where(np.abs(lam) > 1e-12, 1.0 / np.where(lam == 0, 1, lam), 0.0)
    return _row_normalize((A @ V) * scale[None, :])


def _segment_features(X, *, max_dense_samples, random_state, clip_k_min=False,
                      name="the input", **core):
    """Cluster features on their cosine affinity, in bounded memory.

    Up to ``max_dense_samples`` samples (or with it ``None``): the dense
    affinity and the exact algorithm. Beyond: ``m = max_dense_samples``
    landmark samples drawn at random (without replacement, from
    ``random_state``) are clustered exactly on their own dense affinity;
    every other sample is placed in the landmarks' spectral embedding by the
    Nystroem extension and takes the segment whose mean embedding is closest.
    Memory: the ``m x m`` affinity plus row blocks of about 64 MB.

    Returns ``labels, info, fit`` where ``fit`` holds what ``transform``
    needs: ``X_fit`` (the clustered rows), ``vecs`` (their leading
    eigenvectors, ``n_clusters`` columns), ``vals``, ``degrees`` and
    ``landmarks`` (indices or None), and ``embedding`` (row-normalised
    spectral embedding of all ``n`` samples).
    """
    n = X.shape[0]
    rng = check_random_state(random_state)
    landmarks = None
    if max_dense_samples is not None and n > max_dense_samples:
        landmarks = np.sort(rng.choice(n, size=int(max_dense_samples), replace=False))
        logger.info(
            "%s has %d samples, more than max_dense_samples=%d: clustering %d "
            "random landmark samples and extending to the rest (Nystroem)",
            name, n, max_dense_samples, landmarks.size,
        )
        X_fit = X[landmarks]
    else:
        X_fit = X
    start = time.perf_counter()
    A = cosine_affinity(X_fit)
    seconds = time.perf_counter() - start
    labels_fit, info, vals, vecs = _adaptive_spectral_clustering(
        A, features=X_fit, random_state=rng, clip_k_min=clip_k_min, name=name, **core
    )
    info.setdefault("timings", {})["affinity"] = seconds
    k = info["n_clusters"]
    degrees = (
        np.asarray(A.sum(axis=1), dtype=np.float64).ravel()
        if core.get("spectrum") == "normalized" else None
    )
    del A
    V = vecs[:, :k]
    emb_fit = _row_normalize(V)
    fit = dict(X_fit=X_fit, vecs=V, vals=vals, degrees=degrees, landmarks=landmarks)
    if landmarks is None:
        fit["embedding"] = emb_fit
        return labels_fit, info, fit
    info["n_landmarks"] = int(landmarks.size)
    labels = np.zeros(n, dtype=np.int64)
    embedding = np.empty((n, k), dtype=emb_fit.dtype)
    start = time.perf_counter()
    if k > 1:
        centres = np.stack([emb_fit[labels_fit == c].mean(axis=0) for c in range(k)])
        block = max(1, (64 * 2**20) // (X_fit.itemsize * X_fit.shape[0]))
        for lo in range(0, n, block):  # not `start`: that times the extension
            hi = min(lo + block, n)
            emb = _spectral_extension(cosine_affinity(X[lo:hi], X_fit), V, vals, degrees)
            embedding[lo:hi] = emb
            d2 = (emb * emb).sum(1)[:, None] - 2.0 * emb @ centres.T + \
                (centres * centres).sum(1)[None, :]
            labels[lo:hi] = np.argmin(d2, axis=1)
        labels[landmarks] = labels_fit
        labels = _relabel(labels)
    else:
        embedding[:] = 1.0
    embedding[landmarks] = emb_fit
    fit["embedding"] = embedding
    info["timings"]["extension"] = time.perf_counter() - start
    return labels, info, fit


def _row_normalize(E):
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    return E / np.where(norms > 0, norms, 1.0)


def _relabel(labels):
    """Renumber labels 0..K-1 in order of first appearance (deterministic output)."""
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    mapping = np.empty(order.size, dtype=np.int64)
    mapping[order] = np.arange(order.size)
    uniq = np.unique(labels)
    return mapping[np.searchsorted(uniq, labels)]


# --------------------------------------------------------------------------
# Estimator
# --------------------------------------------------------------------------
class AdaptiveSpectralSegmenter(ClusterMixin, TransformerMixin, BaseEstimator):
    """CLASP's adaptive spectral clustering: picks K itself, then clusters.

    Two kinds of input:

    * A plain matrix (the scikit-learn clusterer): ``(n_samples, n_features)``
      features, clustered on their cosine affinity (``affinity="cosine"``),
      or a square ``(n_samples, n_samples)`` affinity
      (``affinity="precomputed"``). ``fit`` sets ``labels_`` and the
      diagnostics below.
    * A list of :class:`~sklearn_clasp.records.PatchGrid` records, one per
      image, as a Pipeline step. Each image is segmented on its own: on the
      record's ``affinity`` when it has one (from :class:`CosineAffinity`),
      else on its features. ``transform`` returns the records with ``labels``
      (the ``(h, w)`` patch grid) and the diagnostics in ``info``; every
      fitted attribute is then a list with one entry per image.

    Images are segmented one at a time, so ``transform`` on records re-runs
    the segmentation on its input. With a plain matrix, ``fit_transform``
    returns the row-normalised spectral embedding (``n_clusters_`` columns)
    that k-means clustered (with landmarks, see ``max_dense_samples``, its
    Nystroem extension to every sample), and ``transform`` places new
    samples in it.

    Parameters
    ----------
    affinity : {"cosine", "precomputed"}, default="cosine"
        How a plain matrix is read: features, or a precomputed affinity.
        Ignored for records.
    spectrum : {"affinity", "normalized"}, default="affinity"
        Decompose the affinity itself, as the paper does, or the normalised
        affinity (normalised Laplacian).
    eigengap_rule : {"relative", "largest", "elbow"}, default="relative"
        How the first ``K0`` is read from the eigengaps (see
        :func:`eigengap_k`): the largest gap relative to its eigenvalue, the
        largest gap, or the paper's elbow rule. ``PAPER_SETTINGS``
        (``spectrum="affinity"``, ``eigengap_rule="elbow"``,
        ``single_segment_threshold=None``) reproduces the paper; the defaults
        recover K more accurately (``benchmarks/RESULTS.md``).
    k_min : int, default=2
        Smallest K of the silhouette search.
    k_max : int, default=15
        Largest K considered (eigengaps and search).
    beta : float, default=0.5
        The search covers ``[floor(K0 (1-beta)), ceil(K0 (1+beta))]`` clipped
        to ``[k_min, k_max]``.
    single_segment_threshold : float or None, default=0.05
        One segment (``K = 1``, whatever ``k_min``) when the second eigenvalue
        of the normalised affinity is below this value: no cut separates the
        patches (Cheeger's inequality), as for a uniform image. ``None``
        disables it. The default was set on the weights-free embedder's
        features (near-uniform images stay below 0.04, real photographs
        above it: ``benchmarks/RESULTS.md``); check it for other features.
    n_init : int, default=3
        k-means restarts per K.
    max_dense_samples : int or None, default=10_000
        Memory bound when the segmenter builds the affinity itself (feature
        input, or records without an affinity): up to this many samples, the
        dense cosine affinity (``4 n**2`` bytes in float32: 120 MB for the
        5,476 patches of a 1036 x 1036 image, 400 MB at 10,000). Beyond it,
        ``max_dense_samples`` landmark samples drawn from ``random_state``
        are clustered exactly and every other sample gets the segment whose
        mean spectral embedding (Nystroem extension) is closest; memory
        stays about that of ``max_dense_samples`` samples
        (``info["n_landmarks"]``, a log message at INFO level). A given
        affinity (``affinity="precomputed"``, or records from
        :class:`CosineAffinity`) is always used as it is. ``None`` always
        builds the dense affinity.
    random_state : int, RandomState instance or None, default=None
        Makes the k-means and eigensolver starts (and the landmarks), hence
        the labels, repeatable.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,), or list of ndarray of shape (h, w)
        Segment of each sample (patch).
    n_clusters_ : int or list of int
        The chosen K.
    eigengap_k_ : int or list of int
        K0, the eigengap estimate the search started from.
    eigenvalues_ : ndarray or list of ndarray
        Leading eigenvalues of the decomposed matrix, descending.
    silhouette_scores_ : dict or list of dict
        K -> silhouette of the K-means partition; empty for one segment.
    eigenvectors_ : ndarray of shape (n_fit, K)
        Leading ``K = n_clusters_`` eigenvectors of the decomposed matrix
        (plain-matrix input), used by :meth:`transform`; ``n_fit`` is
        ``n_samples``, or the number of landmarks.
    degrees_ : ndarray of shape (n_fit,) or None
        Affinity degrees of the fitted samples (``spectrum="normalized"``).
    X_fit_ : ndarray of shape (n_fit, n_features) or None
        The fitted features (``affinity="cosine"``): all samples, or the
        landmarks.
    landmark_indices_ : ndarray of shape (n_fit,) or None
        Rows of ``X`` used as landmarks (plain-matrix input with more than
        ``max_dense_samples`` samples), else ``None``.
    n_features_in_ : int
        Features seen in :meth:`fit` (plain-matrix input).

    See Also
    --------
    adaptive_spectral_clustering : The functional form.
    sklearn.cluster.SpectralClustering : Spectral clustering with a fixed K.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_clasp import AdaptiveSpectralSegmenter
    >>> rng = np.random.RandomState(0)
    >>> X = np.repeat(np.eye(4), 25, axis=0) + 0.05 * rng.randn(100, 4)
    >>> seg = AdaptiveSpectralSegmenter(random_state=0).fit(X)
    >>> seg.n_clusters_
    4
    """

    _parameter_constraints: dict = {
        "affinity": [StrOptions({"cosine", "precomputed"})],
        **_CORE_CONSTRAINTS,
        "max_dense_samples": [Interval(numbers.Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        *,
        affinity="cosine",
        spectrum="affinity",
        eigengap_rule="relative",
        k_min=2,
        k_max=15,
        beta=0.5,
        single_segment_threshold=0.05,
        n_init=3,
        max_dense_samples=MAX_DENSE_SAMPLES,
        random_state=None,
    ):
        self.affinity = affinity
        self.spectrum = spectrum
        self.eigengap_rule = eigengap_rule
        self.k_min = k_min
        self.k_max = k_max
        self.beta = beta
        self.single_segment_threshold = single_segment_threshold
        self.n_init = n_init
        self.max_dense_samples = max_dense_samples
        self.random_state = random_state

    # -- helpers ----------------------------------------------------------
    def _check_params(self):
        _check_k_bounds(self.k_min, self.k_max)

    def _core_kwargs(self, random_state):
        return dict(
            spectrum=self.spectrum,
            eigengap_rule=self.eigengap_rule,
            k_min=self.k_min,
            k_max=self.k_max,
            beta=self.beta,
            single_segment_threshold=self.single_segment_threshold,
            n_init=self.n_init,
            random_state=random_state,
        )

    def _segment_array(self, X, random_state):
        """Segment a plain matrix; set what transform needs; return the labels,
        the diagnostics and the spectral embedding of the samples."""
        if self.affinity == "precomputed":
            if X.shape[0] != X.shape[1]:
                raise ValueError(
                    f"affinity='precomputed' needs a square affinity matrix; got "
                    f"shape {X.shape}. Pass features with affinity='cosine'."
                )
            if self.spectrum == "normalized":
                check_non_negative(
                    X, "AdaptiveSpectralSegmenter (a precomputed affinity with "
                    "spectrum='normalized'; clip negative affinities or use "
                    "spectrum='affinity')"
                )
            labels, info, vals, vecs = _adaptive_spectral_clustering(
                X, features=None, name="X", **self._core_kwargs(random_state)
            )
            k = info["n_clusters"]
            fit = dict(
                X_fit=None, vecs=vecs[:, :k], vals=vals, landmarks=None,
                degrees=(np.asarray(_as_float_affinity(X).sum(axis=1)).ravel()
                         if self.spectrum == "normalized" else None),
                embedding=_row_normalize(vecs[:, :k]),
            )
        else:
            labels, info, fit = _segment_features(
                X, max_dense_samples=self.max_dense_samples, name="X",
                **self._core_kwargs(random_state),
            )
        # What transform needs to embed new samples (the Nystroem extension).
        self.X_fit_ = fit["X_fit"]
        self.degrees_ = fit["degrees"]
        self.eigenvectors_ = fit["vecs"]
        self.landmark_indices_ = fit["landmarks"]
        return labels, info, fit["embedding"]

    def _segment_record(self, rec, random_state):
        if rec.features is not None:
            feats = grid_feature_matrix(rec, step="AdaptiveSpectralSegmenter")
        else:
            feats = None
        kwargs = dict(self._core_kwargs(random_state), clip_k_min=True,
                      name=repr(rec.name))
        if rec.affinity is not None:
            A = rec.affinity
            if A.shape != (rec.n_patches, rec.n_patches):
                raise ValueError(
                    f"AdaptiveSpectralSegmenter: record {rec.name!r} has a "
                    f"{A.shape[0]} x {A.shape[1]} affinity for {rec.n_patches} "
                    f"patches; recompute it with CosineAffinity."
                )
            labels, info, _, _ = _adaptive_spectral_clustering(A, features=feats, **kwargs)
        else:
            labels, info, _ = _segment_features(
                feats, max_dense_samples=self.max_dense_samples, **kwargs
            )
        return rec.replace(labels=labels.reshape(rec.grid_shape), info=info)

    def _set_fitted(self, labels, infos, many):
        pick = (lambda key: [i[key] for i in infos]) if many else (lambda key: infos[0][key])
        self.labels_ = labels if many else labels[0]
        self.n_clusters_ = pick("n_clusters")
        self.eigengap_k_ = pick("eigengap_k")
        self.eigenvalues_ = pick("eigenvalues")
        self.silhouette_scores_ = pick("silhouette_scores")

    def _segment_records(self, X):
        records = check_records(X, step="AdaptiveSpectralSegmenter")
        for rec in records:
            if rec.affinity is None and rec.features is None:
                raise ValueError(
                    f"AdaptiveSpectralSegmenter: record {rec.name!r} has neither "
                    f"features nor an affinity; put a patch embedder before it."
                )
        rng = check_random_state(self.random_state)
        seeds = rng.randint(np.iinfo(np.int32).max, size=len(records))
        return [self._segment_record(r, int(s)) for r, s in zip(records, seeds)]

    # -- API ---------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Segment ``X`` and store the labels and diagnostics.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, n_samples), \
                or list of PatchGrid
            Features, a precomputed affinity, or per-image records.
        y : None
            Ignored.

        Returns
        -------
        self : AdaptiveSpectralSegmenter
        """
        self._fit(X)
        return self

    def _fit(self, X):
        self._check_params()
        if is_record_sequence(X):
            out = self._segment_records(X)
            self._set_fitted([r.labels for r in out], [r.info for r in out], True)
            return out
        X = validate_data(
            self, X, accept_sparse=["csr", "csc", "coo"] if self.affinity == "precomputed" else False,
            dtype=[np.float64, np.float32], ensure_min_samples=2,
        )
        if self.affinity == "precomputed" and not sparse.issparse(X):
            X = check_symmetric(X, raise_warning=False)
        labels, info, embedding = self._segment_array(X, self.random_state)
        self._set_fitted([labels], [info], False)
        return embedding.astype(X.dtype, copy=False)

    def fit_predict(self, X, y=None):
        """Segment ``X`` and return the labels.

        Parameters
        ----------
        X : array-like or list of PatchGrid
            See :meth:`fit`.
        y : None
            Ignored.

        Returns
        -------
        labels : ndarray of shape (n_samples,), or list of ndarray of shape (h, w)
        """
        return self.fit(X).labels_

    def fit_transform(self, X, y=None):
        """Segment ``X``; return records with labels, or the spectral embedding.

        Parameters
        ----------
        X : array-like or list of PatchGrid
            See :meth:`fit`.
        y : None
            Ignored.

        Returns
        -------
        Xt : list of PatchGrid, or ndarray of shape (n_samples, K)
            The segmented records, or the row-normalised spectral embedding
            (``K = n_clusters_`` columns).
        """
        self._validate_params()
        return self._fit(X)

    def transform(self, X):
        """Segment each record of ``X``, or embed the matrix ``X`` spectrally.

        Parameters
        ----------
        X : array-like or list of PatchGrid
            Records are segmented afresh (each image on its own). A plain
            matrix (features, or with ``affinity="precomputed"`` its
            ``(n_samples, n_fitted)`` affinity to the fitted samples) is
            placed in the fitted spectral embedding by the Nystroem extension
            ``v(x) = a(x) V / lambda``, row-normalised: on the fitted samples
            this gives back exactly the embedding k-means clustered.

        Returns
        -------
        Xt : list of PatchGrid, or ndarray of shape (n_samples, K)
            The segmented records, or the samples in the spectral embedding
            (``K = n_clusters_`` columns).
        """
        check_is_fitted(self, "labels_")
        if is_record_sequence(X):
            self._check_params()
            return self._segment_records(X)
        if isinstance(self.labels_, list):
            raise ValueError(
                "this segmenter was fitted on image records; transform records too."
            )
        X = validate_data(
            self, X, accept_sparse=["csr", "csc", "coo"] if self.affinity == "precomputed" else False,
            dtype=[np.float64, np.float32], reset=False,
        )
        return self._nystroem(X)

    def _nystroem(self, X):
        if self.affinity == "precomputed":
            A = X
        else:
            A = cosine_affinity(X, self.X_fit_)
        emb = _spectral_extension(A, self.eigenvectors_, self.eigenvalues_,
                                  self.degrees_)
        return emb.astype(X.dtype, copy=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.pairwise = self.affinity == "precomputed"
        tags.input_tags.sparse = self.affinity == "precomputed"
        tags.input_tags.positive_only = (
            self.affinity == "precomputed" and self.spectrum == "normalized"
        )
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
