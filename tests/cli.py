"""Run the CLI as a user does: a subprocess in a scratch directory with its own store."""

from __future__ import annotations

import os
import subprocess
import sys
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
