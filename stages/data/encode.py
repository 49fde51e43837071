"""Supervised examples -> token ids and labels, with the loss on assistant tokens only.

Spans are found on the rendered *text* (prompt render vs. render through each assistant turn) and
mapped to tokens through the tokenizer's offsets, so the ids are exactly those of
`apply_chat_template(messages)` and the masks are right even where BPE merges cross a boundary.
"""

from __future__ import annotations

import json
from typing import Any

from stages.base import UserError

IGNORE = -100


def render(
    tokenizer: Any, msgs: list[dict[str, str]], generation: bool = False, tools: Any = None
) -> str:
    if not msgs:
        return ""
    if isinstance(tools, str):  # datasets keep tools as JSON text; templates want a list
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            tools = None
    text = tokenizer.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=generation, tools=tools or None
    )
    if tools and text == tokenizer.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=generation
    ):
        raise UserError(
            "the chat template ignores `tools`, so the model would learn to call functions it "
            "was never shown: choose a template that renders them (template: chatml, qwen, "
            "llama3, ... put them in the system prompt), or drop the tools column"
        )
    return text


def assistant_spans(
    tokenizer: Any, msgs: list[dict[str, str]], tools: Any = None
) -> list[tuple[int, int]]:
    """Character spans of each assistant reply (with its end-of-turn markers) in the full render.

    Where the render through a reply is not a prefix of the full render (Phi-3 closes the whole
    conversation with an eos), the reply ends where their tokens stop agreeing.
    """
    full = render(tokenizer, msgs, tools=tools)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            start = len(render(tokenizer, msgs[:i], generation=True, tools=tools))
            upto = render(tokenizer, msgs[: i + 1], tools=tools)
            end = len(upto) if full.startswith(upto) else _agreeing_prefix(tokenizer, upto, full)
            spans.append((start, end))
    return spans


def _agreeing_prefix(tokenizer: Any, a: str, b: str) -> int:
    """Characters of `b` covered by the tokens it shares with `a` from the start."""
    ids_a = tokenizer(a, add_special_tokens=False)["input_ids"]
    enc_b = tokenizer(b, add_special_tokens=False, return_offsets_mapping=True)
    pairs = zip(ids_a, enc_b["input_ids"], strict=False)
    k = next(
        (t for t, (x, y) in enumerate(pairs) if x != y), min(len(ids_a), len(enc_b["input_ids"]))
    )
    return enc_b["offset_mapping"][k - 1][1] if k else 0


def encode(
    tokenizer: Any,
    msgs: list[dict[str, str]],
    *,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    tools: Any = None,
) -> tuple[list[int], list[int]]:
    """(ids, labels): labels copy ids on trained tokens and are IGNORE elsewhere."""
    text = render(tokenizer, msgs, tools=tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    if train_on_prompt:
        return ids, list(ids)
    spans = assistant_spans(tokenizer, msgs, tools)
    if mask_history:
        spans = spans[-1:]
    labels = [IGNORE] * len(ids)
    for t, (a, _) in enumerate(offsets):
        if any(s <= a < e for s, e in spans):
            labels[t] = ids[t]
    return ids, labels


def truncate(ids: list[int], labels: list[int], cutoff: int) -> tuple[list[int], list[int]]:
    """Fit `cutoff` tokens, keeping room for the last trained reply: context is dropped from the
    left; only a reply longer than 3/4 of the window loses its tail."""
    if len(ids) <= cutoff:
        return ids, labels
    trained = [t for t, lab in enumerate(labels) if lab != IGNORE]
    if not trained:
        return ids[:cutoff], labels[:cutoff]
    end = trained[-1] + 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1  # the start of the last reply
    left = max(0, end - cutoff)
    if left > start - cutoff // 4:
        left = max(0, start - cutoff // 4)  # keep a quarter of the window for its prompt
    return ids[left : left + cutoff], labels[left : left + cutoff]


def encode_preference(
    tokenizer: Any, prompt: list[dict[str, str]], chosen: str, rejected: str
) -> dict[str, list[int]]:
    """Prompt ids (with the generation prompt) shared by both replies, and each reply's ids
    (through its end-of-turn markers), so that prompt + reply renders the full conversation."""
    prompt_text = render(tokenizer, prompt, generation=True)
    out = {"prompt_ids": _ids(tokenizer, prompt_text)}
    for side, reply in (("chosen", chosen), ("rejected", rejected)):
        full = render(tokenizer, [*prompt, {"role": "assistant", "content": reply}])
        if not full.startswith(prompt_text):
            raise ValueError("the chat template does not render the prompt as a prefix")
        out[f"{side}_ids"] = _ids(tokenizer, full[len(prompt_text) :])
    return out


def encode_kto(tokenizer: Any, msgs: list[dict[str, str]], desirable: bool) -> dict[str, Any]:
    """Supervised ids and labels for the last reply, with its KTO label kept."""
    ids, labels = encode(tokenizer, msgs, mask_history=True)
    return {"input_ids": ids, "labels": labels, "kto_tag": desirable}


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def text_blocks(tokenizer: Any, texts: list[str], block_size: int) -> tuple[list[list[int]], int]:
    """Pre-training blocks: each document's ids plus eos, concatenated, cut into `block_size`
    pieces; returns (blocks, tokens dropped from the incomplete last block)."""
    stream: list[int] = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for text in texts:
        stream += _ids(tokenizer, text) + eos
    n = len(stream) // block_size * block_size
    return [stream[i : i + block_size] for i in range(0, n, block_size)], len(stream) - n
