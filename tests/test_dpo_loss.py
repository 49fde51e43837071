"""Every DPO loss the dpo stage exposes, computed by TRL's own DPOTrainer code on fixed
log-probabilities, equals its closed form written out here from the papers (and TRL's docs where
TRL normalises: IPO and sigmoid_norm average the log-ratios over the reply's tokens).

The trainer is built for real from the stage's `dpo_args` (so beta, the loss list, the weights and
label smoothing reach TRL as the stage sets them), with reference log-probabilities precomputed;
the loss is then computed on a stub policy that returns the fixed per-token log-probabilities."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from stages.dpo import DPO_LOSSES, DpoConfig, dpo_args

BETA, EPS, TAU = 0.5, 0.1, 0.05  # pref_beta, dpo_label_smoothing, TRL's discopop_tau default
PROMPT = 2  # prompt tokens before every reply
# per-token log-probabilities of the policy on each reply (three pairs of different lengths)
CHOSEN = [[-0.5, -1.2], [-0.3, -0.8, -2.0], [-1.1]]
REJECTED = [[-0.9, -1.5, -0.4], [-2.2], [-0.7, -1.6]]
REF_CHOSEN = [-1.7, -2.6, -0.8]  # the reference's sums
REF_REJECTED = [-2.0, -2.5, -2.1]


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x: float) -> float:
    return math.exp(logsig(x))


def smoothed(x: float) -> float:
    """cDPO's conservative logistic loss (AOT uses it on sorted margins)."""
    return -(1 - EPS) * logsig(BETA * x) - EPS * logsig(-BETA * x)


def expected(loss: str) -> float:
    """The mean over the pairs of each paper's per-pair loss, from the numbers above."""
    c = [sum(t) - r for t, r in zip(CHOSEN, REF_CHOSEN, strict=True)]  # chosen log-ratios
    r = [sum(t) - x for t, x in zip(REJECTED, REF_REJECTED, strict=True)]
    d = [a - b for a, b in zip(c, r, strict=True)]  # DPO's margin of log-ratios
    n_c, n_r = [len(t) for t in CHOSEN], [len(t) for t in REJECTED]
    norm = [a / m - b / k for a, b, m, k in zip(c, r, n_c, n_r, strict=True)]
    per: list[float]
    if loss == "sigmoid":  # DPO, eq. 7
        per = [-logsig(BETA * x) for x in d]
    elif loss == "hinge":  # SLiC
        per = [max(0.0, 1 - BETA * x) for x in d]
    elif loss == "ipo":  # IPO eq. 17, log-ratios averaged per token
        per = [(x - 1 / (2 * BETA)) ** 2 for x in norm]
    elif loss == "exo_pair":  # EXO eq. 16: KL(softmax(beta * ratios) || (1 - eps, eps))
        per = [
            sig(BETA * x) * (logsig(BETA * x) - math.log(1 - EPS))
            + sig(-BETA * x) * (logsig(-BETA * x) - math.log(EPS))
            for x in d
        ]
    elif loss == "nca_pair":  # NCA
        per = [
            -logsig(BETA * a) - 0.5 * logsig(-BETA * a) - 0.5 * logsig(-BETA * b)
            for a, b in zip(c, r, strict=True)
        ]
    elif loss == "robust":  # rDPO: unbiased under label flips with probability eps
        per = [(-(1 - EPS) * logsig(BETA * x) + EPS * logsig(-BETA * x)) / (1 - 2 * EPS) for x in d]
    elif loss == "bco_pair":  # BCO, without its running reward shift
        per = [-logsig(BETA * a) - logsig(-BETA * b) for a, b in zip(c, r, strict=True)]
    elif loss == "sppo_hard":  # SPPO with hard win probabilities
        per = [(a - 0.5 / BETA) ** 2 + (b + 0.5 / BETA) ** 2 for a, b in zip(c, r, strict=True)]
    elif loss == "aot":  # AOT paired: sorted policy margins against sorted reference margins
        pol = sorted(sum(a) - sum(b) for a, b in zip(CHOSEN, REJECTED, strict=True))
        ref = sorted(a - b for a, b in zip(REF_CHOSEN, REF_REJECTED, strict=True))
        per = [smoothed(p - q) for p, q in zip(pol, ref, strict=True)]
    elif loss == "aot_unpaired":  # AOT unpaired: sorted chosen against sorted rejected ratios
        per = [smoothed(a - b) for a, b in zip(sorted(c), sorted(r), strict=True)]
    elif loss == "apo_zero":  # APO-zero eq. 7
        per = [1 - sig(BETA * a) + sig(BETA * b) for a, b in zip(c, r, strict=True)]
    elif loss == "apo_down":  # APO-down eq. 8
        per = [sig(BETA * a) + 1 - sig(BETA * (a - b)) for a, b in zip(c, r, strict=True)]
    elif loss == "discopop":  # DiscoPOP eq. 5: log-ratio modulated blend
        per = []
        for x in d:
            m = sig(BETA * x / TAU)
            per.append((1 - m) * -logsig(BETA * x) + m * math.exp(-BETA * x))
    elif loss == "sft":  # NLL of the chosen replies' tokens, averaged over those tokens
        tokens = [t for reply in CHOSEN for t in reply]
        return -sum(tokens) / len(tokens)
    elif loss == "sigmoid_norm":  # DPO on per-token averaged log-ratios
        per = [-logsig(BETA * x) for x in norm]
    else:
        raise AssertionError(f"no closed form written for {loss}")
    return sum(per) / len(per)


def batch() -> tuple[dict, object]:
    """Collated inputs (chosen rows, then rejected rows, right-padded) and a stub policy whose
    per-token log-probabilities are the numbers above at the reply positions, 0 elsewhere (as
    TRL's fused head returns for ignored labels)."""
    import torch

    replies = CHOSEN + REJECTED
    width = PROMPT + max(len(t) for t in replies)
    mask = torch.zeros(len(replies), width, dtype=torch.long)
    logps = torch.zeros(len(replies), width - 1, dtype=torch.float64)
    for i, tokens in enumerate(replies):
        mask[i, PROMPT : PROMPT + len(tokens)] = 1
        logps[i, PROMPT - 1 : PROMPT - 1 + len(tokens)] = torch.tensor(tokens)
    inputs = {
        "input_ids": torch.full((len(replies), width), 5),
        "attention_mask": (mask.cumsum(1) == 0) | mask.bool(),
        "completion_mask": mask,
        "ref_chosen_logps": torch.tensor(REF_CHOSEN, dtype=torch.float64),
        "ref_rejected_logps": torch.tensor(REF_REJECTED, dtype=torch.float64),
    }
    inputs["attention_mask"] = inputs["attention_mask"].long()
    zeros = torch.zeros_like(logps)

    def policy(**kw: object) -> SimpleNamespace:
        return SimpleNamespace(
            log_probs=logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
        )

    return inputs, policy


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object, Path]:
    from stages.model.loading import load_model, load_tokenizer
    from stages.model.tiny import build_model
    from tests.sizes import SMALL

    path = tmp_path_factory.mktemp("tiny")
    build_model(path, **SMALL)
    return load_model(path, lambda key: path), load_tokenizer(path), path


def trl_loss(tiny: tuple, cfg: DpoConfig) -> float:
    """The loss TRL's DPOTrainer computes for the fixed batch, configured by the stage."""
    from datasets import Dataset

    from stages.model.preference_trainers import DPOConfig, TokenizedDPOTrainer

    model, tokenizer, path = tiny
    rows = Dataset.from_list([{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4]}] * 2)
    args = DPOConfig(
        output_dir=str(path / "out"),
        report_to=[],
        bf16=False,
        per_device_train_batch_size=2,
        **dpo_args(cfg),
    )
    trainer = TokenizedDPOTrainer(
        model=model, args=args, train_dataset=rows, processing_class=tokenizer
    )
    inputs, policy = batch()
    return float(trainer._compute_loss(policy, inputs, return_outputs=False))


def config(loss: str, **more: object) -> DpoConfig:
    smoothing = EPS if loss in ("robust", "exo_pair", "aot", "aot_unpaired") else 0.0
    return DpoConfig(
        pref_loss=loss,
        pref_beta=BETA,
        dpo_label_smoothing=smoothing,
        precompute_ref_log_probs=True,  # the reference log-probabilities come with the batch
        **more,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("loss", DPO_LOSSES)
def test_trl_loss_equals_the_closed_form(tiny: tuple, loss: str) -> None:
    assert trl_loss(tiny, config(loss)) == pytest.approx(expected(loss), abs=1e-6)


def test_pref_ftx_adds_the_chosen_nll_with_its_weight(tiny: tuple) -> None:
    want = expected("sigmoid") + 0.25 * expected("sft")
    assert trl_loss(tiny, config("sigmoid", pref_ftx=0.25)) == pytest.approx(want, abs=1e-6)


def test_the_closed_forms_are_not_all_alike() -> None:
    """The fixture's numbers tell the losses apart (a degenerate batch would hide a mix-up)."""
    values = [round(expected(loss), 6) for loss in DPO_LOSSES]
    assert len(set(values)) == len(values)
