"""What each launcher builds (golden argv and environment), the per-stage launcher in the config,
which launcher a node gets, how slots share out GPUs, and how a failed launch is explained."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from compiler.errors import CompileError
from compiler.schema import LauncherConfig
from runtime.launchers import (
    ProcessLauncher,
    argv,
    check_launchers,
    deepspeed_config,
    environment,
    make_launcher,
)
from runtime.rank_failure import RankFailure, failure
from runtime.slots import Slots, launcher_for
from stages.base import UserError
from tests.compiling import compile_overrides

ROOT = Path(__file__).resolve().parent.parent


def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "work" / "spec.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"key": "ab" * 32, "work": str(path.parent)}))
    return path


def test_torchrun_on_one_node_uses_a_free_local_port(tmp_path: Path) -> None:
    spec = spec_file(tmp_path)
    cfg = LauncherConfig(name="torchrun", nproc_per_node=4, max_restarts=2)
    assert argv(cfg, spec) == [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", "4", "--max-restarts", "2", "--standalone",
        "-m", "runtime.worker", str(spec),
    ]  # fmt: skip


def test_torchrun_on_several_nodes_meets_at_node_0s_endpoint_under_the_stage_key(
    tmp_path: Path,
) -> None:
    spec = spec_file(tmp_path)
    cfg = LauncherConfig(
        name="deepspeed", nproc_per_node=8, nnodes=2, node_rank=1, rdzv_endpoint="n0:29500"
    )
    assert argv(cfg, spec) == [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "2", "--nproc-per-node", "8", "--max-restarts", "0",
        "--node-rank", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "n0:29500",
        "--rdzv-id", "ab" * 16,
        "-m", "runtime.worker", str(spec),
    ]  # fmt: skip


def test_a_subprocess_runs_the_worker_alone(tmp_path: Path) -> None:
    spec = spec_file(tmp_path)
    assert argv(LauncherConfig(name="subprocess"), spec) == [
        sys.executable, "-m", "runtime.worker", str(spec),
    ]  # fmt: skip


def test_the_environment_finds_the_project_and_shares_out_cpu_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    env = environment(LauncherConfig(name="torchrun", nproc_per_node=2), {"EXTRA": "1"})
    assert env["PYTHONPATH"] == f"{ROOT}:/elsewhere"
    assert env["OMP_NUM_THREADS"] == "4"
    assert env["PYTHONUNBUFFERED"] == "1" and env["EXTRA"] == "1"


def test_slots_give_each_running_stage_its_own_gpus_and_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    slots = Slots(LauncherConfig(name="torchrun", slots=2, gpus=[0, 1, 2, 3]))
    launcher = ProcessLauncher(LauncherConfig(name="torchrun", nproc_per_node=2))
    first, second = slots.take(launcher), slots.take(launcher)
    assert (first.gpus, second.gpus) == ([0, 1], [2, 3])
    assert slots.take(launcher) is None
    bound = slots.bind(first, launcher, "sft")
    assert isinstance(bound, ProcessLauncher)
    assert bound.env == {"CUDA_VISIBLE_DEVICES": "0,1", "OMP_NUM_THREADS": "4"}
    assert bound.prefix == "sft"  # several stages print at once: lines carry the name
    slots.release(first)
    assert slots.take(launcher).gpus == [0, 1]  # type: ignore[union-attr]


def test_shipped_deepspeed_configs_follow_zero_stage_and_offload() -> None:
    for stage in (0, 1, 2, 3):
        got = deepspeed_config(LauncherConfig(name="deepspeed", zero_stage=stage))
        assert got["zero_optimization"]["stage"] == stage
        assert got["train_micro_batch_size_per_gpu"] == "auto"  # filled by the Trainer
    three = deepspeed_config(LauncherConfig(name="deepspeed", zero_stage=3, offload=True))
    assert three["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert three["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert deepspeed_config(LauncherConfig(name="torchrun")) is None


def test_a_stage_launcher_overrides_the_pipelines_and_is_not_keyed() -> None:
    both = ("+pipeline=sft", "launcher=torchrun", "launcher.nproc_per_node=2")
    compiled = compile_overrides(*both, "stages.sft.launcher={name:deepspeed,zero_stage:3}")
    other = compile_overrides(*both)
    node = compiled.graph.nodes["sft"]["node"]
    assert (node.launcher.name, node.launcher.zero_stage, node.launcher.nproc_per_node) == (
        "deepspeed",
        3,
        2,  # from the pipeline's launcher
    )
    assert node.key == other.graph.nodes["sft"]["node"].key


def test_a_stage_launcher_key_is_checked_like_any_other() -> None:
    with pytest.raises(CompileError) as e:
        compile_overrides("+pipeline=sft", "stages.sft.launcher={nproc_per_nod:2}")
    assert "stages.sft.launcher.nproc_per_nod: unknown key (did you mean 'nproc_per_node'?)" in (
        e.value.render()
    )


def test_data_stages_run_in_the_orchestrator_and_training_in_its_launcher() -> None:
    compiled = compile_overrides("+pipeline=sft", "launcher=torchrun")
    default = make_launcher(compiled.spec.launcher)
    nodes = compiled.graph.nodes
    one, two = Slots(LauncherConfig()), Slots(LauncherConfig(slots=2))
    assert launcher_for(nodes["tokenize:demo_sft"]["node"], default, one).name == "inprocess"
    assert launcher_for(nodes["base"]["node"], default, one).name == "inprocess"
    assert launcher_for(nodes["sft"]["node"], default, one).name == "torchrun"
    inprocess = make_launcher(LauncherConfig())
    assert launcher_for(nodes["sft"]["node"], inprocess, one).name == "inprocess"
    # with two slots, a training stage gets a process of its own
    assert launcher_for(nodes["sft"]["node"], inprocess, two).name == "subprocess"


def test_launch_settings_that_cannot_hold_are_refused_before_anything_runs() -> None:
    compiled = compile_overrides(
        "+pipeline=sft",
        "launcher=torchrun",
        "launcher.gpus=[0]",
        "stages.sft.launcher={nnodes:2,nproc_per_node:2}",
    )
    nodes = [compiled.graph.nodes[n]["node"] for n in compiled.graph]
    with pytest.raises(CompileError) as e:
        check_launchers(nodes, compiled.spec.launcher)
    text = e.value.render()
    assert "stages.sft.launcher.rdzv_endpoint: 2 nodes need a rendezvous endpoint" in text
    assert "stages.sft.launcher.nproc_per_node: 2 processes, but launcher.gpus has 1 GPU(s)" in text


def test_a_user_error_in_any_rank_is_the_failure(tmp_path: Path) -> None:
    (tmp_path / "errors").mkdir()
    crash = {"rank": 0, "kind": "crash", "message": "RuntimeError: peer closed"}
    user = {"rank": 1, "kind": "user", "message": "data.jsonl:3: no 'output'"}
    (tmp_path / "errors" / "rank-0.json").write_text(json.dumps(crash))
    (tmp_path / "errors" / "rank-1.json").write_text(json.dumps(user))
    got = failure(tmp_path, 1, "", LauncherConfig(name="torchrun"))
    assert isinstance(got, UserError) and str(got) == "data.jsonl:3: no 'output'"


TORCHRUN_SUMMARY = """
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 11)  (SIGTERM)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_05:57:50
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 12)  (SIGKILL)
"""


def test_torchrun_root_cause_names_the_rank_that_failed_first(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "rank-1.log").write_text("step 1\rstep 2\rstep 3\nloading\n")
    got = failure(tmp_path, 1, TORCHRUN_SUMMARY, LauncherConfig(name="torchrun", max_restarts=1))
    assert isinstance(got, RankFailure)
    first, *tail = str(got).splitlines()
    assert first == (
        "rank 1 failed after 1 restart(s) with exit code -9: killed by signal 9 "
        f"(log {tmp_path / 'logs' / 'rank-1.log'})"
    )
    assert tail == ["    step 3", "    loading"]  # progress redraws folded to their last state


def test_a_multi_node_slurm_job_learns_its_node_rank_and_rendezvous_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitit = pytest.importorskip("submitit")  # the [distributed] extra
    from runtime.slurm import node_args

    class Job:  # what submitit tells the second node of a two-node allocation
        hostnames = ["gpu-017", "gpu-018"]
        node = 1

    monkeypatch.setattr(submitit, "JobEnvironment", Job)
    spec = spec_file(tmp_path)
    cfg = LauncherConfig(name="slurm", nproc_per_node=8, nnodes=2)
    assert node_args(argv(cfg, spec)) == [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "2", "--nproc-per-node", "8", "--max-restarts", "0",
        "--node-rank", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "gpu-017:29500",
        "--rdzv-id", "ab" * 16,
        "-m", "runtime.worker", str(spec),
    ]  # fmt: skip
    one = LauncherConfig(name="slurm")
    assert node_args(argv(one, spec)) == argv(one, spec)  # one node: a free local port
