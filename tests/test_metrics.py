"""Tests for sklearn_clasp.metrics, on label maps small enough to score by hand."""

import math

import numpy as np
import pytest
from sklearn.base import BaseEstimator
from sklearn.model_selection import GridSearchCV

from sklearn_clasp.metrics import (
    SegmentationScoreAccumulator,
    confusion_matrix,
    hungarian_match,
    make_segmentation_scorer,
    miou_scorer,
    pixel_accuracy_scorer,
    segmentation_covering,
    segmentation_scores,
    silhouette_scorer,
    variation_of_information,
)
from sklearn_clasp.records import PatchGrid

# --- confusion_matrix / hungarian_match ---------------------------------------


def test_confusion_matrix_hand_example():
    pred = np.array([[0, 0, 1], [1, 2, 2]])
    truth = np.array([[1, 1, 1], [0, 0, 255]])
    # valid pixels: (t1,p0) x2, (t1,p1), (t0,p1), (t0,p2); the 255 pixel is ignored
    # rows are the true classes, columns the clusters, as in scikit-learn
    expected = np.array([[0, 1, 1], [2, 1, 0]])
    conf = confusion_matrix(truth, pred, ignore_index=255)
    np.testing.assert_array_equal(conf, expected)
    # the same with a sequence of ignored values, and negative truth always ignored
    np.testing.assert_array_equal(
        confusion_matrix(np.where(truth == 255, -1, truth), pred), expected
    )
    np.testing.assert_array_equal(
        confusion_matrix(truth, pred, ignore_index=[255, 1]), [[0, 1, 1]]
    )
    padded = confusion_matrix(truth, pred, ignore_index=255, n_pred=4, n_true=3)
    assert padded.shape == (3, 4) and padded.dtype == np.int64
    np.testing.assert_array_equal(padded[:2, :3], expected)
    assert padded[2].sum() == 0 and padded[:, 3].sum() == 0


def test_confusion_matrix_agrees_with_scikit_learn():
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    rng = np.random.RandomState(0)
    truth, pred = rng.randint(0, 4, 50), rng.randint(0, 4, 50)
    np.testing.assert_array_equal(confusion_matrix(truth, pred),
                                  sk_confusion_matrix(truth, pred, labels=range(4)))


def test_confusion_matrix_too_small_sizes():
    pred, truth = np.array([0, 3]), np.array([0, 1])
    with pytest.raises(ValueError, match="n_pred"):
        confusion_matrix(truth, pred, n_pred=2)
    with pytest.raises(ValueError, match="n_true"):
        confusion_matrix(truth, pred, n_true=1)


def test_hungarian_match_square_and_rectangular():
    rows, cols = hungarian_match(np.array([[1, 9], [8, 2]]))
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    # more clusters than classes: cluster 1 is left unmatched
    rows, cols = hungarian_match(np.array([[5, 0], [4, 1], [0, 7]]))
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 0, 2: 1}
    # fewer clusters than classes: class 1 is left unmatched (7 + 6 beats 3 + 6)
    rows, cols = hungarian_match(np.array([[7, 3, 0], [0, 6, 6]]))
    assert rows.tolist() == [0, 1] and cols.tolist() in ([0, 1], [0, 2])
    with pytest.raises(ValueError, match="2-D"):
        hungarian_match(np.zeros(3))


# --- segmentation_scores --------------------------------------------------------


def test_permuted_labels_score_perfectly():
    truth = np.array([[0, 0, 1], [2, 2, 1]])
    pred = np.array([[7, 7, 3], [5, 5, 3]])  # same partition, other ids
    s = segmentation_scores(truth, pred)
    assert s["miou"] == 1.0 and s["pixel_accuracy"] == 1.0
    assert s["mapping"] == {7: 0, 3: 1, 5: 2}
    assert s["per_class_iou"] == {0: 1.0, 1: 1.0, 2: 1.0}
    assert s["n_clusters"] == 3 and s["n_classes"] == 3


def test_over_segmentation():
    truth = np.array([[0, 0, 0], [1, 1, 1]])
    pred = np.array([[0, 0, 1], [2, 2, 2]])
    # clusters: 0 -> {class 0: 2}, 1 -> {class 0: 1}, 2 -> {class 1: 3}
    # match 0->0, 2->1; cluster 1 unmatched.
    # IoU(0) = 2 / (2 + 3 - 2) = 2/3; IoU(1) = 3 / 3 = 1; acc = 5/6
    s = segmentation_scores(truth, pred)
    assert s["mapping"] == {0: 0, 2: 1}
    assert s["per_class_iou"] == pytest.approx({0: 2 / 3, 1: 1.0})
    assert s["miou"] == pytest.approx(5 / 6)
    assert s["pixel_accuracy"] == pytest.approx(5 / 6)
    assert s["n_clusters"] == 3 and s["n_classes"] == 2


def test_under_segmentation():
    truth = np.array([[0, 0, 1], [2, 2, 2]])
    pred = np.array([[0, 0, 0], [1, 1, 1]])
    # cluster 0 -> {class 0: 2, class 1: 1}, cluster 1 -> {class 2: 3}
    # match 0->0, 1->2; class 1 gets no cluster: IoU 0.
    # IoU(0) = 2 / (3 + 2 - 2) = 2/3; IoU(2) = 1; mIoU = (2/3 + 0 + 1) / 3 = 5/9
    s = segmentation_scores(truth, pred)
    assert s["mapping"] == {0: 0, 1: 2}
    assert s["per_class_iou"] == pytest.approx({0: 2 / 3, 1: 0.0, 2: 1.0})
    assert s["miou"] == pytest.approx(5 / 9)
    assert s["pixel_accuracy"] == pytest.approx(5 / 6)


def test_only_classes_present_in_the_image_count():
    # class 1 exists in the data set but not in this image: it is not averaged in
    truth = np.array([[0, 0, 2], [0, 0, 2]])
    pred = np.array([[1, 1, 0], [1, 1, 0]])
    s = segmentation_scores(truth, pred)
    assert s["miou"] == 1.0 and set(s["per_class_iou"]) == {0, 2}
    assert s["n_classes"] == 2


def test_ignored_pixels_are_left_out():
    truth = np.array([[0, 255, 1], [0, 0, -1]])
    pred = np.array([[0, 1, 1], [0, 1, 0]])
    # scored pixels: (p0,t0) (p1,t1) (p0,t0) (p1,t0); 255 and -1 are ignored
    # cluster 0 -> {0: 2}; cluster 1 -> {0: 1, 1: 1}; match 0->0, 1->1
    # IoU(0) = 2 / (2 + 3 - 2) = 2/3; IoU(1) = 1 / (2 + 1 - 1) = 1/2; acc = 3/4
    for ignore in (255, [255], (254, 255), np.array([255])):
        s = segmentation_scores(truth, pred, ignore_index=ignore)
        assert s["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
        assert s["pixel_accuracy"] == pytest.approx(3 / 4)
        assert s["n_classes"] == 2
    # without ignore_index, 255 is a class of its own
    assert segmentation_scores(truth, pred)["n_classes"] == 3


def test_more_clusters_than_classes():
    truth = np.zeros((4, 4), int)
    truth[:, 2:] = 1  # left half class 0, right half class 1
    pred = np.zeros((4, 4), int)
    pred[:2, 2:], pred[2:, :2], pred[2:, 2:] = 1, 2, 3  # four quadrants
    # each class is split over two clusters of 4 pixels; the matched one gives
    # IoU 4 / (4 + 8 - 4) = 0.5; 8 of 16 pixels are matched
    s = segmentation_scores(truth, pred)
    assert s["miou"] == pytest.approx(0.5) and s["pixel_accuracy"] == pytest.approx(0.5)
    assert len(s["mapping"]) == 2 and s["n_clusters"] == 4


def test_fewer_clusters_than_classes():
    truth = np.zeros((4, 4), int)
    truth[:2, 2:], truth[2:, :2], truth[2:, 2:] = 1, 2, 3  # four quadrants
    pred = np.zeros((4, 4), int)
    pred[:, 2:] = 1  # two halves
    # each cluster covers two classes; matched class IoU = 4 / (8 + 4 - 4) = 0.5,
    # the two unmatched classes 0: mIoU = (0.5 + 0.5 + 0 + 0) / 4
    s = segmentation_scores(truth, pred)
    assert s["miou"] == pytest.approx(0.25)
    assert s["pixel_accuracy"] == pytest.approx(0.5)
    assert sorted(s["per_class_iou"].values()) == pytest.approx([0, 0, 0.5, 0.5])


def test_single_cluster_and_single_class():
    assert segmentation_scores(np.full((2, 3), 4), np.zeros((2, 3), int))["miou"] == 1.0
    s = segmentation_scores(np.array([[0, 0, 0], [0, 1, 1]]), np.zeros((2, 3), int))
    # IoU(0) = 4 / 6, class 1 unmatched
    assert s["miou"] == pytest.approx((4 / 6 + 0) / 2)
    assert s["pixel_accuracy"] == pytest.approx(4 / 6)


def test_bool_masks_accepted():
    truth = np.array([[True, False], [True, False]])
    assert segmentation_scores(truth, ~truth)["miou"] == 1.0


def test_shape_mismatch_and_bad_labels():
    with pytest.raises(ValueError, match="same shape"):
        segmentation_scores(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros(4, int), np.zeros(5, int))
    with pytest.raises(TypeError, match="integer labels"):
        segmentation_scores(np.zeros((2, 2), int), np.zeros((2, 2)))
    with pytest.raises(TypeError, match="y_true must hold integer labels"):
        segmentation_scores(np.zeros((2, 2), np.float32), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="y_pred must hold non-negative"):
        segmentation_scores(np.array([[0, 1]]), np.array([[0, -1]]))
    with pytest.raises(TypeError, match="ignore_index"):
        segmentation_scores(
            np.zeros((1, 2), int), np.zeros((1, 2), int), ignore_index="x"
        )
    with pytest.raises(ValueError, match="no pixel to score"):
        segmentation_scores(
            np.full((2, 2), 255), np.zeros((2, 2), int), ignore_index=255
        )


# --- segmentation_covering / variation_of_information ------------------------------

# truth: left half region 0, right half region 1; pred: columns 0-2 and column 3
HALVES = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
SHIFTED = np.array([[0, 0, 0, 1], [0, 0, 0, 1]])


def test_covering_hand_example_and_direction():
    # true region 0 (4 px): overlap with pred 0 is 4 / 6; true region 1 (4 px):
    # pred 0 gives 2 / 8, pred 1 gives 2 / 4 -> (4 * 2/3 + 4 * 1/2) / 8 = 7/12
    assert segmentation_covering(HALVES, SHIFTED) == pytest.approx(7 / 12)
    # the other direction covers the predicted regions: pred 0 (6 px) best 4/6,
    # pred 1 (2 px) best 2/4 -> (6 * 2/3 + 2 * 1/2) / 8 = 5/8
    assert segmentation_covering(SHIFTED, HALVES) == pytest.approx(5 / 8)


def test_variation_of_information_hand_example():
    # joint counts (pred, truth): (0, 0) 4, (0, 1) 2, (1, 1) 2 of 8 pixels
    # H(pred | truth) = 4/8 log2(4/4) + 2/8 log2(4/2) + 2/8 log2(4/2) = 0.5
    # H(truth | pred) = 4/8 log2(6/4) + 2/8 log2(6/2) + 2/8 log2(2/2)
    expected = 0.5 + 0.5 * math.log2(1.5) + 0.25 * math.log2(3)
    assert variation_of_information(HALVES, SHIFTED) == pytest.approx(expected)
    assert variation_of_information(HALVES, SHIFTED, base=math.e) == pytest.approx(
        expected * math.log(2)
    )


def test_one_region_per_pixel():
    # the sparse counting path: 8 predicted regions of one pixel each
    pred = np.arange(8).reshape(2, 4)
    # each true region of 4 px is best covered with overlap 1/4
    assert segmentation_covering(HALVES, pred) == pytest.approx(0.25)
    # H(truth | pred) = 0, H(pred | truth) = log2(4) = 2 bits
    assert variation_of_information(HALVES, pred) == pytest.approx(2.0)
    # one region for everything: H(truth | pred) = 1 bit; covering 4/8 each
    assert variation_of_information(HALVES, np.zeros((2, 4), int)) == pytest.approx(1.0)
    assert segmentation_covering(HALVES, np.zeros((2, 4), int)) == pytest.approx(0.5)


def _random_maps(seed, shape=(12, 17), n_a=5, n_b=7):
    rng = np.random.RandomState(seed)
    return rng.randint(0, n_a, shape), rng.randint(0, n_b, shape)


def test_identical_partitions_are_perfect_whatever_the_labels():
    for seed in range(5):
        a, _ = _random_maps(seed)
        relabelled = np.array([40, 3, 17, 0, 8])[a]  # same partition, other ids
        for other in (a, relabelled):
            assert variation_of_information(a, other) == 0.0
            assert segmentation_covering(a, other) == 1.0
    # any other partition is strictly worse
    a, b = _random_maps(0)
    assert variation_of_information(a, b) > 0.1
    assert segmentation_covering(a, b) < 0.9


def test_variation_of_information_is_a_metric():
    for seed in range(5):
        a, b = _random_maps(seed)
        c, _ = _random_maps(seed + 100, n_a=3)
        vab = variation_of_information(a, b)
        assert vab == pytest.approx(variation_of_information(b, a))  # symmetric
        assert 0 < vab <= math.log2(a.size)
        assert variation_of_information(a, c) <= vab + variation_of_information(b, c) + 1e-12


def _covering_by_loops(pred, truth):
    """Arbelaez et al.'s formula, region by region."""
    total = 0.0
    for r in np.unique(truth):
        region = truth == r
        best = max(
            (region & (pred == q)).sum() / (region | (pred == q)).sum()
            for q in np.unique(pred)
        )
        total += region.sum() * best
    return total / truth.size


def test_covering_matches_the_formula_and_bounds():
    for seed in range(5):
        a, b = _random_maps(seed, n_b=3 + seed)
        value = segmentation_covering(b, a)
        assert value == pytest.approx(_covering_by_loops(a, b))
        assert 0 < value < 1
    # splitting every true region in two halves the overlaps: covering 1/2
    truth = np.repeat([0, 1], 8).reshape(2, 8)
    split = truth * 2 + (np.arange(8) % 2)[None, :]
    assert segmentation_covering(truth, split) == pytest.approx(0.5)


def test_region_measures_ignore_pixels():
    a, b = _random_maps(3)
    truth = b.copy()
    truth[:4] = 255
    truth[-1, :5] = -1
    valid = (truth != 255) & (truth >= 0)
    for func in (segmentation_covering, variation_of_information):
        expected = func(truth[valid], a[valid])
        assert func(truth, a, ignore_index=255) == pytest.approx(expected)
        assert func(truth, a, ignore_index=[254, 255]) == pytest.approx(expected)
        # predictions on ignored pixels do not matter
        other = a.copy()
        other[~valid] = 99
        assert func(truth, other, ignore_index=255) == pytest.approx(expected)
        # without ignore_index, 255 is a region of its own
        assert func(truth, a) != pytest.approx(expected)
        with pytest.raises(ValueError, match="no pixel to score"):
            func(np.full_like(a, 255), a, ignore_index=255)
        with pytest.raises(ValueError, match="same shape"):
            func(b.T, a)
        with pytest.raises(TypeError, match="y_pred must hold integer labels"):
            func(b, a.astype(float))


def test_large_label_values_score_like_small_ones():
    # label values far beyond the number of pixels take the sorting path
    a, b = _random_maps(7)
    big_a, big_b = a * 10**12 + 5, b * 10**9
    assert segmentation_covering(big_b, big_a) == pytest.approx(segmentation_covering(b, a))
    assert variation_of_information(big_b, big_a) == pytest.approx(
        variation_of_information(b, a))
    s, big = segmentation_scores(b, a), segmentation_scores(big_b, big_a)
    assert big["miou"] == pytest.approx(s["miou"])
    assert big["mapping"] == {k * 10**12 + 5: v * 10**9 for k, v in s["mapping"].items()}


def test_variation_of_information_bad_base():
    for base in (1, 0, -2, float("nan"), "2", True):
        with pytest.raises(ValueError, match="base"):
            variation_of_information(HALVES, HALVES, base=base)


def test_variation_of_information_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    for seed in range(4):
        a, b = _random_maps(seed, shape=(20, 30), n_b=4 + seed)
        b[:3] = 255
        # scikit-image returns the two conditional entropies, in bits, and
        # ignores labels of its first (ground-truth) image
        parts = skm.variation_of_information(b, a, ignore_labels=[255])
        assert variation_of_information(b, a, ignore_index=255) == pytest.approx(
            parts.sum()
        )


# --- accumulator ------------------------------------------------------------------


def _two_images():
    truth = np.array([[0, 0], [1, 1]])
    # image A uses ids (0, 1) for (top, bottom); image B swaps them
    return [(np.array([[0, 0], [1, 1]]), truth), (np.array([[1, 1], [0, 0]]), truth)]


def test_accumulator_per_image_protocol():
    acc = SegmentationScoreAccumulator("per_image")
    for pred, truth in _two_images():
        assert acc.add(truth, pred) is acc
    r = acc.result()
    # each image is a perfect segmentation under its own matching
    assert r["miou"] == 1.0 and r["pixel_accuracy"] == 1.0
    assert r["n_images"] == 2 and r["n_scored"] == 2 and r["mean_n_clusters"] == 2.0
    # a third image: one cluster for two classes -> IoU(0) = 2/4, class 1 -> 0
    acc.add(np.array([[0, 0], [1, 1]]), np.zeros((2, 2), int))
    assert acc.result()["miou"] == pytest.approx((1 + 1 + 0.25) / 3)
    assert acc.result()["pixel_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_accumulator_dataset_protocol():
    acc = SegmentationScoreAccumulator("dataset", n_classes=3)
    for pred, truth in _two_images():
        acc.add(truth, pred)
    r = acc.result()
    # summed confusion (classes x clusters): class 0 -> [2, 2], class 1 -> [2, 2]
    np.testing.assert_array_equal(r["confusion"], [[2, 2], [2, 2], [0, 0]])
    # one matching for both images: IoU = 2 / (4 + 4 - 2) = 1/3 for classes 0, 1;
    # class 2 never occurs and gets no IoU (NaN, left out of the mean)
    assert r["miou"] == pytest.approx(1 / 3)
    assert r["pixel_accuracy"] == pytest.approx(0.5)
    assert r["per_class_iou"][:2] == pytest.approx([1 / 3, 1 / 3])
    assert np.isnan(r["per_class_iou"][2])
    assert r["n_images"] == 2 and len(r["mapping"]) == 2


def test_accumulator_dataset_consistent_ids_and_growth():
    acc = SegmentationScoreAccumulator("dataset", n_classes=2, ignore_index=255)
    acc.add(np.array([[0, 0], [1, 1]]), np.array([[0, 0], [1, 1]]))
    acc.add(np.array([[0, 255], [1, 1]]), np.array([[0, 2], [1, 1]]))
    assert acc.confusion_.shape == (2, 2)  # cluster 2 only on an ignored pixel
    acc.add(np.array([[0, 0], [1, 1]]), np.array([[2, 0], [1, 1]]))
    assert acc.confusion_.shape == (2, 3)  # grew for cluster id 2
    r = acc.result()
    # confusion [[4, 0, 1], [0, 6, 0]]: match 0->0, 1->1, cluster 2 unmatched
    # IoU(0) = 4 / (4 + 5 - 4) = 0.8, IoU(1) = 1; accuracy 10 / 11
    np.testing.assert_array_equal(r["confusion"], [[4, 0, 1], [0, 6, 0]])
    assert r["miou"] == pytest.approx(0.9)
    assert r["pixel_accuracy"] == pytest.approx(10 / 11)
    assert r["mapping"] == {0: 0, 1: 1}
    # a class present but unmatched has IoU 0 (not NaN)
    acc2 = SegmentationScoreAccumulator("dataset", n_classes=2)
    acc2.add(np.array([[0, 0], [0, 1]]), np.zeros((2, 2), int))
    r2 = acc2.result()
    assert r2["per_class_iou"].tolist() == [0.75, 0.0]
    assert r2["miou"] == pytest.approx(0.375)


def test_accumulator_skips_unscorable_images_and_errors():
    acc = SegmentationScoreAccumulator(ignore_index=255)
    acc.add(np.full((2, 2), 255), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="no image scored"):
        acc.result()
    acc.add(np.zeros((2, 2), int), np.zeros((2, 2), int))
    r = acc.result()
    assert r["n_images"] == 2 and r["n_scored"] == 1 and acc.n_skipped_ == 1
    with pytest.raises(ValueError, match="same shape"):
        acc.add(np.zeros((2, 3), int), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="n_classes"):
        SegmentationScoreAccumulator("dataset")
    with pytest.raises(ValueError, match="protocol"):
        SegmentationScoreAccumulator("global")
    with pytest.raises(ValueError, match="no pixel scored"):
        SegmentationScoreAccumulator("dataset", n_classes=2).result()
    with pytest.raises(ValueError, match="n_classes=2; raise n_classes"):
        SegmentationScoreAccumulator("dataset", n_classes=2).add(
            np.array([0, 1, 2]), np.zeros(3, int))
    assert acc.reset().n_images_ == 0


def test_the_old_prediction_first_calls_still_work_and_warn():
    from sklearn_clasp.metrics import score_prediction

    truths = [np.array([[5, 5, 6, 6]]), np.array([[5, 5, 5, 6]])]
    mask = np.array([[0, 0, 1, 1]])
    with pytest.warns(FutureWarning, match=r"score_prediction\(truths, mask\)"):
        old = score_prediction(mask, truths)
    assert old == score_prediction(truths, mask)
    # a single ground truth needs no list
    assert score_prediction(truths[0], mask)["miou"] == 1.0
    acc = SegmentationScoreAccumulator()
    with pytest.warns(FutureWarning, match="add"):
        acc.update(mask, truths[1])
    assert acc.result()["miou"] == SegmentationScoreAccumulator().add(
        truths[1], mask).result()["miou"]


# --- scorers -------------------------------------------------------------------


class FakeSegmenter(BaseEstimator):
    """fit_predict returns, for each item of X (an index), ``masks[index]``."""

    def __init__(self, masks=None):
        self.masks = masks

    def fit(self, X, y=None):
        return self

    def fit_predict(self, X, y=None):
        return [self.masks[i] for i in X]


TRUTHS = [np.array([[0, 0, 1], [0, 0, 1]]), np.array([[2, 2], [255, 3]])]
GOOD = [np.array([[4, 4, 9], [4, 4, 9]]), np.array([[1, 1], [0, 0]])]
BAD = [np.zeros((2, 3), int), np.zeros((2, 2), int)]


def test_miou_and_pixel_accuracy_scorers():
    est = FakeSegmenter(GOOD)
    # image 0 perfect; image 1 without ignore: classes {2, 3, 255}, clusters
    # 1 -> {2: 2}, 0 -> {255: 1, 3: 1}: IoU(2) = 1, one of 3/255 gets 1/2, the other 0
    assert miou_scorer(est, [0, 1], TRUTHS) == pytest.approx((1 + 0.5) / 2)
    assert pixel_accuracy_scorer(est, [0, 1], TRUTHS) == pytest.approx((1 + 0.75) / 2)
    ignoring = make_segmentation_scorer("miou", ignore_index=255)
    # with 255 ignored image 1 is perfect as well
    assert ignoring(est, [0, 1], TRUTHS) == 1.0
    # one-cluster prediction: image 0 IoU(0) = 4/6, image 1 IoU(2) = 2/3, class 3 -> 0
    worst = make_segmentation_scorer("miou", ignore_index=255)
    assert worst(FakeSegmenter(BAD), [0, 1], TRUTHS) == pytest.approx(
        ((4 / 6) / 2 + (2 / 3) / 2) / 2
    )
    assert "ignore_index=255" in repr(ignoring)


def test_scorer_in_grid_search_picks_the_better_segmenter():
    X = [0, 1, 0, 1]
    y = [TRUTHS[0], TRUTHS[1], TRUTHS[0], TRUTHS[1]]
    search = GridSearchCV(
        FakeSegmenter(),
        {"masks": [BAD, GOOD]},
        scoring=make_segmentation_scorer("miou", ignore_index=255),
        cv=2,
    )
    search.fit(X, y)
    assert search.best_params_["masks"] is GOOD
    assert search.best_score_ == 1.0


def test_scorer_errors():
    est = FakeSegmenter(GOOD)
    with pytest.raises(ValueError, match="2 masks for 1"):
        miou_scorer(est, [0, 1], TRUTHS[:1])
    with pytest.raises(ValueError, match="image 1: y_true and y_pred must have the same"):
        miou_scorer(est, [0, 0], TRUTHS)
    with pytest.raises(ValueError, match="ground-truth masks"):
        miou_scorer(est, [0, 1], None)
    with pytest.raises(ValueError, match="metric"):
        make_segmentation_scorer("dice")

    class RecordsOut(BaseEstimator):
        def fit_predict(self, X, y=None):
            return [PatchGrid(image=np.zeros((2, 2, 3), np.uint8), grid_shape=(1, 1))]

    with pytest.raises(TypeError, match="CRFRefiner"):
        miou_scorer(RecordsOut(), [0], TRUTHS[:1])


def test_silhouette_scorer_is_the_mean_silhouette_of_each_images_segmentation():
    from sklearn_clasp import make_clasp_pipeline
    from sklearn_clasp.datasets import make_shapes_image
    from sklearn_clasp.pipeline import clasp_one

    images = [make_shapes_image(84, 98, n_shapes=n, random_state=n)[0] for n in (1, 3)]
    pipe = make_clasp_pipeline("handcrafted", short_side=None, refine="nearest",
                               random_state=0)
    expected = np.mean([clasp_one(pipe, im)[1].info["silhouette"] for im in images])
    assert silhouette_scorer(pipe, images) == pytest.approx(expected)
    # the segmenter alone, on records
    records = pipe[:2].fit_transform(images)
    assert silhouette_scorer(pipe.named_steps["segment"], records) == pytest.approx(expected)


def test_silhouette_scorer_errors():
    from sklearn_clasp import HandcraftedPatchEmbedder

    with pytest.raises(ValueError, match="silhouette"):
        silhouette_scorer(HandcraftedPatchEmbedder(), [np.zeros((28, 28, 3), np.uint8)])


def test_score_prediction_takes_ordinary_array_likes_and_names_bad_ones():
    """1-D inputs and an empty list were IndexError / numpy reduction errors; a nested-list
    label map was split into one "annotator" per row."""
    from sklearn_clasp.metrics import score_prediction

    assert score_prediction([[0, 0, 1, 1]], [[0, 0, 1, 1]])["miou"] == 1.0
    stack = np.array([[[0, 0, 1, 1]], [[0, 1, 1, 1]]])  # two annotators, (n, H, W)
    assert score_prediction(stack, [[0, 0, 1, 1]])["n_annotators"] == 2
    with pytest.raises(ValueError, match=r"y_pred: expected a 2-D label map .* got shape "
                                         r"\(4,\)"):
        score_prediction(np.zeros(3, int), np.zeros(4, int))
    with pytest.raises(ValueError, match="y_true: no ground truth given"):
        score_prediction([], np.zeros((2, 2), int))


def test_dataset_accumulator_errors_name_its_own_parameter():
    """It said n_true, a parameter of confusion_matrix the user never passed; n_classes=True
    was taken as 1."""
    from sklearn_clasp.metrics import SegmentationScoreAccumulator

    acc = SegmentationScoreAccumulator("dataset", n_classes=2)
    with pytest.raises(ValueError, match=r"^y_true has class 5 but n_classes=2; raise "
                                         r"n_classes or add the value to ignore_index"):
        acc.add(np.array([[0, 5]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="needs n_classes, a positive int"):
        SegmentationScoreAccumulator("dataset", n_classes=True)
