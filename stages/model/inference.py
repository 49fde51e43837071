"""A trained artifact ready to answer: its model (an adapter stays unmerged), its tokenizer with
the chat template it was trained with, and its stop tokens. eval, serve and chat all start here,
so a reply is rendered and stopped exactly as in training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Loaded:
    model: Any  # eval mode; a PeftModel for an adapter artifact
    tokenizer: Any  # left padding, a pad token set
    stop_ids: list[int]  # generation ends at any of these
    head: str  # "causal_lm" or "reward"
    path: Path

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        config = getattr(self.model, "config", None)
        return int(getattr(config, "max_position_embeddings", 0) or 2048)

    def prompt_ids(self, messages: list[dict[str, Any]], tools: Any = None) -> list[int]:
        """A conversation rendered through the trained template, ready for the reply."""
        from stages.data.encode import render

        text = render(self.tokenizer, messages, generation=True, tools=tools)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def load_for_inference(
    path: Path, resolve: Callable[[str], Path], device: Any = None, dtype: Any = None
) -> Loaded:
    """The artifact at `path` (adapters' bases found through `resolve`, key -> directory)."""
    from stages.model.loading import CAUSAL_LM, load_model, load_tokenizer, read_model_json

    head = read_model_json(path).get("head", CAUSAL_LM)
    model = load_model(Path(path), resolve, dtype=dtype).eval()
    if device is not None:
        model.to(device)
    tokenizer = load_tokenizer(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Loaded(model, tokenizer, stop_ids(model, tokenizer), head, Path(path))


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """The saved generation config's eos ids (the template's end-of-turn tokens), else the
    tokenizer's eos."""
    unwrap = getattr(model, "get_base_model", lambda: model)
    config = getattr(unwrap(), "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]
    return list(dict.fromkeys(int(i) for i in ids))


def greedy_generate(
    loaded: Loaded,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Greedy replies (ids, stop token excluded) to token-id prompts: left-padded batches through
    `generate` with its KV cache; `progress(n)` is told after each batch."""
    import torch

    pad = loaded.tokenizer.pad_token_id
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=loaded.device)
        mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=loaded.device
        )
        with torch.no_grad():
            gen = loaded.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=loaded.stop_ids,
                pad_token_id=pad,
            )
        for row in gen[:, width:].tolist():
            cut = next((k for k, t in enumerate(row) if t in loaded.stop_ids), len(row))
            out.append(row[:cut])
        if progress:
            progress(len(chunk))
    return out
