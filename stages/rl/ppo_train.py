"""What `ppo`'s run() does: build the actor, reference, critic and rewarder from the stage's
inputs, run the loop (stages/rl/ppo_loop.py), and write the artifact: the policy exactly as
fine_tune lays it out, `critic/` (reloadable on its own, head "reward"), the log and its plot.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch

from stages.base import Context
from stages.model import adapters
from stages.model.loading import REWARD, load_model, merged, read_model_json, write_model_json
from stages.model.vllm_layout import require_vllm
from stages.rl import ppo_dist
from stages.rl.ppo_loop import LOG, run_loop
from stages.rl.reward_funcs import import_reward_funcs
from stages.rl.rollout import Actors, Rewarder, Sampling
from stages.rl.vllm_rollout import vllm_sampler


@dataclass
class Setup:
    """Everything the loop runs on, built from the stage's inputs."""

    actors: Actors
    keys: dict[str, str | None]  # the full-weights bases of the policy's and critic's adapters
    tokenizer: Any
    sampling: Sampling
    train: Any  # the prompts
    val: Any  # held-out prompts, or None
    device: Any


def setup(ctx: Context, cfg: Any) -> Setup:
    from stages.data.build import chat_tokenizer, load_splits
    from stages.model.training import checkpointing
    from stages.ppo import require_reward_source

    require_reward_source(cfg, ctx)
    if cfg.use_vllm:
        require_vllm("use_vllm")
    ppo_dist.start(ctx.world_size, ctx.distributed.get("timeout_s"))
    tokenizer, stops = chat_tokenizer(ctx.inputs["model"], ctx.inputs["data"])
    stop_ids = tuple(stops or [tokenizer.eos_token_id])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ctx.metrics["gradient_checkpointing"] = checkpointing(cfg, ctx)
    actors, keys = build_actors(ctx, cfg, tokenizer, device, ctx.metrics["gradient_checkpointing"])
    ppo_dist.same_start(actors.policy, actors.critic)
    sampling = Sampling(
        cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_new_tokens, stop_ids, tokenizer.pad_token_id
    )
    if cfg.use_vllm:
        actors.sampler = vllm_sampler(actors.policy, tokenizer, sampling, cfg)
    train, val = load_splits(ctx.inputs["data"])
    return Setup(actors, keys, tokenizer, sampling, train, val, device)


def train(ctx: Context, cfg: Any) -> None:
    """Set up, run every PPO step (resuming where a checkpoint says), write the artifact."""
    from stages.model.training import peak_memory_mb

    t0 = time.time()
    s = setup(ctx, cfg)
    state = run_loop(ctx, cfg, s.actors, s.train, s.val, s.sampling, s.device)
    ppo_dist.stop()
    if not ctx.is_main:  # only rank 0 writes the artifact
        return
    write_policy(ctx, cfg, s.actors.policy, s.tokenizer, s.sampling.stop_ids, s.keys["model"])
    if s.actors.critic is not None:
        write_critic(ctx, cfg, s.actors.critic, s.tokenizer, s.keys["critic"])
    records = _finish_log(ctx)
    ctx.metrics.update(summary(records, state.step))
    ctx.metrics.update(wall_s=round(time.time() - t0, 3), peak_memory_mb=peak_memory_mb())


def build_actors(
    ctx: Context, cfg: Any, tokenizer: Any, device: Any, gradient_checkpointing: bool
) -> tuple[Actors, dict[str, str | None]]:
    """The policy (trainable), the reference (None: the policy with its adapter disabled), the
    critic (gae only) and the rewarder; keys of the full-weights bases the adapters apply to."""
    from stages.model.reward import RewardScorer

    funcs = import_reward_funcs(cfg.reward_funcs or [], f"stages.{ctx.name}.reward_funcs")
    resolve = ctx.resolve or (lambda key: ctx.inputs["model"])
    policy, base_key = adapters.trainable_model(
        ctx.inputs["model"], cfg, ctx.input_keys.get("model"), resolve
    )
    adapters.remember_init(policy, cfg, ctx.work)  # PiSSA: to save an ordinary adapter
    ref = (
        None
        if shares_reference(ctx, cfg)
        else _frozen(load_model(ctx.inputs["ref_model"], resolve))
    )
    critic, critic_key = _critic(ctx, cfg, resolve)
    for model in (policy, ref, critic):
        if model is not None:
            _prepare(model, device, gradient_checkpointing and model is not ref)
    rm = ctx.inputs.get("reward_model")
    scorer = RewardScorer(rm, resolve, device=device) if rm is not None else None
    rewarder = Rewarder(scorer, funcs, cfg.reward_weights, cfg.missing_eos_penalty, tokenizer)
    actors = Actors(policy, ref, critic, rewarder, _autocast(cfg, device))
    return actors, {"model": base_key, "critic": critic_key}


def _critic(ctx: Context, cfg: Any, resolve: Any) -> tuple[Any, str | None]:
    """GAE's value model: a scalar head on the reward model (value_init: reward, the default
    with one) or on the policy's upstream, trained like the policy (LoRA or full)."""
    if cfg.advantage_estimator != "gae":
        return None, None
    has_rm = ctx.inputs.get("reward_model") is not None
    init = cfg.value_init or ("reward" if has_rm else "policy")
    role = "reward_model" if init == "reward" else "model"
    return adapters.trainable_model(
        ctx.inputs[role], cfg, ctx.input_keys.get(role), resolve, head=REWARD
    )


def shares_reference(ctx: Context, cfg: Any) -> bool:
    """The reference is the policy with its adapter disabled when that is exactly the model the
    run starts from: a fresh LoRA adapter (identity at init) on the reference itself. A continued
    upstream adapter, or PiSSA / LoftQ (which rewrite the base), need a separate reference."""
    if cfg.finetuning_type != "lora" or cfg.pissa_init or cfg.loftq_bits:
        return False
    same = _identity(ctx, "ref_model") == _identity(ctx, "model")
    fresh = read_model_json(ctx.inputs["model"])["format"] == "full" or cfg.create_new_adapter
    return same and fresh


def _identity(ctx: Context, role: str) -> str:
    return ctx.input_keys.get(role) or str(ctx.inputs[role].resolve())


def _frozen(model: Any) -> Any:
    model = merged(model).eval()
    model.requires_grad_(False)
    return model


def _prepare(model: Any, device: Any, gradient_checkpointing: bool) -> None:
    """Dropout off (as TRL's PPO: old and new log-probs must agree), on the device (quantised
    models are placed when loaded), gradient checkpointing where asked."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if getattr(model, "hf_device_map", None) is None:
        model.to(device)
    if gradient_checkpointing:
        options = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def _autocast(cfg: Any, device: Any) -> Any:
    from stages.model.training import precision

    bf16, _ = precision(cfg.precision)
    if not bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def write_policy(
    ctx: Context, cfg: Any, policy: Any, tokenizer: Any, stop_ids: tuple[int, ...], base_key: Any
) -> None:
    """As fine_tune: weights or adapter, generation config with the stop ids, the tokenizer with
    the chat template, model.json."""
    unwrap = getattr(policy, "get_base_model", lambda: policy)
    unwrap().generation_config.eos_token_id = list(stop_ids)
    unwrap().generation_config.pad_token_id = tokenizer.pad_token_id
    adapters.save_trained(policy, ctx.out, cfg, ctx.work)
    tokenizer.save_pretrained(ctx.out)
    if cfg.finetuning_type == "lora":
        base_dir = adapters.LOFTQ_BASE if cfg.loftq_bits else None
        write_model_json(
            ctx.out, "adapter", base=base_key, rope_scaling=cfg.rope_scaling, base_dir=base_dir
        )
    else:
        write_model_json(ctx.out, "full")


def write_critic(ctx: Context, cfg: Any, critic: Any, tokenizer: Any, base_key: Any) -> None:
    """`critic/`: the value model with its scalar head, a model.json with head "reward"."""
    out = ctx.out / "critic"
    out.mkdir()
    critic.save_pretrained(str(out))
    tokenizer.save_pretrained(out)
    if cfg.finetuning_type == "lora":
        write_model_json(out, "adapter", base=base_key, rope_scaling=cfg.rope_scaling, head=REWARD)
    else:
        write_model_json(out, "full", head=REWARD)


def _finish_log(ctx: Context) -> list[dict[str, Any]]:
    """Copy the step log (and TensorBoard events) into the artifact; plot reward, KL and losses."""
    import json
    import shutil

    from stages.model.plot import write_training_png

    log = ctx.work / LOG
    records = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    (ctx.out / LOG).write_bytes(log.read_bytes())
    write_training_png(records, ctx.out / "reward.png")
    if (ctx.work / "tensorboard").is_dir():
        shutil.copytree(ctx.work / "tensorboard", ctx.out / "tensorboard", dirs_exist_ok=True)
    return records


def summary(records: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Manifest metrics: first and final reward, final KL, mean throughput; with held-out
    prompts, their reward before training (step 0) and at the end."""
    trained = [r for r in records if "reward_mean" in r]
    if not trained:
        return {"steps": steps}
    last = trained[-1]

    def mean(key: str) -> float:
        got = [r[key] for r in trained if key in r]
        return round(sum(got) / len(got), 1) if got else 0.0

    out = {
        "steps": steps,
        "reward_mean": last["reward_mean"],
        "first_reward_mean": trained[0]["reward_mean"],
        "score_mean": last["score_mean"],
        "kl": last["kl"],
        "rollout_tokens_per_s": mean("rollout_tokens_per_s"),
        "train_tokens_per_s": mean("train_tokens_per_s"),
    }
    evals = [r["eval_reward_mean"] for r in records if "eval_reward_mean" in r]
    if evals:
        out.update(first_eval_reward_mean=evals[0], eval_reward_mean=evals[-1])
    return out
