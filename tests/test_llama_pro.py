"""LLaMA Pro: the expanded model computes what the original did, only the new blocks train, and
the expansion survives save and reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.base import UserError
from stages.model.llama_pro import expand_blocks, train_only
from tests.sizes import SMALL


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    from stages.model.tiny import build_model

    build_model(tmp_path, **{**SMALL, "num_hidden_layers": 4})
    return tmp_path


def load(path: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


IDS = [[5, 9, 14, 20, 33, 41, 7, 3]]


def test_new_blocks_start_as_the_identity(model_dir: Path) -> None:
    import torch

    model = load(model_dir)
    ids = torch.tensor(IDS)
    with torch.no_grad():
        before = model(ids).logits
        greedy = model.generate(ids, max_new_tokens=6, do_sample=False)
    new = expand_blocks(model, 2)
    assert new == [2, 5] and len(model.model.layers) == 6 == model.config.num_hidden_layers
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(6))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, before, atol=1e-6)
        # the KV cache is indexed per layer: cached generation still gives the same tokens
        assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False), greedy)


def test_only_the_new_blocks_train(model_dir: Path) -> None:
    import torch

    model = load(model_dir).train()
    new = expand_blocks(model, 2)
    train_only(model, new)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor(IDS)
    model(ids, labels=ids).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("model.layers.2.", "model.layers.5.")) for n in changed)
    assert any(n.startswith("model.layers.2.") for n in changed)
    assert any(n.startswith("model.layers.5.") for n in changed)


def test_the_expanded_model_saves_and_reloads(model_dir: Path, tmp_path: Path) -> None:
    import torch

    model = load(model_dir)
    expand_blocks(model, 4)
    with torch.no_grad():  # make the new blocks do something, so reloading them is visible
        model.model.layers[1].mlp.down_proj.weight.normal_()
    model.save_pretrained(tmp_path / "expanded")
    again = load(tmp_path / "expanded")
    assert again.config.num_hidden_layers == 8 and len(again.model.layers) == 8
    ids = torch.tensor(IDS)
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, model(ids).logits, atol=1e-6)


@pytest.mark.parametrize(
    ("num_new", "message"),
    [
        (
            3,
            "llama_pro_blocks: 3 new blocks cannot be spread evenly over 4 layers (choose one of: 1, 2, 4)",
        ),
        (
            0,
            "llama_pro_blocks: 0 new blocks cannot be spread evenly over 4 layers (choose one of: 1, 2, 4)",
        ),
    ],
)
def test_a_count_that_does_not_divide_the_layers_is_refused(
    model_dir: Path, num_new: int, message: str
) -> None:
    with pytest.raises(UserError) as e:
        expand_blocks(load(model_dir), num_new)
    assert str(e.value) == message
