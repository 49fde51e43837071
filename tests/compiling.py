"""Compile a hand-written config (datasets and stages) and collect its problems as text."""

from __future__ import annotations

from pathlib import Path


def compile_issues(datasets: dict, stages: dict) -> list[str]:
    """The sorted problems the compiler reports for this config ([] when it compiles)."""
    from compiler.errors import CompileError, Issue
    from compiler.graph import build_graph
    from compiler.schema import validate

    issues: list[Issue] = []
    try:
        build_graph(
            validate({"datasets": datasets, "stages": stages}, issues, Path.cwd()),
            Path.cwd(),
            issues,
        )
    except CompileError as e:
        return sorted(str(i) for i in e.issues)
    return []


def compile_overrides(*overrides: str):  # noqa: ANN201 - a compiler.compile.Compiled
    """Compose the shipped config with command-line overrides (as `run` does) and compile it."""
    from compiler.compile import compile_pipeline
    from compiler.digests import DigestCache
    from pipelines.preview import compose

    return compile_pipeline(compose(list(overrides)), Path.cwd(), DigestCache())
