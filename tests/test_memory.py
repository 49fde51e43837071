"""The memory estimate: its parameter counts match the real model, and a known config is pinned."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.memory import GIB, Shape, describe, estimate
from stages.sft import SftConfig
from tests.sizes import DEFAULT

EXACT = "stages.data.demo:exact_answer_reward"
TINY = Shape(vocab=100, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)


def test_parameter_counts_match_the_models_they_describe(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from stages.model.loading import load_model
    from stages.model.tiny import build_model

    facts = build_model(tmp_path, **DEFAULT)
    assert TINY.params == facts["parameters"] == 80448
    model = get_peft_model(
        load_model(tmp_path, lambda k: tmp_path), LoraConfig(r=8, target_modules="all-linear")
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 8 * TINY.lora_dims == trainable


def test_a_known_configuration_is_pinned() -> None:
    cfg = SftConfig(
        finetuning_type="full", per_device_train_batch_size=16, cutoff_len=128, precision="fp32"
    )
    parts = estimate(TINY, cfg)
    per_token = 6 * 64 + 4 * 128 + 2 * 4 * 128  # hidden, intermediate, heads x cutoff_len
    assert parts == {
        "runtime": 0.5 * GIB,
        "weights": 80448 * 4,
        "gradients": 80448 * 4,
        "optimizer": 80448 * 8,
        "activations": 16 * 128 * per_token * 4 * 2,
        "logits": 16 * 128 * 100 * 4 * 4,
    }
    lora = estimate(
        TINY,
        SftConfig(
            lora_rank=8,
            per_device_train_batch_size=16,
            cutoff_len=128,
            precision="fp32",
            quantization_bit=4,
            gradient_checkpointing=True,
        ),
    )
    assert lora["weights"] == 80448 * 0.5625 and lora["optimizer"] == 8 * TINY.lora_dims * 8
    assert lora["activations"] == 16 * 128 * per_token * 4 + 16 * 128 * 64 * 4 * 2
    text = describe(parts, device=0.001 * GIB)
    assert (
        text.startswith("memory ~0.53 GiB (runtime 0.50, weights 0.00,")
        and "WARNING: exceeds" in text
    )


def test_zero_stages_shard_optimizer_state_then_gradients_then_weights() -> None:
    cfg = SftConfig(finetuning_type="full", per_device_train_batch_size=4, precision="fp32")
    one = estimate(TINY, cfg)
    sharded = {k: estimate(TINY, cfg, zero_stage=k, world=4) for k in (1, 2, 3)}
    assert sharded[1]["optimizer"] == one["optimizer"] / 4
    assert sharded[1]["gradients"] == one["gradients"]
    assert sharded[2]["gradients"] == one["gradients"] / 4
    assert sharded[2]["weights"] == one["weights"]
    assert sharded[3]["weights"] == one["weights"] / 4
    assert sharded[3]["activations"] == one["activations"]  # activations are per device


def test_auto_checkpointing_is_decided_by_the_estimate_against_the_device(tmp_path: Path) -> None:
    from compiler.compile import compile_pipeline
    from compiler.digests import DigestCache
    from compiler.memory import checkpointing_needed, stage_memory
    from compiler.schema import LauncherConfig
    from pipelines.summary import memory_lines

    raw = {
        "model": {"name_or_path": "tiny", **{k: v for k, v in DEFAULT.items() if k != "seed"}},
        "datasets": {"d": {"path": "pkg://stages/data/demo/sft.jsonl"}},
        "stages": {"sft": {"kind": "sft", "dataset": "d", "cutoff_len": 1024}},
    }
    compiled = compile_pipeline(raw, tmp_path, DigestCache(tmp_path / "digests.json"))
    small, large = LauncherConfig(device_memory_gb=0.6), LauncherConfig(device_memory_gb=100.0)
    on, without = checkpointing_needed(compiled.graph, "sft", None, small)  # type: ignore[misc]
    assert on and without > 0.6 * GIB
    assert checkpointing_needed(compiled.graph, "sft", None, large) == (False, without)
    node = compiled.graph.nodes["sft"]["node"]
    lines = memory_lines(compiled.graph, node, None, small)
    assert (
        lines[1]
        == f"gradient checkpointing auto -> on (needed: {without / GIB:.2f} GiB without it)"
    )
    assert lines[0].startswith("memory ~")
    sharded = LauncherConfig(zero_stage=1, nproc_per_node=4)
    full = stage_memory(compiled.graph, "sft", None, large)
    assert stage_memory(compiled.graph, "sft", None, sharded)["optimizer"] == full["optimizer"] / 4  # type: ignore[index]
    assert memory_lines(compiled.graph, node, None, large)[1].startswith(
        "gradient checkpointing auto -> off (not needed"
    )


@pytest.mark.parametrize(
    ("setting", "device_gb", "want"),
    [("auto", 1.0, True), ("auto", 100.0, False), (True, 100.0, True), (False, 1.0, False)],
)
def test_the_training_stage_applies_the_decision(
    setting: object, device_gb: float, want: bool
) -> None:
    from stages.base import Context
    from stages.model.training import checkpointing

    ctx = Context("s", "k", Path("."), Path("."), {})
    ctx.memory = {"without_checkpointing": 10 * GIB, "device": device_gb * GIB}
    assert checkpointing(SftConfig(gradient_checkpointing=setting), ctx) is want  # type: ignore[arg-type]


def test_a_stage_kinds_profile_counts_what_it_holds() -> None:
    """rm: both replies of a pair, no vocabulary logits; a profile with a frozen reference adds
    one more copy of the weights and two trained models double gradients and optimizer state."""
    from stages.rm import RmConfig, RmStage

    cfg = RmConfig(finetuning_type="full", per_device_train_batch_size=4, cutoff_len=64)
    plain = estimate(TINY, cfg)
    rm = estimate(TINY, cfg, profile=RmStage.memory_profile(cfg, {}))
    assert rm["activations"] == 2 * plain["activations"] and rm["logits"] == 0
    two = estimate(TINY, cfg, profile={"trained": 2, "frozen": 1})
    assert two["frozen"] == plain["weights"] and two["weights"] == 2 * plain["weights"]
    assert two["optimizer"] == 2 * plain["optimizer"]


@pytest.mark.parametrize("kind", ["ppo", "grpo"])
def test_a_colocated_vllm_engine_takes_its_share_of_the_device(tmp_path: Path, kind: str) -> None:
    """use_vllm reserves vllm_gpu_memory_utilization of the target device, on top of training."""
    from compiler.compile import compile_pipeline
    from compiler.digests import DigestCache
    from compiler.memory import stage_memory
    from compiler.schema import LauncherConfig

    def parts(**rl: object) -> dict[str, float]:
        stage = {"kind": kind, "dataset": "d", "reward_funcs": [EXACT], **rl}
        raw = {
            "model": {"name_or_path": "tiny", **{k: v for k, v in DEFAULT.items() if k != "seed"}},
            "datasets": {"d": {"path": "pkg://stages/data/demo/prompts.jsonl"}},
            "stages": {"rl": stage},
        }
        compiled = compile_pipeline(raw, tmp_path, DigestCache(tmp_path / "digests.json"))
        found = stage_memory(compiled.graph, "rl", None, LauncherConfig(device_memory_gb=80.0))
        assert found is not None
        return found

    without = parts()
    engine = parts(use_vllm=True, vllm_gpu_memory_utilization=0.25)
    assert "engine" not in without
    assert engine == {**without, "engine": 0.25 * 80 * GIB}
