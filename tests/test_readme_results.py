"""Every number in the README's figure tables is in a committed results file.

A figure table is announced by a comment line ``<!-- results: docs/results/NAME.json -->``
directly above it; each number of the table (labels, cells, intervals) must equal, to the
decimals shown, a number in that file (its values, or numbers written inside its strings and
keys). So the README cannot drift from the measurements: a re-measured file whose figures
changed fails this test until the table is updated, and a typed-in figure with no file fails too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- results: (\S+) -->$")
# a signed decimal or scientific number not glued to a word ("GPT-4.1" gives 4.1, "r3" nothing)
NUMBER = re.compile(r"(?<![\w.])([-+\u2212]?)(\d+(?:\.\d+)?(?:e[-+]?\d+)?)(?![\w.])")
PROVENANCE = ("command", "commit", "cpu", "date")


def numbers_in_text(text: str) -> list[tuple[float, int]]:
    """Each number in ``text`` with its shown decimals (``5e-4`` counts as exact)."""
    out = []
    for sign, digits in NUMBER.findall(text):
        value = float(digits) * (-1 if sign in ("-", "\u2212") else 1)
        decimals = len(digits.split(".")[1]) if "." in digits and "e" not in digits else 0
        out.append((value, decimals))
    return out


def numbers_in_json(obj) -> set[float]:
    if isinstance(obj, bool) or obj is None:
        return set()
    if isinstance(obj, int | float):
        return {float(obj)}
    if isinstance(obj, str):
        return {v for v, _ in numbers_in_text(obj)}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    found: set[float] = set()
    for key, value in items:
        if isinstance(key, str):
            found |= numbers_in_json(key)
        found |= numbers_in_json(value)
    return found


def in_points(known: set[float]) -> set[float]:
    """``known`` and, for each fraction in [-1, 1], the same in points (x 100): the benchmarks
    write accuracies and shares as fractions, the README's tables show points."""
    return known | {100 * x for x in known if -1 <= x <= 1}


def figure_tables(readme: str) -> list[tuple[str, list[str]]]:
    """(results file, table lines) for every marked table."""
    lines = readme.splitlines()
    tables = []
    for i, line in enumerate(lines):
        m = MARKER.match(line.strip())
        if m:
            j = i + 1
            while j < len(lines) and not lines[j].startswith("|"):
                j += 1
            rows = []
            while j < len(lines) and lines[j].startswith("|"):
                rows.append(lines[j])
                j += 1
            tables.append((m.group(1), rows))
    return tables


def missing_numbers(rows: list[str], known: set[float]) -> list[str]:
    """The numbers of ``rows`` that no number in ``known`` rounds to."""
    missing = []
    for row in rows:
        for value, decimals in numbers_in_text(row):
            tolerance = 0.5 * 10**-decimals + 1e-9
            if not any(abs(value - k) <= tolerance for k in known):
                missing.append(f"{value:g} in {row[:60]!r}")
    return missing


def test_every_number_of_the_readmes_figure_tables_is_in_its_results_file():
    tables = figure_tables((REPO / "README.md").read_text())
    assert len(tables) >= 4, "the README's figure tables carry <!-- results: ... --> markers"
    for path, rows in tables:
        data = json.loads((REPO / path).read_text())
        assert all(data["provenance"].get(k) for k in PROVENANCE), f"{path}: provenance needs {PROVENANCE}"
        assert len(rows) >= 3, f"{path}: no table under its marker"
        assert missing_numbers(rows, in_points(numbers_in_json(data))) == [], f"README table from {path}"


def not_json(constant: str):
    raise AssertionError(f"{constant} is not JSON")


def test_every_results_file_is_strict_json_with_its_provenance():
    for path in sorted((REPO / "docs" / "results").glob("*.json")):
        data = json.loads(path.read_text(), parse_constant=not_json)
        cpu = data["provenance"]["cpu"]
        assert cpu.get("model_name") and cpu.get("family"), f"{path.name}: the CPU's model name and family"


def test_the_check_catches_a_changed_figure():
    """The checker itself: a figure typed differently from its file, or a new one, is caught."""
    known = numbers_in_json({"rows": [{"accuracy": 30.6, "interval": [27.2, 34.0]}], "label": "round 1 of GPT-4.1"})
    assert missing_numbers(["| round 1 | 30.6 % [27.2, 34.0] | GPT-4.1 |"], known) == []
    assert missing_numbers(["| round 1 | 30.7 % [27.2, 34.0] |"], known) == ["30.7 in '| round 1 | 30.7 % [27.2, 34.0] |'"]
    fractions = in_points(numbers_in_json({"accuracy": 0.306, "steps": 18}))
    assert missing_numbers(["| 30.6 | 18 |"], fractions) == [] and missing_numbers(["| 1800 |"], fractions) == ["1800 in '| 1800 |'"]
    assert missing_numbers(["| −27.2 |"], known) != []  # the sign counts
    assert numbers_in_text("lr 5e-4, +1.5 [−2.3, 0.25]") == [(5e-4, 0), (1.5, 1), (-2.3, 1), (0.25, 2)]
