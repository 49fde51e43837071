"""Decide, per node, whether it is cached, resumes from a checkpoint, or runs, and say why.

The rules are small pure functions over a read-only view of the store, so `plan` and `run`
agree by construction and the rules are testable without a store on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import networkx as nx

from compiler.graph import Node

CACHED, RUN, RESUME = "cached", "run", "resume"


class StoreView(Protocol):
    def has(self, key: str) -> bool: ...
    def damage(self, key: str) -> str | None: ...
    def manifest_for_name(self, name: str) -> dict[str, Any] | None: ...
    def checkpoint(self, key: str) -> int | None: ...


@dataclass
class Step:
    node: Node
    status: str  # cached | run | resume
    reason: str = ""
    checkpoint: int | None = None

    def describe(self) -> str:
        """e.g. 'cached', 'run (learning_rate 1e-4 -> 2e-4)', 'resume from checkpoint 20 (new)'."""
        head = f"resume from checkpoint {self.checkpoint}" if self.status == RESUME else self.status
        return f"{head} ({self.reason})" if self.reason else head


def plan(graph: nx.DiGraph, store: StoreView, forced: frozenset[str] = frozenset()) -> list[Step]:
    """One Step per node, in topological order; `forced` nodes run although cached."""
    steps: dict[str, Step] = {}
    for name in nx.topological_sort(graph):
        node: Node = graph.nodes[name]["node"]
        damage = store.damage(node.key) if store.has(node.key) else None
        if store.has(node.key) and damage is None and name not in forced:
            steps[name] = Step(node, CACHED)
            continue
        stale = [src for src in graph.predecessors(name) if steps[src].status != CACHED]
        if name in forced:
            reason = "forced"
        elif damage:
            reason = f"artifact damaged: {damage}"
        else:
            reason = why_run(node, store.manifest_for_name(name), stale)
        ckpt = store.checkpoint(node.key)
        steps[name] = Step(node, RESUME if ckpt is not None else RUN, reason, ckpt)
    return list(steps.values())


def why_run(node: Node, last: dict[str, Any] | None, stale_upstream: list[str]) -> str:
    """Compare the node's fingerprint payload with the last artifact made under its name.

    Rule order: no earlier artifact -> "new"; semantic config values -> "k old -> new";
    inputs -> "upstream changed (names)"; then data, local paths, code, library versions,
    cache_version, each named.
    """
    if last is None or "payload" not in last:
        return "new"
    old, new = last["payload"], node.payload
    changed = config_changes(old.get("config", {}), new["config"])
    if changed:
        return ", ".join(changed)
    if old.get("inputs") != new["inputs"]:
        return (
            f"upstream changed ({', '.join(stale_upstream)})"
            if stale_upstream
            else "inputs changed"
        )
    for part, label in (("data", "data changed"), ("paths", "model files changed")):
        if old.get(part) != new[part]:
            return f"{label} ({', '.join(sorted(_diff_keys(old.get(part), new[part])))})"
    if old.get("code") != new["code"]:
        return "stage code changed"
    if old.get("versions") != new["versions"]:
        libs = _diff_keys(old.get("versions"), new["versions"])
        return (
            "library versions changed ("
            + ", ".join(
                f"{lib} {(old.get('versions') or {}).get(lib)} -> {new['versions'].get(lib)}"
                for lib in libs
            )
            + ")"
        )
    if old.get("cache_version") != new["cache_version"]:
        return "cache_version changed"
    return "artifact missing"


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k, "<unset>") != new.get(k, "<unset>"):
            out.append(f"{k} {fmt(old.get(k, '<unset>'))} -> {fmt(new.get(k, '<unset>'))}")
    return out


def fmt(value: Any) -> str:
    """Short human form: 0.0001 -> 1e-4, 0.05 -> 0.05, 3.0 -> 3, others as written."""
    if isinstance(value, float):
        mant, exp = f"{value:.6e}".split("e")
        if -2 <= int(exp) < 6:
            return f"{value:.6g}"
        return f"{float(mant):g}e{int(exp)}"
    return str(value)


def _diff_keys(old: dict | None, new: dict) -> list[str]:
    old = old or {}
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
