"""Wall times of the spine on this machine: a cold default run, a fully cached rerun, a plan.

    python benchmarks/spine.py [--repeat 3]

Each command runs as a user types it (`python -m pipelines ...`) in a scratch directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(args: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINES_STORE": str(cwd / "store")}
    t0 = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pipelines", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        sys.exit(f"failed: pipelines {' '.join(args)}\n{result.stdout}\n{result.stderr}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        cold = timed(["run", "+pipeline=sft"], cwd)
        cached = [timed(["run", "+pipeline=sft"], cwd) for _ in range(args.repeat)]
        plans = [
            timed(["plan", "+pipeline=sft", "stages.sft.learning_rate=2e-4"], cwd)
            for _ in range(args.repeat)
        ]
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print(f"cold run  +pipeline=sft          {cold:6.2f} s   (target < 60 s)")
    print(
        f"cached rerun (median of {args.repeat})      {statistics.median(cached):6.2f} s   (target < 3 s)"
    )
    print(f"plan with a change (median of {args.repeat}) {statistics.median(plans):6.2f} s")


if __name__ == "__main__":
    main()
