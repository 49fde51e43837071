"""Tables for the terminal: the plan, and the summary printed at the end of a run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import networkx as nx

from compiler.memory import GIB, checkpointing_needed, describe, device_memory, stage_memory
from compiler.plan import Step, fmt

KEY_CHARS = 12


def table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def plan_lines(
    steps: list[Step],
    graph: nx.DiGraph,
    launcher: Any = None,
    find: Callable[[str], Path | None] | None = None,
) -> list[str]:
    """`name: status (reason)` per node, with its inputs, key prefix and, for training stages,
    the estimated peak memory."""
    out = []
    for s in steps:
        ins = ", ".join(f"{r}={src}" for r, src in sorted(s.node.inputs.items()))
        out.append(f"{s.node.name}: {s.describe()}")
        out.append(
            f"    kind {s.node.kind}  key {s.node.key[:KEY_CHARS]}"
            + (f"  inputs {ins}" if ins else "")
        )
        lengths = _lengths(find(s.node.key) if find and s.status == "cached" else None)
        if lengths:
            out.append("    " + lengths)
        if getattr(s.node.config, "trust_remote_code", False):
            out.append("    trust_remote_code on: the model repository's own Python code will run")
        own = getattr(s.node, "launcher", None) or launcher  # a stage's launcher, else the run's
        distributed = getattr(s.node.stage, "distributed", False)
        if own is not None and distributed and own.name != "inprocess":
            out.append("    " + launch_line(own))
        out.extend("    " + line for line in memory_lines(graph, s.node, find, own))
    return out


def launch_line(cfg: Any) -> str:
    """How a training stage will start: its launcher and processes (and ZeRO)."""
    procs = cfg.nproc_per_node * cfg.nnodes
    where = f" on {cfg.nnodes} nodes" if cfg.nnodes > 1 else ""
    zero = (
        f", ZeRO-{cfg.zero_stage}{' offload' if cfg.offload else ''}"
        if cfg.name == "deepspeed"
        else ""
    )
    return f"launcher {cfg.name}: {procs} process{'es' if procs > 1 else ''}{where}{zero}"


def _lengths(artifact: Path | None) -> str | None:
    """A data artifact's lengths against its cutoff_len (what truncation cost)."""
    from runtime.store import read_manifest
    from stages.data.lengths import describe

    manifest = read_manifest(artifact) if artifact else None
    return describe(manifest.get("metrics", {})) if manifest else None


def memory_lines(
    graph: nx.DiGraph, node: Any, find: Callable[[str], Path | None] | None, launcher: Any
) -> list[str]:
    """The memory estimate of a training node, and what `gradient_checkpointing: auto` chose."""
    overrides = {}
    lines = []
    if getattr(node.config, "gradient_checkpointing", None) == "auto":
        decided = checkpointing_needed(graph, node.name, find, launcher)
        if decided is not None:
            overrides["gradient_checkpointing"] = decided[0]
            why = "needed" if decided[0] else "not needed"
            lines.append(
                f"gradient checkpointing auto -> {'on' if decided[0] else 'off'} "
                f"({why}: {decided[1] / GIB:.2f} GiB without it)"
            )
    parts = stage_memory(graph, node.name, find, launcher, **overrides)
    if parts is None:
        return lines
    device = device_memory(getattr(launcher, "device_memory_gb", None))
    return [describe(parts, device), *lines]


def summary_table(outcomes: list[Any]) -> str:
    rows = []
    for o in outcomes:
        value = o.metrics.get(o.headline) if o.headline else None
        metric = f"{o.headline}={fmt(value)}" if value is not None else ""
        wall = f"{o.wall_s:.1f}s" if o.status not in ("cached", "skipped") else "-"
        rows.append([o.name, o.status, o.key[:KEY_CHARS], wall, metric])
    warnings = [f"warning: {o.name}: {w}" for o in outcomes for w in o.metrics.get("warnings", [])]
    return "\n".join([table(["stage", "status", "key", "wall", "metric"], rows), *warnings])
