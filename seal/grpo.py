"""``seal train`` with ``rl.algorithm: grpo | rloo``: TRL trains the policy, seal's inner loop is the reward.

Not the paper's algorithm: SEAL trains its policy with ReST-EM (paper Section 3.1,
``seal.train.run_round``). Here the same reward drives an on-policy RL update instead:
TRL's ``GRPOTrainer`` (Shao et al. 2024, group-relative advantages) or ``RLOOTrainer``
(leave-one-out baselines), https://huggingface.co/docs/trl/grpo_trainer. TRL samples and
updates; seal only scores. No policy-gradient code lives here.

One step, reading top to bottom:

1. TRL samples ``rl.grpo.num_generations`` completions (self-edits) for each of
   ``rl.grpo.prompts_per_step`` passages from the policy (the recipe's model with a LoRA
   adapter, ``rl.grpo.lora``); the passage reaches the reward through the dataset's
   ``passage`` column (its index in the training passages);
2. :class:`InnerLoopReward` scores the whole generation batch at once: each completion ->
   training texts -> ``inner.eval_times`` fresh LoRA adapters, trained ``inner.batch_adapters``
   at a time by the batched inner loop -> no-passage QA -> reward = mean accuracy gain over
   the passage's baseline (``seal.scoring.score_evaluations``, as ReST-EM's evaluations);
3. TRL turns the group's rewards into advantages and takes one optimizer step.

The learner is fixed: ``inner.learner: base`` is required (``seal.config.Recipe`` refuses
otherwise), so the un-adapted model's baseline per passage is computed once, by ReST-EM's
``baselines_stage``, and journaled. (With ``learner: policy`` the learner would change at
every optimizer step and every baseline with it.) The policy being trained and the learner
are two models in memory.

Run directory (the same files as ReST-EM, plus TRL's)::

    config.yaml, run.json     the resolved recipe, versions, launches
    journal.jsonl             baselines ({"kind": "baseline", "round": 0, "passage"}) and one
                              line per evaluation, appended as soon as it is graded:
                              {"kind": "evaluation", "step" (0-based: the optimizer step
                              whose batch it scores), "passage", "self_edit" (the
                              completion's index in its group), "repetition", "completion"
                              (hash of the text: the key), "completion_text" (the text),
                              ...the fields of seal.scoring.EvaluationRecord}
    metrics.jsonl             a line per logging step ("step": optimizer steps done, "steps":
                              the 0-based steps it covers): mean reward and its std, KL (TRL's,
                              when rl.grpo.beta > 0), loss, evaluations computed / read back,
                              and seal.diagnostics of the step's completions
    grpo/checkpoint-N/        TRL checkpoints (adapter, optimizer, RNG) every rl.grpo.save_steps
    grpo/policy/              the merged final policy (rl.save: merged, both); grpo/train.json marks it finished
    grpo/adapter/             the final policy as an adapter chain (rl.save: adapter, both)
    final.json                {"policy": "grpo/policy", "algorithm", "steps"}

Resume (``seal train --resume RUN_DIR``): TRL continues from the last whole checkpoint
(its optimizer, scheduler and RNG state); metrics lines after that step are dropped and
rewritten; the reward function reads every evaluation already in the journal (same step,
passage, completion index, repetition and text) instead of recomputing it. TRL restores
the RNG state, so on the same machine the resumed run samples the same completions and
reuses their journaled rewards; a completion whose text differs is a new key and is scored.
With ``rl.grpo.logging_steps > 1`` the first metrics line after a resume covers only the
steps since the checkpoint.

Many processes (``accelerate launch --num_processes N``, or torchrun): TRL runs data-parallel,
each process sampling a contiguous share of the step's ``prompts_per_step x num_generations``
completions (a group may straddle two processes) and calling the reward with its share.
:class:`InnerLoopReward` gathers every process's completions, builds the step's evaluations
exactly as one process would (same keys, same adapter seeds), deals their
``inner.batch_adapters`` chunks round-robin to the processes (``seal.stages.run_stage``, as
ReST-EM's evaluations), gathers the records and hands TRL each process's share of the
rewards (TRL gathers those itself for the group advantages). Every process journals what it
computed to its own file (``journal.rank{r}.jsonl``, crash-safe), the main process copies
the other processes' records into ``journal.jsonl`` after each step (the rank files are then
removed) and rewrites it merged, in identity order, at the end; only the main process writes
``metrics.jsonl``, checkpoints and the merged policy. A step is still ``prompts_per_step x
num_generations`` completions (gradient accumulation shrinks by the number of processes,
which must divide it together with ``rl.grpo.batch_size``). What differs from one process:
the completions themselves, since each process samples its share with its own generator
(TRL seeds every process alike, and a batch's draws depend on its rows), so the texts,
rewards and policy differ from a 1-process run's; given the same completions the rewards
are the same record for record (``tests/test_grpo.py``). A resume should use the same
number of processes (TRL restores each process's RNG state).

Differences from ReST-EM to keep in mind: a completion's reward is 0
when none of its evaluations has a reward (all failed with ``inner.failure_reward: null``,
or nothing could be graded); ``rl.grpo.steps x prompts_per_step x num_generations x
inner.eval_times`` evaluations in all.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, pstdev

from rich.console import Console
from rich.progress import Progress

from seal.config import Recipe, RecipeError
from seal.data import Passage
from seal.diagnostics import collapse_warning, round_diagnostics, summary_line
from seal.display import percent
from seal.distributed import Dist
from seal.inner_loop import adapter_chunks
from seal.journal import journal_key, merge_journal, read_journal
from seal.models import load_policy, peft_lora_config, write_adapter_chain
from seal.prompts import self_edit_prompt
from seal.rewards import mean_reward
from seal.rundir import (
    RunDir,
    append_jsonl,
    atomic_dir,
    portable_path,
    read_json_or_none,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
)
from seal.scoring import (
    BaselineRecord,
    Evaluation,
    EvaluationRecord,
    score_evaluations,
)
from seal.seeding import derive_seed, seed_everything
from seal.stages import Round, baselines_stage, open_round, run_stage
from seal.tasks.registry import Task
from seal.tracking import Tracking


def completion_hash(text: str) -> str:
    """A completion's identity in the journal: the first 16 hex digits of its text's SHA-1."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def step_evaluations(
    task: Task, passages: list[Passage], baselines: list[BaselineRecord], step: int, passage_indices: list[int], texts: list[str]
) -> list[Evaluation]:
    """The evaluations of one step's completions: ``inner.eval_times`` per completion, in
    completion order (so a group's evaluations are consecutive, like a ReST-EM passage's).

    A completion's ``self_edit`` index is its place among the step's completions of the same
    passage (0 .. num_generations - 1). Its key holds the text's hash (:func:`completion_hash`,
    part of the identity) and the text itself (``completion_text``, so samples can be read
    back). Built by the task (``Task.evaluation``), ReST-EM's
    builder (training texts, ``self_edit.hparams`` blocks, task arc's configurations), with the adapter seed of
    ``stages.round_evaluations``, the step in the round's place: GRPO's step s scores a text
    exactly as ReST-EM's round s scores it as that self-edit.
    """
    recipe = task.recipe
    place: Counter[int] = Counter()
    out = []
    for p, text in zip(passage_indices, texts, strict=True):
        e = place[p]
        place[p] += 1
        for repetition in range(recipe.inner.eval_times):
            key = {
                "kind": "evaluation", "step": step, "passage": p, "self_edit": e, "repetition": repetition,
                "completion": completion_hash(text), "completion_text": text,
            }  # fmt: skip
            out.append(
                task.evaluation(
                    key=key, passage=passages[p], completion=text,
                    seed=derive_seed(recipe.seed, "adapter", step, p, e, repetition), baseline_accuracy=baselines[p].accuracy,
                )  # fmt: skip
            )
    return out


@dataclass
class StepScores:
    """What one step's reward call saw, for the metrics (all lists in completion order).

    Attributes:
        passages: each completion's passage index; texts: the completions (stripped).
        rewards: each completion's reward (mean gain over its repetitions, 0 when none).
        computed: evaluations scored now; reused: read from the journal; failed: with an error.
    """

    passages: list[int]
    texts: list[str]
    rewards: list[float]
    computed: int
    reused: int
    failed: int


class InnerLoopReward:
    """A TRL reward function (https://huggingface.co/docs/trl/grpo_trainer, "custom reward
    functions"): called with the generation batch's ``prompts``, ``completions``,
    ``completion_ids``, the dataset's extra columns (``passage``) and ``trainer_state``;
    returns one float per completion.

    Scoring goes through ``seal.scoring.score_evaluations`` (the batched multi-adapter inner
    loop, chunks of ``inner.batch_adapters``, a failed chunk retried in halves) on the round's
    learner; each record is appended to the journal as soon as its chunk is graded, and
    evaluations already in the journal (``finished``, by ``seal.journal.journal_key``) are
    read, not recomputed.
    """

    __name__ = "inner_loop_gain"  # TRL names a reward function's metrics by it

    def __init__(self, round_: Round, baselines: list[BaselineRecord], finished: dict[tuple, EvaluationRecord]):
        self.round = round_
        self.baselines = baselines
        self.finished = finished
        self.steps: dict[int, StepScores] = {}

    def __call__(self, prompts, completions, passage, trainer_state=None, completion_ids=None, **_) -> list[float]:
        step = trainer_state.global_step if trainer_state is not None else 0
        texts = [str(c).strip() for c in completions]
        eos = self.round.tokenizer.eos_token_id
        cut = [eos not in ids for ids in completion_ids] if completion_ids is not None else [False] * len(texts)
        # Under many processes this process holds a contiguous share of the step's completions
        # (TRL gathers the rewards in process order): put the whole step back together, so that
        # keys, seeds and chunks are one process's; this process returns its share.
        dist = self.round.dist
        shares = dist.gather((list(passage), texts, cut))
        start = sum(len(share[0]) for share in shares[: dist.rank])
        passage = [p for share in shares for p in share[0]]
        texts_all = [t for share in shares for t in share[1]]
        cut = [c for share in shares for c in share[2]]
        evaluations = step_evaluations(self.round.task, self.round.passages, self.baselines, step, passage, texts_all)
        records, computed = self.score(evaluations, cut)
        per = self.round.recipe.inner.eval_times
        rewards = [mean_reward([r.reward for r in records[i * per : (i + 1) * per]]) for i in range(len(texts_all))]
        # TRL needs a number: a self-edit whose evaluations all failed with inner.failure_reward
        # unset (None, left out of ReST-EM's selection) counts as no gain here.
        rewards = [0.0 if r is None else float(r) for r in rewards]
        failed = sum(r.error is not None for r in records)
        self.steps[step] = StepScores(passage, texts_all, rewards, computed, len(records) - computed, failed)
        return rewards[start : start + len(texts)]

    def score(self, evaluations: list[Evaluation], cut: list[bool]) -> tuple[list[EvaluationRecord], int]:
        """The records of ``evaluations`` (same order), those not in the journal computed and
        journaled now; and how many were computed. ``cut[i]``: completion i was truncated.

        Every process calls it with the same ``evaluations``: the pending ones, in chunks of
        ``inner.batch_adapters``, are dealt round-robin to the processes and the records
        gathered (``seal.stages.run_stage``; one process: all chunks here, in order)."""
        round_, per = self.round, self.round.recipe.inner.eval_times
        truncated = {journal_key(e.key): cut[i // per] for i, e in enumerate(evaluations)}
        pending = [e for e in evaluations if journal_key(e.key) not in self.finished]
        recipe = round_.recipe
        here: set[tuple] = set()  # computed (and journaled) by this process

        def compute(chunk: list[Evaluation]) -> dict[tuple, EvaluationRecord]:
            new = {}

            def journal(record: EvaluationRecord) -> None:
                record.truncated = truncated[journal_key(record.key)]
                round_.record(record.to_json())
                new[journal_key(record.key)] = record

            score_evaluations(
                round_.model, round_.tokenizer, chunk, recipe.inner, recipe.qa, round_.judge, on_record=journal,
                retry_in_halves=True, console=round_.console, task=round_.task,
            )  # fmt: skip
            here.update(new)
            return new

        chunks = adapter_chunks(pending, recipe.inner.batch_adapters)
        done, _ = run_stage(round_, chunks, compute, self.finished, unit_keys=lambda chunk: [journal_key(e.key) for e in chunk])
        collect_journals(round_, [done[journal_key(e.key)] for e in pending if journal_key(e.key) not in here])
        self.finished.update(done)
        return [self.finished[journal_key(e.key)] for e in evaluations], len(pending)


def collect_journals(round_: Round, others: list[EvaluationRecord]) -> None:
    """Many processes, after a step's scoring: the main process appends ``others`` (the records
    this process did not compute: the other processes computed and journaled them to their
    ``journal.rank{r}.jsonl``) to ``journal.jsonl``, then those files are removed. A crash in
    between leaves a record in both; ``seal.journal.read_journal`` keeps one. One process:
    nothing to do (it appended to ``journal.jsonl`` as it went)."""
    dist = round_.dist
    if not dist.distributed:
        return
    if dist.is_main:
        for record in others:
            append_jsonl(round_.journal_file, record.to_json())
    dist.barrier()
    if not dist.is_main:
        round_.journal_file.unlink(missing_ok=True)


def step_metrics(reward: InnerLoopReward, steps: list[int], logs: dict, global_step: int, seconds: float) -> dict:
    """A ``metrics.jsonl`` line for the optimizer steps ``steps`` (those since the last line).

    ``mean_reward`` / ``reward_std``: mean and population std over the steps' completions
    (fractions of questions, in [-1, 1]; TRL's own ``reward`` / ``reward_std``, per step and
    averaged over the logging window, are in ``trl``); ``kl``: TRL's mean per-token KL to the initial policy (None when ``rl.grpo.beta`` is
    0); ``loss``: TRL's; ``trl``: every value TRL logged. ``diagnostics``:
    ``seal.diagnostics.round_diagnostics`` of the steps' completions, grouped by passage.
    Launch-specific (timing) fields: ``seconds``, ``n_computed`` and ``trl.step_time``.
    """
    scores = [reward.steps[s] for s in steps]
    rewards = [r for s in scores for r in s.rewards]
    by_passage: dict[int, tuple[list[str], list[float]]] = {}
    for s in scores:
        for p, text, r in zip(s.passages, s.texts, s.rewards, strict=True):
            by_passage.setdefault(p, ([], []))
            by_passage[p][0].append(text)
            by_passage[p][1].append(r)
    order = sorted(by_passage)
    round_ = reward.round
    config = round_.recipe.diagnostics
    diagnostics = None
    if config.enabled and order:
        diagnostics = round_diagnostics(
            [round_.passages[p] for p in order], [by_passage[p][0] for p in order], domain=round_.task.diagnostics,
            rewards=[by_passage[p][1] for p in order], max_pairs=config.max_pairs,
        )  # fmt: skip
    return {
        "step": global_step,
        "steps": steps,
        "n_completions": len(rewards),
        "n_evaluations": sum(s.computed + s.reused for s in scores),
        "n_computed": sum(s.computed for s in scores),
        "n_failed": sum(s.failed for s in scores),
        "mean_reward": fmean(rewards) if rewards else None,
        "reward_std": pstdev(rewards) if len(rewards) > 1 else None,
        "kl": logs.get("kl"),
        "loss": logs.get("loss"),
        "trl": dict(logs),
        "seconds": seconds,
    } | ({"diagnostics": diagnostics} if diagnostics is not None else {})


def last_checkpoint(out_dir: Path) -> Path | None:
    """The highest ``checkpoint-N`` folder under ``out_dir`` that TRL finished writing (its
    ``trainer_state.json``, written after the adapter, optimizer and RNG states, is whole), or None."""

    def finished(path: Path) -> bool:
        try:
            return path.name.split("-")[-1].isdigit() and read_json_or_none(path / "trainer_state.json") is not None
        except ValueError:  # cut off mid-write
            return False

    return max((p for p in out_dir.glob("checkpoint-*") if finished(p)), key=lambda p: int(p.name.split("-")[-1]), default=None)


def check_processes(recipe: Recipe, world_size: int) -> None:
    """Refuse a step that ``world_size`` processes cannot share evenly.

    Raises:
        RecipeError: ``rl.grpo.batch_size x world_size`` does not divide ``prompts_per_step x
            num_generations`` (each process takes whole batches of the step's completions).
    """
    g = recipe.rl.grpo
    if (g.prompts_per_step * g.num_generations) % (g.batch_size * world_size):
        raise RecipeError(
            f"rl.grpo.prompts_per_step x num_generations ({g.prompts_per_step} x {g.num_generations}) must be a multiple of "
            f"rl.grpo.batch_size x processes ({g.batch_size} x {world_size}): each process takes an equal share of a step's completions"
        )


def trl_config(recipe: Recipe, out_dir: Path, world_size: int = 1, report_to: list[str] | None = None):
    """TRL's ``GRPOConfig`` (``RLOOConfig`` for rloo) from ``rl.grpo``: one generation per
    optimizer step (gradient accumulation over ``prompts_per_step x num_generations /
    (batch_size x world_size)`` passes per process), checkpoints every ``save_steps``, seeded
    from the recipe seed. ``report_to``: TRL's trackers (``seal.tracking.Tracking.for_trainer``);
    with W&B or trackio among them TRL's ``log_completions`` table of sampled completions is on
    too. ``self_edit.backend: vllm``: TRL's ``use_vllm`` with ``vllm_mode`` =
    ``self_edit.vllm.mode`` (TRL seeds vLLM from the config's seed; its samples are not the HF
    path's)."""
    # Here, not at the top (as below): torch, TRL, PEFT and datasets take seconds to import,
    # and `seal train` with ReST-EM, the CLI's --help and its errors need none of them.
    import torch
    from trl import GRPOConfig, RLOOConfig

    g, se = recipe.rl.grpo, recipe.self_edit
    seed = derive_seed(recipe.seed, "grpo") % 2**32  # HF set_seed: 32 bits
    kwargs = dict(
        output_dir=str(out_dir),
        max_steps=g.steps,
        learning_rate=g.lr,
        lr_scheduler_type=g.lr_scheduler,
        per_device_train_batch_size=g.batch_size,
        gradient_accumulation_steps=g.prompts_per_step * g.num_generations // (g.batch_size * world_size),
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length or se.max_new_tokens,
        temperature=g.temperature or se.temperature,
        top_p=se.top_p,
        top_k=0,
        beta=g.beta,
        bf16=g.bf16,
        logging_steps=g.logging_steps,
        save_strategy="steps",
        save_steps=g.save_steps,
        save_total_limit=g.keep_checkpoints,
        seed=seed,
        data_seed=seed,
        report_to=list(report_to or []),
        disable_tqdm=True,
        remove_unused_columns=False,
        shuffle_dataset=False,  # prompt_dataset is in passage_order already
        use_cpu=not torch.cuda.is_available(),
    )
    if se.backend == "vllm":  # TRL generates with vLLM (its own engine, weights synced each step)
        kwargs.update(use_vllm=True, vllm_mode=se.vllm.mode, vllm_gpu_memory_utilization=se.vllm.gpu_memory_utilization)
        if se.vllm.max_model_len is not None:
            kwargs["vllm_max_model_length"] = se.vllm.max_model_len
    if {"wandb", "trackio"} & set(report_to or []):
        kwargs["log_completions"] = True  # TRL's table of completions, rewards and advantages
    if recipe.rl.algorithm == "grpo":
        return GRPOConfig(loss_type=g.loss_type, **kwargs)
    return RLOOConfig(**kwargs)


def step_logger(reward: InnerLoopReward, run: RunDir, console: Console, bar: Progress, resumed_at: int, tracking: Tracking | None = None):
    """A ``transformers.TrainerCallback``: on each TRL log, a ``metrics.jsonl`` line
    (:func:`step_metrics`) and a console line, and to the trackers (``grpo/...`` at the step,
    and the table of the steps' completions with their rewards); the progress bar follows the steps."""
    tracking = tracking or Tracking([])
    from transformers import TrainerCallback

    steps = reward.round.recipe.rl.grpo.steps
    task = bar.add_task(f"{reward.round.recipe.rl.algorithm} steps", total=steps, completed=resumed_at)

    config = reward.round.recipe.diagnostics
    # The collapse warning compares a step with the previous logged step and the run's first
    # (a resume reads them back from metrics.jsonl, already cut to the resumed step).
    earlier = [row["diagnostics"] for row in (read_jsonl(run.metrics) if run.metrics.exists() else []) if row.get("diagnostics")]
    is_main = reward.round.dist.is_main  # every process logs; the main one writes

    class StepLogger(TrainerCallback):
        logged = resumed_at
        started = time.perf_counter()
        first = earlier[0] if earlier else None
        previous = earlier[-1] if earlier else None

        def on_step_end(self, args, state, control, **kwargs):
            bar.update(task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            covered = sorted(s for s in reward.steps if self.logged <= s < state.global_step)
            if "reward" not in logs or not covered:
                return  # the end-of-training summary, not a step
            row = step_metrics(reward, covered, logs, state.global_step, time.perf_counter() - self.started)
            self.logged, self.started = state.global_step, time.perf_counter()
            if "diagnostics" in row:
                d = row["diagnostics"]
                d["collapse_warning"] = collapse_warning(
                    d, self.previous, config.min_distinct_2, config.max_diversity_drop, config.max_format_share, self.first
                )
                self.first, self.previous = self.first or d, d
            if is_main:
                append_jsonl(run.metrics, row)
                tracking.log({k: v for k, v in row.items() if k not in ("steps", "trl")}, step=state.global_step, prefix="grpo/")
                tracking.log_self_edits(state.global_step, [
                    {"step": s, "passage": p, "self_edit": i, "reward": r, "text": text}
                    for s in covered for i, (p, r, text) in enumerate(zip(reward.steps[s].passages, reward.steps[s].rewards, reward.steps[s].texts, strict=True))
                ])  # fmt: skip
            kl = "" if row["kl"] is None else f", kl {row['kl']:.4f}"
            console.print(
                f"step {state.global_step}/{steps}: mean reward {percent(row['mean_reward'], points=True)}, "
                f"std {percent(row['reward_std'], points=True)}{kl}, {row['n_evaluations']} evaluations "
                f"({row['n_evaluations'] - row['n_computed']} read from the journal), failed {row['n_failed']}, {row['seconds']:.0f} s"
            )
            if "diagnostics" in row:
                console.print(f"step {state.global_step}: self-edits: {summary_line(row['diagnostics'])}", highlight=False)
                if row["diagnostics"]["collapse_warning"]:
                    console.print(f"[bold yellow]step {state.global_step}: collapse warning: {row['diagnostics']['collapse_warning']}[/]")

    return StepLogger()


def drop_metrics_after(run: RunDir, step: int) -> None:
    """Keep only ``metrics.jsonl`` lines of steps up to ``step`` (a resume recomputes the rest)."""
    rows = read_jsonl(run.metrics) if run.metrics.exists() else []
    write_jsonl_atomic(run.metrics, [row for row in rows if row.get("step", 0) <= step])


def passage_order(recipe: Recipe, n_passages: int) -> list[int]:
    """The passages of every step, in order: ``rl.grpo.steps x prompts_per_step`` indices,
    passes over all passages, each pass a permutation seeded by the recipe seed and the pass.

    Fixed here rather than by TRL's shuffling sampler, whose order after a resume differs
    from an uninterrupted run's (a fresh generator per launch), so that a resumed run takes
    the same passages at the same steps. A step at a pass boundary may hold a passage twice.
    """
    g = recipe.rl.grpo
    need = g.steps * g.prompts_per_step
    order: list[int] = []
    for epoch in range(-(-need // n_passages)):
        order += random.Random(derive_seed(recipe.seed, "grpo-order", epoch)).sample(range(n_passages), n_passages)
    return order[:need]


def prompt_dataset(task: Task, passages: list[Passage], tokenizer):
    """TRL's prompt dataset, read in order: ``{"prompt": the self-edit prompt (with the task's
    hint, as ReST-EM's), "passage": its index}`` per entry of :func:`passage_order`."""
    from datasets import Dataset

    recipe, se = task.recipe, task.recipe.self_edit
    hint = task.self_edit_hint()
    prompts = [self_edit_prompt(se.template, p.title, p.context, tokenizer, se.chat_template, hint) for p in passages]
    return Dataset.from_list([{"prompt": prompts[i], "passage": i} for i in passage_order(recipe, len(passages))])


def run_grpo(recipe: Recipe, run: RunDir, passages: list[Passage], bar: Progress, console: Console, dist: Dist, tracking: Tracking | None = None) -> str:
    """Train the policy with TRL's GRPO (or RLOO) and seal's inner-loop reward; returns the
    merged policy's path (``grpo/policy``). ``tracking``: the run's trackers (``report_to``). Resumes from the last checkpoint when one exists
    (``seal train --resume``); a finished run (``grpo/train.json``) is returned as is.

    Every process calls it (many processes: see the module docstring); the main process alone
    writes metrics, the merged policy and ``grpo/train.json``.

    ``seal.train.train`` refuses, before it writes anything, fewer passages than
    ``rl.grpo.prompts_per_step`` (``check_runnable``) and a step the processes cannot share
    (:func:`check_processes`).
    """
    from transformers import PrinterCallback
    from trl import GRPOTrainer, RLOOTrainer

    g = recipe.rl.grpo
    out_dir, policy_dir, adapter_dir = run.path / "grpo", run.path / "grpo" / "policy", run.path / "grpo" / "adapter"
    written = {"merged": [policy_dir], "adapter": [adapter_dir], "both": [adapter_dir, policy_dir]}[recipe.rl.save]
    if dist.main_decides(lambda: read_json_or_none(out_dir / "train.json") is not None and all(p.exists() for p in written)):
        console.print(f"{recipe.rl.algorithm}: finished earlier, reusing its policy ({written[-1]})")
        return str(written[-1])

    # The learner (inner.learner: base) and its baselines, as a ReST-EM round 0 computes them.
    round_ = Round(recipe, run, 0, recipe.model.name_or_path, passages, dist, console, bar, tracking=tracking)
    open_round(round_)
    baselines = baselines_stage(round_)
    if dist.distributed:  # the baselines the other processes journaled, into journal.jsonl
        if dist.is_main:
            merge_journal(run)
        dist.barrier()
    rows = dist.main_decides(read_journal, run)
    finished = {journal_key(row): EvaluationRecord.from_json(row) for row in rows if row.get("kind") == "evaluation" and "step" in row}
    reward = InnerLoopReward(round_, baselines, finished)

    checkpoint = dist.main_decides(last_checkpoint, out_dir)
    resumed_at = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
    if checkpoint is not None:
        console.print(f"{recipe.rl.algorithm}: resuming from {portable_path(run, checkpoint)} ({len(finished)} evaluations in the journal)")
        if dist.is_main:
            drop_metrics_after(run, resumed_at)
        dist.barrier()
    seed_everything(derive_seed(recipe.seed, "grpo"))  # the LoRA initialisation draws from the global generator
    policy, tokenizer = load_policy(recipe.model, for_training=True)  # the recipe's dtype and attention, as every stage
    trainer_class = GRPOTrainer if recipe.rl.algorithm == "grpo" else RLOOTrainer
    tracking = tracking or Tracking([])
    with tracking.for_trainer("grpo", last=True) as report_to:
        trainer = trainer_class(
            model=policy, reward_funcs=[reward], args=trl_config(recipe, out_dir, dist.world_size, report_to), train_dataset=prompt_dataset(round_.task, passages, tokenizer),
            processing_class=tokenizer, peft_config=peft_lora_config(g.lora), callbacks=[step_logger(reward, run, console, bar, resumed_at, tracking)],
        )  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # TRL's raw log dicts: step_logger prints the steps instead
    console.print(
        f"{recipe.rl.algorithm}: {g.steps} steps x {g.prompts_per_step} passages x {g.num_generations} completions "
        f"x {recipe.inner.eval_times} evaluations (from step {resumed_at})"
    )
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    dist.barrier()  # every process done with its journal file
    if dist.is_main and dist.distributed:
        merge_journal(run)  # one journal.jsonl in identity order, the rank files gone
    if adapter_dir in written:  # the LoRA alone, before merging changes the model
        trainer.save_model(str(out_dir / ".adapter.tmp"))  # every process calls it; the trainer writes on the main one
        if dist.is_main:
            write_adapter_chain(adapter_dir, out_dir / ".adapter.tmp", tokenizer, recipe.model.name_or_path, recipe.model.revision)
            shutil.rmtree(out_dir / ".adapter.tmp", ignore_errors=True)
    if dist.is_main and policy_dir in written:
        merged = trainer.model.merge_and_unload()
        with atomic_dir(policy_dir) as tmp:
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    if dist.is_main:
        write_json_atomic(
            out_dir / "train.json",
            {"algorithm": recipe.rl.algorithm, "steps": int(result.global_step), "train_loss": float(result.training_loss), "seconds": float(result.metrics.get("train_runtime", 0.0))},
        )  # after the merged policy: marks it finished
    dist.barrier()
    round_.unload_model()
    return str(written[-1])
