"""The eval stage: its metrics on a tiny trained model (exact match through the demo checker,
held-out loss equal to the model's own, multiple choice equal to unbatched scoring), the reward
model as judge, its compile-time refusals, and a pipeline that ends in eval with the shipped
lm-eval task, offline, its score in the manifest."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from stages.base import Context, UserError
from stages.data.demo import check_answer
from stages.eval import EvalConfig, EvalStage
from stages.evaluation import multiple_choice as mc
from stages.evaluation.generation import bleu, rouge
from stages.evaluation.harness import SHIPPED, prepare_tasks
from stages.evaluation.judge import wins
from tests.cli import pipelines
from tests.compiling import compile_issues as compile_stages
from tests.training import base_and_data, run_sft

DEMO = Path(__file__).resolve().parent.parent / "stages" / "data" / "demo"
TEST = {"name": "demo_test", "path": str(DEMO / "test.jsonl"), "formatting": "alpaca"}
MMLU = {"name": "demo_mmlu", "path": str(DEMO / "mmlu.jsonl"), "formatting": "multiple_choice"}
PREFERENCE = {
    "name": "demo_preference",
    "path": str(DEMO / "preference.jsonl"),
    "formatting": "alpaca",
    "ranking": True,
}
CHECK = "stages.data.demo:check_answer"
TEST_ROWS = (DEMO / "test.jsonl").read_text().splitlines()


# --- pure parts: no model -------------------------------------------------------------------


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


# --- on a tiny trained model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The SMALL base, a short LoRA sft on it (an adapter: its base is found by key), and a
    reward model artifact (the base under a fresh scalar head: the judge's arithmetic is what
    these tests check, not its taste)."""
    from stages.model.loading import REWARD, load_model, load_tokenizer, write_model_json

    root = tmp_path_factory.mktemp("eval")
    base, data = base_and_data(root, max_samples=8)
    sft = run_sft(base, data, root / "sft", finetuning_type="lora", max_steps=2).out
    rm = root / "rm"
    load_model(base, lambda key: base, head=REWARD).save_pretrained(rm)
    load_tokenizer(base).save_pretrained(rm)
    write_model_json(rm, "full", head=REWARD)
    return {"base": base, "sft": sft, "rm": rm}


def run_eval(
    trained: dict[str, Path], out: Path, inputs: dict[str, str], datasets: dict, **cfg: object
) -> Context:
    out.mkdir()
    ctx = Context(
        "eval",
        "eval-key",
        out,
        out.parent / f"{out.name}-work",
        {role: trained[name] for role, name in inputs.items()},
        datasets={"dataset": [], "mc_dataset": [], **datasets},
        resolve=lambda key: trained["base"],
    )
    EvalStage().run(ctx, EvalConfig(**cfg))  # type: ignore[arg-type]
    return ctx


def outputs(ctx: Context, name: str = "outputs.jsonl") -> list[dict]:
    return [json.loads(line) for line in (ctx.out / name).read_text().splitlines()]


@pytest.mark.slow
def test_builtin_metrics_on_a_tiny_trained_model(trained: dict, tmp_path: Path) -> None:
    import torch

    from stages.data.encode import encode
    from stages.model.inference import load_for_inference

    metrics = ["exact_match", "loss", "bleu", "rouge"]
    ctx = run_eval(
        trained, tmp_path / "out", {"model": "sft"}, {"dataset": [TEST]},
        metrics=metrics, answer_check=CHECK, max_samples=12, max_new_tokens=6, batch_size=5,
    )  # fmt: skip
    rows = outputs(ctx)
    assert len(rows) == 12 == ctx.metrics["examples"]
    for row in rows:  # the verdict is the checker's, on the reply the model gave
        instruction, _, inp = row["prompt"].partition("\n")
        assert row["correct"] == check_answer(instruction, inp, row["generation"])
    assert ctx.metrics["exact_match"] == sum(r["correct"] for r in rows) / 12
    assert math.isfinite(ctx.metrics["loss"]) and ctx.metrics["loss"] > 0
    assert ctx.metrics["perplexity"] == pytest.approx(math.exp(ctx.metrics["loss"]))
    # an example's loss is the model's own loss over the reply tokens sft trains on
    loaded = load_for_inference(trained["sft"], lambda key: trained["base"])
    chat = [*rows[0]["messages"], {"role": "assistant", "content": rows[0]["reference"]}]
    ids, labels = encode(loaded.tokenizer, chat)
    with torch.no_grad():
        own = loaded.model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    assert rows[0]["loss"] == pytest.approx(float(own), rel=1e-5)
    assert set(json.loads((ctx.out / "metrics.json").read_text())) == {
        "examples", "loss", "perplexity", "loss_tokens", "exact_match", "bleu",
        "rouge1", "rouge2", "rougeL",
    }  # fmt: skip


@pytest.mark.slow
def test_exact_match_counts_the_checkers_verdicts(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replies fixed (right, padded-right, wrong): the checker, else stripped equality, decides."""
    from stages.evaluation import generation

    def replies(loaded: object, prompts: list, *_: object) -> list[str]:
        answers = [json.loads(x) for x in TEST_ROWS]
        return [f" {answers[0]['output']}\n", answers[1]["output"], "wrong", "wrong"]

    monkeypatch.setattr(generation, "generate_replies", replies)
    checked = run_eval(
        trained, tmp_path / "a", {"model": "sft"}, {"dataset": [TEST]},
        metrics=["exact_match"], answer_check=CHECK, max_samples=4,
    )  # fmt: skip
    assert [r["correct"] for r in outputs(checked)] == [True, True, False, False]
    assert checked.metrics["exact_match"] == 0.5
    plain = run_eval(
        trained, tmp_path / "b", {"model": "sft"}, {"dataset": [TEST]},
        metrics=["exact_match"], max_samples=4,
    )  # fmt: skip
    assert plain.metrics["exact_match"] == 0.5  # stripped equality with the reference


@pytest.mark.slow
def test_multiple_choice_scores_equal_unbatched_scoring(trained: dict, tmp_path: Path) -> None:
    import torch

    from stages.model.inference import load_for_inference

    ctx = run_eval(
        trained, tmp_path / "out", {"model": "sft"}, {"mc_dataset": [MMLU]},
        metrics=[], mc_dataset="demo_mmlu", n_shot=1, max_samples=6, batch_size=7,
    )  # fmt: skip
    rows = outputs(ctx, "mc_outputs.jsonl")
    assert len(rows) == 6 and ctx.metrics["mc_accuracy"] == sum(r["correct"] for r in rows) / 6
    loaded = load_for_inference(trained["sft"], lambda key: trained["base"])
    shots = mc.read_questions(MMLU)[:1]
    tok = loaded.tokenizer
    for row, q in zip(rows[:2], mc.read_questions(MMLU)[1:3], strict=True):
        (context,) = mc.contexts(loaded, shots, [q], chat=True)
        n = len(tok(context, add_special_tokens=False)["input_ids"])
        for letter, got in zip("ABCD", row["logliks"], strict=True):
            ids = tok(context + letter, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = loaded.model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            want = sum(float(logits[p - 1, ids[p]]) for p in range(n, len(ids)))
            assert got == pytest.approx(want, abs=1e-4)
        assert row["pick"] == "ABCD"[max(range(4), key=lambda i: row["logliks"][i])]


@pytest.mark.slow
def test_reward_model_judges_replies_and_win_rate(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stages.evaluation import generation
    from stages.model.reward import RewardScorer

    real = generation.generate_replies

    def replies(loaded: Any, prompts: list, *args: object) -> list[str]:
        """The baseline answers with the reference (the tiny models' replies are alike)."""
        if loaded.path == trained["base"]:
            return [json.loads(x)["output"] for x in TEST_ROWS[: len(prompts)]]
        return real(loaded, prompts, *args)

    monkeypatch.setattr(generation, "generate_replies", replies)
    ctx = run_eval(
        trained, tmp_path / "out", {"model": "sft", "reward_model": "rm", "baseline": "base"},
        {"dataset": [TEST]}, metrics=["reward", "win_rate"], max_samples=6, max_new_tokens=4,
    )  # fmt: skip
    rows = outputs(ctx)
    scorer = RewardScorer(trained["rm"], lambda key: trained["base"])
    for side in ("generation", "baseline_generation"):
        chats = [[*r["messages"], {"role": "assistant", "content": r[side]}] for r in rows]
        key = "reward" if side == "generation" else "baseline_reward"
        assert scorer(chats) == pytest.approx([r[key] for r in rows], abs=1e-5)
    assert [r["win"] for r in rows] == wins(
        [r["reward"] for r in rows], [r["baseline_reward"] for r in rows]
    )
    assert {r["win"] for r in rows} != {0.5}  # different replies: the judge decides
    assert ctx.metrics["win_rate"] == pytest.approx(sum(r["win"] for r in rows) / 6)
    assert ctx.metrics["reward"] == pytest.approx(sum(r["reward"] for r in rows) / 6)
    # a reward model under eval: its pairwise accuracy, and a clear refusal of generation
    judged = run_eval(
        trained, tmp_path / "rm", {"model": "rm"}, {"dataset": [PREFERENCE]},
        dataset="demo_preference", metrics=["pairwise_accuracy"], max_samples=10,
    )  # fmt: skip
    pairs = outputs(judged)
    assert all(r["correct"] == (r["chosen_reward"] > r["rejected_reward"]) for r in pairs)
    assert judged.metrics["pairwise_accuracy"] == sum(r["correct"] for r in pairs) / 10
    with pytest.raises(
        UserError, match="exact_match, loss need a language model, but model is a reward model"
    ):
        run_eval(trained, tmp_path / "bad", {"model": "rm"}, {"dataset": [TEST]})


PIPELINE = """\
# @package _global_
defaults:
  - /stage@stages.sft: sft
  - /stage@stages.eval: eval

stages:
  sft:
    dataset: demo_sft
    max_samples: 32
    cutoff_len: 64
    max_steps: 1
    report_to: none
  eval:
    model: sft
    dataset: demo_test
    max_samples: 8
    answer_check: stages.data.demo:check_answer
    metrics: [exact_match, loss]
    max_new_tokens: 8
    mc_dataset: demo_mmlu
    n_shot: 1
    lm_eval_tasks: [demo_exact]
    limit: 8
"""


@pytest.mark.slow
def test_a_pipeline_ends_in_eval_with_the_local_lm_eval_task(tmp_path: Path) -> None:
    """Offline: the shipped lm-eval task runs on the tiny model and its score lands in the
    manifest; the summary shows the headline; a rerun is a cache hit."""
    conf = tmp_path / "conf" / "pipeline"
    conf.mkdir(parents=True)
    (conf / "with_eval.yaml").write_text(PIPELINE)
    args = ("run", "+pipeline=with_eval", f"hydra.searchpath=[file://{tmp_path / 'conf'}]")
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    first = pipelines(*args, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    (line,) = [x for x in first.stdout.splitlines() if x.startswith("eval ")]
    assert "ran" in line and "exact_match=" in line
    (manifest,) = (tmp_path / "store" / "artifacts" / "eval").glob("*/manifest.json")
    metrics = json.loads(manifest.read_text())["metrics"]
    assert 0 <= metrics["demo_exact/exact_match"] <= 1
    assert metrics["examples"] == 8 and metrics["mc_questions"] == 8
    assert {"exact_match", "loss", "perplexity", "mc_accuracy"} <= set(metrics)
    files = {p.name for p in manifest.parent.iterdir()}
    assert {"metrics.json", "outputs.jsonl", "mc_outputs.jsonl", "lm_eval_samples.jsonl"} <= files
    samples = (manifest.parent / "lm_eval_samples.jsonl").read_text().splitlines()
    assert len(samples) == 8 and json.loads(samples[0])["task"] == "demo_exact"
    again = pipelines(*args, cwd=tmp_path, env=env)
    (line,) = [x for x in again.stdout.splitlines() if x.startswith("eval ")]
    assert again.returncode == 0 and "cached" in line
