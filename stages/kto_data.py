"""`kto_data`: KTO rows (a prompt, one reply, and whether the reply is desirable) rendered through
the chat template: prompt ids ending with the generation prompt, the reply's ids through its
end-of-turn markers, and the label. Created implicitly for the data of kto stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from stages.base import KTO_DATA, MODEL, Context, In
from stages.data.config import ChatDataConfig
from stages.data.lengths import Tally
from stages.data.shapes import KTO, refuse
from stages.pairs import CODE, fit_pair


@dataclass
class KtoDataConfig(ChatDataConfig):
    dataset: str | list[str] = "demo_kto"


class KtoDataStage:
    kind: ClassVar[str] = "kto_data"
    Config = KtoDataConfig
    inputs: ClassVar[dict[str, In]] = {"model": In(MODEL, default="base")}
    output: ClassVar[str] = KTO_DATA
    code: ClassVar[tuple[str, ...]] = (*CODE, "pairs.py")
    dataset_fields: ClassVar[tuple[str, ...]] = ("dataset",)
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "examples"

    @staticmethod
    def check_dataset(entry: dict[str, Any]) -> str | None:
        return refuse(entry, (KTO,), "kto needs replies labelled desirable or not (a kto_tag)")

    def run(self, ctx: Context, cfg: KtoDataConfig) -> None:
        from stages.data.build import build_chat_data

        def encode(tokenizer: Any, example: Any, counts: Tally) -> dict[str, Any]:
            row = encode_reply(tokenizer, example.messages, example.tools or None)
            return {**fit_reply(row, cfg.cutoff_len, counts), "label": bool(example.kto_tag)}

        ctx.metrics.update(build_chat_data(ctx, cfg, (KTO,), encode))


def encode_reply(tokenizer: Any, msgs: list[dict[str, str]], tools: Any = None) -> dict:
    """Prompt ids (the context of the last reply, with the generation prompt) and the last
    reply's ids, so that prompt + reply renders the whole conversation."""
    from stages.data.encode import render

    prompt_text = render(tokenizer, msgs[:-1], generation=True, tools=tools)
    full = render(tokenizer, msgs, tools=tools)
    if not full.startswith(prompt_text):
        raise ValueError("the chat template does not render the prompt as a prefix")
    ids = [_ids(tokenizer, prompt_text), _ids(tokenizer, full[len(prompt_text) :])]
    return {"prompt_ids": ids[0], "completion_ids": ids[1]}


def fit_reply(row: dict[str, list[int]], cutoff: int, counts: Tally) -> dict[str, Any]:
    """Fit prompt + reply into `cutoff` by the rule preference pairs follow (`fit_pair`)."""
    reply = row["completion_ids"]
    fitted = fit_pair(
        {"prompt_ids": row["prompt_ids"], "chosen_ids": reply, "rejected_ids": reply},
        cutoff,
        counts,
    )
    return {"prompt_ids": fitted["prompt_ids"], "completion_ids": fitted["chosen_ids"]}


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
