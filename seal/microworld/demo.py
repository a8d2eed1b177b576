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

Both cores (``jobs=2``, the default on a machine with two or more): the bench does not wait for
the rounds. A second process (:func:`side_bench`) benches, while the rounds train, first the
sources that need no round (the base model, the passage, the base policy, the oracle) into
``<run_dir>/bench-side/own``, then each round's policy as soon as the training has written it
(``bench-side/round-<k>``, each step copying in the step before: ``seal.bench.run.bench``'s
``reuse``). It runs niced (:data:`SIDE_NICE`), on cycles the rounds leave. Whenever it waits
(for a round's policy, or with its steps done) it is a helper (``seal.helper``): it takes
chunks of the inner-loop evaluations the main process offers, the rounds' and step 3's. When
the rounds end, step 3 stops it if it is still in a step, copies its last step in the same way
and computes only what is left (on an idle second core: the last round's policy, its chunks
shared with the helper). Every evaluation's seed derives from its identity and the chunks are
the same whoever computes them, so the journals and results equal the one-process demo's
(``jobs=1``); only the timings differ. The policy updates stay on one process: ``seal train``
on two (``seal.distributed``) updates the policy data-parallel, which changes its numbers.

Pretraining (step 1) comes before anything the second process could do, so with ``jobs=2`` it
runs on ``jobs`` torch threads instead (:func:`pretrain_threads`), when ``/proc/stat`` says
that many cores are idle: the same weights bit for bit on the CPU measured (AMD EPYC family 25
model 17; ``tests/test_microworld_demo_jobs.py`` checks it wherever the suite runs), 1.4x
faster per step on an idle 2-core machine, but 5-7x slower when another process holds the second core
(the threads wait for each other), hence the check. ``microworld.num_threads`` set in the
recipe or the overrides wins.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from seal.bench.run import bench as run_bench
from seal.config import Recipe, RecipeError, diff_recipes, load_recipe
from seal.display import percent, print_table
from seal.helper import Helper, serve_while
from seal.hparams import journal_choices
from seal.prepare import ensure_model
from seal.rundir import hold_run_dir, read_jsonl
from seal.train import train as run_train

#: The reduced demo of CI (``tests/test_microworld_learns.py``) and of the seed spread
#: (``benchmarks/microworld_seeds.py``): the demo's world and policy, but 64 RL-training people,
#: 3 rounds (two ReST-EM updates, the second updated policy's samples scored) and a 48-person bench.
REDUCED = ["data.n_train_passages=64", "data.n_eval_passages=48", "rl.rounds=3"]

#: The hyperparameter world's recipes and run directory (``seal microworld demo --hparams``).
HPARAMS_RECIPES = ("recipes/microworld_hparams_cpu.yaml", "recipes/bench_microworld_hparams_cpu.yaml")
HPARAMS_RUN_DIR = "runs/microworld-hparams-demo"


def seed_overrides(seed: int, cache_dir: str | Path | None = None) -> list[str]:
    """Overrides of both demo recipes that move the whole demo to world and run seed ``seed``."""
    out = [f"seed={seed}", f"microworld.seed={seed}"]
    return out + ([f"microworld.cache_dir={cache_dir}"] if cache_dir is not None else [])


#: Where the second process of a two-job demo benches the training-independent sources.
SIDE_BENCH = "bench-side"

#: Under :data:`SIDE_BENCH`: the exchange directory of ``seal.helper`` (chunks of evaluations
#: the main process offers the second one), and the file saying that the second process has
#: finished its own steps and only helps.
EXCHANGE = "exchange"
HELPING = "helping"


#: Niceness of the second process: it takes a core the rounds leave idle, and next to little
#: from the rounds where other jobs keep both cores busy (measured: at normal priority it slowed
#: the rounds by 30 % on cores shared with two other jobs, more than the bench it hid).
SIDE_NICE = 10


def usable_cores() -> int:
    """CPUs this process may run on (a container's or ``taskset``'s share, not the host's)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def default_jobs() -> int:
    """Processes the demo uses by default: 2 where this process may run on two or more cores, else 1."""
    return min(2, usable_cores())


def idle_cores(interval: float = 0.5) -> float:
    """Cores idle right now: the idle share of ``/proc/stat``'s CPU time over ``interval``
    seconds times the machine's cores (Linux; ``/proc/stat`` counts them all); elsewhere the
    usable cores minus the 1-minute load average."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    try:
        idle0, total0 = sample()
        time.sleep(interval)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return max(0.0, usable_cores() - os.getloadavg()[0])
    return (os.cpu_count() or 1) * (idle1 - idle0) / max(1, total1 - total0)


def pretrain_threads(jobs: int, idle: float | None = None) -> int:
    """torch threads for pretraining the demo's world: ``jobs`` when ``idle`` (default
    :func:`idle_cores`) says that many cores are idle, else 1 (two threads where another
    process holds a core run 5-7x slower than one; measured on AMD EPYC)."""
    if jobs <= 1:
        return 1
    idle = idle_cores() if idle is None else idle
    return jobs if idle >= jobs - 0.3 else 1


def with_pretrain_threads(recipe: Recipe, threads: int) -> Recipe:
    """``recipe`` with ``microworld.num_threads = threads`` unless the recipe or its overrides set
    it (both mark the field as set; an unkeyed setting: the world's cache entry, and its
    weights, are the same)."""
    if threads == 1 or recipe.microworld is None or "num_threads" in recipe.microworld.model_fields_set:
        return recipe
    world = recipe.microworld.model_copy(update={"num_threads": threads})
    return recipe.model_copy(update={"microworld": world})


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
    for sections, recipe in ((train_sections, train), (bench_sections, bench)):
        sections["inner"].pop("learner")
        sections["self_edit.hparams"] = recipe.self_edit.hparams.model_dump(mode="json")
        check_hparams_world(recipe)
    differ = diff_recipes(train_sections, bench_sections)
    if differ:
        raise RecipeError(f"the train and bench recipes differ in {', '.join(differ)}; the bench must score with the training's settings")


def check_hparams_world(recipe: Recipe) -> None:
    """A world with hyperparameter demonstrations needs ``self_edit.hparams`` on, with the
    world's format and marker and a declared lr and epochs space holding the demonstrated
    settings (else the policy's blocks would be trained on as text, or refused).

    Raises:
        RecipeError: the recipe and its world disagree (what to set).
    """
    world, space = recipe.microworld, recipe.self_edit.hparams
    if world is None or not world.hparam_demos:
        return
    problems = []
    if not space.enabled:
        problems.append("self_edit.hparams.enabled is off")
    if space.format != world.hparam_format or space.marker != world.hparam_marker:
        problems.append(f"self_edit.hparams format/marker {space.format}/{space.marker!r} differ from the world's {world.hparam_format}/{world.hparam_marker!r}")
    if space.lr is None or not space.lr.min <= min(world.hparam_lrs) <= max(world.hparam_lrs) <= space.lr.max:
        problems.append(f"self_edit.hparams.lr must declare a range holding {world.hparam_lrs}")
    if space.epochs is None or not space.epochs.min <= min(world.hparam_epochs) <= max(world.hparam_epochs) <= space.epochs.max:
        problems.append(f"self_edit.hparams.epochs must declare a range holding {world.hparam_epochs}")
    if problems:
        raise RecipeError(f"recipe {recipe.name!r} is on a world with hyperparameter demonstrations (microworld.hparam_demos), but " + "; ".join(problems))


def setting_name(settings: dict) -> str:
    """``"lr=0.005 epochs=5"``: a resolved setting (``AdapterSettings.resolve``) as a table key."""
    return f"lr={settings['lr']:g} epochs={settings['epochs']}"


def hparams_choices(journal: list[dict], rounds: dict[str, int]) -> dict[int, dict]:
    """Per ReST-EM round, what the round's policy chose on the bench's held-out people.

    ``journal``: a bench's ``journal.jsonl`` rows (single protocol, first student);
    ``rounds``: source label -> round (the bench's round sources). Returns round ->
    ``{"n", "refused", "settings": {setting_name: {"share", "accuracy"}}}``: ``n`` self-edits
    (fractions are of ``n``), ``refused`` their share without a valid block (a failure:
    no block while ``required``, or one that does not parse or leaves the space), and per
    setting its share and the mean no-passage accuracy (in [0, 1]) of the self-edits that chose it.
    """
    rows: dict[str, list[dict]] = defaultdict(list)
    student = next((row["student"] for row in journal if row.get("kind") == "single"), None)
    for row in journal:
        if row.get("kind") == "single" and row["student"] == student and row["source_label"] in rounds:
            rows[row["source_label"]].append(row)
    out: dict[int, dict] = {}
    for label, part in rows.items():
        chosen = journal_choices(part)
        accuracy = {(row["passage"], row["self_edit"]): row.get("adapter_accuracy") or 0.0 for row in part}
        n = len(accuracy)
        by_setting: dict[str, list[float]] = defaultdict(list)
        for key, settings in chosen.items():
            if settings is not None:
                by_setting[setting_name(settings)].append(accuracy[key])
        n_valid = sum(len(v) for v in by_setting.values())
        out[rounds[label]] = {
            "n": n,
            "refused": (n - n_valid) / n if n else 0.0,
            "settings": {k: {"share": len(v) / n, "accuracy": sum(v) / len(v)} for k, v in sorted(by_setting.items())},
        }
    return dict(sorted(out.items()))


def hparams_choice_table(choices: dict[int, dict]) -> Table:
    """:func:`hparams_choices` as a table: a row per setting (best round-0 accuracy first), a
    column per round with the share of held-out self-edits that chose it; then the share of
    the *better* settings (those whose round-0 self-edits scored above round 0's mean: the base
    policy chooses independently of what it writes, so round 0 measures each setting) and the
    share refused."""
    table = Table(title="hyperparameter choices on held-out people, share of self-edits per round")
    rounds = list(choices)
    table.add_column("setting")
    table.add_column("round-0 accuracy")
    for r in rounds:
        table.add_column(f"round {r}")
    first = choices[rounds[0]]["settings"] if rounds else {}
    names = sorted({k for c in choices.values() for k in c["settings"]}, key=lambda k: -first.get(k, {}).get("accuracy", -1))
    for name in names:
        acc = first.get(name, {}).get("accuracy")
        table.add_row(name, percent(acc), *(percent(choices[r]["settings"].get(name, {}).get("share", 0.0)) for r in rounds))
    better = better_settings(first)
    table.add_row("better settings", ", ".join(better) or "-", *(percent(better_share(choices[r], better)) for r in rounds))
    table.add_row("no valid block", "", *(percent(choices[r]["refused"]) for r in rounds))
    return table


def better_settings(round0: dict[str, dict]) -> list[str]:
    """Settings whose round-0 self-edits' mean accuracy is above round 0's mean over all its valid ones."""
    total = sum(v["share"] for v in round0.values())
    if not total:
        return []
    mean = sum(v["share"] * v["accuracy"] for v in round0.values()) / total
    return [k for k, v in round0.items() if v["accuracy"] > mean]


def better_share(choice: dict, better: list[str]) -> float:
    """Share of a round's self-edits (all, refused included) that chose one of ``better``."""
    return sum(v["share"] for k, v in choice["settings"].items() if k in better)


def copy_skill_summary(world_dir: str | Path) -> str:
    """One line on the cached policy's copy skill, from ``<world_dir>/meta.json``: what the
    copy gate measured when pretraining ended (on held-out people) and how long it took; in a
    hyperparameter world also the share of valid blocks and the settings chosen most.

    Raises ``FileNotFoundError`` if the world has no ``meta.json``.
    """
    meta = json.loads((Path(world_dir) / "meta.json").read_text())
    skill, settings = meta["copy_skill"], meta["settings"]
    blocks = ""
    if skill.get("hparams"):  # a world with hyperparameter demonstrations
        hp = skill["hparams"]
        top = ", ".join(f"{k} {100 * v:.0f} %" for k, v in sorted(hp["settings"].items(), key=lambda t: -t[1])[:3])
        blocks = f"; hyperparameter blocks: {100 * (1 - hp['no_block'] - hp['refused']):.0f} % valid over {len(hp['settings'])} settings (most chosen: {top or '-'})"
    return (
        f"base policy's copy skill on {settings['n_copy_eval']} held-out people (sampled self-edits): "
        f"{100 * skill['value_precision']:.0f} % of attribute values copied right (gate: {100 * settings['min_copy_precision']:.0f} %), "
        f"{100 * skill['value_recall']:.0f} % of a passage's values stated, open-book accuracy {100 * skill['openbook']:.0f} %; "
        f"copy curriculum {meta['copy_steps']} of {meta['steps']} pretraining steps, {meta['seconds']['total']:.0f} s{blocks}"
    )


def diagnostics_table(metrics: list[dict]) -> Table:
    """What each round's self-edits taught (``metrics.jsonl`` rows, ``seal.diagnostics``): the
    mean reward, distinct-2, the similarity of a passage's samples, the style shares (all
    samples, and those ReST-EM kept), the coverage of the passage's facts and its correlation
    with the reward, and any collapse warning. "n/a" for a round recorded without diagnostics."""
    table = Table(
        title="what the self-edits teach, per round",
        caption="sim.: similarity within a passage; r(cov, rew): correlation of coverage and reward",
    )
    # Short headers: the table stays readable in an 80-column batch log (seal.display.print_table).
    for column in ("round", "reward", "distinct-2", "sim.", "styles", "kept styles", "coverage", "r(cov, rew)", "collapse"):
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
    jobs: int = 1,
) -> Path:
    """Run the demo into ``run_dir``; returns the bench directory (``<run_dir>/bench``).

    ``overrides`` (dotted ``key=value``) apply to both recipes, so ``rl.rounds=3`` or
    ``microworld.seed=1`` change the whole demo consistently. A finished bench is kept and
    reported again; one without ``report.md`` (interrupted) resumes from its journal.
    ``jobs``: 1 runs everything in this process; 2 or more also benches the training-independent
    sources in a second process while the rounds train, which takes chunks of the rounds' and
    the last bench's evaluations whenever it waits (see the module docstring; same results).

    Raises:
        RecipeError: bad recipes or overrides, or the two recipes name different worlds.
        RunDirError, RunDirBusyError: ``run_dir`` is not seal's, or another process holds it.
    """
    console = console or Console()
    overrides = list(overrides or [])
    run_dir = Path(run_dir)
    train_config = load_recipe(train_recipe, overrides)
    bench_config = load_recipe(bench_recipe, overrides + [f"bench.train_run={run_dir}"])
    check_same_setting(train_config, bench_config)

    with hold_run_dir(run_dir):  # the demo's directory, claimed and locked for all three steps
        console.rule("1/3 the microworld")
        prepared = train_config
        if not (Path(train_config.microworld.entry_dir()) / "meta.json").is_file():
            prepared = with_pretrain_threads(train_config, pretrain_threads(jobs))
            console.print(f"pretraining on {prepared.microworld.num_threads or 'torch default'} torch thread(s)")
        ensure_model(prepared, console.print)
        console.print(f"world and base policy: {train_config.microworld.entry_dir()}")
        console.print(copy_skill_summary(train_config.microworld.entry_dir()))

        console.rule(f"2/3 ReST-EM: {train_config.rl.rounds} rounds")
        out, side_dir, side, helper = run_dir / "bench", run_dir / SIDE_BENCH, None, None
        if jobs > 1 and not (out / "config.yaml").is_file():
            side = start_side_bench(bench_recipe, overrides, run_dir, train_config.rl.rounds)
            helper = Helper(side_dir / EXCHANGE, alive=lambda: side.poll() is None)
            console.print(f"benching in a second process while the rounds train, and taking chunks of their evaluations (pid {side.pid}, log {side_dir / 'bench.log'})")
        try:
            resume = (run_dir / "run.json").is_file()
            run_train(train_config, run_dir, resume=resume, console=console, helper=helper)
            print_table(console, diagnostics_table(read_jsonl(run_dir / "metrics.jsonl")))

            console.rule("3/3 held-out no-passage QA, every round's policy")
            if side is not None and side.poll() is None and not (side_dir / HELPING).is_file():
                # it runs niced, on spare cycles: on busy cores it is behind, and what it journaled
                # is reused while this process, at full priority, computes the rest
                side.terminate()
                side.wait()
                helper = None
                console.print("the second process had not finished: stopped; its journaled evaluations are reused")
            elif side is not None and side.poll() is None:
                console.print("the second process takes chunks of the last policy's evaluations")
            elif side is not None and side.returncode != 0:
                console.print(f"[yellow]the second process's bench failed (exit {side.returncode}, see {side_dir / 'bench.log'}); the rest is computed here")
            reuse = last_side_step(side_dir, train_config.rl.rounds)  # also one of an earlier launch
            if (out / "report.md").is_file():
                console.print(f"bench already finished: {out / 'report.md'}")
            else:
                # an interrupted bench continues from its journal (seal bench --resume)
                run_bench(bench_config, out, console=console, resume=(out / "config.yaml").is_file(), reuse=reuse, helper=helper)
                console.print(f"plot of accuracy per round: {out / 'plots' / 'rounds.png'}")
        finally:
            if side is not None and side.poll() is None:  # this process stopped early: so does its helper
                side.terminate()
                side.wait()
        if bench_config.self_edit.hparams.enabled and (out / "results.json").is_file():
            rounds = json.loads((out / "results.json").read_text())["setup"]["rounds"]
            print_table(console, hparams_choice_table(hparams_choices(read_jsonl(out / "journal.jsonl"), rounds)))
    return out


def start_side_bench(bench_recipe: str | Path, overrides: list[str], run_dir: Path, rounds: int) -> subprocess.Popen:
    """Start :func:`side_bench` in a second process (``python -m seal.microworld.demo``), its
    output in ``<run_dir>/bench-side/bench.log`` (the exchange directory and ``helping``
    marker of an earlier launch removed first)."""
    side_dir = run_dir / SIDE_BENCH
    side_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(side_dir / EXCHANGE, ignore_errors=True)
    (side_dir / HELPING).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "seal.microworld.demo", str(bench_recipe), str(run_dir), str(rounds), *overrides]
    with open(side_dir / "bench.log", "a", encoding="utf-8") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def side_steps(side_dir: Path, rounds: int) -> list[Path]:
    """The side bench's step directories in order: ``own`` (the recipe's sources), then
    ``round-<k>`` for the policies of rounds 1 .. ``rounds - 1`` (the last one is step 3's)."""
    return [side_dir / "own"] + [side_dir / f"round-{k}" for k in range(1, rounds)]


def last_side_step(side_dir: Path, rounds: int) -> Path | None:
    """The side bench step holding the most journaled records (each step starts from a copy of
    the one before; a step stopped before that copy holds none), or None if none started."""
    started = [step for step in side_steps(side_dir, rounds) if (step / "config.yaml").is_file()]
    size = {step: (step / "journal.jsonl").stat().st_size if (step / "journal.jsonl").is_file() else 0 for step in started}
    return max(reversed(started), key=size.get) if started else None


def side_bench(bench_recipe: str | Path, run_dir: str | Path, rounds: int, overrides: list[str]) -> None:
    """The second process of a two-job demo: bench what needs no finished training, and help.

    Step ``own``: the bench recipe's own sources (no ``bench.train_run``). Step ``round-<k>``
    (k = 1 .. ``rounds - 1``): once the training has finished round ``k - 1`` (its row in
    ``metrics.jsonl``), the bench with ``bench.train_run = run_dir`` of the rounds finished so
    far, reusing the step before. An interrupted step is resumed, a finished one kept.
    While a step waits for its round, this process takes chunks of the round's evaluations
    (``seal.helper.serve``). Once the steps are done (or the training has finished every
    round: step 3 then benches the rest), it writes ``bench-side/helping`` and returns; the
    second process then takes chunks of whatever the main process offers (the rounds'
    evaluations, then step 3's) until the main process stops it or exits.
    """
    run_dir = Path(run_dir)
    side_dir = run_dir / SIDE_BENCH
    parent, models = os.getppid(), {}  # the learner loaded once for every offer

    def finished_rounds() -> int:
        return len(read_jsonl(run_dir / "metrics.jsonl"))

    prev = None
    for k, step in enumerate(side_steps(side_dir, rounds)):
        if k > 0:
            # the round's policy is not written yet: help the round's evaluations meanwhile
            serve_while(side_dir / EXCHANGE, lambda k=k: finished_rounds() < k and os.getppid() == parent, models)
            if os.getppid() != parent:
                return  # the main process is gone
            if finished_rounds() >= rounds:
                break  # the training is over: step 3 benches the rest, this process helps
        extra = [f"bench.train_run={run_dir}"] if k > 0 else []
        recipe = load_recipe(bench_recipe, overrides + extra)
        if not (step / "report.md").is_file():
            resume = (step / "config.yaml").is_file()
            run_bench(recipe, step, resume=resume, reuse=None if resume else prev)
        prev = step
    (side_dir / HELPING).touch()


if __name__ == "__main__":  # the second process of start_side_bench
    import torch

    from seal.preflight import check_recipe

    _recipe, _run_dir, _rounds, *_overrides = sys.argv[1:]
    _loaded = load_recipe(_recipe, _overrides)
    check_recipe(_loaded)
    if _loaded.model.num_threads:  # as seal.cli does: a thread of its own, not all cores
        torch.set_num_threads(_loaded.model.num_threads)
    os.nice(SIDE_NICE)  # spare cycles only: the rounds are the critical path
    _parent = os.getppid()
    side_bench(_recipe, _run_dir, int(_rounds), _overrides)
    serve_while(Path(_run_dir) / SIDE_BENCH / EXCHANGE, lambda: os.getppid() == _parent)  # help until stopped
