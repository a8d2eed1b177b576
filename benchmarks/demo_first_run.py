"""The README's first command, timed as a new user runs it: a fresh clone, the set-up, then
``seal microworld demo`` the first time (pretraining included), per commit.

    python benchmarks/demo_first_run.py                        # the helper's parent commit vs HEAD
    python benchmarks/demo_first_run.py --commits e8eb873 HEAD --repeats 2 \\
        --results docs/results/microworld_demo_first_run.json

Each run clones this repository into ``--work`` (one folder per run), checks out the commit,
runs the README's set-up (its first bash block, up to ``seal microworld demo``) and then the
demo, and reads the phases back from the run: pretraining (the world's ``meta.json``), each
round (``metrics.jsonl``: its seconds, its evaluations' seconds and how many the helper process
computed), the last bench (``results.json``). Runs alternate between the commits (A B A B ...),
so that a machine whose speed drifts (a shared host) does not favour one. The demo's table is
checked against ``docs/results/microworld_demo_seed0.json`` (same accuracies and intervals).
Measure on an idle machine: the script prints the load average and the idle cores at each start.
Prints a table and writes JSON (``--out``; ``--results``: also a copy for ``docs/results/``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from provenance import REPO, write_results

from seal.microworld.demo import idle_cores

#: The README's set-up ends where the demo starts in its first command.
DEMO = "seal microworld demo"


def readme_setup() -> str:
    """The set-up part of the README's first bash block (everything before ``&& seal microworld demo``)."""
    block = re.search(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text(), re.S).group(1).strip()
    if not block.endswith(f"&& {DEMO}"):
        raise SystemExit(f"README.md's first command does not end with '&& {DEMO}': {block}")
    return block[: -len(f"&& {DEMO}")].strip()


def timed(cmd: str, cwd: Path, log: Path) -> dict:
    """Run ``cmd`` in bash in ``cwd``, output to ``log``; wall, user and system seconds (children included)."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "-c", cmd], cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd!r} failed in {cwd} (exit {os.waitstatus_to_exitcode(status)}); see {log}")
    return {"wall_s": round(wall, 1), "user_s": round(usage.ru_utime, 1), "sys_s": round(usage.ru_stime, 1)}


def phases(clone: Path) -> dict:
    """Pretraining, round and bench seconds read back from the demo's run and cache."""
    (meta,) = clone.glob(".cache/microworld/*/meta.json")
    run = clone / "runs" / "microworld-demo"
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "pretraining_s": json.loads(meta.read_text())["seconds"]["total"],
        "rounds": [
            {
                "seconds": round(m["seconds"], 1),
                "evaluations_s": round(m["timing"]["evaluations_s"], 1),
                "evaluations": m.get("n_evaluations"),
                "computed_by_helper": m["timing"].get("evaluations_computed_by_helper"),
            }
            for m in rounds
        ],
        "last_bench_s": json.loads((run / "bench" / "results.json").read_text())["setup"]["seconds"],
    }


def table(clone: Path) -> list[tuple[float, float, float]]:
    """The demo's accuracies and intervals (points, one decimal), sorted."""
    results = json.loads((clone / "runs" / "microworld-demo" / "bench" / "results.json").read_text())
    (cells,) = [t["cells"] for t in results["protocols"]["single"]["tables"].values()]
    return sorted(tuple(round(100 * c["accuracy"][k], 1) for k in ("value", "lo", "hi")) for c in cells)


def published_table() -> list[tuple[float, float, float]]:
    rows = json.loads((REPO / "docs" / "results" / "microworld_demo_seed0.json").read_text())["rows"]
    return sorted((r["accuracy"], *r["interval"]) for r in rows)


def run_once(commit: str, work: Path, setup: str) -> dict:
    """One fresh clone at ``commit``: the set-up, then the demo; what was measured."""
    sha = subprocess.run(["git", "rev-parse", "--short", commit], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    clone = work / f"{sha}-{time.strftime('%H%M%S')}"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", sha], cwd=clone, check=True)
    start = {"load_average": [round(x, 2) for x in os.getloadavg()], "idle_cores": round(idle_cores(1.0), 2)}
    print(f"{sha}: set-up in {clone} (load {start['load_average']}, idle cores {start['idle_cores']})", flush=True)
    install = timed(setup, clone, clone / "setup.log")
    demo = timed(f". .venv/bin/activate && {DEMO}", clone, clone / "demo.log")
    out = {"commit": sha, "clone": str(clone), "start": start, "install": install, "demo": demo, **phases(clone)}
    out["same_table"] = table(clone) == published_table()
    out["end_load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(f"{sha}: install {install['wall_s']} s, demo {demo['wall_s']} s, same table: {out['same_table']}", flush=True)
    return out


def print_table(runs: list[dict]) -> None:
    print(f"{'commit':<9} {'install s':>9} {'demo s':>7} {'min':>5} {'pretrain s':>10} {'rounds s':>18} {'helper evals':>13} {'last bench s':>12} {'same table':>10}")
    for r in runs:
        rounds = " + ".join(f"{x['seconds']:.0f}" for x in r["rounds"])
        helped = "/".join(str(x["computed_by_helper"]) for x in r["rounds"]) if r["rounds"][0]["computed_by_helper"] is not None else "-"
        print(
            f"{r['commit']:<9} {r['install']['wall_s']:>9.0f} {r['demo']['wall_s']:>7.0f} {r['demo']['wall_s'] / 60:>5.1f} {r['pretraining_s']:>10.0f} "
            f"{rounds:>18} {helped:>13} {r['last_bench_s']:>12.0f} {str(r['same_table']):>10}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", nargs="+", default=["e8eb873", "HEAD"], help="commits to time, alternated (default: before the helper process, and HEAD)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per commit")
    parser.add_argument("--work", type=Path, default=Path("/tmp/seal-demo-first-run"), help="where the clones go")
    parser.add_argument("--keep", action="store_true", help="keep the clones (else removed after each is measured)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "demo_first_run.json")
    parser.add_argument("--results", type=Path, default=None, help="also write the results here (docs/results/...)")
    args = parser.parse_args()

    setup, runs = readme_setup(), []
    args.work.mkdir(parents=True, exist_ok=True)
    for _ in range(args.repeats):
        for commit in args.commits:
            runs.append(run_once(commit, args.work, setup))
            if not args.keep:
                shutil.rmtree(runs[-1]["clone"], ignore_errors=True)
            write_results(args.out, {"what": "the README's first command on a fresh clone: install, then seal microworld demo the first time (seconds)", "runs": runs}, args.results)
    print_table(runs)
    print(f"written: {args.out}" + (f" and {args.results}" if args.results else ""))


if __name__ == "__main__":
    sys.exit(main())
