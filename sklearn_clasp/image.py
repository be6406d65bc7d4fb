"""Image arrays: conversion to RGB, resizing, label maps and their resampling.

Small pure functions on plain arrays, shared by the stages. Reading and
writing files is :mod:`sklearn_clasp.io`.
"""

from __future__ import annotations

import math
import os
from numbers import Integral

import numpy as np

__all__ = [
    "as_rgb_uint8",
    "bounded_shape",
    "check_image_list",
    "check_label_map",
    "compact_labels",
    "resample_nearest",
    "resize_image",
]

_IMAGE_TYPES = (str, os.PathLike)


def as_rgb_uint8(image, *, name="image") -> np.ndarray:
    """Convert an array image to RGB ``uint8`` of shape ``(H, W, 3)``.

    Accepted: ``(H, W)`` grayscale, ``(H, W, 1)``, ``(H, W, 3)`` RGB and
    ``(H, W, 4)`` RGBA (alpha dropped). ``uint8`` is kept; ``uint16`` is scaled
    by 1/257; floating point images must lie in ``[0, 1]``; booleans become
    0/255.

    Parameters
    ----------
    image : array-like
        The image.
    name : str, default="image"
        How to call the image in error messages.

    Returns
    -------
    rgb : ndarray of shape (H, W, 3), dtype uint8

    Examples
    --------
    >>> import numpy as np
    >>> as_rgb_uint8(np.ones((2, 3))).shape
    (2, 3, 3)
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(
            f"{name}: expected an image of shape (H, W), (H, W, 1), (H, W, 3) or "
            f"(H, W, 4); got shape {arr.shape}. Pass one image per list item."
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name}: the image is empty (shape {arr.shape}).")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: the image contains NaN or infinite values.")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{name}: a floating-point image must lie in [0, 1]; its values span "
                f"[{lo:.3g}, {hi:.3g}]. Divide by 255 (or convert to uint8) first."
            )
        return (arr * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{name}: integer image values must lie in [0, 255] (or use uint16); "
                f"got [{lo}, {hi}]."
            )
        return arr.astype(np.uint8)
    raise TypeError(f"{name}: unsupported image dtype {arr.dtype}.")


def check_label_map(labels, *, name="labels", allow_float=False) -> np.ndarray:
    """Return ``labels`` as a 2-D int64 label map, or raise a clear error.

    Parameters
    ----------
    labels : array-like of shape (H, W)
        Integer (or boolean) labels.
    name : str, default="labels"
        How to call the labels in error messages.
    allow_float : bool, default=False
        Also accept floating-point arrays holding whole numbers.

    Returns
    -------
    labels : ndarray of shape (H, W), dtype int64

    Examples
    --------
    >>> check_label_map([[0, 1], [1, 2]]).dtype
    dtype('int64')
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D label map of shape (H, W); got shape "
            f"{arr.shape}. Pass one label map per image."
        )
    if arr.size == 0:
        raise ValueError(f"{name}: the label map is empty (shape {arr.shape}).")
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if allow_float and np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(
                f"{name}: labels must be integers; got non-integer floating-point "
                f"values. Pass integer labels (e.g. labels.astype(int))."
            )
        return arr.astype(np.int64)
    raise TypeError(
        f"{name}: labels must be integers; got dtype {arr.dtype}. Pass integer "
        f"labels (e.g. labels.astype(int))."
    )


def check_image_list(images, *, step="this step"):
    """Check that ``images`` is a non-empty sequence of images or paths.

    A 4-D array ``(n_images, H, W, C)`` is accepted as a batch. A single 2-D or
    3-D image is refused with a hint to wrap it in a list.

    Returns
    -------
    images : list
    """
    if isinstance(images, _IMAGE_TYPES):
        raise TypeError(
            f"{step} expects a list of images; got a single path {str(images)!r}. "
            f"Pass [path]."
        )
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        raise TypeError(
            f"{step} expects a list of images; got one array of shape {images.shape}. "
            f"Pass [image] for a single image."
        )
    try:
        images = list(images)
    except TypeError:
        raise TypeError(
            f"{step} expects a list of images (arrays or paths); got "
            f"{type(images).__name__}."
        ) from None
    if len(images) == 0:
        raise ValueError(f"{step} got an empty list of images.")
    return images


def resize_image(image, size, *, resample="bicubic") -> np.ndarray:
    """Resize an RGB ``uint8`` image to ``size = (height, width)`` with Pillow.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), dtype uint8
    size : tuple of (int, int)
        Output ``(height, width)``.
    resample : {"bicubic", "bilinear", "nearest", "area"}, default="bicubic"

    Returns
    -------
    resized : ndarray of shape (height, width, 3), dtype uint8
    """
    from PIL import Image

    height, width = int(size[0]), int(size[1])
    if image.shape[0] == height and image.shape[1] == width:
        return image
    filters = {
        "bicubic": Image.BICUBIC,
        "bilinear": Image.BILINEAR,
        "nearest": Image.NEAREST,
        "area": Image.BOX,
    }
    out = Image.fromarray(image).resize((width, height), filters[resample])
    return np.asarray(out, dtype=np.uint8)


def check_size_limit(value, name):
    """Refuse a size limit (``max_pixels``, ``max_patches``) that is not a positive int or None.

    >>> check_size_limit(0, "max_pixels")
    Traceback (most recent call last):
    ...
    ValueError: max_pixels must be a positive int or None; got 0.
    """
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, Integral) or value < 1
    ):
        raise ValueError(f"{name} must be a positive int or None; got {value!r}.")


def bounded_shape(height, width, max_pixels):
    """Largest ``(h, w)`` with the image's aspect ratio and ``h * w <= max_pixels``.

    Each side is at least 1 and at most the image's; an image that already
    fits keeps its size.

    Parameters
    ----------
    height, width : int
        Image size, positive.
    max_pixels : int
        Pixel budget, positive.

    Returns
    -------
    shape : tuple of (int, int)
        ``(h, w)`` with ``h * w <= max_pixels``.

    Examples
    --------
    >>> from sklearn_clasp.image import bounded_shape
    >>> bounded_shape(3000, 2000, 1_500_000)
    (1500, 1000)
    >>> bounded_shape(300, 200, 1_500_000)
    (300, 200)
    """
    scale = math.sqrt(max_pixels / (height * width))
    h = max(1, min(height, int(height * scale)))
    w = max(1, min(width, int(width * scale)))
    h, w = min(h, max(1, max_pixels // w)), min(w, max(1, max_pixels // h))
    return h, w


def compact_labels(labels):
    """The distinct values of an integer label map and each pixel's index among them.

    ``np.unique(labels, return_inverse=True)`` with the indices flattened,
    computed by counting (``np.bincount``) for the usual small non-negative
    labels: linear time, where sorting a full-resolution map costs tens of
    milliseconds. Negative or very large values fall back to sorting.

    Parameters
    ----------
    labels : ndarray of int
        The label map (any shape).

    Returns
    -------
    values : ndarray of shape (n_values,)
        The distinct values, ascending.
    inverse : ndarray of shape (labels.size,), int
        ``values[inverse]`` is ``labels.ravel()``.

    Examples
    --------
    >>> import numpy as np
    >>> values, inverse = compact_labels(np.array([[7, 2], [2, 9]]))
    >>> values.tolist(), inverse.tolist()
    ([2, 7, 9], [1, 0, 0, 2])
    """
    flat = labels.ravel()
    if flat.size and flat.min() >= 0 and flat.max() <= 4 * flat.size + 1024:
        counts = np.bincount(flat)
        values = np.flatnonzero(counts)
        lookup = np.zeros(counts.size, np.int64)
        lookup[values] = np.arange(values.size)
        return values.astype(np.int64), lookup[flat]
    values, inverse = np.unique(flat, return_inverse=True)
    return values, inverse.ravel()


def _nearest_index(n_out, n_in):
    """Source index of each output sample along one axis, for nearest resampling.

    Upsampling (``n_out >= n_in``): ``floor(t * n_in / n_out)``, the patch
    spanning the pixel. Downsampling: the input sample under the output
    sample's centre, ``floor((t + 0.5) * n_in / n_out)``.
    """
    t = np.arange(n_out, dtype=np.int64)
    if n_out >= n_in:
        return (t * n_in) // n_out
    return ((2 * t + 1) * n_in) // (2 * n_out)


def resample_nearest(labels, shape):
    """Nearest resampling of a label map to ``shape``, up or down, per axis.

    Upsampling along an axis gives each output sample the input sample that
    spans it, ``floor(t * n_in / n_out)`` (as :func:`~sklearn_clasp.refine.upsample_labels` does);
    downsampling takes the input sample under the output sample's centre,
    ``floor((t + 0.5) * n_in / n_out)``. Integer arithmetic, so sizes need not
    divide. Works on any array whose first two axes are rows and columns.

    Parameters
    ----------
    labels : ndarray of shape (h, w, ...)
        The map to resample (not checked: any dtype, extra trailing axes kept).
    shape : tuple of (int, int)
        Output size ``(H, W)``.

    Returns
    -------
    resampled : ndarray of shape (H, W, ...)
        A new array of the input's dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_clasp.image import resample_nearest
    >>> resample_nearest(np.array([[1, 2]]), (1, 4))
    array([[1, 1, 2, 2]])
    >>> resample_nearest(np.arange(6).reshape(1, 6), (1, 3))
    array([[1, 3, 5]])
    """
    rows = _nearest_index(shape[0], labels.shape[0])
    cols = _nearest_index(shape[1], labels.shape[1])
    return labels[rows[:, None], cols[None, :]]
