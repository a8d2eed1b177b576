"""ReST-EM, curated ReST-EM and GRPO over microworld seeds, and what holds across them.

For each seed (the world's, its pretraining's and the runs'), at the equal budget of 1440
inner-loop evaluations:

* ``seal train recipes/microworld_cpu.yaml`` (ReST-EM: 3 rounds x 96 people x 5 self-edits),
* the same with ``rl.curation=weighted`` (curated ReST-EM),
* ``seal train recipes/microworld_grpo_cpu.yaml`` (GRPO: 18 steps x 16 people x 5, every
  checkpoint kept),
* ``benchmarks/outer_loops.py``: every round's / chosen step's policy on the 200 held-out
  people (``recipes/bench_microworld_cpu.yaml``), GRPO at steps 6, 12 and 18; its
  ``outer_loops.json`` per seed is also written to ``--results-dir`` as
  ``outer_loops_seedN.json``.

Then the pooled table (``--pool``): per seed and pooled over seeds, held-out accuracy of
each outer loop's final policy and the paired differences curated - ReST-EM, GRPO - ReST-EM,
GRPO - curated (and each - round 0), with the number of seeds whose 95 % interval excludes 0
on either side. The pooled interval is a two-level bootstrap (:func:`pooled`): seeds drawn
with replacement, then each drawn seed's held-out people drawn with replacement, the statistic
the mean over the drawn seeds of the per-seed macro difference; so it carries both the
spread between worlds and the sampling noise of 200 people per world.

Usage::

    python benchmarks/outer_loops_seeds.py [--seeds 0 1 2 3 4] [--runs runs/outer_seeds] [--no-pool]
    python benchmarks/outer_loops_seeds.py --pool-only [--results docs/results/outer_loops_seeds.json]

Every step resumes: a finished run or bench is reported, not run again. Each step runs in a
fresh process with one torch thread; the log is ``RUNS/seedN/NAME.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from pooling import paired, person_scores, pooled, verdicts  # noqa: E402
from provenance import write_results  # noqa: E402

#: (name, recipe, extra overrides) of the three training runs per seed.
RUNS = (
    ("restem", "recipes/microworld_cpu.yaml", []),
    ("curated", "recipes/microworld_cpu.yaml", ["rl.curation=weighted"]),
    ("grpo", "recipes/microworld_grpo_cpu.yaml", []),
)
GRPO_STEPS = ("6", "12", "18")
#: (key, a, b): the pooled differences, a - b, by outer loop name (round0: the base policy).
PAIRS = (
    ("curated_minus_restem", "curated", "restem"),
    ("grpo_minus_restem", "grpo", "restem"),
    ("grpo_minus_curated", "grpo", "curated"),
    ("restem_minus_round0", "restem", "round0"),
    ("curated_minus_round0", "curated", "round0"),
    ("grpo_minus_round0", "grpo", "round0"),
)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _step(args: list[str], log: Path) -> float:
    """Run one step in a fresh process, appending to ``log``; wall seconds. Raises on failure."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(args)}\n")
        f.flush()
        subprocess.run(args, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT, check=True)
    return round(time.perf_counter() - t0, 1)


def _finished(run_dir: Path) -> bool:
    """A train run that ended: ``seal train`` writes ``final.json`` last."""
    return (run_dir / "final.json").is_file()


def run_seed(seed: int, runs: Path, results_dir: Path | None) -> dict:
    """The three training runs and the outer-loops bench of one seed; wall seconds per step."""
    where = runs / f"seed{seed}"
    where.mkdir(parents=True, exist_ok=True)
    overrides = [f"seed={seed}", f"microworld.seed={seed}"]
    walls: dict = {}
    for name, recipe, extra in RUNS:
        run_dir = where / name
        if _finished(run_dir):
            continue
        flag = ["--resume", str(run_dir)] if run_dir.exists() else ["--run-dir", str(run_dir)]
        walls[name] = _step([sys.executable, "-m", "seal.cli", "train", recipe, *overrides, *extra, *flag], where / f"{name}.log")
    out = where / "outer_loops"
    if not (out / "outer_loops.json").is_file():
        args = [sys.executable, "benchmarks/outer_loops.py", "--bench-recipe", "recipes/bench_microworld_cpu.yaml"]
        args += ["--restem", str(where / "restem"), "--curated", str(where / "curated"), "--grpo", str(where / "grpo")]
        args += ["--grpo-checkpoints", *GRPO_STEPS, "--out", str(out)]
        if results_dir is not None:
            args += ["--results", str(results_dir / f"outer_loops_seed{seed}.json")]
        walls["bench"] = _step(args + overrides, where / "outer_loops.log")
    return walls


# ----------------------------------------------------------------------------- pooling


def seed_loops(seed: int, runs: Path) -> dict[str, list[float | None]]:
    """Outer-loop name -> per-person held-out scores of its final policy (and round 0), one seed."""
    report = json.loads((runs / f"seed{seed}" / "outer_loops" / "outer_loops.json").read_text())
    scores = verdicts(Path(report["bench"]))
    names = {"ReST-EM": "restem", "GRPO": "grpo", "RLOO": "grpo"}
    out = {"round0": person_scores(scores[report["round0"]["label"]])}
    for loop in report["loops"]:
        key = "curated" if loop["name"].startswith("curated") else names[loop["name"]]
        out[key] = person_scores(scores[loop["policies"][-1]["label"]])
    return out


def per_seed_difference(report: dict, a: str, b: str) -> dict | None:
    """The bench's own paired interval of ``a - b`` (final policies) in one seed's report."""
    labels = {"round0": report["round0"]["label"]}
    for loop in report["loops"]:
        key = "curated" if loop["name"].startswith("curated") else ("restem" if loop["name"] == "ReST-EM" else "grpo")
        labels[key] = loop["policies"][-1]["label"]
    for d in report["differences"]:
        if (d["a"], d["b"]) == (labels[a], labels[b]):
            return d["diff"]
        if (d["a"], d["b"]) == (labels[b], labels[a]) and d["diff"] is not None:
            x = d["diff"]
            return {**x, "value": -x["value"], "lo": -x["hi"], "hi": -x["lo"]}
    return None


def pool(seeds: list[int], runs: Path) -> dict:
    """Per seed and pooled: final accuracies, the paired differences and how many seeds exclude 0."""
    rows, scores = [], {}
    for seed in seeds:
        report = json.loads((runs / f"seed{seed}" / "outer_loops" / "outer_loops.json").read_text())
        scores[seed] = seed_loops(seed, runs)
        row = {"seed": seed, "accuracy": {"round0": report["round0"]["accuracy"]}, "differences": {}, "training": {}}
        for loop in report["loops"]:
            key = "curated" if loop["name"].startswith("curated") else ("restem" if loop["name"] == "ReST-EM" else "grpo")
            row["accuracy"][key] = loop["policies"][-1]["accuracy"]
            if key == "grpo":
                row["grpo_steps"] = {str(p["step"]): p["accuracy"] for p in loop["policies"]}
            row["training"][key] = [{"mean_reward": t["mean_reward"], "collapse_warning": (t["diagnostics"] or {}).get("collapse_warning"), "format_shares": (t["diagnostics"] or {}).get("format_shares")} for t in loop["training"]]
        for key, a, b in PAIRS:
            row["differences"][key] = per_seed_difference(report, a, b)
        rows.append(row)
    summary = {}
    for key, a, b in PAIRS:
        diffs = [r["differences"][key] for r in rows if r["differences"][key] is not None]
        summary[key] = {
            "pooled": pooled([paired(scores[s][a], scores[s][b]) for s in seeds]),
            "per_seed_mean": statistics.mean(d["value"] for d in diffs),
            "per_seed_min": min(d["value"] for d in diffs),
            "per_seed_max": max(d["value"] for d in diffs),
            "n_seeds_above_zero": sum(d["lo"] > 0 for d in diffs),
            "n_seeds_below_zero": sum(d["hi"] < 0 for d in diffs),
            "n_seeds": len(diffs),
        }
    accuracy = {k: pooled([[x for x in scores[s][k] if x is not None] for s in seeds]) for k in ("round0", "restem", "curated", "grpo")}
    return {"seeds": seeds, "rows": rows, "pooled_accuracy": accuracy, "pooled_differences": summary}


def _pts(iv: dict | None, signed: bool = True) -> str:
    if iv is None:
        return "n/a"
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(100 * iv['value'])} [{f.format(100 * iv['lo'])}, {f.format(100 * iv['hi'])}]"


def print_tables(result: dict) -> None:
    print("\nseed | round 0 | ReST-EM | curated | GRPO (step 18) | GRPO step 6 / 12")
    for r in result["rows"]:
        acc, steps = r["accuracy"], r.get("grpo_steps", {})
        print(
            f"{r['seed']} | {_pts(acc['round0'], False)} | {_pts(acc.get('restem'), False)} | {_pts(acc.get('curated'), False)} | "
            f"{_pts(acc.get('grpo'), False)} | {_pts(steps.get('6'), False)} / {_pts(steps.get('12'), False)}"
        )
    print("\ndifference | " + " | ".join(f"seed {r['seed']}" for r in result["rows"]) + " | pooled | seeds > 0 | seeds < 0")
    for key, s in result["pooled_differences"].items():
        cells = " | ".join(_pts(r["differences"][key]) for r in result["rows"])
        print(f"{key} | {cells} | {_pts(s['pooled'])} | {s['n_seeds_above_zero']}/{s['n_seeds']} | {s['n_seeds_below_zero']}/{s['n_seeds']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "outer_seeds")
    ap.add_argument("--results-dir", type=Path, help="also write each seed's outer_loops_seedN.json here (e.g. docs/results)")
    ap.add_argument("--no-pool", action="store_true", help="run the seeds, skip the pooled table")
    ap.add_argument("--pool-only", action="store_true", help="only pool the seeds already run")
    ap.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--results", type=Path, help="also write the pooled JSON here, e.g. docs/results/outer_loops_seeds.json")
    a = ap.parse_args()
    if not a.pool_only:
        for seed in a.seeds:
            walls = run_seed(seed, a.runs, a.results_dir)
            print(f"seed {seed}: done ({walls or 'already run'})", flush=True)
    if a.no_pool:
        return
    result = pool(a.seeds, a.runs)
    print_tables(result)
    write_results(a.output / "outer_loops_seeds.json", result, published=a.results)


if __name__ == "__main__":
    main()
