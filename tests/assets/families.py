"""Small tokenizers carrying the chat templates of the major model families (test assets).

Each is a byte-level BPE trained in code on the demo text, with the family's special tokens, and
a jinja chat template written here in the family's format. `END` is what closes an assistant
turn in each family: the trained text of a reply is its content followed by `END`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

DEMO_TEXT = Path(__file__).resolve().parents[2] / "stages" / "data" / "demo" / "text.txt"

TEMPLATES = {
    "llama3": (
        "{{ bos_token }}{% for m in messages %}"
        "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "qwen2.5": (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are Qwen, created by "
        "Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "gemma": (
        "{{ bos_token }}{% set sys = '' %}{% if messages[0]['role'] == 'system' %}"
        "{% set sys = messages[0]['content'] + '\n\n' %}{% set messages = messages[1:] %}{% endif %}"
        "{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + (sys if loop.first else '') + m['content'] | trim + '<end_of_turn>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% set sys = '' %}{% if messages[0]['role'] == 'system' %}"
        "{% set sys = messages[0]['content'] + '\n\n' %}{% set messages = messages[1:] %}{% endif %}"
        "{% for m in messages %}{% if m['role'] == 'user' %}"
        "{{ '[INST] ' + (sys if loop.first else '') + m['content'] + '[/INST]' }}"
        "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
    ),
    "phi3": (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
    ),
    "smollm2": (
        "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
        "{% endif %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
}
SPECIALS = {
    "llama3": ("<|begin_of_text|>", "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>"]),
    "qwen2.5": (None, "<|im_end|>", ["<|im_start|>"]),
    "gemma": ("<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"]),
    "mistral": ("<s>", "</s>", ["[INST]", "[/INST]"]),
    "phi3": (None, "<|endoftext|>", ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]),
    "smollm2": (None, "<|im_end|>", ["<|im_start|>"]),
}
END = {  # what closes an assistant reply, i.e. the rest of its trained text
    "llama3": "<|eot_id|>",
    "qwen2.5": "<|im_end|>\n",
    "gemma": "<end_of_turn>\n",
    "mistral": "</s>",
    "phi3": "<|end|>\n",
    "smollm2": "<|im_end|>\n",
}
START = {"mistral": " "}  # text before the content that belongs to the reply's turn
TAIL = {"phi3": "<|endoftext|>"}  # what the template adds after the last turn of a conversation


@cache
def family_tokenizer(name: str) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bos, eos, extra = SPECIALS[name]
    specials = [t for t in (bos, eos, "<pad>", *extra) if t]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train([str(DEMO_TEXT)], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token="<pad>",
        chat_template=TEMPLATES[name],
    )
