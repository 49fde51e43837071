"""Batch tokenized rows: pad ids, labels (IGNORE) and, for neat-packed rows, position ids.

Neat-packed batches carry no attention mask, so transformers reads example boundaries from the
restarting position ids; their padding tail is one more (ignored) example starting at 0.
"""

from __future__ import annotations

from typing import Any

from stages.data.encode import IGNORE


def collate(rows: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    neat = "position_ids" in rows[0]
    batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    if neat:
        batch["position_ids"] = []
    else:
        batch["attention_mask"] = []
    for r in rows:
        pad = width - len(r["input_ids"])
        batch["input_ids"].append(list(r["input_ids"]) + [pad_id] * pad)
        batch["labels"].append(list(r["labels"]) + [IGNORE] * pad)
        if neat:
            batch["position_ids"].append(list(r["position_ids"]) + list(range(pad)))
        else:
            batch["attention_mask"].append([1] * len(r["input_ids"]) + [0] * pad)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
