"""Build the stage DAG: explicit stages plus implicit nodes (the base model, tokenization).

Each graph node carries a `Node`; edges point from producer to consumer and carry the role.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from compiler.errors import CompileError, Issue, did_you_mean
from compiler.schema import PipelineSpec
from stages import KINDS
from stages.base import semantic_fields

BASE = "base"


@dataclass
class Node:
    name: str
    kind: str
    config: Any  # the kind's Config dataclass instance
    path: str  # where it is configured, for messages ("stages.sft", "model")
    inputs: dict[str, str] = field(default_factory=dict)  # role -> producer node name
    implicit: bool = False
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)  # field -> entry, abs path
    forwarded: tuple[str, ...] = ()  # config fields consumed by implicit nodes (not keyed here)
    local_paths: dict[str, str] = field(default_factory=dict)  # path field -> absolute path
    key: str = ""
    payload: dict[str, Any] = field(default_factory=dict)  # what the key hashes
    launcher: Any = None  # the stage's own LauncherConfig (None: the pipeline's); never keyed

    @property
    def stage(self) -> Any:
        return KINDS[self.kind]


def build_graph(spec: PipelineSpec, base_dir: Path, issues: list[Issue]) -> nx.DiGraph:
    """The DAG for `spec`; raises one CompileError listing every problem found (with `issues`)."""
    nodes: dict[str, Node] = {}
    if BASE not in spec.stages and spec.model is not None:
        nodes[BASE] = Node(BASE, "base", spec.model, "model", implicit=True)
    for decl in spec.stages.values():
        if decl.config is not None:
            nodes[decl.name] = Node(
                decl.name, decl.kind, decl.config, f"stages.{decl.name}", launcher=decl.launcher
            )
    for decl in spec.stages.values():
        if decl.config is not None:
            _inherit_model_defaults(nodes[decl.name], spec.model)
            before = len(issues)
            _wire(nodes[decl.name], decl.inputs, nodes, issues)
            if len(issues) == before:  # a refused input already has its message
                _check_inputs(nodes[decl.name], nodes, issues)
    used = {src for n in nodes.values() for src in n.inputs.values()}
    if BASE in nodes and nodes[BASE].implicit and BASE not in used:
        del nodes[BASE]  # the implicit model is materialised only when something loads it
    for node in list(nodes.values()):
        _resolve_datasets(node, spec, base_dir, issues)
        _resolve_local_paths(node, base_dir, issues)
    graph = nx.DiGraph()
    for node in nodes.values():
        graph.add_node(node.name, node=node)
    for node in nodes.values():
        for role, src in node.inputs.items():
            if src in nodes:
                graph.add_edge(src, node.name, role=role)
    try:
        cycle = nx.find_cycle(graph)
        names = [u for u, _ in cycle] + [cycle[0][0]]
        issues.append(Issue("stages", "cycle: " + " -> ".join(names), "break one of the links"))
    except nx.NetworkXNoCycle:
        pass
    if issues:
        raise CompileError(issues)
    return graph


def _wire(node: Node, refs: dict[str, str | None], nodes: dict[str, Node], issues: list) -> None:
    """Resolve each input role of `node` to a producer: named, implicit, or the default (a fixed
    node, or the producer of another role: `same_as`)."""
    roles = node.stage.inputs
    order = sorted(roles, key=lambda r: roles[r].same_as is not None)  # same_as after its role
    for role in order:
        want = roles[role]
        ref = refs.get(role)
        if ref is None and want.implicit:
            ref = _implicit(node, role, nodes)
        elif ref is None and want.same_as:
            ref = node.inputs.get(want.same_as)
        elif ref is None:
            ref = want.default
        if ref is None:
            if not want.optional:
                issues.append(Issue(f"{node.path}.{role}", "missing input", "name a stage"))
            continue
        if ref not in nodes:
            choices = [n for n in nodes if n != node.name]
            hint = did_you_mean(ref, choices) or f"stages: {', '.join(sorted(choices))}"
            issues.append(Issue(f"{node.path}.{role}", f"no stage named '{ref}'", hint))
            continue
        produced = nodes[ref].stage.output
        if produced not in want.accepts:
            needs = " or ".join(want.accepts)
            msg = f"'{ref}' produces a {produced} artifact, but {role} needs a {needs}"
            issues.append(Issue(f"{node.path}.{role}", msg, _producer_hint(want.accepts)))
            continue
        node.inputs[role] = ref


def _check_inputs(node: Node, nodes: dict[str, Node], issues: list[Issue]) -> None:
    """Rules between a stage's config and which inputs it has, declared by the kind
    (`check_inputs(cfg, roles)`: e.g. ppo needs a reward model or reward functions), and the
    artifact types they are (`check_input_types(cfg, types)`: eval of a reward model)."""
    check = getattr(node.stage, "check_inputs", None)
    roles = {r: node.inputs.get(r) for r in node.stage.inputs}
    problems = check(node.config, roles) if check else []
    typed = getattr(node.stage, "check_input_types", None)
    if typed:
        problems += typed(node.config, {r: nodes[s].stage.output for r, s in node.inputs.items()})
    for key, problem in problems:
        issues.append(Issue(f"{node.path}.{key}", problem))


def _producer_hint(accepts: tuple[str, ...]) -> str | None:
    """Which stage kinds make what a role accepts."""
    kinds = sorted(k for k, s in KINDS.items() if s.output in accepts and not _is_data(s))
    return f"name a stage of kind {' / '.join(kinds)}" if kinds else None


def _is_data(stage: Any) -> bool:
    return stage.kind in {s.inputs[r].implicit for s in KINDS.values() for r in s.inputs}


def _implicit(consumer: Node, role: str, nodes: dict[str, Node]) -> str:
    """Create (or reuse an identical) implicit node configured from the consumer's fields."""
    want = consumer.stage.inputs[role]
    kind = KINDS[want.implicit]
    values = {f: getattr(consumer.config, f) for f in want.forwards}
    node = Node("", kind.kind, kind.Config(**values), consumer.path, implicit=True)
    consumer.forwarded += want.forwards
    for r in kind.inputs:  # an implicit node shares the consumer's same-named inputs
        node.inputs[r] = consumer.inputs.get(r) or kind.inputs[r].default or ""
    for name, other in nodes.items():  # any identical one, not only the first made
        if (
            other.implicit
            and other.kind == node.kind
            and _same_semantics(other.config, node.config)
            and other.inputs == node.inputs
        ):
            return name
    label = "+".join(dataset_names(values["dataset"])) if "dataset" in values else consumer.name
    for name in (f"{kind.kind}:{label}", f"{kind.kind}:{label}:{consumer.name}"):
        if name not in nodes:
            node.name = name
            nodes[name] = node
            return name
    raise AssertionError("unreachable: the consumer-qualified name is unique")


def _inherit_model_defaults(node: Node, model: Any) -> None:
    """Keys a stage leaves unset (None) take the model preset's value (template, LoRA targets)."""
    if model is None:
        return
    own = {f.name for f in dataclasses.fields(node.config)}
    inherited = {
        f: getattr(model, f)
        for f in KINDS["base"].stage_defaults
        if f in own and getattr(node.config, f) is None and getattr(model, f) is not None
    }
    if inherited:
        node.config = dataclasses.replace(node.config, **inherited)


def _same_semantics(a: Any, b: Any) -> bool:
    """Equal in every keyed field (volatile ones such as num_proc may differ)."""
    return all(getattr(a, f) == getattr(b, f) for f in semantic_fields(type(a)))


def _resolve_datasets(node: Node, spec: PipelineSpec, base_dir: Path, issues: list) -> None:
    """A dataset field names one entry of `datasets`, or several separated by commas (mixed)."""
    for f in node.stage.dataset_fields:
        entries = []
        for name in dataset_names(getattr(node.config, f)):
            entry = _dataset_entry(node, f, name, spec, base_dir, issues)
            if entry is not None:
                entries.append(entry)
        node.datasets[f] = entries


def _dataset_entry(
    node: Node, f: str, name: str, spec: PipelineSpec, base_dir: Path, issues: list
) -> dict[str, Any] | None:
    if name not in spec.datasets:
        known = ", ".join(sorted(spec.datasets))
        hint = did_you_mean(name, spec.datasets) or (
            f"known: {known}" if known else f"declare it as datasets.{name}.path"
        )
        issues.append(Issue(f"{node.path}.{f}", f"no dataset named '{name}'", hint))
        return None
    if spec.datasets[name] is None:
        return None  # the entry itself is invalid, and reported at datasets.<name>
    entry = dataclasses.asdict(spec.datasets[name])
    path = resolve_path(entry["path"], base_dir)
    if path.exists():
        entry["path"] = str(path)
    elif looks_like_path(entry["path"]):
        issues.append(Issue(f"datasets.{name}.path", f"file not found: {path}"))
        return None  # otherwise a hub dataset name, for users with network
    check = getattr(node.stage, "check_dataset", None)
    problem = check(entry) if check else None
    if problem:
        issues.append(Issue(f"{node.path}.{f}", f"dataset '{name}' {problem}"))
    return {**entry, "name": name}


def dataset_names(value: str | list[str]) -> list[str]:
    """`a`, `a,b` or [a, b]."""
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(n).strip() for n in items if str(n).strip()]


def looks_like_path(value: str) -> bool:
    """Hub ids never start like a path or end in a data file suffix; local paths must exist."""
    suffixes = (".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt")
    return value.startswith(("/", "./", "../", "~", "pkg://")) or value.endswith(suffixes)


def resolve_path(value: str, base_dir: Path) -> Path:
    """A config path: `pkg://package/rel/path` inside an installed package, else relative to
    the directory the command runs in."""
    if value.startswith("pkg://"):
        import importlib.util

        package, _, rest = value[len("pkg://") :].partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            return Path(value)
        return Path(list(found.submodule_search_locations)[0]) / rest
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _resolve_local_paths(node: Node, base_dir: Path, issues: list[Issue]) -> None:
    """A path field naming an existing file or directory becomes absolute (and is keyed by its
    content); other values (a hub id) are left as they are, as Hugging Face's loaders do. A value
    written as a path must exist."""
    for f in node.stage.path_fields:
        value = getattr(node.config, f)
        if not isinstance(value, str):
            continue
        path = resolve_path(value, base_dir)
        if path.exists():
            node.local_paths[f] = str(path.resolve())
            node.config = dataclasses.replace(node.config, **{f: str(path.resolve())})
        elif looks_like_path(value):
            issues.append(Issue(f"{node.path}.{f}", f"no such file or directory: {path}"))
