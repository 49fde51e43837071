"""The compiler's refusals for the preference stages: the wrong data shape for dpo and kto, a
reward model as a reference, and the rules between preference fields."""

from __future__ import annotations

from tests.compiling import compile_issues

DATASETS = {
    "chat": {"path": "pkg://stages/data/demo/sft.jsonl", "formatting": "alpaca"},
    "pref": {
        "path": "pkg://stages/data/demo/preference.jsonl",
        "formatting": "alpaca",
        "ranking": True,
        "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"},
    },
}


def test_dpo_refuses_supervised_data_and_kto_refuses_preference_data() -> None:
    assert compile_issues(
        DATASETS, {"d": {"kind": "dpo", "dataset": "chat"}, "k": {"kind": "kto", "dataset": "pref"}}
    ) == [
        "stages.d.dataset: dataset 'chat' holds supervised data; this stage needs preference "
        "pairs (ranking: true); supervised data is for sft (or as prompts: ppo / grpo)",
        "stages.k.dataset: dataset 'pref' holds preference data; kto needs replies labelled "
        "desirable or not (a kto_tag); preference data is for rm / dpo / orpo / simpo "
        "(or as prompts: ppo / grpo)",
    ]


def test_a_reward_model_is_refused_as_ref_model() -> None:
    issues = compile_issues(
        DATASETS,
        {
            "r": {"kind": "rm", "dataset": "pref"},
            "d": {"kind": "dpo", "dataset": "pref", "ref_model": "r"},
            "k": {"kind": "kto", "dataset": "pref", "ref_model": "r"},
        },
    )
    assert issues[0].startswith(
        "stages.d.ref_model: 'r' produces a reward_model artifact, but ref_model needs a model"
    )
    assert any(i.startswith("stages.k.ref_model: 'r' produces a reward_model") for i in issues)


def test_preference_rules_between_fields_are_config_errors() -> None:
    from compiler.errors import Issue
    from compiler.schema import validate

    issues: list[Issue] = []
    stages = {
        "a": {"kind": "dpo", "pref_loss": "exo_pair"},
        "b": {"kind": "dpo", "dpo_label_smoothing": 0.1},
        "c": {"kind": "kto", "per_device_train_batch_size": 1},
        "d": {"kind": "dpo", "pref_loss": "sigmoidd"},
    }
    validate({"stages": stages}, issues)
    assert sorted(str(i) for i in issues) == [
        "stages.a.dpo_label_smoothing: pref_loss exo_pair needs a value in (0, 1) (EXO uses 1e-3)",
        "stages.b.dpo_label_smoothing: has no effect with pref_loss sigmoid: it enters robust / "
        "exo_pair / aot / aot_unpaired only",
        "stages.c.per_device_train_batch_size: kto estimates its KL term from the other replies "
        "of a batch: use 2 or more",
        "stages.d.pref_loss: invalid value 'sigmoidd' (did you mean 'sigmoid'?)",
    ]
