"""Validate the composed config into typed specs, reporting every problem at once.

Every key is checked against a dataclass: the root schema below, a stage kind's `Config`, the
dataset spec. Unknown keys name their full key path and the nearest valid key; wrong types name
the expected type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler.errors import Issue, did_you_mean
from stages import KINDS
from stages.base import bounded
from stages.data.registry import read_dataset_info
from stages.data.spec import DatasetSpec

LAUNCHERS = ("inprocess", "subprocess", "torchrun", "deepspeed", "slurm")


@dataclass
class LauncherConfig:
    """How training stages run (runtime/launchers.py); data stages always run in the
    orchestrator. Set for the pipeline (`launcher=torchrun`) and per stage
    (`stages.ppo.launcher.zero_stage=3`). Never part of a key."""

    name: str = field(default="inprocess", metadata={"choices": LAUNCHERS})
    nproc_per_node: int = bounded(1, min=1)
    nnodes: int = bounded(1, min=1)
    node_rank: int = bounded(0, min=0)
    rdzv_endpoint: str | None = None  # host:port of node 0; None on one node: a free local port
    rdzv_id: str | None = None  # the same on every node (default: the stage's key)
    rdzv_backend: str = "c10d"
    max_restarts: int = bounded(0, min=0)  # torchrun restarts the group; it resumes
    timeout_s: int = bounded(1800, min=1)  # a collective waiting longer fails the stage
    device_memory_gb: float | None = None  # plan warns above this (default: this machine's RAM)
    # ZeRO stage (1 optimizer state, 2 + gradients, 3 + weights sharded over the processes)
    zero_stage: int = field(default=0, metadata={"choices": (0, 1, 2, 3)})
    offload: bool = False  # ZeRO offload of optimizer state (and stage-3 weights) to CPU memory
    deepspeed_config: str | None = None  # a DeepSpeed JSON of your own instead of the shipped one
    slots: int = bounded(1, min=1)  # stages that may run at once (independent branches)
    gpus: list[int] | None = None  # GPU ids shared out to running stages (CUDA_VISIBLE_DEVICES)
    cluster: str = field(default="slurm", metadata={"choices": ("slurm", "local", "debug")})
    slurm: dict[str, Any] = field(default_factory=dict)  # submitit parameters (partition, ...)


@dataclass
class StageDecl:
    name: str
    kind: str
    inputs: dict[str, str | None]  # role -> node name the user referenced (None: default)
    config: Any  # an instance of the kind's Config dataclass
    launcher: LauncherConfig | None = None  # the pipeline's, with this stage's overrides


@dataclass
class PipelineSpec:
    store: str
    cache_version: str
    model: Any  # stages.base_model.BaseConfig: the implicit `base` node
    launcher: LauncherConfig
    datasets: dict[str, DatasetSpec]
    stages: dict[str, StageDecl]


ROOT_KEYS = ("store", "cache_version", "model", "launcher", "dataset_info", "datasets", "stages")


def validate(
    raw: Mapping[str, Any], issues: list[Issue], base_dir: Path | None = None
) -> PipelineSpec:
    """Turn a plain dict (the composed Hydra config, resolved) into a PipelineSpec; problems are
    appended to `issues` (the graph check adds its own before anything is raised)."""
    for k in raw:
        if k not in ROOT_KEYS:
            issues.append(Issue(str(k), "unknown key", did_you_mean(str(k), ROOT_KEYS)))
    store = _scalar(raw, "store", str, ".pipelines", issues)
    cache_version = str(raw.get("cache_version") or "")
    model = build(KINDS["base"].Config, raw.get("model") or {}, "model", issues)
    raw_launcher = raw.get("launcher") or {}
    launcher = build(LauncherConfig, raw_launcher, "launcher", issues)
    declared = _dataset_info(raw, base_dir or Path.cwd(), issues)
    for name, fields in _mapping(raw, "datasets", issues).items():  # amend field by field
        known = declared.get(name)
        both = isinstance(known, Mapping) and isinstance(fields, Mapping)
        declared[name] = {**known, **fields} if both else fields
    datasets = {
        str(n): build(DatasetSpec, d or {}, f"datasets.{n}", issues) for n, d in declared.items()
    }
    stages = {
        str(n): _stage(str(n), d, issues, raw_launcher)
        for n, d in _mapping(raw, "stages", issues).items()
    }
    if not stages and not issues:
        issues.append(Issue("stages", "no stages to run", "choose a pipeline, e.g. +pipeline=sft"))
    return PipelineSpec(store, cache_version, model, launcher, datasets, stages)  # type: ignore[arg-type]


def _dataset_info(raw: Mapping[str, Any], base_dir: Path, issues: list[Issue]) -> dict[str, Any]:
    """Entries of a LLaMA-Factory dataset_info.json; `datasets` in the config override them."""
    value = raw.get("dataset_info")
    if not value:
        return {}
    path = Path(str(value)).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if path.is_dir():
        path = path / "dataset_info.json"
    if not path.is_file():
        issues.append(Issue("dataset_info", f"file not found: {path}"))
        return {}
    entries, problems = read_dataset_info(path)
    issues += [Issue("dataset_info", p) for p in problems]
    return entries


def _stage(name: str, raw: Any, issues: list[Issue], launcher: Any = None) -> StageDecl:
    path = f"stages.{name}"
    if not isinstance(raw, Mapping):
        issues.append(Issue(path, f"expected a mapping, got {type(raw).__name__}"))
        return StageDecl(name, "?", {}, None)
    kind = raw.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:  # a list or mapping is unhashable
        msg = "missing 'kind'" if kind is None else f"unknown kind '{kind}'"
        hint = did_you_mean(str(kind), KINDS) or f"one of: {', '.join(sorted(KINDS))}"
        issues.append(Issue(f"{path}.kind", msg, hint))
        return StageDecl(name, str(kind), {}, None)
    stage = KINDS[kind]
    inputs: dict[str, str | None] = {}
    for role in stage.inputs:
        ref = raw.get(role)
        if ref is not None and not isinstance(ref, str):
            issues.append(Issue(f"{path}.{role}", "expected a stage name (string)"))
            ref = None
        inputs[role] = ref
    own = ("kind", "launcher", *stage.inputs)
    body = {k: v for k, v in raw.items() if k not in own}
    config = build(stage.Config, body, path, issues, extra=own)
    check = getattr(stage, "check_config", None)
    if config is not None and check is not None:  # rules between fields, declared by the kind
        issues += [Issue(f"{path}.{f}", problem) for f, problem in check(config)]
    return StageDecl(name, kind, inputs, config, _stage_launcher(raw, path, launcher, issues))


def _stage_launcher(
    raw: Mapping[str, Any], path: str, pipeline: Any, issues: list[Issue]
) -> LauncherConfig | None:
    """A stage's own `launcher:` fields over the pipeline's (None when it names none)."""
    own = raw.get("launcher")
    if own is None:
        return None
    if not isinstance(own, Mapping):
        issues.append(Issue(f"{path}.launcher", f"expected a mapping, got {type(own).__name__}"))
        return None
    merged = {**(pipeline if isinstance(pipeline, Mapping) else {}), **own}
    found: list[Issue] = []
    built = build(LauncherConfig, merged, f"{path}.launcher", found)
    issues += found
    return None if found else built


def build(cls: type, raw: Any, path: str, issues: list[Issue], extra: tuple = ()) -> Any:
    """Instantiate dataclass `cls` from `raw`, appending an Issue for each bad key or value."""
    if not isinstance(raw, Mapping):
        issues.append(Issue(path, f"expected a mapping, got {type(raw).__name__}"))
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key)
        if key not in fields:
            hint = did_you_mean(key, [*fields, *extra])
            issues.append(Issue(f"{path}.{key}", "unknown key", hint))
            continue
        ok, converted = conform(value, hints[key])
        choices = fields[key].metadata.get("choices")
        if not ok:
            issues.append(Issue(f"{path}.{key}", f"expected {_tname(hints[key])}, got {value!r}"))
        elif choices and converted is not None and converted not in choices:
            names = [str(c).lower() if isinstance(c, bool) else str(c) for c in choices]
            hint = did_you_mean(str(converted), names) or f"one of: {', '.join(names)}"
            issues.append(Issue(f"{path}.{key}", f"invalid value {converted!r}", hint))
        elif out_of_range(converted, fields[key].metadata):
            bound = out_of_range(converted, fields[key].metadata)
            issues.append(Issue(f"{path}.{key}", f"{converted!r} is out of range", bound))
        else:
            values[key] = converted
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in raw:
            issues.append(Issue(f"{path}.{name}", "missing required key"))
    try:
        return cls(**values)
    except TypeError:
        return None


def out_of_range(value: Any, meta: Mapping[str, Any]) -> str | None:
    """How a number breaks its field's declared range (`bounded`), or None."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    lo, hi, above = meta.get("min"), meta.get("max"), meta.get("above")
    low_ok = (lo is None or value >= lo) and (above is None or value > above)
    if low_ok and (hi is None or value <= hi):
        return None
    parts = [f">= {lo}" if lo is not None else "", f"> {above}" if above is not None else ""]
    parts.append(f"<= {hi}" if hi is not None else "")
    return "must be " + " and ".join(p for p in parts if p)


def conform(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check `value` against annotation `tp`; ints are accepted (and converted) for floats."""
    if tp is Any:
        return True, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            ok, v = conform(value, arm)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        (arm, *_) = typing.get_args(tp) or (Any,)
        out = [conform(v, arm) for v in value]
        return all(ok for ok, _ in out), [v for _, v in out]
    if origin is dict or tp is dict:
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp in (str, bool):
        return isinstance(value, tp), value
    return isinstance(value, tp), value


def _tname(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_tname(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _mapping(raw: Mapping[str, Any], key: str, issues: list[Issue]) -> Mapping[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, Mapping):
        issues.append(Issue(key, f"expected a mapping, got {type(value).__name__}"))
        return {}
    return value


def _scalar(raw: Mapping[str, Any], key: str, tp: type, default: Any, issues: list[Issue]) -> Any:
    value = raw.get(key, default)
    if not isinstance(value, tp):
        issues.append(Issue(key, f"expected {tp.__name__}, got {value!r}"))
        return default
    return value
