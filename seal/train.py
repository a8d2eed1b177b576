"""``seal train``: the SEAL knowledge-incorporation outer loop, ReST-EM (paper Section 3.1, 4.2).

One round, reading top to bottom:

1. sample ``k`` self-edits per training passage from the current policy;
2. answer every passage's questions with the un-adapted model (the baseline);
3. for every (passage, self-edit, repetition): train a fresh LoRA adapter on the self-edit's
   texts and score no-passage QA; reward = accuracy gain over the baseline (journaled);
4. keep the best self-edit(s) per passage (E-step) and write ``{prompt, completion}`` rows;
5. LoRA-SFT the policy on them with TRL and merge (M-step): the next round's policy and base.

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
batch is ``world_size x rl.sft.batch_size x rl.sft.grad_accum_steps``, so the SFT loss and
the merged policy (hence rounds after the first) depend on the number of processes.
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

Differences from the reference implementation: it seeds from the wall clock (no two runs
agree, a resume cannot reproduce), counts grader failures as wrong answers, and writes its
results only at the very end (a crash loses the round); here seeds derive from identities,
ungraded stays ``None``, and every result is on disk as soon as it exists.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import shutil
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from statistics import fmean

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from seal.config import Recipe, RecipeError, diff_recipes, recipe_to_dict
from seal.data import Passage, load_passages, load_squad_from_hub
from seal.distributed import Dist, get_dist
from seal.models import load_model_from_config, resolve_device
from seal.prompts import check_template, self_edit_prompt
from seal.restem import select_best, sft_rows, update_policy
from seal.rewards import mean_reward
from seal.rundir import (
    RunDir,
    append_jsonl,
    read_json,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
)
from seal.scoring import Evaluation, baselines, make_judge, run_evaluations
from seal.seeding import derive_seed, seed_everything
from seal.self_edits import sample_self_edits, train_texts

# Keys that change speed or bookkeeping but not results: a resume may change them.
RESUMABLE_KEYS = {
    "name",
    "output_dir",
    "model.device",
    "inner.batch_adapters",
    "qa.batch_size",
    "qa.judge.max_concurrency",
    "qa.judge.timeout_s",
    "qa.judge.max_retries",
    "qa.judge.backoff_s",
    "rl.rounds",  # more rounds extend a run; finished rounds are unaffected
}

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

_KIND_ORDER = {"baseline": 0, "evaluation": 1}


def progress_bar(console: Console | None = None) -> Progress:
    """The progress display used by every long stage."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def load_train_passages(recipe: Recipe) -> list[Passage]:
    """The RL training passages named by the recipe (files, or the hub when ``data.hf_dataset``)."""
    d = recipe.data
    if d.hf_dataset:
        return load_squad_from_hub(d.hf_dataset, "train", d.n_train_passages)
    return load_passages(d.train_file, d.n_train_passages, d.root)


def check_resume(run: RunDir, config: dict) -> None:
    """Refuse to resume with a recipe that differs in anything that changes results.

    Raises:
        RecipeError: listing the differing keys.
    """
    if not run.exists():
        raise RecipeError(f"cannot resume: {run.path} holds no run (no config.yaml)")
    diffs = [k for k in diff_recipes(run.recorded_config(), config) if k not in RESUMABLE_KEYS]
    if diffs:
        raise RecipeError(f"refusing to resume {run.path}: the recipe differs from the recorded one in: {', '.join(diffs)}")


# ----------------------------------------------------------------------------- the journal


def journal_key(row: dict) -> tuple:
    """A journal record's identity: (kind, round, passage, self-edit, repetition)."""
    return (row.get("kind"), row.get("round"), row.get("passage"), row.get("self_edit"), row.get("repetition"))


def _journal_order(row: dict) -> tuple:
    def n(x):
        return -1 if x is None else x

    return (n(row.get("round")), _KIND_ORDER.get(row.get("kind"), 2), n(row.get("passage")), n(row.get("self_edit")), n(row.get("repetition")))


def journal_path(run: RunDir, rank: int) -> Path:
    """The journal file a rank appends to: ``journal.jsonl`` (rank 0) or ``journal.rank{r}.jsonl``."""
    return run.journal if rank == 0 else run.path / f"journal.rank{rank}.jsonl"


def _rank_journals(run: RunDir) -> list[Path]:
    def rank_of(p: Path) -> int:
        try:
            return int(p.name[len("journal.rank") : -len(".jsonl")])
        except ValueError:
            return 1 << 30

    return sorted(run.path.glob("journal.rank*.jsonl"), key=rank_of)


def read_journal(run: RunDir) -> list[dict]:
    """Every journal record of the run: ``journal.jsonl`` plus any per-rank files left by a
    killed distributed run, one record per identity (the first seen), in identity order.

    Partially written lines (a crash mid-append) are skipped with a warning.
    """
    seen: dict[tuple, dict] = {}
    for path in [run.journal, *_rank_journals(run)]:
        for row in read_jsonl(path):
            seen.setdefault(journal_key(row), row)
    return sorted(seen.values(), key=_journal_order)


def seal_partial_line(path: Path) -> None:
    """End a journal file that a crash left mid-line with a newline, so that the next record
    starts on a line of its own (the partial line stays, and is skipped when read)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
    warnings.warn(f"{path}: the last line was partially written (a crash mid-append); it is skipped", stacklevel=2)


def merge_journal(run: RunDir, extra: list[dict] = ()) -> list[dict]:
    """Main process: rewrite ``journal.jsonl`` atomically with every record (journal files plus
    ``extra``, deduplicated, identity order), then remove the per-rank files. Returns the records."""
    rows = {journal_key(r): r for r in extra}
    for row in read_journal(run):
        rows[journal_key(row)] = row
    merged = sorted(rows.values(), key=_journal_order)
    write_jsonl_atomic(run.journal, merged)
    for path in _rank_journals(run):
        path.unlink(missing_ok=True)
    return merged


# ----------------------------------------------------------------------------- a round's stages


def _round_self_edits(recipe: Recipe, run: RunDir, r: int, model, tok, passages, bar: Progress, d: Dist) -> tuple[list[list[str]], list[list[bool]]]:
    """Step 1: the round's self-edits and their truncation flags, sampled once and saved
    (``round_r/self_edits.json``, reused on resume). Chunks of ``self_edit.batch_size``
    passages are dealt round-robin to the ranks and gathered."""
    path = run.round_dir(r) / "self_edits.json"
    saved = d.main_decides(lambda: read_json(path) if path.exists() else None)
    if saved is not None:
        return (
            [row["completions"] for row in saved],
            [row.get("truncated") or [False] * len(row["completions"]) for row in saved],
        )
    se = recipe.self_edit
    n = len(passages)
    chunks = [list(range(s, min(s + se.batch_size, n))) for s in range(0, n, se.batch_size)]
    mine = d.mine(len(chunks))
    task = bar.add_task(f"round {r}: sampling self-edits{_share(d)}", total=sum(len(chunks[c]) for c in mine))
    done: dict[int, tuple[list[list[str]], list[list[bool]]]] = {}
    for c in mine:
        idx = chunks[c]
        trunc: list[list[bool]] = []
        edits = sample_self_edits(
            model, tok, [passages[i] for i in idx], se.template, se.k, se.temperature, se.top_p, se.max_new_tokens,
            seed=derive_seed(recipe.seed, "round", r), batch_size=se.batch_size, chat=se.chat_template,
            passage_indices=idx, progress=lambda m: bar.advance(task, m), truncated=trunc,
        )  # fmt: skip
        done[c] = (edits, trunc)
    for part in d.gather(done):
        done.update(part)
    edits = [e for c in range(len(chunks)) for e in done[c][0]]
    truncated = [t for c in range(len(chunks)) for t in done[c][1]]
    if d.is_main:
        write_json_atomic(
            path,
            [
                {"passage": i, "passage_id": p.id, "title": p.title, "completions": c, "truncated": t}
                for i, (p, c, t) in enumerate(zip(passages, edits, truncated, strict=True))
            ],
        )
    return edits, truncated


def _share(d: Dist) -> str:
    return f" (rank 0's share of {d.world_size})" if d.distributed else ""


def baseline_chunks(passages: list[Passage], max_questions: int) -> list[list[int]]:
    """Consecutive passages grouped so a chunk has at most ``max_questions`` questions (at
    least one passage): one batched generation each, the same whatever the process count."""
    chunks: list[list[int]] = []
    cur: list[int] = []
    n_q = 0
    for i, p in enumerate(passages):
        if cur and n_q + len(p.questions) > max_questions:
            chunks.append(cur)
            cur, n_q = [], 0
        cur.append(i)
        n_q += len(p.questions)
    if cur:
        chunks.append(cur)
    return chunks


def _round_baselines(recipe: Recipe, run: RunDir, r: int, model, tok, passages, judge, journal: list[dict], d: Dist) -> list[dict]:
    """Step 2: the baseline record (answers, scores, accuracy) of every passage, in passage
    order; journaled once per round (the round's policy), chunks dealt to the ranks."""
    have = {row["passage"]: row for row in journal if row.get("kind") == "baseline" and row["round"] == r}
    pending = [c for c in baseline_chunks(passages, recipe.qa.batch_size) if any(i not in have for i in c)]
    mine = journal_path(run, d.rank)
    new: dict[int, dict] = {}
    for chunk in d.shard(pending):
        rows = baselines(model, tok, [passages[i] for i in chunk], recipe.qa, judge)
        for i, row in zip(chunk, rows, strict=True):
            if i in have:
                continue
            rec = {"kind": "baseline", "round": r, "passage": i, "passage_id": passages[i].id, **row}
            append_jsonl(mine, rec)
            new[i] = rec
    for part in d.gather(new):
        have.update(part)
    return [have[i] for i in range(len(passages))]


def _out_of_memory_types() -> tuple[type[BaseException], ...]:
    import torch

    types = [getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)]
    return tuple(t for t in types if t is not None)


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def failure_record(ev: Evaluation, baseline_accuracy: float | None, failure_reward: float | None, reason: str, seconds: float) -> dict:
    """The journal record of an evaluation that raised (same fields as ``run_evaluations``'s)."""
    return {
        **ev.key,
        "passage_id": ev.passage.id,
        "seed": ev.seed,
        "reward": failure_reward,
        "adapter_accuracy": None,
        "baseline_accuracy": baseline_accuracy,
        "answers": [],
        "scores": [],
        "epoch_losses": [],
        "n_train_texts": len(ev.texts),
        "n_train_tokens": 0,
        "seconds": seconds,
        "error": reason,
    }


def evaluate_chunk(model, tok, evs: list[Evaluation], baseline_accuracy, inner, qa, judge, record, console: Console | None = None) -> None:
    """Run one chunk of evaluations as one batched inner loop, records to ``record``.

    An exception from the chunk (CUDA out-of-memory above all; anything else but a judge
    configuration error) does not propagate: the chunk is retried in halves (a smaller
    adapter batch) down to single evaluations, and a single evaluation that still raises is
    recorded as failed with the reason (``failure_record``). ``record`` must ignore records
    it has already seen (a chunk that raised while grading may have reported some).
    """
    from seal.judge import JudgeError

    t0 = time.perf_counter()
    try:
        run_evaluations(
            model, tok, evs, baseline_accuracy, inner.model_copy(update={"batch_adapters": len(evs)}), qa, judge,
            on_record=record,
        )  # fmt: skip
        return
    except JudgeError:
        raise  # the judge cannot run at all (no key, bad URL): a configuration error, not a fault
    except _out_of_memory_types() as e:
        reason = f"out of memory with {len(evs)} adapter(s) per batch: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    except Exception as e:
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    _free_memory()
    if len(evs) > 1:
        if console is not None:
            console.print(f"[yellow]warning:[/] a batch of {len(evs)} evaluations failed ({reason}); retrying in halves")
        half = (len(evs) + 1) // 2
        for sub in (evs[:half], evs[half:]):
            evaluate_chunk(model, tok, sub, baseline_accuracy, inner, qa, judge, record, console)
        return
    ev = evs[0]
    record(failure_record(ev, baseline_accuracy(ev), inner.failure_reward, reason, time.perf_counter() - t0))


def _round_evaluations(recipe, run, r, model, tok, passages, edits, truncated, base_acc, judge, journal, bar, d: Dist, console) -> tuple[list[dict], int]:
    """Step 3: every (passage, self-edit, repetition) not yet journaled; returns all of the
    round's records (identity order) and how many each rank computed now."""
    done = {
        (row["passage"], row["self_edit"], row["repetition"]): row
        for row in journal
        if row.get("kind") == "evaluation" and row["round"] == r
    }
    se, inner = recipe.self_edit, recipe.inner
    evaluations = [
        Evaluation(
            key={"kind": "evaluation", "round": r, "passage": p, "self_edit": e, "repetition": rep},
            passage=passages[p],
            texts=train_texts(passages[p], edits[p][e], se.split_newlines, se.template),
            seed=derive_seed(recipe.seed, "adapter", r, p, e, rep),
        )
        for p in range(len(passages))
        for e in range(len(edits[p]))
        for rep in range(inner.eval_times)
    ]

    def ident(ev_key: dict) -> tuple:
        return (ev_key["passage"], ev_key["self_edit"], ev_key["repetition"])

    b = inner.batch_adapters
    chunks = [evaluations[s : s + b] for s in range(0, len(evaluations), b)]
    pending = [c for c in chunks if any(ident(ev.key) not in done for ev in c)]
    mine = d.shard(pending)
    if d.distributed:
        task = bar.add_task(f"round {r}: inner-loop evaluations{_share(d)}", total=sum(len(c) for c in mine))
    else:
        task = bar.add_task(f"round {r}: inner-loop evaluations", total=len(evaluations), completed=len(evaluations) - sum(len(c) for c in pending))
    path = journal_path(run, d.rank)
    new: dict[tuple, dict] = {}

    def record(rec: dict) -> None:
        k = ident(rec)
        if k in done or k in new:
            return  # a retried chunk's already journaled member
        rec["truncated"] = bool(truncated[k[0]][k[1]])
        append_jsonl(path, rec)
        new[k] = rec

    for chunk in mine:
        evaluate_chunk(model, tok, chunk, lambda ev: base_acc[ev.key["passage"]], inner, recipe.qa, judge, record, console)
        bar.advance(task, len(chunk))
    per_rank = []
    for part in d.gather(new):
        done.update(part)
        per_rank.append(len(part))
    return [done[k] for k in sorted(done)], per_rank


def _self_edit_rewards(records: list[dict], n_edits: list[int]) -> dict[int, list[float | None]]:
    """Mean reward per (passage, self-edit) over its repetitions."""
    by = defaultdict(list)
    for rec in records:
        by[(rec["passage"], rec["self_edit"])].append(rec["reward"])
    return {p: [mean_reward(by[(p, e)]) for e in range(n)] for p, n in enumerate(n_edits)}


def _round_metrics(r, policy, passages, records, base_acc, rewards, kept, sft_stats, seconds, truncated) -> dict:
    """A round's summary (``round_k/metrics.json``, a line of ``metrics.jsonl``).

    Accuracies and rewards are fractions in [0, 1] (rewards in [-1, 1]); ``baseline_accuracy``
    and ``adapter_accuracy`` are means over passages / evaluations that could be graded;
    ``mean_reward`` over evaluations with a reward; ``best_of_k_reward`` the mean over
    passages of the best self-edit's mean reward. ``n_failed`` / ``failures`` count failed
    evaluations (by reason), ``n_ungraded`` the evaluations' questions the grader could not
    grade, ``n_truncated_self_edits`` the self-edits cut off by ``self_edit.max_new_tokens``.
    ``sft`` is the policy update's ``{train_loss, steps, seconds, rows}`` (None: no update).
    Timing fields: see ``TIMING_FIELDS``.
    """
    accs = [rec["adapter_accuracy"] for rec in records if rec["adapter_accuracy"] is not None]
    best = [max(v for v in rs if v is not None) for rs in rewards.values() if any(v is not None for v in rs)]
    eval_seconds = [rec["seconds"] for rec in records]
    bases = [a for a in base_acc.values() if a is not None]
    failures = Counter(rec["error"] for rec in records if rec["error"] is not None)
    return {
        "round": r,
        "policy": str(policy),
        "n_passages": len(passages),
        "n_evaluations": len(records),
        "n_failed": sum(failures.values()),
        "failures": dict(sorted(failures.items())),
        "n_ungraded": sum(s is None for rec in records for s in rec["scores"]),
        "n_truncated_self_edits": sum(t for ts in truncated for t in ts),
        "baseline_accuracy": fmean(bases) if bases else None,
        "adapter_accuracy": fmean(accs) if accs else None,
        "mean_reward": mean_reward([rec["reward"] for rec in records]),
        "best_of_k_reward": fmean(best) if best else None,
        "n_kept": sum(len(v) for v in kept.values()),
        "sft": sft_stats,
        "seconds_per_evaluation": fmean(eval_seconds) if eval_seconds else None,
        "seconds": seconds,
    }


def _write_metrics_jsonl(run: RunDir) -> None:
    """``metrics.jsonl``: one line per finished round, rebuilt atomically from ``round_k/metrics.json``
    (so a crash between the two writes can neither lose nor duplicate a line)."""
    rows = []
    for p in run.path.glob("round_*/metrics.json"):
        try:
            rows.append(read_json(p))
        except (OSError, ValueError):
            continue
    write_jsonl_atomic(run.metrics, sorted(rows, key=lambda m: m["round"]))


def _unset_deepspeed() -> None:
    """Drop transformers' global DeepSpeed config left by the SFT's TrainingArguments, so the
    next round's plain ``from_pretrained`` is not partitioned by ZeRO-3."""
    try:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    except Exception:  # pragma: no cover - older transformers
        pass


def _round_device(recipe: Recipe, d: Dist) -> str:
    """Each rank's own GPU when distributed on CUDA (``cuda:<local rank>``), else the recipe's."""
    device = recipe.model.device
    if d.distributed and resolve_device(device).type == "cuda":
        return f"cuda:{d.local_rank}"
    return device


def run_round(recipe: Recipe, run: RunDir, r: int, policy: str, passages: list[Passage], bar: Progress, console: Console, d: Dist | None = None) -> str:
    """One ReST-EM round with ``policy`` as policy and (``inner.learner: policy``) inner-loop model; returns the next policy."""
    d = d or get_dist()
    rdir = run.round_dir(r)
    next_policy = rdir / "policy"
    finished = d.main_decides(lambda: read_json(rdir / "metrics.json") if (rdir / "metrics.json").exists() else None)
    if finished is not None:
        reused = resolve_policy(run, finished["next_policy"])
        console.print(f"round {r}: finished earlier, reusing its policy ({reused})")
        if d.is_main:
            _write_metrics_jsonl(run)
        return reused
    t0 = time.perf_counter()
    seed_everything(derive_seed(recipe.seed, "round", r))
    model_cfg = recipe.model.model_copy(update={"name_or_path": str(policy), "device": _round_device(recipe, d)})
    model, tok = load_model_from_config(model_cfg)
    judge = make_judge(recipe.qa)

    def read_round_journal() -> list[dict]:
        return [row for row in read_journal(run) if row.get("round") == r]

    journal = d.main_decides(read_round_journal)
    seal_partial_line(journal_path(run, d.rank))  # before this rank appends to its file

    # This launch's wall seconds per stage on the main process (each includes waiting for
    # the slowest rank) and how many evaluations each rank computed: a timing, see TIMING_FIELDS.
    timing: dict[str, float] = {}
    t = time.perf_counter()
    edits, truncated = _round_self_edits(recipe, run, r, model, tok, passages, bar, d)
    timing["self_edits_s"], t = time.perf_counter() - t, time.perf_counter()
    if recipe.inner.learner == "base" and str(policy) != recipe.model.name_or_path:
        # Teacher-student: the policy only writes; the round-0 model learns and answers.
        del model
        _free_memory()
        model, tok = load_model_from_config(model_cfg.model_copy(update={"name_or_path": recipe.model.name_or_path}))
    base_records = _round_baselines(recipe, run, r, model, tok, passages, judge, journal, d)
    base_acc = {i: rec["accuracy"] for i, rec in enumerate(base_records)}
    timing["baselines_s"], t = time.perf_counter() - t, time.perf_counter()
    records, timing["evaluations_computed_by_rank"] = _round_evaluations(
        recipe, run, r, model, tok, passages, edits, truncated, base_acc, judge, journal, bar, d, console
    )
    timing["evaluations_s"] = time.perf_counter() - t
    if d.is_main:
        merge_journal(run, base_records + records)
    d.barrier()

    failures = Counter(rec["error"] for rec in records if rec["error"] is not None)
    if failures:
        listed = "; ".join(f"{n} x {reason}" for reason, n in failures.most_common(5))
        console.print(f"[yellow]round {r}: {sum(failures.values())} of {len(records)} evaluations failed[/] ({listed})")

    rewards = _self_edit_rewards(records, [len(e) for e in edits])
    rl = recipe.rl
    kept = select_best(rewards, rl.k_best, rl.reward_threshold, rl.keep_regardless)
    prompts = {
        p: self_edit_prompt(recipe.self_edit.template, ps.title, ps.context, tok, recipe.self_edit.chat_template)
        for p, ps in enumerate(passages)
    }
    rows = sft_rows(prompts, dict(enumerate(edits)), kept)
    if d.is_main:
        write_jsonl_atomic(rdir / "sft_rows.jsonl", rows)
    del model
    _free_memory()

    sft_path = rdir / "sft.json"
    saved_sft = d.main_decides(lambda: read_json(sft_path) if sft_path.exists() and next_policy.exists() else None)
    if rows and saved_sft is None:
        console.print(f"round {r}: ReST-EM policy update on {len(rows)} self-edits")
        # Seed here, not only inside the trainer: LoRA initialisation draws from the global
        # generator, whose state would otherwise depend on what this process did before.
        seed_everything(derive_seed(recipe.seed, "sft", r))
        work = rdir / ".policy.sft"
        sft_stats = update_policy(
            policy, rows, rl.sft, next_policy, seed=derive_seed(recipe.seed, "sft", r) % 2**32,  # HF set_seed: 32 bits
            dtype=recipe.model.dtype, trust_remote_code=recipe.model.trust_remote_code, work_dir=work,
        )  # fmt: skip
        _unset_deepspeed()
        _free_memory()
        timing["sft_s"] = sft_stats.get("seconds")
        if d.is_main:
            write_json_atomic(sft_path, sft_stats)  # after the merged policy: marks it finished
            shutil.rmtree(work, ignore_errors=True)
        d.barrier()
    elif rows:
        sft_stats = saved_sft  # policy update finished before a crash
        console.print(f"round {r}: reusing the policy update finished earlier ({next_policy})")
    else:
        console.print(f"round {r}: no self-edit cleared the threshold; the policy is unchanged")
        sft_stats, next_policy = None, Path(policy)

    metrics = _round_metrics(r, portable_path(run, policy), passages, records, base_acc, rewards, kept, sft_stats, time.perf_counter() - t0, truncated)
    metrics["next_policy"] = portable_path(run, next_policy)
    metrics["timing"] = timing
    if d.is_main:
        write_json_atomic(rdir / "metrics.json", metrics)
        _write_metrics_jsonl(run)
    d.barrier()
    console.print(
        f"round {r}: baseline {_pct(metrics['baseline_accuracy'])}, adapted {_pct(metrics['adapter_accuracy'])}, "
        f"mean reward {_pp(metrics['mean_reward'])}, best-of-k {_pp(metrics['best_of_k_reward'])}, "
        f"kept {metrics['n_kept']}, failed {metrics['n_failed']}, ungraded {metrics['n_ungraded']}, {metrics['seconds']:.0f} s"
    )
    return str(next_policy)


def portable_path(run: RunDir, path: str | Path) -> str:
    """``path`` relative to the run directory when it lies inside it (``round_0/policy``), so a
    run directory can be moved or copied and still resumed; anything else (a hub id, a base
    model folder) as given."""
    try:
        return str(Path(path).resolve().relative_to(run.path.resolve()))
    except (ValueError, OSError):
        return str(path)


def resolve_policy(run: RunDir, recorded: str) -> str:
    """The model a recorded policy names: a path inside the run directory, or as recorded."""
    inside = run.path / recorded
    return str(inside) if not Path(recorded).is_absolute() and inside.exists() else recorded


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _pp(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} pp"


def _record_launch(run: RunDir, d: Dist, resumed: bool) -> None:
    """Note this launch (time, process count, backend) in ``run.json``'s ``launches`` list."""
    path = run.path / "run.json"
    info = read_json(path) if path.exists() else {}
    info.setdefault("launches", []).append(
        {
            "time": _dt.datetime.now().isoformat(timespec="seconds"),
            "resume": resumed,
            "world_size": d.world_size,
            "backend": d.backend,
        }
    )
    write_json_atomic(path, info)


def train(recipe: Recipe, run_dir: str | Path, resume: bool = False, console: Console | None = None) -> Path:
    """Run (or resume) ``recipe.rl.rounds`` ReST-EM rounds into ``run_dir``; returns it.

    Works unlaunched (one process) and under ``accelerate launch`` / torchrun (see the module
    docstring); every rank calls it with the same recipe, and the main process's ``run_dir``
    is used by all.

    Raises:
        RecipeError: resuming with a recipe that differs in result-changing keys (the message
            lists them), resuming a directory without a run, or a fresh run into a directory
            that already holds one.
        DataError: missing or malformed data files.
        PromptError: unknown self-edit template.
        OSError: the run directory cannot be written (a full disk, say); what was finished
            before stays on disk and ``--resume`` continues from it.
    """
    d = get_dist()
    console = console or Console()
    if not d.is_main:
        console = Console(quiet=True)
    run = RunDir(d.broadcast(str(run_dir)))
    config = recipe_to_dict(recipe)
    check_template(recipe.self_edit.template)
    passages = load_train_passages(recipe)  # validate the data before writing anything

    def open_run() -> None:
        if resume:
            check_resume(run, config)
        else:
            if run.exists():
                raise RecipeError(f"{run.path} already holds a run; pass --resume to continue it")
            run.start(config, seeds={"seed": recipe.seed, "derivation": "seal.seeding.derive_seed(seed, *identity)"})
        _record_launch(run, d, resume)

    d.main_decides(open_run)
    if resume:
        console.print(f"resuming {run.path}")
    where = f", {d.world_size} processes ({d.backend})" if d.distributed else ""
    console.print(f"run directory: {run.path}  ({len(passages)} passages, {recipe.rl.rounds} rounds{where})")
    policy = recipe.model.name_or_path
    with progress_bar(console) as bar:
        for r in range(recipe.rl.rounds):
            policy = run_round(recipe, run, r, policy, passages, bar, console, d)
    if d.is_main:
        write_json_atomic(run.path / "final.json", {"policy": portable_path(run, policy), "rounds": recipe.rl.rounds})
    d.barrier()
    return run.path
