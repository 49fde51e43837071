"""Batch tokenized rows: padded to the longest row, or padding-free (one row, no padding).

Padded: pad ids, labels (IGNORE) and an attention mask; neat-packed rows carry position ids
instead, and their padding tail is one more (ignored) example starting at 0.

Padding-free: the same rows in the same order, concatenated into one row whose position ids
restart at each row. With no attention mask, transformers reads the row boundaries from the
restarting position ids (the block-diagonal mask, or varlen flash-attention), exactly as it does
for neat-packed rows; no position is computed for padding. The first label of each row is
IGNORE: a padded batch never predicts it (labels shift within a row), and here it would be
predicted from the previous row's last token. So the trained (position, target) pairs, and their
count (the Trainer's `num_items_in_batch`), are the padded batch's, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stages.data.encode import IGNORE


@dataclass(frozen=True)
class Collator:
    """The data collator of our training stages; `padded` is the same without padding-free
    (evaluation keeps the Trainer's per-row weighting of batch losses)."""

    pad_id: int
    padding_free: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if self.padding_free:
            return padding_free(rows, self.pad_id)
        return collate(rows, self.pad_id)

    @property
    def padded(self) -> Collator:
        return Collator(self.pad_id)


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


def padding_free(rows: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """One row of all `rows`, position ids restarting at each (a neat-packed row keeps its
    own). Rows of one length have no padding to remove: they stay rows (a block mask over
    their concatenation would only add attention work)."""
    import torch

    if len({len(r["input_ids"]) for r in rows}) == 1 and "position_ids" not in rows[0]:
        return collate(rows, pad_id)
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for r in rows:
        ids += r["input_ids"]
        labels += [IGNORE, *r["labels"][1:]]
        positions += r["position_ids"] if "position_ids" in r else range(len(r["input_ids"]))
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
    }
