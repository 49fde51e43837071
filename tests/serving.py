"""Shared by the serve and chat tests: the tiny chat model they talk to, its reference greedy
replies, a store holding it (the `sft` and `store` fixtures), and a live `serve` process started
through the CLI as a user starts it."""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from runtime.store import Store
from tests.cli import ROOT
from tests.training import base_and_data, run_sft

# one decode step of the tiny model is far too small to share between threads: on a busy machine
# two OpenMP threads make each step 20x slower than one
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
_built: dict[str, Path] = {}


def chat_model(factory: Any) -> Path:
    """`<root>/sft`: the SMALL tiny model after 40 full sft steps on the demo data (CPU, seconds),
    beside its `base` and tokenized `data`; built once per test session (`factory` is pytest's
    tmp_path_factory). Its greedy replies differ from prompt to prompt (lengths and text), with
    clear margins between the two most likely tokens, so batched and single answers can be
    compared exactly."""
    if "sft" not in _built:
        root = factory.mktemp("chat-model")
        base, data = base_and_data(root)
        run_sft(base, data, root / "sft", finetuning_type="full", max_steps=40)
        _built["sft"] = root / "sft"
    return _built["sft"]


def greedy_replies(path: Path, conversations: list[list[dict[str, Any]]], max_new: int) -> list:
    """What the model says at temperature 0, by transformers' own `generate` (the reference)."""
    from stages.model.inference import greedy_generate, load_for_inference

    loaded = load_for_inference(path, lambda key: path)
    prompts = [loaded.prompt_ids(c) for c in conversations]
    return [loaded.tokenizer.decode(r) for r in greedy_generate(loaded, prompts, max_new, 1)]


class LiveServer:
    """`python -m pipelines serve <args> --port 0` in a subprocess, up once it printed its URL."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None):
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **ONE_THREAD, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines", "serve", *args, "--port", "0"],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, args=(lines,), daemon=True).start()
        deadline = time.time() + 180
        while True:
            line = lines.get(timeout=max(1.0, deadline - time.time()))
            assert line is not None, "serve exited before serving:\n" + "".join(self.output)
            found = re.search(r"(http://\S+/v1)", line)
            if "serving model" in line and found:
                self.url = found.group(1)
                break
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def _drain(self, lines: queue.Queue[str | None]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            lines.put(line)
        lines.put(None)

    def interrupt(self) -> int:
        """Ctrl-C, as a user stops it; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def commit(store: Store, kind: str, name: str, payload: Path) -> Path:
    """`payload` committed as stage `name`'s artifact, as the executor commits one."""
    work = store.root / "work" / key_of(name) / "out"
    shutil.copytree(payload, work)
    path = store.commit(kind, key_of(name), work, {"name": name, "inputs": {}})
    store.remember_name(name, key_of(name), {})
    return path


@pytest.fixture(scope="module", name="sft")
def sft_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chat_model(tmp_path_factory)


@pytest.fixture(scope="module", name="store")
def store_fixture(tmp_path_factory: pytest.TempPathFactory, sft: Path) -> Store:
    """A store holding `base`, `sft` (full weights, the model served) and `tuned` (a LoRA
    adapter whose model.json names base's key)."""
    root = tmp_path_factory.mktemp("serve")
    base, data = sft.parent / "base", sft.parent / "data"
    run_sft(base, data, root / "lora", upstream_key=key_of("base"), max_steps=2)
    store = Store(root / "store")
    commit(store, "base", "base", base)
    commit(store, "sft", "sft", sft)
    commit(store, "sft", "tuned", root / "lora")
    return store


def chat(client: openai.OpenAI, prompt: str, **options: Any) -> Any:
    messages = [{"role": "user", "content": prompt}]
    return client.chat.completions.create(model="sft", messages=messages, **options)
