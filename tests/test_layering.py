"""Imports point one way (pipelines -> runtime -> compiler -> stages); the compiler, the stage
declarations and `plan` never load torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "stages": {"stages"},
    "compiler": {"compiler", "stages"},
    "runtime": {"runtime", "compiler", "stages"},
    "pipelines": {"pipelines", "runtime", "compiler", "stages"},
}
OURS = set(ALLOWED)


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        ours = imported_packages(path) & OURS
        assert ours <= ALLOWED[package], (
            f"{path.relative_to(ROOT)} imports {ours - ALLOWED[package]}"
        )


def test_stages_never_import_hydra_at_all() -> None:
    for path in (ROOT / "stages").rglob("*.py"):
        assert not imported_packages(path) & {"hydra", "omegaconf"}, path


def test_compiler_and_stage_declarations_do_not_load_torch() -> None:
    code = (
        "import sys\n"
        "import compiler.compile, compiler.plan, runtime.store, runtime.executor, pipelines.app\n"
        "import stages\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'peft', 'trl') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
