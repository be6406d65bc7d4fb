"""Untrusted files and shared machines: nothing loaded can run code, nothing is written
or opened that the caller did not ask for.

- weight files: pickles that would run code are refused (and their payload does not
  run), official files are verified before they are parsed, and a small file that
  declares gigabytes (a checkpoint decompression bomb) is refused before any of it
  is decompressed;
- feature caches: nothing is cached unless ``memory=`` says where, and a cache that
  others can write to is pointed out;
- Dask: the library opens no listening port; TLS settings reach the client.

No test reaches the network.
"""

import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import warnings
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

import sklearn_clasp
from sklearn_clasp.embedding import DinoPatchEmbedder, load_dinov2
from sklearn_clasp.embedding import weights as _weights
from sklearn_clasp.embedding._vit import build_dinov2
from sklearn_clasp.embedding.weights import (
    OFFICIAL_WEIGHTS,
    WEIGHTS_ENV_VAR,
    CheckpointTooLargeError,
    ChecksumMismatchError,
    UnsafeCheckpointError,
    load_checkpoint,
    model_tensor_bytes,
)

REPO_ROOT = Path(sklearn_clasp.__file__).resolve().parent.parent
MODEL = "dinov2_vits14"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    """An empty hub cache, no weights directory, and no network."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(WEIGHTS_ENV_VAR, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(_weights, "_download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "urlopen", no_network)


def _subprocess_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCH_", "XDG_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env.update(extra)
    return env


# --------------------------------------------------------------------------
# malicious weight files
# --------------------------------------------------------------------------


class _SystemPayload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _ExecPayload:
    """Unpickling this runs Python code that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _write_malicious(path, payload, fmt):
    """A checkpoint with ``payload`` among its tensors, in one of four formats."""
    state = {"cls_token": torch.zeros(1, 1, 384), "norm.weight": payload}
    if fmt == "torch-zip":  # torch.save's format
        torch.save(state, path)
    elif fmt == "torch-legacy":  # torch.save's format before torch 1.6
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle named .pth
        with open(path, "wb") as fh:
            pickle.dump(state, fh, protocol=int(fmt.removeprefix("pickle-")))


def _unsafe_load(path, fmt):
    """Load ``path`` the unsafe way (what the library must never do)."""
    if fmt.startswith("torch"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=False)
    with open(path, "rb") as fh:
        return pickle.load(fh)


@pytest.mark.parametrize("payload", [_SystemPayload, _ExecPayload])
@pytest.mark.parametrize("fmt", ["torch-zip", "torch-legacy", "pickle-2", "pickle-5"])
def test_malicious_checkpoint_is_refused_and_its_payload_does_not_run(tmp_path, payload,
                                                                      fmt):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    _write_malicious(path, payload(marker), fmt)

    # the payload is real: an unrestricted load runs it
    _unsafe_load(path, fmt)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UnsafeCheckpointError) as err:
        DinoPatchEmbedder(MODEL, weights=path).fit()
    msg = str(err.value)
    assert f"refused to load weights file {path}" in msg
    assert "weights_only=True" in msg and "Nothing from it was executed" in msg
    if fmt.startswith("torch"):  # says what was refused (a bare pickle is refused at
        # its first unknown opcode or its first non-torch global, here a tensor's)
        assert ("GLOBAL posix.system" if payload is _SystemPayload else "GLOBAL exec") in msg
    assert len(msg) < 700
    assert not marker.exists()


def test_refused_even_when_torch_is_told_to_trust_files(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "payload_ran"
    _write_malicious(tmp_path / "evil.pth", _ExecPayload(marker), "torch-zip")
    with pytest.raises(UnsafeCheckpointError, match="GLOBAL exec was not an allowed global"):
        load_dinov2(MODEL, weights=tmp_path / "evil.pth")
    assert not marker.exists()


def test_torchscript_archive_is_refused(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's own notice
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"scripted\.pth.*TorchScript"):
        load_dinov2(MODEL, weights=tmp_path / "scripted.pth")


def test_malicious_file_in_the_hub_cache_is_never_parsed(monkeypatch, tmp_path):
    """A file planted under the official name fails its SHA-256 before torch sees it."""
    info = OFFICIAL_WEIGHTS[MODEL]
    marker = tmp_path / "payload_ran"
    planted = tmp_path / "hub" / "checkpoints" / info.filename
    planted.parent.mkdir(parents=True)
    _write_malicious(planted, _ExecPayload(marker), "torch-zip")
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(ChecksumMismatchError) as err:
        DinoPatchEmbedder(MODEL).fit()
    assert str(planted) in str(err.value) and info.sha256 in str(err.value)
    assert loads == [] and not marker.exists()


# --------------------------------------------------------------------------
# checkpoint decompression bombs
# --------------------------------------------------------------------------
#
# A torch.save file is a zip archive: a pickle (data.pkl) that declares each tensor's
# shape and storage (key, dtype, number of elements), and one record data/<key> per
# storage. torch.save stores the records uncompressed, but torch's reader inflates
# deflated ones too: a few megabytes of deflated zeros declare gigabytes. The files
# below are written byte by byte in that format, without ever holding the zeros.

#: A storage of (nearly) 4 GiB, as in the report: the most a zip entry holds
#: without the zip64 extension.
BOMB_BYTES = (4 << 30) - (1 << 20)


class _DeclaredStorage:
    """A storage as the pickle declares it (written by :class:`_ArchivePickler`)."""

    def __init__(self, key, numel, kind="FloatStorage"):
        self.key, self.numel, self.kind = key, numel, kind


class _DeclaredTensor:
    """A tensor as ``torch.save`` pickles it: ``_rebuild_tensor_v2`` of a storage."""

    def __init__(self, storage, shape):
        self.storage, self.shape = storage, tuple(shape)

    def __reduce__(self):
        stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, self.shape, stride, False, collections.OrderedDict()))


class _ArchivePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _DeclaredStorage):  # what torch.save writes for a storage
            return ("storage", getattr(torch, obj.kind), obj.key, "cpu", obj.numel)
        return None


@lru_cache(maxsize=1)
def _deflated_mebibyte():
    """1 MiB of zeros, deflated and flushed so that the bytes stand alone (repeatable)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)


def _deflated_zeros(n):
    """``(raw deflate stream of n zero bytes, its CRC-32)``, never holding the zeros."""
    k, rest = divmod(n, 1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = _deflated_mebibyte() * k + c.compress(bytes(rest)) + c.flush()
    crc, block = 0, bytes(1 << 20)
    for _ in range(k):
        crc = zlib.crc32(block, crc)
    return stream, zlib.crc32(bytes(rest), crc)


def _write_zip(path, entries):
    """A zip file of ``entries``: ``(name, bytes)`` stored, ``(name, n)`` n zeros deflated."""
    out, directory = bytearray(), bytearray()
    for name, content in entries:
        raw = name.encode()
        if isinstance(content, int):
            (data, crc), method, size = _deflated_zeros(content), 8, content
        else:
            data, crc, method, size = content, zlib.crc32(content), 0, len(content)
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc,
                           len(data), size, len(raw), 0) + raw + data
        directory += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0,
                                 0x21, crc, len(data), size, len(raw), 0, 0, 0, 0, 0,
                                 offset) + raw
    out += directory + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries),
                                   len(entries), len(directory), len(out), 0)
    Path(path).write_bytes(out)


def _write_checkpoint(path, tensors, *, sizes=None, extra=()):
    """A torch.save archive of ``tensors`` (key -> (shape, storage elements)), all zeros.

    Each record is deflated zeros of the declared size (or ``sizes[key]`` bytes);
    ``extra`` adds entries as they are.
    """
    state, records = collections.OrderedDict(), []
    for i, (key, (shape, numel)) in enumerate(tensors.items()):
        state[key] = _DeclaredTensor(_DeclaredStorage(str(i), numel), shape)
        records.append((f"archive/data/{i}", (sizes or {}).get(key, 4 * numel)))
    buf = io.BytesIO()
    _ArchivePickler(buf, protocol=2).dump(state)
    _write_zip(path, [("archive/data.pkl", buf.getvalue()), ("archive/byteorder", b"little"),
                      *records, ("archive/version", b"3\n"), *extra])


def _model_tensors(model=MODEL, **storage_bytes):
    """``model``'s keys and shapes, each on its own storage (``storage_bytes`` overrides)."""
    net = build_dinov2(model, device="meta")
    return {k: (tuple(v.shape), storage_bytes.get(k.replace(".", "_"), 4 * v.numel()) // 4)
            for k, v in net.state_dict().items()}


@pytest.mark.slow
def test_crafted_checkpoints_are_real(tmp_path):
    """The writer above makes files that torch.load reads: small ones load in full."""
    path = tmp_path / "zeros.pth"
    _write_checkpoint(path, _model_tensors())
    assert path.stat().st_size < 300_000  # 88 MB of zeros, deflated
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        k: tuple(v.shape) for k, v in build_dinov2(MODEL, device="meta").state_dict().items()}
    assert all(not v.any() for v in sd.values())
    # and this file of the model's very keys and shapes is accepted as it is
    assert load_checkpoint(path, model=MODEL).keys() == sd.keys()
    # a storage 8 MiB larger than its tensor: torch inflates and loads it...
    _write_checkpoint(path, _model_tensors(pos_embed=8 << 20))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert sd["pos_embed"].untyped_storage().nbytes() == 8 << 20
    # ...and we refuse it unread: together the records declare more than the model holds
    with pytest.raises(CheckpointTooLargeError) as err:
        load_checkpoint(path, model=MODEL)
    budget = model_tensor_bytes(MODEL)
    assert budget == 88_226_304
    msg = str(err.value)
    assert f"refused weights file {path} before reading its tensors" in msg
    assert "the tensors of dinov2_vits14 take 84.1 MiB in float32" in msg
    assert "decompression bomb" in msg


_BOMB_SCRIPT = r"""
import json, resource, sys, time, warnings
import torch
from sklearn_clasp.embedding import DinoPatchEmbedder
from sklearn_clasp.embedding.weights import load_checkpoint

# a guard for the machine: past 2 GiB more address space, allocations fail (the
# library must never get near it)
with open("/proc/self/status") as fh:
    vm = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 30), resource.RLIM_INFINITY))

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

out = {}
for path in sys.argv[2:]:
    for how in ("load_checkpoint", "fit"):
        before, start = peak(), time.perf_counter()
        try:
            if how == "fit":
                DinoPatchEmbedder(sys.argv[1], weights=path).fit()
            else:
                load_checkpoint(path, model=sys.argv[1])
            error = None
        except Exception as exc:
            error = [type(exc).__name__, str(exc)]
        out[f"{path} {how}"] = {"error": error, "peak_growth": peak() - before,
                                "seconds": time.perf_counter() - start}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_checkpoint_bomb_is_refused_before_it_is_decompressed(tmp_path):
    """A 4.2 MB file declaring a 4 GiB storage: refused, and peak memory stays small."""
    net = build_dinov2(MODEL, device="meta").state_dict()
    # the model's keys and shapes, with pos_embed on a storage of nearly 4 GiB
    same_keys = tmp_path / "same_keys.pth"
    _write_checkpoint(same_keys, _model_tensors(pos_embed=BOMB_BYTES))
    # one tensor of nearly 4 GiB under a key of the model
    one_tensor = tmp_path / "one_tensor.pth"
    _write_checkpoint(one_tensor, {"pos_embed": ((BOMB_BYTES // 4,), BOMB_BYTES // 4)})
    for path in (same_keys, one_tensor):
        assert path.stat().st_size < 4_500_000
    # the bomb is real: torch's own reader sees the 4 GiB record (without reading it)
    with open(same_keys, "rb") as fh:
        reader = torch._C.PyTorchFileReader(fh)
        index = list(net).index("pos_embed")
        if hasattr(reader, "get_record_size"):
            assert reader.get_record_size(f"data/{index}") == BOMB_BYTES
    proc = subprocess.run(
        [sys.executable, "-c", _BOMB_SCRIPT, MODEL, str(same_keys), str(one_tensor)],
        capture_output=True, text=True, timeout=300, env=_subprocess_env())
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.splitlines()[-1])
    for key, result in results.items():
        assert result["error"] is not None, f"{key}: the bomb was loaded"
        # nothing near the bomb's 4 GiB (the file is refused before the model is built)
        assert result["peak_growth"] < 32 << 20, (key, result)
        assert result["seconds"] < 30, (key, result)
    for how in ("load_checkpoint", "fit"):
        kind, msg = results[f"{same_keys} {how}"]["error"]
        assert kind == "CheckpointTooLargeError", msg
        assert "its records declare 4.1 GiB (the largest, archive/data/" in msg, msg
        assert "4.0 GiB, stored in 4.0 MiB)" in msg, msg
        assert "take 84.1 MiB in float32" in msg and "decompression bomb" in msg
        kind, msg = results[f"{one_tensor} {how}"]["error"]
        assert kind == "ValueError", msg  # refused by its shapes, before any record is read
        assert f"weights file {one_tensor} does not fit model {MODEL!r}" in msg, msg
        assert "pos_embed is (1073479680,) in the file, (1, 1370, 384) in the model" in msg


@pytest.mark.slow
def test_archive_declarations_are_checked_before_reading(monkeypatch, tmp_path):
    """Each refusal below happens with the records unread: torch.load is never called."""
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    tensors = _model_tensors()

    # a pickle that inflates to 64 MiB (a state dict's takes some kilobytes)
    path = tmp_path / "pickle_bomb.pth"
    _write_zip(path, [("archive/data.pkl", 64 << 20), ("archive/version", b"3\n")])
    with pytest.raises(CheckpointTooLargeError, match=r"its pickle \(archive/data.pkl\) "
                                                      r"declares 64.0 MiB, more than the "
                                                      r"4.0 MiB read"):
        load_checkpoint(path, model=MODEL)

    # a record of another size than the pickle declares for its storage
    path = tmp_path / "mismatch.pth"
    _write_checkpoint(path, tensors, sizes={"cls_token": 4 * 384 + 4})
    with pytest.raises(ValueError, match=r"its pickle declares storage '0' of 1536 bytes, but "
                                         r"its record archive/data/0 is 1540 bytes"):
        load_checkpoint(path, model=MODEL)

    # a record named twice (which of the two would be read is up to the reader)
    path = tmp_path / "twice.pth"
    _write_checkpoint(path, tensors, extra=[("archive/data/0", 1 << 30)])
    with pytest.raises(ValueError, match=r"holds 'archive/data/0' 2 times"):
        load_checkpoint(path, model=MODEL)

    # records the pickle does not mention count too
    path = tmp_path / "hidden.pth"
    _write_checkpoint(path, tensors, extra=[("archive/data/spare", 1 << 30)])
    with pytest.raises(CheckpointTooLargeError, match="archive/data/spare: 1.0 GiB"):
        load_checkpoint(path, model=MODEL)

    # the bound without a model is the largest model's
    path = tmp_path / "g.pth"
    half = model_tensor_bytes() // 2 + (1 << 20)  # two records (each under 4 GiB)
    _write_checkpoint(path, {"w": ((1,), 1)},
                      extra=[("archive/data/a", half), ("archive/data/b", half)])
    with pytest.raises(CheckpointTooLargeError, match="the tensors of the largest DINOv2 "
                                                      "model take 4.2 GiB"):
        load_checkpoint(path)
    assert loads == []


def test_an_uncompressed_file_is_bounded_by_its_size(tmp_path):
    """A legacy-format file or bare pickle cannot be compressed: its size is the bound."""
    path = tmp_path / "huge.pth"
    with open(path, "wb") as fh:
        fh.write(b"\x80\x02")  # how a pickle (and the legacy torch.save format) starts
        fh.truncate(model_tensor_bytes(MODEL) + (8 << 20))  # sparse: nothing on disk
    with pytest.raises(CheckpointTooLargeError, match=r"before reading its tensors: it is "
                                                      r"92.1 MiB, but the tensors of "
                                                      r"dinov2_vits14 take 84.1 MiB"):
        load_checkpoint(path, model=MODEL)


# --------------------------------------------------------------------------
# feature caches
# --------------------------------------------------------------------------

_EMBED_SCRIPT = """
import json, sys, warnings
from pathlib import Path
import numpy as np
from PIL import Image
from sklearn_clasp import make_clasp_pipeline
from sklearn_clasp.embedding import DinoPatchEmbedder

warnings.simplefilter("ignore")
image_path, watched, cache = sys.argv[1], sys.argv[2:4], sys.argv[4]


def written():
    return sorted(str(p) for root in watched for p in Path(root).rglob("*"))


image = np.random.default_rng(0).integers(0, 256, (56, 70, 3), dtype=np.uint8)
Image.fromarray(image).save(image_path)
emb = DinoPatchEmbedder("dinov2_vits14", weights="random", short_side=None, random_state=0)
emb.fit_transform([image, image_path])
pipe = make_clasp_pipeline("dinov2", model="dinov2_vits14", weights="random",
                           short_side=None, refine="nearest", random_state=0)
pipe.fit_predict([image_path])
print(json.dumps(written()))
emb.set_params(memory=cache).transform([image])  # the control: a cache that was asked for
print(json.dumps(written()))
"""


@pytest.mark.slow
def test_no_cache_or_file_is_written_unless_asked(tmp_path):
    home, cwd, inputs = tmp_path / "home", tmp_path / "cwd", tmp_path / "inputs"
    for d in (home, cwd, inputs):
        d.mkdir()
    image = inputs / "image.png"
    done = subprocess.run(
        [sys.executable, "-c", _EMBED_SCRIPT, str(image), str(home), str(cwd),
         str(home / "features")],
        cwd=cwd, env=_subprocess_env(HOME=str(home), PYTHONDONTWRITEBYTECODE="1"),
        capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    without_cache, with_cache = (json.loads(line) for line in done.stdout.splitlines()[-2:])
    # nothing in HOME (~/.cache, ~/.cache/torch, ~/.config, ...) nor in the working
    # directory, and nothing beside the input image
    assert without_cache == []
    assert sorted(p.name for p in inputs.iterdir()) == ["image.png"]
    # the check sees a cache when there is one: memory= writes there and only there
    assert with_cache and all(p.startswith(str(home / "features")) for p in with_cache)


def test_cache_writable_by_others_is_pointed_out(tmp_path):
    image = np.zeros((28, 28, 3), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = DinoPatchEmbedder(MODEL, weights="random", short_side=None, random_state=0)
        emb.fit()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a directory only we can write
        emb.set_params(memory=str(private)).transform([image])

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.warns(UserWarning, match=r"shared'.* is writable by other users.*pickles"):
        emb.set_params(memory=str(shared)).transform([image])


def test_pipeline_cache_in_a_directory_others_can_write_warns(tmp_path):
    from sklearn_clasp import make_clasp_pipeline

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_clasp_pipeline("handcrafted", memory=str(private))
        make_clasp_pipeline("handcrafted", memory=str(tmp_path / "not-yet"))  # ours once made
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.warns(UserWarning, match=r"cache directory is writable by other users"):
        make_clasp_pipeline("handcrafted", memory=str(shared))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        someone = tmp_path / "someone"
        someone.mkdir(mode=0o700)
        os.chown(someone, 12345, 12345)
        with pytest.warns(UserWarning, match=r"is owned by another user"):
            make_clasp_pipeline("handcrafted", memory=str(someone))


# --------------------------------------------------------------------------
# listening sockets
# --------------------------------------------------------------------------

# Loaded into every Python process of the run (the main one and joblib's
# workers), through PYTHONPATH: records each socket.listen call.
_SITECUSTOMIZE = """
import os, socket
_listen = socket.socket.listen

def listen(self, *args):
    with open(os.environ["CLASP_LISTEN_LOG"], "a") as fh:
        fh.write(f"{os.getpid()} {self.family.name}\\n")
    return _listen(self, *args)

socket.socket.listen = listen
"""

_RUN_SCRIPT = """
import importlib, json, os, pkgutil, sys, warnings
from pathlib import Path

warnings.simplefilter("ignore")


def listening_inodes():
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                inodes.add(fields[9])
    return inodes


def our_socket_inodes():
    pids, me = {str(os.getpid())}, str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = stat.read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        if ppid == me:  # joblib's workers are our children
            pids.add(stat.parent.name)
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def listen_on_tcp(i):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    socket.kept = getattr(socket, "kept", []) + [s]  # still listening when checked
    return i


images, out, log = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
import sklearn_clasp
for mod in pkgutil.walk_packages(sklearn_clasp.__path__, "sklearn_clasp."):
    importlib.import_module(mod.name)
from joblib import Parallel, delayed
from sklearn_clasp import make_clasp_pipeline
from sklearn_clasp.collection import segment_collection

pipe = make_clasp_pipeline("handcrafted", short_side=None, refine="nearest", random_state=0)
for n_jobs in (1, 2):
    report = segment_collection(images, out / str(n_jobs), pipeline=pipe, n_jobs=n_jobs,
                                chunk_size=1)
    assert report.n_done == 2, report.summary()
print(json.dumps(sorted(listening_inodes() & our_socket_inodes())))
with open(log, "a") as fh:
    fh.write("control\\n")
# the control: workers that do open a port, which both checks must see
Parallel(n_jobs=2)(delayed(listen_on_tcp)(i) for i in range(4))
print(json.dumps(sorted(listening_inodes() & our_socket_inodes())))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_import_and_local_runs_open_no_listening_port(tmp_path):
    from PIL import Image

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (42, 56, 3), dtype=np.uint8)).save(
            images / f"im{i}.png")

    log = tmp_path / "listen.log"
    env = _subprocess_env(CLASP_LISTEN_LOG=str(log))
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), env["PYTHONPATH"]])
    done = subprocess.run([sys.executable, "-c", _RUN_SCRIPT, str(images),
                           str(tmp_path / "out"), str(log)],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    run_inodes, control_inodes = (json.loads(x) for x in done.stdout.splitlines()[-2:])
    run_calls, control_calls = log.read_text().split("control\n")
    inet = ("AF_INET\n", "AF_INET6\n")
    # the two checks detect a listener opened in a worker process...
    assert sum(line.endswith(inet) for line in control_calls.splitlines(True)) == 4
    assert control_inodes
    # ...and see none in an import of every module and local runs with 1 and 2 jobs
    assert not any(line.endswith(inet) for line in run_calls.splitlines(True))
    assert run_inodes == []


# --------------------------------------------------------------------------
# Dask: TLS settings reach the client
# --------------------------------------------------------------------------


class _Connected(Exception):
    pass


def _recording_client(monkeypatch):
    distributed = pytest.importorskip("distributed")
    calls = []

    def client(address, **kwargs):
        calls.append((address, kwargs))
        raise _Connected  # stop before any connection is attempted

    monkeypatch.setattr(distributed, "Client", client)
    return calls


def _one_image(folder):
    from PIL import Image

    folder.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(folder / "a.png")
    return folder / "a.png"


def test_security_is_passed_to_the_client(monkeypatch, tmp_path):
    from distributed.security import Security

    from sklearn_clasp import make_clasp_pipeline
    from sklearn_clasp.collection import segment_collection

    calls = _recording_client(monkeypatch)
    security = Security(tls_ca_file="ca.pem", tls_client_cert="c.pem",
                        tls_client_key="k.pem", require_encryption=True)
    with pytest.raises(_Connected):
        segment_collection(_one_image(tmp_path / "in"), tmp_path / "out",
                           pipeline=make_clasp_pipeline("handcrafted"),
                           scheduler="tls://scheduler.example:8786", security=security)
    assert calls == [("tls://scheduler.example:8786", {"security": security})]


def _pem_files(folder):
    folder.mkdir()
    for name in ("ca.pem", "client.pem", "client.key"):
        (folder / name).write_text("-----BEGIN CERTIFICATE-----\n")
    return folder / "ca.pem", folder / "client.pem", folder / "client.key"


def test_cli_tls_options_build_a_security_object(monkeypatch, tmp_path):
    from distributed.security import Security

    from sklearn_clasp.cli import main

    calls = _recording_client(monkeypatch)
    ca, cert, key = _pem_files(tmp_path / "tls")
    image = _one_image(tmp_path / "in")
    args = ["segment", str(image), "--out", str(tmp_path / "out"), "--embedder",
            "handcrafted", "--scheduler", "tls://scheduler.example:8786",
            "--tls-ca-file", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]
    with pytest.raises(_Connected):
        main(args)
    (address, kwargs), = calls
    security = kwargs["security"]
    assert address == "tls://scheduler.example:8786" and isinstance(security, Security)
    assert (security.tls_ca_file, security.tls_client_cert, security.tls_client_key) == (
        str(ca), str(cert), str(key))
    assert security.require_encryption is True

    # the same from a config file, with paths relative to it
    config = tmp_path / "tls" / "run.toml"
    config.write_text('scheduler = "tls://scheduler.example:8786"\ntls_ca_file = "ca.pem"\n'
                      'tls_cert = "client.pem"\ntls_key = "client.key"\n')
    calls.clear()
    with pytest.raises(_Connected):
        main(["segment", str(image), "--out", str(tmp_path / "out"), "--embedder",
              "handcrafted", "--config", str(config)])
    assert calls[0][1]["security"].tls_client_key == str(key)


@pytest.mark.parametrize(
    "drop, replace, message",
    [
        (["--scheduler", "tls://scheduler.example:8786"], {}, "add --scheduler tls://"),
        (["--tls-cert", "CERT"], {}, "TLS needs --tls-ca-file and --tls-cert"),
        ([], {"CA": "missing.pem"}, "--tls-ca-file missing.pem: no such file"),
    ],
)
def test_cli_tls_usage_errors(monkeypatch, tmp_path, capsys, drop, replace, message):
    from sklearn_clasp.cli import main

    calls = _recording_client(monkeypatch)
    ca, cert, _ = _pem_files(tmp_path / "tls")
    args = ["segment", str(_one_image(tmp_path / "in")), "--out", str(tmp_path / "out"),
            "--embedder", "handcrafted", "--scheduler", "tls://scheduler.example:8786",
            "--tls-ca-file", "CA", "--tls-cert", "CERT"]
    for i in range(0, len(drop), 2):
        at = args.index(drop[i])
        del args[at : at + 2]
    paths = {"CA": str(ca), "CERT": str(cert)} | replace
    args = [paths.get(a, a) for a in args]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert calls == []

