"""The offline preference stages (dpo, kto, orpo, simpo) on the tiny model (CPU, a few steps each,
through each stage's run()): the reference is the sft policy they start from, what trains moved
and nothing else did, the artifact reloads and generates; and the dpo pipeline from the CLI. The compiler's
refusals: tests/test_preference_compile.py.
"""

from __future__ import annotations

import json
import math
import shutil
from functools import cache
from pathlib import Path

import pytest

from stages.base import Context, UserError
from stages.dpo import DpoConfig, DpoStage
from stages.kto import KtoConfig, KtoStage
from stages.kto_data import KtoDataConfig, KtoDataStage
from stages.model.loading import load_model
from stages.orpo import OrpoConfig, OrpoStage
from stages.pairs import PairsConfig, PairsStage
from stages.simpo import SimpoConfig, SimpoStage
from tests.cli import pipelines
from tests.training import SHORT, base_and_data, run_sft

DEMO = Path(__file__).resolve().parent.parent / "stages" / "data" / "demo"
PREFERENCE = {
    "name": "demo_preference",
    "path": str(DEMO / "preference.jsonl"),
    "formatting": "alpaca",
    "ranking": True,
    "columns": {
        "prompt": "instruction",
        "query": "input",
        "chosen": "chosen",
        "rejected": "rejected",
    },
}
KTO = {
    "name": "demo_kto",
    "path": str(DEMO / "kto.jsonl"),
    "formatting": "alpaca",
    "columns": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "kto_tag": "label",
    },
}
STEPS = {**SHORT, "per_device_train_batch_size": 4}


class Prepared:
    """The tiny base, an sft run of each method on it, and the preference and KTO data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base, sft_data = base_and_data(root)
        self.pairs = self._data(PairsStage(), PairsConfig(max_samples=40, val_size=8), PREFERENCE)
        self.kto = self._data(KtoDataStage(), KtoDataConfig(max_samples=40), KTO)
        keys = {"base-key": self.base}
        resolve = keys.__getitem__
        self.sft_full = run_sft(self.base, sft_data, root / "sft-full", finetuning_type="full").out
        self.sft_lora = run_sft(
            self.base, sft_data, root / "sft-lora", resolve=keys, finetuning_type="lora"
        ).out
        keys.update({"sft-full": self.sft_full, "sft-lora": self.sft_lora})
        self.resolve = resolve

    def _data(self, stage: object, cfg: object, entry: dict) -> Path:
        out = self.root / entry["name"]
        out.mkdir()
        ctx = Context("d", "k", out, self.root / "dwork", {"model": self.base})
        ctx.datasets = {"dataset": [entry]}
        stage.run(ctx, cfg)  # type: ignore[attr-defined]
        return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return Prepared(tmp_path_factory.mktemp("preference"))


def run(
    prepared: Prepared,
    stage: object,
    cfg: object,
    model: str,
    ref: str | None = None,
    data: Path | None = None,
    name: str = "",
) -> Context:
    """One stage run from the artifact of key `model` (ref_model: key `ref`, default the same)."""
    out = prepared.root / (name or f"{type(stage).__name__}-{model}-{ref}")
    out.mkdir()
    ref = ref or model
    inputs = {"model": prepared.resolve(model), "data": data or prepared.pairs}
    keys = {"model": model}
    if hasattr(stage, "inputs") and "ref_model" in stage.inputs:  # type: ignore[attr-defined]
        inputs["ref_model"], keys["ref_model"] = prepared.resolve(ref), ref
    ctx = Context(
        out.name,
        out.name,
        out,
        out.parent / f"{out.name}-work",
        inputs,
        input_keys=keys,
        resolve=prepared.resolve,
    )
    stage.run(ctx, cfg)  # type: ignore[attr-defined]
    assert math.isfinite(ctx.metrics["train_loss"])
    return ctx


DPO_CASES = {
    "full": ("sft-full", {"finetuning_type": "full"}),
    "full-precomputed": ("sft-full", {"finetuning_type": "full", "precompute_ref_log_probs": True}),
    "lora-continued": ("sft-lora", {"finetuning_type": "lora"}),
    "lora-new": ("sft-full", {"finetuning_type": "lora"}),
    "lora-bf16": ("sft-lora", {"finetuning_type": "lora", "precision": "bf16"}),
}


@cache
def dpo_run(prepared: Prepared, case: str) -> Context:
    model, cfg = DPO_CASES[case]
    return run(prepared, DpoStage(), DpoConfig(**{**STEPS, **cfg}), model, name=f"dpo-{case}")


@cache
def kto_run(prepared: Prepared) -> Context:
    cfg = KtoConfig(**{**STEPS, "finetuning_type": "full"})
    return run(prepared, KtoStage(), cfg, "sft-full", data=prepared.kto, name="kto")


def first_step(ctx: Context) -> dict:
    return json.loads((ctx.out / "train_log.jsonl").read_text().splitlines()[0])


def state(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not before[k].equal(after[k])}


def assert_generates(ctx: Context, prepared: Prepared) -> object:
    """The artifact reloads on its own through the shared loader and generates."""
    import torch

    model = load_model(ctx.out, prepared.resolve).eval()
    ids = torch.tensor([[5, 9, 14, 20, 33, 41]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    return model


def assert_adapter_only_trained(ctx: Context, prepared: Prepared, start: dict | None) -> None:
    """A LoRA artifact: only adapter tensors, every lora_B moved (from zero, or from the adapter
    it continues), and the reloaded model's base weights are the base's, untouched."""
    adapter = state(ctx.out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    lora_b = [k for k in adapter if "lora_B" in k]
    moved = changed(start, adapter) if start else {k for k in adapter if adapter[k].any()}
    assert lora_b and set(lora_b) <= moved
    assert_base_untouched(ctx, prepared, prepared.base)


def assert_base_untouched(ctx: Context, prepared: Prepared, base: Path) -> None:
    """The reloaded adapter's frozen weights are exactly those of the model it adapts."""
    reloaded = load_model(ctx.out, prepared.resolve).get_base_model().state_dict()
    want = load_model(base, prepared.resolve).state_dict()
    frozen = {k: v for k, v in reloaded.items() if "lora_" not in k}
    assert {k.replace(".base_layer", "") for k in frozen} == set(want)
    for name, tensor in frozen.items():
        assert tensor.equal(want[name.replace(".base_layer", "")]), name


@pytest.mark.parametrize("case", list(DPO_CASES))
def test_dpo_reference_is_the_sft_policy_at_step_zero(prepared: Prepared, case: str) -> None:
    """Before the first update the policy is its reference: implicit rewards 0, loss log 2."""
    step = first_step(dpo_run(prepared, case))
    assert step["step"] == 1
    assert step["loss"] == pytest.approx(math.log(2), abs=1e-5)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert step[name] == pytest.approx(0.0, abs=1e-6)


def test_training_writes_nothing_into_the_data_artifacts(prepared: Prepared) -> None:
    """TRL maps the rows and caches precomputed reference log-probabilities: in memory and in a
    temporary directory, never beside the immutable data artifact's files."""
    dpo_run(prepared, "full-precomputed")
    kto_run(prepared)
    for data in (prepared.pairs, prepared.kto):
        for split in ("train", "validation"):
            if (data / split).exists():
                assert not list((data / split).glob("cache-*")), data / split


def test_dpo_full_trains_every_parameter(prepared: Prepared) -> None:
    ctx = dpo_run(prepared, "full")
    before = state(prepared.sft_full / "model.safetensors")
    assert changed(before, state(ctx.out / "model.safetensors")) == set(before)
    assert {"rewards_margins", "rewards_accuracies", "eval_rewards_margins"} <= set(ctx.metrics)
    assert_generates(ctx, prepared)


def test_dpo_lora_continues_the_sft_adapter_and_saves_only_it(prepared: Prepared) -> None:
    """TRL scores the reference with a frozen copy of the continued adapter ("ref"); the
    artifact holds the trained adapter alone, on the base the sft adapter names."""
    ctx = dpo_run(prepared, "lora-continued")
    assert json.loads((ctx.out / "model.json").read_text()) == {
        "format": "adapter",
        "base": "base-key",
    }
    assert not (ctx.out / "ref").exists()
    start = state(prepared.sft_lora / "adapter_model.safetensors")
    assert set(state(ctx.out / "adapter_model.safetensors")) == set(start)
    assert_adapter_only_trained(ctx, prepared, start)
    assert_generates(ctx, prepared)


def test_dpo_lora_on_full_weights_trains_a_new_adapter(prepared: Prepared) -> None:
    ctx = dpo_run(prepared, "lora-new")
    assert json.loads((ctx.out / "model.json").read_text())["base"] == "sft-full"
    adapter = state(ctx.out / "adapter_model.safetensors")
    assert all(adapter[k].any() for k in adapter if "lora_B" in k)  # from zero
    assert_base_untouched(ctx, prepared, prepared.sft_full)
    assert_generates(ctx, prepared)


def test_dpo_lora_trains_under_bf16_on_a_cpu(prepared: Prepared) -> None:
    """bf16 autocast over a bf16 frozen base: the adapter trains in fp32 and is saved so."""
    import torch

    ctx = dpo_run(prepared, "lora-bf16")
    adapter = state(ctx.out / "adapter_model.safetensors")
    assert {t.dtype for t in adapter.values()} == {torch.float32}
    start = state(prepared.sft_lora / "adapter_model.safetensors")
    assert_adapter_only_trained(ctx, prepared, start)
    assert_generates(ctx, prepared)


def test_dpo_scores_against_a_named_ref_model(prepared: Prepared) -> None:
    """ref_model naming another stage (here the base under the sft policy): the reference is
    that model, so the sft policy already has non-zero implicit rewards at step zero."""
    cfg = DpoConfig(**{**STEPS, "finetuning_type": "lora"})
    ctx = run(prepared, DpoStage(), cfg, "sft-full", ref="base-key", name="dpo-named-ref")
    step = first_step(ctx)
    assert abs(step["rewards/chosen"]) > 1e-3 and abs(step["rewards/rejected"]) > 1e-3


def test_a_ref_model_with_another_tokenizer_is_refused_before_training(
    prepared: Prepared, tmp_path: Path
) -> None:
    from stages.model.loading import load_tokenizer

    other = tmp_path / "other"
    shutil.copytree(prepared.sft_full, other)
    tokenizer = load_tokenizer(other)
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(other)
    (other / "manifest.json").write_text(json.dumps({"name": "other_sft"}))
    out = tmp_path / "out"
    out.mkdir()
    ctx = Context(
        "dpo",
        "k",
        out,
        tmp_path / "work",
        {"model": prepared.sft_full, "ref_model": other, "data": prepared.pairs},
        input_keys={"model": "sft-full", "ref_model": "other"},
        resolve=prepared.resolve,
    )
    with pytest.raises(UserError, match=r"ref_model 'other_sft' uses a different tokenizer from "):
        DpoStage().run(ctx, DpoConfig(**STEPS))
    assert not (out / "train_log.jsonl").exists()


def test_kto_data_rows_render_the_conversation_with_its_label(prepared: Prepared) -> None:
    from datasets import load_from_disk

    from stages.model.loading import load_tokenizer

    tokenizer = load_tokenizer(prepared.base)
    rows = load_from_disk(str(prepared.kto / "train"))
    lines = [json.loads(line) for line in (DEMO / "kto.jsonl").read_text().splitlines()[:40]]
    assert [r["label"] for r in rows] == [line["label"] for line in lines]
    first, line = rows[0], lines[0]
    prompt = tokenizer.decode(first["prompt_ids"])
    assert prompt.endswith("<|im_start|>assistant\n") and line["instruction"] in prompt
    assert tokenizer.decode(first["completion_ids"]).startswith(line["output"] + "<|im_end|>")


def test_kto_reference_is_the_sft_policy_and_full_weights_train(prepared: Prepared) -> None:
    """At step zero the policy is its reference: rewards and KL 0, each reply's loss 1 - sigmoid(0)."""
    ctx = kto_run(prepared)
    step = first_step(ctx)
    assert step["loss"] == pytest.approx(0.5, abs=1e-6)
    assert step["kl"] == pytest.approx(0.0, abs=1e-6)
    for name in ("rewards/chosen", "rewards/rejected"):
        assert step[name] == pytest.approx(0.0, abs=1e-6)
    before = state(prepared.sft_full / "model.safetensors")
    assert changed(before, state(ctx.out / "model.safetensors")) == set(before)
    assert "rewards_margins" in ctx.metrics
    assert_generates(ctx, prepared)


def test_orpo_trains_a_lora_adapter_without_a_reference(prepared: Prepared) -> None:
    cfg = OrpoConfig(**{**STEPS, "finetuning_type": "lora"})
    ctx = run(prepared, OrpoStage(), cfg, "sft-lora", name="orpo")
    assert "ref_model" not in OrpoStage.inputs
    start = state(prepared.sft_lora / "adapter_model.safetensors")
    assert_adapter_only_trained(ctx, prepared, start)
    assert {"rewards_margins", "eval_rewards_accuracies", "log_odds_ratio"} <= set(ctx.metrics)
    assert_generates(ctx, prepared)


def test_simpo_trains_full_weights_without_a_reference(prepared: Prepared) -> None:
    cfg = SimpoConfig(**{**STEPS, "finetuning_type": "full"})
    ctx = run(prepared, SimpoStage(), cfg, "sft-full", name="simpo")
    assert "ref_model" not in SimpoStage.inputs
    before = state(prepared.sft_full / "model.safetensors")
    assert changed(before, state(ctx.out / "model.safetensors")) == set(before)
    assert "rewards_margins" in ctx.metrics
    assert_generates(ctx, prepared)


@pytest.mark.slow
def test_dpo_pipeline_runs_from_the_cli_and_reruns_cached(tmp_path: Path) -> None:
    short = ["stages.sft.max_steps=10", "stages.dpo.max_steps=4", "stages.dpo.logging_steps=2"]
    result = pipelines("run", "+pipeline=dpo", *short, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    store = tmp_path / "store"
    (record,) = [json.loads(p.read_text()) for p in (store / "runs").glob("*.json")]
    assert {k: v["status"] for k, v in record["stages"].items()} == {
        "base": "ran",
        "tokenize:demo_sft": "ran",
        "pairs:demo_preference": "ran",
        "sft": "ran",
        "dpo": "ran",
        "eval": "ran",
        "export": "ran",
    }
    eval_key = record["stages"]["eval"]["key"]
    evaluated = json.loads((store / "artifacts" / "eval" / eval_key / "manifest.json").read_text())
    assert evaluated["inputs"]["model"]["name"] == "dpo"
    dpo = store / "artifacts" / "dpo" / record["stages"]["dpo"]["key"]
    manifest = json.loads((dpo / "manifest.json").read_text())
    sft = {"name": "sft", "key": record["stages"]["sft"]["key"]}
    assert manifest["inputs"]["model"] == sft and manifest["inputs"]["ref_model"] == sft
    assert math.isfinite(manifest["metrics"]["rewards_margins"])
    again = pipelines("run", "+pipeline=dpo", *short, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    records = [json.loads(p.read_text()) for p in (store / "runs").glob("*.json")]
    (second,) = [r for r in records if r["id"] != record["id"]]
    assert {k: v["status"] for k, v in second["stages"].items()} == dict.fromkeys(
        record["stages"], "cached"
    )
