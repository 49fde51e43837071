"""Chat templates of the major families: ids equal `apply_chat_template`, and labels cover
exactly the assistant replies (content plus the family's end-of-turn), on BPE tokenizers."""

from __future__ import annotations

import pytest

from stages.data.encode import IGNORE, encode, encode_kto, encode_preference
from tests.assets.families import END, START, TAIL, TEMPLATES, family_tokenizer

SINGLE = [{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "42"}]
MULTI = [
    {"role": "system", "content": "You answer with the result only."},
    {"role": "user", "content": "Reverse the word.\nkalo"},
    {"role": "assistant", "content": "olak"},
    {"role": "user", "content": "Sort these digits.\n312"},
    {"role": "assistant", "content": "123"},
]


def trained(tok, ids: list[int], labels: list[int]) -> str:  # type: ignore[no-untyped-def]
    return tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE])


@pytest.mark.parametrize("family", sorted(TEMPLATES))
@pytest.mark.parametrize("msgs", [SINGLE, MULTI], ids=["single", "multi"])
def test_ids_and_assistant_only_labels(family: str, msgs: list) -> None:
    tok = family_tokenizer(family)
    ids, labels = encode(tok, msgs)
    assert ids == tok.apply_chat_template(msgs, tokenize=True, return_dict=False)
    replies = [m["content"] for m in msgs if m["role"] == "assistant"]
    want = "".join(START.get(family, "") + r + END[family] for r in replies) + TAIL.get(family, "")
    assert trained(tok, ids, labels) == want
    assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels, strict=True))
    _, last_only = encode(tok, msgs, mask_history=True)
    last = START.get(family, "") + replies[-1] + END[family] + TAIL.get(family, "")
    assert trained(tok, ids, last_only) == last
    assert encode(tok, msgs, train_on_prompt=True)[1] == ids


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_preference_pairs_share_their_prompt_and_kto_keeps_its_label(family: str) -> None:
    tok = family_tokenizer(family)
    prompt = MULTI[:4]
    pair = encode_preference(tok, prompt, chosen="123", rejected="124")
    for side, reply in (("chosen", "123"), ("rejected", "124")):
        full = tok.apply_chat_template(
            [*prompt, {"role": "assistant", "content": reply}], tokenize=False
        )
        assert tok.decode(pair["prompt_ids"] + pair[f"{side}_ids"]) == full
    kto = encode_kto(tok, MULTI, desirable=False)
    assert kto["kto_tag"] is False
    want = START.get(family, "") + "123" + END[family] + TAIL.get(family, "")
    assert trained(tok, kto["input_ids"], kto["labels"]) == want
