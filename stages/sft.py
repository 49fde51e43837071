"""`sft`: supervised fine-tuning (full, freeze or LoRA) with the transformers Trainer, resumable.

Checkpoints go to the work dir, each marked complete only after the Trainer finished writing it;
a rerun after a crash resumes from the latest complete one with optimizer, scheduler and RNG state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from stages.base import MODEL, SFT_DATA, Context, In, volatile
from stages.data.mixing import STRATEGIES
from stages.model.adapters import METHODS
from stages.model.training import PRECISIONS

ATTENTION = ("eager", "sdpa", "flash_attention_2")  # flash-attention-2 where it is installed

TOKENIZE_FIELDS = (
    "dataset",
    "template",
    "custom_template",
    "cutoff_len",
    "train_on_prompt",
    "mask_history",
    "packing",
    "neat_packing",
    "max_samples",
    "mix_strategy",
    "interleave_probs",
    "val_size",
    "bad_rows",
    "num_proc",
    "streaming",
)


@dataclass
class SftConfig:
    # data (forwarded to the implicit `tokenize` node)
    dataset: str | list[str] = "demo_sft"
    template: str | None = None
    custom_template: dict | None = None
    cutoff_len: int = 512
    train_on_prompt: bool = False
    mask_history: bool = False
    packing: bool = False
    neat_packing: bool = False
    max_samples: int | None = None
    mix_strategy: str = field(default="concat", metadata={"choices": STRATEGIES})
    interleave_probs: list[float] | None = None
    val_size: float = 0.0
    bad_rows: str = field(default="error", metadata={"choices": ("error", "skip")})
    num_proc: int = volatile(1)
    streaming: bool = False  # tokenize while training (needs max_steps)
    # method
    finetuning_type: str = field(default="lora", metadata={"choices": METHODS})
    freeze_trainable_layers: int = 2  # last N decoder layers (first N when negative)
    freeze_trainable_modules: str | list[str] = "all"
    freeze_extra_modules: list[str] | None = None
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target: str | list[str] | None = None  # None: the model preset's targets, else "all"
    use_rslora: bool = False
    use_dora: bool = False
    pissa_init: bool = False
    loraplus_lr_ratio: float | None = None
    additional_target: list[str] | None = None  # modules trained in full beside the adapter
    quantization_bit: int | None = field(default=None, metadata={"choices": (4, 8)})
    quantization_type: str = field(default="nf4", metadata={"choices": ("nf4", "fp4")})
    double_quantization: bool = True
    attn_implementation: str = field(default="sdpa", metadata={"choices": ATTENTION})
    rope_scaling: dict | None = None  # e.g. {rope_type: yarn, factor: 4.0} for longer context
    neftune_noise_alpha: float | None = None
    gradient_checkpointing: bool = False
    group_by_length: bool = False  # batches of similar lengths: little padding, no packing
    # optimisation
    learning_rate: float = 1e-4
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 1.0
    max_steps: int = -1
    optim: str = "adamw_torch"
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = field(default="auto", metadata={"choices": PRECISIONS})
    early_stopping_patience: int | None = None  # evaluations without improvement (needs val_size)
    seed: int = 42
    # recorded, not keyed
    logging_steps: int = volatile(10)
    save_steps: int = volatile(50)
    save_total_limit: int | None = volatile(2)
    report_to: str = volatile("tensorboard")  # or none, wandb, mlflow, swanlab (when installed)


class SftStage:
    kind: ClassVar[str] = "sft"
    Config = SftConfig
    inputs: ClassVar[dict[str, In]] = {
        "model": In(MODEL, default="base"),
        "data": In(SFT_DATA, implicit="tokenize", forwards=TOKENIZE_FIELDS),
    }
    output: ClassVar[str] = MODEL
    code: ClassVar[tuple[str, ...]] = (
        "model/loading.py",
        "model/adapters.py",
        "model/training.py",
        "data/collate.py",
        "data/examples.py",
    )
    dataset_fields: ClassVar[tuple[str, ...]] = ()
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "train_loss"

    @staticmethod
    def check_config(cfg: SftConfig) -> list[tuple[str, str]]:
        """Compile-time rules between fields: (field, problem)."""
        problems = []
        if cfg.quantization_bit and cfg.finetuning_type != "lora":
            problems.append(("quantization_bit", "quantised training needs finetuning_type: lora"))
        if cfg.streaming:
            for name, bad in (
                ("max_steps", cfg.max_steps <= 0),
                ("val_size", cfg.val_size > 0),
                ("packing", cfg.packing or cfg.neat_packing),
                ("mix_strategy", cfg.mix_strategy != "concat"),
            ):
                if bad:
                    problems.append((name, f"not available with streaming ({_STREAM_NEEDS[name]})"))
        if cfg.early_stopping_patience is not None and not cfg.val_size:
            problems.append(("early_stopping_patience", "needs a validation split: set val_size"))
        if cfg.max_steps <= 0 and cfg.num_train_epochs <= 0:
            problems.append(("num_train_epochs", "set num_train_epochs > 0 or max_steps > 0"))
        return problems

    def run(self, ctx: Context, cfg: SftConfig) -> None:
        from transformers import Trainer

        from stages.data.collate import collate
        from stages.data.templates import stop_token_ids
        from stages.model.adapters import (
            loraplus_optimizer,
            remember_pissa_init,
            save_trained,
            trainable_model,
        )
        from stages.model.loading import load_tokenizer, write_model_json
        from stages.model.training import callbacks, training_args
        from stages.model.training import train as train_and_record

        upstream = ctx.inputs["model"]
        tokenizer = load_tokenizer(upstream)
        resolve = ctx.resolve or (lambda key: upstream)
        model, base_key = trainable_model(upstream, cfg, ctx.input_keys.get("model"), resolve)
        model.config.use_cache = False  # no KV cache in training (and neat packing needs none)
        if cfg.finetuning_type == "lora" and cfg.pissa_init:
            remember_pissa_init(model, ctx.work)
        data = ctx.inputs["data"]
        if (data / "template.json").exists():  # train and serve with the same template
            template = json.loads((data / "template.json").read_text())
            tokenizer.chat_template = template["chat_template"]
            stops = stop_token_ids(tokenizer, template["stop_words"])
            if stops:
                unwrap = getattr(model, "get_base_model", lambda: model)
                unwrap().generation_config.eos_token_id = stops
        train, val = _datasets(data, tokenizer, cfg.seed)
        trainer = Trainer(
            model=model,
            args=training_args(ctx, cfg, has_eval=val is not None),
            train_dataset=train,
            eval_dataset=val,
            data_collator=lambda rows: collate(rows, tokenizer.pad_token_id or 0),
            processing_class=tokenizer,  # counts non-padding tokens where there is no attention mask
            callbacks=callbacks(ctx, cfg, has_eval=val is not None),
            optimizers=(loraplus_optimizer(model, cfg), None)
            if cfg.loraplus_lr_ratio
            else (None, None),
        )
        train_and_record(trainer, ctx)
        save_trained(model, ctx.out, cfg, ctx.work)
        tokenizer.save_pretrained(ctx.out)
        if cfg.finetuning_type == "lora":
            write_model_json(ctx.out, "adapter", base=base_key, rope_scaling=cfg.rope_scaling)
        else:
            write_model_json(ctx.out, "full")


_STREAM_NEEDS = {
    "max_steps": "a stream has no length: set max_steps",
    "val_size": "hold out a separate dataset instead",
    "packing": "packing needs the whole dataset",
    "mix_strategy": "streams are concatenated",
}


def _datasets(data: Path, tokenizer: Any, seed: int) -> tuple[Any, Any]:
    """(train, validation or None): tokenized on disk, or a stream tokenized as it is read."""
    from datasets import IterableDataset, load_from_disk

    from stages.data.examples import stream

    if (data / "stream.json").exists():
        recipe = json.loads((data / "stream.json").read_text())
        train = IterableDataset.from_generator(
            stream, gen_kwargs={"recipe": recipe, "tokenizer": tokenizer}
        )
        return train.shuffle(seed=seed, buffer_size=1000), None
    val = load_from_disk(str(data / "validation")) if (data / "validation").exists() else None
    return load_from_disk(str(data / "train")), val
