"""``seal evaluate``: score one source of inner-loop training data, single-passage protocol.

Sources (paper Table 2's rows):

* ``none``: no update; the base model answers (accuracy = baseline);
* ``passage``: an adapter trained on the passage alone;
* ``file:<path>``: the first ``n_self_edits`` self-edits per passage of a SEAL-format file
  (e.g. ``squad/val_200_selfedits_gpt-4.1.json``), matched to the passages by title and text;
* ``policy:<model>``: ``n_self_edits`` self-edits sampled now from a policy checkpoint;
* ``prompt:<template>``: self-edits sampled now from the base model with another template.

For each passage: accuracy of the adapted model (mean over its self-edits and
``inner.eval_times`` repetitions), the baseline, and the gain. The reported accuracy is the
paper's: the mean over passages of per-passage accuracy.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean

from rich.console import Console
from rich.table import Table

from seal.config import Recipe, RecipeError, parse_source, recipe_to_dict
from seal.data import DataError, Passage, load_passages, match_self_edits
from seal.display import percent
from seal.models import load_policy
from seal.preflight import check_model, check_recipe
from seal.prompts import check_template
from seal.rundir import RunDir, append_jsonl, hold_run_dir, write_json_atomic
from seal.scoring import (
    Evaluation,
    EvaluationRecord,
    baselines,
    make_judge,
    score_evaluations,
)
from seal.seeding import derive_seed
from seal.self_edits import sample_self_edits
from seal.tasks.registry import make_task
from seal.vllm_backend import check_vllm, sample_texts


def load_eval_passages(recipe: Recipe) -> list[Passage]:
    """The evaluation passages named by the recipe, read by its task (``Task.eval_passages``)."""
    return make_task(recipe).eval_passages()


def source_self_edits(
    source: str, passages: list[Passage], recipe: Recipe, n: int, seed: int, base=None
) -> list[list[str | None]]:
    """Per passage, the self-edits (completions) a source contributes; ``None`` means passage only.

    ``none`` gives an empty list per passage (no training); ``text:<self-edit>`` that self-edit,
    ``n`` times, for every passage. ``base`` is an already loaded
    ``(model, tokenizer)`` of the recipe's model, reused by ``prompt:`` sources.

    Sampling is seeded by ``seed`` and the template, not by the policy's path: every policy
    draws the same random numbers (common random numbers, which make paired comparisons of
    policies less noisy), and a checkpoint samples the same wherever it is stored.

    Raises:
        RecipeError: bad source string. DataError: a file lacks a passage (named) or has too few self-edits.
        PromptError: unknown template.
    """
    kind, arg = parse_source(source)
    if kind == "none":
        return [[] for _ in passages]
    if kind == "passage":
        return [[None] for _ in passages]
    if kind == "text":  # one hand-written self-edit for every passage (e.g. an oracle configuration)
        return [[arg] * n for _ in passages]
    if kind == "file":
        src = load_passages(arg, root=recipe.data.root, require_questions=False)
        matched = match_self_edits(passages, src, str(arg))
        for i, (p, c) in enumerate(zip(passages, matched, strict=True)):
            if len(c) < n:
                raise DataError(f"{arg}: passage {i} ({p.title!r}) has {len(c)} self-edits, {n} requested")
        return [list(c[:n]) for c in matched]
    self_edit_config, task = recipe.self_edit, make_task(recipe)
    template = check_template(arg) if kind == "prompt" else self_edit_config.template
    if self_edit_config.backend == "vllm":  # seal.vllm_backend: the same seed for every policy, per passage
        path = arg if kind == "policy" else recipe.model.name_or_path
        return sample_texts(path, passages, recipe, template, n, derive_seed(seed, "evaluate", template), hint=task.self_edit_hint())
    if kind == "policy":
        model, tok = load_policy(recipe.model, arg)
    else:
        model, tok = base if base is not None else load_policy(recipe.model)

    def draw(indices: list[int], draw_seed: int) -> list[list[str]]:
        return sample_self_edits(
            model, tok, [passages[i] for i in indices], template, n, self_edit_config.temperature, self_edit_config.top_p,
            self_edit_config.max_new_tokens, seed=draw_seed, batch_size=self_edit_config.batch_size,
            chat=self_edit_config.chat_template, passage_indices=indices, hint=task.self_edit_hint(),
        )  # fmt: skip

    first_seed = derive_seed(seed, "evaluate", template)
    out = draw(list(range(len(passages))), first_seed)
    out = task.resample_self_edits(out, lambda indices, attempt: draw(indices, derive_seed(first_seed, "resample", attempt)))
    if kind == "policy":
        del model
        gc.collect()
    return out


def evaluations_for(
    source: str,
    passages: list[Passage],
    edits: list[list[str | None]],
    recipe: Recipe,
    seed: int,
    baseline_accuracies: Sequence[float | None] | None = None,
) -> list[Evaluation]:
    """The inner-loop evaluations of one source: every (passage, self-edit, repetition), with
    the passage's baseline accuracy when ``baseline_accuracies`` (one per passage) is given."""
    task = make_task(recipe)
    template = parse_source(source)[1] if source.startswith("prompt:") else recipe.self_edit.template
    return [
        task.evaluation(
            key={"source": source, "passage": p, "self_edit": e, "repetition": rep},
            passage=passages[p],
            completion=c,
            seed=derive_seed(seed, "adapter", p, e, rep),
            baseline_accuracy=baseline_accuracies[p] if baseline_accuracies is not None else None,
            template=template,
        )
        for p in range(len(passages))
        for e, c in enumerate(edits[p])
        for rep in range(recipe.inner.eval_times)
    ]


def per_passage_accuracy(records: list[EvaluationRecord], n_passages: int) -> list[float | None]:
    """Mean adapted accuracy per passage over its self-edits and repetitions (None: none graded)."""
    by_passage = defaultdict(list)
    for record in records:
        if record.adapter_accuracy is not None:
            by_passage[record.key["passage"]].append(record.adapter_accuracy)
    return [fmean(by_passage[p]) if by_passage[p] else None for p in range(n_passages)]


def evaluate(recipe: Recipe, out_dir: str | Path, console: Console | None = None) -> dict:
    """Score ``recipe.evaluate.source`` on the evaluation passages; write and return the summary.

    Writes ``config.yaml``, ``run.json``, ``journal.jsonl`` (one record per evaluation) and
    ``results.json`` into ``out_dir``, which it claims and locks (``seal.rundir.hold_run_dir``:
    a new or empty directory; RunDirError / RunDirBusyError otherwise).
    """
    console = console or Console()
    config = recipe.evaluate
    if config is None:
        raise RecipeError("the recipe has no 'evaluate' section (set evaluate.source=...)")
    parse_source(config.source)
    check_recipe(recipe)  # seal.preflight: every setting, before any work
    if recipe.self_edit.backend == "vllm":
        check_vllm(recipe.model.device)
    passages = load_eval_passages(recipe)
    check_model(recipe, ["inner.lora"])
    run = RunDir(out_dir)
    with hold_run_dir(run.path):  # claimed and locked for the whole command
        if run.exists():
            raise RecipeError(f"{run.path} already holds results; choose another --out")
        model, tok = load_policy(recipe.model)
        edits = source_self_edits(config.source, passages, recipe, config.n_self_edits, recipe.seed, base=(model, tok))
        run.start(recipe_to_dict(recipe), seeds={"seed": recipe.seed})
        judge, task = make_judge(recipe.qa), make_task(recipe)
        base_acc = [row["accuracy"] for row in baselines(model, tok, passages, recipe.qa, judge, task)]
        evaluations = evaluations_for(config.source, passages, edits, recipe, recipe.seed, base_acc)
        records = score_evaluations(
            model, tok, evaluations, recipe.inner, recipe.qa, judge, on_record=lambda record: append_jsonl(run.journal, record.to_json()), task=task
        )
        adapted = per_passage_accuracy(records, len(passages)) if evaluations else base_acc
        valid = [(a, b) for a, b in zip(adapted, base_acc, strict=True) if a is not None and b is not None]
        summary = {
            "source": config.source,
            "n_passages": len(passages),
            "n_questions": sum(len(p.questions) for p in passages),
            "accuracy": fmean(a for a, _ in valid) if valid else None,
            "baseline_accuracy": fmean(b for _, b in valid) if valid else None,
            "gain": fmean(a - b for a, b in valid) if valid else None,
            "n_failed": sum(record.error is not None for record in records),
            "seconds_per_evaluation": fmean(record.seconds for record in records) if records else None,
            "per_passage": [{"passage_id": p.id, "title": p.title, "accuracy": a, "baseline": b} for p, a, b in zip(passages, adapted, base_acc, strict=True)],
        }
        write_json_atomic(run.path / "results.json", summary)
        table = Table(title=f"seal evaluate: {config.source} on {len(passages)} passages")
        for col in ("source", "accuracy", "baseline", "gain"):
            table.add_column(col)
        table.add_row(config.source, percent(summary["accuracy"]), percent(summary["baseline_accuracy"]), percent(summary["gain"]))
        console.print(table)
        console.print(f"results: {run.path / 'results.json'}")
        return summary
