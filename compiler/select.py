"""Which part of a pipeline a command acts on: `--only` / `--until` cut the DAG to some stages
and what they need; `--force` runs stages (and what follows them) again although cached."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from compiler.errors import CompileError, Issue, did_you_mean

FLAGS = ("--force", "--only", "--until")


@dataclass(frozen=True)
class Selection:
    force: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    until: str | None = None

    def flags(self) -> list[str]:
        """The selection as command-line flags (a resume hint repeats them)."""
        out = [*(["--force", *self.force] if self.force else [])]
        out += ["--only", *self.only] if self.only else []
        return out + (["--until", self.until] if self.until else [])


def split_flags(args: list[str]) -> tuple[Selection, list[str]]:
    """(selection, the other arguments): each flag takes the stage names that follow it (words
    without `=` and not starting with `-`), anywhere on the command line."""
    values: dict[str, list[str]] = {flag: [] for flag in FLAGS}
    rest, current = [], None
    for arg in args:
        if arg in FLAGS:
            current = arg
        elif current and "=" not in arg and not arg.startswith("-"):
            values[current].append(arg)
        else:
            current = None
            rest.append(arg)
    issues = [
        Issue(flag, "needs a stage name") for flag in FLAGS if flag in args and not values[flag]
    ]
    if len(values["--until"]) > 1:
        issues.append(Issue("--until", "takes one stage name (use --only for several)"))
    if issues:
        raise CompileError(issues)
    until = values["--until"][0] if values["--until"] else None
    return Selection(tuple(values["--force"]), tuple(values["--only"]), until), rest


def apply(graph: nx.DiGraph, selection: Selection) -> tuple[nx.DiGraph, frozenset[str]]:
    """(the graph cut to what `--only` / `--until` ask for, the names `--force` reruns)."""
    named = [*selection.force, *selection.only, *([selection.until] if selection.until else [])]
    unknown = [n for n in named if n not in graph]
    if unknown:
        raise CompileError(
            Issue(
                "stages",
                f"no stage named '{n}'",
                did_you_mean(n, graph.nodes) or f"stages: {', '.join(graph.nodes)}",
            )
            for n in unknown
        )
    targets = [*selection.only, *([selection.until] if selection.until else [])]
    if targets:
        keep = set(targets).union(*(nx.ancestors(graph, t) for t in targets))
        graph = graph.subgraph(keep).copy()
    forced = set(selection.force)
    for name in selection.force:
        if name in graph:
            forced |= nx.descendants(graph, name)
    return graph, frozenset(forced & set(graph))
