"""segment_collection on a real Dask cluster: two worker processes on loopback."""

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from threadpoolctl import threadpool_limits

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slow  # clusters of processes: outside the quick loop

import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from sklearn_clasp import HandcraftedPatchEmbedder, make_clasp_pipeline  # noqa: E402
from sklearn_clasp import __version__  # noqa: E402
from sklearn_clasp.collection import (  # noqa: E402
    FAILURES_FILE,
    OutputNotSharedError,
    segment_collection,
)
from sklearn_clasp.cli import main  # noqa: E402
from sklearn_clasp.collection.engine import Job, RunContext, segment_task  # noqa: E402
from sklearn_clasp.collection.store import LOCK_FILE, OutputLock, OutputStore  # noqa: E402
from sklearn_clasp.datasets import make_shapes_image  # noqa: E402
from sklearn_clasp.io import find_images  # noqa: E402
from sklearn_clasp.pipeline import pipeline_settings, settings_hash  # noqa: E402
from sklearn_clasp.refine import CRFRefiner  # noqa: E402

SIZES = [(56, 70), (84, 98), (112, 140), (70, 84)]
SAME = ["source", "name", "input_sha256", "settings_hash", "settings", "image_size",
        "grid_shape", "n_clusters", "n_segments", "eigengap_k", "silhouette",
        "silhouette_scores", "second_eigenvalue", "single_segment", "outputs"]


class KillingRefiner(CRFRefiner):
    """Kills its worker process: once on 'kill_once' (marker file), always on 'poison'.

    Defined here at module level: the worker processes import this test module
    (they are spawned with the test process's ``sys.path``).
    """

    def __init__(self, method="nearest", marker_dir=None):
        super().__init__(method=method)
        self.marker_dir = marker_dir

    def transform(self, X):
        for rec in X:
            source = os.path.basename(rec.source or "")
            if source.startswith("poison"):
                os._exit(1)
            if source.startswith("kill_once"):
                marker = os.path.join(self.marker_dir, "killed-once")
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass
                else:
                    os._exit(1)
        return super().transform(X)


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="module")
def client():
    """Two single-threaded worker processes on 127.0.0.1, no dashboard.

    One worker death is forgiven per task (``allowed-failures=1``) so that a
    poison image fails fast, and each worker holds one task at a time
    (``worker-saturation=1.0``) so that a death touches only the task running.
    """
    config = {
        "distributed.scheduler.allowed-failures": 1,
        "distributed.scheduler.worker-saturation": 1.0,
    }
    with dask.config.set(config):
        with LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                          host="127.0.0.1", dashboard_address=None,
                          silence_logs=logging.CRITICAL) as cluster:
            with Client(cluster) as c:
                yield c


def _pipe(refine=None, **kwargs):
    pipe = make_clasp_pipeline("handcrafted", short_side=None, refine="nearest",
                               random_state=0, **kwargs)
    if refine is not None:
        pipe.steps[-1] = ("refine", refine)
    return pipe


def _write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        h, w = SIZES[i % len(SIZES)]
        image, _ = make_shapes_image(h, w, n_shapes=1 + i % 3, noise=3.0, random_state=i)
        Image.fromarray(image).save(folder / f"{name}.png")


def _read_png(path):
    with Image.open(path) as im:
        return np.asarray(im)


def _listing(folder):
    """The files of a directory but its lock file (always there after a run)."""
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)


def _expected_files(names):
    return sorted(f"{n}{s}" for n in names for s in (".json", "_mask.png", "_overlay.png"))


def _record(folder, name):
    return json.loads((folder / f"{name}.json").read_text())


def test_dask_run_writes_the_same_outputs_as_a_local_run(tmp_path, client):
    names = [f"img{i}" for i in range(8)]
    _write_images(tmp_path / "in", names)
    report = segment_collection(tmp_path / "in", tmp_path / "dask", pipeline=_pipe(),
                                client=client)
    local = segment_collection(tmp_path / "in", tmp_path / "local", pipeline=_pipe())

    assert (report.n_done, report.n_failed) == (8, 0)
    assert [r["name"] for r in report.results] == names
    assert [r["n_clusters"] for r in report.results] == [r["n_clusters"] for r in local.results]
    assert _listing(tmp_path / "dask") == _expected_files(names)
    for name in names:
        for kind in ("mask", "overlay"):
            np.testing.assert_array_equal(_read_png(tmp_path / "dask" / f"{name}_{kind}.png"),
                                          _read_png(tmp_path / "local" / f"{name}_{kind}.png"))
        on_dask, here = _record(tmp_path / "dask", name), _record(tmp_path / "local", name)
        assert {k: on_dask[k] for k in SAME} == {k: here[k] for k in SAME}
        np.testing.assert_allclose(on_dask["eigenvalues"], here["eigenvalues"], rtol=1e-6)
        assert on_dask["attempts"] == 1
        assert on_dask["run_id"] == report.run_id

    # each worker built the embedder once, for these settings only
    cached = client.run(
        lambda dask_worker: sorted(getattr(dask_worker, "_sklearn_clasp_embedders", {})))
    assert set(map(tuple, cached.values())) <= {(settings_hash(_pipe()),)}
    assert any(cached.values())

    # a re-run on the cluster skips everything; other settings redo everything
    again = segment_collection(tmp_path / "in", tmp_path / "dask", pipeline=_pipe(),
                               client=client)
    assert (again.n_skipped, again.n_done) == (8, 0)
    assert [r["n_clusters"] for r in again.results] == [r["n_clusters"] for r in report.results]
    other = segment_collection(tmp_path / "in", tmp_path / "dask", pipeline=_pipe(k_max=3),
                               client=client, overwrite=True)
    assert other.n_done == 8
    assert _record(tmp_path / "dask", "img0")["settings"]["segment__k_max"] == 3


def test_scheduler_address_connects_and_closes_its_own_client(tmp_path, client):
    _write_images(tmp_path / "in", ["a", "b"])
    report = segment_collection(tmp_path / "in", tmp_path / "out", pipeline=_pipe(),
                                scheduler=client.scheduler.address)
    assert report.n_done == 2
    assert _listing(tmp_path / "out") == _expected_files(["a", "b"])
    clients = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.clients))
    assert clients <= 2  # this test's client (+ the scheduler's own), not a leaked one


def test_unreachable_scheduler_is_a_clear_error_before_any_work(tmp_path):
    import socket

    from sklearn_clasp.cli import EXIT_USAGE, main

    with socket.socket() as sock:  # a free port with nothing listening on it
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    _write_images(tmp_path / "in", ["a"])
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(ConnectionError, match="scheduler .tcp:.*: cannot connect to the Dask scheduler: "
                           "nothing listens"):
            segment_collection(tmp_path / "in", tmp_path / "out", pipeline=_pipe(),
                               scheduler=address)
        status = main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "cli"),
                       "--embedder", "handcrafted", "--scheduler", address, "--quiet"])
    assert status == EXIT_USAGE
    for out in ("out", "cli"):
        assert not (tmp_path / out).exists() or not any(
            p.name.startswith("a") for p in (tmp_path / out).iterdir())


def test_killed_worker_images_are_retried_and_nothing_is_lost(tmp_path, client):
    names = [f"img{i}" for i in range(6)] + ["kill_once"]
    _write_images(tmp_path / "in", names)
    pipe = _pipe(KillingRefiner(marker_dir=str(tmp_path)))
    report = segment_collection(tmp_path / "in", tmp_path / "out", pipeline=pipe,
                                client=client)

    assert (tmp_path / "killed-once").exists()  # a worker really died
    assert (report.n_done, report.n_failed) == (7, 0)  # the scheduler ran it again
    # every output once, complete; no temporary files
    assert _listing(tmp_path / "out") == _expected_files(names)
    killed = _record(tmp_path / "out", "kill_once")
    mask = _read_png(tmp_path / "out" / "kill_once_mask.png")
    assert mask.shape == tuple(killed["image_size"])


def test_poison_image_fails_after_bounded_attempts_and_the_run_completes(tmp_path, client):
    names = ["img0", "img1", "poison", "img3"]
    _write_images(tmp_path / "in", names)
    pipe = _pipe(KillingRefiner(marker_dir=str(tmp_path)))
    report = segment_collection(tmp_path / "in", tmp_path / "out", pipeline=pipe,
                                client=client)

    assert (report.n_done, report.n_failed) == (3, 1)
    (failure,) = report.failures
    assert failure["name"] == "poison"
    assert failure["error"].startswith("KilledWorker: 2 Dask worker process(es) died")
    assert "allowed-failures=1" in failure["error"]
    assert failure["attempts"] == 2
    assert _listing(tmp_path / "out") == sorted(
        _expected_files(["img0", "img1", "img3"]) + [FAILURES_FILE])
    (line,) = (tmp_path / "out" / FAILURES_FILE).read_text().splitlines()
    assert json.loads(line)["error_type"] == "KilledWorker"
    # the cluster is whole again: two workers
    client.wait_for_workers(2, timeout=30)


def test_a_retried_task_does_not_redo_or_rewrite_complete_outputs(tmp_path, monkeypatch):
    """The task checks completion first (run in this process: no worker needed)."""
    _write_images(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    out.mkdir()
    pipe = _pipe()
    calls = []
    original = HandcraftedPatchEmbedder.transform
    monkeypatch.setattr(HandcraftedPatchEmbedder, "transform",
                        lambda self, X: calls.append(1) or original(self, X))

    ctx = RunContext(digest=settings_hash(pipe), settings=pipeline_settings(pipe),
                     max_image_pixels=None, overwrite=False, version=__version__)

    def task(run_id, overwrite=False):
        job = Job(index=0, name="a", path=str(tmp_path / "in" / "a.png"))
        context = ctx if not overwrite else RunContext(**{**ctx.__dict__, "overwrite": True})
        with OutputLock(out, run_id):  # as the client holds it for the run
            return segment_task(job, None, pipe, OutputStore(out, run_id), context)

    run = uuid.uuid4().hex[:16]
    first = task(run)
    assert (first["status"], first["attempts"], len(calls)) == ("done", 1, 1)
    stamps = {name: (out / name).stat().st_mtime_ns for name in _listing(out)}
    assert sorted(stamps) == _expected_files(["a"])

    # the same task again (a retry after its worker died having written everything)
    for overwrite in (False, True):
        again = task(run, overwrite=overwrite)
        assert again["status"] == "done" and again["n_clusters"] == first["n_clusters"]
    assert len(calls) == 1
    assert {name: (out / name).stat().st_mtime_ns for name in _listing(out)} == stamps

    # another run: skipped, unless overwrite
    assert task(uuid.uuid4().hex[:16])["status"] == "skipped"
    assert len(calls) == 1
    redone = task(uuid.uuid4().hex[:16], overwrite=True)
    assert redone["status"] == "done" and len(calls) == 2


def test_workers_that_cannot_see_the_files_say_so(tmp_path, client):
    """An image that vanished before its task ran: the error explains the file view."""
    _write_images(tmp_path / "in", ["a", "b"])
    images = find_images(tmp_path / "in")
    (tmp_path / "in" / "b.png").unlink()
    report = segment_collection(images, tmp_path / "out", pipeline=_pipe(), client=client,
                                max_attempts=2)
    assert (report.n_done, report.n_failed) == (1, 1)
    (failure,) = report.failures
    assert failure["error"].startswith("FileNotFoundError: the image ")
    assert "same view of the files" in failure["error"]
    assert failure["attempts"] == 1  # a missing file is not retried
    assert _listing(tmp_path / "out") == sorted(_expected_files(["a"]) + [FAILURES_FILE])


def test_broken_and_oversized_files_on_the_cluster_fail_with_their_reasons(tmp_path, client):
    """The loading limits travel to the workers; every bad file gets its own reason."""
    _write_images(tmp_path / "in", ["img0", "img1", "big"])  # big: 112 x 140
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    report = segment_collection(tmp_path / "in", tmp_path / "out", pipeline=_pipe(),
                                client=client, max_attempts=2, max_image_pixels=84 * 98)
    assert (report.n_done, report.n_failed) == (2, 3)
    errors = {r["name"]: r["error"] for r in report.failures}
    assert errors["big"].startswith("ImageTooLargeError: ")
    assert "more than the limit of 8232 pixels" in errors["big"]
    assert "not a readable image file" in errors["broken"]
    assert "the file is empty (0 bytes)" in errors["empty"]
    assert all(r["attempts"] == 1 for r in report.failures)  # each tried once
    assert _listing(tmp_path / "out") == sorted(_expected_files(["img0", "img1"])
                                                + [FAILURES_FILE])


# --------------------------------------------------------------------------
# a dead scheduler, SIGTERM, relative --out, workers with another view, names
# --------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
SLOW = ["--embedder", "handcrafted", "--embed-short-side", "280", "--k-max", "6"]
CLUSTER = """
import logging, sys, time
from distributed import LocalCluster
if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.CRITICAL) as cluster:
        print(cluster.scheduler_address, flush=True)
        time.sleep(600)
"""


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _clasp(argv, cwd):
    return subprocess.Popen([sys.executable, "-m", "sklearn_clasp", *argv], cwd=cwd,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _records(out):
    """The records (not the run's hidden index file, which glob matches too)."""
    return sorted(p.stem for p in out.glob("*.json") if not p.name.startswith("."))


def _wait_for_records(proc, out, n, timeout=180):
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if out.is_dir() and len(_records(out)) >= n:
            return
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()


def _complete(out):
    """Every record vouches for a decodable mask and overlay; no temporary file."""
    names = _records(out)
    for name in names:
        record = _record(out, name)
        assert list(_read_png(out / f"{name}_mask.png").shape) == record["image_size"]
        _read_png(out / f"{name}_overlay.png")
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [LOCK_FILE]
    return names


def test_a_dead_scheduler_stops_the_run_in_seconds_with_one_line(tmp_path):
    """kill -9 of the scheduler: the client hung for ever ('closing client'); SIGTERM then
    printed a ClosedClientError traceback and exited 1."""
    names = [f"img{i:02d}" for i in range(16)]
    _write_images(tmp_path / "in", names)
    (tmp_path / "cluster.py").write_text(CLUSTER)
    cluster = subprocess.Popen([sys.executable, str(tmp_path / "cluster.py")], cwd=tmp_path,
                               env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, start_new_session=True)
    out = tmp_path / "out"
    run = None
    try:
        address = cluster.stdout.readline().strip()
        assert address.startswith("tcp://127.0.0.1:"), address
        run = _clasp(["segment", str(tmp_path / "in"), "--out", str(out), "--scheduler",
                      address, *SLOW], tmp_path)
        _wait_for_records(run, out, 2)
        cluster.kill()  # the scheduler's process; its workers are orphaned
        killed = time.monotonic()
        stdout, stderr = run.communicate(timeout=60)
        took = time.monotonic() - killed
    finally:
        for proc in (run, cluster):
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    assert run.returncode == 4, stderr
    assert took < 15, took
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("clasp segment: error: lost the connection to the Dask "
                               f"scheduler at {address}, the run stopped: the images done "
                               "are kept")
    assert "not done" in stdout
    done = _complete(out)
    assert 2 <= len(done) < len(names)
    stamps = {name: (out / f"{name}.json").stat().st_mtime_ns for name in done}
    # the finished work is kept: a local run does the rest only
    assert main(["segment", str(tmp_path / "in"), "--out", str(out), *SLOW, "-q"]) == 0
    assert _complete(out) == names
    assert {name: (out / f"{name}.json").stat().st_mtime_ns for name in done} == stamps


def test_sigterm_stops_a_dask_run_with_143_and_no_traceback(tmp_path, client):
    names = [f"img{i:02d}" for i in range(12)]
    _write_images(tmp_path / "in", names)
    out = tmp_path / "out"
    run = _clasp(["segment", str(tmp_path / "in"), "--out", str(out), "--scheduler",
                  client.scheduler.address, *SLOW], tmp_path)
    try:
        _wait_for_records(run, out, 2)
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.communicate()
    assert run.returncode == 143, stderr
    assert "Traceback" not in stderr and "ClosedClientError" not in stderr
    assert stderr.rstrip().splitlines()[-1].startswith("clasp segment: interrupted (SIGTERM)")
    _complete(out)
    deadline = time.monotonic() + 30  # the cluster is not left working for nobody
    while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0


def test_a_relative_out_is_the_clients_directory(tmp_path, client, monkeypatch, capsys):
    _write_images(tmp_path / "in", ["a", "b"])
    here = tmp_path / "client-cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    rel = f"rel-out-{uuid.uuid4().hex[:8]}"
    status = main(["segment", str(tmp_path / "in"), "--out", rel, "--scheduler",
                   client.scheduler.address, "--embedder", "handcrafted",
                   "--embed-short-side", "none", "--refine", "nearest"])
    assert status == 0, capsys.readouterr().err
    assert _listing(here / rel) == _expected_files(["a", "b"])
    assert f"outputs: {here / rel}" in capsys.readouterr().out
    for cwd in client.run(os.getcwd).values():  # nothing in the workers' own directories
        assert not os.path.exists(os.path.join(cwd, rel))


def _foreign_worker(address, shared, *, with_directory):
    """A worker on 127.0.0.1 in its own mount namespace: an empty file system over ``shared``
    (and, ``with_directory``, another directory at the output's path)."""
    make = f" && mkdir -p {shared}/out" if with_directory else ""
    script = (f"mount -t tmpfs tmpfs {shared}{make} && exec {sys.executable} -m "
              f"distributed.cli.dask_worker {address} --nthreads 1 --no-nanny "
              f"--no-dashboard --host 127.0.0.1")
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.skipif(not (hasattr(os, "geteuid") and os.geteuid() == 0
                         and shutil.which("unshare")),
                    reason="needs root and unshare(1) for a worker with another file system")
def test_workers_that_do_not_see_the_output_directory_stop_the_run_before_any_image(tmp_path):
    """A worker on another file system wrote into its own directory at the same path; the run
    exited 0 and the client's directory stayed empty."""
    shared = tmp_path / "shared"
    shared.mkdir()  # the mount point
    _write_images(tmp_path / "in", ["a", "b"])
    workers = []
    config = {"distributed.scheduler.worker-saturation": 1.0}
    with dask.config.set(config), LocalCluster(n_workers=1, processes=True,
                                               threads_per_worker=1, host="127.0.0.1",
                                               dashboard_address=None,
                                               silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster) as c:
        try:
            for with_directory in (False, True):
                workers.append(_foreign_worker(cluster.scheduler_address, shared,
                                               with_directory=with_directory))
            c.wait_for_workers(3, timeout=60)
            with pytest.raises(OutputNotSharedError) as err:
                segment_collection(tmp_path / "in", shared / "out", pipeline=_pipe(), client=c)
        finally:
            for worker in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    message = str(err.value)
    assert f"2 of 3 Dask worker(s) do not see the output directory {str(shared / 'out')!r}" \
        in message
    assert "does not exist on Dask worker tcp://127.0.0.1:" in message
    assert "sees another directory at this path than the client" in message
    assert _listing(shared / "out") == []  # no image was read or written


def test_a_task_of_a_run_that_no_longer_holds_the_directory_writes_nothing(tmp_path):
    """A worker still running a task of a SIGKILLed client, after another run took the
    directory over."""
    _write_images(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    out.mkdir()
    pipe = _pipe()
    ctx = RunContext(digest=settings_hash(pipe), settings=pipeline_settings(pipe),
                     max_image_pixels=None, overwrite=False, version=__version__)
    job = Job(index=0, name="a", path=str(tmp_path / "in" / "a.png"))
    with OutputLock(out, "the-new-run"):
        outcome = segment_task(job, None, pipe, OutputStore(out, "the-old-run"), ctx)
    assert outcome["status"] == "failed"
    assert "is held by run the-new-run, not by run the-old-run" in outcome["error"]
    assert _listing(out) == []


def test_on_dask_an_image_reached_through_another_path_is_not_done_again(tmp_path, client):
    edge = tmp_path / "edge"
    _write_images(edge / "a", ["x", "y"])
    first = segment_collection(edge, tmp_path / "out", pipeline=_pipe(), client=client)
    assert sorted(r["name"] for r in first.results) == ["a__x", "a__y"]
    again = segment_collection(edge / "a", tmp_path / "out", pipeline=_pipe(), client=client)
    assert [(r["name"], r["status"]) for r in again.results] == [("a__x", "skipped"),
                                                                 ("a__y", "skipped")]
    assert _listing(tmp_path / "out") == _expected_files(["a__x", "a__y"])
