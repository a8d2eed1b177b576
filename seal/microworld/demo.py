"""``seal microworld demo``: pretrain (or reuse) the world, run ReST-EM, benchmark every round.

The README's first demo, as a plain recipe of three steps that each exist on their own:

1. ``seal.prepare.ensure_model``: the world of the train recipe's ``microworld`` section is
   pretrained once (cached under ``.cache/microworld/<settings key>``) and reused after;
2. ``seal.train.train``: ``rl.rounds`` ReST-EM rounds into ``<run_dir>`` (resumed when the
   directory already holds a run, so an interrupted demo continues where it stopped), then a
   table of what each round's self-edits teach (:func:`diagnostics_table`: diversity, style
   shares, coverage of the facts);
3. ``seal.bench.run.bench`` with ``bench.train_run = <run_dir>``: no-passage QA accuracy on the
   held-out people for the bench recipe's sources plus each round's policy, with paired
   bootstrap intervals, into ``<run_dir>/bench`` (``report.md``, ``plots/rounds.png``).

Equivalent commands: ``seal train recipes/microworld_cpu.yaml --run-dir D`` then
``seal bench recipes/bench_microworld_cpu.yaml bench.train_run=D --out D/bench``.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from seal.bench.run import bench as run_bench
from seal.config import Recipe, RecipeError, diff_recipes, load_recipe
from seal.display import percent
from seal.prepare import ensure_model
from seal.rundir import read_jsonl
from seal.train import train as run_train

#: The reduced demo of CI (``tests/test_microworld_learns.py``) and of the seed spread
#: (``benchmarks/microworld_seeds.py``): the demo's world and policy, but 64 RL-training people,
#: 3 rounds (two ReST-EM updates, the second updated policy's samples scored) and a 48-person bench.
REDUCED = ["data.n_train_passages=64", "data.n_eval_passages=48", "rl.rounds=3"]


def seed_overrides(seed: int, cache_dir: str | Path | None = None) -> list[str]:
    """Overrides of both demo recipes that move the whole demo to world and run seed ``seed``."""
    out = [f"seed={seed}", f"microworld.seed={seed}"]
    return out + ([f"microworld.cache_dir={cache_dir}"] if cache_dir is not None else [])


#: Sections that must agree, so that the bench measures what the training rewarded.
SHARED = ("model", "inner", "qa")


def check_same_setting(train: Recipe, bench: Recipe) -> None:
    """The two recipes must name the same world, model, inner loop and QA.

    ``inner.learner`` (a `seal train` setting) is not compared.

    Raises:
        RecipeError: a recipe has no ``microworld`` section, or the recipes differ (keys listed).
    """
    for what, recipe in (("train", train), ("bench", bench)):
        if recipe.microworld is None:
            raise RecipeError(f"the {what} recipe has no 'microworld' section")
    train_world, bench_world = train.microworld.entry_dir(), bench.microworld.entry_dir()
    if train_world != bench_world:
        raise RecipeError(
            f"the train and bench recipes name different microworlds ({train_world} vs {bench_world}); give them the same 'microworld' section"
        )
    train_sections = {k: getattr(train, k).model_dump(mode="json") for k in SHARED}
    bench_sections = {k: getattr(bench, k).model_dump(mode="json") for k in SHARED}
    for sections in (train_sections, bench_sections):
        sections["inner"].pop("learner")
    differ = diff_recipes(train_sections, bench_sections)
    if differ:
        raise RecipeError(f"the train and bench recipes differ in {', '.join(differ)}; the bench must score with the training's settings")


def copy_skill_summary(world_dir: str | Path) -> str:
    """One line on the cached policy's copy skill, from ``<world_dir>/meta.json``: what the
    copy gate measured when pretraining ended (on held-out people) and how long it took.

    Raises ``FileNotFoundError`` if the world has no ``meta.json``.
    """
    meta = json.loads((Path(world_dir) / "meta.json").read_text())
    skill, settings = meta["copy_skill"], meta["settings"]
    return (
        f"base policy's copy skill on {settings['n_copy_eval']} held-out people (sampled self-edits): "
        f"{100 * skill['value_precision']:.0f} % of attribute values copied right (gate: {100 * settings['min_copy_precision']:.0f} %), "
        f"{100 * skill['value_recall']:.0f} % of a passage's values stated, open-book accuracy {100 * skill['openbook']:.0f} %; "
        f"copy curriculum {meta['copy_steps']} of {meta['steps']} pretraining steps, {meta['seconds']['total']:.0f} s"
    )


def diagnostics_table(metrics: list[dict]) -> Table:
    """What each round's self-edits taught (``metrics.jsonl`` rows, ``seal.diagnostics``): the
    mean reward, distinct-2, the similarity of a passage's samples, the style shares (all
    samples, and those ReST-EM kept), the coverage of the passage's facts and its correlation
    with the reward, and any collapse warning. "n/a" for a round recorded without diagnostics."""
    table = Table(title="what the self-edits teach, per round")
    for column in ("round", "mean reward", "distinct-2", "similarity within", "styles", "styles kept", "coverage", "r(coverage, reward)", "collapse warning"):
        table.add_column(column)

    def shares(block: dict | None) -> str:
        top = sorted(((v, k) for k, v in (block or {}).items() if v > 0), reverse=True)[:3]
        return ", ".join(f"{k} {100 * v:.0f} %" for v, k in top) or "n/a"

    def num(x: float | None, fmt: str = ".2f") -> str:
        return "n/a" if x is None else format(x, fmt)

    for m in metrics:
        d = m.get("diagnostics") or {}
        table.add_row(
            str(m["round"]), percent(m.get("mean_reward"), points=True), num(d.get("distinct_2")), num(d.get("similarity_within_passage")),
            shares(d.get("format_shares")), shares(d.get("kept_format_shares")), percent(d.get("coverage")),
            num(d.get("coverage_reward_pearson"), "+.2f"), d.get("collapse_warning") or "-",
        )  # fmt: skip
    return table


def run_demo(
    train_recipe: str | Path,
    bench_recipe: str | Path,
    run_dir: str | Path,
    overrides: list[str] | None = None,
    console: Console | None = None,
) -> Path:
    """Run the demo into ``run_dir``; returns the bench directory (``<run_dir>/bench``).

    ``overrides`` (dotted ``key=value``) apply to both recipes, so ``rl.rounds=3`` or
    ``microworld.seed=1`` change the whole demo consistently. A finished bench is kept and
    reported again; one without ``report.md`` (interrupted) resumes from its journal.

    Raises:
        RecipeError: bad recipes or overrides, or the two recipes name different worlds.
    """
    console = console or Console()
    overrides = list(overrides or [])
    run_dir = Path(run_dir)
    train_config = load_recipe(train_recipe, overrides)
    bench_config = load_recipe(bench_recipe, overrides + [f"bench.train_run={run_dir}"])
    check_same_setting(train_config, bench_config)

    console.rule("1/3 the microworld")
    ensure_model(train_config, console.print)
    console.print(f"world and base policy: {train_config.microworld.entry_dir()}")
    console.print(copy_skill_summary(train_config.microworld.entry_dir()))

    console.rule(f"2/3 ReST-EM: {train_config.rl.rounds} rounds")
    resume = (run_dir / "run.json").is_file()
    run_train(train_config, run_dir, resume=resume, console=console)
    console.print(diagnostics_table(read_jsonl(run_dir / "metrics.jsonl")))

    console.rule("3/3 held-out no-passage QA, every round's policy")
    out = run_dir / "bench"
    if (out / "report.md").is_file():
        console.print(f"bench already finished: {out / 'report.md'}")
        return out
    # an interrupted bench continues from its journal (seal bench --resume)
    run_bench(bench_config, out, console=console, resume=(out / "config.yaml").is_file())
    console.print(f"plot of accuracy per round: {out / 'plots' / 'rounds.png'}")
    return out
