"""What the ppo tests share: the SMALL tiny model, demo prompts tokenized for it, a reward model
with a seeded head (one module-scoped fixture per test module), and helpers that run the stage or
build its models and a rollout without the loop."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from stages.base import Context
from stages.ppo import PpoConfig, PpoStage
from stages.rl import ppo_loop
from tests.sizes import SMALL

DEMO = Path(__file__).resolve().parent.parent / "stages" / "data" / "demo"
EXACT = "stages.data.demo:exact_answer_reward"
QUICK = {
    "max_steps": 2,
    "per_device_train_batch_size": 4,
    "max_new_tokens": 8,
    "ppo_epochs": 2,
    "learning_rate": 1e-3,
    "save_steps": 100,
    "logging_steps": 1,
    "report_to": "none",
}
LOGGED = [
    "step",
    "reward_mean",
    "reward_std",
    "score_mean",
    "kl",
    "kl_coef",
    "entropy",
    "policy_loss",
    "value_loss",
    "clip_frac",
    "approx_kl",
    "value_clip_frac",
    "response_length",
    *ppo_loop.TIMING,
]


@dataclasses.dataclass
class Assets:
    base: Path  # the SMALL tiny model, full weights
    prompts: Path  # demo prompts tokenized for it (with 4 held out)
    rm: Path  # a reward model: the base with a seeded scalar head

    def resolve(self, key: str) -> Path:
        return {"base-key": self.base, "rm-key": self.rm}[key]


@pytest.fixture(scope="module", name="assets")
def assets_fixture(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    from transformers import AutoModelForSequenceClassification

    from stages.model.loading import load_tokenizer, write_model_json
    from stages.model.tiny import build_model
    from stages.prompts import PromptsConfig, PromptsStage

    root = tmp_path_factory.mktemp("ppo")
    base, prompts, rm = root / "base", root / "prompts", root / "rm"
    build_model(base, **SMALL)
    write_model_json(base, "full")
    prompts.mkdir()
    entry = {"name": "demo_prompts", "path": str(DEMO / "prompts.jsonl"), "formatting": "alpaca"}
    ctx = Context("p", "k", prompts, root / "pw", {"model": base}, datasets={"dataset": [entry]})
    PromptsStage().run(ctx, PromptsConfig(max_samples=36, val_size=4))
    torch.manual_seed(0)
    head = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    head.save_pretrained(str(rm))
    load_tokenizer(base).save_pretrained(rm)
    write_model_json(rm, "full", head="reward")
    return Assets(base, prompts, rm)


def context(assets: Assets, out: Path, reward_model: bool = True) -> Context:
    out.mkdir(parents=True)
    inputs = {"model": assets.base, "ref_model": assets.base, "data": assets.prompts}
    keys = {"model": "base-key", "ref_model": "base-key"}
    if reward_model:
        inputs["reward_model"], keys["reward_model"] = assets.rm, "rm-key"
    work = out.parent / f"{out.name}-work"
    return Context("ppo", "k", out, work, inputs, input_keys=keys, resolve=assets.resolve)


def run_ppo(assets: Assets, out: Path, reward_model: bool = True, **cfg: object) -> Context:
    ctx = context(assets, out, reward_model)
    PpoStage().run(ctx, PpoConfig(**{**QUICK, **cfg}))  # type: ignore[arg-type]
    return ctx


def live(assets: Assets, tmp_path: Path, upstream: Path | None = None, **cfg: object):  # type: ignore[no-untyped-def]
    """The built models and prompts, without running the loop (policy and reference from
    `upstream`, keyed "up-key", when given)."""
    from stages.rl.ppo_train import setup

    options = PpoConfig(**{**QUICK, **cfg})  # type: ignore[arg-type]
    ctx = context(assets, tmp_path / "out")
    if upstream is not None:
        ctx.inputs["model"] = ctx.inputs["ref_model"] = upstream
        ctx.input_keys["model"] = ctx.input_keys["ref_model"] = "up-key"
    return ctx, options, setup(ctx, options)


def adapter_upstream(assets: Assets, tmp_path: Path) -> Path:
    """An sft-like LoRA artifact on the base, its adapter far from identity (random B)."""
    from peft import LoraConfig, get_peft_model

    from stages.model.loading import load_model, load_tokenizer, write_model_json

    out = tmp_path / "upstream"
    torch.manual_seed(1)
    model = get_peft_model(
        load_model(assets.base, assets.resolve), LoraConfig(r=4, target_modules="all-linear")
    )
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(str(out))
    load_tokenizer(assets.base).save_pretrained(out)
    write_model_json(out, "adapter", base="base-key")
    return out


def a_rollout(s, cfg: PpoConfig, rows: int = 8, sampling=None):  # type: ignore[no-untyped-def]
    from stages.rl.ppo_loop import batch_rows, seed_all
    from stages.rl.rollout import rollout

    seed_all(0)
    batch = batch_rows(s.train, list(range(rows)), 1)
    return rollout(s.actors, batch, sampling or s.sampling, rows, s.device)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
