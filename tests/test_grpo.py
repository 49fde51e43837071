"""grpo and rloo on the tiny model (CPU): a few steps through the stage itself train what is meant
to train, the artifact reloads and generates, rewards come from rule-based functions (with the
last user turn as the prompt) and from a reward model through RewardScorer; the compile-time
rules (a reward source, TRL's batch rules) and a bad dotted path fail with the key named."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from stages.base import Context, UserError
from stages.grpo import NO_REWARD, GrpoConfig, GrpoStage
from stages.model.loading import load_model
from stages.rl.reward_funcs import as_text_reward
from stages.rloo import RlooConfig, RlooStage
from tests.cli import pipelines
from tests.training import SHORT, base_and_data, pairs_data

PROMPTS = Path(__file__).resolve().parent.parent / "stages" / "data" / "demo" / "prompts.jsonl"
FAST = {
    **SHORT,
    "per_device_train_batch_size": 8,
    "num_generations": 4,
    "max_new_tokens": 12,
    "learning_rate": 5e-2,
}
RULE = "tests.test_grpo:digit_reward"


def digit_reward(prompts: list[str], completions: list[str], **_: object) -> list[float]:
    """A reward a random tiny model already varies on: the share of digits in the reply."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def prompts_data(root: Path, base: Path) -> Path:
    """`root/prompts`: 32 demo prompts rendered for `base`."""
    from stages.prompts import PromptsConfig, PromptsStage

    data = root / "prompts"
    data.mkdir()
    entry = {"name": "demo_prompts", "path": str(PROMPTS), "formatting": "alpaca"}
    ctx = Context("p", "k", data, root / "pr-work", {"model": base}, datasets={"dataset": [entry]})
    PromptsStage().run(ctx, PromptsConfig(max_samples=32))
    return data


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("grpo")
    base, _ = base_and_data(root, max_samples=8)
    return base, prompts_data(root, base)


SEEN: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def spies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remember the parameters before training, the model the stage saves, and the trainer."""
    import stages.model.adapters as adapters

    real_init, real_save = adapters.remember_init, adapters.save_trained

    def init(model: Any, *args: Any) -> None:
        SEEN["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        real_init(model, *args)

    def save(model: Any, *args: Any) -> None:
        SEEN["model"] = model
        real_save(model, *args)

    monkeypatch.setattr(adapters, "remember_init", init)
    monkeypatch.setattr(adapters, "save_trained", save)


def run(stage: Any, prepared: tuple[Path, Path], out: Path, **extra: Any) -> Context:
    base, data = prepared
    inputs = {"model": base, "data": data, **extra.pop("inputs", {})}
    out.mkdir()
    ctx = Context(
        "grpo",
        "grpo-key",
        out,
        out.parent / "work",
        inputs,
        input_keys={"model": "base-key"},
        resolve=lambda key: base,
    )
    stage.run(ctx, stage.Config(**{**FAST, **extra}))
    return ctx


def assert_trained_only_the_trainable(model: Any) -> None:
    before = SEEN["before"]
    after = {n: p.detach() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "something trains"
    moved = {n for n in trainable if not before[n].equal(after[n])}
    assert moved == trainable, f"did not move: {sorted(trainable - moved)}"
    frozen = [n for n in after if n not in trainable and n in before]
    assert all(before[n].equal(after[n]) for n in frozen), "frozen weights stay"


def test_grpo_lora_trains_the_adapter_and_reloads(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    import torch

    base, _ = prepared
    ctx = run(GrpoStage(), prepared, tmp_path / "out", reward_funcs=[RULE], beta=0.04)
    assert math.isfinite(ctx.metrics["train_loss"]) and ctx.metrics["steps"] == 3
    assert 0 <= ctx.metrics["reward"] <= 1 and math.isfinite(ctx.metrics["reward_first"])
    log = [json.loads(line) for line in (ctx.out / "train_log.jsonl").read_text().splitlines()]
    kl = [r["kl"] for r in log if "kl" in r]
    assert kl and all(map(math.isfinite, kl)), "beta > 0 logs a finite KL"
    model = SEEN["model"]
    assert "ref" in model.peft_config, "the reference is TRL's frozen copy of the start adapter"
    assert_trained_only_the_trainable(model)
    assert not (ctx.out / "ref").exists(), "the reference adapter is not part of the artifact"
    assert {"adapter_model.safetensors", "model.json", "train_log.jsonl"} <= {
        p.name for p in ctx.out.iterdir()
    }
    ids = torch.tensor([[5, 9, 14, 20, 33, 41]])
    reloaded = load_model(ctx.out, resolve=lambda key: base).eval()
    with torch.no_grad():
        trained = model.eval()
        assert torch.allclose(reloaded(ids).logits, trained(ids).logits, atol=1e-5)
        out = reloaded.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_rule_reward_gets_the_last_user_turn_and_the_reply_text() -> None:
    from stages.data.demo import exact_answer_reward

    reward = as_text_reward(exact_answer_reward)
    prompts = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reverse.\nabc"}],
        [{"role": "user", "content": "What is 2 + 3?"}],
    ]
    completions = [
        [{"role": "assistant", "content": "cba"}],
        [{"role": "assistant", "content": "6"}],
    ]
    assert reward(prompts=prompts, completions=completions, reference=["", ""]) == [1.0, 0.0]
    assert reward.__name__ == "exact_answer_reward"


def test_grpo_scores_with_the_reward_model_through_reward_scorer(
    prepared: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The logged reward of each step is the mean of RewardScorer's scores of that step's
    replies, rendered after their prompt messages."""
    from stages.model.reward import RewardScorer
    from stages.rl.reward_funcs import ModelReward
    from stages.rm import RmConfig, RmStage

    base, _ = prepared
    rm = tmp_path / "rm"
    rm.mkdir()
    rm_ctx = Context(
        "rm",
        "rm-key",
        rm,
        tmp_path / "rm-work",
        {"model": base, "data": pairs_data(tmp_path, base)},
        input_keys={"model": "base-key"},
        resolve=lambda key: base,
    )
    RmStage().run(rm_ctx, RmConfig(**{**SHORT, "max_steps": 2, "finetuning_type": "full"}))
    calls: list[tuple[list, list, list[float]]] = []
    real = ModelReward.__call__

    def spy(self: ModelReward, prompts: list, completions: list, **kw: Any) -> list[float]:
        scores = real(self, prompts, completions, **kw)
        calls.append((prompts, completions, scores))
        return scores

    monkeypatch.setattr(ModelReward, "__call__", spy)
    ctx = run(GrpoStage(), prepared, tmp_path / "out", inputs={"reward_model": rm}, max_steps=2)
    assert len(calls) == 2
    scorer = RewardScorer(rm, lambda key: base)
    log = [json.loads(line) for line in (ctx.out / "train_log.jsonl").read_text().splitlines()]
    for (prompts, completions, scores), step in zip(calls, log, strict=False):
        pairs = zip(prompts, completions, strict=True)
        chats = [[*p, {"role": "assistant", "content": c[0]["content"]}] for p, c in pairs]
        assert scores == pytest.approx(scorer(chats), abs=1e-5)
        assert step["rewards/reward_model/mean"] == pytest.approx(
            sum(scores) / len(scores), abs=1e-5
        )


def test_rloo_full_trains_against_its_own_reference(
    prepared: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full fine-tuning with beta > 0: the reference is the upstream model we load (frozen),
    not one TRL loads by name; every weight of the policy trains."""
    import stages.grpo as grpo

    refs: list[Any] = []
    real = grpo._reference
    monkeypatch.setattr(grpo, "_reference", lambda *a: refs.append(real(*a)) or refs[-1])
    ctx = run(RlooStage(), prepared, tmp_path / "out", reward_funcs=[RULE], finetuning_type="full")
    (ref,) = refs
    assert ref is not None and not any(p.requires_grad for p in ref.parameters())
    assert math.isfinite(ctx.metrics["train_loss"]) and math.isfinite(ctx.metrics["reward"])
    assert_trained_only_the_trainable(SEEN["model"])
    log = [json.loads(line) for line in (ctx.out / "train_log.jsonl").read_text().splitlines()]
    assert any("kl" in r for r in log), "RLOO's default beta 0.05 puts a KL in the reward"


@pytest.mark.parametrize("stage", [GrpoStage, RlooStage])
def test_check_inputs_refuses_no_reward_source(stage: Any) -> None:
    roles = {"model": "sft", "ref_model": "sft", "reward_model": None, "data": None}
    assert stage.check_inputs(stage.Config(), roles) == [("reward_funcs", NO_REWARD)]
    assert NO_REWARD.startswith("no reward source: name a reward model stage")
    assert stage.check_inputs(stage.Config(), {**roles, "reward_model": "rm"}) == []
    weights = stage.Config(reward_funcs=[RULE], reward_weights=[1.0])
    assert stage.check_inputs(weights, {**roles, "reward_model": "rm"}) == [
        (
            "reward_weights",
            "1 weights for 2 reward sources (the reward model first, then reward_funcs in order)",
        )
    ]


def test_check_config_names_the_batch_keys() -> None:
    check = GrpoStage.check_config
    assert check(GrpoConfig()) == []
    assert check(GrpoConfig(num_generations=3)) == [
        (
            "num_generations",
            "per_device_train_batch_size x gradient_accumulation_steps (8) must be a multiple "
            "of num_generations (3)",
        )
    ]
    assert ("generation_batch_size", "must be a multiple of per_device_train_batch_size 8") in (
        check(GrpoConfig(generation_batch_size=12))
    )
    assert ("num_generations", "needs at least 2 replies per prompt to compare") in check(
        RlooConfig(num_generations=1)
    )
    evaluated = GrpoConfig(val_size=8, num_generations=16, generation_batch_size=16)
    assert [k for k, _ in check(evaluated)] == ["per_device_train_batch_size"]
    paths = ["stages.data.demo.exact", "no_such.module:f", RULE]
    assert check(GrpoConfig(reward_funcs=paths)) == [
        ("reward_funcs", "'stages.data.demo.exact' is not a dotted path: write module:function"),
        (
            "reward_funcs",
            "cannot find module 'no_such.module' of 'no_such.module:f': is it on PYTHONPATH?",
        ),
    ]


def test_reward_function_sources_are_key_files() -> None:
    cfg = GrpoConfig(reward_funcs=["stages.data.demo:exact_answer_reward", RULE])
    demo = PROMPTS.parent / "__init__.py"
    assert GrpoStage.key_files(cfg) == sorted([str(demo), str(Path(__file__).resolve())])


def test_memory_profile_counts_the_frozen_models() -> None:
    roles = {"model": "sft", "ref_model": "sft", "reward_model": "rm", "data": "p"}
    lora, full = GrpoConfig(beta=0.1), GrpoConfig(beta=0.1, finetuning_type="full")
    assert GrpoStage.memory_profile(lora, roles)["frozen"] == 1  # the reward model only
    assert GrpoStage.memory_profile(full, roles)["frozen"] == 2  # and a reference
    assert GrpoStage.memory_profile(GrpoConfig(), {**roles, "reward_model": None})["frozen"] == 0
    assert GrpoStage.memory_profile(GrpoConfig(cutoff_len=256, max_new_tokens=512), roles) == {
        "sequences": 3,
        "frozen": 1,
    }


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("no_such_module:f", "cannot import module 'no_such_module'"),
        ("stages.data.demo:no_such_function", "has no function 'no_such_function'"),
    ],
)
def test_a_bad_dotted_path_is_a_user_error_naming_the_key(
    prepared: tuple[Path, Path], tmp_path: Path, path: str, says: str
) -> None:
    with pytest.raises(UserError, match=rf"^stages\.grpo\.reward_funcs: .*{says}"):
        run(GrpoStage(), prepared, tmp_path / "out", reward_funcs=[path])


def test_vllm_keys_reach_trls_config() -> None:
    from stages.grpo import GrpoConfig, _trl_args

    args = _trl_args(
        GrpoConfig(use_vllm=True, vllm_gpu_memory_utilization=0.5, vllm_max_model_len=512)
    )
    assert (args["use_vllm"], args["vllm_mode"]) == (True, "colocate")
    assert (args["vllm_gpu_memory_utilization"], args["vllm_max_model_length"]) == (0.5, 512)


def test_use_vllm_without_a_gpu_is_a_user_error(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: vLLM may run here")
    with pytest.raises(UserError, match="use_vllm: vLLM needs a CUDA GPU"):
        run(GrpoStage(), prepared, tmp_path / "out", reward_funcs=[RULE], use_vllm=True)


@pytest.mark.slow
def test_grpo_pipeline_runs_and_its_rerun_is_cached(tmp_path: Path) -> None:
    first = pipelines("run", "+pipeline=grpo", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "store" / "runs").glob("*.json")]
    stages = record["stages"]
    assert {k: v["status"] for k, v in stages.items()} == {
        "base": "ran",
        "tokenize:demo_sft": "ran",
        "sft": "ran",
        "prompts:demo_prompts": "ran",
        "grpo": "ran",
    }
    grpo = tmp_path / "store" / "artifacts" / "grpo" / stages["grpo"]["key"]
    manifest = json.loads((grpo / "manifest.json").read_text())
    assert manifest["inputs"]["model"]["name"] == "sft" and manifest["metrics"]["steps"] == 10
    assert 0 <= manifest["metrics"]["reward"] <= 1
    second = pipelines("run", "+pipeline=grpo", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    runs = sorted((tmp_path / "store" / "runs").glob("*.json"))
    last = json.loads(runs[-1].read_text())
    assert {v["status"] for v in last["stages"].values()} == {"cached"}
