"""Training health: a diverged run fails with one message and commits nothing; a stalled one
says so."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from stages.model.health import Diverged, Stagnation, check_record, nonfinite
from tests.cli import pipelines

CFG = SimpleNamespace(learning_rate=1e30)


def test_a_nan_or_inf_in_a_log_record_is_named() -> None:
    assert nonfinite({"loss": 1.0, "grad_norm": math.nan}) == "grad_norm is nan"
    assert nonfinite({"loss": math.inf}) == "loss is inf"
    assert nonfinite({"loss": 2.3, "grad_norm": 0.5, "learning_rate": 1e-3}) is None


def test_check_record_names_step_cause_and_what_is_kept(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    (ckpt / ".complete").write_text("ok\n")
    with pytest.raises(Diverged) as e:
        check_record(7, {"loss": math.nan}, CFG, tmp_path)
    text = str(e.value)
    assert "step 7" in text and "loss is nan" in text and "learning_rate: 1e+30" in text
    assert str(ckpt) in text and "nothing was committed" in text


def test_stagnation_warns_once_after_three_still_logs() -> None:
    watch = Stagnation()
    records = [{"loss": 4.6, "grad_norm": 0.0}] * 5
    warnings = [watch.feed(step, r) for step, r in enumerate(records, 1)]
    assert warnings[:3] == [None, None, None]
    assert warnings[3] is not None and "stalled from step 2" in warnings[3]
    assert warnings[4] is None
    moving = Stagnation()
    got = [moving.feed(s, {"loss": 4.0 - s / 10, "grad_norm": 0.0}) for s in range(6)]
    assert got == [None] * 6


@pytest.mark.slow
def test_sft_with_a_huge_learning_rate_fails_and_commits_nothing(tmp_path: Path) -> None:
    args = ["+pipeline=sft", "stages.sft.learning_rate=1e30", "stages.sft.max_steps=10"]
    done = pipelines("run", *args, "stages.sft.save_steps=100", cwd=tmp_path)
    assert done.returncode == 1, done.stdout
    assert "sft failed: training diverged at step" in done.stderr
    assert "Traceback" not in done.stderr
    store = tmp_path / "store"
    assert not (store / "artifacts" / "sft").exists()
    (row,) = [ln for ln in done.stdout.splitlines() if ln.startswith("sft ")]
    assert row.split()[1] == "failed"
    plan = pipelines("plan", *args, cwd=tmp_path)
    assert "sft: run" in plan.stdout  # never cached
