"""The data fields every chat-data node shares (tokenize, pairs, kto_data, prompts): which
datasets, how they render, how long, how many, how mixed and split, what to do with bad rows."""

from __future__ import annotations

from dataclasses import dataclass, field

from stages.base import bounded
from stages.data.mixing import STRATEGIES

BAD_ROWS = ("error", "skip")


@dataclass
class ChatDataConfig:
    dataset: str | list[str] = "demo_sft"  # a name in `datasets`, or several (mixed)
    template: str | None = None  # None: the tokenizer's own chat template
    custom_template: dict | None = None  # slots: system / user / assistant / tool / generation
    cutoff_len: int = bounded(512, min=1)
    max_samples: int | None = bounded(None, min=1)  # per dataset
    mix_strategy: str = field(default="concat", metadata={"choices": STRATEGIES})
    interleave_probs: list[float] | None = None
    val_size: float = bounded(0.0, min=0)  # a fraction (< 1) or a count of validation examples
    bad_rows: str = field(default="error", metadata={"choices": BAD_ROWS})
    seed: int = 42
