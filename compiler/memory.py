"""Estimated peak memory of a training stage, from the model's shape and the stage's config.

weights (by precision or quantisation) + gradients and AdamW state of what trains (by method)
+ activations (by batch, cutoff_len, checkpointing) + logits. A planning figure, not a promise:
it is printed by `plan` and compared with the target device's memory there.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from compiler.graph import Node

GIB = 2**30
TINY_VOCAB = 100  # the built-in char-level tokenizer (stages/model/tiny.py)
RUNTIME = 0.5 * GIB  # torch, transformers and friends resident (CPU), or the CUDA context


@dataclass(frozen=True)
class Shape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tied: bool = True

    @property
    def linear_params(self) -> int:
        """Weights of the decoder layers' linear maps (attention and MLP)."""
        kv = self.hidden // self.heads * self.kv_heads
        attn = 2 * self.hidden * self.hidden + 2 * self.hidden * kv
        return self.layers * (attn + 3 * self.hidden * self.intermediate)

    @property
    def lora_dims(self) -> int:
        """Sum over linear maps of (in + out): LoRA rank r trains r times this."""
        kv = self.hidden // self.heads * self.kv_heads
        attn = 2 * (2 * self.hidden) + 2 * (self.hidden + kv)
        return self.layers * (attn + 3 * (self.hidden + self.intermediate))

    @property
    def params(self) -> int:
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return embed + self.linear_params + self.layers * 2 * self.hidden + self.hidden


def shape_of(base: Node) -> Shape | None:
    """The base model's shape: from the tiny model's config, or a local config.json."""
    cfg = base.config
    if "name_or_path" in base.local_paths:
        file = Path(base.local_paths["name_or_path"]) / "config.json"
        if not file.is_file():
            return None
        return shape_of_config(json.loads(file.read_text()))
    if cfg.name_or_path != "tiny":
        return None  # a hub id: nothing local to read
    return Shape(
        TINY_VOCAB,
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.intermediate_size,
    )


def shape_of_config(c: dict[str, Any]) -> Shape:
    """From a Hugging Face config.json."""
    heads = c.get("num_attention_heads", 1)
    return Shape(
        c.get("vocab_size", 0),
        c.get("hidden_size", 0),
        c.get("num_hidden_layers", 0),
        heads,
        c.get("num_key_value_heads", heads),
        c.get("intermediate_size", 0),
        c.get("tie_word_embeddings", False),
    )


def estimate(
    shape: Shape,
    cfg: Any,
    zero_stage: int = 0,
    world: int = 1,
    profile: dict[str, float] | None = None,
) -> dict[str, float]:
    """Bytes of each part, for one of `world` devices; ZeRO stage 1 shards the optimizer state
    across them, stage 2 the gradients too, stage 3 the weights too.

    `profile` is the stage kind's own count of what it holds (its `memory_profile(cfg)` hook):
    `sequences` per example (dpo: chosen and rejected), `trained` models (ppo: actor and critic),
    `frozen` models of the same shape (a reference, a reward model), and `logits` 0 for a model
    with no vocabulary projection in training (a reward model's scalar head)."""
    profile = profile or {}
    sequences, trained_models = profile.get("sequences", 1), profile.get("trained", 1)
    frozen_models = profile.get("frozen", 0)

    def shard(stage: int) -> int:
        return world if zero_stage >= stage else 1

    wbytes = {4: 0.5625, 8: 1.0}.get(
        cfg.quantization_bit or 0, 2.0 if cfg.precision in ("bf16", "fp16") else 4.0
    )
    if cfg.finetuning_type == "lora":
        trainable = cfg.lora_rank * shape.lora_dims
    elif cfg.finetuning_type == "freeze":
        trainable = (
            shape.linear_params
            * min(abs(cfg.freeze_trainable_layers), shape.layers)
            // shape.layers
        )
    else:
        trainable = shape.params
    tokens = cfg.per_device_train_batch_size * cfg.cutoff_len * sequences
    abytes = 2 if cfg.precision in ("bf16", "fp16") else 4
    # kept for backward, per token and layer: attention inputs / outputs and norms (~6h), the MLP's
    # gate, up, activation and product (4 x intermediate), attention scores and probabilities
    # (2 x heads x cutoff_len, the eager / CPU path)
    per_token = 6 * shape.hidden + 4 * shape.intermediate + 2 * shape.heads * cfg.cutoff_len
    checkpointing = cfg.gradient_checkpointing is True  # "auto" is decided by the caller
    layers = 1 if checkpointing else shape.layers
    saved = tokens * shape.hidden * abytes * shape.layers if checkpointing else 0
    weights = shape.params * wbytes / shard(3)
    parts = {
        "runtime": RUNTIME,
        "weights": weights * trained_models,
        "gradients": trainable * trained_models * 4 / shard(2),
        "optimizer": trainable * trained_models * 8 / shard(1),
        "activations": tokens * per_token * abytes * layers + saved,
        # logits, log-softmax, their gradients (fp32)
        "logits": tokens * shape.vocab * 4 * 4 * profile.get("logits", 1),
    }
    if frozen_models:
        parts["frozen"] = weights * frozen_models
    return parts


def stage_memory(
    graph: nx.DiGraph,
    name: str,
    find: Callable[[str], Path | None] | None = None,
    launcher: Any = None,
    **overrides: Any,
) -> dict[str, float] | None:
    """The estimate for a training node (one with a batch size), else None. A base model named
    by hub id or wheel is read from its artifact when the store (`find`) has it. `overrides`
    replace config fields (e.g. gradient_checkpointing=False); `launcher` gives the ZeRO stage
    and the number of processes. A profile's `device_share` (a colocated vLLM engine's
    gpu_memory_utilization) is that fraction of the target device's memory."""
    node: Node = graph.nodes[name]["node"]
    if not hasattr(node.config, "per_device_train_batch_size"):
        return None
    bases = [graph.nodes[a]["node"] for a in nx.ancestors(graph, name)]
    base = next((b for b in bases if b.kind == "base"), None)
    if base is None:
        return None
    shape = shape_of(base)
    built = find(base.key) if shape is None and find is not None else None
    if built is not None and (built / "config.json").is_file():
        shape = shape_of_config(json.loads((built / "config.json").read_text()))
    if shape is None:
        return None
    cfg = dataclasses.replace(node.config, **overrides)
    zero = (getattr(launcher, "zero_stage", 0), getattr(launcher, "nproc_per_node", 1))
    hook = getattr(node.stage, "memory_profile", None)
    roles = {r: node.inputs.get(r) for r in node.stage.inputs}
    profile = hook(cfg, roles) if hook else {}
    parts = estimate(shape, cfg, *zero, profile=profile)
    if profile.get("device_share"):  # an engine (vLLM) takes this fraction of the device
        device = device_memory(getattr(launcher, "device_memory_gb", None))
        parts["engine"] = profile["device_share"] * device
    return parts


def checkpointing_needed(
    graph: nx.DiGraph, name: str, find: Callable[[str], Path | None] | None, launcher: Any
) -> tuple[bool, float] | None:
    """`gradient_checkpointing: auto` decided: (on?, bytes needed without it), or None when
    there is nothing to estimate."""
    without = memory_without_checkpointing(graph, name, find, launcher)
    if without is None:
        return None
    return without > device_memory(getattr(launcher, "device_memory_gb", None)), without


def memory_without_checkpointing(
    graph: nx.DiGraph, name: str, find: Callable[[str], Path | None] | None, launcher: Any
) -> float | None:
    """Total estimated bytes with gradient checkpointing off: what `auto` compares."""
    parts = stage_memory(graph, name, find, launcher, gradient_checkpointing=False)
    return sum(parts.values()) if parts is not None else None


def device_memory(configured_gb: float | None) -> float:
    """Bytes of the target device: configured, else this machine's RAM (GPU size needs torch,
    which planning never imports)."""
    if configured_gb:
        return configured_gb * GIB
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def describe(parts: dict[str, float], device: float) -> str:
    total = sum(parts.values())
    detail = ", ".join(f"{k} {v / GIB:.2f}" for k, v in parts.items())
    warn = (
        f"  WARNING: exceeds the target device ({device / GIB:.1f} GiB)" if total > device else ""
    )
    return f"memory ~{total / GIB:.2f} GiB ({detail}){warn}"
