"""Tasks as plug-ins (``seal.tasks``): the recipe names its task, each task owns its section,
and a task defined here alone runs ``seal train`` end to end through the registry.

The worked example of ``docs/architecture.md`` ("How to add a task"): :class:`ShoutTask`
reuses the text task (SEAL-format passages, text self-edits) and changes two things, its
inner-loop training texts (the self-edit in capitals, plus a line naming the passage) and its
grader (``qa.grader: first-letter``, the answer's first letter against the gold's); the journal
shows both.
"""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import yaml
from rich.console import Console
from train_helpers import REPO, one_thread, tiny_overrides

from seal.config import RecipeError, load_recipe
from seal.rundir import read_jsonl
from seal.tasks.base import TextTask
from seal.tasks.registry import TASK_CLASSES, make_task, register_task
from seal.tasks.sections import TASKS
from seal.train import train

pytestmark = pytest.mark.timeout(300)


def first_letter(prediction: str, gold: str) -> float:
    """1.0 when the answer's first non-blank character is the gold answer's (case-blind), else 0.0."""
    p, g = prediction.strip()[:1].lower(), gold.strip()[:1].lower()
    return float(bool(g) and p == g)


class ShoutTask(TextTask):
    """A test task: the text task with its own training texts and grader."""

    def evaluation(self, key, passage, completion, seed, baseline_accuracy=None, template=None):
        evaluation = super().evaluation(key, passage, completion, seed, baseline_accuracy, template)
        return replace(evaluation, texts=[text.upper() for text in evaluation.texts] + [f"SHOUTED ABOUT {passage.title.upper()}"])

    def graders(self) -> dict:
        return {"first-letter": first_letter}


@pytest.fixture
def shout():
    """``task: shout`` registered for the test, unregistered after."""
    register_task("shout", ShoutTask, graders=("first-letter",))
    yield ShoutTask
    TASKS.pop("shout")
    TASK_CLASSES.pop("shout")


def without_task(name: str, tmp_path) -> str:
    """A copy of ``recipes/NAME`` without its ``task:`` line: a recipe written before the field existed."""
    text = (REPO / "recipes" / name).read_text()
    assert "\ntask: " in text
    out = tmp_path / name
    out.write_text("".join(line for line in text.splitlines(keepends=True) if not line.startswith("task: ")))
    return str(out)


def test_the_task_is_named_or_inferred_and_owns_its_section(tmp_path):
    squad = load_recipe(REPO / "recipes" / "squad_tiny_cpu.yaml")
    arc = load_recipe(REPO / "recipes" / "arc_tiny_cpu.yaml")
    assert (squad.task, arc.task) == ("squad", "arc")  # named in the recipes
    # recipes written before `task` existed: inferred from the section present
    old = {name: load_recipe(without_task(name, tmp_path)).task for name in ("squad_tiny_cpu.yaml", "arc_tiny_cpu.yaml", "microworld_cpu.yaml")}
    assert old == {"squad_tiny_cpu.yaml": "squad", "arc_tiny_cpu.yaml": "arc", "microworld_cpu.yaml": "microworld"}
    assert type(make_task(arc)).__name__ == "FewShotArcTask" and make_task(squad).self_edit_hint() == ""
    named = load_recipe(REPO / "recipes" / "squad_tiny_cpu.yaml", ["task=arc"])  # a named task gets its section's defaults
    assert named.arc is not None and named.arc.families == ["basic", "size", "chain", "repeat"]
    with pytest.raises(RecipeError, match="task squad takes no 'arc' section"):
        load_recipe(REPO / "recipes" / "arc_tiny_cpu.yaml", ["task=squad"])
    with pytest.raises(RecipeError, match="task 'poetry' is not a task; known: arc, documents, microworld, squad"):
        load_recipe(REPO / "recipes" / "squad_tiny_cpu.yaml", ["task=poetry"])
    with pytest.raises(RecipeError, match="qa.grader 'grid' is task arc's; task squad has no such grader"):
        load_recipe(REPO / "recipes" / "squad_tiny_cpu.yaml", ["qa.grader=grid"])
    with pytest.raises(RecipeError, match="model.build_tiny.warmup 'arc-configs' needs an arc section"):
        load_recipe(REPO / "recipes" / "squad_tiny_cpu.yaml", ["model.build_tiny.warmup=arc-configs"])


def test_register_task_refuses_what_is_not_a_task():
    with pytest.raises(ValueError, match="not a seal.tasks.base.Task subclass"):
        register_task("bad", dict)
    with pytest.raises(ValueError, match="'model' is not a task section"):
        register_task("bad", ShoutTask, section="model")
    assert "bad" not in TASKS and "bad" not in TASK_CLASSES


def test_a_task_defined_in_a_test_runs_seal_train(shout, tiny_squad_model, data_root, tmp_path):
    """``seal train`` with ``task: shout``: every evaluation trains on the task's texts and is
    graded by its grader (the tiny random model's answers score 0 under SQuAD's graders; under
    ``first-letter`` a record's scores are its answers' first letters against the golds')."""
    recipe = load_recipe(REPO / "recipes" / "squad_tiny_cpu.yaml", tiny_overrides(tiny_squad_model, data_root, task="shout", qa__grader="first-letter"))
    assert recipe.task == "shout" and isinstance(make_task(recipe), ShoutTask)
    run = tmp_path / "run"
    with one_thread():
        train(recipe, run, console=Console(file=io.StringIO(), width=120))
    assert yaml.safe_load((run / "config.yaml").read_text())["task"] == "shout"
    rows = read_jsonl(run / "journal.jsonl")
    evaluations = [r for r in rows if r["kind"] == "evaluation"]
    assert len(evaluations) == 2 * 3  # 2 passages x 3 self-edits x 1 repetition
    edits = {e["passage"]: e["completions"] for e in yaml.safe_load((run / "round_0" / "self_edits.json").read_text())}
    passages = {p: make_task(recipe).train_passages(recipe.data.train_file, 2)[p] for p in range(2)}
    for r in evaluations:
        plain = make_task(recipe.model_copy(update={"task": "squad"})).evaluation(None, passages[r["passage"]], edits[r["passage"]][r["self_edit"]], 0)
        assert r["n_train_texts"] == len(plain.texts) + 1  # the task's extra line
        golds = [q.answer for q in passages[r["passage"]].questions]
        assert r["error"] is None and r["scores"] == [first_letter(a, g) for a, g in zip(r["answers"], golds, strict=True)]
    for r in (r for r in rows if r["kind"] == "baseline"):  # the baselines are graded by the task too
        golds = [q.answer for q in passages[r["passage"]].questions]
        assert r["scores"] == [first_letter(a, g) for a, g in zip(r["answers"], golds, strict=True)]
