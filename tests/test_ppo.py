"""The ppo stage on the SMALL tiny model: a real rollout's first minibatch is on-policy (ratio 1,
nothing clipped, no KL to the reference), masks end at the stop token and masked positions carry
no loss, a few steps train exactly what should train, and the artifact reloads (the policy
generates, the critic keeps its head). Rewards, options and resume: tests/test_ppo_options.py."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from tests.ppo_assets import (  # noqa: F401 (assets_fixture: the module's `assets`)
    LOGGED,
    Assets,
    a_rollout,
    adapter_upstream,
    assets_fixture,
    live,
    read_log,
    run_ppo,
)


@pytest.mark.parametrize("method", ["lora", "full", "lora_on_adapter"])
def test_first_minibatch_of_a_rollout_is_on_policy(
    assets: Assets, tmp_path: Path, method: str
) -> None:
    """Policy == reference at step 0 (LoRA: the same model with its fresh adapter off; full: a
    second frozen copy; LoRA continuing an upstream adapter: that adapter merged into a frozen
    copy), and the first update's log-probs are exactly the rollout's."""
    from stages.rl.ppo_loop import experience, make_optimizers, ppo_update
    from stages.rl.ppo_state import LoopState

    upstream = adapter_upstream(assets, tmp_path) if method == "lora_on_adapter" else None
    _, cfg, s = live(assets, tmp_path, upstream, finetuning_type=method[:4], ppo_epochs=1)
    assert (s.actors.ref is None) == (method == "lora")
    r = a_rollout(s, cfg)
    e = experience(r, cfg, LoopState.fresh(cfg))
    if upstream is None:
        assert torch.equal(r.logprobs, r.ref_logprobs)
        assert torch.equal(e.kl.cpu(), torch.zeros(8))
    else:  # W x + B(A x) against (W + BA) x: equal up to float32 rounding
        assert (r.logprobs - r.ref_logprobs).abs().max() < 1e-4
    opts = make_optimizers(s.actors, cfg, steps=1, minibatches=1)
    generator = torch.Generator().manual_seed(0)
    (first,) = ppo_update(s.actors, opts, r, e, cfg, 0.05, True, generator)
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert first["clip_frac"] == 0.0
    assert first["approx_kl"] < 1e-12


def test_response_mask_is_real_through_the_first_stop_token() -> None:
    from stages.rl.rollout import response_mask

    replies = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
    mask, ended = response_mask(replies, (2,))
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]


def test_rollout_masks_stop_after_the_stop_token(assets: Assets, tmp_path: Path) -> None:
    """Stop on any lower-case letter, so that the random model stops early in most rows."""
    from stages.rl.rollout import reply_tokens

    _, cfg, s = live(assets, tmp_path, max_new_tokens=12)
    stops = tuple(s.tokenizer.convert_tokens_to_ids(list("abcdefghijklmnopqrstuvwxyz")))
    sampling = dataclasses.replace(s.sampling, stop_ids=stops)
    r = a_rollout(s, cfg, rows=8, sampling=sampling)
    replies = reply_tokens(r)
    assert 0 < int(r.ended.sum()) < 8 or bool(r.ended.all()), "stops were sampled"
    for row, mask, ended in zip(replies.tolist(), r.mask.tolist(), r.ended.tolist(), strict=True):
        first = next((i for i, t in enumerate(row) if t in stops), None)
        assert ended == (first is not None)
        real = len(row) if first is None else first + 1
        assert mask == [True] * real + [False] * (len(row) - real)
    prompt_width = r.input_ids.shape[1] - r.width
    assert torch.equal(r.attention_mask[:, prompt_width:], r.mask.long())


def test_masked_positions_carry_no_loss(assets: Assets, tmp_path: Path) -> None:
    """Whatever sits after a reply's end (tokens, old log-probs, values, advantages, even NaN)
    changes neither the loss nor any gradient."""
    from stages.rl.ppo_loop import experience, losses
    from stages.rl.ppo_state import LoopState

    _, cfg, s = live(assets, tmp_path, max_new_tokens=6)
    r = a_rollout(s, cfg)
    r.mask[:, 3:] = False  # every reply ends after 3 tokens
    r.attention_mask[:, -r.width + 3 :] = 0
    e = experience(r, cfg, LoopState.fresh(cfg))
    garbage_r, garbage_e = dataclasses.replace(r), dataclasses.replace(e)
    tail = torch.zeros_like(r.mask)
    tail[:, 3:] = True
    garbage_r.input_ids = r.input_ids.clone()
    garbage_r.input_ids[:, -r.width + 3 :] = 7
    for name in ("logprobs", "ref_logprobs", "values"):
        setattr(garbage_r, name, getattr(r, name).masked_fill(tail, float("nan")))
    garbage_e.advantages = e.advantages.masked_fill(tail, 1e6)
    garbage_e.returns = e.returns.masked_fill(tail, float("nan"))

    def loss_and_grads(rr, ee):  # type: ignore[no-untyped-def]
        models = (s.actors.policy, s.actors.critic)
        for m in models:
            m.zero_grad(set_to_none=True)
        loss, _ = losses(s.actors, rr, ee, cfg, 0.05, train_actor=True)
        loss.backward()
        grads = [p.grad.clone() for m in models for p in m.parameters() if p.grad is not None]
        return loss.detach(), grads

    loss, grads = loss_and_grads(r, e)
    loss_g, grads_g = loss_and_grads(garbage_r, garbage_e)
    assert torch.isfinite(loss) and torch.equal(loss, loss_g)
    assert grads and all(torch.equal(a, b) for a, b in zip(grads, grads_g, strict=True))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_few_steps_train_what_trains_and_nothing_else(
    assets: Assets, tmp_path: Path, method: str
) -> None:
    from stages.rl.ppo_loop import run_loop

    ctx, cfg, s = live(assets, tmp_path, finetuning_type=method)
    models = {"policy": s.actors.policy, "critic": s.actors.critic}
    before = {
        (m, n): p.detach().clone()
        for m, model in models.items()
        for n, p in model.named_parameters()
    }
    run_loop(ctx, cfg, s.actors, s.train, None, s.sampling, s.device)
    for (m, name), old in before.items():
        param = dict(models[m].named_parameters())[name]
        if param.requires_grad:
            assert not torch.equal(param, old), f"{m} {name} did not train"
        else:
            assert torch.equal(param, old), f"frozen {m} {name} changed"
    trained = {n for (m, n) in before if dict(models[m].named_parameters())[n].requires_grad}
    assert any("score" in n for n in trained), "the critic's head trains"
    if method == "lora":
        assert all("lora_" in n or "score" in n for n in trained), "LoRA: only adapters and head"

    # critic/ alone restores the trained critic, head included, through the shared loader
    from stages.model.loading import load_model, merged
    from stages.rl.ppo_train import write_critic

    write_critic(ctx, cfg, s.actors.critic, s.tokenizer, s.keys["critic"])
    reloaded = merged(load_model(ctx.out / "critic", assets.resolve)).state_dict()
    trained_critic = merged(s.actors.critic).state_dict()
    assert reloaded.keys() == trained_critic.keys() and "score.weight" in reloaded
    assert all(torch.equal(reloaded[k], v) for k, v in trained_critic.items())


@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_artifact_reloads_generates_and_keeps_the_critics_head(
    assets: Assets, tmp_path: Path, method: str
) -> None:
    from safetensors.torch import load_file

    from stages.model.loading import load_model, load_tokenizer, merged, read_model_json

    ctx = run_ppo(assets, tmp_path / "out", finetuning_type=method)
    out = ctx.out
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    tokenizer = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    weights = (
        {"adapter_model.safetensors", "adapter_config.json", "README.md"}
        if method == "lora"
        else {"model.safetensors", "config.json"}
    )
    policy = weights | tokenizer | {"model.json", "generation_config.json"}
    critic = {f"critic/{f}" for f in (weights | tokenizer | {"model.json"})}
    assert files == policy | critic | {"train_log.jsonl", "reward.png"}
    assert (out / "reward.png").read_bytes().startswith(b"\x89PNG")
    baseline, *log = read_log(out)  # step 0: the held-out reward before training
    assert set(baseline) == {"step", "eval_reward_mean"} and baseline["step"] == 0
    assert [r["step"] for r in log] == [1, 2]
    for record in log:
        assert set(LOGGED) <= set(record)
        assert all(math.isfinite(v) for v in record.values())
    metrics = ctx.metrics
    assert metrics["steps"] == 2 and metrics["reward_mean"] == log[-1]["reward_mean"]
    assert metrics["first_reward_mean"] == log[0]["reward_mean"]
    assert metrics["first_eval_reward_mean"] == baseline["eval_reward_mean"]
    assert metrics["eval_reward_mean"] == log[-1]["eval_reward_mean"]
    assert math.isfinite(metrics["kl"])
    for key in ("wall_s", "rollout_tokens_per_s", "train_tokens_per_s", "peak_memory_mb"):
        assert metrics[key] > 0

    meta = read_model_json(out)
    assert meta == (
        {"format": "adapter", "base": "base-key"} if method == "lora" else {"format": "full"}
    )
    model, tok = load_model(out, assets.resolve), load_tokenizer(out)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tok.convert_tokens_to_ids("<|im_end|>")]
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Calculate 2 + 3"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    generated = model.generate(**prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4

    assert read_model_json(out / "critic")["head"] == "reward"
    critic = merged(load_model(out / "critic", assets.resolve))
    saved = load_file(str(_weights_file(out / "critic")))
    (head_key,) = [k for k in saved if "score" in k and k.endswith("weight")]
    assert torch.equal(critic.score.weight, saved[head_key])
    untrained = load_file(str(assets.rm / "model.safetensors"))["score.weight"]
    assert not torch.equal(critic.score.weight, untrained), "the critic's head trained"


def _weights_file(path: Path) -> Path:
    found = path / "adapter_model.safetensors"
    return found if found.exists() else path / "model.safetensors"
