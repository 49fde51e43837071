"""Training curves as a PNG beside the artifact, drawn with matplotlib (Agg, no display).

One panel per quantity the step log holds: the loss (train, eval, or PPO's policy and value loss)
with the learning rate on a second axis, and for RL stages the reward (train, eval) with the KL on
a second axis. PPO logs `reward_mean` / `eval_reward_mean`; TRL's GRPO and RLOO log `reward`,
`eval_reward`. A log with none of these (no finite value) gives no file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DPI = 100


@dataclass(frozen=True)
class Panel:
    """Curves sharing a y axis, each `(log key, legend label)`; a key whose label is already drawn
    is skipped (PPO's `reward_mean` and TRL's `reward` are the same curve). `right` goes on a
    second y axis."""

    title: str
    lines: tuple[tuple[str, str], ...]
    right: tuple[str, str]


PANELS = (
    Panel(
        "loss",
        (
            ("loss", "train loss"),
            ("eval_loss", "eval loss"),
            ("policy_loss", "policy loss"),
            ("value_loss", "value loss"),
        ),
        ("learning_rate", "learning rate"),
    ),
    Panel(
        "reward",
        (
            ("reward_mean", "reward"),
            ("reward", "reward"),
            ("eval_reward_mean", "eval reward"),
            ("eval_reward", "eval reward"),
        ),
        ("kl", "KL"),
    ),
)


def series(records: list[dict], key: str) -> list[tuple[float, float]]:
    """(step, value) of the records that have a finite `key`, by step."""
    points = []
    for r in records:
        value, step = r.get(key), r.get("step")
        numbers = isinstance(value, (int, float)) and isinstance(step, (int, float))
        if numbers and not isinstance(value, bool) and math.isfinite(value):
            points.append((float(step), float(value)))
    return sorted(points)


def training_figure(records: list[dict], width: int = 800, panel_height: int = 300) -> Any:
    """A matplotlib Figure with one row per panel that has data, or None when none has."""
    from matplotlib.figure import Figure

    panels = [p for p in PANELS if any(series(records, key) for key, _ in p.lines)]
    if not panels:
        return None
    fig = Figure(figsize=(width / DPI, panel_height * len(panels) / DPI), dpi=DPI)
    for i, panel in enumerate(panels, 1):
        _draw(fig.add_subplot(len(panels), 1, i), panel, records)
    fig.tight_layout()
    return fig


def _draw(ax: Any, panel: Panel, records: list[dict]) -> None:
    from matplotlib.ticker import MaxNLocator

    drawn: set[str] = set()
    for key, label in panel.lines:
        points = series(records, key)
        if not points or label in drawn:
            continue
        drawn.add(label)
        steps, values = zip(*points, strict=True)
        held_out = key.startswith("eval_")
        ax.plot(steps, values, marker="o" if held_out or len(points) == 1 else None, label=label)
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    right = series(records, panel.right[0])
    if right:
        twin = ax.twinx()
        steps, values = zip(*right, strict=True)
        twin.plot(steps, values, color="grey", linestyle="--", label=panel.right[1])
        twin.set_ylabel(panel.right[1])
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, loc="best", fontsize="small")


def write_training_png(records: list[dict], path: Path, width: int = 800) -> bool:
    """Plot the step records of a training log to `path`; False (nothing written) when there is
    no finite loss or reward to plot. Written to a temp file and renamed: never half a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = training_figure(records, width)
    if fig is None:
        return False
    FigureCanvasAgg(fig)
    tmp = path.with_suffix(".png.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return True
