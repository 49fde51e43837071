"""A dataset registry entry (`conf/data/*.yaml`, under `datasets.<name>`)."""

from __future__ import annotations

from dataclasses import dataclass, field

FORMATS = ("alpaca", "messages", "preference", "text")


@dataclass
class DatasetSpec:
    # a local file; relative paths are taken from the directory the command runs in, and
    # `pkg://stages/data/demo/sft.jsonl` names a file shipped inside an installed package
    path: str
    formatting: str = field(default="alpaca", metadata={"choices": FORMATS})
    description: str = field(default="", metadata={"volatile": True})
