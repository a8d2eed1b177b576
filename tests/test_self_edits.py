"""Train-sequence construction from self-edits, against hand-written cases (reference edge cases)."""

import pytest

from seal.config import SelfEditConfig
from seal.data import QA, Passage
from seal.prompts import TEMPLATES, PromptError, qa_prompt, self_edit_prompt
from seal.self_edits import split_self_edit, train_texts

P = Passage("Super Bowl 50", "Super Bowl 50 was an American football game.", (QA("Who won?", "Denver Broncos"),))


def test_split_on_triple_dash_drops_blank_parts():
    assert split_self_edit("a fact\n---\n\n---\nanother fact\n") == ["a fact", "another fact"]


def test_no_split_newlines_keeps_list_as_one_text():
    assert split_self_edit("1. x\n2. y") == ["1. x\n2. y"]


def test_split_newlines_one_text_per_nonblank_line():
    assert split_self_edit("1. x\n\n2. y\n", split_newlines=True) == ["1. x", "2. y"]


def test_chatty_first_line_dropped_when_list_starts_on_next_line():
    text = "Here are some implications of the passage:\n1. The game was played.\n2. Denver won."
    assert split_self_edit(text, split_newlines=True) == ["1. The game was played.", "2. Denver won."]


def test_first_line_kept_when_it_is_a_list_item_or_next_is_not():
    assert split_self_edit("1. a\n2. b", split_newlines=True) == ["1. a", "2. b"]
    assert split_self_edit("Prose line.\nMore prose.", split_newlines=True) == ["Prose line.", "More prose."]
    assert split_self_edit("- a\n- b", split_newlines=True) == ["- a", "- b"]


def test_self_qa_split_on_question_n_keeps_answer_with_question():
    text = "Who won?\nAnswer: Denver\nQuestion 2: Where?\nAnswer: Santa Clara"
    assert split_self_edit(text, split_newlines=True, template="self-qa") == [
        "Who won?\nAnswer: Denver",
        "Where?\nAnswer: Santa Clara",
    ]


def test_train_texts_prefix_title_and_append_passage():
    texts = train_texts(P, "A.\n---\nB.", split_newlines=False)
    assert texts == ["Super Bowl 50\nA.", "Super Bowl 50\nB.", "Super Bowl 50\nSuper Bowl 50 was an American football game."]


def test_passage_only_and_empty_self_edit():
    assert train_texts(P, None) == ["Super Bowl 50\nSuper Bowl 50 was an American football game."]
    assert train_texts(P, "  \n---\n ") == train_texts(P, None)


def test_prompts_match_released_data(squad_train, data_root):
    import json

    row = json.loads((data_root / "squad" / "val_200_selfedits_gpt-4.1.json").read_text())[0]
    assert self_edit_prompt("implications", row["title"], row["context"]) == row["prompt"]


def test_qa_prompt_has_topic_prefix():
    assert qa_prompt("T", "Q?") == "Let's answer a question directly and concisely.\nQuestion: Topic: T\nQ?\nAnswer:\n"


def test_unknown_template_is_a_clear_error():
    with pytest.raises(PromptError, match="implicatons"):
        self_edit_prompt("implicatons", "t", "c")
    assert {"implications", "implications-long", "implications-very-long", "rewrite", "self-qa"} <= set(TEMPLATES)


def test_chat_variant_uses_tokenizer_template(tiny_squad_model):
    from seal.models import load_tokenizer

    tok = load_tokenizer(tiny_squad_model)
    text = self_edit_prompt("implications", "T", "C", tok, chat=True)
    assert text.startswith("<|user|>\nLet's read the following passage") and text.endswith("<|assistant|>\nImplications:\n")


def test_greedy_self_edits_ignore_the_seed_and_allow_one_per_passage(tiny_squad_model, squad_train):
    from seal.models import load_model
    from seal.self_edits import sample_self_edits

    model, tok = load_model(tiny_squad_model, device="cpu")
    args = (model, tok, squad_train[:2], SelfEditConfig(template="implications", k=1, top_p=0.95, max_new_tokens=12))
    a = sample_self_edits(*args, seed=0, greedy=True)
    assert a == sample_self_edits(*args, seed=1, greedy=True)
    assert a != sample_self_edits(*args, seed=0)  # sampling differs from greedy
    with pytest.raises(ValueError, match="greedy decoding gives one self-edit per passage, not k=2"):
        sample_self_edits(*args, seed=0, k=2, greedy=True)
    # a call's template and k stand in for the section's: the draws of a section holding them
    model, tok, passages, config = args
    rewrite = config.model_copy(update={"template": "rewrite", "k": 2})
    assert sample_self_edits(*args, seed=3, template="rewrite", k=2) == sample_self_edits(model, tok, passages, rewrite, seed=3)
