"""The functional core: :func:`adaptive_spectral_clustering` on one affinity, and
:func:`cluster_features` on features in bounded memory (landmarks past a bound)."""

from __future__ import annotations

import logging
import math
import numbers
import time
from typing import NamedTuple

import numpy as np
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions, validate_params

from ..affinity import (
    MAX_DENSE_SAMPLES,
    SINGLE_THREAD_MAX_SAMPLES,
    cosine_affinity,
    cosine_affinity_tensor,
    limit_threads,
    local_scales,
    local_scaling_affinity,
)
from ..device import as_tensor, resolve_device, torch_threads
from . import _rules
from ._eigen import (
    _inv_sqrt,
    _normalize,
    _second_normalized_eigenvalue,
    check_affinity,
    leading_eigenpairs,
)
from ._silhouette import (
    _distance_matrix,
    _silhouette_scores_sparse_affinity,
    silhouette_scores_cosine,
    silhouette_scores_euclidean,
    silhouette_scores_for_labels,
)

logger = logging.getLogger("sklearn_clasp.spectral")

#: The largest ``k_max`` accepted: the eigensolver computes ``k_max + 1``
#: eigenpairs and the search runs k-means with up to ``k_max`` clusters, so
#: this bounds the work whatever the input.
MAX_CLUSTERS = 64
#: The most k-means restarts per K (the work grows with it).
MAX_N_INIT = 100

class SpectralEmbedding(NamedTuple):
    """What the clustering computed besides the labels (``return_embedding=True``).

    Attributes
    ----------
    eigenvalues : ndarray of shape (m,)
        Leading eigenvalues of the decomposed matrix, descending.
    eigenvectors : ndarray of shape (n_fit, m)
        The matching eigenvectors of the clustered samples (all samples, or
        the landmarks).
    embedding : ndarray of shape (n, K)
        Row-normalised leading ``K`` eigenvectors (``K = n_clusters``), for
        every sample (Nystroem extension for non-landmarks).
    centers : ndarray of shape (K, K)
        The segments' k-means centres in ``embedding``.
    proba : ndarray of shape (n, K), dtype float32
        Soft assignment: ``softmax_k(-|e_i - c_k|^2 / tau)`` with ``tau`` the
        mean squared distance of the samples to their own centre; its argmax
        is the label.
    degrees : ndarray of shape (n_fit,) or None
        Affinity degrees of the clustered samples (normalised spectrum only).
    landmarks : ndarray of shape (n_fit,) or None
        Indices of the landmark samples, or ``None`` when all were clustered.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    embedding: np.ndarray
    centers: np.ndarray
    proba: np.ndarray
    degrees: np.ndarray | None
    landmarks: np.ndarray | None


def check_k_bounds(k_min, k_max):
    """``k_min <= k_max``, or a ValueError that says so."""
    if k_min > k_max:
        raise ValueError(
            f"k_min={k_min} is larger than k_max={k_max}; choose k_min <= k_max."
        )


def _effective_k_bounds(n, k_min, k_max):
    """The K bounds for ``n >= 3`` samples: K is at most ``n - 1``.

    ``k_max`` above ``n - 1`` is clipped (logged); ``k_min`` above ``n - 1``
    is an error (the caller chose the input's size).
    """
    hi = int(min(k_max, n - 1))
    if k_min > n - 1:
        raise ValueError(
            f"k_min={k_min} needs at least {k_min + 1} samples (the silhouette "
            f"needs K <= n_samples - 1), but the input has {n}; lower k_min to "
            f"at most {n - 1} or pass more samples."
        )
    if hi != k_max:
        logger.info("%d samples: K searched in [%d, %d] instead of [k_min=%d, "
                    "k_max=%d]", n, k_min, hi, k_min, k_max)
    return int(k_min), hi


def soft_assignment(embedding, centers, labels):
    """``softmax_k(-|e_i - c_k|^2 / tau)``, ``tau`` the mean squared distance of the
    samples to their own centre (see :class:`SpectralEmbedding`)."""
    E = np.asarray(embedding, np.float64)
    C = np.asarray(centers, np.float64)
    k = C.shape[0]
    if k <= 1:
        return np.ones((E.shape[0], max(k, 1)), np.float32)
    d2 = np.maximum((E * E).sum(1)[:, None] - 2.0 * E @ C.T + (C * C).sum(1)[None, :], 0.0)
    own = d2[np.arange(E.shape[0]), labels]
    tau = max(float(own.mean()), 1e-12)
    logits = -(d2 - d2.min(axis=1, keepdims=True)) / tau
    P = np.exp(logits)
    P /= P.sum(axis=1, keepdims=True)
    return P.astype(np.float32)


def _check_features_for(features, n):
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] != n:
        raise ValueError(
            f"features must be an (n, n_features) matrix with one row per "
            f"affinity row; got shape {features.shape} for a {n} x {n} affinity."
        )
    if not np.all(np.isfinite(features)):
        raise ValueError(
            "the features contain NaN or infinite values; remove or impute them "
            "(or check the embedder's input image)."
        )
    return features


_CORE_CONSTRAINTS = {
    "spectrum": [StrOptions({"normalized", "affinity"})],
    "eigengap_rule": [StrOptions(set(_rules.EIGENGAP_RULES))],
    "k_selection": [StrOptions(set(_rules.K_SELECTIONS))],
    "k_min": [Interval(numbers.Integral, 1, MAX_CLUSTERS, closed="both")],
    "k_max": [Interval(numbers.Integral, 1, MAX_CLUSTERS, closed="both")],
    "beta": [Interval(numbers.Real, 0, None, closed="left")],
    "single_segment_test": [StrOptions(set(_rules.SINGLE_SEGMENT_TESTS)), None],
    "single_segment_threshold": [Interval(numbers.Real, 0, 1, closed="both"), None],
    "n_init": [Interval(numbers.Integral, 1, MAX_N_INIT, closed="both")],
    "random_state": ["random_state"],
    "device": [None, str],
}

#: The defaults of the functional core and the estimator.
DEFAULTS = {
    "spectrum": "affinity",
    "eigengap_rule": "relative",
    "k_selection": "silhouette",
    "k_min": 1,
    "k_max": 15,
    "beta": 0.5,
    "single_segment_test": "entropy",
    "single_segment_threshold": 0.05,
    "n_init": 3,
    "device": None,
}


@validate_params(
    {"affinity": ["array-like", "sparse matrix"], "features": ["array-like", None],
     "silhouette_metric": [StrOptions({"cosine", "euclidean"})],
     **_CORE_CONSTRAINTS, "return_embedding": ["boolean"], "check_input": ["boolean"]},
    prefer_skip_nested_validation=True,
)
def adaptive_spectral_clustering(
    affinity,
    *,
    features=None,
    silhouette_metric="cosine",
    spectrum=DEFAULTS["spectrum"],
    eigengap_rule=DEFAULTS["eigengap_rule"],
    k_selection=DEFAULTS["k_selection"],
    k_min=DEFAULTS["k_min"],
    k_max=DEFAULTS["k_max"],
    beta=DEFAULTS["beta"],
    single_segment_test=DEFAULTS["single_segment_test"],
    single_segment_threshold=DEFAULTS["single_segment_threshold"],
    n_init=DEFAULTS["n_init"],
    random_state=None,
    device=DEFAULTS["device"],
    return_embedding=False,
    check_input=True,
):
    """Cluster an affinity matrix, choosing the number of clusters itself.

    The algorithm and every rule are described in :doc:`/spectral` (with
    measurements); in short: leading eigenpairs, a first estimate ``K0``
    from the eigenvalues, candidate partitions by k-means on the
    row-normalised eigenvectors, the final K by ``k_selection``, and a test
    for one segment when ``k_min=1``.

    Parameters
    ----------
    affinity : ndarray or sparse matrix of shape (n, n)
        Symmetric non-negative affinity (an asymmetric one is symmetrised as
        ``(A + A.T) / 2``). Must be finite and not empty.
    features : ndarray of shape (n, n_features), default=None
        The features the affinity came from; the silhouette then uses their
        distance (``silhouette_metric``), else ``1 - affinity``.
    silhouette_metric : {"cosine", "euclidean"}, default="cosine"
        The features' distance for the silhouette: cosine (patch embeddings,
        the cosine affinity) or Euclidean (ordinary data, the local-scaling
        affinity).
    spectrum : {"affinity", "normalized"}, default="affinity"
        Decompose ``A`` itself (the paper) or ``D^-1/2 A D^-1/2``.
    eigengap_rule : {"relative", "largest", "elbow", "entropy"}, default="relative"
        How ``K0`` is read from the eigenvalues (:func:`eigengap_k`).
    k_selection : {"silhouette", "eigengap", "stability", "gap", "rotation"}, \
            default="silhouette"
        How the final K is chosen: best silhouette around ``K0``; ``K0``
        itself; most stable k-means restarts around ``K0``; Tibshirani's gap
        statistic around ``K0``; Zelnik-Manor & Perona's eigenvector rotation
        over ``[k_min, k_max]``.
    k_min : int, default=1
        Smallest K. ``K = 1`` only when ``k_min=1`` and the one-segment test
        says so; at most ``n - 1``.
    k_max : int, default=15
        Largest K, at most ``MAX_CLUSTERS`` (64); clipped to ``n - 1``.
    beta : float, default=0.5
        Relative half-width of the search around ``K0`` (0: ``K0`` alone).
    single_segment_test : {"entropy", "cheeger", "gap"} or None, default="entropy"
        The test for one segment (with ``k_min=1``): the gap statistic, or
        the second normalised eigenvalue against
        ``single_segment_threshold``. ``None``: never one segment.
    single_segment_threshold : float or None, default=0.05
        Threshold of the ``"cheeger"`` test; ``None`` disables every
        one-segment test (as ``PAPER_SETTINGS`` does).
    n_init : int, default=3
        k-means restarts for each K, at most :data:`MAX_N_INIT`.
    random_state : int, RandomState instance or None, default=None
        Seeds the eigensolver, k-means and the gap references.
    device : {None, "auto", "cpu", "cuda"} or "cuda:<index>", default=None
        ``None``: NumPy and SciPy. Otherwise the same algorithm in PyTorch on
        that device (``"auto"``: CUDA when available), which chooses the same
        K and partition up to rounding (see :doc:`/device`); a sparse
        affinity is clustered by NumPy whatever the device.
    return_embedding : bool, default=False
        Also return the :class:`SpectralEmbedding` (eigenpairs, centres and
        soft assignment).
    check_input : bool, default=True
        ``False`` skips the finiteness and symmetry passes over the affinity
        and the features (for ones the caller built itself).

    Returns
    -------
    labels : ndarray of shape (n,), dtype int64
        Cluster of each sample, ``0 .. K-1``, numbered by first appearance.
    info : dict
        The diagnostics: ``n_clusters``, ``eigengap_k`` (K0), ``eigenvalues``,
        ``k_selection``, ``k_scores`` (K -> the selection's score),
        ``silhouette_scores``, ``silhouette``, ``second_eigenvalue``,
        ``single_segment``, ``single_segment_test``, ``k_bounds``,
        ``sparse_affinity``, ``n_landmarks``, ``timings``
        (see :doc:`/spectral` for each).
    embedding : SpectralEmbedding
        Only with ``return_embedding=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_clasp.affinity import cosine_affinity
    >>> rng = np.random.RandomState(0)
    >>> X = np.repeat(np.eye(3), 20, axis=0) + 0.05 * rng.randn(60, 3)
    >>> labels, info = adaptive_spectral_clustering(cosine_affinity(X), random_state=0)
    >>> info["n_clusters"], info["k_bounds"]
    (3, (1, 15))
    """
    check_k_bounds(k_min, k_max)
    A = check_affinity(affinity, check_input=check_input)
    n = A.shape[0]
    if features is not None and check_input:
        features = _check_features_for(features, n)
    params = dict(spectrum=spectrum, eigengap_rule=eigengap_rule, k_selection=k_selection,
                  k_min=k_min, k_max=k_max, beta=beta,
                  single_segment_test=single_segment_test,
                  single_segment_threshold=single_segment_threshold, n_init=n_init,
                  rng=check_random_state(random_state))
    if device is not None and not sparse.issparse(A):
        dev = resolve_device(device)
        with torch_threads(_cpu_threads(dev, n)):
            feats = None if features is None else as_tensor(features, dev)
            labels, info, emb = _cluster_device(as_tensor(A, dev), A, feats,
                                                silhouette_metric, device=dev, **params)
        return (labels, info, emb) if return_embedding else (labels, info)
    with limit_threads(n):
        labels, info, emb = _cluster(A, features, silhouette_metric, **params)
    return (labels, info, emb) if return_embedding else (labels, info)


def _cpu_threads(device, n):
    """One torch thread for small problems on the CPU (None: torch's setting)."""
    return 1 if device.type == "cpu" and n <= SINGLE_THREAD_MAX_SAMPLES else None


def _cluster_device(A, A_np, features, metric, *, device, **params):
    """:func:`_cluster` with the affinity ``A`` as a tensor on ``device``."""
    from ._torch import cluster_on_device

    n = A.shape[0]
    if n < 3:
        return _cluster(A_np if A_np is not None else A.cpu().numpy(),
                        None if features is None else features.cpu().numpy(), metric,
                        **params)
    bounds = _effective_k_bounds(n, params["k_min"], params["k_max"])
    return cluster_on_device(A, A_np, features, metric, device=device, bounds=bounds, **params)


def _trivial(A, n, k_min, test, threshold):
    """Fewer than 3 samples: nothing to choose."""
    if n == 2 and k_min == 1 and test is not None and threshold is not None:
        P = np.maximum(A.toarray() if sparse.issparse(A) else A, 0.0).astype(np.float64)
        if test == "cheeger":
            one = float(np.linalg.eigvalsh(_normalize(P))[0]) < threshold
        elif test == "entropy":  # both eigenvalues, above a floor of 0
            lam = np.linalg.eigvalsh(P)[::-1]
            one = math.floor(_rules.effective_number(np.r_[lam, 0.0])[0] + 0.5) <= 1
        else:
            one = bool(np.ptp(P) == 0)
    else:
        one = n == 1
    k = 1 if one else 2
    labels = np.zeros(n, np.int64) if k == 1 else np.arange(n, dtype=np.int64)
    return labels, k


def _cluster(A, features, metric, *, spectrum, eigengap_rule, k_selection, k_min, k_max, beta,
             single_segment_test, single_segment_threshold, n_init, rng):
    n = A.shape[0]
    info = {"single_segment": False, "sparse_affinity": bool(sparse.issparse(A)),
            "n_landmarks": None, "spectrum": spectrum, "eigengap_rule": eigengap_rule,
            "beta": beta, "k_selection": k_selection, "k_scores": {},
            "single_segment_test": {"test": None}}
    testing = single_segment_test is not None and single_segment_threshold is not None
    if n < 3:
        labels, k = _trivial(A, n, k_min, single_segment_test if testing else None,
                             single_segment_threshold)
        info.update(n_clusters=k, eigengap_k=k, eigenvalues=np.ones(n),
                    silhouette_scores={}, silhouette=0.0, second_eigenvalue=float("nan"),
                    single_segment=bool(n == 2 and k == 1), k_bounds=(k, k))
        E = np.eye(n)[:, :k] if k > 1 else np.ones((n, 1))
        emb = SpectralEmbedding(np.ones(n), np.eye(n), E, np.eye(k),
                                np.asarray(E, np.float32), None, None)
        return labels, info, emb

    lo, hi = _effective_k_bounds(n, k_min, k_max)
    info["k_bounds"] = (lo, hi)
    timings = info["timings"] = {}
    start = time.perf_counter()
    M = _normalize(A) if spectrum == "normalized" else A
    # at least the entropy's window, so that the spectrum it sees does not move with k_max
    n_eig = min(max(hi + 1, _rules.ENTROPY_WINDOW), n)
    vals, vecs = leading_eigenpairs(M, n_eig, random_state=rng)
    del M
    timings["eigen"] = time.perf_counter() - start
    info["eigenvalues"] = vals
    k0 = _rules.eigengap_k(vals, rule=eigengap_rule, k_min=max(lo, 2), k_max=hi)
    info["eigengap_k"] = int(k0)

    start = time.perf_counter()
    one = _one_segment_test(
        info, vals, vecs, spectrum=spectrum, test=single_segment_test if testing and lo == 1
        else None, threshold=single_segment_threshold, rng=rng,
        constant=lambda: _is_constant(A),
        second_eigenvalue=lambda: _second_normalized_eigenvalue(A, rng))
    timings["one_segment_test"] = time.perf_counter() - start
    if one or hi < 2:  # k_max = 1 (or two samples' worth): nothing to search
        return _one_segment(info, vals, vecs)

    start = time.perf_counter()
    with limit_threads(None, user_api=None):  # k-means on the tiny embedding
        part, scores, silhouettes = _select(
            A, features, metric, vals, vecs, k0, k_selection=k_selection, lo=lo, hi=hi, beta=beta,
            n_init=n_init, rng=rng)
    E = _rules.row_normalize(vecs[:, :part.dim])
    _chosen(info, part, scores, silhouettes)
    timings["k_search"] = time.perf_counter() - start
    emb = SpectralEmbedding(vals, vecs, E, part.centers,
                            soft_assignment(E, part.centers, part.labels), None, None)
    return part.labels, info, emb


def _is_constant(A):
    """Whether every entry of the (dense or sparse) affinity is the same."""
    if sparse.issparse(A):
        n = A.shape[0]
        return A.nnz == n * n and np.ptp(A.data) == 0
    return bool(np.ptp(A) == 0)


def _one_segment_test(info, vals, vecs, *, spectrum, test, threshold, rng, constant,
                      second_eigenvalue):
    """Whether the affinity is one segment, by ``test`` on its leading eigenpairs.

    Sets ``info["single_segment_test"]`` (its diagnostics; unchanged when
    ``test`` is None, which skips it) and ``info["second_eigenvalue"]``.
    ``constant()`` tells whether the affinity is constant (one segment
    whatever the test); ``second_eigenvalue()`` computes the second eigenvalue
    of the normalized affinity, which the Cheeger test needs when ``vals`` are
    not its eigenvalues. Both run only when a test does.
    """
    second = float(vals[1]) if spectrum == "normalized" else float("nan")
    one = False
    if test is not None:
        constant = constant()
        if test == "cheeger":
            if spectrum != "normalized":
                second = second_eigenvalue()
            one = constant or second < threshold
            info["single_segment_test"] = {"test": "cheeger", "second_eigenvalue": second,
                                           "threshold": threshold}
        elif test == "entropy":
            effective = _rules.effective_number(vals[:_rules.ENTROPY_WINDOW])[0]
            one = constant or math.floor(effective + 0.5) <= 1
            info["single_segment_test"] = {"test": "entropy", "effective_number": effective}
        else:
            Y = _rules.principal_coordinates(vals, vecs)
            one, g1, g2, s2 = _rules.gap_one_segment(Y, rng)
            one = one or constant
            info["single_segment_test"] = {"test": "gap", "gap_1": g1, "gap_2": g2,
                                           "s_2": s2}
    info["second_eigenvalue"] = second
    return one


def _one_segment(info, vals, vecs):
    """The result of the clustering when the samples are one segment."""
    logger.debug("one segment: %s", info["single_segment_test"])
    info.update(n_clusters=1, silhouette_scores={}, silhouette=0.0, single_segment=True)
    n = vecs.shape[0]
    E = _rules.row_normalize(vecs[:, :1])
    emb = SpectralEmbedding(vals, vecs, E, E.mean(axis=0, keepdims=True),
                            np.ones((n, 1), np.float32), None, None)
    return np.zeros(n, dtype=np.int64), info, emb


def _chosen(info, part, scores, silhouettes):
    """Record the chosen partition ``part`` and the scores of the searched K in ``info``."""
    info.update(
        n_clusters=part.k,
        silhouette_scores=silhouettes,
        silhouette=float(np.nan_to_num(silhouettes.get(part.k, 0.0))),
        k_scores=scores,
    )


def _silhouettes(A, features, metric, partitions):
    """Silhouette of each partition with 2 <= K <= n - 1 (else NaN)."""
    n = A.shape[0]
    valid = [p for p in partitions if 2 <= p.k <= n - 1]
    labelings = [p.labels for p in valid]
    if not labelings:
        computed = []
    elif features is not None and metric == "euclidean":
        computed = silhouette_scores_euclidean(features, labelings)
    elif features is not None:
        computed = silhouette_scores_cosine(features, labelings)
    elif sparse.issparse(A):
        computed = _silhouette_scores_sparse_affinity(A, labelings)
    else:
        computed = silhouette_scores_for_labels(_distance_matrix(A), labelings)
    out = {p.k: float("nan") for p in partitions}
    for p, s in zip(valid, computed):
        out[p.k] = float(s)
    return out


def _select(A, features, metric, vals, vecs, k0, *, k_selection, lo, hi, beta, n_init, rng):
    """The candidate partitions and the chosen one, with each K's score."""
    k_lo = max(lo, 2)
    if k_selection == "rotation":
        ks = list(range(k_lo, hi + 1))
        best, qualities, Z = _rules.rotation_choice(vecs, ks)
        k = ks[best]
        E = _rules.row_normalize(vecs[:, :k])
        seed = np.argmax(np.abs(Z), axis=1)
        used = np.unique(seed)
        means = np.stack([E[seed == c].mean(axis=0) for c in used])
        km = KMeans(n_clusters=used.size, init=means, n_init=1).fit(E)
        part = _rules.Partition(km.labels_, km.cluster_centers_)
        scores = {kk: float(q) for kk, q in zip(ks, qualities)}
        return part, scores, _silhouettes(A, features, metric, [part])
    if k_selection == "eigengap":
        ks = [int(min(max(k0, k_lo), hi))]
    else:
        ks = _rules.k_window(k0, beta=beta, k_min=lo, k_max=hi)
    keep_runs = k_selection == "stability"
    parts = [_rules.kmeans_partition(_rules.row_normalize(vecs[:, :k]), k, n_init=n_init,
                                     rng=rng, keep_runs=keep_runs) for k in ks]
    silhouettes = _silhouettes(A, features, metric, parts)
    if k_selection in ("silhouette", "eigengap"):
        scores = {p.k: silhouettes[p.k] for p in parts}
        scored = [p for p in parts if not math.isnan(silhouettes[p.k])]
        best = max(scored, key=lambda p: (silhouettes[p.k], -p.k)) if scored else parts[0]
    elif k_selection == "stability":
        scores = {p.k: _rules.stability_score(p) for p in parts}
        best = max(parts, key=lambda p: (round(scores[p.k], 12), p.k))
    else:  # gap
        Y = _rules.principal_coordinates(vals, vecs)
        gap, s = _rules.gap_statistic(Y, [p.labels for p in parts], [p.k for p in parts], rng)
        scores = {p.k: float(g) for p, g in zip(parts, gap)}
        best = parts[_rules.gap_choice(gap, s)]
    return best, scores, silhouettes


# --------------------------------------------------------------------------
# Features in bounded memory: landmarks and the Nystroem extension
# --------------------------------------------------------------------------
def spectral_extension(A_new, eigenvectors, eigenvalues, degrees_fit=None):
    """Row-normalised Nystroem extension ``a(x) V / lambda`` of new samples.

    Parameters
    ----------
    A_new : ndarray or sparse matrix of shape (n_new, n_fit)
        Affinity of the new samples to the fitted ones.
    eigenvectors : ndarray of shape (n_fit, K)
        Leading eigenvectors of the fitted samples.
    eigenvalues : ndarray of shape (>= K,)
        The matching eigenvalues.
    degrees_fit : ndarray of shape (n_fit,), default=None
        Degrees of the fitted samples (normalised spectrum): ``A_new`` is
        then normalised as ``a_j / sqrt(d(x) d_j)`` first.

    Returns
    -------
    embedding : ndarray of shape (n_new, K)
        On the fitted samples themselves this is their own row-normalised
        eigenvectors.
    """
    A = A_new.toarray() if sparse.issparse(A_new) else np.asarray(A_new)
    V = np.asarray(eigenvectors)
    if degrees_fit is not None:
        inv_new = _inv_sqrt(np.asarray(A.sum(axis=1)))
        A = A * inv_new[:, None] * _inv_sqrt(np.asarray(degrees_fit))[None, :]
    lam = np.asarray(eigenvalues[: V.shape[1]], dtype=np.float64)
    scale = np.where(np.abs(lam) > 1e-12, 1.0 / np.where(lam == 0, 1, lam), 0.0)
    return _rules.row_normalize((A @ V) * scale[None, :])


def _affinity_of(X, Y=None, *, kind, scales=None, scales_Y=None):
    if kind == "local_scaling":
        return local_scaling_affinity(X, Y, scales=scales, scales_Y=scales_Y)
    return cosine_affinity(X, Y)


@validate_params(
    {"X": ["array-like"], "affinity": [StrOptions({"cosine", "local_scaling"})],
     "max_dense_samples": [Interval(numbers.Integral, 1, None, closed="left"), None],
     **_CORE_CONSTRAINTS, "return_embedding": ["boolean"]},
    prefer_skip_nested_validation=True,
)
def cluster_features(
    X,
    *,
    affinity="cosine",
    max_dense_samples=MAX_DENSE_SAMPLES,
    spectrum=DEFAULTS["spectrum"],
    eigengap_rule=DEFAULTS["eigengap_rule"],
    k_selection=DEFAULTS["k_selection"],
    k_min=DEFAULTS["k_min"],
    k_max=DEFAULTS["k_max"],
    beta=DEFAULTS["beta"],
    single_segment_test=DEFAULTS["single_segment_test"],
    single_segment_threshold=DEFAULTS["single_segment_threshold"],
    n_init=DEFAULTS["n_init"],
    random_state=None,
    device=DEFAULTS["device"],
    return_embedding=False,
):
    """Adaptive spectral clustering of features, in bounded memory.

    Up to ``max_dense_samples`` samples: their dense affinity (cosine, or
    local scaling) and :func:`adaptive_spectral_clustering`. Beyond:
    ``max_dense_samples`` landmark samples drawn from ``random_state``
    (without replacement) are clustered exactly, and every other sample is
    placed in their spectral embedding by the Nystroem extension and takes
    the segment whose centre is closest. Memory: the landmarks' affinity plus
    row blocks of about 64 MB.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Finite features.
    affinity : {"cosine", "local_scaling"}, default="cosine"
        :func:`~sklearn_clasp.affinity.cosine_affinity` (patch embeddings) or
        :func:`~sklearn_clasp.affinity.local_scaling_affinity` (Euclidean
        data; the silhouette then uses the Euclidean distance).
    max_dense_samples : int or None, default=10_000
        The memory bound; ``None`` always builds the dense affinity.
    spectrum, eigengap_rule, k_selection, k_min, k_max, beta, \
single_segment_test, single_segment_threshold, n_init, random_state, device
        As for :func:`adaptive_spectral_clustering`; with a ``device`` the
        affinity, the clustering and the extension run there (the local
        scaling affinity is built by NumPy, then moved).
    return_embedding : bool, default=False
        Also return the :class:`SpectralEmbedding` (with ``landmarks``).

    Returns
    -------
    labels : ndarray of shape (n_samples,), dtype int64
    info : dict
        As :func:`adaptive_spectral_clustering`'s, with ``n_landmarks`` (or
        ``None``) and the ``"affinity"`` and ``"extension"`` timings.
    embedding : SpectralEmbedding
        Only with ``return_embedding=True``.

    Examples
    --------
    >>> from sklearn_clasp.datasets import make_planted_partition
    >>> X, y = make_planted_partition(3, n_samples=3000, random_state=0)
    >>> labels, info = cluster_features(X, max_dense_samples=1000, random_state=0)
    >>> info["n_clusters"], info["n_landmarks"]
    (3, 1000)
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty (n_samples, n_features) matrix; got "
                         f"shape {X.shape}.")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values; remove or impute them.")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    n = X.shape[0]
    rng = check_random_state(random_state)
    params = dict(spectrum=spectrum, eigengap_rule=eigengap_rule, k_selection=k_selection,
                  k_min=k_min, k_max=k_max, beta=beta,
                  single_segment_test=single_segment_test,
                  single_segment_threshold=single_segment_threshold, n_init=n_init)
    landmarks = None
    if max_dense_samples is not None and n > max_dense_samples:
        landmarks = np.sort(rng.choice(n, size=int(max_dense_samples), replace=False))
        logger.info(
            "%d samples, more than max_dense_samples=%d: clustering %d random "
            "landmark samples and extending to the rest (Nystroem)",
            n, max_dense_samples, landmarks.size,
        )
        X_fit = X[landmarks]
    else:
        X_fit = X
    if device is not None:
        dev = resolve_device(device)
        with torch_threads(_cpu_threads(dev, X_fit.shape[0])):
            return _cluster_features_device(
                X, X_fit, landmarks, rng, affinity=affinity, device=dev,
                return_embedding=return_embedding, **params)
    start = time.perf_counter()
    scales = local_scales(X_fit) if affinity == "local_scaling" else None
    A = _affinity_of(X_fit, kind=affinity, scales=scales)
    seconds = time.perf_counter() - start
    labels_fit, info, emb = adaptive_spectral_clustering(
        A, features=X_fit, silhouette_metric="cosine" if affinity == "cosine" else "euclidean",
        random_state=rng, return_embedding=True, check_input=False, **params,
    )
    info["timings"] = dict(info.get("timings", {}), affinity=seconds)
    degrees = (np.asarray(A.sum(axis=1), dtype=np.float64).ravel()
               if spectrum == "normalized" else None)
    del A
    emb = emb._replace(degrees=degrees)
    if landmarks is None:
        return (labels_fit, info, emb) if return_embedding else (labels_fit, info)
    k = info["n_clusters"]
    info["n_landmarks"] = int(landmarks.size)
    labels = np.zeros(n, dtype=np.int64)
    embedding = np.ones((n, emb.embedding.shape[1]), dtype=np.float64)
    start = time.perf_counter()
    V = emb.eigenvectors[:, :emb.embedding.shape[1]]
    C = np.asarray(emb.centers, np.float64)
    block = max(1, (64 * 2**20) // (X_fit.itemsize * X_fit.shape[0]))
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        A_new = _affinity_of(X[lo:hi], X_fit, kind=affinity, scales_Y=scales)
        e = spectral_extension(A_new, V, emb.eigenvalues, degrees)
        embedding[lo:hi] = e
        if k > 1:
            d2 = (e * e).sum(1)[:, None] - 2.0 * e @ C.T + (C * C).sum(1)[None, :]
            labels[lo:hi] = np.argmin(d2, axis=1)
    labels[landmarks] = labels_fit
    embedding[landmarks] = emb.embedding
    if k > 1:
        part = _rules.Partition(labels, C)
        labels, centers = part.labels, part.centers
    else:
        centers = C
    info["timings"]["extension"] = time.perf_counter() - start
    emb = emb._replace(embedding=embedding, centers=centers, landmarks=landmarks,
                       proba=soft_assignment(embedding, centers, labels))
    return (labels, info, emb) if return_embedding else (labels, info)



def _cluster_features_device(X, X_fit, landmarks, rng, *, affinity, device, return_embedding,
                             **params):
    """:func:`cluster_features` after the landmark draw, on ``device``."""
    import torch

    from ._torch import soft_assignment_torch, spectral_extension_torch

    n = X.shape[0]
    metric = "cosine" if affinity == "cosine" else "euclidean"
    start = time.perf_counter()
    X_t = as_tensor(X_fit, device)
    scales = None
    if affinity == "cosine":
        A = cosine_affinity_tensor(X_t)
    else:
        scales = local_scales(X_fit)
        A = as_tensor(local_scaling_affinity(X_fit, scales=scales), device)
    seconds = time.perf_counter() - start
    labels_fit, info, emb = _cluster_device(A, None, X_t, metric, device=device, rng=rng,
                                            **params)
    info["timings"] = dict(info.get("timings", {}), affinity=seconds)
    degrees = (A.sum(dim=1, dtype=torch.float64).cpu().numpy()
               if params["spectrum"] == "normalized" else None)
    del A
    emb = emb._replace(degrees=degrees)
    if landmarks is None:
        return (labels_fit, info, emb) if return_embedding else (labels_fit, info)
    k = info["n_clusters"]
    info["n_landmarks"] = int(landmarks.size)
    start = time.perf_counter()
    dim = emb.embedding.shape[1]
    V = as_tensor(np.asarray(emb.eigenvectors[:, :dim]), device)
    C = torch.as_tensor(np.asarray(emb.centers, np.float64), device=device)
    embedding = torch.ones((n, dim), dtype=torch.float64, device=device)
    labels = torch.zeros(n, dtype=torch.int64, device=device)
    block = max(1, (64 * 2**20) // (X_fit.itemsize * X_fit.shape[0]))
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        rows = as_tensor(X[lo:hi], device)
        if affinity == "cosine":
            A_new = cosine_affinity_tensor(rows, X_t)
        else:
            A_new = as_tensor(local_scaling_affinity(X[lo:hi], X_fit, scales_Y=scales),
                              device)
        e = spectral_extension_torch(A_new, V, emb.eigenvalues, degrees)
        embedding[lo:hi] = e
        if k > 1:
            d2 = (e * e).sum(1)[:, None] - 2.0 * e @ C.T + (C * C).sum(1)[None, :]
            labels[lo:hi] = d2.argmin(dim=1)
    idx = torch.as_tensor(landmarks, device=device)
    labels[idx] = torch.as_tensor(labels_fit, device=device)
    embedding[idx] = torch.as_tensor(np.asarray(emb.embedding, np.float64), device=device)
    labels = labels.cpu().numpy()
    if k > 1:
        part = _rules.Partition(labels, emb.centers)
        labels, centers = part.labels, part.centers
    else:
        centers = emb.centers
    proba = soft_assignment_torch(embedding, centers, labels)
    info["timings"]["extension"] = time.perf_counter() - start
    emb = emb._replace(embedding=embedding.cpu().numpy(), centers=centers,
                       landmarks=landmarks, proba=proba)
    return (labels, info, emb) if return_embedding else (labels, info)
