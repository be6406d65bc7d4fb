"""An HTML report of a run's output folder: one static page, opened from disk.

:func:`write_report` reads the output folder of
:func:`~sklearn_clasp.collection.segment_collection` (the JSON records and
``failures.jsonl``) and writes one HTML page that opens from the file system
(``file://``) with no server and no network: every style, script and datum is
inline, and the images are thumbnails in a folder beside the page, linked by
relative paths.

Layout, with the default ``path``::

    OUT/report.html            the page
    OUT/report_files/          its thumbnails (longest side thumbnail_size pixels)
        <key>.i.jpg            the source image
        <key>.o.jpg            the overlay

where ``<key>`` is a hash of the record's name and of what the thumbnail is
made from (the input checksum, or the overlay file's size and modification
time) and of the thumbnail size: a thumbnail is made again only when it is
missing or what it shows has changed, and thumbnails no longer used are
removed. The page also links the folder's own files relatively:
``<name>.json``, ``<name>_overlay.png``, ``<name>_mask.png`` and, where there
is one, ``<name>_explain.png``.

The per-image data is embedded once, as JSON in a ``<script
type="application/json">`` element with ``<``, ``>`` and ``&`` written as
``\\u003c``, ``\\u003e`` and ``\\u0026`` (so no string can close the
element), and the page's script renders it a page of cards at a time with
lazily loaded images; it writes data into the page with ``textContent`` and
attributes only. A Content-Security-Policy lets only that one script run.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import html
import json
import logging
import math
import os
import re
import string
import time
import warnings
from collections import Counter
from importlib import resources
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral
from pathlib import Path
from urllib.parse import quote

from joblib import effective_n_jobs
from sklearn.utils._param_validation import Interval, validate_params

from .collection.store import FAILURES_FILE
from .device import n_jobs_constraints
from .io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    atomic_write,
    is_regular_file,
    open_nofollow,
    open_regular_file,
    sha256_of_stream,
)

__all__ = ["write_report"]

logger = logging.getLogger(__name__)

# Keys of which a JSON object needs one to be taken as a record of segment_collection.
_RECORD_KEYS = ("n_clusters", "source", "input_sha256", "settings_hash")
# Guards against files that are not what they claim to be (a record is a few kB).
_MAX_RECORD_BYTES = 8 << 20
_MAX_FAILURE_LINE = 1 << 20
_MAX_TEXT = 2000  # characters of any string shown (sources, errors)
_MAX_STAGES = 16
_THUMB_VERSION = "1"
_THUMB_RE = re.compile(r"[0-9a-f]{20}\.[io]\.jpg")
_TEMP_RE = re.compile(r"\.[0-9a-f]{20}\.[io]\.jpg\.[0-9a-f]{12}\.tmp")


# --------------------------------------------------------------------------
# reading the folder
# --------------------------------------------------------------------------


def _text(value, limit=_MAX_TEXT):
    """Any value as a printable string of at most ``limit`` characters (None stays None)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    # lone surrogates (from "\udc80" in JSON, or undecodable file names) cannot be
    # written as UTF-8: each becomes "?"
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _int(value):
    """A non-negative int below 2**31, or None (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        return None
    return int(value) if 0 <= value < 2**31 else None


def _float(value, lo=-math.inf, hi=math.inf):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and lo <= value <= hi else None


def _round(value, digits):
    return None if value is None else round(value, digits)


def _read_record(path):
    """``(record, None)`` or ``(None, reason)`` for one ``<name>.json``."""
    try:
        fh, info = open_nofollow(path)
    except OSError as exc:
        if os.path.islink(path):
            return None, "symbolic link (not followed)"
        return None, f"cannot be read ({exc.strerror or exc})"
    with fh:
        if info.st_size > _MAX_RECORD_BYTES:
            return None, f"too large for a record ({info.st_size} bytes)"
        try:
            raw = fh.read(_MAX_RECORD_BYTES + 1)
            if len(raw) > _MAX_RECORD_BYTES:
                return None, "too large for a record (grew while read)"
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return None, "not UTF-8 text"
        except ValueError as exc:
            return None, f"not valid JSON ({exc})"
        except RecursionError:
            return None, "not valid JSON (nested too deeply)"
        except OSError as exc:
            return None, f"cannot be read ({exc.strerror or exc})"
    if not isinstance(data, dict):
        return None, f"not a JSON object (a {type(data).__name__})"
    if not any(key in data for key in _RECORD_KEYS):
        return None, "not a record (none of n_clusters, source, input_sha256, settings_hash)"
    return data, None


def _scan(out_dir):
    """``(json names, regular files, symbolic links)`` of the folder's non-hidden entries."""
    names, regular, links = [], set(), set()
    with os.scandir(out_dir) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_symlink():
                links.add(entry.name)
            elif entry.is_file(follow_symlinks=False):
                regular.add(entry.name)
            if entry.name.endswith(".json") and len(entry.name) > 5:
                names.append(entry.name)
    return sorted(names, key=lambda n: n[:-5]), regular, links  # by name, as the page sorts


def _output_file(stem, suffix, record_name, regular, links, notes, what):
    """Whether ``<stem><suffix>`` is usable; a warning when it is expected but not."""
    name = stem + suffix
    if name in regular:
        return True
    if name in links:
        notes.append(f"the {what} is a symbolic link (not followed)")
    elif record_name is not None:
        notes.append(f"the {what} {record_name!r} is missing")
    return False


def _card(stem, record, stages, regular, links):
    """The compact entry of one record for the page (thumbnails are added later)."""
    notes = []
    entry = {"n": _text(stem, 1000)}
    url = quote(os.fsencode(stem), safe="")
    if url != entry["n"]:
        entry["u"] = url
    source = record.get("source")
    if source is not None:
        entry["s"] = _text(source)
    for key, field in (("k", "n_clusters"), ("k0", "eigengap_k")):
        value = _int(record.get(field))
        if value is not None:
            entry[key] = value
        elif record.get(field) is not None:
            notes.append(f"{field} is not a count: {_text(record.get(field), 40)}")
    if "n_clusters" not in record:
        notes.append("the record has no n_clusters")
    sil = _float(record.get("silhouette"), -1.0, 1.0)
    if sil is not None:
        entry["sil"] = round(sil, 4)
    bg = record.get("background")
    if isinstance(bg, dict):
        segment = _int(bg.get("segment"))
        entry["bg"] = [segment, _round(_float(bg.get("score")), 4)]
    elif bg is not None:
        notes.append("the background entry is not an object")
    size = record.get("image_size")
    if isinstance(size, list) and len(size) == 2 and all(_int(v) for v in size):
        entry["sz"] = [int(size[0]), int(size[1])]
    timings = record.get("timings")
    if isinstance(timings, dict):
        row = []
        for stage, seconds in timings.items():
            seconds = _float(seconds, 0.0)
            if seconds is None:
                continue
            stage = _text(stage, 40)
            if stage not in stages:
                if len(stages) >= _MAX_STAGES:
                    continue
                stages[stage] = len(stages)
            i = stages[stage]
            row.extend([None] * (i + 1 - len(row)))
            row[i] = round(seconds, 4)
        if row:
            entry["t"] = row
    outputs = record.get("outputs") if isinstance(record.get("outputs"), dict) else {}
    flags = 0
    mask_name = outputs.get("mask", stem + "_mask.png")
    if _output_file(stem, "_mask.png", mask_name, regular, links, notes, "mask"):
        flags |= 1
    overlay_name = outputs.get("overlay", stem + "_overlay.png")
    if _output_file(stem, "_overlay.png", overlay_name, regular, links, notes, "overlay"):
        flags |= 2
    if _output_file(stem, "_explain.png", None, regular, links, notes, "explain figure"):
        flags |= 4
    if flags:
        entry["f"] = flags
    if notes:
        entry["w"] = [_text(w, 300) for w in notes]
    return entry


def _read_failures(path, bad):
    """``{name: failure}``: the last failure of each name, with how many times it failed."""
    failures = {}
    try:
        fh, _ = open_nofollow(path)
    except FileNotFoundError:
        return failures
    except OSError as exc:
        reason = ("symbolic link (not followed)" if os.path.islink(path)
                  else f"cannot be read ({exc.strerror or exc})")
        bad.append({"file": FAILURES_FILE, "reason": reason})
        return failures
    with fh:
        number = 0
        while True:
            try:
                line = fh.readline(_MAX_FAILURE_LINE)
            except OSError as exc:
                bad.append({"file": FAILURES_FILE, "reason": f"cannot be read ({exc})"})
                break
            if not line:
                break
            number += 1
            where = f"{FAILURES_FILE}, line {number}"
            if not line.endswith(b"\n") and len(line) >= _MAX_FAILURE_LINE:
                while line and not line.endswith(b"\n"):  # skip the rest of the line
                    line = fh.readline(_MAX_FAILURE_LINE)
                bad.append({"file": where, "reason": "line too long"})
                continue
            if not line.strip():
                continue
            try:
                item = json.loads(line.decode("utf-8"))
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError too
                bad.append({"file": where, "reason": f"not valid JSON ({_text(exc, 200)})"})
                continue
            if not isinstance(item, dict):
                bad.append({"file": where, "reason": "not a JSON object"})
                continue
            name = _text(item.get("name"), 1000) or "?"
            entry = {"n": name, "c": failures.get(name, {}).get("c", 0) + 1}
            for key, field in (("s", "source"), ("et", "error_type"), ("e", "error"),
                               ("tm", "time")):
                if item.get(field) is not None:
                    entry[key] = _text(item[field], 200 if key == "et" else _MAX_TEXT)
            failures.pop(name, None)
            failures[name] = entry  # re-inserted: ordered by last failure
    return failures


# --------------------------------------------------------------------------
# thumbnails
# --------------------------------------------------------------------------


def _key(*parts):
    text = "|".join(str(p) for p in (_THUMB_VERSION, *parts))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def _save_thumbnail(fh, dest, size, max_pixels):
    """Write a JPEG thumbnail (longest side ``size``) of the image in the open file ``fh``."""
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        # the size is checked against max_pixels below; Pillow's warning is noise
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(fh)
    with im:
        width, height = im.size
        if max_pixels is not None and width * height > max_pixels:
            raise ValueError(f"{width} x {height} pixels, over the limit of {max_pixels}")
        im.draft("RGB", (size, size))
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            im = Image.new("RGB", rgba.size, (255, 255, 255))
            im.paste(rgba, mask=rgba.getchannel("A"))
        else:
            im = im.convert("RGB")
        im.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
        atomic_write(dest, lambda tmp: im.save(tmp, format="JPEG", quality=85,
                                               optimize=True))


def _make_thumbnail(task):
    """Run one thumbnail task; return None or the reason it could not be made."""
    kind, path, dest, size, sha256 = task
    what = "source image" if kind == "i" else "overlay"
    try:
        fh = open_nofollow(path)[0] if kind == "o" else open_regular_file(path, str(path))
    except FileNotFoundError:
        return f"the {what} is not found"
    except OSError as exc:
        return f"cannot read the {what} ({exc.strerror or exc})"
    with fh:
        try:
            if sha256 is not None:
                if sha256_of_stream(fh) != sha256:
                    return "the source image has changed since it was segmented"
                fh.seek(0)
            _save_thumbnail(fh, dest, size, DEFAULT_MAX_IMAGE_PIXELS)
        except Exception as exc:  # a damaged or unsupported file: shown, not raised
            logger.debug("no thumbnail of %s: %s: %s", path, type(exc).__name__, exc)
            return f"no thumbnail of the {what} ({type(exc).__name__}: {_text(exc, 200)})"
    return None


def _thumbs_dir(folder):
    """The thumbnail folder, created; a symbolic link there is replaced, not followed."""
    if os.path.islink(folder):
        logger.warning("%s is a symbolic link; replaced by a folder (its target is left "
                       "alone)", folder)
        os.unlink(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"write_report: {str(folder)!r} exists and is not a folder; "
                                 f"move it away or pass another path=.")
    folder.mkdir(exist_ok=True)
    return folder


def _read_folder(out_dir):
    """Everything the page shows about the folder, read defensively.

    Returns a dict: ``records`` (the compact card entries, sorted by name),
    ``sources`` (``(file stem, source, input_sha256)`` of each record, aligned
    with ``records``), ``unreadable``, ``failures`` (the last failure of each
    name), ``stages``, ``run_ids``, ``settings`` and ``seconds``.
    """
    try:
        names, regular, links = _scan(out_dir)
    except OSError as exc:
        raise OSError(exc.errno, f"write_report: cannot list the folder {str(out_dir)!r} "
                                 f"({exc.strerror or exc}); make it readable.") from None
    stages, records, sources, unreadable = {}, [], [], []
    run_ids, settings, seconds = set(), set(), 0.0
    for file_name in names:
        if file_name in links:  # checked here too: O_NOFOLLOW is not everywhere
            unreadable.append({"file": _text(file_name, 1000),
                               "reason": "symbolic link (not followed)"})
            continue
        record, reason = _read_record(out_dir / file_name)
        if record is None:
            unreadable.append({"file": _text(file_name, 1000), "reason": reason})
            continue
        entry = _card(file_name[:-5], record, stages, regular, links)
        records.append(entry)
        sources.append((file_name[:-5], record.get("source"), record.get("input_sha256")))
        for value, seen in ((record.get("run_id"), run_ids),
                            (record.get("settings_hash"), settings)):
            if isinstance(value, str):
                seen.add(value)
        seconds += sum(t for t in entry.get("t", ()) if t is not None)
    failures = _read_failures(out_dir / FAILURES_FILE, unreadable)
    have_record = {r["n"] for r in records}
    for entry in failures.values():
        if entry["n"] in have_record:
            entry["r"] = 1
    return {"records": records, "sources": sources, "unreadable": unreadable,
            "failures": list(failures.values()), "stages": list(stages),
            "run_ids": run_ids, "settings": settings, "seconds": seconds}


def _thumbnails(folder, out_dir, thumbs, *, thumbnail_size, source_thumbnails, n_jobs):
    """Make the missing thumbnails, set their keys in the entries, remove unused ones.

    Returns the number of thumbnails made and reused.
    """
    tasks = []
    for entry, (stem, source, sha) in zip(folder["records"], folder["sources"]):
        overlay = out_dir / f"{stem}_overlay.png"
        if entry.get("f", 0) & 2:
            with contextlib.suppress(OSError):
                info = os.lstat(overlay)
                key = _key("o", stem, info.st_size, info.st_mtime_ns, thumbnail_size)
                entry["ot"] = key
                tasks.append((entry, "ot", ("o", overlay, thumbs / f"{key}.o.jpg",
                                            thumbnail_size, None)))
        if not source_thumbnails:
            continue
        if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)
                and isinstance(source, str) and source):
            entry.setdefault("w", []).append(
                "no source image thumbnail: the record has no source or input_sha256")
        elif not os.path.isabs(source):
            entry.setdefault("w", []).append(
                "no source image thumbnail: the source is not an absolute path")
        else:
            try:  # the file's size and time in the key: an edited source is read again
                info = os.stat(source)
            except FileNotFoundError:
                entry.setdefault("w", []).append("the source image is not found")
                continue
            except OSError as exc:
                entry.setdefault("w", []).append(
                    f"cannot read the source image ({exc.strerror or exc})")
                continue
            key = _key("i", stem, sha, info.st_size, info.st_mtime_ns, thumbnail_size)
            entry["it"] = key
            tasks.append((entry, "it", ("i", Path(source), thumbs / f"{key}.i.jpg",
                                        thumbnail_size, sha)))

    todo = [(entry, field, task) for entry, field, task in tasks if not is_regular_file(task[2])]
    made = 0
    if todo:
        workers = effective_n_jobs(n_jobs)
        logger.info("making %d thumbnail(s) in %s", len(todo), thumbs)
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                errors = list(pool.map(_make_thumbnail, [t for _, _, t in todo]))
        else:
            errors = [_make_thumbnail(t) for _, _, t in todo]
        for (entry, field, _), error in zip(todo, errors):
            if error is None:
                made += 1
            else:
                del entry[field]
                entry.setdefault("w", []).append(error)
    used = {f"{e[f]}.{f[0]}.jpg" for e in folder["records"] for f in ("it", "ot") if f in e}
    _remove_unused(thumbs, used)
    return made, len(tasks) - len(todo)


# --------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------


def _json_for_script(data):
    """JSON that is safe inside a ``<script>`` element (no ``<``, ``>``, ``&`` left)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def _url_prefix(target, start):
    """The relative URL of folder ``target`` seen from folder ``start`` ('' or ending in /)."""
    try:
        rel = os.path.relpath(target, start)
    except ValueError:  # another drive
        return Path(os.path.abspath(target)).as_uri() + "/"
    if rel == ".":
        return ""
    parts = Path(rel).parts
    return "".join(quote(os.fsencode(p), safe="") + "/" for p in parts)


def _histogram_html(counts, n_unknown):
    if not counts:
        return '<p class="muted">No record has a K.</p>'
    top = max(counts.values())
    rows = []
    for k in sorted(counts):
        n = counts[k]
        width = max(1.0, 100.0 * n / top)
        rows.append(
            f'<button type="button" class="hbar" data-k="{k}" '
            f'title="show the images with K = {k}"><span class="hk">K = {k}</span>'
            f'<span class="hb"><span style="width:{width:.1f}%"></span></span>'
            f'<span class="hn" data-count="{n}">{n}</span></button>'
        )
    if n_unknown:
        rows.append(f'<p class="muted">K unknown: <span id="n-k-unknown" '
                    f'data-count="{n_unknown}">{n_unknown}</span></p>')
    return "\n".join(rows)


def _asset(name):
    """A file of the page (HTML template, style sheet, script) shipped with the package."""
    return resources.files("sklearn_clasp.data").joinpath(name).read_text(encoding="utf-8")


def _page(*, title, summary, histogram, data_json, page_size, generated):
    script = _asset("report.js").replace("__PAGE_SIZE__", str(int(page_size)))
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    csp = (f"default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
           f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'")
    esc = html.escape
    return string.Template(_asset("report.html")).substitute(
        title=esc(title), csp=esc(csp), style=_asset("report.css"), summary=summary,
        generated=esc(generated), histogram=histogram, data_json=data_json, script=script)


def _summary_html(*, n_records, n_failed, n_failed_with_record, n_unreadable, n_warned,
                  seconds, run_ids, settings, out_dir):
    esc = html.escape
    total = n_records + n_failed

    def count(ident, n):
        return f'<strong id="{ident}" data-count="{n}">{n}</strong>'

    parts = [
        f'<p class="summary">{count("n-images", total)} image(s): '
        f'{count("n-records", n_records)} segmented, {count("n-failed", n_failed)} failed'
        + (f" (and {count('n-failed-with-record', n_failed_with_record)} that failed once "
           f"but have a record)" if n_failed_with_record else "")
        + f"; {count('n-unreadable', n_unreadable)} unreadable "
          f"entr{'y' if n_unreadable == 1 else 'ies'}; "
        + f"{count('n-warned', n_warned)} with warnings.</p>",
        f'<p class="muted">Folder <code>{esc(_text(os.fspath(out_dir)) or "")}</code>; '
        f"{seconds:.1f} s of processing in the records; "
        f"{len(run_ids)} run(s); {len(settings)} setting(s)"
        + (f" (hash {esc(next(iter(settings))[:12])})" if len(settings) == 1 else "")
        + ".</p>",
    ]
    if len(settings) > 1:
        parts.append('<p class="warn">The records were made with different settings; '
                     "their K are not directly comparable.</p>")
    return "\n".join(parts)


@validate_params(
    {
        "out_dir": [str, os.PathLike],
        "path": [None, str, os.PathLike],
        "title": [None, str],
        "thumbnail_size": [Interval(Integral, 16, 2048, closed="both")],
        "page_size": [Interval(Integral, 1, 10000, closed="both")],
        "source_thumbnails": ["boolean"],
        "n_jobs": n_jobs_constraints(),
    },
    prefer_skip_nested_validation=True,
)
def write_report(out_dir, *, path=None, title=None, thumbnail_size=256, page_size=48,
                 source_thumbnails=True, n_jobs=1):
    """Write an HTML report of a run's output folder; return the page's path.

    The page (see the module's docstring for the files it writes) shows:

    * a summary: how many images were segmented (the JSON records), failed
      (names in ``failures.jsonl`` without a record) and unreadable (JSON
      files that are not readable records, bad lines of ``failures.jsonl``),
      and how many records carry warnings;
    * the histogram of K, the number of segments chosen (click a bar to show
      those images);
    * the table of failures with their reasons (the last failure of each
      name, how many times it failed, whether it has a record since), and the
      table of unreadable entries with theirs;
    * a grid of cards, a page at a time: a thumbnail of the source image and of
      the overlay (linked to the full overlay), the name and source, K, the
      eigengap K0, the silhouette, the background segment and its score (when
      the record has one), the image size, the time of each stage, links to
      the record, the mask and the explain figure ``<name>_explain.png``
      (where there is one), and the record's warnings (a missing overlay, a
      field that is not what it should be);
    * filtering by K, by silhouette, by text in the name or source and to the
      cards with warnings, and sorting by name, K, silhouette or time. The
      filters, the order and the page are kept in the address
      (``report.html#kmin=3&kmax=3&sort=sil-asc&page=2``; also ``smin``,
      ``smax``, ``q`` and ``warned=1``), so a view can be bookmarked.

    The folder is read defensively: a record that cannot be read or parsed,
    that is a symbolic link (never followed: nothing outside the folder is
    read through one), or that is not a JSON object is listed as an
    unreadable entry; missing fields are shown as missing; a missing mask,
    overlay or source image is a warning on its card. The source image is
    read (following links, as the run did) only to make its thumbnail, and
    only if its bytes still match the record's ``input_sha256``.

    Parameters
    ----------
    out_dir : str or path-like
        The output folder of :func:`~sklearn_clasp.collection.segment_collection`
        (or ``clasp segment``).
    path : str or path-like, default=None
        The page to write; ``None`` means ``out_dir / "report.html"``. Its
        thumbnails go into the folder ``<path stem>_files`` beside it.
    title : str, default=None
        The page's title; ``None`` means ``"CLASP report: <folder name>"``.
    thumbnail_size : int, default=256
        Longest side of the thumbnails, in pixels.
    page_size : int, default=48
        Cards per page.
    source_thumbnails : bool, default=True
        Make thumbnails of the source images (read from the records'
        ``source`` paths); ``False`` shows the overlays only.
    n_jobs : int, default=1
        Threads making thumbnails; ``-1`` uses all processors, ``-2`` all but
        one, and so on. At most :data:`~sklearn_clasp.device.MAX_N_JOBS`.

    Returns
    -------
    path : pathlib.Path
        The page written.

    Raises
    ------
    FileNotFoundError
        If ``out_dir`` does not exist.
    NotADirectoryError
        If ``out_dir`` is not a folder, or the thumbnail folder's name is taken
        by a file.
    IsADirectoryError
        If ``path`` is a folder.
    OSError
        If ``out_dir`` cannot be listed, or the page or a thumbnail folder
        cannot be written there.

    See Also
    --------
    sklearn_clasp.batch.segment_collection : Writes the folder.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from sklearn_clasp import make_clasp_pipeline, segment_collection
    >>> from sklearn_clasp.datasets import make_shapes_image
    >>> root = Path(tempfile.mkdtemp())
    >>> image, _ = make_shapes_image(56, 70, n_shapes=1)
    >>> Image.fromarray(image).save(root / "shapes.png")
    >>> _ = (root / "broken.png").write_bytes(b"not an image")
    >>> pipe = make_clasp_pipeline("handcrafted", refine="nearest", random_state=0)
    >>> _ = segment_collection(root, root / "out", pipeline=pipe, max_attempts=1)
    >>> page = write_report(root / "out")
    >>> page.name, sorted(p.name[-6:] for p in (root / "out" / "report_files").iterdir())
    ('report.html', ['.i.jpg', '.o.jpg'])
    >>> text = page.read_text(encoding="utf-8")
    >>> 'id="n-records" data-count="1"' in text, 'id="n-failed" data-count="1"' in text
    (True, True)
    """
    out_dir = Path(out_dir)
    if not out_dir.exists():
        raise FileNotFoundError(f"write_report: the folder {str(out_dir)!r} does not exist; "
                                f"pass the output folder of a run (clasp segment --out).")
    if not out_dir.is_dir():
        raise NotADirectoryError(f"write_report: {str(out_dir)!r} is not a folder; pass the "
                                 f"output folder of a run.")
    path = out_dir / "report.html" if path is None else Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"write_report: path {str(path)!r} is a folder; pass the "
                                f"file name of the page, e.g. {str(path / 'report.html')!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    thumbs = _thumbs_dir(path.with_name(f"{path.stem}_files"))
    if title is None:
        title = f"CLASP report: {Path(os.path.abspath(out_dir)).name}"

    folder = _read_folder(out_dir)
    records, unreadable, failures = folder["records"], folder["unreadable"], folder["failures"]
    made, reused = _thumbnails(folder, out_dir, thumbs, thumbnail_size=thumbnail_size,
                               source_thumbnails=source_thumbnails, n_jobs=n_jobs)
    n_failed_with_record = sum(1 for f in failures if "r" in f)
    n_failed = len(failures) - n_failed_with_record

    counts = Counter(r["k"] for r in records if "k" in r)
    n_warned = sum(1 for r in records if "w" in r)
    data = {
        "version": 1,
        "stages": folder["stages"],
        "thumbs": _url_prefix(thumbs, path.parent),
        "out": _url_prefix(out_dir, path.parent),
        "records": records,
        "failures": failures,
        "unreadable": unreadable,
        "counts": {"records": len(records), "failed": n_failed,
                   "failed_with_record": n_failed_with_record,
                   "unreadable": len(unreadable), "warned": n_warned},
    }
    summary = _summary_html(n_records=len(records), n_failed=n_failed,
                            n_failed_with_record=n_failed_with_record,
                            n_unreadable=len(unreadable), n_warned=n_warned,
                            seconds=folder["seconds"], run_ids=folder["run_ids"],
                            settings=folder["settings"], out_dir=out_dir)
    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
    page = _page(title=_text(title, 300), summary=summary,
                 histogram=_histogram_html(counts, len(records) - sum(counts.values())),
                 data_json=_json_for_script(data), page_size=page_size, generated=generated)
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8", newline="\n"))
    logger.info("wrote %s: %d record(s), %d failed, %d unreadable; %d thumbnail(s) made, "
                "%d reused", path, len(records), n_failed, len(unreadable), made, reused)
    return path


def _remove_unused(thumbs, used):
    """Remove the thumbnails the page no longer uses, and temporary files over an hour old."""
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(thumbs) as entries:
        for entry in entries:
            name = entry.name
            if _THUMB_RE.fullmatch(name):
                stale = name not in used
            elif _TEMP_RE.fullmatch(name):  # left by an interrupted report
                stale = False
                with contextlib.suppress(OSError):
                    stale = now - entry.stat(follow_symlinks=False).st_mtime > 3600
            else:
                continue
            if stale and (entry.is_file(follow_symlinks=False) or entry.is_symlink()):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
