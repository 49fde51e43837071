"""`rloo`: REINFORCE Leave-One-Out with TRL's RLOOTrainer: a reply's baseline is the mean reward
of the other replies to its prompt, and the KL to ref_model is part of the reward. The stage is
grpo's (stages/grpo.py) but for the trainer and its own keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from stages.grpo import CODE, GroupConfig, GrpoStage


@dataclass
class RlooConfig(GroupConfig):
    num_generations: int = 2  # TRL's RLOO default: the fewest replies a leave-one-out needs
    beta: float = 0.05  # TRL's RLOO default: the KL penalty in the reward
    normalize_advantages: bool = False  # to mean 0, std 1 over each generation batch


class RlooStage(GrpoStage):
    kind: ClassVar[str] = "rloo"
    Config: ClassVar[type] = RlooConfig
    code: ClassVar[tuple[str, ...]] = CODE
    trainer: ClassVar[tuple[str, str]] = ("RLOOTrainer", "RLOOConfig")

    @staticmethod
    def trl_args(cfg: Any) -> dict[str, Any]:
        return {"normalize_advantages": cfg.normalize_advantages}
