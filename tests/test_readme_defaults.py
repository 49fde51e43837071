"""Every default the README states is the code's default: the README's "`field` (default X)" and
"`field: X`, the default" phrases are read and checked against the config dataclasses, and what it
says of the default pipeline against the composed config, so README and code cannot drift."""

from __future__ import annotations

import dataclasses
import re

from compiler.schema import LauncherConfig
from stages import KINDS
from stages.data.spec import DatasetSpec
from tests.cli import ROOT
from tests.compiling import compile_overrides

README = (ROOT / "README.md").read_text()
PHRASES = (
    r"`([\w.]+)` \(default:? `?([\w.\-]+)`?[);,]",  # `shared_prompt` (default true; ...
    r"`([\w.]+): ([\w.\-]+)`,? the default(?! when)",  # `report_to: tensorboard`, the default
)
CONFIGS = {
    "launcher": [LauncherConfig],
    "": [DatasetSpec, *(k.Config for k in KINDS.values())],
}


def stated_defaults() -> list[tuple[str, str]]:
    found = []
    for phrase in PHRASES:
        found += re.findall(phrase, README)
    return found


def code_defaults(name: str) -> set[str]:
    """The defaults of every config field called `name` (`launcher.x`: the launcher's)."""
    prefix, _, field = name.rpartition(".")
    out = set()
    for cls in CONFIGS.get(prefix, []):
        for f in dataclasses.fields(cls):
            if f.name == field and f.default is not dataclasses.MISSING:
                value = f.default
                out.add(str(value).lower() if isinstance(value, bool) else str(value))
    return out


def test_the_readme_states_defaults_that_the_phrases_find() -> None:
    names = {name for name, _ in stated_defaults()}
    assert {"shared_prompt", "report_to", "launcher.timeout_s"} <= names


def test_every_stated_default_is_the_codes() -> None:
    for name, value in stated_defaults():
        defaults = code_defaults(name)
        assert defaults, f"README states a default for `{name}`, which no config has"
        assert value in defaults, f"README: `{name}` defaults to {value}; the code: {defaults}"


def test_the_quick_start_describes_the_default_pipeline() -> None:
    """'the built-in tiny Llama, full SFT on the shipped demo data, an eval ... and an export'"""
    assert "the built-in tiny Llama, full SFT on the shipped demo data" in README
    compiled = compile_overrides("+pipeline=sft")
    nodes = {n.kind: n for n in compiled.nodes()}
    assert nodes["sft"].config.finetuning_type == "full"
    assert compiled.spec.model.name_or_path == "tiny"
    assert {"eval", "export"} <= set(nodes)
    assert nodes["tokenize"].datasets["dataset"][0]["path"].endswith("demo/sft.jsonl")
