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
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

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
    free_memory,
    out_of_memory_types,
    run_inner_loop,
)
from seal.prompts import qa_prompt
from seal.rewards import accuracy, reward
from seal.self_edits import train_texts

if TYPE_CHECKING:
    from seal.helper import SharedChunks

T = TypeVar("T")


@dataclass(frozen=True)
class RoundKey:
    """The identity of a ReST-EM evaluation (``seal train``): round, passage (index in the
    round's list), self-edit (index among the passage's ``k``), repetition. JSON form:
    ``{"kind": "evaluation", "round", "passage", "self_edit", "repetition"}``."""

    round: int
    passage: int
    self_edit: int
    repetition: int

    def to_json(self) -> dict:
        return {"kind": "evaluation", "round": self.round, "passage": self.passage, "self_edit": self.self_edit, "repetition": self.repetition}

    @property
    def id(self) -> tuple:
        """What tells it apart from the run's other evaluations (the journal's identity)."""
        return (self.round, self.passage, self.self_edit, self.repetition)

    @staticmethod
    def id_of(row: dict) -> tuple:
        """:attr:`id` of a journal row of this kind."""
        return (row["round"], row["passage"], row["self_edit"], row["repetition"])


@dataclass(frozen=True)
class StepKey:
    """The identity of a GRPO / RLOO evaluation (``seal.grpo``): optimizer step, passage,
    self-edit (the completion's place among the step's completions of its passage),
    repetition, and the completion (its text's hash; the text itself is recorded beside, not
    part of the identity). JSON form: ``{"kind": "evaluation", "step", "passage",
    "self_edit", "repetition", "completion", "completion_text"}``."""

    step: int
    passage: int
    self_edit: int
    repetition: int
    completion: str
    completion_text: str

    def to_json(self) -> dict:
        return {
            "kind": "evaluation", "step": self.step, "passage": self.passage, "self_edit": self.self_edit,
            "repetition": self.repetition, "completion": self.completion, "completion_text": self.completion_text,
        }  # fmt: skip

    @property
    def id(self) -> tuple:
        return (self.step, self.passage, self.self_edit, self.repetition, self.completion)

    @staticmethod
    def id_of(row: dict) -> tuple:
        return (row["step"], row["passage"], row["self_edit"], row["repetition"], row["completion"])


@dataclass(frozen=True)
class SourceKey:
    """The identity of an evaluation of a self-edit source (``seal evaluate``, ``seal bench``'s
    single-passage protocol): source, passage, self-edit, repetition; ``context``: fields
    before them naming the bench cell (protocol, student), in order. JSON form:
    ``{**context, "source", "passage", "self_edit", "repetition"}``."""

    source: str
    passage: int
    self_edit: int
    repetition: int
    context: tuple[tuple[str, Any], ...] = ()

    def to_json(self) -> dict:
        return {**dict(self.context), "source": self.source, "passage": self.passage, "self_edit": self.self_edit, "repetition": self.repetition}

    @property
    def id(self) -> tuple:
        return (self.passage, self.self_edit, self.repetition)

    @staticmethod
    def id_of(row: dict) -> tuple:
        return (row["passage"], row["self_edit"], row["repetition"])


#: An evaluation's typed identity, one kind per outer loop.
EvaluationKey = RoundKey | StepKey | SourceKey


@dataclass
class Evaluation:
    """One inner-loop evaluation to run.

    Attributes:
        key: its identity (:data:`EvaluationKey`: :class:`RoundKey`, :class:`StepKey` or
            :class:`SourceKey`), recorded in the journal as its JSON form.
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
        truncated: its self-edit was cut off by ``self_edit.max_new_tokens`` (None: not
            known, and not recorded); its record carries it.
    """

    key: EvaluationKey
    passage: Passage
    texts: list[str]
    seed: int
    baseline_accuracy: float | None = None
    settings: AdapterSettings | None = None
    hparams: dict | None = None
    invalid: str | None = None
    truncated: bool | None = None

    @property
    def identity(self) -> tuple[int, int, int]:
        """(passage, self-edit, repetition) indices."""
        return (self.key.passage, self.key.self_edit, self.key.repetition)


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
        truncated: its self-edit was cut off by ``self_edit.max_new_tokens``
            (:attr:`Evaluation.truncated`; None: not recorded, and absent from the JSON).
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
            key=evaluation.key.to_json(),
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
            truncated=evaluation.truncated,
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
    them otherwise (e.g. a vote over augmented queries). The scoring functions take one (None: :data:`TEXT_QA`)."""

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


def run_in_halves(
    chunk: Sequence[T],
    run: Callable[[list[T]], None],
    on_failure: Callable[[T, str, float], None],
    fatal: tuple[type[BaseException], ...] = (),
    on_retry: Callable[[int, str], None] | None = None,
) -> None:
    """``run(chunk)``; if it raises, retry each half of the chunk the same way, down to one item.

    The out-of-memory handling of batched inner loops: a smaller adapter batch needs less
    memory. An exception of a ``fatal`` type propagates at once (a configuration error, not
    a fault); any other (out of memory above all) frees memory, reports
    ``on_retry(len(chunk), reason)`` and splits the chunk. A single item that still raises
    is reported as ``on_failure(item, reason, seconds)`` (seconds: its last try's wall time)
    and the others go on. ``run`` may have reported part of a chunk before raising: whoever
    records results must ignore ones already seen.
    """
    chunk = list(chunk)
    t0 = time.perf_counter()
    try:
        run(chunk)
        return
    except fatal:
        raise
    except out_of_memory_types() as e:
        reason = f"out of memory with {len(chunk)} adapter(s) per batch: {_first_line(e)}".rstrip(": ")
    except Exception as e:
        reason = f"{type(e).__name__}: {_first_line(e)}".rstrip(": ")
    free_memory()
    if len(chunk) > 1:
        if on_retry is not None:
            on_retry(len(chunk), reason)
        half = (len(chunk) + 1) // 2
        for part in (chunk[:half], chunk[half:]):
            run_in_halves(part, run, on_failure, fatal, on_retry)
        return
    on_failure(chunk[0], reason, time.perf_counter() - t0)


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""


#: ``deal(chunks, score_chunk) -> {id: record}``: how :meth:`Scorer.score` runs its chunks
#: (``seal.stages.run_stage``: round-robin over the processes, gathered); None: all here, in order.
Deal = Callable[[list[list[Evaluation]], Callable[[list[Evaluation]], dict[Hashable, "EvaluationRecord"]]], dict[Hashable, "EvaluationRecord"]]


@dataclass
class Scorer:
    """The one path from evaluations to journaled records, shared by ReST-EM
    (``seal.stages.evaluations_stage``), GRPO / RLOO (``seal.grpo.InnerLoopReward``),
    ``seal evaluate`` and ``seal bench`` (:func:`run_evaluations`).

    :meth:`score` cuts the evaluations once into chunks of ``inner.batch_adapters``
    (:func:`seal.inner_loop.adapter_chunks`), skips the chunks whose every evaluation is
    already journaled (``finished``, by key id), and scores each other chunk (:meth:`score_chunk`: one batched inner loop; a refused
    hyperparameter block is a failure without running anything; with ``retry_in_halves``, an
    exception other than a judge configuration error retries the chunk in halves,
    :func:`run_in_halves`, and an evaluation that still fails gets its failure record). Each
    record is built whole (:meth:`EvaluationRecord.graded` / ``failed``) and handed to
    ``journal`` the moment its chunk is graded, so finished work survives a crash.

    Attributes:
        model, tokenizer: the learner; inner, qa: the recipe's inner loop and QA settings.
        task: the recipe's task (``seal.tasks``): question prompts and grading (None: :data:`TEXT_QA`).
        judge: the LLM judge (``qa.grader: judge``), else None.
        journal: called with each new record (appends it to the journal); None: not journaled.
        retry_in_halves: catch a chunk's failures (above); False: exceptions propagate.
        console: where the retry warnings go.
        progress: called with the number of evaluations each chunk finished (and, first, the
            number read back from the journal).
        share: the chunks are shared with a helper process (``seal.helper``: ``seal microworld
            demo``'s second process), which computes some of them; None: all computed here
            (or dealt by :meth:`score`'s ``deal``). Same records either way.
    """

    model: Any
    tokenizer: Any
    inner: InnerLoopConfig
    qa: QAConfig
    task: TextQA | None = None
    judge: Any = None
    journal: Callable[[EvaluationRecord], None] | None = None
    retry_in_halves: bool = False
    console: Console | None = None
    progress: Callable[[int], None] | None = None
    share: SharedChunks | None = None

    def score(
        self, evaluations: Sequence[Evaluation], finished: Mapping[Hashable, EvaluationRecord] | None = None, deal: Deal | None = None
    ) -> list[EvaluationRecord]:
        """The record of every evaluation, in order: those in ``finished`` (by ``key.id``)
        read back, the others computed, journaled and returned. ``deal``: see :data:`Deal`.

        ``evaluations`` are cut into chunks whatever is finished, and a chunk with any member
        not finished is computed whole (its finished members again, neither journaled nor
        returned: their journaled records stand), so each evaluation is computed in the same
        chunk as in one uninterrupted run."""
        finished = finished or {}
        chunks = [chunk for chunk in adapter_chunks(evaluations, self.inner.batch_adapters) if any(e.key.id not in finished for e in chunk)]
        n_pending = sum(e.key.id not in finished for chunk in chunks for e in chunk)
        if self.progress and n_pending < len(evaluations):
            self.progress(len(evaluations) - n_pending)

        def by_id(chunk: list[Evaluation]) -> dict[Hashable, EvaluationRecord]:
            records = self.score_chunk(chunk, finished)
            return {e.key.id: record for e, record in zip(chunk, records, strict=True) if e.key.id not in finished}

        if self.share is not None:
            done = self.share.score(self, chunks, finished)
        elif deal is not None:
            done = deal(chunks, by_id)
        else:
            done = {}
            for chunk in chunks:
                done.update(by_id(chunk))
        done = {**done, **finished}
        return [done[evaluation.key.id] for evaluation in evaluations]

    def score_chunk(self, chunk: Sequence[Evaluation], finished: Mapping[Hashable, EvaluationRecord] | None = None) -> list[EvaluationRecord]:
        """The records of one chunk (at most ``inner.batch_adapters`` evaluations), in order,
        each journaled as it is built but those in ``finished`` (computed again, not journaled)."""
        finished = finished or {}
        records: dict[int, EvaluationRecord] = {}  # by position in ``chunk``
        position = {id(evaluation): i for i, evaluation in enumerate(chunk)}
        inner, qa, task = self.inner, self.qa, self.task or TEXT_QA

        def keep(evaluation: Evaluation, record: EvaluationRecord) -> None:
            if position[id(evaluation)] in records:
                return  # reported before its part raised, and now again by the retry
            records[position[id(evaluation)]] = record
            if self.journal and evaluation.key.id not in finished:
                self.journal(record)

        def run(part: list[Evaluation]) -> None:
            for evaluation in part:
                if evaluation.invalid is not None:  # a refused hyperparameter block: nothing to run
                    keep(evaluation, EvaluationRecord.failed(evaluation, evaluation.invalid, 0.0, inner.failure_reward))
            part = [evaluation for evaluation in part if evaluation.invalid is None]
            jobs = [
                AdapterJob(texts=e.texts, prompts=task.question_prompts(e.passage, qa.template), seed=e.seed, settings=e.settings) for e in part
            ]
            results = run_inner_loop(self.model, self.tokenizer, jobs, inner, qa.max_new_tokens, qa.batch_size)
            for evaluation, result in zip(part, results, strict=True):
                keep(evaluation, EvaluationRecord.graded(evaluation, result, qa, self.judge, inner.failure_reward, task))

        if self.retry_in_halves:
            # Here, not at the top: seal.judge loads the judge's HTTP client, needed only for qa.grader=judge.
            from seal.judge import JudgeError

            run_in_halves(
                chunk, run, lambda evaluation, reason, seconds: keep(evaluation, EvaluationRecord.failed(evaluation, reason, seconds, inner.failure_reward)),
                fatal=(JudgeError,), on_retry=self._warn,
            )  # fmt: skip
        else:
            run(list(chunk))
        if self.progress:
            self.progress(sum(e.key.id not in finished for e in chunk))
        return [records[i] for i in range(len(chunk))]

    def _warn(self, n: int, reason: str) -> None:
        if self.console is not None:
            self.console.print(f"[yellow]warning:[/] a batch of {n} evaluations failed ({reason}); retrying in halves")


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
    """Every evaluation scored (:class:`Scorer`, nothing read back): one record each, in order;
    ``on_record`` gets each as its chunk is graded."""
    scorer = Scorer(model, tokenizer, inner, qa, task, judge, on_record, retry_in_halves, console, progress)
    return scorer.score(evaluations)


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
    finished: Sequence[dict] = (),
    share: SharedChunks | None = None,
) -> list[dict]:
    """:class:`Scorer` in JSON form (for ``seal.bench.protocols``): each evaluation's
    ``baseline_accuracy`` is set from ``baseline_accuracy(evaluation)`` first; ``finished``
    (journal rows of these evaluations' kind) are read back, not recomputed; the new records go
    to ``on_record`` and every record to the result as :meth:`EvaluationRecord.to_json` dicts
    (a read-back row as it was journaled). ``share``: :attr:`Scorer.share`."""
    for evaluation in evaluations:
        evaluation.baseline_accuracy = baseline_accuracy(evaluation)
    id_of = type(evaluations[0].key).id_of if evaluations else None
    rows = {id_of(row): row for row in finished} if id_of else {}
    report = (lambda record: on_record(record.to_json())) if on_record else None
    scorer = Scorer(model, tokenizer, inner, qa, task, judge, report, progress=progress, share=share)
    records = scorer.score(evaluations, {key: EvaluationRecord.from_json(row) for key, row in rows.items()})
    return [rows.get(e.key.id) or record.to_json() for e, record in zip(evaluations, records, strict=True)]
