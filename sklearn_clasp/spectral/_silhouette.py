"""Exact silhouettes of several candidate partitions, without n x n work per K."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from ..affinity import unit_rows


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
    scores = []
    for labels in labelings:
        labels, onehot = _one_hot(labels, distances.dtype)
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
    Xn = unit_rows(np.asarray(features, dtype=np.float64))
    n = Xn.shape[0]
    self_dist = 1.0 - np.einsum("ij,ij->i", Xn, Xn)  # 0, or 1 for a zero row
    scores = []
    for labels in labelings:
        labels, onehot = _one_hot(labels)
        sizes = onehot.sum(axis=0)
        sums = sizes[None, :] - Xn @ (onehot.T @ Xn).T  # (n, K) summed distances
        np.maximum(sums, 0.0, out=sums)
        sums[np.arange(n), labels] -= self_dist  # the diagonal distance is 0
        scores.append(_silhouette_from_sums(sums, sizes, labels))
    return scores


def silhouette_scores_euclidean(features, labelings, *, block_bytes=64 * 2**20):
    """Exact mean Euclidean silhouette of several labelings, in bounded memory.

    Equal to ``sklearn.metrics.silhouette_score(features, labels)`` for each
    labeling. The distances are computed in row blocks of about
    ``block_bytes`` and summed per cluster for every labeling at once, so no
    ``n x n`` matrix is held.

    Parameters
    ----------
    features : ndarray of shape (n, n_features)
    labelings : list of ndarray of shape (n,)
        Integer labels ``0 .. K-1``, each with ``2 <= K <= n - 1``.
    block_bytes : int, default=64 MiB
        Size of a block of distances.

    Returns
    -------
    scores : list of float

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0], [0.1], [1.0], [1.1]])
    >>> round(silhouette_scores_euclidean(X, [np.array([0, 0, 1, 1])])[0], 4)
    0.8997
    """
    X = np.asarray(features, dtype=np.float64)
    X = X - X.mean(axis=0)
    n = X.shape[0]
    sq = np.einsum("ij,ij->i", X, X)
    onehots = [_one_hot(labels)[1] for labels in labelings]
    stacked = np.hstack(onehots) if onehots else np.zeros((n, 0))
    sums = np.empty((n, stacked.shape[1]))
    block = max(1, int(block_bytes) // (8 * n))
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        D = sq[lo:hi, None] + sq[None, :] - 2.0 * (X[lo:hi] @ X.T)
        np.maximum(D, 0.0, out=D)
        np.sqrt(D, out=D)
        D[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
        sums[lo:hi] = D @ stacked
    scores, start = [], 0
    for labels, onehot in zip(labelings, onehots):
        k = onehot.shape[1]
        scores.append(_silhouette_from_sums(sums[:, start:start + k], onehot.sum(axis=0),
                                            np.asarray(labels)))
        start += k
    return scores


def _one_hot(labels, dtype=np.float64):
    """``labels`` (``0 .. K-1``) as an array, and their ``(n, K)`` one-hot matrix."""
    labels = np.asarray(labels)
    onehot = np.zeros((labels.shape[0], int(labels.max()) + 1), dtype=dtype)
    onehot[np.arange(labels.shape[0]), labels] = 1.0
    return labels, onehot


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
