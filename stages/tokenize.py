"""`tokenize`: render supervised examples through a chat template, labels on assistant tokens,
fit to `cutoff_len`, optionally packed, split into train / validation."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

from stages.base import MODEL, SFT_DATA, Context, In, UserError, volatile
from stages.data.artifact import save_splits, save_stream, save_template
from stages.data.config import ChatDataConfig
from stages.data.shapes import SUPERVISED, refuse


@dataclass
class TokenizeConfig(ChatDataConfig):
    train_on_prompt: bool = False
    mask_history: bool = False  # train on the last assistant turn only
    packing: bool = False
    neat_packing: bool = False  # packed examples cannot attend to each other
    num_proc: int = volatile(1)  # tokenizer processes: faster, same bytes
    streaming: bool = False  # tokenize while training instead (corpora too large for disk)


class TokenizeStage:
    kind: ClassVar[str] = "tokenize"
    Config = TokenizeConfig
    inputs: ClassVar[dict[str, In]] = {"model": In(MODEL, default="base")}
    output: ClassVar[str] = SFT_DATA
    code: ClassVar[tuple[str, ...]] = (
        "data/config.py",
        "data/artifact.py",
        "data/shapes.py",
        "data/formats.py",
        "data/sources.py",
        "data/templates.py",
        "data/encode.py",
        "data/packing.py",
        "data/mixing.py",
        "data/examples.py",
        "model/loading.py",
    )
    dataset_fields: ClassVar[tuple[str, ...]] = ("dataset",)
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "examples"

    @staticmethod
    def check_dataset(entry: dict[str, Any]) -> str | None:
        """Compile-time: supervised data only."""
        return refuse(entry, (SUPERVISED,), "sft needs supervised data")

    def run(self, ctx: Context, cfg: TokenizeConfig) -> None:

        from stages.data.encode import IGNORE
        from stages.data.lengths import Tally
        from stages.data.mixing import mix
        from stages.data.packing import pack, padding_fraction
        from stages.data.templates import apply_template
        from stages.model.loading import load_tokenizer

        tokenizer = load_tokenizer(ctx.inputs["model"])
        save_template(ctx.out, apply_template(tokenizer, cfg.template, cfg.custom_template))
        if cfg.streaming:  # the recipe only: training reads and tokenizes the rows as it goes
            recipe = {"datasets": ctx.datasets["dataset"], "options": _options(cfg)}
            save_stream(ctx.out, recipe)
            ctx.metrics.update(examples=0, streaming=True)
            return
        counts = Tally()
        parts = [_encode_entry(e, tokenizer, cfg, counts, ctx) for e in ctx.datasets["dataset"]]
        examples = mix(parts, cfg.mix_strategy, cfg.interleave_probs, cfg.seed)
        if not examples:
            names = ", ".join(e["name"] for e in ctx.datasets["dataset"])
            raise UserError(
                f"dataset '{names}': no usable examples (cutoff_len {cfg.cutoff_len} too small?)"
            )
        train, val = split(examples, cfg.val_size, cfg.seed)
        lengths = [len(e["input_ids"]) for e in train]
        if cfg.packing or cfg.neat_packing:
            train = pack(train, cfg.cutoff_len, neat=cfg.neat_packing)
        save_splits(ctx.out, train, val)
        ctx.metrics.update(
            examples=len(examples) - len(val),
            validation=len(val),
            rows=len(train),
            tokens=sum(lengths),
            trained_tokens=sum(sum(x != IGNORE for x in e["labels"]) for e in examples),
            padding_unpacked=round(padding_fraction(lengths, 8), 4),
            padding_packed=round(padding_fraction([len(r["input_ids"]) for r in train], 8), 4),
            **counts.metrics(cfg.cutoff_len),
        )


def _encode_entry(
    entry: dict[str, Any], tokenizer: Any, cfg: TokenizeConfig, counts: dict, ctx: Context
) -> list[dict[str, list[int]]]:
    """Tokenize one dataset; bad rows raise (or, with bad_rows=skip, are counted)."""
    from stages.data.examples import fit, supervised_chats

    skipped: list[str] = []
    chats = list(supervised_chats(entry, cfg.max_samples, cfg.bad_rows, skipped))
    counts["skipped"] += len(skipped)
    if skipped:
        ctx.log.warning(
            "%s: skipped %d bad rows, e.g. %s", entry["name"], len(skipped), "; ".join(skipped[:3])
        )
    fitted = (
        fit(ids, labels, cfg.cutoff_len, counts)
        for ids, labels in _encode_chats(tokenizer, chats, cfg, entry["name"])
    )
    return [e for e in fitted if e is not None]


def _encode_chats(tokenizer: Any, chats: list, cfg: TokenizeConfig, name: str) -> list:
    """encode() over every chat, in `num_proc` processes when asked, with a progress bar."""
    import multiprocessing

    from tqdm import tqdm

    options = {"train_on_prompt": cfg.train_on_prompt, "mask_history": cfg.mask_history}
    bar = {"desc": f"tokenize {name}", "unit": "row", "total": len(chats)}
    if cfg.num_proc <= 1 or len(chats) < 1000:
        return [_encode_one(tokenizer, c, options) for c in tqdm(chats, **bar)]
    with multiprocessing.get_context("fork").Pool(
        cfg.num_proc, initializer=_worker_init, initargs=(tokenizer, options)
    ) as pool:
        return list(tqdm(pool.imap(_worker_encode, chats, chunksize=256), **bar))


def _encode_one(tokenizer: Any, chat: tuple, options: dict) -> tuple[list[int], list[int]]:
    from stages.data.encode import encode

    msgs, tools = chat
    return encode(tokenizer, msgs, tools=tools, **options)


_WORKER: dict[str, Any] = {}


def _worker_init(tokenizer: Any, options: dict) -> None:
    _WORKER.update(tokenizer=tokenizer, options=options)


def _worker_encode(chat: tuple) -> tuple[list[int], list[int]]:
    return _encode_one(_WORKER["tokenizer"], chat, _WORKER["options"])


def _options(cfg: TokenizeConfig) -> dict[str, Any]:
    names = ("cutoff_len", "train_on_prompt", "mask_history", "max_samples", "bad_rows")
    return {n: getattr(cfg, n) for n in names}


def split(examples: list, val_size: float, seed: int) -> tuple[list, list]:
    """Shuffle once with `seed`; hold out a fraction (< 1) or a count for validation."""
    n_val = int(val_size) if val_size >= 1 else int(round(len(examples) * val_size))
    if n_val <= 0:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]
