"""Run the CLI as a user does: a subprocess in a scratch directory with its own store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli_env(cwd: Path) -> dict[str, str]:
    """The environment of a CLI run in `cwd`: this checkout first, a store of its own."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINES_STORE": str(cwd / "store")}


def start(*args: str, cwd: Path, **popen: object) -> subprocess.Popen:
    """`python -m pipelines <args>` started in the background (stdout and stderr as given)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines", *args], cwd=cwd, env=cli_env(cwd), **popen
    )  # type: ignore[call-overload]


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """`result`, asserted successful (its output's tails in the failure message)."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def pipelines(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        cwd=cwd,
        env={**cli_env(cwd), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def complete_checkpoints(store: Path) -> list[Path]:
    return list((store / "work").glob("*/checkpoints/checkpoint-*/.complete"))


def run_until_first_checkpoint(*args: str, cwd: Path) -> int:
    """`run` in a subprocess, killed with SIGKILL once a complete checkpoint exists; returns
    its exit code (-SIGKILL unless it finished first)."""
    proc = start("run", *args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not complete_checkpoints(cwd / "store") and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()
