"""Output paths: names derived from inputs never leave the output directory, never
collide, never write through a symbolic link; the output directory is checked up
front; a full disk leaves no partial file."""

import errno
import json
import os
import re
import uuid

import numpy as np
import pytest
from PIL import Image
from threadpoolctl import threadpool_limits

from sklearn_clasp import HandcraftedPatchEmbedder, make_clasp_pipeline
from sklearn_clasp import visualize
from sklearn_clasp.cli import main
from sklearn_clasp.collection import FAILURES_FILE, RunStoppedError, segment_collection
from sklearn_clasp.collection import store as store_module
from sklearn_clasp.collection.store import LOCK_FILE
from sklearn_clasp.io import ImageInput, atomic_write, find_images
from sklearn_clasp.datasets import make_shapes_image
from sklearn_clasp.refine import CRFRefiner

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
FAST = ["--embedder", "handcrafted", "--embed-short-side", "none", "--refine", "nearest"]


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _pipe():
    return make_clasp_pipeline("handcrafted", short_side=None, refine="nearest",
                               random_state=0)


def _image(path, seed=0, size=(56, 70)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image, _ = make_shapes_image(*size, n_shapes=1 + seed % 3, noise=3.0, random_state=seed)
    Image.fromarray(image).save(path, format="PNG")
    return path


def _outputs_inside(out, name):
    for suffix in (".json", "_mask.png", "_overlay.png"):
        target = out / f"{name}{suffix}"
        assert target.resolve().parent == out.resolve()
        assert len(os.fsencode(target.name)) <= 255


def _hidden(folder):
    """Hidden files but the lock file (always there after a run)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")
                  and p.name != LOCK_FILE)


@pytest.fixture
def embedded(monkeypatch):
    """The sources of the images the handcrafted embedder embeds."""
    seen = []
    original = HandcraftedPatchEmbedder.transform

    def counting(self, X):
        seen.extend(os.fspath(x) if isinstance(x, (str, os.PathLike)) else "array" for x in X)
        return original(self, X)

    monkeypatch.setattr(HandcraftedPatchEmbedder, "transform", counting)
    return seen


# --------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------


def test_dot_dot_and_absolute_inputs_stay_inside(tmp_path):
    inside = tmp_path / "in"
    _image(inside / "a.png")
    _image(inside / "sub" / "b.png", seed=1)
    for odd in ["..png", "...png", ".. ..png"]:
        _image(inside / odd, seed=2)
    inputs = [str(inside / "sub" / ".." / "a.png"),  # '..' in the path
              str(inside / "sub" / ".." / "sub"),  # a directory through '..'
              str(inside / "sub" / ".." / "*.png"),  # a glob through '..'
              os.path.abspath(inside / "..png")]  # absolute
    found = find_images(inputs)
    names = [n for _, n in found]
    assert len(set(names)) == len(names)
    out = tmp_path / "out"
    for name in names:
        assert SAFE.fullmatch(name), name
        _outputs_inside(out, name)
    report = segment_collection(found, out, pipeline=_pipe())
    assert report.n_done == len(found)
    assert {p.parent for p in out.rglob("*")} == {out}  # nothing written anywhere else


@pytest.mark.parametrize("name", ["../escape", "/etc/evil", "a/b", ".hidden", "..", ".",
                                  "", "a" * 201, "tab\there", "ok\n"])
def test_unsafe_names_given_directly_are_refused(tmp_path, name):
    path = _image(tmp_path / "in" / "a.png")
    with pytest.raises(ValueError, match="unsafe output name") as err:
        segment_collection([ImageInput(path, name)], tmp_path / "out", pipeline=_pipe())
    assert "find_images" in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape").exists()


def test_duplicate_names_given_directly_are_refused(tmp_path):
    a = _image(tmp_path / "x" / "a.png")
    b = _image(tmp_path / "y" / "a.png", seed=1)
    with pytest.raises(ValueError, match=r"\['a'\] given to more than one image"):
        segment_collection([ImageInput(a, "a"), ImageInput(b, "A")], tmp_path / "out",
                           pipeline=_pipe())


def test_names_that_collide_after_sanitising_all_get_outputs(tmp_path):
    folder = tmp_path / "in"
    stems = ["a b", "a_b", "a?b", "a*b", "a%b"]
    for i, stem in enumerate(stems):
        _image(folder / f"{stem}.png", seed=i)
    found = find_images(folder)
    names = {p.name: n for p, n in found}
    assert len(set(names.values())) == len(stems)
    for stem in stems:
        assert names[f"{stem}.png"].startswith("a_b-")
    out = tmp_path / "out"
    report = segment_collection(found, out, pipeline=_pipe())
    assert report.n_done == len(stems)
    sources = {json.loads((out / f"{n}.json").read_text())["source"] for n in names.values()}
    assert sources == {str((folder / f"{s}.png").resolve()) for s in stems}


def test_same_stem_in_different_folders(tmp_path):
    x = _image(tmp_path / "in" / "x" / "photo.png")
    y = _image(tmp_path / "in" / "y" / "photo.png", seed=1)
    # searched from their common folder: the relative path tells them apart
    assert sorted(n for _, n in find_images(tmp_path / "in")) == ["x__photo", "y__photo"]
    # named one by one: a hash of each resolved path
    found = find_images([x, y])
    names = [n for _, n in found]
    assert len(set(names)) == 2 and all(n.startswith("photo-") for n in names)
    out = tmp_path / "out"
    assert segment_collection(found, out, pipeline=_pipe()).n_done == 2
    for path, name in found:
        assert json.loads((out / f"{name}.json").read_text())["source"] == str(path.resolve())


def test_names_differing_only_in_case_do_not_share_outputs(tmp_path):
    _image(tmp_path / "in" / "Cat.png")
    _image(tmp_path / "in" / "cat.png", seed=1)
    names = sorted(n for _, n in find_images(tmp_path / "in"))
    assert names[0].startswith("Cat-") and names[1].startswith("cat-")
    assert names[0].casefold() != names[1].casefold()


def test_very_long_names_are_shortened_with_a_hash(tmp_path):
    deep = tmp_path / "in" / ("d" * 200) / ("e" * 200)
    a = _image(deep / ("f" * 240 + ".png"))
    b = _image(deep / ("f" * 239 + "g.png"), seed=1)
    found = find_images(tmp_path / "in")
    names = [n for _, n in found]
    assert len(set(names)) == 2
    out = tmp_path / "out"
    for name in names:
        assert len(name) <= 120
        _outputs_inside(out, name)
    assert segment_collection(found, out, pipeline=_pipe()).n_done == 2
    assert {json.loads(p.read_text())["source"] for p in out.glob("*.json")} == {
        str(a.resolve()), str(b.resolve())}


def test_non_ascii_names(tmp_path):
    folder = tmp_path / "in"
    _image(folder / "café.png")
    _image(folder / "cafe\u0301 2.png", seed=1)  # decomposed accent
    _image(folder / "写真" / "猫.png", seed=2)
    _image(folder / "写真" / "犬.png", seed=0)
    _image(tmp_path / "in" / os.fsdecode(b"bad-\xff.png"), seed=1)  # not UTF-8
    names = sorted(n for _, n in find_images(folder))
    assert names[:3] == ["bad-_", "cafe", "cafe_2"]
    assert all(n.startswith("image-") for n in names[3:]) and len(set(names)) == 5
    report = segment_collection(folder, tmp_path / "out", pipeline=_pipe())
    assert report.n_done == 5
    summary = report.summary()
    assert "5 image(s): 5 segmented" in summary


# --------------------------------------------------------------------------
# symbolic links in the output tree
# --------------------------------------------------------------------------


def test_symlinks_in_the_output_directory_are_replaced_not_followed(tmp_path):
    _image(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    out.mkdir()
    victims = {}
    for name in ["a_mask.png", "a_overlay.png", FAILURES_FILE]:
        victim = tmp_path / f"victim-{name}"
        victim.write_text("precious")
        victims[name] = victim
        (out / name).symlink_to(victim)
    # a record outside that claims the image is done must not be trusted through a link
    fake = tmp_path / "victim-a.json"
    fake.write_text(json.dumps({"input_sha256": "x", "settings_hash": "y"}))
    (out / "a.json").symlink_to(fake)

    report = segment_collection(tmp_path / "in", out, pipeline=_pipe(), max_attempts=1)
    assert (report.n_done, report.n_failed) == (1, 1)
    for name, victim in victims.items():
        assert victim.read_text() == "precious", name
        assert not (out / name).is_symlink()
    assert fake.read_text().startswith('{"input_sha256": "x"')
    for name in ["a.json", "a_mask.png", "a_overlay.png"]:
        assert (out / name).is_file() and not (out / name).is_symlink()
    with Image.open(out / "a_mask.png") as im:
        assert im.size == (70, 56)
    (line,) = (out / FAILURES_FILE).read_text().splitlines()
    assert json.loads(line)["name"] == "broken"


def test_a_linked_record_is_not_taken_as_proof_of_completion(tmp_path, embedded):
    _image(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    segment_collection(tmp_path / "in", out, pipeline=_pipe())
    # move the complete record outside and link it back: the link is not trusted
    (out / "a.json").rename(tmp_path / "a.json")
    (out / "a.json").symlink_to(tmp_path / "a.json")
    embedded.clear()
    report = segment_collection(tmp_path / "in", out, pipeline=_pipe())
    assert report.n_done == 1 and len(embedded) == 1
    assert not (out / "a.json").is_symlink()


# --------------------------------------------------------------------------
# the output directory, checked before any work
# --------------------------------------------------------------------------


def _deny_writes_in(monkeypatch, folder, err=errno.EACCES):
    """Make file creation in ``folder`` fail as the kernel would for ``err``."""
    real_open = os.open
    folder = os.path.abspath(folder)

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and os.path.dirname(os.path.abspath(path)) == folder:
            raise OSError(err, os.strerror(err), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_unwritable_output_directory_fails_before_any_work(tmp_path, monkeypatch, embedded,
                                                           capsys, how):
    _image(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    if how == "chmod":
        if ROOT:
            pytest.skip("running as root: directory permissions do not stop root")
        out.chmod(0o555)
    else:
        _deny_writes_in(monkeypatch, out)
    try:
        with pytest.raises(PermissionError, match="cannot write into the output directory"):
            segment_collection(tmp_path / "in", out, pipeline=_pipe())
        assert embedded == []  # nothing was read or embedded
        assert main(["segment", str(tmp_path / "in"), "--out", str(out), *FAST]) == 2
        err = capsys.readouterr().err
        assert f"--out-dir: cannot write into the output directory '{out}'" in err
        assert "fix its permissions or choose another output directory" in err
        assert embedded == []
    finally:
        out.chmod(0o755)
    assert list(out.iterdir()) == []


def test_output_directory_that_cannot_be_created(tmp_path, capsys):
    _image(tmp_path / "in" / "a.png")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="cannot create the output directory"):
        segment_collection(tmp_path / "in", tmp_path / "file" / "out", pipeline=_pipe())
    assert main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "file" / "out"),
                 *FAST]) == 2
    assert "cannot create the output directory" in capsys.readouterr().err


def test_output_directory_through_a_symlink_is_the_users_choice(tmp_path):
    _image(tmp_path / "in" / "a.png")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    assert segment_collection(tmp_path / "in", tmp_path / "link", pipeline=_pipe()).n_done == 1
    assert (tmp_path / "real" / "a.json").is_file()


# --------------------------------------------------------------------------
# a full disk
# --------------------------------------------------------------------------


def test_a_full_disk_stops_the_run_at_once_with_one_message(tmp_path, monkeypatch, embedded,
                                                           caplog):
    """A full disk fails every later image the same way: the run stops at the first, with
    one message, no partial file and no failure recorded; the re-run finishes."""
    for i in range(4):
        _image(tmp_path / "in" / f"img{i}.png", seed=i)
    real_save = store_module.save_png

    def filling_save(path, array, **kwargs):
        if "img1_mask" in os.fspath(path):  # the disk fills up while writing img1's mask
            with open(path, "wb") as fh:
                fh.write(b"\x89PNG\r\n\x1a\n half")
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(path))
        return real_save(path, array, **kwargs)

    monkeypatch.setattr(store_module, "save_png", filling_save)
    out = tmp_path / "out"
    with pytest.raises(RunStoppedError) as err:  # one image loaded at a time
        segment_collection(tmp_path / "in", out, pipeline=_pipe(), max_attempts=2,
                           chunk_size=1)
    reason = err.value.reason
    assert reason.startswith("the output disk is full, the run stopped: could not write "
                             "img1_mask.png in ")
    assert "No space left on device" in reason and "No partial file was left" in reason
    assert "\n" not in reason
    report = err.value.report
    assert [r["status"] for r in report.results] == ["done", "stopped", "stopped", "stopped"]
    assert (report.n_done, report.n_failed, report.n_stopped) == (1, 0, 3)
    assert report.stopped == reason and "3 not done" in report.summary()
    assert len(embedded) == 2  # img2 and img3 were not even read
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) == [
        "img0.json", "img0_mask.png", "img0_overlay.png"]  # no failures.jsonl, no partial file
    assert not any(r.levelname == "WARNING" and "failed" in r.message for r in caplog.records)

    # space freed: the re-run does the missing images only
    monkeypatch.setattr(store_module, "save_png", real_save)
    again = segment_collection(tmp_path / "in", out, pipeline=_pipe())
    assert [r["status"] for r in again.results] == ["skipped", "done", "done", "done"]


@pytest.mark.slow
def test_a_full_disk_stops_a_two_worker_run_too(tmp_path):
    """The workers write: the first full-disk result stops the submission of more."""
    for i in range(12):
        _image(tmp_path / "in" / f"img{i:02d}.png", seed=i)
    out = tmp_path / "out"
    pipe = _pipe()
    pipe.steps[-1] = ("refine", _QuotaAfter(method="nearest", limit=2, marker=str(tmp_path)))
    with pytest.raises(RunStoppedError) as err:
        segment_collection(tmp_path / "in", out, pipeline=pipe, n_jobs=2, chunk_size=2)
    statuses = [r["status"] for r in err.value.report.results]
    assert "failed" not in statuses
    assert statuses.count("done") >= 2 and statuses[-1] == "stopped"
    assert "quota" in err.value.reason.lower()
    done = sorted(p.stem for p in out.glob("*.json"))
    assert len(done) == statuses.count("done")


class _QuotaAfter(CRFRefiner):
    """A refiner whose image fails with EDQUOT once ``limit`` images were refined (a marker
    file per image: the workers are other processes)."""

    def __init__(self, method="nearest", limit=2, marker=None):
        super().__init__(method=method)
        self.limit = limit
        self.marker = marker

    def transform(self, X):
        seen = len([p for p in os.listdir(self.marker) if p.startswith("refined-")])
        if seen >= self.limit:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        open(os.path.join(self.marker, f"refined-{uuid.uuid4().hex}"), "w").close()
        return super().transform(X)


def test_disk_full_while_writing_the_record_leaves_it_unvouched(tmp_path, monkeypatch):
    _image(tmp_path / "in" / "a.png")
    real_write = store_module.atomic_write

    def full_on_json(path, write, **kwargs):
        if path.suffix == ".json":
            def partial(tmp):
                tmp.write_text('{"input_sha256": ')
                raise OSError(errno.EDQUOT, "Disk quota exceeded")
            return real_write(path, partial, **kwargs)
        return real_write(path, write, **kwargs)

    monkeypatch.setattr(store_module, "atomic_write", full_on_json)
    out = tmp_path / "out"
    with pytest.raises(RunStoppedError, match="quota"):
        segment_collection(tmp_path / "in", out, pipeline=_pipe(), max_attempts=1)
    assert not (out / "a.json").exists() and _hidden(out) == []
    monkeypatch.setattr(store_module, "atomic_write", real_write)
    assert segment_collection(tmp_path / "in", out, pipeline=_pipe()).n_done == 1


def test_atomic_replace_swaps_a_link_and_never_touches_its_target(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "x.json"
    link.symlink_to(victim)
    atomic_write(link, lambda p: p.write_text("new"))
    assert victim.read_text() == "precious"
    assert not link.is_symlink() and link.read_text() == "new"
    assert _hidden(tmp_path / "out") == []


def test_overlays_of_huge_images_are_drawn_downscaled(tmp_path, monkeypatch):
    image = np.zeros((40, 30, 3), dtype=np.uint8)
    mask = np.zeros((40, 30), dtype=np.int64)
    mask[:, 15:] = 1
    small = visualize.overlay(image, mask, max_pixels=100)
    assert small.shape[0] * small.shape[1] <= 100
    assert small.shape[:2] == (11, 8)
    assert visualize.overlay(image, mask, max_pixels=10_000).shape == (40, 30, 3)
    # the store draws at most OVERLAY_MAX_PIXELS
    monkeypatch.setattr(store_module, "OVERLAY_MAX_PIXELS", 100)
    store = store_module.OutputStore(tmp_path, run_id="r").prepare()
    store.write("x", image, mask, {"timings": {}})
    with Image.open(tmp_path / "x_overlay.png") as im:
        assert im.size == (8, 11)
    with Image.open(tmp_path / "x_mask.png") as im:
        assert im.size == (30, 40)


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (root only), unmounted at the end."""
    import shutil
    import subprocess

    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount")):
        pytest.skip("needs root to mount a small tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


@pytest.mark.slow
def test_a_really_full_disk_stops_clasp_with_exit_4_and_the_rerun_finishes(tmp_path,
                                                                          small_disk, capsys):
    import subprocess

    for i in range(16):
        _image(tmp_path / "in" / f"img{i:02d}.png", seed=i, size=(112, 140))
    out = small_disk / "out"
    argv = ["segment", str(tmp_path / "in"), "--out", str(out), "--embedder", "handcrafted",
            "--embed-short-side", "none", "--refine", "nearest"]
    assert main(argv) == 4
    captured = capsys.readouterr()
    (line,) = [x for x in captured.err.splitlines() if x.strip()]
    assert line.startswith("clasp segment: error: the output disk is full, the run stopped: "
                           "could not write ")
    assert "(No space left on device)" in line
    assert "not done" in captured.out and "failed" not in captured.out.split("\n", 1)[1]
    done = sorted(p.stem for p in out.glob("*.json") if not p.name.startswith("."))
    assert 0 < len(done) < 16
    assert _hidden(out) == [] and not (out / FAILURES_FILE).exists()
    stamps = {name: (out / f"{name}.json").stat().st_mtime_ns for name in done}
    # space freed: the same command finishes the rest and redoes nothing
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    assert main(argv) == 0
    assert f"{16 - len(done)} segmented, {len(done)} skipped" in capsys.readouterr().out
    assert {name: (out / f"{name}.json").stat().st_mtime_ns for name in done} == stamps
