"""The README as a tested contract: every `python -m pipelines` command in its bash blocks runs.
`run` commands are planned (the same arguments compile; the training they start is tested
elsewhere), store commands run against a small store, `serve` / `chat` parse their flags
(`--help`), and a command whose arguments are an example's placeholders (a dated sweep dir, run
ids) or a SLURM cluster (where there is none) must still answer with one clear line. pip, make
and ollama lines are CI's and the user's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.cli import ROOT, pipelines

README = ROOT / "README.md"


def readme_commands() -> list[list[str]]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line.startswith("python -m pipelines "):
                continue
            words = shlex.split(line, comments=True)
            commands.append(words[3:])
    return commands


COMMANDS = readme_commands()


def test_the_readme_documents_every_verb() -> None:
    verbs = {c[0] for c in COMMANDS}
    expected = {"run", "plan", "compare", "ls", "show", "verify", "gc", "data", "serve", "chat"}
    assert expected <= verbs


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("readme")
    args = ["+pipeline=sft", "stages.sft.max_steps=2", "stages.export.gguf=[]"]
    done = pipelines("run", "-m", *args, "stages.sft.learning_rate=1e-3,2e-3", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd


@pytest.mark.slow
@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_every_readme_command_runs(store: Path, words: list[str]) -> None:
    verb, args = words[0], words[1:]
    if verb == "run":
        verb = "plan"  # the same arguments compile and plan
    if verb in ("serve", "chat"):
        args = [*args, "--help"]
    done = pipelines(verb, *args, cwd=store, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    placeholder = any(re.match(r"(\.pipelines/multirun/|2026)", a) for a in args)
    cluster = "hydra/launcher=cluster" in args  # submits to SLURM, which this machine lacks
    if placeholder or cluster:  # an example's dated path or run id: one clear line
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    else:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
