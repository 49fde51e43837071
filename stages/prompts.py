"""`prompts`: the prompts RL stages (ppo, grpo) sample replies from, rendered with the generation
prompt. Any chat data serves: a prompt-only chat, or the context of a supervised example, a
preference pair or a KTO row (its reply is kept as `reference`, for reward functions that want
it). Created implicitly for an RL stage's data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from stages.base import MODEL, PROMPTS, Context, In, bounded
from stages.data.config import ChatDataConfig
from stages.data.lengths import Tally
from stages.data.shapes import KTO, PREFERENCE, SUPERVISED, refuse
from stages.pairs import CODE

KINDS = ("prompt", "supervised", "preference", "kto")  # example kinds (stages/data/formats.py)


@dataclass
class PromptsConfig(ChatDataConfig):
    dataset: str | list[str] = "demo_prompts"
    cutoff_len: int = bounded(
        256, min=1
    )  # the longest prompt, in tokens (longer ones lose their left context)


class PromptsStage:
    kind: ClassVar[str] = "prompts"
    Config = PromptsConfig
    inputs: ClassVar[dict[str, In]] = {"model": In(MODEL, default="base")}
    output: ClassVar[str] = PROMPTS
    code: ClassVar[tuple[str, ...]] = CODE
    dataset_fields: ClassVar[tuple[str, ...]] = ("dataset",)
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "examples"

    @staticmethod
    def check_dataset(entry: dict[str, Any]) -> str | None:
        return refuse(entry, (SUPERVISED, PREFERENCE, KTO), "prompts come from chat data")

    def run(self, ctx: Context, cfg: PromptsConfig) -> None:
        from stages.data.build import build_chat_data

        def encode(tokenizer: Any, example: Any, counts: dict[str, int]) -> dict[str, Any]:
            return prompt_row(tokenizer, example, cfg.cutoff_len, counts)

        ctx.metrics.update(build_chat_data(ctx, cfg, KINDS, encode))


def prompt_row(tokenizer: Any, example: Any, cutoff: int, counts: Tally) -> dict:
    """prompt_ids (left-truncated to `cutoff`), the prompt's messages as JSON, the last user
    turn's text, and the reply the data gives, if any."""
    from stages.data.encode import render

    msgs = list(example.messages)
    reference = example.chosen or ""
    if msgs and msgs[-1]["role"] == "assistant":
        reference = msgs.pop()["content"]
    ids = list(
        tokenizer(
            render(tokenizer, msgs, generation=True, tools=example.tools or None),
            add_special_tokens=False,
        )["input_ids"]
    )
    if counts.fit(len(ids), cutoff):
        ids = ids[len(ids) - cutoff :]
    user = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")
    return {
        "prompt_ids": ids,
        "messages": json.dumps(msgs),
        "prompt": user,
        "reference": reference,
    }
