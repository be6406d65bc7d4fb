"""The run engine: one per-image task on local processes or a Dask cluster.

Every image is one task, :func:`segment_task`: segment it with
:func:`~sklearn_clasp.pipeline.clasp_one` and write its outputs to the
:class:`~sklearn_clasp.collection.store.OutputStore`. A task never raises for
a bad image: it returns a failed result, once, with one reason. The only
failure that is retried is a worker that died (a crash in native code, the
out-of-memory killer): :class:`_Runner` holds that one retry policy for every
backend.

Backends:

- in this process (``n_jobs=1``);
- local worker processes (loky): this process loads and embeds the images in
  batches (the backbone runs batched, once), the workers segment, refine and
  write;
- a Dask cluster: each task is sent a path; the worker loads and embeds the
  image with an embedder it builds once per settings, then segments and
  writes.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from sklearn.base import clone

from ..io import file_sha256, load_image
from ..pipeline import clasp_one, fitted_embedder
from .store import image_record

__all__ = ["Job", "RunContext", "run_dask", "run_local", "segment_task"]

logger = logging.getLogger(__name__)

_WORKER_CACHE = "_sklearn_clasp_embedders"
_WORKER_LOCK = "_sklearn_clasp_lock"


@dataclass
class Job:
    """What the engine carries for one image (kept small: no pixels)."""

    index: int
    name: str
    path: str
    sha256: str | None = None
    timings: dict = field(default_factory=dict)
    attempts: int = 1


@dataclass(frozen=True)
class RunContext:
    """The settings of a run that every task needs."""

    digest: str
    settings: dict
    max_image_pixels: int | None
    overwrite: bool
    version: str


def result(job, status, *, n_clusters=None, seconds=0.0, error=None, error_type=None,
           attempts=None):
    """The small per-image result the engine reports (no pixels)."""
    return {
        "name": job.name,
        "source": str(job.path),
        "status": status,
        "n_clusters": n_clusters,
        "seconds": float(seconds),
        "error": error,
        "error_type": error_type,
        "attempts": job.attempts if attempts is None else attempts,
        "index": job.index,
    }


def failed(job, exc, *, reason=None, attempts=None):
    """A failed result with a one-line reason."""
    message = " ".join((reason or f"{type(exc).__name__}: {exc}").split())
    return result(job, "failed", error=message, error_type=type(exc).__name__,
                  attempts=attempts)


def from_record(job, record, status):
    """The result of an image whose outputs are complete (skipped, or done earlier)."""
    timings = record.get("timings") or {}
    seconds = sum(v for v in timings.values() if isinstance(v, (int, float)))
    return result(job, status, n_clusters=record.get("n_clusters"),
                  seconds=seconds if status == "done" else 0.0, attempts=record.get("attempts"))


# --------------------------------------------------------------------------
# the per-image task
# --------------------------------------------------------------------------


def _worker_embedder(pipeline, digest):
    """The fitted embedder for these settings, built once per Dask worker."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a worker
        return fitted_embedder(pipeline)
    lock = worker.__dict__.setdefault(_WORKER_LOCK, threading.Lock())
    with lock:
        cache = worker.__dict__.setdefault(_WORKER_CACHE, {})
        embed = cache.get(digest)
        if embed is None:
            while len(cache) >= 2:  # keep memory bounded: the two latest settings
                cache.pop(next(iter(cache)))
            embed = cache[digest] = fitted_embedder(pipeline)
            logger.info("worker %s: embedder ready for settings %s", worker.address,
                        digest[:12])
    return embed


def _check_visible(what, path, exists):
    """On a Dask worker: the path must be there as it is on the client."""
    if exists:
        return
    from distributed import get_worker

    try:
        where = f"Dask worker {get_worker().address}"
    except ValueError:
        where = "this process"
    raise FileNotFoundError(
        f"the {what} {str(path)!r} does not exist on {where}; the workers need the same "
        f"view of the files as the client (a shared file system, mounted at the same path)."
    )


def _load_and_embed(job, pipeline, store, ctx):
    """On a Dask worker: hash, resume check, load, embed. A record, or a finished result."""
    _check_visible("output directory", store.out_dir, store.out_dir.is_dir())
    # lexists: a broken link or a link loop is there; hashing it says what is wrong
    _check_visible("image", job.path, os.path.lexists(job.path))
    job.sha256 = file_sha256(job.path)
    done = store.completed(job.name, job.sha256, ctx.digest)
    if done is not None and (done.get("run_id") == store.run_id or not ctx.overwrite):
        # complete already: from an earlier run, or from this task's earlier attempt
        return from_record(job, done, "done" if done.get("run_id") == store.run_id
                           else "skipped")
    start = time.perf_counter()
    image = load_image(job.path, max_pixels=ctx.max_image_pixels)
    job.timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    (record,) = _worker_embedder(pipeline, ctx.digest).transform([image])
    job.timings["embed"] = time.perf_counter() - start
    return record


def segment_task(job, record, pipeline, store, ctx):
    """Segment one image and write its outputs; return its result, never raise.

    Parameters
    ----------
    job : Job
    record : PatchGrid or None
        The image, loaded and embedded; ``None`` to load and embed it here
        from ``job.path`` (a Dask worker).
    pipeline : Pipeline
        The CLASP pipeline (unfitted steps are fitted on this image).
    store : OutputStore
    ctx : RunContext

    Returns
    -------
    result : dict
        ``status`` ``"done"``, ``"skipped"`` or ``"failed"`` (with the reason).
    """
    try:
        if record is None:
            record = _load_and_embed(job, pipeline, store, ctx)
            if isinstance(record, dict):
                return record
        mask, rec = clasp_one(pipeline, record, source=job.path)
        timings = {**job.timings, **rec.info["stage_timings"]}
        meta = image_record(rec, mask, name=job.name, source=job.path,
                            input_sha256=job.sha256, settings=ctx.settings,
                            settings_hash=ctx.digest, timings=timings, run_id=store.run_id,
                            attempts=job.attempts, version=ctx.version)
        store.write(job.name, rec.image, mask, meta)
    except Exception as exc:  # one bad image must not stop the others
        logger.debug("%s failed", job.name, exc_info=True)
        return failed(job, exc)
    logger.debug("%s: K=%d in %.2f s", job.name, meta["n_clusters"],
                 sum(meta["timings"].values()))
    return result(job, "done", n_clusters=meta["n_clusters"],
                  seconds=sum(meta["timings"].values()))


# --------------------------------------------------------------------------
# backends and the one retry policy
# --------------------------------------------------------------------------


class _InProcess:
    """Runs each task at once, here."""

    died = ()  # nothing can die without taking this process along
    names_culprit = True

    def submit(self, fn, *args, key=None):
        future = concurrent.futures.Future()
        future.set_result(fn(*args))
        return future

    def wait_first(self, futures):
        return list(futures)

    def restart(self):
        pass

    def close(self):
        pass


class _Processes:
    """Local worker processes (loky), owned by one run and shut down at its end."""

    names_culprit = False  # a dead worker breaks the pool: every task in flight fails

    def __init__(self, n_workers):
        from joblib.externals.loky import ProcessPoolExecutor
        from joblib.externals.loky.process_executor import BrokenProcessPool

        self._make = lambda: ProcessPoolExecutor(max_workers=n_workers)
        self.died = (BrokenProcessPool,)  # TerminatedWorkerError is one
        self._pool = self._make()

    def submit(self, fn, *args, key=None):
        return self._pool.submit(fn, *args)

    def wait_first(self, futures):
        done, _ = concurrent.futures.wait(futures, return_when="FIRST_COMPLETED")
        return done

    def restart(self):
        self._pool.shutdown(wait=True, kill_workers=True)
        self._pool = self._make()

    def close(self):
        self._pool.shutdown(wait=True, kill_workers=True)


class _Dask:
    """A Dask cluster: the scheduler reschedules the tasks of a dead worker itself."""

    names_culprit = True

    def __init__(self, client):
        from distributed.scheduler import KilledWorker

        self.client = client
        self.died = (KilledWorker,)

    def submit(self, fn, *args, key=None):
        return self.client.submit(fn, *args, key=key, pure=False, retries=0)

    def wait_first(self, futures):
        from distributed import wait

        return wait(list(futures), return_when="FIRST_COMPLETED").done

    def restart(self):
        pass

    def close(self):
        pass


class _Runner:
    """Tasks in flight on a backend, at most ``max_in_flight`` at a time.

    The retry policy: a task whose worker died is run again, alone, until it
    has been started ``max_attempts`` times; any other failure is final (the
    task reports it). On a backend where one death fails every task in flight
    (local processes), those tasks are re-run one at a time, so only the image
    that kills its worker is charged. On Dask the scheduler already
    reschedules a dead worker's tasks (``distributed.scheduler.allowed-failures``)
    before reporting :class:`~distributed.scheduler.KilledWorker`, which is then
    final.
    """

    def __init__(self, backend, emit, *, max_attempts, max_in_flight):
        self.backend = backend
        self.emit = emit
        self.max_attempts = max_attempts
        self.max_in_flight = max(1, max_in_flight)
        self.in_flight = {}
        self.suspects = []

    def submit(self, job, fn, *args, key=None):
        while len(self.in_flight) >= self.max_in_flight:
            self._collect()
        self.in_flight[self.backend.submit(fn, *args, key=key)] = (job, fn, args, key)

    def _collect(self):
        for future in self.backend.wait_first(self.in_flight):
            job, fn, args, key = self.in_flight.pop(future)
            try:
                outcome = future.result()
            except self.backend.died as exc:
                self._died(job, fn, args, key, exc)
            else:
                self.emit(outcome)
            finally:
                release = getattr(future, "release", None)
                if release is not None:
                    release()

    def _died(self, job, fn, args, key, exc):
        if self.backend.names_culprit:
            n = getattr(exc, "allowed_failures", 0) + 1
            self.emit(failed(job, exc, attempts=n, reason=(
                f"{type(exc).__name__}: {n} Dask worker process(es) died while segmenting "
                f"this image (distributed.scheduler.allowed-failures={n - 1}); it may "
                f"exhaust a worker's memory or crash native code. Check the worker logs.")))
            return
        self.suspects.append((job, fn, args, key))

    def finish(self):
        """Wait for every task; re-run alone those whose worker died."""
        while self.in_flight:
            self._collect()
        if self.suspects:
            self.backend.restart()
            logger.warning("a worker process died; running the %d image(s) it may have been "
                           "working on one at a time", len(self.suspects))
        suspects, self.suspects = self.suspects, []
        for job, fn, args, key in suspects:
            while True:
                job.attempts += 1
                logger.info("%s: the worker process died; attempt %d of %d", job.name,
                            job.attempts, self.max_attempts)
                future = self.backend.submit(fn, *args, key=key)
                try:
                    self.emit(future.result())
                    break
                except self.backend.died as exc:
                    self.backend.restart()
                    if job.attempts >= self.max_attempts:
                        self.emit(failed(job, exc, reason=(
                            f"WorkerDied: the worker process segmenting this image died "
                            f"{job.attempts} time(s) (out of memory, or a crash in native "
                            f"code?)")))
                        break


# --------------------------------------------------------------------------
# the runs
# --------------------------------------------------------------------------


def _embed_chunk(jobs, embed, emit):
    """Embed loaded images in one batch; if the batch fails, one at a time."""
    images = [image for image, _ in jobs]
    start = time.perf_counter()
    try:
        records = embed.transform(images)
    except Exception as exc:  # find the image(s) at fault
        logger.warning("embedding a batch of %d image(s) failed (%s: %s); embedding them one "
                       "at a time", len(jobs), type(exc).__name__, exc)
        out = []
        for image, job in jobs:
            start = time.perf_counter()
            try:
                (record,) = embed.transform([image])
            except Exception as exc:
                emit(failed(job, exc))
                continue
            job.timings["embed"] = time.perf_counter() - start
            out.append((job, record))
        return out
    share = (time.perf_counter() - start) / len(jobs)  # each image's share of the batch
    for _, job in jobs:
        job.timings["embed"] = share
    return [(job, record) for (_, job), record in zip(jobs, records)]


def run_local(jobs, store, pipeline, ctx, *, n_workers, chunk_size, max_attempts, emit):
    """Load, check and embed here in chunks; segment and write in ``n_workers`` processes."""
    backend = _InProcess() if n_workers == 1 else _Processes(n_workers)
    tail = clone(pipeline)  # parameters only: the workers get the images embedded
    embed = None
    try:
        runner = _Runner(backend, emit, max_attempts=max_attempts,
                         max_in_flight=1 if n_workers == 1 else chunk_size + n_workers)
        for lo in range(0, len(jobs), chunk_size):
            loaded = []
            for job in jobs[lo:lo + chunk_size]:
                try:
                    job.sha256 = file_sha256(job.path)
                    done = None if ctx.overwrite else store.completed(job.name, job.sha256,
                                                                      ctx.digest)
                    if done is not None:
                        emit(from_record(job, done, "skipped"))
                        continue
                    start = time.perf_counter()
                    image = load_image(job.path, max_pixels=ctx.max_image_pixels)
                    job.timings["load"] = time.perf_counter() - start
                except Exception as exc:  # unreadable, damaged, too large: once
                    emit(failed(job, exc))
                    continue
                loaded.append((image, job))
            if not loaded:
                continue
            if embed is None:
                embed = fitted_embedder(pipeline)
            for job, record in _embed_chunk(loaded, embed, emit):
                runner.submit(job, segment_task, job, record, tail, store, ctx)
            del loaded
        runner.finish()
    finally:
        backend.close()


def run_dask(jobs, store, pipeline, ctx, *, client, max_attempts, emit):
    """Each image a task on the cluster: load, embed, segment and write on a worker."""
    template = clone(pipeline)  # parameters only: no fitted backbone is shipped
    runner = _Runner(_Dask(client), emit, max_attempts=max_attempts,
                     max_in_flight=max(8, 2 * sum(client.nthreads().values())))
    try:
        for job in jobs:
            runner.submit(job, segment_task, job, None, template, store, ctx,
                          key=f"clasp-segment-{job.name}-{store.run_id}")
        runner.finish()
    finally:
        if runner.in_flight:  # interrupted: do not leave the cluster working for nobody
            client.cancel(list(runner.in_flight))

