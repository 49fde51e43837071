"""Compile time: a stage's policy, reference and reward model must start from models with the
same tokenizer; a reference trained from another tokenizer is refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.compile import compile_pipeline
from compiler.digests import DigestCache
from compiler.errors import CompileError

PREFS = "pkg://stages/data/demo/preference.jsonl"


def model_dir(path: Path, vocab: str) -> Path:
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "tokenizer.json").write_text(vocab)
    return path


def raw(other: Path) -> dict:
    return {
        "model": {"name_or_path": "tiny"},
        "datasets": {"prefs": {"path": PREFS, "ranking": True}},
        "stages": {
            "other": {"kind": "base", "name_or_path": str(other)},
            "dpo": {"kind": "dpo", "dataset": "prefs", "ref_model": "other"},
        },
    }


def test_a_reference_with_another_tokenizer_is_refused(tmp_path: Path) -> None:
    other = model_dir(tmp_path / "other", '{"vocab": "another"}')
    with pytest.raises(CompileError) as e:
        compile_pipeline(raw(other), tmp_path, DigestCache())
    assert [str(i) for i in e.value.issues] == [
        "stages.dpo.ref_model: 'other' starts from a model whose tokenizer differs from that of "
        "model 'base' (train ref_model from the same base model as model)"
    ]


def test_bases_with_identical_tokenizer_files_are_accepted(tmp_path: Path) -> None:
    a = model_dir(tmp_path / "a", '{"vocab": "same"}')
    b = model_dir(tmp_path / "b", '{"vocab": "same"}')
    config = raw(b)
    config["model"] = {"name_or_path": str(a)}
    compiled = compile_pipeline(config, tmp_path, DigestCache())
    assert compiled.graph.nodes["dpo"]["node"].inputs["ref_model"] == "other"
