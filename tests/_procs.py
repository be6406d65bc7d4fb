"""Process bookkeeping for tests that run ``clasp`` in a subprocess (Linux /proc)."""

import os
import time


def session_processes(sid):
    """``(pid, command line)`` of the live processes of session ``sid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            if fields[0] == "Z" or int(fields[3]) != sid:  # state, session id
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                found.append((int(entry), fh.read().replace(b"\0", b" ").decode()[:120]))
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    return found


def no_process_left(sid, grace=15.0):
    """Wait up to ``grace`` seconds for session ``sid`` to empty; return what is left."""
    deadline = time.monotonic() + grace
    while True:
        left = session_processes(sid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
