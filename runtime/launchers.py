"""How a stage's processes start. Every launcher runs `runtime.worker` on a frozen spec file.

- `inprocess` calls the worker in the orchestrator's own process (CPU, tests, tiny models);
- `subprocess` runs it as one child process (stages in parallel on CPU slots);
- `torchrun` runs `python -m torch.distributed.run ... -m runtime.worker spec.json`: one process
  per device, several nodes through torchrun's rendezvous, restarts on failure;
- `deepspeed` is torchrun with a DeepSpeed config in the spec (the Trainer engages it);
- `slurm` submits the torchrun command as a job through submitit and waits for it.

A process launcher reads the ranks' error files when the command fails (runtime/rank_failure.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from compiler.errors import CompileError, Issue
from compiler.graph import Node
from compiler.schema import LauncherConfig
from runtime.processes import run_process
from runtime.rank_failure import failure

CONF = Path(__file__).resolve().parent.parent / "conf" / "deepspeed"


class Launcher(Protocol):
    name: str

    def spec_fields(self) -> dict[str, Any]:
        """What this launcher adds to the frozen spec its ranks read."""
        ...

    def launch(self, spec_path: Path) -> dict[str, Any]:
        """Run the stage to completion and return its metrics; raise on failure."""
        ...


class InProcessLauncher:
    name = "inprocess"

    def spec_fields(self) -> dict[str, Any]:
        return {}

    def launch(self, spec_path: Path) -> dict[str, Any]:
        from runtime.worker import run_spec

        return run_spec(spec_path)


@dataclass
class ProcessLauncher:
    """A command that runs the worker in child processes; `env` adds to the environment
    (CUDA_VISIBLE_DEVICES and thread counts of a parallel slot), `prefix` labels its output
    lines when several stages print at once."""

    cfg: LauncherConfig
    env: dict[str, str] | None = None
    prefix: str | None = None

    @property
    def name(self) -> str:
        return self.cfg.name

    def spec_fields(self) -> dict[str, Any]:
        """The DeepSpeed config and the collective timeout the ranks need."""
        cfg = self.cfg
        return {"distributed": {"deepspeed": deepspeed_config(cfg), "timeout_s": cfg.timeout_s}}

    def launch(self, spec_path: Path) -> dict[str, Any]:
        spec_path = Path(spec_path)
        work = spec_path.parent
        code, output = self.run(argv(self.cfg, spec_path), environment(self.cfg, self.env))
        if code != 0:
            raise failure(work, code, output, self.cfg)
        metrics = work / "metrics.json"  # rank 0 writes it (another node's rank 0: none here)
        return json.loads(metrics.read_text()) if metrics.exists() else {}

    def run(self, args: list[str], env: dict[str, str]) -> tuple[int, str]:
        if self.cfg.name == "slurm":
            from runtime.slurm import submit

            return submit(args, env, self.cfg, Path(args[-1]).parent)
        return run_process(args, env, self.prefix)


def argv(cfg: LauncherConfig, spec_path: Path) -> list[str]:
    """The command line of one stage (golden-tested)."""
    worker = ["-m", "runtime.worker", str(spec_path)]
    if cfg.name == "subprocess":
        return [sys.executable, *worker]
    run = [sys.executable, "-m", "torch.distributed.run"]
    run += ["--nnodes", str(cfg.nnodes), "--nproc-per-node", str(cfg.nproc_per_node)]
    run += ["--max-restarts", str(cfg.max_restarts)]
    if cfg.nnodes == 1 and not cfg.rdzv_endpoint:
        run += ["--standalone"]  # a free local port: concurrent stages never collide
    else:
        rdzv_id = cfg.rdzv_id or _stage_key(spec_path)
        run += ["--node-rank", str(cfg.node_rank), "--rdzv-backend", cfg.rdzv_backend]
        run += ["--rdzv-endpoint", str(cfg.rdzv_endpoint), "--rdzv-id", rdzv_id]
    return [*run, *worker]


def environment(cfg: LauncherConfig, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours, plus the slot's devices and threads; the project root on
    PYTHONPATH so `-m runtime.worker` imports wherever the child starts."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if shutil.which("nvidia-smi") is None:  # DeepSpeed would guess the CPU, with a warning
        env.setdefault("DS_ACCELERATOR", "cpu")
    if cfg.nproc_per_node > 1 and "OMP_NUM_THREADS" not in env:
        cores = os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores // cfg.nproc_per_node))
    env.update(extra or {})
    return env


def deepspeed_config(cfg: LauncherConfig) -> dict[str, Any] | None:
    """The DeepSpeed config a stage trains with: the user's file, or the shipped one for the
    ZeRO stage (`auto` values are filled by the Trainer from the stage's own config)."""
    if cfg.name != "deepspeed" and not cfg.deepspeed_config:
        return None
    if cfg.deepspeed_config:
        return json.loads(Path(cfg.deepspeed_config).expanduser().read_text())
    name = f"zero{cfg.zero_stage}{'_offload' if cfg.offload else ''}.json"
    return json.loads((CONF / name).read_text())


def _stage_key(spec_path: Path) -> str:
    return str(json.loads(spec_path.read_text())["key"])[:32]


def make_launcher(
    cfg: LauncherConfig, env: dict[str, str] | None = None, prefix: str | None = None
) -> Launcher:
    """The launcher a stage uses; settings it cannot honour are refused, never ignored."""
    problems = launcher_issues(cfg, "launcher")
    if problems:
        raise CompileError(problems)
    if cfg.name == "inprocess":
        return InProcessLauncher()
    return ProcessLauncher(cfg, env, prefix)


def check_launchers(nodes: list[Node], pipeline: LauncherConfig) -> None:
    """Every launcher a run will use, checked before anything is written: one message listing
    each problem (`stages.<name>.launcher.<field>` for a stage's own)."""
    issues = launcher_issues(pipeline, "launcher")
    pool = len(pipeline.gpus or [])
    for node in nodes:
        if not getattr(node.stage, "distributed", False):
            continue
        cfg = node.launcher or pipeline
        if node.launcher is not None:
            issues += launcher_issues(cfg, f"{node.path}.launcher")
        if cfg.name == "deepspeed" and not getattr(node.stage, "deepspeed", True):
            issues.append(
                Issue(
                    f"{node.path}.launcher.name",
                    f"{node.kind} trains with its own loop, which DeepSpeed does not drive",
                    f"run it under torchrun: {node.path}.launcher={{name:torchrun}}",
                )
            )
        if pipeline.gpus and cfg.name != "inprocess" and cfg.nproc_per_node > pool:
            issues.append(
                Issue(
                    f"{node.path}.launcher.nproc_per_node",
                    f"{cfg.nproc_per_node} processes, but launcher.gpus has {pool} GPU(s)",
                    "list more GPUs in launcher.gpus, or lower nproc_per_node",
                )
            )
    if issues:
        raise CompileError(issues)


def launcher_issues(cfg: LauncherConfig, path: str) -> list[Issue]:
    """Settings that contradict each other or the machine, found before anything runs."""
    issues = []
    one_process = cfg.name in ("inprocess", "subprocess")
    if cfg.zero_stage and cfg.name != "deepspeed":
        issues.append(
            Issue(
                f"{path}.zero_stage",
                f"ZeRO shards training over DeepSpeed processes; the {cfg.name} launcher runs "
                "without DeepSpeed",
                "set launcher=deepspeed to shard, or launcher.zero_stage=0",
            )
        )
    if one_process and (cfg.nproc_per_node > 1 or cfg.nnodes > 1):
        issues.append(
            Issue(
                f"{path}.nproc_per_node",
                f"{cfg.nproc_per_node * cfg.nnodes} processes asked; the {cfg.name} launcher "
                "runs one",
                "set launcher=torchrun or deepspeed to run several, or nproc_per_node=1",
            )
        )
    if cfg.nnodes > 1 and not cfg.rdzv_endpoint and cfg.name != "slurm":
        issues.append(
            Issue(
                f"{path}.rdzv_endpoint",
                f"{cfg.nnodes} nodes need a rendezvous endpoint all of them reach",
                "set launcher.rdzv_endpoint=<host of node 0>:29500 on every node",
            )
        )
    if cfg.node_rank >= cfg.nnodes:
        issues.append(
            Issue(f"{path}.node_rank", f"node_rank {cfg.node_rank} >= nnodes {cfg.nnodes}")
        )
    if cfg.deepspeed_config and not Path(cfg.deepspeed_config).expanduser().is_file():
        issues.append(Issue(f"{path}.deepspeed_config", f"file not found: {cfg.deepspeed_config}"))
    if cfg.name == "deepspeed" and not _installed("deepspeed"):
        issues.append(Issue(f"{path}.name", "DeepSpeed is not installed", "pip install deepspeed"))
    if cfg.name == "slurm" and not _installed("submitit"):
        issues.append(Issue(f"{path}.name", "submitit is not installed", "pip install submitit"))
    return issues


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
