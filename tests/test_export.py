"""The export stage: merged full weights that plain transformers loads and that answer as the
adapter model did; chains, dtype, shards, reward heads, QLoRA; GGUF files that transformers'
GGUF loader reads back to the same answers; the Ollama Modelfile; copies to export_dir. Its
rules, a failed push and the stage from the command line: tests/test_export_rules.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stages.base import Context, UserError
from stages.export import ExportConfig, ExportStage, copy_export
from stages.model.inference import Loaded, greedy_generate, load_for_inference, stop_ids
from tests.training import DEMO, SHORT, base_and_data, pairs_data, run_sft

NEW_TOKENS = 16
ROWS = [json.loads(line) for line in DEMO.read_text().splitlines()[:4]]
PROMPTS = [
    [{"role": "user", "content": r["instruction"] + (f"\n{r['input']}" if r["input"] else "")}]
    for r in ROWS
]
LOSSY_AGREE = 8  # bf16 / q8_0 GGUF: the first 8 tokens of every reply must match


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The tiny base, a LoRA sft on it, and a second LoRA trained on top of that one (a new
    adapter whose base is the first adapter: a chain)."""
    root = tmp_path_factory.mktemp("export")
    base, data = base_and_data(root)
    lora, chained = root / "lora", root / "chained"
    keys = {"base-key": base, "lora-key": lora, "chained-key": chained}
    run_sft(base, data, lora, finetuning_type="lora", max_steps=6)
    run_sft(lora, data, chained, "lora-key", keys, finetuning_type="lora", create_new_adapter=True)
    return SimpleNamespace(root=root, base=base, data=data, keys=keys)


def export(trained: SimpleNamespace, key: str, out: Path, **cfg: Any) -> Context:
    out.mkdir()
    ctx = Context(
        "export",
        "export-key",
        out,
        out.parent / f"{out.name}-work",
        {"model": trained.keys[key]},
        input_keys={"model": key},
        resolve=lambda k: trained.keys[k],
        log=logging.getLogger("test.export"),
    )
    ExportStage().run(ctx, ExportConfig(**cfg))
    return ctx


@pytest.fixture(scope="module")
def exported(trained: SimpleNamespace) -> Context:
    """The first LoRA merged, with every GGUF type, copied to a user folder."""
    user = trained.root / "user-dir"
    return export(
        trained,
        "lora-key",
        trained.root / "out",
        gguf=["f32", "f16", "bf16", "q8_0"],
        export_dir=str(user),
    )


def replies(loaded: Loaded) -> list[list[int]]:
    return greedy_generate(loaded, [loaded.prompt_ids(m) for m in PROMPTS], NEW_TOKENS)


def logits(loaded: Loaded) -> Any:
    """The next-token logits at every position of each prompt, concatenated: what greedy text
    is decided by, compared directly (the tiny model's replies are short and repetitive)."""
    import torch

    with torch.no_grad():
        rows = [loaded.model(torch.tensor([loaded.prompt_ids(m)])).logits[0] for m in PROMPTS]
    return torch.cat(rows).float()


def max_diff(a: Loaded, b: Loaded) -> float:
    return (logits(a) - logits(b)).abs().max().item()


def plain(folder: Path, gguf_file: str | None = None) -> Loaded:
    """A folder loaded by plain transformers (no code of ours), ready for `greedy_generate`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if gguf_file:
        folder = folder / "gguf"
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(str(folder), **extra).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), **extra)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Loaded(model, tokenizer, stop_ids(model, tokenizer), "causal_lm", folder)


def adapter_model(trained: SimpleNamespace, key: str) -> Loaded:
    return load_for_inference(trained.keys[key], lambda k: trained.keys[k])


@pytest.mark.slow
def test_merged_export_loads_with_plain_transformers_and_answers_as_the_adapter(
    trained: SimpleNamespace, exported: Context
) -> None:
    out = exported.out
    unmerged = adapter_model(trained, "lora-key")
    merged = plain(out)
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "model.json").read_text()) == {"format": "full"}
    assert merged.stop_ids == unmerged.stop_ids == [2]  # <|im_end|>, from generation_config
    assert merged.tokenizer.chat_template == unmerged.tokenizer.chat_template
    expected = replies(unmerged)
    assert any(expected), "the trained adapter says something"
    assert replies(merged) == expected
    assert max_diff(merged, unmerged) < 1e-5
    assert max_diff(unmerged, load_for_inference(trained.base, lambda k: trained.base)) > 1e-2
    facts = json.loads((out / "export.json").read_text())
    assert facts["source"] == {"key": "lora-key", "chain": ["lora-key", "base-key"]}
    assert facts["dtype"] == "float32" and exported.metrics["adapters_merged"] == 1


@pytest.mark.slow
def test_a_chain_of_adapters_merges_into_one_model(
    trained: SimpleNamespace, tmp_path: Path
) -> None:
    ctx = export(trained, "chained-key", tmp_path / "out")
    facts = json.loads((ctx.out / "export.json").read_text())
    assert facts["source"]["chain"] == ["chained-key", "lora-key", "base-key"]
    assert ctx.metrics["adapters_merged"] == 2
    unmerged, merged = adapter_model(trained, "chained-key"), plain(ctx.out)
    assert replies(merged) == replies(unmerged)
    assert max_diff(merged, unmerged) < 1e-5
    assert max_diff(unmerged, adapter_model(trained, "lora-key")) > 1e-2, "both adapters count"


@pytest.mark.slow
def test_float16_export_is_sharded_by_size_and_still_loads(
    trained: SimpleNamespace, tmp_path: Path
) -> None:
    from safetensors import safe_open

    ctx = export(trained, "lora-key", tmp_path / "out", export_dtype="float16", export_size="40KB")
    out = ctx.out
    shards = sorted(out.glob("model-*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(shards) >= 2 and ctx.metrics["shards"] == len(shards)
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert all(s.stat().st_size <= 40 * 1000 + 2048 for s in shards)  # the limit, plus header
    for shard in shards:
        with safe_open(str(shard), "pt") as f:
            assert {str(f.get_tensor(k).dtype) for k in f.keys()}  # noqa: SIM118 == {"torch.float16"}
    loaded = plain(out)
    assert loaded.model.dtype.is_floating_point and str(loaded.model.dtype) == "torch.float16"
    assert len(replies(loaded)) == len(PROMPTS)


@pytest.mark.slow
def test_reward_model_export_keeps_its_head(trained: SimpleNamespace, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from stages.model.reward import RewardScorer
    from stages.rm import RmConfig, RmStage

    pairs = pairs_data(tmp_path, trained.base)
    rm = tmp_path / "rm"
    rm.mkdir()
    resolve = {**trained.keys, "rm-key": rm}
    ctx = Context(
        "rm", "rm-key", rm, tmp_path / "rm-work", {"model": trained.base, "data": pairs},
        input_keys={"model": "base-key"}, resolve=lambda k: resolve[k],
    )  # fmt: skip
    RmStage().run(ctx, RmConfig(**{**SHORT, "finetuning_type": "lora"}))  # type: ignore[arg-type]
    trained_rm = SimpleNamespace(keys=resolve)
    out = export(trained_rm, "rm-key", tmp_path / "out").out
    assert json.loads((out / "model.json").read_text()) == {"format": "full", "head": "reward"}
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert model.config.num_labels == 1
    conversations = [
        m + [{"role": "assistant", "content": r["output"]}]
        for m, r in zip(PROMPTS, ROWS, strict=True)
    ]
    scorer = RewardScorer(rm, lambda k: resolve[k])
    expected = scorer(conversations)
    scorer.model = model  # the same rendering and pooling, on the exported weights
    got = scorer(conversations)
    assert got == pytest.approx(expected, abs=1e-5)
    assert len(set(round(s, 4) for s in got)) > 1, "the head tells replies apart"
    with pytest.raises(UserError, match="GGUF export is for language models"):
        export(trained_rm, "rm-key", tmp_path / "gguf", gguf=["f16"])


@pytest.mark.slow
def test_gguf_files_read_back_through_transformers_with_the_same_answers(
    exported: Context,
) -> None:
    import torch

    out = exported.out
    source = plain(out)
    expected = replies(source)
    facts = {g["type"]: g for g in json.loads((out / "export.json").read_text())["gguf"]}
    assert exported.metrics["gguf_tokenizer_roundtrip"] is True
    f32 = plain(out, "model-f32.gguf")
    text = source.tokenizer.apply_chat_template(PROMPTS[0], tokenize=False)
    assert f32.tokenizer(text)["input_ids"] == source.tokenizer(text)["input_ids"]
    assert f32.tokenizer.decode(source.tokenizer(text)["input_ids"]) == text
    ids = torch.tensor([source.prompt_ids(PROMPTS[0])])
    with torch.no_grad():
        diff = (f32.model(ids).logits - source.model(ids).logits).abs().max().item()
    assert diff < 1e-4, "f32 GGUF weights (q/k permuted and back) are the same model"
    assert replies(f32) == expected
    assert replies(plain(out, "model-f16.gguf")) == expected
    for lossy in ("bf16", "q8_0"):  # 8-bit mantissas / 8-bit blocks: the first tokens agree
        got = replies(plain(out, f"model-{lossy}.gguf"))
        assert [r[:LOSSY_AGREE] for r in got] == [r[:LOSSY_AGREE] for r in expected], lossy
    assert facts["q8_0"]["bytes"] < facts["f16"]["bytes"] == facts["bf16"]["bytes"]
    assert facts["f16"]["bytes"] < facts["f32"]["bytes"]
    assert facts["q8_0"]["tensors"]["Q8_0"] == 15  # every 2-D weight; norms stay f32


@pytest.mark.slow
def test_modelfile_carries_the_template_and_stop_tokens(exported: Context) -> None:
    text = (exported.out / "gguf" / "Modelfile").read_text()
    assert text.startswith("FROM ./model-f32.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in text.splitlines()
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert "<|im_start|>user\n{{ .Content }}<|im_end|>\n" in template
    assert '{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant\n{{ end }}' in template
    assert "SYSTEM" not in text  # the tiny template adds no default system prompt


@pytest.mark.slow
def test_export_dir_receives_the_export_and_a_rerun_replaces_it(
    exported: Context, tmp_path: Path
) -> None:
    user = Path(exported.out.parent / "user-dir")
    names = {str(p.relative_to(user)) for p in user.rglob("*")}
    assert names == {str(p.relative_to(exported.out)) for p in exported.out.rglob("*")}
    assert "gguf/Modelfile" in names
    assert (user / "model.safetensors").read_bytes() == (
        exported.out / "model.safetensors"
    ).read_bytes()
    (user / "gguf" / "model-f32.gguf").write_text("stale")
    (user / "notes.txt").write_text("mine")
    copy_export(exported.out, user)  # a previous export there: its files are replaced
    assert (user / "gguf" / "model-f32.gguf").stat().st_size > 1000
    assert (user / "notes.txt").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_text("someone else's")
    with pytest.raises(UserError, match="is not empty and holds no previous export"):
        copy_export(exported.out, other)


@pytest.mark.slow
def test_a_relative_export_dir_is_taken_from_the_current_directory(
    exported: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ExportStage.deliver(ExportConfig(export_dir="exports/mine"), exported.out)
    assert (tmp_path / "exports" / "mine" / "export.json").exists()


@pytest.mark.slow
def test_quantised_weights_are_not_merged_unless_dequantised(
    trained: SimpleNamespace, tmp_path: Path
) -> None:
    """A QLoRA adapter (4-bit nf4 base, bitsandbytes on the CPU): refused; with dequantize the
    export answers as the adapter on its 4-bit base does."""
    pytest.importorskip("bitsandbytes")
    from stages.model.adapters import quantization
    from stages.model.loading import load_model

    qlora = tmp_path / "qlora"
    keys = {**trained.keys, "qlora-key": qlora}
    run_sft(
        trained.base, trained.data, qlora, finetuning_type="lora", quantization_bit=4, max_steps=8
    )
    meta = json.loads((qlora / "model.json").read_text())
    assert meta["quantization"] == {"bits": 4, "type": "nf4", "double": True}
    with_keys = SimpleNamespace(keys=keys)
    with pytest.raises(
        UserError,
        match=r"the adapter qlora-key was trained on a 4-bit nf4 base \(QLoRA\).*set dequantize: true",
    ):
        export(with_keys, "qlora-key", tmp_path / "refused")
    ctx = export(with_keys, "qlora-key", tmp_path / "out", dequantize=True)
    assert json.loads((ctx.out / "export.json").read_text())["dequantized"] is True
    config = json.loads((ctx.out / "config.json").read_text())
    assert "quantization_config" not in config
    bnb = quantization(
        SimpleNamespace(quantization_bit=4, quantization_type="nf4", double_quantization=True)
    )
    as_trained = adapter_model(with_keys, "qlora-key")  # the adapter on its 4-bit base
    # train mode (no dropout here): bitsandbytes' CPU inference kernel wants rows of >= 64
    as_trained.model = load_model(qlora, lambda k: keys[k], quantization=bnb).train()
    full_base = adapter_model(with_keys, "qlora-key")  # ... and on the full-precision base
    exported = plain(ctx.out)
    assert max_diff(exported, as_trained) < 1e-4
    assert max_diff(full_base, as_trained) > 10 * max_diff(exported, as_trained)


def test_a_qwen2_model_reads_back_from_gguf_as_the_same_model(tmp_path: Path) -> None:
    """Qwen2's layout (q / k / v biases, no rotary permutation), on a tiny model built here."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from stages.model.loading import write_model_json
    from stages.model.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    base = tmp_path / "qwen2"
    model = Qwen2ForCausalLM(config)
    for name, p in model.named_parameters():  # biases are zero at init: give them values
        if name.endswith("bias"):
            torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(str(base))
    tokenizer.save_pretrained(str(base))
    write_model_json(base, "full")
    ctx = export(SimpleNamespace(keys={"q-key": base}), "q-key", tmp_path / "out", gguf=["f32"])
    source, f32 = plain(ctx.out).model, plain(ctx.out, "model-f32.gguf").model
    ids = torch.tensor([[1, 90, 88, 74, 87, 4, 77, 78, 2, 4, 1, 74]])  # weights only: transformers
    with torch.no_grad():  # gives a Qwen2 folder its own tokenizer class, whatever the vocab
        assert (f32(ids).logits - source(ids).logits).abs().max().item() < 1e-4
        greedy = {"max_new_tokens": 16, "do_sample": False, "eos_token_id": None}
        assert f32.generate(ids, **greedy).tolist() == source.generate(ids, **greedy).tolist()
