"""Official DINOv2 checkpoints: where they live, how they are verified and loaded.

``weights=None`` means the official ``*_pretrain.pth`` file of the chosen
model. It is looked for, in this order, in

1. the directory named by the environment variable ``SKLEARN_CLASP_WEIGHTS``
   (if set), then
2. the torch hub checkpoint cache, ``torch.hub.get_dir()/checkpoints`` (where
   ``torch.hub.load("facebookresearch/dinov2", ...)`` puts it),

and is otherwise downloaded from the official URL into the first of these
(``SKLEARN_CLASP_WEIGHTS`` if set, else the hub cache). Official files are
always checked against their published SHA-256 before use. Downloads go
through :func:`torch.hub.download_url_to_file`, which writes a temporary file
beside the destination, checks its SHA-256 and only then renames it into
place (a progress bar on stderr where wanted). Nothing here touches the network
unless a download is needed and allowed.

Weight files are untrusted input. :func:`load_checkpoint` opens a file once
(a regular file only, never blocking on a pipe or reading a device), checks the
SHA-256 of the open file (so that it cannot be swapped between the check and
the load), checks the sizes the file declares against the chosen model before
any tensor data is read (a small file that would decompress to gigabytes is
refused unread), and parses it with ``torch.load(..., weights_only=True)`` (or,
for ``.safetensors`` files, with the optional ``safetensors`` package), which
refuses pickled objects that could run code. Only a plain state dict of
floating-point tensors with finite values is accepted, and its key names and
shapes are checked against the chosen model before anything is copied.

The SHA-256 digests and sizes below are those of the files served at the
official URLs, as recorded by independent projects (finegrain-ai/refiners
``src/refiners/conversion/models/dinov2.py`` lists all eight; each one is
corroborated by at least one other project pinning the same file).
"""

from __future__ import annotations

import collections
import io
import logging
import math
import os
import pickle
import re
import socket
import sys
import threading
import urllib.error
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch

from ..io import open_regular, refusal, sha256_of_stream
from ._vit import MODEL_CONFIGS, build_dinov2

__all__ = [
    "WeightsInfo",
    "OFFICIAL_WEIGHTS",
    "WEIGHTS_ENV_VAR",
    "WeightsUnavailableError",
    "ChecksumMismatchError",
    "UnsafeCheckpointError",
    "CheckpointTooLargeError",
    "MAX_PICKLE_BYTES",
    "official_weights",
    "hub_checkpoint_dir",
    "find_official_weights",
    "resolve_weights",
    "download_weights",
    "file_sha256",
    "verify_file",
    "load_checkpoint",
    "load_state_dict_strict",
    "model_tensor_bytes",
]

logger = logging.getLogger(__name__)

#: Environment variable naming a directory that holds weight files.
WEIGHTS_ENV_VAR = "SKLEARN_CLASP_WEIGHTS"

_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"


@dataclass(frozen=True)
class WeightsInfo:
    """One official checkpoint file.

    Attributes
    ----------
    model : str
        The torch hub entry name, e.g. ``"dinov2_vits14_reg"``.
    filename : str
        File name, e.g. ``"dinov2_vits14_reg4_pretrain.pth"``.
    url : str
        Official download URL.
    sha256 : str or None
        SHA-256 of the file; ``None`` where unknown (a download then needs an
        explicit hash or an explicit opt-in).
    size : int or None
        Size in bytes, where known.
    """

    model: str
    filename: str
    url: str
    sha256: str | None
    size: int | None = None


def _info(model, sha256, size):
    arch = model.split("_")[1]  # "vits14"
    reg = "_reg4" if model.endswith("_reg") else ""
    filename = f"dinov2_{arch}{reg}_pretrain.pth"
    return WeightsInfo(model, filename, f"{_BASE_URL}/dinov2_{arch}/{filename}", sha256, size)


#: The official checkpoint of every backbone, by torch hub entry name.
OFFICIAL_WEIGHTS = {
    w.model: w
    for w in (
        _info("dinov2_vits14",
              "b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9", 88_283_115),
        _info("dinov2_vits14_reg",
              "f433177089a681826f849f194ece3bb48f4d63fb38d32fc837e3dc7a4e5641fb", 88_291_785),
        _info("dinov2_vitb14",
              "0b8b82f85de91b424aded121c7e1dcc2b7bc6d0adeea651bf73a13307fad8c73", 346_378_731),
        _info("dinov2_vitb14_reg",
              "73182a088cf94833c94b1666d1c99e02fe87e2007bff57b564fb6206e25dba71", 346_393_545),
        _info("dinov2_vitl14",
              "d5383ea8f4877b2472eb973e0fd72d557c7da5d3611bd527ceeb1d7162cbf428", 1_217_586_395),
        _info("dinov2_vitl14_reg",
              "36e4deffbaef061a2576705b0c36f93621e2ae20bf6274694821b0b492551b51", 1_217_607_321),
        _info("dinov2_vitg14",
              "baf8467e50af277596bbbafa06887c177ee899ab46033649c383577d7e9309d3", 4_546_108_579),
        _info("dinov2_vitg14_reg",
              "746ecb8c6301c645c5c855be91687d274587d6e48fdaec4a729753160b34a283", 4_546_140_349),
    )
}
assert set(OFFICIAL_WEIGHTS) == set(MODEL_CONFIGS)


class WeightsUnavailableError(FileNotFoundError):
    """The weight file is not on disk and could not (or may not) be downloaded."""


class ChecksumMismatchError(ValueError):
    """A weight file's SHA-256 differs from the expected one."""


class UnsafeCheckpointError(ValueError):
    """A weight file holds pickled objects or code beyond tensors; it was not loaded.

    The restricted unpickler of ``torch.load(..., weights_only=True)`` stops
    at the first object that is not a tensor or a plain container, without
    calling anything the file names.
    """


class CheckpointTooLargeError(ValueError):
    """A weight file declares more data than the chosen model's tensors can hold; unread.

    Raised from the sizes in the file's directory (and its pickle), before any
    tensor data is read or decompressed: the guard against checkpoint
    decompression bombs, small files that would expand to gigabytes.
    """


def official_weights(model):
    """The :class:`WeightsInfo` of a model's official checkpoint.

    Parameters
    ----------
    model : str
        Torch hub entry name, e.g. ``"dinov2_vits14_reg"``.

    Returns
    -------
    info : WeightsInfo

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known ones.
    """
    try:
        return OFFICIAL_WEIGHTS[model]
    except KeyError:
        raise ValueError(
            f"unknown DINOv2 model {model!r}; choose one of {sorted(OFFICIAL_WEIGHTS)}"
        ) from None


def hub_checkpoint_dir() -> Path:
    """The torch hub checkpoint cache, ``torch.hub.get_dir()/checkpoints``.

    Returns
    -------
    directory : Path
        Not created if missing.
    """
    return Path(torch.hub.get_dir()) / "checkpoints"


def _env_dir():
    value = os.environ.get(WEIGHTS_ENV_VAR)
    return Path(value).expanduser() if value else None


def _check_sha256_string(sha256, name="weights_sha256"):
    if sha256 is None:
        return None
    s = str(sha256).strip().lower()
    if len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
        raise ValueError(f"{name} must be 64 hexadecimal digits (a SHA-256); got {sha256!r}")
    return s


# SHA-256 of files already hashed in this process, keyed by what identifies a
# file's content without reading it: (device, inode, size, mtime_ns, ctime_ns).
# ctime cannot be set back by a user, so a rewrite always changes the key.
_DIGEST_MEMO: dict = {}
_DIGEST_MEMO_SIZE = 64
_DIGEST_LOCK = threading.Lock()


def _stat_key(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _handle_sha256(fh):
    """SHA-256 of the open binary file ``fh`` from its start (remembered per file state)."""
    key = _stat_key(os.fstat(fh.fileno()))
    with _DIGEST_LOCK:
        digest = _DIGEST_MEMO.get(key)
    if digest is None:
        fh.seek(0)
        digest = sha256_of_stream(fh)
        if _stat_key(os.fstat(fh.fileno())) == key:  # not written to while hashed
            with _DIGEST_LOCK:
                while len(_DIGEST_MEMO) >= _DIGEST_MEMO_SIZE:
                    _DIGEST_MEMO.pop(next(iter(_DIGEST_MEMO)))
                _DIGEST_MEMO[key] = digest
    return digest


def _not_regular_error(label, kind, path, model):
    if kind == "a directory":
        if model is not None:
            info = official_weights(model)
            fix = (f"Pass a checkpoint file in it (e.g. {Path(path) / info.filename}), or set "
                   f"{WEIGHTS_ENV_VAR}={path} to have the official {model} file looked for "
                   f"there.")
        else:
            fix = "Pass a checkpoint file in it."
    else:
        fix = "Pass the path of a checkpoint file."
    return ValueError(
        f"{label} is {kind}, not a weights file: weights are read from regular files only, "
        f"and nothing was read from it. {fix}"
    )


def _open_weights(path, label, *, model=None, missing_hint=""):
    """``path`` opened for binary reading if it is a regular file; else a clear error.

    The file is opened without blocking (see :func:`~sklearn_clasp.io.open_regular`):
    a named pipe or a device is refused before anything is read from it.
    """
    path = os.fspath(path)
    refuse = refusal(label, "file", not_regular=lambda kind: _not_regular_error(
        label, kind, path, model), fix="pass another file", missing=WeightsUnavailableError,
        hint=missing_hint)
    return open_regular(path, refuse)[0]


def file_sha256(path) -> str:
    """SHA-256 of a file, hex.

    The digest is remembered for the process, keyed by the file's device,
    inode, size, modification and status-change times, so re-verifying an
    unchanged file is free; any change to the file invalidates it. A
    directory, a named pipe or a device is refused (``ValueError``) without
    being read, and never blocks.

    Parameters
    ----------
    path : path-like
        The file.

    Returns
    -------
    digest : str
        64 lowercase hexadecimal digits.
    """
    with _open_weights(path, f"weights file {os.fspath(path)}") as fh:
        return _handle_sha256(fh)


def _mismatch_error(name, actual, expected, what, advice):
    return ChecksumMismatchError(
        f"{what} {name} has SHA-256 {actual}, expected {expected}. {advice}"
    )


_VERIFY_ADVICE = (
    "The file is corrupt, truncated or not the expected checkpoint: delete it and let it "
    "be downloaded again, or pass weights=PATH (with the matching weights_sha256) to use "
    "another file deliberately."
)


def verify_file(path, sha256, *, what="weights file"):
    """Check that a file has the SHA-256 ``sha256``.

    Parameters
    ----------
    path : path-like
        The file.
    sha256 : str
        Expected digest, 64 hexadecimal digits.
    what : str, default="weights file"
        How to call the file in the error message.

    Returns
    -------
    digest : str
        The file's SHA-256 (equal to ``sha256``).

    Raises
    ------
    ChecksumMismatchError
        If the digests differ; the message gives both.
    """
    sha256 = _check_sha256_string(sha256, "sha256")
    actual = file_sha256(path)
    if actual != sha256:
        raise _mismatch_error(os.fspath(path), actual, sha256, what, _VERIFY_ADVICE)
    return actual


def _download_url_to_file(url, dst, hash_prefix=None, progress=True):
    """:func:`torch.hub.download_url_to_file`: the only place this module reaches the network."""
    torch.hub.download_url_to_file(url, dst, hash_prefix=hash_prefix, progress=progress)


# torch's download helper opens its connection without a timeout; the process-wide
# default socket timeout is set (where none is) for the duration of a download, one
# download at a time
_DOWNLOAD_LOCK = threading.Lock()


@contextmanager
def _default_socket_timeout(seconds):
    with _DOWNLOAD_LOCK:
        previous = socket.getdefaulttimeout()
        if previous is None and seconds is not None:
            socket.setdefaulttimeout(seconds)
        try:
            yield
        finally:
            socket.setdefaulttimeout(previous)


def _show_progress(progress):
    """``progress``, or for ``None``: stderr is a terminal and warnings are not silenced."""
    if progress is not None:
        return bool(progress)
    if not logger.isEnabledFor(logging.WARNING):  # e.g. ``clasp -q``: errors only
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


_TORCH_HASH_ERROR = re.compile(r'invalid hash value \(expected "([0-9a-f]*)", got "([0-9a-f]*)"\)')


def download_weights(url, dest, *, sha256=None, allow_unverified=False, timeout=60.0,
                     progress=None):
    """Download ``url`` to ``dest`` atomically, verifying its SHA-256.

    The download is done by :func:`torch.hub.download_url_to_file`: the data
    are written to a temporary file beside ``dest`` (``<dest>.<random>.partial``),
    hashed while written, and renamed to ``dest`` only if the digest matches
    ``sha256`` (the full 64-digit digest is passed as torch's ``hash_prefix``);
    on any failure, an interruption included, the temporary file is removed
    and ``dest`` is left as it was.

    Parameters
    ----------
    url : str
        Where to download from.
    dest : path-like
        Final file path; its directory is created if needed.
    sha256 : str or None, default=None
        Expected SHA-256. ``None`` is refused unless ``allow_unverified=True``.
    allow_unverified : bool, default=False
        Accept a download whose digest cannot be checked.
    timeout : float or None, default=60.0
        Seconds a connection may stall. Torch's helper sets no timeout of its
        own, so while the download runs this is the process-wide default
        socket timeout (:func:`socket.setdefaulttimeout`), unless one is set
        already; ``None`` waits for ever.
    progress : bool or None, default=None
        Draw a progress bar on stderr. ``None``: when stderr is a terminal and
        warnings from this package are not silenced (``clasp -q`` silences
        them).

    Returns
    -------
    digest : str
        SHA-256 of the downloaded file.

    Raises
    ------
    ChecksumMismatchError
        If the downloaded data have another SHA-256 (nothing is kept).
    urllib.error.URLError, OSError
        If the download fails (offline, HTTP error, timeout).
    """
    sha256 = _check_sha256_string(sha256, "sha256")
    dest = Path(dest)
    if sha256 is None and not allow_unverified:
        raise ValueError(
            f"refusing to download {url} without a SHA-256 to check it against: pass "
            f"weights_sha256='<64 hex digits>' (or allow_unverified=True to accept an "
            f"unverified file)"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s to %s", url, dest)
    try:
        with _default_socket_timeout(timeout):
            _download_url_to_file(url, os.fspath(dest), hash_prefix=sha256,
                                  progress=_show_progress(progress))
    except RuntimeError as exc:
        match = _TORCH_HASH_ERROR.search(str(exc))
        if match is None:
            raise
        raise ChecksumMismatchError(
            f"download of {url} has SHA-256 {match.group(2)}, expected {sha256}; the file "
            f"was discarded. Retry; if it persists, the file on the server changed."
        ) from None
    if sha256 is None:
        digest = file_sha256(dest)
        logger.warning("accepted unverified download %s (SHA-256 %s)", url, digest)
    else:
        digest = sha256
    logger.info("downloaded %s (%d bytes, SHA-256 %s)", dest, dest.stat().st_size, digest)
    return digest


def _offline_message(info, reason):
    env = _env_dir()
    hub = hub_checkpoint_dir() / info.filename
    return (
        f"the weights of {info.model} ({info.filename}) are not on this machine and "
        f"{reason}. Provide the file in one of three ways:\n"
        f"  1. put it in the torch hub cache: {hub}\n"
        f"     (download {info.url})\n"
        f"  2. pass weights='/path/to/{info.filename}'\n"
        f"  3. set the environment variable {WEIGHTS_ENV_VAR} to a directory holding "
        f"{info.filename}"
        + (f" (now {env}, where it is missing)" if env is not None else "")
    )


def find_official_weights(model):
    """Path of the official file of ``model`` if present locally, else ``None``.

    Looks in ``$SKLEARN_CLASP_WEIGHTS`` then the torch hub cache; does not
    verify (see :func:`resolve_weights`).

    Parameters
    ----------
    model : str
        Torch hub entry name.

    Returns
    -------
    path : Path or None
    """
    info = official_weights(model)
    for directory in (_env_dir(), hub_checkpoint_dir()):
        if directory is not None and (directory / info.filename).is_file():
            return directory / info.filename
    return None


def _check_user_file(model, path, digest):
    """Log what a user-given file is; refuse the official file of another model."""
    info = official_weights(model)
    official = {w.sha256: w.model for w in OFFICIAL_WEIGHTS.values() if w.sha256}.get(digest)
    if official == model:
        logger.info("weights file %s is the official %s checkpoint (SHA-256 %s)", path,
                    model, digest)
    elif official is not None:
        raise ValueError(
            f"weights file {path} is the official {official} checkpoint (by its SHA-256), "
            f"not that of {model}: pass model={official!r}, or the {model} file "
            f"({info.filename})."
        )
    else:
        logger.info("weights file %s: SHA-256 %s (not an official checkpoint; its keys and "
                    "shapes are checked against %s)", path, digest, model)
        if path.name == info.filename:
            logger.warning(
                "%s is named like the official %s file but its SHA-256 %s differs from the "
                "published %s; it is loaded as a user file", path, model, digest, info.sha256)


def resolve_weights(model, weights=None, *, weights_sha256=None, download=True,
                    allow_unverified=False, progress=None):
    """Find (and if needed download) a weight file, verified.

    Parameters
    ----------
    model : str
        Model name (see :data:`OFFICIAL_WEIGHTS`).
    weights : path-like or None, default=None
        ``None``: the official file of ``model`` (local, else downloaded). A
        path: that file.
    weights_sha256 : str or None, default=None
        Expected SHA-256. For ``weights=None`` it overrides the table (needed
        only where the table has none); for a path it is checked if given.
    download : bool, default=True
        Whether a missing official file may be downloaded.
    allow_unverified : bool, default=False
        Accept a download that no SHA-256 is known for.
    progress : bool or None, default=None
        Progress bar of a download (see :func:`download_weights`).

    Returns
    -------
    path : Path
        The file, verified where a digest is known.
    sha256 : str
        Its SHA-256.

    Raises
    ------
    WeightsUnavailableError
        If the file is missing and may not or cannot be downloaded.
    ChecksumMismatchError
        If a file's SHA-256 differs from the expected one (nothing is read
        from it).
    ValueError
        If ``weights`` is the official file of another model (recognised by
        its SHA-256), or is a directory, a named pipe or a device (refused
        without reading from it).

    Notes
    -----
    The SHA-256 of a file passed as ``weights`` is logged (INFO level); a
    file whose digest is that of the official checkpoint of ``model`` is
    thereby verified even without ``weights_sha256``.
    """
    weights_sha256 = _check_sha256_string(weights_sha256)
    if weights is not None:
        path = Path(os.fspath(weights)).expanduser()
        hint = (f" Pass the path of a DINOv2 checkpoint (.pth), weights=None for the "
                f"official file of {model}, or weights='random'.")
        with _open_weights(path, f"weights={os.fspath(weights)!r}", model=model,
                           missing_hint=hint) as fh:
            digest = _handle_sha256(fh)
        if weights_sha256 is not None and digest != weights_sha256:
            raise _mismatch_error(os.fspath(path), digest, weights_sha256, "weights file",
                                  _VERIFY_ADVICE)
        _check_user_file(model, path, digest)
        return path, digest

    info = official_weights(model)
    expected = weights_sha256 or info.sha256
    path = find_official_weights(model)
    if path is not None:
        if expected is None:
            logger.warning(
                "no SHA-256 known for %s; using %s unverified", info.filename, path
            )
            return path, file_sha256(path)
        logger.debug("verifying %s", path)
        return path, verify_file(path, expected, what=f"official {model} weights file")

    if not download:
        raise WeightsUnavailableError(_offline_message(info, "download=False forbids fetching it"))
    dest = (_env_dir() or hub_checkpoint_dir()) / info.filename
    try:
        digest = download_weights(info.url, dest, sha256=expected,
                                  allow_unverified=allow_unverified, progress=progress)
    except (urllib.error.URLError, OSError) as exc:  # offline, DNS, HTTP error, timeout
        raise WeightsUnavailableError(
            _offline_message(info, f"downloading it failed ({exc})")
        ) from exc
    return dest, digest


_SAFETENSORS_SUFFIX = ".safetensors"

# what torch's weights_only refusal says was refused, most specific first
_REFUSAL_REASONS = (
    re.compile(r"Unsupported global: GLOBAL \S+ was not an allowed global by default"),
    re.compile(r"Trying to load unsupported GLOBAL \S+ whose module \S+ is blocked"),
    re.compile(r"Unsupported operand \d+"),
    re.compile(r"Cannot use ``weights_only=True`` with TorchScript archives"),
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _truncate(text, limit):
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _brief(text, limit=200):
    """``text`` on one line, at most ``limit`` characters."""
    return _truncate(" ".join(str(text).split()), limit)


def _refusal_reason(exc):
    """The part of torch's weights_only refusal that says what was refused."""
    text = _ANSI.sub("", str(exc))
    for pattern in _REFUSAL_REASONS:
        match = pattern.search(text)
        if match:
            return match.group(0)
    return "objects other than tensors"


def _unsafe_error(name, exc):
    return UnsafeCheckpointError(
        f"refused to load weights file {name}: it holds pickled Python objects or code "
        f"besides tensors, which could run arbitrary code when loaded ({_refusal_reason(exc)}). "
        f"Nothing from it was executed: weights files are only read with torch.load("
        f"weights_only=True). Use a plain state dict of tensors (saved with "
        f"torch.save(model.state_dict(), path)) or a .safetensors file from a source you "
        f"trust."
    )


def _corrupt_error(name, exc):
    detail = f"{type(exc).__name__}: {_brief(exc)}" if str(exc) else type(exc).__name__
    return ValueError(
        f"could not read weights file {name}: it is corrupt, truncated or not a PyTorch "
        f"checkpoint ({detail}). Copy or download it again, or pass another file."
    )


def _read_torch(fh, name):
    try:
        with warnings.catch_warnings():
            # torch's notes on pickle protocols and TorchScript dispatch; the
            # error raised below says what matters
            warnings.filterwarnings("ignore", message=".*(pickle protocol|TorchScript)",
                                    category=UserWarning)
            return torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise _unsafe_error(name, exc) from None
        raise _corrupt_error(name, exc) from exc
    except Exception as exc:  # truncated zip, EOF, unknown format, TorchScript
        if "weights_only" in str(exc):
            raise _unsafe_error(name, exc) from None
        raise _corrupt_error(name, exc) from exc


def _read_safetensors(fh, name):
    try:
        from safetensors.torch import load as load_safetensors
    except ImportError:
        raise ImportError(
            f"weights file {name} is a .safetensors file, which needs the optional "
            f"safetensors package: pip install safetensors (or pass a .pth state dict)"
        ) from None
    try:
        return load_safetensors(fh.read())
    except Exception as exc:  # bad header, truncated data
        raise _corrupt_error(name, exc) from exc


# --------------------------------------------------------------------------
# what a file declares, read before any tensor data
# --------------------------------------------------------------------------

#: Largest pickle (``data.pkl`` of a ``torch.save`` archive) that is parsed, in
#: bytes. The official files' pickles take 24 kB (ViT-S) to about 100 kB
#: (ViT-g); a larger one is refused unread.
MAX_PICKLE_BYTES = 4 << 20
# records of a torch.save archive besides the pickle and the tensor data
# (version, byteorder, serialization id, ...): a few bytes each
_SMALL_RECORDS_BYTES = 64 << 10
_ZIP_MAGIC = b"PK\x03\x04"


def _format_bytes(n):
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


@lru_cache(maxsize=None)
def model_tensor_bytes(model=None):
    """Bytes that the tensors of ``model`` take in float32: the most a checkpoint may hold.

    Parameters
    ----------
    model : str or None, default=None
        Torch hub entry name; ``None``: the largest official model.

    Returns
    -------
    n_bytes : int

    Examples
    --------
    >>> model_tensor_bytes("dinov2_vits14")
    88226304
    """
    if model is None:
        return max(model_tensor_bytes(name) for name in MODEL_CONFIGS)
    return 4 * sum(math.prod(shape) for shape in _expected_shapes(model).values())


class _StorageType(NamedTuple):
    dtype: torch.dtype


class _StorageRef(NamedTuple):
    key: str
    dtype: torch.dtype
    numel: int


class _TensorRef(NamedTuple):
    storage: _StorageRef
    shape: tuple


class _Unscannable(Exception):
    """The pickle holds something the declaration scan does not model (torch decides)."""


def _storage_types():
    """``torch.<Name>Storage`` (as a pickle names it) -> its dtype."""
    out = {"UntypedStorage": _StorageType(torch.uint8)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the typed storages' deprecation notice
        for name in dir(torch):
            if name.endswith("Storage") and name not in ("Storage", "TypedStorage",
                                                         "UntypedStorage"):
                dtype = getattr(getattr(torch, name), "dtype", None)
                if isinstance(dtype, torch.dtype):
                    out[name] = _StorageType(dtype)
    return out


_STORAGE_TYPES = _storage_types()


def _rebuild_tensor_ref(storage, storage_offset, size, stride, *args):
    if not isinstance(storage, _StorageRef):
        raise _Unscannable("tensor without a storage")
    return _TensorRef(storage, tuple(int(n) for n in size))


def _rebuild_parameter_ref(data, *args):
    if not isinstance(data, _TensorRef):
        raise _Unscannable("parameter of something else than a tensor")
    return data


# the names a plain state dict's pickle refers to, and what the scan makes of them
_SCANNED_NAMES = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_ref,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter_ref,
}


class _DeclarationScanner(pickle.Unpickler):
    """Reads a ``torch.save`` pickle into key -> (shape, storage) without any tensor data.

    Only the few names that a plain state dict refers to resolve, each to a
    harmless stand-in that records what the file declares; any other name stops
    the scan (and ``torch.load(weights_only=True)`` then judges the file).
    """

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_TYPES:
            return _STORAGE_TYPES[name]
        try:
            return _SCANNED_NAMES[module, name]
        except KeyError:
            raise _Unscannable(f"{module}.{name}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[4], int)):
            raise _Unscannable("unknown persistent id")
        return _StorageRef(str(pid[2]), pid[1].dtype, int(pid[4]))


def _scan_declarations(data):
    """``{key: _TensorRef}`` declared by a pickle, or ``None`` if it is not a plain state dict."""
    try:
        obj = _DeclarationScanner(io.BytesIO(data)).load()
    except Exception:  # anything unusual: torch.load judges the file (and names what it refuses)
        return None
    if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, _TensorRef) for k, v in obj.items()):
        return None
    return dict(obj)


# dtypes accepted in a weights file: float32 as is; half precision converted (lossless)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def _dtype_error(name, key, dtype, n_bad, n_all):
    which = f"{key!r}" + (f" and {n_bad - 1} more" if n_bad > 1 else "") + f", of {n_all}"
    if dtype == torch.float64:
        fix = ("A float64 file is twice the size of the model's checkpoint: save it as "
               "float32, {k: v.float() for k, v in state_dict.items()}, and pass that file.")
    else:
        fix = ("Integer, boolean, complex or quantised values are not weights that the "
               "model can use as they are: pass the float32 checkpoint.")
    return ValueError(
        f"weights file {name} holds {_dtype_name(dtype)} tensors ({which}): DINOv2 weights "
        f"in the official layout are float32 (float16 and bfloat16 are converted, with a "
        f"warning). {fix}"
    )


def _check_dtypes(name, dtypes):
    """Refuse any dtype other than float32, float16, bfloat16 (``dtypes``: key -> dtype)."""
    bad = {k: d for k, d in dtypes.items()
           if d != torch.float32 and d not in _HALF_DTYPES}
    if bad:
        key = next(iter(bad))
        raise _dtype_error(name, key, bad[key], len(bad), len(dtypes))


def _too_large_error(name, what, declared, budget, model, detail=""):
    target = f"the tensors of {model}" if model else "the tensors of the largest DINOv2 model"
    return CheckpointTooLargeError(
        f"refused weights file {name} before reading its tensors: {what} "
        f"{_format_bytes(declared)}{detail}, but {target} take {_format_bytes(budget)} in "
        f"float32, and a checkpoint holds no more. The file is damaged, not a checkpoint of "
        f"this model, or made to exhaust memory (a decompression bomb)."
    )


def _check_archive(fh, name, model):
    """Check a ``torch.save`` zip archive's declared sizes before any tensor is read.

    Reads the zip directory and the pickle (at most :data:`MAX_PICKLE_BYTES`)
    only. Refuses an archive whose records declare more than the model's
    float32 tensors take, whose pickle declares storages of other sizes than
    its records, or (a plain state dict) whose keys, shapes or dtypes do not
    fit the model.
    """
    budget = model_tensor_bytes(model)
    try:
        with zipfile.ZipFile(fh) as archive:
            infos = archive.infolist()
            names = collections.Counter(i.filename for i in infos)
            twice = [n for n, c in names.items() if c > 1]
            if twice:
                raise ValueError(
                    f"could not read weights file {name}: its zip archive holds "
                    f"{_brief(twice[0], 80)!r} {names[twice[0]]} times; torch.save never "
                    f"writes such a file. Copy or download it again."
                )
            if not infos:
                raise zipfile.BadZipFile("an empty zip archive")
            prefix = infos[0].filename.split("/", 1)[0] + "/"
            pickle_info = next((i for i in infos if i.filename == prefix + "data.pkl"), None)
            if pickle_info is None:
                raise zipfile.BadZipFile(f"no {prefix}data.pkl in the archive")
            if pickle_info.file_size > MAX_PICKLE_BYTES:
                raise CheckpointTooLargeError(
                    f"refused weights file {name} before reading it: its pickle "
                    f"({pickle_info.filename}) declares {_format_bytes(pickle_info.file_size)}, "
                    f"more than the {_format_bytes(MAX_PICKLE_BYTES)} read from any "
                    f"checkpoint (a state dict's pickle takes some kilobytes). The file is "
                    f"damaged or made to exhaust memory."
                )
            records = {i.filename: i for i in infos if i is not pickle_info}
            declared = sum(i.file_size for i in records.values())
            tensors = _scan_declarations(archive.read(pickle_info))
            if tensors is not None and model is not None:
                shapes = {k: v.shape for k, v in tensors.items()}
                message = _mismatch_message(_expected_shapes(model), shapes, model,
                                            f"weights file {name}")
                if message is not None:
                    raise ValueError(message)
            if tensors is not None:
                _check_dtypes(name, {k: v.storage.dtype for k, v in tensors.items()})
            if declared > budget + _SMALL_RECORDS_BYTES:
                biggest = max(records.values(), key=lambda i: i.file_size)
                detail = (f" (the largest, {biggest.filename}: "
                          f"{_format_bytes(biggest.file_size)}, stored in "
                          f"{_format_bytes(biggest.compress_size)})")
                raise _too_large_error(name, "its records declare", declared, budget, model,
                                       detail)
            if tensors is not None:
                storages = {v.storage.key: v.storage for v in tensors.values()}
                for ref in storages.values():
                    nbytes = ref.numel * torch.empty((), dtype=ref.dtype).element_size()
                    record = records.get(f"{prefix}data/{ref.key}")
                    if record is None or record.file_size != nbytes:
                        size = "missing" if record is None else f"{record.file_size} bytes"
                        raise ValueError(
                            f"could not read weights file {name}: its pickle declares "
                            f"storage {ref.key!r} of {nbytes} bytes, but its record "
                            f"{prefix}data/{_brief(ref.key, 40)} is {size}. The file is "
                            f"corrupt: copy or download it again."
                        )
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, KeyError,
            NotImplementedError, RuntimeError) as exc:
        # truncated or malformed archive; NotImplementedError: an unsupported
        # compression method; RuntimeError: an encrypted entry
        raise _corrupt_error(name, exc) from exc


def _is_pickle(head):
    """``head`` opens a pickle of protocol 2 to 5 (legacy ``torch.save`` files are such)."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _not_a_checkpoint_error(name, head):
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # not text, unless only the last character is cut
        text = head[:exc.start].decode("utf-8") if exc.start >= len(head) - 3 else ""
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (100 << 20):
        what = "; it looks like a .safetensors file: give it the .safetensors suffix"
    elif text and all(c.isprintable() or c in "\t\r\n" for c in text):
        what = f"; it is text, starting {_brief(text, 40)!r}"
    else:
        what = f"; it starts with the bytes {head[:8].hex(' ')}"
    return ValueError(
        f"could not read weights file {name}: it is not a PyTorch checkpoint (a zip archive "
        f"written by torch.save, or a pickle){what}. Pass a checkpoint file (.pth or "
        f".safetensors)."
    )


def _check_tensors(name, state_dict):
    """Refuse non-float, non-dense or non-finite tensors; convert half precision to float32."""
    odd = next((k for k, v in state_dict.items()
                if v.layout != torch.strided or v.is_quantized or v.device.type != "cpu"), None)
    if odd is not None:
        t = state_dict[odd]
        raise ValueError(
            f"weights file {name}: tensor {odd!r} is not a plain dense tensor (layout "
            f"{t.layout}, device {t.device}{', quantised' if t.is_quantized else ''}); "
            f"save the state dict of a float32 model on the CPU and pass that file."
        )
    _check_dtypes(name, {k: v.dtype for k, v in state_dict.items()})
    half = {k: v.dtype for k, v in state_dict.items() if v.dtype in _HALF_DTYPES}
    if half:
        kinds = " and ".join(sorted({_dtype_name(d) for d in half.values()}))
        warnings.warn(
            f"weights file {name} holds {kinds} tensors ({len(half)} of {len(state_dict)}); "
            f"they are converted to float32. The features differ slightly from those of "
            f"the float32 checkpoint.",
            UserWarning, stacklevel=4,
        )
        state_dict = {k: v.float() if k in half else v for k, v in state_dict.items()}
    bad = []
    for key, value in state_dict.items():
        if not bool(torch.isfinite(value).all()):
            bad.append(key)
    if bad:
        t = state_dict[bad[0]]
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        n_more = len(bad) - 1
        more = f", and {n_more} more tensor{'s' if n_more > 1 else ''} too" if n_more else ""
        raise ValueError(
            f"weights file {name}: tensor {bad[0]!r} has {n_nan} NaN and {n_inf} infinite "
            f"values (of {t.numel()}){more}. Such weights make every feature NaN: the "
            f"file is damaged or was saved from a diverged model. Pass another checkpoint."
        )
    return state_dict


def load_checkpoint(path, *, sha256=None, model=None):
    """Read a weight file safely into a state dict of float32 tensors on CPU.

    The file is opened once (a regular file only: a directory, named pipe or
    device is refused without being read, and opening never blocks); if
    ``sha256`` is given, the open file is hashed and checked before anything
    in it is parsed, so it cannot be replaced between the check and the load.
    Before any tensor data is read, the sizes the file declares are checked
    (see Notes). ``.safetensors`` files are read with the optional
    ``safetensors`` package; anything else with
    ``torch.load(..., weights_only=True)``, which refuses pickled objects
    that could run code (arbitrary classes, functions, TorchScript). The
    tensors read must be dense, floating point and finite.

    Parameters
    ----------
    path : path-like
        A ``.pth``/``.pt`` file holding a plain state dict (``torch.save``
        of ``model.state_dict()``), or a ``.safetensors`` file.
    sha256 : str or None, default=None
        Expected SHA-256 of the file.
    model : str or None, default=None
        The model the weights are for (a torch hub entry name). Its tensors'
        float32 size bounds what the file may declare, and a plain state
        dict's key names and shapes are checked against it before any tensor
        data is read. ``None``: the largest official model's size is the
        bound, and no names or shapes are checked.

    Returns
    -------
    state_dict : dict of str to torch.Tensor
        float32 tensors (float16 and bfloat16 ones are converted, with a
        warning).

    Raises
    ------
    WeightsUnavailableError
        If the file does not exist.
    ChecksumMismatchError
        If the file's SHA-256 is not ``sha256`` (nothing is parsed).
    UnsafeCheckpointError
        If the file holds pickled objects other than tensors (nothing from it
        is executed).
    CheckpointTooLargeError
        If the file declares more data than the model's tensors take (nothing
        is read or decompressed).
    ValueError
        If the path is not a regular file; if the file is empty, corrupt,
        truncated or not a checkpoint at all; if it is not a plain state dict
        of tensors with string keys; if its names or shapes do not fit
        ``model``; if a tensor is not floating point (int8, say), is float64,
        or holds NaN or infinite values (the message names the tensor).
    ImportError
        For a ``.safetensors`` file without the ``safetensors`` package.

    Notes
    -----
    What is checked before any tensor data is read or decompressed:

    - a ``torch.save`` archive (a zip file): its directory may not name an
      entry twice; its pickle may not exceed :data:`MAX_PICKLE_BYTES`; the
      uncompressed sizes of its other records may not add up to more than
      :func:`model_tensor_bytes` (plus 64 KiB for the few-byte records such
      as the version); and where the pickle is a plain state dict (read by
      a scanner that resolves no name beyond the tensor-building ones), each
      storage it declares must have exactly the size of its record, and the
      key names, shapes and dtypes must fit the model;
    - any other file (the legacy ``torch.save`` format, a bare pickle, a
      ``.safetensors`` file, none of which can be compressed): its size may
      not exceed :func:`model_tensor_bytes` plus :data:`MAX_PICKLE_BYTES`.

    A file that is none of these (text, say) is refused as not a checkpoint
    without being parsed.
    """
    name = os.fspath(path)
    expected = _check_sha256_string(sha256, "sha256")
    with _open_weights(name, f"weights file {name}", model=model) as fh:
        if expected is not None:
            actual = _handle_sha256(fh)
            if actual != expected:
                raise _mismatch_error(
                    name, actual, expected, "weights file",
                    "It changed since it was checked, or is not the expected file; it was "
                    "not loaded.")
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise ValueError(f"could not read weights file {name}: it is empty (0 bytes). "
                             f"Copy or download it again.")
        fh.seek(0)
        head = fh.read(16)
        fh.seek(0)
        safetensors = name.lower().endswith(_SAFETENSORS_SUFFIX)
        if head.startswith(_ZIP_MAGIC) and not safetensors:
            _check_archive(fh, name, model)
            fh.seek(0)
        elif not safetensors and not _is_pickle(head):
            raise _not_a_checkpoint_error(name, head)
        elif size > model_tensor_bytes(model) + MAX_PICKLE_BYTES:
            raise _too_large_error(name, "it is", size, model_tensor_bytes(model), model)
        obj = _read_safetensors(fh, name) if safetensors else _read_torch(fh, name)
    if not isinstance(obj, dict) or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        if isinstance(obj, dict):
            top = "keys " + ", ".join(_brief(repr(k), 60) for k in list(obj)[:5])
        else:
            top = f"a {type(obj).__name__}"
        raise ValueError(
            f"{name} is not a plain state dict of tensors with string keys (top level: "
            f"{top}). "
            f"If it is a training checkpoint, save its backbone's state_dict() (e.g. the "
            f"'teacher' backbone with the 'backbone.' prefix removed) and pass that file."
        )
    return _check_tensors(name, obj)


def _guess_model(shapes):
    """Names of the models whose key names and shapes are ``shapes``."""
    return [name for name in MODEL_CONFIGS if _expected_shapes(name) == shapes]


@lru_cache(maxsize=None)
def _expected_shapes_cached(name):
    model = build_dinov2(name, device="meta")
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _expected_shapes(name):
    return dict(_expected_shapes_cached(name))


def _architecture(shapes):
    """``(embed_dim, depth, n_registers)`` read off a state dict's shapes, or ``None``."""
    cls = shapes.get("cls_token")
    if cls is None or len(cls) != 3:
        return None
    blocks = [k.split(".")[1] for k in shapes if k.startswith("blocks.")]
    depth = 1 + max((int(b) for b in blocks if b.isdigit()), default=-1)
    registers = shapes.get("register_tokens", (1, 0))
    return cls[2], depth, registers[1] if len(registers) == 3 else 0


def _describe_file(shapes, name):
    """What a file of these ``shapes`` is, for the mismatch message, in a sentence (or "")."""
    guesses = [g for g in _guess_model(shapes) if g != name]
    if guesses:
        return f" The file looks like a {guesses[0]!r} checkpoint: pass model={guesses[0]!r}."
    arch = _architecture(shapes)
    if arch is not None:
        dim, depth, regs = arch
        text = f"embed dim {dim}, {depth} blocks, {regs} register tokens"
        like = [m for m, c in MODEL_CONFIGS.items()
                if (c.embed_dim, c.depth, c.num_register_tokens) == arch]
        if like and like[0] != name:
            return (f" The file has the architecture of {like[0]!r} ({text}): pass "
                    f"model={like[0]!r} if that is what it is.")
        if not like:
            return f" The file ({text}) matches no official DINOv2 model."
    if any(k.startswith(("module.", "backbone.", "teacher.", "student.")) for k in shapes):
        return " Its keys carry a prefix (module./backbone./teacher.): strip it first."
    return ""


def _short_list(items, n=5):
    items = sorted(items)
    text = ", ".join(_truncate(k, 60) for k in items[:n])
    return text + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _mismatch_message(expected, got, name, source):
    """Why shapes ``got`` (key -> shape) do not fit ``expected``, or ``None`` if they do."""
    got = {k: tuple(v) for k, v in got.items()}
    missing = set(expected) - set(got)
    unexpected = set(got) - set(expected)
    wrong = {k for k in set(expected) & set(got) if expected[k] != got[k]}
    if not (missing or unexpected or wrong):
        return None
    parts = []
    if missing:
        parts.append(f"missing keys: {_short_list(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_short_list(unexpected)}")
    if wrong:
        shown = sorted(wrong)[:3]
        desc = "; ".join(f"{k} is {got[k]} in the file, {expected[k]} in the model"
                         for k in shown)
        more = f" ({len(wrong)} in all)" if len(wrong) > 3 else ""
        parts.append(f"shape mismatches: {desc}{more}")
    return (f"{source} does not fit model {name!r} (official DINOv2 layout): "
            + "; ".join(parts) + "." + _describe_file(got, name))


def load_state_dict_strict(model, state_dict, *, name, source):
    """Load ``state_dict`` into ``model`` with ``strict=True`` after a readable check.

    Mismatching key names or shapes raise a :class:`ValueError` naming the
    model, the source, a few offending keys (not a full dump) and, where it
    can be told from the shapes, which model the file is for.

    Parameters
    ----------
    model : DinoVisionTransformer
        The backbone to load into.
    state_dict : dict of str to torch.Tensor
        The weights (see :func:`load_checkpoint`).
    name : str
        The model's name, for the message.
    source : str
        Where the weights come from, for the message.

    Returns
    -------
    model : DinoVisionTransformer
        ``model``, loaded.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    message = _mismatch_message(expected, {k: v.shape for k, v in state_dict.items()},
                                name, source)
    if message is not None:
        raise ValueError(message)
    model.load_state_dict(state_dict, strict=True)
    return model
