"""Affinity: cosine similarity between patch features.

CLASP clusters the cosine affinity of the patch features directly. This module
holds the functional core, :func:`cosine_affinity`, and the transformer
:class:`CosineAffinity` that applies it inside a Pipeline.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from .records import check_records, is_record_sequence

__all__ = ["cosine_affinity", "CosineAffinity"]


def _unit_rows(X):
    """Rows scaled to unit length; all-zero rows stay zero."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    norms[norms == 0] = 1.0
    return X / norms[:, None]


def _keep_top_k(S, n_neighbors):
    """Sparse matrix keeping, in each row, the ``n_neighbors`` largest entries."""
    n_rows, n_cols = S.shape
    k = min(int(n_neighbors), n_cols)
    idx = np.argpartition(-S, k - 1, axis=1)[:, :k]
    rows = np.repeat(np.arange(n_rows), k)
    vals = S[rows, idx.ravel()]
    out = sparse.csr_matrix((vals, (rows, idx.ravel())), shape=S.shape)
    out.eliminate_zeros()
    return out


def cosine_affinity(X, Y=None, *, clip_negative=True, n_neighbors=None):
    """Cosine similarity between the rows of ``X`` (and ``Y``).

    Parameters
    ----------
    X : ndarray of shape (n_samples_X, n_features)
        Feature vectors, one per row (one per patch for an image).
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
        transpose).

    Returns
    -------
    affinity : ndarray or sparse matrix of shape (n_samples_X, n_samples_Y)
        Same floating dtype as ``X`` (float32 stays float32). All-zero
        feature vectors have similarity 0 with everything, and 1 with
        themselves in the square case.

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
    X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    Xn = _unit_rows(X)
    square = Y is None
    if square:
        S = Xn @ Xn.T
    else:
        Y = np.asarray(Y, dtype=X.dtype)
        S = Xn @ _unit_rows(Y).T
    np.clip(S, -1.0, 1.0, out=S)
    if square:
        # Exact self-similarity, also for all-zero rows.
        np.fill_diagonal(S, 1.0)
    if clip_negative:
        np.maximum(S, 0.0, out=S)
    if n_neighbors is not None:
        S = _keep_top_k(S, n_neighbors)
        if square:
            S = S.maximum(S.T).tocsr()
    return S


class CosineAffinity(TransformerMixin, BaseEstimator):
    """Cosine affinity between patch features, as a Pipeline step.

    On a list of :class:`~sklearn_clasp.records.PatchGrid` records (the output
    of a patch embedder) each image gets the affinity between its own patches,
    stored in the record's ``affinity`` field. On a plain
    ``(n_samples, n_features)`` matrix it behaves like a kernel:
    ``fit_transform(X)`` is the square affinity of ``X``, and ``transform(Z)``
    the affinity of ``Z`` to the fitted ``X``.

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

    Attributes
    ----------
    n_features_in_ : int
        Number of features seen in :meth:`fit` (plain-matrix input only).
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

    _parameter_constraints: dict = {
        "clip_negative": ["boolean"],
        "n_neighbors": [Interval(numbers.Integral, 1, None, closed="left"), None],
    }

    def __init__(self, *, clip_negative=True, n_neighbors=None):
        self.clip_negative = clip_negative
        self.n_neighbors = n_neighbors

    def _affinity(self, X, Y=None):
        return cosine_affinity(
            X, Y, clip_negative=self.clip_negative, n_neighbors=self.n_neighbors
        )

    def _records_affinity(self, X):
        records = check_records(X, need=("features",), step="CosineAffinity")
        out = []
        for rec in records:
            feats = rec.feature_matrix
            if not np.all(np.isfinite(feats)):
                raise ValueError(
                    f"CosineAffinity: the features of {rec.name!r} contain NaN or "
                    f"infinite values; check the embedder's input image."
                )
            out.append(rec.replace(affinity=self._affinity(feats)))
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
            self.X_fit_ = None
            return self
        self.X_fit_ = validate_data(self, X, dtype=[np.float64, np.float32])
        return self

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
            return self._records_affinity(X)
        check_is_fitted(self)
        if self.X_fit_ is None:
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
        self.fit(X)
        if is_record_sequence(X):
            return self._records_affinity(X)
        return self._affinity(self.X_fit_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
