"""A stage as a SLURM job through submitit: the job runs the stage's torchrun command on its
allocation (one task per node; node 0 hosts the rendezvous), and the orchestrator waits on it
from the login node. `launcher.cluster: local` runs the job on this machine (tests, a workstation)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

PORT = 29500


def submit(args: list[str], env: dict[str, str], cfg: Any, work: Path) -> tuple[int, str]:
    """Submit, print where the job's logs are, wait; (exit code, tail of the job's output)."""
    import submitit

    folder = work / "logs" / "slurm"  # kept with the ranks' logs once the stage commits
    executor = submitit.AutoExecutor(folder=folder, cluster=cfg.cluster)
    params = {k: v for k, v in (cfg.slurm or {}).items() if v is not None}
    executor.update_parameters(nodes=cfg.nnodes, tasks_per_node=1, **params)
    job = executor.submit(run_job, args, env)
    print(f"    submitted job {job.job_id} ({cfg.cluster}); logs in {folder}", flush=True)
    try:
        code, tail = job.result()
    except Exception as e:  # noqa: BLE001 - the scheduler killed or lost the job
        return 1, f"the job failed in the scheduler: {e}"
    return int(code), str(tail)


def run_job(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Runs on each node of the allocation: torchrun with this node's rank and node 0 as the
    rendezvous host."""
    args = node_args(args)
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    print(done.stdout, done.stderr, sep="\n")
    return done.returncode, (done.stdout + done.stderr)[-20000:]


def node_args(args: list[str]) -> list[str]:
    """A multi-node job learns its node rank and rendezvous host only once it runs."""
    if "--nnodes" not in args or args[args.index("--nnodes") + 1] == "1":
        return args
    import submitit

    job = submitit.JobEnvironment()
    endpoint = f"{job.hostnames[0]}:{PORT}"
    return _set(_set(args, "--node-rank", str(job.node)), "--rdzv-endpoint", endpoint)


def _set(args: list[str], flag: str, value: str) -> list[str]:
    if flag in args:
        out = list(args)
        out[out.index(flag) + 1] = value
        return out
    cut = args.index("-m", 1)  # before the worker module
    return [*args[:cut], flag, value, *args[cut:]]
