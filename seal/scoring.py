"""Scoring self-edits: inner loop, no-passage QA, grading and rewards, one record per evaluation.

Shared by ``seal train`` (rewards for ReST-EM), ``seal evaluate`` and ``seal bench``: an
*evaluation* is one (passage, training data, repetition): train a fresh adapter on the
training texts, answer the passage's questions without the passage, grade, and subtract
the passage's baseline (the un-adapted model's accuracy on the same questions).

Records: an :class:`EvaluationRecord` per evaluation and a :class:`BaselineRecord` per
passage, each one journal line (:meth:`JournalRecord.to_json` / ``from_json``), built only
here (:meth:`EvaluationRecord.graded`, :meth:`EvaluationRecord.failed`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields

from rich.console import Console

from seal.config import InnerLoopConfig, QAConfig, SelfEditConfig
from seal.data import Passage
from seal.graders import grade
from seal.hparams import AdapterSettings, ParsedSelfEdit, parse_self_edit
from seal.inner_loop import (
    AdapterJob,
    AdapterResult,
    adapter_chunks,
    answer_questions,
    run_in_halves,
    run_inner_loop,
)
from seal.prompts import qa_prompt
from seal.rewards import accuracy, reward
from seal.self_edits import train_texts


@dataclass
class Evaluation:
    """One inner-loop evaluation to run.

    Attributes:
        key: identity recorded in the journal (e.g. ``{"kind": "evaluation", "round": 0,
            "passage": 3, "self_edit": 1, "repetition": 0}``); ``passage``, ``self_edit`` and
            ``repetition`` are required.
        passage: the passage whose questions are asked.
        texts: inner-loop training texts (empty: no update, the base model answers).
        seed: adapter initialisation and data-order seed.
        baseline_accuracy: the un-adapted model's accuracy on the passage's questions (a
            fraction in [0, 1]; None: nothing could be graded); the reward subtracts it.
        settings: the inner-loop settings its self-edit chose (hyperparameter self-edits,
            :mod:`seal.hparams`; None: the recipe's ``inner``).
        hparams: the settings it trains with, recorded in its journal line (every key
            resolved: :meth:`seal.hparams.AdapterSettings.resolve`; None: not recorded,
            hyperparameter self-edits off).
        invalid: why its self-edit's hyperparameter block was refused; the evaluation is then
            not run and its record is a failure with this reason.
    """

    key: dict
    passage: Passage
    texts: list[str]
    seed: int
    baseline_accuracy: float | None = None
    settings: AdapterSettings | None = None
    hparams: dict | None = None
    invalid: str | None = None

    @property
    def identity(self) -> tuple[int, int, int]:
        """(passage, self-edit, repetition) indices."""
        return (self.key["passage"], self.key["self_edit"], self.key["repetition"])


class JournalRecord:
    """A journal line as a dataclass: ``key`` (its identity fields, first in the JSON), then the
    other fields in declaration order; a field declared ``field(default=None,
    metadata={"omit_none": True})`` is left out of the JSON while None."""

    key: dict

    def to_json(self) -> dict:
        """The journal line (a dict ready for ``json.dumps``)."""
        row = dict(self.key)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "key" and not (value is None and f.metadata.get("omit_none")):
                row[f.name] = value
        return row

    @classmethod
    def from_json(cls, row: dict):
        """Inverse of :meth:`to_json`: every field of ``row`` not declared belongs to the key."""
        names = {f.name for f in fields(cls)} - {"key"}
        return cls(key={k: v for k, v in row.items() if k not in names}, **{k: row.get(k) for k in names})


@dataclass
class BaselineRecord(JournalRecord):
    """The journal record of one passage's baseline: the un-adapted model's answers.

    Attributes:
        key: identity fields (``seal train``: ``{"kind": "baseline", "round", "passage"}``).
        passage_id: the passage's stable id.
        answers: one answer per question; scores: one score in [0, 1] per question (None: ungraded).
        accuracy: mean score (a fraction; None when nothing could be graded).
        seconds: the passage's share of its batch's wall time.
    """

    key: dict
    passage_id: str
    answers: list[str]
    scores: list[float | None]
    accuracy: float | None
    seconds: float


@dataclass
class EvaluationRecord(JournalRecord):
    """The journal record of one evaluation (one JSON line, :meth:`to_json`).

    Attributes:
        key: the evaluation's identity fields (:attr:`Evaluation.key`), first in the JSON.
        passage_id: the passage's stable id.
        seed: the adapter's seed.
        reward: adapted minus baseline accuracy, in [-1, 1] (with ``qa.reward: accuracy``, the
            adapted accuracy alone, in [0, 1]); ``inner.failure_reward`` (None
            or a number) when the evaluation failed; None when either accuracy is unknown.
        adapter_accuracy: the adapted model's accuracy (fraction; None: failed or ungraded).
        baseline_accuracy: the un-adapted model's accuracy on the same questions.
        answers: one answer per question (empty when failed).
        scores: one score in [0, 1] per question, None where ungraded (empty when failed).
        epoch_losses: mean training loss per inner-loop epoch (nats/token).
        n_train_texts: number of training texts; n_train_tokens: tokens trained on.
        seconds: the evaluation's share of its chunk's wall time.
        error: why the evaluation failed (None: it did not).
        truncated: ``seal train`` only: its self-edit was cut off by
            ``self_edit.max_new_tokens`` (None: not recorded, and absent from the JSON).
        hparams: with hyperparameter self-edits on, the inner-loop settings it trained with
            (``{"lr", "epochs", "loss_on", "lora_rank"}``; None when off or when its block
            was refused, and then absent from the JSON).
    """

    key: dict
    passage_id: str
    seed: int
    reward: float | None
    adapter_accuracy: float | None
    baseline_accuracy: float | None
    answers: list[str]
    scores: list[float | None]
    epoch_losses: list[float]
    n_train_texts: int
    n_train_tokens: int
    seconds: float
    error: str | None
    truncated: bool | None = field(default=None, metadata={"omit_none": True})
    hparams: dict | None = field(default=None, metadata={"omit_none": True})

    @classmethod
    def graded(
        cls, evaluation: Evaluation, result: AdapterResult, qa: QAConfig, judge=None, failure_reward: float | None = None, task: TextQA | None = None
    ) -> EvaluationRecord:
        """The record of an evaluation whose inner loop returned ``result``: its answers graded
        with the recipe's grader (``qa.grader``, ``qa.ungraded``) by ``task`` (the recipe's
        task, ``seal.tasks``; None: :data:`TEXT_QA`), or :meth:`failed` when ``result.error`` is set."""
        if result.error is not None:
            return cls.failed(evaluation, result.error, result.seconds, failure_reward, result)
        scores = (task or TEXT_QA).grade_answers(evaluation.passage, result.answers, qa, judge)
        adapter_accuracy = accuracy(scores, qa.ungraded)
        gain = adapter_accuracy if qa.reward == "accuracy" else reward(adapter_accuracy, evaluation.baseline_accuracy)
        return cls._of(evaluation, result, scores, adapter_accuracy, gain)

    @classmethod
    def failed(
        cls, evaluation: Evaluation, reason: str, seconds: float, failure_reward: float | None = None, result: AdapterResult | None = None
    ) -> EvaluationRecord:
        """The failure form: ``error = reason``, ``reward = failure_reward``, no scores. With
        ``result`` (a job the inner loop reported as failed) its answers, epoch losses and token
        count are kept; without (the evaluation raised) they are empty."""
        result = result if result is not None else AdapterResult([], [], 0)
        failure = AdapterResult(result.answers, result.epoch_losses, result.n_train_tokens, seconds=seconds, error=reason)
        return cls._of(evaluation, failure, [], None, failure_reward)

    @classmethod
    def _of(cls, evaluation: Evaluation, result: AdapterResult, scores, adapter_accuracy, gain) -> EvaluationRecord:
        return cls(
            key=dict(evaluation.key),
            passage_id=evaluation.passage.id,
            seed=evaluation.seed,
            reward=gain,
            adapter_accuracy=adapter_accuracy,
            baseline_accuracy=evaluation.baseline_accuracy,
            answers=result.answers,
            scores=scores,
            epoch_losses=result.epoch_losses,
            n_train_texts=len(evaluation.texts),
            n_train_tokens=result.n_train_tokens,
            seconds=result.seconds,
            error=result.error,
            hparams=evaluation.hparams,
        )

    @property
    def identity(self) -> tuple[int, int, int]:
        """(passage, self-edit, repetition) indices."""
        return (self.key["passage"], self.key["self_edit"], self.key["repetition"])


def self_edit_evaluation(
    key: dict, passage: Passage, completion: str | None, self_edit: SelfEditConfig, inner: InnerLoopConfig, seed: int,
    baseline_accuracy: float | None = None, template: str | None = None,
) -> Evaluation:  # fmt: skip
    """The evaluation of one text self-edit (``completion``; None: the passage alone): its
    training texts (``train_texts``, template ``template`` or ``self_edit.template``) and, with
    ``self_edit.hparams.enabled``, the settings of its hyperparameter block, read by
    :func:`seal.hparams.parse_self_edit` (a refused block: ``invalid`` set to the reason).
    The text tasks' builder (``seal.tasks.base.TextTask.evaluation``)."""
    template = template or self_edit.template
    parsed = parse_self_edit(completion, self_edit.hparams) if completion else ParsedSelfEdit(completion, AdapterSettings())
    enabled = self_edit.hparams.enabled
    return Evaluation(
        key=key,
        passage=passage,
        texts=train_texts(passage, parsed.text, self_edit.split_newlines, template),
        seed=seed,
        baseline_accuracy=baseline_accuracy,
        settings=parsed.settings,
        hparams=parsed.settings.resolve(inner) if enabled and parsed.settings is not None else None,
        invalid=parsed.error,
    )


def make_judge(qa: QAConfig):
    """The LLM judge when ``qa.grader == 'judge'``, else None."""
    if qa.grader != "judge":
        return None
    # Here, not at the top: seal.judge loads the judge's HTTP client, needed only for qa.grader=judge.
    from seal.judge import LLMJudge

    return LLMJudge(qa.judge)


def question_prompts(passage: Passage, template: str = "reference") -> list[str]:
    """No-passage QA prompts for every question of the passage (``template``: ``qa.template``)."""
    return [qa_prompt(passage.title, q.question, template) for q in passage.questions]


def judge_question(passage: Passage, question: str, qa: QAConfig) -> str:
    """The question as the LLM judge reads it: with ``qa.judge.prompt: reference``, prefixed by
    the passage's ``Topic: <title>`` line as the reference sends it
    (knowledge-incorporation/src/query/query_server.py:129); with ``strict``, as written."""
    return f"Topic: {passage.title}\n{question}" if qa.judge.prompt == "reference" else question


def n_prompts(passage: Passage) -> int:
    """How many prompts (and so answers) :func:`question_prompts` gives the passage."""
    return len(passage.questions)


def grade_answers(passage: Passage, answers: Sequence[str], qa: QAConfig, judge=None, graders: Mapping[str, Callable[[str, str], float]] | None = None) -> list[float | None]:
    """Grade one passage's answers (one per question) with the recipe's grader (``qa.grader``,
    looked up in ``graders`` first: a task's own graders): one score per question."""
    questions = [judge_question(passage, q.question, qa) if qa.grader == "judge" else q.question for q in passage.questions]
    return grade(questions, [q.answer for q in passage.questions], answers, qa.grader, judge, graders)


class TextQA:
    """How a passage's questions are asked and graded, one prompt per question: the base of
    every task (``seal.tasks.base.Task``), which may ask more prompts per question and grade
    them otherwise (ARC's vote). The scoring functions take one (None: :data:`TEXT_QA`)."""

    def question_prompts(self, passage: Passage, template: str = "reference") -> list[str]:
        """The passage's no-passage QA prompts (:func:`question_prompts`)."""
        return question_prompts(passage, template)

    def n_prompts(self, passage: Passage) -> int:
        """How many prompts :meth:`question_prompts` gives the passage."""
        return n_prompts(passage)

    def graders(self) -> dict[str, Callable[[str, str], float]]:
        """Graders of this task beyond :mod:`seal.graders`' own, by ``qa.grader`` name."""
        return {}

    def grade_answers(self, passage: Passage, answers: Sequence[str], qa: QAConfig, judge=None) -> list[float | None]:
        """One score per question of the passage's answers (one per prompt of :meth:`question_prompts`)."""
        return grade_answers(passage, answers, qa, judge, self.graders())


#: Text QA: one prompt per question, graded by ``qa.grader``.
TEXT_QA = TextQA()


def baselines(model, tokenizer, passages: Sequence[Passage], qa: QAConfig, judge=None, task: TextQA | None = None) -> list[dict]:
    """The un-adapted model's answers, scores and accuracy per passage, in one batched generation
    (prompts and grading: ``task``'s, None: :data:`TEXT_QA`).

    Returns one ``{"answers", "scores", "accuracy", "seconds"}`` per passage (seconds: the
    passage's share of the wall time): the fields of a :class:`BaselineRecord` but its key.
    """
    task = task or TEXT_QA
    t0 = time.perf_counter()
    prompts = [pr for p in passages for pr in task.question_prompts(p, qa.template)]
    answers = answer_questions(model, tokenizer, prompts, qa.max_new_tokens, qa.batch_size)
    out, i = [], 0
    for p in passages:
        a = answers[i : i + task.n_prompts(p)]
        i += task.n_prompts(p)
        scores = task.grade_answers(p, a, qa, judge)
        out.append({"answers": a, "scores": scores, "accuracy": accuracy(scores, qa.ungraded)})
    dt = (time.perf_counter() - t0) / max(len(passages), 1)
    for row in out:
        row["seconds"] = dt
    return out


def score_evaluations(
    model,
    tokenizer,
    evaluations: Sequence[Evaluation],
    inner: InnerLoopConfig,
    qa: QAConfig,
    judge=None,
    on_record: Callable[[EvaluationRecord], None] | None = None,
    progress: Callable[[int], None] | None = None,
    retry_in_halves: bool = False,
    console: Console | None = None,
    task: TextQA | None = None,
) -> list[EvaluationRecord]:
    """Run evaluations in chunks of ``inner.batch_adapters`` (one batched inner loop each);
    one record per evaluation, in order.

    ``on_record`` is called with each record as soon as its chunk is graded (the trainer
    appends it to the journal there, so finished work survives a crash); ``progress(n)``
    after each chunk with its size.

    With ``retry_in_halves`` an exception from a chunk (CUDA out-of-memory above all;
    anything but a judge configuration error, ``seal.judge.JudgeError``) does not propagate:
    the chunk is retried in halves down to single evaluations
    (:func:`seal.inner_loop.run_in_halves`, warnings on ``console``), and one that still
    raises gets :meth:`EvaluationRecord.failed` with the reason. Without it, exceptions
    propagate.
    """
    records: dict[int, EvaluationRecord] = {}  # by position in ``evaluations``
    position = {id(evaluation): i for i, evaluation in enumerate(evaluations)}

    def keep(evaluation: Evaluation, record: EvaluationRecord) -> None:
        if position[id(evaluation)] in records:
            return  # reported before its chunk raised, and now again by the retry
        records[position[id(evaluation)]] = record
        if on_record:
            on_record(record)

    def run_chunk(chunk: list[Evaluation]) -> None:
        for evaluation in chunk:
            if evaluation.invalid is not None:  # a refused hyperparameter block: nothing to run
                keep(evaluation, EvaluationRecord.failed(evaluation, evaluation.invalid, 0.0, inner.failure_reward))
        chunk = [evaluation for evaluation in chunk if evaluation.invalid is None]
        jobs = [
            AdapterJob(texts=evaluation.texts, prompts=(task or TEXT_QA).question_prompts(evaluation.passage, qa.template), seed=evaluation.seed, settings=evaluation.settings)
            for evaluation in chunk
        ]
        results = run_inner_loop(model, tokenizer, jobs, inner, qa.max_new_tokens, qa.batch_size)
        for evaluation, result in zip(chunk, results, strict=True):
            keep(evaluation, EvaluationRecord.graded(evaluation, result, qa, judge, inner.failure_reward, task))

    def warn(n: int, reason: str) -> None:
        if console is not None:
            console.print(f"[yellow]warning:[/] a batch of {n} evaluations failed ({reason}); retrying in halves")

    fatal: tuple[type[BaseException], ...] = ()
    if retry_in_halves:
        # Here, not at the top: seal.judge loads the judge's HTTP client, needed only for qa.grader=judge.
        from seal.judge import JudgeError

        fatal = (JudgeError,)
    for chunk in adapter_chunks(evaluations, inner.batch_adapters):
        if retry_in_halves:
            run_in_halves(
                chunk, run_chunk, lambda evaluation, reason, seconds: keep(evaluation, EvaluationRecord.failed(evaluation, reason, seconds, inner.failure_reward)),
                fatal=fatal, on_retry=warn,
            )  # fmt: skip
        else:
            run_chunk(chunk)
        if progress:
            progress(len(chunk))
    return [records[i] for i in sorted(records)]


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
    task: TextQA | None = None,
) -> list[dict]:
    """:func:`score_evaluations` in JSON form (for ``seal.bench.protocols``): each evaluation's
    ``baseline_accuracy`` is set from ``baseline_accuracy(evaluation)`` first, and records go
    to ``on_record`` and the result as :meth:`EvaluationRecord.to_json` dicts."""
    for evaluation in evaluations:
        evaluation.baseline_accuracy = baseline_accuracy(evaluation)
    report = (lambda record: on_record(record.to_json())) if on_record else None
    return [record.to_json() for record in score_evaluations(model, tokenizer, evaluations, inner, qa, judge, report, progress, task=task)]
