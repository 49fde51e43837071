"""User-facing compile errors: every problem collected, reported once, each with its key path."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Issue:
    path: str  # dotted key path, e.g. "stages.sft.learning_rate"
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} ({self.hint})" if self.hint else text


class CompileError(Exception):
    """Raised once with all issues; the CLI prints it and exits with code 2."""

    exit_code = 2

    def __init__(self, issues: Iterable[Issue]):
        self.issues = list(issues)
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.issues)
        head = f"config error{'s' if n > 1 else ''} ({n}):" if n else "config error"
        return "\n".join([head, *(f"  - {i}" for i in self.issues)])


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'did you mean X?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""
