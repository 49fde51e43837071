"""Which launcher runs a node, and the resources a running stage holds.

`launcher.slots` is how many stages may run at once; `launcher.gpus` is the pool of GPU ids a
process-launched stage takes its `nproc_per_node` from (through CUDA_VISIBLE_DEVICES). With one
slot, stages run one after another exactly as the plan lists them. With several, each stage that
trains runs in its own process group (a thread here only waits on it), its CPU threads shared
out, its output lines labelled with its name. Stages that run in the orchestrator (data nodes,
and anything on the `inprocess` launcher) run on its main thread, one at a time (torch's global
state is per process, and Ctrl-C and signal handlers reach only the main thread).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from compiler.graph import Node
from compiler.schema import LauncherConfig
from runtime.launchers import InProcessLauncher, Launcher, ProcessLauncher, make_launcher


@dataclass
class Grant:
    in_process: bool
    gpus: list[int] = field(default_factory=list)


class Slots:
    def __init__(self, cfg: LauncherConfig) -> None:
        self.size = cfg.slots
        self.free_gpus = list(cfg.gpus or [])
        self.uses_gpus = bool(cfg.gpus)
        self.active = 0

    def take(self, launcher: Launcher) -> Grant | None:
        """A grant when a slot (and the GPUs the stage asks for) are free, else None."""
        if self.active >= self.size:
            return None
        if not isinstance(launcher, ProcessLauncher):
            self.active += 1
            return Grant(in_process=True)
        need = launcher.cfg.nproc_per_node if self.uses_gpus else 0
        if need > len(self.free_gpus):
            return None
        gpus, self.free_gpus = self.free_gpus[:need], self.free_gpus[need:]
        self.active += 1
        return Grant(in_process=False, gpus=gpus)

    def release(self, grant: Grant) -> None:
        self.active -= 1
        self.free_gpus = sorted(self.free_gpus + grant.gpus)

    def bind(self, grant: Grant, launcher: Launcher, name: str) -> Launcher:
        """The launcher with the grant's devices and threads in its environment."""
        if not isinstance(launcher, ProcessLauncher):
            return launcher
        env = dict(launcher.env or {})
        if grant.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in grant.gpus)
        if self.size > 1:
            cores = os.cpu_count() or 1
            per = max(1, cores // self.size // launcher.cfg.nproc_per_node)
            env.setdefault("OMP_NUM_THREADS", str(per))
        prefix = name if self.size > 1 else None
        return dataclasses.replace(launcher, env=env, prefix=prefix)


def launcher_for(node: Node, default: Launcher, slots: Slots) -> Launcher:
    """Data kinds run in the orchestrator; a training kind uses its stage's launcher, else the
    pipeline's; with several slots an in-process training stage gets a process of its own."""
    if not getattr(node.stage, "distributed", False):
        return InProcessLauncher()
    chosen = make_launcher(node.launcher) if node.launcher is not None else default
    if slots.size > 1 and isinstance(chosen, InProcessLauncher):
        return ProcessLauncher(LauncherConfig(name="subprocess"))
    return chosen
