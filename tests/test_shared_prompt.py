"""The dpo stage's packed pairs (stages/model/shared_prompt.py): one row per pair with the prompt
computed once gives TRL's plain rows' per-token log-probabilities, loss, metrics and gradients,
for the policy and for the reference; batches or models it cannot pack keep TRL's rows."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import pytest
import torch

from stages.model.shared_prompt import CHOSEN, PROMPT, REJECTED, pair_layout, pair_mask
from tests.training import pairs_data

TOL = 1e-5
PAIRS = 6  # two batches of three: unequal prompts and replies, so rows are padded


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from stages.model.loading import write_model_json
    from stages.model.tiny import build_model
    from tests.sizes import SMALL

    root = tmp_path_factory.mktemp("shared")
    build_model(root / "base", **SMALL)
    write_model_json(root / "base", "full")
    return root / "base", pairs_data(root, root / "base")


@cache
def rows(data: Path) -> list[dict]:
    from datasets import load_from_disk

    table = load_from_disk(str(data / "train"))
    return [table[i] for i in range(PAIRS)]


def trainer(tiny: tuple[Path, Path], ours: bool, case: str, attention: str = "sdpa") -> object:
    """A TokenizedDPOTrainer with our defaults (`ours`) or acting as TRL's plain DPOTrainer (no
    packed pairs, TRL's copy of a fresh adapter kept), whose policy differs from its reference:
    LoRA on the base ("lora": a fresh adapter, the reference is the base; "lora-continued": an
    adapter with weights, the reference is TRL's frozen copy of it), or full weights moved away
    from an explicit ref_model. Both settings of `ours` get the very same weights."""
    from datasets import Dataset

    from stages.model import preference_trainers
    from stages.model.loading import load_model, load_tokenizer
    from stages.model.preference_trainers import SharedPromptDPOConfig, TokenizedDPOTrainer

    base, data = tiny

    def model() -> object:
        return load_model(base, lambda key: base, attn_implementation=attention)

    policy, extra = model(), {}
    torch.manual_seed(0)
    if case.startswith("lora"):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
        policy = get_peft_model(policy, config)
        if case == "lora-continued":
            _move(policy, "lora_B")
    else:
        _move(policy, "")
        extra["ref_model"] = model().eval()
    args = SharedPromptDPOConfig(
        output_dir=str(base.parent / "out"),
        report_to=[],
        bf16=False,
        per_device_train_batch_size=3,
        max_length=None,
        shared_prompt=ours,
    )
    keep = preference_trainers.drop_fresh_reference
    if not ours:
        preference_trainers.drop_fresh_reference = lambda model: False
    try:
        built = TokenizedDPOTrainer(
            model=policy,
            args=args,
            train_dataset=Dataset.from_list(rows(data)),
            processing_class=load_tokenizer(base),
            **extra,
        )
    finally:
        preference_trainers.drop_fresh_reference = keep
    if case.startswith("lora"):
        _move(built.model, "lora_B.default")  # the policy moves away from its reference
    return built


def _move(model: object, names: str) -> None:
    """Add seeded noise to the parameters whose names contain `names`."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():  # type: ignore[attr-defined]
            if names in name:
                p.add_(torch.randn_like(p) * 0.05)


def batch(tiny: tuple[Path, Path], trainer: object, first: int) -> dict:
    return trainer.data_collator(rows(tiny[1])[first : first + 3])  # type: ignore[attr-defined]


def step(trainer: object, inputs: dict) -> tuple[float, dict, dict]:
    """TRL's loss on one batch, backpropagated: the loss, the logged metrics, the gradients."""
    trainer.model.train()  # type: ignore[attr-defined]
    trainer.model.zero_grad()  # type: ignore[attr-defined]
    loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)  # type: ignore[attr-defined]
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}  # type: ignore[attr-defined]
    grads = {
        n: p.grad.clone()
        for n, p in trainer.model.named_parameters()  # type: ignore[attr-defined]
        if p.grad is not None
    }
    return float(loss.detach()), metrics, grads


CASES = {
    "lora": ("lora", "sdpa"),
    "lora-continued": ("lora-continued", "sdpa"),
    "full": ("full", "sdpa"),
    "lora-eager": ("lora", "eager"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_our_defaults_give_trl_loss_metrics_and_gradients(
    tiny: tuple[Path, Path], case: str
) -> None:
    """Two batches of real demo pairs through TRL's own loss code: our trainer with its defaults
    against TRL's plain behaviour, on the same weights."""
    model, attention = CASES[case]
    plain, shared = (trainer(tiny, ours, model, attention) for ours in (False, True))
    for first in (0, 3):
        inputs = batch(tiny, plain, first)
        want, got = step(plain, inputs), step(shared, inputs)
        assert got[0] == pytest.approx(want[0], abs=TOL)
        assert want[1]["rewards/margins"] != 0  # the reference is not the policy
        assert set(got[1]) == set(want[1])
        for name, value in want[1].items():
            assert got[1][name] == pytest.approx(value, abs=TOL), name
        assert set(got[2]) == set(want[2]) and want[2]
        for name, grad in want[2].items():
            assert torch.allclose(got[2][name], grad, atol=TOL), name


@pytest.mark.parametrize("case", ["lora", "full"])
def test_packed_forward_scores_every_reply_token_as_trl_does(
    tiny: tuple[Path, Path], case: str
) -> None:
    """The wrapped causal LM against TRL's fused forward underneath it, on the same batch:
    every per-token field equal (zeros off the replies), for the policy and the reference."""
    from trl.trainer.utils import use_adapter

    shared = trainer(tiny, True, case)
    policy = shared.model  # type: ignore[attr-defined]
    inner = policy.get_base_model() if case == "lora" else policy
    inputs = batch(tiny, shared, 0)
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    assert pair_layout(kwargs["input_ids"], kwargs["attention_mask"], labels) is not None
    models = [inner, shared.ref_model]  # type: ignore[attr-defined]
    if case == "lora":
        models = [inner, inner]
    for i, model in enumerate(models):
        reference = i == 1 and case == "lora"
        with torch.no_grad(), use_adapter(policy, None) if reference else _nothing():
            got = model.forward(**kwargs, labels=labels, fused_lm_head=True, use_cache=False)
            want = model.forward.__wrapped__(
                **kwargs, labels=labels, fused_lm_head=True, use_cache=False
            )
        assert want.log_probs is not None
        for name in ("log_probs", "entropy", "mean_logits", "label_mask", "is_top1"):
            a, b = getattr(got, name), getattr(want, name)  # TRL's reference: log_probs only
            assert (a is None) == (b is None), name
            if b is not None:
                assert a.shape == b.shape, name
                assert torch.allclose(a.float(), b.float(), atol=TOL), name
        assert torch.equal(got.label_mask, labels[:, 1:] != -100)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_layout_packs_each_pair_into_one_row_with_its_replies_apart() -> None:
    """Two pairs (prompt 3 and 2 tokens): rows [prompt | chosen | rejected] side by side in one
    row; rejected positions restart at the prompt's end; a rejected token sees its prompt and
    itself, never the chosen reply or the other pair."""
    ids = torch.tensor([[1, 2, 3, 10, 11], [4, 5, 12, 0, 0], [1, 2, 3, 20, 0], [4, 5, 21, 22, 23]])
    mask = (ids != 0).long()
    x = -100
    labels = torch.tensor(
        [[x, x, x, 10, 11], [x, x, 12, x, x], [x, x, x, 20, x], [x, x, 21, 22, 23]]
    )
    layout = pair_layout(ids, mask, labels)
    assert layout is not None
    assert layout.input_ids.tolist() == [[1, 2, 3, 10, 11, 20, 4, 5, 12, 21, 22, 23]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 2, 2, 3, 4]]
    p, c, r = PROMPT, CHOSEN, REJECTED
    assert layout.segments.tolist() == [[p, p, p, c, c, r, p, p, c, r, r, r]]
    # chosen 10, 11 from positions 2, 3; rejected 20 from the prompt's end (2); and so on
    assert layout.source.tolist() == [[2, 3, 2, 7, 7, 9, 10]]
    assert layout.shift_labels.tolist() == [[10, 11, 20, 12, 21, 22, 23]]
    allowed = pair_mask(layout, "sdpa", torch.float32)[0, 0]
    assert allowed[5].tolist() == [1, 1, 1, 0, 0, 1] + [0] * 6  # rejected 20
    assert allowed[4].tolist() == [1, 1, 1, 1, 1] + [0] * 7  # chosen 11
    assert allowed[9].tolist() == [0] * 6 + [1, 1, 0, 1, 0, 0]  # pair 2's rejected 21
    additive = pair_mask(layout, "eager", torch.float32)[0, 0]
    assert torch.equal(additive == 0, allowed)


def test_batches_outside_trl_layout_are_not_packed() -> None:
    ids = torch.tensor([[1, 2, 10], [1, 2, 20]])
    mask = torch.ones_like(ids)
    labels = torch.tensor([[-100, -100, 10], [-100, -100, 20]])
    assert pair_layout(ids, mask, labels) is not None
    assert pair_layout(ids[:1], mask[:1], labels[:1]) is None  # no rejected row
    assert pair_layout(torch.tensor([[1, 2, 10], [1, 3, 20]]), mask, labels) is None  # prompts
    left = torch.tensor([[1, 1, 1], [0, 1, 1]])
    assert pair_layout(ids, left, labels) is None  # left padding
    empty = torch.tensor([[-100, -100, 10], [-100, -100, -100]])
    assert pair_layout(ids, mask, empty) is None  # an empty reply
    uneven = torch.tensor([[-100, -100, 10], [-100, 2, 20]])
    assert pair_layout(ids, mask, uneven) is None  # the replies start at different places


def test_a_model_without_4d_masks_keeps_trl_rows_and_says_why(
    tiny: tuple[Path, Path], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stages.model import preference_trainers

    monkeypatch.setattr(preference_trainers, "unsupported", lambda model: "no 4D mask here")
    with caplog.at_level(logging.INFO, logger="pipelines.stage"):
        fallback = trainer(tiny, True, "lora")
    assert "shared_prompt off (no 4D mask here)" in caplog.text
    inner = fallback.model.get_base_model()  # type: ignore[attr-defined]
    assert not getattr(inner.forward, "packs_pairs", False)
    monkeypatch.undo()
    packed = trainer(tiny, True, "lora").model.get_base_model()  # type: ignore[attr-defined]
    assert packed.forward.packs_pairs


def test_a_fresh_adapter_is_its_own_reference_without_a_copy(tiny: tuple[Path, Path]) -> None:
    """TRL copies the policy's adapter into a "ref" adapter; a fresh one (lora_B zero) adds
    nothing, so ours drops the copy (the reference disables the adapter), a trained one keeps it."""
    fresh = trainer(tiny, True, "lora").model  # type: ignore[attr-defined]
    assert set(fresh.peft_config) == {"default"}
    continued = trainer(tiny, True, "lora-continued").model  # type: ignore[attr-defined]
    assert set(continued.peft_config) == {"default", "ref"}
    plain = trainer(tiny, False, "lora").model  # type: ignore[attr-defined]
    assert set(plain.peft_config) == {"default", "ref"}  # what TRL alone does


def test_unsupported_names_what_blocks_packing(tiny: tuple[Path, Path]) -> None:
    from stages.model.loading import load_model
    from stages.model.shared_prompt import unsupported

    base = tiny[0]
    model = load_model(base, lambda key: base)
    assert unsupported(model) is None
    model.config._attn_implementation = "flex_attention"
    assert "takes no custom 4D mask" in str(unsupported(model))
    model.config._attn_implementation = "sdpa"
    model.config.layer_types = ["sliding_attention", "full_attention"]
    assert "only full causal attention" in str(unsupported(model))


def dpo_stage(tiny: tuple[Path, Path], out: Path, **cfg: object) -> list[dict]:
    """Two LoRA steps of the dpo stage itself on the tiny base; its step log. The learning rate
    is DPO-sized: Adam's first step moves every weight by about the learning rate whatever its
    gradient's size, so a gradient that is zero up to rounding would move it by +-lr either way."""
    import json

    from stages.base import Context
    from stages.dpo import DpoConfig, DpoStage
    from tests.training import SHORT

    base, data = tiny
    out.mkdir()
    inputs = {"model": base, "ref_model": base, "data": data}
    keys = {"model": "b", "ref_model": "b"}
    ctx = Context("dpo", "k", out, out.parent / f"{out.name}-work", inputs, input_keys=keys)
    ctx.resolve = lambda key: base
    options = {**SHORT, "max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-5}
    DpoStage().run(ctx, DpoConfig(**{**options, "finetuning_type": "lora", **cfg}))  # type: ignore[arg-type]
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_the_dpo_stage_packs_pairs_by_default_with_the_same_log(
    tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stages.model import shared_prompt

    packed = []
    layout = shared_prompt.pair_layout
    monkeypatch.setattr(
        shared_prompt, "pair_layout", lambda *a: packed.append(layout(*a)) or packed[-1]
    )
    ours = dpo_stage(tiny, tmp_path / "packed")
    assert packed and all(packed)  # every policy and reference forward ran packed pairs
    count = len(packed)
    plain = dpo_stage(tiny, tmp_path / "plain", shared_prompt=False)
    assert len(packed) == count  # switched off: TRL's rows
    assert [r["step"] for r in ours] == [r["step"] for r in plain]
    for mine, theirs in zip(ours, plain, strict=True):
        for name in ("loss", "logps/chosen", "logps/rejected", "rewards/margins"):
            if name in theirs:
                assert mine[name] == pytest.approx(theirs[name], rel=TOL, abs=TOL), name


def test_shared_prompt_is_a_volatile_dpo_key() -> None:
    """It changes speed, not what is learned: recorded, not part of the artifact's key."""
    import dataclasses

    from stages.dpo import DpoConfig

    field = {f.name: f for f in dataclasses.fields(DpoConfig)}["shared_prompt"]
    assert field.default is True and field.metadata.get("volatile") is True
