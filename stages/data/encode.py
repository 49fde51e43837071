"""Supervised examples -> token ids and labels, with the loss on assistant tokens only.

Spans are found on the rendered *text* (prompt render vs. render through each assistant turn) and
mapped to tokens through the tokenizer's offsets, so the ids are exactly those of
`apply_chat_template(messages)` and the masks are right even where BPE merges cross a boundary.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


def render(
    tokenizer: Any, msgs: list[dict[str, str]], generation: bool = False, tools: Any = None
) -> str:
    if not msgs:
        return ""
    return tokenizer.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=generation, tools=tools or None
    )


def assistant_spans(
    tokenizer: Any, msgs: list[dict[str, str]], tools: Any = None
) -> list[tuple[int, int]]:
    """Character spans of each assistant reply (with its end-of-turn markers) in the full render."""
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            start = len(render(tokenizer, msgs[:i], generation=True, tools=tools))
            end = len(render(tokenizer, msgs[: i + 1], tools=tools))
            spans.append((start, end))
    return spans


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
