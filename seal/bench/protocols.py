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
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from statistics import fmean
from typing import Any

from seal.bench.config import ContinualConfig, ProtocolConfig, SourceSpec, merged_inner
from seal.config import ModelConfig, Recipe, parse_source
from seal.data import Passage
from seal.evaluate import evaluations_for
from seal.helper import Helper
from seal.inner_loop import (
    AdapterJob,
    AdapterResult,
    InnerLoopError,
    answer_questions,
    run_inner_loop,
    tokenize_with_loss,
    train_and_merge,
    train_full,
)
from seal.rewards import accuracy
from seal.scoring import TEXT_QA, TextQA, run_evaluations
from seal.seeding import derive_seed
from seal.self_edits import sample_self_edits
from seal.tasks.registry import make_task

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
    baseline: Verdicts | None = None  # a row with its own learner: that learner's un-adapted verdicts (else the student's)


@dataclass
class ProtocolContext:
    """What a protocol runner needs besides one row's data (source, passages, self-edits,
    baselines): who learns, under which recipe and seed, who grades, and the journal's hooks.

    Attributes:
        model, tokenizer: the student (or a row's own learner); never changed (continual
            merges into copies).
        recipe: the protocol's recipe (:func:`protocol_recipe`, then the source's overrides);
            ``inner.eval_times`` is the number of repetitions.
        seed: the bench seed; every adapter's seed derives from it and the evaluation's
            identity, never from the source or the student.
        judge: the LLM judge client (``qa.grader: judge``), else None.
        key: extra fields of every journal record (protocol, student, source label).
        on_record: called with each record as it is computed (the journal's append).
        progress: called with a number of steps done (adapters, repetitions, merge steps).
        done: the journaled records of this (protocol, student, source) (a resume): read
            back, not recomputed.
        helper: a helper process that takes chunks of the single protocol's evaluations
            (``seal.helper``: ``seal microworld demo``'s second process); None: none.
        loaded_from: the model settings and name or path :attr:`model` was loaded with (what
            the helper loads).
    """

    model: Any
    tokenizer: Any
    recipe: Recipe
    seed: int
    judge: Any = None
    key: dict | None = None
    on_record: OnRecord | None = None
    progress: Callable[[int], None] | None = None
    done: Sequence[dict] = ()
    helper: Helper | None = None
    loaded_from: tuple[ModelConfig, str] | None = None


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
        out[evaluation.key.passage] += evaluation.texts
    return out


# ----------------------------------------------------------------------------- 1. single passage


def run_single(
    ctx: ProtocolContext,
    source: str,
    passages: list[Passage],
    edits: list[list[str | None]],
    baseline: list[dict],
) -> Outcome:
    """Protocol 1 on ``passages``: one adapter per (passage, self-edit, repetition).

    Args:
        ctx: the learner, recipe (``inner.eval_times`` = repetitions), seed, judge and journal hooks.
        edits: per passage, the self-edits to use (already cut to the protocol's n_self_edits).
        baseline: :func:`seal.scoring.baselines` of this model on ``passages`` (the ``none`` answer).
    """
    model, tokenizer, recipe, seed, judge = ctx.model, ctx.tokenizer, ctx.recipe, ctx.seed, ctx.judge
    key, on_record, progress, done = ctx.key, ctx.on_record, ctx.progress, ctx.done
    evaluations = [replace(e, key=replace(e.key, context=tuple((key or {}).items()))) for e in evaluations_for(source, passages, edits, recipe, seed)]
    if not evaluations:  # source 'none': the un-adapted model answers
        return Outcome([list(base["scores"]) for base in baseline])
    share = ctx.helper.share(recipe, *ctx.loaded_from) if ctx.helper is not None and ctx.loaded_from is not None else None
    records = run_evaluations(
        model, tokenizer, evaluations, lambda evaluation: baseline[evaluation.key.passage]["accuracy"], recipe.inner, recipe.qa, judge,
        on_record=on_record, progress=progress, task=make_task(recipe), finished=done, share=share,
    )  # fmt: skip
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
    texts_per_passage: Sequence[Sequence[str]], passages: Sequence[Passage], repetitions: int, seed: int, qa_template: str = "reference",
    task: TextQA = TEXT_QA,
) -> list[AdapterJob]:
    """One job per repetition: the texts of every passage pooled, every passage's questions asked
    (the prompts of ``task``, the recipe's ``seal.tasks`` task).

    The inner loop shuffles a job's texts every epoch, so pooling order does not matter beyond
    the seed. Returns an empty list when no passage has any text (source 'none').
    """
    texts = [t for ts in texts_per_passage for t in ts]
    if not texts:
        return []
    prompts = [pr for p in passages for pr in task.question_prompts(p, qa_template)]
    return [AdapterJob(texts=list(texts), prompts=prompts, seed=derive_seed(seed, "bench-multi", rep)) for rep in range(repetitions)]


def split_answers(answers: Sequence[str], passages: Sequence[Passage], task: TextQA = TEXT_QA) -> list[list[str]]:
    """Cut a flat answer list (passages' prompts in order, ``task.question_prompts``)
    back into one list per passage.

    Raises:
        ValueError: the number of answers is not the number of questions.
    """
    n = sum(task.n_prompts(p) for p in passages)
    if len(answers) != n:
        raise ValueError(f"{len(answers)} answers for {n} questions")
    out, i = [], 0
    for p in passages:
        out.append(list(answers[i : i + task.n_prompts(p)]))
        i += task.n_prompts(p)
    return out


def run_multi(
    ctx: ProtocolContext,
    source: str,
    passages: list[Passage],
    edits: list[list[str | None]],
    baseline: list[dict],
) -> Outcome:
    """Protocol 2: one adapter per repetition trained on the pooled texts of all ``passages``.

    ``recipe.inner.eval_times`` is the number of repetitions (independent adapter seeds).
    One journal record per repetition, with every passage's answers and scores; journaled
    repetitions (``ctx.done``) are read back, not retrained.
    """
    model, tokenizer, recipe, seed, judge = ctx.model, ctx.tokenizer, ctx.recipe, ctx.seed, ctx.judge
    key, on_record, progress, done = ctx.key, ctx.on_record, ctx.progress, ctx.done
    task = make_task(recipe)
    texts = _texts_per_passage(source, passages, edits, recipe)
    jobs = pooled_jobs(texts, passages, recipe.inner.eval_times, seed, recipe.qa.template, task)
    if not jobs:
        return Outcome([list(base["scores"]) for base in baseline])
    records = {row["repetition"]: row for row in done}
    todo = [rep for rep in range(len(jobs)) if rep not in records]
    if progress and len(todo) < len(jobs):
        progress(len(jobs) - len(todo))
    full = getattr(getattr(getattr(recipe, "bench", None), "protocols", None), "multi", None)
    if full is not None and full.update == "full":
        results = [_full_update(model, tokenizer, jobs[rep], recipe, progress) for rep in todo]
    else:
        results = run_inner_loop(
            model, tokenizer, [jobs[rep] for rep in todo], recipe.inner, recipe.qa.max_new_tokens, recipe.qa.batch_size, progress=progress
        ) if todo else []  # fmt: skip
    for rep, res in zip(todo, results, strict=True):
        per_passage = []
        if res.error is None:
            for i, (p, ans) in enumerate(zip(passages, split_answers(res.answers, passages, task), strict=True)):
                scores = task.grade_answers(p, ans, recipe.qa, judge)
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


def _full_update(model, tokenizer, job: AdapterJob, recipe: Recipe, progress) -> AdapterResult:
    """One repetition of the multi protocol with ``update: full``: a copy of ``model`` fine-tuned
    on every weight (:func:`seal.inner_loop.train_full`) answers the job's prompts."""
    t0 = time.perf_counter()
    trained = copy.deepcopy(model)
    try:
        losses = train_full(trained, tokenizer, job.texts, recipe.inner, job.seed)
        answers = answer_questions(trained, tokenizer, job.prompts, recipe.qa.max_new_tokens, recipe.qa.batch_size)
        result = AdapterResult(answers, losses, _n_tokens(tokenizer, job.texts, recipe.inner))
    except InnerLoopError as e:
        result = AdapterResult([], error=str(e))
    del trained
    result.seconds = time.perf_counter() - t0
    if progress:
        progress(1)
    return result


def _n_tokens(tokenizer, texts, cfg) -> int:
    rows, starts = tokenize_with_loss(tokenizer, texts, cfg.max_length, cfg.loss_on, cfg.answer_marker)
    return sum(len(r) - s for r, s in zip(rows, starts, strict=True))


# ----------------------------------------------------------------------------- 3. continual


def continual_config(recipe: Recipe) -> ContinualConfig:
    """The recipe's ``bench.protocols.continual`` (defaults without one: one sequence of every passage given)."""
    bench = getattr(recipe, "bench", None)
    cfg = bench.protocols.continual if bench is not None else None
    return cfg if cfg is not None else ContinualConfig(n_passages=None)


def continual_sequences(cfg: ContinualConfig, n_pool: int, seed: int) -> list[list[int]]:
    """The sequences of protocol 3, as indices into the ``n_pool`` passages given to it.

    ``order: first``: one sequence, ``0 .. n_pool-1``. ``order: random``: ``runs x sequences``
    sequences of ``n_passages`` distinct passages each, sequence ``(run, q)`` drawn by
    ``random.Random(derive_seed(seed, "bench-continual-sequence", run, q)).sample`` (the
    reference draws ``random.sample(dataset, n_datapoints)`` after ``random.seed(42 + run)``,
    continual_self_edits.py:403,417-419); the draw depends on the bench seed and the identity,
    never the source, so every source learns the same sequences.

    Raises:
        ValueError: a sequence longer than the pool.
    """
    if cfg.order == "first":
        return [list(range(n_pool))]
    length = cfg.n_passages or n_pool
    if length > n_pool:
        raise ValueError(f"continual sequences of {length} passages from a pool of {n_pool}")
    return [
        random.Random(derive_seed(seed, "bench-continual-sequence", run, q)).sample(range(n_pool), length)
        for run in range(cfg.runs)
        for q in range(cfg.sequences)
    ]


def run_continual(
    ctx: ProtocolContext,
    source: str,
    passages: list[Passage],
    edits: list[list[str | None]],
    baseline: list[dict],
) -> Outcome:
    """Protocol 3: merge each step's self-edit update into the model; after step i score the
    sequence's passages 0..i.

    The sequences are :func:`continual_sequences` of ``passages`` (with ``order: random``, the
    pool) under the recipe's ``bench.protocols.continual``; each is run ``inner.eval_times``
    times (repetitions: adapter seeds). ``model`` itself is never changed: each (sequence,
    repetition) works on a deep copy. Step i's texts are those of all of its passage's
    self-edits together; with ``writer: current`` a policy:/prompt: source's self-edits are
    instead sampled at step i by the merged model so far (``len(edits[i])`` of them, the
    source's template, seeded by the identity). A step whose training fails leaves the model as
    it was (recorded as failed) and is still scored.

    ``matrix[i][j]``: accuracy on the sequence's j-th passage after step i (j <= i), the mean
    over sequences and repetitions, NaN above the diagonal. ``verdicts``: per passage of
    ``passages``, its scores after the last step of each sequence that holds it, averaged
    (None for a passage no sequence drew). ``extra['sequences']``: the sequences.
    One journal record per (sequence, repetition, step). A (sequence, repetition) whose every
    step is journaled (``ctx.done``) is read back; one cut off mid-sequence is recomputed from its
    start, and only its steps missing from the journal are recorded.
    """
    recipe, seed, progress, done = ctx.recipe, ctx.seed, ctx.progress, ctx.done
    cfg = continual_config(recipe)
    sequences = continual_sequences(cfg, len(passages), seed)
    length = len(sequences[0])
    kind, arg = parse_source(source)
    template = None  # fixed texts
    if cfg.writer == "current" and kind in ("policy", "prompt"):
        template = arg if kind == "prompt" else recipe.self_edit.template
    texts = _texts_per_passage(source, passages, edits, recipe)
    reps = recipe.inner.eval_times
    if template is None and not any(texts):  # source 'none': nothing changes, every row is the baseline
        base_acc = [base["accuracy"] if base["accuracy"] is not None else math.nan for base in baseline]
        row = [_nanmean([base_acc[seq[j]] for seq in sequences]) for j in range(length)]
        matrix = [[row[j] if j <= i else math.nan for j in range(length)] for i in range(length)]
        drawn = {p for seq in sequences for p in seq}
        verdicts = [list(base["scores"]) if i in drawn else [None] * len(base["scores"]) for i, base in enumerate(baseline)]
        return Outcome(verdicts, matrix=matrix, extra={"sequences": sequences})
    journaled = {(row.get("sequence", 0), row["repetition"], row["step"]): row for row in done}
    sums, counts = [[0.0] * length for _ in range(length)], [[0] * length for _ in range(length)]
    final_runs: list[list[list[float | None]]] = [[] for _ in passages]
    n_runs = n_failed = 0
    for q, seq in enumerate(sequences):
        for rep in range(reps):
            if all((q, rep, i) in journaled for i in range(length)):
                steps = [journaled[(q, rep, i)] for i in range(length)]
                if progress:
                    progress(length)
            else:
                steps = _continual_repetition(
                    ctx, source, passages, seq, texts, edits, template, q, rep, _step_seeds(cfg, seed, q, rep, length), journaled
                )  # fmt: skip
            for i, step in enumerate(steps):
                n_runs += step["n_train_texts"] > 0 or step["error"] is not None
                n_failed += step["error"] is not None
                for j, row in enumerate(step["scored"]):
                    if row["accuracy"] is not None:
                        sums[i][j] += row["accuracy"]
                        counts[i][j] += 1
                    if i == length - 1:
                        final_runs[seq[j]].append(row["scores"])
    matrix = [[sums[i][j] / counts[i][j] if j <= i and counts[i][j] else math.nan for j in range(length)] for i in range(length)]
    verdicts = [mean_question_scores(final_runs[j], len(p.questions), recipe.qa.ungraded) for j, p in enumerate(passages)]
    return Outcome(verdicts, n_runs=n_runs, n_failed=n_failed, matrix=matrix, extra={"sequences": sequences})


def _nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return fmean(xs) if xs else math.nan


def _step_seeds(cfg: ContinualConfig, seed: int, q: int, rep: int, length: int) -> list[int]:
    """Adapter seeds of one (sequence, repetition); ``order: first`` keeps the seeds it always had."""
    if cfg.order == "first":
        return [derive_seed(seed, "bench-continual", rep, i) for i in range(length)]
    return [derive_seed(seed, "bench-continual-random", q, rep, i) for i in range(length)]


def _continual_repetition(
    ctx: ProtocolContext, source: str, passages: list[Passage], seq: list[int], texts: list[list[str]],
    edits: list[list[str | None]], template: str | None, q: int, rep: int, seeds: list[int], journaled: dict,
) -> list[dict]:
    """One repetition of one sequence of protocol 3 on a copy of ``model``: its step records, in order.

    ``template`` (``writer: current``): each step's self-edits are sampled from the current
    merged model with it; None: ``texts`` (fixed). Steps already in ``journaled`` (keyed
    ``(sequence, repetition, step)``) are recomputed, since the later steps need the merged
    model, but not recorded again.
    """
    model, tokenizer, recipe, judge = ctx.model, ctx.tokenizer, ctx.recipe, ctx.judge
    key, on_record, progress = ctx.key, ctx.on_record, ctx.progress
    current = copy.deepcopy(model)
    steps = []
    for i, p in enumerate(seq):
        error, losses, written = None, [], None
        step_texts = texts[p]
        if template is not None:
            written = _write_now(current, tokenizer, recipe, passages[p], template, max(len(edits[p]), 1), derive_seed(seeds[i], "write"))
            step_texts = _texts_per_passage(source, [passages[p]], [written], recipe)[0]
        if step_texts:
            try:
                losses = train_and_merge(current, tokenizer, step_texts, recipe.inner, seeds[i])
            except InnerLoopError as e:
                error = str(e)
        seen = [passages[j] for j in seq[: i + 1]]
        task = make_task(recipe)
        prompts = [pr for sp in seen for pr in task.question_prompts(sp, recipe.qa.template)]
        answers = answer_questions(current, tokenizer, prompts, recipe.qa.max_new_tokens, recipe.qa.batch_size)
        scored = []
        for j, (sp, ans) in zip(seq[: i + 1], zip(seen, split_answers(answers, seen, task), strict=True), strict=True):
            scores = task.grade_answers(sp, ans, recipe.qa, judge)
            scored.append({"passage": j, "passage_id": sp.id, "accuracy": accuracy(scores, recipe.qa.ungraded), "answers": ans, "scores": scores})
        step = {
            **(key or {}), "source": source, "sequence": q, "repetition": rep, "step": i, "passage": p, "passage_id": passages[p].id,
            "n_train_texts": len(step_texts), "epoch_losses": losses, "error": error, "scored": scored,
        }  # fmt: skip
        if written is not None:
            step["self_edits"] = written
        steps.append(step)
        if on_record and (q, rep, i) not in journaled:
            on_record(step)
        if progress:
            progress(1)
    del current
    return steps


def _write_now(model, tokenizer, recipe: Recipe, passage: Passage, template: str, k: int, seed: int) -> list[str]:
    """``k`` self-edits for ``passage`` sampled now from ``model`` (the recipe's self_edit settings)."""
    cfg = recipe.self_edit
    (texts,) = sample_self_edits(model, tokenizer, [passage], cfg, seed, template=template, k=k, hint=make_task(recipe).self_edit_hint())
    return texts


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
    if name == "multi":
        return reps if has_texts else 0
    cfg = continual_config(recipe)
    writes = cfg.writer == "current" and parse_source(source)[0] in ("policy", "prompt")
    sequences = continual_sequences(cfg, len(passages), 0)
    return len(sequences) * len(sequences[0]) * reps if has_texts or writes else 0


def protocol_size(proto: ProtocolConfig, n_loaded: int) -> int:
    """Evaluation passages a protocol works on: its n_passages (default: all loaded); the
    continual protocol with ``order: random`` its pool (default: all loaded)."""
    if isinstance(proto, ContinualConfig) and proto.order == "random":
        return proto.pool or n_loaded
    return proto.n_passages or n_loaded


def source_recipe(recipe: Recipe, name: str, spec: SourceSpec) -> Recipe:
    """A protocol's recipe with one source's own inner overrides (``SourceSpec.inner[name]``) applied."""
    overrides = spec.inner.get(name)
    if not overrides:
        return recipe
    return recipe.model_copy(update={"inner": merged_inner(recipe.inner, overrides)})
