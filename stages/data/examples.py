"""Rows -> supervised chats -> fitted token ids: the steps `tokenize` runs over a whole dataset
and a streaming run applies lazily, one row at a time, while it trains."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from stages.base import UserError
from stages.data.encode import IGNORE, encode, truncate
from stages.data.formats import Example, to_example
from stages.data.lengths import Tally
from stages.data.sources import iter_rows

Chat = tuple[list[dict[str, str]], Any]


NEEDS = {
    "supervised": "sft needs a prompt and a response",
    "text": "pt needs plain text",
    "preference": "this stage needs a prompt with a chosen and a rejected reply",
    "kto": "kto needs a prompt, a reply and a kto_tag label",
    "prompt": "this stage needs prompts (a chat ending in a user turn, or any chat data)",
}


def usable_examples(
    entry: dict[str, Any],
    kind: str | tuple[str, ...],
    max_samples: int | None,
    bad_rows: str,
    skipped: list[str],
) -> Iterator[Example]:
    """The examples of `kind` (or of any of several kinds) in a dataset, in order; a bad row (or
    one of another kind) raises, or with bad_rows=skip is appended to `skipped` (never dropped
    silently)."""
    kinds = (kind,) if isinstance(kind, str) else kind
    for n, (where, row) in enumerate(iter_rows(entry)):
        if max_samples is not None and n >= max_samples:
            return
        try:
            example = to_example(row, entry, where)
            if example.kind not in kinds:
                raise UserError(f"{where}: a {example.kind} example; {NEEDS[kinds[0]]}")
        except UserError as e:
            if bad_rows == "error":
                raise
            skipped.append(str(e))
            continue
        yield example


def supervised_chats(
    entry: dict[str, Any], max_samples: int | None, bad_rows: str, skipped: list[str]
) -> Iterator[Chat]:
    """(messages, tools) per usable supervised row."""
    for example in usable_examples(entry, "supervised", max_samples, bad_rows, skipped):
        yield example.messages, example.tools or None


def fit(ids: list[int], labels: list[int], cutoff: int, counts: Tally) -> dict | None:
    """Truncate to `cutoff` (counted); None when nothing trainable is left (counted)."""
    if counts.fit(len(ids), cutoff):
        ids, labels = truncate(ids, labels, cutoff)
    if all(x == IGNORE for x in labels):
        counts["dropped"] += 1
        return None
    return {"input_ids": ids, "labels": labels}


def stream(recipe: dict[str, Any], tokenizer: Any) -> Iterator[dict[str, list[int]]]:
    """Tokenize on the fly from a `stream.json` recipe (datasets, options), dataset after dataset."""
    opts = recipe["options"]
    counts = Tally()
    for entry in recipe["datasets"]:
        skipped: list[str] = []
        for msgs, tools in supervised_chats(entry, opts["max_samples"], opts["bad_rows"], skipped):
            ids, labels = encode(
                tokenizer,
                msgs,
                tools=tools,
                train_on_prompt=opts["train_on_prompt"],
                mask_history=opts["mask_history"],
            )
            example = fit(ids, labels, opts["cutoff_len"], counts)
            if example is not None:
                yield example
