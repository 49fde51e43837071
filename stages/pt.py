"""`pt`: continued pre-training (next-token loss on every token of packed text blocks), with any
method a training stage has (full, freeze, LLaMA Pro, LoRA, QLoRA), resumable like `sft`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from stages.base import MODEL, PT_DATA, Context, In
from stages.data.mixing import STRATEGIES
from stages.model.train_config import TRAINING_CODE, TrainConfig, check_training

BLOCKS_FIELDS = (
    "dataset",
    "cutoff_len",
    "max_samples",
    "mix_strategy",
    "interleave_probs",
    "val_size",
    "bad_rows",
)


@dataclass
class PtConfig(TrainConfig):
    """Training fields (stages/model/train_config.py) plus the data fields, which are forwarded to
    the implicit `blocks` node."""

    dataset: str | list[str] = "demo_text"
    cutoff_len: int = 512  # block size
    max_samples: int | None = None
    mix_strategy: str = field(default="concat", metadata={"choices": STRATEGIES})
    interleave_probs: list[float] | None = None
    val_size: float = 0.0
    bad_rows: str = field(default="error", metadata={"choices": ("error", "skip")})


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

    @staticmethod
    def check_config(cfg: PtConfig) -> list[tuple[str, str]]:
        return check_training(cfg)

    def run(self, ctx: Context, cfg: PtConfig) -> None:
        from datasets import load_from_disk

        from stages.model.finetune import fine_tune
        from stages.model.loading import load_tokenizer

        data = ctx.inputs["data"]
        val = load_from_disk(str(data / "validation")) if (data / "validation").exists() else None
        train = load_from_disk(str(data / "train"))
        fine_tune(ctx, cfg, load_tokenizer(ctx.inputs["model"]), train, val)
