"""`simpo`: Simple Preference Optimization, reference-free: -log sigmoid(pref_beta * (mean token
log-prob of the chosen reply - that of the rejected) - simpo_gamma), plus `cpo_alpha` times the
NLL of the chosen reply, with TRL's CPOTrainer (trl.experimental.cpo, loss_type "simpo"), fed the
`pairs` node's rows.

Defaults follow the SimPO paper rather than DPO's: the rewards are mean log-probabilities (a few
nats apart, not a sum over the reply), so beta is about 2, and no NLL term (cpo_alpha 0; CPO's
own default is 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from stages.base import MODEL, PREFERENCE_DATA, Context, In
from stages.dpo import PAIRS_FIELDS, PREFERENCE_CODE
from stages.model.train_config import TrainConfig, check_training
from stages.pairs import PairsConfig


@dataclass
class SimpoConfig(TrainConfig, PairsConfig):
    """Training fields plus the data fields of the implicit `pairs` node."""

    pref_beta: float = 2.0  # scale of the length-normalised reward margin
    simpo_gamma: float = 0.5  # the target margin, in reward units
    cpo_alpha: float = 0.0  # weight of the chosen replies' NLL (CPO's behaviour cloning term)


class SimpoStage:
    kind: ClassVar[str] = "simpo"
    Config = SimpoConfig
    inputs: ClassVar[dict[str, In]] = {
        "model": In(MODEL, default="base"),
        "data": In(PREFERENCE_DATA, implicit="pairs", forwards=PAIRS_FIELDS),
    }
    output: ClassVar[str] = MODEL
    code: ClassVar[tuple[str, ...]] = PREFERENCE_CODE
    dataset_fields: ClassVar[tuple[str, ...]] = ()
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "rewards_margins"
    distributed: ClassVar[bool] = True  # runs under torchrun / DeepSpeed

    @staticmethod
    def check_config(cfg: SimpoConfig) -> list[tuple[str, str]]:
        problems = check_training(cfg)
        if cfg.pref_beta <= 0:
            problems.append(("pref_beta", "must be > 0"))
        if cfg.cpo_alpha < 0:
            problems.append(("cpo_alpha", "must be >= 0 (the weight of the chosen replies' NLL)"))
        return problems

    @staticmethod
    def memory_profile(cfg: SimpoConfig, roles: dict[str, str | None]) -> dict[str, int]:
        return {"sequences": 2}

    def run(self, ctx: Context, cfg: SimpoConfig) -> None:
        from stages.model import preference
        from stages.model.finetune import Recipe
        from stages.model.preference_trainers import CPOConfig, TokenizedCPOTrainer, paired_rows

        recipe = Recipe(
            trainer=TokenizedCPOTrainer,
            args_cls=CPOConfig,
            args={
                "loss_type": "simpo",
                "beta": cfg.pref_beta,
                "simpo_gamma": cfg.simpo_gamma,
                "cpo_alpha": cfg.cpo_alpha,
                "max_length": cfg.cutoff_len,  # the pairs node fitted each pair to it already
                "disable_dropout": True,
            },
        )
        preference.train_pairs(ctx, cfg, recipe, paired_rows)
        preference.record_rewards(ctx)
