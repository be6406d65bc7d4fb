"""load_image on hostile and unusual files: every mode to RGB, EXIF orientation, the
decompression-bomb guard, bounded memory, and a clear error for every broken file."""

import errno
import io
import logging
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from sklearn_clasp import HandcraftedPatchEmbedder, make_clasp_pipeline
from sklearn_clasp.io import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLargeError, load_image
from sklearn_clasp.pipeline import clasp_one

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def _rgb(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _few_colours(h=20, w=30):
    """An RGB image with 4 colours (a palette holds them exactly)."""
    colours = np.array([[250, 10, 10], [10, 200, 30], [20, 30, 240], [120, 120, 120]],
                       dtype=np.uint8)
    index = (np.arange(h)[:, None] // 5 + np.arange(w)[None, :] // 8) % 4
    return colours[index]


def png_claiming(path, width, height):
    """A valid 8 x 8 grayscale PNG whose header claims ``width x height`` pixels."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR CRC
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------
# modes
# --------------------------------------------------------------------------


def test_rgb_png_and_jpeg_are_read_as_they_are(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out, rgb)
    assert out.flags.writeable and out.flags.c_contiguous
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    with Image.open(tmp_path / "a.jpg") as im:
        np.testing.assert_array_equal(load_image(tmp_path / "a.jpg"), np.asarray(im))


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_and_bilevel_are_repeated_over_three_channels(tmp_path, mode):
    gray = _rgb()[:, :, 0]
    if mode == "1":
        gray = np.where(gray > 127, 255, 0).astype(np.uint8)
    Image.fromarray(gray).convert(mode).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "P-transparency"])
def test_alpha_and_palette_give_the_colours_with_alpha_dropped(tmp_path, mode):
    rgb = _few_colours()
    im = Image.fromarray(rgb)
    if mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(0)  # fully transparent: the colours are still what is segmented
    elif mode == "LA":
        im = im.convert("LA")
        rgb = np.repeat(np.asarray(Image.fromarray(_few_colours()).convert("L"))[:, :, None],
                        3, axis=2)
    elif mode == "P":
        im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    else:
        im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
        im.info["transparency"] = 0
    path = tmp_path / "x.png"
    im.save(path, **({"transparency": 0} if mode == "P-transparency" else {}))
    with Image.open(path) as check:
        assert check.mode == ("P" if mode.startswith("P-") else mode)
    np.testing.assert_array_equal(load_image(path), rgb)


def test_16_bit_grayscale_is_scaled_by_1_over_257(tmp_path):
    values = np.array([[0, 128, 129, 257, 1000], [30000, 65279, 65534, 65535, 200]],
                      dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I;16")
    out = load_image(tmp_path / "g16.png")
    expected = np.floor(values / 257.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out[:, :, 2], expected)
    # a dark 16-bit image stays dark: its bit depth decides, not its largest value
    Image.fromarray(np.full((3, 4), 200, dtype=np.uint16)).save(tmp_path / "dark.png")
    assert load_image(tmp_path / "dark.png").max() == 1


def test_32_bit_integer_images_are_scaled_by_their_range(tmp_path):
    eight = np.array([[0, 17, 255]], dtype=np.int32)
    Image.fromarray(eight, mode="I").save(tmp_path / "i8.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "i8.tif")[:, :, 1], [[0, 17, 255]])
    sixteen = np.array([[0, 257, 65535, -5]], dtype=np.int32)
    Image.fromarray(sixteen, mode="I").save(tmp_path / "i16.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "i16.tif")[:, :, 1], [[0, 1, 255, 0]])


def test_float_images_in_0_1_are_scaled_and_others_clipped(tmp_path):
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(unit, mode="F").save(tmp_path / "f1.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "f1.tif")[:, :, 0], [[0, 128, 255]])
    wide = np.array([[-3.0, 100.2, 300.0]], dtype=np.float32)
    Image.fromarray(wide, mode="F").save(tmp_path / "f255.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "f255.tif")[:, :, 0], [[0, 100, 255]])
    Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32), mode="F").save(
        tmp_path / "nan.tif")
    with pytest.raises(ValueError, match="nan.tif: the image contains NaN"):
        load_image(tmp_path / "nan.tif")


def test_cmyk_jpeg_is_converted_like_pillow_does(tmp_path):
    Image.fromarray(_few_colours()).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
        expected = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(load_image(tmp_path / "c.jpg"), expected)


def test_multi_frame_gif_gives_its_first_frame(tmp_path):
    first, second = _few_colours(), _few_colours()[::-1].copy()
    frames = [Image.fromarray(first).convert("P", palette=Image.Palette.ADAPTIVE, colors=4),
              Image.fromarray(second).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(load_image(tmp_path / "anim.gif"), first)


def test_large_image_strips_assemble_exactly(tmp_path, monkeypatch):
    """Decoding goes strip by strip; the strips must join without a seam."""
    from sklearn_clasp import io as image_module

    monkeypatch.setattr(image_module, "_STRIP_PIXELS", 7 * 30)  # 7-row strips
    rgb = _rgb(50, 30)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        expected = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), expected)


# --------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------


def _with_orientation(path, rgb, orientation, fmt):
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, format=fmt, exif=exif.tobytes(), **({"quality": 100} if fmt == "JPEG"
                                                        else {}))
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_displayed_image(tmp_path, orientation):
    rgb = _rgb(5, 7)
    path = _with_orientation(tmp_path / "o.png", rgb, orientation, "PNG")
    with Image.open(path) as im:
        displayed = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    out = load_image(path)
    np.testing.assert_array_equal(out, displayed)
    assert out.shape == ((7, 5, 3) if orientation >= 5 else (5, 7, 3))


def test_mask_of_an_exif_rotated_photo_matches_its_displayed_orientation(tmp_path):
    rgb = np.zeros((42, 70, 3), dtype=np.uint8)
    rgb[:, :35] = (230, 40, 40)  # left half red, right half black (as stored)
    path = _with_orientation(tmp_path / "rot.jpg", rgb, 6, "JPEG")  # displayed rotated 90
    pipe = make_clasp_pipeline("handcrafted", short_side=None, refine="nearest",
                               random_state=0)
    mask, record = clasp_one(pipe, str(path))
    assert mask.shape == (70, 42)
    # displayed: red on top, black below (rotated 90 degrees clockwise)
    assert record.image[5, 20, 0] > 200 and record.image[65, 20, 0] < 30
    assert mask[5, 20] != mask[65, 20]


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_malformed_or_invalid_exif_is_ignored_with_a_warning(tmp_path, caplog):
    rgb = _rgb(5, 7)
    path = _with_orientation(tmp_path / "bad.jpg", rgb, 9, "JPEG")
    with Image.open(path) as im:
        expected = np.asarray(im)
    with caplog.at_level(logging.WARNING, logger="sklearn_clasp.image"):
        np.testing.assert_array_equal(load_image(path), expected)
    assert "invalid EXIF orientation 9" in caplog.text
    # an EXIF block that does not parse
    Image.fromarray(rgb).save(tmp_path / "junk.jpg", exif=b"Exif\x00\x00MM\x00*garbage",
                              quality=100)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sklearn_clasp.image"):
        assert load_image(tmp_path / "junk.jpg").shape == (5, 7, 3)


# --------------------------------------------------------------------------
# size limits and memory
# --------------------------------------------------------------------------


def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    bomb = png_claiming(tmp_path / "bomb.png", 100_000, 100_000)  # 10^10 pixels, 70 bytes
    with pytest.raises(ImageTooLargeError) as err:
        load_image(bomb)  # the default limit is on
    message = str(err.value)
    assert "bomb.png" in message and "10000000000 pixels" in message
    assert f"limit of {DEFAULT_MAX_IMAGE_PIXELS} pixels" in message
    assert "max_pixels=N" in message and "--max-image-pixels" in message
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's global is left alone

    # under Pillow's own limit, refused by ours, with the size from the header
    big = png_claiming(tmp_path / "big.png", 12_000, 9_000)
    with pytest.raises(ImageTooLargeError, match=r"big.png: 12000 x 9000 pixels \(108000000 "
                                                 r"pixels\) is more than the limit of 1000"):
        load_image(big, max_pixels=1000)
    assert isinstance(err.value, ValueError)


def test_pixel_limit_is_inclusive_and_configurable(tmp_path):
    Image.fromarray(_rgb(10, 10)).save(tmp_path / "ten.png")
    assert load_image(tmp_path / "ten.png", max_pixels=100).shape == (10, 10, 3)
    with pytest.raises(ImageTooLargeError, match="10 x 10 pixels"):
        load_image(tmp_path / "ten.png", max_pixels=99)
    assert load_image(tmp_path / "ten.png", max_pixels=None).shape == (10, 10, 3)
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        load_image(tmp_path / "ten.png", max_pixels=0)
    # arrays are already in memory: not checked
    assert load_image(_rgb(10, 10), max_pixels=1).shape == (10, 10, 3)


def test_beyond_pillows_own_limit_the_message_says_to_raise_it(tmp_path):
    bomb = png_claiming(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(ImageTooLargeError, match="PIL.Image.MAX_IMAGE_PIXELS"):
        load_image(bomb, max_pixels=None)


def test_a_malformed_file_cannot_allocate_beyond_the_limit(tmp_path):
    """A header within the limit but no pixel data: a clear error, memory bounded."""
    lying = png_claiming(tmp_path / "lying.png", 2000, 1000)
    with pytest.raises(ValueError, match="lying.png: the image data is incomplete: .*the file "
                                         "is damaged or truncated"):
        load_image(lying)


@pytest.mark.parametrize("orientation", [1, 6])
def test_loading_holds_about_one_copy_of_the_pixels(tmp_path, orientation):
    """Decoded strip by strip into the result: the arrays allocated peak at about one
    3-byte-a-pixel copy (two when an EXIF rotation is applied)."""
    h, w = 1500, 2000
    rgb = np.empty((h, w, 3), dtype=np.uint8)
    rgb[...] = (np.arange(w, dtype=np.uint8)[None, :, None] // 8)
    path = _with_orientation(tmp_path / "big.jpg", rgb, orientation, "JPEG")
    tracemalloc.start()
    try:
        out = load_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    copies = 2 if orientation != 1 else 1
    assert out.shape == ((w, h, 3) if orientation == 6 else (h, w, 3))
    assert peak < copies * out.nbytes + 20e6, (peak, out.nbytes)


# --------------------------------------------------------------------------
# broken files: each a clear error naming the file and the fix
# --------------------------------------------------------------------------


def _jpeg_bytes():
    buf = io.BytesIO()
    Image.fromarray(_rgb(40, 60)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png_bytes():
    buf = io.BytesIO()
    Image.fromarray(_rgb(40, 60)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, content, error, message",
    [
        ("truncated.jpg", lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2], ValueError,
         "could not decode the image .* damaged or incomplete"),
        ("truncated.png", lambda: _png_bytes()[: len(_png_bytes()) // 2], ValueError,
         "could not decode the image .* damaged or incomplete"),
        ("crc.png", lambda: _png_bytes()[:60] + b"\x00\x00" + _png_bytes()[62:], ValueError,
         "could not decode the image"),
        ("text.png", lambda: b"just some text, not a picture\n", ValueError,
         "not a readable image file .* Check the file is a complete image"),
        ("empty.jpg", lambda: b"", ValueError, r"the file is empty \(0 bytes\)"),
        ("header-only.png", lambda: _png_bytes()[:8], ValueError, "not a readable image file"),
    ],
)
def test_broken_files_raise_clear_errors(tmp_path, name, content, error, message):
    path = tmp_path / name
    path.write_bytes(content())
    with pytest.raises(error, match=message) as err:
        load_image(path)
    assert str(err.value).startswith(str(path))


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _adam7_rows(image, passes=7):
    """The filtered scanlines (filter 0) of an RGB image, interlaced with Adam7."""
    out = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4),
                           (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))[:passes]:
        sub = image[y0::dy, x0::dx]
        if sub.size:
            out += b"".join(b"\0" + row.tobytes() for row in sub)
    return out


def png_from_rows(width, height, rows, *, interlace=0):
    """An RGB PNG of this header whose zlib stream is complete and holds ``rows``."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))


def test_png_whose_data_ends_early_is_refused_at_once_from_its_size(tmp_path):
    """A tiny PNG claiming 13000 x 13000 pixels: Pillow decodes it as black (3.3 GB, half a
    minute through a run); it is refused before any pixel is allocated."""
    path = tmp_path / "bomb.png"
    row = b"\0" * (1 + 3 * 13000)
    path.write_bytes(png_from_rows(13000, 13000, row * 2))  # 2 of 13000 rows
    assert path.stat().st_size < 1000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"bomb.png: the image data is incomplete: the "
                                             r"header says 13000 x 13000 pixels, which needs "
                                             r"at least \d+ bytes of compressed data, but "
                                             r"the file holds \d+; the file is damaged or "
                                             r"truncated"):
            load_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10e6


@pytest.mark.parametrize("interlace", [0, 1], ids=["plain", "adam7"])
def test_png_whose_complete_stream_holds_too_few_rows_is_refused(tmp_path, interlace):
    """Enough data for the size bound, but a zlib stream that ends at a row boundary (a
    pass boundary when interlaced: the odd rows, the last pass, missing)."""
    image = _rgb(300, 400, seed=3)
    if interlace:
        rows, cut = _adam7_rows(image), _adam7_rows(image, passes=6)
    else:
        rows = b"".join(b"\0" + r.tobytes() for r in image)
        cut = rows[: len(rows) // 2]
    whole, short = tmp_path / "whole.png", tmp_path / "short.png"
    whole.write_bytes(png_from_rows(400, 300, rows, interlace=interlace))
    short.write_bytes(png_from_rows(400, 300, cut, interlace=interlace))
    np.testing.assert_array_equal(load_image(whole), image)  # the same writer, complete
    with Image.open(short) as im:
        im.load()  # Pillow takes it as it is
    with pytest.raises(ValueError, match=r"short.png: the image data is incomplete: the "
                                         r"header says 400 x 300 pixels, but its compressed "
                                         r"data holds only 50\.0% of them; the file is damaged "
                                         r"or truncated"):
        load_image(short)


def test_a_valid_png_with_black_last_rows_is_read(tmp_path):
    image = _rgb(50, 60, seed=4)
    image[-10:] = 0
    path = tmp_path / "black-bottom.png"
    Image.fromarray(image).save(path)
    np.testing.assert_array_equal(load_image(path), image)


def test_postscript_is_never_handed_to_ghostscript(tmp_path):
    eps = tmp_path / "drawing.png"  # PostScript, whatever its name
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
                    b"newpath 0 0 moveto 10 10 lineto stroke\n")
    with Image.open(eps) as im:  # Pillow itself would take it (and run Ghostscript on load)
        assert im.format == "EPS"
    with pytest.raises(ValueError, match="drawing.png: not a readable image file"):
        load_image(eps)


def test_missing_file_broken_link_and_link_loop(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png: no such image file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(FileNotFoundError, match="dangling.png: broken symbolic link"):
        load_image(tmp_path / "dangling.png")
    (tmp_path / "loop1.png").symlink_to("loop2.png")
    (tmp_path / "loop2.png").symlink_to("loop1.png")
    with pytest.raises(OSError, match="loop1.png: symbolic link loop") as err:
        load_image(tmp_path / "loop1.png")
    assert err.value.errno == errno.ELOOP


def test_directory_and_fifo_are_refused_without_blocking(tmp_path):
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(IsADirectoryError, match="folder.png: is a directory"):
        load_image(tmp_path / "folder.png")
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    os.mkfifo(tmp_path / "pipe.png")  # opening it for reading would wait for a writer
    with pytest.raises(ValueError, match=r"pipe.png: not a regular file \(a named pipe"):
        load_image(tmp_path / "pipe.png")


def test_socket_is_named_as_one(tmp_path):
    """A socket cannot even be opened (ENXIO): it is still said to be a socket."""
    socket = pytest.importorskip("socket")
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix sockets on this platform")
    path = tmp_path / "s.png"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(ValueError, match=r"s.png: not a regular file \(a socket\)"):
            load_image(path)


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_unreadable_file(tmp_path, monkeypatch, how):
    path = tmp_path / "secret.png"
    Image.fromarray(_rgb()).save(path)
    if how == "chmod":
        if ROOT:
            pytest.skip("running as root: file permissions do not stop root from reading")
        path.chmod(0)
    else:  # as the kernel answers a user without read permission
        real_open = os.open

        def denying_open(p, flags, *args, **kwargs):
            if os.fspath(p) == str(path):
                raise PermissionError(errno.EACCES, "Permission denied", str(p))
            return real_open(p, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", denying_open)
    with pytest.raises(PermissionError, match="secret.png: permission denied .* chmod"):
        load_image(path)


def test_long_and_non_ascii_file_names(tmp_path):
    rgb = _rgb()
    long_name = "é" * 120 + ".png"  # 244 bytes in UTF-8, near the 255-byte limit
    Image.fromarray(rgb).save(tmp_path / long_name)
    np.testing.assert_array_equal(load_image(tmp_path / long_name), rgb)
    undecodable = os.fsdecode(b"caf\xe9-\xff.png")  # not UTF-8: surrogate escapes
    Image.fromarray(rgb).save(os.path.join(tmp_path, undecodable))
    np.testing.assert_array_equal(load_image(os.path.join(tmp_path, undecodable)), rgb)
    (tmp_path / "名前.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="名前.jpg: not a readable image file"):
        load_image(tmp_path / "名前.jpg")


# --------------------------------------------------------------------------
# the estimators raise the same errors
# --------------------------------------------------------------------------


def test_estimators_raise_clear_errors_for_bad_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    png_claiming(tmp_path / "bomb.png", 100_000, 100_000)
    pipe = make_clasp_pipeline("handcrafted", short_side=None, refine="nearest",
                               random_state=0)
    with pytest.raises(ValueError, match="broken.png: not a readable image file"):
        pipe.fit_predict([str(tmp_path / "broken.png")])
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        HandcraftedPatchEmbedder(short_side=None).fit(None).transform([tmp_path / "bomb.png"])
    with pytest.raises(FileNotFoundError, match="nowhere.png: no such image file"):
        pipe.fit_predict([str(tmp_path / "nowhere.png")])


@pytest.mark.parametrize("shape", [(1, 1), (5, 9), (13, 13), (600, 8), (8, 600)])
def test_tiny_and_extreme_aspect_files_are_segmented(tmp_path, shape):
    rgb = _few_colours(*shape)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    pipe = make_clasp_pipeline("handcrafted", short_side=None, refine="nearest",
                               random_state=0)
    (mask,) = pipe.fit_predict([str(tmp_path / "x.png")])
    assert mask.shape == shape


def test_constant_file_is_one_segment(tmp_path):
    Image.fromarray(np.full((56, 70, 3), 90, dtype=np.uint8)).save(tmp_path / "flat.png")
    pipe = make_clasp_pipeline("handcrafted", short_side=None, random_state=0)
    mask, record = clasp_one(pipe, str(tmp_path / "flat.png"))
    assert record.info["n_clusters"] == 1
    assert np.all(mask == 0)
