"""The sft_speed benchmark's report: tokens/s per round (whole run and median step), ratios with
their spread over the rounds, MFU, peak RSS against the plan, loss agreement."""

from __future__ import annotations

import statistics
from typing import Any


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def steady(run: dict) -> float:
    """Tokens/s of the run's median step (step 1 warms up): what a busy machine's slowed
    steps do not move."""
    rates = [tokens / seconds for seconds, tokens in run["steps"][1:]] or [run["tokens_per_s"]]
    return statistics.median(rates)


def ratios(ours: list[dict], theirs: list[dict]) -> tuple[list[float], list[float]]:
    """Per round: whole-run and median-step tokens/s of `ours` over `theirs`."""
    pairs = list(zip(ours, theirs, strict=True))
    return (
        [a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs],
        [steady(a) / steady(b) for a, b in pairs],
    )


def report(
    runs: dict[str, list[dict]],
    labels: dict[str, str],
    settings: dict[str, dict[str, Any]],
    peaks: dict[str, float],
    flops_per_token: float,
    estimate: float,
) -> None:
    """Per round and per run: tokens/s, MFU against the run's precision, ratios to C (and B to
    D), peak RSS against the plan's estimate, and whether A's losses match C's and repeat."""
    print("\nnon-padding tokens/s per round (whole run; median step in brackets)")
    for i in range(len(runs["A"])):
        cells = [f"{v} {runs[v][i]['tokens_per_s']:6.1f} ({steady(runs[v][i]):6.1f})" for v in runs]
        print(f"  round {i + 1}: " + "   ".join(cells))
    print(f"{'':33s} tokens/s   MFU   vs C (range)        median step vs C   peak RSS")
    for v in runs:
        label = labels[v]
        speed = statistics.median(r["tokens_per_s"] for r in runs[v])
        whole, step = ratios(runs[v], runs["C"])
        rss = max(r["rss_mb"] for r in runs[v]) / 1024
        mfu = speed * flops_per_token / peaks[settings.get(v, {}).get("precision", "fp32")]
        print(
            f"{v} {label:30s} {speed:7.1f}  {mfu:5.1%}  {spread(whole):18s}  "
            f"{spread(step):18s} {rss:5.2f} GiB"
        )
    if "B" in runs and "D" in runs:  # bf16 against bf16
        whole, step = ratios(runs["B"], runs["D"])
        b, d = runs["B"][0]["losses"], runs["D"][0]["losses"]
        diff = max(abs(x - y) for x, y in zip(b, d, strict=True))
        print(
            f"B vs D (both bf16): whole run {spread(whole)}, median step {spread(step)}; "
            f"losses differ by at most {diff:.2g} (bf16 rounding)"
        )
    a_rss = max(r["rss_mb"] for r in runs["A"]) * 2**20
    print(
        f"A: peak RSS {a_rss / 2**30:.2f} GiB, plan's estimate {estimate / 2**30:.2f} GiB "
        f"(ratio {a_rss / estimate:.2f}); gradient checkpointing (auto): "
        f"{'on' if runs['A'][0].get('checkpointing') else 'off'}"
    )
    a, c = runs["A"][0]["losses"], runs["C"][0]["losses"]
    diff = max((abs(x - y) for x, y in zip(a, c, strict=False)), default=float("nan"))
    print(
        f"same examples per step: A's and C's losses differ by at most {diff:.2g} ({len(a)} steps)"
    )
    same = all(r["losses"] == a for r in runs["A"])
    print(f"A repeats exactly across rounds (separate processes): {'yes' if same else 'NO'}")
