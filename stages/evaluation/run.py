"""One eval run, in the order that keeps one model in memory at a time: the model's own
measurements (loss, replies, multiple choice, harness), then the judge's (a baseline's replies,
then the reward model scoring both)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.base import Context, UserError
from stages.evaluation.examples import EvalExample, read_examples


def evaluate(ctx: Context, cfg: Any) -> None:
    from stages.eval import check_model_kind, check_roles
    from stages.model.loading import REWARD, read_model_json

    resolve = _resolver(ctx)
    reward_model = read_model_json(ctx.inputs["model"]).get("head") == REWARD
    roles = {
        r: str(ctx.inputs[r]) if r in ctx.inputs else None for r in ("reward_model", "baseline")
    }
    _refuse(check_model_kind(cfg, reward_model) + check_roles(cfg, roles))
    _check_data(ctx, cfg, reward_model)
    metrics: dict[str, Any] = {}
    if reward_model:
        metrics |= _pairwise(ctx, cfg, resolve)
    else:
        metrics |= _model_metrics(ctx, cfg, resolve)
    (ctx.out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    ctx.metrics.update(metrics)


def _model_metrics(ctx: Context, cfg: Any, resolve: Callable[[str], Path]) -> dict[str, Any]:
    from stages.eval import GENERATION
    from stages.evaluation.generation import generate_replies

    harness = None
    if cfg.lm_eval_tasks:
        from stages.evaluation.harness import harness_backend

        harness = harness_backend(cfg, ctx.inputs["model"], resolve)
    own = {"loss", "perplexity", *GENERATION} & set(cfg.metrics) or cfg.mc_dataset
    loaded = _load(ctx.inputs["model"], resolve) if own or harness == "hf" else None
    out: dict[str, Any] = {}
    examples: list[EvalExample] = []
    rows: list[dict[str, Any]] = []
    replies: list[str] = []
    if cfg.metrics:
        examples = read_examples(ctx.datasets["dataset"], cfg.max_samples)
        rows = [ex.record() for ex in examples]
        out["examples"] = len(examples)
    if {"loss", "perplexity"} & set(cfg.metrics):
        from stages.evaluation.loss import heldout_loss

        loss, per_example = heldout_loss(loaded, examples, cfg.cutoff_len, cfg.batch_size)
        out |= loss
        _annotate(rows, "loss", per_example)
    if set(GENERATION) & set(cfg.metrics):
        prompts = [ex.messages for ex in examples]
        replies = generate_replies(loaded, prompts, cfg.max_new_tokens, cfg.batch_size)
        _annotate(rows, "generation", replies)
        out |= _text_metrics(cfg, examples, replies, rows)
    if cfg.mc_dataset:
        out |= _multiple_choice(ctx, cfg, loaded)
    if harness == "hf":
        out |= _harness(ctx, cfg, loaded)
    del loaded
    if harness == "vllm":  # the engine loads the model itself, into the memory just freed
        from stages.evaluation.harness import vllm_args

        _free_accelerator()
        out |= _harness(ctx, cfg, vllm_args(ctx.inputs["model"], resolve))
    if {"reward", "win_rate"} & set(cfg.metrics):
        out |= _judged(ctx, cfg, resolve, examples, replies, rows)
    if rows:
        _write_jsonl(ctx.out / "outputs.jsonl", rows)
    return out


def _harness(ctx: Context, cfg: Any, model: Any) -> dict[str, float]:
    """The harness's scores (and its samples, to lm_eval_samples.jsonl); the first task's first
    metric under the task's own name when it is the headline."""
    from stages.eval import EvalStage
    from stages.evaluation.harness import run_harness

    scores, samples = run_harness(model, cfg, ctx.work)
    _write_jsonl(ctx.out / "lm_eval_samples.jsonl", samples)
    first = cfg.lm_eval_tasks[0]
    if EvalStage.headline_for(cfg) == first:  # the summary shows the task's first metric
        scores = {**scores, first: next(v for k, v in scores.items() if k.startswith(f"{first}/"))}
    return scores


def _free_accelerator() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _text_metrics(
    cfg: Any, examples: list[EvalExample], replies: list[str], rows: list[dict[str, Any]]
) -> dict[str, float]:
    from stages.evaluation.generation import answer_checker, bleu, rouge

    out: dict[str, float] = {}
    references = [ex.reference for ex in examples]
    if "exact_match" in cfg.metrics:
        check = answer_checker(cfg.answer_check)
        correct = [check(ex, r) for ex, r in zip(examples, replies, strict=True)]
        _annotate(rows, "correct", correct)
        out["exact_match"] = sum(correct) / len(correct)
    if "bleu" in cfg.metrics:
        out["bleu"] = bleu(replies, references)
    if "rouge" in cfg.metrics:
        out |= rouge(replies, references)
    return out


def _judged(
    ctx: Context,
    cfg: Any,
    resolve: Callable[[str], Path],
    examples: list[EvalExample],
    replies: list[str],
    rows: list[dict[str, Any]],
) -> dict[str, float]:
    """The reward of each reply; with win_rate, the baseline's replies too, and who won."""
    from stages.evaluation.generation import generate_replies
    from stages.evaluation.judge import reply_scores, wins
    from stages.model.reward import RewardScorer

    baseline_replies = None
    if "win_rate" in cfg.metrics:
        baseline = _load(ctx.inputs["baseline"], resolve)
        prompts = [ex.messages for ex in examples]
        baseline_replies = generate_replies(baseline, prompts, cfg.max_new_tokens, cfg.batch_size)
        del baseline
        _annotate(rows, "baseline_generation", baseline_replies)
    scorer = RewardScorer(ctx.inputs["reward_model"], resolve, device=_device())
    scores = reply_scores(scorer, examples, replies, cfg.batch_size)
    _annotate(rows, "reward", scores)
    out = {"reward": sum(scores) / len(scores)}
    if baseline_replies is not None:
        theirs = reply_scores(scorer, examples, baseline_replies, cfg.batch_size)
        won = wins(scores, theirs)
        _annotate(rows, "baseline_reward", theirs)
        _annotate(rows, "win", won)
        out |= {"win_rate": sum(won) / len(won), "baseline_reward": sum(theirs) / len(theirs)}
    return out


def _multiple_choice(ctx: Context, cfg: Any, loaded: Any) -> dict[str, float]:
    """Per dataset: its first n_shot rows are the shots, the rest (up to max_samples) the
    questions; accuracy over all of them."""
    from stages.evaluation import multiple_choice as mc

    rows, right = [], 0
    for entry in ctx.datasets["mc_dataset"]:
        questions = mc.read_questions(entry)
        shots, asked = questions[: cfg.n_shot], questions[cfg.n_shot :][: cfg.max_samples]
        if not asked:
            raise UserError(
                f"mc_dataset '{entry['name']}': {len(questions)} rows leave no question after "
                f"n_shot {cfg.n_shot}"
            )
        chat = cfg.apply_chat_template
        contexts = mc.contexts(loaded, shots, asked, chat)
        sizes = [len(q.choices) for q in asked]
        logliks = mc.choice_logliks(loaded, contexts, sizes, chat, cfg.batch_size)
        _, picks = mc.accuracy(logliks, asked)
        for q, pick, ll in zip(asked, picks, logliks, strict=True):
            right += pick == q.answer
            rows.append(
                {
                    "where": q.where,
                    "question": q.question,
                    "choices": q.choices,
                    "answer": mc.LETTERS[q.answer],
                    "pick": mc.LETTERS[pick],
                    "correct": pick == q.answer,
                    "logliks": ll,
                }
            )
    _write_jsonl(ctx.out / "mc_outputs.jsonl", rows)
    return {"mc_accuracy": right / len(rows), "mc_questions": len(rows)}


def _pairwise(ctx: Context, cfg: Any, resolve: Callable[[str], Path]) -> dict[str, Any]:
    """A reward model under eval: the share of preference pairs it scores chosen over
    rejected."""
    from stages.evaluation.judge import pairwise
    from stages.model.reward import RewardScorer

    examples = read_examples(ctx.datasets["dataset"], cfg.max_samples)
    scorer = RewardScorer(ctx.inputs["model"], resolve, device=_device())
    chosen, rejected = pairwise(scorer, examples, cfg.batch_size)
    rows = [ex.record() for ex in examples]
    for row, ex, c, r in zip(rows, examples, chosen, rejected, strict=True):
        row |= {"rejected": ex.rejected, "chosen_reward": c, "rejected_reward": r, "correct": c > r}
    _write_jsonl(ctx.out / "outputs.jsonl", rows)
    right = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    return {"pairwise_accuracy": right / len(examples), "examples": len(examples)}


def _check_data(ctx: Context, cfg: Any, reward_model: bool) -> None:
    """Each dataset field holds the shape it is read as (entries come from the compiler, which
    checked each one against every shape eval reads)."""
    from stages.data.shapes import MULTIPLE_CHOICE, PREFERENCE, entry_shape

    for entry in ctx.datasets.get("dataset", []) if cfg.metrics else []:
        shape = entry_shape(entry)
        if shape == MULTIPLE_CHOICE:
            raise UserError(
                f"dataset: '{entry['name']}' holds multiple-choice questions: name it as mc_dataset"
            )
        if reward_model and shape != PREFERENCE:
            raise UserError(
                f"dataset: '{entry['name']}' holds {shape} data; a reward model's pairwise "
                "accuracy needs preference pairs (ranking: true), e.g. demo_preference"
            )
    for entry in ctx.datasets.get("mc_dataset", []):
        if entry_shape(entry) != MULTIPLE_CHOICE:
            raise UserError(
                f"mc_dataset: '{entry['name']}' is not multiple-choice data: "
                "declare it with formatting: multiple_choice"
            )


def _refuse(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise UserError("; ".join(f"{key}: {problem}" for key, problem in problems))


def _resolver(ctx: Context) -> Callable[[str], Path]:
    if ctx.resolve is None:
        raise ValueError("eval needs ctx.resolve: an adapter's base is found by its key")
    return ctx.resolve


def _device() -> Any:
    import torch

    return "cuda" if torch.cuda.is_available() else None


def _load(path: Path, resolve: Callable[[str], Path]) -> Any:
    from stages.model.inference import load_for_inference

    return load_for_inference(path, resolve, device=_device())


def _annotate(rows: list[dict[str, Any]], key: str, values: list[Any]) -> None:
    for row, value in zip(rows, values, strict=True):
        row[key] = value


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
