"""Data loading: real files parse; malformed input fails with errors naming the file and passage."""

import json

import pytest

from seal.data import DataError, load_passages, match_self_edits


def test_real_files_load(squad_train, data_root):
    assert len(squad_train) == 100 and sum(len(p.questions) for p in squad_train) == 467
    gpt = load_passages("squad/val_200_selfedits_gpt-4.1.json", root=data_root, require_completions=True)
    assert all(len(p.completions) == 5 for p in gpt)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_passages(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        load_passages(bad)
    bad.write_text(json.dumps({"title": "x"}))
    with pytest.raises(DataError, match="JSON list"):
        load_passages(bad)


def test_passage_without_questions_is_named(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps([{"title": "Ok", "context": "c", "questions": [{"question": "q", "answer": "a"}]},
                             {"title": "Empty one", "context": "c", "questions": []}]))
    with pytest.raises(DataError, match=r"passage 1 \('Empty one'\): passage has no questions"):
        load_passages(f)


def test_match_self_edits_names_missing_passage(squad_train, data_root):
    gpt = load_passages("squad/val_200_selfedits_gpt-4.1.json", root=data_root)
    with pytest.raises(DataError, match=squad_train[0].title):
        match_self_edits(squad_train[:1], gpt, "gpt.json")


def test_an_empty_passage_list_is_an_error_naming_the_file(tmp_path, data_root):
    """Before: an empty training file trained nothing and exited 0."""
    f = tmp_path / "empty.json"
    f.write_text("[]")
    with pytest.raises(DataError, match=r"empty.json: holds no passages"):
        load_passages(f)
    from seal.arc.tasks import load_arc_tasks

    with pytest.raises(DataError, match=r"training_challenges_filtered_1B_training_set.json: no tasks to use"):
        load_arc_tasks("arc/arc-agi_training_challenges_filtered_1B_training_set.json", root=data_root, task_ids=[])
