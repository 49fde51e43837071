"""Validation of the composed config: every key checked, every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.compile import compile_pipeline
from compiler.digests import DigestCache
from compiler.errors import CompileError, Issue
from compiler.schema import validate
from stages import KINDS


def issues_of(raw: dict) -> list[str]:
    issues: list[Issue] = []
    validate(raw, issues)
    return [str(i) for i in issues]


def test_unknown_key_has_full_path_and_did_you_mean() -> None:
    issues: list[Issue] = []
    validate({"stages": {"sft": {"kind": "sft", "learning_rat": 1e-4}}}, issues)
    assert issues == [
        Issue("stages.sft.learning_rat", "unknown key", "did you mean 'learning_rate'?")
    ]
    assert str(issues[0]) == "stages.sft.learning_rat: unknown key (did you mean 'learning_rate'?)"


def test_wrong_type_names_the_expected_type() -> None:
    assert issues_of({"stages": {"sft": {"kind": "sft", "learning_rate": "abc"}}}) == [
        "stages.sft.learning_rate: expected float, got 'abc'"
    ]
    assert issues_of({"stages": {"sft": {"kind": "sft", "max_samples": 1.5}}}) == [
        "stages.sft.max_samples: expected int or null, got 1.5"
    ]


def test_ints_are_accepted_for_floats() -> None:
    issues: list[Issue] = []
    spec = validate({"stages": {"sft": {"kind": "sft", "num_train_epochs": 3}}}, issues)
    assert issues == [] and spec.stages["sft"].config.num_train_epochs == 3.0
    assert isinstance(spec.stages["sft"].config.num_train_epochs, float)


def test_kind_unknown_missing_and_choice_violations() -> None:
    assert issues_of(
        {
            "stages": {
                "a": {"kind": "sfft"},
                "b": {},
                "c": {"kind": "sft", "finetuning_type": "lorra"},
            }
        }
    ) == [
        "stages.a.kind: unknown kind 'sfft' (did you mean 'sft'?)",
        f"stages.b.kind: missing 'kind' (one of: {', '.join(sorted(KINDS))})",
        "stages.c.finetuning_type: invalid value 'lorra' (did you mean 'lora'?)",
    ]


def test_a_kind_that_is_not_a_string_is_an_issue_not_a_crash() -> None:
    assert issues_of({"stages": {"a": {"kind": ["sft"]}}}) == [
        "stages.a.kind: unknown kind '['sft']' (did you mean 'sft'?)"
    ]


def test_every_problem_is_reported_together() -> None:
    raw = {
        "stagse": {},
        "launcher": {"name": "torchrum"},
        "datasets": {"d": {"path": "d.jsonl", "formatting": "alpacca"}},
        "stages": {
            "sft": {"kind": "sft", "learning_rat": 1e-4, "lora_rank": "8"},
            "rm": {"kind": "rmm"},
        },
    }
    issues: list[Issue] = []
    validate(raw, issues)
    assert len(issues) == 6
    assert [i.path for i in issues] == [
        "stagse",
        "launcher.name",
        "datasets.d.formatting",
        "stages.sft.learning_rat",
        "stages.sft.lora_rank",
        "stages.rm.kind",
    ]


def test_root_and_model_keys_are_checked_too() -> None:
    raw = {"stagse": {}, "model": {"hiden_size": 8}, "stages": {"s": {"kind": "sft"}}}
    assert issues_of(raw) == [
        "stagse: unknown key (did you mean 'stages'?)",
        "model.hiden_size: unknown key (did you mean 'hidden_size'?)",
    ]


def test_compile_raises_once_with_every_problem(tmp_path: Path) -> None:
    raw = {
        "stages": {
            "sft": {"kind": "sft", "lora_rnk": 4, "learning_rate": "x", "model": "nope"},
        }
    }
    with pytest.raises(CompileError) as e:
        compile_pipeline(raw, tmp_path, DigestCache())
    assert e.value.render() == (
        "config errors (4):\n"
        "  - stages.sft.lora_rnk: unknown key (did you mean 'lora_rank'?)\n"
        "  - stages.sft.learning_rate: expected float, got 'x'\n"
        "  - stages.sft.model: no stage named 'nope' (stages: base)\n"
        "  - stages.sft.dataset: no dataset named 'demo_sft' (declare it as datasets.demo_sft.path)"
    )
