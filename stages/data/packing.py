"""Pack tokenized examples into `cutoff_len` blocks (greedy best-fit, longest first).

No example is split. With `neat`, position ids restart at each example; transformers then builds
a block-diagonal causal mask from them (no attention across examples) when no attention mask is
passed, on SDPA / eager (CPU) and flash-attention alike.
"""

from __future__ import annotations

import bisect
from typing import Any

from stages.data.encode import IGNORE


def pack(examples: list[dict[str, list[int]]], cutoff: int, neat: bool) -> list[dict[str, Any]]:
    """Best-fit decreasing: each example, longest first, goes to the fullest block it fits."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), kept sorted
    for i in order:
        n = len(examples[i]["input_ids"])
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, b = free.pop(at)
        else:
            room, b = cutoff, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (room - n, b))
    return [_block([examples[i] for i in sorted(b)], neat) for b in bins]


def _block(parts: list[dict[str, list[int]]], neat: bool) -> dict[str, Any]:
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for part in parts:
        ids += part["input_ids"]
        # the first token of an example is never predicted from the one before it
        labels += [IGNORE, *part["labels"][1:]]
        positions += list(range(len(part["input_ids"])))
    block: dict[str, Any] = {"input_ids": ids, "labels": labels}
    if neat:
        block["position_ids"] = positions
    return block


def padding_fraction(lengths: list[int], batch_size: int) -> float:
    """Share of padding when batches (in order) are padded to their longest row."""
    total = padded = 0
    for i in range(0, len(lengths), batch_size):
        batch = lengths[i : i + batch_size]
        total += len(batch) * max(batch)
        padded += len(batch) * max(batch) - sum(batch)
    return padded / total if total else 0.0
