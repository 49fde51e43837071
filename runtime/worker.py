"""Run one stage from a frozen spec file: what every launcher ends up calling.

    python -m runtime.worker <work>/spec.json

The spec holds everything resolved (config, input paths, output and work dirs), so worker ranks
never run Hydra or the compiler; the stage's metrics come back in `<work>/metrics.json`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from runtime.store import Store
from stages import KINDS
from stages.base import Context


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2, sort_keys=True))
    return path


def run_spec(spec_path: Path) -> dict[str, Any]:
    """Run the stage described by `spec_path`; returns (and saves) its metrics."""
    spec = json.loads(Path(spec_path).read_text())
    stage = KINDS[spec["kind"]]()
    cfg = type(stage).Config(**spec["config"])
    store = Path(spec["store"])
    ctx = Context(
        name=spec["name"],
        key=spec["key"],
        out=Path(spec["out"]),
        work=Path(spec["work"]),
        inputs={r: Path(p) for r, p in spec["inputs"].items()},
        input_keys=spec["input_keys"],
        datasets=spec["datasets"],
        resume_from=Path(spec["resume_from"]) if spec.get("resume_from") else None,
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        resolve=lambda key: _resolve(store, key),
        log=logging.getLogger(f"pipelines.{spec['name']}"),
        memory=spec.get("memory", {}),
    )
    ctx.out.mkdir(parents=True, exist_ok=True)
    quiet_handled_warnings()
    stage.run(ctx, cfg)
    if ctx.rank == 0:
        (ctx.work / "metrics.json").write_text(json.dumps(ctx.metrics, default=float))
    return ctx.metrics


# Third-party warnings about things handled here: tokenizers warn about sequences over the
# model's length, which the data stages cut and report (stages/data/lengths.py); bitsandbytes
# warns that an optional hub kernel is missing, and falls back to its own CPU kernel.
# A checkpoint of a model with tied embeddings stores the embedding once; the Trainer's resume
# then reports lm_head.weight "missing", though the model ties it back on construction.
HANDLED = {
    "transformers.tokenization_utils_base": "Token indices sequence length is longer than",
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
    "transformers.trainer": "missing keys in the checkpoint model loaded: ['lm_head.weight'].",
}


class _Handled(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_handled_warnings() -> None:
    # transformers deprecates its own attribute, which peft and the Trainer still read
    warnings.filterwarnings("ignore", r"`is_gradient_checkpointing` is deprecated", FutureWarning)
    for name, text in HANDLED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Handled) for f in logger.filters):
            logger.addFilter(_Handled(text))


def _resolve(root: Path, key: str) -> Path:
    path = Store(root).find(key)
    if path is None:
        raise FileNotFoundError(f"artifact {key} is not in the store {root} (garbage-collected?)")
    return path


if __name__ == "__main__":
    run_spec(Path(sys.argv[1]))
