"""The reward curve of grpo (or rloo) on the built-in tiny model, from a fixed seed.

    python benchmarks/grpo_curve.py [--kind grpo] [--steps 40] [--sft-steps 150] [--lr 1e-4]
                                    [--batch 16]

Runs `+pipeline=grpo` with a reward model added (base -> sft -> rm on the demo preference pairs ->
grpo scored by that reward model) through the CLI in a temporary directory, and prints the mean
reward-model score of the sampled replies over the run and by quarter of the steps, and the
exact-answer rate (the demo's rule-based reward, logged with weight 0 so it
does not train). A control run with learning_rate 1e-30 (a config refuses 0; updates that small
are below float32 resolution) samples from the same, unchanged policy: the
difference between the two is what training did, not sampling noise. A random tiny model almost
never answers right, which is why the reward model's score is the curve measured here.
"""

from __future__ import annotations

import argparse
import tempfile

from cli_run import CONTROL_LR, run_pipeline, stage_log  # beside this file

EXACT = "rewards/exact_answer_reward/mean"


def run(tmp: str, kind: str, steps: int, sft_steps: int, lr: float, batch: int) -> list[dict]:
    """The grpo stage's logged steps of one run (upstream stages cached across runs); prints the
    reward model's held-out pairwise accuracy."""
    overrides = [
        f"stages.sft.max_steps={sft_steps}",
        "+stage@stages.rm=rm",
        "stages.rm.model=sft",
        "stages.rm.dataset=demo_preference",
        "stages.rm.finetuning_type=full",
        "stages.rm.learning_rate=1e-3",
        "stages.rm.per_device_train_batch_size=16",
        "stages.rm.num_train_epochs=2",
        "stages.rm.val_size=0.1",
        "stages.rm.save_steps=100000",
        f"stages.grpo.kind={kind}",
        "stages.grpo.reward_model=rm",
        "stages.grpo.reward_weights=[1.0,0.0]",
        f"stages.grpo.max_steps={steps}",
        f"stages.grpo.learning_rate={lr}",
        f"stages.grpo.per_device_train_batch_size={batch}",
        "stages.grpo.save_steps=100000",
    ]
    if kind == "rloo":  # the grpo block, less the keys rloo does not have
        overrides += ["~stages.grpo.loss_type", "~stages.grpo.scale_rewards"]
    record, _ = run_pipeline(tmp, ["+pipeline=grpo", *overrides])
    print(f"rm held-out pairwise accuracy {record['stages']['rm']['metrics']['eval_accuracy']:.3f}")
    return [r for r in stage_log(tmp, record, "grpo") if "reward" in r]


def quarters(values: list[float]) -> list[float]:
    q = max(len(values) // 4, 1)
    return [sum(values[i : i + q]) / len(values[i : i + q]) for i in range(0, len(values), q)]


def summary(name: str, log: list[dict]) -> list[float]:
    rewards = [r["reward"] for r in log]
    exact = [r.get(EXACT, 0.0) for r in log]
    print(
        f"{name}: mean reward {sum(rewards) / len(rewards):+.4f}; by quarter "
        + " ".join(f"{v:+.4f}" for v in quarters(rewards))
        + f"; exact-answer rate {sum(exact) / len(exact):.3f}"
    )
    return rewards


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", default="grpo", choices=("grpo", "rloo"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch", type=int, default=16, help="replies per step")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shape = (args.kind, args.steps, args.sft_steps)
        trained = run(tmp, *shape, args.lr, args.batch)
        control = run(tmp, *shape, CONTROL_LR, args.batch)
    ours = summary(f"{args.kind} lr {args.lr}", trained)
    base = summary(f"{args.kind} (control: no learning)", control)
    diff = [a - b for a, b in zip(ours, base, strict=True)]  # same prompts at each step
    print("trained - control, by quarter: " + " ".join(f"{v:+.4f}" for v in quarters(diff)))


if __name__ == "__main__":
    main()
