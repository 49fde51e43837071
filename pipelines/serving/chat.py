"""The terminal chat: read a line, print the reply as it is generated, keep the conversation.
`/reset` forgets it, `/exit` (or end of input) quits, Ctrl-C stops the reply being written."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, TextIO

from pipelines.serving.engine import Engine
from pipelines.serving.sampling import Sampling

HELP = "type a message; /reset starts over, /exit quits"


def chat_loop(
    engine: Engine, sampling: Sampling, name: str, system: str | None, out: TextIO = sys.stdout
) -> int:
    start: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    history = list(start)
    print(f"chatting with '{name}' ({HELP})", file=out, flush=True)
    while True:
        try:
            line = input("user> ")
        except EOFError:
            print(file=out)
            return 0
        except KeyboardInterrupt:
            print(file=out)
            return 0
        command = line.strip()
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            history = list(start)
            print("(conversation cleared)", file=out, flush=True)
            continue
        if not command:
            continue
        reply = _reply(engine, sampling, [*history, {"role": "user", "content": line}], out)
        if reply is not None:
            history += [{"role": "user", "content": line}, {"role": "assistant", "content": reply}]


def _reply(
    engine: Engine, sampling: Sampling, messages: list[dict[str, Any]], out: TextIO
) -> str | None:
    """Stream one reply to `out`; None when it could not be made (the turn is then forgotten)."""
    ids = engine.encode_chat(messages)
    room = engine.context_length - len(ids)
    if room <= 0:
        print(
            f"(the conversation is longer than the model's context of {engine.context_length} "
            "tokens; /reset to start over)",
            file=out,
            flush=True,
        )
        return None
    sampling = dataclasses.replace(sampling, max_tokens=min(sampling.max_tokens, room))
    print("assistant> ", end="", file=out, flush=True)
    text = []
    stream = engine.stream(ids, sampling)
    try:
        for event in stream:
            if event.error:
                print(f"\n(error: {event.error})", file=out, flush=True)
                return None
            print(event.text, end="", file=out, flush=True)
            text.append(event.text)
    except KeyboardInterrupt:  # stop this reply, keep chatting
        stream.close()
        print(" (interrupted)", file=out, flush=True)
        return "".join(text)
    print(file=out, flush=True)
    return "".join(text)
