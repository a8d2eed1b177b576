"""Your own documents as passages (``task: documents``): JSON Lines files or a ``datasets``
dataset, with the columns of the recipe's ``documents`` section (:mod:`seal.tasks.documents_config`).

One document per row::

    {"title": "Founding of the town", "text": "The town was founded in 1783 ...",
     "questions": ["In what year was the town founded?", ...], "answers": ["1783", ...]}

(the key names are ``documents.columns``). Each document becomes a :class:`seal.data.Passage`
whose context is the text and whose questions pair each question with its answer, so everything
after loading (self-edits, the inner loop, grading, ReST-EM, GRPO, evaluate, bench) is SQuAD's:
:class:`DocumentsTask` is :class:`seal.tasks.base.TextTask` with this loader, and with the
documents' text for a tiny model's tokenizer.

Every malformed row is a :class:`seal.data.DataError` naming the file and line (JSONL) or the
dataset, split and row (a dataset), the column and what to change; nothing is trained before
the data is read whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from seal.data import QA, DataError, Passage, resolve_data_path
from seal.tasks.base import TextTask
from seal.tasks.documents_config import DocumentsSection

if TYPE_CHECKING:  # the recipe's data section; seal.config is above this module
    from seal.config import DataConfig

Split = Literal["train", "eval"]

#: Words of the text that make a document's title when ``documents.columns.title`` is None.
DERIVED_TITLE_WORDS = 8


class DocumentsTask(TextTask):
    """Task ``documents``: SQuAD's (:class:`~seal.tasks.base.TextTask`) on the recipe's own
    documents, read by :func:`load_documents` with its ``documents`` section."""

    def train_passages(self, path: str, n: int | None) -> list[Passage]:
        """The first ``n`` training documents of the JSONL file ``path`` (``data.train_file``,
        or a round's ``data.round_train_files`` entry), or of ``documents.train_split``."""
        return load_documents(self.section, self.recipe.data, "train", path, n)

    def eval_passages(self) -> list[Passage]:
        """The first ``data.n_eval_passages`` documents of ``data.eval_file`` / ``documents.eval_split``."""
        data = self.recipe.data
        return load_documents(self.section, data, "eval", n=data.n_eval_passages)

    def tokenizer_texts(self, seed: int) -> list[str]:
        """The training and evaluation documents' text (:func:`document_texts`), so that a tiny
        model (``model.build_tiny``) tokenizes them in whole words."""
        return document_texts(self.section, self.recipe.data)


def load_documents(
    section: DocumentsSection,
    data: DataConfig,
    split: Split,
    path: str | os.PathLike | None = None,
    n: int | None = None,
    log: Callable[[str], None] = print,
) -> list[Passage]:
    """The first ``n`` documents (None: all) of one split, as passages.

    Args:
        section: the recipe's ``documents`` section (source, columns, ``skip_unanswered``).
        data: the recipe's ``data`` section (``root``, ``train_file``, ``eval_file``).
        split: ``"train"`` (``data.train_file`` / ``documents.train_split``) or ``"eval"``
            (``data.eval_file`` / ``documents.eval_split``).
        path: a JSONL file to read instead of the split's (``data.round_train_files``); ignored
            with ``documents.hf_dataset``.
        n: keep the first ``n`` documents that have questions; rows after them are not read.
        log: gets one line when ``skip_unanswered`` left documents out (how many, from where).

    Raises:
        DataError: the file or dataset is missing; a line is not a JSON object (file:line); a
            column is missing (named, with the columns present); a text or title is empty;
            questions and answers differ in length or an entry is not a string; a document has no
            questions (unless ``documents.skip_unanswered``); no document is left.
    """
    if section.hf_dataset:
        source = _dataset_source(section, split)
        rows = _dataset_rows(section, data, split, source)
    else:
        file = resolve_data_path(path or (data.train_file if split == "train" else data.eval_file), data.root)
        source = str(file)
        rows = _jsonl_rows(file)
    out: list[Passage] = []
    skipped = 0
    for where, row in rows:
        if n is not None and len(out) >= n:
            break
        passage = document_passage(row, section, where)
        if passage is not None:
            out.append(passage)
        else:
            skipped += 1
    if skipped:
        log(f"{source}: left out {skipped} document{'s' * (skipped != 1)} without questions (documents.skip_unanswered)")
    if not out:
        raise DataError(
            f"{source}: holds no documents with questions ({skipped} without); check documents.columns.questions "
            f"({section.columns.questions!r})"
        )
    return out


def document_passage(row: object, section: DocumentsSection, where: str) -> Passage | None:
    """One row as a passage; None for a document without questions under ``skip_unanswered``.

    ``where`` names the row in messages (``file:line`` or ``dataset split 'x', row i``).

    Raises:
        DataError: see :func:`load_documents`.
    """
    cols = section.columns
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object (one document per line), got {type(row).__name__}")
    text = _column(row, cols.text, "text", where)
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: the text ({cols.text!r}, documents.columns.text) is empty or not a string")
    if cols.title is None:
        title = derived_title(text)
    else:
        title = _column(row, cols.title, "title", where)
        if not isinstance(title, str) or not title.strip():
            raise DataError(f"{where}: the title ({cols.title!r}, documents.columns.title) is empty or not a string; set documents.columns.title: null to derive titles from the texts")
        title = title.strip()
    where = f"{where} ({title!r})"
    questions = row.get(cols.questions)
    if questions is None or (isinstance(questions, list) and not questions):
        if section.skip_unanswered:
            return None
        raise DataError(
            f"{where}: has no questions (column {cols.questions!r} is missing, null or empty; the row's columns: "
            f"{_names(row)}); every document is scored by its questions: add some, fix documents.columns.questions, "
            "or set documents.skip_unanswered: true to leave such documents out"
        )
    if not isinstance(questions, list):
        raise DataError(f"{where}: the questions ({cols.questions!r}) must be a list of strings, got {type(questions).__name__}")
    answers = _column(row, cols.answers, "answers", where)
    if not isinstance(answers, list):
        raise DataError(f"{where}: the answers ({cols.answers!r}) must be a list parallel to the questions, got {type(answers).__name__}")
    if len(answers) != len(questions):
        raise DataError(
            f"{where}: {len(questions)} questions ({cols.questions!r}) but {len(answers)} answers ({cols.answers!r}); "
            "they are parallel lists: answer j answers question j"
        )
    qas = []
    for j, (q, a) in enumerate(zip(questions, answers, strict=True)):
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{where}: question {j} ({cols.questions!r}) is empty or not a string")
        qas.append(QA(q.strip(), gold_answer(a, f"{where}: answer {j} ({cols.answers!r})")))
    return Passage(title, text, tuple(qas))


def gold_answer(value: object, where: str) -> str:
    """The gold answer in one of the accepted forms: a string, a list (its first element), or
    SQuAD's ``{"text": [...], ...}`` (the first text); a number as its decimal string.

    Raises:
        DataError: an empty list, a dict without ``text``, an empty string, another type.
    """
    if isinstance(value, dict):
        if "text" not in value:
            raise DataError(f"{where}: a dict answer needs a 'text' key (SQuAD's {{'text': [...]}}); its keys: {sorted(value)}")
        value = value["text"]
    if isinstance(value, (list, tuple)):
        if not value:
            raise DataError(f"{where}: an empty list of answers")
        value = value[0]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: expected a non-empty string (or a list / SQuAD dict of them), got {value!r}")
    return value.strip()


def derived_title(text: str) -> str:
    """The title of a document without a title column: its text's first words (the same for
    the same text, so the passage's identity is stable)."""
    words = text.split()
    head = " ".join(words[:DERIVED_TITLE_WORDS])
    return head + (" ..." if len(words) > DERIVED_TITLE_WORDS else "")


def document_texts(section: DocumentsSection, data: DataConfig) -> list[str]:
    """Every string of the training and evaluation documents (titles, texts, question +
    answer): what a tiny model's tokenizer learns (``model.build_tiny``), as ``passage_texts``
    for SEAL-format files.

    Raises:
        DataError: as :func:`load_documents`.
    """
    texts: list[str] = []
    for split in ("train", "eval"):
        for p in load_documents(section, data, split, log=lambda _: None):
            texts += [p.title, p.context, *(q.question + " " + q.answer for q in p.questions)]
    return texts


def _column(row: dict, name: str, field: str, where: str) -> object:
    """``row[name]``, or a DataError naming the column, its recipe key and the row's columns."""
    if name not in row:
        raise DataError(f"{where}: no column {name!r} (documents.columns.{field}); the row's columns: {_names(row)}")
    return row[name]


def _names(row: dict) -> str:
    return ", ".join(map(repr, row)) or "none"


def _jsonl_rows(file: Path) -> Iterator[tuple[str, object]]:
    """``(file:line, parsed object)`` for every non-blank line, read lazily.

    Raises:
        DataError: the file is missing, or a line is not UTF-8 or not JSON (file:line and the reason).
    """
    if not file.is_file():
        raise DataError(f"documents file not found: {file} (set data.train_file / data.eval_file, data.root or $SEAL_DATA_DIR)")
    with file.open("rb") as f:  # bytes, decoded line by line: a bad byte is named by its line
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if i == 1 else "utf-8")  # -sig: a byte-order mark is not JSON
            except UnicodeDecodeError as e:
                raise DataError(f"{file}:{i}: not UTF-8 text ({e.reason} at byte {e.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                yield f"{file}:{i}", json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{file}:{i}: not a JSON object ({e.msg} at column {e.colno}); a documents file has one JSON object per line (JSON Lines)") from None


def _dataset_source(section: DocumentsSection, split: Split) -> str:
    config = f" (config {section.hf_config!r})" if section.hf_config else ""
    return f"dataset {section.hf_dataset!r}{config} split {_split_name(section, split)!r}"


def _split_name(section: DocumentsSection, split: Split) -> str:
    return section.train_split if split == "train" else section.eval_split


def _dataset_rows(section: DocumentsSection, data: DataConfig, split: Split, source: str) -> Iterator[tuple[str, object]]:
    """``(dataset split 'x', row i, row)`` for every row of the split, after checking that the
    mapped columns exist.

    Raises:
        DataError: the dataset or split cannot be loaded (with ``datasets``' reason), or a mapped
            column is not among its columns (named, with the columns present).
    """
    ds = _load_split(section, split, source)
    cols = section.columns
    wanted = {"title": cols.title, "text": cols.text, "questions": cols.questions, "answers": cols.answers}
    for field, name in wanted.items():
        if name is not None and name not in ds.column_names:
            raise DataError(f"{source}: no column {name!r} (documents.columns.{field}); its columns: {', '.join(map(repr, ds.column_names))}")
    for i, row in enumerate(ds):
        yield f"{source}, row {i}", row


def _load_split(section: DocumentsSection, split: Split, source: str):
    """One split of ``documents.hf_dataset`` as a ``datasets.Dataset``: ``load_from_disk`` for
    a folder written by ``save_to_disk``, else ``load_dataset`` (hub id or data-file folder)."""
    import datasets  # here: heavy, and only the dataset path needs it

    name, split_name = section.hf_dataset, _split_name(section, split)
    folder = Path(name).expanduser()
    try:
        if folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(folder))
            if isinstance(loaded, datasets.DatasetDict):
                if split_name not in loaded:
                    raise DataError(f"{source}: no such split; its splits: {', '.join(map(repr, loaded))} (documents.{split}_split)")
                return loaded[split_name]
            return loaded  # a single saved Dataset is every split
        return datasets.load_dataset(name, section.hf_config, split=split_name)
    except DataError:
        raise
    except Exception as e:  # datasets' own: not found, offline, unknown split or config
        raise DataError(
            f"{source}: could not be loaded ({type(e).__name__}: {e}); check documents.hf_dataset, hf_config and "
            f"documents.{split}_split"
        ) from e
