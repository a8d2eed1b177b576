"""The microworld over world seeds: does SEAL learn on every seed, and by how much?

For each seed (the world's, the pretraining's and the run's): the pretrained policy's copy skill
and pretraining seconds (from the cached world's ``meta.json``), then ``seal microworld demo``
in one or both sizes, each in a fresh process with one torch thread:

* ``reduced``: CI's reduction (``seal.microworld.demo.REDUCED``): mean training reward per
  round, and the 48-person bench's last round - round 0;
* ``full``: the README's demo: 200 held-out people, last round - round 0 and round 0 - passage
  only, with 95 % paired bootstrap intervals, and the demo's wall seconds.

Usage::

    python benchmarks/microworld_seeds.py [--seeds 0 1 2 3 4] [--sizes reduced full] [--jobs 2]
                                          [--runs runs/seeds] [--output benchmarks/results]
                                          [--results docs/results/microworld_seeds.json]
    python benchmarks/microworld_seeds.py --hparams [--seeds 0 1 2 3 4] [--runs runs/seeds-hparams]
                                          --results-dir docs/results [--pool-only]
                                          [--results docs/results/microworld_hparams_seeds.json]

``--hparams``: the hyperparameter world (``seal microworld demo --hparams``, full size): per
seed the share of held-out self-edits choosing one of the *better* settings per round (those
whose round-0 self-edits scored above round 0's mean, ``seal.microworld.demo.better_settings``),
the last round - round 0 on held-out accuracy. With ``--results-dir`` each finished seed is
written there as ``microworld_hparams_seedN.json``, and the pooled table is built from every
such file found (seeds measured in other sessions or on other machines included): per round
the better-setting share's mean and range over seeds, and last round - round 0 pooled by a
random-effects meta-analysis over the seeds' own intervals (``benchmarks/pooling.py``), with
the per-seed range and the count of seeds whose interval excludes 0. The full demo's
``last_minus_round0`` (without ``--hparams``) is pooled the same way.

Prints a table per size and writes ``microworld_seeds.json`` to ``--output`` (and ``--results``),
with the command, commit, CPU and date (``benchmarks/provenance.py``). Seeds already run
into ``--runs`` are reported, not run again (the demo resumes its runs). ``--jobs 2`` runs two
seeds at once, one per core: wall times then include the other job's memory traffic.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from seal.bench.analysis import comparison, round_comparisons
from seal.microworld.demo import (
    HPARAMS_RECIPES,
    REDUCED,
    better_settings,
    better_share,
    hparams_choices,
    seed_overrides,
)
from seal.rundir import read_jsonl

sys.path.insert(0, str(Path(__file__).parent))
from pooling import over_seeds  # noqa: E402
from provenance import write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _demo(seed: int, size: str, run_dir: Path, hparams: bool = False) -> float:
    """Run the demo in a fresh process (logs beside the run directory); returns wall seconds."""
    # one process per demo (its --jobs 1): this script's --jobs puts seeds side by side, one per core
    args = [sys.executable, "-m", "seal.cli", "microworld", "demo", *seed_overrides(seed), "--run-dir", str(run_dir), "--jobs", "1"]
    args += REDUCED if size == "reduced" else []
    args += ["--hparams"] if hparams else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.log", "a") as log:
        subprocess.run(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t0


def _interval(d: dict | None) -> list[float] | None:
    return None if d is None else [round(100 * d[k], 2) for k in ("value", "lo", "hi")]


def summarise(run_dir: Path) -> dict:
    """Training rewards per round and the bench's round comparisons of one finished demo."""
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    res = json.loads((run_dir / "bench" / "results.json").read_text())
    table = next(iter(res["protocols"]["single"]["tables"].values()))
    rounds = res["setup"]["rounds"]
    comps = round_comparisons(table, rounds)
    base = min(rounds, key=rounds.get)
    return {
        "mean_reward": [round(100 * m["mean_reward"], 2) for m in metrics],
        "accuracy": {c["source"]: _interval(c["accuracy"]) for c in table["cells"]},
        "last_minus_round0": _interval(comps[0][2]) if comps else None,
        "round0_minus_passage": _interval((comparison(table, base, "passage only") or {}).get("macro")),
    }


def world_summary(seed: int, hparams: bool = False) -> dict:
    """Copy skill and pretraining cost of the demo's cached world for ``seed``."""
    from seal.config import load_recipe

    recipe = HPARAMS_RECIPES[0] if hparams else "recipes/microworld_cpu.yaml"
    entry = load_recipe(REPO / recipe, seed_overrides(seed)).microworld.entry_dir()
    meta = json.loads((REPO / entry / "meta.json").read_text())
    c = meta["copy_skill"]
    return {
        "entry": str(entry),
        "value_precision": round(c["value_precision"], 3),
        "value_recall": round(c["value_recall"], 3),
        "openbook": round(c["openbook"], 3),
        "copy_steps": meta["copy_steps"],
        "steps": meta["steps"],
        "pretrain_seconds": meta["seconds"]["total"],
    }


def hparams_summary(run_dir: Path) -> dict:
    """The hyperparameter demo's choices: better-setting share per round on held-out people."""
    res = json.loads((run_dir / "bench" / "results.json").read_text())
    choices = hparams_choices(read_jsonl(run_dir / "bench" / "journal.jsonl"), res["setup"]["rounds"])
    first = choices[min(choices)]["settings"]
    better = better_settings(first)
    return {
        "better_settings": better,
        "better_share": {str(r): round(100 * better_share(c, better), 2) for r, c in choices.items()},
        "refused": {str(r): round(100 * c["refused"], 2) for r, c in choices.items()},
    }


def run_seed(seed: int, sizes: list[str], runs: Path, hparams: bool = False) -> dict:
    out: dict = {"seed": seed}
    for size in sizes:
        run_dir = runs / f"seed{seed}-{size}"
        wall = None
        if not (run_dir / "bench" / "report.md").is_file():
            wall = round(_demo(seed, size, run_dir, hparams), 1)
        out[size] = {**summarise(run_dir), "wall_seconds": wall}
        if hparams:
            out[size]["hparams"] = hparams_summary(run_dir)
    out["world"] = world_summary(seed, hparams)
    return out


def _iv(x: list[float]) -> dict:
    return {"value": x[0], "lo": x[1], "hi": x[2]}


def pooled_rounds(rows: list[dict], size: str) -> dict:
    """Last round - round 0 over seeds (points): the random-effects pooled estimate over the
    seeds' own paired intervals (``pooling.over_seeds``), the per-seed mean and range and how
    many seeds' own intervals exclude 0."""
    return over_seeds([_iv(r[size]["last_minus_round0"]) for r in rows])


def pooled_better_share(rows: list[dict]) -> dict:
    """The hyperparameter demo's better-setting share over seeds (points): per round the mean
    and range over seeds, and on how many seeds the last round's share is above round 0's.
    (A share per seed has no interval: the seeds' spread is what there is.)"""
    shares = [r["full"]["hparams"]["better_share"] for r in rows]
    rounds = sorted(shares[0], key=int)
    out = {
        f"round{k}": {"mean": round(statistics.mean(s[k] for s in shares), 2), "min": min(s[k] for s in shares), "max": max(s[k] for s in shares)}
        for k in rounds
    }
    rises = [s[rounds[-1]] - s[rounds[0]] for s in shares]
    out["last_minus_round0"] = {"mean": round(statistics.mean(rises), 2), "min": round(min(rises), 2), "max": round(max(rises), 2), "n_seeds_up": sum(x > 0 for x in rises), "n_seeds": len(rises)}
    return out


def seed_files(results_dir: Path, seeds: list[int] | None) -> list[dict]:
    """The rows of the committed per-seed files ``microworld_hparams_seedN.json`` in ``results_dir``
    (``seeds``: only these, each required)."""
    rows = {}
    for path in sorted(results_dir.glob("microworld_hparams_seed[0-9]*.json")):
        seed = int(path.stem.removeprefix("microworld_hparams_seed"))
        if seeds is None or seed in seeds:
            data = json.loads(path.read_text())
            rows[seed] = {**data["row"], "cpu": data["provenance"]["cpu"]}
    if seeds is not None and (missing := sorted(set(seeds) - set(rows))):
        raise SystemExit(f"no microworld_hparams_seedN.json in {results_dir} for seeds {missing}")
    return [rows[s] for s in sorted(rows)]


def _fmt(iv: list[float] | None) -> str:
    return "n/a" if iv is None else f"{iv[0]:+.1f} [{iv[1]:+.1f}, {iv[2]:+.1f}]"


def print_tables(rows: list[dict], sizes: list[str]) -> None:
    print("\nseed | copy precision | recall | open-book | copy steps / steps | pretrain s")
    for r in rows:
        w = r["world"]
        print(f"{r['seed']} | {w['value_precision']:.2f} | {w['value_recall']:.2f} | {w['openbook']:.2f} | {w['copy_steps']} / {w['steps']} | {w['pretrain_seconds']:.0f}")
    for size in sizes:
        print(f"\n{size}: seed | mean reward per round | gain (last - first) | bench last - round 0 | round 0 - passage | wall s")
        gains = []
        for r in rows:
            s = r[size]
            gains.append(s["mean_reward"][-1] - s["mean_reward"][0])
            rw = " / ".join(f"{x:.1f}" for x in s["mean_reward"])
            print(f"{r['seed']} | {rw} | {gains[-1]:+.1f} | {_fmt(s['last_minus_round0'])} | {_fmt(s['round0_minus_passage'])} | {s['wall_seconds']}")
        if len(gains) > 1:
            print(f"training-reward gain: mean {statistics.mean(gains):.1f}, SD {statistics.stdev(gains):.1f}, range [{min(gains):.1f}, {max(gains):.1f}]")


def hparams_markdown(payload: dict) -> str:
    """The README's hyperparameter table (points): per seed the better-setting share per round
    and last round - round 0 on held-out accuracy; over seeds the share's mean [min, max] and
    the pooled difference."""
    rows = payload["rows"]
    rounds = sorted(rows[0]["full"]["hparams"]["better_share"], key=int)
    head = " / ".join(rounds)
    lines = [f"| seed (CPU family/model) | better settings (by round 0's accuracy) | better-setting share, rounds {head} | round {rounds[-1]} − round 0 |", "|---|---|---|---|"]
    for r in rows:
        h, cpu = r["full"]["hparams"], r.get("cpu", {})
        share = " / ".join(f"{h['better_share'][k]:.1f}" for k in rounds)
        lines.append(f"| {r['seed']} ({cpu.get('family')}/{cpu.get('model')}) | {', '.join(h['better_settings'])} | {share} | {_fmt(r['full']['last_minus_round0']).replace('-', '−')} |")
    if "pooled" in payload:
        b, p = payload["pooled_better_share"], payload["pooled"]["full"]
        share = " / ".join(f"{b[f'round{k}']['mean']:.1f} [{b[f'round{k}']['min']:.1f}, {b[f'round{k}']['max']:.1f}]" for k in rounds)
        pooled = _fmt([p["pooled"][k] for k in ("value", "lo", "hi")]).replace("-", "−")
        lines.append(f"| mean over {p['n_seeds']} seeds [min, max] | | {share} | {pooled} (pooled); {p['n_seeds_above_zero']} of {p['n_seeds']} seeds above 0 |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default 0-4); with --pool-only, to pool (default: every file)")
    ap.add_argument("--sizes", nargs="+", choices=["reduced", "full"], default=["reduced", "full"])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--runs", type=Path, help="run directories (default runs/seeds, --hparams: runs/seeds-hparams)")
    ap.add_argument("--hparams", action="store_true", help="the hyperparameter world (seal microworld demo --hparams), full size")
    ap.add_argument("--results-dir", type=Path, help="--hparams: write each seed's microworld_hparams_seedN.json here as it finishes, and pool every seed's file found there (e.g. docs/results)")
    ap.add_argument("--pool-only", action="store_true", help="--hparams: run nothing, pool the files in --results-dir (--seeds: only these)")
    ap.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--results", type=Path, help="also write the pooled JSON here, e.g. docs/results/microworld_seeds.json (the README's tables)")
    a = ap.parse_args()
    if a.pool_only and not (a.hparams and a.results_dir):
        ap.error("--pool-only pools the per-seed files of --hparams --results-dir")
    sizes = ["full"] if a.hparams else a.sizes
    runs = a.runs or REPO / "runs" / ("seeds-hparams" if a.hparams else "seeds")

    def one(seed: int) -> dict:
        row = run_seed(seed, sizes, runs, a.hparams)
        if a.hparams and a.results_dir:  # a finished seed is kept even if a later one fails
            write_results(a.results_dir / f"microworld_hparams_seed{seed}.json", {"row": row})
        return row

    rows: list[dict] = []
    if not a.pool_only:
        with ThreadPoolExecutor(a.jobs) as pool:
            rows = list(pool.map(one, a.seeds or [0, 1, 2, 3, 4]))
    if a.hparams and a.results_dir:  # every seed's committed file, this session's and earlier ones
        rows = seed_files(a.results_dir, a.seeds if a.pool_only else None)
    print_tables(rows, sizes)
    payload: dict = {"seeds": [r["seed"] for r in rows], "rows": rows}
    if len(rows) > 1:
        payload["pooled"] = {size: pooled_rounds(rows, size) for size in sizes}
        for size in sizes:
            p = payload["pooled"][size]
            print(f"{size}: last round - round 0 pooled {_fmt(list(p['pooled'][k] for k in ('value', 'lo', 'hi')))}, "
                  f"per seed {p['per_seed_min']:+.1f} .. {p['per_seed_max']:+.1f}, {p['n_seeds_above_zero']}/{p['n_seeds']} seeds above 0")
    if a.hparams:
        for r in rows:
            h = r["full"]["hparams"]
            print(f"seed {r['seed']}: better-setting share per round {' / '.join(f'{v:.1f}' for v in h['better_share'].values())} ({', '.join(h['better_settings'])})")
        if len(rows) > 1:
            payload["pooled_better_share"] = pooled_better_share(rows)
            print(f"better-setting share over seeds: {payload['pooled_better_share']}")
    if a.hparams and rows:
        print(hparams_markdown(payload))
    name = "microworld_hparams_seeds.json" if a.hparams else "microworld_seeds.json"
    write_results(a.output / name, payload, published=a.results)


if __name__ == "__main__":
    main()
