"""`blocks`: plain text -> token blocks of `cutoff_len` for continued pre-training.

Each document's tokens plus eos are concatenated and cut into full blocks (the incomplete tail is
dropped and counted); every token is trained on. Created implicitly for a `pt` stage's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from stages.base import MODEL, PT_DATA, Context, In, UserError, bounded
from stages.data.artifact import save_splits
from stages.data.config import BAD_ROWS
from stages.data.mixing import STRATEGIES
from stages.data.shapes import TEXT, refuse


@dataclass
class BlocksConfig:
    dataset: str | list[str] = "demo_text"  # a name in `datasets` with formatting: text
    cutoff_len: int = bounded(512, min=1)  # block size in tokens
    max_samples: int | None = bounded(None, min=1)  # documents per dataset
    mix_strategy: str = field(default="concat", metadata={"choices": STRATEGIES})
    interleave_probs: list[float] | None = None
    val_size: float = bounded(0.0, min=0)  # a fraction (< 1) or a count of validation blocks
    bad_rows: str = field(default="error", metadata={"choices": BAD_ROWS})
    seed: int = 42


class BlocksStage:
    kind: ClassVar[str] = "blocks"
    Config = BlocksConfig
    inputs: ClassVar[dict[str, In]] = {"model": In(MODEL, default="base")}
    output: ClassVar[str] = PT_DATA
    code: ClassVar[tuple[str, ...]] = (
        "data/artifact.py",
        "data/formats.py",
        "data/sources.py",
        "data/examples.py",
        "data/encode.py",
        "data/mixing.py",
        "tokenize.py",
        "model/loading.py",
    )
    dataset_fields: ClassVar[tuple[str, ...]] = ("dataset",)
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "blocks"

    @staticmethod
    def check_dataset(entry: dict[str, Any]) -> str | None:
        """Compile-time: plain text only (an entry without `formatting` that holds text, as
        LLaMA-Factory's pt data does: stages/data/shapes.py)."""
        return refuse(entry, (TEXT,), "pt needs plain text (formatting: text)")

    def run(self, ctx: Context, cfg: BlocksConfig) -> None:

        from stages.data.encode import text_blocks
        from stages.data.mixing import mix
        from stages.model.loading import load_tokenizer
        from stages.tokenize import split

        tokenizer = load_tokenizer(ctx.inputs["model"])
        counts = {"documents": 0, "skipped": 0, "dropped_tokens": 0}
        parts = []
        for entry in ctx.datasets["dataset"]:
            texts = _texts(entry, cfg, counts, ctx)
            blocks, dropped = text_blocks(tokenizer, texts, cfg.cutoff_len)
            counts["dropped_tokens"] += dropped
            parts.append([{"input_ids": b, "labels": list(b)} for b in blocks])
        blocks = mix(parts, cfg.mix_strategy, cfg.interleave_probs, cfg.seed)
        if not blocks:
            names = ", ".join(e["name"] for e in ctx.datasets["dataset"])
            raise UserError(
                f"dataset '{names}': fewer tokens than one block of cutoff_len {cfg.cutoff_len}"
            )
        train, val = split(blocks, cfg.val_size, cfg.seed)
        save_splits(ctx.out, train, val)
        ctx.metrics.update(
            blocks=len(train), validation=len(val), tokens=len(train) * cfg.cutoff_len, **counts
        )


def as_text(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry without `formatting` (and neither ranking nor kto) read as plain text: its
    `prompt` column (default `text`) is the document, as LLaMA-Factory's pt reads it."""
    plain = not entry.get("formatting") and not entry.get("ranking")
    plain = plain and "kto_tag" not in (entry.get("columns") or {})
    return {**entry, "formatting": TEXT} if plain else entry


def _texts(entry: dict[str, Any], cfg: BlocksConfig, counts: dict, ctx: Context) -> list[str]:
    """The documents of one dataset; a bad row raises, or with bad_rows=skip is counted."""
    from tqdm import tqdm

    from stages.data.examples import usable_examples

    skipped: list[str] = []
    rows = usable_examples(as_text(entry), "text", cfg.max_samples, cfg.bad_rows, skipped)
    texts = [str(e.text) for e in tqdm(rows, desc=f"read {entry['name']}")]
    if skipped:
        ctx.log.warning("%s: skipped %d bad rows, e.g. %s", entry["name"], len(skipped), skipped[0])
    counts["documents"] += len(texts)
    counts["skipped"] += len(skipped)
    return texts
