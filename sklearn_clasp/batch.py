"""Segment image collections: files in; masks, overlays and JSON records out.

:func:`segment_collection` runs a CLASP pipeline over a collection of image
files and writes, for each image ``<name>``, into one output directory:

``<name>_mask.png``
    The integer mask, at the image's full size (8-bit, or 16-bit above 255
    segments; read it back with ``np.asarray(PIL.Image.open(path))``).
``<name>_overlay.png``
    The image with coloured segments and their boundaries.
``<name>.json``
    The image's record: source, input checksum, settings and their hash, the
    chosen K, the eigengap K, the silhouette per K, the eigenvalues, timings
    per stage, attempts. Written last, it marks the image as complete.

Every file is written atomically (a temporary file in the output directory,
then :func:`os.replace`), so an interrupted run leaves only complete files, and
a re-run skips the images whose record matches the input bytes and the
settings. One failing image is recorded (in the report and in
``failures.jsonl``) and does not stop the others.

The work runs in this process and ``n_jobs`` local worker processes (the
backbone batched here, the clustering and the CRF spread over the workers), or
on a Dask cluster (``client=`` or ``scheduler=``), where each worker loads the
backbone once and segments and writes the images it is sent by path.

:func:`find_images` expands files, directories and glob patterns into the
collection, with a safe, unique output name per image.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import math
import os
import re
import stat
import threading
import time
import unicodedata
import uuid
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from numbers import Integral
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import Interval, validate_params
from sklearn.utils.validation import check_is_fitted

from .image import DEFAULT_MAX_IMAGE_PIXELS

__all__ = [
    "IMAGE_SUFFIXES",
    "CollectionReport",
    "ImageInput",
    "find_images",
    "pipeline_settings",
    "segment_collection",
    "settings_hash",
]

logger = logging.getLogger(__name__)

#: File suffixes taken as images when searching directories and glob patterns
#: (files named explicitly are taken whatever their suffix).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                  ".ppm", ".pgm", ".pbm", ".pnm")

#: Name of the failure log in the output directory (one JSON object a line).
FAILURES_FILE = "failures.jsonl"

#: Parameters that change how fast, not what, a pipeline computes; they are left
#: out of the settings (and so of the settings hash), so a re-run with another
#: number of threads or batch size still resumes.
_RUNTIME_PARAMS = frozenset(
    {"memory", "verbose", "transform_input", "n_jobs", "n_threads", "batch_size", "download"}
)

_GLOB_CHARS = frozenset("*?[")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_MAX_NAME = 120
# Longest output name accepted from a caller's ImageInput: with "_overlay.png" appended
# it stays well under the 255-byte limit of a file name.
_MAX_GIVEN_NAME = 200
# Overlays of larger images are drawn on a downscaled copy: the overlay is computed in
# floating point, about 180 bytes a pixel at its peak (750 MB at this size).
_OVERLAY_MAX_PIXELS = 1 << 22
_WORKER_CACHE = "_sklearn_clasp_pipelines"
_WORKER_LOCK = "_sklearn_clasp_lock"


# --------------------------------------------------------------------------
# finding images and naming their outputs
# --------------------------------------------------------------------------


class ImageInput(NamedTuple):
    """One image of a collection: where it is and the stem of its outputs."""

    path: Path
    """The image file."""
    name: str
    """Output stem: safe characters only (``[A-Za-z0-9._-]``), unique in the collection."""


def _short_hash(text, n=8):
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:n]


def _ascii(text):
    """Accents folded away (``"café"`` -> ``"cafe"``); undecodable bytes kept as they are."""
    folded = unicodedata.normalize("NFKD", text)
    return "".join(c for c in folded if not unicodedata.combining(c))


def _safe_name(parts):
    """Join path parts into an output stem of safe characters that stays in its folder."""
    cleaned = [_UNSAFE.sub("_", _ascii(p)) for p in parts if p not in ("", ".")]
    name = "__".join(cleaned)
    name = re.sub(r"^\.+", "_", name) or "image"  # no hidden files, no '.' or '..'
    if not re.search(r"[A-Za-z0-9]", name):  # nothing readable left (e.g. "写真/猫")
        name = f"image-{_short_hash('/'.join(parts))}"
    if len(name) > _MAX_NAME:
        name = f"{name[: _MAX_NAME - 9]}-{_short_hash(name)}"
    return name


def _is_image_file(path):
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _walk(root, recursive):
    """Image files under a directory (hidden files and folders skipped), sorted.

    A directory that cannot be listed is an error when it is ``root`` and a
    logged warning below it (its images are left out).
    """
    found = []

    def unreadable(exc):
        if os.path.normpath(exc.filename or "") == os.path.normpath(root):
            raise PermissionError(
                f"find_images: cannot list the directory {os.fspath(root)!r} "
                f"({exc.strerror or exc}). Make it readable or leave it out."
            ) from None
        logger.warning("cannot list the directory %r (%s); its images are left out",
                       exc.filename, exc.strerror or exc)

    for folder, dirs, files in os.walk(root, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for f in sorted(files):
            path = Path(folder, f)
            if _is_image_file(path):
                found.append(path)
    return found


def _expand(item, recursive):
    """``[(path, name parts), ...]`` for one input."""
    text = os.path.expanduser(os.fspath(item))
    path = Path(text)
    if path.is_dir():
        return [(p, p.relative_to(path).with_suffix("").parts) for p in _walk(path, recursive)]
    if path.is_file() or (os.path.lexists(path) and not _GLOB_CHARS & set(text)):
        # a file named explicitly, or something else there (a broken link, a link loop,
        # a pipe): taken, so that loading it reports exactly what is wrong
        return [(path, (path.stem,))]
    if _GLOB_CHARS & set(text):
        out = []
        for match in sorted(glob.glob(text, recursive=recursive)):
            m = Path(match)
            if m.is_dir():
                out.extend((p, p.relative_to(m).with_suffix("").parts)
                           for p in _walk(m, recursive))
            elif m.is_file() and _is_image_file(m):
                out.append((m, (m.stem,)))
        return out
    return []


def find_images(inputs, *, recursive=True):
    """Expand files, directories and glob patterns into a list of images.

    Directories are searched for files whose suffix is one of
    :data:`IMAGE_SUFFIXES` (in their sub-directories too when ``recursive``),
    skipping hidden files and folders; glob patterns (``*``, ``?``, ``[...]``,
    and ``**`` when ``recursive``) keep the image files they match and search
    the directories they match; files named explicitly are taken whatever
    their suffix. The same file reached twice is listed once.

    Each image gets an output ``name``, the stem of its output files: its path
    relative to the directory searched (path separators become ``"__"``), or
    the file stem for files and glob matches, with accents dropped
    (``"café"`` -> ``"cafe"``), every other character outside
    ``[A-Za-z0-9._-]`` replaced by ``"_"``, no leading dot, and names longer
    than 120 characters shortened with a hash, so outputs always land inside
    the output directory. Names that would collide (also when only their case
    differs) each get a short hash of the file's resolved path appended.

    Parameters
    ----------
    inputs : str, path-like, or iterable of str or path-like
        Image files, directories and glob patterns.
    recursive : bool, default=True
        Search sub-directories, and let ``**`` in glob patterns span them.

    Returns
    -------
    images : list of ImageInput
        ``(path, name)`` pairs, sorted by path.

    Raises
    ------
    FileNotFoundError
        If an input matches no image (a missing file, a directory without
        image files, a pattern that matches nothing); the message lists every
        such input.
    PermissionError
        If a directory given as an input cannot be listed.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> for rel in ["cats/a.png", "dogs/a.png", "dogs/b c.jpg", "notes.txt"]:
    ...     (root / rel).parent.mkdir(exist_ok=True)
    ...     _ = (root / rel).write_bytes(b"")
    >>> [name for _, name in find_images(root)]
    ['cats__a', 'dogs__a', 'dogs__b_c']

    Files with the same stem from different folders get a hash appended:

    >>> [name[:2] for _, name in find_images(str(root / "*" / "a.png"))]
    ['a-', 'a-']
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs:
        raise ValueError("find_images: no inputs given; pass image files, directories or "
                         "glob patterns.")
    found, missing, seen = [], [], set()
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"find_images: inputs must be paths or glob patterns; got "
                            f"{type(item).__name__} ({item!r}).")
        matches = _expand(item, recursive)
        if not matches:
            missing.append(os.fspath(item))
        for path, parts in matches:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                found.append((path, _safe_name(parts), key))
    if missing:
        raise FileNotFoundError(
            f"find_images: no image matches {', '.join(repr(m) for m in missing)}. Check "
            f"the path exists; directories and glob patterns only match files ending in "
            f"{', '.join(IMAGE_SUFFIXES)}."
        )
    groups = Counter(name.casefold() for _, name, _ in found)
    images = [
        ImageInput(path, f"{name}-{_short_hash(key)}" if groups[name.casefold()] > 1 else name)
        for path, name, key in found
    ]
    images.sort(key=lambda im: (str(im.path), im.name))
    return images


# --------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------


def _simple(value):
    """A JSON-able copy of a simple parameter value; ``_SKIP`` when not simple."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, BaseEstimator):
        return f"<{type(value).__qualname__}>"
    if isinstance(value, (list, tuple)):
        items = [_simple(v) for v in value]
        return _SKIP if any(v is _SKIP for v in items) else items
    return _SKIP


_SKIP = object()


def pipeline_settings(pipeline):
    """The settings of a pipeline that decide its results, as plain values.

    ``pipeline.get_params(deep=True)`` restricted to simple values (``None``,
    booleans, numbers, strings, paths, lists of these), with each estimator
    given by its class name as ``"<ClassName>"``, leaving out the parameters
    that only change speed or caching (``memory``, ``verbose``, ``n_jobs``,
    ``n_threads``, ``batch_size``, ``download``). What the output records
    store as ``settings``.

    Parameters
    ----------
    pipeline : Pipeline
        A CLASP pipeline.

    Returns
    -------
    settings : dict
        Sorted by key.

    Examples
    --------
    >>> from sklearn_clasp import make_clasp_pipeline
    >>> settings = pipeline_settings(make_clasp_pipeline("handcrafted", k_max=8))
    >>> settings["embed"], settings["segment__k_max"]
    ('<HandcraftedPatchEmbedder>', 8)
    """
    out = {}
    for key, value in pipeline.get_params(deep=True).items():
        if key == "steps" or key.rsplit("__", 1)[-1] in _RUNTIME_PARAMS:
            continue
        simple = _simple(value)
        if simple is _SKIP:
            logger.debug("settings: %s=%r is not a simple value; left out", key, value)
            continue
        out[key] = simple
    return dict(sorted(out.items()))


def settings_hash(pipeline):
    """SHA-256 of a pipeline's settings, for matching outputs to settings.

    The hash of the canonical JSON (sorted keys, no spaces) of
    :func:`pipeline_settings`: equal for pipelines with equal settings,
    different when a setting that changes results changes.

    Parameters
    ----------
    pipeline : Pipeline
        A CLASP pipeline.

    Returns
    -------
    digest : str
        64 hexadecimal characters.

    Examples
    --------
    >>> from sklearn_clasp import make_clasp_pipeline
    >>> a = settings_hash(make_clasp_pipeline("handcrafted", k_max=8))
    >>> a == settings_hash(make_clasp_pipeline("handcrafted", k_max=8)), len(a)
    (True, 64)
    >>> a == settings_hash(make_clasp_pipeline("handcrafted", k_max=9))
    False
    """
    text = json.dumps(pipeline_settings(pipeline), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------


def _file_sha256(path):
    """SHA-256 of a regular file's bytes (clear errors for links, pipes, permissions)."""
    from .image import _open_regular_file

    h = hashlib.sha256()
    with _open_regular_file(path, os.fspath(path)) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _output_paths(out_dir, name):
    return {
        "mask": out_dir / f"{name}_mask.png",
        "overlay": out_dir / f"{name}_overlay.png",
        "json": out_dir / f"{name}.json",
    }


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _temporary_name(path, run_id=None):
    """The hidden temporary file next to ``path``; ends with ``.<run_id>.tmp`` if given."""
    tag = f".{run_id}" if run_id else ""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{tag}.tmp")


def _write_error(path, exc):
    """An :class:`OSError` (same errno) that says what could not be written and what to do."""
    if exc.errno in _DISK_FULL:
        fix = ("the disk (or quota) is full: free some space or choose another output "
               "directory, then run again; the images already done are kept")
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "the output directory is not writable: fix its permissions or choose another"
    else:
        fix = "check the output directory"
    return OSError(exc.errno, f"could not write {path.name} in {path.parent} "
                              f"({exc.strerror or exc}); {fix}. No partial file was left")


def _atomic_write(path, write, *, run_id=None):
    """Write ``path`` through ``write(tmp)`` and :func:`os.replace`: all or nothing.

    The temporary file is created anew (never through an existing file or
    link); :func:`os.replace` swaps the name ``path`` itself, so a symbolic link
    there is replaced, not followed.
    """
    tmp = _temporary_name(path, run_id)
    try:
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                             0o666))
            write(tmp)
            fd = os.open(tmp, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno is None:
                raise
            raise _write_error(path, exc) from exc
    except BaseException:  # also KeyboardInterrupt: leave no partial file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _remove_temporaries(out_dir, run_id):
    """Remove the temporary files this run left (its workers were stopped mid-write)."""
    suffix = f".{run_id}.tmp"
    removed = 0
    with contextlib.suppress(OSError), os.scandir(out_dir) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(suffix):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    if removed:
        logger.debug("removed %d temporary file(s) of run %s", removed, run_id)


def _prepare_out_dir(out_dir, *, who="segment_collection"):
    """Create ``out_dir`` if needed and check, before any work, that files can be written."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{who}: {str(out_dir)!r} exists and is not a directory; "
                                 f"choose another output directory.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"{who}: cannot create the output directory "
                                 f"{str(out_dir)!r} ({exc.strerror or exc}); choose another "
                                 f"output directory.") from None
    probe = out_dir / f".clasp-write-check-{uuid.uuid4().hex[:12]}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
    except OSError as exc:
        fix = ("free some space" if exc.errno in _DISK_FULL else
               "fix its permissions")
        raise OSError(exc.errno, f"{who}: cannot write into the output directory "
                                 f"{str(out_dir)!r} ({exc.strerror or exc}); {fix} or choose "
                                 f"another output directory.") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return out_dir


def _jsonable(value):
    """Plain JSON values: numpy to Python, NaN and infinities to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _read_json(path):
    """A JSON object from a regular file (never through a symbolic link); else None."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        with os.fdopen(fd, encoding="utf-8") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_regular(path):
    """``path`` is a regular file itself (not a symbolic link to one)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _completed(out_dir, name, input_sha256, digest, write_overlay):
    """The image's JSON record if its outputs are complete for these bytes and settings."""
    paths = _output_paths(out_dir, name)
    record = _read_json(paths["json"])
    if (
        record is None
        or record.get("input_sha256") != input_sha256
        or record.get("settings_hash") != digest
        or not _is_regular(paths["mask"])
        or (write_overlay and not _is_regular(paths["overlay"]))
    ):
        return None
    return record


def _overlay(image, mask):
    """The overlay figure; drawn on a downscaled copy above ``_OVERLAY_MAX_PIXELS``."""
    from .image import resize_image
    from .refine import _refine_size, _resample_nearest
    from .visualize import overlay

    height, width = mask.shape
    if height * width > _OVERLAY_MAX_PIXELS:
        size = _refine_size(height, width, _OVERLAY_MAX_PIXELS)
        image, mask = resize_image(image, size, resample="area"), _resample_nearest(mask, size)
    return overlay(image, mask)


def _write_outputs(out_dir, name, image, mask, meta, write_overlay):
    """Write mask, overlay and (last) the JSON record, each atomically."""
    from .visualize import save_png

    paths = _output_paths(out_dir, name)
    run_id = meta.get("run_id")
    start = time.perf_counter()
    # The old record must never vouch for new files: remove it first.
    paths["json"].unlink(missing_ok=True)
    _atomic_write(paths["mask"], lambda p: save_png(p, mask), run_id=run_id)
    if write_overlay:
        _atomic_write(paths["overlay"], lambda p: save_png(p, _overlay(image, mask)),
                      run_id=run_id)
    else:
        paths["overlay"].unlink(missing_ok=True)  # a stale one would not match the mask
    meta["timings"]["write"] = time.perf_counter() - start
    meta["outputs"] = {
        "mask": paths["mask"].name,
        "overlay": paths["overlay"].name if write_overlay else None,
    }
    text = json.dumps(_jsonable(meta), indent=2, allow_nan=False) + "\n"
    _atomic_write(paths["json"], lambda p: p.write_text(text, encoding="utf-8"),
                  run_id=run_id)


def _append_failure(out_dir, result):
    line = {
        "name": result["name"],
        "source": result["source"],
        "error_type": result.get("error_type"),
        "error": result["error"],
        "attempts": result.get("attempts"),
        "run_id": result.get("run_id"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = out_dir / FAILURES_FILE
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC
    try:  # appended in one write; never through a symbolic link
        try:
            fd = os.open(path, flags, 0o666)
        except OSError:
            if not os.path.islink(path):
                raise
            logger.warning("%s is a symbolic link; replaced by a file (its target is left "
                           "alone)", path)
            path.unlink()
            fd = os.open(path, flags | os.O_EXCL, 0o666)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_jsonable(line)) + "\n")
    except OSError as exc:
        logger.warning("could not append to %s: %s", out_dir / FAILURES_FILE, exc)


# --------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------


@dataclass
class _Job:
    """What the engine carries for one image (kept small: no pixels)."""

    index: int
    name: str
    path: Path
    sha256: str | None = None
    timings: dict = field(default_factory=dict)
    attempts: int = 1


def _result(job, status, *, n_clusters=None, seconds=0.0, error=None, error_type=None,
            attempts=None, run_id=None):
    return {
        "name": job.name,
        "source": str(job.path),
        "status": status,
        "n_clusters": n_clusters,
        "seconds": float(seconds),
        "error": error,
        "error_type": error_type,
        "attempts": job.attempts if attempts is None else attempts,
        "run_id": run_id,
        "index": job.index,
    }


def _failed(job, exc, *, attempts=None, run_id=None, reason=None):
    message = reason or f"{type(exc).__name__}: {exc}"
    message = re.sub(r"\s*\n\s*", " ", message.strip())  # one line in the summary
    return _result(job, "failed", error=message, error_type=type(exc).__name__,
                   attempts=attempts, run_id=run_id)


def _from_record(job, record, status):
    """The result of an image whose outputs are complete (skipped, or done earlier)."""
    timings = record.get("timings") or {}
    seconds = sum(v for v in timings.values() if isinstance(v, (int, float)))
    return _result(job, status, n_clusters=record.get("n_clusters"),
                   seconds=seconds if status == "done" else 0.0,
                   attempts=record.get("attempts"), run_id=record.get("run_id"))


def _fitted_embedder(pipeline):
    """The pipeline's first step, fitted: as it is if fitted, else a fitted clone."""
    embed = pipeline.steps[0][1]
    try:
        check_is_fitted(embed)
        return embed
    except NotFittedError:
        logger.info("fitting the %s embedder", type(embed).__name__)
        return clone(embed).fit(None)


def _tail(pipeline):
    """Fresh (unfitted) copies of the steps after the embedder."""
    return [(name, clone(step)) for name, step in pipeline.steps[1:]
            if step is not None and step != "passthrough"]


def _finish(record, job, out_dir, tail, context):
    """Segment and refine one embedded record, write its outputs; return its result.

    ``context``: digest, settings, run_id, write_overlay.
    """
    timings = dict(job.timings)
    records = [record]
    for name, step in tail[:-1]:
        start = time.perf_counter()
        records = step.fit_transform(records)
        timings[name] = time.perf_counter() - start
    name, last = tail[-1]
    start = time.perf_counter()
    mask = np.asarray(last.fit_transform(records)[0])
    timings[name] = time.perf_counter() - start
    rec = records[0]
    info = dict(rec.info)
    if rec.labels is not None:
        n_clusters = int(info.get("n_clusters", int(np.max(rec.labels)) + 1))
    else:
        n_clusters = int(np.unique(mask).size)
    scores = info.get("silhouette_scores") or {}
    meta = {
        "source": str(job.path),
        "name": job.name,
        "input_sha256": job.sha256,
        "settings_hash": context["digest"],
        "settings": context["settings"],
        "image_size": [int(v) for v in rec.image.shape[:2]],
        "grid_shape": [int(v) for v in rec.grid_shape],
        "n_clusters": n_clusters,
        "n_segments": int(np.unique(mask).size),
        "eigengap_k": info.get("eigengap_k"),
        "silhouette": info.get("silhouette"),
        "silhouette_scores": {str(int(k)): float(v) for k, v in scores.items()},
        "eigenvalues": info.get("eigenvalues"),
        "second_eigenvalue": info.get("second_eigenvalue"),
        "single_segment": info.get("single_segment"),
        "timings": timings,
        "attempts": job.attempts,
        "run_id": context["run_id"],
        "sklearn_clasp_version": _version(),
    }
    _write_outputs(out_dir, job.name, rec.image, mask, meta, context["write_overlay"])
    logger.debug("%s: K=%d in %.2f s", job.name, n_clusters, sum(timings.values()))
    return _result(job, "done", n_clusters=n_clusters, seconds=sum(timings.values()),
                   run_id=context["run_id"])


def _version():
    from . import __version__

    return __version__


def _load(path, context):
    from .image import load_image

    return load_image(path, max_pixels=context.get("max_image_pixels",
                                                   DEFAULT_MAX_IMAGE_PIXELS))


def _segment_path(job, out_dir, embed, tail, context):
    """Load, embed, segment, refine and write one image (the Dask task's work)."""
    start = time.perf_counter()
    image = _load(job.path, context)
    job.timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    (record,) = embed.transform([image])
    job.timings["embed"] = time.perf_counter() - start
    return _finish(record.replace(source=str(job.path)), job, out_dir, tail, context)


# --------------------------------------------------------------------------
# local engine
# --------------------------------------------------------------------------


def _try(fn, max_attempts, what):
    """``(value, None, attempts)``; ``(None, exc, attempts)`` after ``max_attempts`` failures."""
    for attempt in range(1, max_attempts + 1):
        try:
            return fn(), None, attempt
        except Exception as exc:  # one bad image must not stop the others
            if attempt == max_attempts:
                logger.debug("%s failed", what, exc_info=True)
                return None, exc, attempt
            logger.warning("%s failed (attempt %d of %d): %s: %s; retrying", what, attempt,
                           max_attempts, type(exc).__name__, exc)


def _finish_guarded(record, job, out_dir, tail, context, max_attempts):
    """:func:`_finish` with retries; never raises an ``Exception``."""
    base = job.attempts
    for attempt in range(1, max_attempts + 1):
        job.attempts = base + attempt - 1
        try:
            return _finish(record, job, out_dir, tail, context)
        except Exception as exc:
            if attempt == max_attempts:
                logger.debug("%s failed", job.name, exc_info=True)
                return _failed(job, exc, run_id=context["run_id"])
            logger.warning("%s: %s: %s (attempt %d of %d); retrying", job.name,
                           type(exc).__name__, exc, attempt, max_attempts)


def _prepare_chunk(jobs, out_dir, state, context, overwrite, max_attempts, emit):
    """Hash, check, load and embed a chunk here; return ``[(record, job), ...]`` to finish."""
    loaded = []
    for job in jobs:
        sha, exc, tries = _try(lambda: _file_sha256(job.path), max_attempts, job.name)
        if exc is None:
            job.sha256 = sha
            done = None if overwrite else _completed(out_dir, job.name, sha, context["digest"],
                                                     context["write_overlay"])
            if done is not None:
                emit(_from_record(job, done, "skipped"))
                continue
            start = time.perf_counter()
            image, exc, tries = _try(lambda: _load(job.path, context), max_attempts,
                                     job.name)
            job.timings["load"] = time.perf_counter() - start
        job.attempts = tries
        if exc is not None:
            emit(_failed(job, exc, run_id=context["run_id"]))
            continue
        loaded.append((image, job))
    if not loaded:
        return []
    if state.get("embed") is None:
        state["embed"] = _fitted_embedder(state["pipeline"])
    embed = state["embed"]
    start = time.perf_counter()
    try:
        records = embed.transform([image for image, _ in loaded])
    except Exception as exc:  # find the image(s) at fault: embed them one by one
        logger.warning("embedding a batch of %d image(s) failed (%s: %s); embedding them one "
                       "at a time", len(loaded), type(exc).__name__, exc)
        out = []
        for image, job in loaded:
            start = time.perf_counter()
            recs, exc, tries = _try(lambda: embed.transform([image]), max_attempts, job.name)
            job.timings["embed"] = time.perf_counter() - start
            job.attempts = max(job.attempts, tries)
            if exc is not None:
                emit(_failed(job, exc, run_id=context["run_id"]))
            else:
                out.append((recs[0].replace(source=str(job.path)), job))
        return out
    share = (time.perf_counter() - start) / len(loaded)  # this image's share of the batch
    out = []
    for record, (_, job) in zip(records, loaded):
        job.timings["embed"] = share
        out.append((record.replace(source=str(job.path)), job))
    return out


def _run_local(jobs, out_dir, pipeline, context, *, n_jobs, overwrite, max_attempts,
               chunk_size, emit):
    from joblib import Parallel, delayed, effective_n_jobs

    n_workers = effective_n_jobs(n_jobs)
    chunk = chunk_size or max(8, 2 * n_workers)
    tail = _tail(pipeline)
    state = {"pipeline": pipeline, "embed": None}
    parallel = (
        Parallel(n_jobs=n_workers, backend="loky", return_as="generator_unordered")
        if n_workers > 1 else contextlib.nullcontext()
    )
    with parallel:
        for start in range(0, len(jobs), chunk):
            todo = _prepare_chunk(jobs[start : start + chunk], out_dir, state, context,
                                  overwrite, max_attempts, emit)
            if n_workers == 1:
                for record, job in todo:
                    emit(_finish_guarded(record, job, out_dir, tail, context, max_attempts))
            else:
                _finish_parallel(parallel, delayed, todo, out_dir, tail, context,
                                 max_attempts, emit)
            del todo


def _finish_parallel(parallel, delayed, todo, out_dir, tail, context, max_attempts, emit):
    """Finish a chunk on the worker processes; isolate the images that kill a worker."""
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    pending = {job.index: (record, job) for record, job in todo}
    tasks = [delayed(_finish_guarded)(record, job, out_dir, tail, context, max_attempts)
             for record, job in todo]
    try:
        for result in parallel(tasks):
            pending.pop(result["index"], None)
            emit(result)
        return
    except TerminatedWorkerError as exc:
        logger.warning("a worker process died (%s); running the %d unfinished image(s) of "
                       "this chunk one at a time", exc, len(pending))
    for record, job in list(pending.values()):  # one at a time: only the culprit is charged
        for attempt in range(1, max_attempts + 1):
            job.attempts = attempt
            try:
                (result,) = parallel([delayed(_finish_guarded)(record, job, out_dir, tail,
                                                               context, max_attempts)])
                break
            except TerminatedWorkerError as exc:
                error = exc
                logger.warning("%s: the worker process died (attempt %d of %d)", job.name,
                               attempt, max_attempts)
        else:
            result = _failed(job, error, run_id=context["run_id"], reason=(
                f"WorkerDied: the worker process segmenting this image died "
                f"{max_attempts} time(s) (out of memory, or a crash in native code?)"))
        emit(result)


# --------------------------------------------------------------------------
# Dask engine
# --------------------------------------------------------------------------


def _attempt_marker(out_dir, name, run_id, n):
    return out_dir / f".{name}.{run_id}.attempt-{n}"


def _claim_attempt(out_dir, name, run_id):
    """Number this attempt (1, 2, ...) with a marker file; survives worker deaths."""
    for n in range(1, 10_000):
        try:
            fd = os.open(_attempt_marker(out_dir, name, run_id, n),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        return n
    return n


def _clear_attempts(out_dir, name, run_id):
    """Remove the attempt markers; return how many attempts there were."""
    n = 0
    while _attempt_marker(out_dir, name, run_id, n + 1).exists():
        n += 1
    for i in range(1, n + 1):
        with contextlib.suppress(OSError):
            _attempt_marker(out_dir, name, run_id, i).unlink()
    return n


def _worker_pipeline(template, digest):
    """The fitted embedder for these settings, built once per Dask worker."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a worker
        return _fitted_embedder(template)
    lock = worker.__dict__.setdefault(_WORKER_LOCK, threading.Lock())
    with lock:
        cache = worker.__dict__.setdefault(_WORKER_CACHE, {})
        embed = cache.get(digest)
        if embed is None:
            while len(cache) >= 2:  # keep memory bounded: the two latest settings
                cache.pop(next(iter(cache)))
            embed = cache[digest] = _fitted_embedder(template)
            logger.info("worker %s: pipeline ready for settings %s", worker.address,
                        digest[:12])
    return embed


def _dask_task(index, path, name, out_dir, template, context, overwrite):
    """Segment one image on a Dask worker; return its small result dict.

    Checks completion first, so that a retried task whose outputs were fully
    written by an earlier attempt neither redoes nor rewrites them. Errors are
    raised (Dask retries the task).
    """
    out_dir = Path(out_dir)
    run_id = context["run_id"]
    job = _Job(index=index, name=name, path=Path(path))
    _check_visible("output directory", out_dir, out_dir.is_dir)
    job.attempts = _claim_attempt(out_dir, name, run_id)
    # lexists: a broken link or a link loop is there; hashing it says what is wrong
    _check_visible("image", job.path, lambda: os.path.lexists(job.path))
    job.sha256 = _file_sha256(job.path)
    done = _completed(out_dir, name, job.sha256, context["digest"], context["write_overlay"])
    if done is not None and (done.get("run_id") == run_id or not overwrite):
        _clear_attempts(out_dir, name, run_id)
        return _from_record(job, done, "done" if done.get("run_id") == run_id else "skipped")
    embed = _worker_pipeline(template, context["digest"])
    result = _segment_path(job, out_dir, embed, _tail(template), context)
    _clear_attempts(out_dir, name, run_id)
    return result


def _check_visible(what, path, check):
    if not check():
        from distributed import get_worker

        try:
            where = f"Dask worker {get_worker().address}"
        except ValueError:
            where = "this process"
        raise FileNotFoundError(
            f"the {what} {str(path)!r} does not exist on {where}; the workers need the "
            f"same view of the files as the client (a shared file system, mounted at the "
            f"same path)."
        )


def _run_dask(jobs, out_dir, pipeline, context, *, client, overwrite, max_attempts, emit):
    template = clone(pipeline)  # parameters only: no fitted backbone is shipped
    n_threads = sum(client.nthreads().values())
    max_in_flight = max(8, 2 * n_threads)
    todo = iter(jobs)
    by_key, in_flight = {}, {}

    def submit(job):
        future = client.submit(
            _dask_task, job.index, str(job.path), job.name, str(out_dir), template, context,
            overwrite, key=f"clasp-segment-{job.name}-{context['run_id']}",
            retries=max_attempts - 1, pure=False,
        )
        by_key[future.key] = job
        in_flight[future.key] = future
        return future

    try:
        _collect_dask(submit, todo, max_in_flight, by_key, in_flight, out_dir, context, emit)
    finally:
        if in_flight:  # interrupted: do not leave the cluster working for nobody
            client.cancel(list(in_flight.values()))


def _collect_dask(submit, todo, max_in_flight, by_key, in_flight, out_dir, context, emit):
    """Gather results as they complete, keeping ``max_in_flight`` tasks submitted."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    futures = as_completed([submit(job) for job in islice(todo, max_in_flight)])
    for future in futures:
        job = by_key.pop(future.key)
        in_flight.pop(future.key, None)
        try:
            result = future.result()
        except KilledWorker as exc:
            attempts = _clear_attempts(out_dir, job.name, context["run_id"]) or None
            result = _failed(job, exc, attempts=attempts, run_id=context["run_id"], reason=(
                f"KilledWorker: {exc.allowed_failures + 1} Dask worker process(es) died "
                f"while segmenting this image (distributed.scheduler.allowed-failures="
                f"{exc.allowed_failures}); it may exhaust a worker's memory or crash native "
                f"code. Check the worker logs."))
        except Exception as exc:  # the task's own error, after its retries
            attempts = _clear_attempts(out_dir, job.name, context["run_id"]) or None
            result = _failed(job, exc, attempts=attempts, run_id=context["run_id"])
        future.release()
        emit(result)
        job = next(todo, None)
        if job is not None:
            futures.add(submit(job))


# --------------------------------------------------------------------------
# the report and the entry point
# --------------------------------------------------------------------------


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
        :func:`settings_hash` of the pipeline.
    run_id : str, default=None
        Identifier of the run, also stored in the records it wrote.

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
                         if r["status"] != "failed" and r.get("n_clusters") is not None)
        return dict(sorted(counts.items()))

    def summary(self):
        """A multi-line human summary: counts, time, segments per image, failures."""
        rate = self.n_done / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{self.n_images} image(s): {self.n_done} segmented, {self.n_skipped} skipped "
            f"(already done), {self.n_failed} failed; {self.seconds:.1f} s"
            + (f" ({rate:.2f} images/s)" if self.n_done else "")
        ]
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


def _check_pipeline(pipeline):
    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) < 3:
        raise TypeError(
            f"segment_collection: pipeline must be a CLASP Pipeline of at least three steps "
            f"(embedder, segmenter, refiner), e.g. make_clasp_pipeline('dinov2'); got "
            f"{type(pipeline).__name__}."
        )


def _check_names(images):
    """Refuse ImageInput names that could leave the output directory or collide."""
    bad = [im.name for im in images
           if not isinstance(im.name, str) or not _SAFE.fullmatch(im.name)
           or len(im.name) > _MAX_GIVEN_NAME]
    if bad:
        raise ValueError(
            f"segment_collection: unsafe output name(s) {bad[:5]}: a name must be made of "
            f"[A-Za-z0-9._-], not start with '.', and have at most {_MAX_GIVEN_NAME} "
            f"characters. Let find_images name the inputs (pass the paths, or its list)."
        )
    seen = Counter(im.name.casefold() for im in images)
    dup = sorted(name for name, n in seen.items() if n > 1)
    if dup:
        raise ValueError(
            f"segment_collection: output name(s) {dup[:5]} given to more than one image "
            f"(names that differ only in case collide too); their outputs would overwrite "
            f"each other. Give each image its own name, or let find_images name them."
        )


def _inside(path, folder):
    try:
        Path(os.path.realpath(path)).relative_to(folder)
        return True
    except ValueError:
        return False


@validate_params(
    {
        "inputs": "no_validation",
        "out_dir": [str, os.PathLike],
        "pipeline": [None, Pipeline],
        "n_jobs": [Integral, None],
        "client": "no_validation",
        "scheduler": [None, str],
        "security": "no_validation",
        "overwrite": ["boolean"],
        "progress": ["boolean"],
        "max_attempts": [Interval(Integral, 1, None, closed="left")],
        "write_overlay": ["boolean"],
        "chunk_size": [None, Interval(Integral, 1, None, closed="left")],
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

    For each image ``<name>`` (see :func:`find_images`) writes
    ``<name>_mask.png`` (the integer mask, full size), ``<name>_overlay.png``
    (if ``write_overlay``) and, last, ``<name>.json``, each atomically, into
    ``out_dir``. The JSON record holds ``source``, ``name``, ``input_sha256``
    (of the file's bytes), ``settings_hash`` and ``settings`` (see
    :func:`settings_hash`), ``image_size``, ``grid_shape``, ``n_clusters``
    (the chosen K), ``n_segments`` (labels present in the mask),
    ``eigengap_k``, ``silhouette``, ``silhouette_scores`` (K as a string ->
    score; null where a K gave no valid partition), ``eigenvalues``,
    ``second_eigenvalue``, ``single_segment``, ``timings`` (seconds per
    stage: ``load``, ``embed`` (the image's share of its batch), ``affinity``,
    ``segment``, ``refine``, ``write``), ``attempts``, ``run_id``,
    ``outputs`` and ``sklearn_clasp_version``.

    An image whose record exists with the same ``input_sha256`` and
    ``settings_hash`` and whose mask (and overlay, if asked for) exists is
    skipped, so an interrupted run resumes where it stopped: the JSON records
    are the index of finished inputs. An interruption (``KeyboardInterrupt``)
    stops the workers, removes this run's temporary files and is raised again;
    only complete files are left. An image that fails (unreadable or damaged
    file, an image over ``max_image_pixels``, an error in a step, a full disk)
    is retried up to ``max_attempts`` times, then recorded as failed in the
    report and in ``out_dir/failures.jsonl`` with a one-line reason; the
    others go on.

    Each image is segmented on its own, with the later steps fitted afresh on
    it, so the results do not depend on ``n_jobs``, on the batching or on the
    other images.

    Parameters
    ----------
    inputs : str, path-like, list of those, or list of ImageInput
        Image files, directories (searched recursively) and glob patterns, as
        for :func:`find_images`, or its output. Images inside ``out_dir``
        are left out. The names of given ``ImageInput`` items must be safe
        (``[A-Za-z0-9._-]``, no leading dot) and unique, as
        :func:`find_images` makes them.
    out_dir : str or path-like
        Output directory, created if missing. It must be writable: this is
        checked before any image is read.
    pipeline : Pipeline, default=None
        A CLASP pipeline (:func:`~sklearn_clasp.pipeline.make_clasp_pipeline`);
        ``None`` means ``make_clasp_pipeline("dinov2")``. It is not modified:
        an unfitted embedder is fitted as a copy (fit ``pipeline[0]``
        beforehand to reuse a loaded backbone across calls).
    n_jobs : int, default=1
        Local worker processes (joblib, loky) for the clustering, the CRF and
        the writing, while this process loads and embeds the images in
        batches. ``1`` runs everything here; ``-1`` uses all processors.
        Ignored with Dask.
    client : distributed.Client, default=None
        Run on this Dask cluster: each image is sent as a path, each worker
        builds the pipeline once, segments the image and writes its outputs.
        Workers need the package, the model weights and the same view of the
        input and output paths.
    scheduler : str, default=None
        Address of a Dask scheduler (e.g. ``"tcp://host:8786"``): a client is
        connected for this call and closed at its end. Not with ``client``.
    security : distributed.security.Security, default=None
        TLS settings for connecting to ``scheduler``.
    overwrite : bool, default=False
        Redo every image, even when its outputs are complete.
    progress : bool, default=False
        Show a progress bar (tqdm, on stderr) with images per second.
    max_attempts : int, default=3
        Attempts per image before it is recorded as failed (with Dask, the
        task's ``retries`` are ``max_attempts - 1``; worker deaths are counted
        by the scheduler's ``distributed.scheduler.allowed-failures``).
    write_overlay : bool, default=True
        Write ``<name>_overlay.png``.
    chunk_size : int, default=None
        Images loaded and embedded at a time (memory is bounded by about this
        many images); ``None`` means ``max(8, 2 * n_jobs)``.
    max_image_pixels : int or None, default=DEFAULT_MAX_IMAGE_PIXELS
        Largest image (width x height, read from the file's header before
        decoding) that is segmented; a larger one fails with
        :class:`~sklearn_clasp.image.ImageTooLargeError`. A guard against
        decompression bombs; ``None`` for no limit (see
        :func:`~sklearn_clasp.image.load_image`).

    Returns
    -------
    report : CollectionReport
        Per-image results (``report.results``), counts, the histogram of
        segments per image and ``report.summary()``.

    Raises
    ------
    FileNotFoundError
        If an input matches no image.
    OSError
        If ``out_dir`` cannot be created or written to (before any work), or
        is not a directory (:class:`NotADirectoryError`).
    ConnectionError
        If no client can be made for ``scheduler`` (unreachable, or the TLS
        handshake is refused); no image has been read.
    ValueError
        If both ``client`` and ``scheduler`` are given, ``security`` without
        ``scheduler``, or ``ImageInput`` items with unsafe or duplicate names.
    KeyboardInterrupt
        When interrupted, after stopping the work and removing this run's
        temporary files.

    See Also
    --------
    find_images : How inputs are expanded and named.
    sklearn_clasp.pipeline.segment_image : One image, in memory.

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
    (1, ['shapes.json', 'shapes_mask.png', 'shapes_overlay.png'])
    >>> segment_collection(root / "shapes.png", root / "out", pipeline=pipe).n_skipped
    1
    """
    wall_start = time.perf_counter()
    if client is not None and scheduler is not None:
        raise ValueError("segment_collection: pass either client= or scheduler=, not both.")
    if security is not None and scheduler is None:
        raise ValueError("segment_collection: security= applies to scheduler=; to use TLS with "
                         "a client, create it with Client(address, security=security).")
    if pipeline is None:
        from .pipeline import make_clasp_pipeline

        pipeline = make_clasp_pipeline("dinov2")
    _check_pipeline(pipeline)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"segment_collection: out_dir {str(out_dir)!r} exists and is "
                                 f"not a directory; choose another output directory.")
    if isinstance(inputs, (list, tuple)) and inputs and all(
            isinstance(x, ImageInput) for x in inputs):
        images = list(inputs)
        _check_names(images)
    else:
        images = find_images(inputs)
    _prepare_out_dir(out_dir)
    out_real = Path(os.path.realpath(out_dir))
    kept = [im for im in images if not _inside(im.path, out_real)]
    if len(kept) < len(images):
        logger.info("left out %d image(s) inside the output directory %s",
                    len(images) - len(kept), out_dir)
    jobs = [_Job(index=i, name=im.name, path=Path(os.path.abspath(im.path)))
            for i, im in enumerate(kept)]
    digest = settings_hash(pipeline)
    context = {
        "digest": digest,
        "settings": pipeline_settings(pipeline),
        "run_id": uuid.uuid4().hex[:16],
        "write_overlay": write_overlay,
        "max_image_pixels": max_image_pixels,
    }
    logger.info("segmenting %d image(s) into %s (settings %s, run %s)", len(jobs), out_dir,
                digest[:12], context["run_id"])

    from tqdm.auto import tqdm

    results, n_failed = {}, [0]
    bar = tqdm(total=len(jobs), unit="img", desc="segment", disable=not progress,
               dynamic_ncols=True)

    def emit(result):
        results[result["index"]] = result
        if result["status"] == "failed":
            logger.warning("%s (%s) failed: %s", result["name"], result["source"],
                           result["error"])
            _append_failure(out_dir, result)
            n_failed[0] += 1
            bar.set_postfix(failed=n_failed[0], refresh=False)
        bar.update(1)

    own_client = None
    try:
        if scheduler is not None:
            from distributed import Client

            try:
                client = own_client = Client(scheduler, security=security)
            except OSError as exc:  # refused, timed out, TLS handshake failed
                raise ConnectionError(
                    f"segment_collection: cannot connect to the Dask scheduler at "
                    f"{scheduler!r} ({type(exc).__name__}: {exc}). Check the address and "
                    f"that the scheduler is running; a tls:// scheduler also needs "
                    f"security= with the cluster's CA and a client certificate "
                    f"(clasp: --tls-ca-file, --tls-cert, --tls-key)."
                ) from exc
        if client is not None:
            _run_dask(jobs, out_dir, pipeline, context, client=client, overwrite=overwrite,
                      max_attempts=max_attempts, emit=emit)
        else:
            _run_local(jobs, out_dir, pipeline, context, n_jobs=n_jobs, overwrite=overwrite,
                       max_attempts=max_attempts, chunk_size=chunk_size, emit=emit)
    except KeyboardInterrupt:
        # the local workers are stopped by now (joblib kills them on an interruption); one
        # killed mid-write leaves its temporary file: remove this run's
        _remove_temporaries(out_dir, context["run_id"])
        logger.warning("interrupted with %d of %d image(s) accounted for; every output "
                       "written is complete: run again to resume", len(results), len(jobs))
        raise
    finally:
        bar.close()
        if own_client is not None:
            own_client.close()
    ordered = []
    for i in range(len(jobs)):
        r = dict(results[i])
        r.pop("index", None)
        r.pop("run_id", None)
        ordered.append(r)
    report = CollectionReport(ordered, out_dir=out_dir,
                              wall_seconds=time.perf_counter() - wall_start,
                              settings_hash=digest, run_id=context["run_id"])
    logger.info("%d done, %d skipped, %d failed in %.1f s", report.n_done, report.n_skipped,
                report.n_failed, report.seconds)
    return report
