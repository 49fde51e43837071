"""No leftovers: killed runs' records become `interrupted`, a committed stage's work dir goes on
the next run, `gc` finds orphaned work dirs and stale temp files, and the resume hint repeats
the config flags the user gave."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import pipelines

SFT = ["+pipeline=sft", "stages.sft.max_steps=1", "stages.sft.max_samples=16"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def records(store: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (store / "runs").glob("*.json")}


@pytest.mark.slow
def test_leftovers_are_cleaned_and_killed_runs_marked(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert pipelines("run", *SFT, cwd=tmp_path).returncode == 0
    (first,) = records(store).values()
    base_key = first["stages"]["base"]["key"]

    # a run killed after its commit left checkpoints; another was killed mid-stage
    stale = store / "work" / base_key / "checkpoints" / "checkpoint-1"
    stale.mkdir(parents=True)
    killed = {"id": "20200101-000000.000-1-dead", "status": "running", "pid": dead_pid()}
    killed |= {"host": socket.gethostname(), "stages": {"sft": {"key": "k" * 64}}}
    (store / "runs" / f"{killed['id']}.json").write_text(json.dumps(killed))
    resumable = store / "work" / ("k" * 64)
    resumable.mkdir(parents=True)
    orphan = store / "work" / ("o" * 64)
    orphan.mkdir(parents=True)
    tmp = store / "names" / f".sft.json.{dead_pid()}.tmp"
    tmp.write_text("{")

    assert pipelines("run", *SFT, cwd=tmp_path).returncode == 0
    assert not (store / "work" / base_key).exists()
    assert records(store)[killed["id"]]["status"] == "interrupted"

    dry = pipelines("gc", cwd=tmp_path)
    assert f"work dir {'o' * 12} (no run record names it)" in dry.stdout, dry.stdout
    assert "temp file names/.sft.json." in dry.stdout
    assert "k" * 12 not in dry.stdout  # resumable work of a recorded run is kept
    assert orphan.exists() and tmp.exists()
    assert pipelines("gc", "--yes", cwd=tmp_path).returncode == 0
    assert not orphan.exists() and not tmp.exists() and resumable.exists()


def test_the_resume_hint_repeats_the_config_flags(tmp_path: Path) -> None:
    conf = tmp_path / "myconf" / "pipeline"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - /stage@stages.sft: sft\n"
        "stages:\n  sft: {dataset: demo_sft, max_steps: 4, learning_rate: 1e30, max_samples: 64}\n"
    )
    args = ["--config-dir", str(tmp_path / "myconf"), "+pipeline=mine"]
    done = pipelines("run", *args, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    hint = f"to resume: python -m pipelines run --config-dir {tmp_path / 'myconf'} +pipeline=mine"
    assert hint in done.stderr, done.stderr
