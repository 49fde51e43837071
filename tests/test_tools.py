"""Tools in the prompt: a `tools` column (LLaMA-Factory's glaive_toolcall shape: sharegpt with
function_call and observation turns) reaches the rendered prompt through the template; a
template that ignores tools is an error, not a silent drop; function calls are trained and
observations masked."""

from __future__ import annotations

import json

import pytest

from stages.base import UserError
from stages.data.encode import IGNORE, encode, render
from stages.data.formats import to_example
from stages.data.templates import apply_template
from stages.model.tiny import build_tokenizer

TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
    {
        "name": "convert",
        "description": "Convert a temperature",
        "parameters": {"type": "object", "properties": {"celsius": {"type": "number"}}},
    },
]
CALL = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
GLAIVE_ROW = {  # LLaMA-Factory's glaive_toolcall_en_demo shape
    "conversations": [
        {"from": "human", "value": "What is the weather in Paris?"},
        {"from": "function_call", "value": CALL},
        {"from": "observation", "value": json.dumps({"celsius": 21})},
        {"from": "gpt", "value": "It is 21 degrees in Paris."},
    ],
    "tools": json.dumps(TOOLS),
}
ENTRY = {"formatting": "sharegpt", "columns": {"messages": "conversations", "tools": "tools"}}


def example():  # type: ignore[no-untyped-def]
    return to_example(GLAIVE_ROW, ENTRY, "glaive.json:1")


def test_a_template_that_ignores_tools_is_an_error_not_a_silent_drop() -> None:
    tokenizer = build_tokenizer()  # the tiny model's own ChatML ignores `tools`
    ex = example()
    with pytest.raises(UserError, match="ignores `tools`"):
        render(tokenizer, ex.messages, tools=ex.tools)


def test_every_tool_reaches_the_prompt_as_apply_chat_template_renders_it() -> None:
    tokenizer = build_tokenizer()
    apply_template(tokenizer, "chatml", None)
    ex = example()
    text = render(tokenizer, ex.messages, tools=ex.tools)
    for tool in TOOLS:
        assert json.dumps(tool) in text  # name, description and parameters
    direct = tokenizer.apply_chat_template(ex.messages, tokenize=False, tools=TOOLS)
    assert text == direct


def test_function_calls_are_trained_and_observations_masked() -> None:
    tokenizer = build_tokenizer()
    apply_template(tokenizer, "chatml", None)
    ex = example()
    ids, labels = encode(tokenizer, ex.messages, tools=ex.tools)
    trained = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE])
    assert CALL in trained and "It is 21 degrees in Paris." in trained
    assert '{"celsius": 21}' not in trained and "get_weather" not in trained.split(CALL)[0]


def rendered(template: str) -> str:
    tokenizer = build_tokenizer()
    apply_template(tokenizer, template, None)
    ex = example()
    return render(tokenizer, ex.messages, tools=ex.tools)


def test_llama3_puts_the_tools_in_the_first_user_turn() -> None:
    text = rendered("llama3")
    user = text.split("<|start_header_id|>user<|end_header_id|>\n\n", 1)[1].split("<|eot_id|>")[0]
    assert user.startswith("Given the following functions")
    assert user.endswith("What is the weather in Paris?")
    assert all(json.dumps(tool) in user for tool in TOOLS)
    assert "<|start_header_id|>system" not in text  # no system prompt made up for them


def test_mistral_lists_the_tools_in_an_available_tools_block_before_the_user_turn() -> None:
    text = rendered("mistral")
    block = [{"type": "function", "function": tool} for tool in TOOLS]
    assert text.startswith(f"<s>[AVAILABLE_TOOLS] {json.dumps(block)}[/AVAILABLE_TOOLS][INST] ")


@pytest.mark.parametrize("template", ["llama3", "mistral", "gemma", "phi"])
def test_every_family_trains_the_calls_and_masks_the_tools(template: str) -> None:
    tokenizer = build_tokenizer()
    apply_template(tokenizer, template, None)
    ex = example()
    ids, labels = encode(tokenizer, ex.messages, tools=ex.tools)
    trained = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE])
    assert CALL in trained and "It is 21 degrees in Paris." in trained
    assert "get_weather" not in trained.replace(CALL, "")  # the schemas are prompt, not target


@pytest.mark.parametrize(
    ("template", "written"),
    [
        ("chatml", f"<tool_call>\n{CALL}\n</tool_call>"),  # Qwen2.5 / Hermes
        ("llama3", CALL),  # Llama 3.1 answers with the JSON itself
        ("mistral", f"[TOOL_CALLS] [{CALL}]"),
    ],
)
def test_a_function_call_is_written_as_the_family_writes_one(template: str, written: str) -> None:
    text = rendered(template)
    assert written in text
    if template == "chatml":  # what its tools prompt asks for, it is trained to answer with
        assert "within <tool_call></tool_call> XML tags" in text
