"""Logits only at trained positions: the same loss and gradients as the model's own forward."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.data.encode import IGNORE
from stages.model.trainer import sparse_loss
from tests.sizes import SMALL


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stages.model.tiny import build_model

    path = tmp_path_factory.mktemp("tiny")
    build_model(path, **SMALL)
    return path


def batch(neat: bool) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 90, (3, 24), generator=g)
    labels = ids.clone()
    labels[:, :10] = IGNORE  # prompts
    labels[1, 18:] = IGNORE  # padding
    inputs = {"input_ids": ids, "labels": labels}
    if neat:  # two packed examples per row
        inputs["position_ids"] = torch.cat([torch.arange(12), torch.arange(12)]).repeat(3, 1)
    else:
        mask = torch.ones_like(ids)
        mask[1, 18:] = 0
        inputs["attention_mask"] = mask
    return inputs


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("neat", [False, True], ids=["padded", "neat-packed"])
@pytest.mark.parametrize("items", [None, 37])
def test_loss_and_gradients_match_the_models_own(
    model_dir: Path, lora: bool, neat: bool, items: int | None
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    def grads(use_sparse: bool) -> tuple[float, dict]:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir)).train()
        model.config.use_cache = False  # as in training (packed masks need no cache)
        if lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(p, std=0.1)  # B = 0 would hide A's gradients
        inputs = batch(neat)
        if use_sparse:
            causal = model.get_base_model() if lora else model
            loss = sparse_loss(causal, inputs, items)
        else:
            extra = {"num_items_in_batch": items} if items is not None else {}
            loss = model(**inputs, **extra).loss
        loss.backward()
        return loss.item(), {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }

    want_loss, want = grads(False)
    got_loss, got = grads(True)
    assert got_loss == pytest.approx(want_loss, abs=1e-6)
    assert want.keys() == got.keys() and want
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-6), name


def test_the_trainer_projects_only_trained_positions(model_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from stages.model.trainer import SparseLogitsTrainer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).train()
    model.config.use_cache = False
    rows: list[int] = []
    model.lm_head.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[-2]))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = SparseLogitsTrainer(model=model, args=args)
    inputs = batch(False)
    loss = trainer.compute_loss(model, dict(inputs))
    trained = int((inputs["labels"][:, 1:] != IGNORE).sum())
    assert rows == [trained] and trained < inputs["labels"].numel()
    with torch.no_grad():
        assert loss.item() == pytest.approx(model(**inputs).loss.item(), abs=1e-6)
    model.eval()  # evaluation keeps the model's own forward (it returns logits)
    trainer.compute_loss(model, dict(inputs))
    assert rows[-1] == inputs["input_ids"].shape[1]


def test_mixed_precision_reaches_the_sparse_path(model_dir: Path, tmp_path: Path) -> None:
    """bf16: the decoder's matmuls run under the Trainer's autocast, as in the model's own
    forward (the sparse path calls the decoder directly, outside the prepared forward)."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from stages.model.trainer import SparseLogitsTrainer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).train()
    model.config.use_cache = False
    dtypes: list[torch.dtype] = []
    proj = model.model.layers[0].mlp.down_proj
    proj.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=True)
    trainer = SparseLogitsTrainer(model=model, args=args)
    inputs = batch(False)
    loss = trainer.compute_loss(model, dict(inputs))
    assert dtypes == [torch.bfloat16] and loss.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        own = model(**inputs).loss.item()
    assert loss.item() == pytest.approx(own, abs=1e-3)  # bf16 rounding of the logits
    assert loss.item() != pytest.approx(model(**inputs).loss.item(), abs=1e-7)  # not fp32


def test_packed_batches_count_tokens_equal_to_the_pad_id() -> None:
    from stages.data.collate import collate
    from stages.model.trainer import packed_tokens

    pad = 2  # also a real token (an end-of-turn marker), as SmolLM2 pads with <|im_end|>
    rows = [
        {
            "input_ids": [5, 6, 2, 7, 2],
            "labels": [-100, 6, 2, -100, 2],
            "position_ids": [0, 1, 2, 0, 1],
        },
        {"input_ids": [8, 9, 2], "labels": [-100, 9, 2], "position_ids": [0, 1, 2]},
    ]
    assert packed_tokens(collate(rows, pad), pad) == 8


@pytest.mark.slow
def test_a_neat_packed_run_counts_every_real_token(tmp_path: Path) -> None:
    from datasets import load_from_disk

    from stages.base import Context
    from stages.model.loading import write_model_json
    from stages.model.tiny import build_model, build_tokenizer
    from stages.sft import SftConfig, SftStage
    from stages.tokenize import TokenizeConfig, TokenizeStage

    base, data = tmp_path / "base", tmp_path / "data"
    build_model(base, **SMALL)
    tok = build_tokenizer()
    tok.pad_token = "<|im_end|>"  # padding indistinguishable from a real end of turn
    tok.save_pretrained(base)
    write_model_json(base, "full")
    data.mkdir()
    demo = Path(__file__).resolve().parent.parent / "stages" / "data" / "demo" / "sft.jsonl"
    entry = {"name": "demo", "path": str(demo), "formatting": "alpaca"}
    ctx = Context("t", "k", data, tmp_path / "tw", {"model": base}, datasets={"dataset": [entry]})
    TokenizeStage().run(ctx, TokenizeConfig(max_samples=48, cutoff_len=96, neat_packing=True))
    out = tmp_path / "out"
    out.mkdir()
    ctx = Context("sft", "k", out, tmp_path / "w", {"model": base, "data": data})
    cfg = SftConfig(finetuning_type="full", num_train_epochs=1, save_steps=100, report_to="none")
    SftStage().run(ctx, cfg)
    rows = load_from_disk(str(data / "train"))
    assert ctx.metrics["tokens_seen"] == sum(len(r["input_ids"]) for r in rows)


@pytest.mark.slow
def test_training_with_accumulation_matches_the_plain_trainer(
    model_dir: Path, tmp_path: Path
) -> None:
    """Same weights after accumulated steps: the loss is scaled as the Trainer scales the model's."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from stages.data.collate import collate
    from stages.model.trainer import SparseLogitsTrainer

    g = torch.Generator().manual_seed(1)
    rows = []
    for n in range(16):
        ids = torch.randint(3, 90, (10 + n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE] * 6 + ids[6:]})

    def weights(cls: type) -> dict:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir))
        model.config.use_cache = False
        args = TrainingArguments(
            output_dir=str(tmp_path / cls.__name__),
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            max_steps=2,
            learning_rate=1e-2,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            seed=0,
        )
        trainer = cls(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            data_collator=lambda batch: collate(batch, 0),
        )
        trainer.train()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    want, got = weights(Trainer), weights(SparseLogitsTrainer)
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5), name
