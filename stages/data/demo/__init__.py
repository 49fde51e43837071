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


def check_answer(instruction: str, input: str, answer: str) -> bool:  # noqa: A002 (alpaca field)
    """True iff `answer` (whitespace-stripped) is the correct answer to the prompt.

    Works on a chat turn too: split the user content at its first newline into instruction and
    input. Raises ValueError for a prompt that is not a demo task, so a misrouted eval fails loudly.
    """
    return answer.strip() == solve(instruction, input)


def exact_answer_reward(prompts: list[str], completions: list[str], **_: object) -> list[float]:
    """A rule-based reward for RL on the demo tasks: 1.0 for the right answer, else 0.0.

    `prompts` are the last user turns (instruction, a newline, then the input); the signature is
    TRL's reward-function one, so ppo and grpo both take it by dotted path
    (`stages.data.demo:exact_answer_reward`).
    """
    scores = []
    for prompt, completion in zip(prompts, completions, strict=True):
        instruction, _, inp = prompt.partition("\n")
        try:
            scores.append(1.0 if check_answer(instruction, inp, completion) else 0.0)
        except ValueError:
            scores.append(0.0)
    return scores
