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
  batches (the backbone runs batched, once; a thread decodes the next batch
  meanwhile), the workers segment, refine and write;
- a Dask cluster: each task is sent a path; the worker loads and embeds the
  image with an embedder it builds once per settings, then segments and
  writes.

A run stops early, with one reason, when it cannot go on: the output disk is
full (every later image would fail the same way), or the Dask client lost its
scheduler. What was finished is kept.

Local worker processes never outlive the run: they are stopped at its end,
they die with it if it is killed (SIGKILL included), and they are started
with SIGINT and SIGHUP blocked, so that a signal sent to the whole process
group (Ctrl-C, a closed terminal) reaches only the run, which stops them
cleanly.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from sklearn.base import clone

from ..io import DISK_FULL_ERRNOS, file_sha256, load_image
from ..pipeline import clasp_one, fitted_embedder
from .store import RecordIndex, image_record

__all__ = ["Job", "OutputNotSharedError", "RunContext", "check_scheduler_address", "run_dask",
           "run_local", "segment_task"]

logger = logging.getLogger(__name__)

_WORKER_CACHE = "_sklearn_clasp_embedders"
_WORKER_LOCK = "_sklearn_clasp_lock"
# Dask: how often the client's connection is checked while waiting, and how long a lost
# connection may take to come back before the run stops.
_POLL_SECONDS = 0.5
_LOST_GRACE_SECONDS = 3.0


class OutputNotSharedError(OSError):
    """Dask workers do not see the client's output directory at its path."""


class _SchedulerLost(ConnectionError):
    """The Dask client lost its scheduler: the run cannot go on."""


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
           attempts=None, errno=None):
    """The small per-image result the engine reports (no pixels)."""
    return {
        "name": job.name,
        "source": str(job.path),
        "status": status,
        "n_clusters": n_clusters,
        "seconds": float(seconds),
        "error": error,
        "error_type": error_type,
        "errno": errno,
        "attempts": job.attempts if attempts is None else attempts,
        "index": job.index,
    }


def failed(job, exc, *, reason=None, attempts=None):
    """A failed result with a one-line reason."""
    message = " ".join((reason or f"{type(exc).__name__}: {exc}").split())
    return result(job, "failed", error=message, error_type=type(exc).__name__,
                  attempts=attempts, errno=exc.errno if isinstance(exc, OSError) else None)


def is_disk_full(outcome):
    """Whether a failed result is a full disk (or quota): no later image can be written."""
    return outcome["status"] == "failed" and outcome.get("errno") in DISK_FULL_ERRNOS


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


def _where():
    """``"Dask worker <address>"`` on a worker, else ``"this process"``."""
    from distributed import get_worker

    try:
        return f"Dask worker {get_worker().address}"
    except ValueError:
        return "this process"


def _check_visible(what, path, exists):
    """On a Dask worker: the path must be there as it is on the client."""
    if exists:
        return
    raise FileNotFoundError(
        f"the {what} {str(path)!r} does not exist on {_where()}; the workers need the same "
        f"view of the files as the client (a shared file system, mounted at the same path)."
    )


_WORKER_INDEX = "_sklearn_clasp_indexes"


def _worker_index(store):
    """The record index of this run, read once per Dask worker from the output directory."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a worker
        return RecordIndex.load(store)
    lock = worker.__dict__.setdefault(_WORKER_LOCK, threading.Lock())
    with lock:
        cache = worker.__dict__.setdefault(_WORKER_INDEX, {})
        index = cache.get(store.run_id)
        if index is None:
            while len(cache) >= 2:  # the two latest runs
                cache.pop(next(iter(cache)))
            index = cache[store.run_id] = RecordIndex.load(store)
    return index


def _load_and_embed(job, pipeline, store, ctx, index):
    """On a Dask worker: hash, resume check, load, embed. A record, or a finished result."""
    # the directory the client locked for this run, not another one at the same path
    store.check_held(_where())
    # lexists: a broken link or a link loop is there; hashing it says what is wrong
    _check_visible("image", job.path, os.path.lexists(job.path))
    job.sha256 = file_sha256(job.path)
    index = index if index is not None else _worker_index(store)
    job.name = index.resolve(store, job.name, job.path, job.sha256)
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


def segment_task(job, record, pipeline, store, ctx, index=None):
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
    index : RecordIndex, default=None
        With ``record=None``: the records of the output directory, to find the
        image's outputs by its bytes (see :meth:`RecordIndex.resolve`);
        ``None`` reads the one the run left in the output directory.

    Returns
    -------
    result : dict
        ``status`` ``"done"``, ``"skipped"`` or ``"failed"`` (with the reason).
    """
    remote = record is None
    try:
        if remote:
            record = _load_and_embed(job, pipeline, store, ctx, index)
            if isinstance(record, dict):
                return record
        elif job.attempts > 1:  # started again: its dead worker may have written it all
            done = store.completed(job.name, job.sha256, ctx.digest)
            if done is not None and done.get("run_id") == store.run_id:
                return from_record(job, done, "done")
        mask, rec = clasp_one(pipeline, record, source=job.path)
        timings = {**job.timings, **rec.info["stage_timings"]}
        meta = image_record(rec, mask, name=job.name, source=job.path,
                            input_sha256=job.sha256, settings=ctx.settings,
                            settings_hash=ctx.digest, timings=timings, run_id=store.run_id,
                            attempts=job.attempts, version=ctx.version)
        if remote:
            store.check_held(_where())  # the run may have ended meanwhile
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

    def unexpected(self, job, exc):
        return failed(job, exc)

    def restart(self):
        pass

    def close(self):
        pass


# --- local worker processes ------------------------------------------------

_CHILD_BLOCKED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGHUP")
                       if hasattr(signal, name))


@contextlib.contextmanager
def _children_immune_to_group_signals():
    """Start processes meanwhile with SIGINT and SIGHUP blocked (a mask survives exec).

    Ctrl-C and a closed terminal signal the whole foreground process group; the
    run handles them and stops its workers itself. A worker, or loky's resource
    tracker, killed by them beforehand breaks the pool and makes the tracker
    relaunch and print tracebacks. Blocking (not ignoring) loses no signal meant
    for this process: it stays pending, or another thread takes it.
    """
    if not hasattr(signal, "pthread_sigmask") or not _CHILD_BLOCKED:
        yield lambda: None
        return

    def block():  # again: the standard library's resource tracker unblocks SIGINT
        signal.pthread_sigmask(signal.SIG_BLOCK, _CHILD_BLOCKED)

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _CHILD_BLOCKED)
    try:
        yield block
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _exit_if_orphaned(parent):
    """In a worker: exit as soon as the run that started it is gone."""
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.25)


def _worker_init(parent):
    """Initializer of a local worker: die with the parent, whatever kills it.

    On Linux the kernel kills the worker when its parent dies
    (``PR_SET_PDEATHSIG``); elsewhere, and as a backstop, a thread checks the
    parent every quarter of a second.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
    threading.Thread(target=_exit_if_orphaned, args=(parent,), daemon=True,
                     name="sklearn-clasp-parent-watch").start()


class _Processes:
    """Local worker processes (loky), owned by one run and shut down at its end."""

    names_culprit = False  # a dead worker breaks the pool: every task in flight fails

    def __init__(self, n_workers, on_restart=None):
        from joblib.externals.loky.process_executor import BrokenProcessPool

        self.n_workers = n_workers
        self.died = (BrokenProcessPool,)  # TerminatedWorkerError is one
        self._on_restart = on_restart  # called with no worker alive (temporaries removed)
        self._pool = self._make()

    def _make(self):
        from multiprocessing import resource_tracker as stdlib_resource_tracker

        from joblib.externals.loky import ProcessPoolExecutor
        from joblib.externals.loky.backend import resource_tracker

        with _children_immune_to_group_signals() as block:
            resource_tracker.ensure_running()
            stdlib_resource_tracker.ensure_running()  # (Python 3.11: unblocks SIGINT after)
            block()
            pool = ProcessPoolExecutor(max_workers=self.n_workers, initializer=_worker_init,
                                       initargs=(os.getpid(),))
            block()
            pool.submit(os.getpid)  # start the workers now, inside the mask
        return pool

    def submit(self, fn, *args, key=None):
        return self._pool.submit(fn, *args)

    def wait_first(self, futures):
        done, _ = concurrent.futures.wait(futures, return_when="FIRST_COMPLETED")
        return done

    def unexpected(self, job, exc):
        return failed(job, exc)

    def _shutdown(self):
        # loky drops the pending work items on kill_workers=True but not their ids, and its
        # manager thread then fails looking one up (a KeyError traceback): drop them first
        import queue

        ids = getattr(self._pool, "_work_ids", None)
        with contextlib.suppress(queue.Empty, AttributeError):
            while True:
                ids.get_nowait()
        self._pool.shutdown(wait=True, kill_workers=True)

    def restart(self):
        self._shutdown()  # kills the other workers too, maybe in the middle of a write
        if self._on_restart is not None:
            self._on_restart()
        self._pool = self._make()

    def close(self):
        self._shutdown()


# --- Dask ------------------------------------------------------------------


def check_scheduler_address(address):
    """A Dask scheduler address, checked at once; raises with the reason.

    The scheme must be one Dask knows and a ``tcp://`` or ``tls://`` port in
    1..65535; then, for ``tcp://``, the host must resolve and something must
    listen on the port (refused at once, instead of retrying for the whole
    connect timeout; the scheduler logs the probe's connection at INFO
    level). A ``tls://`` address is left to the client's own connect: a probe
    would make the scheduler log a failed TLS handshake.

    Parameters
    ----------
    address : str
        ``"tcp://host:8786"``, ``"tls://host:8786"``, ``"host:8786"`` (tcp), ...

    Returns
    -------
    address : str
        The address with its scheme.

    Raises
    ------
    ImportError
        If Dask's ``distributed`` is not installed.
    ValueError
        If the address is malformed (unknown scheme, bad port).
    ConnectionError
        If the host does not resolve or the port refuses connections.

    Every message starts with ``scheduler <address>:``, the setting's name.
    """
    import socket

    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ImportError(f"scheduler {address!r}: needs Dask: pip install "
                          f"'sklearn-clasp[dask]'") from None
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port
    from distributed.comm.registry import backends

    text = str(address).strip()
    try:
        scheme, location = parse_address(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"scheduler {address!r}: not a Dask scheduler address ({exc}); "
                         f"expected e.g. tcp://host:8786") from None
    if scheme not in backends:
        raise ValueError(f"scheduler {address!r}: unknown scheme {scheme!r}; expected one of "
                         f"{', '.join(sorted(s + '://' for s in backends))}, e.g. "
                         f"tcp://host:8786")
    if scheme not in ("tcp", "tls"):
        return f"{scheme}://{location}"
    try:
        host, port = parse_host_port(location)
    except ValueError as exc:
        raise ValueError(f"scheduler {address!r}: {exc}; expected e.g. tcp://host:8786") \
            from None
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"scheduler {address!r}: the port must be in 1..65535 (a Dask "
                         f"scheduler listens on 8786 by default)")
    if scheme == "tls":
        return f"{scheme}://{location}"
    cannot = f"scheduler {address!r}: cannot connect to the Dask scheduler"
    fix = "Check the address and that the scheduler is running."
    try:
        with socket.create_connection((host, port), timeout=_connect_timeout()):
            pass
    except ConnectionRefusedError:
        raise ConnectionError(f"{cannot}: nothing listens at {host}:{port} (connection "
                              f"refused). {fix}") from None
    except socket.gaierror as exc:
        raise ConnectionError(f"{cannot}: the host {host!r} does not resolve "
                              f"({exc.strerror or exc}). {fix}") from None
    except OSError:
        pass  # a timeout or an unreachable network: the client's own connect says more
    return f"{scheme}://{location}"


def _connect_timeout():
    import dask
    from dask.utils import parse_timedelta

    return parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "seconds")


def _worker_sees_output(store, dask_worker=None):
    """Run on each worker by ``Client.run``: ``None`` if it sees this run's directory."""
    where = f"Dask worker {dask_worker.address}" if dask_worker is not None else "a worker"
    try:
        store.check_held(where)
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


def check_workers_see(client, store):
    """Every worker must see the output directory the client locked, at the same path.

    Raises
    ------
    OutputNotSharedError
        Naming the workers that do not, and why.
    """
    try:
        seen = client.run(_worker_sees_output, store)
    except Exception as exc:  # e.g. another version of the package on the workers
        raise OutputNotSharedError(
            f"could not check on the Dask workers that they see the output directory "
            f"{str(store.out_dir)!r} ({type(exc).__name__}: {' '.join(str(exc).split())}); "
            f"the workers need the same version of sklearn-clasp as the client") from None
    bad = {address: why for address, why in seen.items() if why}
    if bad:
        lines = "; ".join(f"{why}" for why in list(bad.values())[:3])
        raise OutputNotSharedError(
            f"{len(bad)} of {len(seen)} Dask worker(s) do not see the output directory "
            f"{str(store.out_dir)!r} that the client locked: {lines}")


class _Dask:
    """A Dask cluster: the scheduler reschedules the tasks of a dead worker itself."""

    names_culprit = True

    def __init__(self, client):
        from distributed.scheduler import KilledWorker

        self.client = client
        self.died = (KilledWorker,)

    def submit(self, fn, *args, key=None):
        if self.client.status != "running":
            raise self._lost()
        return self.client.submit(fn, *args, key=key, pure=False, retries=0)

    def _lost(self, exc=None):
        address = getattr(getattr(self.client, "scheduler", None), "address", None)
        return _SchedulerLost(
            f"lost the connection to the Dask scheduler{f' at {address}' if address else ''}, "
            f"the run stopped: the images done are kept; run it again, with a working "
            f"scheduler, to finish")

    def wait_first(self, futures):
        from distributed import wait

        lost_since = None
        while True:
            try:
                return wait(list(futures), timeout=_POLL_SECONDS,
                            return_when="FIRST_COMPLETED").done
            except TimeoutError:
                pass
            except Exception as exc:  # FuturesCancelledError: scheduler-connection-lost
                if self.client.status != "running" or "connection" in str(exc).lower():
                    raise self._lost(exc) from None
                raise
            if self.client.status == "running":
                lost_since = None
            elif lost_since is None:
                lost_since = time.monotonic()
            elif time.monotonic() - lost_since > _LOST_GRACE_SECONDS:
                raise self._lost()

    def unexpected(self, job, exc):
        """A future that ended without a result (a task never raises): the connection."""
        import asyncio

        # CommClosedError is an OSError; a cancelled future: scheduler-connection-lost
        if (isinstance(exc, (asyncio.CancelledError, OSError, TimeoutError))
                or self.client.status != "running"):
            raise self._lost(exc)
        return failed(job, exc)

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
        self._emit = emit
        self.max_attempts = max_attempts
        self.max_in_flight = max(1, max_in_flight)
        self.in_flight = {}
        self.suspects = []
        self.stopped = None  # why the run stopped early, if it did

    def emit(self, outcome):
        """Report one result; a full disk stops the run (its image is not a failure)."""
        if is_disk_full(outcome):
            if self.stopped is None:  # the error says what and where, and what to do
                text = re.sub(r"^\w+: (\[Errno \d+\] )?", "", outcome["error"] or "")
                self.stopped = f"the output disk is full, the run stopped: {text}"
            outcome = dict(outcome, status="stopped", error=None, error_type=None)
        self._emit(outcome)

    def stop(self, reason):
        if self.stopped is None:
            self.stopped = reason

    def submit(self, job, fn, *args, key=None):
        """Start a task (unless the run stopped); then wait while too many are in flight."""
        if self.stopped is not None:
            return False
        try:
            future = self.backend.submit(fn, *args, key=key)
        except self.backend.died:  # a worker died since: a broken pool takes no task
            self._restart()
            future = self.backend.submit(fn, *args, key=key)
        self.in_flight[future] = (job, fn, args, key)
        while len(self.in_flight) >= self.max_in_flight:
            self._collect()
        return True

    def _restart(self):
        """A dead worker broke the pool: its unfinished tasks become suspects; a new pool."""
        for future, entry in list(self.in_flight.items()):
            if future.done() and future.exception() is None:
                self.emit(future.result())  # finished before the death
            else:
                self.suspects.append(entry)
        self.in_flight.clear()
        self.backend.restart()

    def _collect(self):
        for future in self.backend.wait_first(self.in_flight):
            entry = self.in_flight.pop(future, None)
            if entry is None:  # accounted for by a restart meanwhile
                continue
            job, fn, args, key = entry
            try:
                outcome = future.result()
            except self.backend.died as exc:
                self._died(job, fn, args, key, exc)
            except Exception as exc:  # the backend's own failure, not the task's
                self.in_flight[future] = (job, fn, args, key)  # not accounted for
                outcome = self.backend.unexpected(job, exc)  # raises if the run cannot go on
                self.in_flight.pop(future)
                self.emit(outcome)
            else:
                self.emit(outcome)
            finally:
                release = getattr(future, "release", None)
                if release is not None:
                    with contextlib.suppress(Exception):
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
        self._restart()  # every other task in flight dies with the pool: suspects too

    def finish(self):
        """Wait for every task; re-run alone those whose worker died."""
        while self.in_flight:
            self._collect()
        if self.stopped is not None:
            for job, *_ in self.suspects:
                self.emit(result(job, "stopped"))
            self.suspects = []
        if self.suspects:
            logger.warning("a worker process died; running the %d image(s) it may have been "
                           "working on one at a time", len(self.suspects))
        suspects, self.suspects = self.suspects, []
        for job, fn, args, key in suspects:
            if self.stopped is not None:
                self.emit(result(job, "stopped"))
                continue
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


def _load_chunk(chunk, store, ctx, index, claimed, stop):
    """Hash, resume check and decode a chunk of images (on the loading thread).

    Returns ``(kind, job, value)`` for each image: ``"skipped"`` with its
    finished record, ``"failed"`` with the exception (unreadable, damaged, too
    large: tried once), or ``"loaded"`` with the decoded image. Stops early,
    leaving the rest without a result, once ``stop`` is set.
    """
    out = []
    for job in chunk:
        if stop.is_set():
            break
        try:
            job.sha256 = file_sha256(job.path)
            job.name = index.resolve(store, job.name, job.path, job.sha256, claimed)
            claimed.add(job.name)
            done = None if ctx.overwrite else store.completed(job.name, job.sha256, ctx.digest)
            if done is not None:
                out.append(("skipped", job, done))
                continue
            start = time.perf_counter()
            image = load_image(job.path, max_pixels=ctx.max_image_pixels)
            job.timings["load"] = time.perf_counter() - start
        except Exception as exc:
            out.append(("failed", job, exc))
            continue
        out.append(("loaded", job, image))
    return out


def run_local(jobs, store, pipeline, ctx, *, n_workers, chunk_size, max_attempts, emit,
              index=None):
    """Load and embed here in chunks; segment and write in ``n_workers`` processes.

    A thread hashes, checks and decodes the next chunk while this one is
    embedded and segmented (decoding releases the GIL), so at most two chunks
    of decoded images are held at a time.

    Returns
    -------
    stopped : str or None
        Why the run stopped before the end (a full disk), else ``None``; the
        images not done then have no result.
    """
    index = index if index is not None else RecordIndex()
    backend = (_InProcess() if n_workers == 1
               else _Processes(n_workers, on_restart=store.remove_temporaries))
    tail = clone(pipeline)  # parameters only: the workers get the images embedded
    embed = None
    claimed = set()  # names taken by images of this run found by their bytes
    chunks = [jobs[lo:lo + chunk_size] for lo in range(0, len(jobs), chunk_size)]
    stop = threading.Event()
    loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="clasp-load")

    def load(i):
        return loader.submit(_load_chunk, chunks[i], store, ctx, index, claimed, stop)

    try:
        runner = _Runner(backend, emit, max_attempts=max_attempts,
                         max_in_flight=1 if n_workers == 1 else chunk_size + n_workers + 1)
        pending = load(0) if chunks else None
        for i in range(len(chunks)):
            items = pending.result()
            pending = load(i + 1) if i + 1 < len(chunks) else None
            loaded = []
            for kind, job, value in items:
                if kind == "skipped":
                    runner.emit(from_record(job, value, "skipped"))
                elif kind == "failed":
                    runner.emit(failed(job, value))
                else:
                    loaded.append((value, job))
            del items
            if loaded:
                if embed is None:
                    embed = fitted_embedder(pipeline)
                for job, record in _embed_chunk(loaded, embed, runner.emit):
                    if not runner.submit(job, segment_task, job, record, tail, store, ctx):
                        runner.emit(result(job, "stopped"))
                del loaded
            if runner.stopped is not None:
                break
        runner.finish()
        return runner.stopped
    finally:
        stop.set()
        loader.shutdown(wait=False, cancel_futures=True)
        backend.close()


def run_dask(jobs, store, pipeline, ctx, *, client, max_attempts, emit, index=None):
    """Each image a task on the cluster: load, embed, segment and write on a worker.

    Returns
    -------
    stopped : str or None
        Why the run stopped before the end (a full disk, the scheduler lost),
        else ``None``.
    """
    template = clone(pipeline)  # parameters only: no fitted backbone is shipped
    backend = _Dask(client)
    runner = _Runner(backend, emit, max_attempts=max_attempts,
                     max_in_flight=max(8, 2 * sum(client.nthreads().values())) + 1)
    # the records, read once per worker from the output directory rather than sent per task
    try:
        (index if index is not None else RecordIndex()).save(store)
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        return f"the output disk is full, the run stopped: {exc.strerror or exc}"
    try:
        for job in jobs:
            if not runner.submit(job, segment_task, job, None, template, store, ctx,
                                 key=f"clasp-segment-{job.name}-{store.run_id}"):
                break
        runner.finish()
    except _SchedulerLost as exc:
        runner.stop(str(exc))
    finally:
        if runner.in_flight:  # stopped or interrupted: leave the cluster working for nobody
            futures = list(runner.in_flight)
            if runner.stopped is not None:
                for job, *_ in runner.in_flight.values():
                    runner.emit(result(job, "stopped"))
                runner.in_flight.clear()
            with contextlib.suppress(Exception):  # the client may be closed already
                if client.status == "running":
                    client.cancel(futures)
        RecordIndex.discard(store)
    return runner.stopped
