"""Config -> validated spec -> DAG -> keys: the whole compile step, torch-free."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from compiler.digests import DigestCache
from compiler.errors import CompileError, Issue
from compiler.fingerprint import fingerprint
from compiler.graph import Node, build_graph
from compiler.schema import PipelineSpec, validate
from compiler.tokenizers import check_shared_tokenizers


@dataclass
class Compiled:
    spec: PipelineSpec
    graph: nx.DiGraph

    def nodes(self) -> list[Node]:
        return [self.graph.nodes[n]["node"] for n in nx.topological_sort(self.graph)]


def compile_pipeline(raw: Mapping[str, Any], base_dir: Path, digests: DigestCache) -> Compiled:
    """Raises CompileError (all issues at once) on a bad config."""
    issues: list[Issue] = []
    spec = validate(raw, issues, base_dir)
    graph = build_graph(spec, base_dir, issues)
    check_shared_tokenizers(graph, issues)
    if issues:
        raise CompileError(issues)
    fingerprint(graph, digests, base_dir, spec.cache_version)
    return Compiled(spec, graph)
