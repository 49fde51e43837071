"""Tokenization throughput and padding, on the demo data and on a generated 100k-row set.

    python benchmarks/tokenization.py [--rows 100000]

Runs the real `tokenize` stage (tiny char-level tokenizer, ChatML) and prints rows/s, tokens/s
and the padding fraction of batches of 8 with and without (neat) packing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.base import Context  # noqa: E402
from stages.data.demo import solve  # noqa: E402
from stages.data.demo.generate import prompt  # noqa: E402
from stages.model.tiny import build_tokenizer  # noqa: E402
from stages.tokenize import TokenizeConfig, TokenizeStage  # noqa: E402


def generated(path: Path, rows: int) -> None:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(rows):
            ins, inp = prompt(rng)
            f.write(
                json.dumps({"instruction": ins, "input": inp, "output": solve(ins, inp)}) + "\n"
            )


def measure(
    tmp: Path, data: Path, name: str, packing: bool, quiet: bool = False, num_proc: int = 1
) -> None:
    out = tmp / f"out-{name}-{packing}-{num_proc}"
    out.mkdir(exist_ok=True)
    ctx = Context(
        name="bench",
        key="k",
        out=out,
        work=tmp / "work",
        inputs={"model": tmp / "model"},
        datasets={"dataset": [{"name": name, "path": str(data), "formatting": "alpaca"}]},
    )
    t0 = time.perf_counter()
    TokenizeStage().run(
        ctx, TokenizeConfig(cutoff_len=256, neat_packing=packing, num_proc=num_proc)
    )
    wall = time.perf_counter() - t0
    m = ctx.metrics
    if quiet:
        return
    pad = m["padding_packed"] if packing else m["padding_unpacked"]
    print(
        f"{name:10s} packing={'neat' if packing else 'off ':4s} num_proc={num_proc} rows {m['examples']:7d}  "
        f"{m['examples'] / wall:9.0f} rows/s  {m['tokens'] / wall:10.0f} tokens/s  "
        f"padding {pad:6.1%}  ({m['rows']} rows of <= 256 tokens, {wall:.1f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        build_tokenizer().save_pretrained(tmp / "model")
        big = tmp / "big.jsonl"
        generated(big, args.rows)
        demo = ROOT / "stages" / "data" / "demo" / "sft.jsonl"
        measure(tmp, demo, "warm-up", False, quiet=True)  # imports and caches, not timed
        for name, data in (("demo", demo), (f"gen{args.rows // 1000}k", big)):
            for packing in (False, True):
                measure(tmp, data, name, packing)
        measure(tmp, big, f"gen{args.rows // 1000}k", False, num_proc=2)


if __name__ == "__main__":
    main()
