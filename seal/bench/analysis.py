"""From per-question verdicts to the numbers of the report: accuracies, gains, pairwise differences.

Input: one :class:`seal.bench.protocols.Outcome` per (protocol, student, source) and each
student's baseline verdicts. Output: plain JSON-able dicts (what ``results.json`` holds and
what the report and the plots read). Every interval is a paired percentile bootstrap over
passages (:mod:`seal.bench.stats`); accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from seal.bench.config import BenchConfig, Expected
from seal.bench.protocols import Outcome, continual_summary
from seal.bench.stats import (
    Interval,
    adjusted_confidence,
    bootstrap_accuracy,
    pair_verdicts,
    paired_bootstrap,
)

Verdicts = list[list[float | None]]


@dataclass(frozen=True)
class Row:
    """A source as the analysis sees it: label, source string, expected figures, author match per student."""

    label: str
    source: str
    expected: dict[str, Expected]
    own: dict[str, bool]  # student label -> this source's self-edits were written by that student
    author: str | None = None  # model that wrote the self-edits, when known
    learner: str | None = None  # the model that learned this row (SourceSpec.learner); None: each student


def _interval(i: Interval) -> dict:
    return {"value": i.value, "lo": i.lo, "hi": i.hi, "confidence": i.confidence, "n_passages": i.n_units}


def _nan_to_none(m: list[list[float]] | None):
    return None if m is None else [[None if math.isnan(x) else x for x in row] for row in m]


def cell_summary(
    row: Row, student: str, protocol: str, outcome: Outcome, baseline: Verdicts, bench: BenchConfig, seed: int
) -> dict:
    """Accuracy (macro and micro) with CIs, gain over the student's baseline with a paired CI, expected check.

    A row with its own learner (``row.learner``) is measured against that learner's baseline
    (``outcome.baseline``), not the student's.
    """
    opts = dict(n_samples=bench.bootstrap_samples, confidence=bench.confidence, seed=seed)
    if outcome.baseline is not None:
        baseline = outcome.baseline
    own, _, kept = pair_verdicts(outcome.verdicts, outcome.verdicts)
    a, b, _ = pair_verdicts(outcome.verdicts, baseline)
    out = {
        "protocol": protocol, "student": student, "source": row.label, "source_string": row.source,
        "own_data": row.own.get(student, False), "author": row.author, "learner": row.learner,
        "n_passages": len(kept), "n_questions": sum(len(q) for q in own),
        "n_runs": outcome.n_runs, "n_failed": outcome.n_failed, "seconds": outcome.seconds,
        "accuracy": None, "micro": None, "gain": None, "micro_gain": None,
        "expected": None, "expected_statistic": None, "expected_note": None, "expected_holds": None,
    }  # fmt: skip
    if own:
        out["accuracy"] = _interval(bootstrap_accuracy(own, "macro", **opts))
        out["micro"] = _interval(bootstrap_accuracy(own, "micro", **opts))
    if a:
        out["gain"] = _interval(paired_bootstrap(a, b, "macro", **opts))
        out["micro_gain"] = _interval(paired_bootstrap(a, b, "micro", **opts))
    exp = row.expected.get(protocol)
    if exp is not None:
        out.update(expected=exp.accuracy, expected_statistic=exp.statistic, expected_note=exp.note)
        measured = out["accuracy" if exp.statistic == "macro" else "micro"]
        if measured is not None:
            out["expected_holds"] = measured["lo"] <= exp.accuracy <= measured["hi"]
    if outcome.matrix is not None:
        out["continual"] = {"matrix": _nan_to_none(outcome.matrix), **continual_summary(outcome.matrix)}
        if "sequences" in outcome.extra:  # indices into the protocol's passages, per sequence
            out["continual"]["sequences"] = outcome.extra["sequences"]
    return out


def pairwise(rows: list[Row], verdicts: dict[str, Verdicts], bench: BenchConfig, seed: int) -> list[dict]:
    """Every pair of sources (in recipe order, ``a`` listed before ``b``): ``a - b`` with paired CIs.

    Only questions scored under both sources are compared. With ``bench.multiple_comparisons
    = 'bonferroni'`` each interval is widened for the number of pairs in this table.
    ``verdict``: 'a' (a better: whole interval above 0), 'b', or 'tie'.
    """
    pairs = list(itertools.combinations([row.label for row in rows], 2))
    conf = adjusted_confidence(bench.confidence, len(pairs), bench.multiple_comparisons)
    out = []
    for la, lb in pairs:
        a, b, kept = pair_verdicts(verdicts[la], verdicts[lb])
        rec = {"a": la, "b": lb, "n_passages": len(kept), "confidence": conf, "macro": None, "micro": None, "verdict": None}
        if a:
            mac = paired_bootstrap(a, b, "macro", bench.bootstrap_samples, conf, seed)
            mic = paired_bootstrap(a, b, "micro", bench.bootstrap_samples, conf, seed)
            rec.update(macro=_interval(mac), micro=_interval(mic), verdict={"better": "a", "worse": "b", "tie": "tie"}[mac.verdict()])
        out.append(rec)
    return out


def analyze(
    rows: list[Row],
    students: list[str],
    protocols: list[tuple[str, int]],
    outcomes: dict[tuple[str, str, str], Outcome],
    baselines: dict[tuple[str, str], Verdicts],
    bench: BenchConfig,
    seed: int,
) -> dict:
    """All numbers of a bench run.

    Args:
        rows: sources in recipe order. students: student labels.
        protocols: (name, n_passages) of the protocols that ran.
        outcomes: (protocol, student, source label) -> outcome.
        baselines: (protocol, student) -> the un-adapted student's verdicts on the protocol's passages.

    Returns:
        ``{"protocols": {name: {"n_passages", "tables": {student: {"baseline", "cells", "comparisons"}}}},
        "compatibility": {name: [cell, ...]}}`` (cells as :func:`cell_summary`).
    """
    out: dict = {"protocols": {}, "compatibility": {}}
    for name, n in protocols:
        tables = {}
        for student in students:
            base = baselines[(name, student)]
            base_scored, _, _ = pair_verdicts(base, base)
            ran = [row for row in rows if (name, student, row.label) in outcomes]  # a source may leave a protocol out
            cells = [cell_summary(row, student, name, outcomes[(name, student, row.label)], base, bench, seed) for row in ran]
            tables[student] = {
                "baseline": _interval(bootstrap_accuracy(base_scored, "macro", bench.bootstrap_samples, bench.confidence, seed)) if base_scored else None,
                "baseline_micro": _interval(bootstrap_accuracy(base_scored, "micro", bench.bootstrap_samples, bench.confidence, seed)) if base_scored else None,
                "cells": cells,
                "comparisons": pairwise(ran, {row.label: outcomes[(name, student, row.label)].verdicts for row in ran}, bench, seed),
            }
        out["protocols"][name] = {"n_passages": n, "tables": tables}
        out["compatibility"][name] = [c for student in students for c in tables[student]["cells"]]
    return out


def comparison(table: dict, a: str, b: str) -> dict | None:
    """The comparison record of ``a - b`` (flipped from ``b - a`` when stored that way), or None."""
    for c in table["comparisons"]:
        if (c["a"], c["b"]) == (a, b):
            return c
        if (c["a"], c["b"]) == (b, a):
            flip = {"a": "b", "b": "a", "tie": "tie", None: None}[c["verdict"]]
            macro = c["macro"]
            flipped = None if macro is None else {**macro, "value": -macro["value"], "lo": -macro["hi"], "hi": -macro["lo"]}
            return {**c, "a": a, "b": b, "macro": flipped, "verdict": flip}
    return None


def headline(table: dict) -> dict:
    """The answer of one table in three parts, all on macro accuracy.

    Returns ``{"best": cell, "tied": [(label, diff)], "below": [(label, diff)], "own_vs_other": [(own, other, diff)]}``
    where each diff is ``other - best`` (or ``own - other``) with its interval, and ``own_vs_other``
    pairs every source written by this student with every source written by another known model.
    """
    cells = [c for c in table["cells"] if c["accuracy"] is not None]
    if not cells:
        return {"best": None, "tied": [], "below": [], "own_vs_other": []}
    best = max(cells, key=lambda c: c["accuracy"]["value"])
    tied, below = [], []
    for cell in cells:
        if cell is best:
            continue
        diff = comparison(table, cell["source"], best["source"])
        if diff is None or diff["macro"] is None:
            continue
        (tied if diff["verdict"] == "tie" else below).append((cell["source"], diff["macro"]))
    own = [c for c in cells if c["own_data"]]
    other = [c for c in cells if c.get("author") and not c["own_data"]]
    pairs = []
    for own_cell in own:
        for other_cell in other:
            diff = comparison(table, own_cell["source"], other_cell["source"])
            if diff is not None and diff["macro"] is not None:
                pairs.append((own_cell["source"], other_cell["source"], diff["macro"]))
    return {"best": best, "tied": tied, "below": below, "own_vs_other": pairs}


def round_comparisons(table: dict, rounds: dict[str, int]) -> list[tuple[str, str, dict]]:
    """What a ``bench.train_run`` asks: did ReST-EM improve the policy's self-edits?

    ``rounds`` maps source labels to the ReST-EM rounds behind them (0: the base policy).
    Returns ``(later, earlier, diff)`` on macro accuracy, ``diff = later - earlier`` with its
    paired interval: first the last round against round 0, then each round against the
    previous one (both lists skip pairs without a comparison). Empty with fewer than two rounds.
    """
    scored = {c["source"] for c in table["cells"] if c["accuracy"] is not None}
    order = sorted((r, label) for label, r in rounds.items() if label in scored)
    if len(order) < 2:
        return []
    pairs = [(order[-1][1], order[0][1])]
    pairs += [(b, a) for (_, a), (_, b) in zip(order, order[1:], strict=False) if (b, a) != pairs[0]]
    out = []
    for later, earlier in pairs:
        diff = comparison(table, later, earlier)
        if diff is not None and diff["macro"] is not None:
            out.append((later, earlier, diff["macro"]))
    return out
