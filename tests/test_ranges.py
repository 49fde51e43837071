"""Numeric fields declare their valid range once, beside the field; the compiler refuses a value
outside it with the key path and the range, before anything runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from compiler.schema import out_of_range
from stages import KINDS
from tests.cli import pipelines


def test_every_kinds_defaults_lie_inside_their_declared_ranges() -> None:
    checked = 0
    for kind, stage in KINDS.items():
        for f in dataclasses.fields(stage.Config):
            if f.default is dataclasses.MISSING or not {"min", "max", "above"} & set(f.metadata):
                continue
            checked += 1
            assert out_of_range(f.default, f.metadata) is None, (kind, f.name, f.default)
    assert checked > 40  # the training, data and RL fields all carry ranges


def test_the_shared_training_and_data_fields_carry_ranges() -> None:
    fields = {f.name: f.metadata for f in dataclasses.fields(KINDS["sft"].Config)}
    for name in (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "max_steps",
        "cutoff_len",
        "val_size",
        "lora_rank",
        "lora_dropout",
    ):
        assert {"min", "max", "above"} & set(fields[name]), name


@pytest.mark.parametrize(
    ("value", "meta", "message"),
    [
        (0, {"min": 1}, "must be >= 1"),
        (0.0, {"above": 0}, "must be > 0"),
        (1.5, {"min": 0, "max": 1}, "must be >= 0 and <= 1"),
        (1, {"min": 1}, None),
        (None, {"min": 1}, None),
        (True, {"min": 5}, None),  # booleans are not numbers here
    ],
)
def test_out_of_range_names_the_bound(value: object, meta: dict, message: str | None) -> None:
    assert out_of_range(value, meta) == message


def test_bad_numbers_are_refused_at_compile_time_with_their_key_paths(tmp_path: Path) -> None:
    done = pipelines(
        "plan",
        "+pipeline=dpo",
        "stages.dpo.per_device_train_batch_size=0",
        "stages.dpo.learning_rate=-1e-4",
        "stages.dpo.dpo_label_smoothing=0.7",
        "stages.dpo.cutoff_len=0",
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    for line in (
        "stages.dpo.per_device_train_batch_size: 0 is out of range (must be >= 1)",
        "stages.dpo.learning_rate: -0.0001 is out of range (must be > 0)",
        "stages.dpo.dpo_label_smoothing: 0.7 is out of range (must be >= 0 and <= 0.5)",
        "stages.dpo.cutoff_len: 0 is out of range (must be >= 1)",
    ):
        assert line in done.stderr, done.stderr
    assert not (tmp_path / "store").exists()
