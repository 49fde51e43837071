"""Bad configs end in one clear message: key path, did-you-mean, exit 2, no traceback, no store.

The messages are a contract: they are pinned here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import pipelines

CASES = {
    "unknown key": (
        ["stages.sft.learning_rat=2e-4"],
        "config error (1):\n"
        "  - stages.sft.learning_rat: unknown key (did you mean 'learning_rate'?)",
    ),
    "wrong type": (
        ["stages.sft.learning_rate=fast"],
        "config error (1):\n  - stages.sft.learning_rate: expected float, got 'fast'",
    ),
    "missing stage": (
        ["+stages.sft2={kind:sft,model:sfft}"],
        "config error (1):\n  - stages.sft2.model: no stage named 'sfft' (did you mean 'sft'?)",
    ),
    "cycle": (
        ["+stages.a={kind:sft,model:b}", "+stages.b={kind:sft,model:a}"],
        "config error (1):\n  - stages: cycle: a -> b -> a (break one of the links)",
    ),
    "missing value": (
        ["model=local"],
        "config error (1):\n"
        "  - model.name_or_path: missing value (set it, e.g. model.name_or_path=...)",
    ),
    "missing model dir": (
        ["model=local", "model.name_or_path=./no/such/model"],
        "config error (1):\n  - model.name_or_path: no such file or directory: {cwd}/no/such/model",
    ),
    "bad number choice": (
        ["stages.sft.quantization_bit=3"],
        "config error (1):\n  - stages.sft.quantization_bit: invalid value 3 (one of: 4, 8)",
    ),
    "streaming rules": (
        ["stages.sft.streaming=true", "stages.sft.neat_packing=true"],
        "config errors (2):\n"
        "  - stages.sft.max_steps: not available with streaming (a stream has no length: set max_steps)\n"
        "  - stages.sft.packing: not available with streaming (packing needs the whole dataset)",
    ),
    "bad mixed choice": (
        ["stages.sft.gradient_checkpointing=maybe"],
        "config error (1):\n  - stages.sft.gradient_checkpointing: invalid value 'maybe' "
        "(one of: true, false, auto)",
    ),
    "bad choice": (
        ["stages.sft.finetuning_type=lorra"],
        "config error (1):\n"
        "  - stages.sft.finetuning_type: invalid value 'lorra' (did you mean 'lora'?)",
    ),
}


@pytest.mark.parametrize("verb", ["plan", "run"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_config_error_is_one_clear_message(tmp_path: Path, case: str, verb: str) -> None:
    overrides, message = CASES[case]
    result = pipelines(verb, "+pipeline=sft", *overrides, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == message.format(cwd=tmp_path)
    assert "Traceback" not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []  # no store, no Hydra output dir: nothing written


def test_all_problems_in_a_pipeline_file_are_reported_at_once(tmp_path: Path) -> None:
    confdir = tmp_path / "myconf" / "pipeline"
    confdir.mkdir(parents=True)
    (confdir / "bad.yaml").write_text(
        "# @package _global_\n"
        "stages:\n"
        "  sft:\n"
        "    kind: sft\n"
        "    lora_rnk: 4\n"
        "    num_train_epochs: many\n"
        "    dataset: demo_sfft\n"
        "  ppo:\n"
        "    kind: ppoo\n"
    )
    result = pipelines(
        "plan", f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "+pipeline=bad", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "config errors (4):",
        "  - stages.sft.lora_rnk: unknown key (did you mean 'lora_rank'?)",
        "  - stages.sft.num_train_epochs: expected float, got 'many'",
        "  - stages.ppo.kind: unknown kind 'ppoo' (did you mean 'ppo'?)",
        "  - stages.sft.dataset: no dataset named 'demo_sfft' (did you mean 'demo_sft'?)",
    ]


def test_missing_pipeline_lists_the_available_ones(tmp_path: Path) -> None:
    result = pipelines("plan", "+pipeline=sfft", cwd=tmp_path)
    assert result.returncode == 2
    assert "Could not find 'pipeline/sfft'" in result.stderr
    assert "Available options in 'pipeline': dpo, " in result.stderr
    assert ", sft" in result.stderr and "Traceback" not in result.stderr


def test_unknown_verb_and_no_pipeline(tmp_path: Path) -> None:
    assert pipelines("rnu", cwd=tmp_path).returncode == 2
    result = pipelines("plan", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "config error (1):\n  - stages: no stages to run (choose a pipeline, e.g. +pipeline=sft)"
    )


def test_zero_sharding_is_planned_but_not_run_by_the_inprocess_launcher(tmp_path: Path) -> None:
    args = ["+pipeline=sft", "launcher.zero_stage=3", "launcher.nproc_per_node=4"]
    plan = pipelines("plan", *args, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "memory ~" in plan.stdout  # sharding itself: tests/test_memory.py
    result = pipelines("run", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "config errors (2):\n  - launcher.zero_stage: ZeRO shards training over DeepSpeed "
        "processes; the inprocess launcher runs without DeepSpeed (set launcher=deepspeed to "
        "shard, or launcher.zero_stage=0)\n  - launcher.nproc_per_node: 4 processes asked; "
        "the inprocess launcher runs one (set launcher=torchrun or deepspeed to run several, "
        "or nproc_per_node=1)"
    )
    assert not (tmp_path / "store" / "artifacts").exists()
