"""``seal train``: the SEAL knowledge-incorporation outer loop, ReST-EM (paper Section 3.1, 4.2).

One round, reading top to bottom:

1. sample ``k`` self-edits per training passage from the current policy;
2. answer every passage's questions with the un-adapted model (the baseline);
3. for every (passage, self-edit, repetition): train a fresh LoRA adapter on the self-edit's
   texts and score no-passage QA; reward = accuracy gain over the baseline (journaled);
4. keep the best self-edit(s) per passage (E-step) and write ``{prompt, completion}`` rows;
5. LoRA-SFT the policy on them with TRL and merge (M-step): the next round's policy and base.

Everything a round produces goes to the run directory (``seal.rundir``) as it is finished;
``resume=True`` picks up where a killed run stopped, recomputing nothing that was journaled.
"""

from __future__ import annotations

import gc
import time
from collections import defaultdict
from pathlib import Path
from statistics import fmean

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from seal.config import Recipe, RecipeError, diff_recipes, recipe_to_dict
from seal.data import Passage, load_passages, load_squad_from_hub
from seal.models import load_model_from_config
from seal.prompts import check_template, self_edit_prompt
from seal.restem import select_best, sft_rows, update_policy
from seal.rewards import mean_reward
from seal.rundir import RunDir, append_jsonl, read_jsonl, write_json_atomic, write_jsonl_atomic
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


def _round_self_edits(recipe: Recipe, run: RunDir, r: int, model, tok, passages, bar: Progress) -> list[list[str]]:
    """Step 1: the round's self-edits, sampled once and saved (reused on resume)."""
    path = run.round_dir(r) / "self_edits.json"
    if path.exists():
        saved = read_json(path)
        return [row["completions"] for row in saved]
    se = recipe.self_edit
    task = bar.add_task(f"round {r}: sampling self-edits", total=len(passages))
    edits = sample_self_edits(
        model, tok, passages, se.template, se.k, se.temperature, se.top_p, se.max_new_tokens,
        seed=derive_seed(recipe.seed, "round", r), batch_size=se.batch_size, chat=se.chat_template,
        progress=lambda n: bar.advance(task, n),
    )  # fmt: skip
    write_json_atomic(
        path,
        [
            {"passage": i, "passage_id": p.id, "title": p.title, "completions": c}
            for i, (p, c) in enumerate(zip(passages, edits))
        ],
    )
    return edits


def read_json(path: Path):
    import json

    return json.loads(Path(path).read_text())


def _round_baselines(recipe: Recipe, run: RunDir, r: int, model, tok, passages, judge, journal: list[dict]) -> dict[int, float | None]:
    """Step 2: baseline accuracy per passage, journaled once per round (the round's policy)."""
    have = {row["passage"]: row for row in journal if row.get("kind") == "baseline" and row["round"] == r}
    todo = [i for i in range(len(passages)) if i not in have]
    if todo:
        rows = baselines(model, tok, [passages[i] for i in todo], recipe.qa, judge)
        for i, row in zip(todo, rows):
            rec = {"kind": "baseline", "round": r, "passage": i, "passage_id": passages[i].id, **row}
            append_jsonl(run.journal, rec)
            have[i] = rec
    return {i: have[i]["accuracy"] for i in range(len(passages))}


def _round_evaluations(recipe, run, r, model, tok, passages, edits, base_acc, judge, journal, bar) -> list[dict]:
    """Step 3: every (passage, self-edit, repetition) not yet journaled, then all of the round's records."""
    done = {
        (row["passage"], row["self_edit"], row["repetition"]): row
        for row in journal
        if row.get("kind") == "evaluation" and row["round"] == r
    }
    se, inner = recipe.self_edit, recipe.inner
    todo = [
        Evaluation(
            key={"kind": "evaluation", "round": r, "passage": p, "self_edit": e, "repetition": rep},
            passage=passages[p],
            texts=train_texts(passages[p], edits[p][e], se.split_newlines, se.template),
            seed=derive_seed(recipe.seed, "adapter", r, p, e, rep),
        )
        for p in range(len(passages))
        for e in range(len(edits[p]))
        for rep in range(inner.eval_times)
        if (p, e, rep) not in done
    ]
    total = sum(len(x) for x in edits) * inner.eval_times
    task = bar.add_task(f"round {r}: inner-loop evaluations", total=total, completed=total - len(todo))

    def record(rec: dict) -> None:
        append_jsonl(run.journal, rec)
        done[(rec["passage"], rec["self_edit"], rec["repetition"])] = rec

    run_evaluations(
        model, tok, todo, lambda ev: base_acc[ev.key["passage"]], inner, recipe.qa, judge,
        on_record=record, progress=lambda n: bar.advance(task, n),
    )  # fmt: skip
    return [done[k] for k in sorted(done)]


def _self_edit_rewards(records: list[dict], n_edits: list[int]) -> dict[int, list[float | None]]:
    """Mean reward per (passage, self-edit) over its repetitions."""
    by = defaultdict(list)
    for rec in records:
        by[(rec["passage"], rec["self_edit"])].append(rec["reward"])
    return {p: [mean_reward(by[(p, e)]) for e in range(n)] for p, n in enumerate(n_edits)}


def _round_metrics(r, policy, passages, records, base_acc, rewards, kept, sft_stats, seconds) -> dict:
    accs = [rec["adapter_accuracy"] for rec in records if rec["adapter_accuracy"] is not None]
    best = [max(v for v in rs if v is not None) for rs in rewards.values() if any(v is not None for v in rs)]
    eval_seconds = [rec["seconds"] for rec in records]
    bases = [a for a in base_acc.values() if a is not None]
    return {
        "round": r,
        "policy": str(policy),
        "n_passages": len(passages),
        "n_evaluations": len(records),
        "n_failed": sum(rec["error"] is not None for rec in records),
        "baseline_accuracy": fmean(bases) if bases else None,
        "adapter_accuracy": fmean(accs) if accs else None,
        "mean_reward": mean_reward([rec["reward"] for rec in records]),
        "best_of_k_reward": fmean(best) if best else None,
        "n_kept": sum(len(v) for v in kept.values()),
        "sft": sft_stats,
        "seconds_per_evaluation": fmean(eval_seconds) if eval_seconds else None,
        "seconds": seconds,
    }


def run_round(recipe: Recipe, run: RunDir, r: int, policy: str, passages: list[Passage], bar: Progress, console: Console) -> str:
    """One ReST-EM round with ``policy`` as policy and base model; returns the next policy."""
    rdir = run.round_dir(r)
    next_policy = rdir / "policy"
    if (rdir / "metrics.json").exists():
        done = read_json(rdir / "metrics.json")
        console.print(f"round {r}: finished earlier, reusing its policy ({done['next_policy']})")
        return done["next_policy"]
    t0 = time.perf_counter()
    seed_everything(derive_seed(recipe.seed, "round", r))
    model_cfg = recipe.model.model_copy(update={"name_or_path": str(policy)})
    model, tok = load_model_from_config(model_cfg)
    judge = make_judge(recipe.qa)
    journal = read_jsonl(run.journal)

    edits = _round_self_edits(recipe, run, r, model, tok, passages, bar)
    base_acc = _round_baselines(recipe, run, r, model, tok, passages, judge, journal)
    records = _round_evaluations(recipe, run, r, model, tok, passages, edits, base_acc, judge, journal, bar)

    rewards = _self_edit_rewards(records, [len(e) for e in edits])
    rl = recipe.rl
    kept = select_best(rewards, rl.k_best, rl.reward_threshold, rl.keep_regardless)
    prompts = {
        p: self_edit_prompt(recipe.self_edit.template, ps.title, ps.context, tok, recipe.self_edit.chat_template)
        for p, ps in enumerate(passages)
    }
    rows = sft_rows(prompts, dict(enumerate(edits)), kept)
    write_jsonl_atomic(rdir / "sft_rows.jsonl", rows)
    del model
    gc.collect()

    if rows and not next_policy.exists():
        console.print(f"round {r}: ReST-EM policy update on {len(rows)} self-edits")
        sft_stats = update_policy(
            policy, rows, rl.sft, next_policy, seed=derive_seed(recipe.seed, "sft", r),
            dtype=recipe.model.dtype, trust_remote_code=recipe.model.trust_remote_code,
        )  # fmt: skip
    elif rows:
        sft_stats = {"reused": True}  # merged policy written before a crash
    else:
        console.print(f"round {r}: no self-edit cleared the threshold; the policy is unchanged")
        sft_stats, next_policy = None, Path(policy)

    metrics = _round_metrics(r, policy, passages, records, base_acc, rewards, kept, sft_stats, time.perf_counter() - t0)
    metrics["next_policy"] = str(next_policy)
    write_json_atomic(rdir / "metrics.json", metrics)
    append_jsonl(run.metrics, metrics)
    console.print(
        f"round {r}: baseline {_pct(metrics['baseline_accuracy'])}, adapted {_pct(metrics['adapter_accuracy'])}, "
        f"mean reward {_pp(metrics['mean_reward'])}, best-of-k {_pp(metrics['best_of_k_reward'])}, "
        f"kept {metrics['n_kept']}, {metrics['seconds']:.0f} s"
    )
    return str(next_policy)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _pp(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} pp"


def train(recipe: Recipe, run_dir: str | Path, resume: bool = False, console: Console | None = None) -> Path:
    """Run (or resume) ``recipe.rl.rounds`` ReST-EM rounds into ``run_dir``; returns it.

    Raises:
        RecipeError: resuming with a recipe that differs in result-changing keys, or a
            fresh run into a directory that already holds one.
        DataError: missing or malformed data files.
        PromptError: unknown self-edit template.
    """
    console = console or Console()
    run = RunDir(run_dir)
    config = recipe_to_dict(recipe)
    check_template(recipe.self_edit.template)
    passages = load_train_passages(recipe)  # validate the data before writing anything
    if resume:
        check_resume(run, config)
        console.print(f"resuming {run.path}")
    else:
        if run.exists():
            raise RecipeError(f"{run.path} already holds a run; pass --resume to continue it")
        run.start(config, seeds={"seed": recipe.seed, "derivation": "seal.seeding.derive_seed(seed, *identity)"})
    console.print(f"run directory: {run.path}  ({len(passages)} passages, {recipe.rl.rounds} rounds)")
    policy = recipe.model.name_or_path
    with progress_bar(console) as bar:
        for r in range(recipe.rl.rounds):
            policy = run_round(recipe, run, r, policy, passages, bar, console)
    write_json_atomic(run.path / "final.json", {"policy": policy, "rounds": recipe.rl.rounds})
    return run.path
