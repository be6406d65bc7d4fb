"""The record that carries one image through the CLASP pipeline.

Every image-level step of sklearn-clasp takes and returns a list of
:class:`PatchGrid` records, one per image. Each step fills in the fields it
produces and keeps the rest, so a later step finds everything it needs (the
patch grid shape, the source image, the features) without reaching around the
:class:`~sklearn.pipeline.Pipeline`:

=========================  ==========================================
step                       fills in
=========================  ==========================================
patch embedder             ``image``, ``grid_shape``, ``features``
:class:`CosineAffinity`    ``affinity``
segmenter                  ``labels``, ``proba`` (and diagnostics in ``info``)
:class:`CRFRefiner`        returns full-resolution masks (arrays)
=========================  ==========================================

Records are immutable: steps return new records made with
:meth:`PatchGrid.replace`, so the input of a step is never modified.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from scipy import sparse

__all__ = ["PatchGrid", "is_record_sequence", "check_records"]


@dataclass(frozen=True, eq=False)
class PatchGrid:
    """One image and what the pipeline has computed for it so far.

    The patch grid spans the whole image: patch ``(i, j)`` of a grid of shape
    ``(h, w)`` covers rows ``i * H / h`` to ``(i + 1) * H / h`` and columns
    ``j * W / w`` to ``(j + 1) * W / w`` of the ``(H, W)`` image, so patch
    labels map onto pixels by scaling alone.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), dtype uint8
        The source image, RGB, at full resolution.
    grid_shape : tuple of (int, int)
        Number of patch rows and columns ``(h, w)``.
    features : ndarray of shape (h, w, n_features), dtype float32, default=None
        One feature vector per patch.
    affinity : ndarray or sparse matrix of shape (h * w, h * w), default=None
        Patch-to-patch affinity, rows in row-major grid order.
    labels : ndarray of shape (h, w), dtype int64, default=None
        Patch labels ``0 .. K-1``.
    proba : ndarray of shape (h, w, K), dtype float32, default=None
        Soft segment membership of each patch (each ``proba[i, j]`` sums to
        1, ``labels`` is its argmax), for refiners that use soft labels.
    info : mapping, default={}
        Diagnostics added by the steps (for example ``n_clusters``,
        ``eigenvalues``, ``silhouette_scores``, timings).
    source : str, default=None
        Where the image came from (a path or a name), for messages.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_clasp.records import PatchGrid
    >>> rec = PatchGrid(image=np.zeros((28, 42, 3), np.uint8), grid_shape=(2, 3))
    >>> rec.n_patches
    6
    >>> rec.replace(labels=np.zeros((2, 3), np.int64)).labels.shape
    (2, 3)
    """

    image: np.ndarray
    grid_shape: tuple
    features: np.ndarray | None = None
    affinity: Any = None
    labels: np.ndarray | None = None
    proba: np.ndarray | None = None
    info: Mapping = field(default_factory=dict)
    source: str | None = None

    @property
    def n_patches(self) -> int:
        """Number of patches, ``h * w``."""
        return int(self.grid_shape[0]) * int(self.grid_shape[1])

    @property
    def feature_matrix(self) -> np.ndarray:
        """Features as a ``(h * w, n_features)`` matrix in row-major grid order."""
        if self.features is None:
            raise ValueError(
                f"record {self.name!r} has no features yet; run a patch embedder first"
            )
        return self.features.reshape(self.n_patches, -1)

    @property
    def name(self) -> str:
        """A short name for messages: the source if known."""
        return self.source if self.source is not None else "<array>"

    def replace(self, **changes) -> "PatchGrid":
        """Return a copy with some fields replaced; ``info`` is merged, not replaced."""
        if "info" in changes:
            merged = dict(self.info)
            merged.update(changes["info"])
            changes["info"] = merged
        return dataclasses.replace(self, **changes)


def is_record_sequence(X) -> bool:
    """True when ``X`` is a non-empty list or tuple of :class:`PatchGrid` records."""
    return (
        isinstance(X, (list, tuple))
        and len(X) > 0
        and all(isinstance(r, PatchGrid) for r in X)
    )


def check_records(X, *, need=(), step="this step"):
    """Validate a sequence of records and the fields a step needs.

    Parameters
    ----------
    X : list of PatchGrid
        The records.
    need : tuple of str
        Field names that must be set on every record.
    step : str
        Name of the calling step, for error messages.

    Returns
    -------
    records : list of PatchGrid
    """
    if not is_record_sequence(X):
        raise TypeError(
            f"{step} expects a non-empty list of PatchGrid records (the output of a "
            f"patch embedder); got {type(X).__name__}"
        )
    hints = {
        "features": "put a patch embedder before it",
        "affinity": "put CosineAffinity before it",
        "labels": "put AdaptiveSpectralSegmenter before it",
    }
    for rec in X:
        for name in need:
            if getattr(rec, name) is None:
                raise ValueError(
                    f"{step}: record {rec.name!r} has no {name}; {hints.get(name, '')}"
                )
        if rec.affinity is not None and not (
            sparse.issparse(rec.affinity) or isinstance(rec.affinity, np.ndarray)
        ):
            raise TypeError(f"{step}: record {rec.name!r} has an affinity of type "
                            f"{type(rec.affinity).__name__}; expected ndarray or sparse")
    return list(X)


def grid_feature_matrix(record, *, step):
    """The record's features as a checked ``(h * w, n_features)`` matrix.

    Parameters
    ----------
    record : PatchGrid
        A record with features.
    step : str
        The step asking, named in error messages.

    Returns
    -------
    features : ndarray of shape (h * w, n_features)
        A view of ``record.features`` in row-major grid order.

    Raises
    ------
    ValueError
        If the features are not ``(h, w, n_features)`` with ``(h, w)`` the
        record's grid shape, or contain NaN or infinite values.
    """
    feats = record.features
    if feats is None or feats.ndim != 3 or feats.shape[:2] != tuple(record.grid_shape):
        shape = None if feats is None else feats.shape
        raise ValueError(
            f"{step}: the features of {record.name!r} have shape {shape} but its "
            f"patch grid is {tuple(record.grid_shape)}; expected (h, w, n_features) "
            f"with (h, w) the grid shape."
        )
    matrix = record.feature_matrix
    if not np.all(np.isfinite(matrix)):
        raise ValueError(
            f"{step}: the features of {record.name!r} contain NaN or infinite "
            f"values; check the embedder's input image."
        )
    return matrix


def check_untabled_output(estimator, returns):
    """Refuse a table output configuration for a step whose output is not a table.

    The image steps return lists of records or masks, which no data frame can
    hold. ``set_config(transform_output="pandas")`` (or ``set_output`` on the
    step) must not be ignored silently: this raises, naming the fix.

    Parameters
    ----------
    estimator : estimator
        The step about to return its output.
    returns : str
        What it returns, for the message (``"PatchGrid records"``).

    Raises
    ------
    ValueError
        If the step's ``transform`` output is configured as a table.
    """
    from sklearn.utils._set_output import _get_output_config

    dense = _get_output_config("transform", estimator)["dense"]
    if dense != "default":
        name = type(estimator).__name__
        raise ValueError(
            f"{name} returns {returns}, not a feature table, so transform_output="
            f"{dense!r} cannot apply to it. Call .set_output(transform='default') on "
            f"it (or on the pipeline it is in) to run it under "
            f"set_config(transform_output={dense!r}); table outputs exist for the "
            f"plain-matrix transforms (CosineAffinity, AdaptiveSpectralSegmenter)."
        )


class RecordOutputMixin:
    """``set_output`` for steps whose output is records or masks, never a table.

    ``set_output(transform="default")`` is accepted (so that
    ``pipeline.set_output(...)`` and a global ``transform_output`` can be
    overridden step by step); a table container raises, saying why. Mix in
    before :class:`~sklearn.base.TransformerMixin`.
    """

    #: What the step returns, for messages.
    _returns = "PatchGrid records"

    def set_output(self, *, transform=None):
        """Set the output container: only ``"default"`` applies.

        Parameters
        ----------
        transform : {"default"} or None, default=None
            ``"default"``: the step's own output (records or masks), also
            when ``set_config(transform_output=...)`` asks for a table;
            ``None``: unchanged.

        Returns
        -------
        self : estimator

        Raises
        ------
        ValueError
            For ``"pandas"`` or ``"polars"``: the output is not a table.
        """
        if transform is None:
            return self
        if transform != "default":
            raise ValueError(
                f"{type(self).__name__}.set_output(transform={transform!r}): it "
                f"returns {self._returns}, not a feature table; only "
                f"transform='default' applies."
            )
        self._sklearn_output_config = {"transform": transform}
        return self


def forget_fitted(estimator):
    """Delete an estimator's fitted attributes (public names ending in ``_``).

    A step fitted on image records learns nothing; whatever an earlier fit on
    a plain matrix left must not stay next to the new results.
    """
    for name in [k for k in vars(estimator) if k.endswith("_") and not k.startswith("_")]:
        delattr(estimator, name)
