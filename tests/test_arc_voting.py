"""Augmented inference with voting (seal/arc/voting.py, ``arc.inference: vote``): transforms
invert on every real grid, hand-worked votes, 2 attempts, all-test-inputs task verdicts, and
the vote path end to end with a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from train_helpers import one_thread

from seal.arc.config import ArcSection
from seal.arc.grids import grid_to_text
from seal.arc.tasks import ArcTask, Example, load_arc_tasks, task_passage
from seal.arc.voting import TRANSFORMS, Query, VotePlan, arc_passage, vote, vote_plan, vote_scores
from seal.config import RecipeError, load_recipe
from seal.tasks.registry import make_task

FILES = [
    "arc/arc-agi_training_challenges.json",
    "arc/arc-agi_evaluation_challenges.json",
    "arc/arc-agi_training_challenges_filtered_1B_training_set.json",
    "arc/arc-agi_evaluation_challenges_filtered_1B_eval_set.json",
]
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
VOTE = ArcSection(inference="vote")


@pytest.fixture(scope="module")
def all_tasks(data_root):
    return [t for f in FILES for t in load_arc_tasks(f, root=data_root)]


def test_every_inference_transform_inverts_exactly_on_every_real_grid(all_tasks):
    assert len(all_tasks) == 822 and set(TRANSFORMS) == {"identity", "transpose", "flip0", "flip1", "rotate90", "rotate180", "rotate270"}
    grids = {g for task in all_tasks for g in task.grids()}
    assert len(grids) > 5000
    for g in grids:
        array = np.asarray(g)
        for name, aug in TRANSFORMS.items():
            assert np.array_equal(aug.backward(aug.forward(array)), array), (g, name)
    g = ((1, 2, 3), (4, 5, 6))  # the grid Query.invert sees: a Grid, back from a transformed one
    assert all(aug.invert(aug.apply(g)) == g for aug in TRANSFORMS.values())


def test_queries_of_the_paper_tasks_map_answers_back(all_tasks):
    """Every query of the 22 filtered tasks asks the real test input under its transform: the
    transformed gold output, mapped back, is the gold output; counts follow 3 D + 5."""
    filtered = all_tasks[-22:]
    for task in filtered:
        plan = vote_plan(task, VOTE, seed=0)
        assert plan == vote_plan(task, VOTE, seed=0)  # seeded: a resumed run asks the same
        for example, queries in zip(task.test, plan.queries, strict=True):
            assert 7 <= len(queries) <= 3 * len(task.train) + 5 <= 25
            assert [q.transform for q in queries if q.transform != "identity"] == [
                t for t in VOTE.transforms if t in {q.transform for q in queries}
            ]
            for q in queries:
                aug = TRANSFORMS[q.transform]
                assert q.invert(q.test_input) == example.input and q.invert(aug.apply(example.output)) == example.output
                assert q.transform != "identity" or set(q.demos) < set(task.train)  # leave-one-out
                assert len(q.demos) == len(task.train) - 1
    # 6 demonstrations: up to 6 x 3 + 5 = 23 queries (test input 0: a drawn order repeats one)
    big = next(t for t in filtered if t.id == "44f52bb0")
    assert [len(q) for q in vote_plan(big, VOTE, 0).queries] == [22, 23]
    assert vote_plan(big, VOTE, 0) != vote_plan(big, VOTE, 1)
    capped = vote_plan(big, ArcSection(inference="vote", max_queries=9), 0).queries[0]
    assert len(capped) == 9 and sum(q.transform != "identity" for q in capped) == 5
    everything = vote_plan(big, ArcSection(inference="vote", query_leave_out=[0], query_permutations=0, transforms=[]), 0)
    assert [len(q.demos) for q in everything.queries[0]] == [6]  # greedy's demonstrations, asked once


G = ((1, 2), (3, 4))  # gold
A, B, C = ((1, 1), (1, 1)), ((2, 2), (2, 2)), ((3, 3), (3, 3))


def test_an_answerer_right_only_under_transforms_wins_the_vote():
    """Hand-worked: the untransformed queries answer A six times, B three and C once; the five
    transformed ones all answer G (after mapping back). A plain majority picks A (6 > 5); the
    hierarchical vote pools each category's top three: all -> [A, G, B], identity -> [A, B, C],
    each transform's single answer -> [G, G, G] (its row and column majorities are G too), so
    G has 1 + 15 = 16 votes; A 2, B 2 (tie: A has more identity answers), C 1."""
    answers = [("identity", A)] * 6 + [("identity", B)] * 3 + [("identity", C)]
    answers += [(t, G) for t in ("transpose", "flip0", "flip1", "rotate90", "rotate180")]
    assert vote(answers, attempts=2) == [G, A]
    assert vote(answers, attempts=4) == [G, A, B, C]
    # the same answers, all untransformed: all and identity both rank [A, G, B]; a tie of 2
    # votes each, broken by identity answers: A (the plain majority) first
    assert vote([("identity", A)] * 6 + [("identity", B)] * 3 + [("identity", C)] + [("identity", G)] * 5, 2) == [A, G]
    assert vote([("identity", None), ("flip0", None)]) == []  # nothing readable: no attempt
    assert vote([("identity", None), ("flip0", B)], 1) == [B]  # an unreadable answer casts no vote


def test_fewer_distinct_answers_than_attempts():
    """One answer everywhere: one attempt (its row and column majorities are itself), no duplicate."""
    assert vote([("identity", A), ("transpose", A), ("identity", A)], 2) == [A]


def _task(n_tests: int) -> ArcTask:
    # grids with no symmetry, so that every transformed query is new
    demos = tuple(Example(((i, i, 0), (0, 0, 0)), ((0, 0, 0), (i, i, 0))) for i in (1, 2, 3))
    tests = tuple(Example(((i, i, 5), (0, 0, 0)), ((0, 0, 0), (i, i, 5))) for i in (4, 6)[:n_tests])
    return ArcTask("hand", demos, tests)


def _answers(queries: tuple[Query, ...], grids: list) -> list[str]:
    """Answer texts: each grid given in the query's frame (transformed), as a model writes it."""
    return [grid_to_text(TRANSFORMS[q.transform].apply(g)) + "\nsome trailing text" for q, g in zip(queries, grids, strict=True)]


def test_two_attempts_the_second_ranked_counts():
    task = _task(1)
    plan = vote_plan(task, VOTE, 0)
    queries, gold = plan.queries[0], task.test[0].output
    n_id = sum(q.transform == "identity" for q in queries)
    assert [q.transform for q in queries[n_id:]] == ["transpose", "flip0", "flip1", "rotate90", "rotate180"]
    # pooled top threes: all [A, gold, A], identity [A, A, A], transpose and flip0 [gold] x 3,
    # the other three [A] x 3: A 14 votes, gold 7: A first, gold second
    grids = [A] * n_id + [gold, gold, A, A, A]
    answers = _answers(queries, grids)
    assert vote_scores(plan, [gold], answers) == [1.0]
    assert vote_scores(VotePlan(plan.queries, 1), [gold], answers) == [0.0]
    assert vote_scores(plan, [gold], _answers(queries, [A] * n_id + [B] * 5)) == [0.0]
    with pytest.raises(ValueError, match=f"{len(queries) - 1} answers"):
        vote_scores(plan, [gold], answers[:-1])


def test_a_task_counts_only_when_every_test_input_is_solved():
    task = _task(2)
    plan = vote_plan(task, VOTE, 0)
    golds = [t.output for t in task.test]
    first = _answers(plan.queries[0], [golds[0]] * len(plan.queries[0]))
    second_right = _answers(plan.queries[1], [golds[1]] * len(plan.queries[1]))
    second_wrong = _answers(plan.queries[1], [C] * len(plan.queries[1]))
    assert vote_scores(plan, golds, first + second_right) == [1.0, 1.0]
    assert vote_scores(plan, golds, first + second_wrong) == [0.0, 0.0]  # half solved: the task is not


def test_greedy_is_unchanged_and_vote_asks_every_query(all_tasks):
    task = next(t for t in all_tasks if t.id == "b1fc8b8e")  # 2 test inputs, 5 demonstrations
    arc = make_task(load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "arc_tiny_cpu.yaml"))  # task arc
    greedy = arc_passage(task, ArcSection(), 0)
    assert greedy == task_passage(task) and greedy.vote is None and arc.n_prompts(greedy) == 2
    voted = arc_passage(task, VOTE, 0)
    prompts = arc.question_prompts(voted, "arc")
    assert voted.id == greedy.id and arc.n_prompts(voted) == len(prompts) == 40
    assert prompts[0] != arc.question_prompts(greedy, "arc")[0] and prompts[0].endswith("Test output:\n")


def test_vote_queries_follow_the_text_format(all_tasks):
    """With ``arc.text_format: reference`` every augmented query is the reference's chat text
    and its answer is read numpy-style, then mapped back."""
    task = next(t for t in all_tasks if t.id == "b1fc8b8e")
    plan = arc_passage(task, VOTE.model_copy(update={"text_format": "reference"}), 0).vote
    query = plan.queries[0][-1]
    assert query.transform != "identity" and query.text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    gold = task.test[0].output
    answer = grid_to_text(TRANSFORMS[query.transform].apply(gold), "numpy") + "#"
    assert query.invert(query.read(answer)) == gold and query.read(grid_to_text(gold)) is None


def test_vote_needs_the_grid_grader():
    with pytest.raises(RecipeError, match="qa.grader: grid"):
        load_recipe(RECIPES / "arc_tiny_cpu.yaml", ["arc.inference=vote", "qa.grader=exact"])
    for name in ("arc_llama3.2-1b_restem.yaml", "bench_arc_llama3.2-1b.yaml"):
        arc = load_recipe(RECIPES / name).arc
        assert arc.inference == "vote" and arc.attempts == 2 and arc.transforms == ["transpose", "flip0", "flip1", "rotate90", "rotate180"]
        assert arc.query_leave_out == [1] and arc.query_permutations == 2


@pytest.mark.timeout(120)
def test_vote_path_end_to_end_with_a_tiny_model(tiny_squad_model, data_root, tmp_path):
    """``seal evaluate`` with ``arc.inference=vote`` on one real task: every query answered in
    the batched answering pass (baseline and adapter), and the journaled answers re-vote to the
    journaled scores."""
    from seal.evaluate import evaluate, load_eval_passages

    overrides = [f"model.name_or_path={tiny_squad_model}", "model.build_tiny=null", f"data.root={data_root}", "arc.eval_task_ids=[66e6c45b]",
                 "arc.inference=vote", "arc.max_train_texts=4", "arc.missing_keys=inner-defaults", "evaluate.source='text:{\"basic\": true, \"epochs\": 1}'"]  # fmt: skip
    recipe = load_recipe(RECIPES / "arc_tiny_cpu.yaml", overrides)
    with one_thread():
        summary = evaluate(recipe, tmp_path / "eval")
    (passage,) = load_eval_passages(recipe)
    (record,) = [json.loads(line) for line in (tmp_path / "eval" / "journal.jsonl").read_text().splitlines()]
    assert record["error"] is None and record["n_train_texts"] == 4
    assert len(record["answers"]) == passage.vote.n_queries == 7 and len(record["scores"]) == 1
    assert record["scores"] == vote_scores(passage.vote, [passage.task.test[0].output], record["answers"])
    assert summary["accuracy"] == record["adapter_accuracy"] == record["scores"][0]


def test_vote_keys_are_compared_on_resume():
    from seal.config import RESULT_NEUTRAL_KEYS, diff_recipes, recipe_to_dict, with_defaults

    greedy = recipe_to_dict(load_recipe(RECIPES / "arc_tiny_cpu.yaml"))
    vote_ = recipe_to_dict(load_recipe(RECIPES / "arc_tiny_cpu.yaml", ["arc.inference=vote", "arc.attempts=3", "arc.transforms=[flip0]"]))
    diffs = diff_recipes(greedy, vote_)
    assert diffs == ["arc.attempts", "arc.inference", "arc.transforms"] and not set(diffs) & RESULT_NEUTRAL_KEYS
    old = json.loads(json.dumps(greedy))  # a run recorded before the keys existed resumes as greedy
    for key in ("inference", "attempts", "transforms", "query_leave_out", "query_permutations", "max_queries"):
        del old["arc"][key]
    assert diff_recipes(with_defaults(old), greedy) == []


@pytest.mark.timeout(120)
def test_train_rewards_vote(tiny_squad_model, data_root, tmp_path, monkeypatch):
    """A ``seal train`` round with ``arc.inference=vote``: baselines and rewards both come from
    the vote over every query (written configurations; a random tiny policy writes none that parse)."""
    import seal.stages
    from seal.prompts import self_edit_prompt
    from seal.rundir import read_jsonl
    from seal.self_edits import SelfEdit
    from seal.train import load_train_passages, train

    def scripted(model, tokenizer, passages, template, k, *args, hint="", **kwargs):
        text = '{"basic": true, "lr": 0.001, "epochs": 1, "loss_on": "answer"}'
        return [[SelfEdit(self_edit_prompt(template, p.title, p.context, hint=hint), text)] * k for p in passages]

    monkeypatch.setattr(seal.stages, "generate_self_edits", scripted)
    overrides = [f"model.name_or_path={tiny_squad_model}", "model.build_tiny=null", f"data.root={data_root}", "arc.task_ids=[6150a2bd]",
                 "self_edit.k=1", "arc.max_train_texts=2", "qa.max_new_tokens=12", "inner.max_length=384", "arc.inference=vote", "arc.missing_keys=inner-defaults"]  # fmt: skip
    recipe = load_recipe(RECIPES / "arc_tiny_cpu.yaml", overrides)
    (passage,) = load_train_passages(recipe)
    with one_thread():
        run = train(recipe, tmp_path / "run")
    rows = read_jsonl(run / "journal.jsonl")
    (base,) = [r for r in rows if r["kind"] == "baseline"]
    (ev,) = [r for r in rows if r["kind"] == "evaluation"]
    gold = [passage.task.test[0].output]
    assert len(base["answers"]) == len(ev["answers"]) == passage.vote.n_queries == 7
    assert base["scores"] == vote_scores(passage.vote, gold, base["answers"])
    assert ev["error"] is None and ev["scores"] == vote_scores(passage.vote, gold, ev["answers"]) and ev["reward"] == ev["scores"][0]
