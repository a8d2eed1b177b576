"""Knowledge incorporation as the authors ran it (issue 19): fresh passages every round
(``data.passage_schedule``), the policy update's global batch (``rl.sft.global_batch_size``),
and the paper training recipe's reference profile run end to end on a tiny model with the
local judge stub. The judge prompts themselves are tested in tests/test_judge.py."""

from __future__ import annotations

import json

import pytest
from train_helpers import REPO, one_thread, tiny_overrides
from typer.testing import CliRunner

from seal.bench.sources import train_run_sources
from seal.cli import app
from seal.config import RecipeError, SFTConfig, load_recipe
from seal.data import DataError, load_passages
from seal.restem import sft_grad_accum_steps, update_policy
from seal.rundir import read_jsonl
from seal.train import load_round_passages, load_train_passages

try:
    from judge_server import JudgeServer, reference_grader
except ImportError:  # tests/ became a package
    from tests.judge_server import JudgeServer, reference_grader

TINY = REPO / "recipes" / "squad_tiny_cpu.yaml"
PAPER = REPO / "recipes" / "squad_qwen2.5-7b_restem.yaml"


def ids(passages) -> list[str]:
    return [p.id for p in passages]


# ----------------------------------------------------------------------------- data.passage_schedule


def test_fresh_takes_consecutive_slices_or_a_file_per_round(data_root):
    train = load_passages("squad/train_100.json", root=data_root)
    fixed = load_round_passages(load_recipe(TINY, ["data.n_train_passages=3", "rl.rounds=2"]))
    assert [ids(r) for r in fixed] == [ids(train[:3])] * 2  # today's behaviour, the default
    fresh = load_round_passages(load_recipe(TINY, ["data.passage_schedule=fresh", "data.n_train_passages=3", "rl.rounds=3"]))
    assert [ids(r) for r in fresh] == [ids(train[0:3]), ids(train[3:6]), ids(train[6:9])]
    # the paper recipe: round 1 (our 0) on the first 50 of train_100, round 2 on train_round2_50
    paper = load_recipe(PAPER)
    rounds = load_round_passages(paper)
    assert ids(rounds[0]) == ids(train[:50])
    assert ids(rounds[1]) == ids(load_passages("squad/train_round2_50.json", root=data_root))
    assert not set(ids(rounds[0])) & set(ids(rounds[1]))
    assert ids(load_train_passages(paper, 1)) == ids(rounds[1])  # a round's passages alone (benchmarks/outer_loops.py)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.n_train_passages=60", "rl.rounds=2"], "holds 100 passages; data.passage_schedule fresh takes data.n_train_passages=60"),
        (["data.round_train_files=[squad/train_100.json,squad/train_100.json]", "rl.rounds=2", "data.n_train_passages=2"], "is in round 0's and round 1's"),
        (["data.round_train_files=[squad/train_round2_50.json,squad/train_100.json]", "data.n_train_passages=51", "rl.rounds=2"], "data.round_train_files[0]"),
    ],
)
def test_fresh_refuses_too_few_or_repeated_passages(overrides, message):
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_round_passages(load_recipe(TINY, ["data.passage_schedule=fresh", *overrides]))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.passage_schedule=fresh", "data.n_train_passages=null"], "needs data.n_train_passages"),
        (["data.round_train_files=[squad/train_100.json]"], "needs data.passage_schedule: fresh"),
        (["data.passage_schedule=fresh", "data.round_train_files=[squad/train_100.json]", "rl.rounds=2"], "lists 1 files for rl.rounds 2"),
        (["data.passage_schedule=fresh", "rl.algorithm=grpo", "inner.learner=base"], "rl.algorithm grpo has none"),
        (["rl.sft.global_batch_size=10", "rl.sft.grad_accum_steps=2"], "leave rl.sft.grad_accum_steps at 1"),
        (["rl.sft.global_batch_size=3", "rl.sft.batch_size=2"], "must be a multiple of rl.sft.batch_size"),
    ],
)
def test_schedule_and_global_batch_settings_are_checked_when_the_recipe_loads(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(TINY, overrides)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fresh_rounds_learn_new_passages_resume_and_feed_the_bench(tiny_squad_model, data_root, tmp_path):
    """Round 1 trains on another passage than round 0 (the journal's passage ids say so), a
    resume that adds a round takes the next passage, one that would run out is refused before
    any work, and ``bench.train_run`` reads the run's rounds."""
    train = load_passages("squad/train_100.json", root=data_root)
    run = tmp_path / "run"
    base = tiny_overrides(tiny_squad_model, data_root, data__n_train_passages=1, self_edit__k=2)

    def invoke(*args):
        with one_thread():
            return CliRunner().invoke(app, ["train", str(TINY), *base, "data.passage_schedule=fresh", *args])

    res = invoke("rl.rounds=1", "--run-dir", str(run))
    assert res.exit_code == 0, res.output
    res = invoke("rl.rounds=2", "--resume", str(run))  # one more round: the next passage
    assert res.exit_code == 0, res.output
    assert "round 0: finished earlier" in res.output
    baselines = [(r["round"], r["passage"], r["passage_id"]) for r in read_jsonl(run / "journal.jsonl") if r["kind"] == "baseline"]
    assert baselines == [(0, 0, train[0].id), (1, 0, train[1].id)]
    evaluations = {(r["round"], r["passage_id"]) for r in read_jsonl(run / "journal.jsonl") if r["kind"] == "evaluation"}
    assert evaluations == {(0, train[0].id), (1, train[1].id)}
    assert [e["title"] for r in (0, 1) for e in json.loads((run / f"round_{r}" / "self_edits.json").read_text())] == [train[0].title, train[1].title]
    specs, metrics = train_run_sources(run)
    assert [s.round for s in specs] == [1, 2] and [m["n_passages"] for m in metrics] == [1, 1]

    launches = json.loads((run / "run.json").read_text())["launches"]
    res = invoke("rl.rounds=101", "--resume", str(run))  # 101 rounds of 1 passage: train_100 has 100
    assert res.exit_code != 0 and "needs 101" in res.output
    assert json.loads((run / "run.json").read_text())["launches"] == launches  # refused before any work
    res = invoke("rl.rounds=101", "--run-dir", str(tmp_path / "fresh_run"))
    assert res.exit_code != 0 and not (tmp_path / "fresh_run").exists()


# ----------------------------------------------------------------------------- rl.sft.global_batch_size


def test_global_batch_derives_accumulation_whatever_the_process_count():
    cfg = SFTConfig(batch_size=1, global_batch_size=10)
    assert [sft_grad_accum_steps(cfg, world) for world in (1, 2, 5, 10)] == [10, 5, 2, 1]  # 10 rows per step each time
    assert sft_grad_accum_steps(SFTConfig(batch_size=2, global_batch_size=8), 2) == 2
    with pytest.raises(RecipeError, match=r"rl.sft.global_batch_size \(10\) is not a multiple of rl.sft.batch_size x processes \(1 x 3\)"):
        sft_grad_accum_steps(cfg, 3)
    assert [sft_grad_accum_steps(SFTConfig(grad_accum_steps=4), world) for world in (1, 8)] == [4, 4]  # None: today's


@pytest.mark.timeout(120)
def test_global_batch_sets_the_optimizer_steps_of_a_real_policy_update(tiny_squad_model, tmp_path):
    rows = [{"prompt": f"Passage {i}. Implications:", "completion": f" fact number {i}."} for i in range(4)]
    lora = {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    with one_thread():
        per_device = update_policy(tiny_squad_model, rows, SFTConfig(lora=lora, epochs=1, max_length=64), tmp_path / "a", seed=0)
        whole = update_policy(tiny_squad_model, rows, SFTConfig(lora=lora, epochs=1, max_length=64, global_batch_size=4), tmp_path / "b", seed=0)
    assert (per_device["steps"], per_device["grad_accum_steps"]) == (4, 1)  # a row per step on one process
    assert (whole["steps"], whole["grad_accum_steps"]) == (1, 4)  # the 4 rows in one step
    assert (tmp_path / "b" / "config.json").is_file()


# ----------------------------------------------------------------------------- the paper recipe


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_paper_training_recipe_runs_end_to_end_with_a_tiny_model(tiny_squad_model, data_root, tmp_path, monkeypatch):
    """recipes/squad_qwen2.5-7b_restem.yaml as written (reference profile: fresh passages from
    its two files, the authors' judge prompt, keep-regardless, a global SFT batch of 10), with
    a tiny model, a CPU, one passage per round and the local judge stub substituted."""
    monkeypatch.setenv("SEAL_TEST_JUDGE_KEY", "unused")
    run = tmp_path / "run"
    with JudgeServer(reference_grader) as server:
        overrides = [
            f"model.name_or_path={tiny_squad_model}", "model.dtype=float32", "model.device=cpu", "model.num_threads=1",
            f"data.root={data_root}", "data.n_train_passages=1",
            "self_edit.k=2", "self_edit.max_new_tokens=16", "self_edit.batch_size=1",
            "inner.epochs=1", "inner.eval_times=1", "inner.batch_adapters=2", "inner.max_length=64",
            "qa.max_new_tokens=8", f"qa.judge.base_url={server.url}", "qa.judge.model=test-judge", "qa.judge.api_key_env=SEAL_TEST_JUDGE_KEY",
            "rl.sft.bf16=false", "rl.sft.gradient_checkpointing=false", "rl.sft.deepspeed=null", "rl.sft.max_length=1024",
        ]  # fmt: skip
        with one_thread():
            res = CliRunner().invoke(app, ["train", str(PAPER), *overrides, "--run-dir", str(run)])
        assert res.exit_code == 0, res.output
        calls = list(server.calls)
    round2 = load_passages("squad/train_round2_50.json", root=data_root)[0]
    assert [r["passage_id"] for r in read_jsonl(run / "journal.jsonl") if r["kind"] == "baseline"][1] == round2.id
    # every request is the authors' prompt, a Topic line before the question
    assert calls and all(len(c.body["messages"]) == 1 and c.user_text().startswith("You are a grading assistant.") for c in calls)
    assert any(f"Question: Topic: {round2.title}\n{round2.questions[0].question}\nGold answer:" in c.user_text() for c in calls)
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["n_kept"] for m in metrics] == [1, 1]  # keep_regardless: the best of 2 whatever its reward
    assert [m["sft"]["grad_accum_steps"] for m in metrics] == [10, 10]  # global batch 10 on one process
    assert [m["n_ungraded"] for m in metrics] == [0, 0]
