"""`serve --backend vllm`: vLLM's own OpenAI-compatible server (`vllm serve`) over the target, so
a GPU serves with its paged KV cache and continuous batching. A LoRA adapter is served as it is
(a LoRA module over the full-weights base found in the store), under the target's name, with the
tokenizer, chat template and stop tokens it was trained with. No torch here.
"""

from __future__ import annotations

import json
import os
import sys

from pipelines.serving.target import Target
from stages.model.vllm_layout import lora_rank, weights_and_adapter

API_KEY_ENV = "VLLM_API_KEY"  # vLLM reads its key from here: it stays out of the process list


def vllm_command(target: Target, host: str, port: int, max_tokens: int) -> list[str]:
    """The `vllm serve` command line that serves `target` as `target.name`."""
    weights, adapter = weights_and_adapter(target.path, target.resolve)
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(weights)]
    if adapter is not None:
        cmd += ["--enable-lora", "--lora-modules", f"{target.name}={adapter}"]
        cmd += ["--max-lora-rank", str(lora_rank(adapter, target.name))]
    else:
        cmd += ["--served-model-name", target.name, *sorted(target.aliases)]
    cmd += ["--tokenizer", str(target.path), "--generation-config", str(target.path)]
    cmd += ["--host", host, "--port", str(port)]
    cmd += ["--override-generation-config", json.dumps({"max_new_tokens": max_tokens})]
    return cmd


def serve(target: Target, host: str, port: int, api_key: str | None, max_tokens: int) -> int:
    """Hand the process over to vLLM's server (it prints its own banner and stops on Ctrl-C)."""
    cmd = vllm_command(target, host, port, max_tokens)
    env = {**os.environ, **({API_KEY_ENV: api_key} if api_key else {})}
    print(f"serving model '{target.name}' from {target.path} with vLLM at http://{host}:{port}/v1")
    sys.stdout.flush()
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached
