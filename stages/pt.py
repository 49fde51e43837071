"""`pt`: continued pre-training (next-token loss on every token of packed text blocks), with any
method a training stage has (full, freeze, LLaMA Pro, LoRA, QLoRA), resumable like `sft`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from stages.base import MODEL, PT_DATA, Context, In, forwarded_fields
from stages.blocks import BlocksConfig
from stages.model.train_config import TRAINING_CODE, TrainConfig, check_training

BLOCKS_FIELDS = forwarded_fields(BlocksConfig)


@dataclass
class PtConfig(TrainConfig, BlocksConfig):
    """Training fields (stages/model/train_config.py) plus the data fields of `blocks`, which
    are forwarded to the implicit blocks node."""


class PtStage:
    kind: ClassVar[str] = "pt"
    Config = PtConfig
    inputs: ClassVar[dict[str, In]] = {
        "model": In(MODEL, default="base"),
        "data": In(PT_DATA, implicit="blocks", forwards=BLOCKS_FIELDS),
    }
    output: ClassVar[str] = MODEL
    code: ClassVar[tuple[str, ...]] = TRAINING_CODE
    dataset_fields: ClassVar[tuple[str, ...]] = ()
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "train_loss"
    distributed: ClassVar[bool] = True  # runs under torchrun / DeepSpeed

    @staticmethod
    def check_config(cfg: PtConfig) -> list[tuple[str, str]]:
        return check_training(cfg)

    def run(self, ctx: Context, cfg: PtConfig) -> None:
        from stages.data.artifact import load_splits
        from stages.model.finetune import fine_tune
        from stages.model.loading import load_tokenizer

        train, val = load_splits(ctx.inputs["data"])
        fine_tune(ctx, cfg, load_tokenizer(ctx.inputs["model"]), train, val)
