"""The chart of `compare --plot`: the sort metric of each run as a bar (the best one highlighted),
labelled with what sets the run apart, and below it the training curves of the runs overlaid,
read from their artifacts' `train_log.jsonl`. matplotlib is imported only when a chart is drawn."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from pipelines.compare import Comparison, config_label, is_number, labels, metric, stage_order
from runtime.store import Store
from stages.base import UserError
from stages.model.plot import series

CURVE_KEYS = ("loss", "reward_mean", "reward")  # the first one a stage's log has is drawn
DPI = 100
PALETTE = ["C1", "C0", *(f"C{i}" for i in range(2, 10))]  # the best run in C1, as its bar


def curves(c: Comparison, store: Store) -> tuple[str, str, list[list[tuple[float, float]]]]:
    """(stage, log key, points per run) of the last stage in the DAG whose artifact differs
    between the runs and has a step log; ("", "", []) when none has."""
    shown = {stage for stage, _ in c.metrics}
    for stage in reversed([s for s in stage_order(c.runs) if s in shown]):
        logs = [_log(run, stage, store) for run in c.runs]
        for key in CURVE_KEYS:
            points = [series(log, key) for log in logs]
            if any(points):
                return stage, key, points
    return "", "", []


def _log(run: dict[str, Any], stage: str, store: Store) -> list[dict[str, Any]]:
    """The step records of the run's artifact for `stage`, looked up in the store the run used
    and in `store`; [] when the artifact or its log is gone."""
    key = (run.get("stages", {}).get(stage) or {}).get("key")
    own = (run.get("config") or {}).get("store")
    for root in ([Path(own)] if own else []) + [store.root]:
        found = Store(root).find(key) if key else None
        if found:
            return _records(found / "train_log.jsonl")
    return []


def _records(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def write_chart(c: Comparison, path: Path, store: Store, width: int = 900) -> None:
    """Bars of the sort metric, then the curves; a UserError when there is neither."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    stage, key, points = curves(c, store)
    if c.sort is None and not points:
        raise UserError("--plot: nothing to draw (no numeric metric and no training log)")
    names = [config_label(c, run) or name for run, name in zip(c.runs, labels(c)[1], strict=True)]
    panels = (c.sort is not None) + bool(points)
    fig = Figure(figsize=(width / DPI, 3.5 * panels), dpi=DPI)
    row = 1
    if c.sort is not None:
        _bars(fig.add_subplot(panels, 1, row), c, names)
        row += 1
    if points:
        ax = fig.add_subplot(panels, 1, row)
        for i, (name, pts) in enumerate(zip(names, points, strict=True)):
            if pts:
                steps, values = zip(*pts, strict=True)
                marker = "o" if len(pts) == 1 else None
                ax.plot(steps, values, label=name, marker=marker, color=PALETTE[i % len(PALETTE)])
        ax.set_title(f"{stage}: {key}")
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def _bars(ax: Any, c: Comparison, names: list[str]) -> None:
    """One horizontal bar per run, best on top and in its own colour, value at its end."""
    assert c.sort is not None
    values = [metric(run, c.sort) for run in c.runs]
    heights = [float(v) if is_number(v) else math.nan for v in values]
    y = list(range(len(names)))[::-1]  # row 0 (the best) on top
    colors = ["C1" if i == 0 and is_number(values[0]) else "C0" for i in range(len(names))]
    ax.barh(y, [0.0 if math.isnan(h) else h for h in heights], color=colors)
    ax.set_yticks(y, names, fontsize="small")
    for yi, h in zip(y, heights, strict=True):
        ax.text(
            0 if math.isnan(h) else h,
            yi,
            " n/a" if math.isnan(h) else f" {h:.4g}",
            va="center",
            fontsize="small",
        )
    better = "lower" if c.ascending else "higher"
    ax.set_title(f"{c.sort[0]}.{c.sort[1]} ({better} is better)")
    ax.grid(axis="x", alpha=0.3)
