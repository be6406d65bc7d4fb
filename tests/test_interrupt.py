"""Interrupting ``clasp segment`` (SIGINT, SIGTERM) leaves only complete outputs and
no process behind; the re-run finishes the rest without redoing or duplicating work."""

import json
import os
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

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


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


def _check_complete(out):
    """Every record marks complete, decodable outputs; no temporary or partial file."""
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
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [LOCK_FILE]
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

    def parse_args(self, argv):
        return self._args

    def __getattr__(self, name):
        return getattr(self._parser, name)
