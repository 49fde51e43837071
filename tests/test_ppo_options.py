"""The ppo stage's rewards and options on the SMALL tiny model: rule-based rewards with weights and
the missing-eos penalty, ppo without a reward model, an unknown reward function named at run
start, each advantage estimator and option training, and resume from a checkpoint taking the
same steps."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from stages.rl import ppo_loop
from tests.ppo_assets import EXACT, Assets, assets_fixture, live, read_log, run_ppo  # noqa: F401


def test_rule_based_rewards_add_up_with_weights_and_the_missing_eos_penalty(
    assets: Assets,
) -> None:
    """exact_answer_reward: 1 for the right answer; weight 2; -0.5 for a reply that never
    stopped (the right answer, cut off, still counts for the rule)."""
    from stages.model.loading import load_tokenizer
    from stages.rl.reward_funcs import import_reward_funcs
    from stages.rl.rollout import Rewarder

    tok = load_tokenizer(assets.base)
    funcs = import_reward_funcs([EXACT], "stages.ppo.reward_funcs")
    rewarder = Rewarder(None, funcs, [2.0], 0.5, tok)
    stop = tok.convert_tokens_to_ids("<|im_end|>")

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    rows = {"prompt": ["Calculate 2 + 3", "Calculate 2 + 3", "Reverse the word.\nabc"]}
    rows |= {"reference": ["", "", ""], "prompt_ids": [[1], [1], [1]]}
    replies = [ids("5") + [stop], ids("5"), ids("cab") + [stop]]
    scores = rewarder(rows, [[1], [1], [1]], replies, torch.tensor([True, False, True]))
    assert scores.tolist() == [2.0, 1.5, 0.0]


def test_ppo_with_rule_based_rewards_only(assets: Assets, tmp_path: Path) -> None:
    """No reward model: the critic starts from the policy (a new head), and every random reply
    that never stops pays the penalty (the random model never answers right)."""
    from stages.model.loading import read_model_json

    ctx = run_ppo(
        assets, tmp_path / "out", reward_model=False, reward_funcs=[EXACT], missing_eos_penalty=1.0
    )
    log = read_log(ctx.out)[1:]  # after the step-0 held-out baseline
    assert [r["step"] for r in log] == [1, 2]
    for record in log:
        assert -1.0 <= record["score_mean"] <= 0.0
        assert record["response_length"] <= 8
    assert read_model_json(ctx.out / "critic") == {
        "format": "adapter",
        "base": "base-key",
        "head": "reward",
    }


def test_an_unknown_reward_function_fails_at_run_start_naming_the_key(
    assets: Assets, tmp_path: Path
) -> None:
    from stages.base import UserError

    with pytest.raises(UserError, match=r"^stages\.ppo\.reward_funcs: cannot import module 'nope'"):
        run_ppo(assets, tmp_path / "out", reward_funcs=["nope:reward"])


OPTIONS = {
    "reinforce_pp_tensorboard": {"advantage_estimator": "reinforce_pp", "report_to": "tensorboard"},
    "group_buffer": {
        "advantage_estimator": "group",
        "num_generations": 2,
        "per_device_train_batch_size": 2,
        "ppo_buffer_size": 2,  # two generation batches per step
    },
    "kl_loss_adaptive_dual_clip": {
        "kl_in_reward": False,
        "kl_estimator": "k3",
        "target_kl": 0.1,
        "dual_clip": 3.0,
        "entropy_coef": 0.01,
        "ppo_whiten_rewards": True,
        "gradient_checkpointing": True,
    },
    "warmup_minibatches_accumulation": {
        "critic_warmup_steps": 1,
        "mini_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "ppo_score_norm": False,
        "value_init": "policy",
    },
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_estimators_and_options_train(assets: Assets, tmp_path: Path, name: str) -> None:
    ctx = run_ppo(assets, tmp_path / "out", **OPTIONS[name])
    log = read_log(ctx.out)[1:]  # after the step-0 held-out baseline
    assert [r["step"] for r in log] == [1, 2]
    assert all(math.isfinite(v) for r in log for v in r.values())
    critic_free = name in ("reinforce_pp_tensorboard", "group_buffer")
    assert (ctx.out / "critic").exists() != critic_free
    assert all(("value_loss" in r) != critic_free for r in log)
    if name == "warmup_minibatches_accumulation":
        assert "policy_loss" not in log[0] and "policy_loss" in log[1]  # step 1: critic only
    if name == "reinforce_pp_tensorboard":
        assert any((ctx.out / "tensorboard").rglob("events.out.tfevents.*"))
    if name == "kl_loss_adaptive_dual_clip":
        assert log[1]["kl_coef"] != log[0]["kl_coef"]  # adapted towards target_kl


class Killed(Exception):
    pass


@pytest.mark.parametrize("method", ["full", "lora"])
def test_resuming_from_a_checkpoint_takes_the_same_steps(
    assets: Assets, tmp_path: Path, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 steps straight vs a run stopped right after its step-2 checkpoint and resumed in fresh
    models (rebuilt from the upstream, RNGs elsewhere): the records of every step agree exactly
    on this CPU (the kill -9 version through the CLI: tests/test_ppo_resume.py)."""
    from stages.base import latest_checkpoint

    options = {"finetuning_type": method, "max_steps": 4, "save_steps": 2}
    ctx, cfg, s = live(assets, tmp_path / "straight", **options)
    ppo_loop.run_loop(ctx, cfg, s.actors, s.train, None, s.sampling, s.device)
    straight = read_log(ctx.work)

    save = ppo_loop.save_checkpoint

    def save_and_die(*args: object) -> None:
        save(*args)  # type: ignore[arg-type]
        raise Killed

    monkeypatch.setattr(ppo_loop, "save_checkpoint", save_and_die)
    ctx, _, s = live(assets, tmp_path / "cut", **options)
    with pytest.raises(Killed):
        ppo_loop.run_loop(ctx, cfg, s.actors, s.train, None, s.sampling, s.device)
    monkeypatch.undo()
    found = latest_checkpoint(ctx.checkpoints)
    assert found is not None and found[0] == 2
    torch.manual_seed(1234)  # whatever the RNGs hold now must not matter
    _, _, s = live(assets, tmp_path / "again", **options)
    ctx.resume_from = found[1]
    ppo_loop.run_loop(ctx, cfg, s.actors, s.train, None, s.sampling, s.device)
    resumed = read_log(ctx.work)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    timing = ppo_loop.TIMING
    for a, b in zip(straight, resumed, strict=True):
        assert {k: v for k, v in a.items() if k not in timing} == {
            k: v for k, v in b.items() if k not in timing
        }
