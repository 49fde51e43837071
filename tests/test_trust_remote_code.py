"""A model's own Python code never runs unless the user says so; when they do, it is keyed and
`plan` says it. Every model field can be overridden on the command line."""

from __future__ import annotations

from pathlib import Path

from tests.cli import pipelines


def base_lines(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("base: "))
    return [lines[i], *[ln for ln in lines[i + 1 :] if ln.startswith("    ")][:2]]


def key(lines: list[str]) -> str:
    return lines[1].split("key ")[1].split()[0]


def test_trust_remote_code_is_off_keyed_and_shown(tmp_path: Path) -> None:
    plain = pipelines("plan", "+pipeline=sft", cwd=tmp_path)
    trusted = pipelines("plan", "+pipeline=sft", "model.trust_remote_code=true", cwd=tmp_path)
    assert plain.returncode == trusted.returncode == 0, trusted.stderr
    off, on = base_lines(plain.stdout), base_lines(trusted.stdout)
    assert not any("trust_remote_code" in ln for ln in off)
    assert "    trust_remote_code on: the model repository's own Python code will run" in on
    assert key(off) != key(on)


def test_any_model_field_overrides_without_a_plus(tmp_path: Path) -> None:
    done = pipelines("plan", "+pipeline=sft", "model=smollm2", "model.revision=main", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
