"""segment_collection on a real Dask cluster: two worker processes on loopback."""

import json
import logging
import os
import uuid

import numpy as np
import pytest
from PIL import Image
from threadpoolctl import threadpool_limits

distributed = pytest.importorskip("distributed")

import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from sklearn_clasp import HandcraftedPatchEmbedder, make_clasp_pipeline  # noqa: E402
from sklearn_clasp import __version__  # noqa: E402
from sklearn_clasp.collection import FAILURES_FILE, segment_collection  # noqa: E402
from sklearn_clasp.collection.engine import Job, RunContext, segment_task  # noqa: E402
from sklearn_clasp.collection.store import LOCK_FILE, OutputStore  # noqa: E402
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
                               client=client)
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
        with pytest.raises(ConnectionError, match="cannot connect to the Dask scheduler at"):
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
        return segment_task(job, None, pipe, OutputStore(out, run_id), context)

    run = uuid.uuid4().hex[:16]
    first = task(run)
    assert (first["status"], first["attempts"], len(calls)) == ("done", 1, 1)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert sorted(stamps) == _expected_files(["a"])

    # the same task again (a retry after its worker died having written everything)
    for overwrite in (False, True):
        again = task(run, overwrite=overwrite)
        assert again["status"] == "done" and again["n_clusters"] == first["n_clusters"]
    assert len(calls) == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

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
