"""How our training stages (sft, pt) batch examples: padding-free by default, else padded.

Padding-free (stages/data/collate.py) needs a model that reads example boundaries from
restarting position ids (transformers' mask builder, `create_causal_mask`, does) and a method
whose result does not depend on the row's length; otherwise the batch is padded, with one log
line saying why. On CPU with SDPA the rows run attention per example (stages/model/segments.py).
"""

from __future__ import annotations

import sys
from typing import Any

from stages.data.collate import Collator


def collator(model: Any, cfg: Any, tokenizer: Any, log: Any) -> Collator:
    """The collator for `model` under `cfg`; switches a padding-free CPU model to attention per
    example."""
    pad_id = tokenizer.pad_token_id or 0
    if not cfg.padding_free:
        return Collator(pad_id)
    problem = padding_free_problem(model, cfg)
    if problem:
        log.info("padding_free off: %s; batches are padded to their longest row", problem)
        return Collator(pad_id)
    _attend_per_example(model, cfg)
    return Collator(pad_id, padding_free=True)


def padding_free_problem(model: Any, cfg: Any) -> str | None:
    """Why `model` under `cfg` cannot train on padding-free rows (None: it can)."""
    if cfg.neftune_noise_alpha:
        return "NEFTune scales its noise by the length of the row"
    causal = _unwrap(model)
    from transformers import masking_utils

    module = sys.modules.get(type(causal).__module__)
    if getattr(module, "create_causal_mask", None) is not masking_utils.create_causal_mask:
        kind = getattr(causal.config, "model_type", type(causal).__name__)
        return f"{kind} does not read example boundaries from position ids"
    return None


def _attend_per_example(model: Any, cfg: Any) -> None:
    """SDPA on CPU: attention within each example instead of over the whole row."""
    import torch

    from stages.model import segments

    causal = _unwrap(model)
    if cfg.attn_implementation != "sdpa" or torch.cuda.is_available():
        return
    try:
        causal.set_attn_implementation(segments.register())
    except (ValueError, AttributeError):  # not on the AttentionInterface: SDPA's block mask
        return


def restore_attention(model: Any, cfg: Any) -> None:
    """The configured attention again (the trained model is used beyond training)."""
    causal = _unwrap(model)
    if getattr(causal.config, "_attn_implementation", None) == "sdpa_segments":
        causal.set_attn_implementation(cfg.attn_implementation)


def _unwrap(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model
