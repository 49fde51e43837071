"""Two independent training branches (two sft stages from the same base) with one CPU slot
against two, alternating A B A B in one run (this machine's speed drifts; only ratios hold).

    python benchmarks/parallel_branches.py [--steps 150] [--rounds 2]

Each round copies a store where base and tokenize are already built, so only the two branches
run; it prints both walls per round, the median ratio with its spread, and whether the two
settings produced the same artifacts (keys and file digests, logs aside: their records carry
timings).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def args_for(steps: int) -> list[str]:
    return [
        "+pipeline=sft",
        "~stages.eval",
        "~stages.export",
        f"stages.sft.max_steps={steps}",
        f"+stages.sft_b={{kind:sft,max_steps:{steps},learning_rate:1e-4}}",
    ]


def run(store: Path, extra: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINES_STORE": str(store)}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "run", *extra],
        env=env,
        cwd=store.parent,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(done.stdout[-2000:] + done.stderr[-2000:])
    return time.perf_counter() - t0


# logs of a run: their step records carry timings, TensorBoard names its files by time and host
LOGS = ("train_log.jsonl", "tensorboard/")


def digests(store: Path) -> dict[str, dict[str, str]]:
    """Artifact key -> its files' digests (logs left out), for every artifact in the store."""
    out = {}
    for manifest in store.glob("artifacts/*/*/manifest.json"):
        m = json.loads(manifest.read_text())
        files = (m.get("files") or {}).items()
        out[m["key"]] = {k: str(v) for k, v in sorted(files) if not k.startswith(LOGS)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    opts = parser.parse_args()
    base_args = args_for(opts.steps)
    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp) / "seed" / "store"
        seed.parent.mkdir()
        run(seed, [*base_args, "--only", "base", "tokenize:demo_sft", "tokenize:demo_sft:sft_b"])
        walls: dict[int, list[float]] = {1: [], 2: []}
        made: dict[int, dict] = {}
        for r in range(opts.rounds):
            for slots in (1, 2):
                store = Path(tmp) / "run" / "store"  # one path: adapters name their base's
                shutil.rmtree(store, ignore_errors=True)
                shutil.copytree(seed, store)
                walls[slots].append(run(store, [*base_args, f"launcher.slots={slots}"]))
                made[slots] = digests(store)
                print(f"round {r + 1}: slots={slots} {walls[slots][-1]:.1f}s", flush=True)
    ratios = [a / b for a, b in zip(walls[1], walls[2], strict=True)]
    print(f"one slot:  median {statistics.median(walls[1]):.1f}s  ({os.cpu_count()} CPUs)")
    print(f"two slots: median {statistics.median(walls[2]):.1f}s")
    print(
        f"speed-up:  {statistics.median(ratios):.2f}x "
        f"(rounds {', '.join(f'{x:.2f}' for x in ratios)})"
    )
    print(f"identical artifacts (keys and digests): {made[1] == made[2]}")
    for key in sorted(set(made[1]) | set(made[2])):
        one, two = made[1].get(key, {}), made[2].get(key, {})
        differ = sorted(f for f in set(one) | set(two) if one.get(f) != two.get(f))
        if differ:
            print(f"  {key[:12]} differs in: {', '.join(differ)}")


if __name__ == "__main__":
    main()
