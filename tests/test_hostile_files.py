"""A directory of good and broken files through ``clasp segment``: every good image gets
complete outputs, every bad one a one-line reason, the exit status says some failed,
and no process is left behind."""

import io
import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sklearn_clasp.datasets import make_shapes_image
from _procs import no_process_left

REPO = Path(__file__).resolve().parents[1]


def _shapes(h, w, seed=0):
    image, _ = make_shapes_image(h, w, n_shapes=1 + seed % 3, noise=3.0, random_state=seed)
    return image


def _jpeg(image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png(image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def _bomb_png():
    """A 70-byte PNG whose header claims 100000 x 100000 pixels."""
    data = bytearray(_png(np.zeros((8, 8), dtype=np.uint8)))
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _good_files(root):
    """Write the good files; return {relative path: (output name, displayed (h, w))}."""
    good = {}

    def save(rel, image, name, shape=None, **kwargs):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **kwargs)
        good[rel] = (name, shape or (image.height, image.width))

    save("rgb.png", Image.fromarray(_shapes(56, 70)), "rgb")
    save("sub/rgb.png", Image.fromarray(_shapes(56, 70, 1)), "sub__rgb")
    save("photo.jpg", Image.fromarray(_shapes(70, 84, 2)), "photo", quality=90)
    save("gray.png", Image.fromarray(_shapes(56, 56, 3)).convert("L"), "gray")
    save("gray16.png", Image.fromarray(_shapes(42, 56, 4)[:, :, 0].astype(np.uint16) * 257),
         "gray16")
    rgba = Image.fromarray(_shapes(56, 70, 5)).convert("RGBA")
    rgba.putalpha(128)
    save("rgba.png", rgba, "rgba")
    palette = Image.fromarray(_shapes(56, 70, 6)).convert("P", palette=Image.Palette.ADAPTIVE,
                                                          colors=8)
    save("palette.png", palette, "palette", transparency=0)
    save("cmyk.jpg", Image.fromarray(_shapes(56, 70, 7)).convert("CMYK"), "cmyk")
    rotated = Image.fromarray(_shapes(42, 84, 8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # displayed turned 90 degrees: 84 x 42
    save("rotated.jpg", rotated, "rotated", shape=(84, 42), exif=exif.tobytes())
    save("depth.tif", Image.fromarray(_shapes(42, 42, 9)[:, :, 1].astype(np.float32) / 255,
                                      mode="F"), "depth")
    save("tiny.png", Image.fromarray(np.full((1, 1, 3), 200, dtype=np.uint8)), "tiny")
    save("small.png", Image.fromarray(_shapes(5, 9)), "small")
    save("wide.png", Image.fromarray(_shapes(20, 2000, 1)), "wide")
    save("flat.png", Image.fromarray(np.full((56, 70, 3), 77, dtype=np.uint8)), "flat")
    save("café.png", Image.fromarray(_shapes(56, 56, 2)), "cafe")
    save("l" * 200 + ".png", Image.fromarray(_shapes(42, 42, 3)), None)
    frames = [Image.fromarray(_shapes(42, 56, s)).convert("P") for s in (0, 1)]
    save("anim.gif", frames[0], "anim", save_all=True, append_images=frames[1:])
    return good


def _bad_files(root):
    """Write the broken files; return {output name: words its reason must contain}."""
    jpeg, png = _jpeg(_shapes(56, 70)), _png(_shapes(56, 70))
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "notes.png").write_text("shopping list: milk, eggs\n")
    (root / "empty.jpg").write_bytes(b"")
    (root / "bomb.png").write_bytes(_bomb_png())
    (root / "loop1.png").symlink_to("loop2.png")
    (root / "loop2.png").symlink_to("loop1.png")
    (root / "dangling.png").symlink_to(root / "deleted.png")
    Image.fromarray(np.array([[0.5, np.nan]], dtype=np.float32), mode="F").save(
        root / "nan.tif")
    bad = {
        "truncated-": "damaged or incomplete",  # two files share the stem: hashed names
        "notes": "not a readable image file",
        "empty": "the file is empty (0 bytes)",
        "bomb": "a guard against decompression bombs",
        "loop1": "symbolic link loop",
        "loop2": "symbolic link loop",
        "dangling": "broken symbolic link",
        "nan": "contains NaN",
    }
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "pipe.png")
        bad["pipe"] = "not a regular file"
    return bad


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self") or sys.platform == "win32",
                    reason="needs /proc and POSIX links")
def test_mixed_good_and_broken_files_through_clasp_segment(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    good = _good_files(root)
    bad = _bad_files(root)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sklearn_clasp", "segment", str(root), "--out", str(out),
         "--embedder", "handcrafted", "--embed-short-side", "none", "--refine", "nearest", "--n-jobs", "2"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()

    # the exit status says some images failed; no traceback, no process left behind
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr and "Logging error" not in stderr
    assert no_process_left(proc.pid) == []

    n_bad = len(bad) + 1  # two truncated files
    assert (f"{len(good) + n_bad} image(s): {len(good)} segmented, 0 skipped (already "
            f"done), {n_bad} failed") in stdout

    # every good image: complete outputs at its displayed size
    records = {}
    for path in out.glob("*.json"):
        record = json.loads(path.read_text())
        records[Path(record["source"]).relative_to(root.resolve()).as_posix()] = record
    assert sorted(records) == sorted(good)
    for rel, (name, shape) in good.items():
        record = records[rel]
        if name is not None:
            assert record["name"] == name
        assert tuple(record["image_size"]) == shape, rel
        with Image.open(out / f"{record['name']}_mask.png") as im:
            mask = np.asarray(im)
        assert mask.shape == shape, rel
        with Image.open(out / f"{record['name']}_overlay.png") as im:
            assert im.size == (shape[1], shape[0])
    assert records["flat.png"]["n_clusters"] == 1
    assert len(records["l" * 200 + ".png"]["name"]) <= 120

    # every bad one: one line in the summary with its reason, one line in failures.jsonl
    lines = stdout.split("failures:\n", 1)[1].splitlines()
    failures = [line for line in lines if line.startswith("  ")]
    assert len(failures) == n_bad
    for name, reason in bad.items():
        mine = [line for line in failures if line.startswith(f"  {name}")]
        assert len(mine) == (2 if name == "truncated-" else 1), name
        assert all(reason in line for line in mine), (name, mine)
    logged = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert len(logged) == n_bad
    assert all(entry["error"] and "\n" not in entry["error"] for entry in logged)

    # nothing else: no outputs for the bad files, no temporary files (the lock file stays)
    expected = {f"{r['name']}{s}" for r in records.values()
                for s in (".json", "_mask.png", "_overlay.png")} | {"failures.jsonl",
                                                                     ".clasp.lock"}
    assert {p.name for p in out.iterdir()} == expected
