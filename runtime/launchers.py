"""How a stage's process starts. Every launcher runs `runtime.worker` on a frozen spec file.

`inprocess` calls the worker directly (CPU, tests, tiny models). `torchrun` and `deepspeed`
launchers (a subprocess per stage, `python -m runtime.worker spec.json` under the launcher's
argv) implement the same protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from compiler.errors import CompileError, Issue
from compiler.schema import LauncherConfig


class Launcher(Protocol):
    name: str

    def launch(self, spec_path: Path) -> dict[str, Any]:
        """Run the stage to completion and return its metrics; raise on failure."""
        ...


class InProcessLauncher:
    name = "inprocess"

    def launch(self, spec_path: Path) -> dict[str, Any]:
        from runtime.worker import run_spec

        return run_spec(spec_path)


LAUNCHERS: dict[str, type] = {"inprocess": InProcessLauncher}


def make_launcher(cfg: LauncherConfig) -> Launcher:
    """The launcher a run uses; settings it cannot honour are refused, never ignored."""
    issues = []
    if cfg.zero_stage and cfg.name == "inprocess":
        issues.append(
            Issue(
                "launcher.zero_stage",
                "ZeRO shards training over several processes; the inprocess launcher runs one",
                "`plan` shows the sharded estimate; set launcher.zero_stage=0 to run here",
            )
        )
    if cfg.nproc_per_node > 1 and cfg.name == "inprocess":
        issues.append(
            Issue(
                "launcher.nproc_per_node",
                f"{cfg.nproc_per_node} processes asked; the inprocess launcher runs one",
                "`plan` shows the per-process estimate; set launcher.nproc_per_node=1 to run here",
            )
        )
    if issues:
        raise CompileError(issues)
    return LAUNCHERS[cfg.name]()
