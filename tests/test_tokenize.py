"""SFT tokenization: template ids, assistant-only labels, truncation, splits, bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.base import Context, UserError
from stages.data.formats import to_messages
from stages.model.tiny import build_tokenizer
from stages.tokenize import IGNORE, TokenizeConfig, TokenizeStage, encode, split

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "Reverse the word.\nkalo"},
    {"role": "assistant", "content": "olak"},
]


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tokenizer()


def trained_text(tokenizer, ids: list[int], labels: list[int]) -> str:  # type: ignore[no-untyped-def]
    return tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE])


def test_ids_equal_the_chat_template_and_only_assistant_tokens_are_trained(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids, labels = encode(tokenizer, CHAT, train_on_prompt=False)
    assert ids == tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=False)
    assert trained_text(tokenizer, ids, labels) == "4<|im_end|>\nolak<|im_end|>\n"
    trained = [i for i, lab in enumerate(labels) if lab != IGNORE]
    assert all(labels[i] == ids[i] for i in trained)


def test_train_on_prompt_trains_every_token(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids, labels = encode(tokenizer, CHAT, train_on_prompt=True)
    assert labels == ids


def test_alpaca_rows_become_messages_and_bad_rows_name_file_row_and_field() -> None:
    row = {"instruction": "Sort these digits.", "input": "312", "output": "123", "system": "S"}
    assert to_messages(row, "alpaca", "f:1") == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Sort these digits.\n312"},
        {"role": "assistant", "content": "123"},
    ]
    with pytest.raises(UserError, match=r"^data.jsonl:7: field 'output' missing or empty$"):
        to_messages({"instruction": "x", "output": " "}, "alpaca", "data.jsonl:7")
    with pytest.raises(UserError, match="last message must come from the assistant"):
        to_messages({"messages": CHAT[:2]}, "messages", "c.jsonl:2")


def test_split_holds_out_a_fraction_or_a_count_deterministically() -> None:
    items = list(range(100))
    train, val = split(items, 0.1, seed=1)
    assert len(val) == 10 and sorted(train + val) == items
    assert split(items, 0.1, seed=1) == (train, val)
    assert len(split(items, 7, seed=1)[1]) == 7
    assert split(items, 0.0, seed=1) == (items, [])


def test_stage_writes_datasets_and_counts_truncation(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model_dir = tmp_path / "model"
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "d.jsonl"
    rows = [{"instruction": f"Say {'x' * n}", "input": "", "output": "y" * n} for n in range(1, 21)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    out.mkdir()
    ctx = Context(
        name="tokenize:d",
        key="k",
        out=out,
        work=tmp_path / "work",
        inputs={"model": model_dir},
        datasets={"dataset": {"path": str(data), "formatting": "alpaca"}},
    )
    TokenizeStage().run(ctx, TokenizeConfig(dataset="d", cutoff_len=50, val_size=5))
    from datasets import load_from_disk

    train, val = load_from_disk(str(out / "train")), load_from_disk(str(out / "validation"))
    assert (len(train), len(val)) == (15, 5)
    assert max(len(r["input_ids"]) for r in train) <= 50
    full = [len(encode(tokenizer, to_messages(r, "alpaca", ""), False)[0]) for r in rows]
    assert ctx.metrics["truncated"] == sum(n > 50 for n in full) > 0
    assert ctx.metrics["examples"] == 15 and ctx.metrics["validation"] == 5
