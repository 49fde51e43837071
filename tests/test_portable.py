"""A LoRA artifact is portable: its adapter_config.json names the base by where it came from,
not by a path inside the store, and a copy of the folder loads with plain peft on that base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stages.model.portable import name_source
from tests.training import base_and_data, run_sft


@pytest.mark.slow
def test_a_copied_adapter_loads_with_plain_peft_on_its_named_base(tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from stages.model.loading import load_model

    base, data = base_and_data(tmp_path)
    name_source(base, "my-org/tiny-base")
    run_sft(base, data, tmp_path / "sft", finetuning_type="lora", max_steps=2)
    config = json.loads((tmp_path / "sft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "my-org/tiny-base"
    assert str(tmp_path) not in json.dumps(config)  # no store path left in it

    elsewhere = tmp_path / "elsewhere" / "adapter"
    shutil.copytree(tmp_path / "sft", elsewhere)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), elsewhere)
    ours = load_model(tmp_path / "sft", lambda key: base)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, ours(ids).logits, atol=1e-6)
