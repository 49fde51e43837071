"""A reward model as the judge: the score of each generated reply, the win rate of the model's
replies against a baseline model's on the same prompts, and, for a reward model under eval, its
pairwise accuracy on preference data. Scoring goes through `RewardScorer`, so a conversation is
rendered and pooled exactly as in rm training."""

from __future__ import annotations

from typing import Any

from stages.evaluation.examples import EvalExample


def reply_scores(
    scorer: Any, examples: list[EvalExample], replies: list[str], batch_size: int
) -> list[float]:
    """The reward of each prompt followed by its reply as one assistant turn."""
    chats = [
        [*ex.messages, {"role": "assistant", "content": reply}]
        for ex, reply in zip(examples, replies, strict=True)
    ]
    return scorer(chats, batch_size=batch_size)


def wins(model: list[float], baseline: list[float]) -> list[float]:
    """1 where the model's reply scores higher, 0 where lower, 0.5 for a tie."""
    return [1.0 if m > b else 0.0 if m < b else 0.5 for m, b in zip(model, baseline, strict=True)]


def pairwise(
    scorer: Any, examples: list[EvalExample], batch_size: int
) -> tuple[list[float], list[float]]:
    """(chosen scores, rejected scores) of preference examples."""
    chosen = scorer([ex.chat for ex in examples], batch_size=batch_size)
    rejected = scorer(
        [[*ex.messages, {"role": "assistant", "content": ex.rejected or ""}] for ex in examples],
        batch_size=batch_size,
    )
    return chosen, rejected
