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

# output projections of a decoder layer, by family (Llama, Qwen, Mistral, Gemma, Phi-3 ...); an
# nn.Linear of that name, or a fused parameter of that name (MoE experts in transformers 5)
OUTPUT_PROJECTIONS = ("o_proj", "down_proj", "dense", "fc2", "out_proj", "c_proj")
# config lists that hold layer *indices* (renumbered), not one entry per layer (extended)
INDEX_LISTS = ("mlp_only_layers",)


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
    planned = copy.deepcopy(model.config)
    _expand_config(planned, count, group)
    _check_rebuildable(planned, expanded)  # before anything changes: a refusal leaves the model
    _expand_config(model.config, count, group)
    parent.layers = torch.nn.ModuleList(expanded)
    for i, layer in enumerate(parent.layers):
        for module in layer.modules():  # the KV cache is indexed by layer
            if hasattr(module, "layer_idx"):
                module.layer_idx = i
    return new


def _zero_outputs(layer: Any) -> None:
    """Zero every output projection: nn.Linear weights and biases, and fused expert tensors
    (`experts.down_proj`, `experts.down_proj_bias`), so each residual branch adds nothing."""
    import torch

    names = set(OUTPUT_PROJECTIONS) | {f"{n}_bias" for n in OUTPUT_PROJECTIONS}
    owners = set()
    for name, module in layer.named_modules():
        leaf = name.split(".")[-1]
        if leaf in OUTPUT_PROJECTIONS and isinstance(module, torch.nn.Linear):
            with torch.no_grad():
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
            owners.add(name)
        for pname, param in module.named_parameters(recurse=False):
            if pname in names and not isinstance(module, torch.nn.Linear):
                with torch.no_grad():
                    param.zero_()
                owners.add(f"{name}.{pname}".removesuffix("_bias"))
    if len(owners) < 2:
        raise UserError(
            "llama_pro_blocks: cannot find the attention and MLP output projections of a "
            f"{type(layer).__name__} (known names: {', '.join(OUTPUT_PROJECTIONS)})"
        )


def _expand_config(config: Any, count: int, group: int) -> None:
    """num_hidden_layers; per-layer lists (e.g. layer_types) extended the same way as the layers;
    lists of layer indices (e.g. mlp_only_layers) renumbered, a copy following its original."""
    config.num_hidden_layers = count + count // group

    def where(i: int) -> int:  # index of original layer i in the expanded model
        return i + i // group

    for key in INDEX_LISTS:
        value = getattr(config, key, None)
        if isinstance(value, list) and value:
            grown = []
            for i in value:
                grown.append(where(i))
                if (i + 1) % group == 0:
                    grown.append(where(i) + 1)
            setattr(config, key, grown)
    for key, value in list(vars(config).items()):
        if key not in INDEX_LISTS and isinstance(value, list) and len(value) == count:
            grown = []
            for i, item in enumerate(value):
                grown.append(item)
                if (i + 1) % group == 0:
                    grown.append(item)
            setattr(config, key, grown)


def _check_rebuildable(config: Any, layers: list[Any]) -> None:
    """The saved config must rebuild the same layer at every index, or reloading the expanded
    model would drop weights (MoE models that choose dense or sparse layers by position)."""
    import torch

    for i, layer in enumerate(layers):
        try:
            with torch.device("meta"):
                fresh = type(layer)(config, i)
        except Exception:  # a layer that cannot be built this way: nothing to compare with
            return
        want = {n: tuple(p.shape) for n, p in layer.named_parameters()}
        got = {n: tuple(p.shape) for n, p in fresh.named_parameters()}
        if want != got:
            raise UserError(
                f"llama_pro_blocks: {type(layer).__name__} layers are laid out by position "
                f"(the config would rebuild layer {i} differently after the expansion), so "
                "this architecture cannot be expanded"
            )


def train_only(model: Any, layer_indices: list[int]) -> None:
    """requires_grad for the parameters of the given decoder layers only."""
    _, layers = decoder_layers(model)
    for param in model.parameters():
        param.requires_grad_(False)
    for i in layer_indices:
        for param in layers[i].parameters():
            param.requires_grad_(True)
