"""Soak test of ``clasp segment`` under mixed faults (not part of the unit suite).

A collection of small synthetic images is segmented by ``clasp segment
--n-jobs 2`` in a subprocess, run after run, until it is complete, while
faults are injected at random points of the collection's progress:

- **SIGKILL of the run** (the main process only, as the out-of-memory killer
  does) at ``--kills`` random moments;
- **SIGKILL of one local worker process** once;
- **a full output disk** for part of the run: as root, the output directory
  is a small tmpfs that a filler file fills up mid-run, removed after the run
  stopped (else: every write fails with ENOSPC while a flag file exists,
  through the same ``sitecustomize`` as below).

Every record written, by any process, is logged (a ``sitecustomize`` on the
runs' ``PYTHONPATH`` wraps ``OutputStore.write``; nothing of this is in the
package). After each run the outputs are checked, and at the end every record
against its mask and its input. The report counts the images **done**,
**redone** (a record written more than once, over all runs) and **lost**
(complete after one run, not after a later one), the exit statuses, the
processes and ``/dev/shm`` semaphores a killed run left behind, and the
temporary files SIGKILL leaves (documented: never read, safe to delete).

Run:  python benchmarks/soak_hostile.py [--images 500] [--kills 5] [--seed 0]
      [--work DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZES = [(56, 70), (84, 98), (70, 84), (98, 112), (112, 140)]
OPTIONS = ["--embedder", "handcrafted", "--embed-short-side", "none", "--refine", "nearest",
           "--n-jobs", "2", "-q"]

SITECUSTOMIZE = '''
import os

if os.environ.get("SOAK_WRITE_LOG"):
    import errno

    from sklearn_clasp.collection import store as _store

    _write = _store.OutputStore.write

    def _logged_write(self, name, image, mask, meta):
        flag = os.environ.get("SOAK_ENOSPC_FLAG")
        if flag and os.path.exists(flag):
            raise OSError(errno.ENOSPC, f"could not write {name}: No space left on device")
        _write(self, name, image, mask, meta)
        fd = os.open(os.environ["SOAK_WRITE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                     0o644)
        try:
            os.write(fd, f"{name}\\t{self.run_id}\\n".encode())
        finally:
            os.close(fd)

    _store.OutputStore.write = _logged_write
'''


def make_images(folder, n, seed):
    from PIL import Image

    from sklearn_clasp.datasets import make_shapes_image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        image, _ = make_shapes_image(h, w, n_shapes=1 + i % 4, noise=3.0,
                                     random_state=seed * 100_000 + i)
        Image.fromarray(image).save(folder / f"img{i:04d}.png")


def session_processes(sid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[3]) == sid:
                out.append(int(entry))
    return out


def loky_semaphores(pid):
    with contextlib.suppress(OSError):
        return [p for p in os.listdir("/dev/shm") if p.startswith(f"sem.loky-{pid}-")]
    return []


def children(pid, marker):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read()
            if ppid == pid and marker in cmd:
                found.append(int(entry))
    return found


def records(out):
    """``{name: run_id}`` of the complete records (mask and overlay there)."""
    done = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(out):
            if entry.name.startswith(".") or not entry.name.endswith(".json"):
                continue
            name = entry.name[:-5]
            try:
                record = json.loads(Path(entry.path).read_text())
            except (OSError, ValueError):
                continue
            if (out / f"{name}_mask.png").is_file() and (out / f"{name}_overlay.png").is_file():
                done[name] = record.get("run_id")
    return done


def count_records(out):
    with contextlib.suppress(OSError):
        return sum(1 for e in os.scandir(out) if e.name.endswith(".json")
                   and not e.name.startswith("."))
    return 0


class Disk:
    """The output directory: a small tmpfs as root (filled up on demand), else a flag."""

    def __init__(self, work, size_mb):
        self.mount = work / "disk"
        self.mount.mkdir(parents=True, exist_ok=True)
        self.flag = work / "enospc.flag"
        self.real = False
        if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount"):
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                                   str(self.mount)], capture_output=True, check=False)
            self.real = done.returncode == 0
        self.filler = self.mount / "filler.bin"

    @property
    def out(self):
        return self.mount / "out"

    def fill(self):
        if not self.real:
            self.flag.write_bytes(b"")
            return
        block = b"\0" * (1 << 16)
        with open(self.filler, "wb", buffering=0) as fh:
            with contextlib.suppress(OSError):
                while True:
                    fh.write(block)
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * 512)

    def free(self):
        if self.real:
            self.filler.unlink(missing_ok=True)
        else:
            self.flag.unlink(missing_ok=True)

    def close(self):
        if self.real:
            subprocess.run(["umount", "-l", str(self.mount)], capture_output=True, check=False)


def soak(n_images, n_kills, seed, work, disk_mb=64):
    rng = random.Random(seed)
    work = Path(work)
    if work.exists():
        shutil.rmtree(work)
    (work / "site").mkdir(parents=True)
    (work / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    make_images(work / "in", n_images, seed)
    disk = Disk(work, disk_mb)
    log = work / "writes.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work / "site"), str(REPO)]),
           "OMP_NUM_THREADS": "1", "SOAK_WRITE_LOG": str(log),
           "SOAK_ENOSPC_FLAG": str(disk.flag)}
    # faults, at fractions of the collection done: random kills, a disk full, a worker killed
    events = sorted([(rng.uniform(0.05, 0.9), "kill run") for _ in range(n_kills)]
                    + [(0.35, "fill disk"), (0.6, "kill worker")])
    argv = [sys.executable, "-m", "sklearn_clasp", "segment", str(work / "in"), "--out",
            str(disk.out), *OPTIONS]
    runs, previous, lost, rewritten = [], {}, set(), set()
    left_processes, left_semaphores = 0, 0
    start = time.perf_counter()
    try:
        for _ in range(40):
            proc = subprocess.Popen(argv, env=env, cwd=work, start_new_session=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            faults = []
            while proc.poll() is None:
                done = count_records(disk.out)
                while events and events[0][0] * n_images <= done:
                    _, action = events.pop(0)
                    if action == "kill run":
                        proc.kill()
                    elif action == "fill disk":
                        disk.fill()
                    elif action == "kill worker":
                        workers = children(proc.pid, b"popen_loky_posix")
                        if not workers:
                            events.insert(0, (0.0, action))  # not started yet: soon again
                            break
                        os.kill(rng.choice(workers), signal.SIGKILL)
                    faults.append(action)
                    if action == "kill run":
                        break
                time.sleep(0.02)
            _, stderr = proc.communicate()
            (work / f"run-{len(runs) + 1:02d}.err").write_text(stderr)
            if "fill disk" in faults:
                disk.free()
            # a killed run must take its workers and their semaphores along
            deadline = time.monotonic() + 15
            while (session_processes(proc.pid) or loky_semaphores(proc.pid)) and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
            left = session_processes(proc.pid)
            left_processes += len(left)
            left_semaphores += len(loky_semaphores(proc.pid))
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            now = records(disk.out)
            lost |= {name for name in previous if name not in now}
            rewritten |= {name for name, run in now.items()
                          if name in previous and previous[name] != run}
            previous = now
            error = [line for line in stderr.splitlines() if line.strip()]
            runs.append({"status": proc.returncode, "faults": faults, "complete": len(now),
                         "stderr": error[-1][:160] if error else "",
                         "tracebacks": stderr.count("Traceback")})
            print(f"run {len(runs):2d}: exit {proc.returncode:>3}, {len(now):4d}/{n_images} "
                  f"complete, faults {faults or '-'}"
                  + (f"; {error[-1][:110]}" if error and proc.returncode else ""), flush=True)
            if proc.returncode == 0 and len(now) == n_images and not events:
                break
        wall = time.perf_counter() - start
        writes = [line.split("\t")[0] for line in log.read_text().splitlines()] \
            if log.exists() else []
        counts = {}
        for name in writes:
            counts[name] = counts.get(name, 0) + 1
        redone = {name for name, n in counts.items() if n > 1} | rewritten
        bad = verify(work / "in", disk.out)
        temporaries = sorted(p.name for p in disk.out.iterdir()
                             if p.name.startswith(".") and p.name.endswith(".tmp"))
        report = {
            "images": n_images, "runs": len(runs), "wall_seconds": round(wall, 1),
            "full_disk": "tmpfs" if disk.real else "ENOSPC flag",
            "exit_statuses": [r["status"] for r in runs],
            "faults": [f for r in runs for f in r["faults"]],
            "done": len(previous), "redone": len(redone), "lost": len(lost | bad),
            "records_written": len(writes), "tracebacks": sum(r["tracebacks"] for r in runs),
            "processes_left": left_processes, "semaphores_left": left_semaphores,
            "temporary_files_left": len(temporaries),
            "redone_names": sorted(redone)[:20], "lost_names": sorted(lost | bad)[:20],
        }
    finally:
        disk.close()
    return report


def verify(inputs, out):
    """Names whose record does not vouch for its files and input (mask size, segments,
    input checksum)."""
    import hashlib

    from PIL import Image

    bad = set()
    for path in sorted(inputs.glob("*.png")):
        name = path.stem
        try:
            record = json.loads((out / f"{name}.json").read_text())
            with Image.open(out / f"{name}_mask.png") as im:
                mask = np.asarray(im)
            with Image.open(out / f"{name}_overlay.png") as im:
                im.load()
            ok = (list(mask.shape) == record["image_size"]
                  and len(np.unique(mask)) == record["n_segments"]
                  and record["input_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest())
        except (OSError, ValueError, KeyError):
            ok = False
        if not ok:
            bad.add(name)
    return bad


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--kills", type=int, default=5, help="random SIGKILLs of the run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/clasp-soak"))
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    report = soak(args.images, args.kills, args.seed, args.work)
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = report["lost"] == 0 and report["redone"] == 0 and report["processes_left"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
