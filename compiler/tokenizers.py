"""A stage whose model inputs must read the same token ids (dpo's policy and reference, ppo's
policy, reference and reward model) is refused at compile time when they start from models with
different tokenizers: the log-probability of a reply means nothing under another vocabulary."""

from __future__ import annotations

import hashlib
from pathlib import Path

import networkx as nx

from compiler.errors import Issue
from compiler.graph import Node
from stages.base import MODEL, REWARD_MODEL

MODEL_TYPES = {MODEL, REWARD_MODEL}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")


def check_shared_tokenizers(graph: nx.DiGraph, issues: list[Issue]) -> None:
    """For each stage with several model inputs, every one must start from a base model with the
    first one's tokenizer (the same base node, or bases whose tokenizer files are identical)."""
    for name in graph.nodes:
        node: Node = graph.nodes[name]["node"]
        if getattr(node.stage, "compares_text", False):  # eval: replies meet as text
            continue
        roles = [r for r, want in node.stage.inputs.items() if set(want.accepts) & MODEL_TYPES]
        roles = [r for r in roles if r in node.inputs]
        if len(roles) < 2:
            continue
        first = roles[0]
        want = _tokenizer_of(graph, node.inputs[first])
        for role in roles[1:]:
            have = _tokenizer_of(graph, node.inputs[role])
            if want is not None and have is not None and have != want:
                issues.append(
                    Issue(
                        f"{node.path}.{role}",
                        f"'{node.inputs[role]}' starts from a model whose tokenizer differs from "
                        f"that of {first} '{node.inputs[first]}'",
                        f"train {role} from the same base model as {first}",
                    )
                )


def _tokenizer_of(graph: nx.DiGraph, producer: str) -> str | None:
    """An identity of the tokenizer a chain starts from: its base node's model name, or the
    digest of a local directory's tokenizer files (None: nothing to compare)."""
    chain = [producer, *nx.ancestors(graph, producer)]
    bases = [graph.nodes[n]["node"] for n in chain if graph.nodes[n]["node"].kind == "base"]
    if len(bases) != 1:
        return None
    base = bases[0]
    local = base.local_paths.get("name_or_path")
    if local and Path(local).is_dir():
        files = [Path(local) / f for f in TOKENIZER_FILES if (Path(local) / f).is_file()]
        if files:
            digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
            return f"files:{digest}"
    return f"name:{base.config.name_or_path}"
