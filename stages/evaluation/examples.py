"""Eval data: a prompt (every turn before the reply) and the reference reply, from any chat data
the project reads (alpaca / sharegpt / openai rows: the last assistant turn; preference rows: the
chosen reply, with the rejected one kept for pairwise accuracy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stages.base import UserError


@dataclass
class EvalExample:
    where: str  # file:row, for messages
    messages: list[dict[str, str]]  # the prompt
    reference: str
    tools: str = ""
    rejected: str | None = None  # preference rows only

    @property
    def chat(self) -> list[dict[str, str]]:
        """The prompt followed by the reference reply."""
        return [*self.messages, {"role": "assistant", "content": self.reference}]

    @property
    def user_text(self) -> str:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")

    def instruction_input(self) -> tuple[str, str]:
        """The last user turn split at its first newline: an alpaca row's (instruction, input)
        as the formats render them (`instruction\\ninput`)."""
        instruction, _, inp = self.user_text.partition("\n")
        return instruction, inp

    def record(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "prompt": self.user_text,
            "messages": self.messages,
            "reference": self.reference,
        }


def read_examples(entries: list[dict[str, Any]], max_samples: int | None) -> list[EvalExample]:
    """Every row of each dataset entry (up to `max_samples` per dataset), in order."""
    from stages.data.formats import to_example
    from stages.data.sources import iter_rows

    out: list[EvalExample] = []
    for entry in entries:
        for n, (where, row) in enumerate(iter_rows(entry)):
            if max_samples is not None and n >= max_samples:
                break
            example = to_example(row, entry, where)
            msgs = list(example.messages)
            if example.kind == "preference":
                out.append(
                    EvalExample(where, msgs, example.chosen or "", example.tools, example.rejected)
                )
            elif example.kind == "supervised":
                reference = msgs.pop()["content"]
                out.append(EvalExample(where, msgs, reference, example.tools))
            else:
                raise UserError(
                    f"{where}: a {example.kind} example; eval needs a prompt with a reference "
                    "reply (supervised rows, or preference pairs: the chosen reply)"
                )
    if not out:
        names = ", ".join(str(e.get("name", e["path"])) for e in entries)
        raise UserError(f"dataset '{names}': no rows to evaluate")
    return out
