"""seal bench as the reference ran its SEAL rows and its continual experiment: a source learned
by its own policy (``learner``), per-source inner settings, and continual sequences drawn at
random with self-edits written by the model being updated. Real tiny models, no mocks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from seal.config import load_recipe
from seal.data import load_passages
from seal.rundir import read_jsonl


@pytest.fixture(scope="module")
def policy_dir(tiny_squad_model, tmp_path_factory):
    """A 'round 1 policy': the tiny student (whose greedy answers are empty: it predicts newlines)
    with the output row of ' the' set to twice the newline's, so it answers 'the the ...'."""
    from seal.models import load_model

    model, tok = load_model(tiny_squad_model, "float32", "cpu")
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head[tok.encode(" the", add_special_tokens=False)[-1]] = 2 * head[tok.convert_tokens_to_ids("Ċ")]
    out = tmp_path_factory.mktemp("policy") / "round_1"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _recipe(tmp_path, model_dir, data_root, bench: dict, n_eval=2, inner=None) -> object:
    raw = {
        "seed": 0,
        "model": {"name_or_path": str(model_dir), "device": "cpu", "num_threads": 1},
        "data": {"root": str(data_root), "eval_file": "squad/val_200.json", "n_eval_passages": n_eval},
        "self_edit": {"max_new_tokens": 8, "split_newlines": True},
        "inner": {"lora": {"rank": 4, "alpha": 8}, "epochs": 1, "max_length": 64, "eval_times": 1, "batch_adapters": 8, **(inner or {})},
        "qa": {"max_new_tokens": 4, "grader": "contains"},
        "bench": {"bootstrap_samples": 200, **bench},
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_recipe(path)


def test_a_source_learned_by_its_own_policy(tmp_path, tiny_squad_model, policy_dir, data_root):
    """learner: self -> the policy checkpoint (not the student) learns the row, answers, and is
    its baseline; learner: <path> does the same for any source; per-source inner overrides apply
    to that source only."""
    from seal.bench.protocols import ProtocolContext, protocol_recipe, run_single
    from seal.bench.run import bench, learner_key
    from seal.models import load_model
    from seal.scoring import baselines

    recipe = _recipe(tmp_path, tiny_squad_model, data_root, {
        "sources": [
            "none",
            {"source": "passage", "label": "passage, 2 epochs", "inner": {"single": {"epochs": 2}}},
            {"source": f"policy:{policy_dir}", "label": "round 1, own learner", "learner": "self"},
            {"source": "none", "label": "round 1 un-adapted", "learner": str(policy_dir)},
            {"source": f"policy:{policy_dir}", "label": "round 1, base learner"},
        ],
        "protocols": {"single": {"n_passages": 2}},
    })  # fmt: skip
    out = bench(recipe, tmp_path / "out")
    journal = read_jsonl(out / "journal.jsonl")
    student = str(tiny_squad_model).rstrip("/").rsplit("/", 1)[-1]
    key = learner_key(str(policy_dir))
    base_rows = {(r["student"], r["passage"]): r for r in journal if r["kind"] == "baseline"}
    assert {s for s, _ in base_rows} == {student, key}
    # the policy's un-adapted answers are its own, not the student's
    assert [base_rows[(key, i)]["answers"] for i in range(2)] != [base_rows[(student, i)]["answers"] for i in range(2)]
    passages = load_passages("squad/val_200.json", 2, root=data_root)
    policy = load_model(policy_dir, "float32", "cpu")
    assert [base_rows[(key, i)]["answers"] for i in range(2)] == [b["answers"] for b in baselines(*policy, passages, recipe.qa)]

    # the paired row's adapters were trained on the policy: its answers are run_single's on the policy
    rows = {label: [r for r in journal if r.get("source_label") == label] for label in ("round 1, own learner", "round 1, base learner")}
    assert {r["student"] for r in rows["round 1, own learner"]} == {key}
    assert {r["student"] for r in rows["round 1, base learner"]} == {student}
    edits = [row["completions"] for row in json.loads((out / "self_edits/round_1__own_learner.json").read_text())]
    pr = protocol_recipe(recipe, "single", recipe.bench.protocols.single)
    on_policy = run_single(ProtocolContext(*policy, pr, seed=0), f"policy:{policy_dir}", passages, edits, baselines(*policy, passages, pr.qa))
    journaled = [r["scores"] for r in sorted(rows["round 1, own learner"], key=lambda r: r["passage"])]
    assert journaled == [v for v in on_policy.verdicts]
    assert [r["answers"] for r in rows["round 1, own learner"]] != [r["answers"] for r in rows["round 1, base learner"]]

    results = json.loads((out / "results.json").read_text())
    cells = {c["source"]: c for c in results["protocols"]["single"]["tables"][student]["cells"]}
    assert cells["round 1, own learner"]["learner"] == str(policy_dir) and cells["round 1, base learner"]["learner"] is None
    assert cells["round 1, own learner"]["own_data"] and not cells["round 1, base learner"]["own_data"]  # the policy learns what it wrote
    # 'none' learned by the policy is the policy's baseline: its gain over its own baseline is 0
    assert cells["round 1 un-adapted"]["gain"]["value"] == 0.0
    assert results["setup"]["learners"] == {"round 1, own learner": str(policy_dir), "round 1 un-adapted": str(policy_dir)}
    assert "learned by" in (out / "report.md").read_text()
    # per-source inner override: 2 epochs for that source only
    assert {len(r["epoch_losses"]) for r in journal if r.get("source_label") == "passage, 2 epochs"} == {2}
    assert {len(r["epoch_losses"]) for r in rows["round 1, base learner"]} == {1}


def test_learner_self_needs_a_policy_and_train_run_rows_take_the_setting(tmp_path, tiny_squad_model, policy_dir, data_root):
    from seal.bench.config import BenchConfig
    from seal.bench.sources import train_run_sources

    with pytest.raises(ValueError, match="learner 'self' needs a policy: source"):
        BenchConfig.model_validate({"sources": [{"source": "file:x.json", "learner": "self"}]})
    with pytest.raises(ValueError, match="epoch"):
        BenchConfig.model_validate({"sources": [{"source": "passage", "inner": {"multi": {"epoch": 2}}}]})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_squad_model)}}))
    (run / "metrics.jsonl").write_text(json.dumps({"round": 0, "next_policy": str(policy_dir)}) + "\n")
    specs, _ = train_run_sources(run, "self")
    assert [(s.label, s.learner, s.learner_path()) for s in specs] == [("policy round 1", "self", str(policy_dir))]
    assert train_run_sources(run)[0][0].learner is None


def test_continual_random_sequences_written_by_the_current_model(tmp_path, tiny_squad_model, data_root):
    """order random: runs x sequences sequences of n_passages distinct pool passages, the same for
    every source; writer current: each step's self-edit is sampled from the merged model so far."""
    from seal.bench.protocols import (
        ProtocolContext,
        continual_sequences,
        protocol_recipe,
        run_continual,
    )
    from seal.inner_loop import train_and_merge
    from seal.models import load_model
    from seal.scoring import baselines
    from seal.self_edits import sample_self_edits

    continual = {"order": "random", "pool": 3, "n_passages": 2, "runs": 1, "sequences": 2, "writer": "current"}
    recipe = _recipe(tmp_path, tiny_squad_model, data_root, {"sources": ["none"], "protocols": {"single": None, "continual": continual}},
                     n_eval=3, inner={"lr": 0.05, "epochs": 2})  # fmt: skip
    cfg = recipe.bench.protocols.continual
    seqs = continual_sequences(cfg, 3, seed=0)
    assert len(seqs) == 2 and all(len(s) == 2 == len(set(s)) for s in seqs) and seqs[0] != seqs[1]
    assert continual_sequences(cfg, 3, seed=0) == seqs and continual_sequences(cfg, 3, seed=1) != seqs
    pr = protocol_recipe(recipe, "continual", cfg)
    model, tok = load_model(tiny_squad_model, "float32", "cpu")
    pool = load_passages("squad/val_200.json", 3, root=data_root)
    base = baselines(model, tok, pool, pr.qa)
    records = []
    source = f"policy:{tiny_squad_model}"
    out = run_continual(ProtocolContext(model, tok, pr, seed=0, on_record=records.append), source, pool, [["unused"]] * 3, base)
    assert [(r["sequence"], r["step"], r["passage"]) for r in records] == [(q, i, p) for q, s in enumerate(seqs) for i, p in enumerate(s)]
    assert all(len(r["self_edits"]) == 1 and r["self_edits"][0] != "unused" for r in records)
    assert np.array(out.matrix, dtype=float).shape == (2, 2) and out.extra["sequences"] == seqs and out.n_runs == 4
    undrawn = set(range(3)) - set(seqs[0]) - set(seqs[1])
    assert all(out.verdicts[p] == [None] * len(pool[p].questions) for p in undrawn)

    # step 0 of sequence 0: written by the student itself; step 1: by the student with step 0's update merged
    from seal.seeding import derive_seed

    def write(m, p, step):
        seed = derive_seed(derive_seed(0, "bench-continual-random", 0, 0, step), "write")
        return sample_self_edits(m, tok, [pool[p]], pr.self_edit, seed, k=1)[0]

    first, second = records[0], records[1]
    assert first["self_edits"] == write(model, seqs[0][0], 0)
    merged, _ = load_model(tiny_squad_model, "float32", "cpu")
    from seal.bench.protocols import _texts_per_passage

    texts = _texts_per_passage(source, [pool[seqs[0][0]]], [first["self_edits"]], pr)[0]
    train_and_merge(merged, tok, texts, pr.inner, derive_seed(0, "bench-continual-random", 0, 0, 0))
    assert second["self_edits"] == write(merged, seqs[0][1], 1)
    assert second["self_edits"] != write(model, seqs[0][1], 1)  # the unmerged model would write another


def test_continual_settings_are_checked():
    from seal.bench.config import ContinualConfig

    with pytest.raises(ValueError, match="need order: random"):
        ContinualConfig(runs=2)
    with pytest.raises(ValueError, match="pool 4 < n_passages 8"):
        ContinualConfig(order="random", pool=4)
    assert ContinualConfig(order="random", runs=8, sequences=8).n_sequences() == 64


def test_multi_protocol_full_fine_tuning(tmp_path, tiny_squad_model, data_root):
    """bench.protocols.multi.update: full: a copy of the student trains on every weight and
    answers; the student itself is untouched; 'lora' (the default) gives other answers."""
    from seal.bench.protocols import ProtocolContext, protocol_recipe, run_multi
    from seal.models import load_model
    from seal.scoring import baselines

    model, tok = load_model(tiny_squad_model, "float32", "cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    passages = load_passages("squad/val_200.json", 2, root=data_root)
    edits = [["a fact.\nanother fact."], [None]]
    out = {}
    for update in ("full", "lora"):
        recipe = _recipe(tmp_path, tiny_squad_model, data_root, {"sources": ["none"], "protocols": {"multi": {"update": update, "inner": {"epochs": 2, "lr": 0.05}}}})
        pr = protocol_recipe(recipe, "multi", recipe.bench.protocols.multi)
        records = []
        run_multi(ProtocolContext(model, tok, pr, seed=0, on_record=records.append), "file:x", passages, edits, baselines(model, tok, passages, pr.qa))
        (out[update],) = records
    full = out["full"]
    assert full["error"] is None and len(full["epoch_losses"]) == 2 and full["epoch_losses"][1] < full["epoch_losses"][0]
    assert full["n_train_texts"] == 3 + 1 and full["n_train_tokens"] > 0
    assert [pp["answers"] for pp in full["per_passage"]] != [pp["answers"] for pp in out["lora"]["per_passage"]]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_paper_bench_recipe_runs_end_to_end_with_tiny_models(tmp_path, tiny_squad_model, policy_dir, data_root):
    """recipes/bench_squad_qwen2.5-7b.yaml as shipped, with the tiny models for Qwen2.5-7B (and
    a one-round train run whose policy is `policy_dir`), the substring grader for the GPT-4.1
    judge, and every size shrunk by overrides: it loads and runs every protocol on CPU."""
    from seal.bench.run import bench, learner_key

    shipped = (Path(__file__).resolve().parents[1] / "recipes" / "bench_squad_qwen2.5-7b.yaml").read_text()
    path = tmp_path / "bench_squad_qwen2.5-7b.yaml"
    path.write_text(shipped.replace("Qwen/Qwen2.5-7B", str(tiny_squad_model)))
    run = tmp_path / "train_run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_squad_model)}}))
    (run / "metrics.jsonl").write_text(json.dumps({"round": 0, "next_policy": str(policy_dir)}) + "\n")
    recipe = load_recipe(path, [
        "model.dtype=float32", "model.device=cpu", "model.num_threads=1", f"data.root={data_root}", "data.n_eval_passages=2",
        "self_edit.max_new_tokens=8", "inner.lora.rank=4", "inner.lora.alpha=8", "inner.epochs=1", "inner.max_length=64",
        "qa.grader=contains", "qa.max_new_tokens=4", "bench.bootstrap_samples=200", f"bench.train_run={run}",
        "bench.protocols.single.n_passages=2", "bench.protocols.multi.n_passages=2", "bench.protocols.multi.inner.epochs=1", "bench.protocols.multi.n_self_edits=2",
        "bench.protocols.continual.runs=1", "bench.protocols.continual.sequences=1", "bench.protocols.continual.n_passages=2",
    ])  # fmt: skip
    assert recipe.bench.protocols.continual.writer == "current" and recipe.bench.train_run_learner == "self"
    out = bench(recipe, tmp_path / "out")
    results = json.loads((out / "results.json").read_text())
    student = str(tiny_squad_model).rstrip("/").rsplit("/", 1)[-1]
    tables = {name: {c["source"]: c for c in proto["tables"][student]["cells"]} for name, proto in results["protocols"].items()}
    assert len(tables["single"]) == len(tables["multi"]) == 9
    assert set(tables["continual"]) == {"base-model self-edits (sampled now)", "policy round 1"}  # the rows that write as they learn
    assert tables["single"]["policy round 1"]["learner"] == str(policy_dir)
    assert tables["single"]["GPT-4.1 self-edits"]["expected"] == 0.463
    journal = read_jsonl(out / "journal.jsonl")
    steps = [r for r in journal if r["kind"] == "continual"]
    assert {r["student"] for r in steps} == {student, learner_key(str(policy_dir))}
    assert len(steps) == 2 * 2 and all(len(r["self_edits"]) == 1 for r in steps)  # 2 rows x 1 sequence of 2 written steps
    multi = {r["source_label"]: r for r in journal if r["kind"] == "multi"}
    assert multi["passage only"]["n_train_texts"] == 2 and "lr 0.001" in results["setup"]["protocols"]["multi"]
