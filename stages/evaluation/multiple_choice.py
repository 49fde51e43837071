"""Multiple-choice accuracy on MMLU-format files: each row a question, its choices (columns A, B,
C, D, ... or one list column `choices`) and the right answer (a letter or an index). The prompt
is n-shot (the first `n_shot` rows, answered, then the question) and the model's choice is the
letter with the highest log-likelihood after "Answer:"."""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from stages.base import UserError

LETTERS = string.ascii_uppercase
HEADER = "The following are multiple choice questions (with answers).\n\n"


@dataclass
class Question:
    where: str
    question: str
    choices: list[str]
    answer: int  # index into choices


def read_questions(entry: dict[str, Any]) -> list[Question]:
    """Every row of an mc_dataset entry; `columns` may rename question / choices / answer."""
    from stages.data.sources import iter_rows

    cols = {"question": "question", "choices": "choices", "answer": "answer"}
    cols |= entry.get("columns") or {}
    return [_question(where, row, cols) for where, row in iter_rows(entry)]


def _question(where: str, row: dict[str, Any], cols: dict[str, str]) -> Question:
    question = row.get(cols["question"])
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: field '{cols['question']}' missing or empty")
    choices = row.get(cols["choices"])
    if choices is None:  # MMLU's own files: one column per letter
        choices = [row[c] for c in LETTERS[: _letter_columns(row)]]
    if not isinstance(choices, list) or len(choices) < 2:
        raise UserError(
            f"{where}: no choices: give columns A, B, ... or a list '{cols['choices']}'"
        )
    answer = row.get(cols["answer"])
    index = LETTERS.find(answer.strip().upper()) if isinstance(answer, str) and answer else answer
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(choices):
        raise UserError(
            f"{where}: field '{cols['answer']}' must be a letter A-{LETTERS[len(choices) - 1]} "
            f"or an index, got {answer!r}"
        )
    return Question(where, question.strip(), [str(c) for c in choices], index)


def _letter_columns(row: dict[str, Any]) -> int:
    n = 0
    while n < len(LETTERS) and LETTERS[n] in row:
        n += 1
    return n


def shot_text(q: Question, answered: bool) -> str:
    lines = [q.question, *(f"{LETTERS[i]}. {c}" for i, c in enumerate(q.choices))]
    return "\n".join(lines) + "\nAnswer:" + (f" {LETTERS[q.answer]}\n\n" if answered else "")


def mc_prompt(shots: list[Question], q: Question) -> str:
    """The header, each shot with its answer, then the question up to "Answer:"."""
    return HEADER + "".join(shot_text(s, True) for s in shots) + shot_text(q, False)


def contexts(loaded: Any, shots: list[Question], qs: list[Question], chat: bool) -> list[str]:
    """Each question's scoring context: the raw n-shot text, or (chat) that text as a user turn
    rendered through the trained template, ready for the reply."""
    from stages.data.encode import render

    texts = [mc_prompt(shots, q) for q in qs]
    if not chat:
        return texts
    return [
        render(loaded.tokenizer, [{"role": "user", "content": t}], generation=True) for t in texts
    ]


def choice_logliks(
    loaded: Any, context: list[str], n_choices: list[int], chat: bool, batch_size: int
) -> list[list[float]]:
    """Log-likelihood of each answer letter (" A" after raw text, "A" as a chat reply) after its
    context: the context is encoded once and the letter's tokens appended, as lm-eval does."""
    from tqdm import tqdm

    tok = loaded.tokenizer
    seqs: list[tuple[list[int], int]] = []  # (ids, number of continuation tokens)
    for ctx_text, n in zip(context, n_choices, strict=True):
        ctx_ids = tok(ctx_text, add_special_tokens=False)["input_ids"]
        for letter in LETTERS[:n]:
            whole = tok(ctx_text + ("" if chat else " ") + letter, add_special_tokens=False)
            cont_ids = (
                whole["input_ids"][len(ctx_ids) :]
                or tok(letter, add_special_tokens=False)["input_ids"]
            )
            ids = (ctx_ids + cont_ids)[-loaded.context_length :]
            seqs.append((ids, len(cont_ids)))
    scores: list[float] = []
    for i in tqdm(range(0, len(seqs), batch_size), desc="multiple choice"):
        scores += _continuation_logprobs(loaded, seqs[i : i + batch_size])
    out, k = [], 0
    for n in n_choices:
        out.append(scores[k : k + n])
        k += n
    return out


def _continuation_logprobs(loaded: Any, seqs: list[tuple[list[int], int]]) -> list[float]:
    """Sum of log-probabilities of each sequence's last n tokens (right padding: positions are
    those of an unpadded forward); the softmax runs only at those positions."""
    import torch

    width = max(len(ids) for ids, _ in seqs)
    pad = loaded.tokenizer.pad_token_id or 0
    ids = torch.tensor([s + [pad] * (width - len(s)) for s, _ in seqs], device=loaded.device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in seqs], device=ids.device)
    with torch.no_grad():
        logits = loaded.model(input_ids=ids, attention_mask=mask).logits
    out = []
    for row, (s, n) in enumerate(seqs):
        at = torch.arange(len(s) - n, len(s), device=logits.device)  # token p is predicted at p-1
        logprobs = logits[row, at - 1].float().log_softmax(-1)
        out.append(float(logprobs.gather(1, ids[row, at, None]).sum()))
    return out


def accuracy(logliks: list[list[float]], qs: list[Question]) -> tuple[float, list[int]]:
    """The share of questions whose right answer has the highest log-likelihood (a tie goes to
    the first letter), and each question's pick."""
    picks = [max(range(len(s)), key=lambda i, s=s: s[i]) for s in logliks]
    right = sum(p == q.answer for p, q in zip(picks, qs, strict=True))
    return right / len(qs), picks
