"""Dataset sources, LLaMA-Factory's dataset_info.json, and mixing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.errors import Issue
from compiler.schema import validate
from stages.base import UserError
from stages.data.mixing import mix
from stages.data.sources import iter_rows

ROWS = [{"instruction": f"q{i}", "output": f"r{i}"} for i in range(4)]


def rows_of(path: Path, **spec: object) -> list[dict]:
    return [row for _, row in iter_rows({"path": str(path), **spec})]


def test_every_file_type_and_folders_and_saved_datasets(tmp_path: Path) -> None:
    import datasets

    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "b.json").write_text(json.dumps(ROWS))
    (tmp_path / "c.csv").write_text(
        "instruction,output\n" + "".join(f"q{i},r{i}\n" for i in range(4))
    )
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    (arrow,) = (tmp_path / "saved").glob("*.arrow")  # an Arrow stream file as datasets writes it
    for name in ("a.jsonl", "b.json", "c.csv", "d.parquet", "saved", arrow.relative_to(tmp_path)):
        assert rows_of(tmp_path / name) == ROWS, name
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    (folder / "y.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[2:]))
    assert rows_of(folder) == ROWS
    (tmp_path / "t.txt").write_text("one\ntwo\n")
    assert rows_of(tmp_path / "t.txt") == [{"text": "one"}, {"text": "two"}]


def test_num_samples_takes_or_repeats(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert rows_of(tmp_path / "a.jsonl", num_samples=2) == ROWS[:2]
    assert rows_of(tmp_path / "a.jsonl", num_samples=6) == ROWS + ROWS[:2]


def test_where_points_at_file_and_row(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps(ROWS[0]) + "\n\n[1]\n")
    it = iter_rows({"path": str(tmp_path / "a.jsonl")})
    assert next(it)[0] == f"{tmp_path / 'a.jsonl'}:1"
    with pytest.raises(UserError, match=r"a.jsonl:3: expected a JSON object, got list"):
        next(it)


def test_a_missing_hub_dataset_is_one_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: object, **kw: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)  # as on a machine without network
    with pytest.raises(UserError, match="dataset 'nobody/nothing': not a local file or folder"):
        list(iter_rows({"path": "nobody/nothing"}))


def test_dataset_info_json_is_read_as_it_is(tmp_path: Path) -> None:
    info = {
        "alpaca_en": {"file_name": "alpaca.json"},
        "chat": {
            "file_name": "chat.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
            "tags": {"role_tag": "from", "content_tag": "value"},
        },
        "pairs": {
            "file_name": "p.json",
            "ranking": True,
            "columns": {"chosen": "c", "rejected": "r"},
        },
        "hub": {"hf_hub_url": "org/name", "split": "test"},
        "broken": {"formatting": "alpaca"},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    issues: list[Issue] = []
    raw = {
        "dataset_info": str(tmp_path),
        "datasets": {"alpaca_en": {"path": "x.jsonl"}},
        "stages": {"s": {"kind": "sft"}},
    }
    spec = validate(raw, issues)
    assert [str(i) for i in issues] == [
        f"dataset_info: {tmp_path / 'dataset_info.json'}: entry 'broken' names no data (file_name, hf_hub_url)"
    ]
    assert spec.datasets["alpaca_en"].path == "x.jsonl"  # the config overrides the registry
    assert spec.datasets["chat"].path == str(tmp_path / "chat.json")
    assert (
        spec.datasets["chat"].formatting == "sharegpt"
        and spec.datasets["chat"].tags["role_tag"] == "from"
    )
    assert spec.datasets["pairs"].ranking and spec.datasets["pairs"].columns == {
        "chosen": "c",
        "rejected": "r",
    }
    assert (spec.datasets["hub"].path, spec.datasets["hub"].split) == ("org/name", "test")


def test_mixing_strategies() -> None:
    a, b = list(range(0, 10)), list(range(100, 103))
    assert mix([a, b], "concat", None, 0) == a + b
    under = mix([a, b], "interleave_under", [0.5, 0.5], 0)
    assert set(b) <= set(under) and len(under) < len(a) + len(b)
    over = mix([a, b], "interleave_over", [0.5, 0.5], 0)
    assert set(a) <= set(over) and len(over) > len(a) + len(b) - 1
    assert mix([a, b], "interleave_over", [0.5, 0.5], 0) == over  # seeded
