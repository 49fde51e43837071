"""Held-out loss and perplexity: the mean negative log-likelihood of the reference replies'
tokens (with their end-of-turn markers), rendered through the model's trained template and masked
exactly as sft trains (stages/data/encode.py), so the number is comparable to sft's eval_loss."""

from __future__ import annotations

import math
from typing import Any

from stages.evaluation.examples import EvalExample


def heldout_loss(
    loaded: Any, examples: list[EvalExample], cutoff_len: int, batch_size: int
) -> tuple[dict[str, float], list[float]]:
    """({"loss", "perplexity", "loss_tokens"}, each example's own mean loss); the metric is
    weighted by tokens (sum of NLL over all reply tokens / their count), as a training loss is."""
    from tqdm import tqdm

    from stages.data.encode import IGNORE, encode, truncate

    rows = []
    for ex in examples:
        ids, labels = encode(loaded.tokenizer, ex.chat, tools=ex.tools or None)
        rows.append(truncate(ids, labels, min(cutoff_len, loaded.context_length)))
    sums: list[tuple[float, int]] = []
    with tqdm(total=len(rows), desc="loss") as bar:
        for i in range(0, len(rows), batch_size):
            sums += _batch_nll(loaded, rows[i : i + batch_size], IGNORE)
            bar.update(len(rows[i : i + batch_size]))
    total = sum(s for s, _ in sums)
    count = sum(n for _, n in sums)
    loss = total / count if count else float("nan")
    per_example = [s / n if n else float("nan") for s, n in sums]
    metrics = {"loss": loss, "perplexity": math.exp(loss), "loss_tokens": count}
    return metrics, per_example


def _batch_nll(loaded: Any, rows: list[tuple[list[int], list[int]]], ignore: int) -> list:
    """(sum of NLL over labelled tokens, their count) per row; right padding, so positions are
    those of an unpadded forward."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    pad = loaded.tokenizer.pad_token_id or 0
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in rows], device=loaded.device)
    labels = torch.tensor([lab + [ignore] * (width - len(lab)) for _, lab in rows])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in rows])
    with torch.no_grad():
        logits = loaded.model(input_ids=ids, attention_mask=mask.to(ids.device)).logits
    labels = labels[:, 1:].to(logits.device)
    keep = labels != ignore  # only the trained positions reach the softmax
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1][keep].float(), labels[keep], reduction="none"
    )
    per_row = torch.zeros(len(rows), device=nll.device).index_add_(0, keep.nonzero()[:, 0], nll)
    return [(float(s), int(n)) for s, n in zip(per_row.tolist(), keep.sum(1).tolist(), strict=True)]
