"""LLaMA Pro: the expanded model computes what the original did, only the new blocks train, and
the expansion survives save and reload."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

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


TINY = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
}
MOE = {"num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 16}


def qwen2_moe(**extra):  # type: ignore[no-untyped-def]
    import torch
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    torch.manual_seed(0)
    return Qwen2MoeForCausalLM(Qwen2MoeConfig(**TINY, **MOE, **extra)).eval()


def test_fused_moe_experts_start_as_the_identity_and_reload(tmp_path: Path) -> None:
    """transformers 5 fuses the experts' down_proj into one parameter (not an nn.Linear); the
    dense layer listed in mlp_only_layers must keep its place after the expansion."""
    import torch
    from transformers import AutoModelForCausalLM

    model = qwen2_moe(shared_expert_intermediate_size=16, mlp_only_layers=[1])
    ids = torch.tensor(IDS)
    with torch.no_grad():
        before = model(ids).logits
    assert expand_blocks(model, 2) == [2, 5]
    assert model.config.mlp_only_layers == [1, 2]  # layer 1 and its copy
    assert not model.model.layers[5].mlp.experts.down_proj.any()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, before, atol=1e-6)
        model.model.layers[5].mlp.experts.down_proj.normal_()  # visible after reloading
        expanded = model(ids).logits
    model.save_pretrained(tmp_path / "moe")
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "moe")).eval()
    assert [type(layer.mlp).__name__ for layer in again.model.layers] == [
        type(layer.mlp).__name__ for layer in model.model.layers
    ]
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, expanded, atol=1e-6)


def test_per_layer_attention_types_follow_their_layers() -> None:
    """Gemma 2 alternates sliding and full attention (config.layer_types); a copy keeps its
    original's type, so cached generation past the window still matches."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(**TINY, head_dim=8, sliding_window=4)).eval()
    assert model.config.layer_types == ["sliding_attention", "full_attention"] * 2
    ids = torch.tensor(IDS)
    with torch.no_grad():
        before = model(ids).logits
        greedy = model.generate(ids, max_new_tokens=6, do_sample=False)
    expand_blocks(model, 2)
    assert model.config.layer_types == ["sliding_attention", "full_attention", "full_attention"] * 2
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, before, atol=1e-6)
        assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False), greedy)


def test_layers_laid_out_by_position_are_refused_untouched() -> None:
    """decoder_sparse_step=2 makes every second layer sparse: a copy inserted after layer 1 would
    be rebuilt dense on reload, so the expansion is refused before anything changes."""
    model = qwen2_moe(decoder_sparse_step=2)
    with pytest.raises(UserError, match="llama_pro_blocks: Qwen2MoeDecoderLayer layers are laid"):
        expand_blocks(model, 2)
    assert len(model.model.layers) == 4 == model.config.num_hidden_layers


def test_unknown_architectures_are_refused() -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64))
    with pytest.raises(UserError, match="no `layers` list of decoder blocks"):
        expand_blocks(gpt2, 1)

    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = SimpleNamespace(**TINY)
            self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(2))

    with pytest.raises(UserError, match="output projections of a Linear"):
        expand_blocks(Odd(), 1)


def test_zero_new_blocks_is_a_config_error() -> None:
    from compiler.errors import Issue
    from compiler.schema import validate

    issues: list[Issue] = []
    stage = {"kind": "sft", "finetuning_type": "freeze", "llama_pro_blocks": 0}
    validate({"stages": {"s": stage}}, issues)
    assert [str(i) for i in issues] == [
        "stages.s.llama_pro_blocks: must be a positive number of blocks"
    ]
