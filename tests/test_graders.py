"""Graders on SQuAD normalisation cases, and reward arithmetic."""

import pytest

from seal.graders import contains, exact_match, grade, normalize_answer, token_f1
from seal.rewards import accuracy, mean_reward, reward


@pytest.mark.parametrize(
    "text,norm",
    [("The Denver Broncos!", "denver broncos"), ("  a  cat, an owl ", "cat owl"), ("Theory", "theory"), ("U.S.", "us")],
)
def test_squad_normalization(text, norm):
    assert normalize_answer(text) == norm


def test_exact_match():
    assert exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0


def test_token_f1():
    assert token_f1("Denver Broncos", "Denver Broncos") == 1.0
    assert token_f1("Denver", "Denver Broncos") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert token_f1("Carolina", "Denver Broncos") == 0.0
    assert token_f1("", "") == 1.0


def test_contains_respects_word_boundaries():
    assert contains("It was the Denver Broncos, I think", "Denver Broncos") == 1.0
    assert contains("1990s", "1990") == 0.0
    assert contains("anything", "") == 0.0


def test_grade_dispatch_and_errors():
    assert grade(["q"], ["Paris"], ["paris, France"], "contains") == [1.0]
    with pytest.raises(ValueError, match="unknown grader"):
        grade(["q"], ["a"], ["a"], "bleu")
    with pytest.raises(ValueError, match="judge"):
        grade(["q"], ["a"], ["a"], "judge")
    with pytest.raises(ValueError, match="equal lengths"):
        grade(["q"], ["a", "b"], ["a"], "exact")


def test_accuracy_ungraded_policies():
    assert accuracy([1.0, 0.0, None, 1.0]) == pytest.approx(2 / 3)
    assert accuracy([1.0, 0.0, None, 1.0], "wrong") == pytest.approx(0.5)
    assert accuracy([None, None]) is None
    with pytest.raises(ValueError):
        accuracy([1.0], "ignore")


def test_reward_arithmetic():
    assert reward(0.6, 0.4) == pytest.approx(0.2)
    assert reward(0.2, 0.4) == pytest.approx(-0.2)
    assert reward(None, 0.4) is None
    assert mean_reward([0.2, None, 0.4]) == pytest.approx(0.3)
    assert mean_reward([None]) is None
