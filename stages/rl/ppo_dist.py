"""Data-parallel PPO over torch.distributed (torchrun starts the ranks): each rank rolls out its
own share of a step's prompts, gradients are averaged before each optimizer step, and the logged
statistics are means over all ranks. Every rank then holds the same weights; rank 0 writes.

Advantages are whitened over each rank's own rollout (as one process whitens its buffer), so a
run on W ranks matches one process with W times the prompts per step up to that normalisation.
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist


def start(world_size: int, timeout_s: float | None) -> None:
    """Join the ranks' process group (gloo on CPU, NCCL on GPU), once."""
    if world_size <= 1 or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s or 1800)
    dist.init_process_group(backend=backend, timeout=timeout)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def same_start(*models: Any) -> None:
    """Every rank starts from rank 0's trainable weights (LoRA and value heads start random)."""
    if not active():
        return
    for model in models:
        if model is None:
            continue
        for p in model.parameters():
            if p.requires_grad:
                dist.broadcast(p.data, src=0)


def average_gradients(params: list[torch.Tensor]) -> None:
    """Before an optimizer step: each gradient becomes its mean over the ranks."""
    if not active():
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)


def mean_over_ranks(record: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The record with `keys` replaced by their mean over the ranks (one collective)."""
    if not active():
        return record
    present = [k for k in keys if isinstance(record.get(k), (int, float))]
    values = torch.tensor([float(record[k]) for k in present], dtype=torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values /= dist.get_world_size()
    return {**record, **{k: v.item() for k, v in zip(present, values, strict=True)}}


def my_share(indices: list[int]) -> list[int]:
    """This rank's contiguous slice of a step's prompts."""
    if not active():
        return indices
    rank, world = dist.get_rank(), dist.get_world_size()
    per = len(indices) // world
    return indices[rank * per : (rank + 1) * per]


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
