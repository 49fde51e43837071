"""The eval stage: its metrics on a tiny trained model (exact match through the demo checker,
held-out loss equal to the model's own, multiple choice equal to unbatched scoring), the reward
model as judge, and a pipeline that ends in eval with the shipped lm-eval task, offline, its
score in the manifest. Without a model (metric functions, rules, refusals):
tests/test_eval_units.py."""

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
from stages.evaluation.judge import wins
from tests.cli import pipelines
from tests.eval_data import CHECK, MMLU, PREFERENCE, TEST, TEST_ROWS
from tests.training import base_and_data, run_sft


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
