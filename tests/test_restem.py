"""ReST-EM filtering (E-step), multi-reward curation and SFT rows."""

import pytest
from rich.console import Console

from seal.config import CurationWeights, Recipe
from seal.data import QA, Passage
from seal.display import progress_bar
from seal.distributed import get_dist
from seal.restem import curate, curation_scores, pareto_fronts, pareto_order, select_best, sft_rows
from seal.rundir import RunDir, read_jsonl
from seal.scoring import EvaluationRecord
from seal.self_edits import SelfEdit
from seal.stages import Round, selection_stage


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


# ----------------------------------------------------------------------------- multi-reward curation
# One passage (answers Paris, 1889) and three self-edits, worked out by hand:
#   t0 "built in 1889 in Paris": bigrams (built in) (in 1889) (1889 in) (in paris); coverage 1
#   t1 "built in 1889":          bigrams (built in) (in 1889);                       coverage 1/2
#   t2 "a tall tower":           bigrams (a tall) (tall tower);                      coverage 0
# similarity t0-t1 = 2/4, t0-t2 = t1-t2 = 0, so novelty t0 = t1 = 1 - 1/4 = 0.75, t2 = 1.
TEXTS = ["built in 1889 in Paris", "built in 1889", "a tall tower"]
REWARDS = [0.2, 0.3, 0.25]


def scores_by_hand() -> dict[int, list[dict | None]]:
    passage = Passage("T", "c", (QA("where?", "Paris"), QA("when?", "1889")))
    return {0: curation_scores(passage, TEXTS, REWARDS), 1: curation_scores(passage, TEXTS, [None, None, None])}


def test_curation_scores_by_hand():
    scores = scores_by_hand()
    assert scores[0] == [
        {"gain": 0.2, "coverage": 1.0, "novelty": 0.75},
        {"gain": 0.3, "coverage": 0.5, "novelty": 0.75},
        {"gain": 0.25, "coverage": 0.0, "novelty": 1.0},
    ]
    assert scores[1] == [None, None, None]  # failed self-edits are never kept


def test_weighted_curation_keeps_the_best_weighted_sum():
    # default weights (1, 0.25, 0.25): t0 0.2 + 0.25 + 0.1875 = 0.6375 > t1 0.6125 > t2 0.5
    scores = scores_by_hand()
    assert curate(scores, "weighted", CurationWeights(), k_best=2) == {0: [0, 1]}
    assert scores[0][0]["score"] == pytest.approx(0.6375)
    # novelty weighed like gain, coverage not at all: t2 1.25 > t1 1.05 > t0 0.95
    assert curate(scores_by_hand(), "weighted", CurationWeights(coverage=0, novelty=1)) == {0: [2]}
    # the threshold is on the gain, as with rl.curation: gain
    assert curate(scores_by_hand(), "weighted", CurationWeights(), threshold=0.22) == {0: [1]}
    assert curate(scores_by_hand(), "weighted", CurationWeights(), threshold=0.3) == {}
    assert curate(scores_by_hand(), "weighted", CurationWeights(), threshold=0.3, keep_regardless=True) == {0: [0]}


def test_pareto_curation_keeps_the_front_with_its_tie_break():
    assert pareto_fronts({0: (1, 1, 1), 1: (0, 0, 0), 2: (1, 0, 1), 3: (0, 1, 0)}) == [[0], [2, 3], [1]]
    # (0.2, 1, 0.75), (0.3, 0.5, 0.75), (0.25, 0, 1): none dominates another, one front;
    # the tie-break orders it by gain: t1, t2, t0
    scores = scores_by_hand()
    assert curate(scores, "pareto", CurationWeights(), k_best=3) == {0: [1, 2, 0]}
    assert [s["front"] for s in scores[0]] == [0, 0, 0]
    # a dominated self-edit comes after the front whatever its gain
    dominated = {0: {"gain": 0.5, "coverage": 0.0, "novelty": 0.0}, 1: {"gain": 0.5, "coverage": 1.0, "novelty": 0.5}, 2: {"gain": 0.1, "coverage": 0.0, "novelty": 1.0}}
    assert pareto_order(dominated) == [(1, 0), (2, 0), (0, 1)]
    with pytest.raises(ValueError, match="unknown curation"):
        curate(scores_by_hand(), "best", CurationWeights())


def test_the_selection_stage_records_curation_scores_and_gain_rows_stay_plain(tmp_path):
    passage = Passage("T", "c", (QA("where?", "Paris"), QA("when?", "1889")))
    edits = [[SelfEdit("P", text) for text in TEXTS]]
    records = [
        EvaluationRecord({"kind": "evaluation", "round": 0, "passage": 0, "self_edit": e, "repetition": 0}, passage.id, 0, r, r, 0.0, [], [], [], 1, 1, 0.0, None)
        for e, r in enumerate(REWARDS)
    ]  # fmt: skip
    for curation, k_best, expected in (("gain", 1, [1]), ("pareto", 2, [1, 2]), ("weighted", 1, [0])):
        recipe = Recipe.model_validate({"model": {"name_or_path": "m"}, "rl": {"curation": curation, "k_best": k_best}})
        run = RunDir(tmp_path / curation)
        quiet = Console(quiet=True)
        selection = selection_stage(Round(recipe, run, 0, "policy", [passage], get_dist(), quiet, progress_bar(quiet)), edits, records)
        assert selection.kept == {0: expected}
        assert selection.rows == [{"prompt": "P", "completion": TEXTS[i]} for i in expected]  # what the policy update learns
        recorded = read_jsonl(run.round_dir(0) / "sft_rows.jsonl")
        if curation == "gain":
            assert recorded == selection.rows  # today's file, unchanged
        else:
            assert [row["completion"] for row in recorded] == [TEXTS[i] for i in expected]
            assert recorded[0]["curation"]["gain"] == REWARDS[expected[0]] and {"coverage", "novelty"} <= set(recorded[0]["curation"])


def test_gradient_checkpointing_leaves_the_policy_update_bitwise_unchanged(tiny_squad_model, tmp_path):
    """rl.sft.gradient_checkpointing is result-neutral (a resume may switch it on: the fix for a
    policy update that runs out of memory after a round's evaluations): same loss, same merged
    weights, bit for bit (CPU; recomputing a forward pass is deterministic)."""
    import torch
    from safetensors.torch import load_file
    from train_helpers import one_thread

    from seal.config import RESULT_NEUTRAL_KEYS, SFTConfig
    from seal.restem import update_policy

    assert "rl.sft.gradient_checkpointing" in RESULT_NEUTRAL_KEYS
    rows = [{"prompt": f"Passage {i}: the cat sat on the mat.\nImplications:", "completion": f" fact {i} about cats"} for i in range(3)]
    out = {}
    for checkpointing in (False, True):
        cfg = SFTConfig(epochs=1, max_length=128, gradient_checkpointing=checkpointing)
        with one_thread():
            stats = update_policy(tiny_squad_model, rows, cfg, tmp_path / str(checkpointing), seed=7)
        out[checkpointing] = stats["train_loss"], load_file(tmp_path / str(checkpointing) / "model.safetensors")
    assert out[False][0] == out[True][0]
    assert out[False][1].keys() == out[True][1].keys()
    assert all(torch.equal(out[False][1][k], out[True][1][k]) for k in out[False][1])


def test_policy_update_loads_the_recipe_dtype_and_attention(tiny_squad_model, tmp_path):
    """The ReST-EM policy update loads the policy through ``seal.models.load_policy``: with
    ``model.dtype: bfloat16`` and ``model.attn_implementation: eager`` the model TRL trains is
    bf16 with eager attention (seen by a TrainerCallback at the start of training), and so is
    the merge base (the saved policy is bf16). Before issue 21 it was float32 and sdpa."""
    import torch
    from train_helpers import one_thread
    from transformers import AutoConfig, TrainerCallback

    from seal.config import ModelConfig, SFTConfig
    from seal.restem import update_policy

    seen = {}

    class Record(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["base"] = {p.dtype for n, p in model.named_parameters() if "lora_" not in n}
            seen["lora"] = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
            seen["attn"] = model.config._attn_implementation

    rows = [{"prompt": f"Passage {i}: the cat sat on the mat.\nImplications:", "completion": f" fact {i} about cats"} for i in range(2)]
    model_config = ModelConfig(name_or_path=str(tiny_squad_model), dtype="bfloat16", attn_implementation="eager", device="cpu")
    with one_thread():
        stats = update_policy(tiny_squad_model, rows, SFTConfig(epochs=1, max_length=64), tmp_path / "policy", seed=0, model_config=model_config, callbacks=[Record()])
    assert stats["steps"] == 2 and stats["train_loss"] == stats["train_loss"]  # trained, a finite loss
    assert seen == {"base": {torch.bfloat16}, "lora": {torch.float32}, "attn": "eager"}  # PEFT keeps the adapter in fp32
    assert AutoConfig.from_pretrained(tmp_path / "policy").dtype == torch.bfloat16  # the merge base: bf16 too
