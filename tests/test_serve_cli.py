"""`serve` from the command line without a live server: one-line refusals (no store, a bad
port, a network host without an API key, FastAPI missing), and the text stream's rules (stop
strings and partial characters are held back until final)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.serving.text import TextStream
from tests.cli import ROOT, pipelines


@pytest.mark.parametrize(
    "args, message",
    [
        (["nowhere", "--port", "0"], "no store at"),
        (["sft", "--port", "-5"], "cannot listen"),
        (["sft", "--host", "0.0.0.0"], "to the network without an API key: set --api-key"),
    ],
)
def test_the_command_refuses_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = pipelines("serve", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_without_fastapi_the_command_says_which_extra_to_install(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked" / "fastapi"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named fastapi')\n")
    env = {"PYTHONPATH": f"{tmp_path / 'blocked'}{os.pathsep}{ROOT}"}
    result = pipelines("serve", "sft", "--port", "0", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "pip install 'pipelines[serve]'" in result.stderr and "Traceback" not in result.stderr


def test_text_stream_holds_back_what_could_become_a_stop_string() -> None:
    class Chars:  # one character per token id
        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return "".join(chr(i) for i in ids)

    stream = TextStream(Chars(), stop=("END", "xy"))
    out = [stream.push(ord(c)) for c in "abEaEN"]
    assert out == ["a", "b", "", "Ea", "", ""]  # "E" and "EN" could start "END": held back
    assert stream.push(ord("D")) == "" and stream.stopped and stream.text == "abEa"
    assert stream.push(ord("z")) == ""  # nothing after a stop
    unfinished = TextStream(Chars(), stop=("END",))
    assert [unfinished.push(ord(c)) for c in "aEN"] == ["a", "", ""]
    assert unfinished.flush() == "EN"  # the stop never came: release it at the end


def test_text_stream_waits_for_a_whole_character() -> None:
    class Bytes:  # one byte per token id, as byte-level BPE does
        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return bytes(ids).decode("utf-8", errors="replace")

    stream = TextStream(Bytes())
    assert [stream.push(b) for b in "é!".encode()] == ["", "é", "!"]
