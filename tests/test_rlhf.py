"""The rlhf pipeline (pt -> sft -> rm -> ppo -> eval, export) through the CLI on the built-in tiny model: every
stage runs and wires as the file says, a rerun is all cache hits, and changing one ppo value
re-runs ppo and what reads it. Fewer steps than the shipped file (its full run is timed in the report of
benchmarks/ppo_curve.py); the wiring is the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import pipelines

pytestmark = pytest.mark.slow

SHORT = [
    "+pipeline=rlhf",
    "stages.pt.max_steps=4",
    "stages.sft.max_steps=4",
    "stages.rm.max_steps=4",
    "stages.ppo.max_steps=2",
    "stages.ppo.val_size=8",
]
NODES = [
    "base",
    "blocks:demo_text",
    "pt",
    "tokenize:demo_sft",
    "sft",
    "pairs:demo_preference",
    "rm",
    "prompts:demo_prompts",
    "ppo",
    "eval",
    "export",
]


def records(store: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((store / "runs").glob("*.json"))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("rlhf")
    result = pipelines("run", *SHORT, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return cwd


def test_rlhf_runs_the_chain_and_ppo_reads_sft_and_rm(trained: Path) -> None:
    store = trained / "store"
    (record,) = records(store)
    assert {k: v["status"] for k, v in record["stages"].items()} == dict.fromkeys(NODES, "ran")
    keys = {name: entry["key"] for name, entry in record["stages"].items()}
    ppo = store / "artifacts" / "ppo" / keys["ppo"]
    manifest = json.loads((ppo / "manifest.json").read_text())
    assert {role: v["name"] for role, v in manifest["inputs"].items()} == {
        "model": "sft",
        "ref_model": "sft",
        "reward_model": "rm",
        "data": "prompts:demo_prompts",
    }
    metrics = manifest["metrics"]
    assert metrics["steps"] == 2 and "eval_reward_mean" in metrics
    assert json.loads((ppo / "critic" / "model.json").read_text()) == {
        "format": "full",
        "head": "reward",
    }
    assert (ppo / "reward.png").read_bytes().startswith(b"\x89PNG")


def test_eval_judges_ppo_against_sft_with_the_reward_model(trained: Path) -> None:
    (record,) = records(trained / "store")[:1]
    key = record["stages"]["eval"]["key"]
    manifest = json.loads(
        (trained / "store" / "artifacts" / "eval" / key / "manifest.json").read_text()
    )
    assert {role: v["name"] for role, v in manifest["inputs"].items()} == {
        "model": "ppo",
        "reward_model": "rm",
        "baseline": "sft",
    }
    metrics = manifest["metrics"]
    assert 0 <= metrics["exact_match"] <= 1 and 0 <= metrics["win_rate"] <= 1
    assert isinstance(metrics["reward"], float)


def test_export_ships_the_ppo_policy_as_weights_gguf_and_modelfile(trained: Path) -> None:
    (record,) = records(trained / "store")[:1]
    export = trained / "store" / "artifacts" / "export" / record["stages"]["export"]["key"]
    facts = json.loads((export / "export.json").read_text())
    assert facts["source"]["key"] == record["stages"]["ppo"]["key"]
    assert (export / "model.safetensors").is_file()
    assert (export / "gguf" / "model-q8_0.gguf").read_bytes()[:4] == b"GGUF"
    assert "PARAMETER stop" in (export / "gguf" / "Modelfile").read_text()


def test_a_rerun_is_all_cached(trained: Path) -> None:
    result = pipelines("run", *SHORT, cwd=trained)
    assert result.returncode == 0, result.stderr
    last = records(trained / "store")[-1]
    assert {k: v["status"] for k, v in last["stages"].items()} == dict.fromkeys(NODES, "cached")


def test_changing_one_ppo_value_reruns_only_ppo(trained: Path) -> None:
    args = [*SHORT, "stages.ppo.learning_rate=5e-5"]
    plan = pipelines("plan", *args, cwd=trained)
    lines = plan.stdout.splitlines()
    status = {n: next(ln[len(n) + 2 :] for ln in lines if ln.startswith(f"{n}: ")) for n in NODES}
    assert status["ppo"] == "run (learning_rate 1e-4 -> 5e-5)", plan.stdout
    downstream = ("ppo", "eval", "export")
    assert status["eval"] == status["export"] == "run (upstream changed (ppo))", plan.stdout
    assert all(status[n] == "cached" for n in NODES if n not in downstream), plan.stdout
    result = pipelines("run", *args, cwd=trained)
    assert result.returncode == 0, result.stderr
    last = records(trained / "store")[-1]
    ran = {k for k, v in last["stages"].items() if v["status"] == "ran"}
    assert ran == {"ppo", "eval", "export"}
