"""Reward functions in TRL's shape, `f(prompts, completions, **kw) -> list[float]`, from what a
stage config names: rule-based functions by dotted path (`module:function`) and a reward model
artifact, scored through `RewardScorer` (the one scoring function every consumer uses).

TRL hands conversational prompts and completions (lists of role / content messages) to reward
functions; rule-based functions get plain text instead: the last user turn and the reply.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stages.base import UserError

RewardFunc = Callable[..., list[float]]


def import_reward_funcs(paths: Sequence[str], key: str) -> list[RewardFunc]:
    """Each `module:function` path, imported and wrapped to take plain text; a path that does not
    import is a UserError naming `key` (e.g. `stages.grpo.reward_funcs`)."""
    return [as_text_reward(_import(path, key)) for path in paths]


def _import(path: str, key: str) -> Callable[..., Any]:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"{key}: '{path}' is not a dotted path: write module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(
            f"{key}: cannot import module '{module_name}' of '{path}' ({e}); "
            "is it on PYTHONPATH, spelled module.sub:function?"
        ) from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise UserError(f"{key}: module '{module_name}' has no function '{attr}' (from '{path}')")
    return func


def module_file(name: str) -> Path | None:
    """Where module `name` would load from, found without running it or its packages (so the
    compiler can check a path, and key the file, without importing the user's code)."""
    top, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: nothing is imported
    except (ImportError, ValueError):
        return None
    for i in range(len(rest)):
        if spec is None or not spec.submodule_search_locations:
            break  # a module, not a package, defines the rest (os.path): that file stands for it
        full = ".".join([top, *rest[: i + 1]])
        spec = importlib.machinery.PathFinder.find_spec(full, spec.submodule_search_locations)
    return Path(spec.origin) if spec is not None and spec.origin else None


def as_text_reward(func: Callable[..., Any]) -> RewardFunc:
    """`func` called with the last user turn as each prompt and the reply text as each completion,
    whatever shape TRL passes; other keywords (dataset columns, trainer_state) pass through."""

    def reward(prompts: list[Any], completions: list[Any], **kw: Any) -> list[float]:
        texts = [last_user_turn(p) for p in prompts]
        return list(func(prompts=texts, completions=[reply_text(c) for c in completions], **kw))

    reward.__name__ = getattr(func, "__name__", type(func).__name__)
    return reward


class ModelReward:
    """A reward model artifact as a TRL reward function: prompt messages plus the reply, scored
    by `RewardScorer` (rendered with the reward model's own template, as in rm training)."""

    __name__ = "reward_model"

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer

    def __call__(self, prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return self.scorer([conversation(p, c) for p, c in zip(prompts, completions, strict=True)])


def conversation(prompt: Any, completion: Any) -> list[dict[str, str]]:
    """Prompt messages followed by the reply as one assistant turn."""
    msgs = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return [*msgs, {"role": "assistant", "content": reply_text(completion)}]


def last_user_turn(prompt: Any) -> str:
    """A conversational prompt's last user message; a text prompt as it is."""
    if isinstance(prompt, str):
        return prompt
    return next((_text(m) for m in reversed(prompt) if m.get("role") == "user"), "")


def reply_text(completion: Any) -> str:
    """A conversational completion's assistant text (all its assistant turns); text as it is."""
    if isinstance(completion, str):
        return completion
    return "".join(_text(m) for m in completion if m.get("role", "assistant") == "assistant")


def _text(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # content blocks: keep the text ones
        return "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return str(content)


def reward_func_files(paths: list[str] | None) -> list[str]:
    """Source files of the modules named by `module:function` paths: their code decides the
    rewards, so a stage's key covers them (found without importing the modules)."""
    found = (module_file(path.partition(":")[0]) for path in paths or [])
    return sorted({str(f) for f in found if f is not None})


DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def check_reward_funcs(paths: list[str] | None) -> list[tuple[str, str]]:
    """Compile time: each `reward_funcs` entry is `module:function` and its module exists (found
    without importing it)."""
    problems = []
    for path in paths or []:
        module = path.partition(":")[0]
        if not DOTTED.match(path):
            problems.append(
                ("reward_funcs", f"'{path}' is not a dotted path: write module:function")
            )
        elif module_file(module) is None:
            problems.append(
                ("reward_funcs", f"cannot find module '{module}' of '{path}': is it on PYTHONPATH?")
            )
    return problems
