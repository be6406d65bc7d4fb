"""Untrusted files and shared machines: nothing loaded can run code, nothing is written
or opened that the caller did not ask for.

- weight files: pickles that would run code are refused (and their payload does not
  run), official files are verified before they are parsed;
- feature caches: nothing is cached unless ``memory=`` says where, and a cache that
  others can write to is pointed out;
- Dask: the library opens no listening port; TLS settings reach the client.

No test reaches the network.
"""

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import sklearn_clasp
from sklearn_clasp.embedding import DinoPatchEmbedder, load_dinov2
from sklearn_clasp.embedding import weights as _weights
from sklearn_clasp.embedding.weights import (
    OFFICIAL_WEIGHTS,
    WEIGHTS_ENV_VAR,
    ChecksumMismatchError,
    UnsafeCheckpointError,
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
    with pytest.warns(UserWarning, match=r"pipeline cache directory is writable by other users"):
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

