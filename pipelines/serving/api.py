"""The OpenAI-compatible HTTP API over the engine: `GET /v1/models`, `POST /v1/chat/completions`
and `POST /v1/completions`, streamed as server-sent events or not, plus `GET /health` (the
engine's counters). Every error has OpenAI's body {"error": {"message", "type", "param", "code"}}
and a 4xx status (5xx only for the server's own failures); no request can stop the server."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from pipelines.serving.engine import Engine, Event
from pipelines.serving.sampling import Sampling

COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for the legacy completions endpoint


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )

    def body(self) -> dict[str, Any]:
        fields = {"message": self.message, "type": self.kind, "param": self.param}
        return {"error": {**fields, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


class Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Part] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class Common(BaseModel):
    """Fields both endpoints take; OpenAI fields this server does not use are accepted and
    ignored unless they would change the answer's shape (see UNSUPPORTED)."""

    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(Common):
    prompt: str | list[str]


# request fields that would ask for something this server does not do, and their neutral values
UNSUPPORTED = {"tools": (None, []), "logprobs": (None, False, 0), "echo": (None, False)}
UNSUPPORTED |= {"best_of": (None, 1), "suffix": (None, ""), "functions": (None, [])}


def create_app(
    engine: Engine,
    name: str,
    aliases: frozenset[str],
    max_tokens: int,
    api_key: str | None = None,
) -> FastAPI:
    """The app serving `engine` as model `name` (also answering to `aliases`); `max_tokens` is
    the reply length of a chat request that names none. With `api_key`, every request must
    carry it (`Authorization: Bearer <key>`, as OpenAI clients send it)."""
    app = FastAPI(title="pipelines serve", version="1")
    created = int(time.time())
    _install_error_handlers(app)
    if api_key:
        _require_key(app, api_key)

    def model_card() -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "pipelines"}

    def check(body: Common) -> None:
        if body.model != name and body.model not in aliases:
            raise ApiError(
                404,
                f"The model '{body.model}' does not exist; this server serves '{name}'",
                "model",
                "model_not_found",
            )
        for field, neutral in UNSUPPORTED.items():
            if (body.model_extra or {}).get(field) not in neutral:
                raise ApiError(400, f"'{field}' is not supported by this server", field)
        if body.n != 1:
            raise ApiError(400, "only n=1 is supported by this server", "n")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != name and model_id not in aliases:
            message = f"The model '{model_id}' does not exist; this server serves '{name}'"
            raise ApiError(404, message, "model", "model_not_found")
        return model_card()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, **dataclasses.asdict(engine.stats)}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Response:
        check(body)
        messages = [_message(m, i) for i, m in enumerate(body.messages)]
        try:
            ids = engine.encode_chat(messages)
        except Exception as e:  # the template refused them (e.g. a role it does not know)
            message = f"the chat template cannot render these messages: {e}"
            raise ApiError(400, message, "messages") from None
        asked = body.max_completion_tokens or body.max_tokens
        sampling = _sampling(body, len(ids), asked, max_tokens, engine.context_length, "messages")
        shape = Shape(True, f"chatcmpl-{uuid.uuid4().hex}", name, len(ids))
        return await _answer(engine, ids, sampling, shape, body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        check(body)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1 or not prompts[0]:
            raise ApiError(400, "give one non-empty prompt string per request", "prompt")
        ids = engine.encode_text(prompts[0])
        context = engine.context_length
        sampling = _sampling(
            body, len(ids), body.max_tokens, COMPLETIONS_MAX_TOKENS, context, "prompt"
        )
        shape = Shape(False, f"cmpl-{uuid.uuid4().hex}", name, len(ids))
        return await _answer(engine, ids, sampling, shape, body, request)

    return app


def _require_key(app: FastAPI, api_key: str) -> None:
    expected = f"Bearer {api_key}".encode()

    @app.middleware("http")
    async def authorize(request: Request, call_next: Any) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            message = "Incorrect or missing API key: send it as `Authorization: Bearer <key>`"
            return ApiError(401, message, None, "invalid_api_key").response()
        return await call_next(request)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return _validation_error(e).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        code = "not_found" if e.status_code == 404 else None
        return ApiError(e.status_code, str(e.detail), None, code).response()

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {e}", kind="server_error").response()


def _validation_error(e: RequestValidationError) -> ApiError:
    """FastAPI's 422 in OpenAI's shape (400, the offending field as `param`)."""
    first = e.errors()[0]
    if first["type"] == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return ApiError(400, f"the request body is not valid JSON ({detail})")
    where = [str(p) for p in first.get("loc", ()) if p != "body"]
    if not where:
        return ApiError(400, "the request body must be a JSON object")
    param = ".".join(where)
    return ApiError(400, f"{param}: {first['msg']}", param)


def _message(m: Message, i: int) -> dict[str, Any]:
    """A chat message as the template takes it: text content only."""
    if m.content is None or isinstance(m.content, str):
        return {"role": m.role, "content": m.content or ""}
    if any(p.type != "text" for p in m.content):
        raise ApiError(400, "only text content parts are supported", f"messages.{i}.content")
    return {"role": m.role, "content": "".join(p.text or "" for p in m.content)}


def _sampling(
    body: Common, prompt: int, asked: int | None, default: int, context: int, param: str
) -> Sampling:
    """The request's sampling settings; a prompt and reply that cannot fit is refused here."""
    room = context - prompt
    if room <= 0 or (asked is not None and asked > room):
        raise ApiError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt + (asked or 1)} tokens ({prompt} in the {param}, {asked or 1} in the "
            "completion). Please reduce the length of the prompt or completion.",
            param,
            "context_length_exceeded",
        )
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    return Sampling(
        max_tokens=asked or min(default, room),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=tuple(s for s in stops if s),
        seed=body.seed,
        ignore_eos=body.ignore_eos,
    )


@dataclasses.dataclass
class Shape:
    """How one answer is written: chat or text completion, whole or in chunks."""

    chat: bool
    id: str
    model: str
    prompt_tokens: int
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    def head(self, chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        kind += ".chunk" if chunk and self.chat else ""
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def usage(self, completion: int) -> dict[str, int]:
        total = self.prompt_tokens + completion
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion} | {
            "total_tokens": total
        }

    def whole(self, text: str, finish: str | None, completion: int) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {**self.head(False), "choices": [choice], "usage": self.usage(completion)}

    def chunk(self, text: str | None, finish: str | None = None, role: bool = False) -> dict:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if self.chat:
            delta = {"role": "assistant"} if role else {}
            choice["delta"] = delta | ({"content": text} if text is not None else {})
        else:
            choice["text"] = text or ""
        return {**self.head(True), "choices": [choice]}


async def _answer(
    engine: Engine, ids: list[int], sampling: Sampling, shape: Shape, body: Common, request: Request
) -> Response:
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _events(engine, ids, sampling, None)  # Starlette cancels it on disconnect
        return StreamingResponse(_sse(events, shape, usage), media_type="text/event-stream")
    parts, last = [], None
    async for event in _events(engine, ids, sampling, request):
        if event.error:
            raise ApiError(500, event.error, kind="server_error")
        parts.append(event.text)
        last = event
    if last is None:  # the client went away; nobody reads this
        return Response(status_code=499)
    completion = shape.whole("".join(parts), last.finish_reason, last.completion_tokens)
    return JSONResponse(completion)


async def _events(
    engine: Engine, ids: list[int], sampling: Sampling, request: Request | None
) -> AsyncIterator[Event]:
    """One request's events from the engine thread; leaving early (a disconnected client, or
    `request` seen disconnected while waiting) drops its row."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Event] = asyncio.Queue()
    handle = engine.submit(ids, sampling, lambda e: loop.call_soon_threadsafe(inbox.put_nowait, e))
    try:
        while True:
            if request is None:
                event = await inbox.get()
            else:  # nothing cancels a plain request when its client leaves: look
                try:
                    event = await asyncio.wait_for(inbox.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
            yield event
            if event.done:
                return
    finally:
        handle.cancel()


async def _sse(events: AsyncIterator[Event], shape: Shape, usage: bool) -> AsyncIterator[str]:
    """Server-sent events: a first chunk (the role), one per text delta, a last one with the
    finish reason, the usage chunk when asked, then [DONE]."""

    def data(value: Any) -> str:
        return f"data: {json.dumps(value)}\n\n"

    with_usage = {"usage": None} if usage else {}
    if shape.chat:
        yield data(shape.chunk("", role=True) | with_usage)
    async for event in events:
        if event.error:
            body = ApiError(500, event.error, kind="server_error").body()
            yield data(body)
            break
        if event.text:
            yield data(shape.chunk(event.text) | with_usage)
        if event.done:
            yield data(shape.chunk(None, event.finish_reason) | with_usage)
            if usage:
                tokens = shape.usage(event.completion_tokens)
                yield data({**shape.head(True), "choices": [], "usage": tokens})
    yield "data: [DONE]\n\n"
