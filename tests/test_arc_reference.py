"""Few-shot ARC as the authors ran it (issue 18, items 2-4): their task sets, configuration
prompt, resampling of unparseable configurations, TTT text format, cosine schedule with
warm-up, missing-key semantics and step guard, and the paper recipes end to end on a CPU
with a tiny model substituted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_inner_loop import assert_same_weights, build_model_dir, make_cfg, settings_jobs
from train_helpers import one_thread

from seal.arc.config import REFERENCE_ANSWER_MARKER, ArcSection
from seal.arc.grids import grid_to_text, grids_match, parse_grid, read_numpy_answer_grid
from seal.arc.self_edit import (
    parse_configuration,
    read_configuration,
    resample_invalid,
    self_edit_hint,
    ttt_texts,
)
from seal.arc.tasks import load_arc_tasks, reference_query_text, task_passage, training_text
from seal.config import HparamsConfig, InnerLoopConfig, RecipeError, SelfEditConfig, load_recipe
from seal.hparams import AdapterSettings
from seal.inner_loop import _learning_rates, train_bank
from seal.multi_lora import adapter_bank
from seal.prompts import PromptError, self_edit_prompt
from seal.tasks.arc import arc_evaluation

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TRAIN = "arc/arc-agi_training_challenges_filtered_1B_training_set.json"
EVAL = "arc/arc-agi_evaluation_challenges_filtered_1B_eval_set.json"
SPACE = HparamsConfig(enabled=True, lr={"min": 1e-5, "max": 1e-2}, epochs={"min": 1, "max": 5}, loss_on=["all", "answer"])
NESTED = (
    '{"data_generation": {"use_basic_augmentations": true, "use_size_augmentations": false, '
    '"use_chain_augmentations": false, "use_repeat_augmentations": true}, '
    '"training": {"strategy": "train_using_output_tokens", "learning_rate": 0.001, "num_train_epochs": 2}}'
)


# ----------------------------------------------------------------------------- 2. task sets


def reference_picks(challenges: dict, n_tasks: int, num_examples: int) -> list[str]:
    """What the reference's two scripts keep, worked from their code on the real file: items
    are (task, test input) in file order (``read_tasks_from_single_file``); self-edit.py gives
    self-edits to items ``0 .. n_tasks-1`` not ending in ``-1`` (self-edit.py:442-451);
    eval-self-edits.py shuffles all items with ``np.random.seed(0)`` and keeps
    ``num_examples`` (eval-self-edits.py:146-150); a kept item without adapters is invalid.
    Returns the task ids that are scored with adapters, sorted."""
    items = [f"{task}-{i}" for task, obj in challenges.items() for i in range(len(obj["test"]))]
    edited = {name.removesuffix("-0") for name in items[:n_tasks] if not name.endswith("-1")}
    np.random.seed(0)
    shuffled = list(items)
    np.random.shuffle(shuffled)
    return sorted({name.split("-")[0] for name in shuffled[:num_examples] if name.split("-")[0] in edited})


def test_paper_task_lists_follow_from_the_reference_code(data_root):
    train = json.loads((data_root / TRAIN).read_text())
    evaluation = json.loads((data_root / EVAL).read_text())
    rewarded = reference_picks(train, n_tasks=12, num_examples=11)  # README steps 1-2
    scored = reference_picks(evaluation, n_tasks=10, num_examples=9)  # README steps 4-5
    assert len(rewarded) == 10 and {"5bd6f4ac", "8e1813be"}.isdisjoint(rewarded)
    # ce8d95cc is kept by the shuffle but has no adapter: an always-failing 8th task.
    assert len(scored) == 7 and "ce8d95cc" not in scored
    scored_with_placeholder = sorted([*scored, "ce8d95cc"])
    for name in ("arc_llama3.2-1b_restem.yaml", "bench_arc_llama3.2-1b.yaml"):
        recipe = load_recipe(RECIPES / name, [f"data.root={data_root}"])
        assert recipe.arc.eval_task_ids == scored_with_placeholder
    assert load_recipe(RECIPES / "arc_llama3.2-1b_restem.yaml").arc.task_ids == rewarded


# ----------------------------------------------------------------------------- 3. prompt and resampling


def test_reference_configuration_prompt(data_root):
    task = load_arc_tasks(TRAIN, root=data_root, task_ids=["5582e5ca"])[0]
    passage = task_passage(task, "reference")
    prompt = self_edit_prompt("arc-config-reference", passage.title, passage.context)
    first = task.train[0]
    demo = f"Input:\n{grid_to_text(first.input)}\n\nOutput:\n{grid_to_text(first.output)}\n\n"
    assert prompt.startswith("<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant")
    assert f"<|start_header_id|>user<|end_header_id|>\n\n{demo}" in prompt and '"num_train_epochs": ...' in prompt
    assert prompt.endswith("}\n<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    recipe = load_recipe(RECIPES / "arc_llama3.2-1b_restem.yaml")
    assert self_edit_hint(recipe.self_edit, recipe.arc) == ""  # the prompt carries its own instructions
    with pytest.raises(PromptError, match="whole chat text"):
        self_edit_prompt("arc-config-reference", passage.title, passage.context, chat=True)
    config = parse_configuration(NESTED, recipe.self_edit.hparams, recipe.arc)  # the skeleton, filled in
    assert config.families == ("basic", "repeat") and config.settings == AdapterSettings(0.001, 2, "answer")


def test_resampling_fills_invalid_slots_in_order_and_is_bounded():
    draws_seen = []
    fresh = {1: [["bad", "ok-a"], ["bad", "bad"]], 2: [["ok-b", "ok-c"], ["bad", "bad"]]}

    def draw(tasks, attempt):
        draws_seen.append((tasks, attempt))
        return [fresh[attempt][t] for t in tasks]

    rows = [["bad0", "ok0", "bad1"], ["bad2", "ok1", "ok2"]]
    out, counts = resample_invalid(rows, draw, lambda t: t.startswith("ok"), rounds=2)
    assert draws_seen == [([0, 1], 1), ([0, 1], 2)]
    assert out == [["ok-a", "ok0", "ok-b"], ["bad2", "ok1", "ok2"]] and counts == [[2, 1, 3], [3, 1, 1]]
    out, counts = resample_invalid([["ok"]], draw, lambda t: t.startswith("ok"), rounds=2)
    assert counts == [[1]] and len(draws_seen) == 2  # nothing invalid: no draw at all


# ----------------------------------------------------------------------------- 4. text, schedule, missing keys


def test_reference_text_format_on_real_tasks(data_root, tiny_squad_model):
    from seal.inner_loop import tokenize_with_loss
    from seal.models import load_tokenizer

    task = load_arc_tasks(EVAL, root=data_root, task_ids=["66e6c45b"])[0]
    text = training_text(task.train, task.test[0], "reference")
    query = reference_query_text(task.train, task.test[0].input)
    assert text.startswith(query) and query.endswith(REFERENCE_ANSWER_MARKER) and text.endswith("]]#")
    demo = task.train[0]
    assert f"{grid_to_text(demo.input, 'numpy')} -> {grid_to_text(demo.output, 'numpy')}#\n" in query
    assert f"\n{grid_to_text(task.test[0].input, 'numpy')} -><|eot_id|>" in query  # the user turn, trimmed
    gold = task_passage(task, "reference").questions[0].answer
    assert parse_grid(gold) == task.test[0].output and read_numpy_answer_grid(gold + " more") == task.test[0].output
    assert grids_match(gold, gold) == 1.0 and grids_match(grid_to_text(task.test[0].output), gold) == 0.0
    arc = ArcSection(text_format="reference", max_train_texts=6)
    texts = ttt_texts(task, ("basic",), arc, seed=3)
    assert len(texts) == 6 and all(t.count(REFERENCE_ANSWER_MARKER) == 1 for t in texts)
    tok = load_tokenizer(tiny_squad_model)
    rows, starts = tokenize_with_loss(tok, texts, 4096, "answer", REFERENCE_ANSWER_MARKER)
    for t, row, start in zip(texts, rows, starts, strict=True):  # loss on the output grid and '#' only
        assert tok.decode(row[start:], skip_special_tokens=True).replace(" ", "") == t.split(REFERENCE_ANSWER_MARKER)[1].replace(" ", "")
    with pytest.raises(RecipeError, match="answer_marker must be"):
        load_recipe(RECIPES / "arc_llama3.2-1b_restem.yaml", ["inner.answer_marker='Test output:'"])


def test_cosine_schedule_with_warmup_is_hfs():
    from transformers import get_cosine_schedule_with_warmup

    cfg = InnerLoopConfig(lr_scheduler="cosine", warmup_steps=11)
    for total in (5, 11, 12, 40):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
        hf = get_cosine_schedule_with_warmup(opt, 11, total)
        for t in range(total):
            ours = _learning_rates(cfg, torch.tensor([2e-3], dtype=torch.float64), torch.tensor([float(t)], dtype=torch.float64), torch.tensor([float(total)], dtype=torch.float64))
            assert math.isclose(float(ours[0]), opt.param_groups[0]["lr"], rel_tol=1e-12, abs_tol=1e-18), (total, t)
            opt.step()
            hf.step()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from seal.models import load_model

    torch.manual_seed(0)
    return load_model(build_model_dir(tmp_path_factory), device="cpu")


def test_cosine_bank_equals_each_adapter_trained_alone(loaded):
    """Adapters with different lr, epochs (so different step counts) and loss masks in one bank,
    cosine schedule after 3 warm-up steps, each on its own steps: each ends where it ends alone.
    An adapter with 0 epochs (arc.missing_keys: reference) stays untrained."""
    model, tok = loaded
    cfg = make_cfg(batch_size=1, lr_scheduler="cosine", warmup_steps=3)
    jobs, settings = settings_jobs()
    jobs, settings = [*jobs, jobs[0]], [*settings, AdapterSettings(lr=3e-3, epochs=0)]
    with one_thread():
        with adapter_bank(model, cfg.lora, len(jobs)) as bank:
            mixed = train_bank(model, tok, bank, [j.texts for j in jobs], [j.seed for j in jobs], cfg, settings=settings)
            mixed_weights = [bank.weights(i) for i in range(len(jobs))]
        for i, (job, s) in enumerate(zip(jobs, settings, strict=True)):
            with adapter_bank(model, cfg.lora, 1) as bank:
                (alone,) = train_bank(model, tok, bank, [job.texts], [job.seed], cfg, settings=[s])
                assert_same_weights(mixed_weights[i], bank.weights(0))
            assert mixed[i].epoch_losses == pytest.approx(alone.epoch_losses, rel=1e-5)
        with adapter_bank(model, cfg.lora, 1) as bank:  # the schedule matters: linear ends elsewhere
            train_bank(model, tok, bank, [jobs[2].texts], [jobs[2].seed], make_cfg(batch_size=1), settings=[settings[2]])
            linear = bank.weights(0)
    assert mixed[-1].epoch_losses == [] and all(float(b.abs().max()) == 0.0 for _, b in mixed_weights[-1].values())
    name = next(iter(linear))
    assert max(float((x - y).abs().max()) for x, y in zip(linear[name], mixed_weights[2][name], strict=True)) > 1e-4


@pytest.mark.parametrize(
    ("mode", "families", "epochs", "error"),
    [("inner-defaults", ("basic",), None, None), ("reference", (), 0, None), ("fail", None, None, "missing key 'size'")],
)
def test_missing_keys(mode, families, epochs, error):
    arc = ArcSection(missing_keys=mode)
    text = '{"basic": true, "lr": 0.001, "loss_on": "all"}'  # no size/chain/repeat, no epochs
    config, reason = read_configuration(text, SPACE, arc)
    if error:
        assert config is None and error in reason
        return
    assert config.families == families and config.settings.epochs == epochs
    assert (config.untrained is None) == (mode == "inner-defaults")
    full = '{"basic": true, "size": false, "chain": false, "repeat": false, "lr": 0.001, "epochs": 2, "loss_on": "all"}'
    assert parse_configuration(full, SPACE, arc).settings.epochs == 2  # nothing missing: trains as set


def test_missing_keys_and_step_guard_in_an_evaluation(data_root):
    passage = task_passage(load_arc_tasks(TRAIN, root=data_root, task_ids=["5582e5ca"])[0])
    self_edit = SelfEditConfig(template="arc-config", hparams=SPACE)
    inner = InnerLoopConfig(batch_size=2)
    key = {"passage": 0, "self_edit": 0, "repetition": 0}
    partial = '{"basic": true, "lr": 0.001}'
    ev = arc_evaluation(key, passage, partial, self_edit, inner, 1, ArcSection(missing_keys="reference", max_train_texts=20))
    assert ev.invalid is None and ev.hparams["epochs"] == 0 and ev.hparams["untrained"].startswith("missing key")
    full = '{"basic": true, "size": false, "chain": false, "repeat": false, "lr": 0.001, "epochs": 5, "loss_on": "all"}'
    guarded = ArcSection(missing_keys="reference", max_train_texts=20, max_steps=49)  # 5 x 20 // 2 = 50 steps
    ev = arc_evaluation(key, passage, full, self_edit, inner, 1, guarded)
    assert len(ev.texts) == 20 and ev.hparams["epochs"] == 0 and "> 49 steps" in ev.hparams["untrained"]
    ev = arc_evaluation(key, passage, full, self_edit, inner, 1, guarded.model_copy(update={"max_steps": 50}))
    assert ev.hparams["epochs"] == 5 and "untrained" not in ev.hparams


# ----------------------------------------------------------------------------- 7. the paper recipes on a CPU


def paper_overrides(model: Path, data_root: Path) -> list[str]:
    """A paper recipe shrunk to a tiny local model on one real 3x3 task: float32 on the CPU,
    rank-8 adapters, short texts and answers; every reference-profile key left as set."""
    return [
        f"model.name_or_path={model}", "model.dtype=float32", "model.device=cpu", "model.attn_implementation=eager",
        f"data.root={data_root}", "arc.max_train_texts=3", "arc.resample_rounds=1", "self_edit.max_new_tokens=24",
        "self_edit.batch_size=1", "inner.lora={rank: 8, alpha: 16, dropout: 0.0, target_modules: [q_proj, v_proj]}",
        "inner.max_length=640", "inner.batch_adapters=4", "qa.max_new_tokens=8",
    ]  # fmt: skip


@pytest.mark.timeout(180)
def test_paper_recipes_run_end_to_end_on_a_cpu_with_a_tiny_model(tiny_squad_model, data_root, tmp_path, monkeypatch):
    """``arc_llama3.2-1b_restem.yaml`` runs one ReST-EM round and ``bench_arc_llama3.2-1b.yaml``
    one bench, with a tiny model substituted: the reference prompt, resampling (the random
    tiny policy writes nothing that parses: every slot is redrawn once and still fails, and
    the round counts it), the reference text and the cosine schedule train adapters for written
    configurations, a key left out trains 0 epochs, and the policy update runs."""
    import seal.stages
    from seal.bench.run import bench
    from seal.rundir import read_jsonl
    from seal.train import train

    generate = seal.stages.generate_self_edits
    written = [NESTED, '{"data_generation": {"use_basic_augmentations": true}, "training": {"learning_rate": 0.001}}']

    def policy_then_written(model, tokenizer, passages, template, k, *args, **kwargs):
        drawn = generate(model, tokenizer, passages, template, k, *args, **kwargs)  # the tiny policy's own
        if kwargs["seed"] == policy_then_written.first_seed:
            return drawn
        return [[type(e)(e.prompt, written[j % 2]) for j, e in enumerate(row)] for row in drawn]

    train_recipe = load_recipe(
        RECIPES / "arc_llama3.2-1b_restem.yaml",
        [*paper_overrides(tiny_squad_model, data_root), "arc.task_ids=[5582e5ca]", "self_edit.k=2", "rl.sft.bf16=false",
         "rl.sft.epochs=1", "rl.sft.batch_size=1", "rl.sft.max_length=1024", "rl.k_best=2", "rl.keep_regardless=true",
         "rl.sft.lora={rank: 8, alpha: 16, dropout: 0.0, target_modules: [q_proj, v_proj]}"],
    )  # fmt: skip
    from seal.seeding import derive_seed

    policy_then_written.first_seed = derive_seed(train_recipe.seed, "round", 0)
    monkeypatch.setattr(seal.stages, "generate_self_edits", policy_then_written)
    with one_thread():
        run = train(train_recipe, tmp_path / "run")
    sampled = json.loads((run / "round_0" / "self_edits.json").read_text())[0]
    evals = [r for r in read_jsonl(run / "journal.jsonl") if r["kind"] == "evaluation"]
    metrics = json.loads((run / "round_0" / "metrics.json").read_text())
    assert sampled["completions"] == written and sampled["draws"] == [2, 2]  # the policy's own did not parse
    assert metrics["arc"] == {"n_resampled": 2, "n_still_invalid": 0, "n_untrained": 1} and metrics["n_failed"] == 0
    full, partial = sorted(evals, key=lambda r: r["self_edit"])
    assert full["hparams"]["families"] == ["basic", "repeat"] and len(full["epoch_losses"]) == 2 and full["n_train_texts"] == 3
    assert partial["hparams"]["epochs"] == 0 and partial["epoch_losses"] == [] and "missing key" in partial["hparams"]["untrained"]
    assert metrics["sft"]["rows"] == 2  # keep_regardless: the policy update ran

    bench_recipe = load_recipe(
        RECIPES / "bench_arc_llama3.2-1b.yaml",
        [*paper_overrides(tiny_squad_model, data_root), "arc.eval_task_ids=[66e6c45b]",
         f'bench.sources=[{{source: none, label: ICL}}, {{source: "policy:{tiny_squad_model}", label: policy}}, {{source: {json.dumps("text:" + NESTED)}, label: oracle}}]',
         "bench.protocols={single: {n_self_edits: 1, repetitions: 1}}", "bench.bootstrap_samples=100"],
    )  # fmt: skip
    with one_thread():
        out = bench(bench_recipe, tmp_path / "bench")
    results = json.loads((out / "results.json").read_text())
    cells = {c["source"]: c for c in next(iter(results["protocols"]["single"]["tables"].values()))["cells"]}
    assert set(cells) == {"ICL", "policy", "oracle"} and cells["oracle"]["n_failed"] == 0
    assert cells["policy"]["n_failed"] == 1  # the random tiny policy's configuration, redrawn once, still fails
