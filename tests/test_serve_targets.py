"""`serve`'s targets (stage names, key prefixes, directories, a stage's key under overrides), an
adapter served unmerged over its base from the store, and the API key, on the tiny sft artifact
in a store."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from runtime.store import Store
from stages.base import UserError
from tests.serving import LiveServer, chat, key_of, sft_fixture, store_fixture  # noqa: F401


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
