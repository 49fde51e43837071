"""What tokenization did to a dataset's lengths: every example's length before truncation, how
many were cut to `cutoff_len` and how many tokens that dropped. The numbers land in the data
artifact's manifest, `plan` and `data preview` show them, and the run summary warns when more
than a few examples lose their ends."""

from __future__ import annotations

import math
from typing import Any

WARN_SHARE = 0.05  # warn when more than this share of examples was truncated
KEEP_WHOLE = 0.95  # the cutoff_len suggested keeps this share of examples whole


class Tally(dict):
    """Counts (truncated, dropped, skipped: the manifest keys callers increment) plus lengths."""

    def __init__(self) -> None:
        super().__init__(truncated=0, dropped=0, skipped=0)
        self.lengths: list[int] = []
        self.cut_tokens = 0

    def fit(self, length: int, cutoff: int) -> bool:
        """Record one example's full length; True when it is longer than `cutoff`."""
        self.lengths.append(length)
        if length <= cutoff:
            return False
        self["truncated"] += 1
        self.cut_tokens += length - cutoff
        return True

    def metrics(self, cutoff: int) -> dict[str, Any]:
        """Counts and length statistics for the manifest, plus a warning when many were cut."""
        out: dict[str, Any] = dict(self)
        if not self.lengths:
            return out
        ordered = sorted(self.lengths)
        out.update(
            cutoff_len=cutoff,
            length_p50=percentile(ordered, 0.5),
            length_p95=percentile(ordered, KEEP_WHOLE),
            length_max=ordered[-1],
            truncated_tokens=self.cut_tokens,
        )
        warning = truncation_warning(out, len(ordered))
        if warning:
            out["warnings"] = [warning]
        return out


def percentile(ordered: list[int], share: float) -> int:
    """The length that `share` of the examples do not exceed (nearest rank)."""
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def truncation_warning(stats: dict[str, Any], total: int) -> str | None:
    cut = stats.get("truncated", 0)
    if not total or cut / total <= WARN_SHARE:
        return None
    return (
        f"{cut} of {total} examples ({cut / total:.0%}) were cut to cutoff_len "
        f"{stats['cutoff_len']}, losing {stats['truncated_tokens']} tokens; cutoff_len "
        f"{stats['length_p95']} keeps 95% whole"
    )


def describe(stats: dict[str, Any]) -> str | None:
    """One line for `plan` and `data preview`: lengths against cutoff_len."""
    if "length_p50" not in stats:
        return None
    total = stats.get("examples", 0) + stats.get("validation", 0)
    return (
        f"lengths p50 {stats['length_p50']} / p95 {stats['length_p95']} / max "
        f"{stats['length_max']} tokens; {stats.get('truncated', 0)} of {total or '?'} truncated "
        f"at cutoff_len {stats['cutoff_len']}"
    )
