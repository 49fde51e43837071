"""A reward model artifact in use: load it, and score conversations. ppo, grpo, eval and serving
all score through `RewardScorer`, so a reply is rendered and pooled exactly as in rm training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


class RewardScorer:
    """Batch of conversations (lists of role / content messages) -> one float each."""

    def __init__(
        self, path: Path, resolve: Callable[[str], Path], device: Any = None, dtype: Any = None
    ) -> None:
        from stages.model.loading import REWARD, load_model, load_tokenizer, merged

        self.tokenizer = load_tokenizer(path)
        self.model = merged(load_model(path, resolve, dtype=dtype, head=REWARD)).eval()
        if device is not None:
            self.model.to(device)

    def __call__(
        self, conversations: list[list[dict[str, str]]], batch_size: int = 16
    ) -> list[float]:
        from stages.data.encode import render

        texts = [render(self.tokenizer, c) for c in conversations]
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return self.score_ids(ids, batch_size)

    def score_ids(self, ids: list[list[int]], batch_size: int = 16) -> list[float]:
        """Token ids already rendered by the same template (a prompt plus its sampled reply)."""
        import torch

        pad = self.model.config.pad_token_id or 0
        device = next(self.model.parameters()).device
        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(ids), batch_size):
                chunk = ids[i : i + batch_size]
                width = max(len(x) for x in chunk)
                input_ids = torch.tensor(
                    [x + [pad] * (width - len(x)) for x in chunk], device=device
                )
                mask = torch.tensor(
                    [[1] * len(x) + [0] * (width - len(x)) for x in chunk], device=device
                )
                logits = self.model(
                    input_ids=input_ids, attention_mask=mask, use_cache=False
                ).logits
                out += logits[:, 0].float().tolist()
        return out
