"""Continued pre-training: text -> token blocks (the implicit `blocks` node) -> `pt`, and a
pt -> sft chain through the CLI on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.base import Context, UserError
from stages.blocks import BlocksConfig, BlocksStage
from tests.cli import pipelines
from tests.sizes import SMALL


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stages.model.loading import write_model_json
    from stages.model.tiny import build_model

    path = tmp_path_factory.mktemp("base")
    build_model(path, **SMALL)
    write_model_json(path, "full")
    return path


def blocks(base: Path, tmp_path: Path, text: str, **cfg: object) -> Context:
    doc = tmp_path / "docs.jsonl"
    doc.write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    entry = {"name": "docs", "path": str(doc), "formatting": "text", "columns": {"prompt": "text"}}
    ctx = Context("b", "k", out, tmp_path / "w", {"model": base}, datasets={"dataset": [entry]})
    BlocksStage().run(ctx, BlocksConfig(**cfg))  # type: ignore[arg-type]
    return ctx


def test_documents_become_full_blocks_with_eos_between_them(base: Path, tmp_path: Path) -> None:
    from datasets import load_from_disk

    from stages.model.tiny import build_tokenizer

    docs = ["abcdefghij", "klmnop", "qrstuvwxyz"]
    text = "".join(json.dumps({"text": d}) + "\n" for d in docs)
    ctx = blocks(base, tmp_path, text, cutoff_len=8)
    tok = build_tokenizer()
    stream = []
    for d in docs:
        stream += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    rows = load_from_disk(str(ctx.out / "train"))
    assert [r["input_ids"] for r in rows] == [stream[0:8], stream[8:16], stream[16:24]]
    assert all(r["labels"] == r["input_ids"] for r in rows)  # every token is trained
    assert ctx.metrics["blocks"] == 3 and ctx.metrics["documents"] == 3
    assert ctx.metrics["dropped_tokens"] == len(stream) - 24


def test_validation_blocks_are_held_out(base: Path, tmp_path: Path) -> None:
    text = "".join(json.dumps({"text": "word " * 20}) + "\n" for _ in range(10))
    ctx = blocks(base, tmp_path, text, cutoff_len=16, val_size=3)
    assert ctx.metrics["validation"] == 3 and (ctx.out / "validation").is_dir()


def test_a_bad_row_names_its_file_and_row(base: Path, tmp_path: Path) -> None:
    text = json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": 3}) + "\n"
    with pytest.raises(UserError, match=r"docs.jsonl:2: field 'text' must be a string"):
        blocks(base, tmp_path, text, cutoff_len=4)


def test_too_little_text_for_one_block_is_a_clear_error(base: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="fewer tokens than one block of cutoff_len 512"):
        blocks(base, tmp_path, json.dumps({"text": "short"}) + "\n")


def test_pt_refuses_supervised_data_and_sft_refuses_text_at_compile_time() -> None:
    from compiler.errors import CompileError, Issue
    from compiler.graph import build_graph
    from compiler.schema import validate

    datasets = {
        "chat": {"path": "pkg://stages/data/demo/sft.jsonl", "formatting": "alpaca"},
        "text": {"path": "pkg://stages/data/demo/text.txt", "formatting": "text"},
    }
    raw = {
        "datasets": datasets,
        "stages": {"p": {"kind": "pt", "dataset": "chat"}, "s": {"kind": "sft", "dataset": "text"}},
    }
    issues: list[Issue] = []
    with pytest.raises(CompileError) as e:
        build_graph(validate(raw, issues, Path.cwd()), Path.cwd(), issues)
    assert sorted(str(i) for i in e.value.issues) == [
        "stages.p.dataset: dataset 'chat' holds supervised data; pt needs plain text "
        "(formatting: text); supervised data is for sft (or as prompts: ppo / grpo)",
        "stages.s.dataset: dataset 'text' holds text data; sft needs supervised data; "
        "text data is for pt",
    ]


@pytest.mark.slow
def test_pt_then_sft_runs_and_the_chain_is_planned(tmp_path: Path) -> None:
    args = [
        "+pipeline=pt_sft",
        "stages.pt.max_steps=6",
        "stages.sft.max_steps=4",
        "stages.pt.gradient_checkpointing=auto",
        "stages.pt.logging_steps=2",
    ]
    result = pipelines("run", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    store = tmp_path / "store"
    (record,) = [json.loads(p.read_text()) for p in (store / "runs").glob("*.json")]
    assert {k: v["status"] for k, v in record["stages"].items()} == {
        "base": "ran",
        "blocks:demo_text": "ran",
        "tokenize:demo_sft": "ran",
        "pt": "ran",
        "sft": "ran",
    }
    pt = store / "artifacts" / "pt" / record["stages"]["pt"]["key"]
    manifest = json.loads((pt / "manifest.json").read_text())
    assert (
        manifest["metrics"]["steps"] == 6
        and manifest["inputs"]["data"]["name"] == "blocks:demo_text"
    )
    assert manifest["metrics"]["gradient_checkpointing"] is False  # auto: not needed here
    assert (pt / "loss.png").read_bytes().startswith(b"\x89PNG")
    sft = json.loads(
        (store / "artifacts" / "sft" / record["stages"]["sft"]["key"] / "manifest.json").read_text()
    )
    assert sft["inputs"]["model"] == {"name": "pt", "key": record["stages"]["pt"]["key"]}
    plan = pipelines("plan", *args, "stages.pt.cutoff_len=64", cwd=tmp_path)
    lines = plan.stdout.splitlines()
    assert "blocks:demo_text: run (cutoff_len 128 -> 64)" in lines
    assert "pt: run (upstream changed (blocks:demo_text))" in lines
    assert any(line.startswith("sft: run (upstream changed (") for line in lines)
    assert any("gradient checkpointing auto -> off" in line for line in lines)


@pytest.mark.slow
def test_auto_checkpointing_turns_on_when_the_device_is_too_small(tmp_path: Path) -> None:
    args = ["+pipeline=pt", "stages.pt.max_steps=2", "launcher.device_memory_gb=0.4"]
    plan = pipelines("plan", *args, cwd=tmp_path)
    assert any(
        "gradient checkpointing auto -> on (needed:" in line for line in plan.stdout.splitlines()
    )
    result = pipelines("run", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (manifest,) = (tmp_path / "store" / "artifacts" / "pt").glob("*/manifest.json")
    assert json.loads(manifest.read_text())["metrics"]["gradient_checkpointing"] is True
