"""Interrupting ``clasp segment`` (SIGINT, SIGTERM) leaves only complete outputs and
no process behind; the re-run finishes the rest without redoing or duplicating work."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from threadpoolctl import threadpool_limits

from sklearn_clasp.cli import main
from sklearn_clasp.collection.store import LOCK_FILE
from sklearn_clasp.datasets import make_shapes_image
from _procs import no_process_left

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 8
# CRF refinement on a 20 x 20 patch grid: a few tenths of a second per image, so that
# the run is still busy when a few outputs exist
OPTIONS = ["--embedder", "handcrafted", "--embed-short-side", "280", "--k-max", "6"]

# subprocesses and signals: outside the quick loop (pytest -m "not slow")
pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
              pytest.mark.slow]


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(N_IMAGES):
        image, _ = make_shapes_image(112, 112, n_shapes=1 + i % 3, noise=3.0, random_state=i)
        Image.fromarray(image).save(folder / f"img{i:02d}.png")
    return folder


def _check_complete(out, killed=False):
    """Every record marks complete, decodable outputs; no temporary or partial file.

    ``killed``: the run's workers were SIGKILLed, so a hidden temporary file that one was
    writing may be left (the next run removes it); nothing else.
    """
    names = sorted(p.stem for p in out.glob("*.json"))
    for name in names:
        record = json.loads((out / f"{name}.json").read_text())
        assert record["name"] == name and record["n_clusters"] >= 1
        with Image.open(out / f"{name}_mask.png") as im:
            mask = np.asarray(im)
        assert list(mask.shape) == record["image_size"]
        assert len(np.unique(mask)) == record["n_segments"]
        with Image.open(out / f"{name}_overlay.png") as im:
            im.load()
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]
    if killed:
        hidden = [n for n in hidden if not re.fullmatch(r"\..+\.[0-9a-f]{12}\.[0-9a-f]{16}\.tmp", n)]
    assert hidden == [] and (out / LOCK_FILE).is_file()
    return names


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
@pytest.mark.parametrize("signum, n_jobs", [(signal.SIGINT, 1), (signal.SIGTERM, 2)],
                         ids=["SIGINT-1-job", "SIGTERM-2-jobs"])
def test_interrupted_run_keeps_complete_outputs_and_the_rerun_finishes(images, tmp_path,
                                                                        capsys, signum,
                                                                        n_jobs):
    out = tmp_path / "out"
    argv = ["segment", str(images), "--out", str(out), "--n-jobs", str(n_jobs), *OPTIONS]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sklearn_clasp", *argv], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if out.is_dir() and len(list(out.glob("*.json"))) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 128 + signum, stderr
    assert f"interrupted ({signal.Signals(signum).name})" in stderr
    assert "run the same command again" in stderr
    assert "Traceback" not in stderr
    assert no_process_left(proc.pid) == []  # no worker or helper process outlives it

    done = _check_complete(out)
    assert 2 <= len(done) < N_IMAGES
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()
              if p.stem.removesuffix("_mask").removesuffix("_overlay") in done}

    # the re-run finishes the rest and does not redo what was complete
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert (f"{N_IMAGES} image(s): {N_IMAGES - len(done)} segmented, {len(done)} skipped"
            in summary)
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps
    assert _check_complete(out) == [f"img{i:02d}" for i in range(N_IMAGES)]
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) == sorted(
        f"img{i:02d}{s}" for i in range(N_IMAGES) for s in (".json", "_mask.png",
                                                             "_overlay.png"))


def test_sigterm_handler_is_installed_only_while_a_command_runs(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    import sklearn_clasp  # noqa: F401  (importing installs nothing)
    import sklearn_clasp.cli  # noqa: F401

    assert signal.getsignal(signal.SIGTERM) is before
    seen = []

    def probe(args):
        seen.append(signal.getsignal(signal.SIGTERM))
        return 0

    from sklearn_clasp import cli

    parser = cli.build_parser()
    args = parser.parse_args(["weights"])
    args.func = probe
    original = cli.build_parser
    try:
        cli.build_parser = lambda command=None: _Fixed(parser, args)
        assert cli.main(["weights"]) == 0
    finally:
        cli.build_parser = original
    assert seen and seen[0] not in (before, signal.SIG_DFL, signal.SIG_IGN)
    assert signal.getsignal(signal.SIGTERM) is before


class _Fixed:
    """A parser stand-in that returns prepared arguments (to run a probe command)."""

    def __init__(self, parser, args):
        self._parser, self._args = parser, args

    def parse_known_args(self, argv):
        return self._args, []

    def __getattr__(self, name):
        return getattr(self._parser, name)


# --------------------------------------------------------------------------
# process-level faults: signals to the group, SIGKILL, a second run, the progress bar
# --------------------------------------------------------------------------


def _start(argv, cwd, **kwargs):
    """``python -m sklearn_clasp ARGV`` in a new session (its own process group)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "sklearn_clasp", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)


def _wait_for_records(proc, out, n, timeout=120):
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if out.is_dir() and len(list(out.glob("*.json"))) >= n:
            return
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"


def _finish(proc, timeout=60):
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_sighup_to_the_process_group_prints_no_traceback(images, tmp_path):
    """A closed terminal signals every process of the group: the workers and loky's
    resource tracker must not die of it (the tracker's relaunch printed 14-32 KeyError
    tracebacks); the run stops them itself."""
    out = tmp_path / "out"
    proc = _start(["segment", str(images), "--out", str(out), "--n-jobs", "2", *OPTIONS],
                  tmp_path)
    _wait_for_records(proc, out, 2)
    os.killpg(proc.pid, signal.SIGHUP)
    _, stderr = _finish(proc)
    assert proc.returncode == 128 + signal.SIGHUP, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert "interrupted (SIGHUP)" in stderr
    assert no_process_left(proc.pid) == []
    _check_complete(out)


def _loky_semaphores(pid):
    return sorted(p for p in os.listdir("/dev/shm") if p.startswith(f"sem.loky-{pid}-"))


@pytest.mark.skipif(not os.path.isdir("/dev/shm") or not os.path.isdir("/proc/self"),
                    reason="needs /proc and /dev/shm")
def test_sigkill_of_the_run_takes_its_workers_and_their_resources_along(images, tmp_path):
    """Workers and resource trackers of a SIGKILLed run stayed alive for over an hour,
    with their semaphores in /dev/shm."""
    out = tmp_path / "out"
    argv = ["segment", str(images), "--out", str(out), "--n-jobs", "2", *OPTIONS]
    proc = _start(argv, tmp_path)
    _wait_for_records(proc, out, 2)
    assert len(_loky_semaphores(proc.pid)) > 0  # the workers' queues are there
    proc.kill()  # the main process only, as the out-of-memory killer would
    proc.communicate(timeout=30)
    try:
        assert no_process_left(proc.pid, grace=15.0) == []
        deadline = time.monotonic() + 15
        while _loky_semaphores(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _loky_semaphores(proc.pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):  # what outlived it: its group
            os.killpg(proc.pid, signal.SIGKILL)
    _check_complete(out, killed=True)
    # the next run removes what the killed workers were writing and finishes the rest
    assert main(argv) == 0
    assert _check_complete(out) == [f"img{i:02d}" for i in range(N_IMAGES)]


def _lock_holder(out):
    try:
        return json.loads((out / LOCK_FILE).read_text() or "null")
    except (OSError, ValueError):
        return None


HOLDER = """
import sys, time
from pathlib import Path
from sklearn_clasp.collection.store import OutputLock, OutputStore
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
OutputLock(out, OutputStore.new_run_id()).acquire()  # as segment_collection holds it
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_run_on_the_same_out_fails_at_once_and_sigkill_releases_the_lock(
        images, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["segment", str(images), "--out", str(out), *OPTIONS]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=env,
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert first.stdout.readline().strip() == "held"
        holder = _lock_holder(out)
        assert holder["pid"] == first.pid
        # a second run, other settings or not: refused at once, naming the holder
        start = time.monotonic()
        for extra in ([], ["--k-max", "3"]):
            assert main([*argv, *extra]) == 2
            err = capsys.readouterr().err
            assert "another run is writing into the output directory" in err
            assert f"run_id {holder['run_id']}, pid {first.pid}" in err
            assert "wait for it to finish, or choose another output directory" in err
        assert time.monotonic() - start < 10
        assert list(out.glob("*.json")) == []
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # no clean-up at all
        first.communicate()
    assert _lock_holder(out)["pid"] == first.pid  # the file still names the dead holder
    assert main(argv) == 0  # but the kernel released its lock
    assert _check_complete(out) == [f"img{i:02d}" for i in range(N_IMAGES)]


def test_a_real_run_holds_the_lock_until_it_ends(images, tmp_path):
    out = tmp_path / "out"
    proc = _start(["segment", str(images), "--out", str(out), *OPTIONS], tmp_path)
    seen = set()
    while proc.poll() is None:
        holder = _lock_holder(out)
        if holder is not None:
            seen.add(holder["pid"])
        time.sleep(0.01)
    _finish(proc)
    assert proc.returncode == 0
    assert seen == {proc.pid}  # held by the run while it ran
    assert _lock_holder(out) is None  # and emptied at its end


def _log_lines_start_lines(stderr):
    """Every log line starts a line: nothing of a progress bar before it."""
    pieces = [p for p in re.split(r"[\r\n]", stderr) if p.strip()]
    logged = [p for p in pieces if re.search(r"(WARNING|ERROR) sklearn_clasp", p)]
    assert logged, stderr
    return [p for p in logged if not p.startswith(("WARNING sklearn_clasp",
                                                   "ERROR sklearn_clasp"))]


def test_log_lines_are_written_above_the_progress_bar_also_after_ctrl_c(images, tmp_path):
    (images / "a-broken.png").write_bytes(b"not a picture")  # a warning while the bar runs
    out = tmp_path / "out"
    proc = _start(["segment", str(images), "--out", str(out), "--progress", "true",
                   *OPTIONS], tmp_path)
    _wait_for_records(proc, out, 2)
    proc.send_signal(signal.SIGINT)
    _, stderr = _finish(proc)
    assert proc.returncode == 130, stderr
    assert "a-broken (" in stderr and "interrupted with" in stderr  # both logged
    assert "img/s" in stderr  # the bar was shown
    assert _log_lines_start_lines(stderr) == []
    assert stderr.rstrip().splitlines()[-1].startswith("clasp segment: interrupted (SIGINT)")
