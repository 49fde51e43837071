"""What shape of examples a dataset entry holds, told from its registry entry at compile time,
so that a stage given the wrong data is refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SUPERVISED, PREFERENCE, KTO, TEXT = "supervised", "preference", "kto", "text"
MULTIPLE_CHOICE = "multiple_choice"  # question, choices, answer: read by eval (mc_dataset)

# which stage kinds take each shape (for the hint in a refusal)
USED_BY = {
    SUPERVISED: "sft (or as prompts: ppo / grpo)",
    PREFERENCE: "rm / dpo / orpo / simpo (or as prompts: ppo / grpo)",
    KTO: "kto",
    TEXT: "pt",
    MULTIPLE_CHOICE: "eval (mc_dataset)",
}


def entry_shape(entry: dict[str, Any]) -> str:
    """preference (ranking: true), kto (a kto_tag column), text or multiple_choice (by
    formatting, or for an entry without one, text as LLaMA-Factory's pt data is: a .txt file, or
    rows of the one column `columns.prompt` names, with no response), else supervised."""
    if entry.get("formatting") in (TEXT, MULTIPLE_CHOICE):
        return entry["formatting"]
    if entry.get("ranking"):
        return PREFERENCE
    if "kto_tag" in (entry.get("columns") or {}):
        return KTO
    if not entry.get("formatting") and _plain_text(entry):
        return TEXT
    return SUPERVISED


PEEK_BYTES = 50 * 2**20  # a .json file larger than this is not opened at compile time


def _plain_text(entry: dict[str, Any]) -> bool:
    path = Path(str(entry.get("path", "")))
    if path.suffix == ".txt":
        return True
    columns = entry.get("columns") or {}
    if set(columns) != {"prompt"}:  # LLaMA-Factory's pt entries map the document column alone
        return False
    names = _column_names(path)
    return names is not None and columns["prompt"] in names and "output" not in names


def _column_names(path: Path) -> set[str] | None:
    """The columns of a local data file, read cheaply (a CSV header, a Parquet or Arrow
    schema, a JSON file's first row); None when they cannot be told here."""
    try:
        if path.suffix == ".csv":
            import csv

            with path.open(encoding="utf-8", newline="") as f:
                return set(next(csv.reader(f), []))
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return set(pq.read_schema(path).names)
        if path.suffix == ".arrow":
            import pyarrow as pa

            with pa.memory_map(str(path)) as source:
                return set(pa.ipc.open_stream(source).schema.names)
    except (OSError, ValueError, ImportError):  # unreadable here: the stage reports it
        return None
    row = _first_row(path)
    return set(row) if row is not None else None


def _first_row(path: Path) -> dict[str, Any] | None:
    """The first row of a local JSON / JSON-lines file, when it is cheap to read."""
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                row = json.loads(next((line for line in f if line.strip()), "null"))
        elif path.suffix == ".json" and path.stat().st_size <= PEEK_BYTES:
            rows = json.loads(path.read_text(encoding="utf-8"))
            row = rows[0] if isinstance(rows, list) and rows else None
        else:
            return None
    except (OSError, ValueError):  # unreadable here: the stage reports it with file and row
        return None
    return row if isinstance(row, dict) else None


def refuse(entry: dict[str, Any], accepted: tuple[str, ...], needs: str) -> str | None:
    """A compile-time refusal when the entry's shape is not among `accepted`, else None."""
    shape = entry_shape(entry)
    if shape in accepted:
        return None
    return f"holds {shape} data; {needs}; {shape} data is for {USED_BY[shape]}"
