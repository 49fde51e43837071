"""The eval stage without a model: its metric functions (BLEU / ROUGE, win rate, multiple-choice
prompts and accuracy), its config rules and headline, the compile-time refusals, what its key
covers, the shipped lm-eval task copied for a run, and a dataset of the wrong shape refused
before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.base import Context, UserError
from stages.eval import EvalConfig, EvalStage
from stages.evaluation import multiple_choice as mc
from stages.evaluation.generation import bleu, rouge
from stages.evaluation.harness import SHIPPED, prepare_tasks
from stages.evaluation.judge import wins
from tests.compiling import compile_issues as compile_stages
from tests.eval_data import CHECK, DEMO, MMLU, PREFERENCE, TEST


def test_bleu_and_rouge_of_identical_strings_are_perfect() -> None:
    same = ["the cat sat on the mat", "88", "kalomi"]
    assert bleu(same, same) == pytest.approx(100.0)  # one-word answers too (effective order)
    assert rouge(same[:1], same[:1]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert rouge(same[1:], same[1:])["rougeL"] == 1.0  # (no bigram in one word: ROUGE-2 is 0)
    other = ["the cat sat on a mat", "87", "kalomi"]
    assert 0 < bleu(other, same) < 100 and 0 < rouge(other, same)["rougeL"] < 1


def test_win_rate_counts_ties_half() -> None:
    assert wins([2.0, 0.0, 1.0, 1.0], [1.0, 0.5, 1.0, 3.0]) == [1.0, 0.0, 0.5, 0.0]


def test_multiple_choice_rows_prompt_and_accuracy(tmp_path: Path) -> None:
    rows = [
        {"question": "2 + 2?", "A": "3", "B": "4", "C": "5", "D": "6", "answer": "B"},
        {"q": "Colour of snow?", "options": ["black", "white"], "label": 1},
    ]
    letters = tmp_path / "letters.jsonl"
    letters.write_text(json.dumps(rows[0]) + "\n")
    listed = tmp_path / "listed.jsonl"
    listed.write_text(json.dumps(rows[1]) + "\n")
    (a,) = mc.read_questions({"path": str(letters)})
    (b,) = mc.read_questions(
        {"path": str(listed), "columns": {"question": "q", "choices": "options", "answer": "label"}}
    )
    assert (a.choices, a.answer) == (["3", "4", "5", "6"], 1)
    assert (b.choices, b.answer) == (["black", "white"], 1)
    assert mc.mc_prompt([a], b) == (
        "The following are multiple choice questions (with answers).\n\n"
        "2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: B\n\n"
        "Colour of snow?\nA. black\nB. white\nAnswer:"
    )
    # picks are the argmax of the letters' log-likelihoods; a tie goes to the first letter
    acc, picks = mc.accuracy([[-3.0, -1.0, -2.0, -5.0], [-1.0, -1.0]], [a, b])
    assert (acc, picks) == (0.5, [1, 0])
    listed.write_text(json.dumps({**rows[1], "label": "C"}) + "\n")
    with pytest.raises(UserError, match=r"listed.jsonl:1: field 'label' must be a letter A-B"):
        mc.read_questions(
            {
                "path": str(listed),
                "columns": {"question": "q", "choices": "options", "answer": "label"},
            }
        )


def problems(**cfg: object) -> list[tuple[str, str]]:
    return EvalStage.check_config(EvalConfig(**cfg))  # type: ignore[arg-type]


def test_config_rules() -> None:
    assert problems() == []
    assert problems(metrics=["exact_match", "blue"]) == [
        ("metrics", "unknown metric 'blue' (did you mean 'bleu'?)")
    ]
    assert problems(dataset="") == [
        ("dataset", "metrics exact_match, loss read a dataset: name one (e.g. demo_test)")
    ]
    assert problems(metrics=[]) == [
        ("metrics", "nothing to measure: set metrics, mc_dataset or lm_eval_tasks")
    ]
    assert problems(answer_check="stages.data.demo.check_answer") == [
        (
            "answer_check",
            "'stages.data.demo.check_answer' is not a dotted path: write module:function",
        )
    ]
    assert [p[0] for p in problems(headline="bleu")] == ["headline"]
    assert problems(metrics=["rouge"], headline="rouge1", lm_eval_tasks=["demo_exact"]) == []
    assert problems(headline="demo_exact/exact_match", lm_eval_tasks=["demo_exact"]) == []


def test_headline_follows_the_config() -> None:
    assert EvalStage.headline_for(EvalConfig()) == "exact_match"
    assert EvalStage.headline_for(EvalConfig(metrics=["rouge", "bleu"])) == "rougeL"
    only_harness = EvalConfig(metrics=[], lm_eval_tasks=["demo_exact"])
    assert EvalStage.headline_for(only_harness) == "demo_exact"
    assert EvalStage.headline_for(EvalConfig(headline="loss")) == "loss"


def compile_issues(stages: dict) -> list[str]:
    datasets = {
        e["name"]: {k: v for k, v in e.items() if k != "name"} for e in (TEST, MMLU, PREFERENCE)
    }
    return compile_stages(datasets, stages)


def test_compile_time_refusals() -> None:
    sft = {"kind": "sft", "dataset": "demo_test"}
    rm = {"kind": "rm", "dataset": "demo_preference"}
    ev = {"kind": "eval", "model": "sft"}
    assert compile_issues({"sft": sft, "eval": ev}) == []
    judged = {**ev, "metrics": ["reward", "win_rate"], "reward_model": "rm", "baseline": "base"}
    assert compile_issues({"sft": sft, "rm": rm, "eval": judged}) == []
    assert compile_issues({"sft": sft, "eval": {**ev, "metrics": ["win_rate"]}}) == [
        "stages.eval.baseline: win_rate compares with another model: name it (baseline: <stage>)",
        "stages.eval.reward_model: metrics win_rate need a judge: name a reward model stage "
        "(reward_model: <rm stage>)",
    ]
    assert compile_issues({"rm": rm, "eval": {**ev, "model": "rm"}}) == [
        "stages.eval.metrics: exact_match, loss need a language model, but model is a reward "
        "model: measure it with metrics: [pairwise_accuracy] on preference data"
    ]
    pairwise = {**ev, "model": "rm", "metrics": ["pairwise_accuracy"], "dataset": "demo_preference"}
    assert compile_issues({"rm": rm, "eval": pairwise}) == []
    assert compile_issues({"eval": {"kind": "eval", "dataset": "demo_tset"}}) == [
        "stages.eval.dataset: no dataset named 'demo_tset' (did you mean 'demo_test'?)"
    ]
    assert compile_issues({"eval": {"kind": "eval", "baseline": "sft"}}) == [
        "stages.eval.baseline: no stage named 'sft' (stages: base)"
    ]
    assert compile_issues({"sft": {**sft, "dataset": "demo_mmlu"}}) == [
        "stages.sft.dataset: dataset 'demo_mmlu' holds multiple_choice data; sft needs "
        "supervised data; multiple_choice data is for eval (mc_dataset)"
    ]


def test_key_covers_the_checker_and_the_shipped_tasks() -> None:
    assert EvalStage.key_files(EvalConfig()) == []
    files = EvalStage.key_files(EvalConfig(answer_check=CHECK, lm_eval_tasks=["demo_exact"]))
    assert str(DEMO / "__init__.py") in files  # the checker's module
    assert str(SHIPPED / "demo_tasks" / "demo_exact.yaml") in files
    assert str(DEMO / "test.jsonl") in files  # the data the shipped task names by pkg://


def test_task_files_are_copied_with_package_paths_made_absolute(tmp_path: Path) -> None:
    (copy,) = prepare_tasks(None, tmp_path)
    text = (copy / "demo_tasks" / "demo_exact.yaml").read_text()
    assert "pkg://" not in text and f"test: {DEMO / 'test.jsonl'}" in text
    with pytest.raises(UserError, match="lm_eval_include_path: not a directory"):
        prepare_tasks(str(tmp_path / "missing"), tmp_path / "x")


def test_a_dataset_of_the_wrong_shape_is_refused_before_loading(tmp_path: Path) -> None:
    """Each dataset field is checked for its own shape (the compiler checks each entry against
    every shape eval reads); no model is loaded (there is none here)."""
    ctx = Context(
        "eval", "k", tmp_path, tmp_path, {"model": tmp_path}, resolve=lambda key: tmp_path
    )
    ctx.datasets = {"dataset": [MMLU], "mc_dataset": []}
    with pytest.raises(UserError, match="'demo_mmlu' holds multiple-choice questions: name it as"):
        EvalStage().run(ctx, EvalConfig(dataset="demo_mmlu"))
    ctx.datasets = {"dataset": [TEST], "mc_dataset": [TEST]}
    with pytest.raises(UserError, match="mc_dataset: 'demo_test' is not multiple-choice data"):
        EvalStage().run(ctx, EvalConfig(mc_dataset="demo_test"))
