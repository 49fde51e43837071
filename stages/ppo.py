"""`ppo`: RLHF with our own PPO loop (TRL 1.16 ships none): sample replies to prompts from the
policy, score them with a reward model and / or rule-based reward functions, penalise the KL to a
frozen reference, and update the policy (clipped surrogate) and a critic (clipped value loss).

The actor is the upstream model (LoRA or full, as every training stage); the reference is the
same model with its fresh LoRA adapter disabled when it is the policy's own upstream (no second
copy), else a frozen load; the critic is a scalar-head model initialised from the reward model
(default) or the policy. The loop lives in stages/rl/ (rollout, ppo_loop, ppo_state, ppo_math).
The artifact is the policy, laid out as fine_tune writes it, plus `critic/`, the log and a plot.
"""

from __future__ import annotations

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
from stages.model.vllm_layout import vllm_share
from stages.prompts import PromptsConfig
from stages.rl.reward_funcs import check_reward_funcs, reward_func_files

PROMPTS_FIELDS = forwarded_fields(PromptsConfig)
ESTIMATORS = ("gae", "reinforce_pp", "group")
KL_ESTIMATORS = ("k1", "k2", "k3")
VALUE_INIT = ("reward", "policy")
NO_REWARD = (
    "ppo needs a reward: name a reward model stage (reward_model: <rm stage>) "
    "or set reward_funcs (module:function)"
)


@dataclass
class PpoConfig(TrainConfig, PromptsConfig):
    """Training fields, the prompts' data fields (forwarded to the implicit `prompts` node), and
    PPO's own. per_device_train_batch_size prompts are sampled per generation batch."""

    ppo_epochs: int = bounded(4, min=1)  # passes over each rollout
    ppo_buffer_size: int = bounded(
        1, min=1
    )  # generation batches per PPO step (the experience buffer)
    mini_batch_size: int | None = bounded(
        None, min=1
    )  # rows per optimizer step (None: the whole buffer)
    num_generations: int = bounded(1, min=1)  # replies per prompt (group: the group size)
    reward_funcs: list[str] | None = None  # module:function, TRL's f(prompts, completions, **kw)
    reward_weights: list[float] | None = None  # one per source: the reward model first
    missing_eos_penalty: float | None = None  # subtracted from replies that never stop
    ppo_score_norm: bool = True  # standardise scores with running moments
    reward_clip: float | None = 5.0
    ppo_whiten_rewards: bool = False
    advantage_estimator: str = field(default="gae", metadata={"choices": ESTIMATORS})
    gamma: float = bounded(1.0, min=0, max=1)
    lam: float = bounded(0.95, min=0, max=1)
    whiten_advantages: bool = True
    kl_estimator: str = field(default="k1", metadata={"choices": KL_ESTIMATORS})
    kl_in_reward: bool = True  # else a KL loss term
    init_kl_coef: float = bounded(0.05, min=0)
    target_kl: float | None = None  # None: a fixed coefficient; else adaptive over kl_horizon
    kl_horizon: int = 10000
    cliprange: float = bounded(0.2, above=0)
    cliprange_value: float = bounded(0.2, above=0)
    dual_clip: float | None = None
    vf_coef: float = bounded(0.1, min=0)
    entropy_coef: float = 0.0
    critic_warmup_steps: int = 0  # steps that train only the critic
    critic_learning_rate: float | None = None  # None: learning_rate
    value_init: str | None = field(default=None, metadata={"choices": VALUE_INIT})
    temperature: float = bounded(1.0, above=0)
    top_p: float = bounded(1.0, above=0, max=1)
    top_k: int = bounded(0, min=0)  # 0: off
    max_new_tokens: int = bounded(32, min=1)
    use_vllm: bool = False  # sample rollouts with vLLM colocated (a CUDA GPU, the vllm extra)
    vllm_gpu_memory_utilization: float = bounded(0.3, above=0, max=1)  # the engine's share
    vllm_max_model_len: int | None = None  # None: the model's own context length


class PpoStage:
    kind: ClassVar[str] = "ppo"
    Config = PpoConfig
    inputs: ClassVar[dict[str, In]] = {
        "model": In(MODEL, default="base"),
        "ref_model": In(MODEL, same_as="model"),
        "reward_model": In(REWARD_MODEL, optional=True),
        "data": In(PROMPTS, implicit="prompts", forwards=PROMPTS_FIELDS),
    }
    output: ClassVar[str] = MODEL
    code: ClassVar[tuple[str, ...]] = (
        *TRAINING_CODE,
        "rl/ppo_math.py",
        "rl/rollout.py",
        "rl/ppo_loop.py",
        "rl/ppo_state.py",
        "rl/ppo_train.py",
        "rl/vllm_rollout.py",
        "model/vllm_layout.py",
        "rl/reward_funcs.py",
        "model/reward.py",
        "model/plot.py",
        "data/build.py",
        "data/templates.py",
    )
    dataset_fields: ClassVar[tuple[str, ...]] = ()
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "reward_mean"
    distributed: ClassVar[bool] = True  # runs under torchrun (data-parallel: stages/rl/ppo_dist.py)
    deepspeed: ClassVar[bool] = False  # its own loop: ZeRO is for the Trainer-based stages

    @staticmethod
    def check_config(cfg: PpoConfig) -> list[tuple[str, str]]:
        return check_training(cfg) + check_ppo(cfg)

    @staticmethod
    def check_inputs(cfg: PpoConfig, roles: dict[str, str | None]) -> list[tuple[str, str]]:
        """Rules between the config and the inputs the compiler resolved (role -> stage)."""
        has_rm = roles.get("reward_model") is not None
        sources = int(has_rm) + len(cfg.reward_funcs or [])
        problems = []
        if not sources:
            problems.append(("reward_model", NO_REWARD))
        weights = cfg.reward_weights
        if sources and weights is not None and len(weights) != sources:
            problems.append(
                (
                    "reward_weights",
                    f"{len(weights)} weights for {sources} reward sources "
                    "(the reward model first, then reward_funcs in order)",
                )
            )
        if cfg.value_init == "reward" and not has_rm:
            problems.append(
                (
                    "value_init",
                    "'reward' starts the critic from the reward model, but none is named: "
                    "set reward_model, or value_init: policy",
                )
            )
        return problems

    @staticmethod
    def memory_profile(cfg: PpoConfig, roles: dict[str, str | None]) -> dict[str, float]:
        """Actor and critic train; the reward model and a reference (unless it is the policy
        with its adapter off) are held frozen; a row is prompt + reply; vLLM takes its share."""
        shared = cfg.finetuning_type == "lora" and roles.get("ref_model") == roles.get("model")
        frozen = int(roles.get("reward_model") is not None) + int(not shared)
        rows = cfg.per_device_train_batch_size * cfg.num_generations * cfg.ppo_buffer_size
        per_backward = (cfg.mini_batch_size or rows) / cfg.gradient_accumulation_steps
        length = (cfg.cutoff_len + cfg.max_new_tokens) / cfg.cutoff_len
        sequences = max(1, round(per_backward * length / cfg.per_device_train_batch_size))
        trained = 2 if cfg.advantage_estimator == "gae" else 1
        profile = {"sequences": sequences, "trained": trained, "frozen": frozen}
        return profile | vllm_share(cfg)

    @staticmethod
    def key_files(cfg: Any) -> list[str]:
        """The reward functions' modules: their code decides the rewards."""
        return reward_func_files(cfg.reward_funcs)

    def run(self, ctx: Context, cfg: PpoConfig) -> None:
        from stages.rl.ppo_train import train

        train(ctx, cfg)


def check_ppo(cfg: PpoConfig) -> list[tuple[str, str]]:
    """Compile-time rules between PPO's own fields (and the training fields PPO cannot use)."""
    problems = _unsupported(cfg) + check_reward_funcs(cfg.reward_funcs)
    group = cfg.advantage_estimator == "group"
    if group and cfg.num_generations < 2:
        problems.append(("num_generations", "the group estimator compares replies: set >= 2"))
    rows = cfg.per_device_train_batch_size * cfg.num_generations * cfg.ppo_buffer_size
    mb = cfg.mini_batch_size
    if mb is not None and (mb < 1 or rows % mb):
        problems.append(
            (
                "mini_batch_size",
                f"must divide the rollout of {rows} rows "
                "(per_device_train_batch_size x num_generations x ppo_buffer_size)",
            )
        )
    if cfg.critic_warmup_steps and cfg.advantage_estimator != "gae":
        problems.append(("critic_warmup_steps", f"{cfg.advantage_estimator} has no critic"))
    for name, bad, why in _ranges(cfg):
        if bad:
            problems.append((name, why))
    return problems


def _ranges(cfg: PpoConfig) -> list[tuple[str, bool, str]]:
    return [
        ("ppo_epochs", cfg.ppo_epochs < 1, "must be >= 1"),
        ("ppo_buffer_size", cfg.ppo_buffer_size < 1, "must be >= 1"),
        ("num_generations", cfg.num_generations < 1, "must be >= 1"),
        ("temperature", cfg.temperature <= 0, "must be > 0 (replies are sampled)"),
        ("top_p", not 0 < cfg.top_p <= 1, "must be in (0, 1]"),
        ("top_k", cfg.top_k < 0, "must be >= 0 (0: off)"),
        ("max_new_tokens", cfg.max_new_tokens < 1, "must be >= 1"),
        ("dual_clip", cfg.dual_clip is not None and cfg.dual_clip <= 1, "must be > 1"),
        ("target_kl", cfg.target_kl is not None and cfg.target_kl <= 0, "must be > 0"),
        ("kl_horizon", cfg.kl_horizon <= 0, "must be > 0"),
        ("reward_clip", cfg.reward_clip is not None and cfg.reward_clip <= 0, "must be > 0"),
        ("gradient_accumulation_steps", cfg.gradient_accumulation_steps < 1, "must be >= 1"),
    ]


# training fields PPO does not use, with what to do instead
_NOT_IN_PPO = {
    "optim": "ppo trains with AdamW: optim: adamw_torch",
    "use_galore": "GaLore is not wired into ppo",
    "use_apollo": "APOLLO is not wired into ppo",
    "use_badam": "BAdam is not wired into ppo",
    "loraplus_lr_ratio": "LoRA+ is not wired into ppo",
    "neftune_noise_alpha": "NEFTune is for supervised training",
    "group_by_length": "rollouts are not grouped by length",
    "early_stopping_patience": "ppo has no validation loss to stop on",
    "enable_liger_kernel": "Liger kernels are not wired into ppo",
    "precision": "ppo trains in fp32 or bf16 (no fp16 loss scaling): precision: auto | fp32 | bf16",
    "report_to": "ppo logs to train_log.jsonl and TensorBoard: report_to: tensorboard | none",
}


def _unsupported(cfg: PpoConfig) -> list[tuple[str, str]]:
    used = {
        "optim": cfg.optim != "adamw_torch",
        "use_galore": cfg.use_galore,
        "use_apollo": cfg.use_apollo,
        "use_badam": cfg.use_badam,
        "loraplus_lr_ratio": cfg.loraplus_lr_ratio is not None,
        "neftune_noise_alpha": cfg.neftune_noise_alpha is not None,
        "group_by_length": cfg.group_by_length,
        "early_stopping_patience": cfg.early_stopping_patience is not None,
        "enable_liger_kernel": cfg.enable_liger_kernel,
        "precision": cfg.precision == "fp16",
        "report_to": cfg.report_to not in ("tensorboard", "none"),
    }
    return [(name, _NOT_IN_PPO[name]) for name, on in used.items() if on]


def require_reward_source(cfg: PpoConfig, ctx: Context) -> None:
    """The run-time twin of check_inputs, for a stage run alone from a spec."""
    if ctx.inputs.get("reward_model") is None and not cfg.reward_funcs:
        raise UserError(f"stages.{ctx.name}.reward_model: {NO_REWARD}")
