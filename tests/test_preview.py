"""`data preview` shows the rendered examples with exactly the trained tokens marked."""

from __future__ import annotations

from pathlib import Path

from tests.cli import pipelines


def test_preview_marks_assistant_tokens(tmp_path: Path) -> None:
    result = pipelines("data", "preview", "demo_chat", "-n", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = result.stdout[result.stdout.index("--- ") :]  # after the base model was built
    head, body = shown.split("\n", 1)
    assert head.startswith("--- ") and "chat.jsonl:1" in head and "trained" in head
    marked = [part.split("]]")[0] for part in body.split("[[")[1:]]
    assert marked == ["ipasak<|im_end|>\n", "2<|im_end|>\n"]
    assert "<|im_start|>user\nSpell this word backwards.\nkasapi<|im_end|>" in body


def test_preview_with_options_and_a_bad_name(tmp_path: Path) -> None:
    result = pipelines("data", "preview", "demo_chat", "-n", "1", "--mask-history", cwd=tmp_path)
    body = result.stdout.split("like this]])\n", 1)[1]
    assert [p.split("]]")[0] for p in body.split("[[")[1:]] == ["2<|im_end|>\n"]
    bad = pipelines("data", "preview", "demo_cht", cwd=tmp_path)
    assert bad.returncode == 2
    assert "no dataset named 'demo_cht' (did you mean 'demo_chat'?)" in bad.stderr
