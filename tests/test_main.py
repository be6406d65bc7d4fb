"""The command line ``python -m sklearn_clasp segment`` and the bundled samples."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from threadpoolctl import threadpool_limits

from sklearn_clasp import make_clasp_pipeline
from sklearn_clasp.__main__ import main
from sklearn_clasp.data import SAMPLE_IMAGE_NAMES, sample_image_paths
from sklearn_clasp.datasets import make_shapes_image

REPO = Path(__file__).resolve().parents[1]
FAST = ["--embedder", "handcrafted", "--short-side", "none", "-q"]


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    """k-means on a few dozen patches is much slower with OpenMP threads on a busy
    2-core machine; one thread keeps this file fast."""
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture
def image_dir(tmp_path):
    """Two shape images (one of a size not a multiple of 14) and a non-image file."""
    folder = tmp_path / "images"
    folder.mkdir()
    a, _ = make_shapes_image(112, 140, n_shapes=3, noise=4.0, random_state=0)
    b, _ = make_shapes_image(101, 129, n_shapes=2, noise=4.0, random_state=1)
    Image.fromarray(a).save(folder / "a.png")
    Image.fromarray(b).save(folder / "b.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    return folder


def _read(path):
    with Image.open(path) as im:
        return np.asarray(im)


# --------------------------------------------------------------------------
# sample images
# --------------------------------------------------------------------------
def test_sample_images_are_small_rgb_jpegs():
    paths = sample_image_paths()
    assert [p.stem for p in paths] == list(SAMPLE_IMAGE_NAMES)
    for path in paths:
        assert path.suffix == ".jpg" and path.is_file()
        assert path.stat().st_size < 60_000
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert max(im.size) <= 320 and min(im.size) >= 200
    licences = (REPO / "sklearn_clasp" / "data" / "LICENSES.md").read_text()
    for name in SAMPLE_IMAGE_NAMES:
        assert f"{name}.jpg" in licences
    assert "CC0" in licences and "public domain" in licences


# --------------------------------------------------------------------------
# segment
# --------------------------------------------------------------------------
def test_segment_writes_mask_overlay_and_json(image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["segment", str(image_dir), "--out", str(out), "--k-max", "12",
                   "--beta", "0.5", "--seed", "3", *FAST])
    assert status == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a.json", "a_mask.png", "a_overlay.png",
                     "b.json", "b_mask.png", "b_overlay.png"]
    for stem, (h, w) in [("a", (112, 140)), ("b", (101, 129))]:
        mask = _read(out / f"{stem}_mask.png")
        overlay = _read(out / f"{stem}_overlay.png")
        assert mask.shape == (h, w) and mask.dtype == np.uint8
        assert overlay.shape == (h, w, 3)
        report = json.loads((out / f"{stem}.json").read_text())
        assert report["source"] == str(image_dir / Path(report["source"]).name)
        assert report["image_size"] == [h, w]
        assert report["grid_shape"] == [round(h / 14), round(w / 14)]
        assert report["n_clusters"] >= 1 and report["eigengap_k"] >= 1
        assert mask.max() < report["n_clusters"]
        assert report["n_segments"] == len(np.unique(mask))
        assert len(report["eigenvalues"]) >= report["n_clusters"]
        assert all(2 <= int(k) <= 12 for k in report["silhouette_scores"])
        assert report["settings"]["embedder"] == "handcrafted"
        assert report["settings"]["k_max"] == 12 and report["settings"]["seed"] == 3
        assert report["settings"]["short_side"] is None
    # the mask is the pipeline's, for the same settings
    pipe = make_clasp_pipeline("handcrafted", k_max=12, random_state=3, short_side=None)
    expected, = pipe.fit_predict([str(image_dir / "a.png")])
    np.testing.assert_array_equal(_read(out / "a_mask.png"), expected)
    stdout = capsys.readouterr().out.strip().splitlines()
    assert len(stdout) == 3
    assert "a.png" in stdout[0] and "b.jpg" in stdout[1]
    assert stdout[-1].startswith("total: 2 of 2 image(s) segmented, 0 failed")


def test_a_corrupt_image_fails_alone(image_dir, tmp_path, capsys):
    (image_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "out"
    status = main(["segment", str(image_dir), str(missing), "--out", str(out), *FAST])
    assert status == 1
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".json") == ["a.json", "b.json"]
    assert not (out / "broken_mask.png").exists()
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "not a readable image" in captured.err
    assert "missing.jpg" in captured.err and "no such image file" in captured.err
    assert "total: 2 of 4 image(s) segmented, 2 failed" in captured.out
    assert "broken.png: FAILED" in captured.out


def test_duplicate_stems_get_distinct_outputs(image_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes((image_dir / "a.png").read_bytes())
    out = tmp_path / "out"
    status = main(["segment", str(image_dir / "a.png"), str(other / "a.png"),
                   "--out", str(out), "--no-crf", *FAST])
    assert status == 0
    assert (out / "a_mask.png").is_file() and (out / "a_1_mask.png").is_file()
    report = json.loads((out / "a_1.json").read_text())
    assert report["source"] == str(other / "a.png")
    assert report["settings"]["refine"] == "nearest"


def test_no_input_segments_the_bundled_samples(tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["segment", "--out", str(out), "--embedder", "handcrafted",
                   "--short-side", "56", "-q"])
    assert status == 0
    for path in sample_image_paths():
        mask = _read(out / f"{path.stem}_mask.png")
        with Image.open(path) as im:
            assert mask.shape == (im.height, im.width)
    assert "total: 3 of 3 image(s) segmented" in capsys.readouterr().out


def test_dinov2_embedder_runs_offline_with_random_weights(image_dir, tmp_path):
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights warn
        status = main(["segment", str(image_dir / "b.jpg"), "--out", str(out),
                       "--embedder", "dinov2", "--weights", "random", "--short-side", "56",
                       "-q"])
    assert status == 0
    report = json.loads((out / "b.json").read_text())
    assert report["settings"]["embedder"] == "dinov2"
    assert report["grid_shape"] == [4, 5]
    assert _read(out / "b_mask.png").shape == (101, 129)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["segment", "--k-min", "5", "--k-max", "3"], "--k-min 5 is larger than --k-max 3"),
        (["segment", "--embedder", "handcrafted", "--weights", "w.pth"], "--weights"),
        (["segment", "--embedder", "sift"], "invalid choice"),
        (["segment", "--beta", "-1"], "non-negative"),
        (["segment", "--short-side", "big"], "positive integer or 'none'"),
        (["frobnicate"], "invalid choice"),
        ([], "COMMAND"),
    ],
)
def test_usage_errors_exit_2(argv, message, tmp_path, capsys):
    if argv and argv[0] == "segment":
        argv = argv + ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_missing_out_and_empty_directory_are_usage_errors(tmp_path, capsys):
    assert main(["segment", "--embedder", "handcrafted"]) == 2
    assert "--out" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["segment", str(empty), "--out", str(tmp_path / "out"), *FAST]) == 2
    assert "no images to segment" in capsys.readouterr().err


def test_help_works_as_a_module():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for argv in (["--help"], ["segment", "--help"]):
        done = subprocess.run([sys.executable, "-m", "sklearn_clasp", *argv], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "usage: python -m sklearn_clasp" in done.stdout
    assert "--no-crf" in done.stdout and "--k-max" in done.stdout
