"""Graders for no-passage QA: SQuAD exact match, token F1, "gold contained", LLM judge.

Every grader returns one score per question: a float in [0, 1] (1.0 right, 0.0 wrong; F1 is
fractional) or ``None`` when the answer could not be graded (the LLM judge was unreachable).
The reference implementation counts grader failures as wrong; here they stay ``None`` and
``qa.ungraded`` decides ('skip', the default, or 'wrong' to reproduce the reference).

Normalisation is the official SQuAD v1.1 evaluation script's: lower-case, drop punctuation,
drop the articles a/an/the, collapse whitespace (Rajpurkar et al. 2016).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 if the normalised prediction equals the normalised gold answer."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token-overlap F1 between normalised prediction and gold, in [0, 1]."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(pred) & Counter(ref)
    overlap = sum(common.values())
    if not pred or not ref:
        return float(pred == ref)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains(prediction: str, gold: str) -> float:
    """1.0 if the normalised gold answer occurs in the normalised prediction, on word boundaries."""
    g, p = normalize_answer(gold), normalize_answer(prediction)
    if not g:
        return 0.0
    return float(f" {g} " in f" {p} ")


_LOCAL = {"exact": exact_match, "f1": token_f1, "contains": contains}


def grade(
    questions: Sequence[str],
    golds: Sequence[str],
    predictions: Sequence[str],
    grader: str,
    judge=None,
    extra: Mapping[str, Callable[[str, str], float]] | None = None,
) -> list[float | None]:
    """Score predictions against gold answers with the named grader.

    Args:
        questions, golds, predictions: equal-length sequences (one entry per question).
        grader: 'exact', 'f1', 'contains', 'judge', or a name of ``extra``.
        judge: an object with ``grade(list[(question, gold, prediction)]) -> list[float | None]``
            (``seal.judge.LLMJudge``); required for 'judge'.
        extra: a task's own graders, ``(prediction, gold) -> score`` by name
            (``seal.tasks.base.Task.graders``: task arc's ``grid``).

    Raises:
        ValueError: unknown grader, mismatched lengths, or 'judge' without a judge.
    """
    if not (len(questions) == len(golds) == len(predictions)):
        raise ValueError("questions, golds and predictions must have equal lengths")
    if grader == "judge":
        if judge is None:
            raise ValueError("grader 'judge' needs an LLM judge (qa.judge settings)")
        return judge.grade(list(zip(questions, golds, predictions, strict=True)))
    local = {**_LOCAL, **(extra or {})}
    if grader not in local:
        raise ValueError(f"unknown grader {grader!r}; known: {', '.join(sorted(local))}, judge")
    fn = local[grader]
    return [fn(p, g) for p, g in zip(predictions, golds, strict=True)]
