"""`tokenize`: render supervised examples through the tokenizer's chat template, with labels on
assistant tokens only, truncated to `cutoff_len`, split into train / validation."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from stages.base import MODEL, SFT_DATA, Context, In, UserError

IGNORE = -100


@dataclass
class TokenizeConfig:
    dataset: str = "demo_sft"  # a name in `datasets`
    cutoff_len: int = 512
    train_on_prompt: bool = False
    max_samples: int | None = None
    val_size: float = 0.0  # a fraction (< 1) or a count of validation examples
    seed: int = 42


class TokenizeStage:
    kind: ClassVar[str] = "tokenize"
    Config = TokenizeConfig
    inputs: ClassVar[dict[str, In]] = {"model": In(MODEL, default="base")}
    output: ClassVar[str] = SFT_DATA
    code: ClassVar[tuple[str, ...]] = ("data/formats.py", "model/loading.py")
    dataset_fields: ClassVar[tuple[str, ...]] = ("dataset",)
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "examples"

    def run(self, ctx: Context, cfg: TokenizeConfig) -> None:
        from datasets import Dataset
        from tqdm import tqdm

        from stages.data.formats import read_rows, to_messages
        from stages.model.loading import load_tokenizer

        entry = ctx.datasets["dataset"]
        path = Path(entry["path"])
        tokenizer = load_tokenizer(ctx.inputs["model"])
        if not tokenizer.chat_template:
            raise UserError(f"{ctx.inputs['model']}: the tokenizer has no chat template")
        rows = list(read_rows(path))
        if cfg.max_samples is not None:
            rows = rows[: cfg.max_samples]
        examples: list[dict[str, list[int]]] = []
        truncated = dropped = 0
        for n, row in tqdm(rows, desc=f"tokenize {path.name}", unit="row", leave=False):
            msgs = to_messages(row, entry["formatting"], f"{path}:{n}")
            ids, labels = encode(tokenizer, msgs, cfg.train_on_prompt)
            if len(ids) > cfg.cutoff_len:
                truncated += 1
                ids, labels = ids[: cfg.cutoff_len], labels[: cfg.cutoff_len]
            if all(x == IGNORE for x in labels):
                dropped += 1  # nothing left to learn from after truncation
                continue
            examples.append({"input_ids": ids, "labels": labels})
        if not examples:
            raise UserError(f"{path}: no usable examples (cutoff_len {cfg.cutoff_len} too small?)")
        train, val = split(examples, cfg.val_size, cfg.seed)
        Dataset.from_list(train).save_to_disk(str(ctx.out / "train"))
        if val:
            Dataset.from_list(val).save_to_disk(str(ctx.out / "validation"))
        ctx.metrics.update(
            examples=len(train),
            validation=len(val),
            tokens=sum(len(e["input_ids"]) for e in examples),
            trained_tokens=sum(sum(x != IGNORE for x in e["labels"]) for e in examples),
            truncated=truncated,
            dropped=dropped,
        )


def encode(tokenizer: Any, msgs: list[dict[str, str]], train_on_prompt: bool) -> tuple[list, list]:
    """Token ids of the whole chat, and labels that keep only assistant tokens.

    Each assistant turn's span is found by rendering the conversation up to it (with the generation
    prompt) and up to its end: this works for any template whose renders are prefix-consistent.
    """
    ids = _render(tokenizer, msgs, add_generation_prompt=False)
    if train_on_prompt:
        return ids, list(ids)
    labels = [IGNORE] * len(ids)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        start = len(_render(tokenizer, msgs[:i], add_generation_prompt=True))
        end = len(_render(tokenizer, msgs[: i + 1], add_generation_prompt=False))
        labels[start:end] = ids[start:end]
    return ids, labels


def _render(tokenizer: Any, msgs: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    if not msgs:
        return []
    out = tokenizer.apply_chat_template(
        msgs, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    return list(out)


def split(examples: list, val_size: float, seed: int) -> tuple[list, list]:
    """Shuffle once with `seed`; hold out a fraction (< 1) or a count for validation."""
    n_val = int(val_size) if val_size >= 1 else int(round(len(examples) * val_size))
    if n_val <= 0:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]
