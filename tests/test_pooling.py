"""The pooled estimate over world seeds (benchmarks/pooling.py): a random-effects meta-analysis.

The README's claims "over seeds" rest on it, so its behaviour is pinned on data whose answer
is known by hand: equal seeds give their value and no between-seed spread; spread between seeds
gives the DerSimonian-Laird tau and widens the interval; one seed keeps its own interval.
And the outer-loop pool reads the committed per-seed files exactly as the bench reported them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from pooling import T_975, Z_975, over_seeds, random_effects  # noqa: E402


def iv(value: float, se: float) -> dict:
    """A 95 % interval with standard error ``se`` around ``value``."""
    return {"value": value, "lo": value - Z_975 * se, "hi": value + Z_975 * se}


def test_equal_seeds_give_their_value_no_spread_and_a_t_interval():
    out = random_effects([iv(10.0, 2.0)] * 5)
    assert out["value"] == pytest.approx(10.0) and out["tau"] == 0.0 and out["n_seeds"] == 5
    # no spread: the variance floor, 1 / sum(w) = se^2 / k, on a t with 4 degrees of freedom
    assert out["hi"] - out["value"] == pytest.approx(T_975[3] * 2.0 / math.sqrt(5))


def test_spread_between_seeds_by_hand():
    # y = 0 and 4, both se 1: fixed mean 2, Q = 8, C = 1, tau^2 = 7; weights 1/8 each, mu = 2;
    # the HKSJ spread sum(w*(y-mu)^2)/(k-1) = 1, so se = sqrt(1 / (1/4)) = 2, t_{0.975,1} = 12.706
    out = random_effects([iv(0.0, 1.0), iv(4.0, 1.0)])
    assert out["value"] == pytest.approx(2.0)
    assert out["tau"] == pytest.approx(math.sqrt(7))
    assert (out["lo"], out["hi"]) == (pytest.approx(2 - 12.706 * 2), pytest.approx(2 + 12.706 * 2))


def test_spread_widens_the_interval_beyond_the_seeds_noise():
    alike = [iv(5.0, 1.0)] * 5
    spread = [iv(v, 1.0) for v in (1.0, 3.0, 5.0, 7.0, 9.0)]  # same mean, worlds differ
    a, b = random_effects(alike), random_effects(spread)
    assert a["value"] == pytest.approx(5.0) and b["value"] == pytest.approx(5.0)
    assert b["tau"] > 2 and (b["hi"] - b["lo"]) > 3 * (a["hi"] - a["lo"])


def test_one_seed_keeps_its_own_interval_and_bad_input_is_refused():
    out = random_effects([{"value": 3.0, "lo": 1.0, "hi": 5.5}])
    assert (out["value"], out["lo"], out["hi"], out["tau"], out["n_seeds"]) == (3.0, 1.0, 5.5, None, 1)
    with pytest.raises(ValueError, match="no per-seed"):
        random_effects([])
    with pytest.raises(ValueError, match="zero width"):
        random_effects([iv(1.0, 1.0), {"value": 2.0, "lo": 2.0, "hi": 2.0}])


def test_over_seeds_counts_the_seeds_that_exclude_zero():
    s = over_seeds([{"value": 2.0, "lo": 0.5, "hi": 3.5}, {"value": 1.0, "lo": -1.0, "hi": 3.0}, {"value": -3.0, "lo": -5.0, "hi": -1.0}])
    assert (s["n_seeds_above_zero"], s["n_seeds_below_zero"], s["n_seeds"]) == (1, 1, 3)
    assert (s["per_seed_mean"], s["per_seed_min"], s["per_seed_max"]) == (0.0, -3.0, 2.0)


def test_the_outer_loop_pool_reads_a_committed_seed_file_as_the_bench_reported_it(tmp_path):
    import outer_loops_seeds as ols

    report = json.loads((REPO / "docs" / "results" / "outer_loops_seed1.json").read_text())
    (tmp_path / "outer_loops_seed1.json").write_text(json.dumps(report))
    (tmp_path / "outer_loops_seed7.json").write_text(json.dumps({"provenance": {}, "rows": []}))  # transcribed: left out
    (tmp_path / "outer_loops_seeds.json").write_text("{}")  # the pooled file beside them: not a seed
    result = ols.pool(ols.seed_reports(tmp_path, None))
    assert result["seeds"] == [1]
    row = result["rows"][0]
    grpo = next(loop for loop in report["loops"] if loop["name"] == "GRPO")
    assert row["accuracy"]["grpo"]["value"] == round(100 * grpo["policies"][-1]["accuracy"]["value"], 2)
    assert sorted(row["grpo_steps"]) == ["12", "18", "6"]
    # the bench reported ReST-EM - GRPO; the pool states GRPO - ReST-EM, the interval flipped
    d = next(x["diff"] for x in report["differences"] if x["a"].startswith("ReST-EM") and x["b"].startswith("GRPO"))
    assert row["differences"]["grpo_minus_restem"] == {"value": round(-100 * d["value"], 2), "lo": round(-100 * d["hi"], 2), "hi": round(-100 * d["lo"], 2)}
    assert result["pooled_differences"]["grpo_minus_restem"]["n_seeds_above_zero"] == 1
    assert row["training"]["grpo"]["top_style"] == "facts" and row["training"]["grpo"]["collapse_warning_at"]
    assert row["training"]["grpo"]["style_collapse_at"] == [18]  # facts 98.8 % > 90 %; 4 % at step 1
    with pytest.raises(SystemExit, match=r"seeds \[2\]"):
        ols.seed_reports(tmp_path, [1, 2])


def test_the_hparams_pool_reads_every_seed_file_and_counts_the_seeds_whose_share_rose(tmp_path):
    import microworld_seeds as mws
    from provenance import write_results

    def row(seed, shares, diff):
        return {"seed": seed, "full": {"last_minus_round0": diff, "hparams": {"better_share": shares}}}

    write_results(tmp_path / "microworld_hparams_seed0.json", {"row": row(0, {"0": 40.0, "1": 70.0, "2": 80.0}, [10.0, 6.0, 14.0])})
    write_results(tmp_path / "microworld_hparams_seed3.json", {"row": row(3, {"0": 50.0, "1": 45.0, "2": 45.0}, [2.0, -2.0, 6.0])})
    (tmp_path / "microworld_hparams_seeds.json").write_text("{}")  # the pooled file: not a seed
    rows = mws.seed_files(tmp_path, None)
    assert [r["seed"] for r in rows] == [0, 3] and rows[0]["cpu"]  # each row keeps its machine
    shares = mws.pooled_better_share(rows)
    assert shares["round0"] == {"mean": 45.0, "min": 40.0, "max": 50.0}
    assert shares["last_minus_round0"] == {"mean": 17.5, "min": -5.0, "max": 40.0, "n_seeds_up": 1, "n_seeds": 2}
    pooled = mws.pooled_rounds(rows, "full")
    assert pooled["n_seeds_above_zero"] == 1 and pooled["per_seed_mean"] == 6.0 and pooled["pooled"]["n_seeds"] == 2
    with pytest.raises(SystemExit, match=r"seeds \[1\]"):
        mws.seed_files(tmp_path, [0, 1])
