"""Mix several datasets: concatenate, or interleave with probabilities until the first runs out
(`interleave_under`) or until every one has been used up at least once (`interleave_over`,
recycling the shorter ones)."""

from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")
STRATEGIES = ("concat", "interleave_under", "interleave_over")


def mix(parts: list[list[T]], strategy: str, probs: list[float] | None, seed: int) -> list[T]:
    if strategy == "concat" or len(parts) == 1:
        return [x for part in parts for x in part]
    weights = probs or [1.0] * len(parts)
    if len(weights) != len(parts):
        raise ValueError(f"interleave_probs has {len(weights)} values for {len(parts)} datasets")
    rng = random.Random(seed)
    cursor = [0] * len(parts)
    done = [False] * len(parts)
    out: list[T] = []
    while True:
        i = rng.choices(range(len(parts)), weights=weights)[0]
        if cursor[i] == len(parts[i]):
            done[i] = True
            if strategy == "interleave_under" or all(done):
                return out
            cursor[i] = 0  # over-sampling: start this one again
        out.append(parts[i][cursor[i]])
        cursor[i] += 1
