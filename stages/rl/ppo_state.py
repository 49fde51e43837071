"""PPO checkpoints: everything a resumed run needs to take the same steps an uninterrupted one
would. A checkpoint is written into `checkpoint-<step>`, then marked complete; only the last
`save_total_limit` complete ones are kept.

Contents: the actor's and the critic's trainable parameters (the frozen rest is rebuilt from the
upstream artifacts), both optimizers and schedules, the KL controller, the reward normaliser, the
RNG states, and the step (which fixes the data position: see ppo_loop.prompt_indices).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.base import CHECKPOINT_MARKER, CHECKPOINT_PREFIX, Context, UserError
from stages.rl import ppo_math as pm

STATE, OPTIMIZERS, RNG = "state.json", "optimizers.pt", "rng.pt"


@dataclass
class LoopState:
    """What changes step by step besides weights and optimizers."""

    step: int
    kl: Any  # FixedKLController | AdaptiveKLController
    moments: pm.RunningMoments

    @staticmethod
    def fresh(cfg: Any) -> LoopState:
        kl = (
            pm.FixedKLController(cfg.init_kl_coef)
            if cfg.target_kl is None
            else pm.AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon)
        )
        return LoopState(0, kl, pm.RunningMoments())

    def state_dict(self, cfg: Any) -> dict[str, Any]:
        return {
            "step": self.step,
            "kl_controller": self.kl.state_dict(),
            "reward_moments": self.moments.state_dict(),
            "data": {"seed": cfg.seed, "prompts_per_step": _per_step(cfg)},
        }


def _per_step(cfg: Any) -> int:
    return cfg.per_device_train_batch_size * cfg.ppo_buffer_size * cfg.num_generations


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().to("cpu", copy=True).contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def save_checkpoint(ctx: Context, cfg: Any, actors: Any, opts: Any, state: LoopState) -> Path:
    from safetensors.torch import save_file

    path = ctx.checkpoints / f"{CHECKPOINT_PREFIX}{state.step}"
    if path.exists():  # an incomplete one from a crashed run
        shutil.rmtree(path)
    path.mkdir(parents=True)
    save_file(trainable_state(actors.policy), str(path / "actor.safetensors"))
    if actors.critic is not None:
        save_file(trainable_state(actors.critic), str(path / "critic.safetensors"))
    torch.save(opts.state_dict(), path / OPTIMIZERS)
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, path / RNG)
    (path / STATE).write_text(json.dumps(state.state_dict(cfg), indent=2))
    ctx.mark_checkpoint_complete(path)
    _prune(ctx.checkpoints, cfg.save_total_limit)
    return path


def _prune(root: Path, limit: int | None) -> None:
    """Keep the newest `limit` complete checkpoints; drop older ones and stale partial ones."""
    if not limit:
        return
    found = []
    for p in root.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = p.name[len(CHECKPOINT_PREFIX) :]
        if suffix.isdigit():
            found.append((int(suffix), p))
    complete = sorted(s for s, p in found if (p / CHECKPOINT_MARKER).exists())
    keep = set(complete[-limit:])
    newest = complete[-1] if complete else -1
    for step, p in found:
        if step not in keep and step <= newest:
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: Path, actors: Any, opts: Any, state: LoopState) -> None:
    """Restore everything `save_checkpoint` wrote into the live models, optimizers and state."""
    from safetensors.torch import load_file

    saved = json.loads((path / STATE).read_text())
    _load_trainable(actors.policy, load_file(str(path / "actor.safetensors")), path)
    if actors.critic is not None:
        _load_trainable(actors.critic, load_file(str(path / "critic.safetensors")), path)
    opts.load_state_dict(torch.load(path / OPTIMIZERS, weights_only=False))
    rng = torch.load(path / RNG, weights_only=False)
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state.step = int(saved["step"])
    state.kl.load_state_dict(saved["kl_controller"])
    state.moments.load_state_dict(saved["reward_moments"])


def _load_trainable(model: Any, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        raise UserError(
            f"checkpoint {path} does not match the model being trained "
            f"({len(set(tensors) ^ expected)} parameter names differ); delete it to start over"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].device))
