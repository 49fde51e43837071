"""What `serve` and `chat` answer with: the model directory a command-line target names.

A target is a directory holding a model, a stage name or key prefix in the store (as `show`
takes), or, when Hydra overrides follow it, a stage of the config they compose (the artifact that
config's `run` made). Adapters find their base through the store, never by merging. No torch here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.inspect import find_key
from runtime.store import Store, read_manifest
from stages.base import UserError
from stages.model.loading import REWARD, read_model_json


@dataclass(frozen=True)
class Target:
    path: Path  # the model artifact (or plain Hugging Face directory)
    name: str  # the model name clients send: the stage name, else the directory name
    aliases: frozenset[str]  # other names accepted for it (its key)
    resolve: Callable[[str], Path]  # an adapter's base key -> its directory


def find_target(target: str, store_dir: Path, overrides: list[str]) -> Target:
    """The model `target` names; a UserError saying what to do when there is none. A bare word
    is a stage name or key prefix first, then a directory; write ./name for the directory."""
    store_dir = Path(store_dir).expanduser().absolute()
    if overrides:
        return _checked(_from_config(target, overrides, store_dir))
    path = Path(target).expanduser()
    if os.sep in target or target.startswith((".", "~")):
        if not _is_model_dir(path):
            raise UserError(
                f"{target}: no model here (a directory holding model.json / config.json)"
            )
        return _checked(_from_path(path.resolve(), store_dir))
    store = Store(store_dir)
    key = find_key(store, target) if store.root.is_dir() else None
    found = store.find(key) if key else None
    if found is not None:
        return _checked(_in_store(store, found, key or "", target))
    if _is_model_dir(path):
        return _checked(_from_path(path.resolve(), store_dir))
    if not store.root.is_dir():
        raise UserError(
            f"'{target}': not a model directory, and no store at {store.root} to find it in; "
            "give a directory holding model.json / config.json, or set --store (PIPELINES_STORE)"
        )
    raise UserError(
        f"'{target}': no model directory, stage name or key prefix of an artifact in "
        f"{store.root}; `python -m pipelines ls` lists the artifacts"
    )


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("model.json", "config.json"))


def _from_path(path: Path, store_dir: Path) -> Target:
    """A directory; inside a store (<store>/artifacts/<kind>/<key>) its bases are found there."""
    manifest = read_manifest(path)
    if manifest is not None and path.parent.parent.name == "artifacts":
        return _in_store(Store(path.parent.parent.parent), path, str(manifest["key"]), None)
    return Target(path, path.name, frozenset(), resolver(Store(store_dir)))


def _in_store(store: Store, path: Path, key: str, asked: str | None) -> Target:
    manifest = read_manifest(path) or {}
    name = str(manifest.get("name") or asked or key[:12])
    aliases = frozenset(a for a in (key, asked) if a and a != name)
    return Target(path, name, aliases, resolver(store))


def _from_config(stage: str, overrides: list[str], store_dir: Path) -> Target:
    """The artifact of `stage` in the config the overrides compose (compiled as `plan` does)."""
    from pipelines.commands import compile_config
    from pipelines.preview import compose

    if not any(o.split("=", 1)[0].lstrip("+") == "store" for o in overrides):
        overrides = [*overrides, f"store={store_dir}"]
    raw = compose(overrides)
    compiled, store, _ = compile_config(raw, Path.cwd())
    graph = compiled.graph
    if stage not in graph:
        names = ", ".join(sorted(graph.nodes))
        raise UserError(f"'{stage}': no stage of that name in this config (stages: {names})")
    key = graph.nodes[stage]["node"].key
    found = store.find(key)
    if found is None:
        args = " ".join(o for o in overrides if not o.startswith("store="))
        raise UserError(
            f"stage '{stage}' of this config is not built yet (key {key[:12]} not in "
            f"{store.root}); build it first: python -m pipelines run {args}"
        )
    return _in_store(store, found, key, stage)


def resolver(store: Store) -> Callable[[str], Path]:
    """Key -> artifact directory, for an adapter's base (and its base's base)."""

    def resolve(key: str) -> Path:
        found = store.find(key)
        if found is None:
            raise UserError(
                f"the adapter's base model {key[:12]} is not in the store {store.root}; "
                "name the store it was trained in with --store (or PIPELINES_STORE)"
            )
        return found

    return resolve


def _checked(target: Target) -> Target:
    """Only a causal LM answers: refuse other artifacts before loading anything."""
    if not _is_model_dir(target.path):
        manifest = read_manifest(target.path) or {}
        kind = manifest.get("kind", "this directory")
        raise UserError(f"'{target.name}' ({kind}) at {target.path} is not a model")
    if read_model_json(target.path).get("head") == REWARD:
        raise UserError(
            f"'{target.name}' is a reward model (a scalar head, no text); serve or chat with a "
            "causal LM such as an sft, dpo or ppo stage"
        )
    return target
