"""Where a training step's time goes: per-step wall time and tokens (a Trainer callback), and one
profiled step split into matmuls, attention, elementwise, optimizer and the rest."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

PROFILED_STEP = 3  # steps 1-2 warm up (allocator, first graphs)


def step_clock() -> Any:
    """A callback keeping (seconds, non-padding tokens) of each step, end to end (data
    collation included): the whole-run rate hides which steps a busy machine slowed."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[tuple[float, int]] = []
            self.t, self.seen = 0.0, 0

        def on_train_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            self.t, self.seen = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            now, seen = time.perf_counter(), state.num_input_tokens_seen
            self.steps.append((now - self.t, seen - self.seen))
            self.t, self.seen = now, seen

    return StepClock()


def profiler(out: Path) -> Any:
    """A callback profiling step PROFILED_STEP whole (collation, forward, backward, optimizer);
    its breakdown goes to `out` as JSON."""
    import torch
    from transformers import TrainerCallback

    class Profile(TrainerCallback):
        prof: Any = None
        t0 = 0.0

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if state.global_step == PROFILED_STEP - 1:
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.prof.__enter__()
                self.t0 = time.perf_counter()
            elif state.global_step == PROFILED_STEP and self.prof is not None:
                wall = time.perf_counter() - self.t0
                self.prof.__exit__(None, None, None)
                out.write_text(json.dumps(breakdown(self.prof, wall)))

    return Profile()


MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")


def breakdown(prof: Any, wall: float) -> dict[str, float]:
    """Seconds of one step by kind, from each op's self time: matmuls, attention, the
    optimizer (what runs under Optimizer.step, grad clipping and zeroing: the _foreach ops),
    elementwise (every other op); `other` is the rest of the wall time (Python, collation,
    the Trainer's bookkeeping)."""
    parts = dict.fromkeys(("matmuls", "attention", "elementwise", "optimizer"), 0.0)
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        seconds, name = e.self_cpu_time_total / 1e6, e.name.lower()
        if _under(e, "Optimizer.") or "_foreach" in name:
            parts["optimizer"] += seconds
        elif e.name in MATMUL:
            parts["matmuls"] += seconds
        elif "attention" in name:
            parts["attention"] += seconds
        else:
            parts["elementwise"] += seconds
    parts["other"] = max(0.0, wall - sum(parts.values()))
    return {**parts, "wall": wall}


def _under(event: Any, prefix: str) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(prefix):
            return True
        parent = parent.cpu_parent
    return False
