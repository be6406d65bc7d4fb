"""Tests for the Refine stage (sklearn_clasp.refine)."""

from fractions import Fraction

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_clasp.records import PatchGrid
from sklearn_clasp.refine import (
    CRFRefiner,
    dense_crf,
    refine_labels,
    upsample_labels,
)

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

SIZE, GRID = 140, 10  # 140 x 140 image, 10 x 10 patches of 14 x 14 pixels
FG, BG = np.array([200, 60, 40]), np.array([30, 90, 200])
RECT = (23, 97, 31, 109)  # rows 23..96, cols 31..108: no edge on the patch grid


def make_scene(kind="rect", seed=0):
    """Image with one object of known extent, its truth mask and a blocky mask.

    The coarse patch labels are the truth downsampled to the 10 x 10 grid by
    majority vote, as a perfect patch-level segmenter would give.
    """
    yy, xx = np.mgrid[:SIZE, :SIZE]
    if kind == "rect":
        r0, r1, c0, c1 = RECT
        truth = (yy >= r0) & (yy < r1) & (xx >= c0) & (xx < c1)
    else:
        truth = (yy - 66.3) ** 2 + (xx - 73.7) ** 2 < 41.0**2
    rng = np.random.default_rng(seed)
    image = np.where(truth[..., None], FG, BG).astype(float)
    image += rng.normal(0.0, 8.0, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    patch = SIZE // GRID
    frac = truth.reshape(GRID, patch, GRID, patch).mean(axis=(1, 3))
    coarse = (frac > 0.5).astype(np.int64)
    return image, truth, coarse


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


# --------------------------------------------------------------------------
# upsample_labels
# --------------------------------------------------------------------------


def test_upsample_nearest_exact_small_grid():
    labels = np.array([[1, 2], [3, 4]])
    expected = np.array(
        [
            [1, 1, 1, 2, 2, 2],
            [1, 1, 1, 2, 2, 2],
            [3, 3, 3, 4, 4, 4],
            [3, 3, 3, 4, 4, 4],
        ]
    )
    out = upsample_labels(labels, (4, 6))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, expected)


def test_upsample_nearest_non_divisible_matches_patch_spans():
    h, w, H, W = 3, 4, 31, 45
    labels = np.arange(h * w).reshape(h, w) * 10 + 5
    out = upsample_labels(labels, (H, W))
    assert out.shape == (H, W)
    # Reference from the PatchGrid definition, in exact rational arithmetic:
    # patch (i, j) covers rows i*H/h <= y < (i+1)*H/h, same for columns.
    def patch_of(p, n_patches, n_pixels):
        def start(k):
            return Fraction(k * n_pixels, n_patches)

        return next(k for k in range(n_patches) if start(k) <= p < start(k + 1))

    for y in range(H):
        i = patch_of(y, h, H)
        for x in range(W):
            assert out[y, x] == labels[i, patch_of(x, w, W)], (y, x)
    # rows per patch row: 31 / 3 -> 11, 10, 10 (y = 0..10, 11..20, 21..30)
    counts = np.unique(out[:, 0], return_counts=True)[1]
    np.testing.assert_array_equal(counts, [11, 10, 10])


@pytest.mark.parametrize("method", ["nearest", "bilinear"])
def test_upsample_keeps_label_values(method):
    labels = np.array([[-3, 7, 100], [7, 100, -3]], dtype=np.int32)
    out = upsample_labels(labels, (20, 33), method=method)
    assert out.dtype == np.int64
    assert set(np.unique(out).tolist()) == {-3, 7, 100}
    assert out[0, 0] == -3 and out[-1, -1] == -3 and out[0, 16] == 7


@pytest.mark.parametrize("shape", [(50, 60), (47, 61)])
def test_bilinear_agrees_with_nearest_in_patch_interiors(shape):
    rng = np.random.default_rng(1)
    h, w = 5, 6
    labels = rng.integers(0, 4, size=(h, w)) * 3 + 1
    H, W = shape
    near = upsample_labels(labels, shape, method="nearest")
    bil = upsample_labels(labels, shape, method="bilinear")
    # offset of each pixel centre from its own patch centre, in patch units
    dy = (np.arange(H) + 0.5) * h / H - 0.5 - (np.arange(H) * h // H)
    dx = (np.arange(W) + 0.5) * w / W - 0.5 - (np.arange(W) * w // W)
    interior = (np.abs(dy)[:, None] <= 0.2) & (np.abs(dx)[None, :] <= 0.2)
    assert interior.sum() > 0.1 * H * W
    np.testing.assert_array_equal(bil[interior], near[interior])
    assert (bil != near).any()  # bilinear is not nearest in disguise


def test_bilinear_rounds_corners():
    labels = np.array([[0, 1], [1, 1]])
    out = upsample_labels(labels, (20, 20), method="bilinear")
    near = upsample_labels(labels, (20, 20))
    # (9, 0) and (0, 9): weight of label 0 is 0.55 -> 0; (9, 9): 0.55**2 -> 1
    assert out[9, 0] == 0 and out[0, 9] == 0 and out[4, 4] == 0
    assert out[9, 9] == 1 and near[9, 9] == 0
    assert out[10, 10] == 1


def test_upsample_single_label_bilinear():
    out = upsample_labels(np.full((3, 3), 9), (10, 11), method="bilinear")
    np.testing.assert_array_equal(out, np.full((10, 11), 9))


def test_upsample_errors():
    with pytest.raises(ValueError, match="at least as large as the grid"):
        upsample_labels(np.zeros((10, 10), int), (5, 20))
    with pytest.raises(ValueError, match="2-D label map"):
        upsample_labels(np.zeros((2, 3, 4), int), (10, 10))
    with pytest.raises(ValueError, match="must be integers"):
        upsample_labels(np.array([[0.5, 1.0]]), (4, 4))
    with pytest.raises(InvalidParameterError):
        upsample_labels(np.zeros((2, 2), int), (4, 4), method="cubic")
    # integral floats are accepted
    out = upsample_labels(np.array([[0.0, 2.0]]), (1, 4))
    np.testing.assert_array_equal(out, [[0, 0, 2, 2]])


# --------------------------------------------------------------------------
# dense_crf / refine_labels
# --------------------------------------------------------------------------


def test_crf_snaps_rectangle_to_true_edges():
    image, truth, coarse = make_scene("rect")
    blocky = upsample_labels(coarse, truth.shape) == 1
    refined = refine_labels(coarse, image, method="crf")
    assert refined.shape == truth.shape and refined.dtype == np.int64
    fg = refined == 1
    iou_blocky, iou_crf = iou(blocky, truth), iou(fg, truth)
    assert iou_blocky < 0.9
    assert iou_crf > 0.97
    assert iou_crf - iou_blocky > 0.07
    # the blocky edges sit on the patch grid (multiples of 14), the refined
    # ones on the true edges
    rows, cols = np.nonzero(fg)
    r0, r1, c0, c1 = RECT
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (r0, r1, c0, c1)
    brows, bcols = np.nonzero(blocky)
    blocky_box = (brows.min(), brows.max() + 1, bcols.min(), bcols.max() + 1)
    assert all(v % 14 == 0 for v in blocky_box)
    mid = (r0 + r1) // 2
    np.testing.assert_array_equal(fg[mid], truth[mid])


def test_crf_fixes_disc_boundary():
    image, truth, coarse = make_scene("disc", seed=3)
    blocky = upsample_labels(coarse, truth.shape) == 1
    fg = dense_crf(image, upsample_labels(coarse, truth.shape)) == 1
    assert iou(fg, truth) > iou(blocky, truth) + 0.08
    wrong = blocky != truth  # the pixels the blocky mask gets wrong
    assert wrong.sum() > 500
    assert (fg[wrong] == truth[wrong]).mean() > 0.9


def test_dense_crf_keeps_arbitrary_label_values():
    image, truth, coarse = make_scene("rect")
    pixels = upsample_labels(coarse, truth.shape)
    mapped = np.where(pixels == 1, 42, -5)
    out01 = dense_crf(image, pixels)
    out = dense_crf(image, mapped)
    assert set(np.unique(out).tolist()) == {-5, 42}
    np.testing.assert_array_equal(out, np.where(out01 == 1, 42, -5))


def test_dense_crf_three_labels():
    image, truth, coarse = make_scene("rect")
    # split the background into two regions with a different colour each
    image[:, :14] = (240, 240, 240)
    labels = upsample_labels(coarse, truth.shape) * 10
    labels[:, :14] = 7
    labels[:, 14:20] = np.where(truth[:, 14:20], 10, 7)  # wrong: 7 spills to col 20
    out = dense_crf(image, labels)
    assert set(np.unique(out).tolist()) == {0, 7, 10}
    assert (out[:, :14] == 7).all() and (out[:, 14:20] == 0).all()


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_dense_crf_single_label_passes_through(dtype):
    image = np.random.default_rng(0).integers(0, 256, (12, 9, 3), dtype=np.uint8)
    labels = np.full((12, 9), 7, dtype=dtype)
    out = dense_crf(image, labels)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, labels)
    out[0, 0] = 1
    assert labels[0, 0] == 7  # a copy, not a view of the input


def test_dense_crf_extra_n_labels_never_output():
    image, truth, coarse = make_scene("rect")
    pixels = upsample_labels(coarse, truth.shape)
    out = dense_crf(image, pixels, n_labels=5)
    assert set(np.unique(out).tolist()) == {0, 1}
    with pytest.raises(ValueError, match="n_labels=1 is smaller"):
        dense_crf(image, pixels, n_labels=1)


def test_dense_crf_does_not_mutate_inputs():
    image, truth, coarse = make_scene("disc")
    pixels = upsample_labels(coarse, truth.shape)
    image0, pixels0 = image.copy(), pixels.copy()
    dense_crf(image, pixels)
    np.testing.assert_array_equal(image, image0)
    np.testing.assert_array_equal(pixels, pixels0)


def test_dense_crf_accepts_non_contiguous_image():
    image, truth, coarse = make_scene("rect")
    flipped = image[:, ::-1]  # a negative-stride view
    pixels = upsample_labels(coarse, truth.shape)[:, ::-1]
    out = dense_crf(flipped, pixels)
    np.testing.assert_array_equal(out == 1, truth[:, ::-1])


def test_dense_crf_errors():
    image = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(ValueError, match="do not match the image"):
        dense_crf(image, np.zeros((30, 20), int))
    with pytest.raises(ValueError, match="expected an image of shape"):
        dense_crf(np.zeros((20, 30, 2), np.uint8), np.zeros((20, 30), int))
    with pytest.raises(ValueError, match="expected an image of shape"):
        dense_crf(np.zeros((1, 20, 30, 3), np.uint8), np.zeros((20, 30), int))
    with pytest.raises(InvalidParameterError, match="gt_prob"):
        dense_crf(image, np.zeros((20, 30), int), gt_prob=1.0)
    with pytest.raises(InvalidParameterError, match="n_iter"):
        dense_crf(image, np.zeros((20, 30), int), n_iter=-1)


def test_refine_labels_methods():
    image, truth, coarse = make_scene("rect")
    np.testing.assert_array_equal(
        refine_labels(coarse, image, method="nearest"),
        upsample_labels(coarse, truth.shape),
    )
    np.testing.assert_array_equal(
        refine_labels(coarse, image, method="bilinear"),
        upsample_labels(coarse, truth.shape, method="bilinear"),
    )
    np.testing.assert_array_equal(
        refine_labels(coarse, image, n_iter=5, gt_prob=0.7),
        dense_crf(image, upsample_labels(coarse, truth.shape), n_iter=5, gt_prob=0.7),
    )
    with pytest.raises(ValueError, match="method must be one of"):
        refine_labels(coarse, image, method="patch")
    with pytest.raises(TypeError, match="unknown keyword"):
        refine_labels(coarse, image, n_iters=5)
    # A grid finer than the image (a tiny image upscaled for the backbone): each
    # pixel takes the patch under its centre, for every method.
    fine = np.arange(400).reshape(20, 20)
    for method in ("nearest", "bilinear", "crf"):
        out = refine_labels(fine, np.zeros((10, 10, 3), np.uint8), method=method)
        np.testing.assert_array_equal(out, fine[1::2, 1::2])
    out = refine_labels(fine[:, :5], np.zeros((10, 5, 3), np.uint8), method="nearest")
    np.testing.assert_array_equal(out, fine[1::2, :5])


# --------------------------------------------------------------------------
# CRFRefiner
# --------------------------------------------------------------------------


def test_refiner_on_records_and_tuples():
    scenes = [make_scene("rect"), make_scene("disc", seed=1)]
    records = [
        PatchGrid(image=im, grid_shape=(GRID, GRID), labels=co, source=f"scene{i}.png")
        for i, (im, _, co) in enumerate(scenes)
    ]
    labels_before = [r.labels.copy() for r in records]
    refiner = CRFRefiner()
    masks = refiner.fit_predict(records)
    assert isinstance(masks, list) and len(masks) == 2
    for mask, (im, truth, co) in zip(masks, scenes):
        assert mask.shape == truth.shape and mask.dtype == np.int64
        assert iou(mask == 1, truth) > 0.95
        np.testing.assert_array_equal(mask, refine_labels(co, im))
    for rec, before in zip(records, labels_before):
        np.testing.assert_array_equal(rec.labels, before)  # inputs untouched
    pairs = [(co, im) for im, _, co in scenes]
    for a, b in zip(refiner.transform(pairs), masks):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(refiner.predict(records), masks):
        np.testing.assert_array_equal(a, b)


def test_refiner_methods_and_params_reach_the_functions():
    image, truth, coarse = make_scene("disc")
    pairs = [(coarse, image)]
    out = CRFRefiner(method="bilinear").transform(pairs)[0]
    expected = upsample_labels(coarse, truth.shape, method="bilinear")
    np.testing.assert_array_equal(out, expected)
    out = CRFRefiner(method="nearest").transform(pairs)[0]
    np.testing.assert_array_equal(out, upsample_labels(coarse, truth.shape))
    params = dict(n_iter=3, gt_prob=0.6, gaussian_sxy=2, gaussian_compat=1,
                  bilateral_sxy=30, bilateral_srgb=20, bilateral_compat=5)
    out = CRFRefiner(**params).transform(pairs)[0]
    np.testing.assert_array_equal(out, refine_labels(coarse, image, **params))
    # parameters that switch the CRF off give back the blocky mask
    blocky = upsample_labels(coarse, truth.shape)
    assert not np.array_equal(CRFRefiner().transform(pairs)[0], blocky)
    np.testing.assert_array_equal(CRFRefiner(n_iter=0).transform(pairs)[0], blocky)
    off = CRFRefiner(gaussian_compat=0, bilateral_compat=0).transform(pairs)[0]
    np.testing.assert_array_equal(off, blocky)


def test_refiner_is_stateless():
    assert CRFRefiner().__sklearn_tags__().requires_fit is False
    image, _, coarse = make_scene("rect")
    refiner = CRFRefiner(method="nearest")
    refiner.transform([(coarse, image)])  # no fit needed
    assert [k for k in vars(refiner) if k.endswith("_")] == []


def test_refiner_clone_get_set_params():
    refiner = CRFRefiner(method="bilinear", n_iter=7, gt_prob=0.9, n_jobs=2)
    params = refiner.get_params()
    assert params == {
        "method": "bilinear", "n_iter": 7, "gt_prob": 0.9, "gaussian_sxy": 4,
        "gaussian_compat": 4, "bilateral_sxy": 80, "bilateral_srgb": 13,
        "bilateral_compat": 10, "n_jobs": 2, "max_pixels": 1_500_000,
    }
    cloned = clone(refiner)
    assert cloned is not refiner and cloned.get_params() == params
    assert cloned.set_params(method="crf", bilateral_srgb=5) is cloned
    assert cloned.method == "crf" and cloned.bilateral_srgb == 5
    assert refiner.method == "bilinear"


def test_refiner_parallel_matches_serial():
    scenes = [make_scene("rect", seed=s) for s in range(3)]
    pairs = [(co, im) for im, _, co in scenes]
    serial = CRFRefiner().transform(pairs)
    parallel = CRFRefiner(n_jobs=2).transform(pairs)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_refiner_errors():
    image = np.zeros((10, 10, 3), np.uint8)
    big = np.zeros((20, 20), int)
    with pytest.raises(ValueError, match=r"X\[1\].*2-D label map"):
        CRFRefiner().fit_predict([(np.zeros((2, 2), int), image),
                                  (np.zeros((2, 2, 2), int), image)])
    rec = PatchGrid(image=image, grid_shape=(20, 20), labels=big.astype(float) + 0.5,
                    source="cat.jpg")
    with pytest.raises(ValueError, match=r"cat\.jpg.*integers"):
        CRFRefiner().transform([rec])
    with pytest.raises(InvalidParameterError, match="max_pixels"):
        CRFRefiner(max_pixels=0).fit([(np.zeros((2, 2), int), image)])
    with pytest.raises(ValueError, match="max_pixels must be a positive int"):
        refine_labels(np.zeros((2, 2), int), image, max_pixels=0)
    with pytest.raises(ValueError, match=r"X\[0\].*expected an image of shape"):
        CRFRefiner().transform([(np.zeros((2, 2), int), np.zeros((10, 10, 5), "u1"))])
    with pytest.raises(InvalidParameterError, match="method"):
        CRFRefiner(method="dense").fit([(np.zeros((2, 2), int), image)])
    with pytest.raises(InvalidParameterError, match="method"):
        CRFRefiner(method="dense").transform([(np.zeros((2, 2), int), image)])
    with pytest.raises(InvalidParameterError, match="gt_prob"):
        CRFRefiner(gt_prob=0).fit([(np.zeros((2, 2), int), image)])
    no_labels = PatchGrid(image=image, grid_shape=(2, 2), source="dog.png")
    with pytest.raises(ValueError, match=r"dog\.png.*no labels"):
        CRFRefiner().fit([no_labels])
    wrong_grid = PatchGrid(image=image, grid_shape=(2, 2), labels=np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="one per patch"):
        CRFRefiner().transform([wrong_grid])
    with pytest.raises(TypeError, match=r"Pass \[\(labels, image\)\]"):
        CRFRefiner().transform((np.zeros((2, 2), int), image))
    with pytest.raises(TypeError, match="non-empty list"):
        CRFRefiner().transform([])
    with pytest.raises(TypeError, match=r"Pass \[record\]"):
        CRFRefiner().transform(rec)
    with pytest.raises(TypeError, match=r"X\[0\] is a ndarray"):
        CRFRefiner().transform([image])


class _ThresholdSegmenter(TransformerMixin, BaseEstimator):
    """Tiny stand-in for embedder + segmenter: label patches by mean redness."""

    def __init__(self, grid=GRID):
        self.grid = grid

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        out = []
        for i, image in enumerate(X):
            H, W = image.shape[:2]
            red = image[..., 0].astype(float) - image[..., 2]
            g = self.grid
            means = red.reshape(g, H // g, g, W // g).mean(axis=(1, 3))
            out.append(PatchGrid(image=image, grid_shape=(g, g),
                                 labels=(means > 0).astype(np.int64), source=f"img{i}"))
        return out


def test_refiner_in_pipeline():
    scenes = [make_scene("rect"), make_scene("disc", seed=2)]
    images = [im for im, _, _ in scenes]
    pipe = Pipeline([("segment", _ThresholdSegmenter()), ("refine", CRFRefiner())])
    masks = pipe.fit_predict(images)
    assert len(masks) == 2
    for mask, (_, truth, coarse) in zip(masks, scenes):
        assert mask.shape == truth.shape
        blocky = upsample_labels(coarse, truth.shape) == 1
        assert iou(mask == 1, truth) > 0.95 > iou(blocky, truth)
    for a, b in zip(pipe.predict(images), masks):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------
# bounded refinement resolution (max_pixels)
# --------------------------------------------------------------------------


def make_big_scene(scale):
    """The rectangle scene at ``scale`` times the size, and its patch labels."""
    image, truth, coarse = make_scene("rect")
    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    big_truth = np.repeat(np.repeat(truth, scale, axis=0), scale, axis=1)
    return big, big_truth, coarse


def test_box_downsample_is_the_block_mean():
    from sklearn_clasp.refine import _box_downsample

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (23, 31, 3)).astype(np.uint8)
    out = _box_downsample(img, 3, 4)
    expected = img[:21, :28].reshape(7, 3, 7, 4, 3).astype(float).mean(axis=(1, 3))
    assert out.shape == (7, 7, 3) and out.dtype == np.uint8
    assert np.abs(out - expected).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("shape", [(12000, 9000), (9000, 12000), (10000, 20), (3, 5_000_000)])
def test_refine_size_is_bounded_and_keeps_the_aspect_ratio(shape):
    from sklearn_clasp.refine import _refine_size

    h, w = _refine_size(*shape, 1_500_000)
    assert 1 <= h <= shape[0] and 1 <= w <= shape[1] and h * w <= 1_500_000
    if min(h, w) > 20:
        assert h / w == pytest.approx(shape[0] / shape[1], rel=0.02)


def test_refine_at_bounded_resolution(monkeypatch):
    from sklearn_clasp import refine

    image, truth, coarse = make_big_scene(4)  # 560 x 560, 313,600 pixels
    seen = []
    real = refine.dense_crf

    def spy(img, labels, **kw):
        seen.append((img.shape[:2], kw))
        return real(img, labels, **kw)

    monkeypatch.setattr(refine, "dense_crf", spy)
    mask = refine_labels(coarse, image, max_pixels=20_000)
    (shape, kw), = seen
    assert shape[0] * shape[1] <= 20_000 and shape == (141, 141)
    # The spatial widths stay in full-resolution pixels.
    assert kw["gaussian_sxy"] == pytest.approx(4 * 141 / 560, rel=0.01)
    assert kw["bilateral_sxy"] == pytest.approx(80 * 141 / 560, rel=0.01)
    assert mask.shape == truth.shape and mask.dtype == np.int64
    # Still snaps the blocky patch boundary onto the true edge, to within the
    # downscale factor (4 here; 2 below), and agrees with the full-size CRF.
    blocky = upsample_labels(coarse, truth.shape).astype(bool)
    full = real(image, upsample_labels(coarse, truth.shape))
    assert iou(mask.astype(bool), truth) > 0.94 > 0.86 > iou(blocky, truth)
    assert (mask == full).mean() > 0.98
    half = refine_labels(coarse, image, max_pixels=80_000)
    assert iou(half.astype(bool), truth) > 0.98 and (half == full).mean() > 0.99
    seen.clear()
    refine_labels(coarse, image, max_pixels=1_000_000)  # under the bound: full size
    assert seen[0][0] == (560, 560) and "gaussian_sxy" not in seen[0][1]
    bil = refine_labels(coarse, image, method="bilinear", max_pixels=20_000)
    assert bil.shape == truth.shape and set(np.unique(bil)) <= {0, 1}
    np.testing.assert_array_equal(
        refine_labels(coarse, image, method="nearest", max_pixels=10),
        upsample_labels(coarse, truth.shape),
    )


def test_refiner_default_bounds_the_crf_resolution(monkeypatch):
    from sklearn_clasp import refine

    seen = []
    monkeypatch.setattr(refine, "dense_crf",
                        lambda img, labels, **kw: seen.append(img.shape) or labels)
    labels = np.array([[0, 1], [1, 0]])
    big = np.zeros((3000, 2000, 3), np.uint8)  # 6 MP
    mask, = CRFRefiner().transform([(labels, big)])
    assert mask.shape == (3000, 2000)
    assert seen[0][0] * seen[0][1] <= 1_500_000 == CRFRefiner().max_pixels
    seen.clear()
    CRFRefiner(max_pixels=None).transform([(labels, big[:300, :200])])
    assert seen == [(300, 200, 3)]


def test_dense_crf_accepts_a_read_only_image():
    image, _, coarse = make_scene("rect")
    image.setflags(write=False)
    labels = upsample_labels(coarse, image.shape[:2])
    assert dense_crf(image, labels, n_iter=2).shape == labels.shape
