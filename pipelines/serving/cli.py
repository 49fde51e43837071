"""`python -m pipelines serve <target> ...` (the HTTP API) and `python -m pipelines chat <target>
...` (the terminal chat): find the model, load it once, hand it to the engine."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any

from compiler.errors import CompileError
from pipelines.serving.target import Target, find_target
from stages.base import UserError

TARGET_HELP = (
    "a model directory, a stage name or artifact key (prefix) in the store, or, followed by "
    "Hydra overrides, a stage of the config they compose"
)


def serve_main(argv: list[str]) -> int:
    parser = _parser("serve", "Serve a model over an OpenAI-compatible HTTP API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--max-batch", type=int, default=8, help="rows generated together")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"clients must send it (default: ${API_KEY_ENV}); none: anyone who reaches the port",
    )
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve beyond this machine (a non-loopback --host) without an API key",
    )
    args = parser.parse_intermixed_args(argv)
    return _guarded("serve", lambda: _serve(args))


API_KEY_ENV = "PIPELINES_API_KEY"


def check_exposure(host: str, api_key: str | None, allowed: bool) -> None:
    """Nothing listens beyond this machine without a key unless the user says so."""
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    if not loopback and not api_key and not allowed:
        raise UserError(
            f"--host {host} serves the model to the network without an API key: set --api-key "
            f"(or {API_KEY_ENV}), or pass --allow-unauthenticated"
        )


def chat_main(argv: list[str]) -> int:
    parser = _parser("chat", "Chat with a model in the terminal.")
    parser.add_argument("--system", default=None, help="a system prompt")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_intermixed_args(argv)
    return _guarded("chat", lambda: _chat(args))


def _parser(verb: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"pipelines {verb}", description=description)
    parser.add_argument("target", help=TARGET_HELP)
    parser.add_argument("overrides", nargs="*", help="as `run` takes; store=DIR sets the store")
    parser.add_argument("--store", default=None, help="default: $PIPELINES_STORE or .pipelines")
    parser.add_argument("--backend", choices=("auto", "transformers", "vllm"), default="auto")
    parser.add_argument("--device", default="auto", help="auto (cuda if there is one), cpu, ...")
    parser.add_argument(
        "--max-tokens", type=int, default=512, help="reply length when a request names none"
    )
    return parser


def _guarded(verb: str, body: Any) -> int:
    """User mistakes end in one line and exit code 2."""
    try:
        return int(body())
    except UserError as e:
        print(f"pipelines {verb}: {e}", file=sys.stderr)
    except CompileError as e:
        print(e.render(), file=sys.stderr)
    except Exception as e:  # Hydra's and OmegaConf's config errors, worded as `run` words them
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if not isinstance(e, (HydraException, OmegaConfBaseException)):
            raise
        from pipelines.app import hydra_message

        print(hydra_message(e), file=sys.stderr)
    return 2


def resolve_target(args: argparse.Namespace) -> Target:
    """The target, with the store from --store, a `store=` override, or the environment."""
    store, overrides = args.store, []
    for o in args.overrides:
        if o.startswith("store="):
            store = store or o.split("=", 1)[1]
        else:
            overrides.append(o)
    store = store or os.environ.get("PIPELINES_STORE") or ".pipelines"
    return find_target(args.target, Path(store), overrides)


def wants_vllm(choice: str, device: str) -> bool:
    """`--backend vllm` (which must be able to start), or auto where vLLM and a GPU are here."""
    from stages.model.vllm_layout import require_vllm, vllm_ready

    if choice == "vllm":
        require_vllm("--backend vllm")
        return True
    return choice == "auto" and device in ("auto", "cuda") and vllm_ready()


def load_engine(target: Target, device: str, max_batch: int) -> Any:
    """The model, loaded once (an adapter stays a PeftModel), in a started engine."""
    import torch

    from pipelines.serving.engine import Engine
    from stages.model.inference import load_for_inference

    if max_batch < 1:
        raise UserError(f"--max-batch {max_batch}: give 1 or more")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_for_inference(target.path, target.resolve, device=device)
    return Engine(loaded, max_batch).start()


def _quiet() -> None:
    """No loading bars or library notices between the command's own lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _serve(args: argparse.Namespace) -> int:
    check_exposure(args.host, args.api_key, args.allow_unauthenticated)
    target = None
    if wants_vllm(args.backend, args.device):
        from pipelines.serving import vllm_backend
        from stages.model.vllm_layout import unsupported

        target = resolve_target(args)
        why = unsupported(target.path, target.resolve)
        if why is None:
            return vllm_backend.serve(target, args.host, args.port, args.api_key, args.max_tokens)
        if args.backend == "vllm":
            raise UserError(f"--backend vllm: {target.name}: {why}")
        print(f"the transformers backend serves {target.name}: {why}", flush=True)
    try:
        import uvicorn

        from pipelines.serving.api import create_app
    except ImportError as e:
        raise UserError(
            f"serve needs FastAPI and uvicorn ({e}): pip install 'pipelines[serve]'"
        ) from None
    sock = _bind(args.host, args.port)  # a busy port fails before anything loads
    port = sock.getsockname()[1]
    target = target or resolve_target(args)
    print(f"loading {target.name} from {target.path}", flush=True)
    _quiet()
    engine = load_engine(target, args.device, args.max_batch)
    app = create_app(engine, target.name, target.aliases, args.max_tokens, args.api_key)
    url = f"http://{args.host}:{port}/v1"
    device = engine.loaded.device
    banner = (
        f"serving model '{target.name}' at {url} (OpenAI-compatible; transformers backend on "
        f"{device}, batches of up to {args.max_batch}"
        f"{'; API key required' if args.api_key else ''}); Ctrl-C stops"
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(banner, flush=True)

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3)
    try:
        Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled
        pass
    finally:
        engine.close()
    print("stopped", flush=True)
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads (so a busy port fails fast)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as e:  # in use, not ours, or not a port number
        sock.close()
        reason = getattr(e, "strerror", None) or e
        raise UserError(
            f"cannot listen on {host}:{port} ({reason}); choose another --port"
        ) from None
    return sock


def _chat(args: argparse.Namespace) -> int:
    from pipelines.serving.chat import chat_loop
    from pipelines.serving.sampling import Sampling

    if args.backend == "vllm":
        raise UserError("--backend vllm: chat runs on the transformers backend (auto)")
    if not 0 <= args.temperature <= 2 or not 0 < args.top_p <= 1:
        raise UserError("--temperature takes 0 to 2 and --top-p more than 0 up to 1")
    target = resolve_target(args)
    _quiet()
    engine = load_engine(target, args.device, 1)
    sampling = Sampling(args.max_tokens, args.temperature, args.top_p, (), args.seed)
    try:
        return chat_loop(engine, sampling, target.name, args.system)
    finally:
        engine.close()
