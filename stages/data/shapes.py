"""What shape of examples a dataset entry holds, told from its registry entry at compile time,
so that a stage given the wrong data is refused before anything runs."""

from __future__ import annotations

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
    formatting), else supervised."""
    if entry.get("formatting") in (TEXT, MULTIPLE_CHOICE):
        return entry["formatting"]
    if entry.get("ranking"):
        return PREFERENCE
    if "kto_tag" in (entry.get("columns") or {}):
        return KTO
    return SUPERVISED


def refuse(entry: dict[str, Any], accepted: tuple[str, ...], needs: str) -> str | None:
    """A compile-time refusal when the entry's shape is not among `accepted`, else None."""
    shape = entry_shape(entry)
    if shape in accepted:
        return None
    return f"holds {shape} data; {needs}; {shape} data is for {USED_BY[shape]}"
