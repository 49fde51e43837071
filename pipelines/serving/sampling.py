"""Next tokens for a batch whose rows each have their own sampling settings: greedy at
temperature 0, else temperature and nucleus (top_p) sampling from the row's own generator, so a
seeded request gives the same text whatever else shares its batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # stop strings (the model's stop tokens always apply)
    seed: int | None = None
    ignore_eos: bool = False  # run to max_tokens past stop tokens (vLLM's option; benchmarks)


def generator(sampling: Sampling, device: Any) -> torch.Generator | None:
    """A per-request generator: seeded when the request names a seed, else fresh entropy."""
    if sampling.temperature == 0:
        return None
    gen = torch.Generator(device=device)
    if sampling.seed is None:
        gen.seed()
    else:
        gen.manual_seed(sampling.seed)
    return gen


def next_tokens(
    logits: torch.Tensor, samplings: list[Sampling], generators: list[torch.Generator | None]
) -> list[int]:
    """One token per row of `logits` [rows, vocab]."""
    greedy = logits.argmax(-1).tolist()
    out = []
    for row, (sampling, gen) in enumerate(zip(samplings, generators, strict=True)):
        if sampling.temperature == 0:
            out.append(int(greedy[row]))
        else:
            probs = nucleus(torch.softmax(logits[row] / sampling.temperature, -1), sampling.top_p)
            out.append(int(torch.multinomial(probs, 1, generator=gen)))
    return out


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens whose mass reaches `top_p` (the first always); zero the rest."""
    if top_p >= 1:
        return probs
    ordered, index = probs.sort(descending=True)
    keep = ordered.cumsum(-1) - ordered < top_p
    return torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
