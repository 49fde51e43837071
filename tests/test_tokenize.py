"""SFT tokenization: template ids, assistant-only labels, masks, truncation, splits, the stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.base import Context, UserError
from stages.data.encode import IGNORE, encode, truncate
from stages.model.tiny import build_tokenizer
from stages.tokenize import TokenizeConfig, TokenizeStage, split

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
    ids, labels = encode(tokenizer, CHAT)
    assert ids == tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=False)
    assert trained_text(tokenizer, ids, labels) == "4<|im_end|>\nolak<|im_end|>\n"
    assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels, strict=True))


def test_train_on_prompt_and_mask_history(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids, labels = encode(tokenizer, CHAT, train_on_prompt=True)
    assert labels == ids
    ids, labels = encode(tokenizer, CHAT, mask_history=True)
    assert trained_text(tokenizer, ids, labels) == "olak<|im_end|>\n"


def test_truncation_keeps_the_last_reply_and_drops_context_from_the_left(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids, labels = encode(tokenizer, CHAT)
    short_ids, short_labels = truncate(ids, labels, 30)
    assert len(short_ids) == 30 and short_ids == ids[-30:]
    assert trained_text(tokenizer, short_ids, short_labels).endswith("olak<|im_end|>\n")
    long_reply = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y" * 100}]
    ids, labels = encode(tokenizer, long_reply)
    cut_ids, cut_labels = truncate(ids, labels, 40)
    assert len(cut_ids) == 40 and cut_labels[:10] == [IGNORE] * 10  # a quarter left for the prompt
    assert truncate(ids, labels, 1000) == (ids, labels)


def test_split_holds_out_a_fraction_or_a_count_deterministically() -> None:
    items = list(range(100))
    train, val = split(items, 0.1, seed=1)
    assert len(val) == 10 and sorted(train + val) == items
    assert split(items, 0.1, seed=1) == (train, val)
    assert len(split(items, 7, seed=1)[1]) == 7
    assert split(items, 0.0, seed=1) == (items, [])


def run_stage(tmp_path: Path, tokenizer, rows: list, cfg: TokenizeConfig, **entry) -> Context:  # type: ignore[no-untyped-def]
    tmp_path.mkdir(parents=True, exist_ok=True)
    model_dir = tmp_path / "model"
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "d.jsonl"
    data.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    out = tmp_path / "out"
    out.mkdir()
    ctx = Context(
        name="tokenize:d",
        key="k",
        out=out,
        work=tmp_path / "work",
        inputs={"model": model_dir},
        datasets={"dataset": [{"name": "d", "path": str(data), "formatting": "alpaca", **entry}]},
    )
    TokenizeStage().run(ctx, cfg)
    return ctx


def test_stage_writes_datasets_and_counts_truncation(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    rows = [{"instruction": f"Say {'x' * n}", "input": "", "output": "y" * n} for n in range(1, 21)]
    ctx = run_stage(tmp_path, tokenizer, rows, TokenizeConfig(cutoff_len=50, val_size=5))
    from datasets import load_from_disk

    train, val = load_from_disk(str(ctx.out / "train")), load_from_disk(str(ctx.out / "validation"))
    assert (len(train), len(val)) == (15, 5)
    assert max(len(r["input_ids"]) for r in train) <= 50
    full = [
        len(
            encode(
                tokenizer,
                [
                    {"role": "user", "content": r["instruction"]},
                    {"role": "assistant", "content": r["output"]},
                ],
            )[0]
        )
        for r in rows
    ]
    assert ctx.metrics["truncated"] == sum(n > 50 for n in full) > 0
    assert ctx.metrics["examples"] == 15 and ctx.metrics["validation"] == 5
    assert (ctx.out / "chat_template.jinja").read_text() == tokenizer.chat_template


def test_a_named_template_replaces_the_tokenizers_own(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    rows = [{"instruction": "hi", "output": "yo"}]
    ctx = run_stage(tmp_path, tokenizer, rows, TokenizeConfig(template="llama3"))
    from datasets import load_from_disk

    (row,) = load_from_disk(str(ctx.out / "train"))
    assert tokenizer.decode(row["input_ids"]).startswith("<|begin_of_text|><|start_header_id|>user")
    assert trained_text(tokenizer, row["input_ids"], row["labels"]) == "yo<|eot_id|>"


BAD = {
    "malformed json": ('{"instruction": "a", "output"', r"d.jsonl:2: malformed JSON"),
    "missing column": (
        {"instruction": "a"},
        r"d.jsonl:2: a prompt example; sft needs a prompt and a response",
    ),
    "wrong type": (
        {"instruction": "a", "output": 5},
        r"d.jsonl:2: field 'output' must be a string, got int",
    ),
    "empty response": ({"instruction": "a", "output": "  "}, r"d.jsonl:2: field 'output' is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_rows_name_file_row_and_field(tmp_path: Path, tokenizer, case: str) -> None:  # type: ignore[no-untyped-def]
    bad, message = BAD[case]
    with pytest.raises(UserError, match=message):
        run_stage(tmp_path, tokenizer, [{"instruction": "a", "output": "b"}, bad], TokenizeConfig())


def test_skip_policy_counts_what_it_skipped(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    rows = [
        {"instruction": "a", "output": "b"},
        {"instruction": "a"},
        {"instruction": "c", "output": ""},
    ]
    ctx = run_stage(tmp_path, tokenizer, rows, TokenizeConfig(bad_rows="skip"))
    assert ctx.metrics["skipped"] == 2 and ctx.metrics["examples"] == 1


def test_num_proc_gives_the_same_bytes(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    from datasets import load_from_disk

    rows = [{"instruction": f"What is {i} + 1?", "output": str(i + 1)} for i in range(1500)]
    one = run_stage(tmp_path / "one", tokenizer, rows, TokenizeConfig(num_proc=1))
    two = run_stage(tmp_path / "two", tokenizer, rows, TokenizeConfig(num_proc=2))
    a, b = load_from_disk(str(one.out / "train")), load_from_disk(str(two.out / "train"))
    assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]
    assert one.metrics == two.metrics


def test_text_is_concatenated_into_blocks_with_eos(tokenizer) -> None:  # type: ignore[no-untyped-def]
    from stages.data.encode import text_blocks

    blocks, dropped = text_blocks(tokenizer, ["abc", "de"], block_size=3)
    eos = tokenizer.eos_token_id
    assert blocks == [tokenizer("abc")["input_ids"], [eos, *tokenizer("de")["input_ids"]]]
    assert dropped == 1  # the last eos did not fill a block


def test_streaming_yields_what_tokenize_would_have_written(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    from datasets import load_from_disk

    from stages.data.examples import stream

    rows = [{"instruction": f"Say {'x' * n}", "output": "y" * n} for n in range(1, 30)]
    full = run_stage(tmp_path / "full", tokenizer, rows, TokenizeConfig(cutoff_len=40))
    lazy = run_stage(
        tmp_path / "lazy", tokenizer, rows, TokenizeConfig(cutoff_len=40, streaming=True)
    )
    assert not (lazy.out / "train").exists()
    recipe = json.loads((lazy.out / "stream.json").read_text())
    streamed = list(stream(recipe, tokenizer))
    written = load_from_disk(str(full.out / "train"))
    assert [e["input_ids"] for e in streamed] == written["input_ids"]
    assert [e["labels"] for e in streamed] == written["labels"]
