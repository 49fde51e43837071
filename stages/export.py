"""`export`: a model or reward model as one self-contained directory other tools load: adapters
merged into full weights (chains included), cast to `export_dtype`, sharded safetensors, the
tokenizer with its chat template, the stop tokens in generation_config.json; optionally GGUF
files with an Ollama Modelfile. A copy goes to `export_dir` and, when asked, to the Hub.

The artifact depends only on keyed fields; `export_dir` and `hub_model_id` say where copies go
(volatile: changing them does not redo the export). `send_copies` makes those copies after the
artifact is written; `ExportStage.deliver` is the same for a runtime to call on a cached export.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from stages.base import EXPORT, MODEL, REWARD_MODEL, Context, In, UserError, bounded, volatile
from stages.model.gguf_export import GGUF_TYPES
from stages.model.loading import CAUSAL_LM
from stages.model.merge import DTYPES

EXPORT_JSON = "export.json"
GGUF_DIR = "gguf"
_SIZE = re.compile(r"^\s*\d+\s*(KB|MB|GB|KIB|MIB|GIB)\s*$", re.IGNORECASE)  # transformers' units


@dataclass
class ExportConfig:
    export_dtype: str = field(default="auto", metadata={"choices": DTYPES})  # auto: as saved
    export_size: int | str = bounded(5, above=0)  # largest shard: GB (LLaMA-Factory's), or "500MB"
    dequantize: bool = False  # merge a QLoRA / quantised base after dequantising it
    gguf: list[str] = field(default_factory=list)  # GGUF files to write: f32 f16 bf16 q8_0
    ollama_modelfile: bool = True  # a Modelfile beside the (first) GGUF file
    # where copies go: not keyed; a relative export_dir is taken from where the command runs
    export_dir: str | None = volatile(None)
    hub_model_id: str | None = volatile(None)  # push to the Hugging Face Hub (needs network)


class ExportStage:
    kind: ClassVar[str] = "export"
    Config = ExportConfig
    inputs: ClassVar[dict[str, In]] = {"model": In((MODEL, REWARD_MODEL))}
    output: ClassVar[str] = EXPORT
    code: ClassVar[tuple[str, ...]] = (
        "model/loading.py",
        "model/merge.py",
        "model/adapters.py",
        "model/inference.py",
        "model/gguf_export.py",
        "model/gguf_vocab.py",
        "model/modelfile.py",
    )
    dataset_fields: ClassVar[tuple[str, ...]] = ()
    path_fields: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = "size_mb"

    @staticmethod
    def check_config(cfg: ExportConfig) -> list[tuple[str, str]]:
        problems = []
        size = cfg.export_size  # a number of GB has its range beside the field
        if isinstance(size, str) and not _SIZE.match(size):
            problems.append(("export_size", f"'{size}': give whole GB, or e.g. '500MB'"))
        for kind in cfg.gguf:
            if kind not in GGUF_TYPES:
                problems.append(
                    ("gguf", f"unknown GGUF type '{kind}': one of {', '.join(GGUF_TYPES)}")
                )
        if len(set(cfg.gguf)) != len(cfg.gguf):
            problems.append(("gguf", "a GGUF type is listed twice"))
        return problems

    @staticmethod
    def check_input_types(cfg: ExportConfig, types: dict[str, str]) -> list[tuple[str, str]]:
        if cfg.gguf and types.get("model") == REWARD_MODEL:
            return [("gguf", "GGUF export is for language models, not a reward model: gguf: []")]
        return []

    @staticmethod
    def deliver(cfg: ExportConfig, artifact: Path, log: Any = None) -> None:
        """The copies to export_dir and the Hub, for an artifact already in the store: what a
        runtime calls when the export itself is cached (no torch is imported)."""
        send_copies(cfg, artifact, log)

    def run(self, ctx: Context, cfg: ExportConfig) -> None:
        from stages.model.merge import lineage, load_merged, source_dtype

        source = ctx.inputs["model"]
        resolve = ctx.resolve or (lambda key: source)
        links = lineage(source, ctx.input_keys.get("model", "model"), resolve)
        head = links[0].meta.get("head", CAUSAL_LM)
        if cfg.gguf:
            gguf_preflight(links, head)
        dtype = source_dtype(links) if cfg.export_dtype == "auto" else cfg.export_dtype
        model = load_merged(links, resolve, dtype, cfg.dequantize, ctx.work, ctx.log)
        remote = bool(links[-1].meta.get("trust_remote_code"))
        facts = save_full(model, source, ctx.out, cfg.export_size, head, remote, ctx.log)
        if cfg.gguf:
            facts["gguf"], facts["gguf_tokenizer_roundtrip"] = write_ggufs(
                model, source, ctx.out, cfg, ctx.log
            )
        record = describe(ctx.out, links, head, dtype, facts)
        ctx.metrics.update(
            {
                "parameters": record["parameters"],
                "size_mb": round(record["weights_bytes"] / 2**20, 2),
                "shards": record["shards"],
                "adapters_merged": len(links) - 1,
                **{f"gguf_{g['type']}_mb": round(g["bytes"] / 2**20, 2) for g in record["gguf"]},
            }
        )
        if record["gguf"]:  # transformers' GGUF loader rebuilds a tokenizer giving the same ids
            ctx.metrics["gguf_tokenizer_roundtrip"] = record["gguf_tokenizer_roundtrip"]
        send_copies(cfg, ctx.out, ctx.log)


def gguf_preflight(links: list[Any], head: str) -> None:
    """Refuse what GGUF export cannot write before the merge: a reward head, an architecture,
    rope scaling or a tokenizer it has no layout for."""
    from types import SimpleNamespace

    from stages.model.gguf_export import check_architecture, check_rope
    from stages.model.gguf_vocab import check_vocab
    from stages.model.loading import load_tokenizer

    if head != CAUSAL_LM:
        raise UserError("export.gguf: GGUF export is for language models; set gguf: []")
    config = json.loads((links[-1].path / "config.json").read_text())
    check_architecture(SimpleNamespace(architectures=config.get("architectures")))
    stretched = [link.meta["rope_scaling"] for link in links if link.meta.get("rope_scaling")]
    own = config.get("rope_parameters") or config.get("rope_scaling") or {}
    check_rope(stretched[0] if stretched else own)
    check_vocab(load_tokenizer(links[0].path), config["vocab_size"])


def describe(
    out: Path, links: list[Any], head: str, dtype: str, facts: dict[str, Any]
) -> dict[str, Any]:
    """export.json (provenance, and the files the export is made of) and a README."""
    from stages.model.merge import quantised

    record = {
        "source": {"key": links[0].key, "chain": [link.key for link in links]},
        "format": "full",
        "head": head,
        "dtype": dtype,
        "dequantized": bool(quantised(links)),
        "gguf": [],
        **facts,
    }
    files = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()]
    record["files"] = sorted([*files, EXPORT_JSON, "README.md"])
    (out / EXPORT_JSON).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(readme(record))
    return record


def save_full(
    model: Any,
    source: Path,
    out: Path,
    size: int | str,
    head: str,
    trust_remote_code: bool = False,
    log: Any = None,
) -> dict[str, Any]:
    """Weights (sharded safetensors), tokenizer with its template, stop tokens, model.json
    (which keeps the base's permission to run its own code, where it had one)."""
    from stages.model.inference import stop_ids
    from stages.model.loading import load_tokenizer, write_model_json

    tokenizer = load_tokenizer(source)
    stops = stop_ids(model, tokenizer)
    generation = getattr(model, "generation_config", None)
    if generation is not None and head == CAUSAL_LM:
        generation.eos_token_id = stops if len(stops) > 1 else stops[0]
        if generation.pad_token_id is None:
            generation.pad_token_id = tokenizer.pad_token_id
    if log:
        log.info("saving %s weights (shards up to %s)", model.dtype, _shard_size(size))
    model.save_pretrained(str(out), max_shard_size=_shard_size(size))
    tokenizer.save_pretrained(str(out))
    write_model_json(out, "full", head=head, trust_remote_code=trust_remote_code)
    weights = sorted(out.glob("*.safetensors"))
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_bytes": sum(p.stat().st_size for p in weights),
        "shards": len(weights),
        "stop_ids": stops,
    }


def _shard_size(size: int | str) -> str:
    return f"{size}GB" if isinstance(size, int) else size.replace(" ", "").upper()


def write_ggufs(
    model: Any, source: Path, out: Path, cfg: ExportConfig, log: Any = None
) -> tuple[list[dict[str, Any]], bool]:
    """One GGUF file per type asked for, in the folder `gguf/` with the Modelfile (naming the
    first): apart from the tokenizer files, which transformers' GGUF loader would otherwise
    mix with its own reading. Also: whether the GGUF vocabulary reads back the same."""
    from stages.model.gguf_export import check_architecture, write_gguf
    from stages.model.inference import stop_ids
    from stages.model.loading import load_tokenizer
    from stages.model.modelfile import modelfile

    check_architecture(model.config)
    tokenizer = load_tokenizer(source)
    stops = stop_ids(model, tokenizer)
    folder = out / GGUF_DIR
    folder.mkdir()
    written = [
        write_gguf(model, tokenizer, stops, folder / f"model-{kind}.gguf", kind, log)
        for kind in cfg.gguf
    ]  # the same vocabulary metadata in each: checked once
    same = tokenizer_roundtrip(tokenizer, folder, written[0]["file"], log)
    if cfg.ollama_modelfile:
        words = [tokenizer.decode([i]) for i in stops]
        (folder / "Modelfile").write_text(modelfile(written[0]["file"], tokenizer, words))
    return written, same


def tokenizer_roundtrip(tokenizer: Any, folder: Path, name: str, log: Any = None) -> bool:
    """Whether transformers' GGUF loader rebuilds a tokenizer giving the same ids on a probe
    conversation (template markers, digits, punctuation, spaces, newlines)."""
    from transformers import AutoTokenizer

    rebuilt = AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
    conversation = [
        {"role": "user", "content": "What is 12 + 345?  Answer in one line.\n"},
        {"role": "assistant", "content": "12 + 345 = 357, so: 357!"},
    ]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    same = tokenizer(text)["input_ids"] == rebuilt(text)["input_ids"]
    if not same and log:
        log.warning("%s: transformers' GGUF loader tokenizes the probe differently", name)
    return same


def send_copies(cfg: ExportConfig, artifact: Path, log: Any = None) -> None:
    """Copy the export to `export_dir` (relative: from the current directory, the one the
    command runs from) and push it to `hub_model_id`, where asked."""
    if cfg.export_dir:
        target = Path(cfg.export_dir).expanduser().resolve()
        copy_export(artifact, target)
        if log:
            log.info("export copied to %s", target)
    if cfg.hub_model_id:
        push_to_hub(artifact, cfg.hub_model_id)
        if log:
            log.info("export pushed to the Hub as %s", cfg.hub_model_id)


def copy_export(artifact: Path, target: Path) -> None:
    """Files of a previous export there (listed in its export.json) are replaced; any other
    file in a non-empty folder stops the copy, so a stale weight file never sits beside."""
    if target.exists() and not target.is_dir():
        raise UserError(f"export.export_dir: {target} is a file; name a folder")
    previous = target / EXPORT_JSON
    if previous.exists() and _same_export(artifact, target):
        return  # this very export is there already, whole (a cached rerun): nothing to copy
    if previous.exists():
        for name in json.loads(previous.read_text()).get("files", []):
            (target / name).unlink(missing_ok=True)
    elif target.exists() and any(target.iterdir()):
        raise UserError(
            f"export.export_dir: {target} is not empty and holds no previous export; "
            "name a new or empty folder"
        )
    files = [p for p in sorted(artifact.rglob("*")) if p.is_file() and p.name != "manifest.json"]
    for src in files:
        dest = target / src.relative_to(artifact)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)  # not copy2: the store's read-only bits stay behind


def _same_export(artifact: Path, target: Path) -> bool:
    """`target` holds this artifact's export: the same export.json, every file it lists there
    with its size."""
    ours = artifact / EXPORT_JSON
    if (target / EXPORT_JSON).read_bytes() != ours.read_bytes():
        return False
    names = json.loads(ours.read_text()).get("files", [])
    return all(
        (target / n).is_file() and (target / n).stat().st_size == (artifact / n).stat().st_size
        for n in names
    )


def push_to_hub(artifact: Path, repo_id: str) -> None:
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(
            folder_path=str(artifact), repo_id=repo_id, ignore_patterns=["manifest.json"]
        )
    except Exception as e:  # no network, no token, no permission: the user's to fix
        raise UserError(
            f"export.hub_model_id: pushing to '{repo_id}' failed ({type(e).__name__}: "
            f"{str(e)[:200]}); check the network and `hf auth login`, or drop hub_model_id"
        ) from e


def readme(facts: dict[str, Any]) -> str:
    """A short model card: where the weights came from and how to load them."""
    auto = (
        "AutoModelForSequenceClassification"
        if facts["head"] == "reward"
        else "AutoModelForCausalLM"
    )
    lines = [
        "# Exported model",
        "",
        f"Exported by pipelines from the artifact `{facts['source']['key']}`"
        + (
            f" ({len(facts['source']['chain']) - 1} adapter(s) merged into its base)."
            if len(facts["source"]["chain"]) > 1
            else "."
        ),
        f"Weights: {facts['dtype']}, {facts['shards']} safetensors shard(s), "
        f"{facts['parameters']:,} parameters.",
        "",
        "```python",
        f"from transformers import {auto}, AutoTokenizer",
        f'model = {auto}.from_pretrained("path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "```",
    ]
    if facts["gguf"]:
        names = ", ".join(f"`{GGUF_DIR}/{g['file']}`" for g in facts["gguf"])
        lines += [
            "",
            f"GGUF: {names}; with Ollama: `ollama create my-model -f {GGUF_DIR}/Modelfile`.",
        ]
    return "\n".join(lines) + "\n"
