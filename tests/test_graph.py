"""The DAG on named topologies, implicit nodes, and the errors a graph can have."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest

import stages
from compiler.errors import CompileError, Issue
from compiler.graph import build_graph
from compiler.schema import validate
from stages import KINDS
from tests import fakes


@pytest.fixture(autouse=True)
def fake_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(stages.KINDS, "fake", fakes.FakeStage)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    return path


def graph_of(stage_blocks: dict, tmp_path: Path, datasets: dict | None = None) -> nx.DiGraph:
    issues: list[Issue] = []
    spec = validate({"stages": stage_blocks, "datasets": datasets or {}}, issues)
    return build_graph(spec, tmp_path, issues)


def errors_of(stage_blocks: dict, tmp_path: Path, datasets: dict | None = None) -> list[str]:
    with pytest.raises(CompileError) as e:
        graph_of(stage_blocks, tmp_path, datasets)
    return [str(i) for i in e.value.issues]


def fake(**inputs: str) -> dict:
    return {"kind": "fake", **inputs}


def test_chain(tmp_path: Path) -> None:
    g = graph_of({"c": fake(a="b"), "b": fake(a="a"), "a": fake()}, tmp_path)
    assert list(nx.topological_sort(g)) == ["a", "b", "c"]
    assert set(g.edges) == {("a", "b"), ("b", "c")}
    assert g.edges["a", "b"]["role"] == "a"


def test_diamond(tmp_path: Path) -> None:
    g = graph_of(
        {"top": fake(), "l": fake(a="top"), "r": fake(a="top"), "bottom": fake(a="l", b="r")},
        tmp_path,
    )
    assert set(g.edges) == {("top", "l"), ("top", "r"), ("l", "bottom"), ("r", "bottom")}
    assert g.nodes["bottom"]["node"].inputs == {"a": "l", "b": "r"}


def test_fan_out(tmp_path: Path) -> None:
    g = graph_of({"src": fake(), **{f"c{i}": fake(a="src") for i in range(3)}}, tmp_path)
    assert sorted(g.successors("src")) == ["c0", "c1", "c2"]
    assert "base" not in g  # nothing loads the implicit model, so it is not materialised


def test_cycle_is_named(tmp_path: Path) -> None:
    errors = errors_of({"x": fake(a="y"), "y": fake(a="x")}, tmp_path)
    assert errors == ["stages: cycle: x -> y -> x (break one of the links)"]


def test_missing_stage_suggests_the_near_name(tmp_path: Path, data: Path) -> None:
    blocks = {"sft": {"kind": "sft", "dataset": "d"}, "sft2": {"kind": "sft", "model": "sfft"}}
    errors = errors_of(blocks, tmp_path, {"d": {"path": str(data)}})
    assert "stages.sft2.model: no stage named 'sfft' (did you mean 'sft'?)" in errors


def test_wrong_artifact_type_is_rejected(tmp_path: Path, data: Path) -> None:
    blocks = {"blob": fake(), "sft": {"kind": "sft", "model": "blob", "dataset": "d"}}
    errors = errors_of(blocks, tmp_path, {"d": {"path": str(data)}})
    makers = " / ".join(sorted(k for k, s in KINDS.items() if s.output == "model"))
    assert errors == [
        "stages.sft.model: 'blob' produces a blob artifact, but model needs a model "
        f"(name a stage of kind {makers})"
    ]


def test_sft_gets_implicit_base_and_tokenize_nodes(tmp_path: Path, data: Path) -> None:
    g = graph_of({"sft": {"kind": "sft", "dataset": "d"}}, tmp_path, {"d": {"path": str(data)}})
    assert list(nx.topological_sort(g)) == ["base", "tokenize:d", "sft"]
    tok = g.nodes["tokenize:d"]["node"]
    assert tok.implicit and tok.inputs == {"model": "base"}
    assert [e["path"] for e in tok.datasets["dataset"]] == [str(data)]
    assert g.nodes["sft"]["node"].inputs == {"model": "base", "data": "tokenize:d"}


def test_identical_tokenize_options_share_one_node(tmp_path: Path, data: Path) -> None:
    ds = {"d": {"path": str(data)}}
    same = graph_of(
        {"a": {"kind": "sft", "dataset": "d"}, "b": {"kind": "sft", "dataset": "d"}}, tmp_path, ds
    )
    assert [n for n in same if n.startswith("tokenize")] == ["tokenize:d"]
    blocks = {
        "a": {"kind": "sft", "dataset": "d"},
        "b": {"kind": "sft", "dataset": "d", "cutoff_len": 64},
    }
    differ = graph_of(blocks, tmp_path, ds)
    assert sorted(n for n in differ if n.startswith("tokenize")) == ["tokenize:d", "tokenize:d:b"]


def test_identical_tokenize_options_share_a_node_beyond_the_first_two(
    tmp_path: Path, data: Path
) -> None:
    blocks = {
        "a": {"kind": "sft", "dataset": "d"},
        "b": {"kind": "sft", "dataset": "d", "cutoff_len": 64},
        "c": {"kind": "sft", "dataset": "d", "cutoff_len": 64, "num_proc": 4},  # volatile
    }
    g = graph_of(blocks, tmp_path, {"d": {"path": str(data)}})
    assert sorted(n for n in g if n.startswith("tokenize")) == ["tokenize:d", "tokenize:d:b"]
    assert g.nodes["c"]["node"].inputs["data"] == "tokenize:d:b"


def test_unknown_dataset_is_reported_where_the_stage_names_it(tmp_path: Path, data: Path) -> None:
    errors = errors_of(
        {"sft": {"kind": "sft", "dataset": "demo"}}, tmp_path, {"demo2": {"path": str(data)}}
    )
    assert errors == ["stages.sft.dataset: no dataset named 'demo' (did you mean 'demo2'?)"]


def test_missing_data_file_names_the_dataset_path(tmp_path: Path) -> None:
    errors = errors_of(
        {"sft": {"kind": "sft", "dataset": "d"}}, tmp_path, {"d": {"path": "nope.jsonl"}}
    )
    assert errors == [f"datasets.d.path: file not found: {tmp_path / 'nope.jsonl'}"]


def test_an_invalid_dataset_entry_is_reported_once_without_a_crash(tmp_path: Path) -> None:
    errors = errors_of(
        {"sft": {"kind": "sft", "dataset": "d"}}, tmp_path, {"d": {"formatting": "alpaca"}}
    )
    assert errors == ["datasets.d.path: missing required key"]
