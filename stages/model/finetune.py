"""The training run every training stage shares once its data is ready: build what trains from
the upstream model, run a Trainer (resuming from a complete checkpoint), save the artifact.

Stages differ in their trainer (ours for pt / sft, TRL's for rm / dpo / kto / orpo / simpo), its
config class and fields, the collator and the head; a `Recipe` names those, and everything else
(methods, checkpoints, logs, metrics, the artifact's layout) is this one code path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stages.base import Context, UserError
from stages.model.train_config import TrainConfig


@dataclass
class Recipe:
    """How a stage trains: `trainer` (default: our SparseLogitsTrainer) with `args_cls` (default:
    TrainingArguments) holding `args` besides the shared ones; `collator(tokenizer)` makes the
    data collator (None: the trainer's own); `extra(model)` gives more trainer keywords once the
    model exists (a reference model); `head` is the trained model's head."""

    trainer: Any = None
    args_cls: Any = None
    args: dict[str, Any] = field(default_factory=dict)
    collator: Callable[[Any], Any] | None = None
    extra: Callable[[Any], dict[str, Any]] | None = None
    head: str | None = None


def fine_tune(
    ctx: Context,
    cfg: TrainConfig,
    tokenizer: Any,
    train: Any,
    val: Any,
    stop_ids: list[int] | None = None,
    recipe: Recipe | None = None,
) -> Any:
    """Train on `train` (validating on `val` when given) and write the model artifact to ctx.out;
    `stop_ids` end generation in the saved model (the template's end-of-turn tokens). Returns the
    trained model (LoRA: the PEFT model)."""
    from transformers import set_seed

    from stages.model import adapters, batching
    from stages.model.compile import compile_layers, wanted
    from stages.model.loading import CAUSAL_LM, write_model_json
    from stages.model.optimizers import build_optimizer, missing_package
    from stages.model.plot import write_training_png
    from stages.model.portable import portable_adapter
    from stages.model.trainer import SparseLogitsTrainer
    from stages.model.training import (
        callbacks,
        checkpointing,
        full_state_dict,
        read_log,
        training_args,
    )
    from stages.model.training import train as train_and_record

    ours = recipe is None  # our trainer and collator (sft, pt), else a TRL trainer's recipe
    recipe = recipe or Recipe()
    missing = missing_package(cfg)
    if missing:
        raise UserError(missing)
    cfg = dataclasses.replace(cfg, gradient_checkpointing=checkpointing(cfg, ctx))
    ctx.metrics["gradient_checkpointing"] = cfg.gradient_checkpointing  # what `auto` chose
    upstream = ctx.inputs["model"]
    resolve = ctx.resolve or (lambda key: upstream)
    set_seed(cfg.seed)  # new weights (LoRA A, a reward head) start the same in every run
    frozen_dtype = adapters.frozen_dtype(cfg)
    model, base_key = adapters.trainable_model(
        upstream,
        cfg,
        ctx.input_keys.get("model"),
        resolve,
        head=recipe.head,
        frozen_dtype=frozen_dtype,
    )
    model.config.use_cache = False  # no KV cache in training (and neat packing needs none)
    if stop_ids:
        unwrap = getattr(model, "get_base_model", lambda: model)
        unwrap().generation_config.eos_token_id = stop_ids
    adapters.remember_init(model, cfg, ctx.work)
    has_eval = val is not None
    args = training_args(ctx, cfg, has_eval, recipe.args_cls, **recipe.args)
    optimizer = (
        adapters.loraplus_optimizer(model, cfg)
        if cfg.loraplus_lr_ratio
        else build_optimizer(model, cfg, _step(ctx.resume_from))
    )
    if ours:
        collator = batching.collator(model, cfg, tokenizer, ctx.log)
        compile_layers(model, cfg.torch_compile, ctx.log)
        # our trainer runs every forward under its autocast (TRL's trainers generate outside it)
        adapters.autocast_inputs(model, frozen_dtype is not None)
    else:
        collator = recipe.collator(tokenizer) if recipe.collator else None
        trainer_name = getattr(recipe.trainer, "__name__", "its trainer")
        if cfg.padding_free:
            ctx.log.info("padding_free off: %s batches with its own collator", trainer_name)
        if wanted(cfg.torch_compile):
            ctx.log.info("torch_compile off: %s runs its model uncompiled", trainer_name)
    trainer = (recipe.trainer or SparseLogitsTrainer)(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=val,
        data_collator=collator,
        processing_class=tokenizer,  # counts non-padding tokens where there is no attention mask
        callbacks=callbacks(ctx, cfg, has_eval=has_eval),
        optimizers=(optimizer, None),
        **(recipe.extra(model) if recipe.extra else {}),
    )
    train_and_record(trainer, ctx)
    batching.restore_attention(trainer.model, cfg)
    adapters.autocast_inputs(trainer.model, False)
    write_training_png(read_log(ctx.out), ctx.out / "loss.png")
    model = trainer.model
    state = full_state_dict(trainer)  # ZeRO-3: every rank takes part in gathering the weights
    if not ctx.is_main:  # only rank 0 writes the artifact
        return model
    adapters.save_trained(model, ctx.out, cfg, ctx.work, state)
    tokenizer.save_pretrained(ctx.out)
    head = recipe.head or CAUSAL_LM
    if cfg.finetuning_type == "lora":
        base_dir = adapters.LOFTQ_BASE if cfg.loftq_bits else None
        write_model_json(
            ctx.out,
            "adapter",
            base=base_key,
            rope_scaling=cfg.rope_scaling,
            base_dir=base_dir,
            head=head,
            quantization=_qlora(cfg),
        )
        portable_adapter(ctx.out, upstream)
    else:
        write_model_json(ctx.out, "full", head=head)
    return model


def _qlora(cfg: Any) -> dict[str, Any] | None:
    """The quantised base a QLoRA adapter trained on, kept in its model.json."""
    if not cfg.quantization_bit:
        return None
    if cfg.quantization_bit == 8:
        return {"bits": 8}
    return {"bits": 4, "type": cfg.quantization_type, "double": cfg.double_quantization}


def _step(checkpoint: Any) -> int:
    """The global step of a `checkpoint-N` directory (0 for a fresh run)."""
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0
