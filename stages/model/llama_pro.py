"""LLaMA Pro block expansion: add capacity for new knowledge without disturbing the old.

Copies of existing decoder layers are inserted evenly, each with its attention and MLP output
projections zeroed, so every new block starts as the identity (the residual passes straight
through) and the expanded model computes exactly what the original did. Training only the new
blocks then adds knowledge while the original layers stay untouched.
"""

from __future__ import annotations

import copy
from typing import Any

from stages.base import UserError

# output projections of a decoder layer, by family (Llama, Qwen, Mistral, Gemma, Phi-3 ...)
OUTPUT_PROJECTIONS = ("o_proj", "down_proj", "dense", "fc2", "out_proj", "c_proj")


def decoder_layers(model: Any) -> tuple[Any, Any]:
    """(parent module, its ModuleList `layers` of decoder blocks), wherever the architecture
    keeps them."""
    import torch

    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, torch.nn.ModuleList):
            return module, layers
    raise UserError("llama_pro_blocks: this model has no `layers` list of decoder blocks")


def expand_blocks(model: Any, num_new: int) -> list[int]:
    """Insert `num_new` identity blocks, one after each of `num_new` equal groups of layers;
    returns the indices of the new layers in the expanded model."""
    import torch

    parent, layers = decoder_layers(model)
    count = len(layers)
    if num_new <= 0 or count % num_new:
        valid = ", ".join(str(d) for d in range(1, count + 1) if count % d == 0)
        raise UserError(
            f"llama_pro_blocks: {num_new} new blocks cannot be spread evenly over {count} layers "
            f"(choose one of: {valid})"
        )
    group = count // num_new
    expanded, new = [], []
    for i, layer in enumerate(layers):
        expanded.append(layer)
        if (i + 1) % group == 0:
            copied = copy.deepcopy(layer)
            _zero_outputs(copied)
            new.append(len(expanded))
            expanded.append(copied)
    parent.layers = torch.nn.ModuleList(expanded)
    for i, layer in enumerate(parent.layers):
        for module in layer.modules():  # the KV cache is indexed by layer
            if hasattr(module, "layer_idx"):
                module.layer_idx = i
    _expand_config(model.config, count, group)
    return new


def _zero_outputs(layer: Any) -> None:
    import torch

    zeroed = 0
    for name, module in layer.named_modules():
        if name.split(".")[-1] in OUTPUT_PROJECTIONS and isinstance(module, torch.nn.Linear):
            with torch.no_grad():
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
            zeroed += 1
    if zeroed < 2:
        raise UserError(
            "llama_pro_blocks: cannot find the attention and MLP output projections of a "
            f"{type(layer).__name__} (known names: {', '.join(OUTPUT_PROJECTIONS)})"
        )


def _expand_config(config: Any, count: int, group: int) -> None:
    """num_hidden_layers, and any per-layer list (e.g. layer_types), extended the same way."""
    config.num_hidden_layers = count + count // group
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == count:
            grown = []
            for i, item in enumerate(value):
                grown.append(item)
                if (i + 1) % group == 0:
                    grown.append(item)
            setattr(config, key, grown)


def train_only(model: Any, layer_indices: list[int]) -> None:
    """requires_grad for the parameters of the given decoder layers only."""
    _, layers = decoder_layers(model)
    for param in model.parameters():
        param.requires_grad_(False)
    for i in layer_indices:
        for param in layers[i].parameters():
            param.requires_grad_(True)
