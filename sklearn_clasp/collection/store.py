"""The output store: one directory of masks, overlays and JSON records.

For each image ``<name>`` the store holds ``<name>_mask.png`` (the integer
mask as a palette PNG, 16-bit above 255 segments), ``<name>_overlay.png`` (the
image with coloured segments and boundaries) and ``<name>.json`` (its record),
each written atomically, the record last: a record vouches for the files
beside it, and an image is complete when its record matches the input's bytes
and the settings. Failures are appended to ``failures.jsonl``.

One run at a time writes into a directory: :class:`OutputLock` holds an
operating-system lock (``flock``) on ``.clasp.lock`` for the run, released by
the kernel however the process ends. The records already there are the
directory's index (:class:`RecordIndex`): they hold one set of settings
(:func:`check_settings`), and an image is found by its bytes and its path as
well as by its name (:func:`plan_names`, :meth:`RecordIndex.resolve`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import DISK_FULL_ERRNOS, atomic_write, is_regular_file, read_json, save_png

__all__ = [
    "FAILURES_FILE",
    "LOCK_FILE",
    "OutputDirectoryInUseError",
    "OutputLock",
    "OutputStore",
    "RecordIndex",
    "SettingsMismatchError",
    "check_settings",
    "image_record",
    "jsonable",
    "plan_names",
]

logger = logging.getLogger(__name__)

#: Name of the failure log in the output directory (one JSON object a line).
FAILURES_FILE = "failures.jsonl"
#: Name of the lock file in the output directory (hidden; never removed).
LOCK_FILE = ".clasp.lock"


class OutputDirectoryInUseError(OSError):
    """Another run holds the output directory's lock (or this run no longer does)."""


class SettingsMismatchError(ValueError):
    """The output directory holds outputs made with other settings."""

# Overlays of larger images are drawn on a downscaled copy (about 180 bytes a pixel
# at the drawing's peak: 750 MB at this size).
OVERLAY_MAX_PIXELS = 1 << 22
# zlib level of the PNGs written: 1 is several times faster than Pillow's 6, for masks
# (palette PNGs, that compress well at any level) and overlays a little larger.
_PNG_LEVEL = 1

# A temporary file of atomic_write tagged with a run id: .<file>.<random>.<run id>.tmp
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.([0-9a-f]{16})\.tmp")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def jsonable(value):
    """Plain JSON values: numpy to Python, NaN and infinities to None, keys to str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def image_record(record, mask, *, name, source, input_sha256, settings, settings_hash,
                 timings, run_id, attempts, version):
    """The JSON record of one segmented image.

    Parameters
    ----------
    record : PatchGrid
        The image's record after the segmenter (see
        :func:`~sklearn_clasp.pipeline.clasp_one`).
    mask : ndarray of shape (H, W)
        The refined mask.
    name, source, input_sha256, settings, settings_hash, timings, run_id, attempts, version
        Stored as they are.

    Returns
    -------
    meta : dict
        ``source``, ``name``, ``input_sha256``, ``settings_hash``,
        ``settings``, ``image_size``, ``grid_shape``, ``n_clusters`` (the
        chosen K), ``n_segments`` (labels present in the mask),
        ``eigengap_k``, ``silhouette``, ``silhouette_scores`` (K as a string
        -> score), ``eigenvalues``, ``second_eigenvalue``, ``single_segment``,
        ``background``, ``timings``, ``attempts``, ``run_id``,
        ``sklearn_clasp_version``.
    """
    info = dict(record.info)
    counts = np.bincount(mask.ravel()) if mask.size and mask.min() >= 0 else None
    n_segments = (int(np.count_nonzero(counts)) if counts is not None
                  else int(np.unique(mask).size))
    if record.labels is not None:
        n_clusters = int(info.get("n_clusters", int(np.max(record.labels)) + 1))
    else:
        n_clusters = n_segments
    scores = info.get("silhouette_scores") or {}
    return {
        "source": str(source),
        "name": name,
        "input_sha256": input_sha256,
        "settings_hash": settings_hash,
        "settings": settings,
        "image_size": [int(v) for v in record.image.shape[:2]],
        "grid_shape": [int(v) for v in record.grid_shape],
        "n_clusters": n_clusters,
        "n_segments": n_segments,
        "eigengap_k": info.get("eigengap_k"),
        "silhouette": info.get("silhouette"),
        "silhouette_scores": {str(int(k)): v for k, v in scores.items()},
        "eigenvalues": info.get("eigenvalues"),
        "second_eigenvalue": info.get("second_eigenvalue"),
        "single_segment": info.get("single_segment"),
        "background": info.get("background"),
        "timings": dict(timings),
        "attempts": attempts,
        "run_id": run_id,
        "sklearn_clasp_version": version,
    }


def _check_dir_error(who, out_dir, exc, action):
    fix = "free some space" if exc.errno in DISK_FULL_ERRNOS else "fix its permissions"
    return OSError(exc.errno, f"{who}: cannot {action} the output directory {str(out_dir)!r} "
                              f"({exc.strerror or exc}); {fix} or choose another output "
                              f"directory.")


@dataclass(frozen=True)
class OutputStore:
    """The outputs of one run in one directory (picklable: sent to the workers).

    Parameters
    ----------
    out_dir : pathlib.Path
        The output directory.
    run_id : str
        Identifier of the run: stored in the records it writes and in the names
        of its temporary files.
    write_overlay : bool, default=True
        Write ``<name>_overlay.png``.
    """

    out_dir: Path
    run_id: str
    write_overlay: bool = True

    @staticmethod
    def new_run_id():
        """A fresh random run identifier."""
        return uuid.uuid4().hex[:16]

    def prepare(self, *, who="segment_collection"):
        """Create the directory if needed and check, before any work, that it is writable."""
        out_dir = self.out_dir
        if out_dir.exists() and not out_dir.is_dir():
            raise NotADirectoryError(f"{who}: {str(out_dir)!r} exists and is not a directory; "
                                     f"choose another output directory.")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _check_dir_error(who, out_dir, exc, "create") from None
        probe = out_dir / f".clasp-write-check-{uuid.uuid4().hex[:12]}.tmp"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                         0o600)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
        except OSError as exc:
            raise _check_dir_error(who, out_dir, exc, "write into") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(probe)
        return self

    def paths(self, name):
        """``{"mask": ..., "overlay": ..., "json": ...}``: the files of image ``name``."""
        return {
            "mask": self.out_dir / f"{name}_mask.png",
            "overlay": self.out_dir / f"{name}_overlay.png",
            "json": self.out_dir / f"{name}.json",
        }

    def completed(self, name, input_sha256, digest):
        """The image's JSON record if its outputs are complete for these bytes and settings."""
        paths = self.paths(name)
        record = read_json(paths["json"])
        if (
            record is None
            or record.get("input_sha256") != input_sha256
            or record.get("settings_hash") != digest
            or not is_regular_file(paths["mask"])
            or (self.write_overlay and not is_regular_file(paths["overlay"]))
        ):
            return None
        return record

    def write(self, name, image, mask, meta):
        """Write mask, overlay and, last, the JSON record ``meta``, each atomically.

        ``meta["timings"]["write"]`` and ``meta["outputs"]`` are filled in.
        """
        from ..visualize import overlay

        paths = self.paths(name)
        start = time.perf_counter()
        # The old record must never vouch for new files: remove it first.
        paths["json"].unlink(missing_ok=True)
        atomic_write(paths["mask"], lambda p: save_png(p, mask, compress_level=_PNG_LEVEL),
                     tag=self.run_id)
        if self.write_overlay:
            drawn = overlay(image, mask, max_pixels=OVERLAY_MAX_PIXELS)
            atomic_write(paths["overlay"],
                         lambda p: save_png(p, drawn, compress_level=_PNG_LEVEL),
                         tag=self.run_id)
        else:
            paths["overlay"].unlink(missing_ok=True)  # a stale one would not match the mask
        meta["timings"]["write"] = time.perf_counter() - start
        meta["outputs"] = {
            "mask": paths["mask"].name,
            "overlay": paths["overlay"].name if self.write_overlay else None,
        }
        text = json.dumps(jsonable(meta), indent=2, allow_nan=False) + "\n"
        atomic_write(paths["json"], lambda p: p.write_text(text, encoding="utf-8"),
                     tag=self.run_id)

    def holder(self):
        """What the lock file says about the run that holds it (a dict, or None)."""
        return read_json(self.out_dir / LOCK_FILE)

    def check_held(self, where="this process"):
        """Raise unless this run holds the output directory (checked by Dask workers).

        A worker that sees another directory at this path (another file system)
        or a task of a run that has ended (its client was killed, and another
        run took the directory) must not write.
        """
        holder = self.holder()
        if holder is not None and holder.get("run_id") == self.run_id:
            return
        if not self.out_dir.is_dir():
            raise FileNotFoundError(
                f"the output directory {str(self.out_dir)!r} does not exist on {where}; the "
                f"workers need the same view of the files as the client (a shared file "
                f"system, mounted at the same path).")
        if holder is None or not holder.get("run_id"):
            raise OutputDirectoryInUseError(
                errno.EBUSY, f"the output directory {str(self.out_dir)!r} on {where} is not "
                f"held by run {self.run_id}: either {where} sees another directory at this "
                f"path than the client (the workers need the same view of the files: a shared "
                f"file system, mounted at the same path), or the run has ended.")
        raise OutputDirectoryInUseError(
            errno.EBUSY, f"the output directory {str(self.out_dir)!r} on {where} is held by "
            f"run {holder.get('run_id')}, not by run {self.run_id} (a task of a run that "
            f"ended, or {where} sees another directory at this path than the client); "
            f"nothing was written.")

    def append_failure(self, result):
        """Append one failed image's result to ``failures.jsonl`` (one write, no links)."""
        line = {key: result.get(key) for key in
                ("name", "source", "error_type", "error", "attempts")}
        line["run_id"] = self.run_id
        line["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        path = self.out_dir / FAILURES_FILE
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC
        try:
            try:
                fd = os.open(path, flags, 0o666)
            except OSError:
                if not os.path.islink(path):
                    raise
                logger.warning("%s is a symbolic link; replaced by a file (its target is "
                               "left alone)", path)
                path.unlink()
                fd = os.open(path, flags | os.O_EXCL, 0o666)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(jsonable(line)) + "\n")
        except OSError as exc:
            logger.warning("could not append to %s: %s", path, exc)

    def remove_stale_temporaries(self):
        """Remove the temporary files of runs that were killed (called holding the lock).

        Only names of :func:`~sklearn_clasp.io.temporary_name`'s form with a run
        id of this package (``.<file>.<12 hex>.<16 hex>.tmp``) are touched.
        """
        removed = 0
        with contextlib.suppress(OSError), os.scandir(self.out_dir) as entries:
            for entry in entries:
                found = _TEMPORARY.fullmatch(entry.name)
                if found and found.group(1) != self.run_id:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        removed += 1
        if removed:
            logger.info("removed %d temporary file(s) left by runs that were killed", removed)

    def remove_temporaries(self):
        """Remove the temporary files this run left (its workers stopped mid-write)."""
        suffix = f".{self.run_id}.tmp"
        removed = 0
        with contextlib.suppress(OSError), os.scandir(self.out_dir) as entries:
            for entry in entries:
                if entry.name.startswith(".") and entry.name.endswith(suffix):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        removed += 1
        if removed:
            logger.debug("removed %d temporary file(s) of run %s", removed, self.run_id)


# --------------------------------------------------------------------------
# one run at a time
# --------------------------------------------------------------------------


class OutputLock:
    """An exclusive lock on an output directory, for one run.

    ``flock`` on ``<out_dir>/.clasp.lock``, taken without waiting: the kernel
    releases it when the process ends, however it ends (SIGKILL included), so a
    stale lock cannot stop the next run. While held, the file names the holder
    (run id, process id, host, start time); it is emptied on release. The file
    descriptor is not inherited by child processes.

    Parameters
    ----------
    out_dir : pathlib.Path
    run_id : str

    Raises
    ------
    OutputDirectoryInUseError
        From :meth:`acquire`, if another run holds the lock.
    """

    def __init__(self, out_dir, run_id):
        self.out_dir = Path(out_dir)
        self.run_id = run_id
        self._fd = None

    @property
    def path(self):
        return self.out_dir / LOCK_FILE

    def acquire(self):
        try:
            import fcntl
        except ImportError:  # not POSIX
            fcntl = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputDirectoryInUseError(
                    exc.errno, f"{self.path} is a symbolic link; remove it (the lock of an "
                               f"output directory is a plain file)") from None
            raise _check_dir_error("segment_collection", self.out_dir, exc,
                                   "lock") from None
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = read_json(self.path) or {}
                    who = ", ".join(f"{k} {holder[k]}" for k in ("run_id", "pid", "host",
                                                                 "started") if holder.get(k))
                    raise OutputDirectoryInUseError(
                        errno.EBUSY, "another run is writing into the output directory "
                        f"{str(self.out_dir)!r}" + (f" ({who})" if who else "") + "; wait "
                        "for it to finish, or choose another output directory") from None
                except OSError as exc:  # a file system without locks
                    logger.warning("cannot lock the output directory %s (%s); make sure no "
                                   "other run writes into it meanwhile", self.out_dir,
                                   exc.strerror or exc)
            info = {"run_id": self.run_id, "pid": os.getpid(), "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(info) + "\n").encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self):
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # a late task of this run finds no holder: it writes nothing
        os.close(fd)  # releases the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# --------------------------------------------------------------------------
# the records already there
# --------------------------------------------------------------------------


_INDEX_PREFIX = ".clasp-index-"


def index_path(store):
    """The hidden file in which a run leaves its record index for the Dask workers."""
    return store.out_dir / f"{_INDEX_PREFIX}{store.run_id}.json"


def _real(path):
    return os.path.realpath(os.fspath(path)) if path else None


def _path_hash(path):
    return hashlib.sha256(_real(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]


@dataclass(frozen=True)
class RecordIndex:
    """The records of an output directory, by input checksum and by source path.

    Built once per run by :meth:`scan` (in the client) and sent to Dask workers
    once; picklable and read-only.
    """

    by_sha: dict = field(default_factory=dict)  # input_sha256 -> ((name, source), ...)
    by_source: dict = field(default_factory=dict)  # real source path -> (name, ...)
    settings: dict = field(default_factory=dict)  # settings_hash -> (count, settings, name)
    planned: frozenset = frozenset()  # the output names the images of this run use

    @classmethod
    def scan(cls, out_dir):
        """Read every record (``<name>.json`` with its name, checksum and settings)."""
        by_sha, by_source, settings = {}, {}, {}
        try:
            entries = sorted(os.scandir(out_dir), key=lambda e: e.name)
        except OSError:
            entries = []
        for entry in entries:
            if (not entry.name.endswith(".json") or entry.name.startswith(".")
                    or not entry.is_file(follow_symlinks=False)):
                continue
            record = read_json(entry.path)
            name = entry.name[: -len(".json")]
            if (record is None or record.get("name") != name
                    or not isinstance(record.get("input_sha256"), str)
                    or not isinstance(record.get("settings_hash"), str)):
                continue  # not a record of this package
            source = record.get("source") if isinstance(record.get("source"), str) else None
            by_sha.setdefault(record["input_sha256"], []).append((name, source))
            if source:
                by_source.setdefault(_real(source), []).append(name)
            count, first, example = settings.get(record["settings_hash"], (0, None, name))
            settings[record["settings_hash"]] = (count + 1, first or record.get("settings"),
                                                 example)
        return cls({k: tuple(v) for k, v in by_sha.items()},
                   {k: tuple(v) for k, v in by_source.items()}, settings)

    def save(self, store):
        """Write what the Dask workers need (by checksum, planned names) for this run.

        A hidden file in the output directory, read once per worker and run
        (see :meth:`load`); removed by :meth:`discard`. Data scattered to the
        workers would not survive the death of every worker that holds it.
        """
        data = {"run_id": store.run_id,
                "by_sha": {sha: [list(e) for e in entries] for sha, entries in
                           self.by_sha.items()},
                "planned": sorted(self.planned)}
        text = json.dumps(data)
        atomic_write(index_path(store), lambda p: p.write_text(text, encoding="utf-8"),
                     tag=store.run_id)

    @classmethod
    def load(cls, store):
        """The index :meth:`save` wrote for this run (empty if it is not there)."""
        data = read_json(index_path(store))
        if data is None or data.get("run_id") != store.run_id:
            return cls()
        by_sha = {sha: tuple((e[0], e[1]) for e in entries if isinstance(e, list)
                             and len(e) == 2)
                  for sha, entries in (data.get("by_sha") or {}).items()}
        return cls(by_sha=by_sha, planned=frozenset(data.get("planned") or ()))

    @staticmethod
    def discard(store, *, others=False):
        """Remove this run's index file (``others``: those of runs that ended)."""
        with contextlib.suppress(OSError), os.scandir(store.out_dir) as entries:
            for entry in entries:
                if not (entry.name.startswith(_INDEX_PREFIX) and entry.name.endswith(".json")):
                    continue
                if (entry.name == index_path(store).name) != others:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def home(self, path, own):
        """The name of the record made from this very file, if there is one."""
        names = self.by_source.get(_real(path), ())
        return own if own in names else (names[0] if names else None)

    def resolve(self, store, name, path, sha, claimed=frozenset()):
        """The output name for an image of these bytes, planned as ``name``.

        The planned name when its record is of these bytes or of this file (then
        redone in place); else the name of a record of the same bytes that no
        other image of the run uses, if that record's file is this one or is
        gone (so a file reached through another input path, or moved, is not
        done twice; a copy beside its original gets outputs of its own); else
        the planned name, unless its record is another file's: then a name with
        a hash of this file's path, so that another input's results are never
        overwritten.
        """
        record = read_json(store.paths(name)["json"])
        if record is not None and (record.get("input_sha256") == sha
                                   or _real(record.get("source")) == _real(path)):
            return name
        others = self.planned | set(claimed)
        for other, source in sorted(self.by_sha.get(sha, ()),
                                    key=lambda e: (_real(e[1]) != _real(path), e[0])):
            if (other == name or other not in others) and _this_file_or_gone(source, path):
                return other
        if record is None:
            return name
        return f"{name}-{_path_hash(path)}"


def _this_file_or_gone(source, path):
    """Whether a record's ``source`` is ``path`` itself (any route to it) or no longer exists."""
    if not source or _real(source) == _real(path):
        return True
    try:
        return os.path.samefile(source, path)
    except OSError:
        return not os.path.lexists(source)


def plan_names(jobs, index):
    """Give each job the name its file already has in the directory, without a collision.

    A job keeps the name of a record made from its very file (its source path),
    whatever name its input path gives it now (``clasp segment photos`` then
    ``clasp segment photos/cats``). A job whose name is another job's is
    renamed with a hash of its path. Returns the index with the planned names.
    """
    homes = {id(job): index.home(job.path, job.name) for job in jobs}
    claimed = {home for home in homes.values() if home is not None}
    used = set()
    for job in jobs:
        home = homes[id(job)]
        if home is not None:
            job.name = home
        elif job.name in claimed or job.name in used:
            job.name = f"{job.name}-{_path_hash(job.path)}"
        used.add(job.name)
    return RecordIndex(index.by_sha, index.by_source, index.settings, frozenset(used))


def _differences(old, new, limit=6):
    """``"key: old -> new"`` for the settings that differ."""
    old, new = old or {}, new or {}
    keys = sorted(k for k in set(old) | set(new) if old.get(k, "?") != new.get(k, "?"))
    shown = [f"{k}: {old.get(k, '(absent)')} there, {new.get(k, '(absent)')} now"
             for k in keys[:limit]]
    if len(keys) > limit:
        shown.append(f"... ({len(keys)} in all)")
    return "; ".join(shown) or "the settings hashes differ"


def check_settings(index, digest, settings, out_dir, *, overwrite):
    """Refuse to mix settings in one directory, naming the settings that differ.

    Raises
    ------
    SettingsMismatchError
        If records made with other settings are there and not ``overwrite``.
    """
    other = {h: v for h, v in index.settings.items() if h != digest}
    if not other:
        return
    n = sum(count for count, _, _ in other.values())
    if overwrite:
        logger.warning("%d record(s) in %s were made with other settings; the images of "
                       "this run replace theirs (overwrite)", n, out_dir)
        return
    (_, old, example), *rest = sorted(other.values(), key=lambda v: -v[0])
    raise SettingsMismatchError(
        f"the output directory {str(out_dir)!r} holds the outputs of {n} image(s) made with "
        f"other settings ({_differences(old, settings)}"
        + (f"; and {len(rest)} other set(s) of settings" if rest else "")
        + f"; e.g. {example}.json). An output directory holds one set of settings: choose "
        f"another output directory, or overwrite=True (clasp: --overwrite) to redo the images "
        f"and replace their outputs.")
