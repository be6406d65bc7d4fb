"""Collections: find_images, segment_collection, outputs, resuming, failures."""

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.utils._param_validation import InvalidParameterError
from threadpoolctl import threadpool_limits

from sklearn_clasp import HandcraftedPatchEmbedder, make_clasp_pipeline
from sklearn_clasp.device import MAX_N_JOBS
from sklearn_clasp.collection import (
    FAILURES_FILE,
    MAX_ATTEMPTS,
    MAX_CHUNK_SIZE,
    CollectionReport,
    OutputDirectoryInUseError,
    SettingsMismatchError,
    segment_collection,
)
from sklearn_clasp.collection import store as store_module
from sklearn_clasp.collection.store import LOCK_FILE, OutputLock
from sklearn_clasp.datasets import make_shapes_image
from sklearn_clasp.io import ImageInput, find_images, temporary_name
from sklearn_clasp.pipeline import clasp_one, pipeline_settings, settings_hash
from sklearn_clasp.refine import CRFRefiner
from sklearn_clasp.visualize import overlay

SIZES = [(56, 70), (84, 98), (112, 140), (70, 84), (98, 112)]
STAGES = {"load", "embed", "affinity", "segment", "refine", "write"}


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    """k-means on a few dozen patches is much slower with OpenMP threads on a busy
    2-core machine; one thread keeps this file fast."""
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _pipe(**kwargs):
    kwargs.setdefault("random_state", 0)
    return make_clasp_pipeline("handcrafted", short_side=None, refine="nearest", **kwargs)


def _write_images(folder, n=len(SIZES), prefix="img"):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        image, _ = make_shapes_image(h, w, n_shapes=1 + i % 3, noise=3.0, random_state=i)
        path = folder / f"{prefix}{i}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def _read_png(path):
    with Image.open(path) as im:
        return np.asarray(im)


def _listing(folder):
    """The files of a directory but its lock file (always there after a run)."""
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)


def _expected_files(names, overlay=True):
    out = []
    for n in names:
        out += [f"{n}.json", f"{n}_mask.png"] + ([f"{n}_overlay.png"] if overlay else [])
    return sorted(out)


@pytest.fixture
def count_embedded(monkeypatch):
    """Count the images the handcrafted embedder embeds (runs in this process)."""
    calls = []
    original = HandcraftedPatchEmbedder.transform

    def counting(self, X):
        calls.append(len(X))
        return original(self, X)

    monkeypatch.setattr(HandcraftedPatchEmbedder, "transform", counting)
    return calls


# --------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------


def test_outputs_match_segment_image_and_json_records_them(tmp_path):
    paths = _write_images(tmp_path / "in", n=3)
    out = tmp_path / "out"
    pipe = _pipe()
    report = segment_collection(tmp_path / "in", out, pipeline=pipe)

    assert (report.n_done, report.n_skipped, report.n_failed) == (3, 0, 0)
    assert _listing(out) == _expected_files(["img0", "img1", "img2"])  # no temp files
    digest = settings_hash(pipe)
    for path in paths:
        name = path.stem
        image = np.asarray(Image.open(path).convert("RGB"))
        expected, record = clasp_one(_pipe(), str(path))
        mask = _read_png(out / f"{name}_mask.png")
        assert mask.shape == image.shape[:2]
        np.testing.assert_array_equal(mask, expected)
        np.testing.assert_array_equal(_read_png(out / f"{name}_overlay.png"),
                                      overlay(image, expected))
        meta = json.loads((out / f"{name}.json").read_text())
        assert meta["source"] == str(path.resolve())
        assert meta["name"] == name
        assert meta["input_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert meta["settings_hash"] == digest
        assert meta["settings"] == pipeline_settings(pipe)
        assert meta["settings"]["segment__k_max"] == 15
        assert meta["image_size"] == list(image.shape[:2])
        assert meta["grid_shape"] == [image.shape[0] // 14, image.shape[1] // 14]
        assert meta["n_clusters"] == record.info["n_clusters"] == len(np.unique(mask))
        assert meta["eigengap_k"] == record.info["eigengap_k"]
        assert meta["silhouette_scores"] == {
            str(k): v for k, v in record.info["silhouette_scores"].items()}
        np.testing.assert_allclose(meta["eigenvalues"], record.info["eigenvalues"])
        assert set(meta["timings"]) == STAGES
        assert all(v >= 0 for v in meta["timings"].values())
        assert meta["attempts"] == 1
        assert meta["outputs"] == {"mask": f"{name}_mask.png",
                                   "overlay": f"{name}_overlay.png"}
    results = {r["name"]: r for r in report.results}
    assert [r["name"] for r in report.results] == ["img0", "img1", "img2"]  # input order
    assert results["img1"]["status"] == "done"
    assert results["img1"]["n_clusters"] == json.loads(
        (out / "img1.json").read_text())["n_clusters"]


def test_report_counts_histogram_and_summary(tmp_path):
    _write_images(tmp_path / "in", n=3)
    report = segment_collection(tmp_path / "in", tmp_path / "out", pipeline=_pipe())
    ks = [r["n_clusters"] for r in report.results]
    expected = {k: ks.count(k) for k in sorted(set(ks))}
    assert report.segments_histogram == expected
    assert report.failures == []
    assert report.seconds > 0
    assert report.settings_hash == settings_hash(_pipe())
    text = report.summary()
    assert "3 image(s): 3 segmented, 0 skipped (already done), 0 failed" in text
    for k, n in expected.items():
        assert re.search(rf"K=\s*{k}\s+{n}\s+#+", text)


def test_without_overlay_and_with_explicit_image_inputs(tmp_path):
    paths = _write_images(tmp_path / "in", n=2)
    inputs = [ImageInput(paths[0], "first"), ImageInput(paths[1], "second")]
    report = segment_collection(inputs, tmp_path / "out", pipeline=_pipe(),
                                write_overlay=False)
    assert report.n_done == 2
    assert _listing(tmp_path / "out") == _expected_files(["first", "second"], overlay=False)
    assert json.loads((tmp_path / "out" / "first.json").read_text())["outputs"]["overlay"] \
        is None


# --------------------------------------------------------------------------
# find_images
# --------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """root/a.png, root/b.JPG, root/notes.txt, root/.hidden.png, root/sub/a.png,
    root/sub/deep dir/c d.png, root/.git/x.png, other/a.png"""
    root = tmp_path / "root"
    for rel in ["a.png", "b.JPG", "notes.txt", ".hidden.png", "sub/a.png",
                "sub/deep dir/c d.png", ".git/x.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.png").write_bytes(b"x")
    return tmp_path


def test_find_images_directory_recursive_and_not(tree):
    root = tree / "root"
    found = find_images(root)
    assert [(p.relative_to(root).as_posix(), n) for p, n in found] == [
        ("a.png", "a"), ("b.JPG", "b"), ("sub/a.png", "sub__a"),
        ("sub/deep dir/c d.png", "sub__deep_dir__c_d"),
    ]
    flat = find_images(root, recursive=False)
    assert [n for _, n in flat] == ["a", "b"]


def test_find_images_files_globs_and_duplicates(tree):
    root = tree / "root"
    # an explicit file is taken whatever its suffix; the same file twice is listed once
    found = find_images([root / "notes.txt", str(root / "a.png"), root])
    assert sorted(n for _, n in found) == ["a", "b", "notes", "sub__a", "sub__deep_dir__c_d"]
    assert len({os.path.realpath(p) for p, _ in found}) == len(found)

    # a glob keeps image files only and searches the directories it matches
    star = {p.relative_to(root).as_posix(): n for p, n in find_images(str(root / "*"))}
    assert sorted(star) == ["a.png", "b.JPG", "sub/a.png", "sub/deep dir/c d.png"]
    assert star["b.JPG"] == "b" and star["sub/deep dir/c d.png"] == "deep_dir__c_d"
    assert star["a.png"].startswith("a-") and star["sub/a.png"].startswith("a-")
    assert star["a.png"] != star["sub/a.png"]
    # ** spans folders when recursive
    deep = find_images(str(root / "**" / "*.png"))
    assert sorted(p.name for p, _ in deep) == ["a.png", "a.png", "c d.png"]

    # same stem from different folders: each gets a hash of its resolved path
    dup = find_images([root / "a.png", tree / "other" / "a.png"])
    names = [n for _, n in dup]
    assert len(set(names)) == 2
    for path, name in dup:
        digest = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:8]
        assert name == f"a-{digest}"
    # names that differ only in case collide too (case-insensitive file systems)
    (tree / "other" / "A.png").write_bytes(b"y")
    names = {p.name: n for p, n in find_images([root / "a.png", tree / "other" / "A.png"])}
    assert names["a.png"].startswith("a-") and names["A.png"].startswith("A-")


def test_find_images_names_are_safe(tmp_path):
    odd = ["..png", "...x.png", "é ü.png", "a;rm -rf.png", "-.png", "x" * 200 + ".png"]
    for name in odd:
        (tmp_path / name).write_bytes(b"x")
    found = find_images([tmp_path / n for n in odd])
    names = [n for _, n in found]
    assert len(set(names)) == len(odd)
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name), name
        assert not name.startswith(".")
        assert len(name) <= 130
        out = (tmp_path / "out" / f"{name}_overlay.png").resolve()
        assert out.parent == (tmp_path / "out").resolve()


def test_find_images_reports_every_input_that_matches_nothing(tree):
    (tree / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        find_images([tree / "root", tree / "missing.png", str(tree / "*.tif"), tree / "empty"])
    message = str(err.value)
    for bad in ["missing.png", "*.tif", "empty"]:
        assert bad in message
    assert "'" + str(tree / "root") + "'" not in message
    with pytest.raises(ValueError, match="no inputs"):
        find_images([])
    with pytest.raises(TypeError, match="paths or glob patterns"):
        find_images([3])


# --------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------


def test_settings_hash_tracks_results_not_speed():
    base = settings_hash(_pipe())
    assert base == settings_hash(_pipe())
    assert base != settings_hash(_pipe(k_max=8))
    assert base != settings_hash(_pipe(random_state=1))
    assert base != settings_hash(make_clasp_pipeline("handcrafted", short_side=None,
                                                     random_state=0))  # refine="crf"
    fast = _pipe().set_params(refine__n_jobs=2, embed__n_jobs=2)
    assert settings_hash(fast) == base
    settings = pipeline_settings(_pipe())
    assert settings["embed"] == "handcrafted"
    assert "segment" not in settings  # the usual steps are not named
    assert settings["refine__method"] == "nearest"
    assert not any(k.endswith("n_jobs") or k == "memory" for k in settings)
    json.dumps(settings, allow_nan=False)


# --------------------------------------------------------------------------
# resuming
# --------------------------------------------------------------------------


def test_rerun_skips_complete_images(tmp_path, count_embedded):
    _write_images(tmp_path / "in", n=4)
    out = tmp_path / "out"
    segment_collection(tmp_path / "in", out, pipeline=_pipe())
    assert sum(count_embedded) == 4
    before = {name: (out / name).stat().st_mtime_ns for name in _listing(out)}
    count_embedded.clear()
    report = segment_collection(tmp_path / "in", out, pipeline=_pipe())
    assert count_embedded == []
    assert (report.n_done, report.n_skipped) == (0, 4)
    assert all(r["n_clusters"] is not None for r in report.results)
    assert {name: (out / name).stat().st_mtime_ns for name in _listing(out)} == before


def test_changed_settings_or_bytes_or_overwrite_are_redone(tmp_path, count_embedded):
    paths = _write_images(tmp_path / "in", n=3)
    out = tmp_path / "out"
    segment_collection(tmp_path / "in", out, pipeline=_pipe())

    count_embedded.clear()  # other settings, with overwrite: everything is redone
    report = segment_collection(tmp_path / "in", out, pipeline=_pipe(k_max=3), overwrite=True)
    assert (report.n_done, sum(count_embedded)) == (3, 3)
    assert json.loads((out / "img0.json").read_text())["settings"]["segment__k_max"] == 3

    count_embedded.clear()  # other bytes in one file: that one is redone
    image, _ = make_shapes_image(56, 70, n_shapes=3, random_state=9)
    Image.fromarray(image).save(paths[1])
    report = segment_collection(tmp_path / "in", out, pipeline=_pipe(k_max=3))
    assert [r["status"] for r in report.results] == ["skipped", "done", "skipped"]
    assert sum(count_embedded) == 1
    assert json.loads((out / "img1.json").read_text())["input_sha256"] == hashlib.sha256(
        paths[1].read_bytes()).hexdigest()

    count_embedded.clear()  # a missing mask: redone
    (out / "img2_mask.png").unlink()
    report = segment_collection(tmp_path / "in", out, pipeline=_pipe(k_max=3))
    assert [r["status"] for r in report.results] == ["skipped", "skipped", "done"]

    count_embedded.clear()  # overwrite: everything is redone
    report = segment_collection(tmp_path / "in", out, pipeline=_pipe(k_max=3), overwrite=True)
    assert (report.n_done, sum(count_embedded)) == (3, 3)
    assert _listing(out) == _expected_files(["img0", "img1", "img2"])


def test_other_settings_are_refused_naming_what_differs(tmp_path, count_embedded):
    """A re-run with other settings must not silently replace the earlier results."""
    _write_images(tmp_path / "in", n=3)
    out = tmp_path / "out"
    segment_collection(tmp_path / "in", out, pipeline=_pipe())
    stamps = {name: (out / name).stat().st_mtime_ns for name in _listing(out)}
    count_embedded.clear()
    for pipe, differs in [(_pipe(k_max=3), "segment__k_max: 15 there, 3 now"),
                          (_pipe(random_state=1), "segment__random_state: 0 there, 1 now")]:
        with pytest.raises(SettingsMismatchError) as err:
            segment_collection(tmp_path / "in", out, pipeline=pipe)
        message = str(err.value)
        assert f"{str(out)!r} holds the outputs of 3 image(s) made with other settings" \
            in message
        assert differs in message
        assert "overwrite=True (clasp: --overwrite)" in message
    # also for new images added to the directory: one directory, one set of settings
    _write_images(tmp_path / "more", n=1, prefix="new")
    with pytest.raises(SettingsMismatchError):
        segment_collection(tmp_path / "more", out, pipeline=_pipe(k_max=3))
    assert count_embedded == []  # refused before any image was read
    assert {name: (out / name).stat().st_mtime_ns for name in _listing(out)} == stamps


def test_outputs_inside_an_input_directory_are_not_taken_as_inputs(tmp_path):
    _write_images(tmp_path / "in", n=2)
    out = tmp_path / "in" / "segmented"
    assert segment_collection(tmp_path / "in", out, pipeline=_pipe()).n_done == 2
    report = segment_collection(tmp_path / "in", out, pipeline=_pipe())
    assert (report.n_images, report.n_skipped) == (2, 2)


def test_interrupted_run_leaves_complete_outputs_and_resumes(tmp_path, monkeypatch,
                                                             count_embedded):
    _write_images(tmp_path / "in", n=5)
    out = tmp_path / "out"
    real_write = store_module.atomic_write
    written = []

    def interrupting_write(path, write, **kwargs):
        # Ctrl-C while writing the third image's overlay (its mask is already written)
        if path.name == "img2_overlay.png":
            def partial(tmp):
                tmp.write_bytes(b"half a PNG")
                raise KeyboardInterrupt
            return real_write(path, partial, **kwargs)
        written.append(path.name)
        return real_write(path, write, **kwargs)

    monkeypatch.setattr(store_module, "atomic_write", interrupting_write)
    with pytest.raises(KeyboardInterrupt):
        segment_collection(tmp_path / "in", out, pipeline=_pipe())
    # two complete images, the third's mask without its record; no temporary files
    assert _listing(out) == sorted(_expected_files(["img0", "img1"]) + ["img2_mask.png"])

    monkeypatch.setattr(store_module, "atomic_write", real_write)
    count_embedded.clear()
    report = segment_collection(tmp_path / "in", out, pipeline=_pipe())
    assert [r["status"] for r in report.results] == ["skipped"] * 2 + ["done"] * 3
    assert sum(count_embedded) == 3
    assert _listing(out) == _expected_files([f"img{i}" for i in range(5)])


def test_the_next_chunk_is_decoded_while_this_one_is_segmented(tmp_path, monkeypatch):
    """img1 is decoded on the loading thread while img0 is still being written."""
    import threading

    from sklearn_clasp.collection import engine

    _write_images(tmp_path / "in", n=3)
    real_load, real_write = engine.load_image, store_module.atomic_write
    loaded, during_write = {}, []

    def recording_load(path, **kwargs):
        loaded[Path(path).stem] = threading.current_thread().name
        return real_load(path, **kwargs)

    def waiting_write(path, write, **kwargs):
        if path.name == "img0.json":  # img1 is loaded meanwhile, or never before this
            for _ in range(1000):
                if "img1" in loaded:
                    break
                threading.Event().wait(0.01)
            during_write.append("img1" in loaded)
        return real_write(path, write, **kwargs)

    monkeypatch.setattr(engine, "load_image", recording_load)
    monkeypatch.setattr(store_module, "atomic_write", waiting_write)
    report = segment_collection(tmp_path / "in", tmp_path / "out", pipeline=_pipe(),
                                chunk_size=1)
    assert [r["status"] for r in report.results] == ["done"] * 3
    assert sorted(loaded) == ["img0", "img1", "img2"]
    assert during_write == [True]
    assert set(loaded.values()) == {"clasp-load_0"}, loaded
    with open(tmp_path / "out" / "img1.json") as fh:
        assert json.load(fh)["timings"]["load"] > 0


# --------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------


def test_corrupt_image_is_recorded_once_and_others_are_done(tmp_path, caplog):
    _write_images(tmp_path / "in", n=3)
    (tmp_path / "in" / "broken.png").write_bytes(b"this is not a PNG")
    out = tmp_path / "out"
    report = segment_collection(tmp_path / "in", out, pipeline=_pipe(), max_attempts=3)
    assert (report.n_done, report.n_failed) == (3, 1)
    (failure,) = report.failures
    assert failure["name"] == "broken"
    assert failure["source"] == str((tmp_path / "in" / "broken.png").resolve())
    assert failure["error"].startswith("ValueError: ")
    assert "not a readable image" in failure["error"]
    assert failure["attempts"] == 1  # a deterministic failure is not retried
    assert failure["n_clusters"] is None
    assert _listing(out) == sorted(_expected_files(["img0", "img1", "img2"]) + [FAILURES_FILE])
    (line,) = (out / FAILURES_FILE).read_text().splitlines()
    logged = json.loads(line)
    assert (logged["name"], logged["error_type"], logged["attempts"]) == ("broken",
                                                                          "ValueError", 1)
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "broken" in r.message]
    assert len(warnings) == 1  # one message
    assert "broken" in report.summary() and "failures:" in report.summary()
    assert report.segments_histogram == CollectionReport(
        [r for r in report.results if r["status"] == "done"]).segments_histogram


class _FailsOnce(CRFRefiner):
    """A refiner whose first call fails."""

    def transform(self, X):
        if not getattr(type(self), "failed", False):
            type(self).failed = True
            raise OSError("disk hiccup")
        return super().transform(X)


def test_a_failing_step_fails_its_image_once(tmp_path):
    _write_images(tmp_path / "in", n=2)
    pipe = _pipe()
    pipe.steps[-1] = ("refine", _FailsOnce(method="nearest"))
    _FailsOnce.failed = False
    report = segment_collection(tmp_path / "in", tmp_path / "out", pipeline=pipe)
    assert [r["status"] for r in report.results] == ["failed", "done"]
    assert report.failures[0]["error"] == "OSError: disk hiccup"
    assert report.failures[0]["attempts"] == 1
    assert json.loads((tmp_path / "out" / "img1.json").read_text())["attempts"] == 1
    # the next run finishes the image
    assert segment_collection(tmp_path / "in", tmp_path / "out", pipeline=pipe).n_done == 1


# --------------------------------------------------------------------------
# parallelism and progress
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_give_the_same_masks_as_one(tmp_path):
    _write_images(tmp_path / "in", n=5)
    one = segment_collection(tmp_path / "in", tmp_path / "one", pipeline=_pipe())
    two = segment_collection(tmp_path / "in", tmp_path / "two", pipeline=_pipe(), n_jobs=2,
                             chunk_size=3)
    assert two.n_done == 5
    assert [r["name"] for r in two.results] == [r["name"] for r in one.results]
    assert [r["n_clusters"] for r in two.results] == [r["n_clusters"] for r in one.results]
    for i in range(5):
        np.testing.assert_array_equal(_read_png(tmp_path / "one" / f"img{i}_mask.png"),
                                      _read_png(tmp_path / "two" / f"img{i}_mask.png"))
    assert _listing(tmp_path / "two") == _listing(tmp_path / "one")


def test_progress_bar_shows_images_per_second(tmp_path, capsys):
    _write_images(tmp_path / "in", n=2)
    segment_collection(tmp_path / "in", tmp_path / "out", pipeline=_pipe(), progress=True)
    err = capsys.readouterr().err
    assert "2/2" in err and "img/s" in err
    segment_collection(tmp_path / "in", tmp_path / "out2", pipeline=_pipe())
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------


def test_bad_arguments_are_refused_with_a_fix(tmp_path):
    _write_images(tmp_path / "in", n=1)
    src = tmp_path / "in"
    with pytest.raises(ValueError, match="either client= or scheduler="):
        segment_collection(src, tmp_path / "out", pipeline=_pipe(), client=object(),
                           scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="security= applies to scheduler="):
        segment_collection(src, tmp_path / "out", pipeline=_pipe(), security=object())
    with pytest.raises(InvalidParameterError, match="max_attempts"):
        segment_collection(src, tmp_path / "out", pipeline=_pipe(), max_attempts=0)
    with pytest.raises(InvalidParameterError, match="pipeline"):
        segment_collection(src, tmp_path / "out", pipeline=HandcraftedPatchEmbedder())
    with pytest.raises(TypeError, match="at least three steps"):
        segment_collection(src, tmp_path / "out", pipeline=_pipe()[:2])
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        segment_collection(src, tmp_path / "file", pipeline=_pipe())
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        segment_collection(tmp_path / "nothing-here", tmp_path / "out", pipeline=_pipe())
    assert not (tmp_path / "out").exists()  # nothing is created before the inputs check out


class _CrashesOnPoison(CRFRefiner):
    """A refiner that kills its process on images named 'poison' (a native crash, an OOM)."""

    def transform(self, X):
        if any("poison" in (rec.source or "") for rec in X):
            os._exit(1)
        return super().transform(X)


@pytest.mark.slow
def test_image_that_kills_its_worker_fails_alone(tmp_path):
    paths = _write_images(tmp_path / "in", n=4)
    paths[2].rename(tmp_path / "in" / "poison.png")
    pipe = _pipe()
    pipe.steps[-1] = ("refine", _CrashesOnPoison(method="nearest"))
    report = segment_collection(tmp_path / "in", tmp_path / "out", pipeline=pipe, n_jobs=2,
                                max_attempts=2)
    assert (report.n_done, report.n_failed) == (3, 1)
    (failure,) = report.failures
    assert failure["name"] == "poison"
    assert failure["error"].startswith("WorkerDied: ")
    assert failure["attempts"] == 2
    assert _listing(tmp_path / "out") == sorted(
        _expected_files(["img0", "img1", "img3"]) + [FAILURES_FILE])
    # the pool works again afterwards (another refiner class: other settings, all redone)
    again = segment_collection(tmp_path / "in", tmp_path / "out", pipeline=_pipe(), n_jobs=2,
                               overwrite=True)
    assert again.n_done == 4


def test_a_killed_writer_leaves_no_temporary_file_after_an_interruption(tmp_path,
                                                                        monkeypatch):
    """A worker killed mid-write cannot clean up; the interrupted run removes its files."""
    _write_images(tmp_path / "in", n=3)
    out = tmp_path / "out"
    real_write = store_module.atomic_write

    def killed_mid_write(path, write, **kwargs):
        if path.name == "img1_mask.png":  # as if SIGKILLed: the temporary file stays
            temporary_name(path, kwargs["tag"]).write_bytes(b"half")
            raise KeyboardInterrupt
        return real_write(path, write, **kwargs)

    (out / "stranger").mkdir(parents=True)  # others' files are left alone
    (out / ".someone-else.tmp").write_bytes(b"x")
    monkeypatch.setattr(store_module, "atomic_write", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        segment_collection(tmp_path / "in", out, pipeline=_pipe())
    assert _listing(out) == sorted([".someone-else.tmp", "stranger"]
                                   + _expected_files(["img0"]))

    # a run SIGKILLed mid-write cannot clean up: the next run (holding the lock) does
    killed = temporary_name(out / "img1_mask.png", "0123456789abcdef")
    killed.write_bytes(b"half")
    monkeypatch.setattr(store_module, "atomic_write", real_write)
    assert segment_collection(tmp_path / "in", out, pipeline=_pipe()).n_done == 2
    assert not killed.exists()
    assert _listing(out) == sorted([".someone-else.tmp", "stranger"]
                                   + _expected_files(["img0", "img1", "img2"]))


def test_images_over_the_pixel_limit_fail_alone(tmp_path):
    _write_images(tmp_path / "in", n=3)  # 56x70, 84x98, 112x140
    report = segment_collection(tmp_path / "in", tmp_path / "out", pipeline=_pipe(),
                                max_image_pixels=84 * 98, max_attempts=1)
    assert [r["status"] for r in report.results] == ["done", "done", "failed"]
    (failure,) = report.failures
    assert failure["error"].startswith("ImageTooLargeError: ")
    assert "140 x 112 pixels (15680 pixels) is more than the limit of 8232" in failure["error"]
    assert _listing(tmp_path / "out") == sorted(_expected_files(["img0", "img1"])
                                                + [FAILURES_FILE])
    with pytest.raises(InvalidParameterError, match="max_image_pixels"):
        segment_collection(tmp_path / "in", tmp_path / "out", pipeline=_pipe(),
                           max_image_pixels=0)


def test_find_images_takes_broken_links_named_or_found_so_that_they_are_reported(tmp_path):
    folder = tmp_path / "in"
    _write_images(folder, n=1)
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    (folder / "loop.png").symlink_to("loop.png")
    assert sorted(n for _, n in find_images(folder)) == ["dangling", "img0", "loop"]
    assert [n for _, n in find_images(folder / "loop.png")] == ["loop"]
    report = segment_collection(folder, tmp_path / "out", pipeline=_pipe(), max_attempts=1)
    errors = {r["name"]: r["error"] for r in report.failures}
    assert "broken symbolic link" in errors["dangling"]
    assert "symbolic link loop" in errors["loop"]


def test_directories_that_cannot_be_listed(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "in"
    _write_images(folder, n=1)
    _write_images(folder / "locked", n=1, prefix="hidden")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level("WARNING", logger="sklearn_clasp.io"):
        assert [n for _, n in find_images(folder)] == ["img0"]
    assert "cannot list the directory" in caplog.text and "locked" in caplog.text
    with pytest.raises(PermissionError, match="cannot list the directory .*locked.* Make it "
                                              "readable"):
        find_images(folder / "locked")


# --------------------------------------------------------------------------
# bounds on the work
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name, value", [
    ("n_jobs", MAX_N_JOBS + 1), ("n_jobs", 100_000), ("n_jobs", -MAX_N_JOBS - 1),
    ("n_jobs", 0), ("max_attempts", MAX_ATTEMPTS + 1), ("max_attempts", 0),
    ("chunk_size", MAX_CHUNK_SIZE + 1), ("chunk_size", 0),
])
def test_work_parameters_are_bounded(tmp_path, name, value):
    """n_jobs=100000 spawned 338 processes for one image."""
    _write_images(tmp_path / "in", n=1)
    with pytest.raises(InvalidParameterError, match=name):
        segment_collection(tmp_path / "in", tmp_path / "out", pipeline=_pipe(),
                           **{name: value})
    assert not (tmp_path / "out").exists()  # refused before any work


def test_the_bounds_are_the_machine_and_documented_caps():
    import joblib

    assert MAX_N_JOBS == joblib.cpu_count() >= 1
    assert (MAX_ATTEMPTS, MAX_CHUNK_SIZE) == (10, 256)
    constraints = segment_collection._skl_parameter_constraints  # what the CLI is made of
    assert [(c.left, c.right) for c in constraints["n_jobs"][:2]] == [
        (-MAX_N_JOBS, -1), (1, MAX_N_JOBS)]
    assert constraints["max_attempts"][0].right == MAX_ATTEMPTS
    assert constraints["chunk_size"][1].right == MAX_CHUNK_SIZE


# --------------------------------------------------------------------------
# one run at a time, outputs found by their bytes
# --------------------------------------------------------------------------


def test_a_held_output_directory_is_refused_at_once(tmp_path, count_embedded):
    _write_images(tmp_path / "in", n=2)
    out = tmp_path / "out"
    out.mkdir()
    held = r"another run is writing into the output directory .* \(run_id someone-else, pid \d+"
    with OutputLock(out, "someone-else"), pytest.raises(OutputDirectoryInUseError, match=held):
        segment_collection(tmp_path / "in", out, pipeline=_pipe())
    assert count_embedded == [] and _listing(out) == []
    assert segment_collection(tmp_path / "in", out, pipeline=_pipe()).n_done == 2
    assert (out / LOCK_FILE).read_text() == ""  # released: the holder is gone


def _edge(tmp_path):
    """edge/x.png, edge/a/x.png (other bytes), edge/a/y.png"""
    edge = tmp_path / "edge"
    paths = _write_images(edge / "a", n=2)
    paths[0].rename(edge / "a" / "x.png")
    paths[1].rename(edge / "a" / "y.png")
    image, _ = make_shapes_image(70, 84, n_shapes=3, noise=3.0, random_state=7)
    Image.fromarray(image).save(edge / "x.png")
    return edge


def test_an_image_reached_through_another_input_path_is_not_done_again(tmp_path,
                                                                       count_embedded):
    """`clasp segment edge` names edge/a/x.png a__x; `clasp segment edge/a` names it x."""
    edge = _edge(tmp_path)
    out = tmp_path / "out"
    first = segment_collection(edge, out, pipeline=_pipe())
    assert sorted(r["name"] for r in first.results) == ["a__x", "a__y", "x"]
    listing = _listing(out)
    stamps = {name: (out / name).stat().st_mtime_ns for name in listing}
    count_embedded.clear()

    again = segment_collection(edge / "a", out, pipeline=_pipe())
    assert [(r["name"], r["status"]) for r in again.results] == [("a__x", "skipped"),
                                                                 ("a__y", "skipped")]
    assert count_embedded == []
    assert _listing(out) == listing  # no x_mask.png written over edge/x.png's outputs
    assert {name: (out / name).stat().st_mtime_ns for name in listing} == stamps
    assert json.loads((out / "x.json").read_text())["source"] == str(edge / "x.png")


def test_the_other_way_round_no_input_overwrites_another_files_outputs(tmp_path):
    edge = _edge(tmp_path)
    out = tmp_path / "out"
    segment_collection(edge / "a", out, pipeline=_pipe())  # edge/a/x.png -> x
    report = segment_collection(edge, out, pipeline=_pipe())
    names = {Path(r["source"]).relative_to(edge).as_posix(): (r["name"], r["status"])
             for r in report.results}
    assert names["a/x.png"] == ("x", "skipped") and names["a/y.png"] == ("y", "skipped")
    other, status = names["x.png"]  # edge/x.png: another file named x, done under a new name
    assert status == "done" and other.startswith("x-") and other != "x"
    assert json.loads((out / "x.json").read_text())["source"] == str(edge / "a" / "x.png")
    assert json.loads((out / f"{other}.json").read_text())["source"] == str(edge / "x.png")
    # and a re-run of either finds everything where it is
    assert segment_collection(edge, out, pipeline=_pipe()).n_skipped == 3
    assert segment_collection(edge / "a", out, pipeline=_pipe()).n_skipped == 2


def test_a_moved_collection_is_recognised_by_its_bytes(tmp_path, count_embedded):
    _write_images(tmp_path / "photos" / "cats", n=2)
    out = tmp_path / "out"
    segment_collection(tmp_path / "photos", out, pipeline=_pipe())  # cats__img0, cats__img1
    (tmp_path / "photos" / "cats").rename(tmp_path / "pets")
    count_embedded.clear()
    report = segment_collection(tmp_path / "pets", out, pipeline=_pipe())  # img0, img1
    assert [(r["name"], r["status"]) for r in report.results] == [
        ("cats__img0", "skipped"), ("cats__img1", "skipped")]
    assert count_embedded == []
    assert _listing(out) == _expected_files(["cats__img0", "cats__img1"])
    # overwrite redoes them in place: still no duplicate
    again = segment_collection(tmp_path / "pets", out, pipeline=_pipe(), overwrite=True)
    assert again.n_done == 2 and _listing(out) == _expected_files(["cats__img0", "cats__img1"])
    assert json.loads((out / "cats__img0.json").read_text())["source"] == str(
        tmp_path / "pets" / "img0.png")


def test_a_copy_beside_its_original_gets_outputs_of_its_own(tmp_path):
    """A copy was taken for its original moved elsewhere: "skipped", and no outputs under
    its own name (clasp evaluate found no mask for it)."""
    import shutil

    (original,) = _write_images(tmp_path / "a", n=1)
    out = tmp_path / "out"
    segment_collection(tmp_path / "a", out, pipeline=_pipe())
    (tmp_path / "b").mkdir()
    shutil.copy(original, tmp_path / "b" / "copy.png")
    os.link(original, tmp_path / "b" / "hardlink.png")
    report = segment_collection(tmp_path / "b", out, pipeline=_pipe())
    assert sorted((r["name"], r["status"]) for r in report.results) == [
        ("copy", "done"), ("img0", "skipped")]  # the hard link is the original itself
    assert _listing(out) == _expected_files(["copy", "img0"])
    np.testing.assert_array_equal(_read_png(out / "copy_mask.png"),
                                  _read_png(out / "img0_mask.png"))


def test_an_edited_image_is_redone_in_place(tmp_path):
    paths = _write_images(tmp_path / "in", n=2)
    out = tmp_path / "out"
    segment_collection(tmp_path / "in", out, pipeline=_pipe())
    image, _ = make_shapes_image(56, 70, n_shapes=3, random_state=11)
    Image.fromarray(image).save(paths[0])
    report = segment_collection(tmp_path / "in", out, pipeline=_pipe())
    assert [(r["name"], r["status"]) for r in report.results] == [("img0", "done"),
                                                                 ("img1", "skipped")]
    assert _listing(out) == _expected_files(["img0", "img1"])


# --------------------------------------------------------------------------
# inputs inside the output directory
# --------------------------------------------------------------------------


def test_inputs_that_are_all_inside_the_output_directory_are_an_error_saying_why(tmp_path):
    """`clasp segment inB --out inB` ran 0 images and exited 0."""
    _write_images(tmp_path / "inB", n=2)
    for out in (tmp_path / "inB", tmp_path):
        with pytest.raises(FileNotFoundError, match=r"'[^']*inB' lies inside '[^']*' and is "
                                                    r"left out \(2 image file\(s\)\): an "
                                                    r"output directory is never read as "
                                                    r"input"):
            segment_collection(tmp_path / "inB", out, pipeline=_pipe())
    given = find_images(tmp_path / "inB")
    with pytest.raises(FileNotFoundError, match="all 2 image.* lie inside the output"):
        segment_collection(given, tmp_path / "inB", pipeline=_pipe())
    with pytest.raises(ValueError, match="out_dir is empty"):
        segment_collection(tmp_path / "inB", "", pipeline=_pipe())
    assert sorted(p.name for p in (tmp_path / "inB").iterdir()) == ["img0.png", "img1.png"]


def test_the_output_tree_is_left_out_before_names_are_made(tmp_path, count_embedded):
    """With --out inside the inputs and a recursive glob, the masks named like the inputs
    turned every name into name-<hash>: the resume redid everything beside the old files."""
    _write_images(tmp_path / "in", n=2)
    out = tmp_path / "in" / "segmented"
    pattern = str(tmp_path / "in" / "**" / "*.png")
    first = segment_collection(pattern, out, pipeline=_pipe())
    assert [r["name"] for r in first.results] == ["img0", "img1"]
    count_embedded.clear()
    again = segment_collection(pattern, out, pipeline=_pipe())
    assert [(r["name"], r["status"]) for r in again.results] == [("img0", "skipped"),
                                                                 ("img1", "skipped")]
    assert count_embedded == [] and _listing(out) == _expected_files(["img0", "img1"])
    assert [n for _, n in find_images(pattern, exclude=out)] == ["img0", "img1"]


def test_an_image_started_again_after_its_worker_died_is_not_redone(tmp_path):
    """A worker killed after writing an image, before its result came back: the image is
    started again and must find its outputs, not segment and write them a second time."""
    from sklearn_clasp import __version__
    from sklearn_clasp.collection.engine import Job, RunContext, segment_task
    from sklearn_clasp.collection.store import OutputStore
    from sklearn_clasp.io import file_sha256, load_image

    (path,) = _write_images(tmp_path / "in", n=1)
    out = tmp_path / "out"
    pipe = _pipe()
    store = OutputStore(out, "run-1").prepare()
    ctx = RunContext(digest=settings_hash(pipe), settings=pipeline_settings(pipe),
                     max_image_pixels=None, overwrite=False, version=__version__)
    (record,) = pipe[0].fit(None).transform([load_image(path)])
    job = Job(index=0, name="img0", path=str(path), sha256=file_sha256(path))
    assert segment_task(job, record, pipe, store, ctx)["status"] == "done"
    stamps = {name: (out / name).stat().st_mtime_ns for name in _listing(out)}
    job.attempts = 2
    again = segment_task(job, record, pipe, store, ctx)
    assert (again["status"], again["n_clusters"]) == ("done", json.loads(
        (out / "img0.json").read_text())["n_clusters"])
    assert {name: (out / name).stat().st_mtime_ns for name in _listing(out)} == stamps


class _DiesOnce(CRFRefiner):
    """Kills its worker process the first time it refines 'img2' (a marker file: the
    workers are other processes)."""

    def __init__(self, method="nearest", marker_dir=None):
        super().__init__(method=method)
        self.marker_dir = marker_dir

    def transform(self, X):
        if any((rec.source or "").endswith("img2.png") for rec in X):
            try:
                os.close(os.open(os.path.join(self.marker_dir, "died"),
                                 os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return super().transform(X)


@pytest.mark.slow
def test_a_worker_killed_early_costs_nothing_and_the_run_goes_on(tmp_path):
    """More images were submitted to the broken pool after the death: a traceback."""
    _write_images(tmp_path / "in", n=12)
    pipe = _pipe()
    pipe.steps[-1] = ("refine", _DiesOnce(marker_dir=str(tmp_path)))
    report = segment_collection(tmp_path / "in", tmp_path / "out", pipeline=pipe, n_jobs=2,
                                chunk_size=2)
    assert (tmp_path / "died").exists()
    assert (report.n_done, report.n_failed) == (12, 0)
    assert _listing(tmp_path / "out") == _expected_files([f"img{i}" for i in range(12)])
    attempts = {r["name"]: r["attempts"] for r in report.results}
    assert attempts["img2"] == 2 and min(attempts.values()) == 1


@pytest.mark.parametrize("setting, value, need", [
    ("refine__n_iter", -1, "an int in the range [0, 1000]"),
    ("segment__device", "gpu", "None, 'auto', 'cpu', 'cuda' or 'cuda:<index>'"),
    ("refine__device", "gpu", "'auto', 'cpu', 'cuda' or 'cuda:<index>'"),
])
def test_a_bad_setting_fails_once_before_any_image(tmp_path, setting, value, need):
    """It failed every image, one message each (10,000 for 10,000 images): now it
    is refused once, naming the setting, and nothing is written."""
    _write_images(tmp_path / "in", 2)
    pipe = make_clasp_pipeline("handcrafted", random_state=0).set_params(**{setting: value})
    with pytest.raises(ValueError) as err:
        segment_collection(tmp_path / "in", tmp_path / "out", pipeline=pipe)
    assert str(err.value) == (f"segment_collection: {setting}={value!r}: must be {need}. "
                              f"Change it with pipeline.set_params({setting}=...).")
    assert not (tmp_path / "out").exists()


def test_a_device_that_is_not_there_fails_once_before_any_image(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    _write_images(tmp_path / "in", 2)
    pipe = make_clasp_pipeline("handcrafted", random_state=0).set_params(segment__device="cuda")
    with pytest.raises(ValueError, match=r"^segment_collection: segment__device='cuda' but "
                                         r"CUDA is not available"):
        segment_collection(tmp_path / "in", tmp_path / "out", pipeline=pipe)
    assert not (tmp_path / "out").exists()


def test_find_images_refuses_an_array_without_printing_it():
    """The message held the whole array's repr."""
    with pytest.raises(TypeError) as err:
        find_images([np.zeros((300, 300, 3))])
    assert str(err.value) == (
        "find_images: inputs must be paths or glob patterns; got an array of shape "
        "(300, 300, 3). Segment an image array with clasp_one(pipeline, image), or a list of "
        "them with pipeline.fit_predict(images).")


def test_a_pipeline_cut_before_its_refiner_fails_once(tmp_path):
    """Every image failed with the same "returned records, not masks" error."""
    _write_images(tmp_path / "in", 2)
    cut = make_clasp_pipeline("handcrafted", random_state=0)[:-1]
    with pytest.raises(TypeError, match=r"^segment_collection: the pipeline's last step is "
                                        r"'segment', which returns records, not masks"):
        segment_collection(tmp_path / "in", tmp_path / "out", pipeline=cut)
    assert not (tmp_path / "out").exists()
