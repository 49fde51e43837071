"""Every supported row format converts to the same canonical Example; bad rows say where."""

from __future__ import annotations

import pytest

from stages.base import UserError
from stages.data.formats import to_example

EXPECTED = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "q1"},
    {"role": "assistant", "content": "r1"},
    {"role": "user", "content": "q2\nx"},
    {"role": "assistant", "content": "r2"},
]


def test_alpaca_with_history_and_system() -> None:
    row = {
        "instruction": "q2",
        "input": "x",
        "output": "r2",
        "history": [["q1", "r1"]],
        "system": "S",
    }
    spec = {"formatting": "alpaca", "columns": {"history": "history", "system": "system"}}
    example = to_example(row, spec, "f:1")
    assert example.messages == EXPECTED and example.kind == "supervised"


def test_sharegpt_with_its_default_tags() -> None:
    conv = [
        {"from": "system", "value": "S"},
        {"from": "human", "value": "q1"},
        {"from": "gpt", "value": "r1"},
        {"from": "human", "value": "q2\nx"},
        {"from": "gpt", "value": "r2"},
    ]
    assert (
        to_example({"conversations": conv}, {"formatting": "sharegpt"}, "f:1").messages == EXPECTED
    )


def test_openai_messages_and_custom_tags() -> None:
    assert to_example({"messages": EXPECTED}, {"formatting": "openai"}, "f:1").messages == EXPECTED
    turns = [{"who": "me", "text": "q"}, {"who": "bot", "text": "r"}]
    spec = {
        "formatting": "sharegpt",
        "columns": {"messages": "turns"},
        "tags": {
            "role_tag": "who",
            "content_tag": "text",
            "user_tag": "me",
            "assistant_tag": "bot",
        },
    }
    assert to_example({"turns": turns}, spec, "f:1").messages == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "r"},
    ]


def test_tool_calls_and_observations_keep_their_place() -> None:
    conv = [
        {"from": "human", "value": "weather?"},
        {"from": "function_call", "value": '{"name": "w"}'},
        {"from": "observation", "value": "sunny"},
        {"from": "gpt", "value": "It is sunny."},
    ]
    example = to_example(
        {"conversations": conv, "tools": "[w]"},
        {"formatting": "sharegpt", "columns": {"tools": "tools"}},
        "f:1",
    )
    assert [m["role"] for m in example.messages] == ["user", "assistant", "tool", "assistant"]
    assert example.tools == "[w]"


def test_preference_pairs_in_alpaca_and_sharegpt_shapes() -> None:
    alpaca = to_example(
        {"instruction": "q", "chosen": "good", "rejected": "bad"},
        {"formatting": "alpaca", "ranking": True},
        "f:1",
    )
    assert (alpaca.kind, alpaca.chosen, alpaca.rejected) == ("preference", "good", "bad")
    assert alpaca.messages == [{"role": "user", "content": "q"}]
    row = {
        "conversations": [{"from": "human", "value": "q"}],
        "chosen": {"from": "gpt", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
    }
    share = to_example(row, {"formatting": "sharegpt", "ranking": True}, "f:1")
    assert (share.messages, share.chosen, share.rejected) == (alpaca.messages, "good", "bad")


def test_kto_keeps_its_label_and_prompts_only_are_prompts() -> None:
    spec = {"formatting": "alpaca", "columns": {"kto_tag": "label"}}
    example = to_example({"instruction": "q", "output": "r", "label": False}, spec, "f:1")
    assert (example.kind, example.kto_tag) == ("kto", False)
    with pytest.raises(UserError, match="f:3: field 'label' must be true or false"):
        to_example({"instruction": "q", "output": "r", "label": "no"}, spec, "f:3")
    assert to_example({"instruction": "q"}, {"formatting": "alpaca"}, "f:1").kind == "prompt"
    assert to_example({"text": "abc"}, {"formatting": "text"}, "f:1").kind == "text"


@pytest.mark.parametrize(
    ("row", "spec", "message"),
    [
        (
            {"messages": [{"role": "assistant", "content": "r"}]},
            {"formatting": "openai"},
            "f:7: broken role order: message 0 is 'assistant', expected user or tool",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]},
            {"formatting": "openai"},
            "f:7: broken role order: message 1 is 'user', expected assistant",
        ),
        (
            {"messages": [{"role": "robot", "content": "q"}]},
            {"formatting": "openai"},
            "f:7: field 'messages[0].role' must be one of user, assistant, tool, function_call, system",
        ),
        (
            {"conversations": "hi"},
            {"formatting": "sharegpt"},
            "f:7: field 'conversations' missing or not a non-empty list",
        ),
        (
            {"instruction": 3, "output": "r"},
            {"formatting": "alpaca"},
            "f:7: field 'instruction' must be a string, got int",
        ),
        ({"prompt": "q"}, {"formatting": "alpaca"}, "f:7: missing field 'instruction'"),
    ],
)
def test_bad_rows(row: dict, spec: dict, message: str) -> None:
    with pytest.raises(UserError) as e:
        to_example(row, spec, "f:7")
    assert str(e.value) == message
