"""The pooled estimate over world seeds (benchmarks/pooling.py): a two-level bootstrap.

The README's claims "over seeds" rest on it, so its behaviour is pinned on data whose answer
is known: no spread at all gives a zero-width interval at the value; spread between seeds
widens the interval beyond what the people inside one seed give; the per-person scores come
from a bench's verdicts.csv exactly as the bench's macro accuracy counts them.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from pooling import paired, person_scores, pooled, verdicts  # noqa: E402


def test_no_spread_gives_the_value_exactly():
    out = pooled([[0.1] * 40, [0.1] * 40, [0.1] * 40], n_samples=500)
    assert out["value"] == pytest.approx(0.1) and out["lo"] == pytest.approx(0.1) and out["hi"] == pytest.approx(0.1)
    assert out["n_seeds"] == 3


def test_spread_between_seeds_widens_the_interval():
    within = [[0.0, 0.2] * 50] * 4  # every seed alike: only the people's noise
    between = [[x + shift for x in [0.0, 0.2] * 50] for shift in (-0.2, -0.1, 0.1, 0.2)]  # same mean, seeds differ
    a, b = pooled(within, n_samples=1000), pooled(between, n_samples=1000)
    assert a["value"] == pytest.approx(0.1) and b["value"] == pytest.approx(0.1)
    assert a["lo"] < 0.1 < a["hi"]
    assert (b["hi"] - b["lo"]) > 2 * (a["hi"] - a["lo"])


def test_the_interval_is_reproducible_and_seeded():
    data = [[0.0, 0.5, 1.0] * 10, [0.2, 0.4] * 15]
    assert pooled(data, n_samples=300, seed=1) == pooled(data, n_samples=300, seed=1)
    assert pooled(data, n_samples=300, seed=1) != pooled(data, n_samples=300, seed=2)


def test_person_scores_from_a_bench_verdicts_file(tmp_path):
    rows = [
        # protocol, student, source, passage, passage_id, question, score
        ("single", "s", "A", 0, "p0", 0, 1.0), ("single", "s", "A", 0, "p0", 1, 0.0),
        ("single", "s", "A", 1, "p1", 0, ""), ("single", "s", "A", 1, "p1", 1, 0.5),
        ("single", "s", "B", 0, "p0", 0, 0.0), ("single", "s", "B", 0, "p0", 1, 0.0),
        ("single", "s", "B", 1, "p1", 0, ""), ("single", "s", "B", 1, "p1", 1, ""),
        ("multi", "s", "A", 0, "p0", 0, 0.0),  # another protocol: ignored
        ("single", "t", "A", 0, "p0", 0, 0.0),  # a second student: ignored
    ]  # fmt: skip
    with open(tmp_path / "verdicts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["protocol", "student", "source", "passage", "passage_id", "question", "score"])
        w.writerows(rows)
    table = verdicts(tmp_path)
    assert table == {"A": [[1.0, 0.0], [None, 0.5]], "B": [[0.0, 0.0], [None, None]]}
    a, b = person_scores(table["A"]), person_scores(table["B"])
    assert a == [0.5, 0.5] and b == [0.0, None]
    assert paired(a, b) == [0.5]  # person 1 has no score under B: left out
