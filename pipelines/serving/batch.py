"""The engine's running batch: every active request is one row of one left-padded batch sharing
one KV cache. New requests are prefilled together and their cache joined to the batch before the
next decode step; a finished or abandoned row leaves at once and the padding no row needs any more
is cut, so a long reply never holds up the others (continuous batching).

Joining needs plain full-attention cache layers (one [rows, heads, length, dim] tensor each); with
another cache (sliding windows, recurrent state) new requests wait until the batch is empty, which
is request batching. Positions are given per row, so left padding never shifts a row's text.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


class Batch:
    def __init__(self, model: Any, pad_id: int):
        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [rows, length], 1 where a real token is cached
        self.joinable = True  # the cache's layers can be padded and concatenated
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(inner.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def __len__(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    def can_join(self) -> bool:
        return self.mask is None or self.joinable

    def lengths(self) -> list[int]:
        """Real tokens per row (prompt and reply so far)."""
        return [] if self.mask is None else self.mask.sum(-1).tolist()

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Append a row per prompt; their next-token logits [len(prompts), vocab]."""
        width = max(len(p) for p in prompts)
        ids = [[self.pad_id] * (width - len(p)) + p for p in prompts]
        flags = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        ids_t = torch.tensor(ids, device=self.device)
        mask = torch.tensor(flags, device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = _new_cache(self.model)
        logits = self._forward(ids_t, mask, positions, cache)
        self._join(cache, mask)
        return logits

    def decode(self, tokens: list[int]) -> torch.Tensor:
        """Feed every row its last sampled token; next-token logits [rows, vocab]."""
        assert self.mask is not None, "decode on an empty batch"
        positions = self.mask.sum(-1, keepdim=True)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self), 1)], dim=1)
        ids = torch.tensor(tokens, device=self.device)[:, None]
        return self._forward(ids, self.mask, positions, self.cache)

    def keep(self, rows: list[int]) -> None:
        """Only `rows` stay, in this order; then cut the leading columns no row uses."""
        if rows == list(range(len(self))):
            return
        if not rows:
            self.cache = self.mask = None
            return
        assert self.mask is not None
        index = torch.tensor(rows, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        unused = int((self.mask.sum(0) == 0).int().cumprod(0).sum())
        if unused and self.joinable:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_arg: cache},
            **self._last_only,
        )
        return out.logits[:, -1].float()

    def _join(self, cache: Any, mask: torch.Tensor) -> None:
        if self.mask is None:
            self.cache, self.mask, self.joinable = cache, mask, _joinable(cache)
            return
        grow = int(mask.shape[1] - self.mask.shape[1])  # > 0: the new rows are longer
        self.mask = torch.cat([_pad_left(self.mask, grow, 1), _pad_left(mask, -grow, 1)])
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_pad_left(old.keys, grow, 2), _pad_left(new.keys, -grow, 2)])
            old.values = torch.cat(
                [_pad_left(old.values, grow, 2), _pad_left(new.values, -grow, 2)]
            )


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _joinable(cache: Any) -> bool:
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(
        type(layer) is DynamicLayer
        and getattr(layer, "keys", None) is not None
        and layer.keys.dim() == 4
        for layer in layers
    )


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """`n` zero columns before `t` along `dim` (none when n <= 0): masked-out cache slots."""
    if n <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)
