"""Console output shared by ``seal train``, ``seal evaluate`` and ``seal bench``: the progress
bar of every long stage and the one formatter of fractions as percentages."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(console: Console | None = None) -> Progress:
    """The progress display used by every long stage (description, bar, n/total, elapsed, left)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def percent(x: float | None, points: bool = False) -> str:
    """A fraction as a percentage with one decimal: ``0.123`` -> ``"12.3 %"``; ``"n/a"`` for None.

    ``points=True`` formats a difference of fractions (a reward, a gain) as signed percentage
    points: ``0.05`` -> ``"+5.0 pp"``.
    """
    if x is None:
        return "n/a"
    return f"{100 * x:+.1f} pp" if points else f"{100 * x:.1f} %"
