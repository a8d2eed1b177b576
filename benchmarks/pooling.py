"""Pooling a result over world seeds: per-person scores from a bench's ``verdicts.csv`` and a
two-level bootstrap (seeds, then people within a seed) for the mean over seeds.

Why two levels: a seed is a different world, pretraining and run, so the seeds are the units
a claim "over seeds" generalises over; within a seed the 200 held-out people are a sample
too. Resampling only seeds ignores the per-seed sampling noise, resampling only people
pretends the five worlds are all there is.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path


def verdicts(bench_dir: Path) -> dict[str, list[list[float | None]]]:
    """Source label -> per-person, per-question scores (protocol single, the first student)
    from a bench's ``verdicts.csv`` (``seal.bench.report``; an empty score: never graded)."""
    import csv

    out: dict[str, dict[int, list[float | None]]] = {}
    student = None
    with open(bench_dir / "verdicts.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["protocol"] != "single" or student not in (None, row["student"]):
                continue
            student = row["student"]
            person = out.setdefault(row["source"], {}).setdefault(int(row["passage"]), [])
            person.append(float(row["score"]) if row["score"] != "" else None)
    return {label: [by_person[i] for i in sorted(by_person)] for label, by_person in out.items()}


def person_scores(verdicts: list[list[float | None]]) -> list[float | None]:
    """Per person: the share of their questions right (macro accuracy's unit); None if unscored."""
    out = []
    for qs in verdicts:
        scored = [v for v in qs if v is not None]
        out.append(sum(scored) / len(scored) if scored else None)
    return out


def paired(a: list, b: list) -> list[float]:
    """Per-person differences a - b where both are scored."""
    return [x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None]


def pooled(per_seed: list[list[float]], n_samples: int = 4000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean over seeds of the per-seed mean paired difference, with a two-level percentile
    bootstrap interval: seeds resampled with replacement, then people within each drawn seed.

    Args:
        per_seed: one list of per-person paired differences (fractions in [-1, 1]) per seed.
    Returns:
        ``{"value", "lo", "hi", "confidence", "n_seeds"}`` (fractions).
    """
    rng = random.Random(seed)
    value = statistics.mean(statistics.mean(d) for d in per_seed)
    stats = []
    for _ in range(n_samples):
        seeds = [per_seed[rng.randrange(len(per_seed))] for _ in per_seed]
        stats.append(statistics.mean(statistics.mean(rng.choices(d, k=len(d))) for d in seeds))
    stats.sort()
    lo = stats[int((1 - confidence) / 2 * n_samples)]
    hi = stats[min(n_samples - 1, int((1 + confidence) / 2 * n_samples))]
    return {"value": value, "lo": lo, "hi": hi, "confidence": confidence, "n_seeds": len(per_seed)}
