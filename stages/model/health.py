"""Training health: a run whose loss, gradient or weights stop being finite fails with a message
instead of committing NaN weights, and a run that stopped learning (constant loss, zero gradient)
says so in its metrics. The Trainer-based stages check through `HealthCheck`; ppo's own loop calls
`check_record` and `weights_finite` itself."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from stages.base import UserError, latest_checkpoint

WATCHED = (
    "loss",
    "grad_norm",
    "policy_loss",
    "value_loss",
    "kl",
)  # logged values that must stay finite
STAGNANT_LOGS = 3  # consecutive logs with the same loss and a zero gradient norm


class Diverged(UserError):
    """Training produced a non-finite value: nothing is committed."""


def nonfinite(record: dict[str, Any]) -> str | None:
    """The first watched value of a log record that is NaN or infinite."""
    for key in WATCHED:
        value = record.get(key)
        if isinstance(value, (int, float)) and not math.isfinite(value):
            return f"{key} is {value}"
    return None


def diverged(step: int, what: str, cfg: Any, checkpoints: Path) -> Diverged:
    """The message: which step, what went non-finite, the likely cause, what is kept."""
    found = latest_checkpoint(checkpoints)
    kept = (
        f"the last good checkpoint stays in {found[1]} for inspection"
        if found
        else "no checkpoint was saved before it"
    )
    lr = getattr(cfg, "learning_rate", None)
    return Diverged(
        f"training diverged at step {step}: {what}; nothing was committed ({kept}). "
        f"The usual cause is a learning rate too high (learning_rate: {lr}): lower it, "
        "or keep max_grad_norm > 0 to clip gradients"
    )


def check_record(step: int, record: dict[str, Any], cfg: Any, checkpoints: Path) -> None:
    what = nonfinite(record)
    if what:
        raise diverged(step, what, cfg, checkpoints)


def weights_finite(model: Any) -> bool:
    """True iff every trainable parameter is finite (one device sync for all of them)."""
    import torch

    flags = [torch.isfinite(p).all() for p in model.parameters() if p.requires_grad]
    return bool(torch.stack(flags).all()) if flags else True


class Stagnation:
    """Counts consecutive logs with an unchanged loss and a zero gradient norm."""

    def __init__(self, patience: int = STAGNANT_LOGS) -> None:
        self.patience, self.count, self.last = patience, 0, None
        self.since: int | None = None

    def feed(self, step: int, record: dict[str, Any]) -> str | None:
        """A warning once the loss has stood still with no gradient for `patience` logs."""
        loss, grad = record.get("loss"), record.get("grad_norm")
        if loss is None or grad is None:
            return None
        still = grad == 0 and self.last is not None and abs(loss - self.last) < 1e-7
        self.count = self.count + 1 if still else 0
        if self.count == 1:
            self.since = step
        self.last = loss
        if self.count == self.patience:
            return (
                f"training stalled from step {self.since}: loss constant at {loss:.4g} with "
                "gradient norm 0 (often a learning rate so high the weights saturated)"
            )
        return None


def health_callback(ctx: Any, cfg: Any) -> Any:
    """A TrainerCallback: weights checked after every optimizer step, logged values at every
    log; a non-finite one stops training with `Diverged` before anything is saved or marked."""
    from transformers import TrainerCallback

    stagnation = Stagnation()

    class HealthCheck(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):  # type: ignore[no-untyped-def]
            if model is not None and not weights_finite(model):
                what = "the weights became non-finite (NaN or inf)"
                raise diverged(state.global_step, what, cfg, ctx.checkpoints)

        def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            if not logs:
                return
            check_record(state.global_step, logs, cfg, ctx.checkpoints)
            warning = stagnation.feed(state.global_step, logs)
            if warning:
                ctx.log.warning(warning)
                ctx.metrics.setdefault("warnings", []).append(warning)

    return HealthCheck()
