"""`kto`: Kahneman-Tversky Optimization on single replies labelled desirable or undesirable, with
TRL's KTOTrainer, against a frozen reference: the upstream policy unless `ref_model` names another
stage (stages/model/preference.py). The KL baseline is estimated from mismatched pairs within
each batch (each reply scored after its neighbour's prompt), so the rows are shuffled once with
`seed` and then batched in order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from stages.base import KTO_DATA, MODEL, Context, In, bounded, forwarded_fields
from stages.dpo import PREFERENCE_CODE
from stages.kto_data import KtoDataConfig
from stages.model.train_config import TrainConfig, check_training

KTO_DATA_FIELDS = forwarded_fields(KtoDataConfig)
KTO_LOSSES = ("kto", "apo_zero_unpaired")  # KTOConfig.loss_type's choices in TRL 1.16
KTO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl")


@dataclass
class KtoConfig(TrainConfig, KtoDataConfig):
    """Training fields plus the data fields of the implicit `kto_data` node."""

    pref_beta: float = bounded(0.1, above=0)
    pref_loss: str = field(default="kto", metadata={"choices": KTO_LOSSES})
    kto_chosen_weight: float = bounded(1.0, min=0)  # weight of the desirable replies' losses
    kto_rejected_weight: float = bounded(1.0, min=0)  # weight of the undesirable replies' losses
    precompute_ref_log_probs: bool = False


class KtoStage:
    kind: ClassVar[str] = "kto"
    Config = KtoConfig
    inputs: ClassVar[dict[str, In]] = {
        "model": In(MODEL, default="base"),
        "ref_model": In(MODEL, same_as="model"),
        "data": In(KTO_DATA, implicit="kto_data", forwards=KTO_DATA_FIELDS),
    }
    output: ClassVar[str] = MODEL
    code: ClassVar[tuple[str, ...]] = PREFERENCE_CODE
    dataset_fields: ClassVar[tuple[str, ...]] = ()
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "rewards_margins"
    distributed: ClassVar[bool] = True  # runs under torchrun / DeepSpeed

    @staticmethod
    def check_config(cfg: KtoConfig) -> list[tuple[str, str]]:
        problems = check_training(cfg)
        if cfg.pref_beta <= 0:
            problems.append(("pref_beta", "must be > 0"))
        for name in ("kto_chosen_weight", "kto_rejected_weight"):
            if getattr(cfg, name) <= 0:
                problems.append((name, "must be > 0"))
        if cfg.pref_loss == "kto" and cfg.per_device_train_batch_size < 2:
            problems.append(
                (
                    "per_device_train_batch_size",
                    "kto estimates its KL term from the other replies of a batch: use 2 or more",
                )
            )
        if cfg.pref_loss == "kto" and cfg.group_by_length:
            problems.append(("group_by_length", "kto batches its rows in order (its KL term)"))
        return problems

    @staticmethod
    def memory_profile(cfg: KtoConfig, roles: dict[str, str | None]) -> dict[str, int]:
        from stages.model.preference import memory_profile

        return memory_profile(cfg, roles)

    def run(self, ctx: Context, cfg: KtoConfig) -> None:
        from stages.data.build import chat_tokenizer, load_splits
        from stages.model import preference
        from stages.model.finetune import Recipe, fine_tune
        from stages.model.preference_trainers import SequentialKTOConfig, TokenizedKTOTrainer

        tokenizer, stops = chat_tokenizer(ctx.inputs["model"], ctx.inputs["data"])
        preference.check_tokenizers(ctx, tokenizer)
        train, val = load_splits(ctx.inputs["data"])
        recipe = Recipe(
            trainer=TokenizedKTOTrainer,
            args_cls=SequentialKTOConfig,
            args={
                "beta": cfg.pref_beta,
                "loss_type": cfg.pref_loss,
                "desirable_weight": cfg.kto_chosen_weight,
                "undesirable_weight": cfg.kto_rejected_weight,
                "precompute_ref_log_probs": cfg.precompute_ref_log_probs,
                "max_length": None,  # the kto_data node fitted each row to cutoff_len
                "disable_dropout": True,
            },
            extra=preference.reference_extra(ctx, cfg),
        )
        train = train.shuffle(seed=cfg.seed).flatten_indices()
        fine_tune(ctx, cfg, tokenizer, train, val, stop_ids=stops, recipe=recipe)
        preference.record_rewards(ctx, KTO_METRICS)
