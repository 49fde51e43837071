"""eval's lm-evaluation-harness on vLLM: which backend runs (asked, or auto), the model arguments
the harness gets (full weights; an adapter unmerged on its base, with its own tokenizer), and a
run that hands the harness to vLLM without loading the model itself. vLLM needs a CUDA GPU, so
here the harness's entry point is a stand-in that records what it was given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stages.base import Context, UserError
from stages.eval import EvalConfig, EvalStage
from stages.evaluation import harness
from stages.model import vllm_layout
from tests.model_dirs import model_dir


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    base = model_dir(tmp_path / "base")
    return {
        "base": base,
        "sft": model_dir(tmp_path / "sft", "adapter", rank=16, base="base-key"),
        "chain": model_dir(tmp_path / "chain", "adapter", rank=8, base="sft-key"),
    }


def resolver(models: dict[str, Path]) -> Any:
    return lambda key: models[key.removesuffix("-key")]


def test_the_backend_follows_the_config_and_what_this_machine_has(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    resolve, sft = resolver(models), models["sft"]
    assert harness.harness_backend(EvalConfig(lm_eval_backend="hf"), sft, resolve) == "hf"
    monkeypatch.setattr(vllm_layout, "vllm_ready", lambda: False)
    assert harness.harness_backend(EvalConfig(), sft, resolve) == "hf"
    monkeypatch.setattr(vllm_layout, "vllm_ready", lambda: True)
    assert harness.harness_backend(EvalConfig(), sft, resolve) == "vllm"
    assert harness.harness_backend(EvalConfig(), models["chain"], resolve) == "hf"
    monkeypatch.setattr(vllm_layout, "require_vllm", lambda key: None)
    with pytest.raises(UserError, match="^lm_eval_backend: vllm cannot load this model: an ad"):
        harness.harness_backend(EvalConfig(lm_eval_backend="vllm"), models["chain"], resolve)


@pytest.mark.skipif(vllm_layout.vllm_ready(), reason="the premise is a machine without vLLM")
def test_asking_for_vllm_where_it_cannot_start_is_a_user_error(models: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="^lm_eval_backend: "):
        harness.harness_backend(
            EvalConfig(lm_eval_backend="vllm"), models["base"], resolver(models)
        )


def test_vllm_gets_the_full_weights_and_the_adapter_unmerged(models: dict[str, Path]) -> None:
    resolve = resolver(models)
    assert harness.vllm_args(models["base"], resolve) == {
        "pretrained": str(models["base"]),
        "tokenizer": str(models["base"]),
        "batch_size": "auto",
    }
    assert harness.vllm_args(models["sft"], resolve) == {
        "pretrained": str(models["base"]),
        "tokenizer": str(models["sft"]),
        "lora_local_path": str(models["sft"]),
        "max_lora_rank": 16,
        "batch_size": "auto",
    }


def test_a_vllm_run_hands_the_harness_the_model_and_loads_nothing_itself(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lm_eval

    from stages.evaluation import run

    given: dict[str, Any] = {}

    def simple_evaluate(**kwargs: Any) -> dict[str, Any]:
        given.update(kwargs)
        return {"results": {"demo_exact": {"exact_match,none": 0.25, "alias": "demo_exact"}}}

    def no_load(*_: Any) -> None:
        raise AssertionError("the vLLM backend loads the model itself")

    monkeypatch.setattr(lm_eval, "simple_evaluate", simple_evaluate)
    monkeypatch.setattr(run, "_load", no_load)
    monkeypatch.setattr(vllm_layout, "require_vllm", lambda key: None)
    out = tmp_path / "out"
    out.mkdir()
    inputs = {"model": models["sft"]}
    ctx = Context("eval", "k", out, tmp_path / "work", inputs, resolve=resolver(models))
    ctx.datasets = {"dataset": [], "mc_dataset": []}
    cfg = EvalConfig(metrics=[], lm_eval_tasks=["demo_exact"], lm_eval_backend="vllm", limit=2)
    EvalStage().run(ctx, cfg)
    assert given["model"] == "vllm"
    assert given["model_args"]["lora_local_path"] == str(models["sft"])
    assert (given["tasks"], given["limit"]) == (["demo_exact"], 2)
    assert ctx.metrics["demo_exact/exact_match"] == 0.25
    assert ctx.metrics["demo_exact"] == 0.25  # the headline, under the task's name
