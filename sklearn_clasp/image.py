"""Image input: reading files and arrays into RGB, and sizing the patch grid.

Small pure functions on plain arrays, shared by every patch embedder.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

__all__ = [
    "load_image",
    "as_rgb_uint8",
    "check_image_list",
    "check_label_map",
    "patch_grid_shape",
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


def load_image(image, *, name=None) -> np.ndarray:
    """Read an image from a path, or convert an array, to RGB ``uint8``.

    Files are decoded with Pillow, rotated as their EXIF orientation says (so
    masks match the displayed image) and converted to RGB from any mode
    (grayscale, palette, RGBA, 16-bit, CMYK).

    Parameters
    ----------
    image : str, path-like or array-like
        A file path or an image array (see :func:`as_rgb_uint8`).
    name : str, default=None
        How to call the image in error messages; defaults to the path.

    Returns
    -------
    rgb : ndarray of shape (H, W, 3), dtype uint8
    """
    if isinstance(image, _IMAGE_TYPES):
        from PIL import Image, ImageOps, UnidentifiedImageError

        path = Path(image)
        label = name or str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{label}: no such image file.")
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im, dtype=np.float64)
                    top = 65535.0 if arr.max() > 255 else 255.0
                    arr = np.clip(arr / top, 0.0, 1.0)
                    return as_rgb_uint8(arr, name=label)
                if im.mode != "RGB":
                    im = im.convert("RGBA" if "A" in im.mode or im.mode == "P" else "RGB")
                    im = im.convert("RGB")
                return np.array(im, dtype=np.uint8)
        except UnidentifiedImageError as exc:
            raise ValueError(
                f"{label}: not a readable image file ({exc}). Check the file is a "
                f"complete image in a format Pillow reads (PNG, JPEG, ...)."
            ) from exc
        except OSError as exc:
            raise ValueError(f"{label}: could not decode the image ({exc}).") from exc
    return as_rgb_uint8(image, name=name or "image")


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


def patch_grid_shape(height, width, *, short_side=448, patch_size=14):
    """Size of the patch grid for an image.

    The image is scaled so that its shorter side is ``short_side`` pixels
    (aspect ratio kept), then each side is rounded to the nearest multiple of
    ``patch_size`` (at least one patch). ``short_side=None`` keeps the image's
    own size and only rounds it, as the CLASP paper does.

    Parameters
    ----------
    height, width : int
        Image size in pixels.
    short_side : int or None, default=448
        Target length of the shorter side.
    patch_size : int, default=14
        Patch side in pixels.

    Returns
    -------
    grid_shape : tuple of (int, int)
        Patch rows and columns; the backbone input is
        ``(rows * patch_size, cols * patch_size)`` pixels.

    Examples
    --------
    >>> patch_grid_shape(360, 480)
    (32, 43)
    >>> patch_grid_shape(360, 480, short_side=None)
    (26, 34)
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive; got {height}x{width}")
    scale = 1.0 if short_side is None else float(short_side) / min(height, width)
    rows = max(1, int(math.floor(height * scale / patch_size + 0.5)))
    cols = max(1, int(math.floor(width * scale / patch_size + 0.5)))
    return rows, cols


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
