"""Memory-saving optimizers for full fine-tuning, each through the library that implements it.

GaLore and APOLLO project the gradients of chosen linear layers to a low rank (transformers
integrates both: an `optim` name, target modules and `optim_args`); BAdam trains one block of
decoder layers at a time and switches blocks every few steps (its package wraps a base optimizer,
which we hand to the Trainer). They cut optimizer state, so they apply to `finetuning_type: full`.
"""

from __future__ import annotations

import importlib.util
from typing import Any

ALL_LAYERS = r".*\.layers\.\d+\..*"  # "all": every linear map inside the decoder layers
GALORE_OPTIM = {"adamw_torch": "galore_adamw", "adamw_8bit": "galore_adamw_8bit"}
GALORE_OPTIM["adafactor"] = "galore_adafactor"
PACKAGES = {
    "use_galore": ("galore_torch", "galore-torch"),
    "use_apollo": ("apollo_torch", "apollo-torch"),
    "use_badam": ("badam", "badam"),
}
BADAM_SWITCH = ("ascending", "descending", "random", "fixed")
APOLLO_PROJ_TYPES = ("std", "reverse_std", "right", "left")  # apollo-torch has no "full"


def trainer_args(cfg: Any) -> dict[str, Any]:
    """Extra TrainingArguments for GaLore / APOLLO (an optim name, targets, optim_args)."""
    if cfg.use_galore:
        name = GALORE_OPTIM[cfg.optim] + ("_layerwise" if cfg.galore_layerwise else "")
        args = {
            "rank": cfg.galore_rank,
            "update_proj_gap": cfg.galore_update_interval,
            "scale": cfg.galore_scale,
            "proj_type": cfg.galore_proj_type,
        }
        return _low_rank(name, cfg.galore_target, args)
    if cfg.use_apollo:
        name = "apollo_adamw" + ("_layerwise" if cfg.apollo_layerwise else "")
        args = {
            "rank": cfg.apollo_rank,
            "update_proj_gap": cfg.apollo_update_interval,
            "scale": cfg.apollo_scale,
            "proj": cfg.apollo_proj,
            "proj_type": cfg.apollo_proj_type,
            "scale_type": cfg.apollo_scale_type,
        }
        return _low_rank(name, cfg.apollo_target, args)
    return {}


def _low_rank(name: str, target: str | list[str], args: dict[str, Any]) -> dict[str, Any]:
    return {
        "optim": name,
        "optim_target_modules": targets(target),
        "optim_args": ",".join(f"{k}={v}" for k, v in args.items()),
    }


def targets(target: str | list[str]) -> str | list[str]:
    """transformers matches a string as one regex over the whole module name, a list by name or
    substring: "all" is the decoder layers, "q_proj,v_proj" (LLaMA-Factory style) a list."""
    if target == "all":
        return ALL_LAYERS
    if isinstance(target, str):
        return [name.strip() for name in target.split(",") if name.strip()]
    return target


def build_optimizer(model: Any, cfg: Any, resumed_step: int = 0) -> Any:
    """BAdam's block optimizer over AdamW, or None (the Trainer builds the optimizer). BAdam does
    not checkpoint which block is active: a resumed run recomputes it from the step."""
    if not cfg.use_badam:
        return None
    import torch
    from badam import BlockOptimizer

    named = list(model.named_parameters())
    for _, param in named:  # the block optimizer decides what trains
        param.requires_grad_(True)
    base = torch.optim.AdamW(
        [p for _, p in named], lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    optimizer = BlockOptimizer(
        base_optimizer=base,
        named_parameters_list=named,
        block_prefix_list=None,  # one block per decoder layer
        switch_block_every=cfg.badam_switch_interval,
        start_block=badam_block(cfg, model.config.num_hidden_layers, resumed_step),
        switch_mode=cfg.badam_switch_mode,
        verbose=cfg.badam_verbose,
    )
    optimizer.global_step = resumed_step  # the next switch falls where it would have
    return optimizer


def badam_block(cfg: Any, blocks: int, step: int) -> int | None:
    """The block active at `step` (one block per decoder layer); None lets BAdam choose (random
    order, which a resumed run cannot replay)."""
    if cfg.badam_switch_mode == "random":
        return cfg.badam_start_block
    first = cfg.badam_start_block
    if first is None:
        first = blocks - 1 if cfg.badam_switch_mode == "descending" else 0
    # BAdam switches after every step g with (g + 1) % interval == 0 (g counted from 1)
    switches = (step + 1) // cfg.badam_switch_interval if step else 0
    direction = {"ascending": 1, "descending": -1, "fixed": 0}[cfg.badam_switch_mode]
    return (first + direction * switches) % blocks


def check(cfg: Any) -> list[tuple[str, str]]:
    """Compile-time rules: (field, problem)."""
    chosen = [name for name in PACKAGES if getattr(cfg, name)]
    problems = []
    if len(chosen) > 1:
        problems.append((chosen[1], f"choose one of {', '.join(chosen)}"))
    for name in chosen:
        if cfg.finetuning_type != "full":
            problems.append((name, "trains full weights: finetuning_type: full"))
    if cfg.use_galore and cfg.optim not in GALORE_OPTIM:
        problems.append(("optim", f"GaLore wraps one of: {', '.join(GALORE_OPTIM)}"))
    if cfg.use_galore and cfg.galore_layerwise and cfg.optim == "adafactor":
        # transformers turns relative_step off only for the non-layer-wise GaLore Adafactor
        problems.append(("galore_layerwise", "the layer-wise GaLore Adafactor fails: use adamw"))
    if cfg.use_apollo and cfg.optim != "adamw_torch":
        problems.append(("optim", "APOLLO is an AdamW: leave optim at adamw_torch"))
    layerwise = (cfg.use_galore and cfg.galore_layerwise) or (
        cfg.use_apollo and cfg.apollo_layerwise
    )
    if layerwise and cfg.gradient_accumulation_steps != 1:
        problems.append(("gradient_accumulation_steps", "layer-wise updates need 1"))
    if cfg.use_badam and cfg.loraplus_lr_ratio:
        problems.append(("loraplus_lr_ratio", "LoRA+ builds its own optimizer: drop it with BAdam"))
    return problems


def missing_package(cfg: Any) -> str | None:
    """A one-line install hint when the chosen optimizer's package is not importable."""
    for name, (module, dist) in PACKAGES.items():
        if getattr(cfg, name) and importlib.util.find_spec(module) is None:
            return f"{name} needs {dist}: pip install {dist} (or the [optimizers] extra)"
    return None
