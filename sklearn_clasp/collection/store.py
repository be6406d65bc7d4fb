"""The output store: one directory of masks, overlays and JSON records.

For each image ``<name>`` the store holds ``<name>_mask.png`` (the integer
mask as a palette PNG, 16-bit above 255 segments), ``<name>_overlay.png`` (the
image with coloured segments and boundaries) and ``<name>.json`` (its record),
each written atomically, the record last: a record vouches for the files
beside it, and an image is complete when its record matches the input's bytes
and the settings. Failures are appended to ``failures.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import DISK_FULL_ERRNOS, atomic_write, is_regular_file, read_json, save_png

__all__ = ["FAILURES_FILE", "OutputStore", "image_record", "jsonable"]

logger = logging.getLogger(__name__)

#: Name of the failure log in the output directory (one JSON object a line).
FAILURES_FILE = "failures.jsonl"

# Overlays of larger images are drawn on a downscaled copy (about 180 bytes a pixel
# at the drawing's peak: 750 MB at this size).
OVERLAY_MAX_PIXELS = 1 << 22
# zlib level of the PNGs written: 1 is several times faster than Pillow's 6, for masks
# (palette PNGs, that compress well at any level) and overlays a little larger.
_PNG_LEVEL = 1

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
