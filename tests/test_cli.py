"""The ``clasp`` command line (sklearn_clasp.cli), also ``python -m sklearn_clasp``.

Weights-free and offline: the handcrafted embedder on tiny images, DINOv2 only
with random weights or with its weights missing (the download is stubbed).
"""

import csv
import errno
import json
import os
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat
from threadpoolctl import threadpool_limits

from sklearn_clasp import make_clasp_pipeline
from sklearn_clasp.cli import main
from sklearn_clasp.collection.store import LOCK_FILE
from sklearn_clasp.io import find_mask_files, read_label_file
from sklearn_clasp.metrics import score_prediction
from sklearn_clasp.data import SAMPLE_IMAGE_NAMES, sample_image_paths
from sklearn_clasp.datasets import make_shapes_image
from sklearn_clasp.metrics import segmentation_covering, variation_of_information

REPO = Path(__file__).resolve().parents[1]
FAST = ["--embedder", "handcrafted", "--embed-short-side", "none"]


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


def _json(path):
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------
# bundled samples
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
def test_segment_writes_masks_overlays_json_and_a_summary(image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["segment", str(image_dir), "--out", str(out), "--k-max", "12",
                   "--beta", "0.5", "--random-state", "3", "--refine-n-iter", "5", *FAST])
    assert status == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [LOCK_FILE, "a.json", "a_mask.png", "a_overlay.png",
                     "b.json", "b_mask.png", "b_overlay.png"]
    for stem, (h, w) in [("a", (112, 140)), ("b", (101, 129))]:
        mask = _read(out / f"{stem}_mask.png")
        assert mask.shape == (h, w)
        assert _read(out / f"{stem}_overlay.png").shape == (h, w, 3)
        record = _json(out / f"{stem}.json")
        assert Path(record["source"]).parent == image_dir
        assert record["image_size"] == [h, w]
        assert record["grid_shape"] == [round(h / 14), round(w / 14)]
        assert mask.max() < record["n_clusters"]
        assert all(2 <= int(k) <= 12 for k in record["silhouette_scores"])
        settings = record["settings"]
        assert settings["segment__k_max"] == 12 and settings["segment__random_state"] == 3
        assert settings["embed__short_side"] is None
        assert settings["refine__n_iter"] == 5 and settings["refine__method"] == "crf"
    # the mask is the pipeline's, for the same settings
    pipe = make_clasp_pipeline("handcrafted", k_max=12, random_state=3, short_side=None)
    pipe.set_params(refine__n_iter=5)
    expected, = pipe.fit_predict([str(image_dir / "a.png")])
    np.testing.assert_array_equal(_read(out / "a_mask.png"), expected)
    stdout = capsys.readouterr().out
    assert "2 image(s): 2 segmented, 0 skipped" in stdout and "0 failed" in stdout
    assert "segments per image:" in stdout


def test_a_corrupt_image_fails_alone(image_dir, tmp_path, capsys):
    (image_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    status = main(["segment", str(image_dir), "--out", str(out), "--refine", "nearest", *FAST])
    assert status == 1
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json", "b.json"]
    assert not (out / "broken_mask.png").exists()
    captured = capsys.readouterr()
    assert "2 segmented" in captured.out and "1 failed" in captured.out
    failure_lines = [line for line in captured.out.splitlines() if "broken" in line]
    assert failure_lines and "not a readable image" in failure_lines[0]
    logged = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["name"] for f in logged] == ["broken"]


def test_rerun_skips_done_images_and_overwrite_redoes_them(image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["segment", str(image_dir / "a.png"), "--out", str(out), "--refine", "nearest", *FAST]
    assert main(argv) == 0
    first = (out / "a.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert "0 segmented, 1 skipped" in capsys.readouterr().out
    assert (out / "a.json").stat().st_mtime_ns == first
    # other settings: refused, naming the setting, unless --overwrite
    assert main([*argv, "--k-max", "5"]) == 2
    err = capsys.readouterr().err
    assert "made with other settings (segment__k_max: 15 there, 5 now" in err
    assert "or --overwrite to redo the images" in err and "overwrite=True" not in err
    assert (out / "a.json").stat().st_mtime_ns == first
    assert main([*argv, "--k-max", "5", "--overwrite"]) == 0
    assert "1 segmented, 0 skipped" in capsys.readouterr().out
    assert main([*argv, "--k-max", "5"]) == 0
    assert "0 segmented, 1 skipped" in capsys.readouterr().out


def test_no_overlay_and_quiet(image_dir, tmp_path, capsys):
    (image_dir / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    status = main(["segment", str(image_dir), "--out", str(out), "--refine", "nearest", "--write-overlay", "false",
                   "-q", *FAST])
    assert status == 1
    assert not list(out.glob("*_overlay.png")) and (out / "a_mask.png").is_file()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: broken") and captured.err.count("\n") == 1


def test_no_input_segments_the_bundled_samples(tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["segment", "--out", str(out), "--embedder", "handcrafted",
                   "--embed-short-side", "56", "--refine", "nearest"])
    assert status == 0
    for path in sample_image_paths():
        mask = _read(out / f"{path.stem}_mask.png")
        with Image.open(path) as im:
            assert mask.shape == (im.height, im.width)
    assert "3 image(s): 3 segmented" in capsys.readouterr().out


@pytest.fixture
def captured(monkeypatch):
    """Replace segment_collection: record what the command line passes to it."""
    import functools

    from sklearn_clasp import collection

    seen = {}

    @functools.wraps(collection.segment_collection)  # its options come from its signature
    def fake(inputs, out_dir, **kwargs):
        seen.update(kwargs, inputs=inputs, out_dir=out_dir)
        return collection.CollectionReport([], out_dir=out_dir)

    monkeypatch.setattr(collection, "segment_collection", fake)
    monkeypatch.setattr("sklearn_clasp.cli._load_embedder", lambda pipeline: None)
    return seen


def test_run_options_reach_segment_collection(image_dir, tmp_path, captured):
    seen = captured
    status = main(["segment", str(image_dir), "--out", str(tmp_path / "o"), "--n-jobs", "2",
                   "--scheduler", "tcp://10.0.0.1:8786", "--overwrite", "--write-overlay",
                   "false", "--max-attempts", "5", "--progress", *FAST])
    assert status == 0
    assert seen["n_jobs"] == 2 and seen["scheduler"] == "tcp://10.0.0.1:8786"
    assert seen["overwrite"] is True and seen["write_overlay"] is False
    assert seen["max_attempts"] == 5 and seen["progress"] is True
    assert [im.name for im in seen["inputs"]] == ["a", "b"]
    assert seen["pipeline"].get_params()["embed__short_side"] is None
    seen.clear()
    assert main(["segment", str(image_dir), "--out-dir", str(tmp_path / "o"), *FAST]) == 0
    # options not given are not passed: segment_collection's own defaults apply
    assert not {"n_jobs", "scheduler", "overwrite", "write_overlay", "max_attempts"} & set(seen)
    assert seen["progress"] is False  # stderr is not a terminal under pytest
    for value, expected in [("1000", 1000), ("20_000_000", 20_000_000), ("none", None)]:
        seen.clear()
        assert main(["segment", str(image_dir), "--out", str(tmp_path / "o"),
                     "--max-image-pixels", value, *FAST]) == 0
        assert seen["max_image_pixels"] == expected
    config = tmp_path / "c.toml"
    config.write_text("max_image_pixels = 5000\n")
    seen.clear()
    assert main(["segment", str(image_dir), "--out", str(tmp_path / "o"), "--config",
                 str(config), *FAST]) == 0
    assert seen["max_image_pixels"] == 5000


def test_every_option_sets_its_parameter(image_dir, tmp_path, captured):
    argv = ["segment", str(image_dir), "--out", str(tmp_path / "o"), "--embedder", "dinov2",
            "--embed-model", "dinov2_vitb14", "--embed-weights", "w.pth",
            "--embed-weights-sha256", "a" * 64, "--embed-download", "false", "--embed-device",
            "auto", "--embed-dtype", "bfloat16", "--embed-facet", "keys", "--embed-layer", "-2",
            "--embed-batch-size", "4", "--embed-short-side", "224", "--affinity-n-neighbors",
            "10", "--affinity-clip-negative", "false", "--k-min", "3", "--k-max", "9",
            "--beta", "0.25", "--segment-spectrum", "normalized", "--segment-eigengap-rule",
            "largest", "--segment-single-segment-threshold", "none", "--segment-n-init", "5",
            "--random-state", "7", "--refine", "bilinear", "--refine-n-iter", "3",
            "--refine-gt-prob", "0.7", "--refine-gaussian-sxy", "2", "--refine-gaussian-compat",
            "1", "--refine-bilateral-sxy", "50", "--refine-bilateral-srgb", "9",
            "--refine-bilateral-compat", "6"]
    assert main(argv) == 0
    params = captured["pipeline"].get_params()
    expected = {
        "embed__model": "dinov2_vitb14", "embed__weights": "w.pth",
        "embed__weights_sha256": "a" * 64, "embed__download": False,
        "embed__device": "auto", "embed__dtype": "bfloat16", "embed__facet": "keys",
        "embed__layer": -2, "embed__batch_size": 4, "embed__short_side": 224,
        "embed__random_state": 7, "affinity__n_neighbors": 10,
        "affinity__clip_negative": False, "segment__k_min": 3, "segment__k_max": 9,
        "segment__beta": 0.25, "segment__spectrum": "normalized",
        "segment__eigengap_rule": "largest", "segment__single_segment_threshold": None,
        "segment__n_init": 5, "segment__random_state": 7, "refine__method": "bilinear",
        "refine__n_iter": 3, "refine__gt_prob": 0.7, "refine__gaussian_sxy": 2.0,
        "refine__gaussian_compat": 1.0, "refine__bilateral_sxy": 50.0,
        "refine__bilateral_srgb": 9.0, "refine__bilateral_compat": 6.0,
    }
    assert {k: params[k] for k in expected} == expected


def test_paper_preset_and_handcrafted_options(image_dir, tmp_path, captured):
    out = ["--out", str(tmp_path / "o")]
    assert main(["segment", str(image_dir), "--paper", *out, *FAST]) == 0
    params = captured["pipeline"].get_params()
    assert params["segment__eigengap_rule"] == "elbow"
    assert params["segment__single_segment_threshold"] is None
    # explicit options override the paper's settings
    assert main(["segment", str(image_dir), "--paper", "--segment-eigengap-rule", "relative",
                 "--embed-color-weight", "2", "--embed-texture-weight", "0",
                 "--embed-position-weight", "0.3", "--embed-color-sigma", "9", *out,
                 *FAST]) == 0
    params = captured["pipeline"].get_params()
    assert params["segment__eigengap_rule"] == "relative"
    assert params["segment__spectrum"] == "affinity"
    assert (params["embed__color_weight"], params["embed__texture_weight"],
            params["embed__position_weight"], params["embed__color_sigma"]) == (2, 0, 0.3, 9)


def test_cli_toml_and_json_names_of_every_setting_agree(image_dir, tmp_path):
    """One name per setting: the parameter path is the TOML key and the JSON key, and
    the option is derived from it; a record's settings run the same pipeline again."""
    from sklearn_clasp.cli import build_parser, flag_of, pipeline_setting_specs, \
        run_setting_specs
    from sklearn_clasp.collection import segment_collection

    parser = build_parser("segment")
    (sub,) = [a for a in parser._actions if hasattr(a, "choices") and a.choices]
    options = {opt for action in sub.choices["segment"]._actions
               for opt in action.option_strings}
    specs = pipeline_setting_specs() + run_setting_specs()
    for spec in specs:
        assert spec.flag == flag_of(spec.name) in options
        assert spec.flag == "--" + spec.name.replace("__", "-").replace("_", "-")
    assert len({s.flag for s in specs}) == len(specs)  # no two settings share an option
    # every pipeline setting of a record is a setting name; fed back, it gives the same hash
    pipe = make_clasp_pipeline("handcrafted", short_side=None, refine="nearest",
                               random_state=0)
    segment_collection(image_dir / "a.png", tmp_path / "run", pipeline=pipe)
    record = _json(tmp_path / "run" / "a.json")
    names = {s.name for s in pipeline_setting_specs()} | {"embed"}
    assert set(record["settings"]) <= names
    toml = "".join(f"{k} = {json.dumps('none' if v is None else v)}\n"
                   for k, v in record["settings"].items())
    (tmp_path / "settings.toml").write_text(toml)
    for config in (tmp_path / "run" / "a.json", tmp_path / "settings.toml"):
        assert main(["segment", str(image_dir / "a.png"), "--config", str(config),
                     "--out", str(tmp_path / "run"), "-q"]) == 0
        again = _json(tmp_path / "run" / "a.json")
        assert again["run_id"] == record["run_id"]  # skipped: the same settings hash


def test_help_lists_options_by_stage_with_the_estimators_defaults(capsys):
    from sklearn_clasp import AdaptiveSpectralSegmenter, CRFRefiner

    assert main(["segment", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    order = [text.index(g) for g in ("common settings (aliases):", "embed: both embedders:",
                                     "affinity:", "segment:", "refine:", "running:")]
    assert order == sorted(order)
    assert "--segment-k-max N Largest K" in text
    seg, ref = AdaptiveSpectralSegmenter(), CRFRefiner()
    assert f"(default: {seg.k_max}" in text[text.rindex("--segment-k-max N"):][:300]
    assert f"(default: {ref.n_iter}" in text[text.rindex("--refine-n-iter N"):][:300]
    assert "--k-max N alias of --segment-k-max" in text


# --------------------------------------------------------------------------
# config files
# --------------------------------------------------------------------------
def test_config_file_values_apply_and_command_line_overrides(image_dir, tmp_path):
    config = tmp_path / "clasp.toml"
    config.write_text(
        'embedder = "handcrafted"\n'
        'out_dir = "results"\n'
        'inputs = ["images/a.png"]\n'
        "random_state = 11\n"
        "[embed]\n"
        'short_side = "none"\n'
        "[segment]\n"
        "k_max = 6\n"
        "beta = 0.25\n"
        "[refine]\n"
        'method = "nearest"\n'
    )
    assert main(["segment", "--config", str(config)]) == 0
    record = _json(tmp_path / "results" / "a.json")  # paths relative to the file
    settings = record["settings"]
    assert settings["segment__k_max"] == 6 and settings["segment__beta"] == 0.25
    assert settings["refine__method"] == "nearest" and settings["segment__random_state"] == 11
    assert settings["embed__short_side"] is None  # "none": TOML has no null
    out2 = tmp_path / "cli"
    assert main(["segment", str(image_dir / "b.jpg"), "--config", str(config), "--out",
                 str(out2), "--k-max", "4"]) == 0
    assert sorted(p.name for p in out2.glob("*.json")) == ["b.json"]
    settings = _json(out2 / "b.json")["settings"]
    assert settings["segment__k_max"] == 4 and settings["segment__beta"] == 0.25


def test_device_sets_every_stage_and_a_stage_of_its_own_overrides_it(image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(image_dir / "a.png"), "--out", str(out), *FAST,
                 "--device", "cpu", "--segment-device", "none", "--refine", "nearest"]) == 0
    settings = _json(out / "a.json")["settings"]
    assert (settings["affinity__device"], settings["segment__device"],
            settings["refine__device"]) == ("cpu", None, "cpu")
    config = tmp_path / "c.toml"
    config.write_text('device = "none"\n')
    from sklearn_clasp.cli import load_config

    assert load_config(config) == {"device": None}
    for args, allowed in ((["--device", "gpu"], "None, 'auto', 'cpu'"),
                          (["--segment-device", "cuda:x"], "None, 'auto', 'cpu'"),
                          (["--refine-device", "none"], "'auto', 'cpu', 'cuda' or")):
        assert main(["segment", str(image_dir), "--out", str(tmp_path / "bad"), *FAST,
                     *args]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"{args[0]} '{args[1]}': must be {allowed}" in line
    config.write_text('device = "tpu"\n')
    assert main(["segment", str(image_dir), "--out", str(tmp_path / "bad"), *FAST,
                 "--config", str(config)]) == 2
    assert f"config file {config}: device 'tpu': must be" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_config_file_keys_are_setting_names_or_aliases(tmp_path):
    from sklearn_clasp.cli import load_config

    config = tmp_path / "c.toml"
    config.write_text('k_min = 3\nrefine__n_iter = 2\nrefine = "crf"\n'
                      '[embed]\nweights = "random"\n')
    assert load_config(config) == {"segment__k_min": 3, "refine__n_iter": 2,
                                   "refine__method": "crf", "embed__weights": "random"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("k_maxx = 3\n", "k_maxx: unknown setting; valid: affinity__clip_negative,"),
        ("[segment]\nbogus = 1\n", "segment__bogus: unknown setting"),
        ("k_max = 0\n", "k_max 0: must be an int in the range [1, 64]"),
        ('embedder = "sift"\n', "embedder 'sift': must be a str among"),
        ('refine__method = "yes"\n', "refine__method 'yes': must be a str among"),
        ("k_max = [1, 2]\n", "k_max [1, 2]: must be an int"),
        ("k_max = \n", "is not valid TOML"),
        ("segment__k_max = 3\n[segment]\nk_max = 4\n", "segment__k_max is set twice"),
        ("max_image_pixels = -5\n", "max_image_pixels -5: must be None or an int"),
        ("max_pixels = 5\n", "max_pixels: unknown setting"),
        ("[segmentt]\nk_max = 4\n", "segmentt__k_max: unknown setting"),
        ("[segment.k]\nmax = 4\n", "nests too deep"),
    ],
)
def test_bad_config_files_exit_2(text, message, tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(text)
    assert main(["segment", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(config) in err
    assert not (tmp_path / "o").exists()


def test_unknown_config_key_lists_every_key_that_is_valid(tmp_path, capsys):
    """The list left out the keys that are not estimator parameters (aliases, embedder,
    inputs, random_state, device, paper), all of which a config file takes."""
    config = tmp_path / "c.toml"
    config.write_text("foo = 1\n")
    assert main(["segment", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    valid = _one_error_line(capsys.readouterr().err).split("unknown setting; valid: ")[1]
    valid = set(valid.split(", "))
    assert {"k_max", "embedder", "inputs", "random_state", "device", "paper", "n_jobs",
            "segment__k_max"} <= valid


def test_a_json_config_that_is_not_an_object(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text("[1, 2]")
    assert main(["segment", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    assert _one_error_line(capsys.readouterr().err).endswith(
        f"config file {config}: holds a JSON list, not an object; give an object of settings "
        f"or a record's JSON file")


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["segment", "--config", str(tmp_path / "none.toml"), "--out", "o"]) == 2
    assert "cannot read the config file" in capsys.readouterr().err


def _bomb_png(path, width, height):
    """A small grayscale PNG whose header claims ``width x height`` pixels."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_max_image_pixels_refuses_big_images_and_can_lift_pillows_limit(image_dir, tmp_path,
                                                                        capsys):
    _bomb_png(image_dir / "bomb.png", 13_500, 13_500)  # 182 MP: over Pillow's own 179 MP
    out = tmp_path / "out"
    assert main(["segment", str(image_dir), "--out", str(out), *FAST, "-q"]) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "bomb" in x]
    assert "ImageTooLargeError" in line and "--max-image-pixels" in line
    # a small limit refuses the ordinary images too
    assert main(["segment", str(image_dir / "a.png"), "--out", str(tmp_path / "o2"), *FAST,
                 "--max-image-pixels", "1000", "-q"]) == 1
    assert "140 x 112 pixels (15680 pixels) is more than the limit of 1000" in \
        capsys.readouterr().err
    # lifted above Pillow's own limit for this command only: the file is then read (and
    # found to hold far too little data for its header), and Pillow's limit is put back
    from PIL import Image as PILImage

    before = PILImage.MAX_IMAGE_PIXELS
    assert main(["segment", str(image_dir / "bomb.png"), "--out", str(tmp_path / "o3"),
                 *FAST, "--max-image-pixels", "200000000", "--max-attempts", "1",
                 "-q"]) == 1
    assert "the image data is incomplete: the header says 13500 x 13500 pixels" in \
        capsys.readouterr().err
    assert PILImage.MAX_IMAGE_PIXELS == before


def test_undecodable_file_names_are_printed_escaped(image_dir, tmp_path, capsys):
    name = os.fsdecode(b"bad-\xff.png")  # not UTF-8
    (image_dir / name).write_bytes(b"not an image")

    class Strict:
        """A UTF-8 stream that refuses lone surrogates (as with PYTHONIOENCODING=utf-8)."""

        encoding = "utf-8"

        def __init__(self):
            self.text = []

        def write(self, text):
            text.encode("utf-8")
            self.text.append(text)

        def flush(self):
            pass

    stream = Strict()
    from unittest import mock

    with mock.patch("sys.stdout", stream):
        status = main(["segment", str(image_dir), "--out", str(tmp_path / "out"), *FAST,
                       "--max-attempts", "1"])
    assert status == 1
    printed = "".join(stream.text)
    assert "bad-\\udcff.png" in printed and "1 failed" in printed


# --------------------------------------------------------------------------
# usage errors and exit codes
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["segment", "--k-min", "5", "--k-max", "3"], "k_min=5 is larger than k_max=3"),
        (["segment", "--embedder", "handcrafted", "--embed-weights", "w.pth"],
         "embed__weights does not apply to embed='handcrafted': it is a setting of "
         "embed='dinov2'. (--embed-weights)"),
        (["segment", "--embed-color-weight", "2"],
         "embed__color_weight does not apply to embed='dinov2'"),
        (["segment", "--embedder", "sift"], "--embedder 'sift': must be a str among"),
        (["segment", "--beta", "-1"], "--beta '-1': must be a float in the range [0.0, inf)"),
        (["segment", "--embed-short-side", "big"], "must be an int in the range [1, inf) or None"),
        (["segment", "--refine-gt-prob", "1"], "must be a float in the range (0.0, 1.0)"),
        (["segment", "--segment-single-segment-threshold", "2"],
         "must be a float in the range [0.0, 1.0] or None"),
        (["segment", "--n-jobs", "0"], "--n-jobs '0': must be"),
        (["segment", "--max-image-pixels", "0"], "must be None or an int in the range [1, inf)"),
        (["segment", "--max-image-pixels", "lots"], "must be None or an int"),
        (["segment", "--refine-method", "sharp"], "--refine-method 'sharp': must be a str among"),
        (["segment", "--embed-model", "vit_huge"], "--embed-model 'vit_huge': must be"),
        (["segment", "--overwrite", "maybe"], "--overwrite 'maybe': must be an instance of 'bool'"),
        (["segment", "--quiet", "--verbose"], "not allowed with argument"),
        (["segment", "--crf-iterations", "5"], "unrecognized arguments: --crf-iterations"),
        (["frobnicate"], "invalid choice"),
        ([], "usage: clasp"),
    ],
)
def test_usage_errors_exit_2(argv, message, tmp_path, capsys):
    if argv and argv[0] == "segment":
        argv = argv + ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_out_and_no_images_are_usage_errors(tmp_path, capsys):
    assert main(["segment", "--embedder", "handcrafted"]) == 2
    assert "--out-dir DIR" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["segment", str(empty), "--out", str(tmp_path / "out"), *FAST]) == 2
    assert "no images found" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "out"),
                 *FAST]) == 2
    assert "nope.jpg" in capsys.readouterr().err


def test_help_and_version_exit_0(capsys):
    from sklearn_clasp import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"clasp {__version__}"
    for command in ("segment", "evaluate", "report", "weights", "explain"):
        assert main([command, "--help"]) == 0
        assert f"usage: clasp {command}" in capsys.readouterr().out


@pytest.fixture
def no_weights_anywhere(tmp_path, monkeypatch):
    """No DINOv2 file on disk, and a download that fails as offline."""
    from sklearn_clasp.embedding import weights as _weights

    empty = tmp_path / "weights"
    empty.mkdir()
    monkeypatch.setenv(_weights.WEIGHTS_ENV_VAR, str(empty))
    monkeypatch.setattr(_weights, "hub_checkpoint_dir", lambda: tmp_path / "hub")

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("network unreachable (test)")

    monkeypatch.setattr(_weights, "_download_url_to_file", offline)
    return empty


def test_dinov2_without_weights_exits_3_with_the_ways_to_get_them(
        no_weights_anywhere, image_dir, tmp_path, capsys):
    status = main(["segment", str(image_dir), "--out", str(tmp_path / "out")])
    assert status == 3
    err = capsys.readouterr().err
    assert "could not load the DinoPatchEmbedder" in err
    assert "dinov2_vits14_reg4_pretrain.pth" in err
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/" in err
    assert "SKLEARN_CLASP_WEIGHTS" in err and "torch hub cache" in err
    assert "--embed-weights PATH" in err
    assert not list((tmp_path / "out").glob("*.json"))
    # the same with --no-download (nothing attempted)
    assert main(["segment", str(image_dir), "--out", str(tmp_path / "out"),
                 "--embed-download", "false"]) == 3
    assert "download=False" in capsys.readouterr().err


def test_missing_weights_file_exits_3(image_dir, tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    status = main(["segment", str(image_dir), "--out", str(tmp_path / "out"),
                   "--embed-weights", str(missing)])
    assert status == 3
    assert f"weights={str(missing)!r}: no such file" in capsys.readouterr().err


def test_dinov2_random_weights_end_to_end(image_dir, tmp_path):
    out = tmp_path / "out"
    status = main(["segment", str(image_dir / "b.jpg"), "--out", str(out), "--embed-weights",
                   "random", "--embed-short-side", "56", "--embed-model", "dinov2_vits14", "--refine", "nearest",
                   "-q"])
    assert status == 0
    record = _json(out / "b.json")
    assert record["settings"]["embed__model"] == "dinov2_vits14"
    assert record["settings"]["embed__weights"] == "random"
    assert record["grid_shape"] == [4, 5]
    assert _read(out / "b_mask.png").shape == (101, 129)


# --------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------
def _save(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


# truth: left half class 0, right half class 1 (4 x 4)
TRUTH = np.repeat([[0, 0, 1, 1]], 4, axis=0)
# prediction: three columns of segment 0, one of segment 1.
# Hungarian: 0->0 (8 px), 1->1 (4 px). IoU 8/12 and 4/8: mIoU 7/12; accuracy 12/16.
SHIFTED = np.repeat([[0, 0, 0, 1]], 4, axis=0)


@pytest.fixture
def evaluation(tmp_path):
    labels, masks = tmp_path / "labels", tmp_path / "masks"
    labels.mkdir()
    masks.mkdir()
    _save(labels / "a.png", TRUTH)
    _save(masks / "a_mask.png", SHIFTED)
    _save(masks / "a_overlay.png", np.zeros((4, 4)))  # never read as a mask
    _save(labels / "b.png", TRUTH + 3)  # any label values
    _save(masks / "b.png", 1 - TRUTH)  # a perfect split, other ids
    return labels, masks


def test_evaluate_png_labels(evaluation, tmp_path, capsys):
    labels, masks = evaluation
    csv_path = tmp_path / "scores.csv"
    status = main(["evaluate", "--labels", str(labels), "--masks", str(masks),
                   "--csv", str(csv_path)])
    assert status == 0
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == ["a", "b"]
    assert rows[0]["miou"] == f"{7 / 12:.6f}" and rows[0]["pixel_accuracy"] == "0.750000"
    assert rows[1]["miou"] == "1.000000" and rows[1]["pixel_accuracy"] == "1.000000"
    assert [(r["n_clusters"], r["n_classes"], r["n_annotators"]) for r in rows] == [
        ("2", "2", "1"), ("2", "2", "1")]
    out = capsys.readouterr().out
    assert "images scored:    2 of 2 label file(s)" in out
    assert f"mIoU:             {(7 / 12 + 1) / 2:.3f}" in out  # 0.792
    assert "pixel accuracy:   0.875" in out
    assert "covering:         0.792" in out and "VoI:              0.594 bits" in out


def test_evaluate_ignore_index_and_missing_predictions(evaluation, capsys):
    labels, masks = evaluation
    truth = TRUTH.copy()
    truth[:, 2] = 255  # the disputed column is void
    _save(labels / "a.png", truth)
    _save(labels / "c.png", TRUTH)  # no prediction for c
    status = main(["evaluate", "--labels", str(labels), "--masks", str(masks),
                   "--ignore-index", "255"])
    assert status == 1
    out = capsys.readouterr().out
    assert "images scored:    2 of 3 label file(s)" in out
    assert "mIoU:             1.000" in out  # a is now perfect on the scored pixels
    assert "no prediction:    1 (c)" in out


def test_evaluate_dataset_protocol(evaluation, capsys):
    labels, masks = evaluation
    _save(labels / "b.png", TRUTH)
    _save(masks / "b.png", TRUTH)
    # summed confusion: segment 0 -> [16, 4], segment 1 -> [0, 12]:
    # IoU 16/20 and 12/16 -> mIoU 0.775; accuracy 28/32
    assert main(["evaluate", "--labels", str(labels), "--masks", str(masks),
                 "--protocol", "dataset"]) == 0
    out = capsys.readouterr().out
    assert "protocol:         dataset" in out
    assert "mIoU:             0.775" in out and "pixel accuracy:   0.875" in out


def test_evaluate_bsds_mat_files(tmp_path, capsys):
    labels, masks = tmp_path / "gt", tmp_path / "masks"
    (labels / "test").mkdir(parents=True)
    masks.mkdir()
    ground_truth = np.empty((1, 2), dtype=object)
    ground_truth[0, 0] = {"Segmentation": (TRUTH + 1).astype(np.uint16),
                          "Boundaries": np.zeros((4, 4), np.uint8)}
    ground_truth[0, 1] = {"Segmentation": (SHIFTED + 1).astype(np.uint16),
                          "Boundaries": np.zeros((4, 4), np.uint8)}
    savemat(labels / "test" / "12003.mat", {"groundTruth": ground_truth})
    maps = read_label_file(labels / "test" / "12003.mat")
    assert len(maps) == 2
    np.testing.assert_array_equal(maps[0], TRUTH + 1)
    _save(masks / "12003_mask.png", TRUTH)
    csv_path = tmp_path / "s.csv"
    assert main(["evaluate", "--labels", str(labels), "--masks", str(masks),
                 "--csv", str(csv_path)]) == 0
    row, = csv.DictReader(open(csv_path, newline=""))
    # annotator 1: perfect; annotator 2: the SHIFTED split (mIoU 7/12, accuracy 0.75)
    assert row["miou"] == f"{(1 + 7 / 12) / 2:.6f}" and row["miou_best"] == "1.000000"
    assert row["pixel_accuracy"] == "0.875000" and row["pixel_accuracy_best"] == "1.000000"
    assert row["n_annotators"] == "2"
    # region measures: perfect against annotator 1, below 1 / above 0 against 2
    assert float(row["covering_best"]) == 1.0 and float(row["voi_best"]) == 0.0
    assert 0.5 < float(row["covering"]) < 1.0 and float(row["voi"]) > 0.0
    out = capsys.readouterr().out
    assert "best annotator:   mIoU 1.000, pixel accuracy 1.000" in out
    assert "covering:" in out and "VoI:" in out


def test_evaluate_segments_images_first(tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(2):
        image, truth = make_shapes_image(112, 140, n_shapes=2, noise=3.0, random_state=i)
        Image.fromarray(image).save(images / f"im{i}.png")
        _save(labels / f"im{i}.png", truth)
    out = tmp_path / "seg"
    csv_path = tmp_path / "s.csv"
    status = main(["evaluate", "--images", str(images), "--labels", str(labels), "--out",
                   str(out), "--csv", str(csv_path), *FAST])
    assert status == 0
    assert (out / "im0_mask.png").is_file() and (out / "im1.json").is_file()
    rows = list(csv.DictReader(open(csv_path, newline="")))
    assert [r["name"] for r in rows] == ["im0", "im1"]
    assert all(float(r["miou"]) > 0.8 for r in rows)
    stdout = capsys.readouterr().out
    assert "2 image(s): 2 segmented" in stdout and "images scored:    2 of 2" in stdout


def test_evaluate_usage_errors(evaluation, tmp_path, capsys):
    labels, masks = evaluation
    assert main(["evaluate", "--labels", str(labels)]) == 2
    assert "one of the arguments --masks --images is required" in capsys.readouterr().err
    assert main(["evaluate", "--labels", str(tmp_path / "nope"), "--masks", str(masks)]) == 2
    assert "no such directory" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    _save(other / "zzz_mask.png", TRUTH)
    assert main(["evaluate", "--labels", str(labels), "--masks", str(other)]) == 2
    assert "no prediction matches a label file" in capsys.readouterr().err


def test_evaluate_size_mismatch_is_a_failure(evaluation, capsys):
    labels, masks = evaluation
    _save(masks / "b.png", np.zeros((5, 4)))
    assert main(["evaluate", "--labels", str(labels), "--masks", str(masks)]) == 1
    out = capsys.readouterr().out
    assert "images scored:    1 of 2" in out
    assert "b: the mask is 5 x 4 but the ground truth is 4 x 4" in out


def test_label_and_mask_readers(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[:, 1:] = (200, 10, 10)
    rgb[1, 2] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_label_file(tmp_path / "rgb.png")[0],
                                  [[0, 2, 2], [0, 2, 1]])
    palette = Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255] * 759)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_label_file(tmp_path / "p.png")[0], [[0, 1], [2, 255]])
    savemat(tmp_path / "bad.mat", {"x": np.zeros(3)})
    with pytest.raises(ValueError, match="no 'groundTruth' variable"):
        read_label_file(tmp_path / "bad.mat")
    for name in ("x_mask.png", "x.png", "y.png", "y_overlay.png"):
        _save(tmp_path / name, TRUTH)
    masks = find_mask_files(tmp_path)
    assert masks["x"].name == "x_mask.png" and masks["y"].name == "y.png"
    assert "y_overlay" not in masks and "rgb" in masks


def test_score_prediction_mean_and_best():
    s = score_prediction([TRUTH, SHIFTED * 4], SHIFTED)
    assert s["miou"] == pytest.approx((7 / 12 + 1) / 2) and s["miou_best"] == 1.0
    assert s["pixel_accuracy"] == pytest.approx(0.875) and s["n_annotators"] == 2
    # the region measures ignore label values: SHIFTED * 4 is SHIFTED itself
    assert s["covering_best"] == 1.0 and s["voi_best"] == 0.0
    assert s["covering"] == pytest.approx((segmentation_covering(TRUTH, SHIFTED) + 1) / 2)
    assert s["voi"] == pytest.approx(variation_of_information(TRUTH, SHIFTED) / 2)
    with pytest.raises(ValueError, match="ground truth #2 is 3 x 4"):
        score_prediction([TRUTH, TRUTH[:3]], SHIFTED)


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------
@pytest.fixture
def weights_dirs(tmp_path, monkeypatch):
    from sklearn_clasp.embedding import weights as _weights

    env, hub = tmp_path / "weights", tmp_path / "hub"
    env.mkdir()
    hub.mkdir()
    monkeypatch.setenv(_weights.WEIGHTS_ENV_VAR, str(env))
    monkeypatch.setattr(_weights, "hub_checkpoint_dir", lambda: hub)

    def no_network(url, dst, hash_prefix=None, progress=True):
        raise AssertionError("the network must not be touched")

    monkeypatch.setattr(_weights, "_download_url_to_file", no_network)
    return env, hub


def test_weights_lists_where_and_what(weights_dirs, capsys):
    env, hub = weights_dirs
    (hub / "dinov2_vits14_pretrain.pth").write_bytes(b"not the real file")
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    assert f"$SKLEARN_CLASP_WEIGHTS = {env} (exists)" in out
    assert f"the torch hub cache: {hub}" in out
    from sklearn_clasp.embedding.weights import OFFICIAL_WEIGHTS

    for model in OFFICIAL_WEIGHTS:
        assert f"\n{model}" in out
    assert "dinov2_vits14_reg4_pretrain.pth (88.3 MB)" in out
    assert ("https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/"
            "dinov2_vits14_reg4_pretrain.pth") in out
    assert "f433177089a681826f849f194ece3bb48f4d63fb38d32fc837e3dc7a4e5641fb" in out
    assert f"present:  {hub / 'dinov2_vits14_pretrain.pth'}" in out
    assert out.count("present:  no") == len(OFFICIAL_WEIGHTS) - 1
    assert "verified" not in out


def test_weights_verify_reports_a_mismatch(weights_dirs, capsys):
    env, _ = weights_dirs
    (env / "dinov2_vits14_reg4_pretrain.pth").write_bytes(b"corrupt")
    assert main(["weights", "--model", "dinov2_vits14_reg", "--verify"]) == 1
    out = capsys.readouterr().out
    assert f"present:  {env / 'dinov2_vits14_reg4_pretrain.pth'}" in out
    assert "verified: MISMATCH" in out
    assert "dinov2_vitb14" not in out


def test_weights_verify_ok_with_a_known_digest(weights_dirs, monkeypatch, capsys):
    import hashlib

    from sklearn_clasp.embedding import weights as _weights

    env, _ = weights_dirs
    data = b"a tiny stand-in checkpoint"
    (env / "dinov2_vits14_pretrain.pth").write_bytes(data)
    info = _weights.OFFICIAL_WEIGHTS["dinov2_vits14"]
    fake = type(info)(info.model, info.filename, info.url,
                      hashlib.sha256(data).hexdigest(), len(data))
    monkeypatch.setitem(_weights.OFFICIAL_WEIGHTS, "dinov2_vits14", fake)
    assert main(["weights", "--model", "dinov2_vits14", "--verify"]) == 0
    assert "verified: ok" in capsys.readouterr().out


def test_weights_download_uses_the_download_function(weights_dirs, monkeypatch, capsys):
    from sklearn_clasp.embedding import weights as _weights

    env, _ = weights_dirs
    calls = []

    def fake_download(url, dest, *, sha256=None, allow_unverified=False, timeout=60.0,
                      progress=None):
        calls.append((url, Path(dest), sha256))
        Path(dest).write_bytes(b"weights")
        return sha256

    monkeypatch.setattr(_weights, "download_weights", fake_download)
    assert main(["weights", "--download", "--model", "dinov2_vitb14"]) == 0
    info = _weights.OFFICIAL_WEIGHTS["dinov2_vitb14"]
    assert calls == [(info.url, env / info.filename, info.sha256)]
    assert f"dinov2_vitb14: {env / info.filename} (SHA-256 {info.sha256}, verified)" in (
        capsys.readouterr().out)

    def failing(url, dest, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(_weights, "download_weights", failing)
    assert main(["weights", "--download"]) == 3  # the default model is not on disk
    err = capsys.readouterr().err
    assert "could not get the dinov2_vits14_reg weights" in err and "offline" in err


# --------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------
def test_explain_writes_a_png(image_dir, tmp_path, capsys):
    fig = tmp_path / "figs" / "a.png"
    assert main(["explain", str(image_dir / "a.png"), "--out", str(fig), "--dpi", "50",
                 "--k-max", "6", *FAST]) == 0
    with Image.open(fig) as im:
        assert im.format == "PNG" and im.size == (650, 400)  # 13 x 8 inches at 50 dpi
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("K = ") and "K0 = " in lines[0]
    assert lines[1] == f"figure: {fig}"


def test_explain_default_name_and_errors(image_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["explain", str(image_dir / "b.jpg"), "--dpi", "30", "-q", *FAST]) == 0
    assert (tmp_path / "b_explain.png").is_file() and capsys.readouterr().out == ""
    assert main(["explain", str(tmp_path / "nope.png"), *FAST]) == 2
    assert "nope.png: no such image file" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"junk")
    assert main(["explain", str(tmp_path / "bad.png"), *FAST]) == 1
    assert "not a readable image" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--out", "why.xyz"], "--out why.xyz: '.xyz' is not a figure format matplotlib writes; "
                           "end the name with one of "),
    (["--out", "why"], "--out why: the name has no suffix to tell the figure format"),
    (["--dpi", "0"], "--dpi 0: must be an int in the range [1, 1000]"),
    (["--dpi", "100000"], "--dpi 100000: must be an int in the range [1, 1000]"),
])
def test_explain_checks_its_output_before_segmenting(image_dir, tmp_path, monkeypatch, capsys,
                                                      args, message):
    """A traceback after the image was segmented (an unknown suffix), "Singular matrix"
    blamed on the image (--dpi 0), or std::bad_alloc (--dpi 100000)."""
    from sklearn_clasp import explain

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(explain, "explain_figure", lambda *a, **k: pytest.fail("segmented"))
    assert main(["explain", str(image_dir / "a.png"), *args, *FAST]) == 2
    assert message in _one_error_line(capsys.readouterr().err, "explain")
    assert list(tmp_path.iterdir()) == [image_dir]


def test_explain_a_directory_and_a_shared_config_file(image_dir, tmp_path, capsys):
    assert main(["explain", str(image_dir), *FAST]) == 2
    assert _one_error_line(capsys.readouterr().err, "explain").endswith(
        f"{image_dir}: is a directory, not an image file; clasp explain explains one image "
        f"(pass a file in it)")
    config = tmp_path / "clasp.toml"  # the shared file of docs/cli.md, run settings included
    config.write_text(f'inputs = ["{image_dir}"]\nout_dir = "{tmp_path / "out"}"\n'
                      f'n_jobs = 1\nembedder = "handcrafted"\nk_max = 6\n')
    fig = tmp_path / "fig.png"
    assert main(["explain", str(image_dir / "a.png"), "--config", str(config), "--out",
                 str(fig), "--dpi", "30", "-q"]) == 0
    assert fig.is_file() and not (tmp_path / "out").exists()
    config.write_text("n_jobs = 100000\n")  # checked all the same
    assert main(["explain", str(image_dir / "a.png"), "--config", str(config)]) == 2


def test_weights_unknown_model_is_a_usage_error(capsys):
    assert main(["weights", "--model", "foo"]) == 2
    line = _one_error_line(capsys.readouterr().err, "weights")
    assert line.endswith("--model 'foo': must be one of dinov2_vits14, dinov2_vits14_reg, "
                         "dinov2_vitb14, dinov2_vitb14_reg, dinov2_vitl14, dinov2_vitl14_reg, "
                         "dinov2_vitg14, dinov2_vitg14_reg")


# --------------------------------------------------------------------------
# python -m sklearn_clasp
# --------------------------------------------------------------------------
@pytest.mark.slow
def test_python_dash_m_is_the_same_command(image_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(*argv):
        return subprocess.run([sys.executable, "-m", "sklearn_clasp", *argv], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)

    done = run("--help")
    assert done.returncode == 0 and "usage: clasp" in done.stdout
    for command in ("segment", "evaluate", "report", "weights", "explain"):
        assert command in done.stdout
    done = run("segment", str(image_dir / "a.png"), "--out", "out", "--refine", "nearest", *FAST)
    assert done.returncode == 0, done.stderr
    assert "1 image(s): 1 segmented" in done.stdout
    assert (tmp_path / "out" / "a_mask.png").is_file()
    done = run("segment", "--k-min", "4", "--k-max", "2", "--out", "o", *FAST)
    assert done.returncode == 2 and "k_min=4 is larger than k_max=2" in done.stderr


def test_report_writes_the_page_of_a_run(image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(image_dir), "--out", str(out), *FAST, "-q"]) == 0
    assert main(["report", str(out)]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert '"a"' in page and '"b"' in page  # both records are in the page's data
    assert main(["report", str(out), "--html", str(tmp_path / "elsewhere.html"), "-q"]) == 0
    assert (tmp_path / "elsewhere.html").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err


# --------------------------------------------------------------------------
# bounds, addresses, output directories: exit 2 at once, one line
# --------------------------------------------------------------------------


def _one_error_line(err, command="segment"):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"clasp {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("option, value, allowed", [
    ("--n-jobs", "100000", "an int in the range [1, "),
    ("--n-jobs", "-100000", "an int in the range [-"),
    ("--max-attempts", "11", "an int in the range [1, 10]"),
    ("--chunk-size", "1000", "an int in the range [1, 256]"),
])
def test_work_bounds_hold_on_the_command_line_and_in_config_files(image_dir, tmp_path, capsys,
                                                                  option, value, allowed):
    """The options are made from segment_collection's constraints: the bounds come along."""
    out = tmp_path / "out"
    assert main(["segment", str(image_dir), "--out", str(out), *FAST, option, value]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{option} '{value}': must be " in line and allowed in line
    key = option[2:].replace("-", "_")
    config = tmp_path / "hostile.toml"
    config.write_text(f"{key} = {value}\n")
    assert main(["segment", str(image_dir), "--out", str(out), *FAST, "--config",
                 str(config)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"config file {config}: {key} {value}: must be " in line and allowed in line
    assert not out.exists()


@pytest.mark.parametrize("key, value, allowed", [
    ("segment__k_max", "1000000000", "an int in the range [1, 64]"),
    ("segment__n_init", "100000", "an int in the range [1, 100]"),
    ("refine__n_iter", "1000000000", "an int in the range [0, 1000]"),
    ("refine__n_jobs", "100000", "an int in the range [1, "),
    ("embed__n_jobs", "100000", "an int in the range [1, "),
    ("embed__n_threads", "100000", "an int in the range [1, "),
    ("embed__batch_size", "100000", "an int in the range [1, 4096]"),
])
def test_estimator_work_bounds_hold_on_the_command_line_and_in_config_files(
        image_dir, tmp_path, capsys, key, value, allowed):
    """A settings file may not start unbounded work through an estimator either."""
    out = tmp_path / "out"
    embedder = "dinov2" if key in ("embed__n_threads", "embed__batch_size") else "handcrafted"
    base = ["segment", str(image_dir), "--out", str(out), "--embedder", embedder]
    option = "--" + key.replace("__", "-").replace("_", "-")
    assert main([*base, option, value]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{option} '{value}': must be " in line and allowed in line
    config = tmp_path / "hostile.toml"
    config.write_text(f"{key} = {value}\n")
    assert main([*base, "--config", str(config)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"config file {config}: {key} {value}: must be " in line and allowed in line
    assert not out.exists()


def test_bad_scheduler_addresses_fail_at_once_with_exit_2(image_dir, tmp_path, capsys):
    """nonsense://x was a ValueError traceback (exit 1); 127.0.0.1:99999 waited out the
    30 s connect timeout; a refused port retried until the timeout too."""
    pytest.importorskip("distributed")
    import socket

    with socket.socket() as sock:  # a free port with nothing listening on it
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    for address, message in [
        ("nonsense://x", ("--scheduler 'nonsense://x': unknown scheme 'nonsense'; expected "
                          "one of ")),
        ("127.0.0.1:99999", "--scheduler '127.0.0.1:99999': the port must be in 1..65535"),
        (f"tcp://127.0.0.1:{free}", (f"cannot connect to the Dask scheduler: nothing listens "
                                     f"at 127.0.0.1:{free} (connection refused)")),
    ]:
        start = time.monotonic()
        status = main(["segment", str(image_dir), "--out", str(tmp_path / "out"), *FAST,
                       "--scheduler", address])
        assert (status, time.monotonic() - start < 5) == (2, True), address
        assert message in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_scheduler_without_dask_installed_names_the_extra(image_dir, tmp_path, capsys,
                                                          monkeypatch):
    """One check of the address, for Python and the CLI; without Dask both name the extra."""
    from sklearn_clasp import segment_collection

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    with pytest.raises(ImportError, match=r"scheduler 'tcp://127.0.0.1:1': needs Dask: pip "
                                          r"install 'sklearn-clasp\[dask\]'"):
        segment_collection(image_dir, tmp_path / "py", scheduler="tcp://127.0.0.1:1")
    status = main(["segment", str(image_dir), "--out", str(tmp_path / "out"), *FAST,
                   "--scheduler", "tcp://127.0.0.1:1"])
    assert status == 2
    assert _one_error_line(capsys.readouterr().err).endswith(
        "--scheduler 'tcp://127.0.0.1:1': needs Dask: pip install 'sklearn-clasp[dask]'")
    assert not (tmp_path / "out").exists() and not (tmp_path / "py").exists()


def test_output_directories_that_are_empty_or_hold_the_inputs_exit_2(image_dir, tmp_path,
                                                                    monkeypatch, capsys):
    """`--out .`, `--out INPUT` and `--out ""` dropped every input and exited 0 with
    '0 images'."""
    monkeypatch.chdir(tmp_path)
    for out in (".", str(image_dir), "images"):
        assert main(["segment", "images", "--out", out, *FAST]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "'images' lies inside" in line
        assert "(2 image file(s)): an output directory is never read as input" in line
    assert main(["segment", "images", "--out", "", *FAST]) == 2
    assert "--out-dir '': the output directory is empty" in _one_error_line(
        capsys.readouterr().err)
    config = tmp_path / "c.toml"
    config.write_text('out_dir = ""\n')
    assert main(["segment", "images", "--config", str(config), *FAST]) == 2
    assert "out_dir is empty" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml", "images"]
    assert sorted(p.name for p in image_dir.iterdir()) == ["a.png", "b.jpg", "notes.txt"]


def test_a_full_disk_exits_4_with_one_line(image_dir, tmp_path, monkeypatch, capsys):
    from sklearn_clasp.collection import store as store_module

    def full(path, array, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", os.fspath(path))

    monkeypatch.setattr(store_module, "save_png", full)
    out = tmp_path / "out"
    assert main(["segment", str(image_dir), "--out", str(out), *FAST]) == 4
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert line.startswith("clasp segment: error: the output disk is full, the run stopped: "
                           "could not write a_mask.png in ")
    assert "2 image(s): 0 segmented, 0 skipped (already done), 0 failed, 2 not done" in \
        captured.out
    assert not (out / "failures.jsonl").exists()


@pytest.mark.slow
def test_a_reader_that_goes_away_is_no_traceback(image_dir, tmp_path):
    """`clasp segment ... | head -1`: BrokenPipeError and exit 1."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "sklearn_clasp", "segment", str(image_dir),
                             "--out", str(tmp_path / "out"), *FAST],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the summary is printed
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and \
        "Exception ignored" not in stderr, stderr
    assert len(list((tmp_path / "out").glob("*.json"))) == 2


def test_explain_names_the_image_once(image_dir, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"junk")
    for image, status in [(tmp_path / "bad.png", 1), (tmp_path / "nope.png", 2),
                          (image_dir / "a.png", 0)]:
        out = tmp_path / f"{image.stem}_fig.png"
        assert main(["explain", str(image), "--out", str(out), "--dpi", "30", *FAST]) == status
        captured = capsys.readouterr()
        assert (captured.out + captured.err).count(str(image)) == (1 if status else 0), \
            captured
        if status == 0:
            assert captured.out.count(str(out)) == 1


def _other_value(setting, tmp_path):
    """A value of ``setting`` other than its default that its constraints allow, and its text."""
    from numbers import Integral

    from sklearn.utils._param_validation import Interval, StrOptions

    c, default = setting.constraints, setting.default
    name = setting.name.split("__", 1)[1]
    if name == "device":
        return "cpu" if default != "cpu" else "auto"
    if name == "memory":
        return str(tmp_path / "feature-cache")
    if name in ("weights", "weights_sha256"):
        return "random" if name == "weights" else "b" * 64
    for x in c:
        if isinstance(x, StrOptions):
            return sorted(x.options - {default, "auto"} if x.options - {default, "auto"}
                          else x.options - {default})[0]
    if "boolean" in c:
        return not default
    if "random_state" in c:
        return 11
    for x in c:
        if isinstance(x, Interval):
            lo = x.left if x.left is not None else 0
            candidate = (lo + 1 if x.type is Integral else lo + 0.5) if default is None \
                else (default + 1 if x.type is Integral else default * 0.5)
            if x.right is not None and candidate > x.right:
                candidate = x.left if x.type is Integral else (x.left + x.right) / 2
            if candidate != default:
                return candidate
    if Integral in c:
        return (default or 0) - 1
    raise AssertionError(f"no other value for {setting.name}")


def _every_pipeline_setting():
    from sklearn_clasp.cli import pipeline_setting_specs

    return [pytest.param(s, id=s.name + (f"[{s.embedder}]" if s.embedder else ""))
            for s in pipeline_setting_specs()]


@pytest.mark.parametrize("setting", _every_pipeline_setting())
@pytest.mark.parametrize("source", ["flag", "toml"])
def test_every_pipeline_setting_alone_reaches_its_parameter(setting, source, image_dir,
                                                            tmp_path, captured):
    """Generated from the estimators: each setting, given alone on the command line or in a
    config file, reaches its parameter (--embed-random-state and --embed-memory crashed)."""
    value = _other_value(setting, tmp_path)
    embedder = setting.embedder or "handcrafted"
    text = "none" if value is None else str(value).lower() if isinstance(value, bool) \
        else str(value)
    if source == "flag":
        extra = [setting.flag, text]
    else:
        config = tmp_path / "c.toml"
        step, key = setting.name.split("__", 1)
        literal = repr(value).lower() if isinstance(value, bool) else (
            f'"{value}"' if isinstance(value, str) else repr(value))
        config.write_text(f'embedder = "{embedder}"\n[{step}]\n{key} = {literal}\n')
        extra = ["--config", str(config)]
    argv = ["segment", str(image_dir), "--out", str(tmp_path / "o"), *extra]
    if source == "flag":
        argv += ["--embedder", embedder]
    assert main(argv) == 0, setting.name
    assert captured["pipeline"].get_params()[setting.name] == value


@pytest.mark.parametrize("args, message", [
    (["--segment-device", "cuda"], "segment__device='cuda' but CUDA is not available"),
    (["--refine-backend", "torch", "--refine-device", "cuda"],
     "refine__device='cuda' but CUDA is not available"),
    (["--embed-color-weight", "0", "--embed-texture-weight", "0", "--embed-position-weight",
      "0"], "color_weight, texture_weight and position_weight are all 0"),
])
def test_settings_that_cannot_work_here_are_usage_errors(image_dir, tmp_path, capsys, args,
                                                         message):
    """A CUDA device PyTorch does not see failed every image (exit 1), or was "could not load
    the embedder" (exit 3) like refused settings together; now one usage error, exit 2."""
    import torch

    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("CUDA is available here")
    status = main(["segment", str(image_dir), "--out", str(tmp_path / "o"), *FAST, *args])
    assert status == 2
    assert message in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()
    # the pydensecrf backend does not use the refiner's device: nothing to refuse
    if args[:2] == ["--refine-backend", "torch"]:
        assert main(["segment", str(image_dir), "--out", str(tmp_path / "o"), *FAST, "-q",
                     "--refine-device", "cuda"]) == 0


@pytest.mark.parametrize("argv, line", [
    (["evaluate", "--labels", "l", "--masks", "m", "--ignore-index", "abc"],
     "clasp evaluate: error: argument --ignore-index: invalid int value: 'abc' "
     "(see 'clasp evaluate --help')"),
    (["segment", "x.png", "--bogus"],
     "clasp segment: error: unrecognized arguments: --bogus (see 'clasp segment --help')"),
    (["--bogus"], "clasp: error: unrecognized arguments: --bogus (see 'clasp --help')"),
])
def test_argparse_errors_are_one_line_from_the_command(argv, line, capsys):
    """argparse printed its whole usage block, and the top-level parser's for an unknown
    option of a command."""
    assert main(argv) == 2
    assert capsys.readouterr().err == line + "\n"


@pytest.mark.parametrize("option", [["--k-max", "5"], ["--embedder", "handcrafted"],
                                    ["--paper"], ["--refine-n-iter", "3"], ["--n-jobs", "1"],
                                    ["--max-attempts", "2"]])
def test_evaluate_masks_refuses_segmentation_options(tmp_path, capsys, option):
    """With --masks nothing is segmented: --k-max 5 was silently ignored."""
    (tmp_path / "labels").mkdir()
    (tmp_path / "masks").mkdir()
    assert main(["evaluate", "--labels", str(tmp_path / "labels"), "--masks",
                 str(tmp_path / "masks"), *option]) == 2
    assert _one_error_line(capsys.readouterr().err, "evaluate").endswith(
        f"{option[0]} has no effect with --masks, which scores masks already made; it "
        f"applies with --images")


def test_a_file_where_a_directory_is_wanted_is_not_called_missing(image_dir, capsys):
    """clasp report FILE said "no such directory" for a file that exists."""
    file = image_dir / "a.png"
    assert main(["report", str(file)]) == 2
    assert f"{file}: exists but is not a directory" in _one_error_line(
        capsys.readouterr().err, "report")
    assert main(["evaluate", "--labels", str(file), "--masks", str(image_dir)]) == 2
    assert f"--labels {file}: exists but is not a directory" in _one_error_line(
        capsys.readouterr().err, "evaluate")
