"""Every rank's output in the work dir: `<work>/logs/rank-<r>.log`.

The file descriptors themselves are redirected, so what C++ code and child processes print lands
there too. Rank 0 also keeps writing to the console it inherited (through a tee thread), so the
user watches one rank's progress while every rank's log stays on disk for the failure summary.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path


def log_path(work: Path, rank: int) -> Path:
    return work / "logs" / f"rank-{rank}.log"


def capture(work: Path, rank: int, echo: bool) -> None:
    """Send fds 1 and 2 to this rank's log file; `echo` keeps a copy on the original stdout."""
    path = log_path(work, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    if not echo:
        os.dup2(log, 1)
        os.dup2(log, 2)
        return
    console = os.dup(1)
    read, write = os.pipe()
    os.dup2(write, 1)
    os.dup2(write, 2)
    os.close(write)
    _TEE["console"] = console
    _TEE["thread"] = threading.Thread(target=_tee, args=(read, log, console), daemon=True)
    _TEE["thread"].start()


_TEE: dict = {}


def finish() -> None:
    """Flush what the tee holds before the process exits (its last lines are the summary)."""
    thread = _TEE.pop("thread", None)
    if thread is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(_TEE["console"], 1)  # closes the pipe's write ends: the tee sees end of file
    os.dup2(_TEE["console"], 2)
    thread.join(timeout=5)


def _tee(read: int, log: int, console: int) -> None:
    while chunk := os.read(read, 65536):
        os.write(log, chunk)
        with contextlib.suppress(OSError):  # the console went away: keep the log
            os.write(console, chunk)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, progress-bar redraws folded (a bar rewrites its line with \\r)."""
    if not path.exists():
        return ""
    text = path.read_bytes()[-65536:].decode("utf-8", "replace")
    kept = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join([line for line in kept if line.strip()][-lines:])
