"""The command-line grammar every verb shares: `store=DIR` (as `run` and `plan` take it) means
the same as `--store DIR` (as `show`, `ls`, `gc`, `verify` and `compare` take it)."""

from __future__ import annotations


def store_flag(argv: list[str]) -> list[str]:
    """`store=DIR` anywhere among the arguments, rewritten as `--store DIR`."""
    out: list[str] = []
    for arg in argv:
        if arg.startswith("store=") or arg.startswith("+store="):
            out += ["--store", arg.split("=", 1)[1]]
        else:
            out.append(arg)
    return out
