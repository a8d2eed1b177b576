"""``seal train``: the SEAL knowledge-incorporation outer loop, ReST-EM (paper Section 3.1, 4.2).

One round, reading top to bottom:

1. sample ``k`` self-edits per training passage from the current policy;
2. answer every passage's questions with the un-adapted model (the baseline);
3. for every (passage, self-edit, repetition): train a fresh LoRA adapter on the self-edit's
   texts and score no-passage QA; reward = accuracy gain over the baseline (journaled);
4. keep the best self-edit(s) per passage (E-step) and write ``{prompt, completion}`` rows;
5. LoRA-SFT the policy on them with TRL and merge (M-step): the next round's policy and base;
6. record what the round's self-edits teach (``seal.diagnostics``: diversity, formats,
   coverage; a collapse warning), read-only, in the round's metrics.

Distributed (``accelerate launch`` / torchrun, any number of processes and machines)
----------------------------------------------------------------------------------------
Every process ("rank") loads its own replica of the round's policy and works through its
share of the round; ``seal.distributed`` has the details. The units of work are fixed by
the recipe, never by the number of processes, and are dealt round-robin:

* self-edit sampling: chunks of ``self_edit.batch_size`` passages (each chunk's sampling is
  seeded from the recipe seed, the round and its first passage's index);
* baselines: chunks of consecutive passages with at most ``qa.batch_size`` questions;
* evaluations: chunks of ``inner.batch_adapters`` consecutive evaluations of the round's
  list in identity order (passage, self-edit, repetition); a chunk is one batched inner
  loop.

So a unit is computed exactly as a single process computes it, and after gathering, the
journal and the round metrics hold the same content as a 1-process run with the same seed
(timing fields aside, see ``TIMING_FIELDS``). The ReST-EM update runs through TRL's
``SFTTrainer`` on all ranks (data-parallel; DeepSpeed ZeRO-2/3 through
``rl.sft.deepspeed``); only the main process merges and writes. Its data-parallel global
batch is ``rl.sft.global_batch_size`` when set (the gradient accumulation is derived from
it, ``seal.restem.sft_grad_accum_steps``), else ``world_size x rl.sft.batch_size x
rl.sft.grad_accum_steps``, so that the SFT loss and the merged policy (hence rounds after
the first) depend on the number of processes.
Bitwise equality of evaluations across runs also assumes the same hardware and the same
per-process thread count.

Nothing finished is lost
------------------------
Only the main process writes the run directory's files, each atomically (temporary file,
then rename; the merged policy as a whole folder), except the journal: every rank appends
each baseline and evaluation record as soon as it is graded, flushed and fsynced, to its
own file (rank 0: ``journal.jsonl``; rank r: ``journal.rank{r}.jsonl``), so a rank that
dies loses at most the chunk it was computing. At the end of a round's evaluations the
main process merges the rank files into ``journal.jsonl`` (one atomic rewrite, records in
identity order) and removes them.

``resume=True`` (``seal train --resume RUN_DIR``) continues a killed run: finished rounds
(``round_k/metrics.json``) are skipped and their policies reused; saved self-edits,
journaled baselines and evaluations (all journal files) are read, not recomputed; a
finished policy update (``round_k/sft.json`` beside ``round_k/policy/``) is reused. Every
random draw is seeded from the recipe seed and the draw's identity (round, passage,
self-edit, repetition), never from the clock, so a resumed run ends with the metrics of an
uninterrupted one. The number of processes may change between launches.

Faults
------
One evaluation's failure never stops a round. The inner loop reports per-job failures
(non-finite loss, no trainable tokens after truncation) in ``AdapterResult.error``; an
exception from a chunk's inner loop (CUDA out-of-memory, anything else) is retried with the
chunk halved, down to one adapter, and then recorded for that evaluation alone. A failed
evaluation's record has ``error`` (the reason) and ``reward = inner.failure_reward``; it is
a finished evaluation, read back rather than retried by a resume (delete its journal line to
retry it). A self-edit cut off by ``self_edit.max_new_tokens`` is still evaluated and carries
``truncated: true`` (``self_edits.json`` and its journal records). A question the LLM judge
could not grade is ``None`` in ``scores`` (ungraded; ``qa.ungraded`` decides how it counts).
A round with no usable evaluation at all (every one failed, or none got a reward because
nothing was graded) stops the run after its evaluations are journaled
(``seal.stages.check_round_usable``, ``RoundFailedError``, exit status 3) unless
``rl.keep_going``; a self-edit whose every evaluation failed is never kept. The run directory
is claimed and locked by the main process for the whole run (``seal.rundir.hold_run_dir``).

Differences from the reference implementation: it seeds from the wall clock (no two runs
agree, a resume cannot reproduce), counts grader failures as wrong answers, and writes its
results only at the very end (a crash loses the round); here seeds derive from identities,
ungraded stays ``None``, and every result is on disk as soon as it exists.

GRPO and RLOO
-------------
With ``rl.algorithm: grpo | rloo`` (not the paper's algorithm) :func:`train` runs
``seal.grpo.run_grpo`` instead of the rounds: TRL's GRPO / RLOO trainer samples and updates
the policy, seal's inner loop is its reward function; same run directory, journal, resume
and console story (the module docstring of ``seal.grpo``), on one process or many.

Where the code is
-----------------
:func:`run_round` is the round as a script; each step is a stage of ``seal.stages`` that owns
its resume, sharding and gathering (``Round``, ``run_stage``). The journal files are
``seal.journal``; the records ``seal.scoring`` (``BaselineRecord``, ``EvaluationRecord``) and
``seal.self_edits`` (``SelfEdit``); chunks of adapters and their retry in halves
``seal.inner_loop`` (``adapter_chunks``, ``run_in_halves``).
"""

from __future__ import annotations

import datetime as _dt
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from seal.config import (
    RESULT_NEUTRAL_KEYS,
    Recipe,
    RecipeError,
    diff_recipes,
    recipe_to_dict,
    with_defaults,
)
from seal.data import DataError, Passage, resolve_data_path
from seal.display import library_output_to, progress_bar
from seal.distributed import Dist, get_dist
from seal.grpo import check_processes, run_grpo
from seal.helper import Helper
from seal.hub import model_record, push_policy
from seal.models import check_model_source
from seal.preflight import check_model, check_recipe, train_lora_keys
from seal.prompts import check_template
from seal.restem import sft_grad_accum_steps
from seal.rundir import RunDir, hold_run_dir, portable_path, read_json_or_none, write_json_atomic
from seal.scoring import make_judge
from seal.stages import (
    Round,
    baselines_stage,
    check_round_usable,
    diagnostics_stage,
    evaluations_stage,
    finished_round,
    free_models,
    load_learner,
    load_writer,
    metrics_stage,
    open_round,
    policy_update_stage,
    round_metrics,
    sample_stage,
    selection_stage,
)
from seal.tasks.registry import make_task
from seal.tracking import Tracking, check_installed, track_round
from seal.vllm_backend import check_vllm

# Keys a resume may change: those of speed or bookkeeping, and rl.rounds (more rounds extend a
# run; finished rounds are unaffected).
RESUMABLE_KEYS = RESULT_NEUTRAL_KEYS | {"rl.rounds"}

TIMING_FIELDS = {
    "journal": ("seconds",),
    "metrics": ("seconds", "seconds_per_evaluation", "sft.seconds", "timing"),
}
"""Fields that measure a launch rather than the results: the only journal and metrics fields
that differ between two runs of the same recipe and seed (uninterrupted or resumed, one
process or many). Journal: ``seconds`` (an evaluation's share of its chunk's wall time, a
baseline's share of its chunk's). Metrics (``round_k/metrics.json``, ``metrics.jsonl``):
``seconds`` (the round's wall time in the launch that finished it), ``seconds_per_evaluation``,
``sft.seconds`` (TRL's train_runtime) and ``timing`` (this launch's wall seconds per stage on
the main process, and how many evaluations each rank computed rather than read from the journal).
Everything else is determined by the recipe and seed, except ``sft.*`` (and so the rounds
after the first) across different numbers of processes, see the module docstring."""


def load_train_passages(recipe: Recipe, round_index: int = 0) -> list[Passage]:
    """The RL training passages of round ``round_index`` named by the recipe, read by its task
    (``Task.train_passages``: SEAL-format files or the hub, a task's own format). Every round's under ``data.passage_schedule: fixed``; see
    :func:`load_round_passages` for ``fresh``.

    Raises:
        DataError: as :func:`load_round_passages`.
    """
    if recipe.data.passage_schedule == "fixed":
        return _read_passages(recipe, recipe.data.train_file, recipe.data.n_train_passages)
    rounds = max(recipe.rl.rounds, round_index + 1)
    return load_round_passages(recipe.model_copy(update={"rl": recipe.rl.model_copy(update={"rounds": rounds})}))[round_index]


def _read_passages(recipe: Recipe, path: str, n: int | None) -> list[Passage]:
    """The first ``n`` passages (None: all) of one training file, read by the recipe's task."""
    return make_task(recipe).train_passages(path, n)


def load_round_passages(recipe: Recipe) -> list[list[Passage]]:
    """Each ReST-EM round's training passages (``rl.rounds`` lists), read and checked before
    any work.

    ``data.passage_schedule: fixed``: the same passages every round. ``fresh`` (the reference's
    round 2 learned from 50 passages disjoint from round 1's: its
    ``results/query_server/train/rank_iter1.json``): round r reads ``data.round_train_files[r]``
    (its first ``n_train_passages``, all when None), or, without that list, passages
    ``[r*n, (r+1)*n)`` of ``data.train_file`` (n = ``n_train_passages``).

    Raises:
        DataError: a missing or malformed file; under ``fresh``, too few passages for the
            rounds (names the file, the count and the keys) or a passage in two rounds (names
            it and the rounds).
    """
    data, rounds = recipe.data, recipe.rl.rounds
    if data.passage_schedule == "fixed":
        return [load_train_passages(recipe)] * rounds
    n = data.n_train_passages
    if data.round_train_files is not None:
        per_round = []
        for r, path in enumerate(data.round_train_files[:rounds]):
            passages = _read_passages(recipe, path, n)
            if not passages or (n is not None and len(passages) < n):
                raise DataError(
                    f"data.round_train_files[{r}] ({resolve_data_path(path, data.root)}) holds {len(passages)} passages; "
                    f"round {r} needs {n or 'at least 1'} (data.n_train_passages)"
                )
            per_round.append(passages)
    else:
        passages = _read_passages(recipe, data.train_file, None)
        if len(passages) < n * rounds:
            raise DataError(
                f"{resolve_data_path(data.train_file, data.root)} holds {len(passages)} passages; data.passage_schedule fresh "
                f"takes data.n_train_passages={n} new ones per round, so rl.rounds={rounds} needs {n * rounds}"
            )
        per_round = [passages[r * n : (r + 1) * n] for r in range(rounds)]
    first_round: dict[str, int] = {}
    for r, passages in enumerate(per_round):
        for p in passages:
            seen = first_round.setdefault(p.id, r)
            if seen != r:
                raise DataError(
                    f"data.passage_schedule fresh: passage {p.title!r} (id {p.id}) is in round {seen}'s and round {r}'s training "
                    "passages; a fresh round's passages must be new"
                )
    return per_round


def check_runnable(recipe: Recipe, passages: list[Passage]) -> None:
    """Refuse, before a run directory exists, a recipe that asks for more passages per GRPO /
    RLOO step than there are (a DeepSpeed update without DeepSpeed: ``seal.preflight``).

    Raises:
        RecipeError: naming the key and the numbers.
    """
    g = recipe.rl.grpo
    if recipe.rl.algorithm != "restem" and g.prompts_per_step > len(passages):
        raise RecipeError(
            f"rl.grpo.prompts_per_step ({g.prompts_per_step}) exceeds the {len(passages)} training passages; "
            f"set rl.grpo.prompts_per_step={len(passages)} or more data.n_train_passages"
        )


def check_resume(run: RunDir, config: dict) -> None:
    """Refuse to resume with a recipe that differs in anything that changes results.

    Raises:
        RecipeError: listing the differing keys.
    """
    if not run.exists():
        raise RecipeError(f"cannot resume: {run.path} holds no run (no config.yaml)")
    diffs = [k for k in diff_recipes(with_defaults(run.recorded_config()), config) if k not in RESUMABLE_KEYS]
    if diffs:
        raise RecipeError(f"refusing to resume {run.path}: the recipe differs from the recorded one in: {', '.join(diffs)}")


def run_round(
    recipe: Recipe, run: RunDir, round_index: int, policy: str, passages: list[Passage], bar: Progress, console: Console, dist: Dist | None = None,
    tracking: Tracking | None = None, helper: Helper | None = None,
) -> str:
    """One ReST-EM round with ``policy`` as policy and (``inner.learner: policy``) inner-loop
    model; returns the next policy. Each stage resumes what an earlier launch finished.
    ``tracking``: the run's trackers (``report_to``), given the round's metrics and self-edits;
    ``helper``: a helper process that takes chunks of the evaluations (``seal.helper``)."""
    round_ = Round(recipe, run, round_index, policy, passages, dist or get_dist(), console, bar, tracking=tracking or Tracking([]), helper=helper)
    reused = finished_round(round_)
    if reused is not None:
        return reused
    open_round(round_)
    load_writer(round_)
    self_edits = sample_stage(round_)
    load_learner(round_)
    baseline_records = baselines_stage(round_)
    records = evaluations_stage(round_, self_edits, baseline_records)
    check_round_usable(round_, records)
    free_models(round_)
    selection = selection_stage(round_, self_edits, records)
    sft_stats, next_policy = policy_update_stage(round_, selection.rows)
    diagnostics = diagnostics_stage(round_, self_edits, selection)
    metrics = round_metrics(round_, self_edits, baseline_records, records, selection, sft_stats, next_policy, diagnostics)
    metrics_stage(round_, metrics)
    track_round(round_.tracking, metrics, self_edits, selection.rewards, selection.kept)
    return next_policy


def _record(run: RunDir, key: str, value) -> None:
    """Set ``run.json``'s ``key`` (``model``: name, revision and the commit it resolved to)."""
    path = run.path / "run.json"
    write_json_atomic(path, (read_json_or_none(path) or {}) | {key: value})


def _push(recipe: Recipe, run: RunDir, policy: str, console: Console) -> None:
    """``hub.push_to_hub``: upload the final policy and its model card (``seal.hub``); nothing
    when off. A failed upload leaves the finished run as it is: ``--resume`` pushes again.

    Raises:
        RecipeError: the upload failed (the message has the reason and what to do).
    """
    try:
        push_policy(run, policy, recipe.hub, console.print)
    except Exception as e:  # no token, no network, no permission: huggingface_hub's own errors
        raise RecipeError(
            f"the run is finished in {run.path}, but pushing it to {recipe.hub.repo_id} failed: {e}; "
            f"to push again: seal train RECIPE --resume {run.path}"
        ) from e


def _record_launch(run: RunDir, dist: Dist, resumed: bool) -> None:
    """Note this launch (time, process count, backend) in ``run.json``'s ``launches`` list."""
    path = run.path / "run.json"
    info = read_json_or_none(path) or {}
    info.setdefault("launches", []).append(
        {
            "time": _dt.datetime.now().isoformat(timespec="seconds"),
            "resume": resumed,
            "world_size": dist.world_size,
            "backend": dist.backend,
        }
    )
    write_json_atomic(path, info)


def train(recipe: Recipe, run_dir: str | Path, resume: bool = False, console: Console | None = None, helper: Helper | None = None) -> Path:
    """Run (or resume) ``recipe.rl.rounds`` ReST-EM rounds into ``run_dir`` (with
    ``rl.algorithm: grpo | rloo``, ``rl.grpo.steps`` TRL steps instead: ``seal.grpo``); returns it.
    ``helper``: a helper process that takes chunks of the rounds' inner-loop evaluations
    (``seal.helper``; ``seal microworld demo`` on two cores), in a single-process ReST-EM run.

    Works unlaunched (one process) and under ``accelerate launch`` / torchrun (see the module
    docstring); every rank calls it with the same recipe, and the main process's ``run_dir``
    is used by all.

    The main process claims and locks ``run_dir`` for the whole run (``seal.rundir.hold_run_dir``:
    a new or empty directory, or one seal created; the other ranks share it).

    Raises:
        RecipeError: a setting refused by ``seal.preflight`` (a scheduler, attention or device
            name, a LoRA target module the model lacks, the judge's key), resuming with a
            recipe that differs in result-changing keys (the message lists them), resuming a
            directory without a run, a fresh run into a directory that already holds one,
            GRPO / RLOO under more processes than a step can be shared by
            (``seal.grpo.check_processes``) or with ``model.shard`` on, or
            ``rl.sft.global_batch_size`` not a multiple of ``rl.sft.batch_size`` x processes, more
            passages per GRPO step than there are, or rl.sft.deepspeed without DeepSpeed installed
            (all before anything is written, but the resume refusals).
        DataError: missing, malformed or empty data files (or an empty selection of them); with
            ``data.passage_schedule: fresh``, too few passages for ``rl.rounds``
            (:func:`load_round_passages`).
        RunDirError: ``run_dir`` is a file or a folder seal did not create, or its recorded
            ``config.yaml`` is damaged; RunDirBusyError: another live process holds it.
        RoundFailedError: a round had no usable evaluation (``seal.stages.check_round_usable``;
            ``rl.keep_going`` continues instead).
        PromptError: unknown self-edit template.
        OSError: the run directory cannot be written (a full disk, say); what was finished
            before stays on disk and ``--resume`` continues from it.
    """
    dist = get_dist()
    console = console or Console()
    if not console.is_terminal:
        console.soft_wrap = True  # a batch log: one line per message, never reflowed at 80 columns
    if not dist.is_main:
        console = Console(quiet=True)
    run = RunDir(dist.broadcast(str(run_dir)))
    config = recipe_to_dict(recipe)
    check_template(recipe.self_edit.template)
    check_recipe(recipe)  # every setting the run will use, before any work (seal.preflight)
    # Validate the data, and the policy update's batch for this many processes, before writing anything.
    passages = load_train_passages(recipe) if recipe.rl.algorithm != "restem" else None
    round_passages = load_round_passages(recipe) if passages is None else []
    if recipe.rl.algorithm == "restem":  # GRPO / RLOO run no SFT
        sft_grad_accum_steps(recipe.rl.sft, dist.world_size)
    check_model_source(recipe.model.name_or_path)  # the model (a missing one: one line, nothing written)
    check_model(recipe, train_lora_keys(recipe))
    make_judge(recipe.qa)  # and the judge's key (JudgeError names its variable)
    if recipe.rl.algorithm != "restem" and dist.distributed:
        check_processes(recipe, dist.world_size)
        if recipe.model.shard != "none":
            raise RecipeError(f"rl.algorithm {recipe.rl.algorithm} with model.shard {recipe.model.shard} is not supported; use model.shard=none")
    check_installed(recipe.report_to)
    if recipe.self_edit.backend == "vllm":  # before anything is written
        check_vllm(recipe.model.device, dist.world_size, recipe.model.shard)
    check_runnable(recipe, passages)

    def open_run() -> None:
        # Claim and lock the directory first: a foreign or busy one is refused untouched.
        held.enter_context(hold_run_dir(run.path, create=not resume))
        if resume:
            check_resume(run, config)
        else:
            if run.exists():
                raise RecipeError(f"{run.path} already holds a run; pass --resume to continue it")
            run.start(config, seeds={"seed": recipe.seed, "derivation": "seal.seeding.derive_seed(seed, *identity)"})
            _record(run, "model", model_record(recipe.model.name_or_path, recipe.model.revision))
        _record_launch(run, dist, resume)

    with ExitStack() as held:  # the main process's lock on the run directory, for the whole run
        dist.main_decides(open_run)
        # The libraries' own output (warnings, load reports, TRL's step dicts) goes to the run's
        # log file; the console keeps seal's lines.
        with library_output_to(run.path / ("log.txt" if dist.is_main else f"log.rank{dist.rank}.txt")):
            tracking = Tracking.start(recipe, run, dist.is_main)
            try:
                _run(recipe, run, passages, round_passages, resume, console, dist, tracking, helper)
            finally:
                tracking.finish()
    return run.path


def _run(
    recipe: Recipe, run: RunDir, passages: list[Passage] | None, round_passages: list[list[Passage]], resume: bool, console: Console, dist: Dist,
    tracking: Tracking, helper: Helper | None = None,
) -> None:
    """:func:`train`'s rounds (or GRPO / RLOO steps, on ``passages``) once the run directory is open."""
    if resume:
        console.print(f"resuming {run.path}")
    where = f", {dist.world_size} processes ({dist.backend})" if dist.distributed else ""
    if recipe.rl.algorithm != "restem":
        console.print(f"run directory: {run.path}  ({len(passages)} passages, {recipe.rl.algorithm}, {recipe.rl.grpo.steps} steps{where})")
        with progress_bar(console) as bar:
            policy = run_grpo(recipe, run, passages, bar, console, dist, tracking)
        if dist.is_main:
            write_json_atomic(run.path / "final.json", {"policy": portable_path(run, policy), "algorithm": recipe.rl.algorithm, "steps": recipe.rl.grpo.steps})
            _push(recipe, run, policy, console)
        dist.barrier()
        return
    if recipe.data.passage_schedule == "fresh":
        counts = f"{' + '.join(str(len(p)) for p in round_passages)} passages, fresh each round"
    else:
        counts = f"{len(round_passages[0]) if round_passages else 0} passages"
    console.print(f"run directory: {run.path}  ({counts}, {recipe.rl.rounds} rounds{where})")
    policy = recipe.model.name_or_path
    with progress_bar(console) as bar:
        for round_index in range(recipe.rl.rounds):
            policy = run_round(recipe, run, round_index, policy, round_passages[round_index], bar, console, dist, tracking, helper)
    if dist.is_main:
        write_json_atomic(run.path / "final.json", {"policy": portable_path(run, policy), "rounds": recipe.rl.rounds})
        _push(recipe, run, policy, console)
    dist.barrier()
