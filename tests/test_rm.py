"""The rm stage on the tiny model: a scalar head on the upstream model, trained pairwise; the
artifact reloads with its head, and the one scoring function gives the model's own scores."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from stages.base import Context
from stages.model.loading import load_model, read_model_json
from stages.model.reward import RewardScorer
from stages.rm import RmConfig, RmStage
from tests.training import SHORT, base_and_data, pairs_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rm")
    base, _ = base_and_data(root, max_samples=8)
    return base, pairs_data(root, base)


def run_rm(prepared: tuple[Path, Path], out: Path, **cfg: object) -> Context:
    base, data = prepared
    out.mkdir()
    ctx = Context(
        "rm",
        "rm-key",
        out,
        out.parent / "work",
        {"model": base, "data": data},
        input_keys={"model": "base-key"},
        resolve=lambda key: base,
    )
    options = {**SHORT, "per_device_train_batch_size": 8, **cfg}
    RmStage().run(ctx, RmConfig(**options))  # type: ignore[arg-type]
    return ctx


@pytest.mark.parametrize("method", ["full", "lora"])
def test_rm_trains_the_head_and_reloads_with_it(
    prepared: tuple[Path, Path], tmp_path: Path, method: str
) -> None:
    base, data = prepared
    ctx = run_rm(prepared, tmp_path / "out", finetuning_type=method)
    out = ctx.out
    assert math.isfinite(ctx.metrics["train_loss"]) and 0 <= ctx.metrics["eval_accuracy"] <= 1
    assert read_model_json(out)["head"] == "reward"
    before = load_file(str(base / "model.safetensors"))
    if method == "lora":
        saved = load_file(str(out / "adapter_model.safetensors"))
        heads = [k for k in saved if ".score." in k]
        assert heads, "the scalar head is saved with the adapter"
        assert all(saved[k].abs().sum() > 0 for k in saved if "lora_B" in k), "every lora_B moved"
    else:
        saved = load_file(str(out / "model.safetensors"))
        assert "score.weight" in saved
        moved = {k for k in before if k in saved and not before[k].equal(saved[k])}
        assert any("layers" in k for k in moved), "full fine-tuning moves the decoder"
    reloaded = load_model(out, lambda key: base)  # the head comes from model.json
    model = reloaded.merge_and_unload() if method == "lora" else reloaded
    assert model.config.num_labels == 1 and model.score.weight.abs().sum() > 0


def test_rm_lora_trains_under_bf16_on_a_cpu(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    """bf16 over a bf16 frozen base: the adapter and the new head train in fp32, saved so."""
    import torch

    ctx = run_rm(prepared, tmp_path / "out", finetuning_type="lora", precision="bf16")
    assert math.isfinite(ctx.metrics["train_loss"]) and 0 <= ctx.metrics["eval_accuracy"] <= 1
    saved = load_file(str(ctx.out / "adapter_model.safetensors"))
    assert any(".score." in k for k in saved)
    assert {t.dtype for t in saved.values()} == {torch.float32}


def test_scoring_function_gives_the_models_scores(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    import torch
    from datasets import load_from_disk

    base, data = prepared
    ctx = run_rm(prepared, tmp_path / "out", finetuning_type="lora", max_steps=2)
    scorer = RewardScorer(ctx.out, lambda key: base)
    val = load_from_disk(str(data / "validation"))
    ids = [p + c for p, c in zip(val["prompt_ids"][:4], val["chosen_ids"][:4], strict=True)]
    batched = scorer.score_ids(ids, batch_size=4)  # padded batch
    with torch.no_grad():
        alone = [float(scorer.model(input_ids=torch.tensor([x])).logits[0, 0]) for x in ids]
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(alone), atol=1e-5, rtol=0)
    chats = [[{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]]
    assert len(scorer(chats)) == 1 and math.isfinite(scorer(chats)[0])


def test_rm_on_a_lora_sft_puts_its_head_on_the_merged_upstream(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    """rm with LoRA on top of an sft LoRA adapter: the upstream adapter is merged, the scalar
    head goes on the merged model, and the reward artifact reloads with it."""
    import torch

    from stages.model.loading import merged
    from tests.training import run_sft

    base, data = prepared
    sft = run_sft(base, base_and_data(tmp_path / "d", max_samples=8)[1], tmp_path / "sft")
    rm = tmp_path / "rm"
    rm.mkdir()
    keys = {"sft-key": sft.out, "base-key": base}
    ctx = Context(
        "rm",
        "k",
        rm,
        tmp_path / "rmw",
        {"model": sft.out, "data": data},
        input_keys={"model": "sft-key"},
        resolve=lambda key: keys[key],
    )
    RmStage().run(ctx, RmConfig(**{**SHORT, "finetuning_type": "lora"}))  # type: ignore[arg-type]
    assert read_model_json(rm)["base"] == "sft-key"
    upstream = merged(load_model(sft.out, lambda key: keys[key]))
    reward = load_model(rm, lambda key: keys[key])  # the rm adapter on sft merged + its head
    assert reward.config.num_labels == 1
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad(), reward.disable_adapter():  # under the adapter: sft's merged backbone
        under = reward.get_base_model().model(ids).last_hidden_state
    torch.testing.assert_close(under, upstream.model(ids).last_hidden_state)
