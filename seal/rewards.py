"""Rewards: no-passage QA accuracy of the adapted model minus the un-adapted baseline.

Paper Section 3.1 / 4.2: the reward of a self-edit is the accuracy gain its inner-loop
update gives on the passage's questions. The baseline (the un-adapted model's accuracy on
the same questions) is computed once per passage and policy, not once per self-edit, and
a self-edit's reward is averaged over ``inner.eval_times`` repetitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean


def accuracy(scores: Sequence[float | None], ungraded: str = "skip") -> float | None:
    """Mean score over questions (a fraction in [0, 1]).

    ``None`` scores (ungraded) are left out with ``ungraded='skip'`` or count as 0.0 with
    ``'wrong'`` (the reference's behaviour). Returns ``None`` when nothing was graded.

    Raises:
        ValueError: unknown ``ungraded`` policy.
    """
    if ungraded == "skip":
        vals = [s for s in scores if s is not None]
    elif ungraded == "wrong":
        vals = [0.0 if s is None else s for s in scores]
    else:
        raise ValueError(f"unknown ungraded policy {ungraded!r} (skip|wrong)")
    return fmean(vals) if vals else None


def reward(adapter_accuracy: float | None, baseline_accuracy: float | None) -> float | None:
    """Accuracy gain of the adapted model over the baseline; ``None`` if either is unknown."""
    if adapter_accuracy is None or baseline_accuracy is None:
        return None
    return adapter_accuracy - baseline_accuracy


def mean_reward(rewards: Sequence[float | None]) -> float | None:
    """Mean over repetitions, ignoring unknown ones; ``None`` if all are unknown."""
    vals = [r for r in rewards if r is not None]
    return fmean(vals) if vals else None
