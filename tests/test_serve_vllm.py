"""`serve --backend vllm`: the `vllm serve` command a target becomes (full weights under the
target's names; an adapter as a LoRA module over its base, with its own tokenizer, template and
stop tokens), what vLLM cannot serve, the API key kept out of the command line, and the refusals
where vLLM cannot start. Serving for real needs a CUDA GPU: the last test does it there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.serving import vllm_backend
from pipelines.serving.target import Target
from stages.base import UserError
from stages.model import vllm_layout
from stages.model.loading import write_model_json
from tests.cli import ROOT, pipelines
from tests.model_dirs import model_dir


def target(path: Path, bases: dict[str, Path] | None = None) -> Target:
    return Target(path, "sft", frozenset({"0123abcd"}), lambda key: (bases or {})[key])


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_full_weights_are_served_under_the_targets_names(tmp_path: Path) -> None:
    path = model_dir(tmp_path / "sft")
    cmd = vllm_backend.vllm_command(target(path), "127.0.0.1", 8001, 64)
    assert cmd[:5] == [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(path)]
    assert cmd[cmd.index("--served-model-name") + 1 : cmd.index("--tokenizer")] == [
        "sft",
        "0123abcd",
    ]
    assert flag(cmd, "--tokenizer") == flag(cmd, "--generation-config") == str(path)
    assert (flag(cmd, "--host"), flag(cmd, "--port")) == ("127.0.0.1", "8001")
    assert json.loads(flag(cmd, "--override-generation-config")) == {"max_new_tokens": 64}
    assert "--enable-lora" not in cmd


@pytest.mark.parametrize("rank, slot", [(4, 8), (8, 8), (24, 32)])
def test_an_adapter_is_a_lora_module_over_its_base(tmp_path: Path, rank: int, slot: int) -> None:
    base = model_dir(tmp_path / "base")
    adapter = model_dir(tmp_path / "sft", "adapter", rank=rank, base="base-key")
    cmd = vllm_backend.vllm_command(target(adapter, {"base-key": base}), "::1", 9, 16)
    assert cmd[4] == str(base) and "--enable-lora" in cmd
    assert flag(cmd, "--lora-modules") == f"sft={adapter}"
    assert flag(cmd, "--max-lora-rank") == str(slot)
    assert flag(cmd, "--tokenizer") == flag(cmd, "--generation-config") == str(adapter)


def test_what_vllm_cannot_serve_says_why(tmp_path: Path) -> None:
    base = model_dir(tmp_path / "base")
    first = model_dir(tmp_path / "first", "adapter", rank=8, base="base-key")
    second = model_dir(tmp_path / "second", "adapter", rank=8, base="first-key")
    rm = model_dir(tmp_path / "rm", head="reward")
    bases = {"base-key": base, "first-key": first}
    assert vllm_layout.unsupported(first, bases.__getitem__) is None
    assert "adapter on another adapter" in str(vllm_layout.unsupported(second, bases.__getitem__))
    assert "reward model" in str(vllm_layout.unsupported(rm, bases.__getitem__))
    huge = model_dir(tmp_path / "huge", "adapter", rank=1024, base="base-key")
    with pytest.raises(UserError, match="LoRA rank 1024 is over vLLM's largest"):
        vllm_backend.vllm_command(target(huge, bases), "127.0.0.1", 1, 1)


def test_the_api_key_reaches_vllm_by_environment_not_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, object] = {}
    monkeypatch.setattr(os, "execvpe", lambda f, args, env: seen.update(args=args, env=env))
    vllm_backend.serve(target(model_dir(tmp_path / "sft")), "127.0.0.1", 1, "s3cret", 8)
    assert seen["env"]["VLLM_API_KEY"] == "s3cret"  # type: ignore[index]
    assert not any("s3cret" in a for a in seen["args"])  # type: ignore[union-attr]


@pytest.mark.skipif(vllm_layout.vllm_ready(), reason="the premise is a machine without vLLM")
@pytest.mark.parametrize("verb", ["serve", "chat"])
def test_backend_vllm_where_it_cannot_start_is_one_line(tmp_path: Path, verb: str) -> None:
    result = pipelines(verb, "sft", "--backend", "vllm", cwd=tmp_path)
    assert result.returncode == 2
    assert "--backend vllm: " in result.stderr and "Traceback" not in result.stderr


@pytest.mark.gpu
def test_vllm_serves_a_chat_completion_on_a_gpu(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="the vllm extra is not installed")
    from stages.model.tiny import build_model
    from tests.sizes import SMALL

    path = tmp_path / "tiny"
    build_model(path, **SMALL)
    write_model_json(path, "full")
    cmd = [sys.executable, "-m", "pipelines", "serve", str(path), "--backend", "vllm"]
    server = subprocess.Popen([*cmd, "--port", "8765"], cwd=ROOT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                urllib.request.urlopen("http://127.0.0.1:8765/v1/models", timeout=5)
                break
            except OSError:
                time.sleep(2)
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        request = urllib.request.Request(
            "http://127.0.0.1:8765/v1/chat/completions",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        reply = json.load(urllib.request.urlopen(request, timeout=60))
        assert reply["choices"][0]["message"]["role"] == "assistant"
    finally:
        server.terminate()
        server.wait(60)
