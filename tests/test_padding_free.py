"""Padding-free batches: the padded batch's examples in one row, and the padded batch's loss
(same normalisation) for full, LoRA and QLoRA, with and without gradient accumulation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from stages.data.collate import Collator, collate, padding_free
from stages.data.encode import IGNORE
from tests.sizes import SMALL
from tests.training import base_and_data, run_sft

ROWS = [  # lengths 7, 3, 5: the padded batch is 21 positions, the padding-free row 15
    {"input_ids": [5, 6, 7, 8, 9, 10, 11], "labels": [IGNORE, IGNORE, IGNORE, 8, 9, 10, 11]},
    {"input_ids": [12, 13, 14], "labels": [12, 13, 14]},  # trained from its first token
    {"input_ids": [15, 16, 17, 18, 19], "labels": [IGNORE, IGNORE, 17, 18, 19]},
]


def test_rows_are_concatenated_in_order_with_restarting_positions() -> None:
    batch = padding_free(ROWS, pad_id=0)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no mask, no padding
    assert batch["input_ids"].tolist() == [[i for r in ROWS for i in r["input_ids"]]]
    assert batch["position_ids"].tolist() == [[*range(7), *range(3), *range(5)]]
    # each row's first label is never predicted, as in the padded batch (labels shift per row)
    starts = [0, 7, 10]
    assert [batch["labels"][0, s].item() for s in starts] == [IGNORE] * 3
    assert batch["labels"][0, 8:10].tolist() == [13, 14]


def test_the_trained_pairs_are_the_padded_batchs_in_the_same_order() -> None:
    def pairs(batch: dict) -> list[tuple[int, int]]:
        ids, labels = batch["input_ids"], batch["labels"]
        keep = labels[:, 1:] != IGNORE
        return list(zip(ids[:, :-1][keep].tolist(), labels[:, 1:][keep].tolist(), strict=True))

    assert pairs(padding_free(ROWS, 0)) == pairs(collate(ROWS, 0))


def test_neat_packed_rows_keep_their_positions_and_equal_rows_stay_rows() -> None:
    neat = [
        {"input_ids": [5, 6, 7, 8], "labels": [IGNORE, 6, IGNORE, 8], "position_ids": [0, 1, 0, 1]},
        {"input_ids": [9, 10], "labels": [IGNORE, 10], "position_ids": [0, 1]},
    ]
    assert padding_free(neat, 0)["position_ids"].tolist() == [[0, 1, 0, 1, 0, 1]]
    same = [ROWS[0], {**ROWS[0], "input_ids": list(range(20, 27))}]
    batch = padding_free(same, 0)  # no padding to remove: a row mask would only add work
    assert batch["input_ids"].shape == (2, 7) and "attention_mask" in batch


def test_evaluation_batches_stay_padded(tmp_path: Path) -> None:
    """The Trainer weights each evaluation batch's mean loss by its rows: those stay padded."""
    from datasets import Dataset
    from transformers import TrainingArguments

    from stages.model.trainer import SparseLogitsTrainer

    free = Collator(pad_id=0, padding_free=True)
    assert free(ROWS)["input_ids"].shape == (1, 15)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=3,
        remove_unused_columns=False,  # as our stages run
        report_to=[],
        use_cpu=True,
    )
    trainer = SparseLogitsTrainer(
        model=_stub(), args=args, eval_dataset=Dataset.from_list(ROWS), data_collator=free
    )
    assert next(iter(trainer.get_eval_dataloader()))["input_ids"].shape == (3, 7)
    assert trainer.data_collator is free  # training batches stay padding-free


def _stub() -> object:
    """The smallest model a Trainer accepts."""
    import torch

    return torch.nn.Linear(1, 1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stages.model.tiny import build_model

    path = tmp_path_factory.mktemp("tiny")
    build_model(path, **SMALL)
    return path


def examples(n: int) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ids = torch.randint(3, 90, (6 + 5 * i,), generator=g).tolist()
        prompt = 0 if i == 2 else 2 + i  # one row trained from its first token
        out.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:]})
    return out


def load(model_dir: Path, method: str, attention: str) -> object:
    import torch
    from transformers import AutoModelForCausalLM

    from stages.model import segments

    options: dict = {}
    if method == "qlora":
        pytest.importorskip("bitsandbytes", reason="QLoRA needs the [quant] extra")
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32
        )
    segments.register()
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), attn_implementation=attention, **options
    ).train()
    model.config.use_cache = False
    if method != "full":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)  # B = 0 would hide A's gradients
    return model


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
@pytest.mark.parametrize("attention", ["sdpa_segments", "sdpa", "eager"])
def test_padding_free_loss_and_gradients_equal_the_padded_batchs(
    model_dir: Path, method: str, attention: str
) -> None:
    """Our sparse loss and the model's own, normalised by the accumulated batch's trained
    tokens (as the Trainer passes them) or averaged, on each attention path."""
    import torch

    from stages.model.trainer import sparse_loss

    rows = examples(4)
    model = load(model_dir, method, attention)
    causal = model.get_base_model() if method != "full" else model

    def run(batch: dict, items: int | None, sparse: bool) -> tuple[float, list]:
        model.zero_grad(set_to_none=True)
        if sparse:
            loss = sparse_loss(causal, batch, items)
        else:
            loss = model(**batch, **({"num_items_in_batch": items} if items else {})).loss
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return loss.item(), grads

    for items in (None, 61):
        for sparse in (True, False):
            want_loss, want = run(collate(rows, 0), items, sparse)
            got_loss, got = run(padding_free(rows, 0), items, sparse)
            assert got_loss == pytest.approx(want_loss, abs=1e-5)
            assert len(got) == len(want) > 0
            assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want, strict=True))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return base_and_data(tmp_path_factory.mktemp("padding-free"), max_samples=16)


def losses(ctx: object) -> list[float]:
    log = (ctx.out / "train_log.jsonl").read_text().splitlines()  # type: ignore[attr-defined]
    return [json.loads(line)["loss"] for line in log if '"loss"' in line]


def weights(ctx: object, method: str) -> dict:
    from safetensors.torch import load_file

    name = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    return load_file(str(ctx.out / name))  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_a_padding_free_run_trains_as_the_padded_run(
    prepared: tuple[Path, Path], tmp_path: Path, method: str
) -> None:
    """The sft stage, two optimizer steps of two accumulated batches of 4: the same losses,
    weights and non-padding token count as with padding_free: false."""
    import torch

    if method == "qlora":
        pytest.importorskip("bitsandbytes", reason="QLoRA needs the [quant] extra")
    base, data = prepared
    options = {
        "finetuning_type": "full" if method == "full" else "lora",
        "quantization_bit": 4 if method == "qlora" else None,
        "lora_rank": 4,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
    }
    padded = run_sft(base, data, tmp_path / "padded", padding_free=False, **options)
    free = run_sft(base, data, tmp_path / "free", **options)
    assert losses(free) == pytest.approx(losses(padded), abs=1e-5) and len(losses(free)) == 2
    want, got = weights(padded, method), weights(free, method)
    assert want.keys() == got.keys()
    assert all(torch.allclose(got[k], want[k], atol=1e-5) for k in want)
    assert free.metrics["tokens_seen"] == padded.metrics["tokens_seen"] > 0


@pytest.mark.slow
def test_neftune_falls_back_to_padded_batches_with_a_reason(
    prepared: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base, data = prepared
    with caplog.at_level(logging.INFO, logger="pipelines.stage"):
        run_sft(base, data, tmp_path / "out", max_steps=1, neftune_noise_alpha=5.0)
    off = [r.getMessage() for r in caplog.records if "padding_free off" in r.getMessage()]
    assert off == [
        "padding_free off: NEFTune scales its noise by the length of the row; "
        "batches are padded to their longest row"
    ]


def test_torch_compile_compiles_the_decoder_layers_in_place(model_dir: Path) -> None:
    """The model object stays (our sparse loss still finds the causal LM under it); `auto`
    leaves a CPU model uncompiled (no gain measured there)."""
    from stages.model.compile import compile_layers
    from stages.model.trainer import _plain_causal_lm

    model = load(model_dir, "lora", "sdpa")
    log = logging.getLogger("test")
    assert not compile_layers(model, "auto", log) and not compile_layers(model, False, log)
    assert compile_layers(model, True, log)
    layers = model.get_base_model().model.layers  # type: ignore[attr-defined]
    assert all(layer._compiled_call_impl is not None for layer in layers)

    class Unwrapped:  # the Trainer's accelerator and args, as _plain_causal_lm reads them
        accelerator = type("A", (), {"unwrap_model": staticmethod(lambda m: m)})()
        args = type("Args", (), {"use_liger_kernel": False})()

    assert _plain_causal_lm(Unwrapped(), model) is model.get_base_model()  # type: ignore[attr-defined]


def test_attention_per_example_only_for_one_row_of_whole_examples() -> None:
    import torch

    from stages.model.segments import _segment_starts

    q = torch.zeros(1, 4, 9, 8)
    attn = torch.nn.Module()  # a causal self-attention without a sliding window

    def starts(positions: list[int], query: torch.Tensor = q) -> list[int] | None:
        return _segment_starts(attn, query, query, {"position_ids": torch.tensor([positions])})

    assert starts([0, 1, 2, 0, 1, 0, 1, 2, 3]) == [0, 3, 5, 9]
    assert starts(list(range(9))) is None  # one example: SDPA's own causal path
    assert starts([0, 1, 2, 0, 1, 5, 6, 7, 8]) is None  # a jump that is not a new example
    assert starts([0, 1, 2, 0, 1, 0, 1, 2, 3], q.expand(2, -1, -1, -1)) is None  # padded rows
    attn.sliding_window = 4  # type: ignore[assignment]
    assert starts([0, 1, 2, 0, 1, 0, 1, 2, 3]) is None


def test_attention_per_example_in_bf16_attends_in_fp32_and_returns_bf16() -> None:
    """bf16 inputs on a CPU attend in fp32 (faster there): the bf16 output is the fp32
    attention of each example, rounded once."""
    import torch
    import torch.nn.functional as F

    from stages.model.segments import segment_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 9, 8, generator=g).bfloat16() for _ in range(3))
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in training under bf16
        out, _ = segment_attention(torch.nn.Module(), q, k, v, None, position_ids=positions)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 9, 4, 8)
    want = torch.cat(
        [
            F.scaled_dot_product_attention(
                q[:, :, a:b].float(), k[:, :, a:b].float(), v[:, :, a:b].float(), is_causal=True
            )
            for a, b in ((0, 3), (3, 5), (5, 9))
        ],
        dim=2,
    )
    assert torch.equal(out, want.transpose(1, 2).bfloat16())
