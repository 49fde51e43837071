"""A tokenizer as GGUF metadata (llama.cpp's `tokenizer.ggml.*` keys), written so that llama.cpp
and transformers' GGUF loader rebuild the same token ids.

Two kinds are written, both as llama.cpp's "gpt2" model (byte-level BPE):
- byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen): the vocabulary and merges as they are;
- a character-level WordLevel vocabulary (the built-in tiny model): every token is one byte, so it
  is byte-level BPE with no merges, each character spelled in GPT-2's byte alphabet (" " -> "Ġ").
  Characters outside the vocabulary, which WordLevel reads as <unk>, are dropped by such a reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from stages.base import UserError


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]  # gguf.TokenType values
    merges: list[str] = field(default_factory=list)
    pre: str = "gpt-2"


def add_vocab(writer: Any, tokenizer: Any, stop_ids: list[int], vocab_size: int) -> Vocab:
    """Tokens, merges, special ids, stop tokens and chat template into `writer` (one that can
    write an empty array: `gguf_export.Writer`)."""
    import gguf

    vocab = gguf_vocab(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    else:  # llama.cpp needs the key even with no merges; gguf's add_array skips empty lists
        value = gguf.GGUFValueType
        writer.add_key_value(gguf.Keys.Tokenizer.MERGES, [], value.ARRAY, sub_type=value.STRING)
    eos, eot = end_tokens(tokenizer, stop_ids)
    if eos is not None:
        writer.add_eos_token_id(eos)
    if eot is not None:
        writer.add_eot_token_id(eot)
    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    adds_bos, adds_eos = _adds_specials(tokenizer)
    writer.add_add_bos_token(adds_bos)
    writer.add_add_eos_token(adds_eos)
    template = chat_template(tokenizer)
    if template:
        writer.add_chat_template(template)
    return vocab


def gguf_vocab(tokenizer: Any, vocab_size: int) -> Vocab:
    """The model's `vocab_size` tokens by id (rows past the tokenizer padded as unused)."""
    import gguf

    spec = check_vocab(tokenizer, vocab_size)
    added = dict(tokenizer.added_tokens_decoder)
    if spec["model"]["type"] == "BPE":
        spell, merges = (lambda t: t), [_merge(m) for m in spec["model"].get("merges", [])]
        pre = pre_name(spec.get("pre_tokenizer"))
    else:
        spell, merges, pre = _byte_spelling(spec["model"]["vocab"], added), [], "gpt-2"
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    kind = gguf.TokenType
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i].content)
            types.append(kind.CONTROL if added[i].special else kind.USER_DEFINED)
        elif i in by_id:
            tokens.append(spell(by_id[i]))
            types.append(kind.NORMAL)
        else:  # embedding rows past the tokenizer (padding to a round size)
            tokens.append(f"[PAD{i}]")
            types.append(kind.UNUSED)
    return Vocab(tokens, [int(t) for t in types], merges, pre)


def check_vocab(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """The tokenizer's tokenizer.json, if GGUF can carry it; a UserError saying why not."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = spec["model"]["type"]
    if kind == "WordLevel":
        _byte_spelling(spec["model"]["vocab"], dict(tokenizer.added_tokens_decoder))
    elif kind != "BPE" or not _byte_level(spec):
        what = "BPE without byte-level pre-tokenization" if kind == "BPE" else kind
        raise UserError(
            f"gguf: the tokenizer is {what}; GGUF export writes byte-level BPE (GPT-2, Llama 3, "
            "Qwen, SmolLM) and character-level WordLevel vocabularies; export without gguf"
        )
    if len(tokenizer) > vocab_size:
        raise UserError(
            f"gguf: the tokenizer has {len(tokenizer)} tokens but the model {vocab_size} rows"
        )
    return spec


def _byte_level(spec: dict[str, Any]) -> bool:
    return "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])


def _merge(merge: str | list[str]) -> str:
    return merge if isinstance(merge, str) else " ".join(merge)


def pre_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp's name for how the text is split before BPE: by structure (GPT-2's regex alone;
    SmolLM's single digits first), or by the split regex transformers' GGUF loader maps a name
    to; "default" otherwise."""
    parts = (
        (pre or {}).get("pretokenizers", [pre]) if (pre or {}).get("type") == "Sequence" else [pre]
    )
    names = [(p or {}).get("type", "").lower() for p in parts]
    if names == ["bytelevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if names == ["digits", "bytelevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if names == ["split", "bytelevel"]:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_PRE_TOKENIZER_SPLITS,
        )

        regex = parts[0].get("pattern", {}).get("Regex", "")
        return next((n for n, r in GGUF_PRE_TOKENIZER_SPLITS.items() if r == regex), "default")
    return "default"


def _byte_spelling(vocab: dict[str, int], added: dict[int, Any]) -> Any:
    """WordLevel tokens as single bytes in GPT-2's alphabet; a longer token needs merges that
    a WordLevel vocabulary does not have, so it is refused."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = bytes_to_unicode()
    specials = {t.content for t in added.values()}
    long = [t for t in vocab if t not in specials and len(t.encode("utf-8")) != 1]
    if long:
        raise UserError(
            f"gguf: the WordLevel vocabulary has tokens longer than one byte ({long[0]!r}); "
            "only character-level (single-byte) WordLevel vocabularies become GGUF"
        )
    return lambda token: alphabet[token.encode("utf-8")[0]]


def end_tokens(tokenizer: Any, stop_ids: list[int]) -> tuple[int | None, int | None]:
    """(eos, end-of-turn): the tokenizer's eos when generation stops on it, else the first stop
    id; end-of-turn is another stop id where there is one (Llama 3's <|eot_id|>)."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id in stop_ids else None
    eos = eos if eos is not None else (stop_ids[0] if stop_ids else tokenizer.eos_token_id)
    others = [i for i in stop_ids if i != eos]
    return eos, (others[0] if others else None)


def _adds_specials(tokenizer: Any) -> tuple[bool, bool]:
    """Whether encoding adds a bos / an eos: what llama.cpp must add to a raw prompt."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    adds_bos = bos is not None and len(full) > len(plain) and full[0] == bos
    adds_eos = eos is not None and len(full) > len(plain) and full[-1] == eos
    return adds_bos, adds_eos


def chat_template(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default") or next(iter(template.values()), None)
    return template
