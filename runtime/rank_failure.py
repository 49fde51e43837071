"""Why a distributed stage failed, in one message: a user error raised in any rank comes back
as that same one line; a crash or a killed rank names the rank, its exit code and the tail of its
log (every rank's log is in `<work>/logs/`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from runtime.rank_logs import log_path, tail
from stages.base import UserError

# torchrun's failure summary: "rank      : 1 (local_rank: 1)" then "exitcode  : -9 (pid: ...)"
SUMMARY = re.compile(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


class RankFailure(Exception):
    """A stage whose processes failed for a reason other than a user error."""


def failure(work: Path, code: int, output: str, cfg: Any) -> Exception:
    """The exception a failed launch raises (a UserError when a rank raised one)."""
    errors = _error_files(work)
    users = [e for e in errors if e.get("kind") == "user"]
    if users:
        return UserError(users[0]["message"])
    rank, exit_code, reason = _first_failure(errors, output, code)
    log = log_path(work, rank)
    where = f"log {log}" if log.exists() else f"logs in {work / 'logs'}"
    lines = tail(log, 15) if log.exists() else "\n".join(output.splitlines()[-15:])
    restarts = getattr(cfg, "max_restarts", 0)
    after = f" after {restarts} restart(s)" if restarts else ""
    head = f"rank {rank} failed{after} with exit code {exit_code}"
    message = f"{head}: {reason} ({where})" if reason else f"{head} ({where})"
    return RankFailure(f"{message}\n{_indent(lines)}" if lines else message)


def _error_files(work: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted((work / "errors").glob("rank-*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


def _first_failure(errors: list[dict[str, Any]], output: str, code: int) -> tuple[int, int, str]:
    """(rank, exit code, reason) of the first failure: torchrun's root cause (the other ranks
    fail after it, when their peer disappears), with that rank's error file as the reason (a
    rank killed by a signal writes none); else the first error file; else the exit code."""
    _, cause, after = output.rpartition("Root Cause")
    found = SUMMARY.findall(after if cause else output)
    by_rank = {int(e["rank"]): e for e in errors}
    if found:
        rank, exit_code = int(found[0][0]), int(found[0][1])
        if rank in by_rank:
            return rank, exit_code, by_rank[rank].get("message", "")
        return rank, exit_code, f"killed by signal {-exit_code}" if exit_code < 0 else ""
    if errors:
        return int(errors[0]["rank"]), code, errors[0].get("message", "")
    return 0, code, ""


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
