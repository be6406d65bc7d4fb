"""Segment image collections: files in; masks, overlays and JSON records out.

:func:`segment_collection` runs a CLASP pipeline over a collection of image
files and writes, for each image ``<name>``, into one output directory (see
:mod:`~sklearn_clasp.collection.store`): ``<name>_mask.png`` (the integer
mask, full size, a palette PNG), ``<name>_overlay.png`` and, last,
``<name>.json`` (the record). A re-run skips the images whose record matches
the input bytes and the settings; one failing image is recorded (in the
report and in ``failures.jsonl``) and does not stop the others. One run at a
time writes into a directory (an operating-system lock), and a directory
holds the outputs of one set of settings.

The package has three parts: the output store
(:mod:`~sklearn_clasp.collection.store`), the run engine
(:mod:`~sklearn_clasp.collection.engine`: one per-image task on this process,
local worker processes or a Dask cluster, with one retry policy: only for a
worker that died) and the report (:class:`CollectionReport`). Inputs are
found and named by :func:`sklearn_clasp.io.find_images`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import Interval, validate_params

from ..device import n_jobs_constraints
from ..io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageInput,
    check_image_inputs,
    find_images,
    is_inside,
)
from ..pipeline import STEP_NAMES, check_pipeline_settings, pipeline_settings, settings_hash
from .engine import (
    Job,
    OutputNotSharedError,
    RunContext,
    check_scheduler_address,
    check_workers_see,
    run_dask,
    run_local,
)
from .store import (
    FAILURES_FILE,
    OutputDirectoryInUseError,
    OutputLock,
    OutputStore,
    RecordIndex,
    SettingsMismatchError,
    check_settings,
    plan_names,
)

__all__ = [
    "FAILURES_FILE",
    "MAX_ATTEMPTS",
    "MAX_CHUNK_SIZE",
    "CollectionReport",
    "OutputDirectoryInUseError",
    "OutputNotSharedError",
    "RunStoppedError",
    "SettingsMismatchError",
    "segment_collection",
]

logger = logging.getLogger(__name__)

#: Most starts of an image whose worker process died.
MAX_ATTEMPTS = 10
#: Most images loaded and embedded at a time (each up to ``max_image_pixels`` pixels).
MAX_CHUNK_SIZE = 256


class RunStoppedError(RuntimeError):
    """The run stopped before the end because it could not go on.

    Raised by :func:`segment_collection` when the output disk (or quota) is
    full, or when the Dask client lost its scheduler: every later image would
    fail the same way. Every output written is complete and kept; running
    again finishes the rest.

    Attributes
    ----------
    reason : str
        One line: what happened and what to do.
    report : CollectionReport
        What was done; the images not done have the status ``"stopped"``.
    """

    def __init__(self, reason, report):
        super().__init__(reason)
        self.reason = reason
        self.report = report


@dataclass
class CollectionReport:
    """What :func:`segment_collection` did, image by image.

    Parameters
    ----------
    results : list of dict
        One per image, in input order: ``name``, ``source``, ``status``
        (``"done"``, ``"skipped"`` or ``"failed"``), ``n_clusters`` (None when
        failed), ``seconds`` (the image's processing time), ``error``
        (``"Type: message"`` when failed, else None), ``attempts``.
    out_dir : pathlib.Path, default=None
        The output directory.
    wall_seconds : float, default=0.0
        Wall-clock time of the whole run.
    settings_hash : str, default=None
        :func:`~sklearn_clasp.pipeline.settings_hash` of the pipeline.
    run_id : str, default=None
        Identifier of the run, also stored in the records it wrote.
    stopped : str, default=None
        Why the run stopped before the end (see :class:`RunStoppedError`);
        its images not done have the status ``"stopped"``.

    Examples
    --------
    >>> report = CollectionReport([
    ...     {"name": "a", "source": "a.png", "status": "done", "n_clusters": 3,
    ...      "seconds": 0.5, "error": None},
    ...     {"name": "b", "source": "b.png", "status": "failed", "n_clusters": None,
    ...      "seconds": 0.0, "error": "ValueError: not an image"}])
    >>> report.n_done, report.n_failed, report.segments_histogram
    (1, 1, {3: 1})
    """

    results: list
    out_dir: Path | None = None
    wall_seconds: float = 0.0
    settings_hash: str | None = None
    run_id: str | None = None
    stopped: str | None = None

    def _count(self, status):
        return sum(r["status"] == status for r in self.results)

    @property
    def n_images(self):
        """Number of images in the collection."""
        return len(self.results)

    @property
    def n_done(self):
        """Images segmented by this run."""
        return self._count("done")

    @property
    def n_skipped(self):
        """Images whose outputs were already complete for these settings."""
        return self._count("skipped")

    @property
    def n_failed(self):
        """Images that failed."""
        return self._count("failed")

    @property
    def n_stopped(self):
        """Images not done because the run stopped early."""
        return self._count("stopped")

    @property
    def seconds(self):
        """Wall-clock time of the run, in seconds."""
        return self.wall_seconds

    @property
    def failures(self):
        """The results of the images that failed."""
        return [r for r in self.results if r["status"] == "failed"]

    @property
    def segments_histogram(self):
        """``{K: number of images}`` over the done and skipped images, sorted by K."""
        counts = Counter(r["n_clusters"] for r in self.results
                         if r["status"] in ("done", "skipped")
                         and r.get("n_clusters") is not None)
        return dict(sorted(counts.items()))

    def summary(self):
        """A multi-line human summary: counts, time, segments per image, failures."""
        rate = self.n_done / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{self.n_images} image(s): {self.n_done} segmented, {self.n_skipped} skipped "
            f"(already done), {self.n_failed} failed"
            + (f", {self.n_stopped} not done" if self.n_stopped else "")
            + f"; {self.seconds:.1f} s"
            + (f" ({rate:.2f} images/s)" if self.n_done else "")
        ]
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}")
        hist = self.segments_histogram
        if hist:
            lines.append("segments per image:")
            top = max(hist.values())
            for k, n in hist.items():
                bar = "#" * max(1, round(30 * n / top))
                lines.append(f"  K={k:>3}  {n:>6}  {bar}")
        if self.failures:
            lines.append("failures:")
            lines.extend(f"  {r['name']} ({r['source']}): {r['error']}" for r in self.failures)
        if self.out_dir is not None:
            lines.append(f"outputs: {self.out_dir}" + (
                f" (failures also in {Path(self.out_dir) / FAILURES_FILE})"
                if self.failures else ""))
        return "\n".join(lines)


@validate_params(
    {
        "inputs": "no_validation",
        "out_dir": [str, os.PathLike],
        "pipeline": [None, Pipeline],
        "n_jobs": n_jobs_constraints(),
        "client": "no_validation",
        "scheduler": [None, str],
        "security": "no_validation",
        "overwrite": ["boolean"],
        "progress": ["boolean"],
        "max_attempts": [Interval(Integral, 1, MAX_ATTEMPTS, closed="both")],
        "write_overlay": ["boolean"],
        "chunk_size": [None, Interval(Integral, 1, MAX_CHUNK_SIZE, closed="both")],
        "max_image_pixels": [None, Interval(Integral, 1, None, closed="left")],
    },
    prefer_skip_nested_validation=True,
)
def segment_collection(
    inputs,
    out_dir,
    *,
    pipeline=None,
    n_jobs=1,
    client=None,
    scheduler=None,
    security=None,
    overwrite=False,
    progress=False,
    max_attempts=3,
    write_overlay=True,
    chunk_size=None,
    max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
):
    """Segment a collection of image files; write masks, overlays and records.

    For each image ``<name>`` (see :func:`~sklearn_clasp.io.find_images`) writes
    ``<name>_mask.png`` (the integer mask, full size: a palette PNG whose pixel
    values are the labels), ``<name>_overlay.png``
    (if ``write_overlay``) and, last, ``<name>.json``, each atomically, into
    ``out_dir``. The JSON record holds ``source``, ``name``, ``input_sha256``
    (of the file's bytes), ``settings_hash`` and ``settings`` (see
    :func:`~sklearn_clasp.pipeline.pipeline_settings`; a record can be passed
    back as ``clasp segment --config``), ``image_size``, ``grid_shape``, ``n_clusters``
    (the chosen K), ``n_segments`` (labels present in the mask),
    ``eigengap_k``, ``silhouette``, ``silhouette_scores`` (K as a string ->
    score; null where a K gave no valid partition), ``eigenvalues``,
    ``second_eigenvalue``, ``single_segment``, ``background``, ``timings`` (seconds per
    stage: ``load``, ``embed`` (the image's share of its batch), ``affinity``,
    ``segment``, ``refine``, ``write``), ``attempts``, ``run_id``,
    ``outputs`` and ``sklearn_clasp_version``.

    An image whose record exists with the same ``input_sha256`` and
    ``settings_hash`` and whose mask (and overlay, if asked for) exists is
    skipped, so an interrupted run resumes where it stopped: the JSON records
    are the index of finished inputs. They are matched by the input's bytes
    and path as well as by its name, so the same file reached through another
    input path (``photos``, then ``photos/cats``), or moved, is not done
    again under another name, and the results of another file that had the
    same name are never overwritten (see
    :meth:`~sklearn_clasp.collection.store.RecordIndex.resolve`). An
    interruption (``KeyboardInterrupt``)
    stops the workers, removes this run's temporary files and is raised again;
    only complete files are left. An image that fails (unreadable or damaged
    file, an image over ``max_image_pixels``, an error in a step) is tried
    once and recorded as failed in the report and in
    ``out_dir/failures.jsonl`` with a one-line reason; the others go on. Only
    an image whose worker process died (a crash in native code, the
    out-of-memory killer) is tried again, alone, up to ``max_attempts``
    times. A full output disk, or a lost Dask scheduler, stops the run with
    :class:`RunStoppedError`: what was written is kept.

    One run at a time writes into ``out_dir``: it holds an operating-system
    lock on ``out_dir/.clasp.lock`` (released however the process ends) and a
    second run fails at once with :class:`OutputDirectoryInUseError`. The
    directory holds the outputs of one set of settings: records made with
    other settings there are refused (:class:`SettingsMismatchError`, naming
    the settings that differ) unless ``overwrite``.

    Each image is segmented on its own, with the later steps fitted afresh on
    it, so the results do not depend on ``n_jobs``, on the batching or on the
    other images.

    Parameters
    ----------
    inputs : str, path-like, list of those, or list of ImageInput
        Image files, directories (searched recursively) and glob patterns, as
        for :func:`~sklearn_clasp.io.find_images`, or its output. Images inside ``out_dir``
        are left out (before the names are made); inputs that hold nothing
        else are an error. The names of given ``ImageInput`` items must be safe
        (``[A-Za-z0-9._-]``, no leading dot) and unique, as
        :func:`~sklearn_clasp.io.find_images` makes them.
    out_dir : str or path-like
        Output directory, created if missing, made absolute here (also for
        the Dask workers, which must see it at that path: checked before any
        image is read). It must be writable: this is checked before any image
        is read.
    pipeline : Pipeline, default=None
        A CLASP pipeline (:func:`~sklearn_clasp.pipeline.make_clasp_pipeline`);
        ``None`` means ``make_clasp_pipeline("dinov2")``. It is not modified:
        an unfitted embedder is fitted as a copy (fit ``pipeline[0]``
        beforehand to reuse a loaded backbone across calls).
    n_jobs : int, default=1
        Local worker processes (loky) for the clustering, the CRF and the
        writing, while this process loads and embeds the images in batches.
        ``1`` runs everything here; ``-1`` uses all processors (``-2`` all
        but one...). At most :data:`~sklearn_clasp.device.MAX_N_JOBS`, the processors this process
        may use. The workers are started for the call and stopped at its
        end, and die with this process if it is killed. Ignored with Dask.
    client : distributed.Client, default=None
        Run on this Dask cluster: each image is sent as a path, each worker
        builds the embedder once, segments the image and writes its outputs.
        Workers need the package, the model weights and the same view of the
        input and output paths.
    scheduler : str, default=None
        Address of a Dask scheduler (e.g. ``"tcp://host:8786"``): a client is
        connected for this call and closed at its end. Not with ``client``.
    security : distributed.security.Security, default=None
        TLS settings for connecting to ``scheduler``.
    overwrite : bool, default=False
        Redo every image, even when its outputs are complete, and accept an
        output directory that holds outputs made with other settings (the
        images of this run replace theirs).
    progress : bool, default=False
        Show a progress bar (tqdm, on stderr) with images per second.
    max_attempts : int, default=3
        Starts of an image whose worker process died, before it is recorded as
        failed. At most :data:`MAX_ATTEMPTS`. On Dask the scheduler
        reschedules such an image itself, up to its
        ``distributed.scheduler.allowed-failures`` setting.
    write_overlay : bool, default=True
        Write ``<name>_overlay.png``.
    chunk_size : int, default=None
        Images loaded and embedded at a time (memory is bounded by about twice
        this many images: the next chunk is decoded while one is segmented).
        At most :data:`MAX_CHUNK_SIZE`; ``None`` means ``max(8, 2 * n_jobs)``,
        or the DINOv2 embedder's ``batch_size`` if larger (a chunk fills its
        batches).
    max_image_pixels : int or None, default=DEFAULT_MAX_IMAGE_PIXELS
        Largest image (width x height, read from the file's header before
        decoding) that is segmented; a larger one fails with
        :class:`~sklearn_clasp.io.ImageTooLargeError`. A guard against
        decompression bombs; ``None`` for no limit (see
        :func:`~sklearn_clasp.io.load_image`).

    Returns
    -------
    report : CollectionReport
        Per-image results (``report.results``), counts, the histogram of
        segments per image and ``report.summary()``.

    Raises
    ------
    FileNotFoundError
        If an input matches no image, or only images inside ``out_dir``.
    OSError
        If ``out_dir`` cannot be created or written to (before any work), or
        is not a directory (:class:`NotADirectoryError`).
    OutputDirectoryInUseError
        If another run holds ``out_dir`` (an :class:`OSError`).
    OutputNotSharedError
        If Dask workers do not see ``out_dir`` at its path (an
        :class:`OSError`).
    SettingsMismatchError
        If ``out_dir`` holds outputs made with other settings and not
        ``overwrite`` (a :class:`ValueError`).
    ConnectionError
        If no client can be made for ``scheduler`` (unreachable, refused, or
        the TLS handshake is refused); no image has been read.
    ValueError
        If ``out_dir`` is empty, both ``client`` and ``scheduler`` are given,
        ``security`` without ``scheduler``, ``scheduler`` is not an address,
        or ``ImageInput`` items have unsafe or duplicate names.
    RunStoppedError
        If the run could not go on (a full disk, a lost scheduler); its
        ``report`` says what was done.
    KeyboardInterrupt
        When interrupted, after stopping the work and removing this run's
        temporary files.

    See Also
    --------
    sklearn_clasp.io.find_images : How inputs are expanded and named.
    sklearn_clasp.pipeline.clasp_one : One image, in memory.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from sklearn_clasp import make_clasp_pipeline
    >>> from sklearn_clasp.datasets import make_shapes_image
    >>> root = Path(tempfile.mkdtemp())
    >>> image, _ = make_shapes_image(56, 70, n_shapes=1)
    >>> Image.fromarray(image).save(root / "shapes.png")
    >>> pipe = make_clasp_pipeline("handcrafted", short_side=None, refine="nearest",
    ...                            random_state=0)
    >>> report = segment_collection(root / "shapes.png", root / "out", pipeline=pipe)
    >>> report.n_done, sorted(p.name for p in (root / "out").iterdir())
    (1, ['.clasp.lock', 'shapes.json', 'shapes_mask.png', 'shapes_overlay.png'])
    >>> segment_collection(root / "shapes.png", root / "out", pipeline=pipe).n_skipped
    1
    """
    wall_start = time.perf_counter()
    if client is not None and scheduler is not None:
        raise ValueError("segment_collection: pass either client= or scheduler=, not both.")
    if security is not None and scheduler is None:
        raise ValueError("segment_collection: security= applies to scheduler=; to use TLS with "
                         "a client, create it with Client(address, security=security).")
    if not os.fspath(out_dir).strip():
        raise ValueError("segment_collection: out_dir is empty; give the output directory "
                         "('.' for the current one).")
    if scheduler is not None:
        scheduler = check_scheduler_address(scheduler)
    if pipeline is None:
        from ..pipeline import make_clasp_pipeline

        pipeline = make_clasp_pipeline("dinov2")
    if len(pipeline.steps) < 3:
        raise TypeError(
            f"segment_collection: pipeline must be a CLASP Pipeline of at least three steps "
            f"(embedder, segmenter, refiner), e.g. make_clasp_pipeline('dinov2'); got "
            f"{len(pipeline.steps)} step(s)."
        )
    last = pipeline.steps[-1][0]
    if last in STEP_NAMES[:-1]:  # a CLASP pipeline cut before its refiner
        raise TypeError(
            f"segment_collection: the pipeline's last step is {last!r}, which returns "
            f"records, not masks; end it with a refiner (make_clasp_pipeline(...) does, "
            f"CRFRefiner(method='nearest') for no CRF).")
    check_pipeline_settings(pipeline, "segment_collection",
                            devices=scheduler is None and client is None)
    out_dir = Path(os.path.abspath(out_dir))
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"segment_collection: out_dir {str(out_dir)!r} exists and is "
                                 f"not a directory; choose another output directory.")
    images = _collection(inputs, out_dir)
    store = OutputStore(out_dir, run_id=OutputStore.new_run_id(),
                        write_overlay=write_overlay).prepare()
    from .. import __version__

    ctx = RunContext(digest=settings_hash(pipeline), settings=pipeline_settings(pipeline),
                     max_image_pixels=max_image_pixels, overwrite=overwrite,
                     version=__version__)
    with OutputLock(out_dir, store.run_id):
        RecordIndex.discard(store, others=True)  # left by runs that were killed
        store.remove_stale_temporaries()
        index = RecordIndex.scan(out_dir)
        check_settings(index, ctx.digest, ctx.settings, out_dir, overwrite=overwrite)
        jobs = [Job(index=i, name=im.name, path=os.path.abspath(im.path))
                for i, im in enumerate(images)]
        index = plan_names(jobs, index)
        logger.info("segmenting %d image(s) into %s (settings %s, run %s)", len(jobs),
                    out_dir, ctx.digest[:12], store.run_id)
        results, stopped = _run(jobs, store, pipeline, ctx, index, client=client,
                                scheduler=scheduler, security=security, n_jobs=n_jobs,
                                chunk_size=chunk_size, max_attempts=max_attempts,
                                progress=progress)
    ordered = []
    for job in jobs:
        r = dict(results.get(job.index) or {
            "name": job.name, "source": str(job.path), "status": "stopped",
            "n_clusters": None, "seconds": 0.0, "error": None, "error_type": None,
            "errno": None, "attempts": 0})
        r.pop("index", None)
        ordered.append(r)
    report = CollectionReport(ordered, out_dir=out_dir,
                              wall_seconds=time.perf_counter() - wall_start,
                              settings_hash=ctx.digest, run_id=store.run_id, stopped=stopped)
    logger.info("%d done, %d skipped, %d failed in %.1f s", report.n_done, report.n_skipped,
                report.n_failed, report.seconds)
    if stopped is not None:
        raise RunStoppedError(stopped, report)
    return report


def _collection(inputs, out_dir):
    """The images to segment: found (the output tree left out), or given and checked."""
    if isinstance(inputs, (list, tuple)) and inputs and all(
            isinstance(x, ImageInput) for x in inputs):
        images = list(inputs)
        check_image_inputs(images)
        kept = [im for im in images if not is_inside(im.path, out_dir)]
        if not kept:
            raise FileNotFoundError(
                f"segment_collection: all {len(images)} image(s) given lie inside the output "
                f"directory {str(out_dir)!r}, which is never read as input; give inputs "
                f"outside it, or another output directory.")
        if len(kept) < len(images):
            logger.warning("left out %d image(s) inside the output directory %s (never read "
                           "as input)", len(images) - len(kept), out_dir)
        return kept
    return find_images(inputs, exclude=out_dir)


class _AboveTheBar(logging.Handler):
    """A console log handler that clears the progress bars of its stream, writes, redraws."""

    def __init__(self, handler, bar_class):
        super().__init__(handler.level)
        self.handler = handler
        self.bar_class = bar_class

    def emit(self, record):
        with self.bar_class.external_write_mode(file=self.handler.stream):
            self.handler.handle(record)  # its own format, filters and lock


def _is_console(handler):
    return (isinstance(handler, logging.StreamHandler)
            and not isinstance(handler, logging.FileHandler)
            and getattr(handler, "stream", None) in (sys.stderr, sys.stdout))


@contextlib.contextmanager
def _logging_through(bar_class, enabled):
    """While a progress bar is shown, log lines go above it, not into it.

    The console handlers of the root, package and Dask loggers are wrapped
    meanwhile (their formats and filters kept); no handler is added.
    """
    if not enabled:
        yield
        return
    wrapped = []
    for name in (None, "sklearn_clasp", "distributed"):
        log = logging.getLogger(name)
        for i, handler in enumerate(log.handlers):
            if _is_console(handler):
                log.handlers[i] = _AboveTheBar(handler, bar_class)
                wrapped.append((log, handler, log.handlers[i]))
    try:
        yield
    finally:
        for log, handler, wrapper in wrapped:
            if wrapper in log.handlers:
                log.handlers[log.handlers.index(wrapper)] = handler


def _run(jobs, store, pipeline, ctx, index, *, client, scheduler, security, n_jobs, chunk_size,
         max_attempts, progress):
    """Run the jobs on the chosen backend; ``(results by index, stop reason or None)``."""
    from tqdm.auto import tqdm

    results, n_failed = {}, [0]
    bar = tqdm(total=len(jobs), unit="img", desc="segment", disable=not progress,
               dynamic_ncols=True)

    def emit(result):
        results[result["index"]] = result
        if result["status"] == "stopped":
            return
        if result["status"] == "failed":
            logger.warning("%s (%s) failed: %s", result["name"], result["source"],
                           result["error"])
            store.append_failure(result)
            n_failed[0] += 1
            bar.set_postfix(failed=n_failed[0], refresh=False)
        bar.update(1)

    own_client = None
    with _logging_through(tqdm, progress):
        try:
            if scheduler is not None:
                client = own_client = _connect(scheduler, security)
            if client is not None:
                check_workers_see(client, store)
                stopped = run_dask(jobs, store, pipeline, ctx, client=client,
                                   max_attempts=max_attempts, emit=emit, index=index)
            else:
                from joblib import effective_n_jobs

                n_workers = effective_n_jobs(n_jobs)
                batch = pipeline.get_params().get("embed__batch_size") or 1
                stopped = run_local(jobs, store, pipeline, ctx, n_workers=n_workers,
                                    chunk_size=chunk_size or min(MAX_CHUNK_SIZE,
                                                                 max(8, 2 * n_workers, batch)),
                                    max_attempts=max_attempts, emit=emit, index=index)
            store.remove_temporaries()  # no worker of the run is left: any is garbage
            if stopped is not None:
                logger.info("stopped with %d of %d image(s) accounted for: %s",
                               sum(r["status"] != "stopped" for r in results.values()),
                               len(jobs), stopped)
        except KeyboardInterrupt:
            # the workers are stopped by now; one killed mid-write leaves its temporary file
            store.remove_temporaries()
            logger.warning("interrupted with %d of %d image(s) accounted for; every output "
                           "written is complete: run again to resume", len(results), len(jobs))
            raise
        finally:
            bar.close()
            if own_client is not None:
                with contextlib.suppress(Exception):  # the scheduler may be gone
                    own_client.close(timeout=2)
    return results, stopped


def _connect(scheduler, security):
    """A client for this call; ConnectionError if none can be made."""
    from distributed import Client

    try:
        return Client(scheduler, security=security)
    except OSError as exc:  # refused, timed out, TLS handshake failed
        raise ConnectionError(
            f"segment_collection: cannot connect to the Dask scheduler at "
            f"{scheduler!r} ({type(exc).__name__}: {exc}). Check the address and that the "
            f"scheduler is running; a tls:// scheduler also needs security= with the "
            f"cluster's CA and a client certificate (clasp: --tls-ca-file, --tls-cert, "
            f"--tls-key)."
        ) from exc
