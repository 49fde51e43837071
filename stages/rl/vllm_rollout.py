"""ppo's rollouts sampled by vLLM (a CUDA GPU and the `vllm` extra).

TRL's `VLLMGeneration` runs the engine in this process beside the trainer ("colocate") and pushes
the policy's current weights into it (a LoRA adapter merged in, then out again); we push before
every rollout, so each one samples from the policy being trained. Only the sampling moves to the
engine: old and reference log-probs, values and scores are still computed by the training models
over the sampled ids (`rollout.measure`), so what PPO optimises never rests on the engine's
numerics. Heavy imports: inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Sampler = Callable[[list[list[int]]], list[list[int]]]


def vllm_sampler(policy: Any, tokenizer: Any, sampling: Any, cfg: Any) -> Sampler:
    """prompt ids -> reply ids (each through its first stop token, which vLLM keeps), sampled
    by a colocated engine holding the policy's weights as they are when it is called."""
    from accelerate import Accelerator
    from trl.generation.vllm_generation import VLLMGeneration

    engine = VLLMGeneration(
        policy,
        Accelerator(),
        tokenizer,
        mode="colocate",
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        max_model_length=cfg.vllm_max_model_len,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        max_completion_length=sampling.max_new_tokens,
        logprobs=None,  # the policy recomputes them over the sampled ids
        generation_kwargs={"stop_token_ids": list(sampling.stop_ids)},
    )

    def sample(prompts: list[list[int]]) -> list[list[int]]:
        engine.sync_weights()
        _, replies, _, _ = engine.generate(prompts, None, 1)
        return [list(reply) for reply in replies]

    return sample
