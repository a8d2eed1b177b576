"""The task interface: what differs between the domains SEAL learns on.

A :class:`Task` is made from a recipe (``seal.tasks.registry.make_task``) and owns every
domain-specific step of a run; the generic code (``seal.stages``, ``seal.grpo``,
``seal.evaluate``, ``seal.bench``, ``seal.prepare``) calls it and branches on no domain:

=====================  ===========================================================  ============
step                   method                                                        default
=====================  ===========================================================  ============
passages               :meth:`train_passages`, :meth:`eval_passages`                 SEAL-format JSON or the hub
self-edit prompt       :meth:`self_edit_hint` (a paragraph after the passage)         the hparams block's
sampling               :meth:`resample_self_edits` (redraw invalid self-edits)        none
self-edit -> training  :meth:`evaluation` (an ``Evaluation``: texts, settings)        ``train_texts``
questions, grading     :meth:`question_prompts`, :meth:`n_prompts`,                  one prompt per question,
                       :meth:`grade_answers`, :meth:`graders`                        ``qa.grader``
round metrics          :meth:`round_metrics`, :meth:`round_message`                  none
diagnostics            :attr:`diagnostics` (format kinds, classifier, coverage)      line formats
model preparation      :meth:`prepare`, :meth:`tokenizer_texts`, :meth:`warm_up`,      nothing
                       :meth:`warmup_settings`
=====================  ===========================================================  ============

The recipe checks of a task are its section's ``check_recipe`` (``seal.tasks.sections``, the
bottom layer: they run when a recipe loads, before any of this is imported).

:class:`TextTask` is SQuAD's behaviour (passages with questions, text self-edits); task
``squad`` is it, and ``microworld`` and ``documents`` reuse it. Task ``arc`` overrides.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from seal.config import Recipe
from seal.data import DataError, Passage, load_passages, load_squad_from_hub
from seal.diagnostics import TEXT, Formats
from seal.hparams import prompt_hint
from seal.scoring import Evaluation, EvaluationRecord, TextQA, self_edit_evaluation
from seal.sections import RecipeError


class Task(TextQA):
    """One domain: its data, prompts, evaluations, grading, metrics, diagnostics and model
    preparation, for ``recipe`` (its section: :attr:`section`).

    Question prompts and grading (:meth:`question_prompts`, :meth:`n_prompts`,
    :meth:`grade_answers`, :meth:`graders`) are :class:`seal.scoring.TextQA`'s: one prompt per
    question graded by ``qa.grader``. Subclasses override what their domain does differently.
    """

    #: The ``task:`` name (set by ``seal.tasks.registry.register_task``).
    name: ClassVar[str] = ""

    #: The diagnostics' format kinds, classifier and coverage (``seal.diagnostics.Formats``).
    diagnostics: Formats = TEXT

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    @property
    def section(self) -> Any:
        """The recipe's section of this task (None: it has none)."""
        return self.recipe.task_section

    # ------------------------------------------------------------------ data

    def train_passages(self, path: str, n: int | None) -> list[Passage]:
        """The first ``n`` (None: all) training passages of the file ``path`` (relative to
        ``data.root``). Raises ``DataError`` naming the file."""
        raise NotImplementedError

    def eval_passages(self) -> list[Passage]:
        """The evaluation passages (``data.eval_file``, the first ``data.n_eval_passages``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ self-edits

    def self_edit_hint(self) -> str:
        """The paragraph the self-edit prompt adds after the passage (``seal.prompts.self_edit_prompt``):
        how to write the hyperparameter block (:func:`seal.hparams.prompt_hint`; "" when off)."""
        return prompt_hint(self.recipe.self_edit.hparams)

    def resample_self_edits(self, drawn: list[list], draw: Callable[[list[int], int], list[list]]) -> list[list]:
        """Sampling's post-processing: ``drawn`` (per passage, its self-edits: ``SelfEdit`` s or
        strings) with invalid ones drawn again by ``draw(passage positions, attempt)``. Default: as drawn."""
        return drawn

    def evaluation(
        self, key: dict, passage: Passage, completion: str | None, seed: int, baseline_accuracy: float | None = None, template: str | None = None
    ) -> Evaluation:
        """The inner-loop evaluation of one self-edit (``completion``; None: the passage alone):
        its training texts and settings, with the recipe's ``self_edit`` and ``inner``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ a round

    def round_metrics(self, self_edits: list[list], records: list[EvaluationRecord]) -> dict:
        """The task's own entries of a round's metrics (merged into ``round_k/metrics.json``). Default: none."""
        return {}

    def round_message(self, index: int, metrics: dict) -> str | None:
        """A line to print after round ``index``'s summary about the task's metrics (None: none)."""
        return None

    # ------------------------------------------------------------------ the model

    def prepare(self, log: Callable[[str], None] = print) -> None:
        """Make what the recipe's model needs exist before a command runs (e.g. pretrain a
        world). Default: nothing."""

    def tokenizer_texts(self, seed: int) -> list[str]:
        """Texts a tiny model's tokenizer also learns (``model.build_tiny``). Default: none."""
        return []

    def warmup_settings(self) -> dict:
        """What a warmed-up tiny model is built from (``model.build_tiny.warmup`` set): two
        recipes with the same settings share the built model (``seal.prepare.tiny_key``)."""
        raise RecipeError(f"task {self.name} has no warm-up {self.recipe.model.build_tiny.warmup!r}")

    def warm_up(self, path: Path, log: Callable[[str], None] = print) -> dict:
        """Warm the tiny model at ``path`` up (``model.build_tiny.warmup``) and return its report
        (recorded in the directory's ``seal_tiny.json``). Default: the task has no warm-up."""
        raise RecipeError(f"task {self.name} has no warm-up {self.recipe.model.build_tiny.warmup!r}")


class TextTask(Task):
    """Passages with questions and text self-edits (SQuAD's behaviour): SEAL-format JSON files
    (``seal.data.load_passages``) or a hub dataset with SQuAD's columns (``data.hf_dataset``);
    a self-edit's lines are its training texts (``seal.scoring.self_edit_evaluation``)."""

    def train_passages(self, path: str, n: int | None) -> list[Passage]:
        data = self.recipe.data
        if data.hf_dataset:
            passages = load_squad_from_hub(data.hf_dataset, "train", n)
            if not passages:
                raise DataError(f"data.hf_dataset {data.hf_dataset!r}: its train split holds no passages")
            return passages
        return load_passages(path, n, data.root)

    def eval_passages(self) -> list[Passage]:
        data = self.recipe.data
        if data.hf_dataset:
            return load_squad_from_hub(data.hf_dataset, "validation", data.n_eval_passages)
        return load_passages(data.eval_file, data.n_eval_passages, data.root)

    def evaluation(
        self, key: dict, passage: Passage, completion: str | None, seed: int, baseline_accuracy: float | None = None, template: str | None = None
    ) -> Evaluation:
        recipe = self.recipe
        return self_edit_evaluation(key, passage, completion, recipe.self_edit, recipe.inner, seed, baseline_accuracy, template)
