"""A LoRA artifact that works outside the store: PEFT writes the base's directory into
`adapter_config.json`, which inside the store is an absolute path no other machine has. The
adapter names its base by where the base came from (a hub id or the name the user gave) instead;
the store key stays in `model.json`, which is what the loader follows."""

from __future__ import annotations

import json
from pathlib import Path

SOURCE = "source.json"  # in a base artifact: where its weights came from
ADAPTER_CONFIG = "adapter_config.json"


def name_source(out: Path, name_or_path: str) -> None:
    """Remember, in a base artifact, the name its model was given by."""
    (Path(out) / SOURCE).write_text(json.dumps({"name_or_path": name_or_path}) + "\n")


def source_name(model_dir: Path) -> str | None:
    """The portable name of what `model_dir` holds: a base's source, or an adapter's base."""
    source = Path(model_dir) / SOURCE
    if source.exists():
        return json.loads(source.read_text())["name_or_path"]
    adapter = Path(model_dir) / ADAPTER_CONFIG
    if adapter.exists():
        return json.loads(adapter.read_text()).get("base_model_name_or_path")
    return None


def portable_adapter(out: Path, upstream: Path) -> None:
    """Point a saved adapter's config at its base's portable name (when there is one)."""
    config, name = Path(out) / ADAPTER_CONFIG, source_name(upstream)
    if not config.exists() or not name:
        return
    data = json.loads(config.read_text())
    data["base_model_name_or_path"] = name
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def stable_adapter_config(out: Path) -> None:
    """PEFT keeps target_modules as a set and writes it in hash order, which changes from one
    process to the next: sort it, so the same adapter is the same bytes (and digest)."""
    config = Path(out) / ADAPTER_CONFIG
    if not config.exists():
        return
    data = json.loads(config.read_text())
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
