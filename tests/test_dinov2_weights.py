"""DINOv2 weight files: official table, hub cache, env var, downloads, checksums, strict loading.

No test reaches the network: ``_weights._open_url`` (the only function that would)
is replaced in every test, and the hub cache is a temporary directory.
"""

import dataclasses
import io
import logging
import os
import urllib.error
import warnings

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

    monkeypatch.setattr(_weights, "_open_url", no_network)
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

    def offline(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(_weights, "_open_url", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        DinoPatchEmbedder().fit()
    assert calls == [REG_URL]
    _check_offline_message(str(err.value), _isolated)
    assert "name resolution" in str(err.value)
    assert not (_isolated / "checkpoints" / REG_FILE).exists()
    assert list((_isolated / "checkpoints").iterdir()) == []  # no partial file left


def test_download_false_never_touches_network(_isolated):
    with pytest.raises(WeightsUnavailableError) as err:
        DinoPatchEmbedder(download=False).fit()  # _open_url would fail the test
    _check_offline_message(str(err.value), _isolated)
    assert "download=False" in str(err.value)


# --------------------------------------------------------------- downloading


def test_download_goes_to_hub_cache_with_official_url(monkeypatch, _isolated, reg_checkpoint):
    _, data, sha = reg_checkpoint
    _trust(monkeypatch, sha)
    calls = []

    def fake_download(url, dest, *, sha256=None, allow_unverified=False, timeout=60.0):
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
    payload = b"pretend checkpoint bytes" * 1000
    good = __import__("hashlib").sha256(payload).hexdigest()
    monkeypatch.setattr(_weights, "_open_url", lambda url, timeout=None: io.BytesIO(payload))
    dest = tmp_path / "dl" / "file.pth"
    with caplog.at_level(logging.INFO, logger=_weights.__name__):
        assert download_weights("https://example.invalid/file.pth", dest, sha256=good) == good
    assert dest.read_bytes() == payload
    assert "downloading https://example.invalid/file.pth" in caplog.text
    assert [p.name for p in dest.parent.iterdir()] == ["file.pth"]

    other = tmp_path / "dl" / "other.pth"
    with pytest.raises(ChecksumMismatchError, match="discarded"):
        download_weights("https://example.invalid/other.pth", other, sha256="1" * 64)
    assert not other.exists()
    assert [p.name for p in dest.parent.iterdir()] == ["file.pth"]  # no temp file left


def test_unknown_digest_needs_a_hash_or_opt_in(monkeypatch, _isolated):
    data = b"checkpoint bytes of a model with no published digest"
    sha = __import__("hashlib").sha256(data).hexdigest()
    _trust(monkeypatch, None)
    opened = []

    def serve(url, timeout=None):
        opened.append(url)
        return io.BytesIO(data)

    monkeypatch.setattr(_weights, "_open_url", serve)
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
    assert file_sha256(p) == __import__("hashlib").sha256(b"evil").hexdigest() != good


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
        "junk.pth": b"this is not a checkpoint at all",
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
