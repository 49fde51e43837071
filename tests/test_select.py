"""Stage selection on `run` and `plan` (pt_sft: base -> blocks -> pt -> tokenize -> sft):
`--only` / `--until` cut the DAG to some stages and what they need, `--force` runs stages and
everything after them again although cached, replacing their artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest

from compiler.errors import CompileError
from compiler.select import Selection, apply, split_flags
from tests.cli import pipelines

SHORT = ["+pipeline=pt_sft", "stages.pt.max_steps=2", "stages.sft.max_steps=2"]


def chain() -> nx.DiGraph:
    return nx.DiGraph(
        [("base", "pt"), ("pt", "sft"), ("base", "tok"), ("tok", "sft"), ("sft", "eval")]
    )


def test_flags_take_the_stage_names_that_follow_them_anywhere() -> None:
    args = ["--force", "pt", "sft", "+pipeline=pt_sft", "--until", "sft", "x.y=1"]
    select, rest = split_flags(args)
    assert select == Selection(force=("pt", "sft"), until="sft")
    assert rest == ["+pipeline=pt_sft", "x.y=1"]
    assert select.flags() == ["--force", "pt", "sft", "--until", "sft"]


def test_only_keeps_what_the_stages_need_and_force_adds_what_follows() -> None:
    graph, forced = apply(chain(), Selection(only=("pt",)))
    assert set(graph) == {"base", "pt"} and forced == frozenset()
    graph, forced = apply(chain(), Selection(force=("pt",)))
    assert set(graph) == set(chain()) and forced == {"pt", "sft", "eval"}
    graph, forced = apply(chain(), Selection(force=("pt",), until="sft"))
    assert set(graph) == {"base", "pt", "tok", "sft"} and forced == {"pt", "sft"}


def test_unknown_stages_and_empty_flags_are_refused() -> None:
    with pytest.raises(CompileError, match="no stage named 'sfft' \\(did you mean 'sft'\\?\\)"):
        apply(chain(), Selection(only=("sfft",)))
    with pytest.raises(CompileError, match="--force: needs a stage name"):
        split_flags(["--force", "+pipeline=sft"])


def statuses(store: Path) -> dict[str, str]:
    latest = max((store / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    return {k: v["status"] for k, v in json.loads(latest.read_text())["stages"].items()}


@pytest.mark.slow
def test_only_until_and_force_on_pt_sft(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = pipelines("run", "--only", "pt", *SHORT, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert statuses(store) == {"base": "ran", "blocks:demo_text": "ran", "pt": "ran"}

    plan = pipelines("plan", *SHORT, "--until", "sft", cwd=tmp_path)
    assert "pt: cached" in plan.stdout and "sft: run" in plan.stdout
    assert pipelines("run", *SHORT, "--until", "sft", cwd=tmp_path).returncode == 0
    assert statuses(store)["sft"] == "ran"
    (pt_before,) = (store / "artifacts" / "pt").iterdir()
    made_by = json.loads((pt_before / "manifest.json").read_text())["run_id"]

    plan = pipelines("plan", "--force", "pt", *SHORT, cwd=tmp_path)
    lines = plan.stdout.splitlines()
    assert "pt: run (forced)" in lines and "sft: run (forced)" in lines and "base: cached" in lines
    forced = pipelines("run", "--force", "pt", *SHORT, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    got = statuses(store)
    assert got["pt"] == got["sft"] == "ran" and got["base"] == "cached"
    (pt_after,) = (store / "artifacts" / "pt").iterdir()  # replaced, one artifact per key
    assert pt_after.name == pt_before.name
    assert json.loads((pt_after / "manifest.json").read_text())["run_id"] != made_by
    assert pipelines("verify", "--all", cwd=tmp_path).returncode == 0


@pytest.mark.slow
def test_every_verb_takes_store_equals_and_overrides_after_flags(tmp_path: Path) -> None:
    args = ["+pipeline=sft", "stages.sft.max_steps=1", "~stages.export", "~stages.eval"]
    env = {"PIPELINES_STORE": str(tmp_path / "elsewhere")}  # store= wins over the variable
    run = pipelines("run", "--only", "sft", *args, "store=mine", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "mine" / "artifacts" / "sft").is_dir()
    for verb in (["ls"], ["show", "sft"], ["verify", "--all"], ["gc"], ["compare", "sft"]):
        done = pipelines(*verb, "store=mine", cwd=tmp_path, env=env)
        assert done.returncode == 0, (verb, done.stderr)
    plan = pipelines("plan", "--until", "sft", *args, "store=mine", cwd=tmp_path, env=env)
    assert "sft: cached" in plan.stdout
