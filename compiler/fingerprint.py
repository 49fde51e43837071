"""Keys: sha256 of the canonical JSON of everything that determines an artifact's content.

That is the kind, the semantic config (volatile fields left out), the keys of the inputs by role,
content digests of the data files and local model paths, a digest of the stage's code, the versions
of the libraries that compute it, and the user's `cache_version`. Nothing volatile (absolute paths,
times, worker counts) goes in, and a value that cannot be canonicalised fails loudly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import sys
from pathlib import Path
from typing import Any

import networkx as nx

from compiler.digests import DigestCache
from compiler.graph import Node
from stages.base import semantic_fields
from stages.data.spec import DatasetSpec

LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets", "tokenizers")
STAGES_DIR = Path(__file__).resolve().parent.parent / "stages"


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, no NaN; anything but JSON scalars, lists and dicts is refused."""
    _check(value, "")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _check(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"cannot fingerprint non-string key {k!r} at {where or '<root>'}")
            _check(v, f"{where}.{k}" if where else k)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check(v, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise TypeError(f"cannot fingerprint non-finite float at {where}")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise TypeError(f"cannot fingerprint {type(value).__name__} at {where or '<root>'}")


def key_of(payload: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = "absent"
    return out


def semantic_config(node: Node) -> dict[str, Any]:
    """The config values that determine content: not volatile, not forwarded to implicit nodes,
    not dataset names (their entries and digests are keyed instead)."""
    skip = set(node.forwarded) | set(node.stage.dataset_fields)
    return {
        f.name: getattr(node.config, f.name)
        for f in dataclasses.fields(node.config)
        if not f.metadata.get("volatile") and f.name not in skip
    }


def code_digest(node: Node, digests: DigestCache) -> str:
    """The stage's module, the shared contract, the helper files the kind declares, and files
    its config names (`key_files(cfg)`: e.g. the modules of rule-based reward functions)."""
    module = Path(sys.modules[node.stage.__module__].__file__ or "")
    files = {module.name: module, **{f: STAGES_DIR / f for f in ("base.py", *node.stage.code)}}
    named = getattr(node.stage, "key_files", None)
    files |= {f: Path(f) for f in (named(node.config) if named else [])}
    parts = [f"{name}\0{digests.file(path)}" for name, path in sorted(files.items())]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def fingerprint(
    graph: nx.DiGraph,
    digests: DigestCache,
    base_dir: Path,
    cache_version: str = "",
    versions: dict[str, str] | None = None,
) -> None:
    """Fill `node.payload` and `node.key` for every node, in topological order."""
    versions = library_versions() if versions is None else versions
    for name in nx.topological_sort(graph):
        node: Node = graph.nodes[name]["node"]
        config = semantic_config(node)
        node.payload = {
            "kind": node.kind,
            "config": {k: v for k, v in config.items() if k not in node.local_paths},
            "inputs": {r: graph.nodes[src]["node"].key for r, src in sorted(node.inputs.items())},
            "data": {f: [_dataset_part(e, digests) for e in es] for f, es in node.datasets.items()},
            "paths": {f: digests.tree(Path(p)) for f, p in node.local_paths.items()},
            "code": code_digest(node, digests),
            "versions": versions,
            "cache_version": cache_version,
        }
        try:
            node.key = key_of(node.payload)
        except TypeError as e:
            raise TypeError(f"{node.path}: {e}") from None


def _dataset_part(entry: dict[str, Any], digests: DigestCache) -> dict[str, Any]:
    keyed = set(semantic_fields(DatasetSpec)) - {"path"}  # the content digest stands for the path
    spec = {k: v for k, v in entry.items() if k in keyed}
    path = Path(entry["path"])
    if path.exists():
        return {"spec": spec, "digest": digests.tree(path)}
    return {"spec": spec, "hub": entry["path"]}  # a hub dataset: named, cannot be digested
