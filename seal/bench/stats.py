"""Accuracy and paired bootstrap confidence intervals over passages.

Data layout everywhere: a *verdict table* is a list over passages of lists over that
passage's questions of scores in [0, 1] (1 right, 0 wrong, fractional for F1 or for a mean
over self-edits and repetitions). Two sources are compared on the *same* questions.

Two accuracies:

* ``macro`` -- the paper's: the mean over passages of the per-passage accuracy (a passage with
  2 questions weighs as much as one with 9);
* ``micro`` -- the mean over all questions.

Intervals are percentile bootstrap intervals (Efron & Tibshirani 1993, ch. 13) that resample
*passages* with replacement, for both statistics: questions about one passage succeed or fail
together (one adapter learned that passage), so resampling questions independently would
understate the variance. The difference of two sources is bootstrapped *paired*: one
resample of passages is applied to both, so passage difficulty cancels out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Statistic = Literal["macro", "micro"]
Verdicts = Sequence[Sequence[float]]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided bootstrap interval (same unit as the data: fractions)."""

    value: float
    lo: float
    hi: float
    confidence: float
    n_units: int  # passages resampled

    def verdict(self) -> Literal["better", "worse", "tie"]:
        """'better' if the whole interval is above 0, 'worse' if below, else 'tie'."""
        if self.lo > 0:
            return "better"
        if self.hi < 0:
            return "worse"
        return "tie"


def verdict_accuracy(verdicts: Verdicts, statistic: Statistic = "macro") -> float:
    """A verdict table's macro (mean over passages of per-passage means) or micro (mean over questions) accuracy.

    Raises:
        ValueError: no passages, a passage without questions, or an unknown statistic.
    """
    sums, counts = _passage_sums(verdicts)
    return _stat(sums[None, :], counts[None, :], statistic)[0]


def _passage_sums(verdicts: Verdicts) -> tuple[np.ndarray, np.ndarray]:
    if len(verdicts) == 0:
        raise ValueError("no passages to score")
    if any(len(q) == 0 for q in verdicts):
        raise ValueError("a passage has no scored questions")
    sums = np.array([float(np.sum(q)) for q in verdicts])
    counts = np.array([len(q) for q in verdicts], dtype=float)
    return sums, counts


def _stat(sums: np.ndarray, counts: np.ndarray, statistic: Statistic) -> np.ndarray:
    """Row-wise statistic of (resamples, passages) arrays of per-passage score sums and counts."""
    if statistic == "macro":
        return (sums / counts).mean(axis=1)
    if statistic == "micro":
        return sums.sum(axis=1) / counts.sum(axis=1)
    raise ValueError(f"unknown statistic {statistic!r} (macro|micro)")


def _resample_indices(n: int, n_samples: int, seed: int) -> np.ndarray:
    """(n_samples, n) passage indices drawn with replacement; fixed by ``seed`` alone."""
    return np.random.default_rng(seed).integers(0, n, size=(n_samples, n))


def paired_bootstrap(
    a: Verdicts,
    b: Verdicts,
    statistic: Statistic = "macro",
    n_samples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Difference ``stat(a) - stat(b)`` with a paired percentile bootstrap interval over passages.

    Args:
        a, b: verdict tables of two sources on the same passages and questions
            (``len(a[i]) == len(b[i])``); scores in [0, 1].
        statistic: 'macro' (the paper's accuracy) or 'micro'.
        n_samples: bootstrap resamples.
        confidence: two-sided level, e.g. 0.95 gives the 2.5 % and 97.5 % percentiles.
        seed: the resampling seed (the same seed resamples the same passages for every pair).

    Returns:
        :class:`Interval` with ``value`` the observed difference (fractions, not points).

    Raises:
        ValueError: the tables are not aligned passage by passage and question by question,
            a passage has no questions, or ``confidence`` is outside (0, 1).
    """
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b, strict=True)):
        raise ValueError("paired bootstrap needs the same passages and questions on both sides")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    sums_a, counts = _passage_sums(a)
    sums_b, _ = _passage_sums(b)
    # Both statistics are linear in the per-passage sums for fixed counts, so the paired
    # difference is the statistic of the per-passage difference of sums.
    diff = sums_a - sums_b
    value = float(_stat(diff[None, :], counts[None, :], statistic)[0])
    resamples = _resample_indices(len(diff), n_samples, seed)
    distribution = _stat(diff[resamples], counts[resamples], statistic)
    alpha = 1 - confidence
    lo, hi = np.quantile(distribution, [alpha / 2, 1 - alpha / 2])
    return Interval(value, float(lo), float(hi), confidence, len(diff))


def bootstrap_accuracy(
    a: Verdicts, statistic: Statistic = "macro", n_samples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """One source's accuracy with its percentile bootstrap interval over passages (bar-chart whiskers)."""
    zeros = [[0.0] * len(q) for q in a]
    return paired_bootstrap(a, zeros, statistic, n_samples, confidence, seed)


def pair_verdicts(
    a: Sequence[Sequence[float | None]], b: Sequence[Sequence[float | None]]
) -> tuple[list[list[float]], list[list[float]], list[int]]:
    """Keep only questions scored on both sides, and passages with at least one such question.

    ``None`` marks an ungraded question or a passage whose every evaluation failed.

    Returns:
        (a', b', kept passage indices): aligned verdict tables ready for :func:`paired_bootstrap`.
    """
    out_a, out_b, kept = [], [], []
    for i, (scores_a, scores_b) in enumerate(zip(a, b, strict=True)):
        pairs = [(x, y) for x, y in zip(scores_a, scores_b, strict=True) if x is not None and y is not None]
        if pairs:
            out_a.append([x for x, _ in pairs])
            out_b.append([y for _, y in pairs])
            kept.append(i)
    return out_a, out_b, kept


def adjusted_confidence(confidence: float, n_comparisons: int, method: str) -> float:
    """Per-comparison level: ``confidence`` itself, or Bonferroni's ``1 - (1 - confidence) / m``."""
    if method == "none" or n_comparisons <= 1:
        return confidence
    if method == "bonferroni":
        return 1 - (1 - confidence) / n_comparisons
    raise ValueError(f"unknown multiple-comparison method {method!r} (none|bonferroni)")
