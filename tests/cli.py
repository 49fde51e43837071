"""Run the CLI as a user does: a subprocess in a scratch directory with its own store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pipelines(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINES_STORE": str(cwd / "store")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def complete_checkpoints(store: Path) -> list[Path]:
    return list((store / "work").glob("*/checkpoints/checkpoint-*/.complete"))


def run_until_first_checkpoint(*args: str, cwd: Path) -> int:
    """`run` in a subprocess, killed with SIGKILL once a complete checkpoint exists; returns
    its exit code (-SIGKILL unless it finished first)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINES_STORE": str(cwd / "store")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "run", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not complete_checkpoints(cwd / "store") and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()
