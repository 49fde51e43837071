"""`orpo`: Odds Ratio Preference Optimization, reference-free: the NLL of the chosen sequence
plus `pref_beta` times the log-sigmoid of the chosen-over-rejected log odds, with TRL's
ORPOTrainer (trl.experimental.orpo), fed the `pairs` node's rows.

As in the ORPO authors' code and TRL, the NLL term covers the prompt tokens too (LLaMA-Factory's
covers the reply only); the odds use the replies' mean token log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from stages.base import MODEL, PREFERENCE_DATA, Context, In
from stages.dpo import PAIRS_FIELDS, PREFERENCE_CODE
from stages.model.train_config import TrainConfig, check_training
from stages.pairs import PairsConfig


@dataclass
class OrpoConfig(TrainConfig, PairsConfig):
    """Training fields plus the data fields of the implicit `pairs` node."""

    pref_beta: float = 0.1  # the weight of the odds-ratio term (the paper's lambda)


class OrpoStage:
    kind: ClassVar[str] = "orpo"
    Config = OrpoConfig
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
    def check_config(cfg: OrpoConfig) -> list[tuple[str, str]]:
        problems = check_training(cfg)
        if cfg.pref_beta <= 0:
            problems.append(("pref_beta", "must be > 0"))
        return problems

    @staticmethod
    def memory_profile(cfg: OrpoConfig, roles: dict[str, str | None]) -> dict[str, int]:
        return {"sequences": 2}

    def run(self, ctx: Context, cfg: OrpoConfig) -> None:
        from stages.model import preference
        from stages.model.finetune import Recipe
        from stages.model.preference_trainers import ORPOConfig, TokenizedORPOTrainer, paired_rows

        recipe = Recipe(
            trainer=TokenizedORPOTrainer,
            args_cls=ORPOConfig,
            args={
                "beta": cfg.pref_beta,
                "max_length": cfg.cutoff_len,  # the pairs node fitted each pair to it already
                "disable_dropout": True,
            },
        )
        preference.train_pairs(ctx, cfg, recipe, paired_rows)
        preference.record_rewards(ctx, (*preference.REWARD_METRICS, "log_odds_ratio"))
