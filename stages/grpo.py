"""`grpo`: Group Relative Policy Optimization with TRL's GRPOTrainer. For each prompt the policy
samples `num_generations` replies; each is scored (a reward model artifact through RewardScorer,
and/or rule-based `reward_funcs`), and a reply's advantage is its reward against its group's.

`rloo` (stages/rloo.py) is the same stage with TRL's RLOOTrainer: everything below but the
loss-specific keys is shared. Training goes through fine_tune (methods, checkpoints, resume, logs).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from stages.base import (
    MODEL,
    PROMPTS,
    REWARD_MODEL,
    Context,
    In,
    UserError,
    bounded,
    forwarded_fields,
)
from stages.model.train_config import TRAINING_CODE, TrainConfig, check_training
from stages.model.vllm_layout import require_vllm, vllm_share
from stages.prompts import PromptsConfig
from stages.rl.reward_funcs import check_reward_funcs, reward_func_files

PROMPTS_FIELDS = forwarded_fields(PromptsConfig)
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16
SCALE_REWARDS = ("group", "batch", "none")
CODE = (*TRAINING_CODE, "grpo.py", "model/reward.py", "data/build.py", "rl/reward_funcs.py")
CODE += ("model/vllm_layout.py",)
NO_REWARD = (
    "no reward source: name a reward model stage (reward_model: <rm stage>) or rule-based "
    "reward_funcs (e.g. [stages.data.demo:exact_answer_reward])"
)


@dataclass
class GroupConfig(TrainConfig, PromptsConfig):
    """What grpo and rloo share: training fields, the prompts' data fields (forwarded to the
    implicit `prompts` node), sampling and the clipped policy update. TRL's names where
    LLaMA-Factory has none."""

    num_generations: int = bounded(8, min=1)  # replies sampled per prompt (one group)
    generation_batch_size: int | None = None  # None: per_device x gradient_accumulation_steps
    max_new_tokens: int = bounded(512, min=1)  # the longest reply (TRL's max_completion_length)
    temperature: float = bounded(1.0, above=0)
    top_p: float = bounded(1.0, above=0, max=1)
    top_k: int = bounded(0, min=0)  # 0: no top-k filtering
    beta: float = bounded(
        0.0, min=0
    )  # KL coefficient against ref_model (0: no reference is loaded)
    epsilon: float = bounded(0.2, above=0)  # clipping of the policy ratio
    epsilon_high: float | None = None  # upper clip (DAPO: 0.28); None: epsilon
    num_iterations: int = bounded(1, min=1)  # updates per generated batch
    reward_funcs: list[str] = field(default_factory=list)  # module:function, TRL's signature
    reward_weights: list[float] | None = None  # the reward model first, then reward_funcs
    mask_truncated_completions: bool = False  # replies cut at max_new_tokens get no loss
    use_vllm: bool = False  # sample with vLLM colocated (GPU and the vllm package)
    vllm_gpu_memory_utilization: float = bounded(0.3, above=0, max=1)  # the engine's share
    vllm_max_model_len: int | None = None  # None: the model's own context length


@dataclass
class GrpoConfig(GroupConfig):
    loss_type: str = field(default="dapo", metadata={"choices": LOSS_TYPES})
    scale_rewards: str = field(default="group", metadata={"choices": SCALE_REWARDS})


class GrpoStage:
    kind: ClassVar[str] = "grpo"
    Config: ClassVar[type] = GrpoConfig
    inputs: ClassVar[dict[str, In]] = {
        "model": In(MODEL, default="base"),
        "ref_model": In(MODEL, same_as="model"),
        "reward_model": In(REWARD_MODEL, optional=True),
        "data": In(PROMPTS, implicit="prompts", forwards=PROMPTS_FIELDS),
    }
    output: ClassVar[str] = MODEL
    code: ClassVar[tuple[str, ...]] = CODE
    dataset_fields: ClassVar[tuple[str, ...]] = ()
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "reward"
    distributed: ClassVar[bool] = True  # runs under torchrun / DeepSpeed
    trainer: ClassVar[tuple[str, str]] = ("GRPOTrainer", "GRPOConfig")  # TRL's names

    @staticmethod
    def check_config(cfg: GroupConfig) -> list[tuple[str, str]]:
        return check_training(cfg) + check_sampling(cfg)

    @staticmethod
    def check_inputs(cfg: GroupConfig, inputs: dict[str, str | None]) -> list[tuple[str, str]]:
        """Rules between the config and the inputs: a reward source, one weight per source."""
        sources = len(cfg.reward_funcs) + (inputs.get("reward_model") is not None)
        if not sources:
            return [("reward_funcs", NO_REWARD)]
        if cfg.reward_weights is not None and len(cfg.reward_weights) != sources:
            return [
                (
                    "reward_weights",
                    f"{len(cfg.reward_weights)} weights for {sources} reward sources "
                    "(the reward model first, then reward_funcs in order)",
                )
            ]
        return []

    @staticmethod
    def memory_profile(cfg: GroupConfig, roles: dict[str, str | None]) -> dict[str, float]:
        """A row is prompt + reply; the reward model and a reference (beta > 0, unless LoRA on
        the reference itself: TRL's adapter copy) are held frozen; vLLM takes its share."""
        shared = cfg.finetuning_type == "lora" and roles.get("ref_model") == roles.get("model")
        frozen = int(roles.get("reward_model") is not None) + int(cfg.beta != 0 and not shared)
        length = math.ceil((cfg.cutoff_len + cfg.max_new_tokens) / cfg.cutoff_len)
        return {"sequences": max(1, length), "frozen": frozen} | vllm_share(cfg)

    @staticmethod
    def key_files(cfg: Any) -> list[str]:
        """The reward functions' modules: their code decides the rewards."""
        return reward_func_files(cfg.reward_funcs)

    @staticmethod
    def trl_args(cfg: Any) -> dict[str, Any]:
        """The fields of this kind's TRL config besides the shared ones."""
        return {"loss_type": cfg.loss_type, "scale_rewards": cfg.scale_rewards}

    def run(self, ctx: Context, cfg: GroupConfig) -> None:
        import trl

        trainer, args_cls = (getattr(trl, name) for name in self.trainer)
        train_on_prompts(ctx, cfg, trainer, args_cls, self.trl_args(cfg))


def check_sampling(cfg: GroupConfig) -> list[tuple[str, str]]:
    """TRL's batch rules, at compile time: a generation batch holds whole groups of
    `num_generations` replies, and is a whole number of per-device batches."""
    problems = []
    group, per_device = cfg.num_generations, cfg.per_device_train_batch_size
    if group < 2:
        problems.append(("num_generations", "needs at least 2 replies per prompt to compare"))
    gen = cfg.generation_batch_size
    if gen is not None and gen % per_device:
        problems.append(
            (
                "generation_batch_size",
                f"must be a multiple of per_device_train_batch_size {per_device}",
            )
        )
    size = gen or per_device * cfg.gradient_accumulation_steps
    what = (
        "generation_batch_size"
        if gen
        else "per_device_train_batch_size x gradient_accumulation_steps"
    )
    if group >= 2 and size % group:
        key = "generation_batch_size" if gen else "num_generations"
        problems.append((key, f"{what} ({size}) must be a multiple of num_generations ({group})"))
    if cfg.val_size and cfg.save_steps > 0 and group >= 2 and per_device % group:
        problems.append(
            (
                "per_device_train_batch_size",
                f"with val_size, evaluation batches ({per_device}) must hold whole groups of "
                f"num_generations ({group})",
            )
        )
    for name, bad in (
        ("max_new_tokens", cfg.max_new_tokens < 1),
        ("temperature", cfg.temperature <= 0),
        ("top_p", not 0 < cfg.top_p <= 1),
        ("num_iterations", cfg.num_iterations < 1),
    ):
        if bad:
            problems.append((name, f"invalid value {getattr(cfg, name)!r}"))
    problems += check_reward_funcs(cfg.reward_funcs)
    return problems


def train_on_prompts(
    ctx: Context, cfg: GroupConfig, trainer: Any, args_cls: Any, own: dict[str, Any]
) -> None:
    """Sample, score and update through fine_tune with TRL's `trainer`; the artifact is the
    trained policy."""

    from stages.data.build import chat_tokenizer, load_splits
    from stages.model.finetune import Recipe, fine_tune
    from stages.model.training import read_log
    from stages.rl.reward_funcs import import_reward_funcs

    if cfg.use_vllm:
        require_vllm("use_vllm")
    funcs = [
        *_model_reward(ctx),
        *import_reward_funcs(cfg.reward_funcs, f"stages.{ctx.name}.reward_funcs"),
    ]
    if not funcs:
        raise UserError(f"stages.{ctx.name}.reward_funcs: {NO_REWARD}")
    tokenizer, stops = chat_tokenizer(ctx.inputs["model"], ctx.inputs["data"])
    train, val = (_conversational(d) for d in load_splits(ctx.inputs["data"]))
    recipe = Recipe(
        trainer=group_trainer(trainer),
        args_cls=args_cls,
        args={**_trl_args(cfg), **own},
        extra=lambda model: {"reward_funcs": funcs, "ref_model": _reference(ctx, cfg, model)},
    )
    fine_tune(ctx, cfg, tokenizer, train, val, stop_ids=stops, recipe=recipe)
    log = read_log(ctx.out)
    logged = [r["reward"] for r in log if r.get("reward") is not None]
    if logged:  # the mean reward of the sampled replies: over the run, first and last logged
        ctx.metrics.update(
            reward=sum(logged) / len(logged), reward_first=logged[0], reward_last=logged[-1]
        )
    held_out = [r["eval_reward"] for r in log if r.get("eval_reward") is not None]
    if held_out:  # on the validation prompts, after training
        ctx.metrics["eval_reward"] = held_out[-1]


def _trl_args(cfg: GroupConfig) -> dict[str, Any]:
    return {
        "num_generations": cfg.num_generations,
        "generation_batch_size": cfg.generation_batch_size,
        "max_completion_length": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": cfg.top_k,
        "beta": cfg.beta,
        "epsilon": cfg.epsilon,
        "epsilon_high": cfg.epsilon_high,
        "num_iterations": cfg.num_iterations,
        "reward_weights": cfg.reward_weights,
        "mask_truncated_completions": cfg.mask_truncated_completions,
        "use_vllm": cfg.use_vllm,
        "vllm_mode": "colocate",  # one process samples and trains; no server to run
        "vllm_gpu_memory_utilization": cfg.vllm_gpu_memory_utilization,
        "vllm_max_model_length": cfg.vllm_max_model_len,
        "disable_dropout": True,  # sampling and scoring see the same policy
    }


def _conversational(data: Any) -> Any:
    """TRL renders conversational prompts with the tokenizer's chat template (the data's, from
    chat_tokenizer); `reference` stays for reward functions that want the data's reply."""
    if data is None:
        return None
    keep = {"reference"} & set(data.column_names)
    return data.map(
        lambda row: {"prompt": json.loads(row["messages"])},
        remove_columns=[c for c in data.column_names if c not in keep],
    )


def _model_reward(ctx: Context) -> list[Any]:
    """The reward model artifact as a reward function, on the training device."""
    if ctx.inputs.get("reward_model") is None:
        return []
    from stages.model.reward import RewardScorer
    from stages.rl.reward_funcs import ModelReward

    path = ctx.inputs["reward_model"]
    scorer = RewardScorer(path, ctx.resolve or (lambda key: path), device=_device())
    return [ModelReward(scorer)]


def _reference(ctx: Context, cfg: GroupConfig, model: Any) -> Any:
    """The KL reference, or None where TRL needs none of ours: beta 0, or LoRA on the reference
    itself (TRL keeps a frozen copy of the starting adapter, or disables it)."""
    policy = ctx.inputs["model"]
    ref = ctx.inputs.get("ref_model", policy)
    if cfg.beta == 0.0 or (cfg.finetuning_type == "lora" and ref == policy):
        return None
    from stages.model.loading import load_model, merged

    dtype = next(model.parameters()).dtype
    reference = merged(load_model(ref, ctx.resolve or (lambda key: ref), dtype=dtype)).eval()
    return reference.requires_grad_(False)


def _device() -> Any:
    import os

    import torch

    if not torch.cuda.is_available():
        return None
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


def group_trainer(trl_cls: Any) -> Any:
    """TRL's GRPO / RLOO trainer called the way fine_tune calls every trainer: it makes its own
    collator (`data_collator` is dropped), and it takes a loaded `ref_model` (TRL would load a
    reference by the policy's name, which is not the reference for a merged upstream adapter,
    nor for a ref_model naming another stage)."""

    class Trainer(trl_cls):  # type: ignore[misc, valid-type]
        def __init__(self, *, data_collator: Any = None, ref_model: Any = None, **kw: Any) -> None:
            args = kw["args"]
            beta = args.beta
            if ref_model is not None:
                args.beta = 0.0  # so TRL loads no reference and adds no reference adapter
            try:
                super().__init__(**kw)
            finally:
                args.beta = beta
            if ref_model is not None:
                self.beta = beta
                self.ref_model = self._prepared(ref_model)

        def _track_num_input_tokens(self, inputs: Any) -> None:
            """TRL counts prompt and reply tokens itself; the Trainer's count finds no
            input_ids in a batch of prompts and warns every step."""

        def _prepared(self, ref: Any) -> Any:
            """As TRL prepares the reference it loads itself."""
            from trl.models import prepare_deepspeed, prepare_fsdp
            from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

            if self.args.disable_dropout:
                disable_dropout_in_model(ref)
            cast = getattr(self.args, "cast_lm_head_to_fp32", False)
            add_fused_lm_head(ref, temperature=self.temperature, cast_lm_head_to_fp32=cast)
            if self.is_deepspeed_enabled:
                return prepare_deepspeed(ref, self.accelerator)
            if self.is_fsdp_enabled:
                return prepare_fsdp(ref, self.accelerator)
            return self.accelerator.prepare_model(ref, evaluation_mode=True)

    Trainer.__name__ = Trainer.__qualname__ = trl_cls.__name__
    return Trainer
