"""Each fine-tuning method on the tiny model (CPU): what is meant to train changed, the rest did
not, the loss is finite, and the artifact reloads on its own to the model that was trained."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from stages.base import Context
from stages.model.loading import load_model
from stages.tokenize import TokenizeConfig, TokenizeStage
from tests.training import DEMO, base_and_data, run_sft

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return base_and_data(tmp_path_factory.mktemp("methods"), max_samples=64)


TRAINED: dict[str, object] = {}


@pytest.fixture(autouse=True)
def keep_trained_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remember the in-memory model the stage saves, to compare with what reloads."""
    import stages.model.adapters as adapters

    real = adapters.save_trained

    def spy(model: object, *args: object) -> None:
        TRAINED["model"] = model
        real(model, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(adapters, "save_trained", spy)


def train(prepared: tuple[Path, Path], tmp_path: Path, **overrides: object) -> tuple[Context, Path]:
    base, data = prepared
    ctx = run_sft(base, data, tmp_path / "out", **overrides)
    assert math.isfinite(ctx.metrics["train_loss"])
    return ctx, base


def state(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not before[k].equal(after[k])}


def assert_reload_matches(ctx: Context, base: Path) -> None:
    """The artifact, reloaded on its own through the shared loader (an adapter on the untouched
    base), gives the logits of the model that was trained, and generates."""
    import torch

    ids = torch.tensor([[5, 9, 14, 20, 33, 41]])
    trained = TRAINED["model"].eval()  # type: ignore[attr-defined]
    reloaded = load_model(ctx.out, resolve=lambda key: base).eval()
    plain = load_model(base, resolve=lambda key: base).eval()
    with torch.no_grad():
        want = trained(ids).logits
        assert torch.allclose(reloaded(ids).logits, want, atol=1e-5)
        assert not torch.allclose(plain(ids).logits, want, atol=1e-4)  # training moved it
        out = reloaded.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
        assert out.shape == (1, ids.shape[1] + 4) or out[0, -1].item() in _eos(reloaded)


def _eos(model: object) -> set[int]:
    """The ids generation may stop at early (the template's end-of-turn tokens)."""
    unwrap = getattr(model, "get_base_model", lambda: model)
    eos = unwrap().generation_config.eos_token_id  # type: ignore[attr-defined]
    return set(eos if isinstance(eos, list) else [eos])


def test_full_trains_every_parameter(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    ctx, base = train(prepared, tmp_path, finetuning_type="full")
    before, after = state(base / "model.safetensors"), state(ctx.out / "model.safetensors")
    assert changed(before, after) == set(before)
    assert_reload_matches(ctx, base)


def test_freeze_trains_only_the_chosen_layers_and_modules(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    ctx, base = train(
        prepared,
        tmp_path,
        finetuning_type="freeze",
        freeze_trainable_layers=1,
        freeze_trainable_modules=["mlp"],
        freeze_extra_modules=["model.norm"],
    )
    before, after = state(base / "model.safetensors"), state(ctx.out / "model.safetensors")
    assert changed(before, after) == {
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
    }
    assert_reload_matches(ctx, base)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"use_rslora": True},
        {"use_dora": True},
        {"pissa_init": True},
        {"loraplus_lr_ratio": 16.0},
    ],
    ids=["lora", "rslora", "dora", "pissa", "loraplus"],
)
def test_lora_variants_train_the_adapter_only(
    prepared: tuple[Path, Path], tmp_path: Path, variant: dict
) -> None:
    ctx, base = train(prepared, tmp_path, finetuning_type="lora", lora_rank=4, **variant)
    assert json.loads((ctx.out / "model.json").read_text()) == {
        "format": "adapter",
        "base": "base-key",
    }
    adapter = state(ctx.out / "adapter_model.safetensors")
    lora_b = [k for k in adapter if "lora_B" in k]
    assert lora_b and all(
        adapter[k].abs().sum() > 0 for k in lora_b
    )  # B starts at zero (not PiSSA)
    assert not (ctx.out / "model.safetensors").exists()  # the base is not copied
    assert_reload_matches(ctx, base)


def test_additional_target_modules_train_in_full(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    ctx, base = train(
        prepared, tmp_path, finetuning_type="lora", lora_rank=4, additional_target=["lm_head"]
    )
    adapter = state(ctx.out / "adapter_model.safetensors")
    assert any("lm_head" in k and "lora" not in k for k in adapter)
    assert_reload_matches(ctx, base)


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_an_adapter_on_a_quantised_base(
    prepared: tuple[Path, Path], tmp_path: Path, bits: int
) -> None:
    pytest.importorskip("bitsandbytes", reason="QLoRA needs the [quant] extra")
    ctx, base = train(
        prepared, tmp_path, finetuning_type="lora", lora_rank=4, quantization_bit=bits
    )
    trained = TRAINED["model"]
    layer = trained.base_model.model.model.layers[0].mlp.up_proj.base_layer  # type: ignore[attr-defined]
    assert type(layer).__name__ == ("Linear4bit" if bits == 4 else "Linear8bitLt")
    adapter = state(ctx.out / "adapter_model.safetensors")
    assert all(adapter[k].abs().sum() > 0 for k in adapter if "lora_B" in k)
    # the adapter applies to the full-precision base it names
    model = load_model(ctx.out, resolve=lambda key: base)
    assert type(model.base_model.model.model.layers[0].mlp.up_proj.base_layer).__name__ == "Linear"


def test_quantisation_without_lora_is_a_config_error() -> None:
    from compiler.errors import Issue
    from compiler.schema import validate

    issues: list[Issue] = []
    validate(
        {"stages": {"s": {"kind": "sft", "finetuning_type": "full", "quantization_bit": 4}}}, issues
    )
    assert [str(i) for i in issues] == ["stages.s.quantization_bit: needs finetuning_type: lora"]


def test_stop_words_of_the_template_reach_the_generation_config(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    base, data = prepared
    custom = tmp_path / "data"
    shutil.copytree(data, custom)
    template = json.loads((custom / "template.json").read_text())
    template["stop_words"] = [*template["stop_words"], "<|im_start|>"]
    (custom / "template.json").write_text(json.dumps(template))
    ctx, _ = train((base, custom), tmp_path, finetuning_type="lora", lora_rank=4)
    from stages.model.tiny import build_tokenizer

    tok = build_tokenizer()
    want = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|im_start|>")]
    model = load_model(ctx.out, resolve=lambda key: base)
    assert model.get_base_model().generation_config.eos_token_id == want


def test_validation_loss_is_evaluated_and_metrics_are_recorded(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    base, _ = prepared
    data = tmp_path / "data"
    data.mkdir()
    entry = {"name": "demo", "path": str(DEMO), "formatting": "alpaca"}
    tok_ctx = Context(
        "t", "k", data, tmp_path / "twork", {"model": base}, datasets={"dataset": [entry]}
    )
    TokenizeStage().run(tok_ctx, TokenizeConfig(max_samples=64, cutoff_len=96, val_size=16))
    ctx, _ = train(
        (base, data),
        tmp_path,
        finetuning_type="full",
        save_steps=1,
        early_stopping_patience=2,
        report_to="tensorboard",
    )
    m = ctx.metrics
    assert math.isfinite(m["eval_loss"]) and m["tokens_seen"] > 0 and m["tokens_per_s"] > 0
    assert m["peak_memory_mb"] > 0 and m["wall_s"] > 0
    log = [json.loads(line) for line in (ctx.out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "eval_loss" in e][:3] == [1, 2, 3]
    assert list((ctx.out / "tensorboard").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_rope_scaling_and_attention_choice_reach_the_trained_model(
    prepared: tuple[Path, Path], tmp_path: Path, method: str
) -> None:
    scaling = {"rope_type": "linear", "factor": 2.0}
    ctx, base = train(
        prepared,
        tmp_path,
        finetuning_type=method,
        lora_rank=4,
        rope_scaling=scaling,
        attn_implementation="eager",
    )
    trained = TRAINED["model"]
    inner = trained.get_base_model() if method == "lora" else trained  # type: ignore[attr-defined]
    assert inner.config._attn_implementation == "eager"
    assert inner.model.rotary_emb.rope_type == "linear"
    reloaded = load_model(ctx.out, resolve=lambda key: base)
    inner = reloaded.get_base_model() if method == "lora" else reloaded
    assert inner.model.rotary_emb.rope_type == "linear"  # kept with the artifact
    assert_reload_matches(ctx, base)


def test_length_grouped_batches_train(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    ctx, base = train(prepared, tmp_path, finetuning_type="full", group_by_length=True)
    assert ctx.metrics["steps"] == 3 and ctx.metrics["tokens_seen"] > 0


def test_llama_pro_trains_only_the_inserted_blocks(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    ctx, base = train(prepared, tmp_path, finetuning_type="freeze", llama_pro_blocks=2)
    before, after = state(base / "model.safetensors"), state(ctx.out / "model.safetensors")
    config = json.loads((ctx.out / "config.json").read_text())
    assert config["num_hidden_layers"] == 4  # 2 layers, a new block after each
    # the originals moved to indices 0 and 2, unchanged; the new blocks 1 and 3 trained
    for old, new in ((0, 0), (1, 2)):
        for name, tensor in before.items():
            if f".layers.{old}." in name:
                assert after[name.replace(f".layers.{old}.", f".layers.{new}.")].equal(tensor)
    for new in (1, 3):  # they started as the identity (zeroed output projections) and trained
        assert after[f"model.layers.{new}.mlp.down_proj.weight"].abs().sum() > 0
        assert after[f"model.layers.{new}.self_attn.o_proj.weight"].abs().sum() > 0
    assert after["model.embed_tokens.weight"].equal(before["model.embed_tokens.weight"])
    assert_reload_matches(ctx, base)


@pytest.mark.parametrize("setting", [True, False])
def test_gradient_checkpointing_reaches_the_model(
    prepared: tuple[Path, Path], tmp_path: Path, setting: bool
) -> None:
    ctx, _ = train(prepared, tmp_path, finetuning_type="full", gradient_checkpointing=setting)
    assert TRAINED["model"].is_gradient_checkpointing is setting  # type: ignore[attr-defined]
    assert ctx.metrics["gradient_checkpointing"] is setting


def test_bf16_lora_trains_on_a_cpu(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    """`precision: bf16` without a GPU trains under bf16 autocast (transformers refuses bf16
    on a CPU unless told so), the frozen base held in bf16 and the adapter in fp32; the saved
    adapter is the trained one, in fp32, and reloads onto the fp32 base."""
    import torch

    import stages.model.adapters as adapters

    calls: list[bool] = []
    real = adapters.autocast_inputs
    spy = lambda model, on: calls.append(on) or real(model, on)  # noqa: E731
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adapters, "autocast_inputs", spy)
        ctx, base = train(prepared, tmp_path, finetuning_type="lora", precision="bf16")
    assert calls == [True, False]  # autocast casts the adapters' inputs in training, PEFT after
    trained = dict(TRAINED["model"].named_parameters())  # type: ignore[attr-defined]
    frozen = {p.dtype for n, p in trained.items() if "lora_" not in n}
    assert frozen == {torch.bfloat16}
    lora = {n: p for n, p in trained.items() if "lora_" in n}
    assert lora and {p.dtype for p in lora.values()} == {torch.float32}
    assert any(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)  # it trained
    weights = state(ctx.out / "adapter_model.safetensors")
    assert weights and {w.dtype for w in weights.values()} == {torch.float32}
    reloaded = dict(load_model(ctx.out, resolve=lambda key: base).named_parameters())
    assert {p.dtype for p in reloaded.values()} == {torch.float32}
    for name, param in lora.items():
        assert torch.equal(reloaded[name], param), name


def test_fp16_without_a_gpu_is_a_user_error(tmp_path: Path) -> None:
    from stages.base import UserError
    from stages.model.training import training_args
    from stages.sft import SftConfig

    ctx = Context("sft", "k", tmp_path / "out", tmp_path / "work", {})
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        training_args(ctx, SftConfig(precision="fp16"), has_eval=False)
