"""The PPO loop over built actors (stages/rl/ppo_train.py builds them): per step, one rollout,
its advantages, several epochs of clipped updates over shuffled minibatches, the KL controller,
a log record, and a checkpoint every `save_steps`.

Every step is a pure function of (the trained state, seed, step): its prompts come from a
permutation seeded by (seed, epoch) and its sampling from the RNGs reseeded at (seed, step), so a
run resumed from a checkpoint takes exactly the steps an uninterrupted one does.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from stages.base import Context
from stages.model.health import check_record, diverged, weights_finite
from stages.model.training import keep_log_until
from stages.rl import ppo_dist
from stages.rl import ppo_math as pm
from stages.rl.ppo_state import LoopState, load_checkpoint, save_checkpoint
from stages.rl.rollout import (
    Actors,
    Rollout,
    Sampling,
    evaluate,
    gather_logprobs,
    reply_tokens,
    rollout,
    token_logits,
    token_values,
)

GAE, REINFORCE_PP, GROUP = "gae", "reinforce_pp", "group"
LOG = "train_log.jsonl"


@dataclass
class Experience:
    """What a rollout's rewards become: per-token advantages, value targets (GAE only), and per
    row the summed KL estimate and the RLHF reward (raw score - kl_coef * KL) that is logged."""

    advantages: Tensor
    returns: Tensor | None
    kl: Tensor
    reward: Tensor

    def rows(self, index: Tensor) -> Experience:
        got = {f.name: getattr(self, f.name) for f in fields(self)}
        return Experience(**{k: None if v is None else v[index] for k, v in got.items()})


def experience(r: Rollout, cfg: Any, state: LoopState) -> Experience:
    """Scores -> (running-normalised, clipped) -> token rewards with the KL penalty -> advantages
    by the configured estimator -> whitened. Targets, not part of any graph."""
    with torch.no_grad():
        kl_tokens = torch.where(
            r.mask, pm.kl_penalty(r.logprobs, r.ref_logprobs, cfg.kl_estimator), 0
        )
        kl = kl_tokens.sum(1)
        coef = state.kl.value if cfg.kl_in_reward else 0.0
        scores = r.scores
        if cfg.ppo_score_norm:
            scores = pm.normalize_rewards(scores, state.moments, cfg.reward_clip)
        elif cfg.reward_clip is not None:
            scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
        returns = None
        if cfg.advantage_estimator == GROUP:
            adv = pm.group_advantages(scores - coef * kl, cfg.num_generations, r.mask)
        else:
            rewards = pm.token_rewards(scores, kl_tokens, r.mask, coef)
            if cfg.ppo_whiten_rewards:
                rewards = pm.masked_whiten(rewards, r.mask, shift_mean=False)
            if cfg.advantage_estimator == GAE:
                adv, returns = pm.gae(rewards, r.values, r.mask, cfg.gamma, cfg.lam)
            else:
                adv = pm.reinforce_pp(rewards, r.mask, cfg.gamma)
        if cfg.whiten_advantages:
            adv = pm.masked_whiten(adv, r.mask)
        reward = r.scores - state.kl.value * kl
    return Experience(adv, returns, kl, reward)


def losses(
    actors: Actors, r: Rollout, e: Experience, cfg: Any, kl_coef: float, train_actor: bool
) -> tuple[Tensor, dict[str, float]]:
    """The minibatch loss: clipped policy loss (+ KL term when it is not in the reward, - the
    entropy bonus) while the actor trains, plus vf_coef * the clipped value loss with a critic."""
    loss = torch.zeros((), device=r.mask.device)
    stats: dict[str, float] = {}
    with actors.autocast():
        if train_actor:
            logits = token_logits(actors.policy, r, cfg.temperature)
            logp = gather_logprobs(logits, reply_tokens(r))
            pg, more = pm.policy_loss(
                logp, r.logprobs, e.advantages, r.mask, cfg.cliprange, cfg.dual_clip
            )
            with torch.set_grad_enabled(cfg.entropy_coef != 0):
                entropy = pm.masked_mean(pm.entropy_from_logits(logits), r.mask)
            loss = pg - cfg.entropy_coef * entropy
            if not cfg.kl_in_reward:
                kl = pm.masked_mean(pm.kl_penalty(logp, r.ref_logprobs, cfg.kl_estimator), r.mask)
                loss = loss + kl_coef * kl
            stats.update(policy_loss=pg.item(), entropy=entropy.item(), **more)
        if actors.critic is not None:
            values = token_values(actors.critic, r)
            vf, more = pm.value_loss(values, r.values, e.returns, r.mask, cfg.cliprange_value)
            loss = loss + cfg.vf_coef * vf
            stats.update(value_loss=vf.item(), **more)
    return loss, stats


@dataclass
class Optimizers:
    """AdamW and a learning-rate schedule for the actor and for the critic (None without one)."""

    actor: Any
    actor_schedule: Any
    critic: Any = None
    critic_schedule: Any = None

    def state_dict(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name).state_dict()
            for f in fields(self)
            if getattr(self, f.name) is not None
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            getattr(self, name).load_state_dict(value)


def make_optimizers(actors: Actors, cfg: Any, steps: int, minibatches: int) -> Optimizers:
    """The schedule counts optimizer steps: the actor's start after the critic's warm-up."""
    from transformers import get_scheduler

    def one(model: Any, lr: float, total: int) -> tuple[Any, Any]:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        schedule = get_scheduler(
            cfg.lr_scheduler_type, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=total
        )
        return opt, schedule

    per_step = cfg.ppo_epochs * minibatches
    actor_steps = max(1, (steps - cfg.critic_warmup_steps) * per_step)
    opts = Optimizers(*one(actors.policy, cfg.learning_rate, actor_steps))
    if actors.critic is not None:
        lr = cfg.critic_learning_rate or cfg.learning_rate
        opts.critic, opts.critic_schedule = one(actors.critic, lr, steps * per_step)
    return opts


def ppo_update(
    actors: Actors,
    opts: Optimizers,
    r: Rollout,
    e: Experience,
    cfg: Any,
    kl_coef: float,
    train_actor: bool,
    generator: torch.Generator,
) -> list[dict[str, float]]:
    """`ppo_epochs` passes over the rollout in shuffled minibatches of `mini_batch_size` rows,
    each split into `gradient_accumulation_steps` micro-batches; stats per minibatch."""
    n = r.mask.shape[0]
    size = cfg.mini_batch_size or n
    out = []
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n, generator=generator).to(r.mask.device)
        for start in range(0, n, size):
            micro = order[start : start + size].tensor_split(cfg.gradient_accumulation_steps)
            micro = [m for m in micro if len(m)]
            stats: list[dict[str, float]] = []
            for idx in micro:
                loss, got = losses(actors, r.rows(idx), e.rows(idx), cfg, kl_coef, train_actor)
                (loss / len(micro)).backward()
                stats.append(got)
            _apply(opts, actors, cfg, train_actor)
            out.append({k: sum(s[k] for s in stats) / len(stats) for k in stats[0]})
    return out


def _apply(opts: Optimizers, actors: Actors, cfg: Any, train_actor: bool) -> None:
    """Clip each model's gradient norm, step its optimizer and schedule, clear its gradients."""
    pairs = [(actors.policy, opts.actor, opts.actor_schedule)] if train_actor else []
    if actors.critic is not None:
        pairs.append((actors.critic, opts.critic, opts.critic_schedule))
    for model, opt, schedule in pairs:
        params = [p for p in model.parameters() if p.requires_grad]
        ppo_dist.average_gradients(params)  # several ranks: one update from all their rollouts
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)


def step_seed(seed: int, step: int) -> int:
    """The RNG seed of one PPO step: a function of (seed, step) only, so a resumed run samples
    exactly what the uninterrupted one did."""
    return (seed * 1_000_003 + step) % 2**63


def prompt_indices(step: int, n: int, per_step: int, seed: int) -> list[int]:
    """The prompts of step `step` (1-based): consecutive slices of a stream of epochs, each a
    permutation of the n prompts seeded by (seed, epoch)."""
    out: list[int] = []
    position = (step - 1) * per_step
    while len(out) < per_step:
        epoch, offset = divmod(position + len(out), n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        out += order[offset : offset + per_step - len(out)].tolist()
    return out


def total_steps(cfg: Any, n_prompts: int) -> int:
    """max_steps PPO steps, else num_train_epochs passes over the prompts."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, math.ceil(cfg.num_train_epochs * n_prompts / prompts_per_step(cfg)))


def prompts_per_step(cfg: Any) -> int:
    return cfg.per_device_train_batch_size * cfg.ppo_buffer_size


def batch_rows(data: Any, indices: list[int], copies: int) -> dict[str, list]:
    """The dataset rows at `indices` as columns, each row repeated `copies` times (a group)."""
    rows = data.select(indices)[:]
    return {k: [v for v in col for _ in range(copies)] for k, col in rows.items()}


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# the logged fields that measure speed: they differ between identical runs
TIMING = ("rollout_tokens_per_s", "train_tokens_per_s", "generate_s", "score_s", "train_s")


def ppo_step(
    actors: Actors,
    opts: Optimizers,
    state: LoopState,
    data: Any,
    cfg: Any,
    sampling: Sampling,
    device: Any,
) -> dict[str, Any]:
    """One PPO step (state.step + 1): rollout, advantages, updates, KL controller; its record."""
    step = state.step + 1
    seed_all(step_seed(cfg.seed, step) + ppo_dist.rank())  # each rank samples its own replies
    every = prompt_indices(step, len(data), prompts_per_step(cfg) * ppo_dist.world(), cfg.seed)
    indices = ppo_dist.my_share(every)
    rows = batch_rows(data, indices, cfg.num_generations)
    chunk = cfg.per_device_train_batch_size * cfg.num_generations
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    r = rollout(actors, rows, sampling, chunk, device, seconds)
    t1 = time.perf_counter()
    e = experience(r, cfg, state)
    kl_coef = state.kl.value
    generator = torch.Generator().manual_seed(step_seed(cfg.seed, step))
    train_actor = step > cfg.critic_warmup_steps
    stats = ppo_update(actors, opts, r, e, cfg, kl_coef, train_actor, generator)
    t2 = time.perf_counter()
    kl_now = ppo_dist.mean_over_ranks({"kl": e.kl.mean().item()}, ("kl",))["kl"]
    state.kl.update(kl_now, r.mask.shape[0] * ppo_dist.world())
    state.step = step
    tokens = r.mask.sum().item()
    record = {
        "step": step,
        "reward_mean": e.reward.mean().item(),
        "reward_std": e.reward.std().item() if len(e.reward) > 1 else 0.0,
        "score_mean": r.scores.mean().item(),
        "kl": e.kl.mean().item(),
        "kl_coef": kl_coef,
        **{k: sum(s[k] for s in stats) / len(stats) for k in stats[0]},
        "response_length": tokens / r.mask.shape[0],
        "rollout_tokens_per_s": round(tokens / (t1 - t0), 1),
        "train_tokens_per_s": round(cfg.ppo_epochs * r.attention_mask.sum().item() / (t2 - t1), 1),
        **{k: round(v, 3) for k, v in seconds.items()},  # where a step's time goes
        "train_s": round(t2 - t1, 3),
        "learning_rate": opts.actor_schedule.get_last_lr()[0],
    }
    return ppo_dist.mean_over_ranks(record, tuple(k for k in record if k not in NOT_AVERAGED))


# per-step fields that are the same on every rank, or per-rank speeds (kept as rank 0's)
NOT_AVERAGED = ("step", "kl_coef", "learning_rate", *TIMING)


def run_loop(
    ctx: Context, cfg: Any, actors: Actors, data: Any, val: Any, sampling: Sampling, device: Any
) -> LoopState:
    """All PPO steps from the checkpoint it resumes from (or 0), each logged to ctx.work; with
    held-out prompts, their mean greedy score every save_steps and at the end."""
    from tqdm import tqdm

    steps = total_steps(cfg, len(data))
    rows = prompts_per_step(cfg) * cfg.num_generations
    opts = make_optimizers(actors, cfg, steps, math.ceil(rows / (cfg.mini_batch_size or rows)))
    state = LoopState.fresh(cfg)
    ctx.work.mkdir(parents=True, exist_ok=True)
    if ctx.resume_from is not None:
        load_checkpoint(ctx.resume_from, actors, opts, state)
        if ctx.is_main:
            keep_log_until(ctx.work / LOG, state.step)
    elif ctx.is_main:  # a fresh start: nothing a killed attempt logged still holds
        (ctx.work / LOG).unlink(missing_ok=True)
    writer = _tensorboard(ctx, cfg) if ctx.is_main else None
    chunk = cfg.per_device_train_batch_size
    if val is not None and state.step == 0 and ctx.is_main:  # held-out baseline, no update yet
        _log(
            ctx,
            cfg,
            {"step": 0, "eval_reward_mean": evaluate(actors, val, sampling, chunk, device)},
            writer,
        )
    bar = tqdm(
        range(state.step, steps),
        initial=state.step,
        total=steps,
        desc=f"ppo {ctx.name}",
        disable=not ctx.is_main,
    )
    for _ in bar:
        record = ppo_step(actors, opts, state, data, cfg, sampling, device)
        _check_health(ctx, cfg, actors, record)
        saving = cfg.save_steps > 0 and state.step % cfg.save_steps == 0
        if not ctx.is_main:  # the others hold the same weights and statistics
            continue
        if val is not None and (saving or state.step == steps):
            record["eval_reward_mean"] = evaluate(actors, val, sampling, chunk, device)
        _log(ctx, cfg, record, writer)
        bar.set_postfix(reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl']:.3f}")
        if saving:
            save_checkpoint(ctx, cfg, actors, opts, state)
    if writer is not None:
        writer.close()
    return state


def _check_health(ctx: Context, cfg: Any, actors: Actors, record: dict[str, Any]) -> None:
    """A non-finite loss, KL or weight fails the stage before anything is logged or saved."""
    check_record(record["step"], record, cfg, ctx.checkpoints)
    for name, model in (("policy", actors.policy), ("critic", actors.critic)):
        if model is not None and not weights_finite(model):
            what = f"the {name} weights became non-finite (NaN or inf)"
            raise diverged(record["step"], what, cfg, ctx.checkpoints)


def _log(ctx: Context, cfg: Any, record: dict[str, Any], writer: Any) -> None:
    """Every step to train_log.jsonl (resume compares them); every logging_steps to the logger
    and TensorBoard."""
    with (ctx.work / LOG).open("a") as f:
        f.write(json.dumps(record) + "\n")
    if cfg.logging_steps <= 0 or record["step"] % cfg.logging_steps:
        return
    shown = ("reward_mean", "score_mean", "kl", "policy_loss", "value_loss", "eval_reward_mean")
    ctx.log.info(
        "step %d: %s",
        record["step"],
        ", ".join(f"{k} {record[k]:.4g}" for k in shown if k in record),
    )
    if writer is not None:
        for k, v in record.items():
            writer.add_scalar(f"ppo/{k}", v, record["step"])


def _tensorboard(ctx: Context, cfg: Any) -> Any:
    if cfg.report_to != "tensorboard":
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(ctx.work / "tensorboard"))
