"""ARC tasks: the Kaggle-layout loaders, the prompts' text, and tasks as passages.

Files (``../shared/data/arc/README.md``): a challenges file ``{task_id: {"train": [{"input":
grid, "output": grid}, ...], "test": [{"input": grid}, ...]}}`` and a solutions file
``{task_id: [grid, ...]}`` (one output per test input), e.g.
``arc/arc-agi_training_challenges_filtered_1B_training_set.json`` and its ``..._solutions_...``.

A task enters ``seal train`` as an :class:`ArcPassage` (a :class:`seal.data.Passage`): title =
task id, context = its demonstrations' text (what the policy reads before writing a
configuration), one question per test input (question = the full query, demonstrations then
the test input; answer = the gold output grid's text). The stages treat it as any passage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from seal.arc.config import ANSWER_MARKER, REFERENCE_ANSWER_MARKER
from seal.arc.grids import Grid, GridError, as_grid, grid_to_text
from seal.data import QA, DataError, Passage, resolve_data_path

INSTRUCTION = (
    "Find the rule that maps each input grid to its output grid, then apply it to the test input. "
    "Grids are rows of colours 0-9."
)


@dataclass(frozen=True)
class Example:
    """One input grid and its output grid."""

    input: Grid
    output: Grid


@dataclass(frozen=True)
class ArcTask:
    """One ARC task.

    Attributes:
        id: the task's id (the JSON key, e.g. ``"5582e5ca"``).
        train: its demonstrations.
        test: one :class:`Example` per test input, the output from the solutions file.
    """

    id: str
    train: tuple[Example, ...]
    test: tuple[Example, ...]

    def grids(self) -> list[Grid]:
        """Every grid of the task (demonstrations, test inputs and outputs)."""
        return [g for e in (*self.train, *self.test) for g in (e.input, e.output)]


def solutions_path(challenges: str) -> str:
    """The Kaggle layout's solutions file beside a challenges file (``challenges`` -> ``solutions`` in the name)."""
    p = Path(challenges)
    if "challenges" not in p.name:
        raise DataError(f"{challenges}: cannot derive the solutions file (no 'challenges' in the name); set it explicitly")
    return str(p.with_name(p.name.replace("challenges", "solutions")))


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise DataError(f"data file not found: {path} (set data.root or $SEAL_DATA_DIR)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def _grid(value: object, where: str) -> Grid:
    try:
        return as_grid(value)
    except GridError as e:
        raise DataError(f"{where}: {e}") from None


def _pairs(items: object, where: str, with_output: bool) -> list[tuple[Grid, Grid | None]]:
    if not isinstance(items, list) or not items:
        raise DataError(f"{where}: expected a non-empty list of examples")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "input" not in item or (with_output and "output" not in item):
            fields = "'input' and 'output'" if with_output else "'input'"
            raise DataError(f"{where} {i}: expected an object with {fields}")
        output = _grid(item["output"], f"{where} {i} output") if with_output else None
        out.append((_grid(item["input"], f"{where} {i} input"), output))
    return out


def load_arc_tasks(
    challenges: str | os.PathLike,
    solutions: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    task_ids: Sequence[str] | None = None,
    n: int | None = None,
) -> list[ArcTask]:
    """Read and validate the tasks of a challenges file and its solutions.

    Args:
        challenges, solutions: paths (relative ones resolve against ``root``, as SQuAD's do);
            ``solutions`` None: :func:`solutions_path`.
        task_ids: keep these tasks, in this order (None: all, in file order).
        n: keep the first ``n`` (after ``task_ids``).

    Raises:
        DataError: a file missing or not JSON; a task without train/test examples; a grid not
            rectangular, outside 1-30 per side or with a colour outside 0-9; solutions missing
            for a task or not one per test input; a ``task_ids`` entry not in the file. The
            message names the file and the task id (and the example and grid).
    """
    c_path = resolve_data_path(challenges, root)
    s_path = resolve_data_path(solutions if solutions is not None else solutions_path(str(challenges)), root)
    raw, sols = _read_json(c_path), _read_json(s_path)
    for path, value in ((c_path, raw), (s_path, sols)):
        if not isinstance(value, dict):
            raise DataError(f"{path}: expected a JSON object of tasks by id, got {type(value).__name__}")
    ids = list(raw) if task_ids is None else list(task_ids)
    missing = [t for t in ids if t not in raw]
    if missing:
        raise DataError(f"{c_path}: no task {missing[0]!r} (task_ids)")
    ids = ids if n is None else ids[:n]
    tasks = []
    for task_id in ids:
        obj = raw[task_id]
        where = f"{c_path}: task {task_id}"
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected an object with 'train' and 'test'")
        train = [Example(i, o) for i, o in _pairs(obj.get("train"), f"{where}: train example", True)]
        inputs = [i for i, _ in _pairs(obj.get("test"), f"{where}: test example", False)]
        outs = sols.get(task_id)
        if not isinstance(outs, list) or len(outs) != len(inputs):
            raise DataError(f"{s_path}: task {task_id}: expected {len(inputs)} solution grid(s), got {outs if outs is None else len(outs)}")
        test = [Example(i, _grid(o, f"{s_path}: task {task_id}: solution {k}")) for k, (i, o) in enumerate(zip(inputs, outs, strict=True))]
        tasks.append(ArcTask(task_id, tuple(train), tuple(test)))
    return tasks


# ----------------------------------------------------------------------------- text


def demonstrations_text(examples: Sequence[Example]) -> str:
    """The examples as the reference's self-edit prompt shows them: ``Input:`` grid,
    ``Output:`` grid, a blank line between examples (``few-shot/self-edit.py``, ``get_prompt``)."""
    return "\n\n".join(f"Input:\n{grid_to_text(e.input)}\nOutput:\n{grid_to_text(e.output)}" for e in examples)


def query_text(examples: Sequence[Example], test_input: Grid) -> str:
    """The prompt the model answers: instruction, demonstrations, test input, then
    ``Test output:`` and a newline (the answer, a grid's text, follows)."""
    return f"{INSTRUCTION}\n\n{demonstrations_text(examples)}\n\nTest input:\n{grid_to_text(test_input)}\n{ANSWER_MARKER}\n"


def example_text(examples: Sequence[Example], test: Example) -> str:
    """A training text: :func:`query_text` followed by the test output's grid."""
    return query_text(examples, test.input) + grid_to_text(test.output)


# ----------------------------------------------------------------------------- the reference's text

#: The reference's TTT system prompt (``arclib/messagers.py``, ``GPTTextMessageRepresenterV2``
#: with ``PythonListGridRepresenter``), before the demonstrations.
REFERENCE_SYSTEM = (
    "Figure out the underlying transformation in the following examples and apply it to the test case. "
    "Here are some examples from this transformation, your answer must follow the format.\n"
    "The input-output grids are provided as python arrays:\n"
)
#: The Llama-3 chat template's system header as Llama-3.2's template renders it (the date is
#: its fallback; the reference's ``apply_chat_template`` may have rendered the run's date).
_LLAMA3_SYSTEM = "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
_LLAMA3_USER = "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
_EOT = "<|eot_id|>"


def reference_output_text(grid: Grid) -> str:
    """An output grid as the reference writes it: numpy's ``str`` and ``#`` (``output_footer``)."""
    return grid_to_text(grid, "numpy") + "#"


def reference_query_text(examples: Sequence[Example], test_input: Grid) -> str:
    """The reference's TTT query (``self-edit.py:257-265``, ``GPTTextMessageRepresenterV2``):
    the Llama-3 chat layout as Llama-3.2's template renders it of a system turn
    (:data:`REFERENCE_SYSTEM`, then one line ``in -> out#`` per demonstration, numpy-style
    grids), a user turn (the test input and ``" ->"``) and the assistant header (:data:`REFERENCE_ANSWER_MARKER`), where the answer
    begins. The BOS token is left to the tokenizer (``seal.inner_loop`` adds it)."""
    demos = "".join(f"{grid_to_text(e.input, 'numpy')} -> {reference_output_text(e.output)}\n" for e in examples)
    # The template trims each turn's content (``message['content'] | trim``): the system
    # turn loses its last newline, the user turn ``"grid -> "`` its trailing space.
    system = (REFERENCE_SYSTEM + demos).strip()
    user = f"{grid_to_text(test_input, 'numpy')} ->"
    return f"{_LLAMA3_SYSTEM}{system}{_LLAMA3_USER}{user}{_EOT}{REFERENCE_ANSWER_MARKER}"


def reference_demonstrations_text(examples: Sequence[Example]) -> str:
    """The demonstrations as the reference's self-edit prompt lays them out (``self-edit.py:368-388``):
    per example ``Input:``, its rows, a blank line, ``Output:``, its rows and a blank line."""
    return "".join(f"Input:\n{grid_to_text(e.input)}\n\nOutput:\n{grid_to_text(e.output)}\n\n" for e in examples)


def training_text(examples: Sequence[Example], test: Example, text_format: str = "plain") -> str:
    """A test-time-training text in ``text_format`` (``arc.text_format``): the query and the
    answer; ``reference`` ends on the answer's ``#`` (the tokenizer's EOS, ``<|eot_id|>`` for
    Llama-3 instruct models, is appended by the inner loop, closing the assistant turn; the
    reference's extra assistant header after it is not written)."""
    if text_format == "reference":
        return reference_query_text(examples, test.input) + reference_output_text(test.output)
    return example_text(examples, test)


@dataclass(frozen=True)
class ArcPassage(Passage):
    """An ARC task as a passage (module docstring); ``task`` carries its grids; ``vote`` its
    augmented queries with ``arc.inference: vote`` (a :class:`seal.arc.voting.VotePlan`; None: greedy)."""

    task: ArcTask | None = None
    vote: object | None = None


def task_passage(task: ArcTask, text_format: str = "plain") -> ArcPassage:
    """The passage of ``task``: one question per test input, in ``text_format``
    (``arc.text_format``: ``reference`` asks :func:`reference_query_text` with the gold grid
    numpy-style, which the grid grader then reads predictions as; its context is the
    demonstrations in the reference's self-edit prompt layout)."""
    if text_format == "reference":
        questions = tuple(QA(reference_query_text(task.train, t.input), reference_output_text(t.output)) for t in task.test)
        return ArcPassage(task.id, reference_demonstrations_text(task.train), questions, task=task)
    questions = tuple(QA(query_text(task.train, t.input), grid_to_text(t.output)) for t in task.test)
    return ArcPassage(task.id, demonstrations_text(task.train), questions, task=task)
