"""Throughput of `pipelines serve` on this machine: requests/s and generated tokens/s at 1 and 8
concurrent clients, through the official `openai` client against a live server.

    python benchmarks/serve_speed.py [--model-path DIR] [--requests 32] [--max-tokens 64]

Default model: the built-in tiny Llama (conf/model/tiny.yaml's shape, random weights), built in a
temp dir; `--model-path` takes any model artifact or Hugging Face directory (e.g. a store's
artifacts/sft/<key>, or a base made with model=smollm2). Every request is a chat request at
temperature 0 with `ignore_eos`, so each generates exactly --max-tokens tokens and the runs are
comparable. Each client sends its requests one after another; the server batches what arrives
together. Also prints the engine's mean batch size (rows per forward pass) from /health.
`--threads N` sets the server's OMP_NUM_THREADS (on a small model or a busy machine, 1 is best).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "seed": 0,
}
QUESTIONS = ["What is 2+3?", "Reverse the word: kalo", "Sort 321", "Calculate 8 - 85"]


def tiny_model(out: Path) -> Path:
    from stages.model.loading import write_model_json
    from stages.model.tiny import build_model

    build_model(out, **TINY)
    write_model_json(out, "full")
    return out


def start_server(
    model: Path, max_batch: int, threads: int | None
) -> tuple[subprocess.Popen, str, str]:
    args = [sys.executable, "-m", "pipelines", "serve", str(model), "--port", "0"]
    args += ["--max-batch", str(max_batch)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.search(r"serving model '([^']+)' at (http://\S+/v1)", line)
        if found:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe empty
            return proc, found.group(1), found.group(2)
    raise SystemExit(f"serve exited with {proc.wait()}")


def health(url: str) -> dict:
    host, port = url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port))
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())


def measure(client, name: str, url: str, clients: int, requests: int, max_tokens: int) -> dict:
    """`requests` chat requests from `clients` threads, each sending one after another."""
    per_client = requests // clients
    tokens, latencies = [0] * clients, []
    lock = threading.Lock()

    def work(c: int) -> None:
        for i in range(per_client):
            question = QUESTIONS[(c + i) % len(QUESTIONS)]
            t0 = time.perf_counter()
            reply = client.chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": question}],
                temperature=0,
                max_tokens=max_tokens,
                extra_body={"ignore_eos": True},
            )
            with lock:
                latencies.append(time.perf_counter() - t0)
            tokens[c] += reply.usage.completion_tokens

    before = health(url)
    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = health(url)
    steps = after["steps"] - before["steps"]
    return {
        "clients": clients,
        "requests": per_client * clients,
        "wall_s": round(wall, 2),
        "requests_per_s": round(per_client * clients / wall, 2),
        "tokens_per_s": round(sum(tokens) / wall, 1),
        "mean_latency_s": round(sum(latencies) / len(latencies), 3),
        "mean_batch": round((after["rows_stepped"] - before["rows_stepped"]) / max(steps, 1), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=32, help="per measurement")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=None, help="the server's OMP_NUM_THREADS")
    args = parser.parse_args()
    import openai

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_path or tiny_model(Path(tmp) / "tiny")
        proc, name, url = start_server(model, max(args.clients), args.threads)
        try:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
            measure(client, name, url, 1, 2, 8)  # warm-up
            for clients in args.clients:
                result = measure(client, name, url, clients, args.requests, args.max_tokens)
                threads = {"threads": args.threads or "default"}
                print(json.dumps({"model": str(model), **threads, **result}), flush=True)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
