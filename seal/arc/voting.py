"""Augmented inference with voting (``arc.inference: vote``): the reference's way of answering
an ARC test input (``few-shot/inference/preprocess.py:16-68``, ``arclib/voting.py:72-126``,
``eval-self-edits.py:249-372``).

Each test input is asked as several *queries*: leave-n-out subsets of the demonstrations
(``arc.query_leave_out``: how many are dropped, the reference's ``--include_n=1``), each also
in ``arc.query_permutations`` random demonstration orders (the reference's ``--permute_n=2``),
duplicates removed; then, for each transform of ``arc.transforms`` (the reference's
Transpose, Flip(0), Flip(1), Rotate(90), Rotate(180)), one of those queries drawn at random
with every grid transformed (skipped when it equals a query already asked). A task with
``D`` demonstrations gets up to ``3 D + 5`` queries (14-23 for the paper's tasks), at most
``arc.max_queries``. Every answer's grid is read (an unreadable answer casts no vote),
mapped back by the transform's inverse, and :func:`vote` ranks the candidates: ``arc.attempts``
of them are the test input's attempts, solved when one equals the gold grid.

A task is solved when every test input is (:func:`task_verdict`; the reference's
"competition accuracy", ``arclib/eval.py:113-131``). Queries are drawn from
``derive_seed(recipe seed, "arc-vote", task id, test index)``: the same for every adapter
and the un-adapted baseline of a run, and for a resumed run.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from seal.arc.augment import Augmentation, flip, rotate, to_grid, transpose
from seal.arc.config import ArcSection
from seal.arc.grids import Grid, read_answer_grid, read_numpy_answer_grid
from seal.arc.tasks import (
    ArcPassage,
    ArcTask,
    Example,
    query_text,
    reference_query_text,
    task_passage,
)
from seal.seeding import derive_seed

IDENTITY = Augmentation("identity", lambda g: g, lambda g: g)

#: The inference transforms by recipe name (``arc.transforms``): the dihedral group of the
#: square, less the anti-transpose, as ``seal.arc.augment`` builds them.
TRANSFORMS: dict[str, Augmentation] = {
    "identity": IDENTITY,
    "transpose": transpose(),
    "flip0": flip(0),
    "flip1": flip(1),
    "rotate90": rotate(90),
    "rotate180": rotate(180),
    "rotate270": rotate(270),
}


@dataclass(frozen=True)
class Query:
    """One augmented query of a test input: ``transform`` (a :data:`TRANSFORMS` name) already
    applied to ``demos`` and ``test_input``; an answer to it is mapped back by its inverse."""

    transform: str
    demos: tuple[Example, ...]
    test_input: Grid
    text_format: str = "plain"

    @property
    def text(self) -> str:
        """The query's text in ``arc.text_format`` (:func:`seal.arc.tasks.query_text`, or
        :func:`seal.arc.tasks.reference_query_text`)."""
        if self.text_format == "reference":
            return reference_query_text(self.demos, self.test_input)
        return query_text(self.demos, self.test_input)

    def read(self, answer: str) -> Grid | None:
        """The grid an answer to this query starts with, in its text format (never raises)."""
        return read_numpy_answer_grid(answer) if self.text_format == "reference" else read_answer_grid(answer)

    def invert(self, grid: Grid) -> Grid:
        """An answer grid in the original task's frame."""
        return TRANSFORMS[self.transform].invert(grid)


@dataclass(frozen=True)
class VotePlan:
    """The queries of every test input of a task (``queries[i]``: test input ``i``'s) and how
    many attempts the vote gives each."""

    queries: tuple[tuple[Query, ...], ...]
    attempts: int

    @property
    def n_queries(self) -> int:
        """Queries over all test inputs: the number of answers :func:`vote_scores` expects."""
        return sum(len(q) for q in self.queries)


def input_queries(train: Sequence[Example], test_input: Grid, arc: ArcSection, rng: np.random.Generator) -> list[Query]:
    """The queries of one test input (module docstring; ``preprocess.py:16-68``).

    Leave-out counts that would leave no demonstration are skipped; when none is left, the
    one query with every demonstration is asked. Identity queries come first, then one per
    transform in ``arc.transforms`` order. Over ``arc.max_queries``: the transformed queries
    are kept and the identity ones sampled (by ``rng``, in order).
    """
    bases: list[tuple[Example, ...]] = []
    for n in arc.query_leave_out:
        if n >= len(train):
            continue
        for dropped in itertools.combinations(range(len(train)), n):
            demos = tuple(e for j, e in enumerate(train) if j not in dropped)
            bases.append(demos)
            for _ in range(arc.query_permutations):
                bases.append(tuple(demos[int(k)] for k in rng.permutation(len(demos))))
    bases = list(dict.fromkeys(bases)) or [tuple(train)]
    identity = [Query("identity", demos, test_input, arc.text_format) for demos in bases]
    seen = {(q.demos, q.test_input) for q in identity}
    transformed = []
    for name in arc.transforms:
        aug, demos = TRANSFORMS[name], bases[int(rng.integers(len(bases)))]
        query = Query(name, tuple(Example(aug.apply(e.input), aug.apply(e.output)) for e in demos), aug.apply(test_input), arc.text_format)
        if (query.demos, query.test_input) not in seen:  # a symmetric task: nothing new to ask
            seen.add((query.demos, query.test_input))
            transformed.append(query)
    room = max(arc.max_queries - len(transformed), 1)
    if len(identity) > room:
        keep = sorted(int(k) for k in rng.choice(len(identity), room, replace=False))
        identity = [identity[k] for k in keep]
    return (identity + transformed)[: arc.max_queries]


def vote_plan(task: ArcTask, arc: ArcSection, seed: int) -> VotePlan:
    """The queries of every test input of ``task``, seeded from the recipe ``seed`` and the
    task's identity (module docstring)."""
    queries = []
    for i, example in enumerate(task.test):
        rng = np.random.default_rng(derive_seed(seed, "arc-vote", task.id, i) % 2**32)
        queries.append(tuple(input_queries(task.train, example.input, arc, rng)))
    return VotePlan(tuple(queries), arc.attempts)


def arc_passage(task: ArcTask, arc: ArcSection, seed: int) -> ArcPassage:
    """The passage of ``task`` (:func:`seal.arc.tasks.task_passage`), carrying its
    :class:`VotePlan` when ``arc.inference`` is ``vote``."""
    passage = task_passage(task, arc.text_format)
    if arc.inference != "vote":
        return passage
    return ArcPassage(passage.title, passage.context, passage.questions, passage.completions, task=task, vote=vote_plan(task, arc, seed))


# ----------------------------------------------------------------------------- the vote


def _most_common(items: Sequence) -> list:
    """Distinct items, most frequent first; ties in order of first appearance."""
    counts = Counter(items)
    return sorted(counts, key=lambda x: -counts[x])  # sorted is stable, Counter keeps first-seen order


def majority_by_rows(outputs: Sequence[Grid], columns: bool = False) -> Grid:
    """A grid assembled row by row (``columns``: column by column): the most common shape, and
    for each row the most common row of that width among the outputs that have one
    (``arclib/voting.py:13-33``, ``row_base_majority_voting``). ``outputs`` must not be empty."""
    if columns:
        outputs = [to_grid(np.asarray(g).T) for g in outputs]
    height, width = _most_common([(len(g), len(g[0])) for g in outputs])[0]
    rows = [_most_common([g[r] for g in outputs if len(g) > r and len(g[r]) == width])[0] for r in range(height)]
    grid = tuple(rows)
    return to_grid(np.asarray(grid).T) if columns else grid


def top_three(outputs: Sequence[Grid]) -> list[Grid]:
    """The three most common outputs (``arclib/voting.py:36-69``, ``get_all_type_of_votingsv2``):
    with fewer than three distinct, the gaps are filled by the row-wise then the column-wise
    majority grid (or the most common again). Ties: first appearance. ``outputs`` not empty."""
    ranked = _most_common(outputs)
    first = ranked[0]
    second = ranked[1] if len(ranked) > 1 else first
    third = ranked[2] if len(ranked) > 2 else first
    by_rows, by_columns = majority_by_rows(outputs), majority_by_rows(outputs, columns=True)
    if second == first:
        second = by_rows if by_rows != first else by_columns
    if third in (first, second):
        third = by_rows if by_rows not in (first, second) else by_columns
    return [first, second, third]


def vote(answers: Sequence[tuple[str, Grid | None]], attempts: int = 2) -> list[Grid]:
    """The attempts for one test input from its answers, hierarchically
    (``arclib/voting.py:72-126``, ``vote``).

    Args:
        answers: per query, (transform name, the answer grid already mapped back; None when
            the answer held no grid: it casts no vote).
        attempts: how many distinct attempts to return (the reference: 2).

    Returns:
        Up to ``attempts`` distinct grids, best first (empty when no answer held a grid). The
        candidates are :func:`top_three` of all answers and of each transform's answers
        (identity first, then in order of appearance), pooled; they are ranked by how often
        they occur in that pool, ties broken by their count among the identity answers, then
        by first appearance (the reference breaks only a second/third tie by the identity
        count, others by Python's set order); the pool's row/column majority grids follow
        when fewer than ``attempts`` are distinct.
    """
    by_transform: dict[str, list[Grid]] = {"identity": []}
    for name, grid in answers:
        if grid is not None:
            by_transform.setdefault(name, []).append(grid)
    every = [g for grids in by_transform.values() for g in grids]
    if not every:
        return []
    pool = top_three(every) + [g for grids in by_transform.values() if grids for g in top_three(grids)]
    counts, identity = Counter(pool), Counter(by_transform["identity"])
    ranked = sorted(counts, key=lambda g: (-counts[g], -identity[g]))
    for extra in (majority_by_rows(pool), majority_by_rows(pool, columns=True)):
        if extra not in ranked:
            ranked.append(extra)
    return ranked[:attempts]


def input_attempts(queries: Sequence[Query], answers: Sequence[str], attempts: int) -> list[Grid]:
    """One test input's attempts: each answer's leading grid
    (:func:`seal.arc.grids.read_answer_grid`) mapped back by its query's inverse, then :func:`vote`."""
    grids = []
    for query, answer in zip(queries, answers, strict=True):
        grid = query.read(answer)
        grids.append((query.transform, None if grid is None else query.invert(grid)))
    return vote(grids, attempts)


def task_verdict(solved: Sequence[bool]) -> float:
    """1.0 when every test input of a task is solved, else 0.0 (``arclib/eval.py:125-131``)."""
    return float(all(solved))


def vote_scores(plan: VotePlan, golds: Sequence[Grid], answers: Sequence[str]) -> list[float]:
    """One score per test input from the answers to every query of ``plan`` (in plan order):
    each is the task's verdict (:func:`task_verdict` of "an attempt equals the gold grid"), so
    a mean over a task's test inputs is 1 only when all are solved.

    Raises:
        ValueError: not one answer per query, or not one gold grid per test input.
    """
    if len(answers) != plan.n_queries or len(golds) != len(plan.queries):
        raise ValueError(f"{len(answers)} answers and {len(golds)} gold grids for {plan.n_queries} queries of {len(plan.queries)} test inputs")
    solved, i = [], 0
    for queries, gold in zip(plan.queries, golds, strict=True):
        solved.append(gold in input_attempts(queries, answers[i : i + len(queries)], plan.attempts))
        i += len(queries)
    return [task_verdict(solved)] * len(golds)
