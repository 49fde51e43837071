"""Packed preference pairs: [prompt | chosen | rejected], the prompt computed once.

TRL's DPOTrainer runs [prompt + chosen] and [prompt + rejected] as two padded rows, for the
policy and again for the reference, so a prompt longer than its replies (a system prompt, an
instruction with its input) is computed twice per pair per model. Here the causal LM's forward
(the one TRL patched with its fused LM head) turns such a call into packed pairs: the rejected
reply's positions restart where the prompt ends, and a 4D mask lets its tokens see the prompt and
themselves, never the chosen reply (nor another pair: short pairs share a row, unpadded). Each
reply token is scored from the same hidden state as in its own row (the first of both replies
from the prompt's last token), through TRL's own head, and the results go back to the
[chosen; rejected] per-token layout TRL's loss code reads. Only the scored positions reach the
LM head (on a CPU, TRL's head projects every position of every row).

Imported only from a stage's run() (it imports torch).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

IGNORE = -100
PROMPT, CHOSEN, REJECTED, PAD = 0, 1, 2, 3
MASKED_ATTENTION = ("sdpa", "eager")  # attention implementations that take a custom 4D mask
# what TRL's DPO forward passes (PEFT's causal-LM wrapper adds more, set to None)
TRL_KEYS = {"input_ids", "attention_mask", "use_cache"}
# pairs share a row up to this many tokens: no padding between them, while attention computed
# densely over the row (masked across pairs) stays a small part of the work
ROW_TOKENS = 256


@dataclass
class Layout:
    """The packed rows of a batch of pairs, and where each scored token came from."""

    input_ids: torch.Tensor  # [rows, width]
    position_ids: torch.Tensor  # [rows, width]
    segments: torch.Tensor  # [rows, width]: PROMPT, CHOSEN, REJECTED or PAD
    owners: torch.Tensor  # [rows, width]: the pair a position belongs to (-1: padding)
    source: torch.Tensor  # [rows, slots]: the packed position whose hidden state scores a slot
    shift_labels: torch.Tensor  # [rows, slots]: the token it scores (IGNORE in padding slots)
    slots: tuple[torch.Tensor, torch.Tensor]  # (row, slot) of every real slot
    plain: tuple[torch.Tensor, torch.Tensor]  # its (row, position) in TRL's [2 * pairs, T - 1]
    plain_shape: tuple[int, int]


@dataclass
class _Row:
    """One packed row under construction."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)
    source: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def unsupported(model: Any) -> str | None:
    """Why `model` cannot run packed pairs (None: it can). The packed rows need attention that
    takes a custom 4D mask and position ids, over plain causal layers."""
    config = model.config
    text = config.get_text_config()
    attention = getattr(config, "_attn_implementation", None)
    if attention not in MASKED_ATTENTION:
        return f"attention '{attention}' takes no custom 4D mask (sdpa and eager do)"
    if text is not config:
        return "vision-language models place their own positions"
    if hasattr(text, "output_router_logits"):
        return "a mixture-of-experts router loss reads the 2D attention mask"
    kinds = set(getattr(text, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        return f"layer types {sorted(kinds)}: only full causal attention takes the packed mask"
    backbone = getattr(model, "base_model", None)
    if backbone is None or "position_ids" not in inspect.signature(backbone.forward).parameters:
        return "the backbone takes no position_ids"
    return None


def window(model: Any) -> int | None:
    """The sliding-window size where attention has one (a packed row must not need it)."""
    text = model.config.get_text_config()
    if getattr(text, "use_sliding_window", True) is False:
        return None
    return getattr(text, "sliding_window", None)


def pair_layout(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor
) -> Layout | None:
    """The packed layout of TRL's DPO batch (chosen rows, then rejected rows, right-padded, each
    a shared prompt followed by its scored reply); None for anything else."""
    rows, width = input_ids.shape
    if rows % 2 or attention_mask is None or attention_mask.shape != input_ids.shape:
        return None
    pairs = rows // 2
    at = torch.arange(width, device=input_ids.device)
    lengths = attention_mask.sum(1)
    scored = labels != IGNORE
    starts = scored.int().argmax(1)  # the prompt's length
    replies = (at >= starts[:, None]) & (at < lengths[:, None])
    if not (
        torch.equal(attention_mask.bool(), at < lengths[:, None])
        and torch.equal(scored, replies)
        and torch.equal(starts[:pairs], starts[pairs:])
        and bool((starts > 0).all() and (lengths > starts).all())
        and bool(((input_ids[:pairs] == input_ids[pairs:]) | (at >= starts[:pairs, None])).all())
    ):
        return None
    return _pack(input_ids.tolist(), starts[:pairs].tolist(), lengths.tolist(), input_ids.device)


def _pack(ids: list[list[int]], starts: list[int], lengths: list[int], device: Any) -> Layout:
    """Pairs [prompt | chosen | rejected], several to a row up to ROW_TOKENS (no padding between
    them; a longer pair has a row of its own), and the index maps to and from TRL's rows."""
    pairs = len(starts)
    sizes = [lengths[i] + lengths[pairs + i] - starts[i] for i in range(pairs)]
    capacity = max(ROW_TOKENS, *sizes)
    rows: list[_Row] = []
    slots: tuple[list[int], list[int]] = ([], [])
    plain: tuple[list[int], list[int]] = ([], [])
    for i, p in enumerate(starts):
        row = next((r for r in rows if len(r.ids) + sizes[i] <= capacity), None)
        if row is None:
            row = _Row()
            rows.append(row)
        chosen, rejected = ids[i][p : lengths[i]], ids[pairs + i][p : lengths[pairs + i]]
        c, r, at = len(chosen), len(rejected), len(row.ids)
        row.ids += ids[i][:p] + chosen + rejected
        row.positions += [*range(p + c), *range(p, p + r)]
        row.segments += [PROMPT] * p + [CHOSEN] * c + [REJECTED] * r
        row.owners += [i] * sizes[i]
        # each reply's first token is scored from the prompt's last position, the rest from
        # the token before them in their own segment
        first = at + p - 1
        slots[0].extend([rows.index(row)] * (c + r))
        slots[1].extend(range(len(row.source), len(row.source) + c + r))
        row.source += (
            [first + k for k in range(c)] + [first] + [first + c + k for k in range(r)][1:]
        )
        row.labels += chosen + rejected
        plain[0].extend([i] * c + [pairs + i] * r)
        plain[1].extend([*range(p - 1, p - 1 + c), *range(p - 1, p - 1 + r)])
    tensor = functools.partial(torch.tensor, dtype=torch.long, device=device)
    return Layout(
        input_ids=tensor(_pad([r.ids for r in rows], 0)),
        position_ids=tensor(_pad([r.positions for r in rows], 0)),
        segments=tensor(_pad([r.segments for r in rows], PAD)),
        owners=tensor(_pad([r.owners for r in rows], -1)),
        source=tensor(_pad([r.source for r in rows], 0)),
        shift_labels=tensor(_pad([r.labels for r in rows], IGNORE)),
        slots=(tensor(slots[0]), tensor(slots[1])),
        plain=(tensor(plain[0]), tensor(plain[1])),
        plain_shape=(2 * pairs, len(ids[0]) - 1),
    )


def _pad(rows: list[list[int]], value: int) -> list[list[int]]:
    width = max(len(r) for r in rows)
    return [r + [value] * (width - len(r)) for r in rows]


def pair_mask(layout: Layout, attention: str, dtype: torch.dtype) -> torch.Tensor:
    """[rows, 1, width, width]: causal within each pair, except that rejected tokens do not see
    the chosen reply; padding is seen by no one but itself (so no query row is empty). sdpa takes
    it as booleans, eager as an additive float mask."""
    segments, owners = layout.segments, layout.owners
    width = segments.size(1)
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (owners[:, :, None] == owners[:, None, :])
    allowed &= ~((segments[:, :, None] == REJECTED) & (segments[:, None, :] == CHOSEN))
    allowed = allowed[:, None]
    if attention == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def unpack(output: Any, layout: Layout) -> Any:
    """TRL's per-token fields of the packed slots, back in the [chosen; rejected] rows (zeros
    elsewhere, as TRL returns them for unscored positions)."""
    for name in (
        "log_probs",
        "entropy",
        "log_sum_sq_probs",
        "mean_logits",
        "is_top1",
        "label_mask",
    ):
        value = getattr(output, name, None)
        if value is None:
            continue
        plain = value.new_zeros(layout.plain_shape)
        plain = plain.index_put(layout.plain, value[layout.slots])
        setattr(output, name, plain)
    return output


def share_prompts(model: Any) -> None:
    """Wrap `model.forward` (TRL's fused-head forward on the causal LM, not a PEFT wrapper): a
    fused call on a DPO batch runs packed pairs; every other call is passed through."""
    fused = model.forward
    if getattr(fused, "packs_pairs", False):
        return
    attention = model.config._attn_implementation
    limit = window(model)

    @functools.wraps(fused)
    def forward(*args: Any, fused_lm_head: bool = False, labels: Any = None, **kwargs: Any) -> Any:
        layout = None
        given = {key for key, value in kwargs.items() if value is not None}
        if fused_lm_head and labels is not None and not args and given <= TRL_KEYS:
            ids = kwargs["input_ids"]
            if limit is None or ids.size(1) <= limit:
                layout = pair_layout(ids, kwargs.get("attention_mask"), labels)
        if layout is None:
            return fused(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        dtype = model.get_input_embeddings().weight.dtype
        hook = model.base_model.register_forward_hook(_gather_hook(layout.source))
        try:
            output = fused(
                input_ids=layout.input_ids,
                attention_mask=pair_mask(layout, attention, dtype),
                position_ids=layout.position_ids,
                use_cache=False,
                fused_lm_head=True,
                shift_labels=layout.shift_labels,
            )
        finally:
            hook.remove()
        return unpack(output, layout)

    forward.packs_pairs = True  # type: ignore[attr-defined]
    model.forward = forward


def _gather_hook(source: torch.Tensor) -> Any:
    """A forward hook on the backbone: keep only the hidden states that score a token, in slot
    order, so TRL's head projects those and nothing else."""

    def hook(module: Any, args: Any, output: Any) -> Any:
        hidden = output.last_hidden_state
        index = source.to(hidden.device)[:, :, None].expand(-1, -1, hidden.size(-1))
        output.last_hidden_state = hidden.gather(1, index)
        return output

    return hook
