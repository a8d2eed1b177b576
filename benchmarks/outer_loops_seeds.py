"""ReST-EM, curated ReST-EM and GRPO over microworld seeds, and what holds across them.

For each seed (the world's, its pretraining's and the runs'), at the equal budget of 1440
inner-loop evaluations:

* ``seal train recipes/microworld_cpu.yaml`` (ReST-EM: 3 rounds x 96 people x 5 self-edits),
* the same with ``rl.curation=weighted`` (curated ReST-EM),
* ``seal train recipes/microworld_grpo_cpu.yaml`` (GRPO: 18 steps x 16 people x 5, every
  checkpoint kept),
* ``benchmarks/outer_loops.py``: every round's / chosen step's policy on the 200 held-out
  people (``recipes/bench_microworld_cpu.yaml``), GRPO at steps 6, 12 and 18; its report is
  written to ``--results-dir`` (default ``docs/results``) as ``outer_loops_seedN.json``.

Then the pooled table, from the per-seed files in ``--results-dir`` (so seeds measured in
different sessions and on different machines pool; the run directories are not needed): per
seed and pooled over seeds, held-out accuracy of each outer loop's final policy and the paired
differences curated - ReST-EM, GRPO - ReST-EM, GRPO - curated (and each - round 0), in points,
with the per-seed mean and range and the number of seeds whose own 95 % interval excludes 0 on
either side. The pooled estimate is a random-effects meta-analysis over the seeds' own
intervals (``benchmarks/pooling.py``: DerSimonian-Laird between-seed variance, Hartung-Knapp
interval on seeds - 1 degrees of freedom), so it carries both the spread between worlds
(``tau``) and the sampling noise of 200 people per world.

Usage::

    python benchmarks/outer_loops_seeds.py [--seeds 0 1 2 3 4] [--runs runs/outer_seeds] [--no-pool]
    python benchmarks/outer_loops_seeds.py --pool-only [--seeds ...] [--results docs/results/outer_loops_seeds.json]

Every step resumes: a finished run or bench is reported, not run again. Each step runs in a
fresh process with one torch thread; the log is ``RUNS/seedN/NAME.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from pooling import over_seeds  # noqa: E402

from seal.config import DiagnosticsConfig  # noqa: E402
from seal.diagnostics import style_collapse  # noqa: E402

MAX_FORMAT_SHARE = DiagnosticsConfig().max_format_share
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


def loop_key(name: str) -> str:
    """``outer_loops.py``'s loop name -> the short key: ReST-EM, curated ReST-EM (...), GRPO / RLOO."""
    return "curated" if name.startswith("curated") else ("restem" if name == "ReST-EM" else "grpo")


def points(iv: dict | None) -> dict | None:
    """A fraction interval ``{"value", "lo", "hi"}`` in points, 2 decimals (the README's unit)."""
    return None if iv is None else {k: round(100 * iv[k], 2) for k in ("value", "lo", "hi")}


def per_seed_difference(report: dict, a: str, b: str) -> dict | None:
    """The bench's own paired interval of ``a - b`` (final policies; fractions) in one seed's report."""
    labels = {"round0": report["round0"]["label"]}
    for loop in report["loops"]:
        labels[loop_key(loop["name"])] = loop["policies"][-1]["label"]
    for d in report["differences"]:
        if (d["a"], d["b"]) == (labels[a], labels[b]):
            return d["diff"]
        if (d["a"], d["b"]) == (labels[b], labels[a]) and d["diff"] is not None:
            x = d["diff"]
            return {**x, "value": -x["value"], "lo": -x["hi"], "hi": -x["lo"]}
    return None


def seed_row(seed: int, report: dict) -> dict:
    """One seed's line of the pooled table (points): final accuracies, GRPO's steps, the
    paired differences, the last round's / step's diagnostics and the machine."""
    row: dict = {"seed": seed, "cpu": report["provenance"]["cpu"], "accuracy": {"round0": points(report["round0"]["accuracy"])}}
    row["differences"], row["training"] = {}, {}
    for loop in report["loops"]:
        key = loop_key(loop["name"])
        row["accuracy"][key] = points(loop["policies"][-1]["accuracy"])
        if key == "grpo":
            row["grpo_steps"] = {str(p["step"]): points(p["accuracy"]) for p in loop["policies"]}
        last = loop["training"][-1]
        d = last["diagnostics"] or {}
        top = max((d.get("format_shares") or {"n/a": 0}).items(), key=lambda kv: kv[1])
        row["training"][key] = {
            "mean_reward": round(100 * last["mean_reward"], 2),
            "distinct_2": d.get("distinct_2"),
            "top_style": top[0],
            "top_style_share": round(100 * top[1], 1),
            "collapse_warning": d.get("collapse_warning"),
            "collapse_warning_at": [t.get("step", t.get("round")) for t in loop["training"] if (t["diagnostics"] or {}).get("collapse_warning")],
            # the style part on its own (the warning states only its first reason): one style
            # above diagnostics.max_format_share's default, not already the first round's / step's
            "style_collapse_at": [
                t.get("step", t.get("round"))
                for t in loop["training"]
                if style_collapse(t["diagnostics"] or {}, MAX_FORMAT_SHARE, loop["training"][0]["diagnostics"])
            ],
        }
    for key, a, b in PAIRS:
        row["differences"][key] = points(per_seed_difference(report, a, b))
    return row


def seed_reports(results_dir: Path, seeds: list[int] | None) -> dict[int, dict]:
    """Seed -> its committed ``outer_loops_seedN.json`` (written by ``outer_loops.py``); files
    transcribed from printed tables (no per-policy records) are left out, with a note."""
    found = {}
    for path in sorted(results_dir.glob("outer_loops_seed[0-9]*.json")):
        seed = int(path.stem.removeprefix("outer_loops_seed"))
        if seeds is not None and seed not in seeds:
            continue
        report = json.loads(path.read_text())
        if "loops" not in report:
            print(f"{path}: transcribed (no per-policy records), left out of the pool; rerun its seed", file=sys.stderr)
            continue
        found[seed] = report
    if seeds is not None and (missing := sorted(set(seeds) - set(found))):
        raise SystemExit(f"no usable outer_loops_seedN.json in {results_dir} for seeds {missing}")
    return found


def pool(reports: dict[int, dict]) -> dict:
    """Per seed (points): final accuracies and the paired differences; the differences pooled
    over seeds by :func:`pooling.over_seeds` (random effects over the seeds' own intervals).
    Accuracies are not pooled: the worlds differ in difficulty (round 0 from 18 to 35 %)."""
    rows = [seed_row(seed, reports[seed]) for seed in sorted(reports)]
    differences = {key: over_seeds([r["differences"][key] for r in rows]) for key, _, _ in PAIRS}
    return {"seeds": sorted(reports), "rows": rows, "pooled_differences": differences}


def _pts(iv: dict | None, signed: bool = True) -> str:
    if iv is None:
        return "n/a"
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(iv['value'])} [{f.format(iv['lo'])}, {f.format(iv['hi'])}]".replace("-", "−")


NAMES = {"round0": "round 0", "restem": "ReST-EM", "curated": "curated ReST-EM", "grpo": "GRPO"}


def markdown(result: dict) -> str:
    """The README's two tables (points): per seed, then the differences pooled over seeds."""
    lines = ["| seed (CPU family/model) | round 0 | ReST-EM | curated ReST-EM | GRPO, step 18 | GRPO, step 6 / 12 | GRPO's top style at step 18 | collapse warning at GRPO steps (style part) |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        acc, steps, g = r["accuracy"], r.get("grpo_steps", {}), r["training"].get("grpo", {})
        at = ", ".join(map(str, g.get("collapse_warning_at") or [])) or "none"
        style = ", ".join(map(str, g.get("style_collapse_at") or [])) or "none"
        lines.append(
            f"| {r['seed']} ({r['cpu'].get('family')}/{r['cpu'].get('model')}) | {_pts(acc['round0'], False)} | {_pts(acc.get('restem'), False)} | "
            f"{_pts(acc.get('curated'), False)} | {_pts(acc.get('grpo'), False)} | {_pts(steps.get('6'), False)} / {_pts(steps.get('12'), False)} | "
            f"{g.get('top_style')} {g.get('top_style_share')} % | {at} ({style}) |"
        )
    lines += ["", "| difference | " + " | ".join(f"seed {r['seed']}" for r in result["rows"]) + " | mean [min, max] | pooled | tau | seeds above 0 / below 0 |"]
    lines.append("|---" * (len(result["rows"]) + 5) + "|")
    for key, a, b in PAIRS:
        s = result["pooled_differences"][key]
        cells = " | ".join(_pts(r["differences"][key]) for r in result["rows"])
        tau = "n/a" if s["pooled"]["tau"] is None else f"{s['pooled']['tau']:.1f}"
        spread = f"{s['per_seed_mean']:+.1f} [{s['per_seed_min']:+.1f}, {s['per_seed_max']:+.1f}]".replace("-", "−")
        lines.append(f"| {NAMES[a]} − {NAMES[b]} | {cells} | {spread} | {_pts(s['pooled'])} | {tau} | {s['n_seeds_above_zero']} / {s['n_seeds_below_zero']} of {s['n_seeds']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default 0-4) / to pool (default: every file in --results-dir)")
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "outer_seeds")
    ap.add_argument("--results-dir", type=Path, default=REPO / "docs" / "results", help="where each seed's outer_loops_seedN.json is written and pooled from")
    ap.add_argument("--no-pool", action="store_true", help="run the seeds, skip the pooled table")
    ap.add_argument("--pool-only", action="store_true", help="only pool the seeds' files already in --results-dir")
    ap.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--results", type=Path, help="also write the pooled JSON here, e.g. docs/results/outer_loops_seeds.json")
    a = ap.parse_args()
    if not a.pool_only:
        for seed in a.seeds or [0, 1, 2, 3, 4]:
            walls = run_seed(seed, a.runs, a.results_dir)
            print(f"seed {seed}: done ({walls or 'already run'})", flush=True)
    if a.no_pool:
        return
    result = pool(seed_reports(a.results_dir, a.seeds))
    print(markdown(result))
    write_results(a.output / "outer_loops_seeds.json", result, published=a.results)


if __name__ == "__main__":
    main()
