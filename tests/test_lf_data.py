"""LLaMA-Factory's data as it declares it, in every stage: fixtures in the shapes of its
c4_demo.jsonl, wiki_demo.txt, alpaca_en_demo.json, dpo_en_demo.json and kto_en_demo.json with a
dataset_info.json declaring them as LLaMA-Factory does. Each plans in the stages that take it and
is refused at compile time by the others; registry fields are amended on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import pipelines

INFO = {
    "c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
    "wiki_demo": {"file_name": "wiki_demo.txt", "columns": {"prompt": "text"}},
    "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
    "dpo_en_demo": {
        "file_name": "dpo_en_demo.json",
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    },
    "kto_en_demo": {
        "file_name": "kto_en_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    },
}
ACCEPTS = {  # dataset -> the pipeline (stage) kinds that take it
    "c4_demo": {"pt"},
    "wiki_demo": {"pt"},
    "alpaca_en_demo": {"sft"},
    "dpo_en_demo": {"dpo"},
    "kto_en_demo": {"kto"},
}


@pytest.fixture(scope="module")
def lf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lf")
    data = root / "data"
    data.mkdir()
    rows = [{"text": f"Document {i}: a fox numbered {i} jumps over a lazy dog."} for i in range(40)]
    (data / "c4_demo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "wiki_demo.txt").write_text(
        "".join(f"Wiki line {i} says something.\n" for i in range(40))
    )
    alpaca = [{"instruction": f"Say {i}", "input": "", "output": str(i)} for i in range(20)]
    (data / "alpaca_en_demo.json").write_text(json.dumps(alpaca))
    dpo = [
        {
            "conversations": [{"from": "human", "value": f"Pick {i}"}],
            "chosen": {"from": "gpt", "value": str(i)},
            "rejected": {"from": "gpt", "value": str(i + 1)},
        }
        for i in range(20)
    ]
    (data / "dpo_en_demo.json").write_text(json.dumps(dpo))
    kto = [
        {
            "messages": [
                {"content": f"Say {i}", "role": "user"},
                {"content": str(i), "role": "assistant"},
            ],
            "label": i % 2 == 0,
        }
        for i in range(20)
    ]
    (data / "kto_en_demo.json").write_text(json.dumps(kto))
    (data / "dataset_info.json").write_text(json.dumps(INFO, indent=2))
    return root


@pytest.mark.parametrize("dataset", sorted(ACCEPTS))
@pytest.mark.parametrize("kind", ["pt", "sft", "dpo", "kto"])
def test_each_dataset_plans_where_it_belongs_and_is_refused_elsewhere(
    lf: Path, dataset: str, kind: str
) -> None:
    done = pipelines(
        "plan", f"+pipeline={kind}", "dataset_info=data", f"stages.{kind}.dataset={dataset}", cwd=lf
    )
    if kind in ACCEPTS[dataset]:
        assert done.returncode == 0, done.stderr
        assert f"{kind}: run" in done.stdout
    else:
        assert done.returncode == 2
        assert f"stages.{kind}.dataset: dataset '{dataset}' holds" in done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_pt_trains_on_lf_text_corpora_and_fields_are_amended_from_the_command_line(
    lf: Path,
) -> None:
    args = ["+pipeline=pt", "dataset_info=data", "stages.pt.dataset=[c4_demo,wiki_demo]"]
    args += ["stages.pt.max_steps=2", "stages.pt.cutoff_len=32", "datasets.wiki_demo.num_samples=5"]
    done = pipelines("run", *args, cwd=lf)
    assert done.returncode == 0, done.stderr
    (blocks,) = (lf / "store" / "artifacts" / "blocks").iterdir()
    metrics = json.loads((blocks / "manifest.json").read_text())["metrics"]
    assert metrics["documents"] == 40 + 5  # all of c4_demo, and wiki_demo cut to 5 lines


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".arrow", ".jsonl"])
def test_a_pt_corpus_is_told_from_its_columns_in_every_file_format(
    tmp_path: Path, suffix: str
) -> None:
    """LF declares a pre-training corpus by `columns: {prompt: text}` alone, in any format."""
    from datasets import Dataset

    from stages.data.shapes import SUPERVISED, TEXT, entry_shape

    def write(name: str, rows: dict[str, list[str]]) -> dict:
        path = tmp_path / f"{name}{suffix}"
        data = Dataset.from_dict(rows)
        if suffix == ".csv":
            data.to_csv(str(path), index=False)
        elif suffix == ".parquet":
            data.to_parquet(str(path))
        elif suffix == ".jsonl":
            data.to_json(str(path), lines=True)
        else:
            data.save_to_disk(str(tmp_path / name))
            (path,) = (tmp_path / name).glob("*.arrow")
        return {"path": str(path), "columns": {"prompt": "text"}}

    corpus = write("corpus", {"text": ["one document", "another"]})
    pairs = write("pairs", {"text": ["2+2?"], "output": ["4"]})
    assert entry_shape(corpus) == TEXT
    assert entry_shape(pairs) == SUPERVISED
