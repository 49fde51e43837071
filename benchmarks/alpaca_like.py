"""Alpaca-style data with lengths like LLaMA-Factory's alpaca_en_demo (wide spread, mean ~200
tokens, some past a 512 cutoff), and the `datasets` entry a benchmark hands a stage: that
generated set, a local file, or an entry of a dataset_info.json."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

WORDS = (  # noqa: SIM905 (a list literal puts one word per line)
    "the of and to in is that for it as with was on be by this are from at or an have not "
    "which but all they one can more their has been will if would about there when so "
    "what some into only other time could these two may then do first any like new now "
    "such our also after used most over make well where through very between each good "
    "system data model using example water people number should because different "
    "important energy process provide health research include help however including "
    "increase support while learning company language several information students change "
    "power customer during write explain describe summary list three steps answer "
    "question simple reasons benefits"
).split()


def alpaca_like(path: Path, rows: int = 1000, seed: int = 0) -> None:
    """Alpaca rows whose token lengths spread like LLaMA-Factory's alpaca_en_demo: short
    instructions, an input in two of five rows, log-normal replies (a few past the cutoff)."""
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(max(1, n))).capitalize() + "."

    with path.open("w") as f:
        for _ in range(rows):
            row = {
                "instruction": text(rng.randint(5, 24)),
                "input": text(int(rng.lognormvariate(math.log(30), 0.6)))
                if rng.random() < 0.4
                else "",
                "output": text(min(900, int(rng.lognormvariate(math.log(105), 0.8)))),
            }
            f.write(json.dumps(row) + "\n")


def dataset_entry(spec: str | None, tmp: Path) -> dict[str, Any]:
    """The `datasets` entry a stage sees: a local file, a dataset_info.json entry
    (`path/dataset_info.json:name`), or the generated alpaca-like set."""
    from stages.data.registry import read_dataset_info
    from stages.data.spec import DatasetSpec

    if spec is None:
        path = tmp / "alpaca_like.jsonl"
        alpaca_like(path)
        return {
            **dataclasses.asdict(DatasetSpec(path=str(path), formatting="alpaca")),
            "name": "gen",
        }
    if ":" in spec and spec.split(":", 1)[0].endswith(".json"):
        info, name = spec.split(":", 1)
        entries, problems = read_dataset_info(Path(info))
        if name not in entries:
            sys.exit(f"{info}: no entry '{name}' ({'; '.join(problems) or ', '.join(entries)})")
        return {**dataclasses.asdict(DatasetSpec(**entries[name])), "name": name}
    return {**dataclasses.asdict(DatasetSpec(path=str(Path(spec).resolve()))), "name": "file"}
