"""Packing: no example split; neat packing gives the loss of the same examples unpacked."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from stages.data.collate import collate
from stages.data.encode import IGNORE, encode
from stages.data.packing import pack, padding_fraction
from stages.model.tiny import build_model, build_tokenizer
from tests.sizes import SMALL


def examples(n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    tok = build_tokenizer()
    out = []
    for _ in range(n):
        q, r = "q" * rng.randint(1, 30), "r" * rng.randint(1, 30)
        ids, labels = encode(
            tok, [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
        )
        out.append({"input_ids": ids, "labels": labels})
    return out


def test_no_example_is_split_and_every_token_is_kept() -> None:
    data = examples(50)
    blocks = pack(data, cutoff=128, neat=True)
    assert all(len(b["input_ids"]) <= 128 for b in blocks)
    pieces = []
    for b in blocks:  # cut each block where its position ids restart
        starts = [i for i, p in enumerate(b["position_ids"]) if p == 0] + [len(b["input_ids"])]
        pieces += [tuple(b["input_ids"][s:e]) for s, e in zip(starts, starts[1:], strict=False)]
    assert sorted(pieces) == sorted(tuple(e["input_ids"]) for e in data)
    assert len(blocks) < len(data) / 2
    lengths = [len(e["input_ids"]) for e in data]
    assert padding_fraction([len(b["input_ids"]) for b in blocks], 8) < padding_fraction(lengths, 8)


@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_neat_packed_loss_equals_unpacked_loss(tmp_path: Path, train_on_prompt: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    build_model(tmp_path, **SMALL)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    data = examples(12, seed=1)
    if train_on_prompt:
        data = [{"input_ids": e["input_ids"], "labels": list(e["input_ids"])} for e in data]
    with torch.no_grad():
        unpacked = model(**collate(data, pad_id=0), use_cache=False).loss
        packed_rows = pack(data, cutoff=256, neat=True)
        # no KV cache, as in training: transformers reads packing from position ids only then
        packed = model(**collate(packed_rows, pad_id=0), use_cache=False).loss
    assert len(packed_rows) < len(data)
    assert sum(lab != IGNORE for r in packed_rows for lab in r["labels"]) == sum(
        lab != IGNORE for e in data for lab in e["labels"][1:]
    )
    assert abs(packed.item() - unpacked.item()) < 1e-5
