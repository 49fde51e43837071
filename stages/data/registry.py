"""Read a LLaMA-Factory `dataset_info.json` as it is: its entries become dataset specs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# dataset_info.json keys that name where the data is, in the order LLaMA-Factory prefers them
SOURCES = ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
KEPT = ("formatting", "ranking", "split", "subset", "folder", "num_samples", "columns", "tags")


def read_dataset_info(path: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """({name: spec fields}, problems). A `file_name` is taken relative to the file's folder."""
    try:
        info = json.loads(path.read_text())
    except UnicodeDecodeError:
        return {}, [f"cannot read {path}: not UTF-8 text (a binary file?); save it as UTF-8 JSON"]
    except (OSError, json.JSONDecodeError) as e:
        return {}, [f"cannot read {path}: {e}"]
    if not isinstance(info, dict):
        return {}, [f"{path}: expected a JSON object of datasets"]
    entries: dict[str, dict[str, Any]] = {}
    problems = []
    for name, entry in info.items():
        if not isinstance(entry, dict):
            problems.append(f"{path}: entry '{name}' is not an object")
            continue
        source = next((k for k in SOURCES if entry.get(k)), None)
        if source is None:
            problems.append(f"{path}: entry '{name}' names no data ({', '.join(SOURCES[:2])})")
            continue
        where = entry[source]
        spec: dict[str, Any] = {k: entry[k] for k in KEPT if k in entry}
        spec["path"] = str(path.parent / where) if source == "file_name" else where
        entries[str(name)] = spec
    return entries, problems
