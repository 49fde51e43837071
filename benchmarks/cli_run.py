"""Run a pipeline through the CLI as a user does, and read what it left behind: the run record
and a stage's training log. Shared by the benchmarks that compare runs of one pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# a control run that learns nothing: a config refuses learning_rate 0, and updates this small are
# below float32 resolution, so the policy stays as it was
CONTROL_LR = 1e-30


def run_pipeline(cwd: str, overrides: list[str]) -> tuple[dict, float]:
    """`python -m pipelines run <overrides>` in `cwd` with the store at `<cwd>/store`: the run's
    record and its wall seconds. A failed run ends the benchmark with the run's own output."""
    cmd = [sys.executable, "-m", "pipelines", "run", f"store={cwd}/store", *overrides]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.time()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode:
        sys.exit(f"{' '.join(cmd[1:])} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    newest = sorted(Path(cwd, "store", "runs").glob("*.json"))[-1]
    return json.loads(newest.read_text()), wall


def stage_log(cwd: str, record: dict, stage: str) -> list[dict]:
    """The records of `train_log.jsonl` in stage `stage`'s committed artifact."""
    entry = record["stages"][stage]
    log = Path(cwd, "store", "artifacts", entry["kind"], entry["key"], "train_log.jsonl")
    return [json.loads(line) for line in log.read_text().splitlines()]
