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


def _check_pair(pred, truth, ignore_index):
    """Flatten pred and truth, check them, and return them on valid pixels only."""
    pred = _as_label_map(pred, "pred")
    truth = _as_label_map(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(
            f"pred and truth must have the same shape; got pred {pred.shape} and "
            f"truth {truth.shape}. Predict full-resolution masks (for example end "
            f"the pipeline with CRFRefiner) or resize one to the other."
        )
    pred, truth = pred.ravel(), truth.ravel()
    valid = truth >= 0
    ignore = _ignore_values(ignore_index)
    if ignore.size:
        valid &= ~np.isin(truth, ignore)
    pred, truth = pred[valid], truth[valid]
    if pred.size and pred.min() < 0:
        raise ValueError(
            f"pred must hold non-negative cluster ids on the scored pixels; found "
            f"{int(pred.min())}."
        )
    return pred, truth


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


def confusion_matrix(pred, truth, *, ignore_index=None, n_pred=None, n_true=None):
    """Pixel counts of predicted clusters against ground-truth classes.

    Parameters
    ----------
    pred : array-like of int
        Predicted cluster ids (non-negative), any shape.
    truth : array-like of int, same shape as ``pred``
        Ground-truth class ids. Pixels with a negative value or a value in
        ``ignore_index`` are left out.
    ignore_index : int, sequence of int or None, default=None
        Ground-truth values to leave out (for example ``255`` for "void").
    n_pred : int, default=None
        Number of rows; default ``max(pred) + 1`` over the scored pixels.
    n_true : int, default=None
        Number of columns; default ``max(truth) + 1`` over the scored pixels.

    Returns
    -------
    confusion : ndarray of shape (n_pred, n_true), dtype int64
        ``confusion[i, j]`` is the number of scored pixels with cluster ``i``
        and class ``j``.

    Examples
    --------
    >>> import numpy as np
    >>> pred = np.array([[0, 0, 1], [1, 1, 1]])
    >>> truth = np.array([[2, 2, 0], [0, 0, 255]])
    >>> confusion_matrix(pred, truth, ignore_index=255)
    array([[0, 0, 2],
           [3, 0, 0]])
    """
    pred, truth = _check_pair(pred, truth, ignore_index)
    rows = int(pred.max()) + 1 if pred.size else 0
    cols = int(truth.max()) + 1 if truth.size else 0
    if n_pred is None:
        n_pred = rows
    elif rows > n_pred:
        raise ValueError(
            f"pred has cluster id {rows - 1} but n_pred={n_pred}; raise n_pred."
        )
    if n_true is None:
        n_true = cols
    elif cols > n_true:
        raise ValueError(
            f"truth has class {cols - 1} but n_true={n_true}; raise n_true or add "
            f"the value to ignore_index."
        )
    counts = np.bincount(pred * n_true + truth, minlength=n_pred * n_true)
    return counts.reshape(n_pred, n_true).astype(np.int64, copy=False)


def hungarian_match(confusion):
    """One-to-one matching of clusters (rows) to classes (columns).

    Maximises the total number of matched pixels with
    :func:`scipy.optimize.linear_sum_assignment`. The matrix may be
    rectangular: ``min(n_rows, n_cols)`` pairs are returned, and the extra
    rows or columns stay unmatched.

    Parameters
    ----------
    confusion : array-like of shape (n_clusters, n_classes)
        Pixel counts, as from :func:`confusion_matrix`.

    Returns
    -------
    rows, cols : ndarray of int
        Matched pairs ``(rows[i], cols[i])``, sorted by row.

    Examples
    --------
    >>> import numpy as np
    >>> hungarian_match(np.array([[1, 5], [4, 2], [0, 3]]))
    (array([0, 1]), array([1, 0]))
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2:
        raise ValueError(
            f"confusion must be a 2-D matrix (clusters x classes); got shape "
            f"{confusion.shape}."
        )
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)


def segmentation_scores(pred, truth, *, ignore_index=None):
    """Hungarian-matched scores of one predicted segmentation.

    Protocol: the scored pixels are those whose ground truth is non-negative
    and not in ``ignore_index``. The clusters are the distinct ``pred`` values
    on scored pixels, the classes the distinct ``truth`` values there. Clusters
    are matched one-to-one to classes so that the matched pixel count is
    maximal (:func:`hungarian_match`). Then

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
    pred : array-like of int
        Predicted mask of cluster ids (non-negative).
    truth : array-like of int, same shape as ``pred``
        Ground-truth mask; negative values are ignored.
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
    >>> truth = np.array([[0, 0, 1], [0, 0, 1]])
    >>> pred = np.array([[5, 5, 5], [7, 7, 7]])   # wrong split: top / bottom
    >>> s = segmentation_scores(pred, truth)
    >>> s["mapping"], s["per_class_iou"]
    ({5: 0, 7: 1}, {0: 0.4, 1: 0.25})
    >>> round(s["miou"], 3), round(s["pixel_accuracy"], 3)
    (0.325, 0.5)
    """
    pred, truth = _check_pair(pred, truth, ignore_index)
    if pred.size == 0:
        raise ValueError(
            "segmentation_scores: no pixel to score (every ground-truth pixel is "
            "negative or in ignore_index)."
        )
    clusters, pred_idx = _compact(pred)
    classes, true_idx = _compact(truth)
    confusion = confusion_matrix(
        pred_idx, true_idx, n_pred=len(clusters), n_true=len(classes)
    )
    rows, cols = hungarian_match(confusion)
    matched = confusion[rows, cols]
    union = confusion.sum(1)[rows] + confusion.sum(0)[cols] - matched
    iou = np.zeros(len(classes))
    iou[cols] = matched / union
    return {
        "miou": float(iou.mean()),
        "pixel_accuracy": float(matched.sum() / pred.size),
        "n_clusters": int(len(clusters)),
        "n_classes": int(len(classes)),
        "per_class_iou": {int(k): float(v) for k, v in zip(classes, iou)},
        "mapping": {int(clusters[r]): int(classes[c]) for r, c in zip(rows, cols)},
    }


# --- region measures ------------------------------------------------------------


def _region_contingency(pred, truth, ignore_index, caller):
    """Sparse contingency table of two label maps on the scored pixels.

    Returns ``(pair_pred, pair_true, counts, size_pred, size_true)``: for every
    pair of a predicted region and a true region that share pixels, their
    compact region indices and the number of shared pixels; and the size of
    every region (regions are numbered ``0 ..`` in the order of their labels).
    """
    pred, truth = _check_pair(pred, truth, ignore_index)
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


def segmentation_covering(pred, truth, *, ignore_index=None):
    """Covering of the ground-truth regions by a segmentation.

    The segmentation covering of Arbelaez et al. (2011), in the direction of
    the BSDS500 benchmark: every ground-truth region ``R`` is paired with the
    predicted region ``R'`` that overlaps it best, and the overlaps are
    averaged with weights ``|R|``::

        C(pred -> truth) = 1 / N * sum_R |R| * max_R' |R and R'| / |R or R'|

    with ``N`` the number of scored pixels. A region is the set of pixels
    that share one label (it need not be connected; label connected
    components first, e.g. with ``scipy.ndimage.label``, for the
    connected-region convention). No matching of labels is involved, so the
    label values are arbitrary. Against several human segmentations, the
    BSDS500 benchmark averages the covering over them.

    The measure is not symmetric: ``segmentation_covering(truth, pred)`` is
    the covering of the predicted regions by the ground truth (when nothing
    is ignored). Splitting a true region lowers the covering; merging two
    true regions lowers it too, by less when one of them is small.

    Parameters
    ----------
    pred : array-like of int
        Predicted region labels (non-negative on the scored pixels), any shape.
    truth : array-like of int, same shape as ``pred``
        Ground-truth region labels. Pixels with a negative value or a value in
        ``ignore_index`` are left out: they count neither in ``N`` nor in any
        region, predicted or true.
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
    >>> truth = np.array([[0, 0, 0, 1]])
    >>> pred = np.array([[4, 4, 7, 7]])
    >>> # true region 0 (3 px): best overlap 2/3, with label 4;
    >>> # true region 1 (1 px): overlap 1/2 with label 7
    >>> float(segmentation_covering(pred, truth))  # (3 * 2/3 + 1 * 1/2) / 4
    0.625
    >>> float(segmentation_covering(truth, truth))
    1.0
    """
    pair_p, pair_t, counts, size_p, size_t = _region_contingency(
        pred, truth, ignore_index, "segmentation_covering"
    )
    overlap = counts / (size_p[pair_p] + size_t[pair_t] - counts)
    best = np.zeros(size_t.size)
    np.maximum.at(best, pair_t, overlap)
    return float(np.dot(size_t, best) / size_t.sum())


def variation_of_information(pred, truth, *, ignore_index=None, base=2):
    """Variation of information between a segmentation and the ground truth.

    Meila's (2007) distance between two partitions of the scored pixels::

        VI(pred, truth) = H(pred | truth) + H(truth | pred)
                        = H(pred) + H(truth) - 2 I(pred; truth)

    with the entropies of the label distributions over the pixels. It is 0
    exactly when the two partitions are equal (whatever the label values),
    symmetric in its two arguments (when nothing is ignored), and grows with
    both over-segmentation (``H(pred | truth)``) and under-segmentation
    (``H(truth | pred)``). Lower is better. A region is the set of pixels that
    share one label.

    Parameters
    ----------
    pred : array-like of int
        Predicted region labels (non-negative on the scored pixels), any shape.
    truth : array-like of int, same shape as ``pred``
        Ground-truth region labels. Pixels with a negative value or a value in
        ``ignore_index`` are left out of both partitions.
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
    >>> truth = np.array([0, 0, 1, 1])
    >>> float(variation_of_information(np.array([5, 5, 3, 3]), truth))
    0.0
    >>> float(variation_of_information(np.array([0, 0, 0, 0]), truth))  # 1 bit lost
    1.0
    >>> float(variation_of_information(np.array([0, 1, 2, 3]), truth))  # 1 bit too many
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
        pred, truth, ignore_index, "variation_of_information"
    )
    n = float(size_t.sum())
    weights = counts / n
    # H(pred | truth) + H(truth | pred), summed pair by pair; for equal
    # partitions every log term is log(1) = 0 exactly
    vi = np.dot(weights, np.log(size_t[pair_t] / counts) + np.log(size_p[pair_p] / counts))
    return float(max(vi, 0.0) / math.log(base))


# --- dataset-level accumulation ---------------------------------------------


def score_prediction(mask, truths, *, ignore_index=None):
    """Score one predicted mask against one or more ground truths.

    Parameters
    ----------
    mask : array-like of shape (H, W), int
        The predicted segments.
    truths : list of array-like of shape (H, W), int
        The ground truths (several for BSDS: one per annotator).
    ignore_index : int, sequence of int or None, default=None
        Label values not scored.

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

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.array([[0, 0, 1, 1]])
    >>> s = score_prediction(mask, [np.array([[5, 5, 6, 6]]), np.array([[5, 5, 5, 6]])])
    >>> round(s["miou"], 4), s["miou_best"], s["pixel_accuracy"], s["n_annotators"]
    (0.7917, 1.0, 0.875, 2)
    >>> round(s["covering"], 4), s["covering_best"], round(s["voi"], 4), s["voi_best"]
    (0.8125, 1.0, 0.5944, 0.0)
    """
    mask = np.asarray(mask)
    per = []
    for i, truth in enumerate(truths):
        truth = np.asarray(truth)
        if truth.shape != mask.shape:
            raise ValueError(
                f"the mask is {mask.shape[0]} x {mask.shape[1]} but the ground truth"
                f"{f' #{i + 1}' if len(truths) > 1 else ''} is {truth.shape[0]} x "
                f"{truth.shape[1]} (H x W); segment the image the labels belong to"
            )
        scores = segmentation_scores(mask, truth, ignore_index=ignore_index)
        scores["covering"] = segmentation_covering(mask, truth, ignore_index=ignore_index)
        scores["voi"] = variation_of_information(mask, truth, ignore_index=ignore_index)
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
        Images passed to :meth:`update`.
    n_skipped_ : int
        Images with no pixel to score (``"per_image"`` only).
    confusion_ : ndarray of shape (n_clusters, n_classes)
        Summed confusion matrix (``"dataset"`` only); grows with the largest
        cluster id seen.

    Examples
    --------
    >>> import numpy as np
    >>> acc = SegmentationScoreAccumulator("per_image")
    >>> _ = acc.update(np.array([[1, 1], [0, 0]]), np.array([[0, 0], [1, 1]]))
    >>> _ = acc.update(np.array([[0, 0], [0, 0]]), np.array([[0, 0], [1, 1]]))
    >>> acc.result()["miou"]    # (1.0 + 0.25) / 2
    0.625
    """

    def __init__(self, protocol="per_image", *, n_classes=None, ignore_index=None):
        if protocol not in ("per_image", "dataset"):
            raise ValueError(
                f"protocol must be 'per_image' or 'dataset'; got {protocol!r}."
            )
        if protocol == "dataset":
            if not isinstance(n_classes, (Integral, np.integer)) or n_classes < 1:
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
        self.confusion_ = np.zeros((0, self.n_classes or 0), np.int64)
        return self

    def update(self, pred, truth):
        """Add one image's predicted mask and ground truth; return self."""
        if self.protocol == "per_image":
            try:
                scores = segmentation_scores(
                    pred, truth, ignore_index=self.ignore_index
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
            conf = confusion_matrix(
                pred, truth, ignore_index=self.ignore_index, n_true=self.n_classes
            )
            if conf.shape[0] > self.confusion_.shape[0]:
                grown = np.zeros((conf.shape[0], self.n_classes), np.int64)
                grown[: self.confusion_.shape[0]] = self.confusion_
                self.confusion_ = grown
            self.confusion_[: conf.shape[0]] += conf
        self.n_images_ += 1
        return self

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
                                 "call update(pred, truth) first.")
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
                             "call update(pred, truth) first.")
        rows, cols = hungarian_match(conf)
        matched = conf[rows, cols]
        iou = np.where(conf.sum(0) > 0, 0.0, np.nan)
        union = conf.sum(1)[rows] + conf.sum(0)[cols] - matched
        with np.errstate(invalid="ignore", divide="ignore"):
            iou[cols] = np.where(union > 0, matched / np.maximum(union, 1), np.nan)
        return {
            "protocol": "dataset",
            "miou": float(np.nanmean(iou)),
            "pixel_accuracy": float(matched.sum() / total),
            "per_class_iou": iou,
            "mapping": {int(r): int(c) for r, c in zip(rows, cols)},
            "confusion": conf.copy(),
            "n_images": self.n_images_,
        }


# --- scorers for model selection ------------------------------------------------


def _predict_masks(estimator, X):
    if hasattr(estimator, "fit_predict"):
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
        for i, (pred, truth) in enumerate(zip(masks, truths)):
            try:
                scores = segmentation_scores(
                    pred, truth, ignore_index=self.ignore_index
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

    The scorer calls ``estimator.fit_predict(X)`` (CLASP is transductive: each
    image is segmented on its own, so the held-out images are segmented, not
    predicted from the training images), gets one mask per image, scores each
    against the matching ground-truth mask in ``y`` with
    :func:`segmentation_scores` (the per-image protocol) and returns the mean.
    Images with no pixel to score are skipped.

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
