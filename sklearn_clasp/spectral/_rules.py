"""How K is chosen: the first estimate K0, the final choice, the one-segment tests.

Every function here works on plain arrays: eigenvalues, eigenvectors, labels.
``docs/spectral.md`` defines each rule and cites its source.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import linalg
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

EIGENGAP_RULES = ("relative", "largest", "elbow", "entropy")
K_SELECTIONS = ("silhouette", "eigengap", "stability", "gap", "rotation")
SINGLE_SEGMENT_TESTS = ("entropy", "cheeger", "gap")

#: Eigenvalues below this fraction of the largest one are not resolved (about
#: ``n eps`` of a float32 eigensolver for a thousand patches): the relative
#: rule does not read gaps that fall from them.
_RESOLVED_EIGENVALUE = 1e-4

#: Reference samples of the gap statistic (Tibshirani et al. use 10 to 20).
GAP_REFERENCES = 10


# --------------------------------------------------------------------------
# K0 from the spectrum
# --------------------------------------------------------------------------
def eigengap_k(eigenvalues, *, rule="relative", k_min=1, k_max=None):
    """First estimate ``K0`` of the number of clusters from the leading eigenvalues.

    With eigenvalues ``l_1 >= l_2 >= ...`` and gaps ``d_i = l_i - l_(i+1)``:

    * ``"largest"``: the classic eigengap heuristic, ``K0 = argmax d_i``
      over ``k_min <= i <= k_max``.
    * ``"relative"``: ``K0 = argmax d_i / l_i`` over the same range (scale
      free). Gaps falling from an eigenvalue below ``1e-4 l_1`` (not resolved
      by a float32 eigensolver), or into one below ``-1e-4 l_1``, score 0;
      a gap into a non-positive eigenvalue scores 1.
    * ``"elbow"``: the CLASP paper's rule, ``K0 = i* + 1`` where ``i*`` is the
      gap index farthest from the straight line joining ``(1, d_1)`` and
      ``(m, d_m)``, over all gaps ``1 .. m`` (``m = k_max`` when given).
    * ``"entropy"``: the effective number of leading eigenvalues,
      ``K0 = floor(exp(H) + 1/2)`` with ``H = -sum p_i ln p_i`` and
      ``p_i = (l_i - l_m)_+ / sum_j (l_j - l_m)_+`` over the first ``m - 1``
      of the ``m`` eigenvalues given (the last one is the floor), clipped to
      ``[k_min, k_max]``.

    Ties go to the smallest index.

    Parameters
    ----------
    eigenvalues : array-like of shape (m,)
        Leading eigenvalues in descending order.
    rule : {"relative", "largest", "elbow", "entropy"}, default="relative"
        Which rule.
    k_min : int, default=1
        Smallest K the rule may return (not applied by ``"elbow"``).
    k_max : int, default=None
        Only the ``k_max + 1`` leading eigenvalues are read (default: all).

    Returns
    -------
    k0 : int

    Examples
    --------
    >>> eigengap_k([1.0, 0.98, 0.97, 0.2, 0.1, 0.05], rule="largest")
    3
    >>> eigengap_k([1.0, 1.0, 1.0, 0.0, 0.0], rule="entropy")
    3
    """
    return eigengap_scores(eigenvalues, rule=rule, k_min=k_min, k_max=k_max)[4]


def eigengap_scores(eigenvalues, *, rule="relative", k_min=1, k_max=None):
    """The score each eigengap rule reads, index by index.

    With eigenvalues ``l_1 >= l_2 >= ...`` and gaps ``d_i = l_i - l_(i+1)``,
    the score of gap ``i`` is ``d_i / l_i`` (``"relative"``; see
    :func:`eigengap_k` for the zero rules), ``d_i`` (``"largest"``), the
    distance of ``(i, d_i)`` to the chord joining the first and the last gap
    (``"elbow"``), or, for ``"entropy"``, the share ``p_i`` of eigenvalue
    ``i`` in the floor-subtracted spectrum. The gap with the highest score
    among the eligible ones (ties: the first) is the one
    :func:`eigengap_k` picks: ``K0 = i`` for ``"relative"`` and
    ``"largest"``, ``K0 = i + 1`` for ``"elbow"``; for ``"entropy"``
    ``K0 = floor(exp(H) + 1/2)`` and ``best`` is that index.

    Parameters
    ----------
    eigenvalues : array-like of shape (m + 1,)
        Leading eigenvalues, descending (``record.info["eigenvalues"]``).
    rule : {"relative", "largest", "elbow", "entropy"}, default="relative"
        The rule.
    k_min : int, default=1
        Indices below ``k_min`` are not eligible (all rules but ``"elbow"``).
    k_max : int, default=None
        Only indices ``1 .. k_max`` are considered.

    Returns
    -------
    gap_index : ndarray of shape (m,), dtype int64
        ``1 .. m``.
    scores : ndarray of shape (m,)
        The rule's score of each index.
    eligible : ndarray of shape (m,), dtype bool
        Indices the rule may pick.
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
    >>> idx, p, eligible, best, k0 = eigengap_scores([1.0, 0.5, 0.5, 0.0], rule="entropy")
    >>> p.tolist(), k0
    ([0.5, 0.25, 0.25], 3)
    """
    if rule not in EIGENGAP_RULES:
        raise ValueError(
            f"unknown eigengap rule {rule!r}; use one of {', '.join(map(repr, EIGENGAP_RULES))}"
        )
    full = np.asarray(eigenvalues, dtype=np.float64).ravel()
    lam = full[: max(1, int(k_max)) + 1] if k_max is not None else full
    gaps = lam[:-1] - lam[1:]
    m = gaps.size
    index = np.arange(1, m + 1, dtype=np.int64)
    if m == 0:
        return index, gaps, np.zeros(0, bool), 0, 1
    lo = int(min(max(k_min, 1), m))
    if rule == "entropy":  # on the fixed window, then within the bounds
        k0, p = _entropy_k(full[:ENTROPY_WINDOW])
        shares = np.zeros(m)
        shares[: min(m, p.size)] = p[:m]
        k0 = int(min(max(k0, lo), m))
        return index, shares, index >= lo, k0, k0
    if rule in ("largest", "relative"):
        if rule == "relative":
            resolved = _RESOLVED_EIGENVALUE * abs(lam[0])
            top, below = lam[:m], lam[1:m + 1]
            ok = (top > resolved) & (below >= -resolved)
            below = np.maximum(below, 0.0)
            scores = np.where(ok, (top - below) / np.where(ok, top, 1.0), 0.0)
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


#: How many leading eigenvalues the spectral entropy is measured on, whatever
#: ``k_max`` (fewer when there are fewer samples): so that neither the entropy
#: rule's ``K0`` nor the entropy one-segment test moves with ``k_max``.
ENTROPY_WINDOW = 16


def effective_number(eigenvalues):
    """``exp(H)`` of the floor-subtracted leading eigenvalues, and the shares ``p``.

    ``p_i = (l_i - l_m)_+ / sum_j (l_j - l_m)_+`` for ``i < m``; 1.0 (one
    eigenvalue) when all the weights are 0.
    """
    lam = np.asarray(eigenvalues, np.float64)
    weights = np.maximum(lam[:-1] - lam[-1], 0.0)
    total = weights.sum()
    if not total > 0:
        return 1.0, np.zeros(weights.size)
    p = weights / total
    nz = p[p > 0]
    return math.exp(float(-(nz * np.log(nz)).sum())), p


def _entropy_k(lam):
    """``(floor(exp(H) + 1/2), p)`` for the floor-subtracted leading eigenvalues."""
    value, p = effective_number(lam)
    return int(math.floor(value + 0.5)), p


def k_window(k0, *, beta, k_min, k_max):
    """The candidate Ks around ``K0``: ``[floor(K0 (1 - beta)), ceil(K0 (1 + beta))]``
    within ``[max(k_min, 2), k_max]`` (the single ``clip(K0)`` when empty)."""
    k_min = max(int(k_min), 2)
    lo = max(k_min, int(math.floor(k0 * (1.0 - beta))))
    hi = min(k_max, int(math.ceil(k0 * (1.0 + beta))))
    if lo > hi:
        lo = hi = int(min(max(k0, k_min), k_max))
    return list(range(lo, hi + 1))


# --------------------------------------------------------------------------
# Candidate partitions
# --------------------------------------------------------------------------
def row_normalize(E):
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    return E / np.where(norms > 0, norms, 1.0)


def relabel(labels):
    """Renumber labels 0..K-1 in order of first appearance (deterministic output)."""
    labels = np.asarray(labels)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first)
    mapping = np.empty(order.size, dtype=np.int64)
    mapping[order] = np.arange(order.size)
    return mapping[inverse.ravel()]


class Partition:
    """One candidate: labels (0..K-1 by first appearance) and the k-means centres
    in the spectral embedding, in the same order. ``dim`` is the number of
    eigenvectors embedded (the K asked of k-means; ``k`` can be smaller when a
    cluster came out empty)."""

    __slots__ = ("k", "dim", "labels", "centers", "runs")

    def __init__(self, labels, centers, runs=()):
        labels = np.asarray(labels)
        _, first = np.unique(labels, return_index=True)
        order = np.unique(labels)[np.argsort(first)]
        self.labels = relabel(labels)
        self.centers = np.asarray(centers)[order]
        self.dim = int(np.asarray(centers).shape[1])
        self.k = int(self.labels.max()) + 1 if labels.size else 0
        self.runs = runs


def kmeans_partition(embedding, k, *, n_init, rng, keep_runs=False):
    """k-means (``n_init`` restarts) of the embedding; with ``keep_runs`` each
    restart's labels are kept (for the stability score)."""
    if not keep_runs:
        km = KMeans(n_clusters=k, n_init=n_init, random_state=rng.randint(2**31 - 1))
        labels = km.fit_predict(embedding)
        return Partition(labels, km.cluster_centers_)
    fits = []
    for _ in range(n_init):
        km = KMeans(n_clusters=k, n_init=1, random_state=rng.randint(2**31 - 1))
        km.fit(embedding)
        fits.append(km)
    best = min(fits, key=lambda f: f.inertia_)
    return Partition(best.labels_, best.cluster_centers_, runs=[f.labels_ for f in fits])


def stability_score(partition):
    """Mean adjusted Rand index between the restarts' partitions (1 if one run)."""
    runs = partition.runs
    if len(runs) < 2:
        return 1.0
    return float(np.mean([adjusted_rand_score(a, b)
                          for a, b in itertools.combinations(runs, 2)]))


# --------------------------------------------------------------------------
# The gap statistic (Tibshirani, Walther & Hastie 2001)
# --------------------------------------------------------------------------
def principal_coordinates(eigenvalues, eigenvectors):
    """``V diag(sqrt(max(l, 0)))``: the affinity's kernel principal coordinates."""
    scale = np.sqrt(np.maximum(np.asarray(eigenvalues, np.float64), 0.0))
    return np.asarray(eigenvectors, np.float64) * scale[None, :]


def _cluster_sums(Y, labels, k):
    """Per-cluster sums of the rows of ``Y`` and the cluster sizes."""
    onehot = np.zeros((Y.shape[0], k))
    onehot[np.arange(Y.shape[0]), labels] = 1.0
    return onehot.T @ Y, onehot.sum(axis=0)


def _within_ss(Y, labels, k):
    """Within-cluster sum of squares of ``Y`` under ``labels``."""
    sums, counts = _cluster_sums(Y, labels, k)
    total = float(np.einsum("ij,ij->", Y, Y))
    nz = counts > 0
    return max(total - float((np.einsum("ij,ij->i", sums[nz], sums[nz]) / counts[nz]).sum()),
               0.0)


def _lloyd(Y, k, rng, *, max_iter=50):
    """Plain k-means (k-means++ seeding, Lloyd iterations); returns the labels."""
    n = Y.shape[0]
    if k <= 1 or n <= k:
        return np.zeros(n, np.int64) if k <= 1 else np.arange(n) % max(k, 1)
    sq = np.einsum("ij,ij->i", Y, Y)
    centres = [Y[rng.randint(n)]]
    d2 = np.maximum(sq - 2 * Y @ centres[0] + centres[0] @ centres[0], 0.0)
    for _ in range(1, k):
        total = d2.sum()
        idx = rng.randint(n) if not total > 0 else int(
            np.searchsorted(np.cumsum(d2), rng.uniform(0, total)))
        c = Y[min(idx, n - 1)]
        centres.append(c)
        d2 = np.minimum(d2, np.maximum(sq - 2 * Y @ c + c @ c, 0.0))
    C = np.array(centres)
    labels = None
    for _ in range(max_iter):
        dist = sq[:, None] - 2 * Y @ C.T + np.einsum("ij,ij->i", C, C)[None, :]
        new = np.argmin(dist, axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        sums, counts = _cluster_sums(Y, labels, k)
        keep = counts > 0
        C[keep] = sums[keep] / counts[keep, None]
    return labels


def gap_statistic(Y, labelings, ks, rng, *, n_refs=GAP_REFERENCES):
    """Tibshirani's gap for each K: ``(gap, s)`` arrays over ``ks``.

    ``labelings[i]`` is the data's partition for ``ks[i]`` (``None``: k-means
    in ``Y``). The references are uniform over the box of ``Y``'s coordinate
    ranges, each partitioned by k-means in ``Y``.
    """
    lo, hi = Y.min(axis=0), Y.max(axis=0)
    log_w = np.array([
        math.log(max(_within_ss(Y, lab if lab is not None else _lloyd(Y, k, rng), k),
                     1e-300))
        for lab, k in zip(labelings, ks)
    ])
    ref = np.empty((n_refs, len(ks)))
    for b in range(n_refs):
        R = lo + (hi - lo) * rng.uniform(size=Y.shape)
        for j, k in enumerate(ks):
            ref[b, j] = math.log(max(_within_ss(R, _lloyd(R, k, rng), k), 1e-300))
    gap = ref.mean(axis=0) - log_w
    s = ref.std(axis=0) * math.sqrt(1.0 + 1.0 / n_refs)
    return gap, s


def gap_choice(gap, s):
    """Index of the smallest K with ``Gap(K) >= Gap(K+1) - s_(K+1)`` (else the last)."""
    for i in range(len(gap) - 1):
        if gap[i] >= gap[i + 1] - s[i + 1]:
            return i
    return len(gap) - 1


def gap_one_segment(Y, rng, *, n_refs=GAP_REFERENCES):
    """Tibshirani's test for one cluster: ``Gap(1) >= Gap(2) - s_2``.

    Returns ``(one_segment, gap_1, gap_2, s_2)``.
    """
    if _within_ss(Y, np.zeros(Y.shape[0], np.int64), 1) <= 0:
        return True, 0.0, 0.0, 0.0  # all samples at one point
    gap, s = gap_statistic(Y, [np.zeros(Y.shape[0], np.int64), None], [1, 2], rng,
                           n_refs=n_refs)
    return bool(gap[0] >= gap[1] - s[1]), float(gap[0]), float(gap[1]), float(s[1])


# --------------------------------------------------------------------------
# Self-tuning rotation (Zelnik-Manor & Perona 2004)
# --------------------------------------------------------------------------
def _rotation_cost(Z):
    """``J = sum_ij Z_ij^2 / max_j Z_ij^2`` and its gradient with respect to ``Z``."""
    Z2 = Z * Z
    m = np.argmax(Z2, axis=1)
    rows = np.arange(Z.shape[0])
    M = np.maximum(Z2[rows, m], 1e-300)
    S = Z2.sum(axis=1)
    J = float((S / M).sum())
    G = 2.0 * Z / M[:, None]
    G[rows, m] -= 2.0 * S * Z[rows, m] / (M * M)
    return J, G


def rotation_quality(X, R0=None, *, max_iter=200):
    """Best alignment of the columns of ``X`` with the canonical axes.

    Minimises Zelnik-Manor & Perona's cost ``J(R)`` over rotations ``R`` by
    gradient descent on the rotation group (steps ``R exp(-t Omega)`` with
    the skew-symmetric part of the gradient, step size halved until ``J``
    falls), from ``R0`` (default: the identity), for at most ``max_iter``
    steps or until two steps gain less than 1e-3 in quality.

    Returns ``(quality, R)`` with ``quality = 1 - (J / n - 1) / K``.
    """
    n, k = X.shape
    R = np.eye(k) if R0 is None else R0
    J, G = _rotation_cost(X @ R)
    step = 1.0

    def quality(j):
        return 1.0 - (j / n - 1.0) / k

    history = [quality(J)]
    for _ in range(max_iter):
        W = R.T @ (X.T @ G)
        omega = 0.5 * (W - W.T) / n
        norm = np.linalg.norm(omega)
        if norm < 1e-12:
            break
        accepted = False
        for _ in range(20):
            R_new = R @ linalg.expm(-step * omega)
            J_new, G_new = _rotation_cost(X @ R_new)
            if J_new < J:
                R, J, G = R_new, J_new, G_new
                step *= 1.5
                accepted = True
                break
            step *= 0.5
        if not accepted:
            break
        history.append(quality(J))
        if len(history) > 2 and history[-1] - history[-3] < 1e-3:
            break
    return quality(J), R


def rotation_choice(eigenvectors, ks):
    """ZP's choice of K: the largest K whose alignment quality is within 0.001 of
    the best; returns ``(index into ks, qualities, rotated eigenvectors of the
    choice)``. Rotations are warm-started from the previous K."""
    qualities, rotated = [], []
    R = None
    for k in ks:
        X = eigenvectors[:, :k].astype(np.float64)
        if R is not None and R.shape[0] < k:
            grown = np.eye(k)
            grown[: R.shape[0], : R.shape[0]] = R
            R = grown
        q, R = rotation_quality(X, R)
        qualities.append(q)
        rotated.append(X @ R)
    qualities = np.array(qualities)
    best = int(np.flatnonzero(qualities >= qualities.max() - 0.001)[-1])
    return best, qualities, rotated[best]

