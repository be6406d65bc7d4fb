"""Drawing segmentations: label colours, overlays, boundaries, side-by-side figures.

Small pure functions on plain arrays in the spirit of :mod:`skimage.color` and
:mod:`skimage.segmentation`, without depending on scikit-image. Images are RGB
``uint8`` arrays of shape ``(H, W, 3)`` (grayscale and float images are
converted with :func:`~sklearn_clasp.image.as_rgb_uint8`); label maps are 2-D
integer arrays of shape ``(H, W)`` at the image's resolution (upsample patch
labels first, e.g. with :func:`sklearn_clasp.refine.upsample_labels`).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import Interval, validate_params

from .image import (
    as_rgb_uint8,
    bounded_shape,
    check_label_map,
    compact_labels,
    resample_nearest,
    resize_image,
)

__all__ = [
    "label_colors",
    "color_labels",
    "boundary_mask",
    "draw_boundaries",
    "overlay",
    "side_by_side",
]

# High-contrast base palette (after Sasha Trubetskoy's "20 distinct colours"),
# reordered so that the first labels get the strongest colours and pure-ish
# yellow, the default boundary colour, comes late. No white and no black.
_BASE_PALETTE = np.array(
    [
        (230, 25, 75),  # red
        (60, 180, 75),  # green
        (67, 99, 216),  # blue
        (245, 130, 49),  # orange
        (145, 30, 180),  # purple
        (66, 212, 244),  # cyan
        (240, 50, 230),  # magenta
        (191, 239, 69),  # lime
        (250, 190, 212),  # pink
        (70, 153, 144),  # teal
        (220, 190, 255),  # lavender
        (154, 99, 36),  # brown
        (255, 225, 25),  # yellow
        (128, 0, 0),  # maroon
        (170, 255, 195),  # mint
        (128, 128, 0),  # olive
        (255, 216, 177),  # apricot
        (0, 0, 117),  # navy
        (255, 250, 200),  # beige
        (169, 169, 169),  # grey
    ],
    dtype=np.uint8,
)

# Irrational steps of the 3-D "R3" low-discrepancy sequence: hue, saturation
# and value of the extra colours spread evenly without repeating.
_R3_STEPS = np.array([0.8191725134, 0.6710436067, 0.5497004779])


# --------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------


def _check_labels(labels, *, name="labels"):
    """Return ``labels`` as a 2-D int64 array, or raise a clear error."""
    return check_label_map(labels, name=name)


def _check_image_for(image, labels, *, name="image", labels_name="labels"):
    """Return ``image`` as RGB uint8 with the same (H, W) as ``labels``."""
    rgb = as_rgb_uint8(image, name=name)
    if rgb.shape[:2] != labels.shape:
        raise ValueError(
            f"{name} has shape {rgb.shape[:2]} (H, W) but {labels_name} has shape "
            f"{labels.shape}; they must match pixel for pixel. Upsample patch labels "
            f"to the image size first (sklearn_clasp.refine.upsample_labels)."
        )
    return rgb


def _check_color(color, *, name="color"):
    arr = np.asarray(color)
    if arr.shape != (3,) or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(
            f"{name}: expected one RGB triple such as (255, 255, 0); got {color!r}."
        )
    if np.any(arr < 0) or np.any(arr > 255) or np.any(arr != np.round(arr)):
        raise ValueError(
            f"{name}: RGB values must be integers in [0, 255]; got {color!r}."
        )
    return arr.astype(np.uint8)


def _check_palette(colors, *, name="colors"):
    arr = np.asarray(colors)
    if (
        arr.ndim != 2
        or arr.shape[1] != 3
        or arr.shape[0] < 1
        or not np.issubdtype(arr.dtype, np.number)
    ):
        raise ValueError(
            f"{name}: expected a sequence of RGB triples of shape (n_colors, 3); got "
            f"shape {arr.shape}."
        )
    if np.any(arr < 0) or np.any(arr > 255) or np.any(arr != np.round(arr)):
        raise ValueError(
            f"{name}: RGB values must be integers in [0, 255] (uint8 scale, not "
            f"[0, 1])."
        )
    return arr.astype(np.uint8)


def _hsv_to_rgb(hsv):
    """Vectorised HSV in [0, 1] to RGB uint8 (the colorsys formula)."""
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    choices = np.stack(
        [
            np.stack([v, t, p], 1),
            np.stack([q, v, p], 1),
            np.stack([p, v, t], 1),
            np.stack([p, q, v], 1),
            np.stack([t, p, v], 1),
            np.stack([v, p, q], 1),
        ]
    )
    rgb = choices[i, np.arange(len(i))]
    return np.floor(rgb * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------
# colours
# --------------------------------------------------------------------------


@validate_params(
    {"n": [Interval(Integral, 0, None, closed="left")]},
    prefer_skip_nested_validation=True,
)
def label_colors(n):
    """A deterministic palette of ``n`` distinct RGB colours.

    The first 20 colours are a fixed high-contrast palette (no white, no black;
    label 0 is red, 1 green, 2 blue, ...). Further colours follow a
    low-discrepancy walk through hue, saturation (0.45-0.95) and value
    (0.55-0.95), skipping any colour already used, so all ``n`` colours are
    distinct and the first ``m`` colours of ``label_colors(n)`` are
    ``label_colors(m)``.

    Parameters
    ----------
    n : int
        Number of colours, ``n >= 0``.

    Returns
    -------
    colors : ndarray of shape (n, 3), dtype uint8
        One RGB colour per row.

    Examples
    --------
    >>> label_colors(3)
    array([[230,  25,  75],
           [ 60, 180,  75],
           [ 67,  99, 216]], dtype=uint8)
    >>> len(set(map(tuple, label_colors(500))))
    500
    """
    n = int(n)
    if n <= len(_BASE_PALETTE):
        return _BASE_PALETTE[:n].copy()
    colors = [tuple(c) for c in _BASE_PALETTE]
    seen = set(colors)
    start = 1
    while len(colors) < n:
        batch = max(64, 2 * (n - len(colors)))
        k = np.arange(start, start + batch, dtype=np.float64)[:, None]
        start += batch
        unit = np.mod(0.5 + k * _R3_STEPS, 1.0)
        hsv = np.column_stack(
            [unit[:, 0], 0.45 + 0.5 * unit[:, 1], 0.55 + 0.4 * unit[:, 2]]
        )
        for c in map(tuple, _hsv_to_rgb(hsv)):
            if c not in seen:
                seen.add(c)
                colors.append(c)
                if len(colors) == n:
                    break
    return np.array(colors, dtype=np.uint8)


@validate_params(
    {
        "labels": ["array-like"],
        "image": ["array-like", None],
        "alpha": [Interval(Real, 0, 1, closed="both")],
        "colors": ["array-like", None],
        "bg_label": [Integral, None],
    },
    prefer_skip_nested_validation=True,
)
def color_labels(labels, image=None, *, alpha=0.45, colors=None, bg_label=None):
    """Colour a label map, optionally blended over an image.

    Like ``skimage.color.label2rgb(kind="overlay")``, with other defaults and a
    ``uint8`` result (hence another name). The distinct labels
    (other than ``bg_label``) are sorted and the ``k``-th smallest gets colour
    ``colors[k % len(colors)]``, so labels may be any integers (negative,
    sparse, large); for labels ``0 .. K-1`` label ``k`` gets colour ``k``.

    With an image, the image is first turned to gray (luma
    ``0.299 R + 0.587 G + 0.114 B``, rounded) so that the label colours stand
    out, and each pixel becomes ``round(alpha * colour + (1 - alpha) * gray)``
    (halves round up). ``bg_label`` pixels keep the gray image unblended.
    Without an image the output is the label colours themselves (``alpha``
    unused) and ``bg_label`` pixels are black.

    Parameters
    ----------
    labels : array-like of shape (H, W), integer
        The label map.
    image : array-like of shape (H, W, 3) or (H, W), default=None
        Image to draw on (RGB ``uint8``, or anything
        :func:`~sklearn_clasp.image.as_rgb_uint8` accepts).
    alpha : float in [0, 1], default=0.45
        Opacity of the label colours over the image.
    colors : array-like of shape (n_colors, 3), default=None
        RGB colours in ``0..255``, cycled when there are more labels than
        colours. Default: :func:`label_colors` with one colour per label.
    bg_label : int, default=None
        Label left uncoloured (for example the background).

    Returns
    -------
    rgb : ndarray of shape (H, W, 3), dtype uint8

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.array([[0, 1], [1, 7]])
    >>> color_labels(labels)[:, :, 0]
    array([[230,  60],
           [ 60,  67]], dtype=uint8)
    >>> image = np.full((2, 2, 3), 100, dtype=np.uint8)
    >>> color_labels(labels, image, alpha=0.5, bg_label=0)[:, :, 0]
    array([[100, 165],
           [165,  80]], dtype=uint8)
    """
    labels = _check_labels(labels)
    gray = None
    if image is not None:
        rgb = _check_image_for(image, labels)
        luma = rgb.reshape(-1, 3) @ np.array([0.299, 0.587, 0.114])
        gray = np.floor(luma + 0.5).astype(np.uint8).reshape(labels.shape)

    foreground = None if bg_label is None else labels != bg_label
    values = labels if foreground is None else labels[foreground]
    present, ranks = compact_labels(values)
    n_values, ranks = present.size, ranks.reshape(values.shape)
    palette = label_colors(n_values) if colors is None else _check_palette(colors)
    palette = np.asarray(palette, np.float64)
    if gray is None:
        table = np.clip(np.floor(palette + 0.5), 0, 255).astype(np.uint8)  # (P, 3)
        fg_values = table[ranks % len(palette)]
        out = np.zeros(labels.shape + (3,), dtype=np.uint8)
    else:
        # every (colour, grey level) pair blended once: a (P, 256, 3) table
        levels = np.arange(256, dtype=np.float64)[None, :, None]
        table = np.clip(np.floor(alpha * palette[:, None, :] + (1.0 - alpha) * levels + 0.5),
                        0, 255).astype(np.uint8)
        if foreground is None:
            return table[ranks % len(palette), gray]
        fg_values = table[ranks % len(palette), gray[foreground]]
        out = np.repeat(gray[:, :, None], 3, axis=2)
    if foreground is None:
        out[...] = fg_values
    else:
        out[foreground] = fg_values
    return out


# --------------------------------------------------------------------------
# boundaries
# --------------------------------------------------------------------------


@validate_params({"labels": ["array-like"]}, prefer_skip_nested_validation=True)
def boundary_mask(labels):
    """Pixels on a segment boundary.

    A pixel is a boundary pixel when one of its 4 neighbours (up, down, left,
    right) has a different label. Both sides of every edge are marked, so
    boundaries are two pixels wide (``skimage.segmentation.find_boundaries``
    with ``mode="thick"`` and ``connectivity=1``). The image border is not a
    boundary.

    Parameters
    ----------
    labels : array-like of shape (H, W), integer
        The label map.

    Returns
    -------
    boundaries : ndarray of shape (H, W), dtype bool

    Examples
    --------
    >>> import numpy as np
    >>> boundary_mask(np.array([[0, 0, 1, 1]])).astype(int)
    array([[0, 1, 1, 0]])
    """
    labels = _check_labels(labels)
    out = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    out[1:, :] |= vertical
    out[:-1, :] |= vertical
    horizontal = labels[:, 1:] != labels[:, :-1]
    out[:, 1:] |= horizontal
    out[:, :-1] |= horizontal
    return out


@validate_params(
    {"image": ["array-like"], "labels": ["array-like"], "color": ["array-like"]},
    prefer_skip_nested_validation=True,
)
def draw_boundaries(image, labels, *, color=(255, 255, 0)):
    """Draw segment boundaries on an image.

    Pixels where :func:`boundary_mask` is true are set to ``color``; all
    other pixels are left as they are. The input is not modified.

    Parameters
    ----------
    image : array-like of shape (H, W, 3) or (H, W)
        The image (RGB ``uint8``, or anything
        :func:`~sklearn_clasp.image.as_rgb_uint8` accepts).
    labels : array-like of shape (H, W), integer
        The label map.
    color : tuple of 3 ints in [0, 255], default=(255, 255, 0)
        Boundary colour (yellow).

    Returns
    -------
    marked : ndarray of shape (H, W, 3), dtype uint8

    Examples
    --------
    >>> import numpy as np
    >>> image = np.zeros((1, 4, 3), dtype=np.uint8)
    >>> draw_boundaries(image, np.array([[0, 0, 1, 1]]))[0, :, 0]
    array([  0, 255, 255,   0], dtype=uint8)
    """
    labels = _check_labels(labels)
    out = _check_image_for(image, labels).copy()
    out[boundary_mask(labels)] = _check_color(color)
    return out


@validate_params(
    {
        "image": ["array-like"],
        "labels": ["array-like"],
        "alpha": [Interval(Real, 0, 1, closed="both")],
        "max_pixels": [Interval(Integral, 1, None, closed="left"), None],
    },
    prefer_skip_nested_validation=True,
)
def overlay(image, labels, *, alpha=0.45, max_pixels=None):
    """The standard CLASP figure: coloured segments and yellow boundaries.

    ``draw_boundaries(color_labels(labels, image, alpha=alpha), labels)``, drawn
    on a copy downscaled to at most ``max_pixels`` pixels when the image is
    larger (the drawing takes about 180 bytes a pixel at its peak).

    Parameters
    ----------
    image : array-like of shape (H, W, 3) or (H, W)
        The image.
    labels : array-like of shape (H, W), integer
        The pixel label map (for example a :class:`CRFRefiner` mask).
    alpha : float in [0, 1], default=0.45
        Opacity of the label colours.
    max_pixels : int or None, default=None
        Draw at most this many pixels (image area-averaged, labels resampled
        nearest, aspect ratio kept); ``None``: full size.

    Returns
    -------
    rgb : ndarray of shape (H, W, 3) or smaller, dtype uint8

    Examples
    --------
    >>> import numpy as np
    >>> image = np.full((2, 4, 3), 200, dtype=np.uint8)
    >>> labels = np.array([[0, 0, 0, 1], [0, 0, 0, 1]])
    >>> overlay(image, labels)[0, :, 0]
    array([214, 214, 255, 255], dtype=uint8)
    """
    labels = _check_labels(labels)
    height, width = labels.shape
    if max_pixels is not None and height * width > max_pixels:
        size = bounded_shape(height, width, max_pixels)
        image = resize_image(_check_image_for(image, labels), size, resample="area")
        labels = resample_nearest(labels, size)
    return draw_boundaries(color_labels(labels, image, alpha=alpha), labels)


# --------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------


@validate_params(
    {"pad": [Interval(Integral, 0, None, closed="left")]},
    prefer_skip_nested_validation=True,
)
def side_by_side(*images, pad=4):
    """Place images next to each other, for figures.

    Images are top-aligned on a white canvas as tall as the tallest image, with
    ``pad`` white columns between neighbours (none at the outer edges).

    Parameters
    ----------
    *images : array-like of shape (H_i, W_i, 3) or (H_i, W_i)
        One or more images (RGB ``uint8``, or anything
        :func:`~sklearn_clasp.image.as_rgb_uint8` accepts).
    pad : int, default=4
        Width of the white gap between images, in pixels.

    Returns
    -------
    canvas : ndarray of shape (max H_i, sum W_i + pad * (n - 1), 3), dtype uint8

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((2, 1, 3), dtype=np.uint8)
    >>> b = np.zeros((1, 2, 3), dtype=np.uint8)
    >>> side_by_side(a, b, pad=1)[:, :, 0]
    array([[  0, 255,   0,   0],
           [  0, 255, 255, 255]], dtype=uint8)
    """
    if len(images) == 0:
        raise ValueError(
            "side_by_side needs at least one image; call side_by_side(img1, img2)."
        )
    if len(images) == 1 and isinstance(images[0], (list, tuple)):
        raise TypeError(
            "side_by_side takes the images as separate arguments; got one list. "
            "Call side_by_side(*images)."
        )
    rgbs = [as_rgb_uint8(im, name=f"images[{i}]") for i, im in enumerate(images)]
    height = max(im.shape[0] for im in rgbs)
    width = sum(im.shape[1] for im in rgbs) + pad * (len(rgbs) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for im in rgbs:
        canvas[: im.shape[0], x : x + im.shape[1]] = im
        x += im.shape[1] + pad
    return canvas
