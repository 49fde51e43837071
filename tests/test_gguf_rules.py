"""What GGUF export refuses or translates without a model: the Ollama Modelfile's template
(checked against Go's own text/template where Go is installed), architectures it cannot write,
and llama3 rope scaling written as llama.cpp's frequency divisors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from stages.base import UserError


def test_a_template_that_is_not_role_blocks_is_left_out_with_a_reason() -> None:
    from stages.model.modelfile import modelfile, template_blocks
    from stages.model.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    blocks, _ = template_blocks(tokenizer)
    assert blocks is not None and blocks.generation == "<|im_start|>assistant\n"
    tokenizer.chat_template = (  # Llama 2 style: the system prompt inside the first user turn
        "{% for m in messages %}{% if m['role'] == 'system' %}{% set s = m['content'] %}"
        "{% elif m['role'] == 'user' %}[INST] {% if s is defined %}<<SYS>>{{ s }}<</SYS>> "
        "{% endif %}{{ m['content'] }} [/INST]{% else %}{{ m['content'] }}</s>{% endif %}"
        "{% endfor %}"
    )
    text = modelfile("m.gguf", tokenizer, ["</s>"])
    assert "TEMPLATE" in text and 'TEMPLATE """' not in text
    assert "# TEMPLATE: not translated (" in text and 'PARAMETER stop "</s>"' in text


def test_unsupported_architectures_are_named() -> None:
    from stages.model.gguf_export import check_architecture

    config = SimpleNamespace(architectures=["GPTNeoXForCausalLM"])
    with pytest.raises(
        UserError,
        match="cannot write GPTNeoXForCausalLM as GGUF; supported: LlamaForCausalLM, Qwen2ForCausalLM",
    ):
        check_architecture(config)


def test_llama3_rope_scaling_travels_as_llama_cpp_frequency_divisors() -> None:
    from transformers import LlamaConfig

    from stages.model.gguf_export import check_rope, llama3_rope_factors

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}
    rope |= {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    rope |= {"original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=128, num_attention_heads=2, rope_parameters=rope)
    factors = llama3_rope_factors(config)
    assert factors.shape == (32,)  # one per rotary frequency of a 64-wide head
    assert factors[0] == pytest.approx(1.0) and factors[-1] == pytest.approx(8.0)
    assert all(b >= a - 1e-6 for a, b in zip(factors, factors[1:], strict=False))
    assert llama3_rope_factors(LlamaConfig(hidden_size=128, num_attention_heads=2)) is None
    with pytest.raises(UserError, match="rope scaling 'yarn' is not written to GGUF here"):
        check_rope({"rope_type": "yarn", "factor": 4.0})


@pytest.mark.skipif(shutil.which("go") is None, reason="needs a Go toolchain (text/template)")
def test_go_renders_the_modelfile_template_as_the_jinja_template_does(tmp_path: Path) -> None:
    """Ollama's templates are Go's text/template: run the translated one through Go itself,
    with .System and .Messages filled as Ollama fills them, against the Jinja renders."""
    from stages.model.modelfile import go_template, template_blocks
    from stages.model.tiny import build_tokenizer

    program = tmp_path / "main.go"
    program.write_text(GO_RENDER)
    (tmp_path / "go.mod").write_text("module render\n\ngo 1.19\n")
    conversations = [
        [{"role": "user", "content": "Hi {{ .System }}"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+3?"},
            {"role": "assistant", "content": "5"},
            {"role": "user", "content": "And 3+4?"},
        ],
    ]
    default = "You are a helpful AI assistant."
    smol_like = (  # SmolLM2's template: a default system prompt when none is given
        "{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\n" + default + "<|im_end|>\n' }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    for template in (None, smol_like):
        tokenizer = build_tokenizer()
        tokenizer.chat_template = template or tokenizer.chat_template
        blocks, _ = template_blocks(tokenizer)
        assert blocks is not None and blocks.default_system == (default if template else None)
        (tmp_path / "t.tmpl").write_text(go_template(blocks))
        for messages in conversations:
            system = [m["content"] for m in messages if m["role"] == "system"]
            values = {
                "System": "\n\n".join(system) or (blocks.default_system or ""),
                "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages],
            }
            (tmp_path / "v.json").write_text(json.dumps(values))
            done = subprocess.run(
                ["go", "run", ".", "t.tmpl", "v.json"], cwd=tmp_path, capture_output=True,
                text=True, check=True,
            )  # fmt: skip
            jinja = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            assert done.stdout == jinja


GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct{ Role, Content string }

type Values struct {
	System   string
	Messages []Message
}

func main() {
	text, _ := os.ReadFile(os.Args[1])
	data, _ := os.ReadFile(os.Args[2])
	var v Values
	if err := json.Unmarshal(data, &v); err != nil {
		panic(err)
	}
	t := template.Must(template.New("modelfile").Parse(string(text)))
	if err := t.Execute(os.Stdout, v); err != nil {
		panic(err)
	}
}
"""
