"""PPO rollouts: sample replies with the KV cache, then one forward per model over the whole
rollout for what every PPO epoch reuses (old and reference log-probs, values), and the scores.

Layout of a rollout: each row is its prompt left-padded to the batch's prompt width P, then its
reply right-padded to the reply width R. `mask` [B, R] is 1 on reply tokens through the first stop
token (the template's end of turn) and 0 after it; attention and position ids come from the masks,
never from pad ids (a sampled reply may contain the pad token). Heavy imports: run() only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor


@dataclass
class Rollout:
    """One PPO step's experience; `values` is None without a critic (reinforce_pp, group)."""

    input_ids: Tensor  # [B, P + R]
    attention_mask: Tensor  # [B, P + R]
    mask: Tensor  # [B, R] reply tokens through the first stop token
    ended: Tensor  # [B] the reply contains a stop token
    logprobs: Tensor  # [B, R] the sampling policy's
    ref_logprobs: Tensor  # [B, R]
    values: Tensor | None  # [B, R] the critic's, at rollout time
    scores: Tensor  # [B] reward model + rule-based rewards - missing-eos penalty (raw)

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    @property
    def position_ids(self) -> Tensor:
        return (self.attention_mask.cumsum(-1) - 1).clamp_min(0)

    def rows(self, index: Tensor) -> Rollout:
        """The rollout restricted to some rows (a minibatch); widths stay the same, and fields
        not filled yet (empty) stay empty."""
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        return Rollout(**{k: v[index] if _filled(v) else v for k, v in picked.items()})


def _filled(t: Tensor | None) -> bool:
    return t is not None and t.numel() > 0


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    stop_ids: tuple[int, ...]
    pad_id: int


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Prompts as one [B, P] batch padded on the left (generation continues at the right edge)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def right_pad(replies: list[list[int]], pad_id: int) -> Tensor:
    """Replies of different lengths as one [B, R] batch (R >= 1) padded on the right."""
    width = max([1, *map(len, replies)])
    return torch.tensor([r + [pad_id] * (width - len(r)) for r in replies], dtype=torch.long)


def response_mask(responses: Tensor, stop_ids: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """(mask [B, R], ended [B]): 1 through the first stop token of each row, 0 after it; a row
    that never stops (cut at max_new_tokens) is real to its end."""
    is_stop = torch.isin(responses, torch.tensor(stop_ids, device=responses.device))
    after_first_stop = (is_stop.cumsum(1) - is_stop.long()) > 0
    return ~after_first_stop, is_stop.any(1)


@torch.no_grad()
def sample(policy: Any, prompt_ids: Tensor, prompt_mask: Tensor, s: Sampling) -> Tensor:
    """Sampled replies [B, R] (R <= max_new_tokens), from the global torch RNG, which the loop
    seeds per step."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=True,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        max_new_tokens=s.max_new_tokens,
        eos_token_id=list(s.stop_ids),
        pad_token_id=s.pad_id,
        bos_token_id=None,
    )
    return generate(policy, prompt_ids, prompt_mask, config)


def generate(model: Any, prompt_ids: Tensor, prompt_mask: Tensor, config: Any) -> Tensor:
    was_training = model.training
    model.eval()
    config.use_cache = True
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    model.train(was_training)
    return out[:, prompt_ids.shape[1] :]


def token_logits(model: Any, r: Rollout, temperature: float) -> Tensor:
    """Logits [B, R, V] (fp32, divided by the sampling temperature) of the positions that predict
    each reply token; the vocabulary projection runs on those positions only."""
    out = model(
        input_ids=r.input_ids,
        attention_mask=r.attention_mask,
        position_ids=r.position_ids,
        use_cache=False,
        logits_to_keep=r.width + 1,
    )
    return out.logits[:, :-1].float() / temperature


def gather_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    return logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def reply_tokens(r: Rollout) -> Tensor:
    return r.input_ids[:, -r.width :]


def token_values(critic: Any, r: Rollout) -> Tensor:
    """The critic's scalar head on every position that predicts a reply token: V(s_t) [B, R]."""
    model = critic.get_base_model() if hasattr(critic, "get_base_model") else critic
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(
        input_ids=r.input_ids,
        attention_mask=r.attention_mask,
        position_ids=r.position_ids,
        use_cache=False,
    ).last_hidden_state
    return model.score(hidden[:, -r.width - 1 : -1]).squeeze(-1).float()


class Rewarder:
    """Raw sequence scores: the weighted sum of the reward model's score of prompt + reply (the
    ids share its template) and of the rule-based functions of (prompt text, reply text, dataset
    columns), minus `missing_eos_penalty` for replies that never reached a stop token.
    `weights` has one entry per source, the reward model first (None: all 1)."""

    def __init__(
        self,
        scorer: Any,
        funcs: list[Callable[..., list[float]]],
        weights: list[float] | None,
        missing_eos_penalty: float | None,
        tokenizer: Any,
    ) -> None:
        sources = int(scorer is not None) + len(funcs)
        weights = list(weights) if weights is not None else [1.0] * sources
        self.scorer, self.funcs = scorer, funcs
        self.rm_weight = weights.pop(0) if scorer is not None else 0.0
        self.weights = weights
        self.penalty, self.tokenizer = missing_eos_penalty, tokenizer

    def __call__(
        self,
        rows: dict[str, list],
        prompts: list[list[int]],
        replies: list[list[int]],
        ended: Tensor,
    ) -> Tensor:
        """[B] float scores on `ended`'s device; `replies` hold the ids through the stop token."""
        scores = torch.zeros(len(replies), dtype=torch.float64)
        if self.scorer is not None:
            full = [p + reply for p, reply in zip(prompts, replies, strict=True)]
            rm = torch.tensor(self.scorer.score_ids(full), dtype=torch.float64)
            scores += self.rm_weight * rm
        if self.funcs:
            texts = self.tokenizer.batch_decode(replies, skip_special_tokens=True)
            columns = {k: v for k, v in rows.items() if k not in ("prompt", "prompt_ids")}
            for func, weight in zip(self.funcs, self.weights, strict=True):
                got = func(prompts=rows["prompt"], completions=texts, **columns)
                scores += weight * torch.tensor(got, dtype=torch.float64)
        if self.penalty:
            scores -= self.penalty * (~ended.cpu()).double()
        return scores.float().to(ended.device)


def masked_replies(tokens: Tensor, mask: Tensor) -> list[list[int]]:
    """Each row's reply ids through its first stop token."""
    return [ids[m].tolist() for ids, m in zip(tokens.cpu(), mask.cpu(), strict=True)]


@dataclass
class Actors:
    """The models a rollout runs: the policy, the reference (None: the policy with its LoRA
    adapter disabled), the critic (None without one) and the rewarder; `autocast` is the
    mixed-precision context of forward passes; `sampler` an engine that samples the replies
    instead of the policy's generate (vLLM: prompt ids -> reply ids through the stop token)."""

    policy: Any
    ref: Any
    critic: Any
    rewarder: Rewarder
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    sampler: Callable[[list[list[int]]], list[list[int]]] | None = None

    @contextlib.contextmanager
    def reference(self) -> Iterator[Any]:
        if self.ref is not None:
            yield self.ref
        else:
            with self.policy.disable_adapter():
                yield self.policy


def rollout(
    actors: Actors,
    rows: dict[str, list],
    s: Sampling,
    chunk: int,
    device: Any,
    seconds: dict[str, float] | None = None,
) -> Rollout:
    """Sample a reply for every row (in generation batches of `chunk` rows, which share the
    prompt padding), then score it and run each model once over it; `seconds` receives the time
    spent sampling (`generate_s`) and in the scoring forwards (`score_s`)."""
    t0 = time.perf_counter()
    prompts = [list(p) for p in rows["prompt_ids"]]
    prompt_ids, prompt_mask = (t.to(device) for t in left_pad(prompts, s.pad_id))
    if actors.sampler is not None:  # the engine batches all prompts itself
        parts = [right_pad(actors.sampler(prompts), s.pad_id).to(device)]
    else:
        with actors.autocast():
            parts = [
                sample(actors.policy, prompt_ids[i : i + chunk], prompt_mask[i : i + chunk], s)
                for i in range(0, len(prompts), chunk)
            ]
    width = max(p.shape[1] for p in parts)  # chunks stop generating at different widths

    def widen(t: Tensor, value: int | bool) -> Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    masks, ends = zip(*(response_mask(p, s.stop_ids) for p in parts), strict=True)
    replies = torch.cat([widen(p, s.pad_id) for p in parts])
    mask, ended = torch.cat([widen(m, False) for m in masks]), torch.cat(ends)
    pending = Rollout(
        input_ids=torch.cat([prompt_ids, replies], 1),
        attention_mask=torch.cat([prompt_mask, mask.long()], 1),
        mask=mask,
        ended=ended,
        logprobs=torch.empty(0),
        ref_logprobs=torch.empty(0),
        values=None,
        scores=torch.empty(0),
    )
    t1 = time.perf_counter()
    measured = measure(actors, rows, prompts, pending, s.temperature, chunk)
    if seconds is not None:
        seconds.update(generate_s=t1 - t0, score_s=time.perf_counter() - t1)
    return measured


@torch.no_grad()
def measure(
    actors: Actors,
    rows: dict[str, list],
    prompts: list[list[int]],
    r: Rollout,
    temperature: float,
    chunk: int,
) -> Rollout:
    """Fill old / reference log-probs, values and raw scores, chunk by chunk."""
    logp, ref, values = [], [], []
    for i in range(0, r.mask.shape[0], chunk):
        part = r.rows(torch.arange(i, min(i + chunk, r.mask.shape[0]), device=r.mask.device))
        tokens = reply_tokens(part)
        with actors.autocast():
            logp.append(gather_logprobs(token_logits(actors.policy, part, temperature), tokens))
            with actors.reference() as model:
                ref.append(gather_logprobs(token_logits(model, part, temperature), tokens))
            if actors.critic is not None:
                values.append(token_values(actors.critic, part))
    r.logprobs, r.ref_logprobs = torch.cat(logp), torch.cat(ref)
    r.values = torch.cat(values) if values else None
    r.scores = actors.rewarder(rows, prompts, masked_replies(reply_tokens(r), r.mask), r.ended)
    return r


@torch.no_grad()
def evaluate(actors: Actors, val: Any, s: Sampling, chunk: int, device: Any) -> float:
    """Mean raw score of greedy replies to held-out prompts (what the policy does, without the
    sampling noise of a rollout)."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=s.max_new_tokens,
        eos_token_id=list(s.stop_ids),
        pad_token_id=s.pad_id,
        bos_token_id=None,
    )
    total = 0.0
    for i in range(0, len(val), chunk):
        rows = val.select(range(i, min(i + chunk, len(val))))[:]
        prompts = [list(p) for p in rows["prompt_ids"]]
        ids, mask = (t.to(device) for t in left_pad(prompts, s.pad_id))
        with actors.autocast():
            replies = generate(actors.policy, ids, mask, config)
        reply_mask, ended = response_mask(replies, s.stop_ids)
        scores = actors.rewarder(rows, prompts, masked_replies(replies, reply_mask), ended)
        total += scores.sum().item()
    return total / len(val)
