"""Trainer plumbing shared by training stages: arguments, checkpoint markers, step logs, and the
metrics a manifest keeps (losses, tokens seen, tokens/s, wall time, peak memory)."""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from typing import Any

from stages.base import Context

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def training_args(ctx: Context, cfg: Any, has_eval: bool) -> Any:
    """TrainingArguments from the LLaMA-Factory-style flat config of a training stage."""
    from transformers import TrainingArguments

    bf16, fp16 = precision(cfg.precision)
    evaluate = has_eval and cfg.save_steps > 0
    return TrainingArguments(
        output_dir=str(ctx.checkpoints),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        optim=cfg.optim,
        lr_scheduler_type=cfg.lr_scheduler_type,
        neftune_noise_alpha=cfg.neftune_noise_alpha,
        gradient_checkpointing=cfg.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=bf16,
        fp16=fp16,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=cfg.save_steps if evaluate else None,
        load_best_model_at_end=evaluate and cfg.early_stopping_patience is not None,
        metric_for_best_model="eval_loss" if evaluate else None,
        include_num_input_tokens_seen="non_padding",
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=has_cuda(),
        disable_tqdm=False,
    )


def precision(name: str) -> tuple[bool, bool]:
    """(bf16, fp16): `auto` takes bf16 where the GPU has it, else fp32."""
    if name == "auto":
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(), False
    return name == "bf16", name == "fp16"


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def callbacks(ctx: Context, cfg: Any, has_eval: bool) -> list[Any]:
    from transformers import EarlyStoppingCallback, TrainerCallback

    class MarkComplete(TrainerCallback):
        """The Trainer calls on_save after a checkpoint is fully written: only then mark it."""

        def on_save(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            path = ctx.checkpoints / f"checkpoint-{state.global_step}"
            if path.is_dir() and state.is_world_process_zero:
                ctx.mark_checkpoint_complete(path)

    class JsonlLog(TrainerCallback):
        """Every logged step, appended to the work dir (kept across resumes, copied at the end)."""

        def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            if logs and state.is_world_process_zero:
                with (ctx.work / "train_log.jsonl").open("a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    found = [MarkComplete(), JsonlLog()]
    if has_eval and cfg.early_stopping_patience is not None:
        found.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    return found


def train(trainer: Any, ctx: Context) -> None:
    """Train (resuming from ctx.resume_from), then record metrics and keep the logs."""
    t0 = time.time()
    resume = str(ctx.resume_from) if ctx.resume_from else None
    result = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - t0
    seen = int(trainer.state.num_input_tokens_seen or 0)
    ctx.metrics.update(
        train_loss=result.training_loss,
        steps=result.global_step,
        tokens_seen=seen,
        tokens_per_s=round(seen / result.metrics["train_runtime"], 1) if seen else 0.0,
        wall_s=round(wall, 3),
        peak_memory_mb=peak_memory_mb(),
    )
    if trainer.eval_dataset is not None:
        ctx.metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    log = ctx.work / "train_log.jsonl"
    if log.exists():
        (ctx.out / "train_log.jsonl").write_bytes(log.read_bytes())
    events = ctx.checkpoints / "runs"
    if events.is_dir():  # TensorBoard event files, when report_to includes tensorboard
        shutil.copytree(events, ctx.out / "tensorboard", dirs_exist_ok=True)


def peak_memory_mb() -> float:
    """Peak GPU memory where training ran on a GPU, else the process's peak resident memory."""
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)
