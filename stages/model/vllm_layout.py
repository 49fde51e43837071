"""How vLLM loads one of our model artifacts: full weights as they are, an adapter as a LoRA module
over the full-weights base it names (never merged). Shared by serve's and eval's vLLM backends;
ppo and grpo sample through TRL's engine instead. No torch at import.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.base import UserError
from stages.model.loading import REWARD, read_model_json

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's max_lora_rank takes


def vllm_ready() -> bool:
    """The vllm package is installed and a CUDA GPU is visible."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def require_vllm(key: str) -> None:
    """A run that asks for vLLM where it cannot start: one clear message naming `key`."""
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"{key}: vLLM needs a CUDA GPU, and none is visible here")
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"{key}: the vllm package is missing: pip install -e '.[vllm]'")


def vllm_share(cfg: Any) -> dict[str, float]:
    """A memory profile's part for a colocated engine: the fraction of the device it takes."""
    return {"device_share": cfg.vllm_gpu_memory_utilization} if cfg.use_vllm else {}


def unsupported(path: Path, resolve: Callable[[str], Path]) -> str | None:
    """Why vLLM cannot load the model at `path` (None: it can)."""
    meta = read_model_json(path)
    if meta.get("head") == REWARD:
        return "a reward model scores, it does not generate; vLLM runs generators"
    if meta["format"] == "adapter" and read_model_json(resolve(meta["base"]))["format"] != "full":
        return (
            "an adapter on another adapter, and vLLM applies one adapter to full weights: "
            "export it merged (an export stage)"
        )
    return None


def weights_and_adapter(path: Path, resolve: Callable[[str], Path]) -> tuple[Path, Path | None]:
    """(the full-weights directory vLLM loads, the LoRA adapter it applies or None)."""
    meta = read_model_json(path)
    if meta["format"] == "adapter":
        return resolve(meta["base"]), path
    return path, None


def lora_rank(adapter: Path, name: str) -> int:
    """The smallest rank vLLM accepts that holds the adapter's."""
    r = int(json.loads((adapter / "adapter_config.json").read_text())["r"])
    fits = [rank for rank in LORA_RANKS if rank >= r]
    if not fits:
        raise UserError(f"{name}: LoRA rank {r} is over vLLM's largest ({LORA_RANKS[-1]})")
    return fits[0]
