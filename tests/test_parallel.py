"""Stages side by side and runs on clusters: two independent branches on two slots make the
artifacts one slot makes; a multirun of four jobs on the joblib launcher builds the shared stages
once; a pipeline runs its training stage as a job through submitit's local executor; Ctrl-C stops
every child process; the shipped Hydra launcher configs compose."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from subprocess import PIPE

import pytest

from tests.cli import ok, pipelines, start

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

BRANCHES = [
    "+pipeline=sft",
    "~stages.eval",
    "~stages.export",
    "stages.sft.max_steps=4",
    "stages.sft.max_samples=64",
    "+stages.sft_b={kind:sft,max_steps:4,max_samples:64,learning_rate:1e-4}",
]
LOGS = ("train_log.jsonl", "tensorboard/")  # step records carry timings; TensorBoard names


def digests(store: Path) -> dict[str, dict[str, str]]:
    out = {}
    for manifest in store.glob("artifacts/*/*/manifest.json"):
        m = json.loads(manifest.read_text())
        out[m["key"]] = {k: str(v) for k, v in m["files"].items() if not k.startswith(LOGS)}
    return out


def test_two_slots_run_independent_branches_into_the_same_artifacts(tmp_path: Path) -> None:
    two = ok(pipelines("run", *BRANCHES, "launcher.slots=2", cwd=tmp_path))
    store = tmp_path / "store"
    parallel = digests(store)
    assert "[sft_b] " in two.stdout and "[sft] " in two.stdout  # labelled, side by side
    shutil.rmtree(store)  # the same path again: an adapter names its base by path
    ok(pipelines("run", *BRANCHES, cwd=tmp_path))
    assert digests(store) == parallel
    assert len(parallel) == 5  # base, two tokenize nodes, two sft stages


def test_a_multirun_on_the_joblib_launcher_builds_shared_stages_once(tmp_path: Path) -> None:
    rates = "stages.sft.learning_rate=1e-4,2e-4,3e-4,4e-4"
    args = ["-m", "hydra/launcher=local_parallel", *BRANCHES[:5], "stages.sft.max_steps=2", rates]
    ok(pipelines("run", *args, cwd=tmp_path, timeout=900))
    records = [json.loads(p.read_text()) for p in (tmp_path / "store" / "runs").glob("*.json")]
    assert sorted(r["sweep"]["job"] for r in records) == [0, 1, 2, 3]
    assert all(r["status"] == "ok" for r in records)
    for shared in ("base", "tokenize:demo_sft"):
        made = [r for r in records if r["stages"][shared]["status"] == "ran"]
        assert len(made) == 1, shared  # the other jobs found it cached (or waited for it)
    assert len({r["stages"]["sft"]["key"] for r in records}) == 4


def test_a_stage_runs_as_a_job_through_submitit(tmp_path: Path) -> None:
    args = ["launcher=slurm", "launcher.cluster=local", "launcher.nproc_per_node=1"]
    result = ok(pipelines("run", *BRANCHES[:5], "stages.sft.max_steps=2", *args, cwd=tmp_path))
    assert "submitted job" in result.stdout
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "store" / "runs").glob("*.json")]
    assert record["stages"]["sft"]["status"] == "ran"
    assert list((tmp_path / "store" / "logs").rglob("*_log.out"))  # the job's own log is kept


def test_ctrl_c_stops_every_rank_and_says_how_to_resume(tmp_path: Path) -> None:
    args = [*BRANCHES[:5], "stages.sft.max_steps=100000", "launcher=torchrun"]
    ignoring = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
    # started as a parent that ignores SIGINT leaves it (a test runner, a background job)
    proc = start(
        "run", *args, cwd=tmp_path, stdout=PIPE, stderr=PIPE, text=True, preexec_fn=ignoring
    )
    deadline = time.time() + 300
    while not list((tmp_path / "store" / "work").glob("*/logs/rank-1.log")):
        assert time.time() < deadline and proc.poll() is None, "the ranks never started"
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "to resume: python -m pipelines run" in err
    spec = str(tmp_path / "store" / "work")
    left = subprocess.run(["pgrep", "-f", spec], capture_output=True, text=True).stdout.split()
    assert left == [], "ranks outlived the run"


def test_the_shipped_hydra_launchers_compose() -> None:
    from hydra import compose, initialize_config_dir

    from pipelines.app import CONF_DIR, register_stage_defaults

    register_stage_defaults()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        local = compose("config", ["hydra/launcher=local_parallel"], return_hydra_config=True)
        cluster = compose("config", ["hydra/launcher=cluster"], return_hydra_config=True)
    assert local.hydra.launcher._target_.endswith("JoblibLauncher")
    assert local.hydra.launcher.n_jobs == 2
    assert cluster.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cluster.hydra.launcher.gpus_per_node == 8
