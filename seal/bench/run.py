"""``seal bench RECIPE --out DIR``: every source x student x protocol, then the report.

Reading order of :func:`bench`:

1. check everything that can be wrong with the input (protocol sizes, file: sources against
   the evaluation passages, policy checkpoints, templates) -- nothing is written before;
2. record the resolved recipe, versions and seeds (``config.yaml``, ``run.json``);
3. sample the self-edits of policy:/prompt: sources once (saved to ``self_edits/``);
4. per student: its baseline (no update), then every protocol x source; each adapter's
   record is appended to ``journal.jsonl`` as soon as it is graded;
5. statistics (:mod:`seal.bench.analysis`), plots, ``report.md``, CSV and JSON.

``resume=True`` (``seal bench RECIPE --out DIR --resume``) continues a bench that stopped
(killed, out of time): with a recipe that agrees with ``DIR/config.yaml`` in everything that
changes results, the sampled self-edits (``self_edits/``), baselines and adapters already in
``journal.jsonl`` are read back (a partially written last line is dropped) and only what is
missing is computed; see :mod:`seal.bench.protocols` for what each protocol reuses. Every
seed derives from an identity, so the results equal an uninterrupted run's.

Cost: per student, single = passages x self-edits x repetitions adapters per source,
multi = repetitions adapters on all passages' texts per source, continual = passages x
repetitions merged updates per source plus a growing QA pass after each.
"""

from __future__ import annotations

import datetime as _dt
import gc
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from seal.bench.analysis import Row, analyze
from seal.bench.config import StudentSpec
from seal.bench.plots import write_plots
from seal.bench.protocols import (
    PROTOCOL_RUNNERS,
    ProtocolContext,
    n_steps,
    protocol_recipe,
    protocol_size,
    source_recipe,
)
from seal.bench.report import ci, pct, round_lines, write_tables
from seal.bench.sources import (
    Source,
    check_sources,
    same_model,
    sample_source,
    seal_format,
    train_run_sources,
)
from seal.config import (
    RESULT_NEUTRAL_KEYS,
    Recipe,
    RecipeError,
    diff_recipes,
    recipe_to_dict,
    with_defaults,
)
from seal.display import library_output_to, print_table, progress_bar
from seal.evaluate import load_eval_passages
from seal.helper import Helper
from seal.hparams import journal_choices, round_summary
from seal.models import load_policy
from seal.preflight import check_recipe, check_targets, module_names
from seal.prepare import ensure_model
from seal.rundir import (
    RunDir,
    append_jsonl,
    hold_run_dir,
    read_json,
    read_jsonl,
    write_json_atomic,
    write_text_atomic,
)
from seal.scoring import baselines, make_judge
from seal.seeding import derive_seed, seed_everything
from seal.tasks.registry import make_task
from seal.vllm_backend import check_vllm

# A bench adds no keys of its own that a resume may change.
RESUMABLE_KEYS = RESULT_NEUTRAL_KEYS

# Fields of a baseline's journal record around :func:`seal.scoring.baselines`' own.
_BASELINE_KEY = ("kind", "student", "passage", "passage_id")


def check_resume(run: RunDir, config: dict) -> None:
    """Refuse to resume a directory without a bench, or with a recipe that changes results.

    Raises:
        RecipeError: no ``config.yaml`` in the directory, or the differing keys.
    """
    if not run.exists():
        raise RecipeError(f"cannot resume: {run.path} holds no bench results (no config.yaml)")
    diffs = [k for k in diff_recipes(with_defaults(run.recorded_config()), config) if k not in RESUMABLE_KEYS]
    if diffs:
        raise RecipeError(f"refusing to resume {run.path}: the recipe differs from the recorded one in: {', '.join(diffs)}")


def reopen_journal(run: RunDir) -> list[dict]:
    """The journal's records, after cutting off a partially written last line (a kill mid-append)."""
    path = run.journal
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return read_jsonl(path)


def check_reuse(other: RunDir, config: dict) -> None:
    """Refuse to reuse a directory without a bench, or one of a recipe that differs from
    ``config`` in result-changing keys other than ``bench.train_run`` (whose rows would then
    not be this bench's computations).

    Raises:
        RecipeError: no ``config.yaml`` there, or the differing keys.
    """
    if not other.exists():
        raise RecipeError(f"cannot reuse {other.path}: it holds no bench results (no config.yaml)")
    diffs = [k for k in diff_recipes(with_defaults(other.recorded_config()), config) if k not in RESUMABLE_KEYS and k != "bench.train_run"]
    if diffs:
        raise RecipeError(f"cannot reuse {other.path}: its recipe differs from this one in: {', '.join(diffs)}")


def _copy_bench(other: RunDir, run: RunDir) -> list[dict]:
    """Copy ``other``'s journal (whole lines) and sampled self-edits into the new bench ``run``
    (:func:`check_reuse` first); returns the journal's records."""
    data = other.journal.read_bytes() if other.journal.exists() else b""
    data = data[: data.rfind(b"\n") + 1]  # a partially written last line (a kill mid-append) is dropped
    write_text_atomic(run.journal, data.decode("utf-8"))
    for path in sorted((other.path / "self_edits").glob("*.json")):
        write_text_atomic(run.path / "self_edits" / path.name, path.read_text(encoding="utf-8"))
    return read_jsonl(run.journal)


def _note_resume(run: RunDir) -> None:
    """Add this launch's time to ``run.json``'s ``resumed`` list."""
    path = run.path / "run.json"
    info = read_json(path) if path.exists() else {}
    info.setdefault("resumed", []).append(_dt.datetime.now().isoformat(timespec="seconds"))
    write_json_atomic(path, info)


def _ensure_student(recipe: Recipe, student: StudentSpec) -> None:
    """Build a student's tiny model if it asks for one and it does not exist yet (as for ``model``)."""
    if student.build_tiny is None or Path(student.name_or_path).exists():
        return
    model = recipe.model.model_copy(update={"name_or_path": student.name_or_path, "build_tiny": student.build_tiny})
    ensure_model(recipe.model_copy(update={"model": model}))


def _describe(recipe: Recipe, proto) -> str:
    inner = recipe.inner
    update = "full fine-tuning" if getattr(proto, "update", "lora") == "full" else f"LoRA r={inner.lora.rank} alpha={inner.lora.alpha:g} on {','.join(inner.lora.target_modules)}"
    return (
        f"{update}, {inner.epochs} epochs, lr {inner.lr:g}, "
        f"batch {inner.batch_size}" + (f" x {inner.grad_accum_steps} accumulated" if inner.grad_accum_steps > 1 else "") + f", {proto.n_self_edits} self-edit(s) per passage, {inner.eval_times} repetition(s), "
        f"split_newlines={recipe.self_edit.split_newlines}"
    )


def bench(
    recipe: Recipe, out_dir: str | Path, console: Console | None = None, resume: bool = False, reuse: str | Path | None = None,
    helper: Helper | None = None,
) -> Path:
    """:func:`run_bench_in` with ``out_dir`` claimed and locked for the whole bench
    (``seal.rundir.hold_run_dir``: a new or empty directory, or one seal created; with
    ``resume``, it must exist).

    Raises:
        RunDirError: ``out_dir`` is a file, a folder seal did not create, or (``resume``)
            missing; RunDirBusyError: another live process holds it. Else as :func:`run_bench_in`.
    """
    with hold_run_dir(out_dir, create=not resume):
        return run_bench_in(recipe, out_dir, console, resume, reuse, helper)


def run_bench_in(
    recipe: Recipe, out_dir: str | Path, console: Console | None = None, resume: bool = False, reuse: str | Path | None = None,
    helper: Helper | None = None,
) -> Path:
    """Run the recipe's ``bench`` section into ``out_dir``; returns the results directory.

    ``resume``: continue the bench in ``out_dir``, reading back what its journal holds (see
    the module docstring).
    ``reuse``: another, finished or stopped, bench directory of the same recipe but for
    ``bench.train_run`` (``seal microworld demo``'s second process benches the sources that
    need no training run there while the rounds train): a new bench first copies in its
    journal and sampled self-edits and reads them back as a resume does, so only the rest is
    computed and the results equal a bench that computed everything.
    ``helper``: a helper process that takes chunks of the single protocol's evaluations
    (``seal.helper``; ``seal microworld demo``'s second process, once the rounds are over).

    Raises:
        RecipeError: no bench section, a protocol asks for more passages than the data
            section loads, a missing policy checkpoint or student, ``out_dir`` already holds
            results (without ``resume``), or (with it) holds none or was started with a recipe
            that differs in result-changing keys.
            With ``reuse``: that directory holds no bench or another recipe's.
        DataError: a file: source lacks a passage of the evaluation set (named) or has too few self-edits.
        PromptError: unknown template.
    """
    console = console or Console()
    cfg = recipe.bench
    if cfg is None:
        raise RecipeError("the recipe has no 'bench' section (see recipes/bench_squad_tiny_cpu.yaml)")
    seed = recipe.seed if cfg.seed is None else cfg.seed
    check_recipe(recipe)  # seal.preflight: every setting, before any work
    if recipe.self_edit.backend == "vllm":  # policy: / prompt: sources sampled by vLLM (seal.vllm_backend)
        check_vllm(recipe.model.device)
    run = RunDir(out_dir)
    config = recipe_to_dict(recipe)
    if resume:
        check_resume(run, config)
    elif run.exists():
        raise RecipeError(f"{run.path} already holds results; choose another --out, or pass --resume to continue it")
    elif reuse is not None:
        check_reuse(RunDir(reuse), config)

    # 1. checks -------------------------------------------------------------------------
    protocols = cfg.protocols.enabled()
    all_passages = load_eval_passages(recipe)
    sizes = {}
    for name, p in protocols:
        sizes[name] = protocol_size(p, len(all_passages))  # continual order random: the pool
        for what, wanted in (("n_passages", p.n_passages), ("pool", getattr(p, "pool", None))):
            if wanted is not None and wanted > len(all_passages):
                raise RecipeError(
                    f"bench.protocols.{name}.{what} = {wanted}, but the data section loads only "
                    f"{len(all_passages)} evaluation passages (data.eval_file, data.n_eval_passages)"
                )
    passages = all_passages[: max(sizes.values())]
    n_edits = max(p.n_self_edits for _, p in protocols)
    recipes = {name: protocol_recipe(recipe, name, p) for name, p in protocols}
    students = cfg.students or [StudentSpec(name_or_path=recipe.model.name_or_path)]
    for student in students:
        _ensure_student(recipe, student)
        modules = module_names(student.name_or_path, recipe.model.trust_remote_code)  # seal.preflight
        for name, r in recipes.items():
            check_targets("inner.lora", list(r.inner.lora.target_modules), modules, linear_only=True, where=f"{student.name_or_path} (protocol {name})")
    specs, train_metrics = list(cfg.sources), []
    if cfg.train_run:
        round_specs, train_metrics = train_run_sources(cfg.train_run, cfg.train_run_learner)
        specs += round_specs
    sources = check_sources(specs, recipe, passages, n_edits, students)

    # 2. record ------------------------------------------------------------------------
    journaled_baselines: dict[str, dict[int, dict]] = defaultdict(dict)
    journaled: dict[tuple, list[dict]] = defaultdict(list)  # (protocol, student, source label) -> records
    if resume:
        records = reopen_journal(run)
        _note_resume(run)
        console.print(f"resuming {run.path}: {len(records)} journaled records read back")
    else:
        run.start(config, seeds={"seed": recipe.seed, "bench_seed": seed})
        records = _copy_bench(RunDir(reuse), run) if reuse is not None else []
        if records:
            console.print(f"{len(records)} records of {reuse} read back")
    for row in records:
        if row.get("kind") == "baseline":
            journaled_baselines[row["student"]][row["passage"]] = row
        else:
            journaled[(row["kind"], row["student"], row["source_label"])].append(row)
    seed_everything(seed)
    t_start = time.perf_counter()
    judge = make_judge(recipe.qa)
    # The libraries' output (warnings, load bars) to the bench's log.txt; the console keeps seal's lines.
    with library_output_to(run.path / "log.txt"), progress_bar(console) as bar:
        # 3. self-edits sampled now -----------------------------------------------------
        _sample_sources(sources, recipe, passages, n_edits, seed, run, bar, reuse=resume or reuse is not None)

        # 4. every student x protocol x source, then every paired learner x its sources ------
        outcomes, base_verdicts = {}, {}
        own_rows = [source for source in sources if source.learner is None]
        for student in students:
            model, tok = load_policy(recipe.model, student.name_or_path)
            found, base = _learn(
                model, tok, student.name, own_rows, protocols, recipes, sizes, passages, recipe, seed, judge, run, bar, journaled, journaled_baselines,
                helper, (recipe.model, student.name_or_path),
            )  # fmt: skip
            for (name, source_name), outcome in found.items():
                outcomes[(name, student.name, source_name)] = outcome
            for name, _ in protocols:
                base_verdicts[(name, student.name)] = [list(row["scores"]) for row in base[: sizes[name]]]
            del model, tok
            gc.collect()
        for learner, rows in _by_learner(sources).items():
            model, tok = load_policy(recipe.model, learner)
            found, base = _learn(
                model, tok, learner_key(learner), rows, protocols, recipes, sizes, passages, recipe, seed, judge, run, bar, journaled, journaled_baselines,
                helper, (recipe.model, learner),
            )  # fmt: skip
            for (name, source_name), outcome in found.items():
                outcome.baseline = [list(row["scores"]) for row in base[: sizes[name]]]
                for student in students:  # one row, learned once, shown in every student's table
                    outcomes[(name, student.name, source_name)] = outcome
            del model, tok
            gc.collect()

    # 5. statistics and outputs ----------------------------------------------------------
    rows = [
        Row(
            source.name, source.spec.source, dict(source.spec.expected),
            {student.name: _own_data(source, student) for student in students}, source.author, source.learner,
        )
        for source in sources
    ]  # fmt: skip
    boot_seed = derive_seed(seed, "bootstrap")
    results = analyze(rows, [student.name for student in students], [(n, sizes[n]) for n, _ in protocols], outcomes, base_verdicts, cfg, boot_seed)
    setup = {
        "name": recipe.name,
        "students": [student.name for student in students],
        "student_paths": [student.name_or_path for student in students],
        "grader": recipe.qa.grader,
        "seed": seed,
        "bootstrap_seed": boot_seed,
        "bootstrap_samples": cfg.bootstrap_samples,
        "confidence": cfg.confidence,
        "multiple_comparisons": cfg.multiple_comparisons,
        "protocols": {name: _describe(recipes[name], p) for name, p in protocols},
        "passages": [{"passage_id": p.id, "title": p.title, "n_questions": len(p.questions)} for p in passages],
        "seconds": None,
        # source label -> ReST-EM rounds behind it: the report opens with the round comparison
        "rounds": {source.name: source.spec.round for source in sources if source.spec.round is not None},
        # source label -> the model that learned it, for rows with their own learner (SourceSpec.learner)
        "learners": {source.name: source.learner for source in sources if source.learner is not None},
    }
    if recipe.self_edit.hparams.enabled:
        setup["hparams"] = _hparams_choices(read_jsonl(run.journal))
    rounds = setup["rounds"]
    plots = write_plots(run.path, results, rounds, train_metrics, setup.get("hparams"))
    setup["seconds"] = round(time.perf_counter() - t_start, 1)
    verdicts = {cell: outcome.verdicts for cell, outcome in outcomes.items()}
    write_tables(run.path, results, setup, verdicts, [p.id for p in passages], plots)
    _print_summary(console, results, rounds)
    console.print(f"report: {run.path / 'report.md'}  ({setup['seconds']:.0f} s)")
    return run.path


def _own_data(source: Source, student: StudentSpec) -> bool:
    """Whether the model that learns ``source`` in ``student``'s table also wrote its data: the
    student itself, or the row's own learner (``learner: self``: the policy learns what it wrote)."""
    if source.spec.learner == "self":
        return True
    return same_model(source.author, source.learner or student.name_or_path)


def learner_key(learner: str) -> str:
    """The journal's ``student`` field of a row learned by ``learner`` (``SourceSpec.learner``)."""
    return f"learner {learner}"


def _by_learner(sources: list[Source]) -> dict[str, list[Source]]:
    """Sources with their own learner, grouped by it (in recipe order)."""
    out: dict[str, list[Source]] = {}
    for source in sources:
        if source.learner is not None:
            out.setdefault(source.learner, []).append(source)
    return out


def _learn(
    model, tok, who: str, sources, protocols, recipes, sizes, passages, recipe, seed, judge, run, bar, journaled, journaled_baselines, helper=None,
    loaded_from=None,
):
    """``who`` (a student, or a paired learner) learns every source's data under every protocol.

    Returns ``({(protocol, source label): Outcome}, its baselines)``; journal records carry
    ``student = who``, and ``journaled`` / ``journaled_baselines`` (a resume) are read back.
    ``helper`` and ``loaded_from`` (the model settings and path ``model`` was loaded from):
    see :class:`seal.bench.protocols.ProtocolContext`.
    """
    task = bar.add_task(f"{who}: baseline", total=1)
    base = _baselines(model, tok, passages, recipe, judge, who, journaled_baselines[who], run)
    bar.advance(task)
    found = {}
    for name, proto in protocols:
        n, rows = sizes[name], [source for source in sources if source.spec.runs_in(name)]
        cut = {source.name: [edits[: proto.n_self_edits] for edits in source.edits[:n]] for source in sources}
        own = {source.name: source_recipe(recipes[name], name, source.spec) for source in rows}
        total = sum(n_steps(name, source.spec.source, passages[:n], cut[source.name], own[source.name]) for source in rows)
        task = bar.add_task(f"{who}: {name}", total=max(total, 1))
        for source in rows:
            ctx = ProtocolContext(
                model, tok, own[source.name], seed, judge,
                key={"kind": name, "student": who, "source_label": source.name},
                on_record=lambda record: append_jsonl(run.journal, record),
                progress=lambda k, task=task: bar.advance(task, k), done=journaled[(name, who, source.name)], helper=helper, loaded_from=loaded_from,
            )  # fmt: skip
            found[(name, source.name)] = PROTOCOL_RUNNERS[name](ctx, source.spec.source, passages[:n], cut[source.name], base[:n])
        bar.update(task, completed=max(total, 1))
    return found, base


def _hparams_choices(journal: list[dict]) -> dict[str, dict[str, dict]]:
    """student -> source label -> :func:`seal.hparams.round_summary` of the settings its
    self-edits chose (single protocol: the one that applies them; nothing is "kept" in a bench)."""
    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in journal:
        if row.get("kind") == "single":
            rows[(row["student"], row["source_label"])].append(row)
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for (student, label), part in rows.items():
        chosen = journal_choices(part)
        if chosen:
            out[student][label] = round_summary(chosen, {})
    return dict(out)


def _baselines(model, tok, passages, recipe: Recipe, judge, student: str, journaled: dict[int, dict], run: RunDir) -> list[dict]:
    """The student's baselines: read back when the journal holds every passage's, else
    computed (one batched generation) and the passages' missing from the journal appended."""
    if all(i in journaled for i in range(len(passages))):
        return [{k: v for k, v in journaled[i].items() if k not in _BASELINE_KEY} for i in range(len(passages))]
    base = baselines(model, tok, passages, recipe.qa, judge, make_task(recipe))
    for i, row in enumerate(base):
        if i not in journaled:
            append_jsonl(run.journal, {"kind": "baseline", "student": student, "passage": i, "passage_id": passages[i].id, **row})
    return base


def _saved_edits(path: Path, n_passages: int, n_edits: int) -> list[list[str | None]] | None:
    """Self-edits saved by an earlier launch of this bench (a resume), if complete; else None."""
    if not path.is_file():
        return None
    rows = read_json(path)
    if len(rows) != n_passages or any(len(row["completions"]) < n_edits for row in rows):
        return None
    return [list(row["completions"][:n_edits]) for row in rows]


def _sample_sources(sources: list[Source], recipe: Recipe, passages, n_edits: int, seed: int, run: RunDir, bar, reuse: bool = False) -> None:
    """Sample policy:/prompt: sources' self-edits once; save each as a SEAL-format file.

    ``reuse`` (a resume): a source whose file an earlier launch saved is read back, not sampled again.
    """
    for source in sources:
        if reuse and source.edits is None:
            source.edits = _saved_edits(run.path / "self_edits" / f"{_file_part(source.name)}.json", len(passages), n_edits)
    todo = [source for source in sources if source.edits is None]
    if not todo:
        return
    task = bar.add_task("sampling self-edits", total=len(todo))
    base = None
    if any(source.kind == "prompt" for source in todo):
        base = load_policy(recipe.model)
    for source in todo:
        sample_source(source, recipe, passages, n_edits, seed, base=base)
        note = f"sampled by seal bench from {source.author} ({source.spec.source}), seed {seed}"
        write_json_atomic(run.path / "self_edits" / f"{_file_part(source.name)}.json", seal_format(passages, source.edits, note))
        bar.advance(task)
    del base
    gc.collect()


def _file_part(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)


def _print_summary(console: Console, results: dict, rounds: dict[str, int]) -> None:
    for name, proto in results["protocols"].items():
        for student, table in proto["tables"].items():
            summary = Table(title=f"{name}, student {student}, {proto['n_passages']} passages (points, 95 % CI)")
            for column in ("source", "accuracy", "gain over base", "reference"):
                summary.add_column(column)
            for cell in table["cells"]:
                summary.add_row(
                    cell["source"], ci(cell["accuracy"]), ci(cell["gain"], signed=True), "" if cell["expected"] is None else pct(cell["expected"])
                )
            print_table(console, summary)
            for line in round_lines(name, student, table, rounds):
                console.print(line.replace("**", ""))
