"""ARC grids as text, and back.

A grid is a tuple of rows, each a tuple of ints in 0-9 (colours), rectangular, 1-30 rows and
1-30 columns (Chollet 2019). The text form is the reference's self-edit prompt's
(``few-shot/self-edit.py``, ``get_prompt``): one row per line, cells separated by one space::

    0 0 1
    0 1 0

The reference's test-time-training text uses numpy's ``str(array)`` instead
(``[[0 0 1]\\n [0 1 0]]`` followed by ``#``, ``PythonListGridRepresenter``);
:func:`parse_grid` reads that form too, :func:`grid_to_text` writes ``style="numpy"`` on request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Grid = tuple[tuple[int, ...], ...]

MAX_SIDE = 30
_ROW = re.compile(r"^\s*\d(?:\s*\d)*\s*$")


class GridError(ValueError):
    """A grid (or its text) that is not rectangular, out of size, or has a colour outside 0-9."""


def as_grid(value: object) -> Grid:
    """A JSON-like grid (list of rows of ints) as a :data:`Grid`.

    Raises:
        GridError: not a list of lists, a cell not an int in 0-9 (bools refused), rows of
            different lengths, or a side outside 1-30. The message says where.
    """
    if not isinstance(value, (list, tuple)) or not value:
        raise GridError("a grid must be a non-empty list of rows")
    if len(value) > MAX_SIDE:
        raise GridError(f"{len(value)} rows (at most {MAX_SIDE})")
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, (list, tuple)) or not row:
            raise GridError(f"row {i} is not a non-empty list")
        if len(row) > MAX_SIDE:
            raise GridError(f"row {i} has {len(row)} cells (at most {MAX_SIDE})")
        for j, cell in enumerate(row):
            if isinstance(cell, bool) or not isinstance(cell, int) or not 0 <= cell <= 9:
                raise GridError(f"cell ({i}, {j}) is {cell!r}, not a colour 0-9")
        if len(row) != len(value[0]):
            raise GridError(f"row {i} has {len(row)} cells, row 0 has {len(value[0])} (not rectangular)")
        rows.append(tuple(int(c) for c in row))
    return tuple(rows)


def grid_to_text(grid: Sequence[Sequence[int]], style: str = "rows") -> str:
    """The grid's text: ``"rows"`` (one line per row, cells space-separated, no trailing newline)
    or ``"numpy"`` (numpy's ``str`` of an int array, e.g. ``[[0 1]\\n [2 3]]``)."""
    lines = [" ".join(str(c) for c in row) for row in grid]
    if style == "rows":
        return "\n".join(lines)
    if style == "numpy":
        return "[" + "\n ".join(f"[{line}]" for line in lines) + "]"
    raise ValueError(f"unknown grid style {style!r} (rows|numpy)")


def parse_grid(text: str) -> Grid:
    """Inverse of :func:`grid_to_text` (either style; a trailing ``#``, the reference's
    footer, and blank lines around it are ignored).

    Raises:
        GridError: a line that is not digits and spaces, or the rows do not form a grid.
    """
    body = text.replace("[", " ").replace("]", " ").replace("#", " ")
    lines = [line for line in body.split("\n") if line.strip()]
    if not lines:
        raise GridError("empty grid text")
    rows = []
    for n, line in enumerate(lines):
        if not _ROW.match(line):
            raise GridError(f"line {n} is not a row of digits: {line.strip()[:40]!r}")
        rows.append([int(c) for c in line if c.isdigit()])
    return as_grid(rows)


def read_answer_grid(answer: str) -> Grid | None:
    """The grid a model's answer starts with: its leading lines that are rows of digits
    (blank lines before them skipped, anything after them ignored), or None when there is
    none or they do not form a valid grid. Never raises."""
    lines = answer.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    rows = []
    for line in lines:
        if not _ROW.match(line):
            break
        rows.append(line)
    if not rows:
        return None
    try:
        return parse_grid("\n".join(rows))
    except GridError:
        return None


def read_numpy_answer_grid(answer: str) -> Grid | None:
    """The numpy-style grid a model's answer starts with (``arc.text_format: reference``):
    from its leading ``[[`` to the first ``]]`` (``#`` and anything after ignored, as the
    reference's decoder drops ``#``), or None when there is none or it is not a valid grid.
    Never raises."""
    text = answer.lstrip()
    end = text.find("]]")
    if not text.startswith("[[") or end < 0:
        return None
    body = text[: end + 2]
    if any(not (c.isdigit() or c in "[] \n") for c in body):
        return None
    try:
        return parse_grid(body)
    except GridError:
        return None


def grids_match(prediction: str, gold: str) -> float:
    """1.0 when the grid the prediction starts with equals the gold grid exactly (same shape,
    same colours), else 0.0 (the paper's success criterion, Section 4.1). A numpy-style gold
    (``[[...]]``, ``arc.text_format: reference``) reads the prediction numpy-style too
    (:func:`read_numpy_answer_grid`), else as rows (:func:`read_answer_grid`)."""
    numpy_style = gold.lstrip().startswith("[")
    predicted = read_numpy_answer_grid(prediction) if numpy_style else read_answer_grid(prediction)
    return float(predicted is not None and predicted == parse_grid(gold))
