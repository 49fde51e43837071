"""Plan statuses and reasons, against an in-memory view of the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

import stages
from compiler.digests import DigestCache
from compiler.errors import Issue
from compiler.fingerprint import fingerprint
from compiler.graph import build_graph
from compiler.plan import fmt, plan
from compiler.schema import validate
from tests import fakes


@dataclass
class View:
    """A store that holds `keys`, remembers `last[name]`, and has `checkpoints[key]`."""

    keys: set[str] = field(default_factory=set)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoints: dict[str, int] = field(default_factory=dict)
    damaged: dict[str, str] = field(default_factory=dict)

    def has(self, key: str) -> bool:
        return key in self.keys

    def damage(self, key: str) -> str | None:
        return self.damaged.get(key)

    def manifest_for_name(self, name: str) -> dict[str, Any] | None:
        return self.last.get(name)

    def checkpoint(self, key: str) -> int | None:
        return self.checkpoints.get(key)


@pytest.fixture(autouse=True)
def fake_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(stages.KINDS, "fake", fakes.FakeStage)


def compiled(tmp_path: Path, lr: float = 1e-4, top: int = 0) -> nx.DiGraph:
    raw = {
        "stages": {
            "top": {"kind": "fake", "value": top},
            "sft": {"kind": "fake", "a": "top", "value": 1},
        }
    }
    issues: list[Issue] = []
    graph = build_graph(validate(raw, issues), tmp_path, issues)
    fingerprint(graph, DigestCache(), tmp_path, versions={})
    graph.nodes["sft"]["node"].payload["config"]["learning_rate"] = lr  # a semantic value to diff
    return graph


def remember(view: View, graph: nx.DiGraph) -> None:
    for name in graph:
        node = graph.nodes[name]["node"]
        view.keys.add(node.key)
        view.last[name] = {"key": node.key, "payload": node.payload}


def describe(graph: nx.DiGraph, view: View) -> dict[str, str]:
    return {s.node.name: s.describe() for s in plan(graph, view)}


def test_empty_store_runs_everything_as_new(tmp_path: Path) -> None:
    assert describe(compiled(tmp_path), View()) == {"top": "run (new)", "sft": "run (new)"}


def test_everything_stored_is_cached(tmp_path: Path) -> None:
    view = View()
    remember(view, compiled(tmp_path))
    assert describe(compiled(tmp_path), view) == {"top": "cached", "sft": "cached"}


def test_a_changed_value_is_named_with_old_and_new(tmp_path: Path) -> None:
    view = View()
    remember(view, compiled(tmp_path, lr=1e-4))
    graph = compiled(tmp_path, lr=2e-4)
    graph.nodes["sft"]["node"].key = "new-key"
    assert describe(graph, view) == {"top": "cached", "sft": "run (learning_rate 1e-4 -> 2e-4)"}


def test_upstream_change_is_named(tmp_path: Path) -> None:
    view = View()
    remember(view, compiled(tmp_path))
    graph = compiled(tmp_path, top=5)
    steps = describe(graph, view)
    assert steps == {"top": "run (value 0 -> 5)", "sft": "run (upstream changed (top))"}


def test_a_checkpoint_turns_run_into_resume(tmp_path: Path) -> None:
    graph = compiled(tmp_path)
    view = View(checkpoints={graph.nodes["sft"]["node"].key: 20})
    assert describe(graph, view)["sft"] == "resume from checkpoint 20 (new)"
    (step,) = [s for s in plan(graph, view) if s.node.name == "sft"]
    assert (step.status, step.checkpoint) == ("resume", 20)


def test_code_and_library_changes_are_named(tmp_path: Path) -> None:
    view = View()
    remember(view, compiled(tmp_path))
    graph = compiled(tmp_path)
    top = graph.nodes["top"]["node"]
    top.key, top.payload["code"] = "k2", "other"
    assert describe(graph, view)["top"] == "run (stage code changed)"
    top.payload["versions"] = {"torch": "9"}
    view.last["top"]["payload"]["code"] = "other"
    assert describe(graph, view)["top"] == "run (library versions changed (torch None -> 9))"


def test_a_missing_artifact_and_a_cache_version_bump_are_named(tmp_path: Path) -> None:
    view = View()
    remember(view, compiled(tmp_path))
    graph = compiled(tmp_path)
    view.keys.clear()  # the same payload, but the artifact was garbage-collected
    assert describe(graph, view)["top"] == "run (artifact missing)"
    graph.nodes["top"]["node"].payload["cache_version"] = "2"
    assert describe(graph, view)["top"] == "run (cache_version changed)"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e-4, "1e-4"),
        (2.5e-5, "2.5e-5"),
        (0.5, "0.5"),
        (0.05, "0.05"),
        (3.0, "3"),
        (1e6, "1e6"),
        (8, "8"),
        ("x", "x"),
        ([1, 2], "[1, 2]"),
        (None, "None"),
    ],
)
def test_fmt(value: object, text: str) -> None:
    assert fmt(value) == text
