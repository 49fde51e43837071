"""Crashes: `kill -9` during training resumes with identical losses; during a commit, no
artifact ever appears without its complete manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import ROOT, pipelines, run_until_first_checkpoint

pytestmark = pytest.mark.slow

TRAIN = [
    "+pipeline=sft",
    "~stages.eval",  # training is what these tests are about
    "~stages.export",
    "stages.sft.max_steps=30",
    "stages.sft.save_steps=5",
    "stages.sft.logging_steps=1",
]
METHODS = {
    "lora": ["stages.sft.finetuning_type=lora"],
    "full": ["stages.sft.finetuning_type=full"],
    "qlora": ["stages.sft.finetuning_type=lora", "stages.sft.quantization_bit=4"],
}


def losses(artifact: Path) -> dict[int, float]:
    """step -> loss; each step is logged once, a resumed run included."""
    out = {}
    for line in (artifact / "train_log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "loss" in entry:
            assert entry["step"] not in out, f"step {entry['step']} logged twice"
            out[entry["step"]] = entry["loss"]
    return out


def metrics(artifact: Path) -> dict[str, float]:
    return json.loads((artifact / "manifest.json").read_text())["metrics"]


def sft_artifact(store: Path) -> Path:
    (path,) = (store / "artifacts" / "sft").iterdir()
    return path


@pytest.mark.parametrize("method", sorted(METHODS))
def test_kill_during_training_resumes_with_identical_losses(tmp_path: Path, method: str) -> None:
    if method == "qlora":
        pytest.importorskip("bitsandbytes", reason="QLoRA needs the [quant] extra")
    args = [*TRAIN, *METHODS[method]]
    code = run_until_first_checkpoint(*args, cwd=tmp_path)
    assert code == -signal.SIGKILL, "training finished before it could be killed"

    plan = pipelines("plan", *args, cwd=tmp_path)
    (line,) = [ln for ln in plan.stdout.splitlines() if ln.startswith("sft: ")]
    assert line.startswith("sft: resume from checkpoint "), plan.stdout
    step = int(line.split("checkpoint ")[1].split()[0])
    assert 0 < step < 30

    resumed = pipelines("run", *args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed" in resumed.stdout

    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    fresh = pipelines("run", *args, cwd=fresh_dir)
    assert fresh.returncode == 0, fresh.stderr
    got, want = losses(sft_artifact(tmp_path / "store")), losses(sft_artifact(fresh_dir / "store"))
    assert sorted(got) == sorted(want) == list(range(1, 31))
    after = [s for s in want if s > step]
    assert after
    for s in after:
        assert abs(got[s] - want[s]) <= 1e-5, (s, got[s], want[s])
    # the manifest describes the whole run, as the uninterrupted one does
    m_got, m_want = (
        metrics(sft_artifact(tmp_path / "store")),
        metrics(sft_artifact(fresh_dir / "store")),
    )
    assert m_got["tokens_seen"] == m_want["tokens_seen"]
    assert abs(m_got["train_loss"] - m_want["train_loss"]) <= 1e-4, (m_got, m_want)
    # tokens/s over the whole run's training time: tests/test_run_totals.py (timing is noisy here)


CRASH_ON_COMMIT = """
import os, signal, sys
real_rename = os.rename
def rename(src, dst):
    if "/artifacts/sft/" in str(dst):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rename(src, dst)
os.rename = rename
from pipelines.__main__ import main
sys.exit(main(["run", *sys.argv[1:]]))
"""


def test_kill_during_commit_never_shows_a_partial_artifact(tmp_path: Path) -> None:
    args = [
        "+pipeline=sft",
        "stages.sft.max_steps=6",
        "stages.sft.save_steps=3",
        "stages.sft.finetuning_type=lora",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINES_STORE": str(tmp_path / "store")}
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_ON_COMMIT, *args], cwd=tmp_path, env=env, capture_output=True
    )
    assert crashed.returncode == -signal.SIGKILL
    store = tmp_path / "store"
    assert not (store / "artifacts" / "sft").exists() or not any(
        (store / "artifacts" / "sft").iterdir()
    )
    for manifest_dir in (store / "artifacts").glob("*/*"):
        assert (manifest_dir / "manifest.json").is_file()  # base and tokenize committed whole

    plan = pipelines("plan", *args, cwd=tmp_path)
    assert "sft: resume from checkpoint 6" in plan.stdout
    rerun = pipelines("run", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    manifest = json.loads((sft_artifact(store) / "manifest.json").read_text())
    assert manifest["resumed_from"] == 6
    assert "adapter_model.safetensors" in manifest["files"]
