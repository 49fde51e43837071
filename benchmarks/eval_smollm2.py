"""Exact match on the held-out demo test split, before and after LoRA SFT of SmolLM2-135M.

    python benchmarks/eval_smollm2.py [--steps 150] [--lr 1e-3] [--batch 8] [--samples 200]

Runs one pipeline through the CLI in a temporary directory: `+pipeline=sft` on `model=smollm2`
with LoRA, plus two eval stages over `demo_test` (none of its prompts is in `demo_sft`), scored by
the demo checker (`stages.data.demo:check_answer`): `eval_base` on the untrained model and `eval`
on the sft adapter. Prints both exact-match scores, the held-out loss of each and the wall times.
SmolLM2 comes from a GGUF file inside a PyPI wheel (fetched once).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECK = "stages.data.demo:check_answer"


def eval_stage(
    name: str, model: str, samples: int, metrics: str, max_new_tokens: int = 16, batch: int = 32
) -> list[str]:
    """Hydra overrides adding an eval stage `name` on the output of stage `model`: greedy replies
    to `samples` rows of demo_test, scored by the demo checker (`metrics`: e.g. [exact_match])."""
    return [
        f"+stages.{name}.kind=eval",
        f"+stages.{name}.model={model}",
        f"+stages.{name}.dataset=demo_test",
        f"+stages.{name}.max_samples={samples}",
        f"+stages.{name}.answer_check={CHECK}",
        f"+stages.{name}.metrics={metrics}",
        f"+stages.{name}.max_new_tokens={max_new_tokens}",
        f"+stages.{name}.batch_size={batch}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=200, help="demo_test rows evaluated")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--eval-batch", type=int, default=32)
    parser.add_argument("--store", default=None, help="keep the store here (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or f"{tmp}/store"
        shape = (args.samples, "[exact_match,loss]", args.max_new_tokens, args.eval_batch)
        overrides = [
            f"model={args.model}",
            f"store={store}",
            "stages.sft.finetuning_type=lora",
            f"stages.sft.learning_rate={args.lr}",
            f"stages.sft.max_steps={args.steps}",
            f"stages.sft.per_device_train_batch_size={args.batch}",
            "stages.sft.save_steps=100000",
            "stages.sft.report_to=none",
            *eval_stage("eval_base", "base", *shape),
            *eval_stage("eval", "sft", *shape),
        ]
        cmd = [sys.executable, "-m", "pipelines", "run", "+pipeline=sft", *overrides]
        print(" ".join(cmd[1:]), flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run(cmd, cwd=tmp, check=True, env=env)
        runs = sorted(Path(store, "runs").glob("*.json"))
        stages = json.loads(runs[-1].read_text())["stages"]
    before, after = stages["eval_base"]["metrics"], stages["eval"]["metrics"]
    print(
        f"{args.model} exact match on demo_test ({after['examples']} rows, {CHECK}):\n"
        f"  untrained   {before['exact_match']:.1%}  (held-out loss {before['loss']:.3f})\n"
        f"  LoRA sft    {after['exact_match']:.1%}  (held-out loss {after['loss']:.3f}; "
        f"{args.steps} steps, lr {args.lr}, batch {args.batch}, "
        f"train {stages['sft']['wall_s']:.0f} s, eval {stages['eval']['wall_s']:.0f} s)"
    )


if __name__ == "__main__":
    main()
