"""The loop every chat-data node runs (pairs, kto_data, prompts): install the template, read each
dataset's usable rows, encode and fit them, mix, split, and save train / validation to disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.base import Context, UserError
from stages.data import artifact
from stages.data.artifact import save_splits, save_template
from stages.data.config import ChatDataConfig
from stages.data.formats import Example

# one example -> a row to save (None: nothing trainable left after fitting; counted by the encoder)
Encoder = Callable[[Any, Example, dict[str, int]], dict[str, Any] | None]


def build_chat_data(
    ctx: Context, cfg: ChatDataConfig, kinds: tuple[str, ...], encoder: Encoder
) -> dict[str, int]:
    """Write `train` (and `validation`) datasets and the template into ctx.out; returns counts
    (examples, validation, truncated, dropped, skipped) for the manifest."""
    from tqdm import tqdm

    from stages.data.examples import usable_examples
    from stages.data.lengths import Tally
    from stages.data.mixing import mix
    from stages.data.templates import apply_template
    from stages.model.loading import load_tokenizer
    from stages.tokenize import split

    tokenizer = load_tokenizer(ctx.inputs["model"])
    save_template(ctx.out, apply_template(tokenizer, cfg.template, cfg.custom_template))
    counts = Tally()
    parts = []
    for entry in ctx.datasets["dataset"]:
        skipped: list[str] = []
        rows = usable_examples(entry, kinds, cfg.max_samples, cfg.bad_rows, skipped)
        encoded = [encoder(tokenizer, ex, counts) for ex in tqdm(rows, desc=entry["name"])]
        parts.append([r for r in encoded if r is not None])
        counts["skipped"] += len(skipped)
        if skipped:
            ctx.log.warning(
                "%s: skipped %d bad rows, e.g. %s",
                entry["name"],
                len(skipped),
                "; ".join(skipped[:3]),
            )
    examples = mix(parts, cfg.mix_strategy, cfg.interleave_probs, cfg.seed)
    if not examples:
        names = ", ".join(e["name"] for e in ctx.datasets["dataset"])
        raise UserError(f"dataset '{names}': no usable examples (cutoff_len {cfg.cutoff_len}?)")
    train, val = split(examples, cfg.val_size, cfg.seed)
    save_splits(ctx.out, train, val)
    return {"examples": len(train), "validation": len(val), **counts.metrics(cfg.cutoff_len)}


def load_splits(data: Any) -> tuple[Any, Any]:
    """(train, validation or None) of a chat-data artifact, in memory: the preference and RL
    stages `.map` them, which must not write into the artifact."""
    return artifact.load_splits(data, in_memory=True)


def chat_tokenizer(model: Path, data: Path) -> tuple[Any, list[int] | None]:
    """The model's tokenizer with a data artifact's chat template installed (so the trained model
    renders and serves the way it was trained), and the template's stop token ids; a pad token
    where the tokenizer has none."""
    from stages.data.templates import stop_token_ids
    from stages.model.loading import load_tokenizer

    tokenizer = load_tokenizer(model)
    stops = None
    template = artifact.read_template(data)
    if template is not None:
        tokenizer.chat_template = template["chat_template"]
        stops = stop_token_ids(tokenizer, template["stop_words"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, stops
