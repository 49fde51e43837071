"""ppo's rollouts through an engine (vLLM): the replies it returns are laid out, masked and scored
by the training models exactly as sampled ones are; the engine gets the policy's weights before
every rollout; a run that asks for vLLM where it cannot start says so. vLLM itself needs a CUDA
GPU: the last test runs it there (skipped here, with the reason)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from stages.base import UserError
from tests.ppo_assets import Assets, a_rollout, assets_fixture, live, read_log, run_ppo  # noqa: F401


def test_a_sampler_replaces_generate_and_the_policy_scores_its_replies(
    assets: Assets,
    tmp_path: Path,
) -> None:
    from stages.rl.rollout import gather_logprobs, reply_tokens, token_logits

    _, cfg, s = live(assets, tmp_path, max_new_tokens=4)
    stop, pad = s.sampling.stop_ids[0], s.sampling.pad_id
    made = [[7, stop], [8, 9, 10, 11], [stop], [12, 13, stop]]  # row 1 hit max_new_tokens
    asked: list[list[list[int]]] = []

    def engine(prompts: list[list[int]]) -> list[list[int]]:
        asked.append(prompts)
        return [made[i % 4] for i in range(len(prompts))]

    s.actors.sampler = engine
    r = a_rollout(s, cfg, rows=8)
    assert asked == [[list(p) for p in s.train[:8]["prompt_ids"]]]  # one call, every prompt
    rows = [m + [pad] * (4 - len(m)) for m in made] * 2
    assert reply_tokens(r).tolist() == rows
    assert r.ended.tolist() == [True, False, True, True] * 2
    assert r.mask.sum(1).tolist() == [2, 4, 1, 3] * 2
    with torch.no_grad():
        own = gather_logprobs(token_logits(s.actors.policy, r, 1.0), reply_tokens(r))
    assert torch.allclose(r.logprobs, own)  # the policy's, not the engine's


class FakeEngine:
    """TRL's VLLMGeneration as vllm_sampler uses it: records what it is asked, in order."""

    made: list[FakeEngine] = []

    def __init__(self, model: Any, accelerator: Any, tokenizer: Any, **options: Any) -> None:
        self.model, self.options, self.calls = model, options, []
        FakeEngine.made.append(self)

    def sync_weights(self) -> None:
        self.calls.append(("sync", self.model.lm_head.weight.sum().item()))

    def generate(self, prompts: list, images: Any, num_generations: int) -> tuple:
        self.calls.append(("generate", len(prompts), num_generations))
        return prompts, [(5, 6) for _ in prompts], None, None


def test_the_engine_gets_the_policys_weights_before_every_rollout(
    assets: Assets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import accelerate
    import trl.generation.vllm_generation as generation

    from stages.rl.vllm_rollout import vllm_sampler

    monkeypatch.setattr(generation, "VLLMGeneration", FakeEngine)
    monkeypatch.setattr(accelerate, "Accelerator", lambda: None)
    _, cfg, s = live(assets, tmp_path, finetuning_type="full", top_k=5, temperature=0.7)
    sample = vllm_sampler(s.actors.policy, s.tokenizer, s.sampling, cfg)
    (engine,) = FakeEngine.made[-1:]
    assert engine.options["mode"] == "colocate"
    assert engine.options["generation_kwargs"] == {"stop_token_ids": list(s.sampling.stop_ids)}
    assert (engine.options["temperature"], engine.options["top_k"]) == (0.7, 5)
    assert engine.options["max_completion_length"] == cfg.max_new_tokens
    assert engine.options["gpu_memory_utilization"] == cfg.vllm_gpu_memory_utilization
    assert sample([[1, 2], [3]]) == [[5, 6], [5, 6]]
    with torch.no_grad():
        s.actors.policy.lm_head.weight.add_(1.0)  # an update between rollouts
    sample([[1]])
    (sync1, gen1, sync2, gen2) = engine.calls
    assert (sync1[0], gen1, sync2[0], gen2) == (
        "sync",
        ("generate", 2, 1),
        "sync",
        ("generate", 1, 1),
    )
    assert sync2[1] != sync1[1], "the second push carries the updated weights"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the premise is a machine without a GPU")
def test_use_vllm_without_a_gpu_is_a_user_error(assets: Assets, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^use_vllm: vLLM needs a CUDA GPU"):
        run_ppo(assets, tmp_path / "out", use_vllm=True)


@pytest.mark.gpu
def test_ppo_samples_its_rollouts_with_vllm_on_a_gpu(assets: Assets, tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="the vllm extra is not installed")
    out = tmp_path / "out"
    run_ppo(assets, out, use_vllm=True, vllm_gpu_memory_utilization=0.2)
    log = read_log(out)
    assert [r["step"] for r in log if "reward_mean" in r] == [1, 2]
    assert all(0 < r["response_length"] <= 8 for r in log if "reward_mean" in r)
