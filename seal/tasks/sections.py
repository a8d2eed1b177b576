"""The recipe's task and its section: the bottom layer of :mod:`seal.tasks`.

A recipe names its task (``task: squad | microworld | arc | documents``, or one registered with
:func:`seal.tasks.registry.register_task`); a task may have a section of its own settings
(``arc:``, ``microworld:``, ``documents:``) and no other task's. Old recipes name none: the task
is inferred from the section present (``arc`` -> arc, ``microworld`` -> microworld, else squad).

:class:`TaskSections` holds the ``task`` field and the sections as typed optional fields;
:class:`seal.config.Recipe` inherits it, so :mod:`seal.config` names no task. A section's
recipe checks are its ``check_recipe(recipe)`` method (raising ``ValueError``); its string
placeholder (the microworld's ``{microworld}``) is its ``placeholder`` / ``placeholder_value()``.

Imports only the section classes (each imports only :mod:`seal.sections`), so recipes load
without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, model_validator

from seal.arc.config import ArcSection
from seal.microworld.config import MicroworldSection
from seal.sections import RecipeError
from seal.tasks.documents_config import DocumentsSection


@dataclass(frozen=True)
class TaskInfo:
    """What the recipe layer knows of a task: its name, the recipe field of its section (None:
    it has none), and the ``model.build_tiny.warmup`` names and ``qa.grader`` names it adds."""

    name: str
    section: str | None = None
    section_class: type | None = None
    warmups: tuple[str, ...] = ()
    graders: tuple[str, ...] = ()


#: Every task a recipe may name, by name (:func:`seal.tasks.registry.register_task` adds to it).
TASKS: dict[str, TaskInfo] = {
    "squad": TaskInfo("squad"),
    "microworld": TaskInfo("microworld", "microworld", MicroworldSection),
    "arc": TaskInfo("arc", "arc", ArcSection, warmups=("arc-configs",), graders=("grid",)),
    "documents": TaskInfo("documents", "documents", DocumentsSection),
}

#: The graders of every task (``seal.graders``); a task may add its own (:attr:`TaskInfo.graders`).
GRADERS = ("exact", "f1", "contains", "judge")

#: The task of a recipe that names none: the first of these sections it has (else ``squad``).
INFERRED_FROM = ("arc", "microworld")


def section_fields() -> list[str]:
    """The recipe fields that are task sections."""
    return [info.section for info in TASKS.values() if info.section is not None]


class TaskSections(BaseModel):
    """The recipe's task (``task``) and the task sections, one optional field each."""

    task: str | None = Field(
        None,
        description="The task: 'squad' (SEAL-format passages with questions), 'microworld', 'arc', 'documents' (your own JSONL or dataset; each with its own section), "
        "or one registered by seal.tasks.registry.register_task. None: inferred from the section present (arc, microworld; else squad).",
    )
    arc: ArcSection | None = Field(
        None,
        description="task arc (seal/arc): data.train_file / eval_file are Kaggle-layout challenges files and self-edits are configurations (augmentations, lr, epochs, loss_on).",
    )
    microworld: MicroworldSection | None = Field(
        None,
        description="task microworld: pretrain (or reuse) this synthetic world first (seal/microworld); '{microworld}' in the recipe's strings is its directory.",
    )
    documents: DocumentsSection | None = Field(
        None,
        description="task documents (seal/tasks/documents.py): your own documents with questions, JSON Lines files (data.train_file / eval_file) or a datasets dataset (documents.hf_dataset), with your column names (documents.columns).",
    )

    @model_validator(mode="after")
    def _task_and_its_section(self):
        """Name the task (inferred when unset), refuse a section, warm-up or grader of another
        task, and run the task section's own checks (``check_recipe``)."""
        present = [name for name in section_fields() if getattr(self, name, None) is not None]
        if self.task is None:
            inferred = next((name for name in INFERRED_FROM if name in present), "squad")
            object.__setattr__(self, "task", inferred)  # set, not assigned: no re-validation
        info = TASKS.get(self.task)
        if info is None:
            raise ValueError(f"task {self.task!r} is not a task; known: {', '.join(sorted(TASKS))}")
        for name in present:
            if name != info.section:
                owner = next(i.name for i in TASKS.values() if i.section == name)
                raise ValueError(f"task {self.task} takes no {name!r} section (it is task {owner}'s); remove it or set task: {owner}")
        if info.section is not None and getattr(self, info.section) is None:
            object.__setattr__(self, info.section, info.section_class())  # a named task without its section: the defaults
        _check_warmup(self.model.build_tiny, info)
        _check_grader(self.qa.grader, info)
        section = self.task_section
        if section is not None and hasattr(section, "check_recipe"):
            section.check_recipe(self)
        return self

    @property
    def task_section(self) -> Any:
        """The task's section (None: the task has none)."""
        info = TASKS[self.task]
        return getattr(self, info.section) if info.section is not None else None


def _check_warmup(tiny, info: TaskInfo) -> None:
    """``model.build_tiny.warmup`` is 'none' or a warm-up of the recipe's task (ValueError)."""
    if tiny is None or tiny.warmup == "none" or tiny.warmup in info.warmups:
        return
    owner = next((i.section for i in TASKS.values() if tiny.warmup in i.warmups), None)
    if owner is not None:
        raise ValueError(f"model.build_tiny.warmup {tiny.warmup!r} needs an {owner} section")
    raise ValueError(f"model.build_tiny.warmup {tiny.warmup!r} is not a warm-up of task {info.name}; known: 'none', {', '.join(map(repr, info.warmups))}".rstrip(", "))


def _check_grader(grader: str, info: TaskInfo) -> None:
    """``qa.grader`` is one of every task's (:data:`GRADERS`) or of the recipe's task (ValueError)."""
    if grader in GRADERS or grader in info.graders:
        return
    owner = next((i for i in TASKS.values() if grader in i.graders), None)
    if owner is not None:
        raise ValueError(f"qa.grader {grader!r} is task {owner.name}'s; task {info.name} has no such grader")
    raise ValueError(f"qa.grader {grader!r} is not a grader; known: {', '.join(repr(g) for g in (*GRADERS, *info.graders))}")


def resolve_placeholders(recipe: TaskSections, raw: dict, where: str, validate) -> Any:
    """Substitute the task sections' placeholders (``{microworld}``: the world's directory) in
    every string of the recipe and validate it again (``validate(raw)``); the recipe as is when
    none is used.

    Raises:
        RecipeError: a placeholder used without its section (names the file ``where``).
    """
    for info in TASKS.values():
        placeholder = getattr(info.section_class, "placeholder", None)
        if placeholder is None:
            continue
        name = info.section
        section = getattr(recipe, name)
        if section is None:
            if _mentions(raw, placeholder):
                raise RecipeError(f"recipe {where} uses {placeholder} but has no {name!r} section")
            continue
        return validate(_substitute(raw, placeholder, section.placeholder_value()))
    return recipe


def _substitute(obj: Any, old: str, new: str) -> Any:
    if isinstance(obj, str):
        return obj.replace(old, new)
    if isinstance(obj, dict):
        return {k: _substitute(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, old, new) for v in obj]
    return obj


def _mentions(obj: Any, text: str) -> bool:
    if isinstance(obj, str):
        return text in obj
    if isinstance(obj, dict):
        return any(_mentions(v, text) for v in obj.values())
    if isinstance(obj, list):
        return any(_mentions(v, text) for v in obj)
    return False
