"""`compare`: several runs side by side. One row per run: the config values that differ between
the runs, then the metrics of their stages, sorted by one metric with the best run marked;
`--plot` draws the same as a PNG (pipelines/compare_chart.py).

Runs are run records (`<store>/runs/<id>.json`, copied to each Hydra job dir as `run.json`;
found by pipelines/compare_runs.py). Reads JSON only: no torch, no Hydra.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.errors import did_you_mean
from compiler.plan import fmt
from pipelines.args import store_flag
from pipelines.compare_runs import load, short_path, sweep_records
from pipelines.summary import table
from runtime.store import Store
from stages.base import UserError

Column = tuple[str, str]  # (stage name, metric name); shown as "stage.metric"
LOWER_IS_BETTER = re.compile(r"loss|perplexity|ppl|error|wall_s|memory|latency|_mb$|(^|_)kl$")


@dataclass
class Comparison:
    runs: list[dict[str, Any]]  # run records, best first
    config_keys: list[str]  # flattened key paths whose values differ between the runs
    metrics: list[Column]
    sort: Column | None
    ascending: bool
    where: str = ""  # what was compared, for the heading


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": leaf}; lists are leaves."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(runs: list[dict[str, Any]]) -> list[str]:
    """Flattened config keys whose value is not the same in every run (absent counts)."""
    flat = [flatten(r.get("config") or {}) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    missing = object()
    return [k for k in keys if len({json.dumps(f.get(k, missing), default=str) for f in flat}) > 1]


def stage_order(runs: list[dict[str, Any]]) -> list[str]:
    """The stages of all runs in DAG order (each record's `order`; older records: by name)."""
    seen: dict[str, None] = {}
    for r in runs:
        for name in r.get("order") or sorted(r.get("stages", {})):
            seen.setdefault(name, None)
    return list(seen)


def metric(run: dict[str, Any], column: Column) -> Any:
    entry = run.get("stages", {}).get(column[0]) or {}
    return flatten(entry.get("metrics") or {}).get(column[1])


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def metric_columns(runs: list[dict[str, Any]], stages: list[str]) -> list[Column]:
    cols: dict[Column, None] = {}
    for stage in stages:
        for r in runs:
            entry = r.get("stages", {}).get(stage) or {}
            for name in sorted(flatten(entry.get("metrics") or {})):
                cols.setdefault((stage, name), None)
    return list(cols)


def varying_stages(runs: list[dict[str, Any]], order: list[str]) -> list[str]:
    """Stages whose artifact is not the same in every run (the others have the same metrics)."""
    keys = {s: {(r.get("stages", {}).get(s) or {}).get("key") for r in runs} for s in order}
    return [s for s in order if len(keys[s]) > 1]


def headline(run: dict[str, Any], stage: str) -> str:
    """The metric the run summary showed for `stage` (recorded; older records: the kind's)."""
    entry = run.get("stages", {}).get(stage) or {}
    if entry.get("headline"):
        return str(entry["headline"])
    from stages import KINDS

    kind = KINDS.get(entry.get("kind", ""))
    return str(getattr(kind, "headline", "")) if kind else ""


def default_sort(runs: list[dict[str, Any]], order: list[str]) -> Column | None:
    """The headline metric of the last stage in the DAG that has one: preferably one whose value
    differs between the runs (an export that is the same size in every run decides nothing)."""
    found = []
    for stage in reversed(order):
        names = {headline(r, stage) for r in runs} - {""}
        for name in sorted(names):
            values = [metric(r, (stage, name)) for r in runs]
            numbers = {v for v in values if is_number(v)}
            if numbers:
                found.append(((stage, name), len(numbers) > 1))
    varying = [col for col, differs in found if differs]
    return (varying or [col for col, _ in found] or [None])[0]


def lower_is_better(column: Column) -> bool:
    """Loss, perplexity, error, time, memory and KL sort ascending; everything else descending."""
    return bool(LOWER_IS_BETTER.search(column[1]))


def resolve_metric(name: str, runs: list[dict[str, Any]]) -> Column:
    """`stage.metric`, or a bare metric name that only one stage has."""
    columns = metric_columns(runs, stage_order(runs))
    names = {f"{s}.{m}": (s, m) for s, m in columns}
    if name in names:
        return names[name]
    bare = [c for c in columns if c[1] == name]
    if len(bare) == 1:
        return bare[0]
    if len(bare) > 1:
        which = ", ".join(f"{s}.{m}" for s, m in bare)
        raise UserError(f"--sort {name}: more than one stage has it; name one of {which}")
    hint = did_you_mean(name, [*names, *(m for _, m in columns)])
    raise UserError(
        f"--sort {name}: no such metric in these runs"
        + (f" ({hint})" if hint else f"; metrics: {', '.join(sorted(names)) or 'none'}")
    )


def compare(
    runs: list[dict[str, Any]],
    sort: str | None = None,
    stages: list[str] | None = None,
    where: str = "",
) -> Comparison:
    """Rows and columns of the comparison; `stages` picks whose metrics to show (default: the
    stages whose artifact differs between the runs)."""
    if not runs:
        raise UserError(f"nothing to compare: no run records{' in ' + where if where else ''}")
    order = stage_order(runs)
    for name in stages or []:
        if name not in order:
            hint = did_you_mean(name, order)
            raise UserError(
                f"--stage {name}: no such stage in these runs ({hint or 'stages: ' + ', '.join(order)})"
            )
    column = resolve_metric(sort, runs) if sort else default_sort(runs, stages or order)
    shown = stages or varying_stages(runs, order) or [s for s in order if column and s == column[0]]
    metrics = [c for c in metric_columns(runs, shown) if c != column]
    metrics = [column, *metrics] if column else metrics  # the deciding column first
    ascending = lower_is_better(column) if column else True
    ranked = sorted(runs, key=_run_order)
    if column:
        sign = 1 if ascending else -1
        ranked.sort(key=lambda r: (0, sign * v) if is_number(v := metric(r, column)) else (1, 0))
    return Comparison(ranked, config_diff(runs), metrics, column, ascending, where)


def _run_order(run: dict[str, Any]) -> tuple[int, str]:
    """Jobs of a sweep by number, other runs by id (ids sort by start time)."""
    return ((run.get("sweep") or {}).get("job", 0), str(run.get("id", "")))


def labels(c: Comparison) -> tuple[str, list[str]]:
    """A name per row: the job number when all runs are jobs of one sweep, else the run id."""
    sweeps = {(r.get("sweep") or {}).get("dir") for r in c.runs}
    if len(sweeps) == 1 and None not in sweeps:
        return "job", [str(r["sweep"]["job"]) for r in c.runs]
    return "run", [str(r.get("id", "?")) for r in c.runs]


def config_label(c: Comparison, run: dict[str, Any]) -> str:
    """`sft.learning_rate=1e-3, ...`: what sets this run apart (for the chart)."""
    flat = flatten(run.get("config") or {})
    return ", ".join(f"{k.removeprefix('stages.')}={fmt(flat.get(k, '-'))}" for k in c.config_keys)


def render(c: Comparison) -> str:
    failed = any(r.get("status") != "ok" for r in c.runs)
    name_header, names = labels(c)
    header = [
        "",
        name_header,
        *(["status"] if failed else []),
        *c.config_keys,
        *(f"{s}.{m}" for s, m in c.metrics),
    ]
    rows = []
    for i, (run, name) in enumerate(zip(c.runs, names, strict=True)):
        flat = flatten(run.get("config") or {})
        best = i == 0 and c.sort is not None and is_number(metric(run, c.sort))
        rows.append(
            [
                "*" if best else "",
                name,
                *([str(run.get("status", "?"))] if failed else []),
                *(fmt(flat[k]) if k in flat else "-" for k in c.config_keys),
                *(_cell(metric(run, col)) for col in c.metrics),
            ]
        )
    n = len(c.runs)
    head = f"{n} run{'s' if n != 1 else ''}" + (f" of {c.where}" if c.where else "")
    if c.sort:
        better = "lower" if c.ascending else "higher"
        head += f", sorted by {c.sort[0]}.{c.sort[1]} ({better} is better; * the best)"
    return head + "\n" + table(header, rows)


def _cell(value: Any) -> str:
    return "-" if value is None else fmt(value)


def sweep_comparison(sweep_dir: Path) -> str | None:
    """The table a multirun prints at its end (None when no job got as far as a run record)."""
    runs = sweep_records(sweep_dir) if sweep_dir.is_dir() else []
    return render(compare(runs, where=short_path(str(sweep_dir)))) if runs else None


def compare_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pipelines compare",
        description="configs that differ and metrics of several runs, side by side",
    )
    parser.add_argument(
        "targets",
        nargs="*",
        help="run ids or run.json files, sweep dirs, or stage names "
        "(default: the jobs of the latest multirun)",
    )
    parser.add_argument("--store", default=os.environ.get("PIPELINES_STORE", ".pipelines"))
    parser.add_argument("--sort", help="the metric to sort by, `stage.metric` or a bare name")
    parser.add_argument("--stage", action="append", help="show this stage's metrics (repeatable)")
    parser.add_argument("--plot", help="also write a chart to this .png file")
    args = parser.parse_args(store_flag(argv))
    try:
        store = Store(Path(args.store))
        if args.plot and not args.plot.endswith(".png"):
            raise UserError(f"--plot {args.plot}: the chart is a PNG; name a .png file")
        if args.plot and not Path(args.plot).resolve().parent.is_dir():
            raise UserError(f"--plot {args.plot}: no directory {Path(args.plot).parent}")
        runs, named, where = load(args.targets, store)
        c = compare(runs, args.sort, (args.stage or []) + named or None, where)
        print(render(c))
        if args.plot:
            from pipelines.compare_chart import write_chart

            write_chart(c, Path(args.plot), store)
            print(f"chart: {args.plot}")
    except UserError as e:
        print(f"pipelines compare: {e}", file=sys.stderr)
        return 2
    return 0
