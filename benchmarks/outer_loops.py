"""Outer loops side by side: ReST-EM vs curated ReST-EM vs GRPO at equal inner-loop evaluations.

Every outer loop spends the same currency: *inner-loop evaluations* (one self-edit -> a fresh
LoRA adapter -> no-passage QA). This script puts the policies of finished ``seal train`` runs
on one held-out bench and on one axis, the cumulative evaluations their training consumed:

* ReST-EM (``--restem``) and curated ReST-EM (``--curated``, ``rl.curation: weighted | pareto``):
  each round's policy (``round_k/policy``, the policy *after* round k, labelled "after round
  k+1"), at the evaluations of rounds 0..k (``n_evaluations`` of the run's ``metrics.jsonl``,
  the journal's count when a round lacks it);
* GRPO / RLOO (``--grpo``): the TRL checkpoints ``grpo/checkpoint-N`` chosen with
  ``--grpo-checkpoints`` (default: all, plus the final ``grpo/policy``), their LoRA adapter
  merged into the run's starting policy (PEFT ``merge_and_unload``, as ``seal.grpo`` merges its
  final policy) into ``OUT/grpo_step_N/``; step N has consumed ``N x prompts_per_step x
  num_generations x inner.eval_times`` evaluations (the run's ``config.yaml``);
* the round-0 policy (the bench recipe's ``round: 0`` source), at 0 evaluations.

The bench is ``seal bench`` (``seal.bench.run.bench``) on a recipe written into OUT: the
``--bench-recipe`` with the overrides, whose sources are the round-0 policy and the policies
above (the recipe's ``none`` / ``passage`` / ``file:`` baselines are dropped unless
``--keep-baselines``). It runs into ``OUT/bench`` (resumed when it exists). Held-out accuracy
and the paired bootstrap differences are the bench's (protocol ``single`` when it runs, else
the first; the first student).

Per round / step the report also gives the training mean reward and the self-edit diagnostics
(distinct-2, within-passage similarity, coverage, style/format shares): from the run's metrics,
or computed with ``seal.diagnostics.round_diagnostics`` from ``round_k/self_edits.json`` for
ReST-EM runs recorded before diagnostics existed.

Usage::

    python benchmarks/outer_loops.py --bench-recipe recipes/bench_microworld_cpu.yaml \\
        --restem RUN_A [--curated RUN_B] [--grpo RUN_C] [--grpo-checkpoints 6 12 18] \\
        [--out DIR] [--keep-baselines] [overrides ...]

Overrides (``microworld.cache_dir=...``, ``seed=0``, ``bench.bootstrap_samples=2000``) apply
to the bench recipe. Outputs in DIR (default ``runs/outer_loops``): ``bench_recipe.yaml``,
``bench/`` (the full bench: ``results.json``, ``summary.csv``, ``comparisons.csv``,
``report.md``), ``grpo_step_N/`` (merged GRPO policies), ``outer_loops.json`` (every number
below), ``outer_loops.md`` (the tables, also printed) and ``outer_loops.png`` (left: held-out
accuracy +- CI vs inner-loop evaluations, one line per outer loop; right: training mean reward
per round / step vs evaluations).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402

from seal.bench.analysis import comparison  # noqa: E402
from seal.bench.sources import train_run_sources  # noqa: E402
from seal.config import Recipe, apply_overrides, load_recipe  # noqa: E402
from seal.diagnostics import round_diagnostics  # noqa: E402
from seal.rundir import (  # noqa: E402
    RunDir,
    atomic_dir,
    read_json,
    read_json_or_none,
    read_jsonl,
    resolve_policy,
    write_text_atomic,
)

sys.path.insert(0, str(Path(__file__).parent))
from provenance import write_results  # noqa: E402

# ----------------------------------------------------------------------------- ReST-EM runs


def round_evaluations(run: RunDir, row: dict) -> int:
    """Inner-loop evaluations of one ReST-EM round: its metrics' count, else the journal's."""
    if row.get("n_evaluations") is not None:
        return int(row["n_evaluations"])
    return sum(1 for j in read_jsonl(run.journal) if j.get("kind") == "evaluation" and j.get("round") == row["round"])


def run_passages(run: RunDir, r: int = 0):
    """Round ``r``'s training passages of a recorded run (its ``config.yaml``), for recomputed
    diagnostics (``data.passage_schedule: fresh`` gives each round its own)."""
    from seal.train import load_train_passages

    return load_train_passages(Recipe.model_validate(run.recorded_config()), r)


def recomputed_diagnostics(run: RunDir, r: int) -> dict | None:
    """``round_diagnostics`` of ``round_r/self_edits.json`` (no rewards, no selection); None without the file."""
    rows = read_json_or_none(run.round_dir(r) / "self_edits.json")
    if rows is None:
        return None
    passages = run_passages(run, r)
    from seal.tasks.registry import make_task

    domain = make_task(Recipe.model_validate(run.recorded_config())).diagnostics  # the task's format kinds and coverage
    return round_diagnostics([passages[row["passage"]] for row in rows], [row["completions"] for row in rows], domain=domain)


def restem_loop(name: str, run_dir: str) -> dict:
    """A ReST-EM run as an outer loop: one bench source per round policy, and the training curve."""
    run = RunDir(run_dir)
    specs, metrics = train_run_sources(run.path.resolve())
    by_round = {m["round"]: m for m in metrics}
    policies, training, spent = [], [], 0
    for spec in specs:
        r = spec.round - 1
        row = by_round[r]
        spent += round_evaluations(run, row)
        diagnostics = row.get("diagnostics") or recomputed_diagnostics(run, r)
        label = f"{name} after round {r + 1}"
        policies.append({"label": label, "source": spec.source, "author": spec.author, "evaluations": spent, "round": r + 1})
        training.append({"round": r, "evaluations": spent, "mean_reward": row.get("mean_reward"), "diagnostics": diagnostics})
    return {"name": name, "run": str(run.path), "algorithm": "restem", "policies": policies, "training": training}


# ----------------------------------------------------------------------------- GRPO runs


def grpo_evaluations_per_step(config: dict) -> int:
    g = config["rl"]["grpo"]
    return g["prompts_per_step"] * g["num_generations"] * config["inner"]["eval_times"]


def merge_checkpoint(run: RunDir, checkpoint: Path, target: Path) -> None:
    """The run's starting policy with ``checkpoint``'s LoRA adapter merged in, saved with its tokenizer
    (loaded on the CPU with the run's recorded model settings: ``seal.models.load_policy``)."""
    from peft import PeftModel

    from seal.config import ModelConfig
    from seal.models import load_policy

    config = ModelConfig.model_validate(run.recorded_config()["model"]).model_copy(update={"device": "cpu"})
    model, tokenizer = load_policy(config, resolve_policy(run, config.name_or_path))
    merged = PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload()
    with atomic_dir(target) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def grpo_policies(run: RunDir, steps: list[int] | None, out: Path) -> dict[int, Path]:
    """step -> merged policy dir: the chosen checkpoints (all by default), merged into
    ``out/grpo_step_N`` unless already there; the final ``grpo/policy`` as the last step."""
    found = {int(p.name.split("-")[-1]): p for p in (run.path / "grpo").glob("checkpoint-*") if (p / "adapter_config.json").exists()}
    final = read_json_or_none(run.path / "grpo" / "train.json")
    final_step = int(final["steps"]) if final and (run.path / "grpo" / "policy").exists() else None
    wanted = sorted(set(steps)) if steps else sorted(found)
    out_policies = {}
    for step in wanted:
        if step == final_step:
            continue
        if step not in found:
            raise SystemExit(f"--grpo-checkpoints: {run.path}/grpo has no checkpoint-{step} (found: {sorted(found)})")
        target = out / f"grpo_step_{step}"
        if not (target / "config.json").exists():
            print(f"merging {found[step]} -> {target}")
            merge_checkpoint(run, found[step], target)
        out_policies[step] = target
    if final_step is not None:
        out_policies[final_step] = run.path / "grpo" / "policy"
    return dict(sorted(out_policies.items()))


def grpo_loop(name: str, run_dir: str, steps: list[int] | None, out: Path) -> dict:
    """A GRPO / RLOO run as an outer loop: one bench source per chosen step, and the training curve."""
    run = RunDir(run_dir)
    config = run.recorded_config()
    per_step = grpo_evaluations_per_step(config)
    policies = [
        {"label": f"{name} after step {step}", "source": f"policy:{path.resolve()}", "author": config["model"]["name_or_path"], "evaluations": step * per_step, "step": step}
        for step, path in grpo_policies(run, steps, out).items()
    ]
    training = [
        {"step": row["step"], "evaluations": row["step"] * per_step, "mean_reward": row.get("mean_reward"), "diagnostics": row.get("diagnostics")}
        for row in read_jsonl(run.metrics)
    ]
    return {"name": name, "run": str(run.path), "algorithm": config["rl"]["algorithm"], "evaluations_per_step": per_step, "policies": policies, "training": training}


# ----------------------------------------------------------------------------- the bench


def round0_sources(sources: list, model: str, keep_baselines: bool) -> tuple[list[dict], str]:
    """The bench recipe's sources to keep and the round-0 label. The round-0 source is the one
    marked ``round: 0``, else a ``policy:`` of the recipe's model (added when there is none).
    Only it is kept, unless ``keep_baselines`` (then every source of the recipe)."""
    specs = [dict(s) if isinstance(s, dict) else {"source": s} for s in sources]
    round0 = next((s for s in specs if s.get("round") == 0), None) or next((s for s in specs if s["source"] == f"policy:{model}"), None)
    if round0 is None:
        round0 = {"source": f"policy:{model}"}
        specs.insert(0, round0)
    round0.update(label=round0.get("label") or "policy round 0 (base)", round=0)
    return (specs if keep_baselines else [round0]), round0["label"]


def write_bench_recipe(path: str, overrides: list[str], loops: list[dict], keep_baselines: bool, out: Path) -> tuple[Recipe, str]:
    """The bench recipe with the outer loops' policies as sources, written to ``out/bench_recipe.yaml``."""
    raw = apply_overrides(yaml.safe_load(Path(path).read_text()) or {}, overrides, path)
    raw.setdefault("name", Path(path).stem)
    bench = raw.setdefault("bench", {})
    sources, round0 = round0_sources(bench.get("sources") or [], str(raw["model"]["name_or_path"]), keep_baselines)
    for loop in loops:
        for p in loop["policies"]:
            spec = {"source": p["source"], "label": p["label"], "author": p["author"]}
            if loop["algorithm"] == "restem" and loop is loops[0]:
                spec["round"] = p["round"]  # the bench's own round comparison: the first ReST-EM run
            sources.append(spec)
    bench["sources"], bench["train_run"] = sources, None
    recipe_path = out / "bench_recipe.yaml"
    write_text_atomic(recipe_path, yaml.safe_dump(raw, sort_keys=False))
    return load_recipe(recipe_path), round0


def run_bench(recipe: Recipe, out: Path) -> dict:
    """``seal bench`` in-process into ``out`` (resumed when it holds a bench); its results.json."""
    from seal.bench.run import bench

    bench(recipe, out, resume=RunDir(out).exists())
    return read_json(out / "results.json")


def bench_table(results: dict) -> tuple[str, str, dict]:
    """(protocol, student, table) the report reads: protocol single when it ran, the first student."""
    protocols = results["protocols"]
    name = "single" if "single" in protocols else next(iter(protocols))
    student, table = next(iter(protocols[name]["tables"].items()))
    return name, student, table


# ----------------------------------------------------------------------------- report


def attach_accuracy(loops: list[dict], table: dict, round0: str) -> dict:
    """Each policy's held-out accuracy interval; returns the round-0 point (0 evaluations)."""
    cells = {c["source"]: c for c in table["cells"]}
    for loop in loops:
        for p in loop["policies"]:
            p["accuracy"] = cells[p["label"]]["accuracy"]
    return {"label": round0, "evaluations": 0, "accuracy": cells[round0]["accuracy"]}


def differences(loops: list[dict], table: dict, round0: str) -> list[dict]:
    """Paired differences (macro accuracy, a - b): each final policy vs round 0, and finals vs each other."""
    finals = [loop["policies"][-1]["label"] for loop in loops if loop["policies"]]
    pairs = [(f, round0) for f in finals] + list(itertools.combinations(finals, 2))
    out = []
    for a, b in pairs:
        c = comparison(table, a, b)
        out.append({"a": a, "b": b, "diff": c["macro"] if c else None, "verdict": c["verdict"] if c else None, "n_passages": c["n_passages"] if c else None})
    return out


def pts(iv: dict | None, signed: bool = False) -> str:
    if iv is None:
        return "n/a"
    f = "{:+.1f}" if signed else "{:.1f}"
    value, lo, hi = (round(100 * iv[k], 1) + 0.0 for k in ("value", "lo", "hi"))  # + 0.0: no "-0.0"
    return f"{f.format(value)} [{f.format(lo)}, {f.format(hi)}]"


def num(x, scale: float = 1.0, digits: int = 3) -> str:
    return "n/a" if x is None else f"{scale * x:.{digits}f}"


def shares(d: dict | None) -> str:
    if not d or not d.get("format_shares"):
        return "n/a"
    return ", ".join(f"{k} {round(100 * v)} %" for k, v in d["format_shares"].items() if v > 0) or "—"


def markdown(report: dict) -> str:
    lines = [f"# Outer loops at equal inner-loop evaluations ({report['protocol']} protocol, student `{report['student']}`)", ""]
    lines += ["Held-out accuracy (macro, points [95 % CI]) vs the inner-loop evaluations the policy's training consumed.", ""]
    lines += ["| outer loop | policy | inner-loop evaluations | held-out accuracy |", "|---|---|---:|---|"]
    r0 = report["round0"]
    lines.append(f"| (start) | {r0['label']} | 0 | {pts(r0['accuracy'])} |")
    for loop in report["loops"]:
        for p in loop["policies"]:
            lines.append(f"| {loop['name']} | {p['label']} | {p['evaluations']} | {pts(p['accuracy'])} |")
    lines += ["", "Paired differences, a − b (macro accuracy, points [95 % CI]; a tie when the interval contains 0):", ""]
    lines += ["| a | b | a − b | verdict |", "|---|---|---|---|"]
    for d in report["differences"]:
        lines.append(f"| {d['a']} | {d['b']} | {pts(d['diff'], signed=True)} | {d['verdict'] or 'n/a'} |")
    lines += ["", "Training per round / step: mean reward (points) and the self-edit diagnostics.", ""]
    lines += ["| outer loop | round / step | evaluations | mean reward | distinct-2 | within-passage sim. | coverage | format shares |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for loop in report["loops"]:
        for t in loop["training"]:
            d = t["diagnostics"] or {}
            where = f"round {t['round']}" if "round" in t else f"step {t['step']}"
            lines.append(
                f"| {loop['name']} | {where} | {t['evaluations']} | {num(t['mean_reward'], 100, 1)} | {num(d.get('distinct_2'))} | "
                f"{num(d.get('similarity_within_passage'))} | {num(d.get('coverage'))} | {shares(d)} |"
            )
    lines += ["", "![outer loops](outer_loops.png)", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    r0 = report["round0"]
    for loop, marker in zip(report["loops"], "os^vD", strict=False):  # distinct markers: tied lines overlap
        points = [r0] + loop["policies"]
        xs = [p["evaluations"] for p in points]
        ys = [100 * p["accuracy"]["value"] for p in points]
        err = [[100 * (p["accuracy"]["value"] - p["accuracy"]["lo"]) for p in points], [100 * (p["accuracy"]["hi"] - p["accuracy"]["value"]) for p in points]]
        left.errorbar(xs, ys, yerr=err, marker=marker, capsize=3, label=loop["name"])
        curve = [t for t in loop["training"] if t["mean_reward"] is not None]
        right.plot([t["evaluations"] for t in curve], [100 * t["mean_reward"] for t in curve], marker=marker, label=loop["name"])
    left.set(xlabel="inner-loop evaluations consumed by training", ylabel="held-out accuracy (points, 95 % CI)", title="Held-out accuracy")
    right.set(xlabel="inner-loop evaluations consumed by training", ylabel="training mean reward (points)", title="Training mean reward per round / step")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-recipe", required=True, help="bench recipe, e.g. recipes/bench_microworld_cpu.yaml")
    ap.add_argument("--restem", required=True, help="a seal train ReST-EM run directory")
    ap.add_argument("--curated", help="a ReST-EM run with rl.curation weighted / pareto")
    ap.add_argument("--grpo", help="a seal train rl.algorithm grpo (or rloo) run directory")
    ap.add_argument("--grpo-checkpoints", type=int, nargs="+", help="steps N of grpo/checkpoint-N to bench (default: all); the final policy is always the last")
    ap.add_argument("--out", default="runs/outer_loops", help="output directory")
    ap.add_argument("--keep-baselines", action="store_true", help="keep the bench recipe's none / passage / file: sources")
    ap.add_argument("--results", help="also write outer_loops.json here, e.g. docs/results/outer_loops_seed0.json (the README's table)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides of the bench recipe, e.g. microworld.seed=0")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loops = [restem_loop("ReST-EM", args.restem)]
    if args.curated:
        curation = (RunDir(args.curated).recorded_config().get("rl") or {}).get("curation", "gain")
        loops.append(restem_loop(f"curated ReST-EM ({curation})", args.curated))
    if args.grpo:
        loops.append(grpo_loop(RunDir(args.grpo).recorded_config()["rl"]["algorithm"].upper(), args.grpo, args.grpo_checkpoints, out))
    recipe, round0 = write_bench_recipe(args.bench_recipe, args.overrides, loops, args.keep_baselines, out)
    results = run_bench(recipe, out / "bench")
    protocol, student, table = bench_table(results)
    report = {"protocol": protocol, "student": student, "bench": str(out / "bench"), "round0": attach_accuracy(loops, table, round0), "loops": loops}
    report["differences"] = differences(loops, table, round0)
    report = write_results(out / "outer_loops.json", report, published=args.results)
    text = markdown(report)
    write_text_atomic(out / "outer_loops.md", text)
    plot(report, out / "outer_loops.png")
    print(text)
    print(f"outputs: {out / 'outer_loops.json'}, {out / 'outer_loops.md'}, {out / 'outer_loops.png'}")
    return report


if __name__ == "__main__":
    main()
