"""Read dataset files into one canonical form: a list of chat messages per example."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.base import UserError

Messages = list[dict[str, str]]
ROLES = ("system", "user", "assistant")


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, row) for a .jsonl / .json file; a bad line names file and row."""
    if not path.exists():
        raise UserError(f"{path}: dataset file not found")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        yield from enumerate(data, start=1)
        return
    with path.open() as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: malformed JSON ({e.msg})") from None


def to_messages(row: dict[str, Any], formatting: str, where: str) -> Messages:
    """Convert one row of a supervised format into messages, checking the fields it needs."""
    if formatting == "alpaca":
        prompt = _field(row, "instruction", where)
        if row.get("input"):
            prompt = f"{prompt}\n{row['input']}"
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
        msgs[1]["content"] = _field(row, "output", where)
        if row.get("system"):
            msgs.insert(0, {"role": "system", "content": str(row["system"])})
        return msgs
    if formatting == "messages":
        msgs = row.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise UserError(f"{where}: field 'messages' missing or not a non-empty list")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise UserError(f"{where}: messages[{i}].role must be one of {', '.join(ROLES)}")
        if msgs[-1]["role"] != "assistant":
            raise UserError(f"{where}: the last message must come from the assistant")
        return [{"role": m["role"], "content": str(m.get("content", ""))} for m in msgs]
    raise UserError(f"{where}: formatting '{formatting}' holds no supervised examples")


def _field(row: dict[str, Any], name: str, where: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: field '{name}' missing or empty")
    return value
