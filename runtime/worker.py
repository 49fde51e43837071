"""Run one stage from a frozen spec file: what every launcher ends up calling.

    python -m runtime.worker <work>/spec.json

The spec holds everything resolved (config, input paths, output and work dirs), so worker ranks
never run Hydra or the compiler; the stage's metrics come back in `<work>/metrics.json`.

Under a process launcher each rank logs to `<work>/logs/rank-<r>.log`, and a failure leaves
`<work>/errors/rank-<r>.json` (a user error's one-line message, or a crash's type and message)
with exit code 2 (user error) or 1 (crash), so the orchestrator can say which rank failed and why.
Only rank 0 writes the artifact: the other ranks get a scratch `out` under the work dir.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from runtime.store import Store
from stages import KINDS
from stages.base import Context, UserError, latest_checkpoint

USER_ERROR, CRASH = 2, 1


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
    rank = int(os.environ.get("RANK", 0))
    work = Path(spec["work"])
    # torchrun restarts every rank after a failure: resume from what exists now, not at launch
    found = latest_checkpoint(work / "checkpoints")
    ctx = Context(
        name=spec["name"],
        key=spec["key"],
        out=Path(spec["out"]) if rank == 0 else scratch_out(work, rank),
        work=work,
        inputs={r: Path(p) for r, p in spec["inputs"].items()},
        input_keys=spec["input_keys"],
        datasets=spec["datasets"],
        resume_from=found[1] if found else None,
        rank=rank,
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        resolve=lambda key: _resolve(store, key),
        log=logging.getLogger(f"pipelines.{spec['name']}"),
        memory=spec.get("memory", {}),
        distributed=spec.get("distributed", {}),
    )
    if ctx.out.exists() and rank != 0:
        shutil.rmtree(ctx.out)
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


def scratch_out(work: Path, rank: int) -> Path:
    """Where a rank other than 0 "writes the artifact": never into the one that is committed."""
    return work / "ranks" / f"rank-{rank}"


def error_path(work: Path, rank: int) -> Path:
    return work / "errors" / f"rank-{rank}.json"


def main(spec_path: Path) -> int:
    """A rank's life under a process launcher: logs to its file, failures to its error file."""
    from runtime import rank_logs

    spec = json.loads(Path(spec_path).read_text())
    work, rank = Path(spec["work"]), int(os.environ.get("RANK", 0))
    error_path(work, rank).unlink(missing_ok=True)
    rank_logs.capture(work, rank, echo=rank == 0)
    _use_local_device()
    timeout_s = (spec.get("distributed") or {}).get("timeout_s")
    code, error = 0, None
    try:
        _join_process_group(timeout_s)
        run_spec(spec_path)
        _leave_process_group()
    except UserError as e:
        code, error = USER_ERROR, {"kind": "user", "message": str(e)}
    except BaseException as e:  # noqa: BLE001 - the orchestrator reports it; the log keeps the trace
        import traceback

        traceback.print_exc()
        message = f"{type(e).__name__}: {e}"
        if any(sign in str(e) for sign in TIMED_OUT):
            message = (
                f"a collective waited longer than launcher.timeout_s={timeout_s}s: another rank "
                f"stopped or is far slower (every rank's log is in {work / 'logs'})"
            )
        code, error = CRASH, {"kind": "crash", "message": message}
    if error is not None:
        path = error_path(work, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rank": rank, **error}))
    rank_logs.finish()
    return code


# how gloo and NCCL say a collective ran past the process group's timeout
TIMED_OUT = ("Timed out waiting", "Watchdog caught collective operation timeout")


def _join_process_group(timeout_s: float | None) -> None:
    """Several ranks: form the process group here, with the launcher's timeout, so a stuck
    collective fails instead of hanging (the Trainer passes no timeout on CPU); the Trainer,
    DeepSpeed and our PPO loop then use this group."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return
    import datetime

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    timeout = datetime.timedelta(seconds=timeout_s or 1800)
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    # after a restart torchrun's store still holds the last attempt's addresses: a rank that
    # read its peer's old one would fail to connect, so each attempt gets its own key space
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"pipelines/attempt-{attempt}", store)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)


def _leave_process_group() -> None:
    """After a stage succeeds: wait until every rank is done (rank 0 may still be writing the
    artifact), then close the group, rather than leaving it to teardown in a random order."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _use_local_device() -> None:
    """Each rank on its own GPU (`LOCAL_RANK`), so that "cuda" means that one everywhere."""
    local = os.environ.get("LOCAL_RANK")
    if local is None:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(local))


def _resolve(root: Path, key: str) -> Path:
    path = Store(root).find(key)
    if path is None:
        raise FileNotFoundError(f"artifact {key} is not in the store {root} (garbage-collected?)")
    return path


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
