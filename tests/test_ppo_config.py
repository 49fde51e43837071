"""ppo's compile-time contract: rules between its fields, the rule that it needs a reward
source, what its key covers, and the refusals the compiler prints (no torch, no model)."""

from __future__ import annotations

from pathlib import Path

from stages.ppo import PpoConfig, PpoStage
from tests.compiling import compile_issues as compile_stages

DEMO = Path(__file__).resolve().parent.parent / "stages" / "data" / "demo"
EXACT = "stages.data.demo:exact_answer_reward"


def problems(**cfg: object) -> list[tuple[str, str]]:
    return PpoStage.check_config(PpoConfig(**cfg))  # type: ignore[arg-type]


def test_config_rules_refuse_what_cannot_run() -> None:
    assert problems() == []
    assert problems(reward_funcs=["nope.missing:reward"]) == [
        (
            "reward_funcs",
            "cannot find module 'nope.missing' of 'nope.missing:reward': is it on PYTHONPATH?",
        )
    ]
    assert problems(reward_funcs=["stages.data.demo.exact_answer_reward"]) == [
        (
            "reward_funcs",
            "'stages.data.demo.exact_answer_reward' is not a dotted path: write module:function",
        )
    ]
    assert problems(advantage_estimator="group") == [
        ("num_generations", "the group estimator compares replies: set >= 2")
    ]
    assert problems(mini_batch_size=3) == [
        (
            "mini_batch_size",
            "must divide the rollout of 8 rows "
            "(per_device_train_batch_size x num_generations x ppo_buffer_size)",
        )
    ]
    assert problems(critic_warmup_steps=2, advantage_estimator="reinforce_pp") == [
        ("critic_warmup_steps", "reinforce_pp has no critic")
    ]
    assert problems(use_vllm=True) == []  # checked at run time: a plan made without a GPU holds
    assert [p[0] for p in problems(temperature=0.0, dual_clip=0.5)] == ["temperature", "dual_clip"]
    assert [p[0] for p in problems(optim="adafactor", precision="fp16")] == ["optim", "precision"]


def test_inputs_rule_needs_a_reward_source() -> None:
    cfg = PpoConfig()
    no_rm = {"model": "sft", "ref_model": "sft", "reward_model": None, "data": "prompts:x"}
    assert PpoStage.check_inputs(cfg, {**no_rm, "reward_model": "rm"}) == []
    assert PpoStage.check_inputs(PpoConfig(reward_funcs=[EXACT]), no_rm) == []
    assert PpoStage.check_inputs(cfg, no_rm) == [
        (
            "reward_model",
            "ppo needs a reward: name a reward model stage (reward_model: <rm stage>) "
            "or set reward_funcs (module:function)",
        )
    ]
    assert [p[0] for p in PpoStage.check_inputs(PpoConfig(value_init="reward"), no_rm)] == [
        "reward_model",
        "value_init",
    ]
    weighted = PpoConfig(reward_funcs=[EXACT], reward_weights=[1.0])
    assert PpoStage.check_inputs(weighted, no_rm) == []
    assert PpoStage.check_inputs(weighted, {**no_rm, "reward_model": "rm"}) == [
        (
            "reward_weights",
            "1 weights for 2 reward sources (the reward model first, then reward_funcs in order)",
        )
    ]


def test_the_reward_functions_code_is_keyed() -> None:
    files = PpoStage.key_files(PpoConfig(reward_funcs=[EXACT, "tests.test_ppo_config:problems"]))
    assert files == sorted([str(DEMO / "__init__.py"), str(Path(__file__).resolve())])


def compile_issues(stages: dict) -> list[str]:
    datasets = {
        name: {"path": f"pkg://stages/data/demo/{file}", "formatting": fmt, **extra}
        for name, file, fmt, extra in (
            ("sft_data", "sft.jsonl", "alpaca", {}),
            ("pref", "preference.jsonl", "alpaca", {"ranking": True}),
            ("text", "text.txt", "text", {}),
        )
    }
    return compile_stages(datasets, stages)


def test_compile_time_refusals() -> None:
    rm = {"kind": "rm", "dataset": "pref"}
    sft = {"kind": "sft", "dataset": "sft_data"}
    ok = {"kind": "ppo", "model": "sft", "reward_model": "rm", "dataset": "sft_data"}
    for dataset in ("sft_data", "pref"):  # any chat data gives prompts
        assert compile_issues({"sft": sft, "rm": rm, "ppo": {**ok, "dataset": dataset}}) == []
    assert compile_issues({"sft": sft, "rm": rm, "ppo": {**ok, "dataset": "text"}}) == [
        "stages.ppo.dataset: dataset 'text' holds text data; prompts come from chat data; "
        "text data is for pt"
    ]
    no_reward = (
        "stages.ppo.reward_model: ppo needs a reward: name a reward model stage "
        "(reward_model: <rm stage>) or set reward_funcs (module:function)"
    )
    assert compile_issues({"sft": sft, "ppo": {**ok, "reward_model": "sft"}}) == [
        "stages.ppo.reward_model: 'sft' produces a model artifact, but reward_model needs a "
        "reward_model (name a stage of kind rm)",
    ]  # one message: the refused input is not also reported as a missing reward source
    alone = {"kind": "ppo", "model": "sft", "dataset": "pref"}
    assert compile_issues({"sft": sft, "ppo": alone}) == [no_reward]
