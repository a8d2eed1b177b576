"""The recipe's ``documents`` section: your own documents with questions as the training domain
(``task: documents``), read by :func:`seal.tasks.documents.load_documents`.

A document is one row: a title, a text, and parallel lists of questions and short answers. The
rows come from JSON Lines files (``data.train_file`` / ``data.eval_file``, relative to
``data.root`` as for every task, one JSON object per line) or from a dataset that
``datasets.load_dataset`` reads (``hf_dataset``: a hub id or a local folder of data files, with
``hf_config`` and the split names). ``columns`` maps the four fields onto your names.

Bottom layer: imports only :mod:`seal.sections`.
"""

from __future__ import annotations

from pydantic import Field

from seal.sections import Section


class DocumentColumns(Section):
    """Which column (JSONL key, dataset column) holds each field of a document."""

    title: str | None = Field(
        "title",
        min_length=1,
        description="The document's title (shown in the self-edit prompt; with the text it names the passage: Passage.id). None: no title column; the title is the text's first 8 words, followed by '...' when cut.",
    )
    text: str = Field("text", min_length=1, description="The document's text, what the inner loop learns (the passage's context). Must be non-empty.")
    questions: str = Field("questions", min_length=1, description="A list of questions about the text (strings).")
    answers: str = Field(
        "answers",
        min_length=1,
        description="The gold answers, a list parallel to the questions (same length). Each answer is a string, a list (its first element is the gold; e.g. several accepted spellings) or SQuAD's {'text': [...], 'answer_start': [...]} (the first text). A number is read as its decimal string.",
    )


class DocumentsSection(Section):
    """``task: documents``: where the documents are and what their columns are called.

    Files (the default): ``data.train_file`` and ``data.eval_file`` are JSON Lines files,
    one document per line, resolved against ``data.root``; ``data.n_train_passages`` /
    ``n_eval_passages`` take the first documents, and ``data.passage_schedule: fresh`` takes new
    ones per round as for SQuAD. With ``hf_dataset`` the documents come from that dataset's
    ``train_split`` and ``eval_split`` instead, and the two files are not read.
    """

    hf_dataset: str | None = Field(
        None,
        description="Read the documents with datasets.load_dataset(hf_dataset, hf_config, split=...) instead of data.train_file / eval_file: a hub id ('org/name'; needs network or the local hub cache), or a local folder (one that datasets.load_dataset reads: data files such as train.jsonl / validation.parquet, split by their names; or one written by Dataset.save_to_disk / DatasetDict.save_to_disk, read with datasets.load_from_disk). None: the JSONL files.",
    )
    hf_config: str | None = Field(None, description="The dataset's configuration (subset) name, load_dataset's second argument. None: its default.")
    train_split: str = Field("train", min_length=1, description="The split of hf_dataset that `seal train` learns from.")
    eval_split: str = Field("validation", min_length=1, description="The split of hf_dataset that `seal evaluate` and `seal bench` score (and `seal train`'s held-out checks).")
    columns: DocumentColumns = Field(default_factory=DocumentColumns, description="Your names of the title, text, questions and answers columns.")
    skip_unanswered: bool = Field(
        False,
        description="A document without questions (its questions column missing, null or []): False refuses the data, naming the file and line (or the split and row) and this key; True leaves such documents out and prints how many. Documents are scored by their questions, so one without any cannot be used.",
    )

    def check_recipe(self, recipe) -> None:
        """The recipe checks of ``task: documents`` (called by the recipe's validation).

        Raises:
            ValueError: ``data.hf_dataset`` is set (that key reads SQuAD's columns and splits;
                documents name theirs here), or ``data.round_train_files`` with ``hf_dataset``.
        """
        data = recipe.data
        if data.hf_dataset is not None:
            raise ValueError(
                f"task documents reads a dataset with documents.hf_dataset (and its columns and splits), not data.hf_dataset; "
                f"move {data.hf_dataset!r} there"
            )
        if self.hf_dataset is not None and data.round_train_files is not None:
            raise ValueError("data.round_train_files are JSONL files; with documents.hf_dataset, passage_schedule fresh takes slices of train_split")
