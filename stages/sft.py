"""`sft`: supervised fine-tuning (full, freeze or LoRA) with the transformers Trainer, resumable.

Checkpoints go to the work dir, each marked complete only after the Trainer finished writing it;
a rerun after a crash resumes from the latest complete one with optimizer, scheduler and RNG state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from stages.base import MODEL, SFT_DATA, Context, In, forwarded_fields
from stages.data.artifact import load_splits, read_stream, read_template
from stages.model.train_config import TRAINING_CODE, TrainConfig, check_training
from stages.tokenize import TokenizeConfig

TOKENIZE_FIELDS = forwarded_fields(TokenizeConfig)


@dataclass
class SftConfig(TrainConfig, TokenizeConfig):
    """Training fields (stages/model/train_config.py) plus the data fields of `tokenize`, which
    are forwarded to the implicit tokenize node."""


class SftStage:
    kind: ClassVar[str] = "sft"
    Config = SftConfig
    inputs: ClassVar[dict[str, In]] = {
        "model": In(MODEL, default="base"),
        "data": In(SFT_DATA, implicit="tokenize", forwards=TOKENIZE_FIELDS),
    }
    output: ClassVar[str] = MODEL
    code: ClassVar[tuple[str, ...]] = (*TRAINING_CODE, "data/examples.py")
    dataset_fields: ClassVar[tuple[str, ...]] = ()
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "train_loss"
    distributed: ClassVar[bool] = True  # runs under torchrun / DeepSpeed

    @staticmethod
    def check_config(cfg: SftConfig) -> list[tuple[str, str]]:
        """Compile-time rules between fields: (field, problem)."""
        problems = check_training(cfg)
        if cfg.streaming:
            for name, bad in (
                ("max_steps", cfg.max_steps <= 0),
                ("val_size", cfg.val_size > 0),
                ("packing", cfg.packing or cfg.neat_packing),
                ("mix_strategy", cfg.mix_strategy != "concat"),
            ):
                if bad:
                    problems.append((name, f"not available with streaming ({_STREAM_NEEDS[name]})"))
        return problems

    def run(self, ctx: Context, cfg: SftConfig) -> None:
        from stages.data.templates import stop_token_ids
        from stages.model.finetune import fine_tune
        from stages.model.loading import load_tokenizer

        tokenizer = load_tokenizer(ctx.inputs["model"])
        data = ctx.inputs["data"]
        stops = None
        template = read_template(data)
        if template is not None:  # train and serve with the same template
            tokenizer.chat_template = template["chat_template"]
            stops = stop_token_ids(tokenizer, template["stop_words"])
        train, val = _datasets(data, tokenizer, cfg.seed)
        fine_tune(ctx, cfg, tokenizer, train, val, stop_ids=stops)


_STREAM_NEEDS = {
    "max_steps": "a stream has no length: set max_steps",
    "val_size": "hold out a separate dataset instead",
    "packing": "packing needs the whole dataset",
    "mix_strategy": "streams are concatenated",
}


def _datasets(data: Path, tokenizer: Any, seed: int) -> tuple[Any, Any]:
    """(train, validation or None): tokenized on disk, or a stream tokenized as it is read."""
    from datasets import IterableDataset

    from stages.data.examples import stream

    recipe = read_stream(data)
    if recipe is not None:
        train = IterableDataset.from_generator(
            stream, gen_kwargs={"recipe": recipe, "tokenizer": tokenizer}
        )
        return train.shuffle(seed=seed, buffer_size=1000), None
    return load_splits(data)
