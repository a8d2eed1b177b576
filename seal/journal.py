"""The run journal: one JSON line per finished baseline or evaluation, per rank, merged per round.

Every rank appends each record as soon as it is graded, flushed and fsynced, to its own
file (rank 0: ``journal.jsonl``; rank r: ``journal.rank{r}.jsonl``); at the end of a round's
evaluations the main process merges the rank files into ``journal.jsonl`` (one atomic
rewrite, records in identity order) and removes them. A record's identity is
:func:`journal_key`; reading keeps the first record seen per identity.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from seal.rundir import RunDir, read_jsonl, write_jsonl_atomic

_KIND_ORDER = {"baseline": 0, "evaluation": 1}


def journal_key(row: dict) -> tuple:
    """A journal record's identity: (kind, round, passage, self-edit, repetition, step, completion).

    ReST-EM records have a ``round`` (and no ``step`` / ``completion``); GRPO evaluations
    (``seal.grpo``) have the optimizer ``step`` and the ``completion``'s text hash instead.
    """
    return (
        row.get("kind"), row.get("round"), row.get("passage"), row.get("self_edit"), row.get("repetition"),
        row.get("step"), row.get("completion"),
    )  # fmt: skip


def journal_order(row: dict) -> tuple:
    """Sort key of a journal record: round, then GRPO step, then baselines before evaluations,
    then passage, self-edit and repetition (missing fields first). A GRPO evaluation (a
    ``step``, no ``round``) sorts with round 0, after the baselines it is scored against."""

    def n(x):
        return -1 if x is None else x

    return (
        n(row.get("round", 0 if "step" in row else None)), n(row.get("step")), _KIND_ORDER.get(row.get("kind"), 2), n(row.get("passage")),
        n(row.get("self_edit")), n(row.get("repetition")), row.get("completion") or "",
    )  # fmt: skip


def journal_path(run: RunDir, rank: int) -> Path:
    """The journal file a rank appends to: ``journal.jsonl`` (rank 0) or ``journal.rank{r}.jsonl``."""
    return run.journal if rank == 0 else run.path / f"journal.rank{rank}.jsonl"


def rank_journals(run: RunDir) -> list[Path]:
    """The per-rank journal files (``journal.rank{r}.jsonl``) present, in rank order."""

    def rank_of(p: Path) -> int:
        try:
            return int(p.name[len("journal.rank") : -len(".jsonl")])
        except ValueError:
            return 1 << 30

    return sorted(run.path.glob("journal.rank*.jsonl"), key=rank_of)


def read_journal(run: RunDir) -> list[dict]:
    """Every journal record of the run: ``journal.jsonl`` plus any per-rank files left by a
    killed distributed run, one record per identity (the first seen), in identity order.

    Partially written lines (a crash mid-append) are skipped with a warning.
    """
    seen: dict[tuple, dict] = {}
    for path in [run.journal, *rank_journals(run)]:
        for row in read_jsonl(path):
            seen.setdefault(journal_key(row), row)
    return sorted(seen.values(), key=journal_order)


def seal_partial_line(path: Path) -> None:
    """End a journal file that a crash left mid-line with a newline, so that the next record
    starts on a line of its own (the partial line stays, and is skipped when read)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
    warnings.warn(f"{path}: the last line was partially written (a crash mid-append); it is skipped", stacklevel=2)


def merge_journal(run: RunDir, extra: list[dict] = ()) -> list[dict]:
    """Main process: rewrite ``journal.jsonl`` atomically with every record (journal files plus
    ``extra``, deduplicated, identity order), then remove the per-rank files. Returns the records."""
    rows = {journal_key(row): row for row in extra}
    for row in read_journal(run):
        rows[journal_key(row)] = row
    merged = sorted(rows.values(), key=journal_order)
    write_jsonl_atomic(run.journal, merged)
    for path in rank_journals(run):
        path.unlink(missing_ok=True)
    return merged
