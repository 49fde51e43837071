"""The executor with fake stages: cache hits, exact invalidation, failures and their dependents."""

from __future__ import annotations

from pathlib import Path

import pytest

import stages
from compiler.compile import compile_pipeline
from compiler.digests import DigestCache
from runtime.executor import execute
from runtime.launchers import InProcessLauncher
from runtime.store import Store
from tests import fakes


@pytest.fixture(autouse=True)
def fake_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(stages.KINDS, "fake", fakes.FakeStage)
    fakes.RUNS.clear()


def diamond(left: int = 1, note: str = "") -> dict:
    """top -> (left, right) -> bottom"""
    return {
        "stages": {
            "top": {"kind": "fake", "value": 1},
            "left": {"kind": "fake", "a": "top", "value": left, "note": note},
            "right": {"kind": "fake", "a": "top", "value": 10},
            "bottom": {"kind": "fake", "a": "left", "b": "right", "value": 100},
        }
    }


def run(raw: dict, store: Store) -> dict[str, str]:
    compiled = compile_pipeline(raw, store.root, DigestCache())
    record = {"id": f"run{len(store.runs())}"}
    outcomes = execute(compiled, store, InProcessLauncher(), record)
    return {o.name: o.status for o in outcomes}


def test_first_run_runs_all_and_computes_through_the_dag(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert run(diamond(), store) == dict.fromkeys(["top", "left", "right", "bottom"], "ran")
    assert fakes.RUNS == ["top", "left", "right", "bottom"]
    (bottom,) = [m for _, m in store.artifacts() if m["name"] == "bottom"]
    assert bottom["metrics"]["total"] == 100 + (1 + 1) + (10 + 1)


def test_second_run_is_all_cache_hits_and_runs_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run(diamond(), store)
    before = {p: m["files"] for p, m in store.artifacts()}
    fakes.RUNS.clear()
    assert set(run(diamond(), store).values()) == {"cached"}
    assert fakes.RUNS == []
    assert {p: m["files"] for p, m in store.artifacts()} == before


def test_one_change_invalidates_exactly_its_downstream(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run(diamond(), store)
    fakes.RUNS.clear()
    statuses = run(diamond(left=2), store)
    assert statuses == {"top": "cached", "left": "ran", "right": "cached", "bottom": "ran"}
    assert fakes.RUNS == ["left", "bottom"]


def test_volatile_change_reruns_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run(diamond(), store)
    fakes.RUNS.clear()
    assert set(run(diamond(note="logging only"), store).values()) == {"cached"}
    assert fakes.RUNS == []


def test_failure_skips_dependents_names_them_and_keeps_siblings(tmp_path: Path) -> None:
    store = Store(tmp_path)
    raw = diamond()
    raw["stages"]["left"]["fail"] = True
    compiled = compile_pipeline(raw, store.root, DigestCache())
    record = {"id": "r1"}
    outcomes = {o.name: o for o in execute(compiled, store, InProcessLauncher(), record)}
    assert outcomes["left"].status == "failed" and "asked to fail" in outcomes["left"].error
    assert outcomes["right"].status == "ran"
    assert outcomes["bottom"].status == "skipped"
    assert outcomes["bottom"].error == "upstream left failed"
    assert not store.has(outcomes["left"].key) and not store.has(outcomes["bottom"].key)
    assert store.work_dir(outcomes["left"].key).is_dir()  # kept for resume
    assert record["stages"]["bottom"]["status"] == "skipped"


def test_run_record_lists_every_stage_with_key_and_status(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run(diamond(), store)
    (record,) = store.runs()
    assert set(record["stages"]) == {"top", "left", "right", "bottom"}
    for entry in record["stages"].values():
        assert store.has(entry["key"]) and entry["status"] == "ran"
