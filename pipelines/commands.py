"""`plan` and `run` on a composed config. Neither imports torch unless a stage must run."""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

from compiler.compile import Compiled, compile_pipeline
from compiler.errors import CompileError, Issue
from compiler.plan import plan
from compiler.select import Selection, apply
from pipelines.summary import plan_lines, summary_table
from runtime.store import Store, new_run_id

NOTHING = Selection()  # the whole pipeline, cached stages kept


def compile_config(
    raw: dict[str, Any], base_dir: Path, select: Selection = NOTHING
) -> tuple[Compiled, Store, frozenset[str]]:
    """The compiled pipeline cut to the selection, its store, and the stages to force."""
    store_dir = Path(str(raw.get("store") or ".pipelines"))
    store = Store(store_dir if store_dir.is_absolute() else base_dir / store_dir)
    compiled = compile_pipeline(raw, base_dir, store.digests)
    store.save_digests()  # never creates the store just to remember digests
    graph, forced = apply(compiled.graph, select)
    return Compiled(compiled.spec, graph), store, forced
    return compiled, store


def plan_command(
    raw: dict[str, Any], base_dir: Path, overrides: list[str], select: Selection = NOTHING
) -> int:
    compiled, store, forced = compile_config(raw, base_dir, select)
    steps = plan(compiled.graph, store, forced)
    print("\n".join(plan_lines(steps, compiled.graph, compiled.spec.launcher, store.find)))
    return 0


def run_command(
    raw: dict[str, Any], base_dir: Path, overrides: list[str], select: Selection = NOTHING
) -> int:
    compiled, store, forced = compile_config(raw, base_dir, select)
    from runtime.executor import FAILED, execute, save_record
    from runtime.launchers import check_launchers, make_launcher

    nodes = [compiled.graph.nodes[n]["node"] for n in compiled.graph]
    check_launchers(nodes, compiled.spec.launcher)  # before anything is written
    launcher = make_launcher(compiled.spec.launcher)
    problem = store.unwritable()
    if problem:
        fix = "make it writable, or choose another store with store=... or PIPELINES_STORE"
        raise CompileError([Issue("store", problem, fix)])
    store.mark_interrupted_runs()
    record = {
        "id": new_run_id(),
        "command": resume_command(overrides),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "status": "running",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "config": raw,
        "sweep": current_sweep(),
    }
    save_record(store, record)
    t0 = time.time()
    try:
        outcomes = execute(compiled, store, launcher, record, forced)
    except KeyboardInterrupt:
        record.update(status="interrupted", wall_s=round(time.time() - t0, 3))
        save_record(store, record)
        print(f"to resume: {record['command']}", file=sys.stderr)
        raise
    failed = [o for o in outcomes if o.status == FAILED]
    record.update(status="failed" if failed else "ok", wall_s=round(time.time() - t0, 3))
    record["order"] = [o.name for o in outcomes]  # the DAG's order (the record's keys are sorted)
    for o in outcomes:  # what `compare` sorts by unless told
        record["stages"][o.name]["headline"] = o.headline
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = save_record(store, record)
    print(summary_table(outcomes))
    if path is not None:
        _copy_to_hydra_dir(path)
        print(f"run record: {path}")
    if failed:
        for o in failed:
            print(f"{o.name} failed: {o.error}", file=sys.stderr)
        skipped = [o.name for o in outcomes if o.status == "skipped"]
        if skipped:
            print(f"skipped because of the failure: {', '.join(skipped)}", file=sys.stderr)
        print(f"to resume: {record['command']}", file=sys.stderr)
        return 1
    return 0


def resume_command(overrides: list[str]) -> str:
    """The exact command that reruns this job (and resumes from its checkpoints)."""
    args = [a for a in overrides if not a.startswith("hydra.")]
    return " ".join(["python -m pipelines run", *(shlex.quote(a) for a in args)])


def current_sweep() -> dict[str, Any] | None:
    """{"dir", "job"} of this job of a multirun (`compare` groups jobs by dir); None outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    if hydra.mode != RunMode.MULTIRUN:
        return None
    return {"dir": sweep_dir(hydra), "job": int(hydra.job.num)}


def sweep_dir(hydra: Any) -> str:
    """The absolute sweep dir of a multirun (Hydra's `hydra.sweep.dir`, relative to the launch
    directory unless absolute)."""
    return str((Path(hydra.runtime.cwd) / hydra.sweep.dir).resolve())


def _copy_to_hydra_dir(record_path: Path) -> None:
    try:
        from hydra.core.hydra_config import HydraConfig

        out = Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return
    if out.resolve() != Path(os.getcwd()).resolve():
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_bytes(record_path.read_bytes())
