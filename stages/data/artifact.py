"""The data artifact's layout, written and read here only: `train/` and `validation/` (datasets
saved to disk), `template.json` (the chat template and its stop words, which the trained model
keeps), `chat_template.jinja` (the same template, for people), `stream.json` (a streaming
recipe instead of rows). Every data stage writes through these functions and every training
stage reads through them, so the layout is one convention in one module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TRAIN, VALIDATION = "train", "validation"
TEMPLATE, TEMPLATE_TEXT, STREAM = "template.json", "chat_template.jinja", "stream.json"


def save_template(out: Path, template: dict[str, Any]) -> None:
    (out / TEMPLATE).write_text(json.dumps(template, indent=2))
    (out / TEMPLATE_TEXT).write_text(template["chat_template"])


def read_template(data: Path) -> dict[str, Any] | None:
    """{chat_template, stop_words}, or None for data made without a chat template (pt)."""
    path = data / TEMPLATE
    return json.loads(path.read_text()) if path.exists() else None


def save_splits(out: Path, train: list[dict[str, Any]], val: list[dict[str, Any]]) -> None:
    from datasets import Dataset

    Dataset.from_list(train).save_to_disk(str(out / TRAIN))
    if val:
        Dataset.from_list(val).save_to_disk(str(out / VALIDATION))


def load_splits(data: Path, in_memory: bool = False) -> tuple[Any, Any]:
    """(train, validation or None). `in_memory` for data a stage goes on to `.map` (which would
    otherwise write cache files into the artifact); else memory-mapped, for data of any size."""
    from datasets import load_from_disk

    def load(split: str) -> Any:
        return load_from_disk(str(data / split), keep_in_memory=in_memory)

    return load(TRAIN), load(VALIDATION) if (data / VALIDATION).exists() else None


def save_stream(out: Path, recipe: dict[str, Any]) -> None:
    (out / STREAM).write_text(json.dumps(recipe, indent=2))


def read_stream(data: Path) -> dict[str, Any] | None:
    """The streaming recipe (datasets and encoding options), or None for saved rows."""
    path = data / STREAM
    return json.loads(path.read_text()) if path.exists() else None
