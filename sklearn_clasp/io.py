"""Files in and out: hardened image reading, PNG writing, input discovery, label files.

Everything that touches the file system on behalf of the stages lives here, so
that each guard exists once:

- :func:`load_image` reads one image file (or converts an array) to RGB
  ``uint8``, refusing decompression bombs from the header, FIFOs, links to
  nowhere and damaged or truncated files with a one-line reason;
- :func:`save_png` writes RGB images and label masks (masks as palette PNGs:
  the pixel values are the labels, the palette makes them visible);
- :func:`find_images` expands files, directories and glob patterns into a
  collection with a safe, unique output name per image;
- :func:`read_label_file`, :func:`find_label_files` and
  :func:`find_mask_files` read ground truth and predicted masks;
- :func:`file_sha256`, :func:`atomic_write` and :func:`read_json` are the
  checksum and all-or-nothing write used by the output store and the
  weights cache; :func:`check_cache_location` warns about cache directories
  others can write to.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import re
import reprlib
import stat
import unicodedata
import uuid
import warnings
from collections import Counter
from numbers import Integral
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sklearn.utils._param_validation import Interval, validate_params

from .image import as_rgb_uint8

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "IMAGE_SUFFIXES",
    "ImageInput",
    "ImageTooLargeError",
    "atomic_write",
    "check_cache_location",
    "check_image_inputs",
    "file_sha256",
    "find_images",
    "find_label_files",
    "find_mask_files",
    "load_image",
    "read_json",
    "read_label_file",
    "read_mask",
    "save_png",
]

logger = logging.getLogger(__name__)

_IMAGE_TYPES = (str, os.PathLike)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: errno values of a full disk or quota.
DISK_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


# --------------------------------------------------------------------------
# reading images
# --------------------------------------------------------------------------

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


# what a path that is not a regular file is, for messages
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode):
    """What a file of ``st_mode`` ``mode`` is, in words: ``"a directory"``, ``"a socket"``, ..."""
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")


def open_regular(path, refuse, *, follow=True):
    """``(binary file, os.stat_result)`` of the regular file ``path``; else ``refuse``'s error.

    The file is opened without blocking (``O_NONBLOCK``), so a named pipe is
    refused at once instead of waiting for a writer, and a device such as
    ``/dev/zero`` is refused before anything is read from it; with
    ``follow=False``, never through a symbolic link (``O_NOFOLLOW``).

    Where the file cannot be opened, or is not a regular file, the exception
    ``refuse(error, target, mode)`` is raised: ``error`` is the
    :class:`OSError` of the open, ``target`` the target of a broken symbolic
    link (else ``None``), and ``mode`` the ``st_mode`` of a file that is not
    regular (then ``error`` is ``None``): one that opened, or a socket, which
    cannot be opened.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC | (0 if follow else _NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket
            with contextlib.suppress(OSError):
                raise refuse(None, None, os.stat(path).st_mode) from None
        broken = isinstance(exc, FileNotFoundError) and os.path.islink(path)
        raise refuse(exc, os.readlink(path) if broken else None, None) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise refuse(None, None, info.st_mode)
        return os.fdopen(fd, "rb"), info
    except BaseException:
        os.close(fd)
        raise


def refusal(label, noun, *, not_regular, fix, missing=FileNotFoundError, hint=""):
    """The ``refuse`` of :func:`open_regular` for the file ``label``: one message per failure.

    Parameters
    ----------
    label : str
        The file, as messages start.
    noun : str
        What the file should be (``"image file"``), as in "no such image file".
    not_regular : callable
        ``not_regular(kind) -> exception`` for a file that is not regular,
        ``kind`` from :func:`file_kind`.
    fix : str
        The other way out, as in "Make it readable or <fix>".
    missing : type, default=FileNotFoundError
        The exception for a missing file or a broken link.
    hint : str, default=""
        Appended to the messages of a missing file or a broken link.

    Returns
    -------
    refuse : callable
    """

    def refuse(error, target, mode):
        if mode is not None:
            return not_regular(file_kind(mode))
        if target is not None:
            return missing(f"{label}: broken symbolic link (its target {target!r} does not "
                           f"exist). Fix the link or {fix}.{hint}")
        if isinstance(error, FileNotFoundError):
            return missing(f"{label}: no such {noun}. Check the path.{hint}")
        if isinstance(error, PermissionError):
            return PermissionError(f"{label}: permission denied reading the {noun}. Make it "
                                   f"readable (e.g. chmod u+r) or {fix}.")
        if error.errno == errno.ELOOP:
            return OSError(errno.ELOOP, f"{label}: symbolic link loop (the link points back "
                                        f"to itself through other links). Fix the link or "
                                        f"{fix}.")
        return OSError(error.errno, f"{label}: cannot open the {noun} "
                                    f"({error.strerror or error}).")

    return refuse


def open_regular_file(path, label):
    """Open ``path`` for reading if it is a readable, non-empty regular file; else a clear error.

    Never blocks (a FIFO named like an image is refused, not read).
    """

    def not_regular(kind):
        if kind == "a directory":
            return IsADirectoryError(
                f"{label}: is a directory, not an image file. Pass image files here; "
                f"find_images (or clasp segment) searches directories."
            )
        return ValueError(f"{label}: not a regular file ({kind}). Pass an image file.")

    refuse = refusal(label, "image file", not_regular=not_regular, fix="leave the file out")
    fh, info = open_regular(path, refuse)
    if info.st_size == 0:
        fh.close()
        raise ValueError(f"{label}: the file is empty (0 bytes), not an image. "
                         f"Re-create it or leave it out.")
    return fh


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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> samples per pixel
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (x0, y0, dx, dy)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))
# Deflate cannot shrink data by more than about 1032:1 (a 258-byte match in 2 bits).
_DEFLATE_MAX_RATIO = 1032
_INFLATE_BLOCK = 1 << 20


def _png_raw_size(width, height, bit_depth, color_type, interlace):
    """Bytes of filtered scanlines a PNG of this header must decompress to."""
    bits = bit_depth * _PNG_SAMPLES.get(color_type, 4)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w = (width - x0 + dx - 1) // dx if width > x0 else 0
        h = (height - y0 + dy - 1) // dy if height > y0 else 0
        if w and h:
            total += h * (1 + (w * bits + 7) // 8)  # a filter byte per row
    return total


def _png_image_data(fh):
    """``(IHDR fields, [(offset, length), ...] of the IDAT chunks)`` of a PNG, or None.

    Reads only the chunk headers (the data is skipped); lengths are cut to what
    the file holds.
    """
    import struct

    size = os.fstat(fh.fileno()).st_size
    fh.seek(0)
    if fh.read(8) != _PNG_SIGNATURE:
        return None
    header, idat, position = None, [], 8
    while position + 8 <= size:
        fh.seek(position)
        length, kind = struct.unpack(">I4s", fh.read(8))
        start = position + 8
        if kind == b"IHDR" and length >= 13:
            header = struct.unpack(">IIBBBBB", fh.read(13))
        elif kind == b"IDAT":
            idat.append((start, max(0, min(length, size - start))))
        elif idat or kind == b"IEND":
            break  # the IDAT chunks are consecutive: the image data is over
        position = start + length + 4  # data, CRC
    return (header, idat) if header is not None else None


def _check_png_data(fh, label, *, inflate=False):
    """Refuse a PNG whose compressed image data holds less than its header says.

    Pillow decodes such a file without a word, the missing rows black. A bound
    that costs nothing (deflate shrinks data by at most about 1032:1) refuses
    a small file that claims a huge image before it is decoded; with
    ``inflate``, the data is also inflated (streamed, nothing kept) and its
    length compared with the header's.
    """
    import zlib

    position = fh.tell()
    try:
        found = _png_image_data(fh)
        if found is None:
            return
        (width, height, bit_depth, color_type, _, _, interlace), chunks = found
        expected = _png_raw_size(width, height, bit_depth, color_type, interlace)
        stored = sum(n for _, n in chunks)
        what = (f"{label}: the image data is incomplete: the header says {width} x "
                f"{height} pixels")
        fix = ("the file is damaged or truncated (a truncated download or copy?). "
               "Re-create it or leave it out.")
        if (stored + 64) * _DEFLATE_MAX_RATIO < expected:
            raise ValueError(
                f"{what}, which needs at least {expected // _DEFLATE_MAX_RATIO} bytes of "
                f"compressed data, but the file holds {stored}; {fix}")
        if not inflate:
            return
        inflate, produced = zlib.decompressobj(), 0
        for offset, length in chunks:
            fh.seek(offset)
            while length > 0 and produced < expected and not inflate.eof:
                block = fh.read(min(length, 1 << 16))
                if not block:
                    break
                length -= len(block)
                while block and produced < expected:
                    produced += len(inflate.decompress(block, _INFLATE_BLOCK))
                    block = inflate.unconsumed_tail
            if produced >= expected or inflate.eof:
                break
        if produced < expected:
            raise ValueError(
                f"{what}, but its compressed data holds only {100 * produced / expected:.1f}% "
                f"of them; {fix}")
    except (zlib.error, OSError, ValueError) as exc:
        if str(exc).startswith(label):
            raise
        return  # damaged in another way: decoding says how
    finally:
        fh.seek(position)


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
    huge image) is refused without allocating its pixels. A PNG whose
    compressed data holds fewer pixels than its header says (which Pillow
    would decode with the missing rows black) is refused too: before
    decoding when the file is far too small for its header, else after
    decoding, by inflating the data again (without keeping it) when the last
    row came out zero or the file is interlaced. Decoding takes
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
    with open_regular_file(image, label) as fh:
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
            png = im.format == "PNG"
            if png:
                _check_png_data(fh, label)  # before decoding: a size bound
            try:
                rgb = _decode_rgb(im, label)
            except MemoryError:
                raise MemoryError(
                    f"{label}: not enough memory to decode {width} x {height} pixels "
                    f"(about {7 * width * height / 1e9:.1f} GB at the peak). Lower "
                    f"max_pixels to refuse such images, or downscale the file first."
                ) from None
            if png and (im.info.get("interlace") or not any(
                    im.crop((0, height - 1, width, height)).tobytes())):
                # data that ends early leaves the last rows zero (interlaced: any pass)
                _check_png_data(fh, label, inflate=True)
            orientation = _exif_orientation(im, label)
    if orientation != 1:
        logger.debug("%s: EXIF orientation %d applied", label, orientation)
    return _orient(rgb, orientation)


# --------------------------------------------------------------------------
# checksums and all-or-nothing writes
# --------------------------------------------------------------------------


def sha256_of_stream(fh):
    """SHA-256 (hex) of what is left to read in the binary file object ``fh``."""
    h = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def file_sha256(path, *, label=None):
    """SHA-256 of a regular file's bytes, hex.

    The file is opened as :func:`load_image` opens images: a FIFO, a device, a
    directory, a broken link or an unreadable file is a clear error, never a
    hang.

    Parameters
    ----------
    path : path-like
        The file.
    label : str, default=None
        How to call the file in error messages; defaults to the path.

    Returns
    -------
    digest : str
        64 lowercase hexadecimal digits.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> _ = open(path, "w").write("abc")
    >>> file_sha256(path)[:16]
    'ba7816bf8f01cfea'
    """
    with open_regular_file(path, label or os.fspath(path)) as fh:
        return sha256_of_stream(fh)


def _write_error(path, exc):
    """An :class:`OSError` (same errno) that says what could not be written and what to do."""
    if exc.errno in DISK_FULL_ERRNOS:
        fix = ("the disk (or quota) is full: free some space or choose another output "
               "directory, then run again; the images already done are kept")
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "the output directory is not writable: fix its permissions or choose another"
    else:
        fix = "check the output directory"
    return OSError(exc.errno, f"could not write {path.name} in {path.parent} "
                              f"({exc.strerror or exc}); {fix}. No partial file was left")


def temporary_name(path, tag=None):
    """The hidden temporary file next to ``path`` that :func:`atomic_write` uses.

    Its name is ``.<name>.<random>[.<tag>].tmp``, so temporaries of one writer
    (``tag``) can be found and removed after an interruption.
    """
    path = Path(path)
    tag = f".{tag}" if tag else ""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{tag}.tmp")


def atomic_write(path, write, *, tag=None):
    """Write ``path`` through ``write(tmp)`` and :func:`os.replace`: all or nothing.

    The temporary file is created anew beside ``path`` (never through an
    existing file or link), synced to disk, then renamed; :func:`os.replace`
    swaps the name ``path`` itself, so a symbolic link there is replaced, not
    followed. On any failure, an interruption included, the temporary file is
    removed and ``path`` is left as it was.

    Parameters
    ----------
    path : path-like
        The file to write.
    write : callable
        ``write(tmp_path)`` writes the content to ``tmp_path``.
    tag : str, default=None
        Marks the temporary file's name (see :func:`temporary_name`).

    Raises
    ------
    OSError
        With the same ``errno``, saying what could not be written and what to
        do (a full disk, a read-only directory).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "note.txt"
    >>> atomic_write(path, lambda tmp: tmp.write_text("done"))
    >>> path.read_text()
    'done'
    """
    path = Path(path)
    tmp = temporary_name(path, tag)
    try:
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                             0o666))
            write(tmp)
            fd = os.open(tmp, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno is None:
                raise
            raise _write_error(path, exc) from exc
    except BaseException:  # also KeyboardInterrupt: leave no partial file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def is_regular_file(path):
    """``path`` is a regular file itself (not a symbolic link to one)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def open_nofollow(path):
    """``(binary file, os.stat_result)`` of a regular file, never through a symbolic link.

    Never blocks on a FIFO. Raises :class:`OSError` for a link, a missing file
    or anything that is not a regular file.
    """
    return open_regular(path, _open_error, follow=False)


def _open_error(error, target, mode):
    """The error of the open itself, or ``EINVAL`` for a file that is not regular."""
    return error if error is not None else OSError(errno.EINVAL, "not a regular file")


def read_json(path):
    """A JSON object from a regular file, never through a symbolic link; else ``None``.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    data : dict or None
        ``None`` when the file is missing, a link, not a regular file, not
        JSON, or not a JSON object.
    """
    try:
        fh, _ = open_nofollow(path)
    except OSError:
        return None
    try:
        with fh:
            data = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None



def check_cache_location(memory, *, what="feature cache", stacklevel=3):
    """Warn when someone else could have written the entries of a cache directory.

    :class:`joblib.Memory` entries are pickles, loaded (and able to run code)
    on a cache hit, so a cache directory is as trusted as code. The check is
    made on POSIX systems only.

    Parameters
    ----------
    memory : str, os.PathLike, joblib.Memory or None
        The cache: a directory or an object with a ``location`` attribute.
        ``None`` (no cache) is never warned about.
    what : str, default="feature cache"
        What the cache holds, for the message.
    stacklevel : int, default=3
        Passed to :func:`warnings.warn`.

    Returns
    -------
    warned : bool
        Whether a warning was issued.
    """
    if isinstance(memory, (str, os.PathLike)):
        location = os.fspath(memory)
    else:
        location = getattr(memory, "location", None)
    if location is None or not hasattr(os, "geteuid"):
        return False
    try:
        st = os.stat(location)
    except OSError:  # not created yet: joblib creates it for us, owned by us
        return False
    if st.st_uid != os.geteuid():
        who = "is owned by another user"
    elif st.st_mode & 0o022:
        who = "is writable by other users"
    else:
        return False
    warnings.warn(
        f"memory={location!r}: the {what} directory {who}. Its entries are "
        f"pickles, loaded (and able to run code) on a cache hit; use a directory that "
        f"only you can write to.",
        UserWarning,
        stacklevel=stacklevel,
    )
    return True


# --------------------------------------------------------------------------
# writing PNG files
# --------------------------------------------------------------------------

@validate_params(
    {"path": [str, os.PathLike], "array": ["array-like"],
     "compress_level": [Interval(Integral, 0, 9, closed="both")]},
    prefer_skip_nested_validation=True,
)
def save_png(path, array, *, compress_level=6):
    """Save an image or a label mask as a PNG file with Pillow.

    * ``uint8`` of shape ``(H, W, 3)``: an RGB image (8-bit RGB PNG).
    * ``uint8`` of shape ``(H, W)``: a grayscale image (8-bit PNG).
    * any other integer or boolean ``(H, W)`` array: a label mask, stored
      losslessly as an 8-bit palette PNG when its largest value is below 256
      (the pixel values are the labels; the palette gives label ``i`` the
      colour ``label_colors(256)[i]``, so the mask is visible in any viewer),
      else as a 16-bit grayscale PNG (values up to 65535). Booleans are saved
      as 0/1. Negative labels are refused.

    Read a mask back with ``np.asarray(PIL.Image.open(path))``: the values
    are the labels, whichever the kind.

    Parameters
    ----------
    path : str or path-like
        Output file; written in PNG format whatever its suffix.
    array : array-like
        The image or label mask.
    compress_level : int, default=6
        zlib level, 0 (none) to 9; 1 writes several times faster for files
        about a third larger.

    Returns
    -------
    path : pathlib.Path
        The path written.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from PIL import Image
    >>> path = os.path.join(tempfile.mkdtemp(), "mask.png")
    >>> _ = save_png(path, np.array([[0, 300], [7, 65535]]))
    >>> with Image.open(path) as im:
    ...     np.asarray(im).tolist()
    [[0, 300], [7, 65535]]
    >>> _ = save_png(path, np.array([[0, 1], [2, 2]]))
    >>> with Image.open(path) as im:
    ...     im.mode, np.asarray(im).tolist()
    ('P', [[0, 1], [2, 2]])
    """
    from PIL import Image

    path = Path(path)
    arr = np.asarray(array)
    if arr.ndim == 3:
        if arr.shape[2] != 3:
            raise ValueError(
                f"array: expected an RGB image of shape (H, W, 3) or a 2-D mask; "
                f"got shape {arr.shape}."
            )
        if arr.dtype != np.uint8:
            raise TypeError(
                f"array: an RGB image must be uint8; got dtype {arr.dtype}. Convert "
                f"it with sklearn_clasp.image.as_rgb_uint8 first."
            )
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"array: the image is empty (shape {arr.shape}).")
        Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG",
                                                        compress_level=compress_level)
        return path
    if arr.ndim != 2:
        raise ValueError(
            f"array: expected an RGB image (H, W, 3) or a 2-D grayscale image or "
            f"label mask (H, W); got shape {arr.shape}."
        )
    if arr.size == 0:
        raise ValueError(f"array: the mask is empty (shape {arr.shape}).")
    if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(
            f"array: save_png writes uint8 images and integer label masks; got dtype "
            f"{arr.dtype}. Convert float images with "
            f"sklearn_clasp.image.as_rgb_uint8, or labels with labels.astype(int)."
        )
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise ValueError(
            f"array: label masks must be non-negative to be saved as PNG; the "
            f"smallest label is {lo}. Shift or relabel the mask (e.g. "
            f"np.unique(mask, return_inverse=True)) first."
        )
    if hi > 65535:
        raise ValueError(
            f"array: the largest label is {hi}, more than a 16-bit PNG holds "
            f"(65535). Relabel the mask to consecutive labels first."
        )
    if arr.dtype == np.uint8:  # a grayscale image
        im = Image.fromarray(np.ascontiguousarray(arr))
    elif hi < 256:
        from .visualize import label_colors

        im = Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)), mode="P")
        im.putpalette(label_colors(256).ravel().tolist())
    else:
        im = Image.fromarray(np.ascontiguousarray(arr.astype("<u2")))
    im.save(path, format="PNG", compress_level=compress_level)
    return path


# --------------------------------------------------------------------------
# finding images
# --------------------------------------------------------------------------

#: File suffixes taken as images when searching directories and glob patterns
#: (files named explicitly are taken whatever their suffix).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                  ".ppm", ".pgm", ".pbm", ".pnm")


_GLOB_CHARS = frozenset("*?[")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_MAX_NAME = 120
# Longest output name accepted from a caller's ImageInput: with "_overlay.png" appended
# it stays well under the 255-byte limit of a file name.
_MAX_GIVEN_NAME = 200


class ImageInput(NamedTuple):
    """One image of a collection: where it is and the stem of its outputs."""

    path: Path
    """The image file."""
    name: str
    """Output stem: safe characters only (``[A-Za-z0-9._-]``), unique in the collection."""


def _short_hash(text, n=8):
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:n]


def _ascii(text):
    """Accents folded away (``"café"`` -> ``"cafe"``); undecodable bytes kept as they are."""
    folded = unicodedata.normalize("NFKD", text)
    return "".join(c for c in folded if not unicodedata.combining(c))


def _safe_name(parts):
    """Join path parts into an output stem of safe characters that stays in its folder."""
    cleaned = [_UNSAFE.sub("_", _ascii(p)) for p in parts if p not in ("", ".")]
    name = "__".join(cleaned)
    name = re.sub(r"^\.+", "_", name) or "image"  # no hidden files, no '.' or '..'
    if not re.search(r"[A-Za-z0-9]", name):  # nothing readable left (e.g. "写真/猫")
        name = f"image-{_short_hash('/'.join(parts))}"
    if len(name) > _MAX_NAME:
        name = f"{name[: _MAX_NAME - 9]}-{_short_hash(name)}"
    return name


def _is_image_file(path):
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _walk(root, recursive, excluded=None):
    """Image files under a directory (hidden files and folders skipped), sorted.

    A directory that cannot be listed is an error when it is ``root`` and a
    logged warning below it (its images are left out). The tree of
    ``excluded`` (a real path) is not entered.
    """
    found = []

    def unreadable(exc):
        if os.path.normpath(exc.filename or "") == os.path.normpath(root):
            raise PermissionError(
                f"find_images: cannot list the directory {os.fspath(root)!r} "
                f"({exc.strerror or exc}). Make it readable or leave it out."
            ) from None
        logger.warning("cannot list the directory %r (%s); its images are left out",
                       exc.filename, exc.strerror or exc)

    for folder, dirs, files in os.walk(root, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        if excluded is not None:
            dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(folder, d)) != excluded]
        for f in sorted(files):
            path = Path(folder, f)
            if _is_image_file(path):
                found.append(path)
    return found


def _expand(item, recursive, excluded=None):
    """``[(path, name parts), ...]`` for one input."""
    text = os.path.expanduser(os.fspath(item))
    path = Path(text)
    if path.is_dir():
        return [(p, p.relative_to(path).with_suffix("").parts)
                for p in _walk(path, recursive, excluded)]
    if path.is_file() or (os.path.lexists(path) and not _GLOB_CHARS & set(text)):
        # a file named explicitly, or something else there (a broken link, a link loop,
        # a pipe): taken, so that loading it reports exactly what is wrong
        return [(path, (path.stem,))]
    if _GLOB_CHARS & set(text):
        out = []
        for match in sorted(glob.glob(text, recursive=recursive)):
            m = Path(match)
            if m.is_dir():
                out.extend((p, p.relative_to(m).with_suffix("").parts)
                           for p in _walk(m, recursive, excluded))
            elif m.is_file() and _is_image_file(m):
                out.append((m, (m.stem,)))
        return out
    return []


def find_images(inputs, *, recursive=True, exclude=None):
    """Expand files, directories and glob patterns into a list of images.

    Directories are searched for files whose suffix is one of
    :data:`IMAGE_SUFFIXES` (in their sub-directories too when ``recursive``),
    skipping hidden files and folders; glob patterns (``*``, ``?``, ``[...]``,
    and ``**`` when ``recursive``) keep the image files they match and search
    the directories they match; files named explicitly are taken whatever
    their suffix. The same file reached twice is listed once.

    Each image gets an output ``name``, the stem of its output files: its path
    relative to the directory searched (path separators become ``"__"``), or
    the file stem for files and glob matches, with accents dropped
    (``"café"`` -> ``"cafe"``), every other character outside
    ``[A-Za-z0-9._-]`` replaced by ``"_"``, no leading dot, and names longer
    than 120 characters shortened with a hash, so outputs always land inside
    the output directory. Names that would collide (also when only their case
    differs) each get a short hash of the file's resolved path appended.

    The tree of ``exclude`` is left out before any name is made, so that an
    output directory inside the inputs changes neither the collection nor its
    names.

    Parameters
    ----------
    inputs : str, path-like, or iterable of str or path-like
        Image files, directories and glob patterns.
    recursive : bool, default=True
        Search sub-directories, and let ``**`` in glob patterns span them.
    exclude : str or path-like, default=None
        A directory whose files (links resolved) are never taken, and that is
        not searched: :func:`~sklearn_clasp.collection.segment_collection`
        passes its output directory.

    Returns
    -------
    images : list of ImageInput
        ``(path, name)`` pairs, sorted by path.

    Raises
    ------
    FileNotFoundError
        If an input matches no image (a missing file, a directory without
        image files, a pattern that matches nothing, or only files inside
        ``exclude``); the message lists every such input, and says when its
        images were left out because they lie inside ``exclude``.
    PermissionError
        If a directory given as an input cannot be listed.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> for rel in ["cats/a.png", "dogs/a.png", "dogs/b c.jpg", "notes.txt"]:
    ...     (root / rel).parent.mkdir(exist_ok=True)
    ...     _ = (root / rel).write_bytes(b"")
    >>> [name for _, name in find_images(root)]
    ['cats__a', 'dogs__a', 'dogs__b_c']

    Files with the same stem from different folders get a hash appended:

    >>> [name[:2] for _, name in find_images(str(root / "*" / "a.png"))]
    ['a-', 'a-']
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs:
        raise ValueError("find_images: no inputs given; pass image files, directories or "
                         "glob patterns.")
    excluded = None if exclude is None else os.path.realpath(os.fspath(exclude))
    found, missing, inside, seen = [], [], [], set()
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)):
            shown = (f"an array of shape {item.shape}" if isinstance(item, np.ndarray)
                     else f"{type(item).__name__} ({reprlib.repr(item)})")
            raise TypeError(f"find_images: inputs must be paths or glob patterns; got "
                            f"{shown}. Segment an image array with clasp_one(pipeline, "
                            f"image), or a list of them with pipeline.fit_predict(images).")
        matches = _expand(item, recursive, excluded)
        if excluded is not None:
            kept = [(p, parts) for p, parts in matches if not is_inside(p, excluded)]
            if matches and not kept:
                inside.append((os.fspath(item), len(matches)))
                continue
            matches = kept
            if not matches and _inside_tree(item, excluded):
                inside.append((os.fspath(item), 0))
                continue
        if not matches:
            missing.append(os.fspath(item))
        for path, parts in matches:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                found.append((path, _safe_name(parts), key))
    if missing or inside:
        problems = []
        if missing:
            problems.append(
                f"no image matches {', '.join(repr(m) for m in missing)}. Check the path "
                f"exists; directories and glob patterns only match files ending in "
                f"{', '.join(IMAGE_SUFFIXES)}")
        if inside:
            problems.append(
                f"{', '.join(repr(m) for m, _ in inside)} "
                f"{'lies' if len(inside) == 1 else 'lie'} inside {os.fspath(exclude)!r} and "
                f"{'is' if len(inside) == 1 else 'are'} left out "
                f"({sum(n for _, n in inside)} image file(s)): an output directory is "
                f"never read as input. Give inputs outside it, or another output directory")
        raise FileNotFoundError(f"find_images: {'; '.join(problems)}.")
    groups = Counter(name.casefold() for _, name, _ in found)
    images = [
        ImageInput(path, f"{name}-{_short_hash(key)}" if groups[name.casefold()] > 1 else name)
        for path, name, key in found
    ]
    images.sort(key=lambda im: (str(im.path), im.name))
    return images



def check_image_inputs(images, *, who="segment_collection"):
    """Refuse :class:`ImageInput` names that could leave the output directory or collide.

    Parameters
    ----------
    images : list of ImageInput
        Inputs named by a caller (:func:`find_images` names are always safe).
    who : str, default="segment_collection"
        The caller, named in the error.

    Raises
    ------
    ValueError
        If a name has characters outside ``[A-Za-z0-9._-]``, starts with a
        dot, is longer than 200 characters, or is given to two images (also
        when only the case differs).
    """
    bad = [im.name for im in images
           if not isinstance(im.name, str) or not _SAFE.fullmatch(im.name)
           or len(im.name) > _MAX_GIVEN_NAME]
    if bad:
        raise ValueError(
            f"{who}: unsafe output name(s) {bad[:5]}: a name must be made of "
            f"[A-Za-z0-9._-], not start with '.', and have at most {_MAX_GIVEN_NAME} "
            f"characters. Let find_images name the inputs (pass the paths, or its list)."
        )
    seen = Counter(im.name.casefold() for im in images)
    dup = sorted(name for name, n in seen.items() if n > 1)
    if dup:
        raise ValueError(
            f"{who}: output name(s) {dup[:5]} given to more than one image "
            f"(names that differ only in case collide too); their outputs would overwrite "
            f"each other. Give each image its own name, or let find_images name them."
        )


def is_inside(path, folder):
    """Whether ``path``, links resolved, lies in the directory ``folder``."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


def _inside_tree(item, folder):
    """Whether an input (a path, or the fixed part of a glob pattern) lies in ``folder``."""
    text = os.path.expanduser(os.fspath(item))
    if _GLOB_CHARS & set(text):
        fixed = []
        for part in Path(text).parts:
            if _GLOB_CHARS & set(part):
                break
            fixed.append(part)
        text = os.path.join(*fixed) if fixed else "."
    return is_inside(text, folder)

# --------------------------------------------------------------------------
# label files
# --------------------------------------------------------------------------

_LABEL_SUFFIXES = (".png", ".mat")


def find_label_files(labels_dir):
    """Ground-truth files under a directory, by stem.

    Parameters
    ----------
    labels_dir : path-like
        Searched recursively for ``*.png`` and ``*.mat`` files.

    Returns
    -------
    labels : dict of str -> Path
        Sorted by stem. A stem found twice keeps the first path (sorted) and
        logs a warning.
    """
    found = {}
    for path in sorted(Path(labels_dir).rglob("*")):
        if path.is_file() and path.suffix.lower() in _LABEL_SUFFIXES:
            if path.stem in found:
                logger.warning("label stem %r found twice (%s, %s); using the first",
                               path.stem, found[path.stem], path)
                continue
            found[path.stem] = path
    return dict(sorted(found.items()))


def find_mask_files(masks_dir):
    """Predicted masks in a directory, by the stem of their image.

    ``<stem>_mask.png`` (as ``clasp segment`` writes) is preferred over
    ``<stem>.png``; ``*_overlay.png`` files are skipped. Not recursive.

    Parameters
    ----------
    masks_dir : path-like

    Returns
    -------
    masks : dict of str -> Path
    """
    plain, suffixed = {}, {}
    for path in sorted(Path(masks_dir).glob("*.png")):
        if not path.is_file() or path.stem.endswith("_overlay"):
            continue
        if path.stem.endswith("_mask"):
            suffixed[path.stem[: -len("_mask")]] = path
        else:
            plain[path.stem] = path
    return dict(sorted({**plain, **suffixed}.items()))


def _read_png_labels(path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: not a readable PNG label map ({exc})") from None
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if arr.ndim == 3:
        # colour-coded labels: one id per distinct colour (alpha ignored)
        rgb = arr[..., :3].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        _, ids = np.unique(code, return_inverse=True)
        return ids.reshape(code.shape).astype(np.int64)
    return arr.astype(np.int64)


def _read_mat_labels(path):
    from scipy.io import loadmat

    try:
        data = loadmat(path)
    except Exception as exc:  # scipy raises several kinds for bad files
        raise ValueError(f"{path}: not a readable .mat file ({exc})") from None
    if "groundTruth" not in data:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise ValueError(f"{path}: no 'groundTruth' variable (BSDS layout); it has {keys}")
    gt = data["groundTruth"]
    segmentations = []
    try:
        for i in range(gt.shape[1]):
            segmentations.append(np.asarray(gt[0, i]["Segmentation"][0, 0], dtype=np.int64))
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: groundTruth is not in the BSDS layout "
                         f"(groundTruth[0, i]['Segmentation'][0, 0]): {exc}") from None
    if not segmentations:
        raise ValueError(f"{path}: groundTruth holds no segmentation")
    return segmentations


def read_label_file(path):
    """Read one ground-truth file into a list of label maps.

    Parameters
    ----------
    path : path-like
        A PNG label map (palette, grayscale or 16-bit: the pixel values are the
        labels; an RGB map gets one label per distinct colour) or a BSDS
        ``.mat`` file (``groundTruth[0, i]["Segmentation"][0, 0]``, one map per
        human annotator).

    Returns
    -------
    label_maps : list of ndarray of shape (H, W), dtype int64
        One per annotator (a single one for a PNG).

    Raises
    ------
    ValueError
        If the file cannot be read or has an unknown layout.
    """
    path = Path(path)
    if path.suffix.lower() == ".mat":
        return _read_mat_labels(path)
    return [_read_png_labels(path)]


def read_mask(path):
    """Read a predicted mask PNG (as :func:`save_png` writes it) into labels.

    Parameters
    ----------
    path : path-like
        A single-channel PNG: palette, 8-bit or 16-bit grayscale; the pixel
        values are the labels.

    Returns
    -------
    mask : ndarray of shape (H, W), dtype int64

    Raises
    ------
    ValueError
        If the file is not a readable single-channel PNG.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: not a readable mask PNG ({exc})") from None
    if arr.ndim != 2:
        raise ValueError(f"{path}: a mask must be a single-channel integer PNG, got "
                         f"shape {arr.shape}")
    return arr.astype(np.int64)
