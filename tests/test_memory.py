"""The memory estimate: its parameter counts match the real model, and a known config is pinned."""

from __future__ import annotations

from pathlib import Path

from compiler.memory import GIB, Shape, describe, estimate
from stages.sft import SftConfig
from tests.sizes import DEFAULT

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
