"""The demo tasks: small problems with exactly one right answer, so training can be scored."""

from __future__ import annotations

import re

TASKS = ("add", "subtract", "multiply", "reverse", "sort", "count")


def solve(instruction: str, inp: str) -> str:
    """The one correct answer to a demo prompt (raises ValueError for a non-demo prompt)."""
    m = re.search(r"(\d+) ([-+*]) (\d+)", instruction)
    if m:
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return str(a + b if op == "+" else a - b if op == "-" else a * b)
    if "backwards" in instruction or instruction.startswith("Reverse"):
        return inp[::-1]
    if "digits" in instruction:
        return "".join(sorted(inp))
    m = re.search(r"'(.)' occur", instruction)
    if m:
        return str(inp.count(m.group(1)))
    raise ValueError(f"not a demo prompt: {instruction!r}")


def check_answer(instruction: str, inp: str, answer: str) -> bool:
    """True iff `answer` (whitespace-stripped) is the correct answer to the prompt."""
    return answer.strip() == solve(instruction, inp)
