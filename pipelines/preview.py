"""`python -m pipelines data preview <dataset> [options] [overrides]`: render a few examples
through the chat template and mark the tokens that are trained, so a mask can be seen."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from compiler.compile import Compiled, compile_pipeline
from compiler.digests import DigestCache
from compiler.errors import CompileError
from runtime.store import Store
from stages.base import UserError

GREEN, RESET = "\033[32m", "\033[0m"


def preview_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pipelines data preview", description=__doc__)
    parser.add_argument("dataset", help="a name in `datasets` (or the dataset_info.json)")
    parser.add_argument("-n", type=int, default=3, help="how many examples (default 3)")
    parser.add_argument(
        "--template", default=None, help="a named template instead of the tokenizer's"
    )
    parser.add_argument(
        "--cutoff-len", type=int, default=None, help="truncation length to report against"
    )
    parser.add_argument("--train-on-prompt", action="store_true")
    parser.add_argument("--mask-history", action="store_true")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=local ...")
    args = parser.parse_intermixed_args(argv)  # overrides before or after the flags
    block = {
        "kind": "tokenize",
        "dataset": args.dataset,
        "template": args.template,
        "train_on_prompt": args.train_on_prompt,
        "mask_history": args.mask_history,
        **({"cutoff_len": args.cutoff_len} if args.cutoff_len else {}),
    }
    try:
        raw = compose(args.overrides)
        raw["stages"] = {"preview": block}
        compiled = compile_pipeline(raw, Path.cwd(), DigestCache())
    except CompileError as e:
        print(e.render(), file=sys.stderr)
        return 2
    store = Store(Path(str(raw.get("store") or ".pipelines")))
    model_dir = materialise_model(compiled, store)
    if model_dir is None:
        return 1
    node = compiled.graph.nodes["preview"]["node"]
    entries = node.datasets["dataset"]
    try:
        show_examples(model_dir, node.config, entries, args.n, sys.stdout.isatty())
        print(length_line(model_dir, node.config, entries))
    except UserError as e:  # a bad file or row: where it is, and what is wrong
        print(f"pipelines data preview: {e}", file=sys.stderr)
        return 2
    return 0


def compose(overrides: list[str]) -> dict[str, Any]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from pipelines.app import CONF_DIR, amend_datasets, register_stage_defaults

    register_stage_defaults()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=amend_datasets(overrides))
    raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(raw, dict)
    return raw


def materialise_model(compiled: Compiled, store: Store) -> Path | None:
    """The base model's artifact, built first if it is not in the store yet."""
    from runtime.executor import FAILED, execute
    from runtime.launchers import make_launcher
    from runtime.store import new_run_id

    ancestors = {"base"} | set(compiled.graph.predecessors("base"))
    sub = Compiled(compiled.spec, compiled.graph.subgraph(ancestors).copy())
    key = compiled.graph.nodes["base"]["node"].key
    if not store.has(key):
        record = {"id": new_run_id(), "command": "pipelines data preview", "status": "running"}
        outcomes = execute(sub, store, make_launcher(compiled.spec.launcher), record)
        record["status"] = "failed" if any(o.status == FAILED for o in outcomes) else "ok"
        store.write_run(record)
        if record["status"] == "failed":
            print(f"could not materialise the model: {outcomes[-1].error}", file=sys.stderr)
            return None
    return store.find(key)


def show_examples(model_dir: Path, cfg: Any, entries: list[dict], n: int, color: bool) -> None:
    from stages.data.encode import IGNORE, encode
    from stages.data.formats import to_example
    from stages.data.sources import iter_rows
    from stages.data.templates import apply_template
    from stages.model.loading import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    apply_template(tokenizer, cfg.template, cfg.custom_template)
    start, end = (GREEN, RESET) if color else ("[[", "]]")
    for entry in entries:
        for i, (where, row) in enumerate(iter_rows(entry)):
            if i == n:
                break
            example = to_example(row, entry, where)
            ids, labels = encode(
                tokenizer,
                example.messages,
                train_on_prompt=cfg.train_on_prompt,
                mask_history=cfg.mask_history,
                tools=example.tools or None,
            )
            pieces, trained = [], False
            for tok, lab in zip(ids, labels, strict=True):
                if (lab != IGNORE) != trained:
                    pieces.append(start if not trained else end)
                    trained = not trained
                pieces.append(tokenizer.decode([tok]))
            pieces.append(end if trained else "")
            count = sum(lab != IGNORE for lab in labels)
            print(
                f"--- {where}  ({len(ids)} tokens, {count} trained, marked {start}like this{end})"
            )
            print("".join(pieces))


PREVIEW_ROWS = 10000  # rows measured for the length line


def length_line(model_dir: Path, cfg: Any, entries: list[dict]) -> str:
    """The dataset's lengths against cutoff_len, as tokenize will count them."""
    from stages.data.encode import encode
    from stages.data.examples import supervised_chats
    from stages.data.lengths import Tally, describe
    from stages.data.templates import apply_template
    from stages.model.loading import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    apply_template(tokenizer, cfg.template, cfg.custom_template)
    tally = Tally()
    for entry in entries:
        for msgs, tools in supervised_chats(entry, PREVIEW_ROWS, "skip", []):
            ids, _ = encode(tokenizer, msgs, tools=tools)
            tally.fit(len(ids), cfg.cutoff_len)
    stats = tally.metrics(cfg.cutoff_len)
    stats["examples"] = len(tally.lengths)
    lines = [describe(stats) or "lengths: no supervised examples to measure"]
    return "\n".join(lines + [f"warning: {w}" for w in stats.get("warnings", [])])
