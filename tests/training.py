"""Shared by the training tests: a small base model with tokenized demo data, and one short
sft run on it through the stage itself (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

from stages.base import Context
from stages.model.loading import write_model_json
from stages.model.tiny import build_model
from stages.sft import SftConfig, SftStage
from stages.tokenize import TokenizeConfig, TokenizeStage
from tests.sizes import SMALL

DEMO = Path(__file__).resolve().parent.parent / "stages" / "data" / "demo" / "sft.jsonl"
SHORT = {
    "max_steps": 3,
    "learning_rate": 1e-2,
    "save_steps": 100,
    "logging_steps": 1,
    "report_to": "none",
}


def base_and_data(root: Path, **tokenize: object) -> tuple[Path, Path]:
    """`root/base` (the SMALL tiny model) and `root/data` (demo sft rows tokenized for it)."""
    base, data = root / "base", root / "data"
    build_model(base, **SMALL)
    write_model_json(base, "full")
    data.mkdir()
    entry = {"name": "demo", "path": str(DEMO), "formatting": "alpaca"}
    ctx = Context("t", "k", data, root / "twork", {"model": base}, datasets={"dataset": [entry]})
    options = {"max_samples": 48, "cutoff_len": 96, **tokenize}
    TokenizeStage().run(ctx, TokenizeConfig(**options))  # type: ignore[arg-type]
    return base, data


def run_sft(
    upstream: Path,
    data: Path,
    out: Path,
    upstream_key: str = "base-key",
    resolve: dict[str, Path] | None = None,
    **cfg: object,
) -> Context:
    """A short sft run from `upstream` into `out` (work dir beside it); artifact keys resolve
    through `resolve` (default: every key is the upstream)."""
    out.mkdir()
    ctx = Context(
        out.name,
        out.name,
        out,
        out.parent / f"{out.name}-work",
        {"model": upstream, "data": data},
        input_keys={"model": upstream_key},
        resolve=(lambda key: resolve[key]) if resolve else (lambda key: upstream),
    )
    SftStage().run(ctx, SftConfig(**{**SHORT, **cfg}))  # type: ignore[arg-type]
    return ctx


PREFERENCE = DEMO.parent / "preference.jsonl"


def pairs_data(root: Path, base: Path, **options: object) -> Path:
    """`root/pairs`: demo preference pairs encoded for `base` (48 train + 16 validation)."""
    from stages.pairs import PairsConfig, PairsStage

    data = root / "pairs"
    data.mkdir()
    entry = {"name": "demo_preference", "path": str(PREFERENCE), "formatting": "alpaca"}
    entry |= {"ranking": True}
    ctx = Context("p", "k", data, root / "pwork", {"model": base}, datasets={"dataset": [entry]})
    PairsStage().run(ctx, PairsConfig(**{"max_samples": 64, "val_size": 16, **options}))  # type: ignore[arg-type]
    return data
