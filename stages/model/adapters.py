"""What trains: full weights, a frozen model with a few layers unfrozen (or LLaMA Pro's new
blocks), or a PEFT LoRA adapter (rsLoRA, DoRA, PiSSA / LoftQ init, LoRA+ learning rates, extra
modules to save), on a base quantised by bitsandbytes for QLoRA."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.model.portable import stable_adapter_config

LOFTQ_BASE = "loftq_base"  # LoftQ rewrites the base weights: the artifact keeps its own copy


def trainable_model(
    upstream: Path,
    cfg: Any,
    upstream_key: str | None,
    resolve: Callable[[str], Path],
    head: str | None = None,
    frozen_dtype: Any = None,
) -> tuple[Any, str | None]:
    """The model to train and, for LoRA, the key of the full-weights model it adapts.

    An upstream adapter is continued (LoRA), or merged first (full, freeze, and LoRA with
    create_new_adapter: the new adapter's base is then the upstream adapter artifact). `head`
    puts another head on the upstream model (`reward`: a scalar head, which always trains).
    `frozen_dtype` loads a LoRA's frozen base in that dtype (see `frozen_dtype`); what trains
    stays fp32.
    """
    from stages.model.loading import REWARD, load_model, merged, read_model_json

    meta = read_model_json(upstream)
    lora = cfg.finetuning_type == "lora"
    new_head = head is not None and head != meta.get("head")
    options = {
        "quantization": quantization(cfg),
        "attn_implementation": cfg.attn_implementation,
        "rope_scaling": cfg.rope_scaling,
        "head": head,
        "dtype": frozen_dtype if lora else None,
    }
    quant = options["quantization"]
    if meta["format"] == "adapter":
        continue_adapter = lora and not cfg.create_new_adapter and not new_head
        model = load_model(upstream, resolve, trainable_adapter=continue_adapter, **options)
        if continue_adapter:
            return _upcast_trainable(model), meta["base"]
        model = merged(model)
    else:
        model = load_model(upstream, resolve, **options)
    if lora:
        if quant is not None:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, cfg.gradient_checkpointing)
        return _upcast_trainable(add_lora(model, cfg, reward=head == REWARD)), upstream_key
    if cfg.finetuning_type == "freeze" and cfg.llama_pro_blocks:
        from stages.model.llama_pro import expand_blocks, train_only

        train_only(model, expand_blocks(model, cfg.llama_pro_blocks))
    elif cfg.finetuning_type == "freeze":
        freeze(
            model,
            cfg.freeze_trainable_layers,
            cfg.freeze_trainable_modules,
            cfg.freeze_extra_modules,
        )
    if head == REWARD:
        model.score.requires_grad_(True)  # a new head always trains
    return model, None


def frozen_dtype(cfg: Any) -> Any:
    """bf16 for the frozen base of a LoRA trained under bf16 (LLaMA-Factory's choice too): half
    the weights' memory and no cast of every weight in every step, while the adapter (and a
    reward head) train in fp32 under autocast. None (the checkpoint's dtype) otherwise."""
    from stages.model.training import precision

    if cfg.finetuning_type != "lora" or cfg.quantization_bit or not precision(cfg.precision)[0]:
        return None
    import torch

    return torch.bfloat16


def _upcast_trainable(model: Any) -> Any:
    """What trains in fp32, whatever dtype the frozen weights were loaded in."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def autocast_inputs(model: Any, on: bool) -> None:
    """Whether a LoRA layer leaves its input's dtype to autocast (on) or casts it to its
    adapter's (PEFT's default, needed outside autocast). Under bf16 autocast PEFT's cast is a
    round trip through fp32 in every adapted layer: turning it off measured 6% off a LoRA step
    of SmolLM2 on this CPU."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = not on


def quantization(cfg: Any) -> Any:
    """QLoRA: the frozen base in 4-bit (nf4 / fp4, optionally double-quantised) or 8-bit."""
    if not cfg.quantization_bit:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if cfg.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quantization_type,
        bnb_4bit_use_double_quant=cfg.double_quantization,
        bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32,
    )


def add_lora(model: Any, cfg: Any, reward: bool = False) -> Any:
    """A LoRA adapter; on a reward model PEFT also trains and saves the scalar head in full."""
    from peft import LoftQConfig, LoraConfig, get_peft_model

    target = "all-linear" if cfg.lora_target in (None, "all") else cfg.lora_target
    init: bool | str = True
    loftq = {}
    if cfg.pissa_init:
        init = "pissa"
    elif cfg.loftq_bits:
        _require_cuda("loftq_bits", "PEFT's LoftQ initialisation quantises on the GPU")
        init = "loftq"
        loftq = {"loftq_config": LoftQConfig(loftq_bits=cfg.loftq_bits, loftq_iter=cfg.loftq_iter)}
    peft_cfg = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        init_lora_weights=init,
        modules_to_save=cfg.additional_target,
        task_type="SEQ_CLS" if reward else "CAUSAL_LM",
        **loftq,
    )
    return get_peft_model(model, peft_cfg)


def freeze(model: Any, layers: int, modules: str | list[str], extra: list[str] | None) -> None:
    """Train only the last `layers` decoder layers (the first ones when negative), restricted to
    `modules` (e.g. ["mlp", "self_attn"], or "all"), plus any `extra` non-layer modules."""
    count = model.config.num_hidden_layers
    chosen = range(count - layers, count) if layers > 0 else range(-layers)
    wanted = None if modules == "all" else ([modules] if isinstance(modules, str) else modules)
    layer_re = re.compile(r"\.layers\.(\d+)\.")
    for name, param in model.named_parameters():
        m = layer_re.search(name)
        in_layer = m is not None and int(m.group(1)) in chosen
        module_ok = wanted is None or any(f".{w}." in name for w in wanted)
        is_extra = any(e in name for e in extra or [])
        param.requires_grad_(bool((in_layer and module_ok) or is_extra))


def loraplus_optimizer(model: Any, cfg: Any) -> Any:
    """LoRA+: B matrices learn `loraplus_lr_ratio` times faster than A."""
    import torch
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model=model,
        optimizer_cls=torch.optim.AdamW,
        lr=cfg.learning_rate,
        loraplus_lr_ratio=cfg.loraplus_lr_ratio,
        weight_decay=cfg.weight_decay,
    )


def _require_cuda(name: str, why: str) -> None:
    import torch

    from stages.base import UserError

    if not torch.cuda.is_available():
        raise UserError(f"{name}: needs a CUDA GPU ({why}); none is visible here")


PISSA_INIT = "pissa_init"


def remember_init(model: Any, cfg: Any, work: Path) -> None:
    """PiSSA changes the base weights it adapts; keep the initial adapter so the trained one can
    be converted into an ordinary LoRA that applies to the untouched base."""
    init = work / PISSA_INIT
    if cfg.finetuning_type != "lora" or not cfg.pissa_init or init.exists():
        return
    config = model.peft_config["default"]
    config.init_lora_weights = True
    model.save_pretrained(str(init))
    config.init_lora_weights = "pissa"


def save_trained(model: Any, out: Path, cfg: Any, work: Path, state: Any = None) -> None:
    """Weights (or the adapter) plus the generation config: where generation stops. Only the
    trained adapter is saved, not a frozen copy a trainer added beside it (TRL's "ref").
    `state`: the whole state dict when the model itself holds only shards (ZeRO-3)."""
    lora = cfg.finetuning_type == "lora"
    only = {"selected_adapters": ["default"]} if lora else {}
    if state is not None:
        only["state_dict"] = state
    if cfg.finetuning_type == "lora" and cfg.pissa_init:
        model.save_pretrained(
            str(out), path_initial_model_for_weight_conversion=str(work / PISSA_INIT), **only
        )
    else:
        model.save_pretrained(str(out), **only)
    stable_adapter_config(out)
    generation = getattr(model.get_base_model(), "generation_config", None) if lora else None
    if generation is not None:  # an adapter's save leaves the generation config out
        generation.save_pretrained(str(out))
    if cfg.finetuning_type == "lora" and cfg.loftq_bits:
        save_base_weights(model, out / LOFTQ_BASE)


def save_base_weights(model: Any, out: Path) -> None:
    """The frozen base under a PEFT model, adapter layers left out, as an ordinary full model."""
    from stages.model.loading import write_model_json

    base = model.get_base_model()
    state = {}
    for name, tensor in base.state_dict().items():
        if "lora_" in name or ".modules_to_save." in name:
            continue
        state[name.replace(".base_layer.", ".").replace(".original_module.", ".")] = tensor
    base.save_pretrained(str(out), state_dict=state)
    write_model_json(out, "full")
