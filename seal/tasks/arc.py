"""Task ``arc``: few-shot ARC (paper Section 4.1, ``seal.arc``).

A task of a Kaggle-layout challenges file is a passage (``seal.arc.voting.arc_passage``: title
= task id, context = the demonstrations, one question per test input); a self-edit is a
configuration (augmentation families and optimisation keys, ``seal.arc.self_edit``) turned into
test-time-training texts (:func:`arc_evaluation`); answers are graded as grids (``qa.grader:
grid``), or, with ``arc.inference: vote``, every augmented query is asked and the answers voted
(``seal.arc.voting``). Invalid configurations may be drawn again (``arc.invalid: resample``); a
round records how many were, and how many adapters trained 0 epochs (:func:`arc_round_summary`).
A tiny CPU policy's tokenizer learns the tasks' text, and ``model.build_tiny.warmup:
arc-configs`` teaches it to write configurations (``seal.arc.warmup``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from seal.arc.config import ArcSection
from seal.arc.grids import grids_match
from seal.arc.self_edit import read_configuration, resample_self_edits, self_edit_hint, ttt_texts
from seal.arc.tasks import ArcPassage, load_arc_tasks, task_passage
from seal.arc.voting import arc_passage, vote_scores
from seal.arc.warmup import random_configuration, warm_up_tiny_policy
from seal.config import InnerLoopConfig, QAConfig, SelfEditConfig
from seal.data import Passage
from seal.hparams import AdapterSettings
from seal.prompts import qa_prompt, self_edit_prompt
from seal.scoring import Evaluation, EvaluationRecord
from seal.seeding import derive_seed
from seal.tasks.base import Task


def arc_evaluation(
    key: dict, passage: ArcPassage, completion: str | None, self_edit: SelfEditConfig, inner: InnerLoopConfig, seed: int,
    arc: ArcSection, baseline_accuracy: float | None = None,
) -> Evaluation:  # fmt: skip
    """The evaluation of one ARC configuration (``seal.arc.self_edit``): its test-time-training
    texts (:func:`seal.arc.self_edit.ttt_texts`, seeded from the adapter's seed) and settings;
    ``hparams`` records the resolved settings plus ``families`` (and ``untrained``, the reason,
    when it trains 0 epochs: a key left out under ``arc.missing_keys: reference``, or more
    steps than ``arc.max_steps``). ``completion`` None: no training (the in-context answer). A configuration that does not parse or leaves the
    declared space: ``invalid`` set to the reason (a failure, reward ``inner.failure_reward``)."""
    if completion is None:
        return Evaluation(key, passage, [], seed, baseline_accuracy, AdapterSettings())
    config, error = read_configuration(completion, self_edit.hparams, arc)
    if config is None:
        return Evaluation(key, passage, [], seed, baseline_accuracy, None, None, invalid=error)
    texts = ttt_texts(passage.task, config.families, arc, derive_seed(seed, "arc-ttt") % 2**32)
    settings, untrained = config.settings, config.untrained
    epochs = settings.resolve(inner)["epochs"]
    if untrained is None and arc.max_steps is not None and epochs * len(texts) // inner.batch_size > arc.max_steps:
        # The reference's step guard (self-edit.py:552-555): too many steps train 0 epochs.
        untrained = f"{epochs} epochs x {len(texts)} texts // batch {inner.batch_size} > {arc.max_steps} steps"
        settings = AdapterSettings(settings.lr, 0, settings.loss_on, settings.lora_rank)
    hparams = settings.resolve(inner) | {"families": list(config.families)}
    if untrained is not None:
        hparams["untrained"] = untrained
    return Evaluation(key, passage, texts, seed, baseline_accuracy, settings, hparams)


def arc_round_summary(self_edit: SelfEditConfig, arc: ArcSection, self_edits: list[list], records: list[EvaluationRecord]) -> dict:
    """A round's ARC counts: ``n_resampled`` self-edit slots whose first draw was invalid and
    were drawn again (``arc.invalid: resample``), ``n_still_invalid`` those of them still
    invalid after ``arc.resample_rounds`` more draws (they fail), ``n_untrained`` evaluations
    that trained 0 epochs (``arc.missing_keys: reference`` or ``arc.max_steps``; journal
    ``hparams.untrained``)."""
    resampled = [e for edits in self_edits for e in edits if e.draws > 1]
    return {
        "n_resampled": len(resampled),
        "n_still_invalid": sum(read_configuration(e.text, self_edit.hparams, arc)[0] is None for e in resampled),
        "n_untrained": sum(bool(record.hparams and record.hparams.get("untrained")) for record in records),
    }


def _vote_plan(passage: Passage):
    return passage.vote if isinstance(passage, ArcPassage) else None


class FewShotArcTask(Task):
    """Few-shot ARC: tasks as passages, configurations as self-edits, grids graded (module docstring)."""

    @property
    def section(self) -> ArcSection:
        return self.recipe.arc

    def train_passages(self, path: str, n: int | None) -> list[Passage]:
        arc = self.section
        tasks = load_arc_tasks(path, arc.train_solutions, self.recipe.data.root, arc.task_ids, n)
        return [arc_passage(task, arc, self.recipe.seed) for task in tasks]

    def eval_passages(self) -> list[Passage]:
        data, arc = self.recipe.data, self.section
        tasks = load_arc_tasks(data.eval_file, arc.eval_solutions, data.root, arc.eval_task_ids, data.n_eval_passages)
        return [arc_passage(task, arc, self.recipe.seed) for task in tasks]

    def self_edit_hint(self) -> str:
        """How to write a configuration (:func:`seal.arc.self_edit.self_edit_hint`)."""
        return self_edit_hint(self.recipe.self_edit, self.section)

    def resample_self_edits(self, drawn: list[list], draw: Callable[[list[int], int], list[list]]) -> list[list]:
        """With ``arc.invalid: resample``, configurations that do not parse drawn again
        (:func:`seal.arc.self_edit.resample_self_edits`)."""
        if self.section.invalid != "resample":
            return drawn
        return resample_self_edits(drawn, draw, self.recipe)

    def evaluation(
        self, key: dict, passage: Passage, completion: str | None, seed: int, baseline_accuracy: float | None = None, template: str | None = None
    ) -> Evaluation:
        """:func:`arc_evaluation` (``template`` unused: a configuration's texts are the task's)."""
        recipe = self.recipe
        return arc_evaluation(key, passage, completion, recipe.self_edit, recipe.inner, seed, self.section, baseline_accuracy)

    def question_prompts(self, passage: Passage, template: str = "reference") -> list[str]:
        """One prompt per test input, or, answered by vote (``arc.inference: vote``), every
        augmented query of every test input (:class:`seal.arc.voting.VotePlan`)."""
        plan = _vote_plan(passage)
        if plan is not None:
            return [qa_prompt(passage.title, q.text, template) for queries in plan.queries for q in queries]
        return super().question_prompts(passage, template)

    def n_prompts(self, passage: Passage) -> int:
        plan = _vote_plan(passage)
        return super().n_prompts(passage) if plan is None else plan.n_queries

    def graders(self) -> dict:
        """``grid``: the answer's leading grid equals the gold grid exactly (``seal.arc.grids``)."""
        return {"grid": grids_match}

    def grade_answers(self, passage: Passage, answers: Sequence[str], qa: QAConfig, judge=None) -> list[float | None]:
        """Answered by vote: the answers voted per test input, every score the task's verdict
        (:func:`seal.arc.voting.vote_scores`: 1.0 only when every test input is solved)."""
        plan = _vote_plan(passage)
        if plan is not None:
            return vote_scores(plan, [t.output for t in passage.task.test], answers)
        return super().grade_answers(passage, answers, qa, judge)

    def round_metrics(self, self_edits: list[list], records: list[EvaluationRecord]) -> dict:
        """``arc``: :func:`arc_round_summary` (resampled configurations, untrained adapters)."""
        return {"arc": arc_round_summary(self.recipe.self_edit, self.section, self_edits, records)}

    def round_message(self, index: int, metrics: dict) -> str | None:
        arc = metrics.get("arc")
        if arc and (arc["n_resampled"] or arc["n_untrained"]):
            return (
                f"round {index}: ARC configurations: {arc['n_resampled']} resampled ({arc['n_still_invalid']} still invalid), "
                f"{arc['n_untrained']} evaluations untrained (0 epochs)"
            )
        return None

    # ------------------------------------------------------------------ the tiny model

    def _train_tasks(self) -> list:
        if not hasattr(self, "_tasks"):
            self._tasks = load_arc_tasks(self.recipe.data.train_file, self.section.train_solutions, self.recipe.data.root)
        return self._tasks

    def tokenizer_texts(self, seed: int) -> list[str]:
        """Every training task's queries and answers, and with the configuration warm-up also
        its self-edit prompts, each followed by 20 drawn configurations."""
        recipe, tasks = self.recipe, self._train_tasks()
        texts = [q.question + q.answer for p in map(task_passage, tasks) for q in p.questions]
        if recipe.model.build_tiny.warmup == "arc-configs":
            rng = np.random.default_rng(seed)
            hint = self.self_edit_hint()
            for p in map(task_passage, tasks):
                prompt = self_edit_prompt(recipe.self_edit.template, p.title, p.context, hint=hint)
                texts += [prompt + random_configuration(rng, recipe.self_edit.hparams, self.section) for _ in range(20)]
        return texts

    def warmup_settings(self) -> dict:
        """``model.build_tiny``, the training file, the ARC families and the self-edit prompt and
        space (``self_edit`` without its sampling settings)."""
        recipe, se = self.recipe, self.recipe.self_edit
        return {
            "build_tiny": recipe.model.build_tiny.model_dump(),
            "train_file": recipe.data.train_file,
            "arc_families": self.section.families,
            "self_edit": {"template": se.template, "chat_template": se.chat_template, "hparams": se.hparams.model_dump()},
        }

    def warm_up(self, path: Path, log: Callable[[str], None] = print) -> dict:
        """``arc-configs``: teach the tiny policy to write configurations
        (:func:`seal.arc.warmup.warm_up_tiny_policy`, a minute at most on one CPU thread)."""
        tiny = self.recipe.model.build_tiny
        return warm_up_tiny_policy(path, self._train_tasks(), self.recipe, tiny.warmup_steps, tiny.seed, tiny.warmup_lr, log=log)
