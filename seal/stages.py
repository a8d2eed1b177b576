"""The stages of a ``seal train`` round, each owning its resume, sharding and gathering.

``seal.train.run_round`` is the script over them: :func:`sample_stage` (self-edits) ->
:func:`baselines_stage` -> :func:`evaluations_stage` (inner loop, rewards) ->
:func:`selection_stage` (ReST-EM E-step) -> :func:`policy_update_stage` (M-step) ->
:func:`diagnostics_stage` (what the self-edits teach, read-only) -> :func:`metrics_stage`.
They share a :class:`Round` (the recipe, run directory, round index, process group, console,
the loaded model...) and two helpers: :meth:`Round.saved` (a stage
finished in an earlier launch: its file, read by the main process) and :func:`run_stage`
(units of work not yet journaled, dealt round-robin to the ranks, computed and gathered;
with a sharded model, ``model.shard: fsdp``, computed by every rank in step and recorded by
the main process).
The module docstring of ``seal.train`` describes the units, the journal and resumption.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console
from rich.progress import Progress

from seal.config import Recipe
from seal.data import Passage
from seal.diagnostics import collapse_warning, round_diagnostics, summary_line
from seal.display import percent, trainer_progress
from seal.distributed import Dist
from seal.errors import RoundFailedError
from seal.hparams import round_summary as hparams_round_summary
from seal.hparams import split_block
from seal.inner_loop import free_memory
from seal.journal import journal_path, merge_journal, read_journal, seal_partial_line
from seal.models import load_policy, resolve_attn_implementation, resolve_device
from seal.restem import curate, curation_scores, select_best, sft_rows, update_policy
from seal.rewards import mean_reward
from seal.rundir import (
    RunDir,
    append_jsonl,
    portable_path,
    read_json,
    read_json_or_none,
    resolve_policy,
    write_json_atomic,
    write_jsonl_atomic,
)
from seal.scoring import (
    BaselineRecord,
    Evaluation,
    EvaluationRecord,
    RoundKey,
    Scorer,
    baselines,
    make_judge,
    n_prompts,
)
from seal.seeding import derive_seed, seed_everything
from seal.self_edits import (
    SelfEdit,
    generate_self_edits,
    self_edits_from_json,
    self_edits_to_json,
)
from seal.sharding import shard_model
from seal.tasks.registry import Task, make_task
from seal.tracking import Tracking
from seal.vllm_backend import VLLMSampler, stop_token_ids

if TYPE_CHECKING:  # annotations only: seal.models imports transformers already
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from seal.config import ModelConfig
    from seal.helper import Helper

Unit = TypeVar("Unit", bound=Sequence)
Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


@dataclass
class Round:
    """What every stage of one round needs.

    Attributes:
        recipe: the run's recipe; run: its directory; index: the round (0-based).
        policy: the model that writes this round's self-edits (a path or hub id).
        passages: this round's RL training passages (``seal.train.load_round_passages``: the
            same every round, or new ones with ``data.passage_schedule: fresh``).
        dist: this process's view of the process group (``seal.distributed``).
        console: where messages go (quiet on ranks other than the main one); bar: the progress display.
        model, tokenizer: the model loaded now (the policy, then the learner; None after the
            round's scoring): loaded and freed by the round's script (:func:`load_writer`,
            :func:`load_learner`, :func:`free_models`).
        judge: the LLM judge when ``qa.grader == 'judge'``, else None.
        journal: this round's journal records read at its start (finished work of earlier launches).
        timing: this launch's wall seconds per stage on the main process (a timing field of the
            metrics, see ``seal.train.TIMING_FIELDS``).
        started: ``time.perf_counter()`` when the round's work began in this launch.
        tracking: the run's experiment trackers (``seal.tracking.Tracking``; None: none).
        helper: a helper process that takes chunks of the evaluations (``seal.helper``:
            ``seal microworld demo``'s second process); used by a single process only.
        loaded_from: the model settings and name or path :attr:`model` was loaded with.
    """

    recipe: Recipe
    run: RunDir
    index: int
    policy: str
    passages: list[Passage]
    dist: Dist
    console: Console
    bar: Progress
    model: PreTrainedModel | None = None
    tokenizer: PreTrainedTokenizerBase | None = None
    judge: Any = None
    journal: list[dict] = field(default_factory=list)
    timing: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    tracking: Any = None
    helper: Helper | None = None
    loaded_from: tuple[ModelConfig, str] | None = None

    @property
    def dir(self) -> Path:
        """``round_{index}/`` of the run directory."""
        return self.run.round_dir(self.index)

    @property
    def journal_file(self) -> Path:
        """The journal file this rank appends to."""
        return journal_path(self.run, self.dist.rank)

    def saved(self, path: Path, requires: Sequence[Path] = ()) -> Any:
        """A stage's result saved by an earlier launch: ``path``'s JSON, read by the main process
        and given to every rank; None when it or any of ``requires`` does not exist."""
        return self.dist.main_decides(lambda: read_json_or_none(path) if all(p.exists() for p in requires) else None)

    @functools.cached_property
    def task(self) -> Task:
        """The recipe's task (``seal.tasks``): its prompts, evaluations, grading, metrics and diagnostics."""
        return make_task(self.recipe)

    @property
    def sharded(self) -> bool:
        """The round's models are sharded over the ranks (``model.shard: fsdp`` with more than one
        process): every rank computes every unit in step, the main process records."""
        return self.recipe.model.shard != "none" and self.dist.distributed

    def share(self) -> str:
        """`` (rank 0's share of N)`` in progress descriptions when the ranks split the work, else empty."""
        return f" (rank 0's share of {self.dist.world_size})" if self.dist.distributed and not self.sharded else ""

    def record(self, row: dict) -> None:
        """Append a finished unit's journal row to this rank's journal file; with a sharded model
        only the main process does (every rank computed the same row)."""
        if self.dist.is_main or not self.sharded:
            append_jsonl(self.journal_file, row)

    def load_model(self, name_or_path: str) -> None:
        """Load ``name_or_path`` (the recipe's model settings, this rank's device) as the round's model.

        Sharded (:attr:`sharded`): loaded on the CPU, then split over the ranks by
        :func:`seal.sharding.shard_model`, each rank's shards on its own device.
        """
        device = self.recipe.model.device
        target = resolve_device(device).type
        if self.dist.distributed and target == "cuda":
            device = f"cuda:{self.dist.local_rank}"  # each rank's own GPU
        update = {"device": device}
        if self.sharded:
            # The whole model on the host; only this rank's shards go to its device, whose
            # type (not the host's) decides attn_implementation 'auto'.
            attn = resolve_attn_implementation(self.recipe.model.attn_implementation, resolve_device(device))
            update.update(device="cpu", attn_implementation=attn)
        cfg = self.recipe.model.model_copy(update=update)
        self.model, self.tokenizer = load_policy(cfg, name_or_path)
        self.loaded_from = (cfg, str(name_or_path))
        if self.sharded:
            self.model = shard_model(self.model, target)
            self.console.print(f"{name_or_path}: sharded over {self.dist.world_size} processes (FSDP2, model.shard: fsdp)")

    def unload_model(self) -> None:
        """Drop the round's model and free its memory."""
        self.model = self.tokenizer = self.loaded_from = None
        free_memory()


class AbstainingJudge:
    """The judge of a rank other than the main one when the model is sharded: every rank
    computes the same answers, the main process's records are the ones kept, so the others
    send no request to the judge's API and grade nothing (``None`` per item)."""

    def grade(self, items: list[tuple[str, str, str]]) -> list[float | None]:
        return [None] * len(items)


def run_stage(
    round_: Round,
    units: Sequence[Unit],
    compute: Callable[[Unit], dict[Key, Value]],
    finished: dict[Key, Value],
    unit_keys: Callable[[Unit], Iterable[Key]] = lambda unit: unit,
    progress: str | None = None,
) -> tuple[dict[Key, Value], list[int]]:
    """Compute the units of a stage not finished yet, spread over the ranks, and gather them.

    Units are fixed by the recipe (never by the number of processes); a unit is pending
    while any of its keys (``unit_keys``) is missing from ``finished`` and is then computed
    whole, so that it is computed exactly as in one uninterrupted process (``compute`` must
    leave out of its result, and its journal, the keys already finished). Pending units are
    dealt round-robin (``Dist.shard``); ``compute(unit)`` returns ``{key: value}``.
    ``progress`` names a progress task (advanced by ``len(unit)`` per unit).

    With a sharded model (:attr:`Round.sharded`) a forward pass is a collective, so every
    rank computes every pending unit, in the same order, and the main process's results
    are given to all (a judge over HTTP could answer two ranks differently).

    Returns:
        ``finished`` updated with every rank's results (a new dict), and how many results
        each rank computed (rank order; sharded: one count, the main process's, which every
        rank computed too).
    """
    dist = round_.dist
    pending = [unit for unit in units if any(key not in finished for key in unit_keys(unit))]
    mine = pending if round_.sharded else dist.shard(pending)
    task = None
    if progress is not None:
        description = f"round {round_.index}: {progress}{round_.share()}"
        if dist.distributed and not round_.sharded:
            task = round_.bar.add_task(description, total=sum(len(u) for u in mine))
        else:
            total = sum(len(u) for u in units)
            task = round_.bar.add_task(description, total=total, completed=total - sum(len(u) for u in pending))
    new: dict[Key, Value] = {}
    for unit in mine:
        new.update(compute(unit))
        if task is not None:
            round_.bar.advance(task, len(unit))
    done = dict(finished)
    per_rank = []
    for part in [dist.broadcast(new)] if round_.sharded else dist.gather(new):
        done.update(part)
        per_rank.append(len(part))
    return done, per_rank


def timed(name: str):
    """Decorator: record the stage's wall seconds as ``round_.timing[name]``."""

    def wrap(stage):
        @functools.wraps(stage)
        def run(round_: Round, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return stage(round_, *args, **kwargs)
            finally:
                round_.timing[name] = time.perf_counter() - t0

        return run

    return wrap


# ----------------------------------------------------------------------------- opening and closing


def finished_round(round_: Round) -> str | None:
    """The next policy of a round finished in an earlier launch (``round_k/metrics.json``
    exists; ``metrics.jsonl`` is rebuilt), or None."""
    metrics = round_.saved(round_.dir / "metrics.json")
    if metrics is None:
        return None
    reused = resolve_policy(round_.run, metrics["next_policy"])
    round_.console.print(f"round {round_.index}: finished earlier, reusing its policy ({reused})")
    if round_.dist.is_main:
        write_metrics_jsonl(round_.run)
    return reused


def open_round(round_: Round) -> None:
    """Seed the round, make its judge, read its journal records (main process) and end this
    rank's journal file on a whole line. Loads no model (:func:`load_writer`)."""
    round_.started = time.perf_counter()
    seed_everything(derive_seed(round_.recipe.seed, "round", round_.index))
    round_.judge = make_judge(round_.recipe.qa)
    if round_.judge is not None and round_.sharded and not round_.dist.is_main:
        round_.judge = AbstainingJudge()  # the main process's grades are the ones kept (run_stage)
    round_.journal = round_.dist.main_decides(lambda: [row for row in read_journal(round_.run) if row.get("round") == round_.index])
    seal_partial_line(round_.journal_file)  # before this rank appends to its file


# ----------------------------------------------------------------------------- the round's models


def load_writer(round_: Round) -> None:
    """Load the round's policy (:attr:`Round.policy`), the model that writes its self-edits."""
    round_.load_model(round_.policy)


def load_learner(round_: Round) -> None:
    """Make the model loaded now the round's learner (the model the inner loop adapts and that
    answers): with ``inner.learner: base`` and a policy other than the recipe's model, the
    policy only writes and the round-0 model learns and answers (teacher-student), so it
    replaces the policy; otherwise the policy is the learner and stays. Loads it when none is."""
    recipe = round_.recipe
    learner = recipe.model.name_or_path if recipe.inner.learner == "base" else round_.policy
    if round_.model is not None and str(learner) == str(round_.policy):
        return
    round_.unload_model()
    round_.load_model(learner)


def free_models(round_: Round) -> None:
    """Release the round's models once its evaluations are scored (the policy update loads its own)."""
    round_.unload_model()


# ----------------------------------------------------------------------------- 1. self-edits


@timed("self_edits_s")
def sample_stage(round_: Round) -> list[list[SelfEdit]]:
    """Step 1: ``self_edit.k`` self-edits per passage from the round's policy, sampled once and
    saved (``round_k/self_edits.json``, reused on resume). Units: chunks of
    ``self_edit.batch_size`` passages (each seeded from the recipe seed, the round and its
    first passage's index; with ``self_edit.backend: vllm`` each passage from its own index,
    ``seal.vllm_backend``)."""
    recipe, passages, config = round_.recipe, round_.passages, round_.recipe.self_edit
    hint = round_.task.self_edit_hint()
    path = round_.dir / "self_edits.json"
    saved = round_.saved(path)
    if saved is not None:
        return self_edits_from_json(saved, passages, config.template, round_.tokenizer, config.chat_template, hint)

    sampler = None
    if config.backend == "vllm":  # seal.vllm_backend: one engine on the round's policy, torn down below
        sampler = VLLMSampler(round_.policy, config.vllm, recipe.model.dtype, recipe.model.trust_remote_code, recipe.seed)
        stop_ids = stop_token_ids(round_.model.generation_config.eos_token_id, round_.tokenizer)

    def draw(unit: list[int], seed: int) -> list[list[SelfEdit]]:
        if sampler is not None:
            return sampler.generate([passages[i] for i in unit], unit, round_.tokenizer, config, seed, stop_ids, hint=hint)
        return generate_self_edits(round_.model, round_.tokenizer, [passages[i] for i in unit], config, seed, passage_indices=unit, hint=hint)

    def sample(unit: list[int]) -> dict[int, list[SelfEdit]]:
        seed = derive_seed(recipe.seed, "round", round_.index)
        drawn = draw(unit, seed)
        drawn = round_.task.resample_self_edits(drawn, lambda tasks, attempt: draw([unit[t] for t in tasks], derive_seed(seed, "resample", attempt)))
        return dict(zip(unit, drawn, strict=True))

    n = len(passages)
    units = [list(range(s, min(s + config.batch_size, n))) for s in range(0, n, config.batch_size)]
    try:
        done, _ = run_stage(round_, units, sample, {}, progress="sampling self-edits")
    finally:
        if sampler is not None:
            sampler.close()  # GPU memory back before the baselines and the inner loop
    self_edits = [done[i] for i in range(n)]
    if round_.dist.is_main:
        write_json_atomic(path, self_edits_to_json(passages, self_edits))
    return self_edits


# ----------------------------------------------------------------------------- 2. baselines


def baseline_chunks(passages: list[Passage], max_questions: int, n_prompts: Callable[[Passage], int] = n_prompts) -> list[list[int]]:
    """Consecutive passages grouped so a chunk has at most ``max_questions`` questions (prompts,
    ``n_prompts(passage)``: the task's, which may ask a question as several; at least one
    passage): one batched generation each, the same whatever the process count."""
    chunks: list[list[int]] = []
    current: list[int] = []
    n_questions = 0
    for i, passage in enumerate(passages):
        if current and n_questions + n_prompts(passage) > max_questions:
            chunks.append(current)
            current, n_questions = [], 0
        current.append(i)
        n_questions += n_prompts(passage)
    if current:
        chunks.append(current)
    return chunks


@timed("baselines_s")
def baselines_stage(round_: Round) -> list[BaselineRecord]:
    """Step 2: the baseline record (answers, scores, accuracy) of every passage, in passage
    order, journaled once per round, by the learner (:func:`load_learner`). Units:
    :func:`baseline_chunks` of ``qa.batch_size`` questions.
    """
    recipe, passages = round_.recipe, round_.passages
    finished = {row["passage"]: BaselineRecord.from_json(row) for row in round_.journal if row.get("kind") == "baseline"}

    def answer(unit: list[int]) -> dict[int, BaselineRecord]:
        rows = baselines(round_.model, round_.tokenizer, [passages[i] for i in unit], recipe.qa, round_.judge, round_.task)
        new = {}
        for i, row in zip(unit, rows, strict=True):
            if i not in finished:
                key = {"kind": "baseline", "round": round_.index, "passage": i}
                new[i] = BaselineRecord(key=key, passage_id=passages[i].id, **row)
                round_.record(new[i].to_json())
        return new

    done, _ = run_stage(round_, baseline_chunks(passages, recipe.qa.batch_size, round_.task.n_prompts), answer, finished)
    return [done[i] for i in range(len(passages))]


# ----------------------------------------------------------------------------- 3. evaluations


def round_evaluations(round_: Round, self_edits: list[list[SelfEdit]], baseline_records: list[BaselineRecord]) -> list[Evaluation]:
    """Every (passage, self-edit, repetition) of the round, in identity order, built by the
    task (``Task.evaluation``: training texts, settings) with its adapter seed, baseline
    accuracy and whether its self-edit was truncated."""
    recipe, passages, task = round_.recipe, round_.passages, round_.task
    return [
        replace(
            task.evaluation(
                key=RoundKey(round_.index, p, e, repetition),
                passage=passages[p],
                completion=self_edit.text,
                seed=derive_seed(recipe.seed, "adapter", round_.index, p, e, repetition),
                baseline_accuracy=baseline_records[p].accuracy,
            ),
            truncated=self_edit.truncated,
        )
        for p in range(len(passages))
        for e, self_edit in enumerate(self_edits[p])
        for repetition in range(recipe.inner.eval_times)
    ]


def scorer(round_: Round) -> Scorer:
    """The round's :class:`seal.scoring.Scorer`: its learner, task and judge, each record
    journaled to this rank's file (:meth:`Round.record`), a failed chunk retried in halves."""
    recipe = round_.recipe
    return Scorer(
        round_.model, round_.tokenizer, recipe.inner, recipe.qa, round_.task, round_.judge,
        journal=lambda record: round_.record(record.to_json()), retry_in_halves=True, console=round_.console,
    )  # fmt: skip


@timed("evaluations_s")
def evaluations_stage(round_: Round, self_edits: list[list[SelfEdit]], baseline_records: list[BaselineRecord]) -> list[EvaluationRecord]:
    """Step 3: the record of every evaluation (identity order), those not journaled yet
    computed now (:class:`seal.scoring.Scorer`: chunks of ``inner.batch_adapters``, dealt to
    the ranks by :func:`run_stage`, retried in halves on failure). Then the main process
    merges the round's journal files, and failures are reported."""
    finished = {
        RoundKey.id_of(row): EvaluationRecord.from_json(row) for row in round_.journal if row.get("kind") == "evaluation"
    }

    def deal(chunks, score_chunk):
        done, round_.timing["evaluations_computed_by_rank"] = run_stage(
            round_, chunks, score_chunk, {}, unit_keys=lambda chunk: [evaluation.key.id for evaluation in chunk], progress="inner-loop evaluations"
        )  # fmt: skip
        return done

    evaluations = round_evaluations(round_, self_edits, baseline_records)
    share = None
    if round_.helper is not None and not round_.dist.distributed and not round_.sharded:
        share = round_.helper.share(round_.recipe, *round_.loaded_from)
    if share is not None:  # the helper process takes chunks too (seal.helper); same records
        task = round_.bar.add_task(f"round {round_.index}: inner-loop evaluations (with a helper process)", total=len(evaluations))
        records = replace(scorer(round_), share=share, progress=lambda k: round_.bar.advance(task, k)).score(evaluations, finished)
        round_.timing["evaluations_computed_by_helper"] = share.helped
    else:
        records = scorer(round_).score(evaluations, finished, deal)
    if round_.dist.is_main:
        merge_journal(round_.run, [record.to_json() for record in [*baseline_records, *records]])
    round_.dist.barrier()
    failures = Counter(record.error for record in records if record.error is not None)
    if failures:
        listed = "; ".join(f"{n} x {reason}" for reason, n in failures.most_common(5))
        round_.console.print(f"[yellow]round {round_.index}: {sum(failures.values())} of {len(records)} evaluations failed[/] ({listed})")
    return records


def check_round_usable(round_: Round, records: list[EvaluationRecord]) -> None:
    """Stop the run when the round has no usable evaluation: every one failed, or had no
    reward because nothing was graded (a judge answering 401, or unreachable). Learning from
    such a round is impossible, and the next rounds would repeat it. With ``rl.keep_going``
    the round goes on (nothing is kept from it) after a warning.

    Raises:
        RoundFailedError: the summary of the reasons (failures by reason, ungraded answers, the
            judge's last error), the run directory, and what to do.
    """
    if not records or any(record.error is None and record.reward is not None for record in records):
        return
    failures = Counter(record.error for record in records if record.error is not None)
    parts = []
    if failures:
        listed = "; ".join(f"{n} x {reason}" for reason, n in failures.most_common(3))
        parts.append(f"{sum(failures.values())} failed ({listed})")
    ungraded = [record for record in records if record.error is None]
    if ungraded:
        n_answers = sum(len(record.scores) for record in ungraded)
        why = getattr(round_.judge, "last_error", None)
        parts.append(f"{len(ungraded)} had no reward, none of their {n_answers} answers graded" + (f" (judge: {why})" if why else ""))
    summary = f"round {round_.index}: no usable evaluation of {len(records)}: {', '.join(parts)}"
    if round_.recipe.rl.keep_going:
        round_.console.print(f"[bold yellow]{summary}; going on (rl.keep_going)[/]")
        return
    raise RoundFailedError(
        f"{summary}. The evaluations are journaled in {round_.run.path}; fix the cause and start a new run, "
        f"or go on regardless with --resume {round_.run.path} rl.keep_going=true"
    )


# ----------------------------------------------------------------------------- 4. selection


@dataclass
class Selection:
    """The ReST-EM E-step's outcome.

    Attributes:
        rewards: passage index -> mean reward per self-edit over its repetitions (None: all failed).
        kept: passage index -> kept self-edit indices, best first (``restem.select_best``, or
            ``restem.curate`` with ``rl.curation`` other than ``gain``).
        rows: the ``{prompt, completion}`` SFT rows of the kept self-edits.
    """

    rewards: dict[int, list[float | None]]
    kept: dict[int, list[int]]
    rows: list[dict]


def self_edit_rewards(records: list[EvaluationRecord], n_edits: list[int]) -> dict[int, list[float | None]]:
    """Mean reward per (passage, self-edit) over its repetitions: passage -> one per self-edit."""
    by_self_edit = defaultdict(list)
    for record in records:
        by_self_edit[record.identity[:2]].append(record.reward)
    return {p: [mean_reward(by_self_edit[(p, e)]) for e in range(n)] for p, n in enumerate(n_edits)}


def all_failed(records: list[EvaluationRecord]) -> set[tuple[int, int]]:
    """The (passage, self-edit) pairs whose every evaluation (repetition) failed."""
    outcomes = defaultdict(list)
    for record in records:
        outcomes[record.identity[:2]].append(record.error is not None)
    return {pair for pair, errors in outcomes.items() if all(errors)}


def selection_stage(round_: Round, self_edits: list[list[SelfEdit]], records: list[EvaluationRecord]) -> Selection:
    """Step 4: keep the best self-edit(s) per passage (by reward, or by ``rl.curation``'s
    scores: ``seal.restem.curate``) and write ``round_k/sft_rows.jsonl`` (with
    ``rl.curation`` other than ``gain``, each row also records its ``curation`` scores; the
    policy update learns from prompt and completion only)."""
    config = round_.recipe.rl
    rewards = self_edit_rewards(records, [len(edits) for edits in self_edits])
    texts = {p: [e.text for e in edits] for p, edits in enumerate(self_edits)}
    # A self-edit whose every evaluation failed is never kept, whatever inner.failure_reward
    # gives it (with rl.keep_regardless its reward could otherwise win): no candidate.
    failed = all_failed(records)
    candidates = {p: [None if (p, e) in failed else r for e, r in enumerate(rs)] for p, rs in rewards.items()}
    if config.curation == "gain":
        kept = select_best(candidates, config.k_best, config.reward_threshold, config.keep_regardless)
    else:
        scores = {p: curation_scores(round_.passages[p], texts[p], candidates[p], round_.task.diagnostics) for p in texts}
        kept = curate(scores, config.curation, config.curation_weights, config.k_best, config.reward_threshold, config.keep_regardless)
    prompts = {p: edits[0].prompt for p, edits in enumerate(self_edits) if edits}
    rows = sft_rows(prompts, texts, kept)
    if round_.dist.is_main:
        recorded = rows
        if config.curation != "gain":  # each row with the scores it was kept by
            pairs = [(p, i) for p in sorted(kept) for i in kept[p]]  # sft_rows' order
            recorded = [row | {"curation": scores[p][i]} for row, (p, i) in zip(rows, pairs, strict=True)]
        write_jsonl_atomic(round_.dir / "sft_rows.jsonl", recorded)
    return Selection(rewards, kept, rows)


# ----------------------------------------------------------------------------- 5. policy update


def _unset_deepspeed() -> None:
    """Drop transformers' global DeepSpeed config left by the SFT's TrainingArguments, so the
    next round's plain ``from_pretrained`` is not partitioned by ZeRO-3."""
    try:  # here: the module's place differs between transformers versions
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    except Exception:  # pragma: no cover - older transformers
        pass


def policy_update_stage(round_: Round, rows: list[dict]) -> tuple[dict | None, str]:
    """Step 5: LoRA-SFT the policy on ``rows`` and merge (all ranks train, the main one merges
    and writes ``round_k/policy`` then ``round_k/sft.json``, which marks it finished and is
    reused on resume). Returns the SFT statistics (None: no rows, no update) and the next policy.

    ``rl.save``: ``merged`` writes ``round_k/policy``; ``adapter`` only ``round_k/adapter``, the
    round's LoRA as an adapter chain (``seal.models.write_adapter_chain``), which is then the
    next policy; ``both`` the two, the merged one being the next policy."""
    recipe, console, round_index = round_.recipe, round_.console, round_.index
    save = recipe.rl.save
    merged, adapter = round_.dir / "policy", round_.dir / "adapter"  # rl.save: which of the two are written
    written = {"merged": [merged], "adapter": [adapter], "both": [adapter, merged]}[save]
    next_policy = written[-1]  # both: the next round loads the merged one (no merging to do)
    sft_path = round_.dir / "sft.json"
    saved = round_.saved(sft_path, requires=written)
    if not rows:
        console.print(f"round {round_index}: no self-edit cleared the threshold; the policy is unchanged")
        return None, str(round_.policy)
    if saved is not None:
        console.print(f"round {round_index}: reusing the policy update finished earlier ({next_policy})")
        return saved, str(next_policy)
    console.print(f"round {round_index}: ReST-EM policy update on {len(rows)} self-edits")
    # Seed here, not only inside the trainer: LoRA initialisation draws from the global
    # generator, whose state would otherwise depend on what this process did before.
    seed_everything(derive_seed(recipe.seed, "sft", round_index))
    work = round_.dir / ".policy.sft"
    tracking = round_.tracking or Tracking([])
    with tracking.for_trainer(f"sft/round_{round_index}") as report_to:
        sft_stats = update_policy(
            round_.policy, rows, recipe.rl.sft, merged, seed=derive_seed(recipe.seed, "sft", round_index) % 2**32,  # HF set_seed: 32 bits
            model_config=recipe.model, work_dir=work,
            save=save, adapter_out=adapter, world_size=round_.dist.world_size,
            report_to=report_to, callbacks=[trainer_progress(round_.bar, f"round {round_index}: policy update (SFT steps)")],
        )  # fmt: skip
    _unset_deepspeed()
    free_memory()
    round_.timing["sft_s"] = sft_stats.get("seconds")
    if round_.dist.is_main:
        write_json_atomic(sft_path, sft_stats)  # after the merged policy: marks it finished
        shutil.rmtree(work, ignore_errors=True)
    round_.dist.barrier()
    return sft_stats, str(next_policy)


# ----------------------------------------------------------------------------- 6. diagnostics


@timed("diagnostics_s")
def diagnostics_stage(round_: Round, self_edits: list[list[SelfEdit]], selection: Selection) -> dict | None:
    """Step 6: what the round's self-edits teach (``seal.diagnostics``): diversity, format
    shares, coverage of the passage's facts and its relation to the reward, and a collapse
    warning against the thresholds and the previous round's diagnostics. Read-only; None when
    ``diagnostics.enabled`` is off. With hyperparameter self-edits on, a self-edit's block is
    left out (the text before its marker line is what it teaches)."""
    config = round_.recipe.diagnostics
    if not config.enabled:
        return None
    space = round_.recipe.self_edit.hparams
    texts = [[split_block(e.text, space.marker)[0] if space.enabled else e.text for e in edits] for edits in self_edits]
    diagnostics = round_diagnostics(
        round_.passages, texts, domain=round_.task.diagnostics,
        rewards=[selection.rewards[p] for p in range(len(self_edits))], kept=selection.kept, max_pairs=config.max_pairs,
    )  # fmt: skip
    previous = round_.saved(round_.run.round_dir(round_.index - 1) / "metrics.json") if round_.index > 0 else None
    first = round_.saved(round_.run.round_dir(0) / "metrics.json") if round_.index > 0 else None
    diagnostics["collapse_warning"] = collapse_warning(
        diagnostics, (previous or {}).get("diagnostics"), config.min_distinct_2, config.max_diversity_drop,
        config.max_format_share, (first or {}).get("diagnostics"),
    )  # fmt: skip
    return diagnostics


# ----------------------------------------------------------------------------- 7. metrics


def round_metrics(
    round_: Round,
    self_edits: list[list[SelfEdit]],
    baseline_records: list[BaselineRecord],
    records: list[EvaluationRecord],
    selection: Selection,
    sft_stats: dict | None,
    next_policy: str,
    diagnostics: dict | None = None,
) -> dict:
    """A round's summary (``round_k/metrics.json``, a line of ``metrics.jsonl``).

    Accuracies and rewards are fractions in [0, 1] (rewards in [-1, 1]); ``baseline_accuracy``
    and ``adapter_accuracy`` are means over passages / evaluations that could be graded;
    ``mean_reward`` over evaluations with a reward; ``best_of_k_reward`` the mean over
    passages of the best self-edit's mean reward. ``n_failed`` / ``failures`` count failed
    evaluations (by reason), ``n_ungraded`` the evaluations' questions the grader could not
    grade, ``n_truncated_self_edits`` the self-edits cut off by ``self_edit.max_new_tokens``.
    ``sft`` is the policy update's ``{train_loss, steps, seconds, rows, grad_accum_steps}`` (None: no update).
    ``diagnostics`` (when given): :func:`diagnostics_stage`'s block, ``collapse_warning``
    (None or the reason) included; ``seal.diagnostics.round_diagnostics`` defines its fields.
    Timing fields: see ``seal.train.TIMING_FIELDS``. With hyperparameter self-edits on,
    ``hparams`` is :func:`seal.hparams.round_summary`: the settings chosen by all self-edits
    and by the kept ones (geometric mean lr, mean epochs, shares of loss_on and lora_rank).
    The task's own entries come first (``seal.tasks.base.Task.round_metrics``; task arc:
    ``arc``, resampled configurations and untrained adapters).
    """
    adapter_accuracies = [record.adapter_accuracy for record in records if record.adapter_accuracy is not None]
    best = [max(v for v in rs if v is not None) for rs in selection.rewards.values() if any(v is not None for v in rs)]
    eval_seconds = [record.seconds for record in records]
    baseline_accuracies = [record.accuracy for record in baseline_records if record.accuracy is not None]
    failures = Counter(record.error for record in records if record.error is not None)
    extra = dict(round_.task.round_metrics(self_edits, records))
    if round_.recipe.self_edit.hparams.enabled:
        # Per self-edit (its repetitions share the settings): what the policy chose, and what was kept.
        chosen = {record.identity[:2]: record.hparams for record in records}
        extra["hparams"] = hparams_round_summary(chosen, selection.kept)
    return {
        "round": round_.index,
        "policy": portable_path(round_.run, round_.policy),
        "n_passages": len(round_.passages),
        "n_evaluations": len(records),
        "n_failed": sum(failures.values()),
        "failures": dict(sorted(failures.items())),
        "n_ungraded": sum(s is None for record in records for s in record.scores),
        "n_truncated_self_edits": sum(e.truncated for edits in self_edits for e in edits),
        "baseline_accuracy": fmean(baseline_accuracies) if baseline_accuracies else None,
        "adapter_accuracy": fmean(adapter_accuracies) if adapter_accuracies else None,
        "mean_reward": mean_reward([record.reward for record in records]),
        "best_of_k_reward": fmean(best) if best else None,
        "n_kept": sum(len(v) for v in selection.kept.values()),
        "sft": sft_stats,
        "seconds_per_evaluation": fmean(eval_seconds) if eval_seconds else None,
        "seconds": time.perf_counter() - round_.started,
        "next_policy": portable_path(round_.run, next_policy),
        "timing": round_.timing,
        **extra,
    } | ({"diagnostics": diagnostics} if diagnostics is not None else {})


def write_metrics_jsonl(run: RunDir) -> None:
    """``metrics.jsonl``: one line per finished round, rebuilt atomically from ``round_k/metrics.json``
    (so a crash between the two writes can neither lose nor duplicate a line)."""
    rows = []
    for path in run.path.glob("round_*/metrics.json"):
        try:
            rows.append(read_json(path))
        except (OSError, ValueError):
            continue
    write_jsonl_atomic(run.metrics, sorted(rows, key=lambda m: m["round"]))


def metrics_stage(round_: Round, metrics: dict) -> None:
    """Step 7: write ``round_k/metrics.json`` (which marks the round finished) and
    ``metrics.jsonl``, and print the round's summary line, its diagnostics' line and any
    collapse warning."""
    if round_.dist.is_main:
        write_json_atomic(round_.dir / "metrics.json", metrics)
        write_metrics_jsonl(round_.run)
    round_.dist.barrier()
    round_.console.print(
        f"round {round_.index}: baseline {percent(metrics['baseline_accuracy'])}, adapted {percent(metrics['adapter_accuracy'])}, "
        f"mean reward {percent(metrics['mean_reward'], points=True)}, best-of-k {percent(metrics['best_of_k_reward'], points=True)}, "
        f"kept {metrics['n_kept']}, failed {metrics['n_failed']}, ungraded {metrics['n_ungraded']}, {metrics['seconds']:.0f} s"
    )
    message = round_.task.round_message(round_.index, metrics)
    if message:
        round_.console.print(message)
    diagnostics = metrics.get("diagnostics")
    if diagnostics is not None:
        round_.console.print(f"round {round_.index}: self-edits: {summary_line(diagnostics)}", highlight=False)
        if diagnostics["collapse_warning"]:
            round_.console.print(f"[bold yellow]round {round_.index}: collapse warning: {diagnostics['collapse_warning']}[/]")
