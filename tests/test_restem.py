"""ReST-EM filtering (E-step) and SFT rows."""

from seal.restem import select_best, sft_rows


def test_select_best_threshold_and_ties():
    rewards = {0: [0.0, 0.2, 0.2, -0.1], 1: [0.0, -0.2], 2: [None, 0.1]}
    assert select_best(rewards) == {0: [1], 2: [1]}
    assert select_best(rewards, k_best=2) == {0: [1, 2], 2: [1]}
    assert select_best(rewards, threshold=0.15) == {0: [1]}


def test_keep_regardless_reproduces_reference():
    rewards = {0: [-0.3, -0.1], 1: [0.0, 0.0], 2: [None, None]}
    assert select_best(rewards, keep_regardless=True) == {0: [1], 1: [0]}


def test_sft_rows_in_passage_then_rank_order():
    rows = sft_rows({0: "P0", 1: "P1"}, {0: ["a", "b"], 1: ["c", "d"]}, {1: [1], 0: [1, 0]})
    assert rows == [
        {"prompt": "P0", "completion": "b"},
        {"prompt": "P0", "completion": "a"},
        {"prompt": "P1", "completion": "d"},
    ]
