"""Tests for the weights-free patch embedder (sklearn_clasp.embedding._handcrafted)."""

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_clasp.embedding import HandcraftedPatchEmbedder, handcrafted_patch_features
from sklearn_clasp.embedding._handcrafted import rgb_to_lab
from sklearn_clasp.embedding import patch_grid_shape
from sklearn_clasp.records import PatchGrid

RED, BLUE, GREEN, GREY = (220, 30, 30), (30, 60, 220), (30, 180, 60), (128, 128, 128)


def _cosine(features):
    """Pairwise cosine similarity of (h, w, d) features, as an (n, n) matrix."""
    f = features.reshape(-1, features.shape[-1]).astype(np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    return f @ f.T


def _shapes_image(n=280):
    """Red disc, blue square and green triangle on grey; returns image and masks."""
    img = np.empty((n, n, 3), np.uint8)
    img[:] = GREY
    yy, xx = np.mgrid[:n, :n]
    disc = (yy - 80) ** 2 + (xx - 80) ** 2 < 50**2
    rect = (yy >= 30) & (yy < 130) & (xx >= 160) & (xx < 260)
    tri = (yy >= 160) & (yy < 260) & (xx >= 40) & (np.abs(xx - 150) < yy - 160)
    img[disc], img[rect], img[tri] = RED, BLUE, GREEN
    return img, {"disc": disc, "rect": rect, "tri": tri, "bg": ~(disc | rect | tri)}


def _interior_patches(mask, grid_shape):
    """Row-major indices of patches whose whole footprint lies inside ``mask``."""
    (H, W), (h, w) = mask.shape, grid_shape
    out = []
    for i in range(h):
        for j in range(w):
            r0, r1 = int(i * H / h), int(np.ceil((i + 1) * H / h))
            c0, c1 = int(j * W / w), int(np.ceil((j + 1) * W / w))
            if mask[r0:r1, c0:c1].all():
                out.append(i * w + j)
    return np.array(out)


# --- colour conversion -------------------------------------------------------


def test_rgb_to_lab_reference_values():
    # reference CIELAB (D65) values of the sRGB primaries, white, black, grey
    rgb = np.array(
        [[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255],
         [128, 128, 128]],
        np.uint8,
    )
    expected = np.array(
        [[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.24, 80.09, 67.20],
         [87.73, -86.18, 83.18], [32.30, 79.19, -107.86], [53.59, 0.0, 0.0]]
    )
    lab = rgb_to_lab(rgb)
    assert lab.dtype == np.float32
    np.testing.assert_allclose(lab, expected, atol=0.02)
    # the linear segment near black: L* = 903.3 * Y for tiny Y
    near_black = rgb_to_lab(np.array([1, 1, 1], np.uint8))
    assert near_black[0] == pytest.approx(0.2742, abs=1e-3)


# --- cosine-similarity design ------------------------------------------------


@pytest.mark.parametrize("color", [(0, 0, 0), (255, 255, 255), (128, 128, 128), RED])
def test_uniform_image_patches_are_all_alike(color):
    img = np.empty((100, 150, 3), np.uint8)
    img[:] = color
    (rec,) = HandcraftedPatchEmbedder().transform([img])
    assert np.all(np.isfinite(rec.features))
    assert np.linalg.norm(rec.features, axis=-1).min() > 0.5  # never a zero vector
    assert _cosine(rec.features).min() > 0.99


@pytest.mark.parametrize("short_side", [None, 448])
def test_flat_shapes_similar_within_and_dissimilar_between(short_side):
    img, masks = _shapes_image()
    (rec,) = HandcraftedPatchEmbedder(short_side=short_side).transform([img])
    sim = _cosine(rec.features)
    interiors = {k: _interior_patches(m, rec.grid_shape) for k, m in masks.items()}
    assert all(len(v) >= 20 for v in interiors.values())
    for idx in interiors.values():
        assert sim[np.ix_(idx, idx)].min() > 0.95
    names = list(interiors)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            block = sim[np.ix_(interiors[names[a]], interiors[names[b]])]
            # measured: about 0.21 (the shared flat-texture and position share)
            assert block.max() < 0.8, (names[a], names[b], block.max())


def test_grey_levels_are_told_apart():
    # black | mid-grey | white vertical bands: a*=b*=0 everywhere, only L* differs
    img = np.zeros((42, 126, 3), np.uint8)
    img[:, 42:84] = 128
    img[:, 84:] = 255
    f = handcrafted_patch_features(img, (3, 9))
    sim = _cosine(f).reshape(3, 9, 3, 9)
    assert sim[1, 1, 0, 0] > 0.99  # black vs black
    # measured: 0.38, 0.21, 0.46 (the flat-texture and position share is ~0.2)
    assert sim[1, 1, 1, 4] < 0.5  # black vs grey
    assert sim[1, 1, 1, 7] < 0.25  # black vs white
    assert sim[1, 4, 1, 7] < 0.55  # grey vs white


def test_texture_orientation_and_contrast_are_seen():
    # left: flat grey; middle: vertical stripes; right: horizontal stripes
    img = np.full((56, 168, 3), 128, np.uint8)
    cols = np.arange(56)
    img[:, 56:112][:, (cols // 2) % 2 == 0] = 0
    img[:, 56:112][:, (cols // 2) % 2 == 1] = 255
    img[:, 112:][(cols // 2) % 2 == 0] = 0
    img[:, 112:][(cols // 2) % 2 == 1] = 255
    f = handcrafted_patch_features(img, (4, 12), color_weight=0.0, position_weight=0.0)
    sim = _cosine(f).reshape(4, 12, 4, 12)
    assert sim[1, 1, 2, 2] == pytest.approx(1.0, abs=1e-6)  # flat vs flat
    assert sim[1, 1, 1, 5] < 0.5  # flat vs striped
    assert sim[1, 5, 2, 6] > 0.99  # vertical stripes vs vertical stripes
    assert sim[1, 5, 1, 9] < 0.9  # vertical vs horizontal stripes


def test_group_norms_equal_the_weights():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (70, 98, 3)).astype(np.uint8)
    f = handcrafted_patch_features(
        img, (5, 7), color_weight=0.6, texture_weight=0.8, position_weight=0.0
    )
    np.testing.assert_allclose(np.linalg.norm(f, axis=-1), 1.0, rtol=1e-5)
    pos = handcrafted_patch_features(
        img, (5, 7), color_weight=0.0, texture_weight=0.0, position_weight=2.0
    )
    np.testing.assert_allclose(np.linalg.norm(pos, axis=-1), 2.0, rtol=1e-5)
    # position alone: opposite corners of a square grid are orthogonal
    sq = handcrafted_patch_features(
        img, (7, 7), color_weight=0.0, texture_weight=0.0, position_weight=1.0
    )
    sim = _cosine(sq)
    assert sim[0, 48] == pytest.approx(np.cos(np.pi / 2 * 6 / 7), abs=1e-5)
    assert sim.min() >= -1e-6


def test_colour_kernel_decreases_with_colour_distance():
    # left half a fixed colour, right half that colour shifted further and further
    sims = []
    for shift in (0, 10, 20, 40, 80):
        img = np.full((14, 28, 3), 100, np.uint8)
        img[:, 14:] = (100 + shift, 100, 100 - shift // 2)
        f = handcrafted_patch_features(
            img, (1, 2), texture_weight=0.0, position_weight=0.0
        )
        sims.append(_cosine(f)[0, 1])
    assert sims[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(sims, sims[1:]))
    assert sims[-1] < 0.05


# --- output contract ---------------------------------------------------------


@pytest.mark.parametrize(
    "shape, short_side", [((280, 280), 448), ((100, 150), None), ((123, 77), 448),
                          ((123, 77), None), ((20, 9), None)]
)
def test_record_contract(shape, short_side):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, shape + (3,)).astype(np.uint8)
    (rec,) = HandcraftedPatchEmbedder(short_side=short_side).fit_transform([img])
    grid = patch_grid_shape(*shape, short_side=short_side, patch_size=14)
    assert isinstance(rec, PatchGrid)
    assert rec.grid_shape == grid
    assert rec.features.shape[:2] == grid and rec.features.ndim == 3
    assert rec.features.dtype == np.float32
    assert np.all(np.isfinite(rec.features))
    assert rec.image.shape == shape + (3,) and rec.image.dtype == np.uint8
    np.testing.assert_array_equal(rec.image, img)  # full resolution kept
    assert rec.source == "image[0]"
    assert rec.info == {
        "embedder": "handcrafted",
        "input_size": (grid[0] * 14, grid[1] * 14),
        "patch_budget_applied": False,
        "cached": False,
    }
    assert rec.affinity is None and rec.labels is None


def test_patch_size_and_feature_dimension():
    img = np.zeros((60, 90, 3), np.uint8)
    (rec,) = HandcraftedPatchEmbedder(patch_size=10, short_side=None).transform([img])
    assert rec.grid_shape == (6, 9)
    assert rec.info["input_size"] == (60, 90)
    # colour prototypes + 9 texture values + 4 position values
    (rec20,) = HandcraftedPatchEmbedder(color_sigma=20.0).transform([img])
    assert rec.features.shape[-1] > rec20.features.shape[-1] > 13


def test_grayscale_rgba_and_float_inputs():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (56, 70, 3)).astype(np.uint8)
    gray = rng.integers(0, 256, (56, 70)).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((56, 70, 1), 7, np.uint8)], axis=2)
    emb = HandcraftedPatchEmbedder(short_side=None)
    r_rgb, r_rgba, r_gray, r_gray3, r_float = emb.transform(
        [rgb, rgba, gray, np.repeat(gray[:, :, None], 3, 2), rgb / 255.0]
    )
    np.testing.assert_array_equal(r_rgba.features, r_rgb.features)  # alpha dropped
    np.testing.assert_array_equal(r_rgba.image, rgb)
    np.testing.assert_array_equal(r_gray.features, r_gray3.features)
    assert r_gray.image.shape == (56, 70, 3)
    np.testing.assert_array_equal(r_float.image, rgb)
    np.testing.assert_array_equal(r_float.features, r_rgb.features)
    assert [r.source for r in (r_rgb, r_rgba, r_gray)] == [
        "image[0]", "image[1]", "image[2]"]


def test_file_path_input(tmp_path):
    img, _ = _shapes_image(140)
    path = tmp_path / "shapes.png"
    Image.fromarray(img).save(path)
    emb = HandcraftedPatchEmbedder()
    rec_path, rec_str = emb.transform([path, str(path)])
    (rec_arr,) = emb.transform([img])
    assert rec_path.source == str(path) == rec_str.source
    np.testing.assert_array_equal(rec_path.image, img)
    np.testing.assert_array_equal(rec_path.features, rec_arr.features)


def test_batch_array_deterministic_and_parallel():
    rng = np.random.default_rng(3)
    batch = rng.integers(0, 256, (3, 50, 64, 3)).astype(np.uint8)
    a = HandcraftedPatchEmbedder().transform(batch)
    b = HandcraftedPatchEmbedder().transform(list(batch))
    c = HandcraftedPatchEmbedder(n_jobs=2).transform(list(batch))
    assert len(a) == len(b) == len(c) == 3
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x.features, y.features)
        np.testing.assert_array_equal(x.features, z.features)
    assert [r.source for r in c] == ["image[0]", "image[1]", "image[2]"]


def test_input_is_not_modified():
    img = np.random.default_rng(4).integers(0, 256, (30, 40, 3)).astype(np.uint8)
    copy = img.copy()
    HandcraftedPatchEmbedder().transform([img])
    np.testing.assert_array_equal(img, copy)


# --- estimator API -----------------------------------------------------------


def test_stateless_estimator_api():
    emb = HandcraftedPatchEmbedder(texture_weight=0.3)
    assert emb.__sklearn_tags__().requires_fit is False
    assert emb.fit([np.zeros((14, 14, 3), np.uint8)]) is emb
    assert not [k for k in vars(emb) if k.endswith("_") and not k.startswith("_")]
    clone_ = clone(emb)
    assert clone_.get_params() == emb.get_params()
    assert clone_.get_params()["texture_weight"] == 0.3


@pytest.mark.parametrize(
    "params",
    [{"patch_size": 0}, {"short_side": 0}, {"color_weight": -1.0},
     {"color_sigma": 0.0}, {"n_jobs": "two"}, {"patch_size": 14.5},
     {"max_patches": 0}, {"max_patches": 10.5}],
)
def test_invalid_parameters(params):
    img = np.zeros((28, 28, 3), np.uint8)
    with pytest.raises(InvalidParameterError):
        HandcraftedPatchEmbedder(**params).fit([img])
    with pytest.raises(InvalidParameterError):
        HandcraftedPatchEmbedder(**params).transform([img])


def test_all_zero_weights_refused():
    img = np.zeros((28, 28, 3), np.uint8)
    emb = HandcraftedPatchEmbedder(color_weight=0, texture_weight=0, position_weight=0)
    with pytest.raises(ValueError, match="at least one"):
        emb.fit([img])
    with pytest.raises(ValueError, match="not all zero"):
        handcrafted_patch_features(img, (2, 2), color_weight=0, texture_weight=0,
                                   position_weight=0)


# --- bad input ----------------------------------------------------------------


def test_empty_list():
    with pytest.raises(ValueError, match="empty list"):
        HandcraftedPatchEmbedder().transform([])


def test_single_image_not_in_a_list():
    with pytest.raises(TypeError, match=r"Pass \[image\]"):
        HandcraftedPatchEmbedder().transform(np.zeros((28, 28, 3), np.uint8))
    with pytest.raises(TypeError, match=r"Pass \[path\]"):
        HandcraftedPatchEmbedder().transform("some/image.png")


@pytest.mark.parametrize(
    "bad", [np.zeros((28, 28, 2)), np.zeros(28), np.zeros((0, 5, 3))]
)
def test_wrong_image_shapes(bad):
    with pytest.raises(ValueError, match="image"):
        HandcraftedPatchEmbedder().transform([bad])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image file"):
        HandcraftedPatchEmbedder().transform([tmp_path / "missing.png"])


def test_feature_function_bad_input():
    img = np.zeros((28, 28, 3), np.uint8)
    with pytest.raises(ValueError, match="RGB uint8"):
        handcrafted_patch_features(img.astype(np.float32), (2, 2))
    with pytest.raises(ValueError, match="RGB uint8"):
        handcrafted_patch_features(img[:, :, 0], (2, 2))
    with pytest.raises(ValueError, match="positive"):
        handcrafted_patch_features(img, (0, 2))
    with pytest.raises(ValueError, match="uint8 RGB"):
        rgb_to_lab(np.zeros((4, 4), np.uint8))


# --- patch budget -------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2000, 100), (100, 2000)])
def test_patch_budget_bounds_the_grid(shape, caplog):
    img = np.full(shape + (3,), 90, np.uint8)
    unbounded = patch_grid_shape(*shape)  # 640 x 32 patches at short side 448
    assert unbounded[0] * unbounded[1] == 20_480
    with caplog.at_level("INFO", logger="sklearn_clasp.embedding._grid"):
        (rec,) = HandcraftedPatchEmbedder().transform([img])  # default budget, 10,000
    h, w = rec.grid_shape
    assert h * w <= 10_000 and rec.features.shape[:2] == (h, w)
    assert max(h, w) / min(h, w) == pytest.approx(20, rel=0.05)  # aspect ratio kept
    assert rec.info["patch_budget_applied"] is True
    assert rec.info["input_size"] == (h * 14, w * 14)
    assert rec.image.shape == img.shape  # full resolution kept for the refiner
    assert "downscaled for the patch budget" in caplog.text
    (small,) = HandcraftedPatchEmbedder(max_patches=50).transform([img])
    assert small.grid_shape[0] * small.grid_shape[1] <= 50
    (free,) = HandcraftedPatchEmbedder(max_patches=None, short_side=112).transform([img])
    assert free.grid_shape == patch_grid_shape(*shape, short_side=112)
    assert free.info["patch_budget_applied"] is False
