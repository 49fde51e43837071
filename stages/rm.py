"""`rm`: a reward model = the upstream model with a one-output scalar head (LoRA or full; the head
always trains and is saved), trained on preference pairs with the pairwise Bradley-Terry loss
(optionally with a margin) by TRL's RewardTrainer; pairwise accuracy on the validation split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from stages.base import MODEL, PREFERENCE_DATA, REWARD_MODEL, Context, In, forwarded_fields
from stages.model.train_config import TRAINING_CODE, TrainConfig, check_training
from stages.pairs import PairsConfig

PAIRS_FIELDS = forwarded_fields(PairsConfig)


@dataclass
class RmConfig(TrainConfig, PairsConfig):
    """Training fields plus the data fields of the implicit `pairs` node."""

    reward_margin: float = 0.0  # chosen must beat rejected by this much (Bradley-Terry margin)
    center_rewards_coefficient: float | None = None  # pulls scores towards 0 (mean square)


class RmStage:
    kind: ClassVar[str] = "rm"
    Config = RmConfig
    inputs: ClassVar[dict[str, In]] = {
        "model": In(MODEL, default="base"),
        "data": In(PREFERENCE_DATA, implicit="pairs", forwards=PAIRS_FIELDS),
    }
    output: ClassVar[str] = REWARD_MODEL
    code: ClassVar[tuple[str, ...]] = (*TRAINING_CODE, "model/reward.py", "data/build.py")
    dataset_fields: ClassVar[tuple[str, ...]] = ()
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "eval_accuracy"
    distributed: ClassVar[bool] = True  # runs under torchrun / DeepSpeed

    @staticmethod
    def check_config(cfg: RmConfig) -> list[tuple[str, str]]:
        return check_training(cfg)

    @staticmethod
    def memory_profile(cfg: RmConfig, roles: dict[str, str | None]) -> dict[str, int]:
        """Both replies of a pair in one batch; a scalar head, no vocabulary logits."""
        return {"sequences": 2, "logits": 0}

    def run(self, ctx: Context, cfg: RmConfig) -> None:
        from trl import RewardConfig, RewardTrainer

        from stages.data.build import chat_tokenizer, load_splits
        from stages.model.finetune import Recipe, fine_tune
        from stages.model.loading import REWARD

        tokenizer, _ = chat_tokenizer(ctx.inputs["model"], ctx.inputs["data"])
        train, val = (_whole_replies(d, cfg.reward_margin) for d in load_splits(ctx.inputs["data"]))
        recipe = Recipe(
            trainer=RewardTrainer,
            args_cls=RewardConfig,
            args={
                "max_length": None,  # pairs were fitted to cutoff_len when tokenized
                "center_rewards_coefficient": cfg.center_rewards_coefficient,
                "disable_dropout": True,
            },
            head=REWARD,
        )
        fine_tune(ctx, cfg, tokenizer, train, val, recipe=recipe)
        if val is not None and ctx.is_main:  # scores the artifact only rank 0 wrote
            ctx.metrics["eval_accuracy"] = pairwise_accuracy(ctx, val)


def _whole_replies(data: Any, margin: float) -> Any:
    """RewardTrainer scores whole sequences: prompt + reply for each side."""
    if data is None:
        return None

    def join(row: dict[str, Any]) -> dict[str, Any]:
        out = {
            "chosen_ids": row["prompt_ids"] + row["chosen_ids"],
            "rejected_ids": row["prompt_ids"] + row["rejected_ids"],
        }
        return {**out, "margin": margin} if margin else out

    return data.map(join, remove_columns=data.column_names)


def pairwise_accuracy(ctx: Context, val: Any) -> float:
    """The share of held-out pairs the saved artifact scores chosen above rejected, through the
    scoring function every consumer uses."""
    from stages.model.reward import RewardScorer

    scorer = RewardScorer(ctx.out, ctx.resolve or (lambda key: ctx.inputs["model"]))
    chosen = scorer.score_ids(list(val["chosen_ids"]))
    rejected = scorer.score_ids(list(val["rejected_ids"]))
    return round(sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(chosen), 4)
