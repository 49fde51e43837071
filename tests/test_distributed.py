"""Stages under torchrun and DeepSpeed on CPU (gloo), through the CLI as a user runs them: two
processes reach one process's losses, ZeRO-2/3 finish and their artifacts reload, ppo and dpo
train on two ranks, two torchrun agents form "two nodes", a rank killed with SIGKILL fails the
stage by name and the rerun (or torchrun's own restart) resumes, and a user error raised in a
rank comes back as its one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.cli import ROOT, ok, pipelines, start

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

SFT = [
    "+pipeline=sft",
    "~stages.eval",
    "~stages.export",
    "stages.sft.max_steps=4",
    "stages.sft.max_samples=64",
    "stages.sft.logging_steps=1",
]


def losses(store: Path, kind: str = "sft") -> list[float]:
    (log,) = (store / "artifacts" / kind).glob("*/train_log.jsonl")
    return [json.loads(line)["loss"] for line in log.read_text().splitlines() if "loss" in line]


def artifact(store: Path, kind: str) -> Path:
    (path,) = (store / "artifacts" / kind).iterdir()
    return path


def test_two_processes_reach_the_losses_of_one_with_the_same_global_batch(tmp_path: Path) -> None:
    """Each step's examples are the same (accelerate hands rank r the r-th slice of the global
    batch) and the loss is normalised by the global token count, so only the order of float
    additions differs: 1e-5 relative covers it."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    ok(pipelines("run", *SFT, "stages.sft.per_device_train_batch_size=4", cwd=one))
    args = ["launcher=torchrun", "stages.sft.per_device_train_batch_size=2"]
    result = ok(pipelines("run", *SFT, *args, cwd=two))
    assert losses(one / "store") == pytest.approx(losses(two / "store"), rel=1e-5)
    assert len(losses(two / "store")) == 4
    # data once: tokenize ran in the orchestrator, before the ranks started
    record = json.loads(next((two / "store" / "runs").glob("*.json")).read_text())
    assert record["stages"]["tokenize:demo_sft"]["status"] == "ran"
    assert "tokenize demo_sft" not in _rank_logs(two / "store")
    assert "rank-1.log" in {p.name for p in (two / "store" / "logs").rglob("*.log")}
    assert "sft" in result.stdout  # rank 0's progress reaches the console


def _rank_logs(store: Path) -> str:
    return "".join(p.read_text() for p in (store / "logs").rglob("rank-*.log"))


@pytest.mark.parametrize("zero", [2, 3])
def test_deepspeed_zero_trains_and_the_artifact_reloads_and_generates(
    tmp_path: Path, zero: int
) -> None:
    from stages.model.inference import greedy_generate, load_for_inference
    from stages.model.loading import read_model_json

    args = ["launcher=deepspeed", f"launcher.zero_stage={zero}", "stages.sft.max_steps=2"]
    ok(pipelines("run", *SFT, *args, cwd=tmp_path))
    store = tmp_path / "store"
    path = artifact(store, "sft")
    assert read_model_json(path)["format"] in ("full", "adapter")
    loaded = load_for_inference(path, lambda key: artifact(store, "base"))
    for p in loaded.model.parameters():
        assert p.numel() > 0  # ZeRO-3 weights were gathered before saving, not saved as shards
    prompt = loaded.prompt_ids([{"role": "user", "content": "2+2"}])
    (reply,) = greedy_generate(loaded, [prompt], max_new_tokens=4, batch_size=1)
    assert len(reply) > 0


def test_dpo_and_ppo_train_on_two_ranks(tmp_path: Path) -> None:
    """dpo through TRL's trainer; ppo through our loop (gradients averaged over the ranks);
    ppo's own `launcher` overrides the pipeline's in-process one."""
    dpo = [
        "+pipeline=dpo",
        "~stages.eval",
        "~stages.export",
        "stages.dpo.max_steps=2",
        "stages.sft.max_steps=2",
        "launcher=torchrun",
    ]
    (tmp_path / "dpo").mkdir(), (tmp_path / "rlhf").mkdir()
    ok(pipelines("run", *dpo, cwd=tmp_path / "dpo"))
    assert (tmp_path / "dpo" / "store" / "artifacts" / "dpo").is_dir()
    assert "rank-1.log" in {p.name for p in (tmp_path / "dpo" / "store" / "logs").rglob("*")}
    rlhf = [
        "+pipeline=rlhf",
        "~stages.eval",
        "~stages.export",
        *[f"stages.{s}.max_steps=2" for s in ("pt", "sft", "rm", "ppo")],
        "stages.ppo.launcher={name:torchrun,nproc_per_node:2}",
    ]
    ok(pipelines("run", *rlhf, cwd=tmp_path / "rlhf"))
    store = tmp_path / "rlhf" / "store"
    log = (artifact(store, "ppo") / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log if '"reward_mean"' in line] == [1, 2]
    ranks = {p.parent.name: p.name for p in (store / "logs").rglob("rank-1.log")}
    assert "ppo" in ranks and "sft" not in ranks  # only ppo ran under torchrun


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_as_two_torchrun_agents_on_localhost(tmp_path: Path) -> None:
    """The multi-node recipe on one machine: each "node" runs the same command with its
    node_rank, against one shared store; node 0 commits, node 1 waits for it."""
    port = free_port()
    common = [*SFT, "launcher=torchrun", "launcher.nnodes=2", "launcher.nproc_per_node=1"]
    common.append(f"launcher.rdzv_endpoint=127.0.0.1:{port}")
    procs = [
        start(
            "run",
            *common,
            f"launcher.node_rank={rank}",
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    assert len(losses(tmp_path / "store")) == 4
    logs = {p.name for p in (tmp_path / "store" / "logs").rglob("rank-*.log")}
    assert logs == {"rank-0.log", "rank-1.log"}  # one process on each "node"


# Loaded by every Python process that has tmp_path on its path; acts only in rank KILL_RANK
# of a torchrun-started worker: at its KILL_AT-th training step, once (the marker file), it is
# killed by SIGKILL or (HANG=1) stops answering its peers for a minute.
KILLER = """
import os, signal, time
if "LOCAL_RANK" in os.environ and os.environ.get("RANK") == os.environ.get("KILL_RANK"):
    marker = os.environ["KILL_MARKER"]
    if not os.path.exists(marker):
        import stages.model.health as health
        real, seen = health.weights_finite, {"n": 0}
        def finite(model):
            seen["n"] += 1
            if seen["n"] == int(os.environ["KILL_AT"]):
                open(marker, "w").close()
                if os.environ.get("HANG"):
                    time.sleep(60)
                os.kill(os.getpid(), signal.SIGKILL)
            return real(model)
        health.weights_finite = finite
"""

KILLED = [*SFT, "stages.sft.max_steps=6", "stages.sft.save_steps=2", "launcher=torchrun"]


def killer_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(KILLER)
    return {
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "hooks"), str(ROOT)]),
        "KILL_RANK": "1",
        "KILL_AT": "3",
        "KILL_MARKER": str(tmp_path / "killed"),
    }


def test_a_killed_rank_fails_the_stage_by_name_and_the_rerun_resumes(tmp_path: Path) -> None:
    env = killer_env(tmp_path)
    failed = pipelines("run", *KILLED, cwd=tmp_path, env=env)
    assert failed.returncode == 1
    assert (tmp_path / "killed").exists()
    assert "sft failed: rank 1 failed with exit code -9: killed by signal 9" in failed.stderr
    assert "to resume:" in failed.stderr
    rerun = ok(pipelines("run", *KILLED, cwd=tmp_path, env=env))
    assert "resumed" in rerun.stdout
    uninterrupted = tmp_path / "clean"
    uninterrupted.mkdir()
    ok(pipelines("run", *KILLED, cwd=uninterrupted))
    assert losses(tmp_path / "store") == pytest.approx(losses(uninterrupted / "store"), rel=1e-5)


def test_with_max_restarts_torchrun_restarts_the_ranks_and_they_resume(tmp_path: Path) -> None:
    env = killer_env(tmp_path)
    result = ok(pipelines("run", *KILLED, "launcher.max_restarts=1", cwd=tmp_path, env=env))
    assert (tmp_path / "killed").exists()  # it was killed, and finished by itself
    assert "sft" in result.stdout
    steps = [json.loads(x)["step"] for x in _log_lines(tmp_path / "store")]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # steps 3-4 re-taken once, not twice


def _log_lines(store: Path) -> list[str]:
    log = artifact(store, "sft") / "train_log.jsonl"
    return [line for line in log.read_text().splitlines() if '"loss"' in line]


def test_a_stuck_collective_fails_the_stage_after_the_timeout(tmp_path: Path) -> None:
    env = {**killer_env(tmp_path), "HANG": "1"}
    result = pipelines("run", *KILLED, "launcher.timeout_s=5", cwd=tmp_path, env=env, timeout=50)
    assert result.returncode == 1  # long before the hung rank would have woken up
    assert (
        "sft failed: rank 0 failed with exit code 1: a collective waited longer than "
        "launcher.timeout_s=5s: another rank stopped or is far slower"
    ) in result.stderr


def test_a_user_error_in_a_rank_comes_back_as_its_one_line(tmp_path: Path) -> None:
    result = pipelines(
        "run", *SFT, "launcher=torchrun", "stages.sft.enable_liger_kernel=true", cwd=tmp_path
    )
    assert result.returncode == 1
    assert (
        "sft failed: enable_liger_kernel needs liger-kernel: pip install liger-kernel"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.gpu
def test_on_two_gpus_nccl_bf16_and_zero3_train(tmp_path: Path) -> None:
    """Where two GPUs are visible: NCCL, bf16 and ZeRO-3 on CUDA (skipped without them)."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    args = ["launcher=deepspeed", "launcher.zero_stage=3", "stages.sft.precision=bf16"]
    ok(pipelines("run", *SFT, *args, cwd=tmp_path))
    assert len(losses(tmp_path / "store")) == 4
