"""The lm-evaluation-harness through its Python API, on the already loaded model (an adapter
stays unmerged: no temporary directory). Tasks come from the harness's own registry (for users
with network) or from local task YAMLs: the ones shipped in `conf/eval/` (e.g. `demo_exact`,
over the demo test split) and a user's `lm_eval_include_path`.

A local task names its data files by absolute path or as `pkg://<package>/<path>` (inside an
installed package, so the shipped task runs wherever the user runs from); the YAMLs are copied
into the stage's work dir with those names made absolute before the harness reads them.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.base import UserError

SHIPPED = Path(__file__).resolve().parents[2] / "conf" / "eval"  # task YAMLs shipped with us
PKG = re.compile(r"pkg://([A-Za-z_]\w*)/")
PKG_FILE = re.compile(r"pkg://([A-Za-z_]\w*)/([^\s'\",\]}]+)")
SKIP = {"alias", "name", "sample_len", "samples"}


def task_dirs(include_path: str | None) -> list[Path]:
    return [SHIPPED, *([Path(include_path)] if include_path else [])]


def package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(list(spec.submodule_search_locations)[0])


def localise(text: str) -> str:
    """`pkg://package/` prefixes replaced by the package's directory."""

    def sub(m: re.Match) -> str:
        where = package_dir(m.group(1))
        return where + "/" if where else m.group(0)

    return PKG.sub(sub, text)


def key_files(include_path: str | None) -> list[str]:
    """What decides the tasks' content besides the include dir (hashed as a path field): the
    shipped task files and the `pkg://` data files any task YAML names."""
    files = {str(p) for p in SHIPPED.rglob("*") if p.is_file()}
    for d in task_dirs(include_path):
        for yaml in d.rglob("*.yaml") if d.is_dir() else []:
            for m in PKG_FILE.finditer(yaml.read_text()):
                where = package_dir(m.group(1))
                if where and (Path(where) / m.group(2)).is_file():
                    files.add(str(Path(where) / m.group(2)))
    return sorted(files)


def prepare_tasks(include_path: str | None, dest: Path) -> list[Path]:
    """Copies of the task dirs under `dest`, their YAMLs' `pkg://` names made absolute."""
    out = []
    for i, d in enumerate(task_dirs(include_path)):
        if not d.is_dir():
            raise UserError(f"lm_eval_include_path: not a directory: {d}")
        copy = dest / f"{i}-{d.name}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(d, copy)
        for yaml in copy.rglob("*.yaml"):
            yaml.write_text(localise(yaml.read_text()))
        out.append(copy)
    return out


def _import_harness() -> tuple[Any, Any, Any]:
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError(
            "lm_eval_tasks: the lm-evaluation-harness is not installed: "
            "pip install 'pipelines[eval]' (or set lm_eval_tasks: [])"
        ) from None
    return lm_eval, HFLM, TaskManager


def task_manager(tasks: list[str], include: list[Path]) -> Any:
    """Local tasks first (indexing the harness's thousands of built-in YAMLs takes seconds);
    the built-in registry only when a task is not local."""
    _, _, TaskManager = _import_harness()
    paths = [str(p) for p in include]
    manager = TaskManager(include_path=paths, include_defaults=False)
    if all(t in manager.all_tasks for t in tasks):
        return manager
    manager = TaskManager(include_path=paths)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        hints = {t: difflib.get_close_matches(t, manager.all_tasks, n=3) for t in unknown}
        said = "; ".join(
            f"'{t}'" + (f" (did you mean {', '.join(h)}?)" if h else "") for t, h in hints.items()
        )
        raise UserError(
            f"lm_eval_tasks: unknown task {said}: name a task of the harness or a local task "
            f"YAML (in {SHIPPED} or lm_eval_include_path)"
        )
    return manager


def harness_backend(cfg: Any, path: Path, resolve: Callable[[str], Path]) -> str:
    """`hf` (the model already loaded) or `vllm` (asked, or under auto where vLLM, a GPU and a
    model it can load are here)."""
    from stages.model.vllm_layout import require_vllm, unsupported, vllm_ready

    if cfg.lm_eval_backend == "hf":
        return "hf"
    if cfg.lm_eval_backend == "vllm":
        require_vllm("lm_eval_backend")
        why = unsupported(path, resolve)
        if why is not None:
            raise UserError(f"lm_eval_backend: vllm cannot load this model: {why}; set hf")
        return "vllm"
    return "vllm" if vllm_ready() and unsupported(path, resolve) is None else "hf"


def vllm_args(path: Path, resolve: Callable[[str], Path]) -> dict[str, Any]:
    """The harness's vLLM model arguments: the full weights, the adapter unmerged on them, and
    the artifact's own tokenizer (its chat template)."""
    from stages.model.vllm_layout import lora_rank, weights_and_adapter

    weights, adapter = weights_and_adapter(path, resolve)
    args: dict[str, Any] = {"pretrained": str(weights), "tokenizer": str(path)}
    if adapter is not None:
        args |= {"lora_local_path": str(adapter), "max_lora_rank": lora_rank(adapter, "model")}
    return args | {"batch_size": "auto"}


def run_harness(model: Any, cfg: Any, work: Path) -> tuple[dict[str, float], list[dict]]:
    """({"<task>/<metric>": value}, one record per evaluated sample); `model` is the loaded
    model (hf) or vLLM's model arguments (a dict)."""
    lm_eval, HFLM, _ = _import_harness()
    manager = task_manager(
        list(cfg.lm_eval_tasks), prepare_tasks(cfg.lm_eval_include_path, work / "lm_eval_tasks")
    )
    if isinstance(model, dict):
        lm, model_args = "vllm", model
    else:
        lm = HFLM(
            pretrained=model.model,
            tokenizer=model.tokenizer,
            batch_size=cfg.batch_size,
            max_length=model.context_length,
        )
        model_args = None
    results = lm_eval.simple_evaluate(
        model=lm,
        model_args=model_args,
        tasks=list(cfg.lm_eval_tasks),
        num_fewshot=cfg.num_fewshot,
        limit=cfg.limit,
        apply_chat_template=cfg.apply_chat_template,
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=cfg.bootstrap_iters,
    )
    return flatten(results["results"]), records(results.get("samples") or {})


def flatten(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """lm-eval's {"task": {"metric,filter": v}} as {"task/metric": v} ("task/metric/filter"
    for a filter other than none); values that are not numbers ("N/A" stderr) are left out."""
    out = {}
    for task, values in results.items():
        for name, v in values.items():
            metric, _, filt = name.partition(",")
            if metric in SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            out[f"{task}/{metric}" + (f"/{filt}" if filt and filt != "none" else "")] = float(v)
    return out


def records(samples: dict[str, list[dict]]) -> list[dict]:
    """Per-sample records of each task: the prompt, target, filtered reply and its scores."""
    out = []
    for task, items in samples.items():
        for s in items:
            args = s.get("arguments") or [[None]]
            out.append(
                {
                    "task": task,
                    "doc_id": s.get("doc_id"),
                    "prompt": args[0][0] if args and args[0] else None,
                    "target": s.get("target"),
                    "response": s.get("filtered_resps"),
                    **{k: s[k] for k in s.get("metrics", []) if k in s},
                }
            )
    return [json.loads(json.dumps(r, default=str)) for r in out]
