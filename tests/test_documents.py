"""``task: documents``: your own documents (JSON Lines or a ``datasets`` dataset, any column
names) read as passages; every malformed input an error naming the file and line (or split and
row), the column and the key to change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seal.config import DataConfig
from seal.data import QA, DataError
from seal.tasks.documents import derived_title, document_texts, load_documents
from seal.tasks.documents_config import DocumentsSection

DATA = Path(__file__).parent / "data"
EXAMPLE_COLUMNS = {"title": "page", "text": "body", "questions": "asked", "answers": "expected"}


def example(**kw) -> tuple[DocumentsSection, DataConfig]:
    """The example files' section and data, as recipes/documents_tiny_cpu.yaml names them."""
    section = DocumentsSection(columns=EXAMPLE_COLUMNS, **kw)
    return section, DataConfig(root=str(DATA), train_file="documents_example.jsonl", eval_file="documents_example_eval.jsonl")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def one_file(tmp_path: Path, rows: list, **kw) -> tuple[DocumentsSection, DataConfig]:
    """A section with the default column names over one JSONL file of ``rows`` (train split)."""
    write_jsonl(tmp_path / "docs.jsonl", rows)
    return DocumentsSection(**kw), DataConfig(root=str(tmp_path), train_file="docs.jsonl")


GOOD = {"title": "Pier", "text": "The pier was built in 1901 of oak.", "questions": ["When was the pier built?"], "answers": ["1901"]}


def test_the_example_files_load_with_their_column_mapping():
    section, data = example()
    train, ev = load_documents(section, data, "train"), load_documents(section, data, "eval")
    assert (len(train), len(ev)) == (10, 4)
    assert sum(len(p.questions) for p in train + ev) == 56
    first = json.loads((DATA / "documents_example.jsonl").read_text().splitlines()[0])
    assert train[0].title == first["page"] == "Founding of Kestrel Ford" and train[0].context == first["body"]
    assert train[0].questions[0] == QA("In what year was Kestrel Ford founded?", "1783")
    # every gold answer is in its document's text (the example's questions are answerable from it)
    assert all(q.answer in p.context for p in train + ev for q in p.questions)
    assert len({p.id for p in train + ev}) == 14  # distinct passages
    assert [p.title for p in load_documents(section, data, "train", n=3)] == [p.title for p in train[:3]]


def test_answers_may_be_strings_lists_squad_dicts_or_numbers(tmp_path):
    section, _ = example()
    rows = [json.loads(line) for line in (DATA / "documents_example.jsonl").read_text().splitlines()]
    assert rows[2]["expected"][0] == ["nine", "9"] and rows[4]["expected"][1] == {"text": ["Piet Olander"], "answer_start": [0]}
    train = load_documents(*example(), "train")
    assert train[2].questions[0].answer == "nine" and train[4].questions[1].answer == "Piet Olander"
    doc = dict(GOOD, questions=["a?", "b?", "c?", "d?"], answers=[" x ", ["y", "z"], {"text": ["w"]}, 1901])
    (p,) = load_documents(*one_file(tmp_path, [doc]), "train")
    assert [q.answer for q in p.questions] == ["x", "y", "w", "1901"]


def test_titles_can_be_derived_from_the_text(tmp_path):
    doc = {"text": "One two three four five six seven eight nine ten.", "questions": ["q?"], "answers": ["a"]}
    (p,) = load_documents(*one_file(tmp_path, [doc], columns={"title": None}), "train")
    assert p.title == "One two three four five six seven eight ..." == derived_title(doc["text"])
    assert derived_title("Short text.") == "Short text."


def test_a_missing_file_and_a_bad_json_line_are_named(tmp_path):
    section, data = one_file(tmp_path, [GOOD])
    with pytest.raises(DataError, match=r"documents file not found: .*nope.jsonl"):
        load_documents(section, data.model_copy(update={"train_file": "nope.jsonl"}), "train")
    section, data = one_file(tmp_path, [GOOD, "", '{"title": "broken", "text": '])
    with pytest.raises(DataError, match=r"docs.jsonl:3: not a JSON object \(.*JSON Lines"):
        load_documents(section, data, "train")
    section, data = one_file(tmp_path, [GOOD, "[1, 2]"])
    with pytest.raises(DataError, match=r"docs.jsonl:2: expected a JSON object"):
        load_documents(section, data, "train")
    (tmp_path / "docs.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n" + json.dumps(GOOD).encode("utf-16") + b"\n")
    with pytest.raises(DataError, match=r"docs.jsonl:2: not UTF-8 text"):  # line 1's byte-order mark is read past
        load_documents(section, data, "train")


def test_a_missing_column_is_named_with_the_columns_present(tmp_path):
    section, data = one_file(tmp_path, [GOOD, {"title": "T", "body": "text", "questions": ["q"], "answers": ["a"]}])
    with pytest.raises(DataError, match=r"docs.jsonl:2: no column 'text' \(documents.columns.text\); the row's columns: 'title', 'body', 'questions', 'answers'"):
        load_documents(section, data, "train")
    bad = {k: v for k, v in GOOD.items() if k != "answers"}
    section, data = one_file(tmp_path, [bad])
    with pytest.raises(DataError, match=r"docs.jsonl:1 \('Pier'\): no column 'answers' \(documents.columns.answers\)"):
        load_documents(section, data, "train")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answers": ["1901", "oak"]}, r"docs.jsonl:1 \('Pier'\): 1 questions \('questions'\) but 2 answers \('answers'\); they are parallel lists"),
        ({"text": "  "}, r"docs.jsonl:1: the text \('text', documents.columns.text\) is empty"),
        ({"title": ""}, r"docs.jsonl:1: the title \('title', documents.columns.title\) is empty.*documents.columns.title: null"),
        ({"questions": "When?"}, r"the questions \('questions'\) must be a list of strings, got str"),
        ({"questions": [""]}, r"question 0 \('questions'\) is empty"),
        ({"answers": [[]]}, r"answer 0 \('answers'\): an empty list of answers"),
        ({"answers": [{"answer_start": [3]}]}, r"answer 0 \('answers'\): a dict answer needs a 'text' key"),
        ({"answers": [None]}, r"answer 0 \('answers'\): expected a non-empty string"),
    ],
)
def test_malformed_documents_are_named(tmp_path, change, message):
    with pytest.raises(DataError, match=message):
        load_documents(*one_file(tmp_path, [dict(GOOD, **change)]), "train")


def test_documents_without_questions_are_refused_or_left_out_with_a_count(tmp_path):
    rows = [GOOD, {"title": "Quiet", "text": "Nothing asked."}, dict(GOOD, title="Empty", questions=[]), dict(GOOD, title="Other")]
    section, data = one_file(tmp_path, rows)
    with pytest.raises(DataError) as e:
        load_documents(section, data, "train")
    msg = str(e.value)
    assert "docs.jsonl:2 ('Quiet'): has no questions" in msg and "documents.skip_unanswered: true" in msg
    assert "the row's columns: 'title', 'text'" in msg
    lines: list[str] = []
    kept = load_documents(section.model_copy(update={"skip_unanswered": True}), data, "train", log=lines.append)
    assert [p.title for p in kept] == ["Pier", "Other"]
    assert lines == [f"{tmp_path / 'docs.jsonl'}: left out 2 documents without questions (documents.skip_unanswered)"]
    # nothing left: an error naming the questions column (a wrong mapping looks like this)
    section, data = one_file(tmp_path, [rows[1]], skip_unanswered=True)
    with pytest.raises(DataError, match=r"holds no documents with questions \(1 without\); check documents.columns.questions \('questions'\)"):
        load_documents(section, data, "train", log=lambda _: None)


def test_tokenizer_texts_cover_train_and_eval_documents():
    texts = document_texts(*example())
    assert "Founding of Kestrel Ford" in texts and "The Lenning Road Fire" in texts
    assert "Who designed the Amsel Bridge? Marta Veil" in texts


# --- a dataset through `datasets` (offline: local folders stand in for the hub) ---------------


def _dataset_dict(with_title: bool = True):
    datasets = pytest.importorskip("datasets")
    train, ev = load_documents(*example(), "train"), load_documents(*example(), "eval")

    def table(passages):
        cols = {"heading": [p.title for p in passages]} if with_title else {}
        return datasets.Dataset.from_dict(
            cols | {
                "passage": [p.context for p in passages],
                "qs": [[q.question for q in p.questions] for p in passages],
                # SQuAD's answer form, as a hub dataset would store it
                "golds": [[{"text": [q.answer], "answer_start": [p.context.index(q.answer)]} for q in p.questions] for p in passages],
            }
        )

    return datasets.DatasetDict({"train": table(train), "test": table(ev)}), train, ev


HUB_COLUMNS = {"title": "heading", "text": "passage", "questions": "qs", "answers": "golds"}


def test_a_dataset_saved_to_disk_loads_by_split_with_a_mapping(tmp_path):
    dd, train, ev = _dataset_dict()
    dd.save_to_disk(tmp_path / "saved")
    section = DocumentsSection(hf_dataset=str(tmp_path / "saved"), eval_split="test", columns=HUB_COLUMNS)
    data = DataConfig(train_file="not-read.jsonl")  # the files are not read with hf_dataset
    assert load_documents(section, data, "train") == train
    assert load_documents(section, data, "eval", n=2) == ev[:2]
    with pytest.raises(DataError, match=r"split 'validation'.*no such split; its splits: 'train', 'test' \(documents.eval_split\)"):
        load_documents(section.model_copy(update={"eval_split": "validation"}), data, "eval")


def test_a_folder_of_data_files_loads_through_load_dataset(tmp_path):
    dd, train, ev = _dataset_dict(with_title=False)
    folder = tmp_path / "hub"
    folder.mkdir()
    dd["train"].to_json(folder / "train.jsonl")
    dd["test"].to_json(folder / "validation.jsonl")
    section = DocumentsSection(hf_dataset=str(folder), columns=HUB_COLUMNS | {"title": None})
    got = load_documents(section, DataConfig(), "eval")
    assert [p.context for p in got] == [p.context for p in ev] and got[0].title == derived_title(ev[0].context)
    assert got[0].questions == ev[0].questions
    # a mapped column the dataset lacks: named, with the dataset's columns
    with pytest.raises(DataError, match=r"split 'train': no column 'heading' \(documents.columns.title\); its columns: 'passage', 'qs', 'golds'"):
        load_documents(section.model_copy(update={"columns": section.columns.model_copy(update={"title": "heading"})}), DataConfig(), "train")
    with pytest.raises(DataError, match=r"split 'dev': could not be loaded .*documents.train_split"):
        load_documents(section.model_copy(update={"train_split": "dev"}), DataConfig(), "train")


def test_a_dataset_row_without_questions_names_the_split_and_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"title": ["A", "B"], "text": ["a text", "b text"], "questions": [["q?"], []], "answers": [["x"], []]})
    ds.save_to_disk(tmp_path / "one")
    section = DocumentsSection(hf_dataset=str(tmp_path / "one"))
    with pytest.raises(DataError, match=r"split 'train', row 1 \('B'\): has no questions.*documents.skip_unanswered: true"):
        load_documents(section, DataConfig(), "train")


# --- the recipe end to end: seal train, then seal bench on its rounds --------------------------

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "documents_tiny_cpu.yaml"


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """A working folder laid out as a clone (tests/data linked): the recipe's data.root and its
    model directory (.cache/models/tiny-documents) are relative to it."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "data").symlink_to(DATA)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_seal_train_and_bench_run_the_documents_recipe(clone):
    """The README's two commands, as written: 2 ReST-EM rounds on the first 3 example documents,
    then the bench on 3 held-out ones with each round's policy as a source."""
    import csv

    from train_helpers import one_thread
    from typer.testing import CliRunner

    from seal.cli import app
    from seal.rundir import read_jsonl

    section, data = example()
    train, ev = load_documents(section, data, "train", n=3), load_documents(section, data, "eval", n=3)
    with one_thread():
        res = CliRunner().invoke(app, ["train", str(RECIPE), "--run-dir", "runs/documents"])
    assert res.exit_code == 0, res.output
    run = clone / "runs" / "documents"

    # the tiny model was built here, its tokenizer trained on the documents' text
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(clone / ".cache" / "models" / "tiny-documents")
    assert tok.tokenize("Kestrel") == ["Kestrel"]

    # every record names a training document; each round wrote, scored and learned from them
    rows = read_jsonl(run / "journal.jsonl")
    ids = [p.id for p in train]
    evals = [r for r in rows if r["kind"] == "evaluation"]
    assert len(evals) == 2 * 3 * 3 and {r["passage_id"] for r in evals} == set(ids)  # rounds x documents x k
    assert all(r["error"] is None and len(r["scores"]) == len(train[r["passage"]].questions) for r in evals)
    for k in range(2):
        edits = json.loads((run / f"round_{k}" / "self_edits.json").read_text())
        assert [(e["title"], e["passage_id"]) for e in edits] == [(p.title, p.id) for p in train]
        assert json.loads((run / f"round_{k}" / "metrics.json").read_text())["n_kept"] == 3
    assert len(read_jsonl(run / "metrics.jsonl")) == 2
    assert (run / json.loads((run / "final.json").read_text())["policy"] / "config.json").is_file()

    with one_thread():
        res = CliRunner().invoke(app, ["bench", str(RECIPE), "--out", "runs/documents-bench", "bench.train_run=runs/documents"])
    assert res.exit_code == 0, res.output
    bench = clone / "runs" / "documents-bench"
    assert "Did ReST-EM improve the policy?" in (bench / "report.md").read_text()
    with open(bench / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert [r["source"] for r in summary] == ["base model", "document only", "tiny self-edits", "policy round 1", "policy round 2"]
    assert all(r["n_passages"] == "3" and r["n_questions"] == str(sum(len(p.questions) for p in ev)) for r in summary)
    with open(bench / "verdicts.csv") as f:
        assert {r["passage_id"] for r in csv.DictReader(f)} == {p.id for p in ev}


def test_a_document_without_questions_stops_seal_train_naming_the_line_and_writes_nothing(clone):
    from typer.testing import CliRunner

    from seal.cli import app

    bad = write_jsonl(clone / "bad.jsonl", [dict(GOOD, page="Pier", body=GOOD["text"], asked=GOOD["questions"], expected=["1901"]), {"page": "Quiet", "body": "No questions."}])
    res = CliRunner().invoke(app, ["train", str(RECIPE), f"data.train_file={bad}", "--run-dir", "runs/bad"])
    assert res.exit_code == 2, res.output
    assert f"{bad}:2 ('Quiet'): has no questions" in " ".join(res.output.split()) and "documents.skip_unanswered" in res.output
    assert "Traceback" not in res.output and not (clone / "runs" / "bad").exists()
    assert not (clone / ".cache" / "models" / "tiny-documents").exists()  # nothing built from bad data


def test_the_recipe_names_the_task_and_refuses_squads_hub_key():
    from seal.config import RecipeError, load_recipe

    recipe = load_recipe(RECIPE)
    assert recipe.task == "documents" and recipe.documents.columns.text == "body"
    with pytest.raises(RecipeError, match=r"task documents reads a dataset with documents.hf_dataset .* not data.hf_dataset"):
        load_recipe(RECIPE, ["data.hf_dataset=rajpurkar/squad"])
    with pytest.raises(RecipeError, match=r"task squad takes no 'documents' section"):
        load_recipe(RECIPE, ["task=squad"])
    with pytest.raises(RecipeError, match=r"documents.columns.txet: unknown key"):
        load_recipe(RECIPE, ["documents.columns.txet=x"])


def test_fresh_rounds_take_new_documents_from_the_file():
    """data.passage_schedule fresh: round r learns documents [r*n, (r+1)*n) of the JSONL file."""
    from seal.config import load_recipe
    from seal.train import load_round_passages

    recipe = load_recipe(RECIPE, [f"data.root={DATA}", "data.passage_schedule=fresh", "data.n_train_passages=4"])
    rounds = load_round_passages(recipe)
    train = load_documents(*example(), "train")
    assert [[p.title for p in r] for r in rounds] == [[p.title for p in train[:4]], [p.title for p in train[4:8]]]
