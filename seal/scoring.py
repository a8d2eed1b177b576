"""Scoring self-edits: inner loop, no-passage QA, grading and rewards, one record per evaluation.

Shared by ``seal train`` (rewards for ReST-EM), ``seal evaluate`` and ``seal bench``: an
*evaluation* is one (passage, training data, repetition): train a fresh adapter on the
training texts, answer the passage's questions without the passage, grade, and subtract
the passage's baseline (the un-adapted model's accuracy on the same questions).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from seal.config import InnerLoopConfig, QAConfig
from seal.data import Passage
from seal.graders import grade
from seal.inner_loop import AdapterJob, answer_questions, run_inner_loop
from seal.prompts import qa_prompt
from seal.rewards import accuracy, reward


@dataclass
class Evaluation:
    """One inner-loop evaluation to run.

    Attributes:
        key: identity recorded in the journal (e.g. ``{"round": 0, "passage": 3, "self_edit": 1, "repetition": 0}``).
        passage: the passage whose questions are asked.
        texts: inner-loop training texts (empty: no update, the base model answers).
        seed: adapter initialisation and data-order seed.
    """

    key: dict
    passage: Passage
    texts: list[str]
    seed: int


def make_judge(qa: QAConfig):
    """The LLM judge when ``qa.grader == 'judge'``, else None."""
    if qa.grader != "judge":
        return None
    from seal.judge import LLMJudge

    return LLMJudge(qa.judge)


def question_prompts(passage: Passage, template: str = "reference") -> list[str]:
    """No-passage QA prompts for every question of the passage (``template``: ``qa.template``)."""
    return [qa_prompt(passage.title, q.question, template) for q in passage.questions]


def grade_answers(passage: Passage, answers: Sequence[str], qa: QAConfig, judge=None) -> list[float | None]:
    """Grade one passage's answers (one per question) with the recipe's grader."""
    return grade([q.question for q in passage.questions], [q.answer for q in passage.questions], answers, qa.grader, judge)


def baselines(model, tokenizer, passages: Sequence[Passage], qa: QAConfig, judge=None) -> list[dict]:
    """The un-adapted model's answers, scores and accuracy per passage, in one batched generation.

    Returns one ``{"answers", "scores", "accuracy", "seconds"}`` per passage (seconds: the
    passage's share of the wall time).
    """
    t0 = time.perf_counter()
    prompts = [pr for p in passages for pr in question_prompts(p, qa.template)]
    answers = answer_questions(model, tokenizer, prompts, qa.max_new_tokens, qa.batch_size)
    out, i = [], 0
    for p in passages:
        a = answers[i : i + len(p.questions)]
        i += len(p.questions)
        scores = grade_answers(p, a, qa, judge)
        out.append({"answers": a, "scores": scores, "accuracy": accuracy(scores, qa.ungraded)})
    dt = (time.perf_counter() - t0) / max(len(passages), 1)
    for row in out:
        row["seconds"] = dt
    return out


def run_evaluations(
    model,
    tokenizer,
    evaluations: Sequence[Evaluation],
    baseline_accuracy: Callable[[Evaluation], float | None],
    inner: InnerLoopConfig,
    qa: QAConfig,
    judge=None,
    on_record: Callable[[dict], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
    """Run evaluations in chunks of ``inner.batch_adapters``; one journal record each, in order.

    ``on_record`` is called with each record as soon as its chunk is graded (the trainer
    appends it to the journal there, so finished work survives a crash).

    A record: the evaluation's key, plus ``reward`` (adapted minus baseline accuracy;
    ``inner.failure_reward`` or None when the evaluation failed), ``adapter_accuracy``,
    ``baseline_accuracy``, ``answers``, ``scores`` (per question; None = ungraded),
    ``epoch_losses``, ``n_train_texts``, ``n_train_tokens``, ``seconds`` and ``error``.
    """
    records = []
    n = inner.batch_adapters
    for start in range(0, len(evaluations), n):
        chunk = evaluations[start : start + n]
        jobs = [AdapterJob(texts=e.texts, prompts=question_prompts(e.passage, qa.template), seed=e.seed) for e in chunk]
        results = run_inner_loop(model, tokenizer, jobs, inner, qa.max_new_tokens, qa.batch_size)
        for ev, res in zip(chunk, results, strict=True):
            base = baseline_accuracy(ev)
            if res.error is None:
                scores = grade_answers(ev.passage, res.answers, qa, judge)
                acc = accuracy(scores, qa.ungraded)
                rew = reward(acc, base)
            else:
                scores, acc, rew = [], None, inner.failure_reward
            rec = {
                **ev.key,
                "passage_id": ev.passage.id,
                "seed": ev.seed,
                "reward": rew,
                "adapter_accuracy": acc,
                "baseline_accuracy": base,
                "answers": res.answers,
                "scores": scores,
                "epoch_losses": res.epoch_losses,
                "n_train_texts": len(ev.texts),
                "n_train_tokens": res.n_train_tokens,
                "seconds": res.seconds,
                "error": res.error,
            }
            records.append(rec)
            if on_record:
                on_record(rec)
        if progress:
            progress(len(chunk))
    return records
