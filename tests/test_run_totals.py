"""A resumed run reports the whole run: its train loss averages every step's loss (those before
the checkpoint too) and its tokens/s divides by every attempt's training time, from the totals
each checkpoint keeps."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from stages.base import Context
from stages.model.training import TOTALS, RunTotals


def ctx(tmp_path: Path, resume: Path | None) -> Context:
    return Context("sft", "k", tmp_path / "out", tmp_path / "work", {}, resume_from=resume)


def result(step: int, loss: float, runtime: float) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, training_loss=loss, metrics={"train_runtime": runtime})


def test_a_fresh_run_is_its_own_attempt(tmp_path: Path) -> None:
    totals = RunTotals(ctx(tmp_path, None))
    assert totals.whole_run(result(10, 2.0, 8.0)) == (2.0, 8.0)


def test_a_resumed_run_adds_the_steps_and_seconds_before_its_checkpoint(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    saved = {"loss_sum": 4 * 3.0, "seconds": 6.0, "steps": 4, "known": True}
    (checkpoint / TOTALS).write_text(json.dumps(saved))
    totals = RunTotals(ctx(tmp_path, checkpoint))
    loss, seconds = totals.whole_run(result(10, 1.5, 9.0))  # steps 5..10 averaged 1.5
    assert loss == (12.0 + 6 * 1.5) / 10 and seconds == 15.0


def test_checkpoint_totals_add_this_attempts_loss_to_the_earlier_ones(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / TOTALS).write_text(json.dumps({"loss_sum": 5.0, "seconds": 1.0, "steps": 2}))
    totals = RunTotals(ctx(tmp_path, checkpoint))
    totals.trainer = SimpleNamespace(_total_loss_scalar=4.0, _tr_loss=0.5)  # the Trainer's sums
    later = tmp_path / "checkpoint-4"
    later.mkdir()
    totals.save(later, 4)
    saved = json.loads((later / TOTALS).read_text())
    assert saved["loss_sum"] == 9.5 and saved["steps"] == 4 and saved["seconds"] >= 1.0


def test_a_checkpoint_without_totals_falls_back_to_the_attempt(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()  # written by an older version: no totals
    totals = RunTotals(ctx(tmp_path, checkpoint))
    assert totals.whole_run(result(6, 2.5, 3.0)) == (2.5, 3.0)
