"""Distributed ``seal train``: inner-loop evaluations per second with 2 processes vs 1.

Runs one real round of ``seal train`` (``recipes/squad_tiny_cpu.yaml`` with overrides: a
tiny Llama model, ``--passages`` real SQuAD passages x ``--k`` self-edits x
``--eval-times`` repetitions, no policy update) three ways, each in fresh processes:

* ``1 proc x 1 thread``:  ``python -m seal.cli train`` with ``OMP_NUM_THREADS=1``;
* ``2 procs x 1 thread``: ``accelerate launch --num_processes 2`` (gloo on CPU), 1 thread each;
* ``1 proc x T threads``: one process using all ``T`` = ``--threads`` cores (torch intra-op).

Throughput = evaluations of the round / wall seconds of the round's evaluation stage on the
main process (``round_0/metrics.json``: ``timing.evaluations_s``, which ends when every rank
has finished and the results are gathered). Model loading, process start and self-edit
sampling are not counted. The journals of the two 1-thread variants must be identical
(timings aside); the benchmark checks it. Reported: medians over ``--repeats``, the 2-process / 1-process
ratio against both 1-process variants, and the machine's load average before and after
(the measurement is only as quiet as the machine).

Usage::

    python benchmarks/distributed.py [--output DIR] [--repeats 2] [--passages 8] [--k 4] [--epochs 5]

Writes ``distributed.json`` to ``--output`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "squad_tiny_cpu.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_model(out: Path, data_root: str | None, hidden: int, layers: int) -> Path:
    from seal.data import load_passages
    from seal.models import build_tiny_model

    ps = load_passages("squad/train_100.json", root=data_root)
    texts = [t for p in ps for t in (p.title, p.context, *(q.question + " " + q.answer for q in p.questions))]
    return build_tiny_model(out, texts, vocab_size=1024, hidden_size=hidden, num_layers=layers, num_heads=4)


def overrides(args, model: Path) -> list[str]:
    values = {
        "model.name_or_path": str(model),
        "model.build_tiny": "null",
        "data.n_train_passages": args.passages,
        "self_edit.k": args.k,
        "self_edit.max_new_tokens": args.self_edit_tokens,
        "self_edit.batch_size": 1,
        "inner.eval_times": args.eval_times,
        "inner.epochs": args.epochs,
        "inner.batch_adapters": args.batch_adapters,
        "inner.max_length": 128,
        "qa.max_new_tokens": 16,
        "rl.rounds": 1,
        "rl.keep_regardless": "false",  # rewards of a random model are ~0: no policy update
    }
    if args.data_root:
        values["data.root"] = args.data_root
    return [f"{k}={v}" for k, v in values.items()]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_variant(name: str, procs: int, threads: int, ovr: list[str], run_dir: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    train = ["-m", "seal.cli", "train", str(RECIPE), *ovr, "--run-dir", str(run_dir)]
    if procs == 1:
        cmd = [sys.executable, *train]
    else:
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(REPO / "launch" / "accelerate_multi_gpu.yaml"),
            "--num_processes", str(procs), "--main_process_port", str(free_port()), *train,
        ]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{name} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    m = json.loads((run_dir / "round_0" / "metrics.json").read_text())
    n = m["n_evaluations"]
    secs = m["timing"]["evaluations_s"]
    return {
        "evaluations": n,
        "evaluations_s": secs,
        "evaluations_per_s": n / secs,
        "per_rank": m["timing"]["evaluations_computed_by_rank"],
        "round_s": m["seconds"],
        "process_wall_s": wall,
    }


def journal_without_timings(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "journal.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds", None)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=str(REPO / "benchmarks" / "results"), help="directory for distributed.json")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--passages", type=int, default=8)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--eval-times", type=int, default=1)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-adapters", type=int, default=1, help="evaluations per inner-loop chunk (the unit dealt to ranks)")
    p.add_argument("--self-edit-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="threads of the multi-threaded 1-process variant")
    p.add_argument("--model", default=None, help="model directory (default: a tiny Llama, hidden 128, 2 layers, built here)")
    p.add_argument("--data-root", default=None)
    args = p.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="seal-bench-dist-") as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else build_model(tmp / "model", args.data_root, 128, 2)
        ovr = overrides(args, model)
        variants = [("1 proc x 1 thread", 1, 1), ("2 procs x 1 thread", 2, 1), (f"1 proc x {args.threads} threads", 1, args.threads)]
        results: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
        journals = {}
        for rep in range(args.repeats):
            for name, procs, threads in variants:
                run_dir = tmp / f"run-{procs}-{threads}-{rep}"
                console.print(f"[bold]{name}[/] (repeat {rep + 1}/{args.repeats}) ...")
                results[name].append(run_variant(name, procs, threads, ovr, run_dir))
                journals[name] = journal_without_timings(run_dir)
        # Same per-process thread count: must be identical. Another thread count may differ in
        # the last float bits (reported only).
        identical = journals[variants[1][0]] == journals[variants[0][0]]
        identical_multi = journals[variants[2][0]] == journals[variants[0][0]]
    load_after = os.getloadavg()

    summary = {}
    for name, runs in results.items():
        summary[name] = {
            "evaluations_per_s": statistics.median(r["evaluations_per_s"] for r in runs),
            "evaluations_s": statistics.median(r["evaluations_s"] for r in runs),
            "evaluations": runs[0]["evaluations"],
            "per_rank": runs[0]["per_rank"],
            "runs": runs,
        }
    one, two, multi = (summary[v[0]]["evaluations_per_s"] for v in variants)
    report = {
        "benchmark": "distributed",
        "what": "inner-loop evaluations per second of one seal train round, 2 processes vs 1 (CPU, gloo)",
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": load_before,
        "load_average_after": load_after,
        "variants": summary,
        "ratio_2proc_over_1proc_1thread": two / one,
        f"ratio_2proc_over_1proc_{args.threads}threads": two / multi,
        "journals_identical": identical,
        "journals_identical_multithreaded": identical_multi,
    }

    table = Table(title="seal train: inner-loop evaluations per second (median)")
    for col in ("variant", "evaluations", "per rank", "stage s", "eval/s", "vs 1 proc x 1 thread"):
        table.add_column(col, justify="right" if col != "variant" else "left")
    for name, s in summary.items():
        table.add_row(name, str(s["evaluations"]), "/".join(map(str, s["per_rank"])), f"{s['evaluations_s']:.2f}", f"{s['evaluations_per_s']:.2f}", f"{s['evaluations_per_s'] / one:.2f}x")
    console.print(table)
    console.print(
        f"2 procs / 1 proc (1 thread): [bold]{two / one:.2f}x[/]; 2 procs / 1 proc ({args.threads} threads): "
        f"[bold]{two / multi:.2f}x[/]; journals identical: {identical}; load average {load_before[0]:.1f} -> {load_after[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributed.json").write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {out / 'distributed.json'}")
    if not identical:
        raise SystemExit("the journals differ between variants")
    return report


if __name__ == "__main__":
    main()
