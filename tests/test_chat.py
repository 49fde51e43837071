"""`chat`: the terminal chat driven through a pseudo-terminal, as a person types into it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect
import pytest

from tests.cli import ROOT
from tests.serving import ONE_THREAD, chat_model, greedy_replies

pytestmark = pytest.mark.slow

SYSTEM = "Answer briefly."
FIRST, SECOND = "What is 2+3?", "Sort 321"
MAX = 24  # reply tokens at most


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chat_model(tmp_path_factory)


def reply(child: pexpect.spawn, line: str) -> str:
    """Type `line`; the reply printed between `assistant> ` and the next prompt."""
    child.sendline(line)
    child.expect_exact("assistant> ")
    child.expect_exact("user> ")
    text = child.before.replace("\r\n", "\n")
    assert text.endswith("\n")
    return text[:-1]


def spawn(model: Path, *options: str) -> pexpect.spawn:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINES_STORE": str(model.parent / "s")}
    env.update(ONE_THREAD)
    args = ["-m", "pipelines", "chat", str(model), "--max-tokens", str(MAX), *options]
    return pexpect.spawn(sys.executable, args, env=env, encoding="utf-8", timeout=120)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_two_turns_through_a_terminal_match_greedy_generation(model: Path) -> None:
    child = spawn(model)
    try:
        child.expect_exact("user> ")
        assert "chatting with 'sft'" in child.before
        first = reply(child, FIRST)
        second = reply(child, SECOND)
        child.sendline("/reset")
        child.expect_exact("(conversation cleared)")
        child.expect_exact("user> ")
        fresh = reply(child, SECOND)  # the same words without the history before them
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    (expected1, alone) = greedy_replies(model, [[user(FIRST)], [user(SECOND)]], MAX)
    history = [user(FIRST), {"role": "assistant", "content": expected1}, user(SECOND)]
    (expected2,) = greedy_replies(model, [history], MAX)
    assert (first, second, fresh) == (expected1, expected2, alone)
    assert first.strip() and alone != expected2, "replies too alike to show the history is used"


def test_a_system_prompt_leads_the_conversation_and_end_of_input_quits(model: Path) -> None:
    child = spawn(model, "--system", SYSTEM)
    try:
        child.expect_exact("user> ")
        first = reply(child, FIRST)
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    conversations = [[{"role": "system", "content": SYSTEM}, user(FIRST)], [user(FIRST)]]
    expected, without = greedy_replies(model, conversations, MAX)
    assert first == expected != without
