"""Model artifact directories with only what lineage and layout code read (model.json, an
adapter's rank): for tests of how an artifact is found or handed on, not loaded."""

from __future__ import annotations

import json
from pathlib import Path

from stages.model.loading import write_model_json


def model_dir(path: Path, fmt: str = "full", rank: int | None = None, **meta: str) -> Path:
    path.mkdir(parents=True)
    write_model_json(path, fmt, **meta)
    if rank is not None:
        (path / "adapter_config.json").write_text(json.dumps({"r": rank}))
    return path
