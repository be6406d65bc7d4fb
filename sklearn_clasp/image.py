"""Image input: reading files and arrays into RGB, and sizing the patch grid.

Small pure functions on plain arrays, shared by every patch embedder.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import stat
import warnings
from numbers import Integral

import numpy as np

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "ImageTooLargeError",
    "load_image",
    "as_rgb_uint8",
    "check_image_list",
    "check_label_map",
    "patch_grid_shape",
    "resize_image",
]

_IMAGE_TYPES = (str, os.PathLike)

logger = logging.getLogger(__name__)


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


#: Largest image, in pixels, that :func:`load_image` decodes by default: Pillow's
#: own default hard limit (``2 * 89_478_485``, about 16,000 x 11,000 pixels). A
#: guard against decompression bombs: the size is read from the file's header and
#: a larger image is refused before any pixel is decoded.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970

# Pillow modes whose pixels are copied as they are: mode -> channels kept.
_DIRECT_MODES = {"RGB": 3, "RGBA": 3, "RGBX": 3, "L": 1, "LA": 1, "1": 1}
# Pillow modes converted (strip by strip) to another mode first.
_CONVERT_MODES = {"P": "RGBA", "PA": "RGBA", "La": "LA", "RGBa": "RGBA"}
_STRIP_PIXELS = 1 << 22  # pixels decoded into the output per strip
# Formats never opened: Pillow decodes PostScript by running Ghostscript, an external
# interpreter, on the file's contents.
_REFUSED_FORMATS = frozenset({"EPS"})


class ImageTooLargeError(ValueError):
    """An image file has more pixels than the limit allows.

    Raised by :func:`load_image` from the size in the file's header, before
    any pixel is decoded: a guard against decompression bombs (small files
    that decode to huge images). A subclass of :class:`ValueError`.

    Examples
    --------
    >>> issubclass(ImageTooLargeError, ValueError)
    True
    """


def _open_regular_file(path, label):
    """Open ``path`` for reading if it is a readable regular file; else a clear error.

    Never blocks (a FIFO named like an image is refused, not read).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileNotFoundError(
                f"{label}: broken symbolic link (its target {os.readlink(path)!r} does "
                f"not exist). Fix the link or leave the file out."
            ) from None
        raise FileNotFoundError(f"{label}: no such image file. Check the path.") from None
    except PermissionError:
        raise PermissionError(
            f"{label}: permission denied reading the image file. Make it readable "
            f"(e.g. chmod u+r) or leave it out."
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP, f"{label}: symbolic link loop (the link points back to "
                f"itself through other links). Fix the link or leave the file out."
            ) from None
        raise OSError(exc.errno, f"{label}: cannot open the image file "
                                 f"({exc.strerror or exc}).") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(
                f"{label}: is a directory, not an image file. Pass image files here; "
                f"find_images (or clasp segment) searches directories."
            )
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(
                f"{label}: not a regular file (a pipe, socket or device). Pass an image "
                f"file."
            )
        if info.st_size == 0:
            raise ValueError(f"{label}: the file is empty (0 bytes), not an image. "
                             f"Re-create it or leave it out.")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _readable_formats():
    """The formats Pillow may open files as: all it reads but ``_REFUSED_FORMATS``."""
    from PIL import Image

    Image.init()
    formats = [f for f in getattr(Image, "ID", ()) if f not in _REFUSED_FORMATS]
    return formats or None


def _too_large(label, size, max_pixels):
    """The error for an image of ``size`` (text from its header) above ``max_pixels``."""
    return ImageTooLargeError(
        f"{label}: {size} is more than the limit of {max_pixels} pixels, a guard "
        f"against decompression bombs. If the image is genuine, raise the limit: "
        f"load_image(..., max_pixels=N), segment_collection(..., max_image_pixels=N), "
        f"or clasp segment --max-image-pixels N ('none' for no limit)."
    )


def _exif_orientation(im, label):
    """The EXIF orientation (1-8) of an opened image; 1 when absent or unreadable."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception as exc:  # malformed EXIF: viewers ignore it too
        logger.warning("%s: unreadable EXIF data (%s: %s); orientation ignored", label,
                       type(exc).__name__, exc)
        return 1
    if isinstance(value, Integral) and 1 <= value <= 8:
        return int(value)
    logger.warning("%s: invalid EXIF orientation %r ignored", label, value)
    return 1


def _orient(rgb, orientation):
    """Apply an EXIF orientation to an ``(H, W, 3)`` array, as viewers display it."""
    if orientation == 1:
        return rgb
    view = {
        2: lambda a: a[:, ::-1],  # mirror left-right
        3: lambda a: a[::-1, ::-1],  # rotate 180
        4: lambda a: a[::-1],  # mirror top-bottom
        5: lambda a: a.transpose(1, 0, 2),  # transpose
        6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse
        8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise
    }[orientation](rgb)
    return np.ascontiguousarray(view)


def _numeric_to_uint8(im, mode, label):
    """A function mapping a strip of a 16-bit, 32-bit integer or float image to uint8."""
    if mode.startswith("I;16"):
        # 16-bit: 0..65535 -> 0..255, rounded (what as_rgb_uint8 does for uint16)
        return lambda b: ((np.clip(b, 0, 65535).astype(np.uint32) + 128) // 257).astype(
            np.uint8)
    lo, hi = im.getextrema()
    if mode == "I":
        # 32-bit integers: 8-bit values if they fit, else 16-bit, else scaled by the maximum
        top = 255 if hi <= 255 else 65535 if hi <= 65535 else hi
        scale = 255.0 / top
        return lambda b: (np.clip(b, 0, top) * scale + 0.5).astype(np.uint8)
    # 32-bit float ("F"): [0, 1] scaled to [0, 255], anything else clipped to [0, 255]

    def convert(b):
        if not np.all(np.isfinite(b)):
            raise ValueError(f"{label}: the image contains NaN or infinite values. Replace "
                             f"them (e.g. by 0) and save it again, or leave it out.")
        b = b * 255.0 if hi <= 1.0 else b
        return (np.clip(b, 0.0, 255.0) + 0.5).astype(np.uint8)

    return convert


def _decode_rgb(im, label):
    """Decode an opened Pillow image into a new ``(H, W, 3)`` uint8 array, strip by strip.

    Peak memory: Pillow's decoded image (1 to 4 bytes a pixel, by mode) plus the
    3-byte-a-pixel result, plus one strip of temporaries.
    """
    try:
        im.load()
    except MemoryError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error...
        raise ValueError(
            f"{label}: could not decode the image ({type(exc).__name__}: {exc}); the file "
            f"is damaged or incomplete (a truncated download or copy?). Re-create it or "
            f"leave it out."
        ) from exc
    mode = im.mode
    width, height = im.size
    numeric = mode.startswith("I;16") or mode in ("I", "F")
    target = None if mode in _DIRECT_MODES or numeric else _CONVERT_MODES.get(mode, "RGB")
    keep = _DIRECT_MODES.get(target or mode, 1)
    scale = _numeric_to_uint8(im, mode, label) if numeric else None
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    step = max(1, _STRIP_PIXELS // width)
    for top in range(0, height, step):
        strip = im.crop((0, top, width, min(height, top + step)))
        if target is not None:
            try:
                strip = strip.convert(target)
            except ValueError as exc:
                raise ValueError(
                    f"{label}: unsupported colour mode {mode!r} ({exc}). Convert the file "
                    f"to RGB first."
                ) from None
        block = np.asarray(strip)
        if scale is not None:
            block = scale(block)
        elif block.dtype == bool:
            block = block.astype(np.uint8) * 255
        if block.ndim == 2:
            block = block[:, :, None]
        rgb[top : top + block.shape[0]] = block[:, :, :keep]
    return rgb


def load_image(image, *, name=None, max_pixels=DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image from a path, or convert an array, to RGB ``uint8``.

    Files are decoded with Pillow and converted to RGB from any mode:
    grayscale and bilevel images are repeated over the three channels; the
    alpha channel of RGBA, LA and palette images with transparency is dropped;
    16-bit images are scaled by 1/257; 32-bit integer images are taken as
    8-bit values when none exceeds 255, as 16-bit values when none exceeds
    65535, else scaled by their maximum; 32-bit float images are scaled by
    255 when their values lie in ``[0, 1]``, else clipped to ``[0, 255]``;
    CMYK, YCbCr and the other modes are converted by Pillow. Multi-frame
    files (GIF, TIFF) give their first frame. PostScript (EPS) files are
    refused, whatever their name: Pillow would run Ghostscript on them. The
    image is then turned as its
    EXIF orientation says, so the array (and any mask made from it) matches
    the image as viewers display it; unreadable EXIF data is ignored with a
    warning.

    Before decoding, the size in the file's header is checked against
    ``max_pixels``, so a decompression bomb (a small file that decodes to a
    huge image) is refused without allocating its pixels. Decoding takes
    about 7 bytes a pixel at its peak (Pillow's decoded image and the result;
    the result alone is 3 bytes a pixel): about 760 MB for a 12000 x 9000
    photo. Pillow's own process-wide limit (``2 * PIL.Image.MAX_IMAGE_PIXELS``)
    still applies and is never changed here: to read images larger than that,
    raise ``PIL.Image.MAX_IMAGE_PIXELS`` in your program as well.

    Parameters
    ----------
    image : str, path-like or array-like
        A file path or an image array (see :func:`as_rgb_uint8`).
    name : str, default=None
        How to call the image in error messages; defaults to the path.
    max_pixels : int or None, default=DEFAULT_MAX_IMAGE_PIXELS
        Largest number of pixels (width x height) of an image file; ``None``
        for no limit. Arrays, already in memory, are not checked.

    Returns
    -------
    rgb : ndarray of shape (H, W, 3), dtype uint8
        A new, writeable array.

    Raises
    ------
    FileNotFoundError
        If the file does not exist (or is a broken symbolic link).
    PermissionError
        If the file cannot be read.
    ImageTooLargeError
        If the image has more than ``max_pixels`` pixels.
    ValueError
        If the file is empty, not an image, damaged or truncated, or not a
        regular file, or the array is not an image.
    OSError
        For other failures to open the file (e.g. a symbolic link loop).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from PIL import Image
    >>> path = os.path.join(tempfile.mkdtemp(), "gray16.png")
    >>> Image.fromarray(np.full((2, 3), 65535, dtype=np.uint16)).save(path)
    >>> rgb = load_image(path)
    >>> rgb.shape, rgb.dtype, int(rgb.max())
    ((2, 3, 3), dtype('uint8'), 255)
    >>> try:
    ...     load_image(path, max_pixels=5)
    ... except ImageTooLargeError as exc:
    ...     print(str(exc).split(": ", 1)[1][:49])
    3 x 2 pixels (6 pixels) is more than the limit of
    """
    if not isinstance(image, _IMAGE_TYPES):
        return as_rgb_uint8(image, name=name or "image")
    from PIL import Image, UnidentifiedImageError

    if max_pixels is not None and (not isinstance(max_pixels, Integral) or max_pixels < 1):
        raise ValueError(f"load_image: max_pixels must be a positive integer or None; got "
                         f"{max_pixels!r}.")
    label = name or os.fspath(image)
    with _open_regular_file(image, label) as fh:
        try:
            with warnings.catch_warnings():
                # the size is checked against max_pixels below; Pillow's warning is noise
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(fh, formats=_readable_formats())
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            n_pixels = int(found.group(1)) if found else None
            if max_pixels is not None and n_pixels is not None and n_pixels > max_pixels:
                raise _too_large(label, f"{n_pixels} pixels (from the file's header)",
                                 max_pixels) from None
            raise ImageTooLargeError(
                f"{label}: refused by Pillow's own decompression-bomb guard ({exc}). To "
                f"read larger images, raise PIL.Image.MAX_IMAGE_PIXELS in your program "
                f"(sklearn-clasp never changes it) as well as max_pixels."
            ) from None
        except UnidentifiedImageError:
            raise ValueError(
                f"{label}: not a readable image file (Pillow does not recognise its "
                f"contents). Check the file is a complete image in a format Pillow "
                f"reads (PNG, JPEG, TIFF, ...) or leave it out."
            ) from None
        except Exception as exc:  # a recognised format with a broken header
            raise ValueError(
                f"{label}: not a readable image file ({type(exc).__name__}: {exc}); the "
                f"file is damaged. Re-create it or leave it out."
            ) from None
        with im:
            width, height = im.size
            if width < 1 or height < 1:
                raise ValueError(f"{label}: the image is empty ({width} x {height} "
                                 f"pixels).")
            if max_pixels is not None and width * height > max_pixels:
                raise _too_large(label, f"{width} x {height} pixels ({width * height} "
                                        f"pixels)", max_pixels)
            try:
                rgb = _decode_rgb(im, label)
            except MemoryError:
                raise MemoryError(
                    f"{label}: not enough memory to decode {width} x {height} pixels "
                    f"(about {7 * width * height / 1e9:.1f} GB at the peak). Lower "
                    f"max_pixels to refuse such images, or downscale the file first."
                ) from None
            orientation = _exif_orientation(im, label)
    if orientation != 1:
        logger.debug("%s: EXIF orientation %d applied", label, orientation)
    return _orient(rgb, orientation)


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


def patch_grid_shape(height, width, *, short_side=448, patch_size=14, max_patches=None):
    """Size of the patch grid for an image.

    The image is scaled so that its shorter side is ``short_side`` pixels
    (aspect ratio kept), then each side is rounded to the nearest multiple of
    ``patch_size`` (at least one patch). ``short_side=None`` keeps the image's
    own size and only rounds it, as the CLASP paper does.

    With a patch budget ``max_patches``, a grid that would have more patches
    is shrunk, aspect ratio kept: both sides of the scaled image are
    multiplied by ``sqrt(max_patches / (rows * cols))`` (fractional patch
    counts) and rounded down, each side at least one patch, so that
    ``rows * cols <= max_patches`` always. This bounds the cost of the
    backbone and of the affinity (``rows * cols`` squared) for huge images and
    extreme aspect ratios.

    Parameters
    ----------
    height, width : int
        Image size in pixels.
    short_side : int or None, default=448
        Target length of the shorter side.
    patch_size : int, default=14
        Patch side in pixels.
    max_patches : int or None, default=None
        Largest number of patches, at least 1; ``None`` sets no limit.

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
    >>> patch_grid_shape(9000, 12000, short_side=None, max_patches=10_000)
    (86, 115)
    >>> patch_grid_shape(10000, 20, max_patches=10_000)
    (2236, 4)
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive; got {height}x{width}")
    if max_patches is not None and (
        isinstance(max_patches, bool) or not isinstance(max_patches, Integral)
        or max_patches < 1
    ):
        raise ValueError(
            f"max_patches must be a positive int or None; got {max_patches!r}."
        )
    scale = 1.0 if short_side is None else float(short_side) / min(height, width)
    rows = max(1, int(math.floor(height * scale / patch_size + 0.5)))
    cols = max(1, int(math.floor(width * scale / patch_size + 0.5)))
    if max_patches is None or rows * cols <= max_patches:
        return rows, cols
    h_p, w_p = height * scale / patch_size, width * scale / patch_size
    shrink = math.sqrt(max_patches / (h_p * w_p))
    rows = max(1, int(math.floor(h_p * shrink)))
    cols = max(1, int(math.floor(w_p * shrink)))
    # A side clamped to one patch leaves the whole budget to the other side.
    rows, cols = min(rows, max_patches), min(cols, max_patches)
    while rows * cols > max_patches:  # a clamped side, or rounding
        if rows >= cols:
            rows -= 1
        else:
            cols -= 1
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
