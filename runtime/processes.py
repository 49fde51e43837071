"""Child process groups of a run: started in their own session, their output streamed, and all
stopped together when the orchestrator is interrupted (Ctrl-C), so no rank outlives its run."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque

_LIVE: set[subprocess.Popen] = set()
_LOCK = threading.Lock()
KEEP = 200  # lines of a child's output kept for the failure message (torchrun's summary)


def run_process(args: list[str], env: dict[str, str], prefix: str | None = None) -> tuple[int, str]:
    """Run `args` to the end; returns (exit code, the tail of its output). Output goes to our
    stdout as it comes: raw (progress bars redraw in place) or, with `prefix`, line by line
    with the stage's name in front (several stages print at once)."""
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    with _LOCK:
        _LIVE.add(proc)
    tail: deque[str] = deque(maxlen=KEEP)
    try:
        _pump(proc, tail, prefix)
        code = proc.wait()
    finally:
        with _LOCK:
            _LIVE.discard(proc)
    return code, "\n".join(tail)


def _pump(proc: subprocess.Popen, tail: deque[str], prefix: str | None) -> None:
    out = sys.stdout
    labelled = Labelled(prefix) if prefix is not None else None
    pending = ""
    assert proc.stdout is not None
    while chunk := proc.stdout.read1(65536):  # type: ignore[attr-defined]
        text = chunk.decode("utf-8", "replace")
        if labelled is None:
            out.write(text)
            out.flush()
        pending += text
        *pieces, pending = re.split(r"(?<=[\r\n])", pending)
        for piece in pieces:
            line = piece.rstrip("\r\n")
            if line.strip():
                tail.append(line)
                if labelled is not None:
                    labelled.show(line, redraw=piece.endswith("\r"))
    if pending.strip():
        tail.append(pending)


class Labelled:
    """One stage's output among several: each line with the stage's name in front; a progress
    bar's redraws (ended by \r) at most every REDRAW_S seconds, so bars stay readable."""

    REDRAW_S = 5.0

    def __init__(self, name: str) -> None:
        self.name = name
        self.last = 0.0

    def show(self, line: str, redraw: bool) -> None:
        now = time.monotonic()
        if redraw and now - self.last < self.REDRAW_S:
            return
        self.last = now if redraw else self.last
        sys.stdout.write(f"[{self.name}] {line.strip()}\n")
        sys.stdout.flush()


def stop_all(grace_s: float = 10.0) -> int:
    """SIGTERM every live child group, SIGKILL what is left after `grace_s`; returns how many.
    torchrun starts each rank in a session of its own, so the ranks are found as descendants
    and killed too: an orphaned rank would hold our output pipe (and the run) open."""
    with _LOCK:
        procs = list(_LIVE)
    family = {proc.pid: _descendants(proc.pid) for proc in procs}
    # a stage's processes all name its spec (the last argument): also those no longer below it
    markers = [str(proc.args[-1]) for proc in procs if isinstance(proc.args, list)]
    for proc in procs:
        _signal(proc, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            family[proc.pid] += _descendants(proc.pid)
            _signal(proc, signal.SIGKILL)
    for pids in [*family.values(), _naming(markers)]:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return len(procs)


def _naming(markers: list[str]) -> list[int]:
    """Other processes whose command line holds one of `markers`."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info.get("cmdline") or []
        if p.pid != os.getpid() and any(m in arg for m in markers for arg in cmdline):
            found.append(p.pid)
    return found


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _signal(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
