"""What the self-edits teach (``seal.diagnostics``): diversity, format shares and coverage of
hand-written self-edits, against values worked out by hand; the collapse warning on a
collapsed round and not on a diverse one; the recipe section is result-neutral; the demo's
per-round table. (A real round's ``diagnostics`` block: ``tests/test_train_e2e.py``.)"""

from __future__ import annotations

import random

import pytest
import yaml
from rich.console import Console

from seal.config import RESULT_NEUTRAL_KEYS, DiagnosticsConfig, Recipe, RecipeError, recipe_to_dict
from seal.data import QA, Passage, passage_from_json
from seal.diagnostics import (
    TEXT,
    across_passage_similarity,
    collapse_warning,
    coverage,
    distinct_n,
    edit_format,
    format_shares,
    line_format,
    passage_distinct_n,
    pearson,
    reward_by_coverage,
    round_diagnostics,
    similarity,
    summary_line,
    within_passage_similarity,
)
from seal.display import progress_bar
from seal.distributed import get_dist
from seal.microworld.demo import diagnostics_table
from seal.microworld.world import WorldConfig, make_world, passage_record, render_self_edit
from seal.rundir import RunDir, read_jsonl, write_json_atomic
from seal.self_edits import SelfEdit
from seal.stages import Round, Selection, diagnostics_stage, metrics_stage, round_metrics
from seal.tasks.microworld import StyleFormats
from seal.train import RESUMABLE_KEYS, check_resume

STYLE = StyleFormats()  # task microworld's diagnostics: exact styles and values


def passage(*answers: str) -> Passage:
    return Passage("T", "context", tuple(QA(f"q{i}?", a) for i, a in enumerate(answers)))


def test_distinct_n_counts_distinct_ngrams_over_all_ngrams():
    # "the cat sat" + "the cat ran": unigrams the cat sat the cat ran -> 4 distinct of 6;
    # bigrams (the cat) (cat sat) (the cat) (cat ran) -> 3 distinct of 4
    texts = ["The cat sat", "the  CAT ran"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["one"], 2) is None
    # per passage, then averaged: passage 0 as above (3/4), passage 1 two copies of "a b c" (2/4)
    assert passage_distinct_n([texts, ["a b c", "a b c"]], 2) == pytest.approx((3 / 4 + 2 / 4) / 2)


def test_similarity_is_jaccard_of_word_bigram_sets():
    # {(a b), (b c)} vs {(a b), (b d)}: 1 shared of 3
    assert similarity("a b c", "a b d") == pytest.approx(1 / 3)
    assert similarity("a b c", "A B C") == 1.0 and similarity("a b", "c d") == 0.0
    assert similarity("", "") == 1.0 and similarity("Paris", "Oslo") == 0.0 and similarity("Paris", "paris") == 1.0

    # within: passage 0's one pair (1/3), passage 1's three pairs (1, 0, 0) -> mean of 4 pairs
    rounds = [["a b c", "a b d"], ["x y", "x y", "p q"]]
    assert within_passage_similarity(rounds) == pytest.approx((1 / 3 + 1 + 0 + 0) / 4)
    assert within_passage_similarity([["only one"]]) is None
    # across: none of the 6 pairs of different passages shares a bigram
    assert across_passage_similarity(rounds) == 0.0
    assert across_passage_similarity([["a b"], ["a b"], ["c d"]]) == pytest.approx(1 / 3)  # pairs (0,1)=1, (0,2)=0, (1,2)=0
    assert across_passage_similarity([["a b", "c d"]]) is None


def test_across_passage_similarity_subsamples_the_same_pairs_every_time():
    rng = random.Random(0)
    edits = [[" ".join(rng.choice("abcdef") for _ in range(6)) for _ in range(5)] for _ in range(40)]  # 19,500 pairs
    one = across_passage_similarity(edits, max_pairs=300)
    assert one == across_passage_similarity(edits, max_pairs=300)
    assert one == pytest.approx(across_passage_similarity(edits, max_pairs=100_000), abs=0.05)  # an unbiased sample


def test_line_formats_and_the_majority_rule():
    assert [line_format(s) for s in ["Q: Who? A: Bo", "What is it?", "answer 2. Paris", "- a fact", "3) third",
                                     "It was built in 1900.", "**Implications:**", "---", "Too short."]] == [
        "qa", "qa", "qa", "list", "list", "sentence", "other", "other", "other"]  # fmt: skip
    assert edit_format("1. a thing\n2. another\n3. more\nA closing sentence here.") == "list"  # 3 of 4 >= 60 %
    assert edit_format("1. a thing\nA sentence of prose.") == "mixed"
    assert edit_format("  \n") == "empty"
    shares = format_shares(["Q: a? A: b", "- x\n- y", "- z", ""], TEXT)
    assert shares == {"qa": 0.25, "list": 0.5, "sentence": 0.0, "other": 0.0, "mixed": 0.0, "empty": 0.25}


def test_microworld_styles_are_the_worlds_exact_ones():
    world = make_world(WorldConfig(n_train=4, n_eval=4))
    rng = random.Random(0)
    person = world.train[0]
    record = passage_record(person, rng)
    texts = [render_self_edit(person, style, rng, record["context"]) for style in ("qa", "facts", "facts", "filler")]
    shares = format_shares(texts, STYLE)
    assert shares["qa"] == 0.25 and shares["facts"] == 0.5 and shares["filler"] == 0.25 and sum(shares.values()) == 1.0


def test_coverage_counts_the_passages_answers_a_self_edit_states():
    squad = passage("the Eiffel Tower", "1889", "Paris")
    # normalised containment: "Eiffel tower" (article dropped, lower case) and "1889" stated; "Paris" not
    assert coverage("Gustave Eiffel built the Eiffel Tower, finished in 1889.", squad, TEXT) == pytest.approx(2 / 3)
    assert coverage("Nothing relevant.", squad, TEXT) == 0.0
    assert coverage("anything", passage(), TEXT) is None
    # microworld: exact values as whole words; "Parisian" does not state "Paris"
    person = passage("Paris", "1975", "chess")
    assert coverage("Q: Where was Bo Vell born? A: Paris\nBo likes chess.", person, STYLE) == pytest.approx(2 / 3)
    assert coverage("A Parisian born in 19750.", person, STYLE) == 0.0


def test_coverage_against_reward():
    assert pearson([0, 1, 2], [1, 3, 5]) == pytest.approx(1.0)
    assert pearson([0, 1, 2], [2, 1, 0]) == pytest.approx(-1.0)
    assert pearson([1, 1], [0, 1]) is None and pearson([1], [1]) is None
    bins = reward_by_coverage([0.0, 0.2, 0.5, 1.0, 0.75], [0.1, 0.3, 0.2, 0.6, 0.4])
    assert bins == {
        "0-25%": {"n": 2, "mean_reward": pytest.approx(0.2)},
        "25-50%": {"n": 0, "mean_reward": None},
        "50-75%": {"n": 1, "mean_reward": 0.2},
        "75-100%": {"n": 2, "mean_reward": pytest.approx(0.5)},
    }


def diverse_round() -> tuple[list[Passage], list[list[str]]]:
    passages = [passage("Paris", "1889"), passage("Oslo", "chess")]
    edits = [
        ["Q: Where is it? A: Paris", "- It opened in 1889 in Paris.", "The tower was finished in 1889."],
        ["Oslo is a city of chess players.", "Q: What game? A: chess", "- A northern capital."],
    ]
    return passages, edits


def test_a_round_block_by_hand():
    passages, edits = diverse_round()
    rewards = [[0.5, 1.0, 0.0], [0.5, None, 0.0]]
    d = round_diagnostics(passages, edits, TEXT, rewards=rewards, kept={0: [1], 1: [0]})
    assert d["n_self_edits"] == 6 and d["format"] == "line"
    assert d["mean_words"] == pytest.approx((6 + 7 + 6 + 7 + 5 + 4) / 6)
    assert d["format_shares"] == {"qa": 2 / 6, "list": 2 / 6, "sentence": 2 / 6, "other": 0.0, "mixed": 0.0, "empty": 0.0}
    assert d["kept_format_shares"]["list"] == 0.5 and d["kept_format_shares"]["sentence"] == 0.5
    # coverage: passage 0: 1/2, 2/2, 1/2; passage 1: 2/2, 1/2, 0/2
    assert d["coverage"] == pytest.approx((0.5 + 1 + 0.5 + 1 + 0.5 + 0) / 6)
    # with a reward: (0.5, 0.5) (1, 1) (0.5, 0) (1, 0.5) (0, 0): the failed self-edit is left out
    xs, ys = [0.5, 1, 0.5, 1, 0], [0.5, 1, 0, 0.5, 0]
    # means 0.6 and 0.4; sum of products 0.55, sums of squares 0.7 and 0.7
    assert d["coverage_reward_pearson"] == pytest.approx(0.55 / 0.7) == pearson(xs, ys)
    assert d["reward_by_coverage"]["75-100%"] == {"n": 2, "mean_reward": pytest.approx(0.75)}
    assert "distinct-2" in summary_line(d) and "coverage 58.3 %" in summary_line(d)


def test_the_collapse_warning_fires_on_identical_self_edits_and_not_on_diverse_ones():
    thresholds = DiagnosticsConfig()
    passages, edits = diverse_round()
    diverse = round_diagnostics(passages, edits, TEXT)
    assert collapse_warning(diverse, None, thresholds.min_distinct_2, thresholds.max_diversity_drop) is None

    # the paper's k = 5 samples per passage, all the same text: distinct-2 = 1/5
    same = [["Paris is the capital of France."] * 5, ["Oslo is the capital of Norway."] * 5]
    collapsed = round_diagnostics(passages, same, TEXT)
    assert collapsed["distinct_2"] == pytest.approx(1 / 5) and collapsed["similarity_within_passage"] == 1.0
    reason = collapse_warning(collapsed, diverse, thresholds.min_distinct_2, thresholds.max_diversity_drop)
    assert reason is not None and "below diagnostics.min_distinct_2" in reason

    # above the floor but halved since the previous round: the drop is named
    drop = collapse_warning({"distinct_2": 0.3}, {"distinct_2": 0.9}, thresholds.min_distinct_2, thresholds.max_diversity_drop)
    assert drop is not None and "fell from 0.900 to 0.300" in drop
    assert collapse_warning({"distinct_2": 0.5}, {"distinct_2": 0.9}, 0.25, 0.5) is None  # fell 44 %: not more than half


def microworld_round(styles_of: list[list[str]]) -> tuple[list[Passage], list[list[str]]]:
    """Real microworld people and self-edits the world generator writes in the given styles."""
    world = make_world(WorldConfig(n_train=len(styles_of), n_eval=2))
    rng = random.Random(0)
    records = [passage_record(e, rng) for e in world.train]
    edits = [
        [render_self_edit(e, style, rng, r["context"]) for style in styles]
        for e, r, styles in zip(world.train, records, styles_of, strict=True)
    ]
    return [passage_from_json(r) for r in records], edits


def test_the_style_collapse_alarm_fires_when_one_style_takes_over_though_distinct_2_stays_high():
    """GRPO's microworld run wrote only question-answer self-edits (about different people, so
    distinct-2 stayed high and the diversity warning silent); the style share catches it."""
    t = DiagnosticsConfig()
    # one self-edit per person (so distinct-2 measures each text's own diversity), 10 people
    mixed = [[style] for style in ["qa", "paraphrase", "facts", "verbatim", "partial"] * 2]
    start = round_diagnostics(*microworld_round(mixed), STYLE)
    collapsed = round_diagnostics(*microworld_round([["qa"]] * 10), STYLE)
    assert collapsed["format_shares"]["qa"] == 1.0 and collapsed["distinct_2"] > t.min_distinct_2
    # the distinct-2 checks alone stay silent (1.0 switches the style check off) ...
    assert collapse_warning(collapsed, start, t.min_distinct_2, t.max_diversity_drop, 1.0, start) is None
    # ... the style check names the style and where it started
    reason = collapse_warning(collapsed, start, t.min_distinct_2, t.max_diversity_drop, t.max_format_share, start)
    assert reason == "one style, qa, holds 100.0 % of the self-edits (it was 20.0 % at the start), above diagnostics.max_format_share = 90.0 %"
    # the base policy's own habit is no collapse: a run that started all-QA stays silent
    assert collapse_warning(collapsed, collapsed, t.min_distinct_2, t.max_diversity_drop, t.max_format_share, collapsed) is None
    # 8 of 10 QA (80 %) is under the 90 % threshold
    mostly = round_diagnostics(*microworld_round([["qa"]] * 8 + [["facts"]] * 2), STYLE)
    assert collapse_warning(mostly, start, t.min_distinct_2, t.max_diversity_drop, t.max_format_share, start) is None


def test_the_style_collapse_alarm_reads_line_formats_on_squad():
    passages, edits = diverse_round()
    start = round_diagnostics(passages, edits, TEXT)
    qa_only = [["Q: Where is it? A: Paris", "Q: When did it open? A: 1889", "Q: Which city? A: Paris, France"],
               ["Q: What game? A: chess", "Q: Which city? A: Oslo", "Q: Where? A: in the north of Norway"]]  # fmt: skip
    collapsed = round_diagnostics(passages, qa_only, TEXT)
    reason = collapse_warning(collapsed, start, 0.25, 0.5, 0.9, start)
    assert reason is not None and reason.startswith("one line format, qa, holds 100.0 %")


def test_a_round_records_and_prints_its_diagnostics_and_the_collapse_warning(tmp_path):
    """The stages themselves on a collapsed round 1 (5 identical self-edits per passage) after a
    diverse round 0: the metrics carry the block and the reason, the console the warning."""
    passages, _ = diverse_round()
    recipe = Recipe.model_validate({"model": {"name_or_path": "m"}})
    run = RunDir(tmp_path)
    write_json_atomic(run.round_dir(0) / "metrics.json", {"round": 0, "diagnostics": {"distinct_2": 0.9}})
    console = Console(record=True, width=400)
    round_ = Round(recipe, run, 1, "policy", passages, get_dist(), console, progress_bar(Console(quiet=True)))
    edits = [[SelfEdit("prompt", "Paris is the capital of France.")] * 5, [SelfEdit("prompt", "Oslo is in Norway, far north.")] * 5]
    selection = Selection(rewards={0: [0.5] * 5, 1: [0.0] * 5}, kept={0: [0]}, rows=[])

    diagnostics = diagnostics_stage(round_, edits, selection)
    metrics_stage(round_, round_metrics(round_, edits, [], [], selection, None, "policy", diagnostics))
    recorded = read_jsonl(run.metrics)[-1]["diagnostics"]
    assert recorded["distinct_2"] == pytest.approx(0.2) and recorded["kept_format_shares"]["sentence"] == 1.0
    assert "below diagnostics.min_distinct_2" in recorded["collapse_warning"]
    text = console.export_text()
    assert "round 1: self-edits: distinct-2 0.20, similarity within 1.00" in text and "round 1: collapse warning: distinct-2 0.200" in text

    round_.recipe = recipe.model_copy(update={"diagnostics": DiagnosticsConfig(enabled=False)})
    assert diagnostics_stage(round_, edits, selection) is None
    assert "diagnostics" not in round_metrics(round_, edits, [], [], selection, None, "policy", None)


def test_the_diagnostics_section_is_result_neutral():
    """Old runs were recorded without the section, and any of its fields may change on resume."""
    recipe = Recipe.model_validate({"model": {"name_or_path": "m"}})
    assert set(recipe_to_dict(recipe)["diagnostics"]) == set(DiagnosticsConfig.model_fields)
    assert {"diagnostics", "diagnostics.enabled", "diagnostics.min_distinct_2", "diagnostics.max_diversity_drop"} <= RESULT_NEUTRAL_KEYS
    assert "diagnostics" in RESUMABLE_KEYS


def test_a_run_recorded_before_the_new_fields_resumes(tmp_path):
    """A config.yaml without ``diagnostics`` and ``rl.curation*`` (recorded before they existed)
    resumes with their defaults or other diagnostics settings; another curation is refused."""
    recipe = Recipe.model_validate({"model": {"name_or_path": "m"}})
    old = recipe_to_dict(recipe)
    del old["diagnostics"], old["rl"]["curation"], old["rl"]["curation_weights"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    run = RunDir(tmp_path)
    check_resume(run, recipe_to_dict(recipe))
    check_resume(run, recipe_to_dict(recipe.model_copy(update={"diagnostics": DiagnosticsConfig(min_distinct_2=0.5)})))
    with pytest.raises(RecipeError, match="rl.curation"):
        check_resume(run, recipe_to_dict(Recipe.model_validate({"model": {"name_or_path": "m"}, "rl": {"curation": "pareto"}})))


def test_the_demo_prints_each_rounds_diagnostics():
    passages, edits = diverse_round()
    rows = [{"round": r, "mean_reward": 0.1 * r, "diagnostics": round_diagnostics(passages, edits, TEXT) | {"collapse_warning": None}} for r in range(2)]
    rows.append({"round": 2, "mean_reward": 0.3})  # a round recorded before diagnostics existed
    console = Console(record=True, width=200)
    console.print(diagnostics_table(rows))
    text = console.export_text()
    assert "distinct-2" in text and "coverage" in text and "qa 33 %" in text and text.count("n/a") >= 1
