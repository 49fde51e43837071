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
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler.compile import Compiled
from compiler.graph import Node
from compiler.memory import GIB, memory_without_checkpointing
from compiler.plan import CACHED, Step, plan
from runtime.launchers import Launcher
from runtime.processes import stop_all
from runtime.rank_failure import RankFailure
from runtime.slots import Grant, Slots, launcher_for
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
    returns one Outcome per node, in the plan's order. Independent nodes run at the same time
    when `launcher.slots` allows (runtime/slots.py); a failed branch never stops another."""
    steps = plan(compiled.graph, store, forced)
    record["stages"] = {}
    run = _Schedule(compiled, store, launcher, record, forced, len(steps))
    waiting = list(enumerate(steps, 1))
    pool = ThreadPoolExecutor(max_workers=run.slots.size)
    interrupted = False
    try:
        while waiting or run.running:
            waiting = [(i, s) for i, s in waiting if not run.settle_or_start(i, s, pool)]
            if run.running:
                done, _ = wait(run.running, return_when=FIRST_COMPLETED)
                for future in done:
                    run.finished(future)
    except KeyboardInterrupt:
        interrupted = True
        stopped = stop_all()
        if stopped:
            print(f"stopped {stopped} running stage process group(s)", file=sys.stderr)
        raise
    finally:  # interrupted: the caller exits without waiting for the stages' threads
        pool.shutdown(wait=not interrupted, cancel_futures=interrupted)
    return [run.outcomes[s.node.name] for s in steps]


class _Schedule:
    """One execution's state: outcomes so far, the stages running and the slots they hold.
    Only the main thread changes it (worker threads run `_run_locked` and return an Outcome)."""

    def __init__(
        self,
        compiled: Compiled,
        store: Store,
        launcher: Launcher,
        record: dict,
        forced: frozenset[str],
        total: int,
    ) -> None:
        self.compiled, self.store, self.launcher = compiled, store, launcher
        self.record, self.forced, self.total = record, forced, total
        self.slots = Slots(compiled.spec.launcher)
        self.outcomes: dict[str, Outcome] = {}
        self.running: dict[Future, tuple[Node, Grant]] = {}

    def settle_or_start(self, i: int, step: Step, pool: ThreadPoolExecutor) -> bool:
        """Settle a node whose inputs are done (skipped, cached) or start it when a slot is
        free; False when it must keep waiting."""
        node = step.node
        ups = list(self.compiled.graph.predecessors(node.name))
        if any(u not in self.outcomes for u in ups):
            return False
        failed_up = [u for u in ups if self.outcomes[u].status in (FAILED, SKIPPED)]
        if failed_up:
            error = f"upstream {failed_up[0]} failed"
            self.finish(node, Outcome(node.name, node.kind, node.key, SKIPPED, error=error))
            return True
        if step.status == CACHED:
            self.finish(node, _cached(node, self.store))
            return True
        chosen = launcher_for(node, self.launcher, self.slots)
        grant = self.slots.take(chosen)
        if grant is None:
            return False
        print(f"[{i}/{self.total}] {node.name}: {step.describe()}", flush=True)
        self.record["stages"][node.name] = {"key": node.key, "status": "running"}
        save_record(self.store, self.record)  # its work dir is named by a record while it runs
        run = self.slots.bind(grant, chosen, node.name)
        forced = node.name in self.forced
        args = (node, self.compiled, self.store, run, self.record["id"], forced)
        if grant.in_process:  # on the main thread: Ctrl-C reaches it, signal handlers work
            out = _run_locked(*args)
            self.slots.release(grant)
            self.finish(node, out)
        else:  # a thread waits on the stage's process group
            self.running[pool.submit(_run_locked, *args)] = (node, grant)
        return True

    def finished(self, future: Future) -> None:
        node, grant = self.running.pop(future)
        self.slots.release(grant)
        self.finish(node, future.result())

    def finish(self, node: Node, out: Outcome) -> None:
        self.outcomes[node.name] = out
        if out.status not in (FAILED, SKIPPED):
            with contextlib.suppress(OSError):  # only `plan`'s reasons need it
                self.store.remember_name(node.name, node.key, node.payload)
        self.record["stages"][node.name] = _record_entry(out)
        save_record(self.store, self.record)


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

    if joins_another_node(node, compiled):
        return _join(node, compiled, store, launcher)

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
        spec.update(launcher.spec_fields())
        metrics = launcher.launch(write_spec(work / "spec.json", spec))
    except (UserError, RankFailure) as e:
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
    keep_rank_logs(work, store.root / "logs" / run_id / node.name)
    shutil.rmtree(work, ignore_errors=True)  # checkpoints are no longer needed once committed
    status = RESUMED if ckpt else RAN
    return Outcome(node.name, node.kind, node.key, status, wall, metrics, headline(node))


def joins_another_node(node: Node, compiled: Compiled) -> bool:
    """Node ranks above 0 of a multi-node stage: they add their processes to node 0's run,
    which holds the key's lock and commits."""
    cfg = node.launcher or compiled.spec.launcher
    return bool(getattr(node.stage, "distributed", False)) and cfg.node_rank > 0


def _join(node: Node, compiled: Compiled, store: Store, launcher: Launcher) -> Outcome:
    """Run this node's share of the stage, then wait for node 0's commit."""
    cfg = node.launcher or compiled.spec.launcher
    work = store.work_dir(node.key)
    t0 = time.time()
    try:
        spec = _spec(node, compiled, store, work, work / "out", None)
        spec.update(launcher.spec_fields())
        launcher.launch(write_spec(work / f"spec-node{cfg.node_rank}.json", spec))
    except (UserError, RankFailure) as e:
        return _failed(node, str(e), time.time() - t0)
    except Exception as e:  # noqa: BLE001
        return _crashed(node, e, work, t0)
    deadline = time.time() + JOIN_WAIT_S
    while not store.has(node.key):
        if time.time() > deadline:
            return _failed(node, f"node 0 did not commit {node.key[:12]} in {JOIN_WAIT_S}s", 0.0)
        time.sleep(1.0)
    out = _cached(node, store)
    return dataclasses.replace(out, status=RAN, wall_s=time.time() - t0)


JOIN_WAIT_S = 600  # node 0 commits right after its ranks finish; this is its slack


def keep_rank_logs(work: Path, dest: Path) -> None:
    """Each rank's log of a committed stage, kept beside its run (the work dir goes away)."""
    logs = work / "logs"
    if logs.is_dir():
        with contextlib.suppress(OSError):
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(logs), str(dest))


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
    launcher = node.launcher or compiled.spec.launcher
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
