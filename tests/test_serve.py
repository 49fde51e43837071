"""`serve`: the OpenAI-compatible API, tested with the official `openai` client against a live
server started through the CLI on a tiny sft artifact in a store (by its stage name). Targets,
adapters and the API key: tests/test_serve_targets.py."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from runtime.store import Store
from tests.serving import (  # noqa: F401 (the fixtures: the module's `sft` and `store`)
    LiveServer,
    chat,
    greedy_replies,
    key_of,
    sft_fixture,
    store_fixture,
)

PROMPTS = [
    "What is 2+3?",
    "hi",
    "Reverse the word: kalo",
    "Sort 321",
    "Calculate 8 - 85",
    "Put the digits in ascending order: 75433",
    "Count the letters",
    "Calculate 2 + 44",
]


@pytest.fixture(scope="module")
def server(store: Store) -> Iterator[LiveServer]:
    live = LiveServer("sft", "--store", str(store.root), cwd=store.root.parent)
    yield live
    live.interrupt()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def health(server: LiveServer) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())


def test_model_list_names_the_stage(client: openai.OpenAI, store: Store) -> None:
    assert [m.id for m in client.models.list().data] == ["sft"]
    assert client.models.retrieve("sft").owned_by == "pipelines"
    # the artifact's key is accepted as its name too
    reply = client.chat.completions.create(
        model=key_of("sft"), messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    assert reply.model == "sft"


def test_chat_answers_as_transformers_generate_does(client: openai.OpenAI, store: Store) -> None:
    path = store.find(key_of("sft"))
    assert path is not None
    expected = greedy_replies(path, [[{"role": "user", "content": p}] for p in PROMPTS[:3]], 30)
    for prompt, text in zip(PROMPTS[:3], expected, strict=True):
        reply = chat(client, prompt, temperature=0, max_tokens=30)
        assert reply.choices[0].message.content == text
        assert reply.choices[0].message.role == "assistant"
        assert reply.choices[0].finish_reason == ("length" if len(text) == 30 else "stop")
        assert reply.usage.completion_tokens == len(text)  # one character, one token
    assert any(len(t) > 1 for t in expected), "the model's replies are not worth comparing"


def test_stream_deltas_join_to_the_non_streamed_reply(client: openai.OpenAI) -> None:
    prompt = PROMPTS[2]
    whole = chat(client, prompt, temperature=0, max_tokens=40)
    chunks = list(
        chat(
            client,
            prompt,
            temperature=0,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in with_choices]
    assert "".join(deltas) == whole.choices[0].message.content
    assert len([d for d in deltas if d]) == whole.usage.completion_tokens > 1  # token by token
    assert with_choices[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage == whole.usage and not chunks[-1].choices


def test_completions_continue_a_raw_prompt_and_cut_at_stop_strings(
    client: openai.OpenAI, store: Store
) -> None:
    path = store.find(key_of("sft"))
    from stages.model.inference import greedy_generate, load_for_inference

    loaded = load_for_inference(path, lambda key: path)
    prompt = "The"
    ids = loaded.tokenizer(prompt)["input_ids"]
    (reference,) = greedy_generate(loaded, [ids], 30)
    text = loaded.tokenizer.decode(reference)
    reply = client.completions.create(model="sft", prompt=prompt, temperature=0, max_tokens=30)
    assert reply.choices[0].text == text
    assert reply.usage.prompt_tokens == len(ids)
    default = client.completions.create(model="sft", prompt=prompt, temperature=0)
    assert default.usage.completion_tokens <= 16  # OpenAI's default for completions
    # a stop string made of the first change of character, so a prefix of it is held back
    changes = [i for i in range(1, len(text)) if text[i] != text[i - 1]]
    assert changes, f"the reply {text!r} has no change of character to stop at"
    cut = changes[0]
    stop = text[cut - 1 : cut + 1]
    for stream in (False, True):
        out = client.completions.create(
            model="sft", prompt=prompt, temperature=0, max_tokens=30, stop=[stop], stream=stream
        )
        parts = [c.choices[0].text for c in out] if stream else [out.choices[0].text]
        assert "".join(parts) == text[: cut - 1]


def run_concurrently(fn: Callable[[int], str], n: int) -> list[str | None]:
    out: list[str | None] = [None] * n
    barrier = threading.Barrier(n)

    def work(i: int) -> None:
        barrier.wait()
        out[i] = fn(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


def test_eight_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    client: openai.OpenAI, server: LiveServer
) -> None:
    def greedy(i: int) -> str:
        return chat(client, PROMPTS[i], temperature=0, max_tokens=30).choices[0].message.content

    def sampled(i: int) -> str:  # seeded: 30 random-looking characters each
        options = {
            "temperature": 1.0,
            "seed": i,
            "max_tokens": 30,
            "extra_body": {"ignore_eos": True},
        }
        return chat(client, PROMPTS[i], **options).choices[0].message.content

    for fn in (greedy, sampled):
        alone = [fn(i) for i in range(8)]
        before = health(server)
        together = run_concurrently(fn, 8)
        after = health(server)
        assert together == alone
        steps = after["steps"] - before["steps"]
        assert (after["rows_stepped"] - before["rows_stepped"]) / steps > 1.5  # rows shared steps
        if fn is sampled:
            assert len(set(alone)) == 8  # a mix-up between rows could not go unseen


def raw_post(server: LiveServer, path: str, body: str) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


LONG = "x" * 300  # more characters (tokens) than the model's 256 positions
BAD_REQUESTS: dict[str, tuple[dict[str, Any], int, str | None, str | None]] = {
    # name: (request fields over a valid one, status, param, code)
    "unknown model": ({"model": "nope"}, 404, "model", "model_not_found"),
    "negative max_tokens": ({"max_tokens": -1}, 400, "max_tokens", None),
    "temperature too high": ({"temperature": 3}, 400, "temperature", None),
    "top_p zero": ({"top_p": 0}, 400, "top_p", None),
    "n above one": ({"n": 2}, 400, "n", None),
    "prompt over the context": (
        {"messages": [{"role": "user", "content": LONG}]},
        400,
        "messages",
        "context_length_exceeded",
    ),
    "reply over the context": ({"max_tokens": 250}, 400, "messages", "context_length_exceeded"),
    "no messages": ({"messages": []}, 400, "messages", None),
    "unknown role": (
        {"messages": [{"role": "robot", "content": "hi"}]},
        400,
        "messages.0.role",
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    client: openai.OpenAI, case: str
) -> None:
    fields, status, param, code = BAD_REQUESTS[case]
    request = {"model": "sft", "messages": [{"role": "user", "content": "hi"}], **fields}
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**request)
    error = caught.value
    assert error.status_code == status
    assert isinstance(error.body, dict) and set(error.body) == {"message", "type", "param", "code"}
    assert (error.param, error.code, error.type) == (param, code, "invalid_request_error")
    assert error.message  # a message a person can act on
    assert chat(client, "hi", max_tokens=2).choices[0].finish_reason in ("stop", "length")


def test_completions_refuse_a_prompt_over_the_context(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="sft", prompt=LONG)
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "prompt"


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"model": "sft", "messages": [', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("", "must be a JSON object"),
    ],
)
def test_malformed_json_is_a_400_with_an_openai_body(
    server: LiveServer, client: openai.OpenAI, body: str, message: str
) -> None:
    status, reply = raw_post(server, "/v1/chat/completions", body)
    assert status == 400
    assert set(reply["error"]) == {"message", "type", "param", "code"}
    assert message in reply["error"]["message"]
    assert chat(client, "hi", max_tokens=2).choices[0].finish_reason in ("stop", "length")


def test_a_client_that_disconnects_mid_stream_is_dropped(
    server: LiveServer, client: openai.OpenAI
) -> None:
    before = health(server)
    body = {
        "model": "sft",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 200,
        "ignore_eos": True,  # would run all 200 steps
        "temperature": 1.0,  # random characters: text from the first steps on
        "seed": 0,
        "stream": True,
    }
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    response = conn.getresponse()
    assert response.status == 200
    while True:  # up to the first chunk with text: the row is generating
        line = response.readline()
        assert line, "the stream ended early"
        if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["delta"].get(
            "content"
        ):
            break
    conn.sock.shutdown(socket.SHUT_RDWR)  # gone, as a client that crashed is
    response.close()
    conn.close()
    deadline = time.time() + 30
    while health(server)["running"] and time.time() < deadline:
        time.sleep(0.05)
    after = health(server)
    assert after["running"] == 0
    assert after["dropped"] == before["dropped"] + 1
    assert after["finished"] == before["finished"]  # dropped, not run to its end
    assert chat(client, "hi", max_tokens=2).choices[0].finish_reason in ("stop", "length")


def test_ctrl_c_stops_the_server_cleanly(server: LiveServer) -> None:
    assert server.interrupt() == 0
    assert "stopped" in "".join(server.output)
    assert "Traceback" not in "".join(server.output)
