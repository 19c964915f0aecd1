"""The processes of a running server: tritonserver and its Python backend stubs (its children),
their resident memory, and whether one lives. Linux ``/proc`` only; no dependencies."""
from __future__ import annotations

import os
import threading
from pathlib import Path


def _children(pid: int) -> list[int]:
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Triton's Python backend stubs are its children)."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += _children(p)
    return seen


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    """Summed VmRSS of ``pid`` and its descendants, in bytes. Pages shared between the
    processes (libraries, the stubs' shared-memory regions) count once per process: a
    consistent measure for before/after comparisons, not the machine's memory use."""
    return 1024 * sum(rss_kb(p) for p in descendants(pid))


def alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def stub_model(pid: int) -> str | None:
    """The model a Python backend stub serves (its first argument is
    <repository>/<model>/<version>/model.py), or None for another process."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if not args or not args[0].endswith(b"triton_python_backend_stub") or len(args) < 2:
        return None
    return Path(args[1].decode(errors="replace")).parts[-3]


class RssSampler(threading.Thread):
    """Samples ``rss_bytes(pid)`` every ``every_s`` seconds, keeping the peak."""

    def __init__(self, pid: int, every_s: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.every_s, self.peak = pid, every_s, rss_bytes(pid)
        self._halt = threading.Event()

    def run(self):
        while not self._halt.wait(self.every_s):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self) -> int:
        self._halt.set()
        self.join(5)
        return self.peak
