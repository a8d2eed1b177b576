"""SEAL's three evaluation protocols, each producing per-question verdicts for one (source, student).

Every protocol returns an :class:`Outcome` whose ``verdicts[i][q]`` is the score of question
``q`` of passage ``i`` (in [0, 1]; a mean over self-edits and repetitions; ``None`` when it
was never graded), which :mod:`seal.bench.stats` turns into accuracies and intervals.

1. ``single`` (paper Table 2): for every (passage, self-edit, repetition) a fresh LoRA adapter
   learns the texts built from that one self-edit and answers that passage's questions.
   This is :func:`seal.scoring.run_evaluations` on :func:`seal.evaluate.evaluations_for`.
2. ``multi`` (paper Section 4.2, continued pretraining): one adapter learns the pooled texts of
   all n passages (the inner loop shuffles them per epoch) and answers all their questions;
   the answers are split back per passage.
3. ``continual`` (paper Section 5): passages arrive one after another; step i trains LoRA on
   passage i's texts and merges it into the model (:func:`seal.inner_loop.train_and_merge`),
   then every passage seen so far is scored: ``matrix[i][j]`` = accuracy on passage j after
   step i (j <= i), NaN above the diagonal.

Seeds depend on the bench seed and the evaluation's identity, never on the source or the
student, so two sources are compared under the same adapter seeds (common random numbers).

Resuming (``seal bench --resume``): every runner takes ``done``, the journal records this
(protocol, student, source) already holds, and reads them back instead of recomputing them:
single reuses each journaled adapter, multi each journaled repetition, continual each
repetition whose every step is journaled (a repetition cut off mid-sequence is recomputed,
its journaled steps not journaled again). Since each adapter's seed is its identity's, the
outcome equals an uninterrupted run's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import fmean

from seal.bench.config import ProtocolConfig, merged_inner
from seal.config import Recipe
from seal.data import Passage
from seal.evaluate import evaluations_for
from seal.inner_loop import (
    AdapterJob,
    InnerLoopError,
    answer_questions,
    run_inner_loop,
    train_and_merge,
)
from seal.rewards import accuracy
from seal.scoring import grade_answers, n_prompts, question_prompts, run_evaluations
from seal.seeding import derive_seed

Verdicts = list[list[float | None]]
OnRecord = Callable[[dict], None]


@dataclass
class Outcome:
    """What one protocol produced for one (source, student).

    Attributes:
        verdicts: per passage, per question: mean score over self-edits and repetitions (None: never graded).
        n_runs: adapters trained (single: evaluations; multi: repetitions; continual: merge steps).
        n_failed: of those, how many failed (non-finite loss, nothing to train on).
        matrix: continual only: (n, n) accuracies, ``matrix[i][j]`` after step i on passage j, NaN for j > i
            (mean over repetitions).
    """

    verdicts: Verdicts
    n_runs: int = 0
    n_failed: int = 0
    matrix: list[list[float]] | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def protocol_recipe(recipe: Recipe, name: str, proto: ProtocolConfig) -> Recipe:
    """The recipe a protocol runs under: its inner overrides, repetitions and split_newlines applied.

    ``inner.eval_times`` becomes the protocol's repetitions (single: default inner.eval_times;
    multi and continual: default 1).
    """
    inner = merged_inner(recipe.inner, proto.inner)
    reps = proto.repetitions or (inner.eval_times if name == "single" else 1)
    inner = inner.model_copy(update={"eval_times": reps})
    self_edit = recipe.self_edit
    if proto.split_newlines is not None:
        self_edit = self_edit.model_copy(update={"split_newlines": proto.split_newlines})
    return recipe.model_copy(update={"inner": inner, "self_edit": self_edit})


def _single_key(row: dict) -> tuple:
    return row["passage"], row["self_edit"], row["repetition"]


def mean_question_scores(runs: Sequence[Sequence[float | None]], n_questions: int, ungraded: str) -> list[float | None]:
    """Per question, the mean of its scores over runs (self-edits x repetitions).

    ``ungraded='wrong'`` counts a None as 0.0; 'skip' leaves it out. A question never graded is None.
    """
    out: list[float | None] = []
    for q in range(n_questions):
        vals = [run[q] for run in runs if run]
        vals = [0.0 if v is None else v for v in vals] if ungraded == "wrong" else [v for v in vals if v is not None]
        out.append(fmean(vals) if vals else None)
    return out


def _texts_per_passage(source: str, passages: list[Passage], edits, recipe: Recipe) -> list[list[str]]:
    """Per passage, the concatenated training texts of all its self-edits (built by evaluations_for)."""
    one = recipe.model_copy(update={"inner": recipe.inner.model_copy(update={"eval_times": 1})})
    out: list[list[str]] = [[] for _ in passages]
    for evaluation in evaluations_for(source, passages, edits, one, seed=0):
        out[evaluation.key["passage"]] += evaluation.texts
    return out


# ----------------------------------------------------------------------------- 1. single passage


def run_single(
    model,
    tokenizer,
    recipe: Recipe,
    source: str,
    passages: list[Passage],
    edits: list[list[str | None]],
    baseline: list[dict],
    seed: int,
    judge=None,
    key: dict | None = None,
    on_record: OnRecord | None = None,
    progress: Callable[[int], None] | None = None,
    done: Sequence[dict] = (),
) -> Outcome:
    """Protocol 1 on ``passages``: one adapter per (passage, self-edit, repetition).

    Args:
        recipe: the protocol's recipe (:func:`protocol_recipe`); ``inner.eval_times`` = repetitions.
        edits: per passage, the self-edits to use (already cut to the protocol's n_self_edits).
        baseline: :func:`seal.scoring.baselines` of this model on ``passages`` (the ``none`` answer).
        key: extra fields of every journal record (protocol, student).
        done: journaled records of this run (a resume): those evaluations are read back, not rerun.
    """
    evaluations = evaluations_for(source, passages, edits, recipe, seed)
    for evaluation in evaluations:
        evaluation.key = {**(key or {}), **evaluation.key}
    if not evaluations:  # source 'none': the un-adapted model answers
        return Outcome([list(base["scores"]) for base in baseline])
    journaled = {_single_key(row): row for row in done}
    todo = [evaluation for evaluation in evaluations if _single_key(evaluation.key) not in journaled]
    if progress and len(todo) < len(evaluations):
        progress(len(evaluations) - len(todo))
    computed = run_evaluations(
        model, tokenizer, todo, lambda evaluation: baseline[evaluation.key["passage"]]["accuracy"], recipe.inner, recipe.qa, judge,
        on_record=on_record, progress=progress,
    )  # fmt: skip
    by_key = {**journaled, **{_single_key(row): row for row in computed}}
    records = [by_key[_single_key(evaluation.key)] for evaluation in evaluations]
    runs: list[list[list[float | None]]] = [[] for _ in passages]
    for record in records:
        if record["error"] is None:
            runs[record["passage"]].append(record["scores"])
    verdicts = [mean_question_scores(runs[i], len(p.questions), recipe.qa.ungraded) for i, p in enumerate(passages)]
    return Outcome(
        verdicts,
        n_runs=len(records),
        n_failed=sum(record["error"] is not None for record in records),
        seconds=sum(record["seconds"] for record in records),
    )


# ----------------------------------------------------------------------------- 2. multi-passage


def pooled_jobs(
    texts_per_passage: Sequence[Sequence[str]], passages: Sequence[Passage], repetitions: int, seed: int, qa_template: str = "reference"
) -> list[AdapterJob]:
    """One job per repetition: the texts of every passage pooled, every passage's questions asked.

    The inner loop shuffles a job's texts every epoch, so pooling order does not matter beyond
    the seed. Returns an empty list when no passage has any text (source 'none').
    """
    texts = [t for ts in texts_per_passage for t in ts]
    if not texts:
        return []
    prompts = [pr for p in passages for pr in question_prompts(p, qa_template)]
    return [AdapterJob(texts=list(texts), prompts=prompts, seed=derive_seed(seed, "bench-multi", rep)) for rep in range(repetitions)]


def split_answers(answers: Sequence[str], passages: Sequence[Passage]) -> list[list[str]]:
    """Cut a flat answer list (passages' prompts in order, :func:`seal.scoring.question_prompts`)
    back into one list per passage.

    Raises:
        ValueError: the number of answers is not the number of questions.
    """
    n = sum(n_prompts(p) for p in passages)
    if len(answers) != n:
        raise ValueError(f"{len(answers)} answers for {n} questions")
    out, i = [], 0
    for p in passages:
        out.append(list(answers[i : i + n_prompts(p)]))
        i += n_prompts(p)
    return out


def run_multi(
    model,
    tokenizer,
    recipe: Recipe,
    source: str,
    passages: list[Passage],
    edits: list[list[str | None]],
    baseline: list[dict],
    seed: int,
    judge=None,
    key: dict | None = None,
    on_record: OnRecord | None = None,
    progress: Callable[[int], None] | None = None,
    done: Sequence[dict] = (),
) -> Outcome:
    """Protocol 2: one adapter per repetition trained on the pooled texts of all ``passages``.

    ``recipe.inner.eval_times`` is the number of repetitions (independent adapter seeds).
    One journal record per repetition, with every passage's answers and scores; journaled
    repetitions (``done``) are read back, not retrained.
    """
    texts = _texts_per_passage(source, passages, edits, recipe)
    jobs = pooled_jobs(texts, passages, recipe.inner.eval_times, seed, recipe.qa.template)
    if not jobs:
        return Outcome([list(base["scores"]) for base in baseline])
    records = {row["repetition"]: row for row in done}
    todo = [rep for rep in range(len(jobs)) if rep not in records]
    if progress and len(todo) < len(jobs):
        progress(len(jobs) - len(todo))
    results = run_inner_loop(
        model, tokenizer, [jobs[rep] for rep in todo], recipe.inner, recipe.qa.max_new_tokens, recipe.qa.batch_size, progress=progress
    ) if todo else []  # fmt: skip
    for rep, res in zip(todo, results, strict=True):
        per_passage = []
        if res.error is None:
            for i, (p, ans) in enumerate(zip(passages, split_answers(res.answers, passages), strict=True)):
                scores = grade_answers(p, ans, recipe.qa, judge)
                per_passage.append({"passage": i, "passage_id": p.id, "answers": ans, "scores": scores})
        record = {
            **(key or {}), "source": source, "repetition": rep, "seed": jobs[rep].seed,
            "n_passages": len(passages), "n_train_texts": len(jobs[rep].texts), "n_train_tokens": res.n_train_tokens,
            "epoch_losses": res.epoch_losses, "seconds": res.seconds, "error": res.error, "per_passage": per_passage,
        }  # fmt: skip
        records[rep] = record
        if on_record:
            on_record(record)
    runs: list[list[list[float | None]]] = [[] for _ in passages]
    for rep in range(len(jobs)):
        for row in records[rep]["per_passage"]:
            runs[row["passage"]].append(row["scores"])
    verdicts = [mean_question_scores(runs[i], len(p.questions), recipe.qa.ungraded) for i, p in enumerate(passages)]
    return Outcome(
        verdicts,
        n_runs=len(jobs),
        n_failed=sum(records[rep]["error"] is not None for rep in range(len(jobs))),
        seconds=sum(records[rep]["seconds"] for rep in range(len(jobs))),
        extra={"n_train_texts": len(jobs[0].texts)},
    )


# ----------------------------------------------------------------------------- 3. continual


def run_continual(
    model,
    tokenizer,
    recipe: Recipe,
    source: str,
    passages: list[Passage],
    edits: list[list[str | None]],
    baseline: list[dict],
    seed: int,
    judge=None,
    key: dict | None = None,
    on_record: OnRecord | None = None,
    progress: Callable[[int], None] | None = None,
    done: Sequence[dict] = (),
) -> Outcome:
    """Protocol 3: merge passage i's self-edit update into the model at step i; score passages 0..i.

    ``model`` itself is never changed: each repetition works on a deep copy. Step i's texts are
    those of all of passage i's self-edits together. A step whose training fails leaves the
    model as it was (recorded as failed) and is still scored. ``verdicts`` are the last step's.
    One journal record per (repetition, step). A repetition whose every step is journaled
    (``done``) is read back; one cut off mid-sequence is recomputed from its start, and only
    its steps missing from the journal are recorded.
    """
    n = len(passages)
    texts = _texts_per_passage(source, passages, edits, recipe)
    reps = recipe.inner.eval_times
    if not any(texts):  # source 'none': nothing changes, every row is the baseline
        row = [base["accuracy"] if base["accuracy"] is not None else math.nan for base in baseline]
        matrix = [[row[j] if j <= i else math.nan for j in range(n)] for i in range(n)]
        return Outcome([list(base["scores"]) for base in baseline], matrix=matrix)
    journaled = {(row["repetition"], row["step"]): row for row in done}
    sums, counts = [[0.0] * n for _ in range(n)], [[0] * n for _ in range(n)]
    final_runs: list[list[list[float | None]]] = [[] for _ in passages]
    n_runs = n_failed = 0
    for rep in range(reps):
        if all((rep, i) in journaled for i in range(n)):
            steps = [journaled[(rep, i)] for i in range(n)]
            if progress:
                progress(n)
        else:
            steps = _continual_repetition(model, tokenizer, recipe, source, passages, texts, rep, seed, judge, key, on_record, progress, journaled)
        for i, step in enumerate(steps):
            n_runs += bool(texts[i])
            n_failed += step["error"] is not None
            for j, row in enumerate(step["scored"]):
                if row["accuracy"] is not None:
                    sums[i][j] += row["accuracy"]
                    counts[i][j] += 1
                if i == n - 1:
                    final_runs[j].append(row["scores"])
    matrix = [[sums[i][j] / counts[i][j] if j <= i and counts[i][j] else math.nan for j in range(n)] for i in range(n)]
    verdicts = [mean_question_scores(final_runs[j], len(p.questions), recipe.qa.ungraded) for j, p in enumerate(passages)]
    return Outcome(verdicts, n_runs=n_runs, n_failed=n_failed, matrix=matrix)


def _continual_repetition(
    model, tokenizer, recipe: Recipe, source: str, passages: list[Passage], texts: list[list[str]], rep: int, seed: int,
    judge, key: dict | None, on_record: OnRecord | None, progress: Callable[[int], None] | None, journaled: dict,
) -> list[dict]:
    """One repetition of protocol 3 on a copy of ``model``: its step records, in order.

    Steps already in ``journaled`` (keyed ``(repetition, step)``) are recomputed, since the
    later steps need the merged model, but not recorded again.
    """
    current = copy.deepcopy(model)
    steps = []
    for i in range(len(passages)):
        error, losses = None, []
        if texts[i]:
            try:
                losses = train_and_merge(current, tokenizer, texts[i], recipe.inner, derive_seed(seed, "bench-continual", rep, i))
            except InnerLoopError as e:
                error = str(e)
        seen = passages[: i + 1]
        prompts = [pr for p in seen for pr in question_prompts(p, recipe.qa.template)]
        answers = answer_questions(current, tokenizer, prompts, recipe.qa.max_new_tokens, recipe.qa.batch_size)
        scored = []
        for j, (p, ans) in enumerate(zip(seen, split_answers(answers, seen), strict=True)):
            scores = grade_answers(p, ans, recipe.qa, judge)
            scored.append({"passage": j, "passage_id": p.id, "accuracy": accuracy(scores, recipe.qa.ungraded), "answers": ans, "scores": scores})
        step = {
            **(key or {}), "source": source, "repetition": rep, "step": i, "passage_id": passages[i].id,
            "n_train_texts": len(texts[i]), "epoch_losses": losses, "error": error, "scored": scored,
        }  # fmt: skip
        steps.append(step)
        if on_record and (rep, i) not in journaled:
            on_record(step)
        if progress:
            progress(1)
    del current
    return steps


def continual_summary(matrix: list[list[float]]) -> dict:
    """Forgetting picture in three numbers (fractions; None when undefined).

    ``final``: mean of the last row (every passage after the last step); ``acquired``: mean of
    the diagonal (each passage right after its own step); ``forgetting``: mean over j < n-1 of
    ``matrix[j][j] - matrix[n-1][j]`` (what was lost by the end).
    """
    n = len(matrix)

    def mean(xs):
        xs = [x for x in xs if not math.isnan(x)]
        return fmean(xs) if xs else None

    diag = [matrix[i][i] for i in range(n)]
    return {
        "final": mean(matrix[-1]) if n else None,
        "acquired": mean(diag),
        "forgetting": mean([matrix[j][j] - matrix[n - 1][j] for j in range(n - 1)]),
    }


PROTOCOL_RUNNERS = {"single": run_single, "multi": run_multi, "continual": run_continual}


def n_steps(name: str, source: str, passages: list[Passage], edits, recipe: Recipe) -> int:
    """Progress units of one (source, student) run: adapters (single, multi) or merge steps (continual)."""
    reps = recipe.inner.eval_times
    if name == "single":
        return sum(len(e) for e in edits) * reps
    has_texts = any(any(t) for t in _texts_per_passage(source, passages, edits, recipe))
    return (reps if name == "multi" else len(passages) * reps) if has_texts else 0
