"""Passages, questions and self-edits: reading SEAL-format files and the hub's SQuAD.

A SEAL-format file is a JSON list of passages (``../shared/data/squad/README.md``)::

    {"title": ..., "context": ..., "questions": [{"question": ..., "answer": ...}],
     "completions": [<self-edit>, ...],   # optional
     "prompt": ...}                        # optional
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from seal.errors import SealError

DATA_DIR_ENV = "SEAL_DATA_DIR"


class DataError(SealError, ValueError):
    """A data file is missing or malformed. The message names the file and the passage."""


@dataclass(frozen=True)
class QA:
    """One question about a passage with its short gold answer."""

    question: str
    answer: str


@dataclass(frozen=True)
class Passage:
    """A titled passage, its questions, and optionally self-edits already written for it."""

    title: str
    context: str
    questions: tuple[QA, ...]
    completions: tuple[str, ...] = field(default=())

    @property
    def id(self) -> str:
        """Stable 12-hex-digit identity of (title, context): the key for matching files."""
        return hashlib.sha1(f"{self.title}\n{self.context}".encode()).hexdigest()[:12]


def default_data_root() -> Path:
    """$SEAL_DATA_DIR if set, else ``../shared/data`` beside the repository (or the working dir)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    repo_sibling = Path(__file__).resolve().parents[2] / "shared" / "data"
    if repo_sibling.is_dir():
        return repo_sibling
    return Path.cwd().parent / "shared" / "data"


def resolve_data_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Absolute paths pass through; relative ones resolve against ``root`` (default: see above)."""
    p = Path(os.path.expandvars(str(path))).expanduser()
    if p.is_absolute():
        return p
    return Path(root) / p if root else default_data_root() / p


def passage_from_json(obj: object, where: str = "passage", require_questions: bool = True) -> Passage:
    """One SEAL-format passage object as a :class:`Passage`.

    Raises:
        DataError: naming ``where`` (file and index) and the passage's title.
    """
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected an object, got {type(obj).__name__}")
    for key in ("title", "context"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise DataError(f"{where}: missing or empty string field {key!r}")
    where = f"{where} ({obj['title']!r})"
    raw_qs = obj.get("questions", [])
    if not isinstance(raw_qs, list):
        raise DataError(f"{where}: 'questions' must be a list")
    qs = []
    for j, q in enumerate(raw_qs):
        if not (isinstance(q, dict) and isinstance(q.get("question"), str) and isinstance(q.get("answer"), str)):
            raise DataError(f"{where}: question {j} needs string fields 'question' and 'answer'")
        qs.append(QA(q["question"], q["answer"]))
    if require_questions and not qs:
        raise DataError(f"{where}: passage has no questions")
    comps = obj.get("completions", [])
    if not (isinstance(comps, list) and all(isinstance(c, str) for c in comps)):
        raise DataError(f"{where}: 'completions' must be a list of strings")
    return Passage(obj["title"], obj["context"], tuple(qs), tuple(comps))


def load_passages(
    path: str | os.PathLike,
    n: int | None = None,
    root: str | os.PathLike | None = None,
    require_questions: bool = True,
    require_completions: bool = False,
) -> list[Passage]:
    """Read the first ``n`` passages of a SEAL-format JSON file.

    Raises:
        DataError: the file is missing, not JSON or an empty list, a passage lacks a field, has no
            questions (when ``require_questions``) or no self-edits (when ``require_completions``).
            The message names the file, the passage index and its title.
    """
    p = resolve_data_path(path, root)
    if not p.is_file():
        raise DataError(f"data file not found: {p} (set data.root or ${DATA_DIR_ENV})")
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(raw, list):
        raise DataError(f"{p}: expected a JSON list of passages, got {type(raw).__name__}")
    if not raw:
        raise DataError(f"{p}: holds no passages (an empty list); point the recipe at a file with passages")
    raw = raw if n is None else raw[:n]
    out = [passage_from_json(obj, f"{p}: passage {i}", require_questions) for i, obj in enumerate(raw)]
    if require_completions:
        for i, ps in enumerate(out):
            if not ps.completions:
                raise DataError(f"{p}: passage {i} ({ps.title!r}) has no self-edits ('completions')")
    return out


def load_squad_from_hub(name: str = "rajpurkar/squad", split: str = "train", n: int | None = None) -> list[Passage]:
    """SQuAD from the Hugging Face hub grouped by passage, first answer as gold (needs network).

    Passages keep the hub's order of first appearance.
    """
    from datasets import load_dataset  # here: the hub reader is heavy and only this path needs it

    ds = load_dataset(name, split=split)
    groups: dict[tuple[str, str], list[QA]] = {}
    for row in ds:
        key = (row["title"].replace("_", " "), row["context"])
        if key not in groups and n is not None and len(groups) >= n:
            continue
        groups.setdefault(key, []).append(QA(row["question"], row["answers"]["text"][0]))
    return [Passage(t, c, tuple(qs)) for (t, c), qs in groups.items()]


def match_self_edits(passages: Sequence[Passage], source: Sequence[Passage], source_name: str) -> list[tuple[str, ...]]:
    """For each passage, the self-edits of the same passage in ``source`` (matched by title+context).

    Raises:
        DataError: a passage is absent from the source or has no self-edits there; names it.
    """
    by_id = {p.id: p for p in source}
    out = []
    for i, p in enumerate(passages):
        hit = by_id.get(p.id)
        if hit is None:
            raise DataError(f"{source_name}: has no self-edits for passage {i} ({p.title!r}, id {p.id})")
        if not hit.completions:
            raise DataError(f"{source_name}: passage {i} ({p.title!r}) has an empty 'completions' list")
        out.append(hit.completions)
    return out
