"""The spectrum: checked affinities, normalisation and the leading eigenpairs."""

from __future__ import annotations

import logging

import numpy as np
from scipy import linalg, sparse
from scipy.sparse.linalg import ArpackError, LinearOperator, eigsh
from sklearn.utils import check_random_state
from sklearn.utils.extmath import _deterministic_vector_sign_flip

from ..affinity import is_package_affinity

logger = logging.getLogger("sklearn_clasp.spectral")

# Dense LAPACK (only the wanted eigenpairs) is faster than ARPACK up to about
# this many patches; past it ARPACK's matrix-vector products win (about 3x on
# image affinities of 1369 patches, on par on noise-like spectra).
_DENSE_EIGEN_MAX_N = 512


def _is_symmetric(A, block=512):
    """Exact symmetry of a dense square matrix, block by block (no n x n copy)."""
    n = A.shape[0]
    for i in range(0, n, block):
        for j in range(i, n, block):
            if not np.array_equal(A[i:i + block, j:j + block], A[j:j + block, i:i + block].T):
                return False
    return True


def check_affinity(affinity, *, check_input=True):
    """The affinity as a symmetric float matrix; float32 stays float32 (faster).

    Raises a clear error for a non-square, empty or non-finite affinity.
    ``check_input=False`` skips the finiteness and symmetry passes, and so
    does an affinity that :func:`~sklearn_clasp.affinity.cosine_affinity`
    returned (:func:`~sklearn_clasp.affinity.is_package_affinity`).
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
    if not check_input or is_package_affinity(affinity):
        return A
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


def _start_vector(n, dtype, random_state):
    """ARPACK's starting vector, from ``random_state`` alone (same for every call
    with the same seed and size)."""
    rng = check_random_state(random_state)
    return rng.uniform(-1, 1, n).astype(dtype)


def _second_normalized_eigenvalue(A, random_state):
    """``l_2`` of ``D+^-1/2 max(A, 0) D+^-1/2`` (the Cheeger one-segment test).

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
    try:
        vals = eigsh(op, k=2, which="LA", v0=_start_vector(n, A.dtype, random_state),
                     return_eigenvectors=False)
    except ArpackError:  # no convergence, or a breakdown (an all-zero affinity)
        logger.debug("ARPACK failed; using dense LAPACK")
        vals = linalg.eigh(_normalize(positive), eigvals_only=True,
                           subset_by_index=[n - 2, n - 1])
    return float(np.sort(vals)[0])


def _dense_leading(matrix, k):
    """The ``k`` largest eigenpairs of a dense symmetric matrix, ascending."""
    n = matrix.shape[0]
    try:
        return linalg.eigh(matrix, subset_by_index=[n - k, n - 1], driver="evr")
    except np.linalg.LinAlgError:
        # LAPACK's MRRR (dsyevr) can fail on clusters of equal eigenvalues (a matrix
        # of many duplicate rows); the divide-and-conquer solver does not
        logger.debug("eigh driver 'evr' failed on a %d x %d matrix; using 'evd'", n, n)
        vals, vecs = linalg.eigh(matrix, driver="evd")
        return vals[n - k:], vecs[:, n - k:]


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
        vals, vecs = _dense_leading(np.asarray(matrix), k)
    else:
        if k >= n - 1:
            vals, vecs = _dense_leading(matrix.toarray(), k)
        else:
            try:
                vals, vecs = eigsh(matrix, k=k, which="LA",
                                   v0=_start_vector(n, matrix.dtype, random_state))
            except ArpackError as exc:  # no convergence, or a breakdown (a zero matrix)
                if not (matrix.nnz if sparse.issparse(matrix) else np.any(matrix)):
                    vals = np.zeros(k, matrix.dtype)  # every vector is an eigenvector of 0
                    vecs = np.eye(n, k, dtype=matrix.dtype)
                elif sparse.issparse(matrix) and n > 20000:
                    raise
                else:
                    logger.debug("ARPACK failed (%s); using dense LAPACK", exc)
                    dense_matrix = matrix.toarray() if sparse.issparse(matrix) else matrix
                    vals, vecs = _dense_leading(np.asarray(dense_matrix), k)
    order = np.argsort(vals, kind="stable")[::-1]
    vals = vals[order]
    vecs = _deterministic_vector_sign_flip(vecs[:, order].T).T
    return vals, vecs
