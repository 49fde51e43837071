"""Where `compare` finds its runs: run records named by id or file, every job's `run.json` under
a multirun's sweep dir, the distinct artifacts of a stage name across the store's runs, or, by
default, the jobs of the latest multirun (run records carry `sweep: {dir, job}`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compiler.errors import did_you_mean
from runtime.store import Store
from stages.base import UserError


def read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable run record ({e})") from None
    if not isinstance(record, dict) or "stages" not in record:
        raise UserError(f"{path}: not a run record (no 'stages'); name a run's run.json")
    return record


def sweep_records(path: Path) -> list[dict[str, Any]]:
    """The run.json of every job under a sweep dir (Hydra's multirun/<date>/<time>/<job>)."""
    return [read_record(p) for p in sorted(path.rglob("run.json"))]


def latest_sweep(store: Store) -> tuple[list[dict[str, Any]], str]:
    runs = [r for r in store.runs() if (r.get("sweep") or {}).get("dir")]
    if not runs:
        raise UserError(
            f"nothing to compare: no multirun in {store.root}; run `python -m pipelines run -m "
            "...` or name run ids, a sweep dir or stage names"
        )
    sweep = max(runs, key=lambda r: str(r.get("id", "")))["sweep"]["dir"]
    return [r for r in runs if r["sweep"]["dir"] == sweep], short_path(sweep)


def stage_runs(store_runs: list[dict[str, Any]], stage: str) -> list[dict[str, Any]]:
    """One run per distinct artifact of `stage`: the latest run that made or used it."""
    latest: dict[str, dict[str, Any]] = {}
    for r in sorted(store_runs, key=lambda r: str(r.get("id", ""))):
        entry = r.get("stages", {}).get(stage) or {}
        if entry.get("key") and entry.get("status") not in ("failed", "skipped"):
            latest[entry["key"]] = r
    return list(latest.values())


def load(targets: list[str], store: Store) -> tuple[list[dict[str, Any]], list[str], str]:
    """(run records, stage names named as targets, a description) for the command line."""
    if not targets:
        if not store.root.is_dir():
            raise UserError(f"no store at {store.root} (set --store or PIPELINES_STORE)")
        runs, where = latest_sweep(store)
        return runs, [], where
    store_runs = store.runs()
    ids = [str(r.get("id", "")) for r in store_runs]
    names = {s for r in store_runs for s in r.get("stages", {})}
    found: dict[str, dict[str, Any]] = {}
    stages: list[str] = []
    for t in targets:
        path = Path(t)
        if path.is_file():
            runs = [read_record(path)]
        elif path.is_dir():
            runs = sweep_records(path)
            if not runs:
                raise UserError(f"{t}: no run records (run.json) under this directory")
        elif t in names:
            runs, stages = stage_runs(store_runs, t), [*stages, t]
        elif [i for i in ids if i.startswith(t)]:
            matching = [r for r in store_runs if str(r.get("id", "")).startswith(t)]
            if len(matching) > 1:
                raise UserError(f"{t}: {len(matching)} runs start with this; give more of the id")
            runs = matching
        elif "/" in t or t.endswith(".json"):
            raise UserError(f"{t}: no such file or directory")
        else:
            hint = did_you_mean(t, names)
            raise UserError(
                f"{t}: not a run id, run record, sweep dir or stage name in {store.root}"
                + (f" ({hint})" if hint else "")
            )
        found.update({str(r.get("id", id(r))): r for r in runs})
    return list(found.values()), stages, ", ".join(targets)


def short_path(path: str) -> str:
    """`path` relative to the working directory where it is under it (for headings)."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path
