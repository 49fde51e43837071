"""`serve --backend vllm`: vLLM's own OpenAI-compatible server (`vllm serve`) over the target, so
a GPU serves with its paged KV cache and continuous batching. A LoRA adapter is served as it is
(vLLM's `--lora-modules` over the full-weights base found in the store), under the target's name,
with the tokenizer, chat template and stop tokens it was trained with. No torch here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from pipelines.serving.target import Target
from stages.base import UserError
from stages.model.loading import REWARD, read_model_json

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank takes
API_KEY_ENV = "VLLM_API_KEY"  # vLLM reads its key from here: it stays out of the process list


def available() -> bool:
    """vLLM can serve here: the package is installed and a CUDA GPU is visible."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def require() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise UserError("--backend vllm: the vllm package is missing: pip install -e '.[vllm]'")
    import torch

    if not torch.cuda.is_available():
        raise UserError("--backend vllm: vLLM needs a CUDA GPU; use --backend transformers")


def unsupported(target: Target) -> str | None:
    """Why vLLM cannot serve `target` (None: it can)."""
    meta = read_model_json(target.path)
    if meta.get("head") == REWARD:
        return "a reward model scores, it does not generate; vLLM serves generators"
    if (
        meta["format"] == "adapter"
        and read_model_json(target.resolve(meta["base"]))["format"] != "full"
    ):
        return (
            "an adapter on another adapter, and vLLM applies one adapter to full weights: "
            "export it merged (an export stage)"
        )
    return None


def vllm_command(target: Target, host: str, port: int, max_tokens: int) -> list[str]:
    """The `vllm serve` command line that serves `target` as `target.name`."""
    meta = read_model_json(target.path)
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
    if meta["format"] == "adapter":
        base = target.resolve(meta["base"])
        cmd += [str(base), "--enable-lora", "--lora-modules", f"{target.name}={target.path}"]
        cmd += ["--max-lora-rank", str(lora_rank(target))]
    else:
        cmd += [str(target.path), "--served-model-name", target.name, *sorted(target.aliases)]
    cmd += ["--tokenizer", str(target.path), "--generation-config", str(target.path)]
    cmd += ["--host", host, "--port", str(port)]
    cmd += ["--override-generation-config", json.dumps({"max_new_tokens": max_tokens})]
    return cmd


def lora_rank(target: Target) -> int:
    """The smallest rank vLLM accepts that holds the adapter's."""
    r = int(json.loads((target.path / "adapter_config.json").read_text())["r"])
    fits = [rank for rank in LORA_RANKS if rank >= r]
    if not fits:
        raise UserError(f"{target.name}: LoRA rank {r} is over vLLM's largest ({LORA_RANKS[-1]})")
    return fits[0]


def serve(target: Target, host: str, port: int, api_key: str | None, max_tokens: int) -> int:
    """Hand the process over to vLLM's server (it prints its own banner and stops on Ctrl-C)."""
    cmd = vllm_command(target, host, port, max_tokens)
    env = {**os.environ, **({API_KEY_ENV: api_key} if api_key else {})}
    print(f"serving model '{target.name}' from {target.path} with vLLM at http://{host}:{port}/v1")
    sys.stdout.flush()
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached
