"""Walk the DAG in topological order: skip what is cached, lock, launch, commit, record.

A failed stage keeps its work dir (checkpoints) for resume; its dependents are skipped and named.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler.compile import Compiled
from compiler.graph import Node
from compiler.memory import GIB, memory_without_checkpointing
from compiler.plan import CACHED, plan
from runtime.launchers import Launcher
from runtime.store import Store
from runtime.worker import write_spec
from stages.base import UserError, latest_checkpoint

log = logging.getLogger("pipelines")

RAN, RESUMED, FAILED, SKIPPED = "ran", "resumed", "failed", "skipped"


@dataclass
class Outcome:
    name: str
    kind: str
    key: str
    status: str  # cached | ran | resumed | failed | skipped
    wall_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    headline: str = ""
    error: str = ""


def execute(
    compiled: Compiled,
    store: Store,
    launcher: Launcher,
    record: dict,
    forced: frozenset[str] = frozenset(),
) -> list[Outcome]:
    """Run every node that is not cached (and the `forced` ones, replacing their artifacts);
    returns one Outcome per node, in order."""
    outcomes: dict[str, Outcome] = {}
    steps = plan(compiled.graph, store, forced)
    record["stages"] = {}
    for i, step in enumerate(steps, 1):
        node = step.node
        failed_up = [
            s
            for s in compiled.graph.predecessors(node.name)
            if outcomes[s].status in (FAILED, SKIPPED)
        ]
        if failed_up:
            out = Outcome(
                node.name, node.kind, node.key, SKIPPED, error=f"upstream {failed_up[0]} failed"
            )
        elif step.status == CACHED:
            out = _cached(node, store)
        else:
            print(f"[{i}/{len(steps)}] {node.name}: {step.describe()}", flush=True)
            record["stages"][node.name] = {"key": node.key, "status": "running"}
            save_record(store, record)  # its work dir is named by a record while it runs
            out = _run_locked(node, compiled, store, launcher, record["id"], node.name in forced)
        outcomes[node.name] = out
        if out.status not in (FAILED, SKIPPED):
            with contextlib.suppress(OSError):  # only `plan`'s reasons need it
                store.remember_name(node.name, node.key, node.payload)
        record["stages"][node.name] = _record_entry(out)
        save_record(store, record)
    return list(outcomes.values())


def save_record(store: Store, record: dict[str, Any]) -> Path | None:
    """The run record, written when the disk allows: a full disk must not hide the summary."""
    try:
        return store.write_run(record)
    except OSError as e:
        print(f"warning: could not write the run record: {e.strerror or e}", file=sys.stderr)
        return None


def _cached(node: Node, store: Store) -> Outcome:
    # checkpoints left by a run killed between its commit and its clean-up are no longer needed
    shutil.rmtree(store.work_dir(node.key), ignore_errors=True)
    deliver = getattr(node.stage, "deliver", None)  # export: copies outside the store
    path = store.find(node.key)
    if deliver is not None and path is not None:
        try:
            deliver(node.config, path, log)
        except UserError as e:
            return _failed(node, str(e), 0.0)
    manifest = store.manifest(node.key) or {}
    metrics = manifest.get("metrics", {})
    return Outcome(node.name, node.kind, node.key, CACHED, 0.0, metrics, headline(node))


def headline(node: Node) -> str:
    """The metric the summary shows: fixed by the kind, or chosen by its config (eval's
    `headline_for(cfg)`: the metric the user asked for first)."""
    chooser = getattr(node.stage, "headline_for", None)
    return chooser(node.config) if chooser else node.stage.headline


def _run_locked(
    node: Node,
    compiled: Compiled,
    store: Store,
    launcher: Launcher,
    run_id: str,
    forced: bool = False,
) -> Outcome:
    """Take the key's lock; if another process committed it meanwhile, reuse theirs."""

    def waiting() -> None:
        print(f"    {node.name}: another process is computing {node.key[:12]}; waiting", flush=True)

    with store.lock(node.key, on_wait=waiting):
        if store.has(node.key) and not forced:
            if store.damage(node.key) is None:
                return _cached(node, store)
            store.discard(node.key)  # damaged since its commit: made again, never used
        return _run(node, compiled, store, launcher, run_id, replace=forced)


def _run(
    node: Node,
    compiled: Compiled,
    store: Store,
    launcher: Launcher,
    run_id: str,
    replace: bool = False,
) -> Outcome:
    work = store.work_dir(node.key)
    out_dir = work / "out"
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a payload from a crashed attempt is never trusted
    ckpt = latest_checkpoint(work / "checkpoints")
    t0 = time.time()
    try:
        spec = _spec(node, compiled, store, work, out_dir, ckpt[1] if ckpt else None)
        metrics = launcher.launch(write_spec(work / "spec.json", spec))
    except UserError as e:
        return _failed(node, str(e), time.time() - t0)
    except OSError as e:
        if e.errno in STORAGE_ERRORS:
            return _failed(node, _storage_message(e, "while it ran"), time.time() - t0)
        return _crashed(node, e, work, t0)
    except Exception as e:  # a bug or an environment problem: keep the traceback in the work dir
        return _crashed(node, e, work, t0)
    wall = time.time() - t0
    meta = {
        "name": node.name,
        "run_id": run_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": round(wall, 3),
        "payload": node.payload,
        "config": dataclasses.asdict(node.config),
        "inputs": {
            r: {"name": s, "key": compiled.graph.nodes[s]["node"].key}
            for r, s in node.inputs.items()
        },
        "metrics": metrics,
        "resumed_from": ckpt[0] if ckpt else None,
    }
    try:
        store.commit(node.kind, node.key, out_dir, meta, replace=replace)
    except OSError as e:  # nothing half-committed: the artifact appears by one final rename
        return _failed(node, _storage_message(e, "while committing its artifact"), wall)
    shutil.rmtree(work, ignore_errors=True)  # checkpoints are no longer needed once committed
    status = RESUMED if ckpt else RAN
    return Outcome(node.name, node.kind, node.key, status, wall, metrics, headline(node))


def _spec(
    node: Node, compiled: Compiled, store: Store, work: Path, out: Path, resume: Path | None
) -> dict:
    producers = {r: compiled.graph.nodes[s]["node"] for r, s in node.inputs.items()}
    return {
        "name": node.name,
        "kind": node.kind,
        "key": node.key,
        "config": dataclasses.asdict(node.config),
        "inputs": {r: str(store.find(p.key)) for r, p in producers.items()},
        "input_keys": {r: p.key for r, p in producers.items()},
        "datasets": node.datasets,
        "store": str(store.root.resolve()),
        "out": str(out.resolve()),
        "work": str(work.resolve()),
        "resume_from": str(resume.resolve()) if resume else None,
        "memory": _memory(node, compiled, store),
    }


def _memory(node: Node, compiled: Compiled, store: Store) -> dict[str, float]:
    """What a training stage needs to decide `gradient_checkpointing: auto` where it runs."""
    launcher = compiled.spec.launcher
    without = memory_without_checkpointing(compiled.graph, node.name, store.find, launcher)
    if without is None:
        return {}
    memory = {"without_checkpointing": without}
    if launcher.device_memory_gb:
        memory["device"] = launcher.device_memory_gb * GIB
    return memory


STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


def _storage_message(e: OSError, when: str) -> str:
    """A disk that filled up (or went read-only) is the user's to fix, and the run resumes."""
    what = e.strerror or str(e)
    where = f" ({e.filename})" if e.filename else ""
    return (
        f"{what}{where} {when}: free space (or fix the permissions), then rerun the same "
        "command; it resumes from the last complete checkpoint"
    )


def _crashed(node: Node, e: BaseException, work: Path, t0: float) -> Outcome:
    """A bug or an environment problem: the traceback goes to the work dir when it can."""
    text = traceback.format_exc()
    log.error("%s failed:\n%s", node.name, text)
    try:
        (work / "error.txt").write_text(text)
        where = f"traceback in {work / 'error.txt'}"
    except OSError:  # the disk that failed the stage may refuse this too
        where = "traceback above"
    return _failed(node, f"{type(e).__name__}: {e} ({where})", time.time() - t0)


def _failed(node: Node, message: str, wall: float) -> Outcome:
    return Outcome(node.name, node.kind, node.key, FAILED, wall, error=message)


def _record_entry(out: Outcome) -> dict[str, Any]:
    return {
        "kind": out.kind,
        "key": out.key,
        "status": out.status,
        "wall_s": round(out.wall_s, 3),
        "metrics": out.metrics,
        "error": out.error,
    }
