"""DINOv2 weight files: official table, hub cache, env var, downloads, checksums, strict loading.

No test reaches the network: ``_weights._download_url_to_file`` (the only function
that would, torch's download helper) is replaced in every test, and so is the
``urlopen`` that torch's helper calls (tests of the real helper serve bytes from
memory through it); the hub cache is a temporary directory.
"""

import dataclasses
import email.message
import hashlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sklearn_clasp.embedding import DinoPatchEmbedder, load_dinov2
from sklearn_clasp.embedding import weights as _weights
from sklearn_clasp.embedding._vit import MODEL_CONFIGS, build_dinov2
from sklearn_clasp.embedding.weights import (
    OFFICIAL_WEIGHTS,
    WEIGHTS_ENV_VAR,
    ChecksumMismatchError,
    WeightsUnavailableError,
    download_weights,
    file_sha256,
    resolve_weights,
)

#: torch's download helper behind our one network function (the fixture below
#: replaces the function; tests of the real helper put it back)
REAL_DOWNLOAD = _weights._download_url_to_file

REG = "dinov2_vits14_reg"
REG_FILE = "dinov2_vits14_reg4_pretrain.pth"
REG_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Empty hub cache, no env var, and a network that fails the test if used."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.delenv(WEIGHTS_ENV_VAR, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(_weights, "_download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    return hub


@pytest.fixture(scope="module")
def reg_checkpoint(tmp_path_factory):
    """A random checkpoint in the official ViT-S/14-reg4 layout, its bytes and digest."""
    model = build_dinov2(REG).init_random(torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("ckpt") / REG_FILE
    torch.save(model.state_dict(), path)
    return path, path.read_bytes(), file_sha256(path)


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory):
    """A random checkpoint in the official ViT-S/14 (no registers) layout."""
    model = build_dinov2("dinov2_vits14").init_random(torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("ckpt") / "dinov2_vits14_pretrain.pth"
    torch.save(model.state_dict(), path)
    return path


def _trust(monkeypatch, sha256, model=REG):
    """Make the official table expect ``sha256`` (our random stand-in file)."""
    info = dataclasses.replace(OFFICIAL_WEIGHTS[model], sha256=sha256)
    monkeypatch.setitem(OFFICIAL_WEIGHTS, model, info)


class _Response(io.BytesIO):
    """What ``urlopen`` gives torch's download helper: a body, its length, and a stall."""

    def __init__(self, data, *, fail_after=None):
        super().__init__(data)
        self.headers = email.message.Message()
        self.headers["Content-Length"] = str(len(data))
        self.fail_after = fail_after

    def info(self):
        return self.headers

    def read(self, n=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError(104, "Connection reset by peer")
        return super().read(n if self.fail_after is None else min(n, 1000))


def _serve(monkeypatch, data, opened=None, **kw):
    """Run torch's real download helper, its ``urlopen`` serving ``data`` from memory."""

    def urlopen(request, *args, **kwargs):
        if opened is not None:
            opened.append(request.full_url)
        if isinstance(data, BaseException):
            raise data
        return _Response(data, **kw)

    monkeypatch.setattr(_weights, "_download_url_to_file", REAL_DOWNLOAD)
    monkeypatch.setattr(torch.hub, "urlopen", urlopen)


def _features(emb, seed=0):
    image = np.random.default_rng(seed).integers(0, 256, (56, 70, 3), dtype=np.uint8)
    return emb.transform([image])[0].features


# ------------------------------------------------------------------ the table


def test_official_table():
    assert set(OFFICIAL_WEIGHTS) == set(MODEL_CONFIGS)
    info = OFFICIAL_WEIGHTS[REG]
    assert info.filename == REG_FILE and info.url == REG_URL
    assert info.size == 88_291_785
    assert info.sha256 == "f433177089a681826f849f194ece3bb48f4d63fb38d32fc837e3dc7a4e5641fb"
    assert OFFICIAL_WEIGHTS["dinov2_vitg14"].url == (
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitg14/dinov2_vitg14_pretrain.pth")
    for name, info in OFFICIAL_WEIGHTS.items():
        reg = "_reg4" if name.endswith("_reg") else ""
        assert info.filename == f"{name.removesuffix('_reg')}{reg}_pretrain.pth"
        assert info.url.endswith(f"/{name.removesuffix('_reg')}/{info.filename}")
        assert len(info.sha256) == 64 and int(info.sha256, 16) >= 0
    assert len({i.sha256 for i in OFFICIAL_WEIGHTS.values()}) == 8


# ----------------------------------------------------------- finding the file


@pytest.mark.slow
def test_round_trip_from_hub_cache(monkeypatch, _isolated, reg_checkpoint):
    path, data, sha = reg_checkpoint
    cached = _isolated / "checkpoints" / REG_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)
    _trust(monkeypatch, sha)
    emb = DinoPatchEmbedder(short_side=None).fit()  # weights=None: the official file
    assert emb.weights_path_ == str(cached) and emb.weights_sha256_ == sha
    # strict round trip: every tensor of the file is in the model, unchanged
    saved = torch.load(path, map_location="cpu", weights_only=True)
    state = emb.model_.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    direct = DinoPatchEmbedder(weights=path, short_side=None).fit()
    np.testing.assert_array_equal(_features(emb), _features(direct))


@pytest.mark.slow
def test_env_var_directory_is_used_first(monkeypatch, _isolated, tmp_path, reg_checkpoint):
    _, data, sha = reg_checkpoint
    env_dir = tmp_path / "weights"
    env_dir.mkdir()
    (env_dir / REG_FILE).write_bytes(data)
    # a corrupt copy in the hub cache is never looked at
    (_isolated / "checkpoints").mkdir(parents=True)
    (_isolated / "checkpoints" / REG_FILE).write_bytes(b"junk")
    monkeypatch.setenv(WEIGHTS_ENV_VAR, str(env_dir))
    _trust(monkeypatch, sha)
    emb = DinoPatchEmbedder().fit()
    assert emb.weights_path_ == str(env_dir / REG_FILE)


def test_checksum_mismatch_in_cache_rejected(_isolated):
    cached = _isolated / "checkpoints" / REG_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"a truncated or tampered file")
    sha = file_sha256(cached)
    with pytest.raises(ChecksumMismatchError) as err:
        DinoPatchEmbedder().fit()
    msg = str(err.value)
    assert str(cached) in msg and sha in msg and OFFICIAL_WEIGHTS[REG].sha256 in msg
    assert "delete it" in msg


def test_user_file_checked_against_given_sha256(reg_checkpoint):
    path, _, sha = reg_checkpoint
    emb = DinoPatchEmbedder(weights=path, weights_sha256=sha.upper()).fit()
    assert emb.weights_sha256_ == sha
    with pytest.raises(ChecksumMismatchError, match=sha):
        DinoPatchEmbedder(weights=path, weights_sha256="0" * 64).fit()


def test_missing_user_file(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="nope.pth.*no such file"):
        DinoPatchEmbedder(weights=tmp_path / "nope.pth").fit()


# ------------------------------------------------------------------ offline


def _check_offline_message(msg, hub):
    assert REG_FILE in msg
    assert REG_URL in msg
    assert str(hub / "checkpoints" / REG_FILE) in msg  # 1. the hub cache
    assert "weights='/path/to/" in msg  # 2. weights=PATH
    assert WEIGHTS_ENV_VAR in msg  # 3. the environment variable


def test_offline_error(monkeypatch, _isolated):
    calls = []
    _serve(monkeypatch, urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
           calls)
    with pytest.raises(WeightsUnavailableError) as err:
        DinoPatchEmbedder().fit()
    assert calls == [REG_URL]
    _check_offline_message(str(err.value), _isolated)
    assert "name resolution" in str(err.value)
    assert not (_isolated / "checkpoints" / REG_FILE).exists()
    assert list((_isolated / "checkpoints").iterdir()) == []  # no partial file left


def test_download_false_never_touches_network(_isolated):
    with pytest.raises(WeightsUnavailableError) as err:
        DinoPatchEmbedder(download=False).fit()  # a download would fail the test
    _check_offline_message(str(err.value), _isolated)
    assert "download=False" in str(err.value)


# --------------------------------------------------------------- downloading


@pytest.mark.slow
def test_download_goes_to_hub_cache_with_official_url(monkeypatch, _isolated, reg_checkpoint):
    _, data, sha = reg_checkpoint
    _trust(monkeypatch, sha)
    calls = []

    def fake_download(url, dest, *, sha256=None, allow_unverified=False, timeout=60.0,
                      progress=None):
        calls.append((url, dest, sha256, allow_unverified))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return sha

    monkeypatch.setattr(_weights, "download_weights", fake_download)
    emb = DinoPatchEmbedder().fit()
    dest = _isolated / "checkpoints" / REG_FILE
    assert calls == [(REG_URL, dest, sha, False)]
    assert emb.weights_path_ == str(dest)
    # next time the cached file is used, without downloading
    DinoPatchEmbedder().fit()
    assert len(calls) == 1


def test_download_goes_to_env_dir_when_set(monkeypatch, tmp_path):
    env_dir = tmp_path / "mine"
    monkeypatch.setenv(WEIGHTS_ENV_VAR, str(env_dir))
    calls = []

    def fake_download(url, dest, **kw):
        calls.append(dest)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(_weights, "download_weights", fake_download)
    with pytest.raises(WeightsUnavailableError, match="now .*mine.*where it is missing"):
        resolve_weights(REG)
    assert calls == [env_dir / REG_FILE]


def test_download_is_verified_and_atomic(monkeypatch, tmp_path, caplog):
    """torch's helper, for real: verified before it is in place, nothing left on failure."""
    payload = b"pretend checkpoint bytes" * 1000
    good = hashlib.sha256(payload).hexdigest()
    _serve(monkeypatch, payload)
    dest = tmp_path / "dl" / "file.pth"
    with caplog.at_level(logging.INFO, logger=_weights.__name__):
        assert download_weights("https://example.invalid/file.pth", dest, sha256=good,
                                progress=False) == good
    assert dest.read_bytes() == payload
    assert "downloading https://example.invalid/file.pth" in caplog.text
    assert f"downloaded {dest} (24000 bytes, SHA-256 {good})" in caplog.text
    assert [p.name for p in dest.parent.iterdir()] == ["file.pth"]

    # a wrong digest: refused, nothing kept, and an existing file is left as it was
    other = tmp_path / "dl" / "other.pth"
    with pytest.raises(ChecksumMismatchError, match=rf"has SHA-256 {good}, expected 1{{64}}; "
                                                    rf"the file was discarded"):
        download_weights("https://example.invalid/other.pth", other, sha256="1" * 64,
                         progress=False)
    assert not other.exists()
    with pytest.raises(ChecksumMismatchError):
        download_weights("https://example.invalid/file.pth", dest, sha256="1" * 64,
                         progress=False)
    assert dest.read_bytes() == payload
    assert [p.name for p in dest.parent.iterdir()] == ["file.pth"]  # no temp file left

    # a connection that breaks half-way: the error is the connection's, nothing kept
    _serve(monkeypatch, payload, fail_after=10_000)
    with pytest.raises(ConnectionResetError):
        download_weights("https://example.invalid/cut.pth", tmp_path / "dl" / "cut.pth",
                         sha256=good, progress=False)
    assert [p.name for p in dest.parent.iterdir()] == ["file.pth"]


def test_download_is_torch_helper_with_the_full_digest(monkeypatch, tmp_path):
    calls = []

    def helper(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix, progress, socket.getdefaulttimeout()))
        Path(dst).write_bytes(b"x")

    monkeypatch.setattr(_weights, "_download_url_to_file", helper)
    sha = hashlib.sha256(b"x").hexdigest()
    assert socket.getdefaulttimeout() is None
    download_weights("https://example.invalid/x", tmp_path / "x", sha256=sha.upper(),
                     progress=False, timeout=7.5)
    # the whole digest is the prefix; torch's helper has no timeout of its own, so the
    # default socket timeout is set while it runs, and restored
    assert calls == [("https://example.invalid/x", str(tmp_path / "x"), sha, False, 7.5)]
    assert socket.getdefaulttimeout() is None
    socket.setdefaulttimeout(3.0)  # one set by the application is kept
    try:
        download_weights("https://example.invalid/x", tmp_path / "x", sha256=sha,
                         progress=False)
        assert calls[-1][-1] == 3.0 and socket.getdefaulttimeout() == 3.0
    finally:
        socket.setdefaulttimeout(None)


def test_download_draws_a_progress_bar_on_stderr_unless_quiet(monkeypatch, tmp_path, capsys):
    payload = bytes(300_000)
    sha = hashlib.sha256(payload).hexdigest()
    _serve(monkeypatch, payload)
    download_weights("https://example.invalid/a.pth", tmp_path / "a.pth", sha256=sha,
                     progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "100%" in err and "293k/293k" in err  # tqdm's bar, in KiB
    download_weights("https://example.invalid/b.pth", tmp_path / "b.pth", sha256=sha,
                     progress=False)
    assert capsys.readouterr() == ("", "")
    # progress=None: a bar on a terminal only, and none when warnings are silenced
    download_weights("https://example.invalid/c.pth", tmp_path / "c.pth", sha256=sha)
    assert capsys.readouterr().err == ""  # captured stderr is no terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    download_weights("https://example.invalid/d.pth", tmp_path / "d.pth", sha256=sha)
    assert "100%" in capsys.readouterr().err
    package_logger = logging.getLogger("sklearn_clasp")
    level = package_logger.level
    package_logger.setLevel(logging.ERROR)  # what clasp -q does
    try:
        download_weights("https://example.invalid/e.pth", tmp_path / "e.pth", sha256=sha)
    finally:
        package_logger.setLevel(level)
    assert capsys.readouterr().err == ""


def test_clasp_weights_download_bar_and_quiet(monkeypatch, tmp_path, capsys):
    from sklearn_clasp.cli import main

    env = tmp_path / "weights"
    monkeypatch.setenv(WEIGHTS_ENV_VAR, str(env))
    payload = b"stand-in for the official file" * 10_000
    _trust(monkeypatch, hashlib.sha256(payload).hexdigest())
    _serve(monkeypatch, payload)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["weights", "--download", "-q"]) == 0
    assert capsys.readouterr() == ("", "")  # -q: no bar, no listing
    assert (env / REG_FILE).read_bytes() == payload
    (env / REG_FILE).unlink()
    assert main(["weights", "--download", "--model", REG]) == 0
    out, err = capsys.readouterr()
    assert "100%" in err and "(SHA-256" in out and "verified)" in out
    assert sorted(p.name for p in env.iterdir()) == [REG_FILE]


def test_unknown_digest_needs_a_hash_or_opt_in(monkeypatch, _isolated):
    data = b"checkpoint bytes of a model with no published digest"
    sha = hashlib.sha256(data).hexdigest()
    _trust(monkeypatch, None)
    opened = []
    _serve(monkeypatch, data, opened)
    with pytest.raises(ValueError, match="refusing to download.*weights_sha256"):
        resolve_weights(REG)
    assert opened == []
    # the caller's hash makes the download verifiable
    path, digest = resolve_weights(REG, weights_sha256=sha)
    assert digest == sha and path.read_bytes() == data and opened == [REG_URL]
    path.unlink()
    with pytest.raises(ChecksumMismatchError):
        resolve_weights(REG, weights_sha256="2" * 64)
    # or an explicit opt-in accepts an unverified file
    path, digest = resolve_weights(REG, allow_unverified=True)
    assert digest == sha


# ---------------------------------------------------------- strict loading


def test_wrong_model_refused_with_short_message(plain_checkpoint):
    with pytest.raises(ValueError) as err:
        DinoPatchEmbedder(REG, weights=plain_checkpoint).fit()
    msg = str(err.value)
    assert "'dinov2_vits14_reg'" in msg and "missing keys: register_tokens" in msg
    assert "model='dinov2_vits14'" in msg  # says which model the file is
    assert len(msg) < 600

    with pytest.raises(ValueError) as err:
        DinoPatchEmbedder("dinov2_vitb14", weights=plain_checkpoint).fit()
    msg = str(err.value)
    assert "'dinov2_vitb14'" in msg and "shape mismatches" in msg and "(175 in all)" in msg
    assert msg.count(" in the file") == 3 and len(msg) < 800


def test_wrong_shape_and_prefixed_keys(tmp_path, plain_checkpoint):
    sd = torch.load(plain_checkpoint, weights_only=True)
    sd224 = dict(sd, pos_embed=torch.zeros(1, 257, 384))  # a 224 px checkpoint
    torch.save(sd224, tmp_path / "p224.pth")
    with pytest.raises(ValueError, match=r"pos_embed is \(1, 257, 384\) in the file, "
                                         r"\(1, 1370, 384\) in the model"):
        load_dinov2("dinov2_vits14", weights=tmp_path / "p224.pth")
    torch.save({"backbone." + k: v for k, v in sd.items()}, tmp_path / "prefixed.pth")
    with pytest.raises(ValueError, match="strip it first"):
        load_dinov2("dinov2_vits14", weights=tmp_path / "prefixed.pth")


def test_only_plain_state_dicts_are_read(tmp_path):
    torch.save({"teacher": {"w": torch.zeros(1)}, "epoch": 3}, tmp_path / "train.pth")
    with pytest.raises(ValueError, match="not a plain state dict.*teacher"):
        load_dinov2("dinov2_vits14", weights=tmp_path / "train.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("arbitrary code",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_dinov2("dinov2_vits14", weights=tmp_path / "evil.pth")


def test_file_digest_follows_changes(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"one")
    a = file_sha256(p)
    assert file_sha256(p) == a
    p.write_bytes(b"two!")
    assert file_sha256(p) != a


def test_file_digest_not_fooled_by_a_restored_mtime(tmp_path):
    """Same size, modification time set back: the status-change time still tells."""
    import time

    p = tmp_path / "f.bin"
    p.write_bytes(b"good")
    st = p.stat()
    good = file_sha256(p)
    time.sleep(0.05)  # past the file system's timestamp granularity
    p.write_bytes(b"evil")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.stat().st_mtime_ns == st.st_mtime_ns and p.stat().st_size == st.st_size
    assert file_sha256(p) == hashlib.sha256(b"evil").hexdigest() != good


def test_random_weights_warn():
    with pytest.warns(UserWarning, match="random weights"):
        load_dinov2("dinov2_vits14", weights="random", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="weights_sha256 has no meaning"):
            load_dinov2("dinov2_vits14", weights="random", weights_sha256="0" * 64)


# ------------------------------------------- what is hashed, and when


def _record_hash_and_load(monkeypatch):
    """Record, in order, every hashing of file bytes and every ``torch.load``."""
    events = []
    hash_stream, torch_load = _weights.sha256_of_stream, torch.load

    def hashing(fh):
        events.append("hash")
        return hash_stream(fh)

    def loading(*args, **kwargs):
        events.append("load")
        return torch_load(*args, **kwargs)

    monkeypatch.setattr(_weights, "sha256_of_stream", hashing)
    monkeypatch.setattr(torch, "load", loading)
    return events


def test_official_file_is_hashed_before_it_is_parsed(monkeypatch, _isolated, reg_checkpoint):
    _, data, sha = reg_checkpoint
    cached = _isolated / "checkpoints" / REG_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)
    _trust(monkeypatch, sha)
    events = _record_hash_and_load(monkeypatch)
    DinoPatchEmbedder().fit()
    assert events == ["hash", "load"]  # hashed once, then parsed once

    # a tampered copy is refused by its digest and never parsed
    events.clear()
    cached.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ChecksumMismatchError, match="delete it"):
        DinoPatchEmbedder().fit()
    assert events == ["hash"]


def test_user_file_is_hashed_before_it_is_parsed(monkeypatch, tmp_path, reg_checkpoint):
    _, data, sha = reg_checkpoint
    path = tmp_path / "mine.pth"
    path.write_bytes(data)
    events = _record_hash_and_load(monkeypatch)
    emb = DinoPatchEmbedder(weights=path).fit()
    assert events == ["hash", "load"] and emb.weights_sha256_ == sha


@pytest.mark.slow
def test_file_swapped_after_the_check_is_not_loaded(monkeypatch, tmp_path, reg_checkpoint,
                                                     plain_checkpoint):
    """The digest is checked on the open file that is parsed, not on the path."""
    from sklearn_clasp.embedding import _dinov2

    _, data, sha = reg_checkpoint
    path = tmp_path / "mine.pth"
    path.write_bytes(data)
    resolve = _dinov2.resolve_weights

    def resolve_then_swap(*args, **kwargs):
        result = resolve(*args, **kwargs)
        other = tmp_path / "other.pth"
        other.write_bytes(plain_checkpoint.read_bytes())
        os.replace(other, path)  # another user swaps the file in a shared directory
        return result

    monkeypatch.setattr(_dinov2, "resolve_weights", resolve_then_swap)
    events = _record_hash_and_load(monkeypatch)
    with pytest.raises(ChecksumMismatchError, match="changed since it was checked") as err:
        DinoPatchEmbedder(weights=path).fit()
    assert sha in str(err.value) and str(path) in str(err.value)
    assert "load" not in events


@pytest.mark.slow
def test_user_file_that_is_an_official_file(monkeypatch, tmp_path, caplog, reg_checkpoint,
                                            plain_checkpoint):
    path, _, sha = reg_checkpoint
    _trust(monkeypatch, sha)  # pretend our stand-in is the official REG file
    with caplog.at_level(logging.INFO, logger=_weights.__name__):
        DinoPatchEmbedder(weights=path).fit()
    assert f"is the official {REG} checkpoint (SHA-256 {sha})" in caplog.text
    # the official file of another model is refused by its digest, before parsing
    events = _record_hash_and_load(monkeypatch)
    with pytest.raises(ValueError, match=rf"is the official {REG} checkpoint.*"
                                         rf"pass model='{REG}'"):
        DinoPatchEmbedder("dinov2_vits14", weights=path).fit()
    assert "load" not in events
    # any other file: its digest is logged, and a file named like the official one
    # but with another digest is pointed out
    plain_sha = file_sha256(plain_checkpoint)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=_weights.__name__):
        DinoPatchEmbedder("dinov2_vits14", weights=plain_checkpoint).fit()
    assert f"SHA-256 {plain_sha} (not an official checkpoint" in caplog.text
    assert "is named like the official dinov2_vits14 file" in caplog.text


# ------------------------------------------------------ unreadable files


def test_corrupt_truncated_and_empty_files_name_the_file(tmp_path, reg_checkpoint):
    _, data, _ = reg_checkpoint
    cases = {
        "truncated.pth": data[: len(data) // 2],
        "tail_cut.pth": data[:-100],
        "empty.pth": b"",
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError) as err:
            load_dinov2(REG, weights=path)
        msg = str(err.value)
        assert not isinstance(err.value, _weights.UnsafeCheckpointError)
        assert f"could not read weights file {path}" in msg, msg
        assert ("empty (0 bytes)" if not content else "corrupt, truncated") in msg
        assert len(msg) < 500


@pytest.mark.parametrize("content, what", [
    (b"this is not a checkpoint at all", "it is text, starting 'this is not a ch'"),
    # torch.load calls this one "pickled objects or code" (its first byte is a pickle
    # opcode that its restricted unpickler refuses)
    (b"model: dinov2\nweights: none\n", "it is text, starting 'model: dinov2 we'"),
    (b"\x00\x01\x02\x03\xff\xfe binary junk", "it starts with the bytes 00 01 02 03 ff fe"),
    # not UTF-8: bytes, not "text" made of replacement characters
    (b"\xe9g+\x9c\xa0random bytes", "it starts with the bytes e9 67 2b 9c a0 72"),
    (len(b'{"__metadata__":{}}').to_bytes(8, "little") + b'{"__metadata__":{}}',
     "it looks like a .safetensors file: give it the .safetensors suffix"),
])
def test_a_file_that_is_no_checkpoint_is_called_so(monkeypatch, tmp_path, content, what):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(ValueError) as err:
        DinoPatchEmbedder("dinov2_vits14", weights=path).fit()
    msg = str(err.value)
    assert not isinstance(err.value, _weights.UnsafeCheckpointError)
    assert "pickled" not in msg and "code" not in msg
    assert f"could not read weights file {path}: it is not a PyTorch checkpoint" in msg
    assert what in msg and "Pass a checkpoint file" in msg
    assert loads == []  # not even handed to torch


_SPECIAL_FILES_SCRIPT = r"""
import contextlib, io, json, sys, warnings
from sklearn_clasp.cli import main
from sklearn_clasp.embedding import DinoPatchEmbedder
from sklearn_clasp.embedding.weights import file_sha256, load_checkpoint

images, out_dir, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
out = {}
for path in paths:
    calls = {
        "fit": lambda: DinoPatchEmbedder("dinov2_vits14", weights=path).fit(),
        "load_checkpoint": lambda: load_checkpoint(path, model="dinov2_vits14"),
        "file_sha256": lambda: file_sha256(path),
    }
    for how, call in calls.items():
        try:
            call()
            out[f"{path} {how}"] = "no error"
        except Exception as exc:
            out[f"{path} {how}"] = f"{type(exc).__name__}: {exc}"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(["segment", images, "--out", out_dir, "--embed-model", "dinov2_vits14",
                       "--embed-weights", path])
    out[f"{path} cli"] = [status, err.getvalue()]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_weights_that_are_not_regular_files_are_named_and_never_read(tmp_path):
    """A named pipe, /dev/zero, a directory: each said to be what it is, none read.

    In a subprocess with a time limit: reading either of the first two would block
    or never end.
    """
    import sklearn_clasp
    from PIL import Image

    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    folder = tmp_path / "weights"
    folder.mkdir()
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(images / "a.png")
    root = str(Path(sklearn_clasp.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k != WEIGHTS_ENV_VAR}
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, "-c", _SPECIAL_FILES_SCRIPT, str(images), str(tmp_path / "out"),
         str(fifo), "/dev/zero", str(folder)],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.splitlines()[-1])
    kinds = {str(fifo): "a named pipe (FIFO)", "/dev/zero": "a character device",
             str(folder): "a directory"}
    for path, kind in kinds.items():
        for how in ("fit", "load_checkpoint", "file_sha256"):
            msg = results[f"{path} {how}"]
            assert msg.startswith("ValueError: "), msg
            label = f"weights={path!r}" if how == "fit" else f"weights file {path}"
            assert f"{label} is {kind}, not a weights file" in msg, msg
            assert "nothing was read from it" in msg and "no such file" not in msg
        status, err = results[f"{path} cli"]
        assert status == 3, err  # the embedder could not be loaded
        assert f"is {kind}, not a weights file" in err and "no such file" not in err
    # a directory: the way to use what is in it
    msg = results[f"{folder} fit"]
    assert f"e.g. {folder / 'dinov2_vits14_pretrain.pth'}" in msg
    assert f"set {WEIGHTS_ENV_VAR}={folder}" in msg


def test_unreadable_and_dangling_weights(tmp_path):
    link = tmp_path / "link.pth"
    link.symlink_to(tmp_path / "gone.pth")
    with pytest.raises(WeightsUnavailableError, match=r"link.pth'?: broken symbolic link "
                                                      r"\(its target .*gone.pth"):
        DinoPatchEmbedder(weights=link).fit()
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.pth"
        locked.write_bytes(b"x")
        locked.chmod(0)
        with pytest.raises(PermissionError, match="locked.pth'?: permission denied"):
            DinoPatchEmbedder(weights=locked).fit()


# --------------------------------------------------------- what the tensors hold


def test_nan_or_inf_weights_are_refused_at_load_naming_the_tensor(tmp_path, plain_checkpoint):
    sd = torch.load(plain_checkpoint, weights_only=True)
    sd["blocks.3.mlp.fc1.weight"] = sd["blocks.3.mlp.fc1.weight"].clone()
    sd["blocks.3.mlp.fc1.weight"][0, :3] = float("nan")
    sd["blocks.3.mlp.fc1.weight"][1, 0] = float("inf")
    sd["norm.bias"] = torch.full_like(sd["norm.bias"], -float("inf"))
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(ValueError) as err:
        DinoPatchEmbedder("dinov2_vits14", weights=tmp_path / "nan.pth").fit()
    msg = str(err.value)
    assert (f"weights file {tmp_path / 'nan.pth'}: tensor 'blocks.3.mlp.fc1.weight' has 3 NaN "
            f"and 1 infinite values (of 589824), and 1 more tensor too") in msg
    assert "every feature NaN" in msg and "input image" not in msg


@pytest.mark.slow
@pytest.mark.parametrize("dtype, legacy", [(torch.int8, False), (torch.uint8, False),
                                           (torch.bool, False), (torch.int8, True),
                                           (torch.float64, False), (torch.complex64, False)])
def test_non_float32_weights_are_refused(monkeypatch, tmp_path, plain_checkpoint, dtype,
                                         legacy):
    sd = torch.load(plain_checkpoint, weights_only=True)
    path = tmp_path / "w.pth"
    torch.save({k: (100 * v).to(dtype) for k, v in sd.items()}, path,
               _use_new_zipfile_serialization=not legacy)
    loads = _record_hash_and_load(monkeypatch)
    with pytest.raises(ValueError) as err:
        DinoPatchEmbedder("dinov2_vits14", weights=path).fit()
    msg = str(err.value)
    name = str(dtype).removeprefix("torch.")
    assert (f"weights file {path} holds {name} tensors ('cls_token' and 174 more, of 175): "
            f"DINOv2 weights in the official layout are float32") in msg, msg
    if dtype == torch.float64:
        assert "save it as float32, {k: v.float()" in msg
    else:
        assert "pass the float32 checkpoint" in msg
    # a torch.save archive is refused from its pickle alone, before any tensor is read
    assert ("load" in loads) == legacy


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_converted_with_a_warning(tmp_path, plain_checkpoint, dtype):
    sd = torch.load(plain_checkpoint, weights_only=True)
    torch.save({k: v.to(dtype) for k, v in sd.items()}, tmp_path / "half.pth")
    torch.save({k: v.to(dtype).float() for k, v in sd.items()}, tmp_path / "same.pth")
    name = str(dtype).removeprefix("torch.")
    with pytest.warns(UserWarning, match=rf"holds {name} tensors \(175 of 175\); they are "
                                         rf"converted to float32"):
        half = DinoPatchEmbedder("dinov2_vits14", weights=tmp_path / "half.pth",
                                 short_side=None).fit()
    assert all(p.dtype == torch.float32 for p in half.model_.parameters())
    same = DinoPatchEmbedder("dinov2_vits14", weights=tmp_path / "same.pth",
                             short_side=None).fit()
    np.testing.assert_array_equal(_features(half), _features(same))
    with pytest.warns(UserWarning, match="converted to float32"):
        loaded = _weights.load_checkpoint(tmp_path / "half.pth", model="dinov2_vits14")
    assert {v.dtype for v in loaded.values()} == {torch.float32}


def test_non_string_keys_refused(tmp_path):
    torch.save({0: torch.zeros(1)}, tmp_path / "intkeys.pth")
    with pytest.raises(ValueError, match=r"not a plain state dict of tensors with string "
                                         r"keys \(top level: keys 0\)"):
        load_dinov2("dinov2_vits14", weights=tmp_path / "intkeys.pth")


# --------------------------------------------------------- another model


def _shaped_like(model):
    """A state dict with ``model``'s keys and shapes, a few KB on disk (stride-0 tensors)."""
    net = build_dinov2(model, device="meta")
    return {k: torch.zeros(1).expand(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize(
    "file_model, model, expected",
    [
        ("dinov2_vitb14", "dinov2_vits14", "shape mismatches: blocks.0.attn.proj.bias is "
                                           "(768,) in the file, (384,) in the model"),
        ("dinov2_vits14_reg", "dinov2_vits14", "unexpected keys: register_tokens."),
        ("dinov2_vitl14_reg", "dinov2_vitb14_reg", "unexpected keys: blocks.12."),
    ],
)
def test_checkpoint_of_another_model_names_both(tmp_path, file_model, model, expected):
    path = tmp_path / "other.pth"
    torch.save(_shaped_like(file_model), path)
    assert path.stat().st_size < 200_000
    with pytest.raises(ValueError) as err:
        load_dinov2(model, weights=path)
    msg = str(err.value)
    assert f"weights file {path} does not fit model {model!r}" in msg
    assert expected in msg
    assert f"looks like a {file_model!r} checkpoint: pass model={file_model!r}" in msg
    assert len(msg) < 800  # a few keys, not a dump of 200 shapes


def test_near_miss_is_described_by_its_architecture(tmp_path):
    sd = _shaped_like("dinov2_vitb14")
    sd["pos_embed"] = torch.zeros(1).expand(1, 257, 768)  # trained at 224 px
    torch.save(sd, tmp_path / "b224.pth")
    with pytest.raises(ValueError, match=r"architecture of 'dinov2_vitb14' \(embed dim 768, "
                                         r"12 blocks, 0 register tokens\)"):
        load_dinov2("dinov2_vits14", weights=tmp_path / "b224.pth")
    sd = _shaped_like("dinov2_vits14")
    sd = {k: v for k, v in sd.items() if not k.startswith("blocks.11.")}
    torch.save(sd, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"missing keys: blocks\.11\..*embed dim 384, 11 "
                                         r"blocks, 0 register tokens\) matches no official"):
        load_dinov2("dinov2_vits14", weights=tmp_path / "short.pth")


def test_long_key_names_are_shortened(tmp_path, plain_checkpoint):
    sd = torch.load(plain_checkpoint, weights_only=True)
    sd["x" * 10_000] = torch.zeros(1)
    torch.save(sd, tmp_path / "long.pth")
    with pytest.raises(ValueError, match=r"unexpected keys: x{57}\.\.\.\.") as err:
        load_dinov2("dinov2_vits14", weights=tmp_path / "long.pth")
    assert len(str(err.value)) < 500


# ------------------------------------------------------------ safetensors


def test_safetensors_file(tmp_path, reg_checkpoint):
    st = pytest.importorskip("safetensors.torch")
    path, _, _ = reg_checkpoint
    sd = torch.load(path, weights_only=True)
    st.save_file(sd, tmp_path / "w.safetensors")
    a = DinoPatchEmbedder(weights=tmp_path / "w.safetensors", short_side=None).fit()
    b = DinoPatchEmbedder(weights=path, short_side=None).fit()
    np.testing.assert_array_equal(_features(a), _features(b))
    assert a.weights_sha256_ == file_sha256(tmp_path / "w.safetensors")
    st.save_file({k: (100 * v).to(torch.int8) for k, v in sd.items()}, tmp_path / "i8.safetensors")
    with pytest.raises(ValueError, match=r"i8.safetensors holds int8 tensors"):
        load_dinov2(REG, weights=tmp_path / "i8.safetensors")
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "w.safetensors").read_bytes()[:999])
    with pytest.raises(ValueError, match="bad.safetensors: it is corrupt, truncated"):
        load_dinov2(REG, weights=tmp_path / "bad.safetensors")


def test_safetensors_without_the_package(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "safetensors", None)  # import fails
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    (tmp_path / "w.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ImportError, match=r"w\.safetensors is a \.safetensors file.*"
                                          r"pip install safetensors"):
        load_dinov2(REG, weights=tmp_path / "w.safetensors")
