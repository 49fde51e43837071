"""The generation engine behind `serve` and `chat`: one background thread owns the model and runs
every request as a row of one batch (batch.py), handing each request its text as soon as it is
final through the request's own sink, so every row streams. A request its client abandoned is
dropped at the next step; an error in a step fails that step's requests and the engine goes on."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from pipelines.serving.batch import Batch
from pipelines.serving.sampling import Sampling, generator, next_tokens
from pipelines.serving.text import TextStream
from stages.model.inference import Loaded


@dataclass(frozen=True)
class Event:
    text: str = ""  # new reply text (may be empty on the last event)
    finish_reason: str | None = None  # "stop" or "length" on the last event
    completion_tokens: int = 0  # on the last event
    error: str | None = None  # the request failed

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None


Sink = Callable[[Event], None]


class Request:
    def __init__(self, ids: list[int], sampling: Sampling, sink: Sink):
        self.ids, self.sampling, self.sink = ids, sampling, sink
        self.cancelled = False

    def cancel(self) -> None:
        """The client is gone: the engine drops the row at its next step (a no-op once done)."""
        self.cancelled = True


@dataclass(eq=False)
class _Row:
    request: Request
    text: TextStream
    generator: torch.Generator | None
    generated: int = 0
    pending: int = -1  # the last sampled token, fed at the next step
    done: bool = False


@dataclass
class Stats:
    running: int = 0
    finished: int = 0
    dropped: int = 0  # abandoned by their clients mid-reply
    failed: int = 0
    steps: int = 0  # forward passes (prefills and decode steps)
    rows_stepped: int = 0  # sum of batch sizes over steps: mean batch = rows_stepped / steps


class Engine:
    def __init__(self, loaded: Loaded, max_batch: int = 8):
        self.loaded, self.max_batch = loaded, max_batch
        self.stats = Stats()
        self._waiting: queue.Queue[Request | None] = queue.Queue()
        self._tokenizer = threading.Lock()  # a fast tokenizer is not safe across threads
        self._thread = threading.Thread(target=self._loop, name="pipelines-engine", daemon=True)
        self._closed = False

    @property
    def context_length(self) -> int:
        return self.loaded.context_length

    def start(self) -> Engine:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed = True
        self._waiting.put(None)
        self._thread.join(timeout=10)

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """A conversation through the trained chat template, ready for the reply."""
        with self._tokenizer:
            return self.loaded.prompt_ids(messages)

    def encode_text(self, text: str) -> list[int]:
        with self._tokenizer:
            return list(self.loaded.tokenizer(text)["input_ids"])

    def submit(self, ids: list[int], sampling: Sampling, sink: Sink) -> Request:
        """Queue a request; `sink` receives its events, from the engine thread."""
        request = Request(list(ids), sampling, sink)
        self._waiting.put(request)
        return request

    def stream(self, ids: list[int], sampling: Sampling) -> Iterator[Event]:
        """The events of one request, in the calling thread; closing early drops the row."""
        events: queue.Queue[Event] = queue.Queue()
        request = self.submit(ids, sampling, events.put)
        try:
            while True:
                event = events.get()
                yield event
                if event.done:
                    return
        finally:
            request.cancel()

    # ---- the engine thread
    def _loop(self) -> None:
        batch, rows = self._new_batch(), []
        with torch.inference_mode():
            while not self._closed:
                room = self.max_batch - len(rows) if batch.can_join() else 0
                new = [self._row(r) for r in self._take(block=not rows, room=room)]
                try:
                    if rows:
                        self._advance(rows, batch.decode([r.pending for r in rows]))
                    if new:
                        logits = batch.prefill([r.request.ids for r in new])
                        rows += new
                        self._advance(new, logits)
                except Exception as e:  # one bad step must not stop the server
                    failed = [*rows, *(r for r in new if r not in rows)]
                    for row in failed:
                        self._send(row, Event(error=f"generation failed: {e}"))
                    self.stats.failed += len(failed)
                    batch, rows = self._new_batch(), []
                rows = self._prune(batch, rows)
                self.stats.running = len(rows)

    def _new_batch(self) -> Batch:
        return Batch(self.loaded.model, int(self.loaded.tokenizer.pad_token_id))

    def _take(self, block: bool, room: int) -> list[Request]:
        """Whatever is waiting, up to `room` (waiting for the first one when idle)."""
        taken: list[Request] = []
        while len(taken) < room and not self._closed:
            try:
                request = self._waiting.get(block=block and not taken)
            except queue.Empty:
                break
            if request is None:  # close() woke us
                continue
            if request.cancelled:
                self.stats.dropped += 1
                continue
            taken.append(request)
        return taken

    def _row(self, request: Request) -> _Row:
        stream = TextStream(self.loaded.tokenizer, request.sampling.stop)
        return _Row(request, stream, generator(request.sampling, self.loaded.device))

    def _advance(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Sample each row's next token; send its text; finish rows that stop."""
        self.stats.steps += 1
        self.stats.rows_stepped += len(rows)
        samplings = [r.request.sampling for r in rows]
        tokens = next_tokens(logits, samplings, [r.generator for r in rows])
        stops = set(self.loaded.stop_ids)
        for row, token in zip(rows, tokens, strict=True):
            if row.request.cancelled:
                continue
            if token in stops and not row.request.sampling.ignore_eos:
                self._finish(row, "stop")
                continue
            row.generated += 1
            row.pending = token
            with self._tokenizer:
                delta = row.text.push(token)
            if delta:
                self._send(row, Event(text=delta))
            total = len(row.request.ids) + row.generated
            if row.text.stopped:
                self._finish(row, "stop")
            elif row.generated >= row.request.sampling.max_tokens or total >= self.context_length:
                self._finish(row, "length")

    def _finish(self, row: _Row, reason: str) -> None:
        with self._tokenizer:
            rest = row.text.flush()
        self._send(row, Event(rest, reason, row.generated))
        row.done = True
        self.stats.finished += 1

    def _send(self, row: _Row, event: Event) -> None:
        try:
            row.request.sink(event)
        except Exception:  # the receiver is gone (its event loop closed): drop the row
            row.request.cancel()

    def _prune(self, batch: Batch, rows: list[_Row]) -> list[_Row]:
        keep = [i for i, r in enumerate(rows) if not r.done and not r.request.cancelled]
        self.stats.dropped += sum(1 for r in rows if r.request.cancelled and not r.done)
        batch.keep(keep)
        return [rows[i] for i in keep]
