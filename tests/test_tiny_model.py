"""The built-in tiny model and tokenizer, and the shared model loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.model.loading import load_model, load_tokenizer, read_model_json, write_model_json
from stages.model.tiny import build_model, build_tokenizer
from tests.sizes import SMALL

SIZE = SMALL


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    build_model(path, **SIZE)
    write_model_json(path, "full")
    return path


def test_tokenizer_round_trips_text_and_keeps_chat_markers_whole() -> None:
    tok = build_tokenizer()
    text = "Sort these digits.\n  312 <|im_start|>user\n~{}<|im_end|>"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 1


def test_chat_template_renders_chatml() -> None:
    tok = build_tokenizer()
    msgs = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
    text = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    assert tok.apply_chat_template(msgs, tokenize=False) == text
    assert tok.decode(tok.apply_chat_template(msgs, tokenize=True, return_dict=False)) == text
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_assistant_tokens_mask_covers_replies_and_their_end_markers() -> None:
    tok = build_tokenizer()
    msgs = [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3 + 3?"},
        {"role": "assistant", "content": "6 ok"},
    ]
    out = tok.apply_chat_template(
        msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(masked) == "4<|im_end|>6 ok<|im_end|>"


def test_build_is_deterministic(tmp_path: Path, model_dir: Path) -> None:
    build_model(tmp_path, **SIZE)
    assert (tmp_path / "model.safetensors").read_bytes() == (
        model_dir / "model.safetensors"
    ).read_bytes()
    other = tmp_path / "other"
    build_model(other, **{**SIZE, "seed": 1})
    assert (other / "model.safetensors").read_bytes() != (
        model_dir / "model.safetensors"
    ).read_bytes()


def test_full_model_loads_and_generates(model_dir: Path) -> None:
    model, tok = load_model(model_dir, resolve=lambda k: model_dir), load_tokenizer(model_dir)
    ids = tok("12 + 3", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (1, ids["input_ids"].shape[1] + 5)


def test_adapter_reloads_on_its_base_by_key(tmp_path: Path, model_dir: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    base = load_model(model_dir, resolve=lambda k: model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a non-trivial adapter
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    write_model_json(adapter, "adapter", base="base-key")
    assert read_model_json(adapter) == {"format": "adapter", "base": "base-key"}
    seen: list[str] = []
    reloaded = load_model(adapter, resolve=lambda k: seen.append(k) or model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    peft_model.eval()
    assert seen == ["base-key"]
    assert torch.allclose(reloaded(ids).logits, peft_model(ids).logits, atol=1e-6)
    plain = load_model(model_dir, resolve=lambda k: model_dir)
    assert not torch.allclose(reloaded(ids).logits, plain(ids).logits, atol=1e-3)


def test_an_adapter_must_name_its_base(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must name the key of its base"):
        write_model_json(tmp_path, "adapter")
