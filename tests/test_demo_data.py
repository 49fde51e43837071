"""The shipped demo data: reproducible from its generator, and every answer checkable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.data.demo import check_answer
from stages.data.demo.generate import generate

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "stages" / "data" / "demo"
FILES = ("sft.jsonl", "chat.jsonl", "preference.jsonl", "text.txt")
EVAL_FILES = ("test.jsonl", "mmlu.jsonl")  # held out for eval; appended by the generator


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DEMO / name).read_text().splitlines()]


def test_generator_reproduces_the_shipped_files_byte_for_byte(tmp_path: Path) -> None:
    generate(tmp_path)
    for name in FILES + EVAL_FILES:
        assert (tmp_path / name).read_bytes() == (DEMO / name).read_bytes(), name


@pytest.mark.parametrize(
    "argv",
    [["-m", "stages.data.demo.generate"], ["stages/data/demo/generate.py"]],
    ids=["m", "file"],
)
def test_both_invocations_work_stdlib_only(argv: list[str], tmp_path: Path) -> None:
    # -S: no site-packages (stdlib only, no editable install); another hash seed: no set order leaks
    env = {**os.environ, "PYTHONHASHSEED": "7"}
    cmd = [sys.executable, "-S", *argv, "--out", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    for name in FILES + EVAL_FILES:
        assert (tmp_path / name).read_bytes() == (DEMO / name).read_bytes(), name


def test_files_are_small_ascii_and_sized_as_documented() -> None:
    assert sum((DEMO / n).stat().st_size for n in FILES) < 300_000
    for name in FILES:
        (DEMO / name).read_bytes().decode("ascii")
    assert [len(rows(n)) for n in FILES[:3]] == [1200, 300, 600]
    assert len((DEMO / "text.txt").read_text().splitlines()) == 1500


def test_every_sft_answer_is_correct_and_checkable() -> None:
    data = rows("sft.jsonl")
    assert all(check_answer(r["instruction"], r["input"], r["output"]) for r in data)
    assert not check_answer("What is 2 + 3?", "", "6") and check_answer("What is 2 + 3?", "", " 5 ")
    kinds = {r["instruction"].split()[0] for r in data}
    assert len(kinds) >= 5  # several task types and phrasings


def test_preference_pairs_have_a_right_and_a_wrong_answer() -> None:
    for r in rows("preference.jsonl"):
        assert check_answer(r["instruction"], r["input"], r["chosen"])
        assert not check_answer(r["instruction"], r["input"], r["rejected"])
        assert r["rejected"].strip() != r["chosen"].strip()


def test_chats_alternate_roles_and_answer_each_turn_correctly() -> None:
    for r in rows("chat.jsonl"):
        msgs = r["messages"][1:] if r["messages"][0]["role"] == "system" else r["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        assert 2 <= len(msgs) // 2 <= 3 and all(m["content"] for m in r["messages"])
        for user, assistant in zip(msgs[::2], msgs[1::2], strict=True):
            instruction, _, inp = user["content"].partition("\n")
            assert check_answer(instruction, inp, assistant["content"])


def test_eval_splits_are_held_out_and_checkable() -> None:
    trained = {(r["instruction"], r["input"]) for r in rows("sft.jsonl")}
    test = rows("test.jsonl")
    assert len(test) == 200 and not trained & {(r["instruction"], r["input"]) for r in test}
    assert all(check_answer(r["instruction"], r["input"], r["output"]) for r in test)
    questions = rows("mmlu.jsonl")
    assert len(questions) == 100
    for q in questions:  # four distinct choices, exactly one right, and the letter names it
        instruction, _, inp = q["question"].partition("\n")
        right = [c for c in "ABCD" if check_answer(instruction, inp, q[c])]
        assert right == [q["answer"]] and len({q[c] for c in "ABCD"}) == 4
