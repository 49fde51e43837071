"""`show`, `ls` and `gc` over a store filled by the executor with fake stages."""

from __future__ import annotations

from pathlib import Path

import pytest

import stages
from pipelines.inspect import inspect_main
from runtime.store import Store
from tests import fakes
from tests.test_executor import diamond, run


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setitem(stages.KINDS, "fake", fakes.FakeStage)
    store = Store(tmp_path / "store")
    run(diamond(), store)
    return store


def test_ls_lists_every_artifact(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert inspect_main("ls", ["--store", str(store.root)]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    assert sorted(line.split()[2] for line in lines) == ["bottom", "left", "right", "top"]


def test_show_prints_metrics_and_lineage(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert inspect_main("show", ["--store", str(store.root), "bottom"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bottom  (fake)  key ")
    assert "metrics  total=113" in out
    lineage = out.split("lineage\n")[1].splitlines()
    assert lineage[0].startswith("  a: left ") and lineage[1].startswith("    a: top ")
    assert lineage[2].startswith("  b: right ")


def test_show_unknown_target_is_a_clear_error(store: Store, capsys: pytest.CaptureFixture) -> None:
    assert inspect_main("show", ["--store", str(store.root), "nope"]) == 2
    assert "no artifact for 'nope'" in capsys.readouterr().err


def test_gc_keeps_referenced_artifacts_and_is_a_dry_run_by_default(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert inspect_main("gc", ["--store", str(store.root)]) == 0
    assert capsys.readouterr().out.strip() == "nothing to remove"
    run(diamond(left=5), store)  # new left and bottom; the old ones stay referenced by run 0
    (store.root / "runs" / "run0.json").unlink()  # forget the first run
    assert inspect_main("gc", ["--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert out.count("would remove") == 2 and "(left)" in out and "(bottom)" in out
    assert len(list(store.artifacts())) == 6
    assert inspect_main("gc", ["--store", str(store.root), "--yes"]) == 0
    assert len(list(store.artifacts())) == 4
    assert all(store.has(e["key"]) for r in store.runs() for e in r["stages"].values())


def test_show_prints_the_config_as_yaml(tmp_path: Path) -> None:
    from pipelines.inspect import _yaml

    text = _yaml({"learning_rate": 0.001, "lora_target": ["q_proj", "v_proj"], "template": None})
    assert text.splitlines() == [
        "  learning_rate: 0.001",
        "  lora_target:",
        "  - q_proj",
        "  - v_proj",
        "  template: null",
    ]
