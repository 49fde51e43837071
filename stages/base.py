"""The stage contract: what a stage kind declares and what it receives when it runs.

Stages import nothing from `compiler`, `runtime`, `pipelines` or Hydra. Heavy libraries (torch,
transformers, datasets) are imported inside `run()` only, so that compiling and planning stay fast.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

# Artifact types: what a stage produces and what an input role accepts.
MODEL = "model"  # a causal LM: full weights, or a base key plus adapter(s)
REWARD_MODEL = "reward_model"  # the same layouts, with a one-output scalar head
SFT_DATA = "sft_data"
PT_DATA = "pt_data"  # token blocks for pre-training
PREFERENCE_DATA = "preference_data"  # prompt ids shared by a chosen and a rejected reply
KTO_DATA = "kto_data"  # prompt and reply ids with a desirable / undesirable label
PROMPTS = "prompts"  # prompts to sample replies from (RL), with their messages kept
DATASET = "dataset"
METRICS = "metrics"
EXPORT = "export"  # merged full weights (plus GGUF files) ready for other tools, no adapters

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_MARKER = ".complete"  # a checkpoint is usable iff this file exists in it


def volatile(default: Any = dataclasses.MISSING, metadata: dict | None = None, **kw: Any) -> Any:
    """A config field that is recorded but not keyed (logging, save frequency, report_to)."""
    return field(default=default, metadata={"volatile": True, **(metadata or {})}, **kw)


def bounded(
    default: Any,
    *,
    min: float | None = None,  # noqa: A002 (reads as the range it states)
    max: float | None = None,  # noqa: A002
    above: float | None = None,
    **metadata: Any,
) -> Any:
    """A numeric field with its valid range, declared once beside it: the compiler refuses a
    value outside it (`min` / `max` inclusive, `above` exclusive) before anything runs."""
    bounds = {k: v for k, v in (("min", min), ("max", max), ("above", above)) if v is not None}
    return field(default=default, metadata={**bounds, **metadata})


def forwarded_fields(config_cls: type, keep: tuple[str, ...] = ("seed",)) -> tuple[str, ...]:
    """The fields a consumer forwards to an implicit node of this config: all but those the
    consumer has a meaning of its own for (its `seed` is the training seed)."""
    return tuple(f.name for f in dataclasses.fields(config_cls) if f.name not in keep)


def semantic_fields(config_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_cls) if not f.metadata.get("volatile")]


@dataclass(frozen=True)
class In:
    """One input role of a stage kind.

    `type` is the artifact type accepted, or a tuple of them (eval takes a model or a reward
    model). `default` names the node used when the user gives none (e.g. the implicit `base`
    model); `same_as` names another role whose producer is the default instead (dpo's `ref_model`
    is the policy's upstream unless named). `implicit` names the kind of an implicit node the
    compiler creates for this role, configured from the consumer's own fields listed in
    `forwards` (e.g. sft's data -> a `tokenize` node).
    """

    type: str | tuple[str, ...]
    default: str | None = None
    implicit: str | None = None
    forwards: tuple[str, ...] = ()
    optional: bool = False
    same_as: str | None = None

    @property
    def accepts(self) -> tuple[str, ...]:
        return self.type if isinstance(self.type, tuple) else (self.type,)


@dataclass
class Context:
    """What the runtime hands a stage: resolved paths, rank, logging and checkpoint helpers."""

    name: str
    key: str
    out: Path  # write the artifact's payload here
    work: Path  # checkpoints and logs of an unfinished run live here
    inputs: dict[str, Path]  # role -> artifact directory
    input_keys: dict[str, str] = field(default_factory=dict)  # role -> artifact key
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)  # config field -> entry
    resume_from: Path | None = None  # latest complete checkpoint, if any
    rank: int = 0
    world_size: int = 1
    resolve: Callable[[str], Path] | None = None  # artifact key -> its directory (for lineage)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("pipelines.stage"))
    metrics: dict[str, Any] = field(
        default_factory=dict
    )  # filled by the stage, kept in the manifest
    # the plan's memory estimate for training stages: bytes "without_checkpointing", and the
    # configured "device" size when the launcher names one
    memory: dict[str, float] = field(default_factory=dict)
    # how a process launcher runs the stage: "deepspeed" (a DeepSpeed config dict, its `auto`
    # values filled by the Trainer from the stage's config) and "timeout_s" (a collective that
    # waits longer fails instead of hanging)
    distributed: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes shared files (the artifact, logs, plots)."""
        return self.rank == 0

    @property
    def checkpoints(self) -> Path:
        return self.work / "checkpoints"

    @staticmethod
    def mark_checkpoint_complete(path: Path) -> None:
        (Path(path) / CHECKPOINT_MARKER).write_text("ok\n")


def latest_checkpoint(checkpoints: Path) -> tuple[int, Path] | None:
    """The highest-step checkpoint that carries its completion marker, or None."""
    best: tuple[int, Path] | None = None
    if not checkpoints.is_dir():
        return None
    for p in checkpoints.iterdir():
        if not p.name.startswith(CHECKPOINT_PREFIX) or not (p / CHECKPOINT_MARKER).exists():
            continue
        try:
            step = int(p.name[len(CHECKPOINT_PREFIX) :])
        except ValueError:
            continue
        if best is None or step > best[0]:
            best = (step, p)
    return best


class UserError(Exception):
    """A problem the user can fix (bad data, wrong path): printed as one message, no traceback."""


class Stage(Protocol):
    """A stage kind: one module in `stages/`, registered in `stages.KINDS`."""

    kind: ClassVar[str]
    Config: ClassVar[type]
    inputs: ClassVar[dict[str, In]]
    output: ClassVar[str]
    # files (relative to the stage's module dir) whose contents go into the key, besides the module
    code: ClassVar[tuple[str, ...]]
    # config fields naming an entry of `datasets`: the entry and its file's digest are keyed
    dataset_fields: ClassVar[tuple[str, ...]]
    # config fields that may hold a local path: keyed by the content digest of what they name
    path_fields: ClassVar[tuple[str, ...]]
    headline: ClassVar[str]  # the metric shown in the run summary

    def run(self, ctx: Context, cfg: Any) -> None: ...
