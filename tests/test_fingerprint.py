"""Keys: pinned digests, canonical JSON, and exactly which changes move which keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import stages
from compiler.digests import DigestCache
from compiler.errors import Issue
from compiler.fingerprint import canonical_json, fingerprint, key_of
from compiler.graph import build_graph
from compiler.schema import validate
from tests import fakes

VERSIONS = {"torch": "2.13.0", "transformers": "5.23.0"}


@pytest.fixture(autouse=True)
def fake_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(stages.KINDS, "fake", fakes.FakeStage)


def test_key_of_a_fixed_payload_is_pinned() -> None:
    payload = {"kind": "sft", "config": {"learning_rate": 1e-4, "lora_rank": 8}, "inputs": {}}
    assert canonical_json(payload) == (
        '{"config":{"learning_rate":0.0001,"lora_rank":8},"inputs":{},"kind":"sft"}'
    )
    assert key_of(payload) == "5327902c968c6c030273c0021f866668f0966517e6c89599dda49c300c9af2aa"


def test_canonical_json_ignores_key_order_and_refuses_what_it_cannot_hash() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1})
    with pytest.raises(TypeError, match="non-finite float at x"):
        canonical_json({"x": float("nan")})
    with pytest.raises(TypeError, match="cannot fingerprint set at a.b"):
        canonical_json({"a": {"b": {1, 2}}})
    with pytest.raises(TypeError, match="cannot fingerprint object at <root>"):
        canonical_json(object())
    with pytest.raises(TypeError, match=r"non-string key 1 at a\[0\]"):
        canonical_json({"a": [{1: "x"}]})


def keys(tmp_path: Path, stage_blocks: dict, *, datasets: dict | None = None, **kw: object) -> dict:
    issues: list[Issue] = []
    spec = validate({"stages": stage_blocks, "datasets": datasets or {}}, issues)
    graph = build_graph(spec, tmp_path, issues)
    fingerprint(
        graph,
        DigestCache(),
        tmp_path,
        versions=kw.get("versions", VERSIONS),
        cache_version=str(kw.get("cache_version", "")),
    )  # type: ignore[arg-type]
    return {n: graph.nodes[n]["node"].key for n in graph}


def chain(value: int = 1, note: str = "") -> dict:
    return {
        "a": {"kind": "fake"},
        "b": {"kind": "fake", "a": "a", "value": value, "note": note},
        "c": {"kind": "fake", "a": "b"},
        "side": {"kind": "fake", "a": "a"},  # a sibling of b: not downstream of it
    }


def test_volatile_fields_do_not_move_keys(tmp_path: Path) -> None:
    assert keys(tmp_path, chain(note="x")) == keys(tmp_path, chain(note="y"))


def test_a_semantic_change_moves_its_key_and_downstream_only(tmp_path: Path) -> None:
    old, new = keys(tmp_path, chain(1)), keys(tmp_path, chain(2))
    assert old["a"] == new["a"] and old["side"] == new["side"]
    assert old["b"] != new["b"] and old["c"] != new["c"]


def test_cache_version_and_library_versions_move_every_key(tmp_path: Path) -> None:
    base = keys(tmp_path, chain())
    bumped = keys(tmp_path, chain(), cache_version="2")
    upgraded = keys(tmp_path, chain(), versions={**VERSIONS, "torch": "2.14.0"})
    assert all(base[n] != bumped[n] and base[n] != upgraded[n] for n in base)


def test_editing_one_byte_of_a_data_file_moves_tokenize_and_sft(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    blocks, ds = {"sft": {"kind": "sft", "dataset": "d"}}, {"d": {"path": str(data)}}
    before = keys(tmp_path, blocks, datasets=ds)
    data.write_text(json.dumps({"instruction": "a", "output": "c"}) + "\n")
    after = keys(tmp_path, blocks, datasets=ds)
    assert before["base"] == after["base"]
    assert before["tokenize:d"] != after["tokenize:d"] and before["sft"] != after["sft"]


def test_volatile_fields_forwarded_to_tokenize_do_not_move_keys(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    ds = {"d": {"path": str(data), "formatting": "alpaca"}}
    one = keys(tmp_path, {"sft": {"kind": "sft", "dataset": "d"}}, datasets=ds)
    four = keys(tmp_path, {"sft": {"kind": "sft", "dataset": "d", "num_proc": 4}}, datasets=ds)
    longer = keys(tmp_path, {"sft": {"kind": "sft", "dataset": "d", "cutoff_len": 64}}, datasets=ds)
    assert one == four
    assert one["tokenize:d"] != longer["tokenize:d"] and one["base"] == longer["base"]


def test_the_data_path_itself_is_not_keyed(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    for p in (tmp_path / "d.jsonl", tmp_path / "x" / "d.jsonl"):
        p.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    blocks = {"sft": {"kind": "sft", "dataset": "d"}}
    one = keys(tmp_path, blocks, datasets={"d": {"path": "d.jsonl"}})
    two = keys(tmp_path, blocks, datasets={"d": {"path": "x/d.jsonl"}})
    assert one == two


def test_digest_cache_hashes_a_file_once_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import compiler.digests

    calls: list[Path] = []
    real = compiler.digests.sha256_file
    monkeypatch.setattr(compiler.digests, "sha256_file", lambda p: calls.append(p) or real(p))
    f = tmp_path / "big.bin"
    f.write_bytes(b"x" * 1000)
    cache = DigestCache(tmp_path / "cache.json")
    first = cache.file(f)
    assert cache.file(f) == first and len(calls) == 1
    cache.save()
    assert DigestCache(tmp_path / "cache.json").file(f) == first and len(calls) == 1
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cache.file(f) == first and len(calls) == 2  # re-hashed, same content


def test_a_reward_functions_module_is_in_the_key(tmp_path: Path) -> None:
    """Editing the code of a rule-based reward function changes the key of the stage using it."""
    import sys

    from compiler.compile import compile_pipeline

    (tmp_path / "my_rewards.py").write_text(
        "def r(prompts, completions, **kw):\n    return [1.0]\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        raw = {
            "datasets": {"p": {"path": "pkg://stages/data/demo/prompts.jsonl"}},
            "stages": {"g": {"kind": "grpo", "dataset": "p", "reward_funcs": ["my_rewards:r"]}},
        }
        first = compile_pipeline(raw, tmp_path, DigestCache()).graph.nodes["g"]["node"].key
        (tmp_path / "my_rewards.py").write_text(
            "def r(prompts, completions, **kw):\n    return [2.0]\n"
        )
        second = compile_pipeline(raw, tmp_path, DigestCache()).graph.nodes["g"]["node"].key
    finally:
        sys.path.remove(str(tmp_path))
    assert first != second
