"""The pure math of our PPO loop: masked statistics, KL estimates, advantages, losses, controllers.

Tensors are [batch, T] over response tokens; `mask` (float or bool, same shape) is 1 on real
response tokens and 0 on the padding after each response. A masked position never influences a
result: inputs there are replaced (`torch.where`, so even NaN or inf are harmless) and outputs
there are 0. Nothing here touches a model; the stage's run() imports this module.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


def _real(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over real positions only; 0 (not NaN) where there is no real position."""
    real = _real(mask)
    total = torch.where(real, x, 0).sum() if dim is None else torch.where(real, x, 0).sum(dim)
    count = real.sum() if dim is None else real.sum(dim)
    return total / count.clamp_min(1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `x` over all real positions (Bessel-corrected when `unbiased`, as torch.var);
    0 with fewer than two real positions rather than a division by zero."""
    real = _real(mask)
    var = masked_mean((x - masked_mean(x, real)) ** 2, real)
    if unbiased:
        n = real.sum()
        var = var * n / (n - 1).clamp_min(1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Scale `x` to unit variance over real positions, centred on 0, or on its own mean when
    `shift_mean` is False (as TRL, for rewards whose offset matters); masked positions become 0."""
    real = _real(mask)
    mean, var = masked_mean(x, real), masked_var(x, real)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(real, whitened, 0)


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probs (Schulman,
    "Approximating KL divergence"): k1 is unbiased but noisy and can be negative, k2 is low variance
    but biased, k3 is unbiased, low variance and never negative."""
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        # r = exp(ref - logp); (r - 1) - log r, with expm1 for accuracy when r is close to 1
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Rewards for KL-in-reward PPO: a -kl_coef * kl penalty on every real token, plus the
    sequence score [batch] at the last real token of its row (nothing for a row with none)."""
    real = _real(mask)
    rewards = torch.where(real, -kl_coef * kl, 0)
    positions = torch.arange(real.shape[1], device=real.device)
    last = torch.where(real, positions, -1).max(dim=1).values  # -1 for an empty row
    has_token = last >= 0
    bonus = torch.where(has_token, scores.to(rewards.dtype), 0)
    return rewards.scatter_add(1, last.clamp_min(0)[:, None], bonus[:, None])


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), right to left:
    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, with V and A
    taken as 0 after the last real token (the response ended: nothing to bootstrap from).
    Returns (advantages, returns = advantages + values), both 0 on masked positions. Call it
    under torch.no_grad(): these are targets, not part of the graph."""
    real = _real(mask)
    r, v = torch.where(real, rewards, 0), torch.where(real, values, 0)
    next_value = next_adv = torch.zeros_like(r[:, 0])
    advantages = []
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        adv = torch.where(real[:, t], delta + gamma * lam * next_adv, 0)
        advantages.append(adv)
        next_value, next_adv = v[:, t], adv
    adv = torch.stack(advantages[::-1], dim=1)
    return adv, torch.where(real, adv + v, 0)


def reinforce_pp(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """REINFORCE++ (Hu 2025) advantages: the discounted return-to-go G_t = r_t + gamma * G_{t+1}
    to the end of each row, with no critic; 0 on masked positions. The caller whitens them over
    the batch (masked_whiten), which is what replaces a value baseline."""
    real = _real(mask)
    r = torch.where(real, rewards, 0)
    running = torch.zeros_like(r[:, 0])
    returns = []
    for t in reversed(range(r.shape[1])):
        running = torch.where(real[:, t], r[:, t] + gamma * running, 0)
        returns.append(running)
    return torch.stack(returns[::-1], dim=1)


def group_advantages(scores: Tensor, group_size: int, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO advantages (Shao et al. 2024): each score minus the mean of its group (the
    `group_size` consecutive rows sampled for one prompt), divided by the group's std (unbiased,
    as torch.std) + eps, broadcast over the row's real tokens and 0 on masked ones."""
    if group_size < 2 or scores.shape[0] % group_size:
        raise ValueError(
            f"group_size must be at least 2 and divide the batch ({scores.shape[0]}), "
            f"got {group_size}"
        )
    groups = scores.reshape(-1, group_size)
    normalised = (groups - groups.mean(dim=1, keepdim=True)) / (
        groups.std(dim=1, keepdim=True) + eps
    )
    return torch.where(_real(mask), normalised.reshape(-1, 1), 0)


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO's clipped surrogate, per token max(-A * r, -A * clip(r, 1 - eps, 1 + eps)) with
    r = exp(logp - old_logp), as a masked mean over tokens. With `dual_clip` c > 1 (Ye et al.
    2020), a negative-advantage token's loss is also capped at -c * A, so one token whose ratio
    exploded cannot dominate the batch. Stats: clip_frac (share of real tokens where the clipped
    branch is the active one), approx_kl (masked mean of 0.5 * (logp - old_logp)^2), ratio_mean."""
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"dual_clip must be greater than 1, got {dual_clip}")
    real = _real(mask)
    log_ratio = torch.where(real, logp - old_logp, 0)
    adv = torch.where(real, advantages, 0)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -dual_clip * adv), per_token)
    loss = masked_mean(per_token, real)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).float(), real).item(),
            "approx_kl": masked_mean(0.5 * log_ratio**2, real).item(),
            "ratio_mean": masked_mean(ratio, real).item(),
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss, the masked mean of
    0.5 * max((v - R)^2, (clip(v, old - eps, old + eps) - R)^2): the value head gains nothing
    from moving further than eps from its rollout-time prediction in one update.
    Stats: value_clip_frac, the share of real tokens where the clipped term is the larger."""
    real = _real(mask)
    v, old, ret = (torch.where(real, t, 0) for t in (values, old_values, returns))
    v_clipped = old + (v - old).clamp(-clip_eps, clip_eps)
    unclipped, clipped = (v - ret) ** 2, (v_clipped - ret) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), real)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).float(), real).item()
    return loss, {"value_clip_frac": clip_frac}


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim: logsumexp(z) - sum(p * z), which never takes
    the log of an underflowed probability. Logits must be finite (no -inf vocabulary masks)."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019): nudged up when the measured KL is above
    `target`, down when below, by at most 20% per `horizon` steps."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.value, self.target, self.horizon = (
            float(d[k]) for k in ("value", "target", "horizon")
        )


class FixedKLController:
    """A constant KL coefficient, with the adaptive controller's interface."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.value = float(d["value"])


class RunningMoments:
    """Running mean and (unbiased) std of every scalar seen so far, merged batch by batch with
    Chan et al.'s parallel algorithm (exact, and stable where sum-of-squares would cancel)."""

    def __init__(self) -> None:
        self.mean, self.m2, self.count = 0.0, 0.0, 0

    def update(self, x: Tensor) -> None:
        x = x.detach().reshape(-1).double()
        n = x.numel()
        if n == 0:
            return
        batch_mean = x.mean().item()
        batch_m2 = ((x - batch_mean) ** 2).sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def var(self) -> float:
        return self.m2 / (self.count - 1) if self.count > 1 else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "m2": self.m2, "count": self.count}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.mean, self.m2, self.count = float(d["mean"]), float(d["m2"]), int(d["count"])


def normalize_rewards(scores: Tensor, moments: RunningMoments, clip: float | None) -> Tensor:
    """Add the batch to the running moments, then standardise the scores with them (so the scale
    comes from every reward seen so far, not this batch alone) and clip to [-clip, clip]."""
    moments.update(scores)
    normalised = (scores - moments.mean) / (moments.std + 1e-8)
    return normalised if clip is None else normalised.clamp(-clip, clip)
