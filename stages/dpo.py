"""`dpo`: Direct Preference Optimization (and the other pairwise losses TRL's DPOTrainer has) on
preference pairs, against a frozen reference: the upstream policy unless `ref_model` names
another stage (stages/model/preference.py says how each case is realised).

`pref_ftx` adds an SFT term, the NLL of the chosen replies' tokens, with that weight: TRL's
"sft" loss type combined through `loss_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from stages.base import (
    MODEL,
    PREFERENCE_DATA,
    Context,
    In,
    bounded,
    forwarded_fields,
    volatile,
)
from stages.model.train_config import TRAINING_CODE, TrainConfig, check_training
from stages.pairs import PairsConfig

PAIRS_FIELDS = forwarded_fields(PairsConfig)
PREFERENCE_CODE = (*TRAINING_CODE, "model/preference.py", "model/preference_trainers.py")
PREFERENCE_CODE += ("model/shared_prompt.py",)
PREFERENCE_CODE += ("data/build.py", "data/templates.py")  # the chat template and its stop ids
# every loss type TRL 1.16's DPOTrainer accepts
DPO_LOSSES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
SMOOTHED = ("robust", "exo_pair", "aot", "aot_unpaired")  # the losses label smoothing enters


@dataclass
class DpoConfig(TrainConfig, PairsConfig):
    """Training fields plus the data fields of the implicit `pairs` node."""

    pref_beta: float = bounded(0.1, above=0)  # how far from the reference (IPO: its tau)
    pref_loss: str = field(default="sigmoid", metadata={"choices": DPO_LOSSES})
    dpo_label_smoothing: float = bounded(
        0.0, min=0, max=0.5
    )  # robust / exo_pair / aot: share of flipped labels
    pref_ftx: float = bounded(
        0.0, min=0
    )  # weight of the NLL of the chosen replies added to the loss
    precompute_ref_log_probs: bool = False  # score the data with the reference once, up front
    # pairs packed as [prompt | chosen | rejected]: the prompt computed once, the same values
    shared_prompt: bool = volatile(True)


class DpoStage:
    kind: ClassVar[str] = "dpo"
    Config = DpoConfig
    inputs: ClassVar[dict[str, In]] = {
        "model": In(MODEL, default="base"),
        "ref_model": In(MODEL, same_as="model"),
        "data": In(PREFERENCE_DATA, implicit="pairs", forwards=PAIRS_FIELDS),
    }
    output: ClassVar[str] = MODEL
    code: ClassVar[tuple[str, ...]] = PREFERENCE_CODE
    dataset_fields: ClassVar[tuple[str, ...]] = ()
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "rewards_margins"
    distributed: ClassVar[bool] = True  # runs under torchrun / DeepSpeed

    @staticmethod
    def check_config(cfg: DpoConfig) -> list[tuple[str, str]]:
        return check_training(cfg) + check_preference(cfg)

    @staticmethod
    def memory_profile(cfg: DpoConfig, roles: dict[str, str | None]) -> dict[str, int]:
        from stages.model.preference import memory_profile

        return memory_profile(cfg, roles)

    def run(self, ctx: Context, cfg: DpoConfig) -> None:
        from stages.model import preference
        from stages.model.finetune import Recipe
        from stages.model.preference_trainers import SharedPromptDPOConfig, TokenizedDPOTrainer

        recipe = Recipe(
            trainer=TokenizedDPOTrainer,
            args_cls=SharedPromptDPOConfig,
            args={**dpo_args(cfg), "shared_prompt": cfg.shared_prompt},
            extra=preference.reference_extra(ctx, cfg),
        )
        preference.train_pairs(ctx, cfg, recipe)
        preference.record_rewards(ctx)


def dpo_args(cfg: DpoConfig) -> dict[str, Any]:
    """DPOConfig's own fields from ours."""
    losses, weights = [cfg.pref_loss], [1.0]
    if cfg.pref_ftx:
        losses, weights = [cfg.pref_loss, "sft"], [1.0, cfg.pref_ftx]
    return {
        "beta": cfg.pref_beta,
        "loss_type": losses,
        "loss_weights": weights,
        "label_smoothing": cfg.dpo_label_smoothing,
        "precompute_ref_log_probs": cfg.precompute_ref_log_probs,
        "max_length": None,  # the pairs node fitted each pair to cutoff_len
        "disable_dropout": True,
    }


def check_preference(cfg: Any) -> list[tuple[str, str]]:
    """Rules between dpo's preference fields: (field, problem)."""
    problems = []
    if cfg.pref_beta <= 0:
        problems.append(("pref_beta", "must be > 0"))
    if cfg.pref_ftx < 0:
        problems.append(("pref_ftx", "must be >= 0 (the weight of the chosen replies' NLL)"))
    smoothing = cfg.dpo_label_smoothing
    if cfg.pref_loss == "exo_pair" and not 0 < smoothing < 1:
        problems.append(
            ("dpo_label_smoothing", "pref_loss exo_pair needs a value in (0, 1) (EXO uses 1e-3)")
        )
    elif not 0 <= smoothing < 0.5 and cfg.pref_loss != "exo_pair":
        problems.append(("dpo_label_smoothing", "must be in [0, 0.5): a share of flipped labels"))
    elif smoothing and cfg.pref_loss not in SMOOTHED:
        problems.append(
            (
                "dpo_label_smoothing",
                f"has no effect with pref_loss {cfg.pref_loss}: "
                f"it enters {' / '.join(SMOOTHED)} only",
            )
        )
    return problems
