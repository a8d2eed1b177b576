"""The task registry: ``task:`` name -> :class:`~seal.tasks.base.Task` class, and
:func:`make_task`, the one way the generic code reaches a task.

A new task is a :class:`~seal.tasks.base.Task` subclass registered under a name with
:func:`register_task` (the built-in ones below; a test's in ``tests/test_tasks.py``); a recipe
with ``task: <name>`` then runs it. A task with settings of its own has a section: a typed
field of :class:`seal.tasks.sections.TaskSections` (the built-in tasks' ``arc``,
``microworld``, ``documents``), named when registering.
"""

from __future__ import annotations

import typing

from seal.config import Recipe
from seal.tasks.arc import FewShotArcTask
from seal.tasks.base import Task, TextTask
from seal.tasks.documents import DocumentsTask
from seal.tasks.microworld import MicroworldTask
from seal.tasks.sections import TASKS, TaskInfo, TaskSections
from seal.tasks.squad import SquadTask

#: ``task:`` name -> its class.
TASK_CLASSES: dict[str, type[Task]] = {}


def register_task(name: str, task_class: type[Task], section: str | None = None, warmups: tuple[str, ...] = (), graders: tuple[str, ...] = ()) -> None:
    """Make ``task: name`` run ``task_class``.

    Args:
        name: the recipe's ``task`` value.
        task_class: a :class:`Task` subclass (usually of :class:`TextTask`).
        section: the recipe field holding the task's settings, a field of
            :class:`seal.tasks.sections.TaskSections` (None: the task has none).
        warmups, graders: the ``model.build_tiny.warmup`` and ``qa.grader`` names the task adds
            (its :meth:`Task.warm_up` and :meth:`Task.graders`).

    Raises:
        ValueError: ``task_class`` is not a Task, or ``section`` is not a task-section field.
    """
    if not (isinstance(task_class, type) and issubclass(task_class, Task)):
        raise ValueError(f"register_task({name!r}): {task_class!r} is not a seal.tasks.base.Task subclass")
    section_class = None
    if section is not None:
        if section == "task" or section not in TaskSections.model_fields:
            raise ValueError(f"register_task({name!r}): {section!r} is not a task section of the recipe (a field of seal.tasks.sections.TaskSections)")
        section_class = next(c for c in typing.get_args(TaskSections.model_fields[section].annotation) if c is not type(None))
    task_class.name = name
    TASKS[name] = TaskInfo(name, section, section_class, tuple(warmups), tuple(graders))
    TASK_CLASSES[name] = task_class


def make_task(recipe: Recipe) -> Task:
    """The recipe's task (``recipe.task``, resolved when the recipe loaded).

    Raises:
        ValueError: no task of that name is registered (a recipe validated before
            ``register_task`` was called for it).
    """
    try:
        return TASK_CLASSES[recipe.task](recipe)
    except KeyError:
        raise ValueError(f"task {recipe.task!r} is not registered; known: {', '.join(sorted(TASK_CLASSES))}") from None


register_task("squad", SquadTask)
register_task("microworld", MicroworldTask, "microworld")
register_task("arc", FewShotArcTask, "arc", warmups=("arc-configs",), graders=("grid",))
register_task("documents", DocumentsTask, "documents")

__all__ = ["TASK_CLASSES", "Task", "TextTask", "make_task", "register_task"]
