"""Official DINOv2 checkpoints: where they live, how they are verified and loaded.

``weights=None`` means the official ``*_pretrain.pth`` file of the chosen
model. It is looked for, in this order, in

1. the directory named by the environment variable ``SKLEARN_CLASP_WEIGHTS``
   (if set), then
2. the torch hub checkpoint cache, ``torch.hub.get_dir()/checkpoints`` (where
   ``torch.hub.load("facebookresearch/dinov2", ...)`` puts it),

and is otherwise downloaded from the official URL into the first of these
(``SKLEARN_CLASP_WEIGHTS`` if set, else the hub cache). Official files are
always checked against their published SHA-256 before use; a download is
written to a temporary file, verified, then renamed into place. Nothing here
touches the network unless a download is needed and allowed.

The SHA-256 digests and sizes below are those of the files served at the
official URLs, as recorded by independent projects (finegrain-ai/refiners
``src/refiners/conversion/models/dinov2.py`` lists all eight; each one is
corroborated by at least one other project pinning the same file).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ._vit import MODEL_CONFIGS, build_dinov2

__all__ = [
    "WeightsInfo",
    "OFFICIAL_WEIGHTS",
    "WEIGHTS_ENV_VAR",
    "WeightsUnavailableError",
    "ChecksumMismatchError",
    "official_weights",
    "hub_checkpoint_dir",
    "find_official_weights",
    "resolve_weights",
    "download_weights",
    "file_sha256",
    "load_checkpoint",
    "load_state_dict_strict",
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


def official_weights(model):
    """The :class:`WeightsInfo` of a model's official checkpoint."""
    try:
        return OFFICIAL_WEIGHTS[model]
    except KeyError:
        raise ValueError(
            f"unknown DINOv2 model {model!r}; choose one of {sorted(OFFICIAL_WEIGHTS)}"
        ) from None


def hub_checkpoint_dir() -> Path:
    """The torch hub checkpoint cache, ``torch.hub.get_dir()/checkpoints``."""
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


@lru_cache(maxsize=64)
def _sha256_cached(path, size, mtime_ns, inode):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path) -> str:
    """SHA-256 of a file, hex.

    The digest is remembered for the process, keyed by path, size,
    modification time and inode, so re-verifying an unchanged file is free;
    any change to the file invalidates it.
    """
    path = os.path.realpath(os.fspath(path))
    st = os.stat(path)
    return _sha256_cached(path, st.st_size, st.st_mtime_ns, st.st_ino)


def verify_file(path, sha256, *, what="weights file"):
    """Raise :class:`ChecksumMismatchError` unless ``path`` has SHA-256 ``sha256``."""
    actual = file_sha256(path)
    if actual != sha256:
        raise ChecksumMismatchError(
            f"{what} {os.fspath(path)} has SHA-256 {actual}, expected {sha256}. The file "
            f"is corrupt, truncated or not the expected checkpoint: delete it and let it be "
            f"downloaded again, or pass weights=PATH (with the matching weights_sha256) to "
            f"use another file deliberately."
        )
    return actual


def _open_url(url, timeout=60.0):
    """Open ``url`` for reading (the only place this module touches the network)."""
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - fixed https URL


def download_weights(url, dest, *, sha256=None, allow_unverified=False, timeout=60.0):
    """Download ``url`` to ``dest`` atomically, verifying its SHA-256.

    The data are written to a temporary file beside ``dest``, hashed while
    written, and renamed to ``dest`` only if the digest matches ``sha256``; on
    any failure the temporary file is removed and ``dest`` is untouched.

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
    timeout : float, default=60.0
        Socket timeout in seconds.

    Returns
    -------
    digest : str
        SHA-256 of the downloaded file.
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
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".partial", dir=dest.parent)
    try:
        h = hashlib.sha256()
        n_bytes = 0
        with os.fdopen(fd, "wb") as out, _open_url(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                h.update(chunk)
                n_bytes += len(chunk)
        digest = h.hexdigest()
        if sha256 is not None and digest != sha256:
            raise ChecksumMismatchError(
                f"download of {url} has SHA-256 {digest} ({n_bytes} bytes), expected "
                f"{sha256}; the file was discarded. Retry; if it persists, the file on "
                f"the server changed."
            )
        if sha256 is None:
            logger.warning("accepted unverified download %s (SHA-256 %s)", url, digest)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    logger.info("downloaded %s (%d bytes, SHA-256 %s)", dest, n_bytes, digest)
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
    """
    info = official_weights(model)
    for directory in (_env_dir(), hub_checkpoint_dir()):
        if directory is not None and (directory / info.filename).is_file():
            return directory / info.filename
    return None


def resolve_weights(model, weights=None, *, weights_sha256=None, download=True,
                    allow_unverified=False):
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

    Returns
    -------
    path : Path
        The file, verified where a digest is known.
    sha256 : str
        Its SHA-256.
    """
    weights_sha256 = _check_sha256_string(weights_sha256)
    if weights is not None:
        path = Path(os.fspath(weights)).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"weights={os.fspath(weights)!r}: no such file. Pass the path of a "
                f"DINOv2 checkpoint (.pth), weights=None for the official file of "
                f"{model}, or weights='random'."
            )
        if weights_sha256 is not None:
            return path, verify_file(path, weights_sha256)
        return path, file_sha256(path)

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
                                  allow_unverified=allow_unverified)
    except (urllib.error.URLError, OSError) as exc:  # offline, DNS, HTTP error, timeout
        raise WeightsUnavailableError(
            _offline_message(info, f"downloading it failed ({exc})")
        ) from exc
    return dest, digest


def load_checkpoint(path):
    """Read a checkpoint file safely (``weights_only=True``) to a state dict on CPU."""
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, non-tensor payloads
        raise ValueError(
            f"could not read {os.fspath(path)} as a PyTorch checkpoint of tensors ({exc}). "
            f"Only plain state dicts are loaded (torch.load with weights_only=True)."
        ) from exc
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        keys = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"{os.fspath(path)} is not a plain state dict of tensors (top level: {keys}). "
            f"If it is a training checkpoint, save its backbone's state_dict() (e.g. the "
            f"'teacher' backbone with the 'backbone.' prefix removed) and pass that file."
        )
    return obj


def _guess_model(state_dict):
    """Names of the models whose key names and shapes match ``state_dict``."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    return [
        name for name in MODEL_CONFIGS
        if _expected_shapes(name) == shapes
    ]


@lru_cache(maxsize=None)
def _expected_shapes_cached(name):
    model = build_dinov2(name, device="meta")
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _expected_shapes(name):
    return dict(_expected_shapes_cached(name))


def _short_list(items, n=5):
    items = sorted(items)
    text = ", ".join(items[:n])
    return text + (f", ... ({len(items)} in all)" if len(items) > n else "")


def load_state_dict_strict(model, state_dict, *, name, source):
    """Load ``state_dict`` into ``model`` with ``strict=True`` after a readable check.

    Mismatching key names or shapes raise a :class:`ValueError` naming the
    model, the source, and a few offending keys (not a full dump).
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = set(expected) - set(got)
    unexpected = set(got) - set(expected)
    wrong = {k for k in set(expected) & set(got) if expected[k] != got[k]}
    if missing or unexpected or wrong:
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
        hint = ""
        guesses = [g for g in _guess_model(state_dict) if g != name]
        if guesses:
            hint = f" The file looks like a {guesses[0]!r} checkpoint: pass model={guesses[0]!r}."
        elif any(k.startswith(("module.", "backbone.", "teacher.", "student.")) for k in got):
            hint = " Its keys carry a prefix (module./backbone./teacher.): strip it first."
        raise ValueError(
            f"{source} does not fit model {name!r} (official DINOv2 layout): "
            + "; ".join(parts) + "." + hint
        )
    model.load_state_dict(state_dict, strict=True)
    return model
