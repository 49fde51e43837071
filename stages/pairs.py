"""`pairs`: preference data (a prompt with a chosen and a rejected reply) rendered through the chat
template: prompt ids shared by both replies, each reply's ids through its end-of-turn markers.
Created implicitly for the data of rm, dpo, orpo and simpo stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from stages.base import MODEL, PREFERENCE_DATA, Context, In
from stages.data.config import ChatDataConfig
from stages.data.lengths import Tally
from stages.data.shapes import PREFERENCE, refuse

CODE = ("data/config.py", "data/shapes.py", "data/build.py", "data/formats.py", "data/sources.py")
CODE += ("data/artifact.py",)
CODE += ("data/templates.py", "data/encode.py", "data/mixing.py", "data/examples.py")
CODE += ("model/loading.py",)


@dataclass
class PairsConfig(ChatDataConfig):
    dataset: str | list[str] = "demo_preference"


class PairsStage:
    kind: ClassVar[str] = "pairs"
    Config = PairsConfig
    inputs: ClassVar[dict[str, In]] = {"model": In(MODEL, default="base")}
    output: ClassVar[str] = PREFERENCE_DATA
    code: ClassVar[tuple[str, ...]] = CODE
    dataset_fields: ClassVar[tuple[str, ...]] = ("dataset",)
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "examples"

    @staticmethod
    def check_dataset(entry: dict[str, Any]) -> str | None:
        return refuse(entry, (PREFERENCE,), "this stage needs preference pairs (ranking: true)")

    def run(self, ctx: Context, cfg: PairsConfig) -> None:
        from stages.data.build import build_chat_data
        from stages.data.encode import encode_preference

        def encode(tokenizer: Any, example: Any, counts: Tally) -> dict[str, Any]:
            row = encode_preference(tokenizer, example.messages, example.chosen, example.rejected)
            return fit_pair(row, cfg.cutoff_len, counts)

        ctx.metrics.update(build_chat_data(ctx, cfg, (PREFERENCE,), encode))


def fit_pair(row: dict[str, list[int]], cutoff: int, counts: Tally) -> dict[str, Any]:
    """Fit prompt + the longer reply into `cutoff`: the prompt loses tokens from the left, keeping
    at least a quarter of the window; only replies longer than the rest lose their tails."""
    prompt, chosen, rejected = row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]
    longest = max(len(chosen), len(rejected))
    if not counts.fit(len(prompt) + longest, cutoff):
        return row
    keep = max(cutoff - longest, min(len(prompt), cutoff // 4))
    reply = cutoff - keep
    return {
        "prompt_ids": prompt[len(prompt) - keep :],
        "chosen_ids": chosen[:reply],
        "rejected_ids": rejected[:reply],
    }
