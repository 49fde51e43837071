"""Greedy replies to the eval prompts (batched, KV cache, the trained template and stop tokens:
stages/model/inference.py) and the metrics over them: exact match (a user's `answer_check`
function, else the stripped reply equals the reference), BLEU (sacrebleu) and ROUGE
(rouge-score)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stages.base import UserError
from stages.evaluation.examples import EvalExample

Check = Callable[[EvalExample, str], bool]
EXTRA = "pip install 'pipelines[eval]'"


def generate_replies(
    loaded: Any, prompts: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int
) -> list[str]:
    """The model's greedy reply text to each prompt (a list of messages). Prompts run sorted by
    length (less padding per batch) and come back in their order; a prompt longer than the
    context loses its left part."""
    from tqdm import tqdm

    from stages.model.inference import greedy_generate

    room = max(1, loaded.context_length - max_new_tokens)
    ids = [loaded.prompt_ids(p)[-room:] for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    with tqdm(total=len(ids), desc="generate") as bar:
        replies = greedy_generate(
            loaded, [ids[i] for i in order], max_new_tokens, batch_size, progress=bar.update
        )
    texts = [""] * len(ids)
    for i, reply in zip(order, replies, strict=True):
        texts[i] = loaded.tokenizer.decode(reply, skip_special_tokens=True)
    return texts


def answer_checker(path: str | None) -> Check:
    """`module:function(instruction, input, answer) -> bool` (e.g.
    `stages.data.demo:check_answer`), called with the last user turn split at its first
    newline; without one, the stripped reply must equal the stripped reference."""
    if not path:
        return lambda ex, reply: reply.strip() == ex.reference.strip()
    from stages.rl.reward_funcs import _import

    func = _import(path, "answer_check")

    def check(ex: EvalExample, reply: str) -> bool:
        instruction, inp = ex.instruction_input()
        try:
            return bool(func(instruction, inp, reply))
        except ValueError as e:  # the checker does not know this prompt: a misrouted eval
            raise UserError(f"{ex.where}: answer_check '{path}' cannot check this row ({e})") from e

    return check


def bleu(replies: list[str], references: list[str]) -> float:
    """Corpus BLEU (0-100); n-gram orders no reply reaches are left out (effective order), so
    short answers are not scored 0 for lacking 4-grams."""
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        raise UserError(f"metrics: bleu needs sacrebleu: {EXTRA}") from None
    return float(BLEU(effective_order=True).corpus_score(replies, [references]).score)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(replies: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1 / ROUGE-2 / ROUGE-L F1 (0-1) over the examples."""
    try:
        from rouge_score.rouge_scorer import RougeScorer
    except ImportError:
        raise UserError(f"metrics: rouge needs rouge-score: {EXTRA}") from None
    scorer = RougeScorer(list(ROUGE_TYPES))
    scores = [scorer.score(ref, reply) for reply, ref in zip(replies, references, strict=True)]
    return {t: sum(s[t].fmeasure for s in scores) / len(scores) for t in ROUGE_TYPES}
