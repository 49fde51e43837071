"""The fields every training stage shares (method, optimisation, logging), LLaMA-Factory names.

A training stage's config is its data fields plus this dataclass; `check_training` holds the
rules between these fields, so each stage only adds the rules of its own data fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stages.base import bounded, volatile
from stages.model.optimizers import APOLLO_PROJ_TYPES, BADAM_SWITCH
from stages.model.optimizers import check as check_optimizer

METHODS = ("lora", "full", "freeze")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ATTENTION = ("eager", "sdpa", "flash_attention_2")  # flash-attention-2 where it is installed
CHECKPOINTING = (True, False, "auto")
COMPILE = (True, False, "auto")
GALORE_PROJ_TYPES = ("std", "reverse_std", "right", "left", "full")
# what a training stage's key covers besides its own module (paths relative to stages/)
TRAINING_CODE = (
    "model/train_config.py",
    "model/finetune.py",
    "model/loading.py",
    "model/adapters.py",
    "model/portable.py",
    "model/llama_pro.py",
    "model/optimizers.py",
    "model/training.py",
    "model/health.py",
    "model/trainer.py",
    "model/batching.py",
    "model/segments.py",
    "model/compile.py",
    "data/collate.py",
    "data/artifact.py",
)


@dataclass
class TrainConfig:
    # method
    finetuning_type: str = field(default="lora", metadata={"choices": METHODS})
    freeze_trainable_layers: int = 2  # last N decoder layers (first N when negative)
    freeze_trainable_modules: str | list[str] = "all"
    freeze_extra_modules: list[str] | None = None
    llama_pro_blocks: int | None = None  # LLaMA Pro: insert N identity blocks, train only them
    lora_rank: int = bounded(8, min=1)
    lora_alpha: int = bounded(16, above=0)
    lora_dropout: float = bounded(0.0, min=0, max=1)
    lora_target: str | list[str] | None = None  # None: the model preset's targets, else "all"
    use_rslora: bool = False
    use_dora: bool = False
    pissa_init: bool = False
    loftq_bits: int | None = field(default=None, metadata={"choices": (2, 4, 8)})
    loftq_iter: int = 1
    loraplus_lr_ratio: float | None = None
    additional_target: list[str] | None = None  # modules trained in full beside the adapter
    create_new_adapter: bool = False  # merge an upstream adapter, then train a new one
    quantization_bit: int | None = field(default=None, metadata={"choices": (4, 8)})
    quantization_type: str = field(default="nf4", metadata={"choices": ("nf4", "fp4")})
    double_quantization: bool = True
    attn_implementation: str = field(default="sdpa", metadata={"choices": ATTENTION})
    rope_scaling: dict | None = None  # e.g. {rope_type: yarn, factor: 4.0} for longer context
    neftune_noise_alpha: float | None = bounded(None, min=0)
    enable_liger_kernel: bool = False  # fused kernels (GPU, package liger-kernel)
    group_by_length: bool = False  # batches of similar lengths: little padding, no packing
    # memory-saving optimizers for full fine-tuning (stages/model/optimizers.py)
    use_galore: bool = False
    galore_target: str | list[str] = "all"  # all: every linear map in the decoder layers
    galore_rank: int = 16
    galore_update_interval: int = 200
    galore_scale: float = 2.0
    galore_proj_type: str = field(default="std", metadata={"choices": GALORE_PROJ_TYPES})
    galore_layerwise: bool = False
    use_apollo: bool = False
    apollo_target: str | list[str] = "all"
    apollo_rank: int = 16
    apollo_update_interval: int = 200
    apollo_scale: float = 32.0
    apollo_proj: str = field(default="random", metadata={"choices": ("svd", "random")})
    apollo_proj_type: str = field(default="std", metadata={"choices": APOLLO_PROJ_TYPES})
    apollo_scale_type: str = field(default="channel", metadata={"choices": ("channel", "tensor")})
    apollo_layerwise: bool = False
    use_badam: bool = False
    badam_start_block: int | None = None
    badam_switch_mode: str = field(default="ascending", metadata={"choices": BADAM_SWITCH})
    badam_switch_interval: int = 50
    badam_verbose: int = volatile(0)
    # optimisation
    learning_rate: float = bounded(1e-4, above=0)
    per_device_train_batch_size: int = bounded(8, min=1)
    gradient_accumulation_steps: int = bounded(1, min=1)
    num_train_epochs: float = bounded(1.0, min=0)
    max_steps: int = bounded(-1, min=-1)  # -1: num_train_epochs decides
    optim: str = "adamw_torch"
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = bounded(0, min=0)
    weight_decay: float = bounded(0.0, min=0)
    max_grad_norm: float = bounded(1.0, min=0)  # 0: no clipping
    precision: str = field(default="auto", metadata={"choices": PRECISIONS})
    early_stopping_patience: int | None = bounded(
        None, min=1
    )  # evaluations without improvement (needs val_size)
    seed: int = 42
    # recorded, not keyed: these change speed or memory, not what is learned
    # (auto: on when the memory estimate without it exceeds the device)
    gradient_checkpointing: bool | str = volatile("auto", metadata={"choices": CHECKPOINTING})
    # the batch's examples in one row, no padding computed (the padded batch's loss); off, or
    # where the model or method cannot, batches are padded to their longest row
    padding_free: bool = volatile(True)
    # compile the decoder layers (auto: on CUDA; on CPU it measured no faster, stages/model/
    # compile.py); the first steps take the compile time
    torch_compile: bool | str = volatile(False, metadata={"choices": COMPILE})
    logging_steps: int = volatile(10, metadata={"min": 0})
    save_steps: int = volatile(50, metadata={"min": 0})
    save_total_limit: int | None = volatile(2, metadata={"min": 1})
    report_to: str = volatile("tensorboard")  # or none, wandb, mlflow, swanlab (when installed)


def check_training(cfg: TrainConfig) -> list[tuple[str, str]]:
    """Compile-time rules between the shared fields: (field, problem)."""
    problems = []
    lora = cfg.finetuning_type == "lora"
    for name, on in (
        ("quantization_bit", cfg.quantization_bit),
        ("loftq_bits", cfg.loftq_bits),
        ("pissa_init", cfg.pissa_init),
        ("create_new_adapter", cfg.create_new_adapter),
    ):
        if on and not lora:
            problems.append((name, "needs finetuning_type: lora"))
    if cfg.loftq_bits and cfg.quantization_bit:
        problems.append(
            ("loftq_bits", "LoftQ initialises from full weights: drop quantization_bit")
        )
    if cfg.loftq_bits and cfg.pissa_init:
        problems.append(("loftq_bits", "choose one initialisation: loftq_bits or pissa_init"))
    if cfg.llama_pro_blocks is not None and cfg.llama_pro_blocks <= 0:
        problems.append(("llama_pro_blocks", "must be a positive number of blocks"))
    if cfg.llama_pro_blocks is not None and cfg.finetuning_type != "freeze":
        problems.append(
            ("llama_pro_blocks", "LLaMA Pro trains the new blocks: finetuning_type: freeze")
        )
    if cfg.early_stopping_patience is not None and not getattr(cfg, "val_size", 0):
        problems.append(("early_stopping_patience", "needs a validation split: set val_size"))
    if cfg.max_steps <= 0 and cfg.num_train_epochs <= 0:
        problems.append(("num_train_epochs", "set num_train_epochs > 0 or max_steps > 0"))
    return problems + check_optimizer(cfg)
