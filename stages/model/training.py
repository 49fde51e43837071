"""Trainer plumbing shared by training stages: arguments, checkpoint markers, step logs, and the
metrics a manifest keeps (losses, tokens seen, tokens/s, wall time, peak memory)."""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from typing import Any

from stages.base import Context, UserError


def training_args(ctx: Context, cfg: Any, has_eval: bool, args_cls: Any = None, **more: Any) -> Any:
    """TrainingArguments (or a TRL trainer's config class `args_cls`, with its own fields in
    `more`) from the LLaMA-Factory-style flat config of a training stage."""
    from transformers import TrainingArguments

    from stages.model.optimizers import trainer_args

    args_cls = args_cls or TrainingArguments
    extra = {"optim": cfg.optim, **trainer_args(cfg), **more}  # GaLore / APOLLO: their optim
    bf16, fp16 = precision(cfg.precision)
    if cfg.enable_liger_kernel:
        _require("liger_kernel", "enable_liger_kernel needs liger-kernel: pip install liger-kernel")
    evaluate = has_eval and cfg.save_steps > 0
    return args_cls(
        output_dir=str(ctx.checkpoints),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        use_liger_kernel=cfg.enable_liger_kernel,
        lr_scheduler_type=cfg.lr_scheduler_type,
        neftune_noise_alpha=cfg.neftune_noise_alpha,
        **{_checkpointing_arg(): cfg.gradient_checkpointing},
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
        **_device_args(ctx, cfg),
        **extra,
    )


def _device_args(ctx: Context, cfg: Any) -> dict[str, Any]:
    """DeepSpeed's config and the collective timeout, when a process launcher runs the stage;
    without a GPU, several processes need `use_cpu` (or accelerate trains each on its own), and
    so does bf16 (transformers refuses it otherwise)."""
    found: dict[str, Any] = {}
    bf16, fp16 = precision(cfg.precision)
    if fp16 and not has_cuda():
        raise UserError("precision: fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
    if ctx.world_size > 1:  # every trained parameter takes part in each step's loss
        found["ddp_find_unused_parameters"] = False
    if (ctx.world_size > 1 or bf16) and not has_cuda():
        found["use_cpu"] = True
    if ctx.distributed.get("deepspeed"):
        found["deepspeed"] = ctx.distributed["deepspeed"]
    if ctx.distributed.get("timeout_s"):
        found["ddp_timeout"] = int(ctx.distributed["timeout_s"])
    return found


def _checkpointing_arg() -> str:
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing"
    )


def _require(module: str, hint: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(hint)


def checkpointing(cfg: Any, ctx: Context) -> bool:
    """Gradient checkpointing as configured; `auto` turns it on only when the plan's memory
    estimate without it exceeds the device (it costs about a third more compute)."""
    if cfg.gradient_checkpointing != "auto":
        return bool(cfg.gradient_checkpointing)
    needed = ctx.memory.get("without_checkpointing")
    if not needed:
        return False
    device = ctx.memory.get("device") or device_memory()
    on = needed > device
    ctx.log.info(
        "gradient checkpointing %s: estimate %.2f GiB, device %.2f GiB",
        "on" if on else "off",
        needed / 2**30,
        device / 2**30,
    )
    return on


def device_memory() -> float:
    """Bytes of the device training runs on: the GPU's, else this machine's RAM."""
    import os

    import torch

    if torch.cuda.is_available():
        return float(torch.cuda.get_device_properties(0).total_memory)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def read_log(out: Any) -> list[dict[str, Any]]:
    """The step records of train_log.jsonl in an artifact (empty when there is none)."""
    log = out / "train_log.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


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

    from stages.model.health import health_callback

    totals = RunTotals(ctx)

    class MarkComplete(TrainerCallback):
        """The Trainer calls on_save after a checkpoint is fully written: only then mark it,
        with the run's totals so far beside it."""

        def __init__(self) -> None:
            self.totals = totals

        def on_train_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            totals.t0 = time.time()

        def on_save(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            path = ctx.checkpoints / f"checkpoint-{state.global_step}"
            if path.is_dir() and state.is_world_process_zero:
                totals.save(path, state.global_step)
                ctx.mark_checkpoint_complete(path)

    class JsonlLog(TrainerCallback):
        """Every logged step, appended to the work dir (kept across resumes, copied at the end),
        once per step and kind; the end-of-training summary goes to the manifest instead."""

        def __init__(self) -> None:
            self.seen: set[tuple[int, bool]] = set()

        def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            if not logs or not state.is_world_process_zero or "train_loss" in logs:
                return
            kind = (state.global_step, any(k.startswith("eval_") for k in logs))
            if kind in self.seen:
                return
            self.seen.add(kind)
            with (ctx.work / "train_log.jsonl").open("a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    found = [health_callback(ctx, cfg), MarkComplete(), JsonlLog()]
    if has_eval and cfg.early_stopping_patience is not None:
        found.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    return found


TOTALS = "run_totals.json"


class RunTotals:
    """The whole run's loss sum and training seconds, saved in every checkpoint, so that a
    resumed run reports what an uninterrupted one would (the Trainer counts only its own
    attempt). `trainer` is set by `train` once the Trainer exists."""

    def __init__(self, ctx: Context) -> None:
        self.trainer: Any = None
        self.t0 = time.time()
        saved = ctx.resume_from / TOTALS if ctx.resume_from else None
        fresh = {"loss_sum": 0.0, "seconds": 0.0, "steps": 0, "known": not ctx.resume_from}
        self.prior = json.loads(saved.read_text()) if saved and saved.exists() else fresh

    def _attempt_loss(self) -> float | None:
        """The loss summed over this attempt's steps so far (the Trainer's own accumulators)."""
        t = self.trainer
        total, pending = getattr(t, "_total_loss_scalar", None), getattr(t, "_tr_loss", None)
        if total is None or pending is None:
            return None
        return float(total) + float(pending.item() if hasattr(pending, "item") else pending)

    def save(self, checkpoint: Any, step: int) -> None:
        loss = self._attempt_loss()
        totals = {
            "loss_sum": self.prior["loss_sum"] + (loss or 0.0),
            "seconds": self.prior["seconds"] + time.time() - self.t0,
            "steps": step,
            "known": self.prior.get("known", True) and loss is not None,
        }
        (checkpoint / TOTALS).write_text(json.dumps(totals) + "\n")

    def whole_run(self, result: Any) -> tuple[float, float]:
        """(train loss, training seconds) of the whole run, from this attempt's result."""
        seconds = self.prior["seconds"] + result.metrics["train_runtime"]
        if not self.prior.get("known", True):  # resumed from a checkpoint without totals
            return result.training_loss, seconds
        attempt_steps = result.global_step - self.prior["steps"]
        loss_sum = self.prior["loss_sum"] + result.training_loss * attempt_steps
        return loss_sum / max(result.global_step, 1), seconds


SHOWN = ("loss", "eval_loss", "grad_norm", "learning_rate", "reward", "eval_reward")


def _one_bar(trainer: Any, name: str) -> None:
    """One progress bar per stage with the latest metrics in it, instead of the Trainer's bar
    that prints every log record as a raw dict (the records go to train_log.jsonl)."""
    from tqdm import tqdm
    from transformers import ProgressCallback, TrainerCallback

    class StepBar(TrainerCallback):
        bar: Any = None

        def on_train_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if state.is_world_process_zero:
                total, done = state.max_steps, state.global_step
                self.bar = tqdm(
                    total=total, initial=done, desc=name, unit="step", dynamic_ncols=True
                )

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            if self.bar is not None and logs:
                shown = {
                    k: f"{logs[k]:.4g}" for k in SHOWN if isinstance(logs.get(k), (int, float))
                }
                self.bar.set_postfix(shown, refresh=True)

        def on_train_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if self.bar is not None:
                self.bar.close()

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(StepBar())


def _step(checkpoint: Any) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0


def _finished_state(checkpoint: Any) -> dict[str, Any] | None:
    """The Trainer state of a checkpoint taken at the last step (None for any other)."""
    file = checkpoint / "trainer_state.json" if checkpoint else None
    if file is None or not file.exists():
        return None
    state = json.loads(file.read_text())
    done = state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]
    return state if done else None


def _resumed_at_end(state: dict[str, Any]) -> Any:
    """A train() result for an attempt that had nothing left to train."""
    from types import SimpleNamespace

    return SimpleNamespace(
        global_step=state["global_step"], training_loss=0.0, metrics={"train_runtime": 0.0}
    )


def keep_log_until(log: Any, step: int) -> None:
    """A resumed run re-takes the steps after its checkpoint: drop their old records."""
    if not log.exists():
        return
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln)["step"] <= step]
    log.write_text("".join(ln + "\n" for ln in kept))


def train(trainer: Any, ctx: Context) -> None:
    """Train (resuming from ctx.resume_from), then record the whole run's metrics and keep the
    logs."""
    t0 = time.time()
    resume = str(ctx.resume_from) if ctx.resume_from else None
    totals = next(c.totals for c in trainer.callback_handler.callbacks if hasattr(c, "totals"))
    totals.trainer = trainer
    _one_bar(trainer, ctx.name)
    # a fresh start drops what a killed attempt logged; a resumed one what it logged past its
    # checkpoint (those steps are taken again)
    keep_log_until(ctx.work / "train_log.jsonl", _step(ctx.resume_from))
    finished = _finished_state(ctx.resume_from)
    if finished is None:
        result = trainer.train(resume_from_checkpoint=resume)
        seen = int(trainer.state.num_input_tokens_seen or 0)
    else:  # killed after its last checkpoint: the Trainer would take one step too many
        trainer._load_from_checkpoint(resume)
        result = _resumed_at_end(finished)
        seen = int(finished.get("num_input_tokens_seen") or 0)
    wall = time.time() - t0
    loss, seconds = totals.whole_run(result)
    ctx.metrics.update(
        train_loss=loss,
        steps=result.global_step,
        tokens_seen=seen,
        tokens_per_s=round(seen / seconds, 1) if seen else 0.0,
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


def full_state_dict(trainer: Any) -> dict[str, Any] | None:
    """ZeRO-3 shards every weight over the ranks: gather them (a collective: every rank calls
    this) so rank 0 saves whole tensors. None when the model holds its own weights."""
    if not getattr(trainer, "is_deepspeed_enabled", False):
        return None
    plugin = trainer.accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero_stage != 3:
        return None
    return trainer.accelerator.get_state_dict(trainer.deepspeed)


def peak_memory_mb() -> float:
    """Peak GPU memory where training ran on a GPU, else the process's peak resident memory."""
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)
