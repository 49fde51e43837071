"""The ppo stage on the SMALL tiny model: a real rollout's first minibatch is on-policy (ratio 1,
nothing clipped, no KL to the reference), masks end at the stop token and masked positions carry
no loss, a few steps train exactly what should train, the artifact reloads (the policy generates,
the critic keeps its head), rule-based rewards and their missing-eos penalty, and the
compile-time refusals."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from stages.base import Context
from stages.ppo import PpoConfig, PpoStage
from stages.rl import ppo_loop
from tests.sizes import SMALL

DEMO = Path(__file__).resolve().parent.parent / "stages" / "data" / "demo"
EXACT = "stages.data.demo:exact_answer_reward"
QUICK = {
    "max_steps": 2,
    "per_device_train_batch_size": 4,
    "max_new_tokens": 8,
    "ppo_epochs": 2,
    "learning_rate": 1e-3,
    "save_steps": 100,
    "logging_steps": 1,
    "report_to": "none",
}
LOGGED = [
    "step",
    "reward_mean",
    "reward_std",
    "score_mean",
    "kl",
    "kl_coef",
    "entropy",
    "policy_loss",
    "value_loss",
    "clip_frac",
    "approx_kl",
    "value_clip_frac",
    "response_length",
    *ppo_loop.TIMING,
]


@dataclasses.dataclass
class Assets:
    base: Path  # the SMALL tiny model, full weights
    prompts: Path  # demo prompts tokenized for it (with 4 held out)
    rm: Path  # a reward model: the base with a seeded scalar head

    def resolve(self, key: str) -> Path:
        return {"base-key": self.base, "rm-key": self.rm}[key]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    from transformers import AutoModelForSequenceClassification

    from stages.model.loading import load_tokenizer, write_model_json
    from stages.model.tiny import build_model
    from stages.prompts import PromptsConfig, PromptsStage

    root = tmp_path_factory.mktemp("ppo")
    base, prompts, rm = root / "base", root / "prompts", root / "rm"
    build_model(base, **SMALL)
    write_model_json(base, "full")
    prompts.mkdir()
    entry = {"name": "demo_prompts", "path": str(DEMO / "prompts.jsonl"), "formatting": "alpaca"}
    ctx = Context("p", "k", prompts, root / "pw", {"model": base}, datasets={"dataset": [entry]})
    PromptsStage().run(ctx, PromptsConfig(max_samples=36, val_size=4))
    torch.manual_seed(0)
    head = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    head.save_pretrained(str(rm))
    load_tokenizer(base).save_pretrained(rm)
    write_model_json(rm, "full", head="reward")
    return Assets(base, prompts, rm)


def context(assets: Assets, out: Path, reward_model: bool = True) -> Context:
    out.mkdir(parents=True)
    inputs = {"model": assets.base, "ref_model": assets.base, "data": assets.prompts}
    keys = {"model": "base-key", "ref_model": "base-key"}
    if reward_model:
        inputs["reward_model"], keys["reward_model"] = assets.rm, "rm-key"
    work = out.parent / f"{out.name}-work"
    return Context("ppo", "k", out, work, inputs, input_keys=keys, resolve=assets.resolve)


def run_ppo(assets: Assets, out: Path, reward_model: bool = True, **cfg: object) -> Context:
    ctx = context(assets, out, reward_model)
    PpoStage().run(ctx, PpoConfig(**{**QUICK, **cfg}))  # type: ignore[arg-type]
    return ctx


def live(assets: Assets, tmp_path: Path, upstream: Path | None = None, **cfg: object):  # type: ignore[no-untyped-def]
    """The built models and prompts, without running the loop (policy and reference from
    `upstream`, keyed "up-key", when given)."""
    from stages.rl.ppo_train import setup

    options = PpoConfig(**{**QUICK, **cfg})  # type: ignore[arg-type]
    ctx = context(assets, tmp_path / "out")
    if upstream is not None:
        ctx.inputs["model"] = ctx.inputs["ref_model"] = upstream
        ctx.input_keys["model"] = ctx.input_keys["ref_model"] = "up-key"
    return ctx, options, setup(ctx, options)


def adapter_upstream(assets: Assets, tmp_path: Path) -> Path:
    """An sft-like LoRA artifact on the base, its adapter far from identity (random B)."""
    from peft import LoraConfig, get_peft_model

    from stages.model.loading import load_model, load_tokenizer, write_model_json

    out = tmp_path / "upstream"
    torch.manual_seed(1)
    model = get_peft_model(
        load_model(assets.base, assets.resolve), LoraConfig(r=4, target_modules="all-linear")
    )
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(str(out))
    load_tokenizer(assets.base).save_pretrained(out)
    write_model_json(out, "adapter", base="base-key")
    return out


def a_rollout(s, cfg: PpoConfig, rows: int = 8, sampling=None):  # type: ignore[no-untyped-def]
    from stages.rl.ppo_loop import batch_rows, seed_all
    from stages.rl.rollout import rollout

    seed_all(0)
    batch = batch_rows(s.train, list(range(rows)), 1)
    return rollout(s.actors, batch, sampling or s.sampling, rows, s.device)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


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
