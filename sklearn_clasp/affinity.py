"""Affinity: how similar each sample (patch) is to every other.

CLASP clusters the cosine affinity of the patch features directly. This module
holds the functional core, :func:`cosine_affinity`, the transformer
:class:`CosineAffinity` that applies it inside a Pipeline, the row
normalisation both the affinity and the segmenter's silhouette rely on
(:func:`unit_rows`), and the self-tuning Gaussian affinity of Zelnik-Manor &
Perona for ordinary Euclidean data (:func:`local_scaling_affinity`).
"""

from __future__ import annotations

import logging
import numbers
import weakref

import numpy as np
from scipy import sparse
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from .device import as_tensor, resolve_device, torch_threads
from .records import (
    check_records,
    check_untabled_output,
    forget_fitted,
    grid_feature_matrix,
    is_record_sequence,
)

__all__ = [
    "cosine_affinity",
    "cosine_affinity_tensor",
    "is_package_affinity",
    "limit_threads",
    "local_scaling_affinity",
    "local_scales",
    "unit_rows",
    "CosineAffinity",
    "MAX_DENSE_SAMPLES",
]

logger = logging.getLogger(__name__)


#: Default of ``max_dense_samples`` (CosineAffinity and the segmenter): the
#: largest number of patches whose dense affinity is built. Its float32 matrix
#: then takes at most 400 MB (``4 n**2`` bytes; 120 MB for the 5,476 patches of
#: a 1036 x 1036 image).
MAX_DENSE_SAMPLES = 10_000

# Row blocks of the k-nearest-neighbour affinity hold about this many bytes.
_BLOCK_BYTES = 64 * 2**20

#: Up to this many samples the affinity and the segmenter run on one BLAS
#: thread (see :func:`limit_threads`).
SINGLE_THREAD_MAX_SAMPLES = 2048

_CONTROLLER = None

# The square affinities this module returned, by id (an entry goes when its
# array is freed, so an id is never mistaken for a later array's).
_BUILT = weakref.WeakValueDictionary()


def _built(A):
    """Remember ``A`` as an affinity built here (finite and symmetric by construction)."""
    try:
        _BUILT[id(A)] = A
    except TypeError:  # not weakly referenceable
        pass
    return A


def is_package_affinity(A):
    """Whether ``A`` is a square affinity returned by this module's functions.

    :func:`cosine_affinity` of one set of features (``Y=None``) returns
    finite, exactly symmetric matrices; the segmenter skips
    its finiteness and symmetry passes over them (about 50 ms at 5,476
    patches). The check is by identity: a copy or a view is not one of
    them, and a matrix changed in place after it was returned must not be
    passed on as one.

    Parameters
    ----------
    A : object
        Anything.

    Returns
    -------
    built : bool

    Examples
    --------
    >>> import numpy as np
    >>> A = cosine_affinity(np.eye(3))
    >>> is_package_affinity(A), is_package_affinity(A.copy())
    (True, False)
    """
    try:
        return _BUILT.get(id(A)) is A
    except TypeError:
        return False


def limit_threads(n_samples=None, *, user_api="blas"):
    """Context manager: one thread for problems of at most 2,048 samples.

    Products of this size gain little from more threads (waking them costs
    about as much), and on one thread their results are the same bits
    whatever the caller's thread settings (a Dask worker, a joblib process or
    the main process). Larger problems keep the caller's setting. The thread
    pools are looked up once, not on every call.

    Parameters
    ----------
    n_samples : int or None, default=None
        The problem's size; ``None``: one thread whatever the size.
    user_api : {"blas", "openmp"} or None, default="blas"
        Which pools; ``None``: all of them.

    Returns
    -------
    context : context manager

    Examples
    --------
    >>> import numpy as np
    >>> with limit_threads(100):
    ...     G = np.ones((100, 3)) @ np.ones((3, 100))
    """
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    one = n_samples is None or n_samples <= SINGLE_THREAD_MAX_SAMPLES
    return _CONTROLLER.limit(limits=1 if one else None, user_api=user_api)


def unit_rows(X):
    """Rows of ``X`` scaled to unit Euclidean length; all-zero rows stay zero.

    Each row is first divided by its largest absolute value, so the length
    neither overflows nor underflows: rows of size ``1e300`` or ``1e-300``
    are normalised like any other. The cosine similarity of two rows is the
    dot product of their unit rows.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Finite floating-point rows.

    Returns
    -------
    Xn : ndarray of shape (n_samples, n_features)
        Same dtype as ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> unit_rows(np.array([[3.0, 4.0], [0.0, 0.0], [1e300, 1e300]])).round(3)
    array([[0.6  , 0.8  ],
           [0.   , 0.   ],
           [0.707, 0.707]])
    """
    X = np.asarray(X)
    if X.shape[1] == 0:
        return X.copy()
    scale = np.max(np.abs(X), axis=1)
    scale[scale == 0] = 1.0
    Xs = X / scale[:, None]
    norms = np.sqrt(np.einsum("ij,ij->i", Xs, Xs))
    norms[norms == 0] = 1.0
    Xs /= norms[:, None]
    return Xs


def _unit_rows_with_zero_flag(X):
    """Unit rows, plus one column that is 1 for all-zero rows (when there are any).

    Dot products of these rows are the cosine similarities, with one addition:
    two all-zero rows (the same point) have similarity 1, and an all-zero row
    has similarity 0 with every other row.
    """
    Xn = unit_rows(X)
    zero = ~np.any(X != 0, axis=1)
    if not zero.any():
        return Xn
    return np.hstack([Xn, zero[:, None].astype(Xn.dtype)])


def _check_features(X, name, *, dtype=None, caller="cosine_affinity"):
    """``X`` as a finite 2-D float matrix, or an error naming it and the fix."""
    X = np.asarray(X)
    if X.dtype == object or not (
        np.issubdtype(X.dtype, np.number) or X.dtype == bool
    ):
        raise TypeError(
            f"{caller}: {name} must hold numbers; got dtype {X.dtype}."
        )
    if X.ndim != 2:
        raise ValueError(
            f"{caller}: {name} must be a 2-D (n_samples, n_features) "
            f"matrix; got shape {X.shape}. Reshape a patch grid (h, w, d) to "
            f"(h * w, d), or a single sample to (1, d)."
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(
            f"{caller}: {name} is empty (shape {X.shape}); pass at least "
            f"one sample with at least one feature."
        )
    if dtype is not None:
        X = X.astype(dtype, copy=False)
    elif X.dtype == np.float16:
        X = X.astype(np.float32)
    elif not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise ValueError(
            f"{caller}: {name} contains NaN or infinite values; remove or "
            f"impute them (e.g. check the embedder's input image)."
        )
    return X


def _knn_affinity(Xn, Yn, n_neighbors, *, square, clip_negative):
    """Sparse CSR keeping each row's ``n_neighbors`` largest similarities.

    Computed in row blocks of about ``_BLOCK_BYTES``, so the dense
    ``(n_X, n_Y)`` similarity matrix is never held in memory.
    """
    n_rows, n_cols = Xn.shape[0], Yn.shape[0]
    k = min(int(n_neighbors), n_cols)
    block = max(1, min(n_rows, _BLOCK_BYTES // (Xn.itemsize * n_cols)))
    indices = np.empty((n_rows, k), dtype=np.int64)
    values = np.empty((n_rows, k), dtype=Xn.dtype)
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        S = Xn[start:stop] @ Yn.T
        np.clip(S, -1.0, 1.0, out=S)
        if square:  # exact self-similarity
            S[np.arange(stop - start), np.arange(start, stop)] = 1.0
        if clip_negative:
            np.maximum(S, 0.0, out=S)
        np.negative(S, out=S)
        idx = np.argpartition(S, k - 1, axis=1)[:, :k]
        indices[start:stop] = idx
        values[start:stop] = -np.take_along_axis(S, idx, axis=1)
    out = sparse.csr_matrix(
        (values.ravel(), indices.ravel(), np.arange(0, n_rows * k + 1, k)),
        shape=(n_rows, n_cols),
    )
    out.sum_duplicates()
    out.eliminate_zeros()
    return out


def cosine_affinity(X, Y=None, *, clip_negative=True, n_neighbors=None, device=None):
    """Cosine similarity between the rows of ``X`` (and ``Y``).

    Parameters
    ----------
    X : ndarray of shape (n_samples_X, n_features)
        Feature vectors, one per row (one per patch for an image). Must be
        finite.
    Y : ndarray of shape (n_samples_Y, n_features), default=None
        Second set of vectors. ``None`` means ``Y = X``: the square,
        symmetric affinity of ``X`` with itself.
    clip_negative : bool, default=True
        Set negative similarities to 0, so that the affinity is a valid
        non-negative graph weight (needed by the normalised Laplacian).
    n_neighbors : int, default=None
        If set, keep only each row's ``n_neighbors`` largest similarities
        (itself included) and return a sparse CSR matrix. For the square
        affinity (``Y=None``) the result is made symmetric by keeping an edge
        when either end chose it (the element-wise maximum with its
        transpose). The similarities are computed in row blocks of about
        64 MB, so the dense matrix is never held in memory.
    device : {None, "auto", "cpu", "cuda"} or "cuda:<index>", default=None
        ``None``: NumPy. Otherwise the dense affinity is computed by PyTorch
        on that device (the same values up to rounding; see
        :doc:`/device`) and returned as a NumPy array. Ignored with
        ``n_neighbors``.

    Returns
    -------
    affinity : ndarray or sparse matrix of shape (n_samples_X, n_samples_Y)
        Same floating dtype as ``X`` (float32 stays float32). All-zero
        feature vectors are one and the same point: similarity 1 with each
        other (and themselves), 0 with every other vector. The rows' sizes do
        not matter (see :func:`unit_rows`). The dense square affinity takes
        ``n_samples_X ** 2`` times 4 bytes (float32) or 8 bytes (float64).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_clasp.affinity import cosine_affinity
    >>> X = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    >>> np.round(cosine_affinity(X), 3)
    array([[1.   , 0.707, 0.   ],
           [0.707, 1.   , 0.   ],
           [0.   , 0.   , 1.   ]])
    """
    X = _check_features(X, "X")
    square = Y is None
    if not square:
        Y = _check_features(Y, "Y", dtype=X.dtype)
        if Y.shape[1] != X.shape[1]:
            raise ValueError(
                f"cosine_affinity: X has {X.shape[1]} features but Y has "
                f"{Y.shape[1]}; both must come from the same embedder."
            )
    if n_neighbors is not None:
        if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, numbers.Integral) \
                or n_neighbors < 1:
            raise ValueError(
                f"cosine_affinity: n_neighbors must be a positive int or None; got "
                f"{n_neighbors!r}."
            )
    if device is not None and n_neighbors is None:
        dev = resolve_device(device)
        n = max(X.shape[0], X.shape[0] if square else Y.shape[0])
        small = dev.type == "cpu" and n <= SINGLE_THREAD_MAX_SAMPLES
        with torch_threads(1 if small else None):
            S = cosine_affinity_tensor(as_tensor(X, dev),
                                       None if square else as_tensor(Y, dev),
                                       clip_negative=clip_negative).cpu().numpy()
        return _built(S) if square else S
    with limit_threads(max(X.shape[0], X.shape[0] if square else Y.shape[0])):
        S = _cosine(X, Y, square, clip_negative, n_neighbors)
    return _built(S) if square else S


def _cosine(X, Y, square, clip_negative, n_neighbors):
    Xn = _unit_rows_with_zero_flag(X)
    Yn = Xn if square else _unit_rows_with_zero_flag(Y)
    if Xn.shape[1] != Yn.shape[1]:  # all-zero rows on one side only: pad the other
        def pad(M):
            return np.hstack([M, np.zeros((M.shape[0], 1), M.dtype)])

        Xn, Yn = (pad(Xn), Yn) if Xn.shape[1] < Yn.shape[1] else (Xn, pad(Yn))
    if n_neighbors is not None:
        S = _knn_affinity(Xn, Yn, n_neighbors, square=square, clip_negative=clip_negative)
        if square:
            S = S.maximum(S.T).tocsr()
        return S
    S = Xn @ Yn.T
    np.clip(S, -1.0, 1.0, out=S)
    if square:
        np.fill_diagonal(S, 1.0)  # exact self-similarity
    if clip_negative:
        np.maximum(S, 0.0, out=S)
    return S


def unit_rows_tensor(X):
    """:func:`unit_rows` on a tensor (zero rows stay zero)."""
    import torch

    scale = X.abs().amax(dim=1, keepdim=True)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    Xs = X / scale
    norms = torch.sqrt((Xs * Xs).sum(dim=1, keepdim=True))
    return Xs / torch.where(norms == 0, torch.ones_like(norms), norms)


def _unit_rows_with_zero_flag_tensor(X):
    import torch

    Xn = unit_rows_tensor(X)
    zero = ~(X != 0).any(dim=1)
    if not bool(zero.any()):
        return Xn
    return torch.cat([Xn, zero[:, None].to(Xn.dtype)], dim=1)


def cosine_affinity_tensor(X, Y=None, *, clip_negative=True):
    """The dense :func:`cosine_affinity` of PyTorch tensors, on their device.

    The same values as ``cosine_affinity(X, Y, clip_negative=...)`` up to
    floating-point rounding: rows scaled as by :func:`unit_rows`, all-zero
    rows similar (1) to each other and to nothing else, the square affinity
    exactly symmetric with a diagonal of 1. What ``cosine_affinity(...,
    device=...)`` and the segmenter's ``device`` path compute.

    Parameters
    ----------
    X : Tensor of shape (n_X, d)
        Finite features (float32 or float64).
    Y : Tensor of shape (n_Y, d), default=None
        ``None``: the square affinity of ``X``.
    clip_negative : bool, default=True
        Set negative similarities to 0.

    Returns
    -------
    affinity : Tensor of shape (n_X, n_Y)
        Same dtype and device as ``X``.

    Examples
    --------
    >>> import torch
    >>> cosine_affinity_tensor(torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]))
    tensor([[1.0000, 0.7071, 0.0000],
            [0.7071, 1.0000, 0.0000],
            [0.0000, 0.0000, 1.0000]])
    """
    import torch

    square = Y is None
    Xn = _unit_rows_with_zero_flag_tensor(X)
    Yn = Xn if square else _unit_rows_with_zero_flag_tensor(Y.to(X.dtype))
    if Xn.shape[1] != Yn.shape[1]:  # all-zero rows on one side only: pad the other
        if Xn.shape[1] < Yn.shape[1]:
            Xn = torch.cat([Xn, Xn.new_zeros((Xn.shape[0], 1))], dim=1)
        else:
            Yn = torch.cat([Yn, Yn.new_zeros((Yn.shape[0], 1))], dim=1)
    S = Xn @ Yn.T
    if square:  # exactly symmetric: the upper triangle mirrored
        S = torch.triu(S) + torch.triu(S, diagonal=1).T
        S.fill_diagonal_(1.0)
    S.clamp_(-1.0, 1.0)
    if clip_negative:
        S.clamp_(min=0.0)
    return S


def _squared_distances(X, Y):
    """``|x_i - y_j|^2`` for all pairs, computed around the rows' common mean."""
    centre = X.mean(axis=0)
    Xc, Yc = X - centre, Y - centre
    D = (np.einsum("ij,ij->i", Xc, Xc)[:, None] + np.einsum("ij,ij->i", Yc, Yc)[None, :]
         - 2.0 * (Xc @ Yc.T))
    np.maximum(D, 0.0, out=D)
    return D


def local_scales(X, Y=None, *, n_neighbors=7):
    """Local scale of each row of ``X``: its distance to its ``n_neighbors``-th neighbour.

    The scale of Zelnik-Manor & Perona's self-tuning affinity (see
    :func:`local_scaling_affinity`).

    Parameters
    ----------
    X : ndarray of shape (n_samples_X, n_features)
        Finite samples.
    Y : ndarray of shape (n_samples_Y, n_features), default=None
        Where the neighbours are looked for. ``None``: among the other rows of
        ``X``. A row is never its own neighbour: a row of ``X`` found in ``Y``
        at distance 0 is skipped once, so ``local_scales(X, X)`` equals
        ``local_scales(X)``.
    n_neighbors : int, default=7
        Which neighbour (the paper's 7th); clipped to the number available.

    Returns
    -------
    scales : ndarray of shape (n_samples_X,)
        Distances, ``float64``; 0 where ``n_neighbors`` duplicates exist.

    Examples
    --------
    >>> import numpy as np
    >>> local_scales(np.array([[0.0], [1.0], [3.0]]), n_neighbors=1)
    array([1., 1., 2.])
    """
    X = _check_features(X, "X", dtype=np.float64, caller="local_scales")
    square = Y is None
    Y = X if square else _check_features(Y, "Y", dtype=np.float64, caller="local_scales")
    D = _squared_distances(X, Y)
    if square:
        np.fill_diagonal(D, np.inf)
    available = Y.shape[0] - (1 if square else 0)
    if available < 1:
        return np.zeros(X.shape[0])
    k = int(min(max(1, n_neighbors), available))
    if square:
        return np.sqrt(np.partition(D, k - 1, axis=1)[:, k - 1])
    # A row of X that is one of the rows of Y is not its own neighbour either.
    k_plus = min(k + 1, Y.shape[0])
    part = np.sort(np.partition(D, k_plus - 1, axis=1)[:, :k_plus], axis=1)
    # (distance 0 up to rounding: below a billionth of the farthest one kept)
    itself = (part[:, 0] <= 1e-9 * part[:, -1]) & (k_plus > k)
    return np.sqrt(part[np.arange(X.shape[0]), k - 1 + itself])


def local_scaling_affinity(X, Y=None, *, n_neighbors=7, scales=None, scales_Y=None):
    """Self-tuning Gaussian affinity (local scaling) for ordinary Euclidean data.

    ``A[i, j] = exp(-|x_i - y_j|^2 / (s_i s_j))``, where ``s_i`` is the
    distance from ``x_i`` to its ``n_neighbors``-th neighbour (Zelnik-Manor &
    Perona, "Self-tuning spectral clustering", NIPS 2004). Each sample sets
    its own scale, so dense and sparse groups are both connected inside and
    separated from each other, with no bandwidth to tune. Use it for feature
    matrices whose geometry is Euclidean (standardised measurements), where
    the cosine affinity, which ignores the rows' lengths, loses information;
    patch embeddings keep the cosine affinity.

    Parameters
    ----------
    X : ndarray of shape (n_samples_X, n_features)
        Finite samples.
    Y : ndarray of shape (n_samples_Y, n_features), default=None
        Second set. ``None``: the square affinity of ``X`` (diagonal 1).
    n_neighbors : int, default=7
        The neighbour that sets each scale.
    scales, scales_Y : ndarray, default=None
        Precomputed scales of ``X`` and ``Y`` (from :func:`local_scales`);
        computed when not given (for ``X`` against ``Y`` when ``Y`` is given).

    Returns
    -------
    affinity : ndarray of shape (n_samples_X, n_samples_Y)
        ``float64``, in ``[0, 1]``. Samples whose scale is 0 (``n_neighbors``
        duplicates) use the smallest positive scale; if every scale is 0 (all
        samples equal) the affinity is all ones.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> local_scaling_affinity(X, n_neighbors=1).round(2)
    array([[1.  , 0.37, 0.  , 0.  ],
           [0.37, 1.  , 0.  , 0.  ],
           [0.  , 0.  , 1.  , 0.37],
           [0.  , 0.  , 0.37, 1.  ]])
    """
    X = _check_features(X, "X", dtype=np.float64, caller="local_scaling_affinity")
    square = Y is None
    if square:
        Y = X
    else:
        Y = _check_features(Y, "Y", dtype=np.float64, caller="local_scaling_affinity")
        if Y.shape[1] != X.shape[1]:
            raise ValueError(
                f"local_scaling_affinity: X has {X.shape[1]} features but Y has "
                f"{Y.shape[1]}; both must describe the same measurements."
            )
    if scales is None:
        scales = local_scales(X, None if square else Y, n_neighbors=n_neighbors)
    if scales_Y is None:
        scales_Y = scales if square else local_scales(Y, n_neighbors=n_neighbors)
    both = np.concatenate([np.ravel(scales), np.ravel(scales_Y)])
    positive = both[both > 0]
    floor = positive.min() if positive.size else 1.0
    sx = np.maximum(np.asarray(scales, np.float64), floor)
    sy = np.maximum(np.asarray(scales_Y, np.float64), floor)
    D = _squared_distances(X, Y)
    D /= sx[:, None]
    D /= sy[None, :]
    if not positive.size:
        D[:] = 0.0
    np.negative(D, out=D)
    np.exp(D, out=D)
    if square:
        np.fill_diagonal(D, 1.0)
    return D


class CosineAffinity(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Cosine affinity between patch features, as a Pipeline step.

    On a list of :class:`~sklearn_clasp.records.PatchGrid` records (the output
    of a patch embedder) each image gets the affinity between its own patches,
    stored in the record's ``affinity`` field, and ``info["affinity"]`` says
    which kind it got (``"dense"``, ``"knn"`` or ``"deferred"``, see
    ``max_dense_samples``). On a plain ``(n_samples, n_features)`` matrix it
    behaves like a kernel: ``fit_transform(X)`` is the square affinity of
    ``X``, and ``transform(Z)`` the affinity of ``Z`` to the fitted ``X``, a
    feature table with one column per fitted sample
    (:meth:`get_feature_names_out`, ``set_output(transform="pandas")``).

    On records nothing is learned: ``transform`` needs no ``fit``, and
    ``fit`` on records only checks them (and forgets an earlier fit on a
    matrix). See :doc:`/sklearn_semantics`.

    Parameters
    ----------
    clip_negative : bool, default=True
        Set negative similarities to 0 (a non-negative graph, as spectral
        methods expect).
    n_neighbors : int, default=None
        Keep only each sample's ``n_neighbors`` strongest similarities and
        return sparse matrices; the square affinity is symmetrised with the
        element-wise maximum. ``None`` keeps the dense, fully connected
        affinity of the CLASP paper.
    max_dense_samples : int or None, default=10_000
        Memory bound for records: an image with more patches than this gets no
        dense affinity (it would take more than ``4 * max_dense_samples**2``
        bytes, 400 MB at the default); its record is passed on with
        ``affinity=None`` and ``info["affinity"] = "deferred"``, and
        :class:`~sklearn_clasp.spectral.AdaptiveSpectralSegmenter` clusters it
        from its features within its own memory bound (landmark patches). A
        log message at INFO level says so. Has no effect with
        ``n_neighbors`` set (the sparse affinity is computed in blocks, in
        bounded memory) nor on plain matrices. ``None`` always builds the
        dense affinity.
    device : {None, "auto", "cpu", "cuda"} or "cuda:<index>", default=None
        ``None``: NumPy. Otherwise the dense affinity is computed by PyTorch
        on that device (see :func:`cosine_affinity`).

    Attributes
    ----------
    n_features_in_ : int
        Number of features seen in :meth:`fit` (plain-matrix input only).
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of the features, when ``X`` had string column names.
    X_fit_ : ndarray of shape (n_samples, n_features)
        The fitted samples (plain-matrix input only).

    See Also
    --------
    cosine_affinity : The functional form.
    AdaptiveSpectralSegmenter : Clusters the affinity.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_clasp import CosineAffinity
    >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> CosineAffinity().fit_transform(X).shape
    (3, 3)
    """

    # Needs no fit on image records (ClaspPipeline.fit leaves it unfitted).
    _training_free = True

    _parameter_constraints: dict = {
        "clip_negative": ["boolean"],
        "n_neighbors": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "max_dense_samples": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "device": [None, str],
    }

    def __init__(self, *, clip_negative=True, n_neighbors=None,
                 max_dense_samples=MAX_DENSE_SAMPLES, device=None):
        self.clip_negative = clip_negative
        self.n_neighbors = n_neighbors
        self.max_dense_samples = max_dense_samples
        self.device = device

    def _affinity(self, X, Y=None):
        return cosine_affinity(
            X, Y, clip_negative=self.clip_negative, n_neighbors=self.n_neighbors,
            device=self.device,
        )

    def _records_affinity(self, X):
        records = check_records(X, need=("features",), step="CosineAffinity")
        out = []
        for rec in records:
            feats = grid_feature_matrix(rec, step="CosineAffinity")
            n = feats.shape[0]
            if self.n_neighbors is not None:
                kind = "knn"
            elif self.max_dense_samples is not None and n > self.max_dense_samples:
                kind = "deferred"
                logger.info(
                    "CosineAffinity: %s has %d patches, more than max_dense_samples="
                    "%d: no dense affinity (it would take %.0f MB); the segmenter "
                    "clusters it from its features", rec.name, n,
                    self.max_dense_samples, feats.itemsize * n * n / 2**20,
                )
                out.append(rec.replace(affinity=None, info={"affinity": kind}))
                continue
            else:
                kind = "dense"
            out.append(rec.replace(affinity=self._affinity(feats), info={"affinity": kind}))
        return out

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit: remember the samples (plain matrix) or validate the records.

        Parameters
        ----------
        X : list of PatchGrid or array-like of shape (n_samples, n_features)
            Patch records with features, or a feature matrix.
        y : None
            Ignored.

        Returns
        -------
        self : CosineAffinity
        """
        if is_record_sequence(X):
            check_records(X, need=("features",), step="CosineAffinity")
            forget_fitted(self)
            self._fitted_on_records = True
            return self
        self._fitted_on_records = False
        self.X_fit_ = validate_data(self, X, dtype=[np.float64, np.float32])
        return self

    def __sklearn_is_fitted__(self):
        return hasattr(self, "X_fit_") or getattr(self, "_fitted_on_records", False)

    @property
    def _n_features_out(self):
        return self.X_fit_.shape[0]

    def transform(self, X):
        """Affinity of each record's patches, or of ``X`` to the fitted samples.

        Parameters
        ----------
        X : list of PatchGrid or array-like of shape (n_samples, n_features)

        Returns
        -------
        Xt : list of PatchGrid, or ndarray / sparse of shape (n_samples, n_fitted)
        """
        if is_record_sequence(X):
            check_untabled_output(self, "PatchGrid records")
            return self._records_affinity(X)
        check_is_fitted(self)
        if not hasattr(self, "X_fit_"):
            raise ValueError(
                "CosineAffinity was fitted on image records; transform records, "
                "or fit it on a feature matrix first."
            )
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self._affinity(X, self.X_fit_)

    def fit_transform(self, X, y=None):
        """Fit and return the square affinity of ``X`` (records: per image).

        Parameters
        ----------
        X : list of PatchGrid or array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        Xt : list of PatchGrid, or ndarray / sparse of shape (n_samples, n_samples)
        """
        if is_record_sequence(X):
            check_untabled_output(self, "PatchGrid records")
            self.fit(X)
            return self._records_affinity(X)
        self.fit(X)
        return self._affinity(self.X_fit_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
