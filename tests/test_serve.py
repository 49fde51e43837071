"""`serve`: the OpenAI-compatible API, tested with the official `openai` client against a live
server started through the CLI on a tiny sft artifact in a store (by its stage name); targets and
the text streaming rules tested in-process."""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from runtime.store import Store
from stages.base import UserError
from tests.serving import LiveServer, chat_model, greedy_replies
from tests.training import run_sft

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


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def commit(store: Store, kind: str, name: str, payload: Path) -> Path:
    """`payload` committed as stage `name`'s artifact, as the executor commits one."""
    work = store.root / "work" / key_of(name) / "out"
    shutil.copytree(payload, work)
    path = store.commit(kind, key_of(name), work, {"name": name, "inputs": {}})
    store.remember_name(name, key_of(name), {})
    return path


@pytest.fixture(scope="module")
def sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chat_model(tmp_path_factory)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, sft: Path) -> Store:
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


@pytest.fixture(scope="module")
def server(store: Store) -> Iterator[LiveServer]:
    live = LiveServer("sft", "--store", str(store.root), cwd=store.root.parent)
    yield live
    live.interrupt()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def chat(client: openai.OpenAI, prompt: str, **options: Any) -> Any:
    messages = [{"role": "user", "content": prompt}]
    return client.chat.completions.create(model="sft", messages=messages, **options)


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


# ---- targets (in-process) and command-line refusals


def test_targets_resolve_stage_names_keys_and_directories(store: Store, sft: Path) -> None:
    from pipelines.serving.target import find_target

    by_name = find_target("sft", store.root, [])
    assert by_name.path == store.find(key_of("sft")) and by_name.name == "sft"
    assert find_target(key_of("sft")[:10], store.root, []).path == by_name.path
    # a directory inside a store takes its stage name; one outside, its folder name
    assert find_target(str(by_name.path), store.root, []).name == "sft"
    assert find_target(str(sft), store.root, []).name == "sft"  # the copy's source
    assert find_target(str(sft.parent / "base"), store.root, []).name == "base"
    with pytest.raises(UserError, match="no model directory, stage name or key prefix"):
        find_target("nope", store.root, [])


def test_an_adapter_is_served_unmerged_over_its_base_from_the_store(store: Store) -> None:
    from peft import PeftModel

    from pipelines.serving.cli import load_engine
    from pipelines.serving.sampling import Sampling
    from pipelines.serving.target import find_target

    target = find_target("tuned", store.root, [])
    assert target.resolve(key_of("base")) == store.find(key_of("base"))
    engine = load_engine(target, "cpu", 4)
    try:
        assert isinstance(engine.loaded.model, PeftModel)
        conversation = [{"role": "user", "content": "Sort 321"}]
        events = list(engine.stream(engine.encode_chat(conversation), Sampling(max_tokens=20)))
        text = "".join(e.text for e in events)
        expected = greedy_replies_over(target.path, target.resolve, conversation, 20)
        assert text == expected and events[-1].completion_tokens == len(expected)
    finally:
        engine.close()


def greedy_replies_over(path: Path, resolve: Any, conversation: list, max_new: int) -> str:
    from stages.model.inference import greedy_generate, load_for_inference

    loaded = load_for_inference(path, resolve)
    (ids,) = greedy_generate(loaded, [loaded.prompt_ids(conversation)], max_new)
    return loaded.tokenizer.decode(ids)


STAGE = [
    "+stages.tuned.kind=sft",
    "+stages.tuned.dataset=demo_sft",
    "+stages.tuned.finetuning_type=lora",
    "+stages.tuned.max_steps=2",
]


def test_with_overrides_a_stage_resolves_to_the_key_its_config_compiles_to(
    tmp_path: Path,
) -> None:
    from pipelines.commands import compile_config
    from pipelines.preview import compose
    from pipelines.serving.target import find_target

    store = Store(tmp_path / "store")
    with pytest.raises(UserError, match=r"not built yet .* python -m pipelines run \+stages"):
        find_target("tuned", store.root, STAGE)
    compiled, _, _ = compile_config(compose([*STAGE, f"store={store.root}"]), Path.cwd())
    key = compiled.graph.nodes["tuned"]["node"].key
    work = store.root / "work" / key / "out"
    work.mkdir(parents=True)
    (work / "model.json").write_text('{"format": "full"}')
    store.commit("sft", key, work, {"name": "tuned"})
    assert find_target("tuned", store.root, STAGE).path == store.find(key)
    with pytest.raises(UserError, match="not built yet"):  # another setting, another key
        find_target("tuned", store.root, [*STAGE[:-1], "+stages.tuned.max_steps=3"])
    with pytest.raises(UserError, match="no stage of that name"):
        find_target("tunde", store.root, STAGE)


def test_with_an_api_key_only_clients_that_send_it_are_answered(store: Store) -> None:
    live = LiveServer(
        "sft",
        "--store",
        str(store.root),
        cwd=store.root.parent,
        env={"PIPELINES_API_KEY": "s3cret"},
    )
    try:
        assert "API key required" in "".join(live.output)
        wrong = openai.OpenAI(base_url=live.url, api_key="guess", max_retries=0, timeout=60)
        with pytest.raises(openai.AuthenticationError) as e:
            wrong.models.list()
        assert e.value.status_code == 401
        conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
        conn.request("GET", "/v1/models")  # no key at all
        answer = conn.getresponse()
        assert answer.status == 401
        assert json.loads(answer.read())["error"]["code"] == "invalid_api_key"
        right = openai.OpenAI(base_url=live.url, api_key="s3cret", max_retries=0, timeout=60)
        assert [m.id for m in right.models.list().data] == ["sft"]
        assert chat(right, "Sort 321", max_tokens=4).choices[0].message is not None
    finally:
        assert live.interrupt() == 0
