"""Per-segment statistics of a patch segmentation, and the background score."""

from __future__ import annotations

import numpy as np

from ..affinity import limit_threads, unit_rows

#: The background scores ``background_scores`` can compute.
BACKGROUND_SCORES = ("area", "border", "area_border", "area_border_compact")


def border_mask(grid_shape):
    """Boolean ``(h * w,)`` mask of the patches on the grid's outer ring."""
    h, w = (int(v) for v in grid_shape)
    mask = np.zeros((h, w), bool)
    mask[0, :] = mask[-1, :] = True
    mask[:, 0] = mask[:, -1] = True
    return mask.ravel()


def segment_statistics(labels, *, grid_shape=None, features=None):
    """Area, border share and feature spread of every segment.

    Parameters
    ----------
    labels : ndarray of shape (n,) or (h, w)
        Segment of each patch, ``0 .. K-1``.
    grid_shape : tuple of (int, int), default=None
        The patch grid ``(h, w)`` (row-major order); needed for the border
        statistics (``labels`` of shape ``(h, w)`` give it).
    features : ndarray of shape (n, n_features), default=None
        The patches' features, for the spread.

    Returns
    -------
    stats : dict
        Lists with one value per segment: ``area`` (share of the patches),
        ``border`` (share of the grid's outer-ring patches the segment holds;
        ``None`` without a grid), ``border_ratio`` (``border / area``: above 1
        when the segment lies more on the border than its size explains) and
        ``spread`` (``1 - |mean of the segment's unit feature vectors|``: 0
        when all its features point the same way, up to 1; ``None`` without
        features).

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((4, 4), np.int64)
    >>> labels[1:3, 1:3] = 1                      # a square in the middle
    >>> stats = segment_statistics(labels)
    >>> stats["area"], stats["border"]
    ([0.75, 0.25], [1.0, 0.0])
    """
    labels = np.asarray(labels)
    if grid_shape is None and labels.ndim == 2:
        grid_shape = labels.shape
    flat = labels.ravel().astype(np.int64)
    n = flat.size
    k = int(flat.max()) + 1 if n else 0
    counts = np.bincount(flat, minlength=k).astype(np.float64)
    stats = {"area": (counts / max(n, 1)).tolist(), "border": None, "border_ratio": None,
             "spread": None}
    if grid_shape is not None:
        ring = border_mask(grid_shape)
        on_ring = np.bincount(flat[ring], minlength=k).astype(np.float64)
        border = on_ring / max(ring.sum(), 1)
        stats["border"] = border.tolist()
        stats["border_ratio"] = (border / np.maximum(counts / max(n, 1), 1e-300)).tolist()
    if features is not None:
        with limit_threads(n):  # one BLAS thread, as the clustering (see limit_threads)
            U = unit_rows(np.asarray(features, np.float64))
            onehot = np.zeros((n, k))
            onehot[np.arange(n), flat] = 1.0
            sums = (U.T @ onehot).T
        stats["spread"] = (1.0 - np.linalg.norm(sums, axis=1)
                           / np.maximum(counts, 1.0)).tolist()
    return stats


def background_scores(stats, score):
    """Each segment's background score under one of ``BACKGROUND_SCORES``.

    ``"area"`` (the largest segment), ``"border"`` (the most border patches),
    ``"area_border"``: ``sqrt(area * border)``, ``"area_border_compact"``:
    ``sqrt(area * border) * (1 - spread)``.
    """
    area = np.asarray(stats["area"], np.float64)
    if score == "area":
        return area
    if stats["border"] is None:
        raise ValueError(f"the {score!r} background score needs the patch grid")
    border = np.asarray(stats["border"], np.float64)
    if score == "border":
        return border
    geo = np.sqrt(area * border)
    if score == "area_border":
        return geo
    if score == "area_border_compact":
        if stats["spread"] is None:
            raise ValueError("the 'area_border_compact' score needs the features")
        return geo * (1.0 - np.asarray(stats["spread"], np.float64))
    raise ValueError(f"unknown background score {score!r}; use one of {BACKGROUND_SCORES}")
