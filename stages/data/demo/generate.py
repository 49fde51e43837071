"""Generate the demo data: small synthetic tasks whose answers can be checked exactly.

    python -m stages.data.demo.generate [--out DIR]    (or: python stages/data/demo/generate.py)

Deterministic (fixed seed, fixed key order), stdlib only, our own content. Writes sft.jsonl
(alpaca), chat.jsonl (multi-turn messages), preference.jsonl (chosen / rejected), text.txt,
kto.jsonl (one reply with a desirable / undesirable label), prompts.jsonl (prompts for RL),
test.jsonl (held-out alpaca rows for eval: no prompt of sft.jsonl) and mmlu.jsonl (the same tasks
as multiple-choice questions: question, A-D, answer letter).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

if not __package__:  # run as a file (python stages/data/demo/generate.py): import from the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from stages.data.demo import TASKS, solve  # noqa: E402

SEED = 1234
SYLLABLES = ("ka", "lo", "mi", "ren", "tu", "sa", "vek", "no", "pi", "dor", "ze", "mul")
SYSTEM = "You answer with the result only."


def prompt(rng: random.Random) -> tuple[str, str]:
    """(instruction, input) of one task instance."""
    task = rng.choice(TASKS)
    if task in ("add", "subtract", "multiply"):
        a, b = rng.randint(0, 99), rng.randint(0, 99 if task != "multiply" else 12)
        op = {"add": "+", "subtract": "-", "multiply": "*"}[task]
        return rng.choice(("What is {}?", "Compute {}.", "Calculate {}")).format(
            f"{a} {op} {b}"
        ), ""
    word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
    if task == "reverse":
        return rng.choice(("Reverse the word.", "Spell this word backwards.")), word
    if task == "sort":
        digits = "".join(str(rng.randint(0, 9)) for _ in range(rng.randint(3, 7)))
        return rng.choice(("Sort these digits.", "Put the digits in ascending order.")), digits
    letter = rng.choice(sorted(set(word)))
    return f"How many times does '{letter}' occur?", word


def wrong(answer: str, rng: random.Random) -> str:
    """A plausible but wrong answer: off by one for numbers, shuffled for strings."""
    if answer.lstrip("-").isdigit():
        return str(int(answer) + rng.choice((-1, 1)))
    letters = list(answer)
    for _ in range(10):
        rng.shuffle(letters)
        if "".join(letters) != answer:
            return "".join(letters)
    return answer + answer[-1]


def distractors(answer: str, rng: random.Random, n: int = 3) -> list[str]:
    """`n` distinct wrong answers: nearby numbers, or shuffles (then small edits) of a string."""
    if answer.lstrip("-").isdigit():
        return [str(int(answer) + d) for d in rng.sample((-10, -2, -1, 1, 2, 10), n)]
    found: list[str] = []
    for candidate in [wrong(answer, rng) for _ in range(20)] + [answer + c for c in "aeiou"]:
        if candidate != answer and candidate not in found:
            found.append(candidate)
    return found[:n]


def multiple_choice(instruction: str, inp: str, rng: random.Random) -> dict:
    """An MMLU-format row: the question, four choices A-D (one right), the right letter."""
    answer = solve(instruction, inp)
    choices = [answer, *distractors(answer, rng)]
    rng.shuffle(choices)
    row = {"question": user_text(instruction, inp)}
    row.update(zip("ABCD", choices, strict=True))
    return {**row, "answer": "ABCD"[choices.index(answer)]}


def user_text(instruction: str, inp: str) -> str:
    """A chat user turn: instruction, then the input on its own line, so it splits back exactly."""
    return f"{instruction}\n{inp}" if inp else instruction


def generate(out: Path) -> None:
    """Write the demo files into `out`; one seeded stream, so the order of writes matters (new
    files are appended at the end, so the earlier ones stay byte-identical)."""
    rng = random.Random(SEED)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for _ in range(1200):
        ins, inp = prompt(rng)
        rows.append({"instruction": ins, "input": inp, "output": solve(ins, inp)})
    _write_jsonl(out / "sft.jsonl", rows)
    chats = []
    for i in range(300):
        msgs = [{"role": "system", "content": SYSTEM}] if i % 3 == 0 else []
        for _ in range(rng.randint(2, 3)):
            ins, inp = prompt(rng)
            msgs.append({"role": "user", "content": user_text(ins, inp)})
            msgs.append({"role": "assistant", "content": solve(ins, inp)})
        chats.append({"messages": msgs})
    _write_jsonl(out / "chat.jsonl", chats)
    prefs = []
    for _ in range(600):
        ins, inp = prompt(rng)
        answer = solve(ins, inp)
        prefs.append(
            {"instruction": ins, "input": inp, "chosen": answer, "rejected": wrong(answer, rng)}
        )
    _write_jsonl(out / "preference.jsonl", prefs)
    lines = []
    for _ in range(1500):
        ins, inp = prompt(rng)
        lines.append(f"{user_text(ins, inp).replace(chr(10), ' ')} Answer: {solve(ins, inp)}.")
    (out / "text.txt").write_text("\n".join(lines) + "\n", encoding="ascii", newline="\n")
    kto = []
    for i in range(600):  # alternately a right (desirable) and a wrong (undesirable) answer
        ins, inp = prompt(rng)
        answer = solve(ins, inp)
        good = i % 2 == 0
        kto.append(
            {
                "instruction": ins,
                "input": inp,
                "output": answer if good else wrong(answer, rng),
                "label": good,
            }
        )
    _write_jsonl(out / "kto.jsonl", kto)
    prompts = []
    for _ in range(400):  # prompts only: RL samples the replies and scores them
        ins, inp = prompt(rng)
        prompts.append({"instruction": ins, "input": inp})
    _write_jsonl(out / "prompts.jsonl", prompts)
    seen = {(r["instruction"], r["input"]) for r in rows}  # held out: nothing sft trains on
    test = []
    while len(test) < 200:
        ins, inp = prompt(rng)
        if (ins, inp) not in seen:
            seen.add((ins, inp))
            test.append({"instruction": ins, "input": inp, "output": solve(ins, inp)})
    _write_jsonl(out / "test.jsonl", test)
    questions = []
    while len(questions) < 100:
        ins, inp = prompt(rng)
        if (ins, inp) not in seen:
            seen.add((ins, inp))
            questions.append(multiple_choice(ins, inp, rng))
    _write_jsonl(out / "mmlu.jsonl", questions)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """Fixed key order, ASCII, "\\n" line ends: byte-for-byte the same on every platform."""
    text = "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in rows)
    path.write_text(text, encoding="ascii", newline="\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    generate(parser.parse_args().out)
