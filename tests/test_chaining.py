"""Chaining: a stage trains from exactly the model its upstream artifact holds (same logits as
that artifact reloaded on its own), whether it continues an adapter, merges it into full
weights, or merges it and trains a new adapter on top."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.base import Context
from stages.model.loading import load_model
from stages.sft import SftConfig
from tests.training import base_and_data, run_sft

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """key -> artifact dir: a base, tokenized data, and a LoRA adapter trained on the base."""
    base, data = base_and_data(tmp_path_factory.mktemp("chain"))
    arts = {"base": base, "data": data}
    train(arts, "lora1", "base", finetuning_type="lora", lora_rank=4)
    return arts


def train(arts: dict[str, Path], name: str, upstream: str, **cfg: object) -> Context:
    out = arts["base"].parent / name
    ctx = run_sft(arts[upstream], arts["data"], out, upstream_key=upstream, resolve=arts, **cfg)
    arts[name] = out
    return ctx


def logits(model: object) -> object:
    import torch

    with torch.no_grad():
        return model.eval()(torch.tensor([[5, 9, 14, 20, 33, 41]])).logits  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "cfg",
    [
        {"finetuning_type": "lora", "lora_rank": 4},
        {"finetuning_type": "lora", "lora_rank": 4, "create_new_adapter": True},
        {"finetuning_type": "full"},
        {"finetuning_type": "freeze", "freeze_trainable_layers": 1},
    ],
    ids=["continue-adapter", "new-adapter", "merge-full", "merge-freeze"],
)
def test_training_starts_from_the_upstream_model(store: dict[str, Path], cfg: dict) -> None:
    import torch

    from stages.model.adapters import trainable_model

    upstream = load_model(store["lora1"], resolve=lambda key: store[key])
    start, _ = trainable_model(store["lora1"], SftConfig(**cfg), "lora1", lambda key: store[key])
    assert torch.allclose(logits(start), logits(upstream), atol=1e-5)


def test_a_new_adapter_stacks_on_the_merged_upstream_adapter(store: dict[str, Path]) -> None:
    import torch

    ctx = train(
        store, "lora2", "lora1", finetuning_type="lora", lora_rank=4, create_new_adapter=True
    )
    meta = json.loads((ctx.out / "model.json").read_text())
    assert meta == {"format": "adapter", "base": "lora1"}  # its base is the upstream adapter
    reloaded = load_model(ctx.out, resolve=lambda key: store[key])
    upstream = load_model(store["lora1"], resolve=lambda key: store[key])
    assert not torch.allclose(logits(reloaded), logits(upstream), atol=1e-4)  # it trained
    # the new adapter's weights are its own: one adapter, rank 4, on the merged upstream
    assert list(reloaded.peft_config) == ["default"]


def test_continuing_an_adapter_keeps_its_base(store: dict[str, Path]) -> None:
    ctx = train(store, "lora3", "lora1", finetuning_type="lora", lora_rank=4)
    assert json.loads((ctx.out / "model.json").read_text()) == {"format": "adapter", "base": "base"}
