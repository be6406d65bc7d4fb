"""Scores for unsupervised segmentation.

An unsupervised segmenter outputs cluster ids, not class names, so it is
scored after a one-to-one (Hungarian) matching of its clusters to the
ground-truth classes, as in STEGO, DiffSeg and Deep Spectral Methods. Two
protocols are in use:

``"per_image"``
    Each image is matched on its own, to the classes present in it, and the
    scores are averaged over images. This suits training-free methods such as
    CLASP, which segment each image independently: cluster ``0`` of one image
    has nothing to do with cluster ``0`` of another.
``"dataset"``
    STEGO's protocol: one confusion matrix of cluster ids against classes is
    summed over all images, then matched once. Cluster ids must mean the same
    thing in every image (a method with a shared cluster codebook).

Region measures need no matching at all and suit data sets whose ground truth
has regions but no classes (BSDS500): :func:`segmentation_covering` (Arbelaez
et al. 2011) and :func:`variation_of_information` (Meila 2007).

The functional core (:func:`confusion_matrix`, :func:`hungarian_match`,
:func:`segmentation_scores`, :func:`segmentation_covering`,
:func:`variation_of_information`) works on plain integer arrays; the scorers
plug a segmentation estimator into :class:`~sklearn.model_selection.GridSearchCV`.
"""

from __future__ import annotations

import logging
import math
from numbers import Integral, Real

import numpy as np
from scipy.optimize import linear_sum_assignment

from .image import check_label_map
from .records import is_record_sequence

__all__ = [
    "confusion_matrix",
    "hungarian_match",
    "segmentation_scores",
    "segmentation_covering",
    "variation_of_information",
    "score_prediction",
    "SegmentationScoreAccumulator",
    "make_segmentation_scorer",
    "miou_scorer",
    "pixel_accuracy_scorer",
    "silhouette_scorer",
]

logger = logging.getLogger(__name__)


# --- input checks ---------------------------------------------------------


def _as_label_map(x, name):
    arr = np.asarray(x)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"{name} must hold integer labels; got dtype {arr.dtype}. Convert it "
            f"with .astype(int) (and map any 'void' value to ignore_index)."
        )
    return arr.astype(np.int64, copy=False)


def _ignore_values(ignore_index):
    if ignore_index is None:
        return np.empty(0, np.int64)
    if isinstance(ignore_index, (Integral, np.integer)):
        return np.array([int(ignore_index)], np.int64)
    try:
        values = np.asarray(list(ignore_index))
    except TypeError:
        values = np.asarray([ignore_index])
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise TypeError(
            f"ignore_index must be None, an int or a sequence of ints; got "
            f"{ignore_index!r}."
        )
    return values.astype(np.int64).ravel()


def _check_pair(y_true, y_pred, ignore_index):
    """Flatten y_true and y_pred, check them, and keep the scored pixels only."""
    y_true = _as_label_map(y_true, "y_true")
    y_pred = _as_label_map(y_pred, "y_pred")
    if y_pred.shape != y_true.shape:
        raise ValueError(
            f"y_true and y_pred must have the same shape; got y_true {y_true.shape} "
            f"and y_pred {y_pred.shape}. Predict full-resolution masks (for example "
            f"end the pipeline with CRFRefiner) or resize one to the other."
        )
    y_true, y_pred = y_true.ravel(), y_pred.ravel()
    valid = y_true >= 0
    ignore = _ignore_values(ignore_index)
    if ignore.size:
        valid &= ~np.isin(y_true, ignore)
    y_true, y_pred = y_true[valid], y_pred[valid]
    if y_pred.size and y_pred.min() < 0:
        raise ValueError(
            f"y_pred must hold non-negative cluster ids on the scored pixels; found "
            f"{int(y_pred.min())}."
        )
    return y_true, y_pred


def _compact(labels):
    """Distinct values of non-negative int labels, and each label's index among them.

    ``np.unique(labels, return_inverse=True)``, by counting instead of sorting
    when the values are small (the usual case for label maps): linear time.
    """
    if labels.size and labels.max() <= 4 * labels.size + 1024:
        counts = np.bincount(labels)
        values = np.flatnonzero(counts)
        lookup = np.zeros(counts.size, np.int64)
        lookup[values] = np.arange(values.size)
        return values, lookup[labels]
    values, inverse = np.unique(labels, return_inverse=True)
    return values, inverse.ravel()


# --- functional core ------------------------------------------------------


def confusion_matrix(y_true, y_pred, *, ignore_index=None, n_true=None, n_pred=None):
    """Pixel counts of ground-truth classes against predicted clusters.

    The orientation of :func:`sklearn.metrics.confusion_matrix`: rows are the
    true classes, columns the predictions.

    Parameters
    ----------
    y_true : array-like of int
        Ground-truth class ids, any shape. Pixels with a negative value or a
        value in ``ignore_index`` are left out.
    y_pred : array-like of int, same shape as ``y_true``
        Predicted cluster ids (non-negative).
    ignore_index : int, sequence of int or None, default=None
        Ground-truth values to leave out (for example ``255`` for "void").
    n_true : int, default=None
        Number of rows; default ``max(y_true) + 1`` over the scored pixels.
    n_pred : int, default=None
        Number of columns; default ``max(y_pred) + 1`` over the scored pixels.

    Returns
    -------
    confusion : ndarray of shape (n_true, n_pred), dtype int64
        ``confusion[i, j]`` is the number of scored pixels of class ``i``
        predicted as cluster ``j``.

    Examples
    --------
    >>> import numpy as np
    >>> y_true = np.array([[2, 2, 0], [0, 0, 255]])
    >>> y_pred = np.array([[0, 0, 1], [1, 1, 1]])
    >>> confusion_matrix(y_true, y_pred, ignore_index=255)
    array([[0, 3],
           [0, 0],
           [2, 0]])
    """
    y_true, y_pred = _check_pair(y_true, y_pred, ignore_index)
    rows = int(y_true.max()) + 1 if y_true.size else 0
    cols = int(y_pred.max()) + 1 if y_pred.size else 0
    if n_true is None:
        n_true = rows
    elif rows > n_true:
        raise ValueError(
            f"y_true has class {rows - 1} but n_true={n_true}; raise n_true or add "
            f"the value to ignore_index."
        )
    if n_pred is None:
        n_pred = cols
    elif cols > n_pred:
        raise ValueError(
            f"y_pred has cluster id {cols - 1} but n_pred={n_pred}; raise n_pred."
        )
    counts = np.bincount(y_true * n_pred + y_pred, minlength=n_true * n_pred)
    return counts.reshape(n_true, n_pred).astype(np.int64, copy=False)


def hungarian_match(confusion):
    """One-to-one matching of the rows and columns of a confusion matrix.

    Maximises the total number of matched pixels with
    :func:`scipy.optimize.linear_sum_assignment`. For the output of
    :func:`confusion_matrix` the rows are classes and the columns clusters.
    The matrix may be rectangular: ``min(n_rows, n_cols)`` pairs are
    returned, and the extra rows or columns stay unmatched.

    Parameters
    ----------
    confusion : array-like of shape (n_rows, n_cols)
        Pixel counts, as from :func:`confusion_matrix`.

    Returns
    -------
    rows, cols : ndarray of int
        Matched pairs ``(rows[i], cols[i])``, sorted by row.

    Examples
    --------
    >>> import numpy as np
    >>> hungarian_match(np.array([[1, 4, 0], [5, 2, 3]]))
    (array([0, 1]), array([1, 0]))
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2:
        raise ValueError(
            f"confusion must be a 2-D matrix (classes x clusters); got shape "
            f"{confusion.shape}."
        )
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)


def segmentation_scores(y_true, y_pred, *, ignore_index=None):
    """Hungarian-matched scores of one predicted segmentation.

    Protocol: the scored pixels are those whose ground truth is non-negative
    and not in ``ignore_index``. The classes are the distinct ``y_true``
    values on scored pixels, the clusters the distinct ``y_pred`` values
    there. Clusters are matched one-to-one to classes so that the matched
    pixel count is maximal (:func:`hungarian_match`). Then

    - IoU of class ``k`` matched to cluster ``c`` is
      ``|c and k| / |c or k|`` over the scored pixels; a class left without a
      cluster (fewer clusters than classes) has IoU 0;
    - ``miou`` is the mean IoU over the classes present in the ground truth;
      unmatched extra clusters are not scored on their own, but the pixels they
      take from matched classes lower those classes' IoU;
    - ``pixel_accuracy`` is the number of pixels whose cluster is matched to
      their class, divided by the number of scored pixels.

    Parameters
    ----------
    y_true : array-like of int
        Ground-truth mask; negative values are ignored.
    y_pred : array-like of int, same shape as ``y_true``
        Predicted mask of cluster ids (non-negative).
    ignore_index : int, sequence of int or None, default=None
        Further ground-truth values to ignore (for example ``255``).

    Returns
    -------
    scores : dict
        ``miou`` (float), ``pixel_accuracy`` (float), ``n_clusters`` and
        ``n_classes`` (ints, counted on scored pixels), ``per_class_iou``
        (dict class -> IoU) and ``mapping`` (dict cluster -> matched class).

    Raises
    ------
    ValueError
        If the shapes differ or no pixel is left to score.

    Examples
    --------
    >>> import numpy as np
    >>> y_true = np.array([[0, 0, 1], [0, 0, 1]])
    >>> y_pred = np.array([[5, 5, 5], [7, 7, 7]])   # wrong split: top / bottom
    >>> s = segmentation_scores(y_true, y_pred)
    >>> s["mapping"], s["per_class_iou"]
    ({5: 0, 7: 1}, {0: 0.4, 1: 0.25})
    >>> round(s["miou"], 3), round(s["pixel_accuracy"], 3)
    (0.325, 0.5)
    """
    y_true, y_pred = _check_pair(y_true, y_pred, ignore_index)
    if y_pred.size == 0:
        raise ValueError(
            "segmentation_scores: no pixel to score (every ground-truth pixel is "
            "negative or in ignore_index)."
        )
    classes, true_idx = _compact(y_true)
    clusters, pred_idx = _compact(y_pred)
    confusion = confusion_matrix(
        true_idx, pred_idx, n_true=len(classes), n_pred=len(clusters)
    )
    rows, cols = hungarian_match(confusion)
    matched = confusion[rows, cols]
    union = confusion.sum(1)[rows] + confusion.sum(0)[cols] - matched
    iou = np.zeros(len(classes))
    iou[rows] = matched / union
    mapping = sorted((int(clusters[c]), int(classes[r])) for r, c in zip(rows, cols))
    return {
        "miou": float(iou.mean()),
        "pixel_accuracy": float(matched.sum() / y_pred.size),
        "n_clusters": int(len(clusters)),
        "n_classes": int(len(classes)),
        "per_class_iou": {int(k): float(v) for k, v in zip(classes, iou)},
        "mapping": dict(mapping),
    }


# --- region measures ------------------------------------------------------------


def _region_contingency(y_true, y_pred, ignore_index, caller):
    """Sparse contingency table of two label maps on the scored pixels.

    Returns ``(pair_pred, pair_true, counts, size_pred, size_true)``: for every
    pair of a predicted region and a true region that share pixels, their
    compact region indices and the number of shared pixels; and the size of
    every region (regions are numbered ``0 ..`` in the order of their labels).
    """
    truth, pred = _check_pair(y_true, y_pred, ignore_index)
    if pred.size == 0:
        raise ValueError(
            f"{caller}: no pixel to score (every ground-truth pixel is negative "
            f"or in ignore_index)."
        )
    _, p_idx = _compact(pred)
    _, t_idx = _compact(truth)
    size_p = np.bincount(p_idx)
    size_t = np.bincount(t_idx)
    n_p = size_p.size
    codes = t_idx * n_p + p_idx
    if n_p * size_t.size <= 4 * pred.size:  # dense counting is cheaper
        counts = np.bincount(codes, minlength=n_p * size_t.size)
        codes = np.flatnonzero(counts)
        counts = counts[codes]
    else:  # many regions (e.g. one per pixel): only the pairs that occur
        codes, counts = np.unique(codes, return_counts=True)
    pair_t, pair_p = np.divmod(codes, n_p)
    return pair_p, pair_t, counts, size_p, size_t


def segmentation_covering(y_true, y_pred, *, ignore_index=None):
    """Covering of the ground-truth regions by a segmentation.

    The segmentation covering of Arbelaez et al. (2011), in the direction of
    the BSDS500 benchmark: every ground-truth region ``R`` is paired with the
    predicted region ``R'`` that overlaps it best, and the overlaps are
    averaged with weights ``|R|``::

        C(y_pred -> y_true) = 1 / N * sum_R |R| * max_R' |R and R'| / |R or R'|

    with ``N`` the number of scored pixels. A region is the set of pixels
    that share one label (it need not be connected; label connected
    components first, e.g. with ``scipy.ndimage.label``, for the
    connected-region convention). No matching of labels is involved, so the
    label values are arbitrary. Against several human segmentations, the
    BSDS500 benchmark averages the covering over them.

    The measure is not symmetric: ``segmentation_covering(y_pred, y_true)``
    is the covering of the predicted regions by the ground truth (when
    nothing is ignored). Splitting a true region lowers the covering; merging two
    true regions lowers it too, by less when one of them is small.

    Parameters
    ----------
    y_true : array-like of int
        Ground-truth region labels, any shape. Pixels with a negative value or
        a value in ``ignore_index`` are left out: they count neither in ``N``
        nor in any region, predicted or true.
    y_pred : array-like of int, same shape as ``y_true``
        Predicted region labels (non-negative on the scored pixels).
    ignore_index : int, sequence of int or None, default=None
        Ground-truth values to leave out (for example ``255`` for "void").

    Returns
    -------
    covering : float
        In ``(0, 1]``; 1 exactly when every true region is a predicted region.

    Raises
    ------
    ValueError
        If the shapes differ or no pixel is left to score.

    See Also
    --------
    variation_of_information : A symmetric distance between two partitions.
    segmentation_scores : Hungarian-matched mIoU and pixel accuracy.

    References
    ----------
    P. Arbelaez, M. Maire, C. Fowlkes and J. Malik, "Contour detection and
    hierarchical image segmentation", IEEE TPAMI 33(5), 2011 (section 3.2).

    Examples
    --------
    >>> import numpy as np
    >>> y_true = np.array([[0, 0, 0, 1]])
    >>> y_pred = np.array([[4, 4, 7, 7]])
    >>> # true region 0 (3 px): best overlap 2/3, with label 4;
    >>> # true region 1 (1 px): overlap 1/2 with label 7
    >>> float(segmentation_covering(y_true, y_pred))  # (3 * 2/3 + 1 * 1/2) / 4
    0.625
    >>> float(segmentation_covering(y_true, y_true))
    1.0
    """
    pair_p, pair_t, counts, size_p, size_t = _region_contingency(
        y_true, y_pred, ignore_index, "segmentation_covering"
    )
    overlap = counts / (size_p[pair_p] + size_t[pair_t] - counts)
    best = np.zeros(size_t.size)
    np.maximum.at(best, pair_t, overlap)
    return float(np.dot(size_t, best) / size_t.sum())


def variation_of_information(y_true, y_pred, *, ignore_index=None, base=2):
    """Variation of information between a segmentation and the ground truth.

    Meila's (2007) distance between two partitions of the scored pixels::

        VI(y_true, y_pred) = H(y_pred | y_true) + H(y_true | y_pred)
                           = H(y_true) + H(y_pred) - 2 I(y_true; y_pred)

    with the entropies of the label distributions over the pixels. It is 0
    exactly when the two partitions are equal (whatever the label values),
    symmetric in its two arguments (when nothing is ignored), and grows with
    both over-segmentation (``H(y_pred | y_true)``) and under-segmentation
    (``H(y_true | y_pred)``). Lower is better. A region is the set of pixels that
    share one label.

    Parameters
    ----------
    y_true : array-like of int
        Ground-truth region labels, any shape. Pixels with a negative value or
        a value in ``ignore_index`` are left out of both partitions.
    y_pred : array-like of int, same shape as ``y_true``
        Predicted region labels (non-negative on the scored pixels).
    ignore_index : int, sequence of int or None, default=None
        Ground-truth values to leave out (for example ``255`` for "void").
    base : float, default=2
        Base of the logarithm: ``2`` gives bits, as
        ``skimage.metrics.variation_of_information`` (whose two returned
        conditional entropies sum to this value); ``math.e`` gives nats.

    Returns
    -------
    vi : float
        Non-negative; at most ``log(N)`` for ``N`` scored pixels.

    Raises
    ------
    ValueError
        If the shapes differ, no pixel is left to score, or ``base`` is not a
        positive number other than 1.

    See Also
    --------
    segmentation_covering : The BSDS500 region covering.

    References
    ----------
    M. Meila, "Comparing clusterings -- an information based distance",
    Journal of Multivariate Analysis 98(5), 2007.

    Examples
    --------
    >>> import numpy as np
    >>> y_true = np.array([0, 0, 1, 1])
    >>> float(variation_of_information(y_true, np.array([5, 5, 3, 3])))
    0.0
    >>> float(variation_of_information(y_true, np.array([0, 0, 0, 0])))  # 1 bit lost
    1.0
    >>> float(variation_of_information(y_true, np.array([0, 1, 2, 3])))  # 1 bit too many
    1.0
    """
    if (
        not isinstance(base, Real)
        or isinstance(base, bool)
        or not math.isfinite(base)
        or base <= 0
        or base == 1
    ):
        raise ValueError(
            f"base must be a positive number other than 1 (2 for bits, math.e "
            f"for nats); got {base!r}."
        )
    pair_p, pair_t, counts, size_p, size_t = _region_contingency(
        y_true, y_pred, ignore_index, "variation_of_information"
    )
    n = float(size_t.sum())
    weights = counts / n
    # H(y_pred | y_true) + H(y_true | y_pred), summed pair by pair; for equal
    # partitions every log term is log(1) = 0 exactly
    vi = np.dot(weights, np.log(size_t[pair_t] / counts) + np.log(size_p[pair_p] / counts))
    return float(max(vi, 0.0) / math.log(base))


# --- dataset-level accumulation ---------------------------------------------


def _legacy_order(first, second):
    """True for the old ``score_prediction(mask, truths)`` call: a list of masks second."""
    return (isinstance(second, (list, tuple)) and len(second) > 0
            and all(np.ndim(t) == 2 for t in second) and np.ndim(first) == 2)


def score_prediction(y_true, y_pred, *, ignore_index=None):
    """Score one predicted mask against one or more ground truths.

    Parameters
    ----------
    y_true : array-like of shape (H, W), int, a list of them, or an array of shape (n, H, W)
        The ground truth, or several (for BSDS500: one per annotator).
    y_pred : array-like of shape (H, W), int
        The predicted segments.
    ignore_index : int, sequence of int or None, default=None
        Ground-truth values not scored.

    Returns
    -------
    scores : dict
        ``miou`` and ``pixel_accuracy`` (Hungarian-matched, mean over the
        ground truths), ``miou_best`` and ``pixel_accuracy_best`` (best ground
        truth, each on its own), the region measures ``covering`` and ``voi``
        (segmentation covering and variation of information in bits, see
        :func:`sklearn_clasp.metrics.segmentation_covering`; mean over the
        ground truths) with ``covering_best`` (highest) and ``voi_best``
        (lowest), ``n_clusters`` (distinct segments in the mask), ``n_classes``
        (mean number of classes over the ground truths) and ``n_annotators``.

    Notes
    -----
    Before version 0.2 the order was ``score_prediction(mask, truths)``; that
    call (a mask first and a list of masks second) still works, with a
    ``FutureWarning``, and will be removed.

    Examples
    --------
    >>> import numpy as np
    >>> truths = [np.array([[5, 5, 6, 6]]), np.array([[5, 5, 5, 6]])]
    >>> s = score_prediction(truths, np.array([[0, 0, 1, 1]]))
    >>> round(s["miou"], 4), s["miou_best"], s["pixel_accuracy"], s["n_annotators"]
    (0.7917, 1.0, 0.875, 2)
    >>> round(s["covering"], 4), s["covering_best"], round(s["voi"], 4), s["voi_best"]
    (0.8125, 1.0, 0.5944, 0.0)
    """
    if _legacy_order(y_true, y_pred):
        import warnings

        warnings.warn(
            "score_prediction(mask, truths) is deprecated: the ground truth comes "
            "first, as in scikit-learn; call score_prediction(truths, mask).",
            FutureWarning, stacklevel=2,
        )
        y_true, y_pred = y_pred, y_true
    mask = check_label_map(y_pred, name="y_pred", allow_float=True)
    several = isinstance(y_true, (list, tuple)) and len(y_true) > 0 and all(
        np.ndim(t) == 2 for t in y_true)  # else a nested list is one label map
    if isinstance(y_true, np.ndarray) and y_true.ndim == 3:
        several = True  # a stack of annotators, (n, H, W)
    if isinstance(y_true, (list, tuple, np.ndarray)) and len(y_true) == 0:
        raise ValueError("y_true: no ground truth given; pass a label map of shape (H, W) "
                         "or a list of them (one per annotator).")
    truths = list(y_true) if several else [y_true]
    per = []
    for i, truth in enumerate(truths):
        name = f"y_true[{i}]" if several else "y_true"
        truth = check_label_map(truth, name=name, allow_float=True)
        if truth.shape != mask.shape:
            raise ValueError(
                f"the mask is {mask.shape[0]} x {mask.shape[1]} but the ground truth"
                f"{f' #{i + 1}' if len(truths) > 1 else ''} is {truth.shape[0]} x "
                f"{truth.shape[1]} (H x W); segment the image the labels belong to"
            )
        scores = segmentation_scores(truth, mask, ignore_index=ignore_index)
        scores["covering"] = segmentation_covering(truth, mask, ignore_index=ignore_index)
        scores["voi"] = variation_of_information(truth, mask, ignore_index=ignore_index)
        per.append(scores)
    miou = [s["miou"] for s in per]
    covering = [s["covering"] for s in per]
    voi = [s["voi"] for s in per]
    acc = [s["pixel_accuracy"] for s in per]
    return {
        "miou": float(np.mean(miou)),
        "pixel_accuracy": float(np.mean(acc)),
        "miou_best": float(np.max(miou)),
        "pixel_accuracy_best": float(np.max(acc)),
        "covering": float(np.mean(covering)),
        "covering_best": float(np.max(covering)),
        "voi": float(np.mean(voi)),
        "voi_best": float(np.min(voi)),
        "n_clusters": int(np.unique(mask).size),
        "n_classes": float(np.mean([s["n_classes"] for s in per])),
        "n_annotators": len(per),
    }


class SegmentationScoreAccumulator:
    """Accumulate segmentation scores over a data set, image by image.

    Parameters
    ----------
    protocol : {"per_image", "dataset"}, default="per_image"
        ``"per_image"``: every image is scored on its own with
        :func:`segmentation_scores` (matched to the classes it contains) and
        :meth:`result` averages ``miou`` and ``pixel_accuracy`` over images --
        the protocol for training-free per-image methods such as CLASP.
        Images without any pixel to score are skipped and counted.
        ``"dataset"``: STEGO's protocol. One ``(n_clusters, n_classes)``
        confusion matrix is summed over all images (cluster ids must mean the
        same thing in every image), then clusters are matched to classes once
        (Hungarian). Class IoU is ``|c and k| / |c or k|`` for the matched
        cluster ``c``; an unmatched class has IoU 0; a class that occurs
        nowhere and whose matched cluster (if any) is never predicted has no
        IoU (NaN) and is left out of ``miou``, as in STEGO. ``pixel_accuracy``
        is the fraction of scored pixels whose cluster is matched to their
        class.
    n_classes : int, default=None
        Number of classes ``0 .. n_classes - 1``; required for ``"dataset"``.
    ignore_index : int, sequence of int or None, default=None
        Ground-truth values to ignore (negative values are always ignored).

    Attributes
    ----------
    n_images_ : int
        Images passed to :meth:`add`.
    n_skipped_ : int
        Images with no pixel to score (``"per_image"`` only).
    confusion_ : ndarray of shape (n_classes, n_clusters)
        Summed confusion matrix, classes by clusters as in
        :func:`confusion_matrix` (``"dataset"`` only); grows with the largest
        cluster id seen.

    Examples
    --------
    >>> import numpy as np
    >>> acc = SegmentationScoreAccumulator("per_image")
    >>> truth = np.array([[0, 0], [1, 1]])
    >>> _ = acc.add(truth, np.array([[1, 1], [0, 0]]))
    >>> _ = acc.add(truth, np.array([[0, 0], [0, 0]]))
    >>> acc.result()["miou"]    # (1.0 + 0.25) / 2
    0.625
    """

    def __init__(self, protocol="per_image", *, n_classes=None, ignore_index=None):
        if protocol not in ("per_image", "dataset"):
            raise ValueError(
                f"protocol must be 'per_image' or 'dataset'; got {protocol!r}."
            )
        if protocol == "dataset":
            if (isinstance(n_classes, bool) or not isinstance(n_classes, (Integral, np.integer))
                    or n_classes < 1):
                raise ValueError(
                    f"protocol='dataset' needs n_classes, a positive int (the "
                    f"number of ground-truth classes); got {n_classes!r}."
                )
        self.protocol = protocol
        self.n_classes = n_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self):
        """Forget everything accumulated so far; return self."""
        self.n_images_ = 0
        self.n_skipped_ = 0
        self._scores = []
        self.confusion_ = np.zeros((self.n_classes or 0, 0), np.int64)
        return self

    def add(self, y_true, y_pred):
        """Add one image's ground truth and predicted mask; return self.

        Parameters
        ----------
        y_true : array-like of shape (H, W), int
            The ground truth.
        y_pred : array-like of shape (H, W), int
            The predicted mask.

        Returns
        -------
        self : SegmentationScoreAccumulator
        """
        if self.protocol == "per_image":
            try:
                scores = segmentation_scores(
                    y_true, y_pred, ignore_index=self.ignore_index
                )
            except ValueError as exc:
                if "no pixel to score" not in str(exc):
                    raise
                self.n_skipped_ += 1
                self.n_images_ += 1
                logger.info(
                    "image %d has no pixel to score; skipped", self.n_images_ - 1
                )
                return self
            self._scores.append(scores)
        else:
            try:
                conf = confusion_matrix(
                    y_true, y_pred, ignore_index=self.ignore_index, n_true=self.n_classes
                )
            except ValueError as exc:  # say it with this class's parameter
                if f"but n_true={self.n_classes}" not in str(exc):
                    raise
                raise ValueError(str(exc).replace("n_true", "n_classes")) from None
            if conf.shape[1] > self.confusion_.shape[1]:
                grown = np.zeros((self.n_classes, conf.shape[1]), np.int64)
                grown[:, : self.confusion_.shape[1]] = self.confusion_
                self.confusion_ = grown
            self.confusion_[:, : conf.shape[1]] += conf
        self.n_images_ += 1
        return self

    def update(self, pred, truth):
        """Deprecated: :meth:`add` with the prediction first.

        Kept for callers of versions before 0.2; ``update(pred, truth)`` is
        ``add(truth, pred)``. Warns ``FutureWarning``; will be removed.
        """
        import warnings

        warnings.warn(
            "SegmentationScoreAccumulator.update(pred, truth) is deprecated; use "
            "add(y_true, y_pred): the ground truth comes first, as in scikit-learn.",
            FutureWarning, stacklevel=2,
        )
        return self.add(truth, pred)

    def result(self):
        """Scores over everything accumulated.

        Returns
        -------
        scores : dict
            Both protocols: ``miou``, ``pixel_accuracy``, ``n_images``,
            ``protocol``. ``"per_image"`` adds ``n_scored`` (images averaged)
            and ``mean_n_clusters``; ``"dataset"`` adds ``per_class_iou``
            (ndarray of length ``n_classes``, NaN where undefined), ``mapping``
            (dict cluster -> class) and ``confusion``.
        """
        if self.protocol == "per_image":
            if not self._scores:
                raise ValueError("SegmentationScoreAccumulator: no image scored yet; "
                                 "call add(y_true, y_pred) first.")
            return {
                "protocol": "per_image",
                "miou": float(np.mean([s["miou"] for s in self._scores])),
                "pixel_accuracy": float(
                    np.mean([s["pixel_accuracy"] for s in self._scores])
                ),
                "mean_n_clusters": float(
                    np.mean([s["n_clusters"] for s in self._scores])
                ),
                "n_images": self.n_images_,
                "n_scored": len(self._scores),
            }
        conf = self.confusion_
        total = conf.sum()
        if total == 0:
            raise ValueError("SegmentationScoreAccumulator: no pixel scored yet; "
                             "call add(y_true, y_pred) first.")
        rows, cols = hungarian_match(conf)  # rows: classes, cols: clusters
        matched = conf[rows, cols]
        iou = np.where(conf.sum(1) > 0, 0.0, np.nan)
        union = conf.sum(1)[rows] + conf.sum(0)[cols] - matched
        with np.errstate(invalid="ignore", divide="ignore"):
            iou[rows] = np.where(union > 0, matched / np.maximum(union, 1), np.nan)
        return {
            "protocol": "dataset",
            "miou": float(np.nanmean(iou)),
            "pixel_accuracy": float(matched.sum() / total),
            "per_class_iou": iou,
            "mapping": dict(sorted((int(c), int(r)) for r, c in zip(rows, cols))),
            "confusion": conf.copy(),
            "n_images": self.n_images_,
        }


# --- scorers for model selection ------------------------------------------------


def _is_fitted(estimator):
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except (NotFittedError, TypeError):
        return False
    return True


def _predict_masks(estimator, X):
    """One mask per image: ``predict`` of a fitted estimator, else ``fit_predict``."""
    if hasattr(estimator, "predict") and _is_fitted(estimator):
        masks = estimator.predict(X)
    elif hasattr(estimator, "fit_predict"):
        masks = estimator.fit_predict(X)
    else:
        masks = estimator.fit_transform(X)
    if is_record_sequence(masks):
        raise TypeError(
            f"{type(estimator).__name__} returned PatchGrid records, not masks; end "
            f"the pipeline with CRFRefiner (or a step returning one mask per image)."
        )
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = [masks]
    return list(masks)


class _SegmentationScorer:
    """Mean per-image Hungarian score of ``estimator.fit_predict(X)`` against ``y``."""

    def __init__(self, metric, ignore_index):
        self.metric = metric
        self.ignore_index = ignore_index

    def __call__(self, estimator, X, y):
        if y is None:
            raise ValueError(
                f"the {self.metric} scorer needs ground-truth masks y (one per image)."
            )
        truths = list(y)
        masks = _predict_masks(estimator, X)
        if len(masks) != len(truths):
            raise ValueError(
                f"{type(estimator).__name__} returned {len(masks)} masks for "
                f"{len(truths)} ground-truth masks; they must pair up one per image."
            )
        values = []
        for i, (truth, pred) in enumerate(zip(truths, masks)):
            try:
                scores = segmentation_scores(
                    truth, pred, ignore_index=self.ignore_index
                )
            except ValueError as exc:
                if "no pixel to score" in str(exc):
                    continue
                raise ValueError(f"image {i}: {exc}") from exc
            values.append(scores[self.metric])
        if not values:
            raise ValueError("no image has any pixel to score; check ignore_index.")
        return float(np.mean(values))

    def __repr__(self):
        return (f"make_segmentation_scorer(metric={self.metric!r}, "
                f"ignore_index={self.ignore_index!r})")


def make_segmentation_scorer(metric="miou", *, ignore_index=None):
    """Make a segmentation scorer ``scorer(estimator, X, y)`` for model selection.

    For :class:`~sklearn.model_selection.GridSearchCV` and friends.

    The scorer calls ``estimator.predict(X)`` when the estimator is fitted
    (as in a search), else ``estimator.fit_predict(X)``, gets one mask per
    image, scores each against the matching ground-truth mask in ``y`` with
    :func:`segmentation_scores` (the per-image protocol) and returns the mean.
    Images with no pixel to score are skipped. A CLASP pipeline learns
    nothing in ``fit``, so in a search each image is segmented once per
    candidate, in the fold that scores it (see :doc:`/sklearn_semantics`).

    Parameters
    ----------
    metric : {"miou", "pixel_accuracy"}, default="miou"
        The per-image score to average.
    ignore_index : int, sequence of int or None, default=None
        Ground-truth values to ignore (negative values always are).

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y) -> float``, higher is better.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.base import BaseEstimator
    >>> class Fixed(BaseEstimator):
    ...     def fit_predict(self, X, y=None):
    ...         return [np.array([[3, 3], [4, 4]]) for _ in X]
    >>> scorer = make_segmentation_scorer("pixel_accuracy", ignore_index=255)
    >>> scorer(Fixed(), [None], [np.array([[1, 255], [2, 2]])])
    1.0
    """
    if metric not in ("miou", "pixel_accuracy"):
        raise ValueError(
            f"metric must be 'miou' or 'pixel_accuracy'; got {metric!r}."
        )
    _ignore_values(ignore_index)  # validate early
    return _SegmentationScorer(metric, ignore_index)


#: Scorer: mean per-image Hungarian-matched mIoU of ``fit_predict(X)`` vs ``y``.
miou_scorer = make_segmentation_scorer("miou")

#: Scorer: mean per-image Hungarian-matched pixel accuracy.
pixel_accuracy_scorer = make_segmentation_scorer("pixel_accuracy")


def _silhouettes(records):
    if not is_record_sequence(records):
        return None
    if not all("silhouette" in r.info for r in records):
        return None
    return records


def silhouette_scorer(estimator, X, y=None):
    """Unsupervised scorer: the mean silhouette of the chosen segmentations.

    Needs no ground truth, so it can tune CLASP where there are no labels. The
    segmenter stores the exact silhouette of the segmentation it chose in
    ``record.info["silhouette"]`` (0.0 for a single segment); this scorer
    averages it over the images.

    A :class:`~sklearn.pipeline.Pipeline` is run on each image with
    :func:`~sklearn_clasp.pipeline.clasp_one`; any other estimator with
    ``estimator.fit_transform(X)``.

    Parameters
    ----------
    estimator : estimator or Pipeline
        Produces :class:`~sklearn_clasp.records.PatchGrid` records with
        ``info["silhouette"]``.
    X : list of images
        The images.
    y : None
        Ignored.

    Returns
    -------
    score : float
        Mean silhouette, in ``[-1, 1]``; higher is better.

    Raises
    ------
    ValueError
        If no step yields records with ``info["silhouette"]``.
    """
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline) and len(estimator.steps) > 1:
        from .pipeline import clasp_one, fitted_embedder

        embedded = fitted_embedder(estimator).transform(X)
        records = _silhouettes([clasp_one(estimator, rec)[1] for rec in embedded])
    else:
        records = _silhouettes(estimator.fit_transform(X))
    if records is None:
        raise ValueError(
            f"silhouette_scorer: {type(estimator).__name__} did not produce PatchGrid "
            f"records with info['silhouette']; use a pipeline whose segmenter "
            f"(AdaptiveSpectralSegmenter) is the last step or comes just before "
            f"the refiner."
        )
    values = []
    for rec in records:
        value = rec.info["silhouette"]
        if value is None or not np.isfinite(value):
            raise ValueError(
                f"silhouette_scorer: record {rec.name!r} has silhouette {value!r}; "
                f"expected a finite number."
            )
        values.append(float(value))
    return float(np.mean(values))
