"""Convert rows of every supported format into one canonical `Example`.

Formats and their column / tag names follow LLaMA-Factory's `dataset_info.json`, so its users'
registries work as they are: alpaca (prompt / query / response / history / system / tools),
sharegpt (`conversations` of from / value), openai (`messages` of role / content), text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stages.base import UserError

SYSTEM, USER, ASSISTANT, TOOL = "system", "user", "assistant", "tool"

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
SHAREGPT_COLUMNS = {"messages": "conversations"}
OPENAI_COLUMNS = {"messages": "messages"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}


@dataclass
class Example:
    """Chat messages (roles system / user / assistant / tool) plus what some stages need."""

    messages: list[dict[str, str]] = field(default_factory=list)
    tools: str = ""
    chosen: str | None = None  # preference pairs: the assistant reply to the last user turn
    rejected: str | None = None
    kto_tag: bool | None = None  # KTO: is the last assistant reply desirable?
    text: str | None = None  # plain text (pre-training)

    @property
    def kind(self) -> str:
        if self.text is not None:
            return "text"
        if self.chosen is not None:
            return "preference"
        if self.messages and self.messages[-1]["role"] == ASSISTANT:
            return "kto" if self.kto_tag is not None else "supervised"
        return "prompt"


def to_example(row: dict[str, Any], spec: dict[str, Any], where: str) -> Example:
    """One row -> Example; a missing column, a wrong type or a broken role order names the
    file, the row and the field."""
    fmt = spec.get("formatting") or "alpaca"  # unset: LLaMA-Factory's default for chat data
    if fmt == "multiple_choice":
        raise UserError(f"{where}: multiple-choice rows are scored by eval (mc_dataset), not chats")
    if fmt == "text":
        col = (spec.get("columns") or {}).get("prompt", "text")
        return Example(text=_text(row, col, where))
    example = _alpaca(row, spec, where) if fmt == "alpaca" else _chat(row, spec, fmt, where)
    _check_order(example.messages, where)
    return example


def _alpaca(row: dict[str, Any], spec: dict[str, Any], where: str) -> Example:
    cols = {**ALPACA_COLUMNS, **(spec.get("columns") or {})}
    msgs: list[dict[str, str]] = []
    if cols.get("system") and row.get(cols["system"]):
        msgs.append({"role": SYSTEM, "content": _text(row, cols["system"], where)})
    history = row.get(cols["history"]) if cols.get("history") else None
    if history:
        if not isinstance(history, list) or not all(
            isinstance(t, (list, tuple)) and len(t) == 2 for t in history
        ):
            raise UserError(
                f"{where}: field '{cols['history']}' must be a list of [query, response]"
            )
        for q, r in history:
            msgs += [{"role": USER, "content": str(q)}, {"role": ASSISTANT, "content": str(r)}]
    prompt = _text(row, cols["prompt"], where)
    query = row.get(cols["query"]) if cols.get("query") else None
    msgs.append({"role": USER, "content": f"{prompt}\n{query}" if query else prompt})
    example = Example(msgs, tools=str(row.get(cols.get("tools", ""), "") or ""))
    if spec.get("ranking"):
        example.chosen = _text(row, cols.get("chosen", "chosen"), where)
        example.rejected = _text(row, cols.get("rejected", "rejected"), where)
        return example
    if cols.get("response") in row:
        msgs.append({"role": ASSISTANT, "content": _text(row, cols["response"], where)})
    _kto(example, row, cols, where)
    return example


def _chat(row: dict[str, Any], spec: dict[str, Any], fmt: str, where: str) -> Example:
    defaults = (
        (SHAREGPT_COLUMNS, SHAREGPT_TAGS) if fmt == "sharegpt" else (OPENAI_COLUMNS, OPENAI_TAGS)
    )
    cols = {**defaults[0], **(spec.get("columns") or {})}
    tags = {**defaults[1], **(spec.get("tags") or {})}
    turns = row.get(cols["messages"])
    if not isinstance(turns, list) or not turns:
        raise UserError(f"{where}: field '{cols['messages']}' missing or not a non-empty list")
    roles = {
        tags["user_tag"]: USER,
        tags["assistant_tag"]: ASSISTANT,
        tags["observation_tag"]: TOOL,
        tags["function_tag"]: ASSISTANT,
        tags["system_tag"]: SYSTEM,
    }
    msgs = []
    for i, turn in enumerate(turns):
        name = f"{cols['messages']}[{i}]"
        if not isinstance(turn, dict) or turn.get(tags["role_tag"]) not in roles:
            raise UserError(
                f"{where}: field '{name}.{tags['role_tag']}' must be one of {', '.join(roles)}"
            )
        msg = {
            "role": roles[turn[tags["role_tag"]]],
            "content": _text(turn, tags["content_tag"], f"{where}: {name}"),
        }
        if turn[tags["role_tag"]] == tags["function_tag"]:
            msg["tool_call"] = True  # an assistant turn that calls a tool: templates mark it
        msgs.append(msg)
    if cols.get("system") and row.get(cols["system"]) and msgs[0]["role"] != SYSTEM:
        msgs.insert(0, {"role": SYSTEM, "content": str(row[cols["system"]])})
    example = Example(msgs, tools=str(row.get(cols.get("tools", ""), "") or ""))
    if spec.get("ranking"):
        for side in ("chosen", "rejected"):
            value = row.get(cols.get(side, side))
            if isinstance(value, dict):
                value = value.get(tags["content_tag"])
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{where}: field '{cols.get(side, side)}' missing or empty")
            setattr(example, side, value)
        return example
    _kto(example, row, cols, where)
    return example


def _kto(example: Example, row: dict[str, Any], cols: dict[str, str], where: str) -> None:
    if "kto_tag" not in cols:
        return
    tag = row.get(cols["kto_tag"])
    if not isinstance(tag, bool):
        raise UserError(f"{where}: field '{cols['kto_tag']}' must be true or false")
    example.kto_tag = tag


def _check_order(msgs: list[dict[str, str]], where: str) -> None:
    """After an optional system message: user (or tool) and assistant turns alternate."""
    turns = msgs[1:] if msgs and msgs[0]["role"] == SYSTEM else msgs
    for i, m in enumerate(turns):
        want_user = i % 2 == 0
        if (m["role"] in (USER, TOOL)) != want_user or m["role"] == SYSTEM:
            expected = "user or tool" if want_user else "assistant"
            raise UserError(
                f"{where}: broken role order: message {i + len(msgs) - len(turns)} is "
                f"'{m['role']}', expected {expected}"
            )


def _text(row: dict[str, Any], column: str, where: str) -> str:
    if column not in row:
        raise UserError(f"{where}: missing field '{column}'")
    value = row[column]
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{column}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise UserError(f"{where}: field '{column}' is empty")
    return value
