"""Same config, same numbers: two runs of one sft config give identical losses and weights, so a
recomputed artifact is the cached one, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training import base_and_data, run_sft

pytestmark = pytest.mark.slow


def test_two_lora_runs_give_identical_losses_and_adapters(tmp_path: Path) -> None:
    """The second run starts from another global RNG state (the first one drew from it): the
    new adapter's weights must come from the config's seed, not from whatever ran before."""
    import torch
    from safetensors.torch import load_file

    base, data = base_and_data(tmp_path, max_samples=24)
    runs = []
    for name in ("first", "second"):
        ctx = run_sft(base, data, tmp_path / name, finetuning_type="lora", lora_rank=4, max_steps=4)
        log = (ctx.out / "train_log.jsonl").read_text().splitlines()
        losses = [json.loads(line)["loss"] for line in log if '"loss"' in line]
        runs.append(
            (
                losses,
                ctx.metrics["train_loss"],
                load_file(str(ctx.out / "adapter_model.safetensors")),
            )
        )
    (losses_a, train_a, adapter_a), (losses_b, train_b, adapter_b) = runs
    assert len(losses_a) == 4 and losses_a == losses_b and train_a == train_b
    assert adapter_a.keys() == adapter_b.keys()
    assert all(torch.equal(adapter_a[k], adapter_b[k]) for k in adapter_a)
