"""A fake stage kind for executor tests: no torch, records every run it makes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from stages.base import Context, In, UserError, volatile

RUNS: list[str] = []  # stage names, in the order they ran


@dataclass
class FakeConfig:
    value: int = 0
    fail: bool = False
    note: str = volatile("")


class FakeStage:
    kind: ClassVar[str] = "fake"
    Config = FakeConfig
    inputs: ClassVar[dict[str, In]] = {
        "a": In("blob", optional=True),
        "b": In("blob", optional=True),
    }
    output: ClassVar[str] = "blob"
    code: ClassVar[tuple[str, ...]] = ()
    dataset_fields: ClassVar[tuple[str, ...]] = ()
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "total"

    def run(self, ctx: Context, cfg: FakeConfig) -> None:
        RUNS.append(ctx.name)
        if cfg.fail:
            raise UserError(f"{ctx.name}: asked to fail")
        total = cfg.value + sum(int((p / "total.txt").read_text()) for p in ctx.inputs.values())
        (ctx.out / "total.txt").write_text(str(total))
        ctx.metrics["total"] = total
