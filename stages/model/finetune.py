"""The training run every training stage shares once its data is ready: build what trains from
the upstream model, run the Trainer (resuming from a complete checkpoint), save the artifact."""

from __future__ import annotations

import dataclasses
from typing import Any

from stages.base import Context, UserError
from stages.model.train_config import TrainConfig


def fine_tune(
    ctx: Context,
    cfg: TrainConfig,
    tokenizer: Any,
    train: Any,
    val: Any,
    stop_ids: list[int] | None = None,
) -> Any:
    """Train on `train` (validating on `val` when given) and write the model artifact to ctx.out;
    `stop_ids` end generation in the saved model (the template's end-of-turn tokens). Returns the
    trained model (LoRA: the PEFT model)."""
    from stages.data.collate import collate
    from stages.model import adapters
    from stages.model.loading import write_model_json
    from stages.model.optimizers import build_optimizer, missing_package
    from stages.model.plot import write_loss_png
    from stages.model.trainer import SparseLogitsTrainer
    from stages.model.training import callbacks, checkpointing, read_log, training_args
    from stages.model.training import train as train_and_record

    missing = missing_package(cfg)
    if missing:
        raise UserError(missing)
    cfg = dataclasses.replace(cfg, gradient_checkpointing=checkpointing(cfg, ctx))
    ctx.metrics["gradient_checkpointing"] = cfg.gradient_checkpointing  # what `auto` chose
    upstream = ctx.inputs["model"]
    resolve = ctx.resolve or (lambda key: upstream)
    model, base_key = adapters.trainable_model(upstream, cfg, ctx.input_keys.get("model"), resolve)
    model.config.use_cache = False  # no KV cache in training (and neat packing needs none)
    if stop_ids:
        unwrap = getattr(model, "get_base_model", lambda: model)
        unwrap().generation_config.eos_token_id = stop_ids
    adapters.remember_init(model, cfg, ctx.work)
    args = training_args(ctx, cfg, has_eval=val is not None)
    optimizer = (
        adapters.loraplus_optimizer(model, cfg)
        if cfg.loraplus_lr_ratio
        else build_optimizer(model, cfg, _step(ctx.resume_from))
    )
    trainer = SparseLogitsTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=val,
        data_collator=lambda rows: collate(rows, tokenizer.pad_token_id or 0),
        processing_class=tokenizer,  # counts non-padding tokens where there is no attention mask
        callbacks=callbacks(ctx, cfg, has_eval=val is not None),
        optimizers=(optimizer, None),
    )
    train_and_record(trainer, ctx)
    write_loss_png(read_log(ctx.out), ctx.out / "loss.png")
    adapters.save_trained(model, ctx.out, cfg, ctx.work)
    tokenizer.save_pretrained(ctx.out)
    if cfg.finetuning_type == "lora":
        base_dir = adapters.LOFTQ_BASE if cfg.loftq_bits else None
        write_model_json(
            ctx.out, "adapter", base=base_key, rope_scaling=cfg.rope_scaling, base_dir=base_dir
        )
    else:
        write_model_json(ctx.out, "full")
    return model


def _step(checkpoint: Any) -> int:
    """The global step of a `checkpoint-N` directory (0 for a fresh run)."""
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0
