"""Methods that need a CUDA GPU: LoftQ init, bf16, fused kernels, flash-attention-2, QLoRA on the
GPU. They run wherever CUDA is visible (skipped here, with the reason); on a CPU machine the same
configs compile and plan (tests/test_configs.py), and the CPU refusals are tested below."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from stages.base import Context, UserError
from stages.model.loading import load_model
from tests.training import base_and_data, run_sft

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return base_and_data(tmp_path_factory.mktemp("gpu"))


def train(prepared: tuple[Path, Path], tmp_path: Path, **cfg: object) -> Context:
    ctx = run_sft(*prepared, tmp_path / "out", **cfg)
    assert math.isfinite(ctx.metrics["train_loss"])
    return ctx


def test_loftq_needs_a_gpu_and_says_so(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: test_loftq_adapter_keeps_its_rewritten_base runs instead")
    with pytest.raises(UserError, match="loftq_bits: needs a CUDA GPU"):
        train(prepared, tmp_path, finetuning_type="lora", lora_rank=4, loftq_bits=4)


def test_liger_without_its_package_is_a_clear_error(
    prepared: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "liger_kernel" else real(name, *a),
    )
    with pytest.raises(UserError, match="enable_liger_kernel needs liger-kernel: pip install"):
        train(prepared, tmp_path, finetuning_type="full", enable_liger_kernel=True)


@pytest.mark.gpu
def test_loftq_adapter_keeps_its_rewritten_base(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    import torch

    ctx = train(prepared, tmp_path, finetuning_type="lora", lora_rank=4, loftq_bits=4)
    meta = json.loads((ctx.out / "model.json").read_text())
    assert meta["base"] == "base-key" and meta["base_dir"] == "loftq_base"
    base = prepared[0]
    reloaded = load_model(ctx.out, resolve=lambda key: base).eval()
    plain = load_model(base, resolve=lambda key: base).eval()
    ids = torch.tensor([[5, 9, 14, 20, 33, 41]]).to(reloaded.device)
    with torch.no_grad():
        # the base inside the artifact is LoftQ's quantised one, not the original
        inner = reloaded.get_base_model().model.layers[0].mlp.up_proj.base_layer.weight.cpu()
        assert not torch.equal(inner, plain.model.layers[0].mlp.up_proj.weight)
        assert torch.isfinite(reloaded(ids).logits).all()


@pytest.mark.gpu
def test_bf16_training_on_the_gpu(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    ctx = train(prepared, tmp_path, finetuning_type="full", precision="bf16")
    assert ctx.metrics["steps"] == 3


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_on_the_gpu(prepared: tuple[Path, Path], tmp_path: Path, bits: int) -> None:
    ctx = train(prepared, tmp_path, finetuning_type="lora", lora_rank=4, quantization_bit=bits)
    assert (ctx.out / "adapter_model.safetensors").exists()


@pytest.mark.gpu
def test_liger_kernels_when_installed(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("liger_kernel", reason="liger-kernel is not installed")
    ctx = train(prepared, tmp_path, finetuning_type="full", enable_liger_kernel=True)
    assert ctx.metrics["steps"] == 3


@pytest.mark.gpu
def test_flash_attention_2_when_installed(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("flash_attn", reason="flash-attn is not installed")
    ctx = train(
        prepared,
        tmp_path,
        finetuning_type="full",
        precision="bf16",
        attn_implementation="flash_attention_2",
    )
    assert ctx.metrics["steps"] == 3
