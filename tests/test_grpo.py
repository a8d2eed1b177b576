"""``rl.algorithm: grpo`` (``seal/grpo.py``): TRL's GRPOTrainer with seal's inner loop as the reward.

* The reward function gives, record for record, what ReST-EM's ``evaluations_stage`` gives
  for the same self-edits (same adapters, answers, losses, rewards), and journals them.
* ``seal train recipes/squad_tiny_cpu.yaml rl.algorithm=grpo ...`` (in-process) runs 3 steps:
  journal, metrics per logging step (reward, KL, diagnostics), checkpoints, merged policy.
* SIGKILL (``python -m seal.cli train``) in the middle of a step, then ``--resume``: TRL
  continues from the last checkpoint, the journaled rewards are read back (not recomputed) and
  the run ends with the journal and metrics of the uninterrupted one.
* ``rl.algorithm=rloo`` runs a step of TRL's RLOOTrainer; GRPO refuses ``inner.learner:
  policy``; ``recipes/microworld_grpo_cpu.yaml`` spends ReST-EM's 1440 evaluations.
* ``distributed``: under ``accelerate launch`` with 2 CPU processes (gloo) the run journals
  the same evaluations as one process, each completion's text with its hash, in one
  ``journal.jsonl``; each reward is the one a single process computes for that completion;
  a killed 2-process run resumes to the uninterrupted 2-process run's journal and metrics.
  (The completions themselves differ from the 1-process run's: each process samples its
  share of the step with its own generator, see ``seal.grpo``.)

A tiny random model answers nothing, so every reward is 0 here (TRL's update is then a
no-op): these tests check the plumbing and the reward's equality with ReST-EM's, not learning.
Nothing in ``seal`` or TRL is mocked.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import time

import pytest
import yaml
from rich.console import Console
from rich.progress import Progress
from test_distributed import accelerate_cmd, kill_tree
from train_helpers import (
    RECIPE,
    REPO,
    journal,
    kill_when,
    one_thread,
    run_cli,
    seal_train_cmd,
    subprocess_env,
    tiny_overrides,
    tiny_recipe,
)
from transformers import TrainerState

from seal.bench.sources import train_run_sources
from seal.config import RecipeError, load_recipe
from seal.distributed import get_dist
from seal.grpo import (
    InnerLoopReward,
    check_processes,
    completion_hash,
    last_checkpoint,
    passage_order,
    trl_config,
)
from seal.rundir import RunDir, read_jsonl
from seal.scoring import EvaluationRecord
from seal.self_edits import SelfEdit
from seal.stages import Round, baselines_stage, evaluations_stage, load_learner, open_round
from seal.train import load_train_passages, train

pytestmark = pytest.mark.timeout(300)

GRPO = {
    "rl.algorithm": "grpo",
    "inner.learner": "base",
    "rl.grpo.num_generations": 2,
    "rl.grpo.prompts_per_step": 2,
    "rl.grpo.steps": 3,
    "rl.grpo.save_steps": 1,
    "rl.grpo.beta": 0.04,
    "rl.grpo.max_completion_length": 24,
    "rl.grpo.lora.rank": 4,
    "rl.grpo.lora.alpha": 8,
    "rl.grpo.lora.target_modules": "[q_proj,v_proj]",
}


def grpo_overrides(model, data_root, **extra) -> list[str]:
    return tiny_overrides(model, data_root, **{k.replace(".", "__"): v for k, v in GRPO.items()}, **extra)


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def test_grpo_needs_the_base_learner_and_the_microworld_recipe_matches_restem_budget(tmp_path):
    with pytest.raises(RecipeError, match="needs inner.learner: base"):
        load_recipe(REPO / "recipes" / "squad_tiny_cpu.yaml", ["rl.algorithm=grpo"])
    with pytest.raises(RecipeError, match="must divide"):
        load_recipe(REPO / "recipes" / "squad_tiny_cpu.yaml", ["rl.algorithm=grpo", "inner.learner=base", "rl.grpo.batch_size=3"])
    recipe = load_recipe(REPO / "recipes" / "microworld_grpo_cpu.yaml")
    g = recipe.rl.grpo
    assert recipe.rl.algorithm == "grpo" and recipe.inner.learner == "base"
    assert g.steps * g.prompts_per_step * g.num_generations * recipe.inner.eval_times == 3 * 96 * 5  # ReST-EM's 3 rounds
    assert len(passage_order(recipe, 96)) == 18 * 16 and sorted(passage_order(recipe, 96)) == sorted(list(range(96)) * 3)
    args = trl_config(recipe, tmp_path)  # what TRL would run: one generation of 16 x 5 per optimizer step
    assert (args.generation_batch_size, args.steps_per_generation, args.gradient_accumulation_steps) == (80, 4, 4)
    assert (args.num_generations, args.max_completion_length, args.temperature, args.max_steps) == (5, 128, 1.0, 18)


def test_reward_function_matches_restem_evaluations(tiny_squad_model, data_root, tmp_path):
    """Same self-edits, same (step = round) seeds: the GRPO reward function's records are the
    ReST-EM evaluations_stage's, and the rewards it hands TRL are their per-self-edit means."""
    recipe = tiny_recipe(tiny_squad_model, data_root, inner__batch_adapters=2, inner__eval_times=1, **{"rl.algorithm": "grpo", "inner.learner": "base"})
    passages = load_train_passages(recipe)
    texts = [[f"{p.title} is about {p.context.split('.')[0]}.", p.context.split(".")[1] + "."] for p in passages]
    with one_thread(), Progress(console=quiet()) as bar:
        runs = {}
        for name in ("restem", "grpo"):
            run = RunDir(tmp_path / name)
            run.path.mkdir()
            round_ = Round(recipe, run, 0, recipe.model.name_or_path, passages, get_dist(), quiet(), bar)
            open_round(round_)
            load_learner(round_)
            baselines = baselines_stage(round_)
            if name == "restem":
                records = evaluations_stage(round_, [[SelfEdit("prompt", t) for t in ts] for ts in texts], baselines)
            else:
                reward = InnerLoopReward(round_, baselines, {})
                rewards = reward(
                    prompts=["prompt"] * 4, completions=[t for ts in texts for t in ts], completion_ids=[[7, round_.tokenizer.eos_token_id]] * 2 + [[7]] * 2,
                    passage=[0, 0, 1, 1], trainer_state=TrainerState(global_step=0),
                )  # fmt: skip
                records = [EvaluationRecord.from_json(r) for r in read_jsonl(run.journal) if r["kind"] == "evaluation"]
            runs[name] = records

    def comparable(record: EvaluationRecord) -> dict:
        row = record.to_json()
        for key in ("round", "step", "completion", "completion_text", "seconds", "truncated"):
            row.pop(key, None)
        return row

    restem, grpo = runs["restem"], runs["grpo"]
    assert len(grpo) == len(restem) == 4 and all(r.error is None for r in grpo)
    assert [comparable(r) for r in grpo] == [comparable(r) for r in restem]
    assert all(r.epoch_losses and r.answers for r in grpo)  # a real inner loop ran
    assert rewards == [r.reward for r in restem]  # eval_times 1: the reward is the record's
    assert [r.key["completion"] for r in grpo] == [completion_hash(t.strip()) for ts in texts for t in ts]  # TRL text, stripped
    assert [r.key["completion_text"] for r in grpo] == [t.strip() for ts in texts for t in ts]  # the sample, readable
    assert [(r.key["step"], r.truncated) for r in grpo] == [(0, False)] * 2 + [(0, True)] * 2  # cut off: no EOS


@pytest.fixture(scope="module")
def grpo_run(tiny_squad_model, data_root, tmp_path_factory):
    """An uninterrupted 3-step GRPO run, in-process (one adapter per inner-loop chunk), and
    its console output."""
    run = tmp_path_factory.mktemp("grpo") / "run"
    console = quiet()
    with one_thread():
        train(load_recipe(RECIPE, grpo_overrides(tiny_squad_model, data_root)), run, console=console)
    return run, console.file.getvalue()


def test_seal_train_grpo_writes_journal_metrics_and_policy(grpo_run):
    run, output = grpo_run
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["rl"]["algorithm"] == "grpo" and config["rl"]["grpo"]["steps"] == 3
    rows = read_jsonl(run / "journal.jsonl")
    assert [r["passage"] for r in rows if r["kind"] == "baseline"] == [0, 1]
    evals = [r for r in rows if r["kind"] == "evaluation"]
    # 3 steps x 2 passages x 2 completions x 1 repetition, each journaled once
    assert sorted((r["step"], r["passage"], r["self_edit"]) for r in evals) == [(s, p, e) for s in range(3) for p in range(2) for e in range(2)]
    assert all(r["error"] is None and len(r["answers"]) == len(r["scores"]) > 0 and isinstance(r["truncated"], bool) for r in evals)
    m = read_jsonl(run / "metrics.jsonl")
    assert [row["step"] for row in m] == [1, 2, 3] and all(row["n_evaluations"] == 4 for row in m)
    for row in m:
        assert row["mean_reward"] == pytest.approx(sum(r["reward"] for r in evals if r["step"] == row["step"] - 1) / 4)
        assert row["kl"] is not None and row["reward_std"] is not None  # beta > 0: TRL reports the KL
        assert row["diagnostics"]["n_self_edits"] == 4 and "distinct_2" in row["diagnostics"] and "collapse_warning" in row["diagnostics"]
    assert "step 3/3: mean reward" in output and "self-edits: distinct-2" in output
    assert json.loads((run / "final.json").read_text()) == {"policy": "grpo/policy", "algorithm": "grpo", "steps": 3}
    assert (run / "grpo" / "policy" / "config.json").exists() and (run / "grpo" / "train.json").exists()
    assert (run / "grpo" / "checkpoint-3" / "trainer_state.json").exists()
    with pytest.raises(RecipeError, match="grpo/policy"):  # seal bench: list the final policy as a source
        train_run_sources(run)


def test_killed_grpo_run_resumes_without_recomputing_rewards(grpo_run, tiny_squad_model, data_root, tmp_path):
    reference, _ = grpo_run
    run = tmp_path / "run"
    overrides = grpo_overrides(tiny_squad_model, data_root)

    def mid_step_1() -> bool:  # checkpoint-1 written and step 1 partly journaled
        done = (run / "grpo" / "checkpoint-1" / "trainer_state.json").exists()
        return done and sum('"step": 1,' in line for line in (run / "journal.jsonl").read_text().splitlines()) >= 2

    kill_when(seal_train_cmd(overrides, run_dir=run), tmp_path / "killed.log", mid_step_1, "a step-1 evaluation after checkpoint-1")
    before = {line for line in (run / "journal.jsonl").read_text().splitlines() if '"kind": "evaluation"' in line}
    res = run_cli(seal_train_cmd(overrides, resume=run))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming from grpo/checkpoint-1" in res.stdout
    read_back = re.search(r"step 2/3: .*?\((\d+) read", res.stdout, re.DOTALL)
    assert read_back and int(read_back.group(1)) >= 2, res.stdout  # step 1's journaled rewards
    after = (run / "journal.jsonl").read_text().splitlines()
    assert before <= set(after)  # journaled records kept as they were (their timings too)
    assert len(after) == len(set(after)) == 2 + 12  # nothing scored twice
    assert journal(run) == journal(reference)  # the same completions, adapters and rewards
    strip = ("seconds", "trl", "n_computed")  # launch-specific: wall time, TRL's step_time, work done in this launch
    assert [{k: v for k, v in r.items() if k not in strip} for r in read_jsonl(run / "metrics.jsonl")] == [
        {k: v for k, v in r.items() if k not in strip} for r in read_jsonl(reference / "metrics.jsonl")
    ]


def test_seal_train_rloo_runs_through_trl(tiny_squad_model, data_root, tmp_path):
    """In-process (``seal.train.train``), one step of TRL's RLOOTrainer."""
    run = tmp_path / "run"
    recipe = load_recipe(RECIPE, grpo_overrides(tiny_squad_model, data_root) + ["rl.algorithm=rloo", "rl.grpo.steps=1", "inner.batch_adapters=4"])
    with one_thread():
        train(recipe, run, console=quiet())
    evals = [r for r in read_jsonl(run / "journal.jsonl") if r["kind"] == "evaluation"]
    assert sorted((r["step"], r["passage"], r["self_edit"]) for r in evals) == [(0, p, e) for p in range(2) for e in range(2)]
    (m,) = read_jsonl(run / "metrics.jsonl")
    assert m["step"] == 1 and m["kl"] is not None and m["diagnostics"]["n_self_edits"] == 4
    assert json.loads((run / "final.json").read_text())["algorithm"] == "rloo"


def test_resume_takes_the_last_whole_checkpoint(tmp_path):
    for n, state in ((1, '{"global_step": 1}'), (2, '{"global_st'), (10, None)):  # whole, cut off mid-write, not yet written
        (tmp_path / f"checkpoint-{n}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{n}" / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    assert last_checkpoint(tmp_path / "none") is None


def test_a_step_is_shared_evenly_by_the_processes(tmp_path):
    """Each process takes ``batch_size``-sized shares of a step's completions: gradient
    accumulation shrinks with the number of processes, and a step they cannot share is refused."""
    recipe = load_recipe(REPO / "recipes" / "microworld_grpo_cpu.yaml")  # 16 x 5 completions a step, batches of 20
    assert trl_config(recipe, tmp_path).gradient_accumulation_steps == 4
    assert trl_config(recipe, tmp_path, world_size=2).gradient_accumulation_steps == 2  # 2 x 2 x 20: still one step of 80
    check_processes(recipe, 4)
    with pytest.raises(RecipeError, match=r"multiple of rl.grpo.batch_size x processes \(20 x 3\)"):
        check_processes(recipe, 3)


def _launch_fields(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("seconds", "trl", "n_computed")}


@pytest.fixture(scope="module")
def grpo_two_processes(tiny_squad_model, data_root, tmp_path_factory):
    """The 3-step GRPO run of ``grpo_run`` under ``accelerate launch`` with 2 CPU processes."""
    run = tmp_path_factory.mktemp("grpo2") / "run"
    res = run_cli(accelerate_cmd(2, grpo_overrides(tiny_squad_model, data_root), run_dir=run), timeout=280)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return run, res.stdout


@pytest.mark.distributed
def test_grpo_on_two_processes_scores_as_one(grpo_run, grpo_two_processes, tiny_squad_model, data_root, tmp_path):
    run, output = grpo_two_processes
    one, _ = grpo_run
    assert "2 processes (gloo)" in output and "step 3/3: mean reward" in output
    assert [x["world_size"] for x in json.loads((run / "run.json").read_text())["launches"]] == [2]
    assert not list(run.glob("journal.rank*.jsonl"))  # one journal.jsonl
    rows, reference = journal(run), journal(one)
    assert [r for r in rows if r["kind"] == "baseline"] == [r for r in reference if r["kind"] == "baseline"]
    evals = [r for r in rows if r["kind"] == "evaluation"]

    def ident(r):
        return (r["step"], r["passage"], r["self_edit"], r["repetition"])

    # the 1-process run's evaluations, each once, in identity order, after the baselines
    assert rows[:2] == [r for r in rows if r["kind"] == "baseline"]
    assert [ident(r) for r in evals] == sorted(ident(r) for r in reference if r["kind"] == "evaluation")
    assert all(r["completion"] == completion_hash(r["completion_text"]) and r["error"] is None for r in evals)
    assert all(r["completion"] == completion_hash(r["completion_text"]) for r in reference if r["kind"] == "evaluation")

    # Given its completion, each record is what one process computes for it (same adapter
    # seed, answers, reward): the journaled texts scored again here, in-process.
    recipe = load_recipe(RECIPE, grpo_overrides(tiny_squad_model, data_root))
    rescored = RunDir(tmp_path / "rescored")
    rescored.path.mkdir()
    with one_thread(), Progress(console=quiet()) as bar:
        round_ = Round(recipe, rescored, 0, recipe.model.name_or_path, load_train_passages(recipe), get_dist(), quiet(), bar)
        open_round(round_)
        load_learner(round_)
        reward = InnerLoopReward(round_, baselines_stage(round_), {})
        eos = round_.tokenizer.eos_token_id
        for step in range(3):
            mine = [r for r in evals if r["step"] == step]
            rewards = reward(
                prompts=["prompt"] * len(mine), completions=[r["completion_text"] for r in mine], passage=[r["passage"] for r in mine],
                completion_ids=[[7] if r["truncated"] else [7, eos] for r in mine], trainer_state=TrainerState(global_step=step),
            )  # fmt: skip
            assert rewards == [r["reward"] for r in mine]
    assert journal(rescored.path) == rows

    m = read_jsonl(run / "metrics.jsonl")
    assert [row["step"] for row in m] == [1, 2, 3] and [sorted(row) for row in m] == [sorted(row) for row in read_jsonl(one / "metrics.jsonl")]
    for row in m:  # one line per logging step, the whole step's completions (both processes')
        assert row["n_evaluations"] == row["n_completions"] == row["diagnostics"]["n_self_edits"] == 4
        assert row["mean_reward"] == pytest.approx(sum(r["reward"] for r in evals if r["step"] == row["step"] - 1) / 4)
    assert json.loads((run / "final.json").read_text()) == {"policy": "grpo/policy", "algorithm": "grpo", "steps": 3}
    assert (run / "grpo" / "policy" / "config.json").exists() and (run / "grpo" / "train.json").exists()


@pytest.mark.distributed
def test_killed_grpo_two_processes_resume_exactly(grpo_two_processes, tiny_squad_model, data_root, tmp_path):
    """SIGKILL the whole 2-process job once step 1 is partly journaled after checkpoint-1, then
    ``--resume`` with 2 processes: TRL restores each process's RNG, the journaled rewards are
    read back, and the run ends with the uninterrupted 2-process run's journal and metrics."""
    reference, _ = grpo_two_processes
    run = tmp_path / "run"
    overrides = grpo_overrides(tiny_squad_model, data_root)

    def mid_step_1() -> bool:
        files = [run / "journal.jsonl", *run.glob("journal.rank*.jsonl")]
        journaled = sum('"step": 1,' in line for f in files if f.exists() for line in f.read_text().splitlines())
        return (run / "grpo" / "checkpoint-1" / "trainer_state.json").exists() and journaled >= 1

    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(accelerate_cmd(2, overrides, run_dir=run), cwd=REPO, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        try:
            while not mid_step_1():
                if proc.poll() is not None:
                    pytest.fail(f"the job exited ({proc.returncode}) before it could be killed:\n{log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail("no step-1 evaluation journaled in time")
                time.sleep(0.01)
            kill_tree(proc.pid)  # the launcher and both ranks at once
        finally:
            if proc.poll() is None:
                kill_tree(proc.pid)
            proc.wait()
    assert not (run / "grpo" / "train.json").exists(), "killed too late"
    res = run_cli(accelerate_cmd(2, overrides, resume=run), timeout=280)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming from grpo/checkpoint-" in res.stdout
    assert journal(run) == journal(reference)  # the same completions, adapters and rewards
    assert [_launch_fields(r) for r in read_jsonl(run / "metrics.jsonl")] == [_launch_fields(r) for r in read_jsonl(reference / "metrics.jsonl")]
    assert not list(run.glob("journal.rank*.jsonl"))


def test_grpo_trains_the_policy_in_the_recipe_dtype_and_attention(tiny_squad_model, data_root, tmp_path, monkeypatch):
    """GRPO loads its policy through ``seal.models.load_policy``: with ``model.dtype: bfloat16``
    and ``model.attn_implementation: eager`` the model TRL trains is bf16 (its LoRA fp32) with
    eager attention, seen by a callback at the start of training (step_logger's callback,
    wrapped: nothing is replaced), and the merged policy is bf16. Before issue 21: float32, sdpa."""
    import torch
    from transformers import AutoConfig

    import seal.grpo

    seen = {}
    make_logger = seal.grpo.step_logger

    def recording_logger(*args, **kwargs):
        callback = make_logger(*args, **kwargs)
        begin = callback.on_train_begin

        def on_train_begin(args, state, control, model=None, **rest):
            seen["base"] = {p.dtype for n, p in model.named_parameters() if "lora_" not in n}
            seen["lora"] = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
            seen["attn"] = model.config._attn_implementation
            return begin(args, state, control, model=model, **rest)

        callback.on_train_begin = on_train_begin
        return callback

    monkeypatch.setattr(seal.grpo, "step_logger", recording_logger)
    run = tmp_path / "run"
    overrides = grpo_overrides(tiny_squad_model, data_root) + ["rl.grpo.steps=1", "model.dtype=bfloat16", "model.attn_implementation=eager"]
    with one_thread():
        train(load_recipe(RECIPE, overrides), run, console=quiet())
    assert seen == {"base": {torch.bfloat16}, "lora": {torch.float32}, "attn": "eager"}
    assert AutoConfig.from_pretrained(run / "grpo" / "policy").dtype == torch.bfloat16


ARC_GRPO = [
    "rl.algorithm=grpo", "inner.learner=base", "rl.grpo.num_generations=2", "rl.grpo.prompts_per_step=2", "rl.grpo.steps=1",
    "rl.grpo.batch_size=2", "rl.grpo.max_completion_length=48", "rl.grpo.lora.rank=4", "rl.grpo.lora.alpha=8",
    "rl.grpo.lora.target_modules=[q_proj,v_proj]", "rl.grpo.save_steps=1",
]  # fmt: skip


def test_grpo_on_arc_prompts_with_the_hint_and_scores_configurations(tmp_path):
    """GRPO on task arc goes through the task as ReST-EM does: the prompts carry the
    configuration hint (``Task.self_edit_hint``), and each completion is read as a
    configuration (``Task.evaluation``: its families and settings recorded, test-time-training
    texts built from the task's grids) or fails as an invalid one, never scored as plain text."""
    from seal.grpo import prompt_dataset
    from seal.models import load_tokenizer
    from seal.prepare import ensure_model
    from seal.tasks.registry import make_task

    recipe = load_recipe(REPO / "recipes" / "arc_tiny_cpu.yaml", ARC_GRPO)
    ensure_model(recipe, log=lambda line: None)  # the warmed-up tiny policy (built once, cached)
    task = make_task(recipe)
    passages = load_train_passages(recipe)
    prompts = prompt_dataset(task, passages, load_tokenizer(recipe.model.name_or_path))
    assert task.self_edit_hint() and all(task.self_edit_hint().strip() in row["prompt"] for row in prompts)
    run = tmp_path / "run"
    with one_thread():
        train(recipe, run, console=quiet())
    evals = [r for r in read_jsonl(run / "journal.jsonl") if r["kind"] == "evaluation"]
    assert sorted((r["step"], r["passage"], r["self_edit"]) for r in evals) == [(0, p, e) for p in range(2) for e in range(2)]
    for r in evals:
        if r["error"] is None:  # a configuration: its families recorded, trained on the task's texts
            assert set(r["hparams"]) >= {"lr", "epochs", "loss_on", "families"} and r["n_train_texts"] > 0
        else:  # refused as a configuration (not parsed as text lines)
            assert "hparams" not in r and r["n_train_texts"] == 0 and r["answers"] == []
    assert any(r["error"] is None for r in evals)  # the warmed-up policy writes configurations that parse


def test_grpo_refuses_resampling_arc_configurations():
    """``arc.invalid: resample`` redraws before scoring, which TRL's sampling cannot: refused at load."""
    with pytest.raises(RecipeError, match="arc.invalid 'resample'"):
        load_recipe(REPO / "recipes" / "arc_tiny_cpu.yaml", [*ARC_GRPO, "arc.invalid=resample"])
