"""Tests for the Refine stage (sklearn_clasp.refine)."""

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_clasp.records import PatchGrid
from sklearn_clasp.refine import (
    MAX_CRF_ITERATIONS,
    SOFT_UNARY_EPS,
    CRFRefiner,
    bounded_shape,
    dense_crf,
    refine_labels,
    resample_nearest,
    upsample_labels,
    upsample_proba,
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
    refined = refine_labels(image, coarse, method="crf")
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
        refine_labels(image, coarse, method="nearest"),
        upsample_labels(coarse, truth.shape),
    )
    np.testing.assert_array_equal(
        refine_labels(image, coarse, method="bilinear"),
        upsample_labels(coarse, truth.shape, method="bilinear"),
    )
    np.testing.assert_array_equal(
        refine_labels(image, coarse, n_iter=5, gt_prob=0.7),
        dense_crf(image, upsample_labels(coarse, truth.shape), n_iter=5, gt_prob=0.7),
    )
    with pytest.raises(ValueError, match="method must be one of"):
        refine_labels(image, coarse, method="patch")
    with pytest.raises(TypeError, match="unknown keyword"):
        refine_labels(image, coarse, n_iters=5)
    # A grid finer than the image (a tiny image upscaled for the backbone): each
    # pixel takes the patch under its centre, for every method.
    fine = np.arange(400).reshape(20, 20)
    for method in ("nearest", "bilinear", "crf"):
        out = refine_labels(np.zeros((10, 10, 3), np.uint8), fine, method=method)
        np.testing.assert_array_equal(out, fine[1::2, 1::2])
    out = refine_labels(np.zeros((10, 5, 3), np.uint8), fine[:, :5], method="nearest")
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
        np.testing.assert_array_equal(mask, refine_labels(im, co))
    for rec, before in zip(records, labels_before):
        np.testing.assert_array_equal(rec.labels, before)  # inputs untouched
    pairs = [(im, co) for im, _, co in scenes]
    for a, b in zip(refiner.transform(pairs), masks):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(refiner.predict(records), masks):
        np.testing.assert_array_equal(a, b)


def test_refiner_methods_and_params_reach_the_functions():
    image, truth, coarse = make_scene("disc")
    pairs = [(image, coarse)]
    out = CRFRefiner(method="bilinear").transform(pairs)[0]
    expected = upsample_labels(coarse, truth.shape, method="bilinear")
    np.testing.assert_array_equal(out, expected)
    out = CRFRefiner(method="nearest").transform(pairs)[0]
    np.testing.assert_array_equal(out, upsample_labels(coarse, truth.shape))
    params = dict(n_iter=3, gt_prob=0.6, gaussian_sxy=2, gaussian_compat=1,
                  bilateral_sxy=30, bilateral_srgb=20, bilateral_compat=5)
    out = CRFRefiner(**params).transform(pairs)[0]
    np.testing.assert_array_equal(out, refine_labels(image, coarse, **params))
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
    refiner.transform([(image, coarse)])  # no fit needed
    assert [k for k in vars(refiner) if k.endswith("_")] == []


def test_refiner_clone_get_set_params():
    refiner = CRFRefiner(method="bilinear", n_iter=7, gt_prob=0.9, n_jobs=2)
    params = refiner.get_params()
    assert params == {
        "method": "bilinear", "n_iter": 7, "gt_prob": 0.9, "gaussian_sxy": 4,
        "gaussian_compat": 4, "bilateral_sxy": 80, "bilateral_srgb": 13,
        "bilateral_compat": 10, "n_jobs": 2, "max_pixels": 1_500_000,
        "unary": "hard", "backend": "pydensecrf", "device": "auto",
    }
    cloned = clone(refiner)
    assert cloned is not refiner and cloned.get_params() == params
    assert cloned.set_params(method="crf", bilateral_srgb=5) is cloned
    assert cloned.method == "crf" and cloned.bilateral_srgb == 5
    assert refiner.method == "bilinear"


@pytest.mark.slow
def test_refiner_parallel_matches_serial():
    scenes = [make_scene("rect", seed=s) for s in range(3)]
    pairs = [(im, co) for im, _, co in scenes]
    serial = CRFRefiner().transform(pairs)
    parallel = CRFRefiner(n_jobs=2).transform(pairs)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_refiner_errors():
    image = np.zeros((10, 10, 3), np.uint8)
    big = np.zeros((20, 20), int)
    with pytest.raises(ValueError, match=r"X\[1\].*2-D label map"):
        CRFRefiner().fit_predict([(image, np.zeros((2, 2), int)),
                                  (image, np.zeros((2, 2, 2), int))])
    rec = PatchGrid(image=image, grid_shape=(20, 20), labels=big.astype(float) + 0.5,
                    source="cat.jpg")
    with pytest.raises(ValueError, match=r"cat\.jpg.*integers"):
        CRFRefiner().transform([rec])
    with pytest.raises(InvalidParameterError, match="max_pixels"):
        CRFRefiner(max_pixels=0).fit([(image, np.zeros((2, 2), int))])
    with pytest.raises(ValueError, match="max_pixels must be a positive int"):
        refine_labels(image, np.zeros((2, 2), int), max_pixels=0)
    with pytest.raises(ValueError, match=r"X\[0\].*expected an image of shape"):
        CRFRefiner().transform([(np.zeros((10, 10, 5), "u1"), np.zeros((2, 2), int))])
    with pytest.raises(InvalidParameterError, match="method"):
        CRFRefiner(method="dense").fit([(image, np.zeros((2, 2), int))])
    with pytest.raises(InvalidParameterError, match="method"):
        CRFRefiner(method="dense").transform([(image, np.zeros((2, 2), int))])
    with pytest.raises(InvalidParameterError, match="gt_prob"):
        CRFRefiner(gt_prob=0).fit([(image, np.zeros((2, 2), int))])
    no_labels = PatchGrid(image=image, grid_shape=(2, 2), source="dog.png")
    with pytest.raises(ValueError, match=r"dog\.png.*no labels"):
        CRFRefiner().fit([no_labels])
    wrong_grid = PatchGrid(image=image, grid_shape=(2, 2), labels=np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="one per patch"):
        CRFRefiner().transform([wrong_grid])
    with pytest.raises(TypeError, match=r"Pass \[\(image, labels\)\]"):
        CRFRefiner().transform((image, np.zeros((2, 2), int)))
    with pytest.raises(TypeError, match="non-empty list"):
        CRFRefiner().transform([])
    with pytest.raises(TypeError, match=r"Pass \[record\]"):
        CRFRefiner().transform(rec)
    with pytest.raises(TypeError, match=r"X\[0\] is a ndarray"):
        CRFRefiner().transform([image])
    # the order before 0.2, (labels, image), is named as such
    with pytest.raises(TypeError, match=r"the image comes first"):
        CRFRefiner().transform([(np.zeros((2, 2), int), image)])
    with pytest.raises(TypeError, match=r"refine_labels\(image, labels\).*image comes first"):
        refine_labels(np.zeros((2, 2), int), image)


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
def test_bounded_shape_is_bounded_and_keeps_the_aspect_ratio(shape):
    h, w = bounded_shape(*shape, 1_500_000)
    assert 1 <= h <= shape[0] and 1 <= w <= shape[1] and h * w <= 1_500_000
    if min(h, w) > 20:
        assert h / w == pytest.approx(shape[0] / shape[1], rel=0.02)


def test_refine_labels_bounds_the_resolution_by_default_as_the_refiner_does(monkeypatch):
    """One default for one setting: refine_labels, like CRFRefiner, refines at most
    MAX_REFINE_PIXELS (it refined a 100-megapixel image at full size)."""
    from sklearn_clasp import refine

    seen = []
    monkeypatch.setattr(refine, "upsample_labels",
                        lambda labels, shape, **kw: seen.append(shape) or np.zeros(shape, int))
    image = np.zeros((2000, 1000, 3), np.uint8)
    mask = refine_labels(image, np.array([[0, 1]]), method="bilinear")
    assert mask.shape == (2000, 1000) and seen == [refine.bounded_shape(2000, 1000, 1_500_000)]
    seen.clear()
    refine_labels(image, np.array([[0, 1]]), method="bilinear", max_pixels=None)
    assert seen == [(2000, 1000)]


@pytest.mark.slow
def test_refine_at_bounded_resolution(monkeypatch):
    from sklearn_clasp import refine

    image, truth, coarse = make_big_scene(4)  # 560 x 560, 313,600 pixels
    seen = []
    real = refine.dense_crf

    def spy(img, labels, **kw):
        seen.append((img.shape[:2], kw))
        return real(img, labels, **kw)

    monkeypatch.setattr(refine, "dense_crf", spy)
    mask = refine_labels(image, coarse, max_pixels=20_000)
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
    half = refine_labels(image, coarse, max_pixels=80_000)
    assert iou(half.astype(bool), truth) > 0.98 and (half == full).mean() > 0.99
    seen.clear()
    refine_labels(image, coarse, max_pixels=1_000_000)  # under the bound: full size
    assert seen[0][0] == (560, 560) and "gaussian_sxy" not in seen[0][1]
    bil = refine_labels(image, coarse, method="bilinear", max_pixels=20_000)
    assert bil.shape == truth.shape and set(np.unique(bil)) <= {0, 1}
    np.testing.assert_array_equal(
        refine_labels(image, coarse, method="nearest", max_pixels=10),
        upsample_labels(coarse, truth.shape),
    )


def test_refiner_default_bounds_the_crf_resolution(monkeypatch):
    from sklearn_clasp import refine

    seen = []
    monkeypatch.setattr(refine, "dense_crf",
                        lambda img, labels, **kw: seen.append(img.shape) or labels)
    labels = np.array([[0, 1], [1, 0]])
    big = np.zeros((3000, 2000, 3), np.uint8)  # 6 MP
    mask, = CRFRefiner().transform([(big, labels)])
    assert mask.shape == (3000, 2000)
    assert seen[0][0] * seen[0][1] <= 1_500_000 == CRFRefiner().max_pixels
    seen.clear()
    CRFRefiner(max_pixels=None).transform([(big[:300, :200], labels)])
    assert seen == [(300, 200, 3)]


def test_dense_crf_accepts_a_read_only_image():
    image, _, coarse = make_scene("rect")
    image.setflags(write=False)
    labels = upsample_labels(coarse, image.shape[:2])
    assert dense_crf(image, labels, n_iter=2).shape == labels.shape


def test_resample_nearest_up_down_and_trailing_axes():
    labels = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(resample_nearest(labels, (6, 8)),
                                  upsample_labels(labels, (6, 8)))
    # downsampling takes the sample under each output centre
    np.testing.assert_array_equal(resample_nearest(labels, (1, 2)), [[5, 7]])
    stack = np.dstack([labels, -labels])
    out = resample_nearest(stack, (6, 2))
    assert out.shape == (6, 2, 2)
    np.testing.assert_array_equal(out[..., 1], -out[..., 0])


# --------------------------------------------------------------------------
# backends: the PyTorch CRF agrees with pydensecrf
# --------------------------------------------------------------------------


def blocky_scene(height, width, n_labels, seed, block=9):
    """Random colour blocks with noise, and random labels on another block grid."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (height // block + 1, width // block + 1, 3))
    image = np.repeat(np.repeat(cells, block, 0), block, 1)[:height, :width].astype(float)
    image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    lb = block + 4
    cells = rng.integers(0, n_labels, (height // lb + 1, width // lb + 1))
    labels = np.repeat(np.repeat(cells, lb, 0), lb, 1)[:height, :width]
    return image, labels


@pytest.mark.parametrize(
    "shape, n_labels, params",
    [
        ((60, 80), 2, {}),
        ((61, 79), 5, {}),  # H * W not a multiple of 4: densecrf's padded block
        ((47, 53), 3, dict(n_iter=5, gt_prob=0.6, gaussian_sxy=2, gaussian_compat=1,
                           bilateral_sxy=30, bilateral_srgb=20, bilateral_compat=5)),
        ((50, 50), 3, dict(n_labels=6)),
        ((50, 50), 4, dict(gaussian_compat=0)),
        ((50, 50), 4, dict(bilateral_compat=0, gaussian_sxy=6, gaussian_compat=8)),
    ],
)
def test_torch_backend_agrees_with_pydensecrf(shape, n_labels, params):
    for seed in range(3):
        image, labels = blocky_scene(*shape, n_labels, seed)
        ref = dense_crf(image, labels, **params)
        got = dense_crf(image, labels, backend="torch", device="cpu", **params)
        assert got.dtype == np.int64 and got.shape == labels.shape
        assert (ref != labels).mean() > 0.01  # the CRF did change something
        assert (got == ref).mean() > 0.995


def test_torch_backend_agrees_with_pydensecrf_on_soft_unaries():
    for seed in range(3):
        image, labels = blocky_scene(57, 66, 3, seed)
        rng = np.random.default_rng(seed)
        proba = rng.dirichlet(np.ones(3), size=(5, 6)).astype(np.float32)
        pixel = upsample_proba(proba, labels.shape)
        ref = dense_crf(image, proba=pixel)
        got = dense_crf(image, proba=pixel, backend="torch", device="cpu")
        assert (got == ref).mean() > 0.995


def test_torch_backend_snaps_like_pydensecrf():
    image, truth, coarse = make_scene("disc", seed=3)
    pixels = upsample_labels(coarse, truth.shape)
    fg = dense_crf(image, pixels, backend="torch", device="cpu") == 1
    blocky = pixels == 1
    assert iou(fg, truth) > iou(blocky, truth) + 0.08
    np.testing.assert_array_equal(
        refine_labels(image, coarse, backend="torch", device="cpu"),
        dense_crf(image, pixels, backend="torch", device="cpu"))


def test_hard_unary_is_pydensecrfs():
    from pydensecrf.utils import unary_from_labels

    from sklearn_clasp.refine import _hard_unary

    index = np.random.default_rng(0).integers(0, 4, 500)
    for n_labels, gt_prob in [(4, 0.8), (7, 0.55)]:
        np.testing.assert_array_equal(
            _hard_unary(index, n_labels, gt_prob),
            unary_from_labels(index, n_labels, gt_prob, zero_unsure=False))


@pytest.mark.parametrize("n_iter", [0, 1, 7])
def test_stepwise_pydensecrf_is_its_inference(n_iter):
    """Running the iterations one at a time gives inference(n_iter)'s labels."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    image, labels = blocky_scene(45, 70, 4, seed=7)
    crf = dcrf.DenseCRF2D(70, 45, 4)
    crf.setUnaryEnergy(unary_from_labels(labels.reshape(-1), 4, 0.8, zero_unsure=False))
    crf.addPairwiseGaussian(sxy=4.0, compat=4.0)
    crf.addPairwiseBilateral(sxy=80.0, srgb=13.0, rgbim=image, compat=10.0)
    q = np.asarray(crf.inference(n_iter))
    expected = np.argmax(q.reshape(4, 45, 70), axis=0)
    np.testing.assert_array_equal(dense_crf(image, labels, n_iter=n_iter), expected)


def _raise_stop(signum, frame):
    raise _Stopped(signum)


class _Stopped(Exception):
    pass


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_dense_crf_is_interrupted_between_iterations(backend, signum):
    """A signal stops a long inference within an iteration, not at its end.

    Another process sends the signal, so that it arrives while the CRF runs
    (a thread of this process could not run before the GIL is released).
    """
    image, labels = blocky_scene(320, 320, 2, seed=0)
    # the most iterations allowed: 15 s or more with either backend, were it not interrupted
    n_iter = MAX_CRF_ITERATIONS
    expected = KeyboardInterrupt if signum == signal.SIGINT else _Stopped
    dense_crf(image, labels, n_iter=1, backend=backend, device="cpu")  # imports done
    previous = signal.getsignal(signal.SIGTERM)
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, _raise_stop)  # as an application would
    sender = None
    try:
        with pytest.raises(expected):
            start = time.monotonic()
            sender = subprocess.Popen([
                sys.executable, "-c",
                f"import os, time; time.sleep(0.5); os.kill({os.getpid()}, {int(signum)})"])
            dense_crf(image, labels, n_iter=n_iter, backend=backend, device="cpu")
        elapsed = time.monotonic() - start
    finally:
        if sender is not None:
            if sender.poll() is None and sys.exc_info()[0] is not None:
                sender.kill()  # the CRF failed otherwise: no signal for the test session
            sender.wait(timeout=30)
        signal.signal(signal.SIGTERM, previous)
    assert sender.returncode == 0
    assert elapsed < 4.0  # the sender's start, its 0.5 s, and at most ~2 s more


def test_torch_device_choice_and_errors():
    image, labels = blocky_scene(30, 30, 2, seed=1)
    ref = dense_crf(image, labels, backend="torch", device="cpu")
    import torch

    np.testing.assert_array_equal(dense_crf(image, labels, backend="torch"), ref)
    with pytest.raises(ValueError, match="device must be"):
        dense_crf(image, labels, backend="torch", device="gpu")
    with pytest.raises(ValueError, match="device must be"):
        CRFRefiner(backend="torch", device="cuda:x").fit([(image, labels[:3, :3])])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            dense_crf(image, labels, backend="torch", device="cuda")
        with pytest.raises(ValueError, match="CRFRefiner: .*CUDA is not available"):
            CRFRefiner(backend="torch", device="cuda").fit([(image, labels[:3, :3])])
    # the pydensecrf backend does not use the device, but no backend takes a non-device
    np.testing.assert_array_equal(dense_crf(image, labels, device="cuda:7"),
                                  dense_crf(image, labels))
    with pytest.raises(ValueError, match="dense_crf: device='gpu' is not supported"):
        dense_crf(image, labels, device="gpu")
    with pytest.raises(ValueError, match="CRFRefiner: device='gpu' is not supported"):
        CRFRefiner(device="gpu").fit([(image, labels[:3, :3])])
    with pytest.raises(InvalidParameterError, match="backend"):
        dense_crf(image, labels, backend="cuda")
    with pytest.raises(InvalidParameterError, match="backend"):
        CRFRefiner(backend="numba").fit([(image, labels[:3, :3])])


def test_refiner_backend_reaches_the_crf():
    scenes = [make_scene("rect"), make_scene("disc", seed=1)]
    pairs = [(im, co) for im, _, co in scenes]
    masks = CRFRefiner(backend="torch", device="cpu").transform(pairs)
    for mask, (im, _, co) in zip(masks, scenes):
        np.testing.assert_array_equal(
            mask, refine_labels(im, co, backend="torch", device="cpu"))
    # bounded resolution with the torch backend
    image, _, coarse = make_big_scene(4)
    mask, = CRFRefiner(backend="torch", device="cpu", max_pixels=20_000).transform(
        [(image, coarse)])
    ref = refine_labels(image, coarse, max_pixels=20_000)
    assert (mask == ref).mean() > 0.995


# --------------------------------------------------------------------------
# soft unaries
# --------------------------------------------------------------------------


def one_hot(labels, n):
    return np.eye(n, dtype=np.float32)[labels]


def test_upsample_proba_is_the_bilinear_label_upsampling():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (5, 6))
    proba = upsample_proba(one_hot(labels, 3), (47, 61))
    assert proba.shape == (47, 61, 3) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=2), 1.0, atol=1e-6)
    # the labels' bilinear upsampling takes the largest interpolated weight
    bil = upsample_labels(labels, (47, 61), method="bilinear")
    top = np.sort(proba, axis=2)
    clear = top[..., -1] - top[..., -2] > 1e-4  # no ties
    np.testing.assert_array_equal(proba.argmax(axis=2)[clear], bil[clear])
    # smaller than the grid: still a valid interpolation
    small = upsample_proba(one_hot(labels, 3), (2, 3))
    np.testing.assert_allclose(small.sum(axis=2), 1.0, atol=1e-6)


@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
def test_one_hot_soft_unaries_snap_like_hard_ones(backend):
    for kind, seed in (("rect", 0), ("disc", 3)):
        image, truth, coarse = make_scene(kind, seed=seed)
        hard = refine_labels(image, coarse, backend=backend, device="cpu")
        soft = refine_labels(image, coarse, unary="soft", proba=one_hot(coarse, 2),
                             backend=backend, device="cpu")
        blocky = upsample_labels(coarse, truth.shape) == 1
        assert soft.dtype == np.int64 and set(np.unique(soft)) == {0, 1}
        assert iou(soft == 1, truth) > 0.95 > iou(blocky, truth)
        assert (soft == hard).mean() > 0.98
        # interiors are sure of their patch: the CRF keeps them
        inner = upsample_proba(one_hot(coarse, 2), truth.shape).max(axis=2) == 1.0
        np.testing.assert_array_equal(soft[inner], upsample_labels(coarse, truth.shape)[inner])


@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
def test_uncertain_patches_let_the_crf_move_the_boundary_to_the_edge(backend):
    # Colour edge at column 60; the patch labels put the boundary at column 42
    # (after 3 patches of 14 pixels). Sure (one-hot) patches keep it between
    # the centres of patches 2 and 3 (columns 35 to 49), where the upsampled
    # probabilities are mixed; unsure patches around it let it move to the edge.
    image = np.zeros((56, 140, 3), np.uint8)
    image[:, :60] = (200, 60, 40)
    image[:, 60:] = (30, 90, 200)
    image = np.clip(image + np.random.default_rng(0).normal(0, 6, image.shape),
                    0, 255).astype(np.uint8)
    labels = np.zeros((4, 10), np.int64)
    labels[:, 3:] = 1
    sure = one_hot(labels, 2)
    unsure = sure.copy()
    unsure[:, 2:5] = [0.5, 0.5]
    kw = dict(unary="soft", backend=backend, device="cpu")
    moved = refine_labels(image, labels, proba=unsure, **kw)
    kept = refine_labels(image, labels, proba=sure, **kw)

    def edge(mask):  # first column of label 1, per row
        return np.argmax(mask == 1, axis=1)

    assert (np.abs(edge(moved) - 60) <= 1).all()
    assert ((edge(kept) >= 35) & (edge(kept) <= 49)).all()
    assert (moved[:, :35] == 0).all() and (moved[:, 77:] == 1).all()


def test_soft_unary_energy_and_extra_labels():
    from sklearn_clasp.refine import _soft_unary

    p = np.array([[1.0, 0.0], [0.25, 0.75]], np.float32)
    u = _soft_unary(p, 3)
    np.testing.assert_allclose(u[:, 0], [0.0, -np.log(SOFT_UNARY_EPS), -np.log(SOFT_UNARY_EPS)],
                               rtol=1e-6)
    np.testing.assert_allclose(u[:2, 1], -np.log([0.25, 0.75]), rtol=1e-6)
    image, truth, coarse = make_scene("rect")
    pixel = upsample_proba(one_hot(coarse, 2), truth.shape)
    out = dense_crf(image, proba=pixel, n_labels=4)
    assert set(np.unique(out)) == {0, 1}
    assert (out == dense_crf(image, proba=pixel)).mean() > 0.99
    # one segment: nothing to refine
    np.testing.assert_array_equal(dense_crf(image, proba=np.ones((140, 140, 1))),
                                  np.zeros((140, 140)))


def test_refiner_soft_unaries_from_records_and_triples():
    scenes = [make_scene("rect"), make_scene("disc", seed=1)]
    rng = np.random.default_rng(0)
    probas = [np.clip(one_hot(co, 2) + rng.uniform(0, 0.3, (GRID, GRID, 2)), 0, None)
              for _, _, co in scenes]
    probas = [p / p.sum(axis=2, keepdims=True) for p in probas]
    records = [PatchGrid(image=im, grid_shape=(GRID, GRID), labels=co, proba=p,
                         source=f"s{i}")
               for i, ((im, _, co), p) in enumerate(zip(scenes, probas))]
    soft = CRFRefiner(unary="soft").transform(records)
    for mask, (im, _, co), p in zip(soft, scenes, probas):
        np.testing.assert_array_equal(
            mask, refine_labels(im, co, unary="soft", proba=p))
    triples = [(im, co, p) for (im, _, co), p in zip(scenes, probas)]
    for a, b in zip(CRFRefiner(unary="soft").transform(triples), soft):
        np.testing.assert_array_equal(a, b)
    # hard unaries ignore proba, on records and on triples
    hard = CRFRefiner().transform([(im, co) for im, _, co in scenes])
    for a, b in zip(CRFRefiner().transform(records), hard):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(CRFRefiner().transform(triples), hard):
        np.testing.assert_array_equal(a, b)
    # the records' proba reach the CRF: flipped probabilities flip the masks
    flipped = [r.replace(proba=r.proba[..., ::-1]) for r in records]
    for a, b in zip(CRFRefiner(unary="soft").transform(flipped), hard):
        assert (a != b).mean() > 0.95
    # soft unaries at a bounded resolution
    image, truth, coarse = make_big_scene(4)
    mask, = CRFRefiner(unary="soft", max_pixels=20_000).transform(
        [(image, coarse, one_hot(coarse, 2))])
    assert mask.shape == truth.shape and iou(mask == 1, truth) > 0.93


def test_soft_unary_errors():
    image, truth, coarse = make_scene("rect")
    proba = one_hot(coarse, 2)
    with pytest.raises(ValueError, match="unary='soft' needs proba"):
        refine_labels(image, coarse, unary="soft")
    with pytest.raises(ValueError, match="unary must be one of"):
        refine_labels(image, coarse, unary="fuzzy")
    with pytest.raises(ValueError, match="does not match the labels"):
        refine_labels(image, coarse, unary="soft", proba=proba[:5])
    with pytest.raises(ValueError, match="segment indices 0 .. 1"):
        refine_labels(image, coarse * 3, unary="soft", proba=proba)
    with pytest.raises(ValueError, match="must sum to 1"):
        refine_labels(image, coarse, unary="soft", proba=proba * 2)
    with pytest.raises(ValueError, match="non-negative"):
        refine_labels(image, coarse, unary="soft", proba=proba - 0.5)
    with pytest.raises(ValueError, match=r"shape \(h, w, K\)"):
        refine_labels(image, coarse, unary="soft", proba=proba[..., 0])
    # with method="nearest" or "bilinear" there is no unary: proba is not needed
    np.testing.assert_array_equal(
        refine_labels(image, coarse, method="nearest", unary="soft"),
        upsample_labels(coarse, truth.shape))
    pixel = upsample_proba(proba, truth.shape)
    with pytest.raises(ValueError, match="either labels .* or proba .*not both"):
        dense_crf(image, upsample_labels(coarse, truth.shape), proba=pixel)
    with pytest.raises(ValueError, match="not neither"):
        dense_crf(image)
    with pytest.raises(ValueError, match="probabilities per pixel"):
        dense_crf(image, proba=proba)
    with pytest.raises(ValueError, match="n_labels=1 is smaller than the 2 segments"):
        dense_crf(image, proba=pixel, n_labels=1)
    rec = PatchGrid(image=image, grid_shape=(GRID, GRID), labels=coarse, source="a.png")
    with pytest.raises(ValueError, match=r"a\.png.*has no proba"):
        CRFRefiner(unary="soft").fit([rec])
    with pytest.raises(ValueError, match=r"X\[0\] is an \(image, labels\) pair"):
        CRFRefiner(unary="soft").transform([(image, coarse)])
    with pytest.raises(InvalidParameterError, match="unary"):
        CRFRefiner(unary="fuzzy").fit([(image, coarse)])
    with pytest.raises(TypeError, match=r"Pass \[\(image, labels, proba\)\]"):
        CRFRefiner(unary="soft").transform((image, coarse, proba))
    with pytest.raises(TypeError, match="of length 4"):
        CRFRefiner().transform([(image, coarse, proba, proba)])


# --------------------------------------------------------------------------
# backends on real images (../shared/data)
# --------------------------------------------------------------------------

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _shared_sets():
    sys.path.insert(0, str(BENCHMARKS))
    import _data

    return _data


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("kind", ["camvid", "bsds500"])
def test_torch_backend_agrees_with_pydensecrf_on_real_images(kind):
    """Every 25th val image; benchmarks/bench_refine.py --backends covers them all."""
    from sklearn_clasp.io import load_image
    from sklearn_clasp.embedding import patch_grid_shape

    _data = _shared_sets()
    if not (_data.SHARED / kind).is_dir():
        pytest.skip(f"../shared/data/{kind} is absent")
    data = _data.camvid() if kind == "camvid" else _data.bsds500()
    items = data.items[::25]
    assert len(items) >= 4
    for name, image_path, truth_path in items:
        image = load_image(image_path)
        truth = data.read_truth(truth_path)
        truth = truth if kind == "camvid" else truth[0]
        coarse = resample_nearest(truth, patch_grid_shape(*truth.shape, short_side=None))
        pixels = upsample_labels(coarse, truth.shape)
        ref = dense_crf(image, pixels)
        got = dense_crf(image, pixels, backend="torch", device="cpu")
        assert (got == ref).mean() > 0.99, name


# --------------------------------------------------------------------------
# temperature, unary="auto", label compaction, threads
# --------------------------------------------------------------------------
def _soft_case(seed=0):
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet(np.ones(3), size=(3, 4)).astype(np.float32)
    proba[0, 0] = [1.0, 0.0, 0.0]  # an exact zero: floored, not -inf
    image = rng.integers(0, 256, (42, 56, 3), dtype=np.uint8)
    return proba.argmax(-1), image, proba


def test_soft_unary_temperature():
    from sklearn_clasp.refine import SOFT_UNARY_EPS, _soft_unary

    _, _, proba = _soft_case()
    p = proba.reshape(-1, 3)
    np.testing.assert_array_equal(_soft_unary(p, 3, 1.0), _soft_unary(p, 3))
    for t in (0.5, 4.0):
        q = np.maximum(p.astype(np.float64), np.finfo(np.float32).tiny) ** (1 / t)
        q /= q.sum(1, keepdims=True)
        expected = -np.log(np.maximum(q, SOFT_UNARY_EPS)).T
        np.testing.assert_allclose(_soft_unary(p, 3, t), expected, rtol=1e-5, atol=1e-5)
    assert np.isfinite(_soft_unary(p, 5, 4.0)).all()  # extra labels at the floor
    labels, image, _ = _soft_case()
    pixel = upsample_proba(proba, image.shape[:2])
    ref = dense_crf(image, proba=pixel)
    np.testing.assert_array_equal(dense_crf(image, proba=pixel, temperature=1.0), ref)
    np.testing.assert_array_equal(
        refine_labels(image, labels, unary="soft", proba=proba, temperature=4.0),
        dense_crf(image, proba=pixel, temperature=4.0))
    for bad in (0, -1.0):
        with pytest.raises(InvalidParameterError, match="temperature"):
            dense_crf(image, proba=pixel, temperature=bad)


def test_unary_auto_uses_proba_where_there_is_one():
    labels, image, proba = _soft_case(1)
    soft = refine_labels(image, labels, unary="soft", proba=proba)
    hard = refine_labels(image, labels, unary="hard")
    np.testing.assert_array_equal(refine_labels(image, labels, unary="auto", proba=proba), soft)
    np.testing.assert_array_equal(refine_labels(image, labels, unary="auto"), hard)
    auto = CRFRefiner(unary="auto")
    out = auto.fit_transform([(image, labels), (image, labels, proba)])
    np.testing.assert_array_equal(out[0], hard)
    np.testing.assert_array_equal(out[1], soft)
    rec = PatchGrid(image=image, grid_shape=labels.shape, labels=labels, proba=proba)
    np.testing.assert_array_equal(auto.transform([rec, rec.replace(proba=None)])[0], soft)
    with pytest.raises(InvalidParameterError, match="unary"):
        CRFRefiner(unary="fuzzy").fit([(image, labels)])


@pytest.mark.parametrize("case", ["small", "negative", "huge", "single"])
def test_pixel_labels_compacted_like_unique(case):
    from sklearn_clasp.image import compact_labels

    rng = np.random.default_rng(3)
    labels = {"small": rng.integers(0, 9, (30, 40)),
              "negative": rng.integers(-4, 5, (30, 40)),
              "huge": rng.integers(0, 3, (30, 40)) * 10**12,
              "single": np.full((5, 5), 7)}[case]
    values, inverse = compact_labels(labels)
    ref_values, ref_inverse = np.unique(labels, return_inverse=True)
    np.testing.assert_array_equal(values, ref_values)
    np.testing.assert_array_equal(inverse, ref_inverse.ravel())


def test_torch_backend_runs_on_one_cpu_thread(monkeypatch):
    import torch

    from sklearn_clasp import permutohedral as _permutohedral

    seen = []
    real = _permutohedral.lattice_filter

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(_permutohedral, "lattice_filter", recording)
    image, labels = blocky_scene(30, 30, 2, seed=1)
    before = torch.get_num_threads()
    with_two = max(2, before)
    torch.set_num_threads(with_two)
    try:
        dense_crf(image, labels, n_iter=2, backend="torch", device="cpu")
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == with_two
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
def test_gt_prob_that_would_invert_the_labels_is_refused(backend):
    """gt_prob=0.3 with 2 labels moved every pixel to the other label, silently."""
    image = np.zeros((20, 20, 3), np.uint8)
    labels = np.zeros((20, 20), int)
    labels[:, 10:] = 1
    with pytest.raises(ValueError, match=r"gt_prob=0.3 is at or below 1/2 = 0.5 for these 2 "
                                         r"labels: .* Use gt_prob above 0.5"):
        dense_crf(image, labels, gt_prob=0.3, n_iter=0, backend=backend)
    with pytest.raises(ValueError, match="gt_prob=0.5 is at or below 1/2"):
        CRFRefiner(gt_prob=0.5, backend=backend).fit_transform([(image, np.array([[0, 1]]))])
    three = labels.copy()
    three[:5] = 2  # three labels: 0.4 is above 1/3 and keeps them
    np.testing.assert_array_equal(dense_crf(image, three, gt_prob=0.4, n_iter=0,
                                            backend=backend), three)
