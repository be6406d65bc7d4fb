"""Tests for sklearn_clasp.visualize: exact colours, blending, boundaries, PNGs."""

import numpy as np
import pytest
from PIL import Image

from sklearn_clasp.visualize import (
    boundary_mask,
    color_labels,
    label_colors,
    draw_boundaries,
    overlay,
    side_by_side,
)
from sklearn_clasp.io import save_png

RED, GREEN, BLUE = (230, 25, 75), (60, 180, 75), (67, 99, 216)


# --------------------------------------------------------------------------
# label_colors
# --------------------------------------------------------------------------


def test_label_colors_first_entries_and_dtype():
    colors = label_colors(3)
    assert colors.dtype == np.uint8 and colors.shape == (3, 3)
    assert [tuple(c) for c in colors] == [RED, GREEN, BLUE]
    assert label_colors(0).shape == (0, 3)


@pytest.mark.parametrize("n", [1, 20, 21, 300])
def test_label_colors_distinct_deterministic_and_prefix_stable(n):
    colors = label_colors(n)
    assert len({tuple(c) for c in colors}) == n
    np.testing.assert_array_equal(colors, label_colors(n))
    np.testing.assert_array_equal(colors, label_colors(n + 7)[:n])


def test_label_colors_base_palette_has_contrast():
    colors = label_colors(20).astype(float)
    dist = np.linalg.norm(colors[:, None] - colors[None], axis=2)
    dist[np.diag_indices(20)] = np.inf
    assert dist.min() > 40
    # no white or black, which would vanish against backgrounds/paper
    assert not np.any(np.all(colors == 255, axis=1))
    assert not np.any(np.all(colors == 0, axis=1))


def test_label_colors_rejects_negative():
    with pytest.raises(ValueError, match="'n' parameter"):
        label_colors(-1)


# --------------------------------------------------------------------------
# color_labels
# --------------------------------------------------------------------------


def test_color_labels_exact_colours_without_image():
    labels = np.array([[0, 1], [2, 0]])
    out = color_labels(labels)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    pixels = [tuple(out[0, 0]), tuple(out[0, 1]), tuple(out[1, 0]), tuple(out[1, 1])]
    assert pixels == [RED, GREEN, BLUE, RED]


def test_color_labels_arbitrary_integer_values_use_sorted_rank():
    labels = np.array([[-5, 1000], [1000, 3]], dtype=np.int32)
    out = color_labels(labels)
    # sorted distinct labels: -5 -> colour 0, 3 -> colour 1, 1000 -> colour 2
    assert tuple(out[0, 0]) == RED
    assert tuple(out[1, 1]) == GREEN
    assert tuple(out[0, 1]) == tuple(out[1, 0]) == BLUE


def test_color_labels_alpha_blending_arithmetic_over_gray():
    labels = np.array([[0, 1]])
    image = np.array([[[100, 100, 100], [10, 20, 30]]], dtype=np.uint8)
    out = color_labels(labels, image, alpha=0.25)
    # pixel 0: gray 100; 0.25 * c + 0.75 * 100, halves rounded up
    expected0 = [np.floor(0.25 * c + 75 + 0.5) for c in RED]
    # pixel 1: luma 0.299*10 + 0.587*20 + 0.114*30 = 18.15 -> 18
    expected1 = [np.floor(0.25 * c + 0.75 * 18 + 0.5) for c in GREEN]
    np.testing.assert_array_equal(out[0, 0], expected0)
    np.testing.assert_array_equal(out[0, 1], expected1)
    np.testing.assert_array_equal(out[0, 0], [133, 81, 94])


def test_color_labels_alpha_extremes():
    labels = np.array([[0, 1], [1, 0]])
    image = np.full((2, 2, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(color_labels(labels, image, alpha=0.0), image)
    opaque = color_labels(labels, image, alpha=1.0)
    np.testing.assert_array_equal(opaque, color_labels(labels))


def test_color_labels_bg_label_and_custom_colors():
    labels = np.array([[0, 4], [9, 4]])
    image = np.full((2, 2, 3), 50, dtype=np.uint8)
    colors = [(255, 0, 0)]
    out = color_labels(labels, image, alpha=0.5, colors=colors, bg_label=0)
    np.testing.assert_array_equal(out[0, 0], [50, 50, 50])  # background untouched
    np.testing.assert_array_equal(out[0, 1], [153, 25, 25])  # 0.5*255+25 -> 152.5
    np.testing.assert_array_equal(out[1, 0], [153, 25, 25])  # colours cycle
    no_image = color_labels(labels, bg_label=0)
    np.testing.assert_array_equal(no_image[0, 0], [0, 0, 0])
    assert tuple(no_image[0, 1]) == RED and tuple(no_image[1, 0]) == GREEN


def test_color_labels_does_not_modify_inputs():
    labels = np.array([[0, 1]])
    image = np.full((1, 2, 3), 9, dtype=np.uint8)
    color_labels(labels, image)
    np.testing.assert_array_equal(image, 9)
    np.testing.assert_array_equal(labels, [[0, 1]])


@pytest.mark.parametrize(
    "labels, image, kwargs, err, match",
    [
        (np.zeros((2, 2, 1), int), None, {}, ValueError, "labels: expected a 2-D"),
        (np.zeros((2, 2)), None, {}, TypeError, "labels must be integers"),
        (
            np.zeros((2, 2), int),
            np.zeros((3, 2, 3), np.uint8),
            {},
            ValueError,
            "must match",
        ),
        (np.zeros((2, 2), int), np.zeros((2, 2, 5), np.uint8), {}, ValueError, "image"),
        (np.zeros((2, 2), int), None, {"alpha": 1.5}, ValueError, "'alpha' parameter"),
        (np.zeros((2, 2), int), None, {"colors": [(1, 2)]}, ValueError, "colors"),
        (np.zeros((2, 2), int), None, {"colors": [(0, 0, 300)]}, ValueError, "colors"),
    ],
)
def test_color_labels_errors(labels, image, kwargs, err, match):
    with pytest.raises(err, match=match):
        color_labels(labels, image, **kwargs)


# --------------------------------------------------------------------------
# boundaries
# --------------------------------------------------------------------------

LABELS_4x4 = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [0, 0, 0, 0],
        [2, 2, 0, 0],
    ]
)

BOUNDS_4x4 = np.array(
    [
        [0, 1, 1, 0],
        [0, 1, 1, 1],
        [1, 1, 1, 1],
        [1, 1, 1, 0],
    ],
    dtype=bool,
)


def test_boundary_mask_hand_made_4x4():
    np.testing.assert_array_equal(boundary_mask(LABELS_4x4), BOUNDS_4x4)


def test_boundary_mask_uniform_checker_and_dot():
    assert not boundary_mask(np.full((3, 5), 7)).any()
    # in a checkerboard every pixel has a 4-neighbour with another label
    checker = np.array([[0, 1], [1, 0]])
    assert boundary_mask(checker).all()
    # a single pixel of another label marks itself and its 4 neighbours only
    dot = np.zeros((3, 3), int)
    dot[1, 1] = 1
    expected = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(boundary_mask(dot), expected)


def test_draw_boundaries_changes_only_boundary_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    before = image.copy()
    out = draw_boundaries(image, LABELS_4x4, color=(1, 2, 3))
    np.testing.assert_array_equal(image, before)  # input untouched
    n_bound = BOUNDS_4x4.sum()
    np.testing.assert_array_equal(out[BOUNDS_4x4], np.tile([1, 2, 3], (n_bound, 1)))
    np.testing.assert_array_equal(out[~BOUNDS_4x4], image[~BOUNDS_4x4])
    default = draw_boundaries(image, LABELS_4x4)
    np.testing.assert_array_equal(default[0, 1], [255, 255, 0])


@pytest.mark.parametrize(
    "color", [(255, 0), (0, 0, 256), (-1, 0, 0), (0.5, 0, 0), "yellow"]
)
def test_draw_boundaries_bad_color(color):
    with pytest.raises(ValueError, match="color"):
        draw_boundaries(np.zeros((4, 4, 3), np.uint8), LABELS_4x4, color=color)


def test_draw_boundaries_shape_mismatch_names_inputs():
    with pytest.raises(ValueError, match=r"image has shape \(4, 5\).*labels"):
        draw_boundaries(np.zeros((4, 5, 3), np.uint8), LABELS_4x4)


def test_overlay_is_label2rgb_then_mark_boundaries():
    image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5
    out = overlay(image, LABELS_4x4, alpha=0.3)
    expected = draw_boundaries(color_labels(LABELS_4x4, image, alpha=0.3), LABELS_4x4)
    np.testing.assert_array_equal(out, expected)
    yellow = np.tile([255, 255, 0], (BOUNDS_4x4.sum(), 1))
    np.testing.assert_array_equal(out[BOUNDS_4x4], yellow)
    assert not np.array_equal(out[0, 0], [255, 255, 0])


# --------------------------------------------------------------------------
# side_by_side
# --------------------------------------------------------------------------


def test_side_by_side_pads_heights_and_gaps_with_white():
    a = np.full((3, 2, 3), 10, dtype=np.uint8)
    b = np.full((1, 1), 0.0)  # grayscale float, converted
    c = np.full((2, 3, 3), 30, dtype=np.uint8)
    out = side_by_side(a, b, c, pad=2)
    assert out.shape == (3, 2 + 2 + 1 + 2 + 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :2], 10)
    np.testing.assert_array_equal(out[:, 2:4], 255)  # gap
    np.testing.assert_array_equal(out[0, 4], 0)
    np.testing.assert_array_equal(out[1:, 4], 255)  # padded below b
    np.testing.assert_array_equal(out[:2, 7:], 30)
    np.testing.assert_array_equal(out[2, 7:], 255)
    np.testing.assert_array_equal(side_by_side(a, pad=0), a)


def test_side_by_side_errors():
    with pytest.raises(ValueError, match="at least one image"):
        side_by_side()
    with pytest.raises(TypeError, match=r"side_by_side\(\*images\)"):
        side_by_side([np.zeros((2, 2, 3), np.uint8)])
    with pytest.raises(ValueError, match="'pad' parameter"):
        side_by_side(np.zeros((2, 2, 3), np.uint8), pad=-1)
    with pytest.raises(ValueError, match=r"images\[1\]"):
        side_by_side(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 7), np.uint8))


# --------------------------------------------------------------------------
# save_png
# --------------------------------------------------------------------------


def _read(path):
    with Image.open(path) as im:
        return im.mode, np.asarray(im).copy()


def test_save_png_label_mask_8bit_round_trip(tmp_path):
    mask = np.array([[0, 1, 2], [255, 7, 0]], dtype=np.int64)
    path = save_png(tmp_path / "m8.png", mask)
    mode, back = _read(path)
    assert mode == "P"  # a palette PNG: the values are the labels, the colours visible
    np.testing.assert_array_equal(back, mask)
    with Image.open(path) as im:
        palette = np.array(im.getpalette()[:6]).reshape(2, 3)
    np.testing.assert_array_equal(palette, label_colors(2))


def test_save_png_label_mask_16bit_round_trip(tmp_path):
    mask = np.array([[0, 256, 300], [65535, 5, 1000]], dtype=np.int32)
    path = save_png(str(tmp_path / "m16.png"), mask)
    mode, back = _read(path)
    assert mode.startswith("I")
    assert back.dtype == np.uint16 or back.max() > 255
    np.testing.assert_array_equal(back.astype(np.int64), mask)


def test_save_png_rgb_gray_and_bool(tmp_path):
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 7
    mode, back = _read(save_png(tmp_path / "rgb.png", rgb))
    assert mode == "RGB"
    np.testing.assert_array_equal(back, rgb)
    gray = np.array([[0, 128], [255, 3]], dtype=np.uint8)
    mode, back = _read(save_png(tmp_path / "gray.png", gray))
    assert mode == "L"
    np.testing.assert_array_equal(back, gray)
    mode, back = _read(save_png(tmp_path / "bool.png", gray > 100))
    np.testing.assert_array_equal(back, [[0, 1], [1, 0]])


@pytest.mark.parametrize(
    "array, err, match",
    [
        (np.array([[0, -1]]), ValueError, "non-negative"),
        (np.array([[0, 70000]]), ValueError, "16-bit"),
        (np.zeros((2, 2)), TypeError, "dtype float64"),
        (np.zeros((2, 2, 3), np.int64), TypeError, "must be uint8"),
        (np.zeros((2, 2, 2), np.uint8), ValueError, r"\(H, W, 3\)"),
        (np.zeros(4, np.uint8), ValueError, "got shape"),
        (np.zeros((0, 3), np.int64), ValueError, "empty"),
    ],
)
def test_save_png_errors(tmp_path, array, err, match):
    path = tmp_path / "bad.png"
    with pytest.raises(err, match=match):
        save_png(path, array)
    assert not path.exists()


def test_no_matplotlib_or_skimage_import_needed():
    import subprocess
    import sys

    code = (
        "import sys; import sklearn_clasp.visualize as v; import numpy as np;"
        "v.overlay(np.zeros((4, 4, 3), np.uint8), np.eye(4, dtype=int));"
        "assert 'matplotlib' not in sys.modules and 'skimage' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
