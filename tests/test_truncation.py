"""Truncation you can see: tokenization records lengths against cutoff_len in the data
artifact's manifest; `plan` and `data preview` show them; the run summary warns when more than 5%
of examples were cut, with the cutoff_len that keeps 95% whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.data.lengths import Tally, percentile
from tests.cli import pipelines


def test_tally_counts_cut_examples_and_suggests_a_cutoff() -> None:
    tally = Tally()
    for n in range(1, 101):  # lengths 1..100
        tally.fit(n, 90)
    stats = tally.metrics(90)
    assert stats["truncated"] == 10 and stats["truncated_tokens"] == sum(range(1, 11))
    assert (stats["length_p50"], stats["length_p95"], stats["length_max"]) == (50, 95, 100)
    assert stats["warnings"] == [
        "10 of 100 examples (10%) were cut to cutoff_len 90, losing 55 tokens; "
        "cutoff_len 95 keeps 95% whole"
    ]
    quiet = Tally()
    for n in range(1, 101):
        quiet.fit(n, 95)  # 5% cut: at the threshold, no warning
    assert "warnings" not in quiet.metrics(95)


def test_percentile_is_the_nearest_rank() -> None:
    assert percentile([1, 2, 3, 4], 0.5) == 2
    assert percentile([7], 0.95) == 7


def tokenize_manifest(store: Path) -> dict:
    (path,) = (store / "artifacts" / "tokenize").iterdir()
    return json.loads((path / "manifest.json").read_text())


@pytest.mark.slow
def test_cut_examples_are_reported_in_manifest_plan_and_summary(tmp_path: Path) -> None:
    args = ["+pipeline=sft", "~stages.eval", "stages.sft.max_steps=1", "stages.sft.max_samples=100"]
    done = pipelines("run", *args, "stages.sft.cutoff_len=40", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = tokenize_manifest(tmp_path / "store")["metrics"]
    assert metrics["truncated"] > 5 and metrics["cutoff_len"] == 40
    warning = [ln for ln in done.stdout.splitlines() if ln.startswith("warning: tokenize:demo_sft")]
    assert warning and f"cutoff_len {metrics['length_p95']} keeps 95% whole" in warning[0]
    assert "Token indices sequence length" not in done.stderr
    plan = pipelines("plan", *args, "stages.sft.cutoff_len=40", cwd=tmp_path)
    line = f"{metrics['truncated']} of 100 truncated at cutoff_len 40"
    assert f"    lengths p50 {metrics['length_p50']} " in plan.stdout and line in plan.stdout


@pytest.mark.slow
def test_the_shipped_sft_pipeline_truncates_nothing(tmp_path: Path) -> None:
    args = ["+pipeline=sft", "~stages.eval", "stages.sft.max_steps=1"]
    assert pipelines("run", *args, cwd=tmp_path).returncode == 0
    metrics = tokenize_manifest(tmp_path / "store")["metrics"]
    assert metrics["truncated"] == 0 and metrics["length_max"] <= metrics["cutoff_len"]


@pytest.mark.slow
def test_preview_reports_lengths_and_takes_overrides_after_flags(tmp_path: Path) -> None:
    done = pipelines(
        "data", "preview", "demo_sft", "-n", "1", "--cutoff-len", "30", "model=tiny", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "of 1200 truncated at cutoff_len 30" in done.stdout
    assert "warning: " in done.stdout and "keeps 95% whole" in done.stdout
