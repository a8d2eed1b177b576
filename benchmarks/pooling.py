"""Pooling a result over world seeds: a random-effects meta-analysis of the per-seed estimates.

Each seed (a different world, pretraining and run) gives one estimate with its own 95 %
interval: a bench's paired bootstrap over its held-out people. The seeds are the units a claim
"over seeds" generalises over, so the pooled estimate treats them as a sample of worlds: a
random-effects model (DerSimonian-Laird between-seed variance tau^2) whose interval is the
Hartung-Knapp-Sidik-Jonkman one (a t interval on k - 1 degrees of freedom, its variance never
below the plain random-effects variance), the meta-analysis field's recommendation for few
studies. It carries both the spread between worlds (tau) and each seed's sampling noise.

Why from the per-seed intervals and not from per-person scores: the committed per-seed result
files (``docs/results/*_seedN.json``) hold each seed's estimate and interval, so seeds measured
in different sessions, on different machines, pool without the run directories.
"""

from __future__ import annotations

import math
import statistics

#: Two-sided 95 % quantiles of Student's t, t_{0.975, df}, for df = 1..30 (beyond: the normal's).
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
Z_975 = 1.959964


def standard_error(interval: dict) -> float:
    """The standard error a symmetric 95 % interval ``{"lo", "hi"}`` implies: (hi - lo) / (2 z)."""
    return (interval["hi"] - interval["lo"]) / (2 * Z_975)


def random_effects(estimates: list[dict]) -> dict:
    """Pool per-seed estimates with a random-effects model (DerSimonian-Laird tau^2, Hartung-
    Knapp-Sidik-Jonkman 95 % interval with the variance floored at the random-effects one).

    Args:
        estimates: one ``{"value", "lo", "hi"}`` per seed, a 95 % interval each (any unit:
            fractions or points; the output has the same).
    Returns:
        ``{"value", "lo", "hi", "tau", "n_seeds", "method"}``: the pooled mean, its 95 %
        interval, the between-seed standard deviation (``tau``), the number of seeds. One seed:
        its own estimate and interval, ``tau`` None.
    Raises:
        ValueError: no estimates, or an interval of zero width (no standard error to weight by).
    """
    if not estimates:
        raise ValueError("random_effects: no per-seed estimates to pool")
    k = len(estimates)
    if k == 1:
        e = estimates[0]
        return {"value": e["value"], "lo": e["lo"], "hi": e["hi"], "tau": None, "n_seeds": 1, "method": "one seed: its own interval"}
    y = [e["value"] for e in estimates]
    v = [standard_error(e) ** 2 for e in estimates]
    if any(x <= 0 for x in v):
        raise ValueError(f"random_effects: a per-seed interval has zero width: {estimates}")
    w = [1 / x for x in v]
    fixed = sum(wi * yi for wi, yi in zip(w, y, strict=True)) / sum(w)
    q = sum(wi * (yi - fixed) ** 2 for wi, yi in zip(w, y, strict=True))
    c = sum(w) - sum(wi**2 for wi in w) / sum(w)
    tau2 = max(0.0, (q - (k - 1)) / c)
    ws = [1 / (x + tau2) for x in v]
    mu = sum(wi * yi for wi, yi in zip(ws, y, strict=True)) / sum(ws)
    spread = sum(wi * (yi - mu) ** 2 for wi, yi in zip(ws, y, strict=True)) / (k - 1)
    se = math.sqrt(max(spread, 1.0) / sum(ws))  # HKSJ, floored: never narrower than plain random effects
    t = T_975[k - 2] if k - 1 <= len(T_975) else Z_975
    return {
        "value": mu,
        "lo": mu - t * se,
        "hi": mu + t * se,
        "tau": math.sqrt(tau2),
        "n_seeds": k,
        "method": "random effects (DerSimonian-Laird tau^2, Hartung-Knapp-Sidik-Jonkman 95 % interval)",
    }


def over_seeds(estimates: list[dict]) -> dict:
    """What a claim over seeds states: the pooled estimate (:func:`random_effects`), the mean
    and range of the per-seed values, and how many seeds' own 95 % intervals exclude 0 on
    either side. Same units as ``estimates``."""
    values = [e["value"] for e in estimates]
    return {
        "pooled": random_effects(estimates),
        "per_seed_mean": statistics.mean(values),
        "per_seed_min": min(values),
        "per_seed_max": max(values),
        "n_seeds_above_zero": sum(e["lo"] > 0 for e in estimates),
        "n_seeds_below_zero": sum(e["hi"] < 0 for e in estimates),
        "n_seeds": len(estimates),
    }
