"""The reward curve of ppo in the rlhf pipeline (pt -> sft -> rm -> ppo) on the built-in tiny
model, from a fixed seed.

    python benchmarks/ppo_curve.py [--steps 20] [--eval-every 2] [--lr 5e-4 1e-4]

Runs `+pipeline=rlhf` through the CLI in a temporary directory (upstream stages train once and
are cached for the other runs), once per learning rate plus a control with learning_rate 1e-30
(a config refuses 0; updates that small are below float32 resolution): the same sampling, an
unchanged policy, so the difference is what training did. Prints, every
`eval-every` steps, the held-out reward (`eval_reward_mean`: the mean reward-model score, with the
missing-eos penalty, of greedy replies to the 32 held-out prompts), the rollouts' raw score and
KL; then each final policy's exact-answer rate on the held-out prompts (the demo's rule-based
check, which nothing here trains on).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from cli_run import CONTROL_LR, run_pipeline, stage_log  # beside this file


def run(
    tmp: str, steps: int, every: int, lr: float, extra: list[str]
) -> tuple[list[dict], dict, float]:
    """(ppo's log records, the run record, wall seconds) of one run."""
    overrides = [
        f"stages.ppo.max_steps={steps}",
        f"stages.ppo.save_steps={every}",
        f"stages.ppo.learning_rate={lr}",
        *extra,
    ]
    record, wall = run_pipeline(tmp, ["+pipeline=rlhf", *overrides])
    return stage_log(tmp, record, "ppo"), record, wall


def exact_rate(tmp: str, record: dict, name: str) -> float:
    """Greedy replies of artifact `name` to the held-out prompts, checked by the demo's rule."""
    import torch
    from datasets import load_from_disk
    from transformers.utils import logging

    from runtime.store import Store
    from stages.data.build import chat_tokenizer
    from stages.data.demo import exact_answer_reward
    from stages.model.loading import load_model
    from stages.rl.rollout import left_pad, masked_replies, response_mask

    logging.disable_progress_bar()
    store = Store(Path(tmp, "store"))
    model_dir = store.find(record["stages"][name]["key"])
    data = store.find(record["stages"]["prompts:demo_prompts"]["key"])
    tok, stops = chat_tokenizer(model_dir, data)
    model = load_model(model_dir, store.find).eval()
    val = load_from_disk(str(data / "validation"))
    ids, mask = left_pad([list(p) for p in val["prompt_ids"]], tok.pad_token_id)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=tok.pad_token_id,
        )[:, ids.shape[1] :]
    reply_mask, _ = response_mask(out, tuple(stops))
    texts = tok.batch_decode(masked_replies(out, reply_mask), skip_special_tokens=True)
    scores = exact_answer_reward(list(val["prompt"]), texts)
    return sum(scores) / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--lr", type=float, nargs="+", default=[5e-4])
    parser.add_argument("--set", nargs="*", default=[], help="more overrides, e.g. stages.ppo.x=1")
    parser.add_argument("--dir", help="keep the store here (reruns reuse the cached upstream)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.dir or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        runs = {}
        for lr in [CONTROL_LR, *args.lr]:
            runs[lr] = run(tmp, args.steps, args.eval_every, lr, args.set)
            statuses = {k: v["status"] for k, v in runs[lr][1]["stages"].items()}
            print(f"lr {lr:g}: {runs[lr][2]:.0f} s wall; {statuses}", flush=True)
        print("\nstep  " + "  ".join(f"{'lr ' + format(lr, 'g'):>30}" for lr in runs))
        print("      " + "  ".join(f"{'eval  score    kl':>30}" for _ in runs))
        for step in range(0, args.steps + 1):  # step 0: the held-out reward before training
            cells = []
            for log, _, _ in runs.values():
                r = {rec["step"]: rec for rec in log}[step]
                ev = f"{r['eval_reward_mean']:+.3f}" if "eval_reward_mean" in r else "      "
                rest = f"{r['score_mean']:+.3f} {r['kl']:6.3f}" if step else " " * 13
                cells.append(f"{ev} {rest}".rjust(30))
            print(f"{step:4d}  " + "  ".join(cells))
        record = runs[CONTROL_LR][1]
        print(f"\nheld-out exact-answer rate: sft {exact_rate(tmp, record, 'sft'):.3f}", end="")
        for lr, (_, rec, _) in runs.items():
            print(f", ppo lr {lr:g} {exact_rate(tmp, rec, 'ppo'):.3f}", end="")
        print()


if __name__ == "__main__":
    main()
