"""seal bench: bootstrap against known answers, the three protocols' bookkeeping, input checks, outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from seal.bench.config import BenchConfig, merged_inner
from seal.bench.stats import (
    adjusted_confidence,
    bootstrap_accuracy,
    pair_verdicts,
    paired_bootstrap,
    verdict_accuracy,
)
from seal.config import InnerLoopConfig, RecipeError, load_recipe
from seal.data import DataError, load_passages

# ----------------------------------------------------------------------------- statistics


def test_constant_difference_gives_zero_width_interval():
    rng = np.random.default_rng(1)
    b = [list(rng.random(k)) for k in (3, 5, 1, 4, 2)]  # passage difficulty varies a lot
    a = [[x + 0.1 for x in q] for q in b]
    for stat in ("macro", "micro"):
        iv = paired_bootstrap(a, b, stat, n_samples=2000, seed=3)
        assert iv.value == pytest.approx(0.1) and iv.lo == pytest.approx(0.1) and iv.hi == pytest.approx(0.1)
        assert iv.verdict() == "better"


def test_two_point_case_matches_its_exact_distribution():
    # Two passages with differences 0 and 1: a resample's mean is 0, 1/2 or 1 with
    # probabilities 1/4, 1/2, 1/4. The 95 % interval is [0, 1]; the 40 % one (30th and 70th
    # percentiles) is [1/2, 1/2].
    a, b = [[1.0], [1.0]], [[1.0], [0.0]]
    iv = paired_bootstrap(a, b, n_samples=20000, seed=0)
    assert (iv.value, iv.lo, iv.hi) == (0.5, 0.0, 1.0)
    assert iv.verdict() == "tie"
    narrow = paired_bootstrap(a, b, n_samples=20000, confidence=0.4, seed=0)
    assert (narrow.lo, narrow.hi) == (0.5, 0.5)


def test_binomial_case_matches_exact_quantiles():
    # 20 passages, half with difference 1: the resampled mean is Binomial(20, 1/2) / 20,
    # whose 2.5 % and 97.5 % quantiles are 6/20 and 14/20 (cdf(5)=.021, cdf(6)=.058,
    # cdf(13)=.942, cdf(14)=.979).
    a = [[1.0]] * 10 + [[0.0]] * 10
    b = [[0.0]] * 20
    iv = paired_bootstrap(a, b, n_samples=20000, seed=0)
    assert iv.value == 0.5 and iv.lo == pytest.approx(0.30) and iv.hi == pytest.approx(0.70)


def test_symmetric_case_agrees_with_normal_approximation():
    n = 400
    d = np.linspace(-1, 1, n)  # symmetric, sd = 0.578
    a, b = [[x] for x in d + 0.2], [[0.0]] * n
    iv = paired_bootstrap(a, b, n_samples=20000, seed=0)
    half = 1.96 * d.std() / math.sqrt(n)
    assert iv.value == pytest.approx(0.2)
    assert iv.lo == pytest.approx(0.2 - half, abs=0.1 * half) and iv.hi == pytest.approx(0.2 + half, abs=0.1 * half)


def test_macro_weighs_passages_micro_weighs_questions():
    v = [[1.0], [0.0, 0.0, 0.0]]
    assert verdict_accuracy(v, "macro") == 0.5 and verdict_accuracy(v, "micro") == 0.25
    iv = bootstrap_accuracy(v, "micro", n_samples=500)
    assert iv.value == 0.25 and 0.0 <= iv.lo <= iv.hi <= 1.0


def test_bootstrap_is_deterministic_and_rejects_misaligned_tables():
    a, b = [[1.0, 0.0], [1.0]], [[0.0, 0.0], [1.0]]
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    with pytest.raises(ValueError, match="same passages"):
        paired_bootstrap(a, [[0.0], [1.0]])
    with pytest.raises(ValueError, match="no scored questions"):
        verdict_accuracy([[1.0], []])


def test_pairing_drops_ungraded_questions_and_empty_passages():
    a, b, kept = pair_verdicts([[1.0, None], [None], [0.5, 1.0]], [[0.0, 1.0], [1.0], [None, 0.0]])
    assert (a, b, kept) == ([[1.0], [1.0]], [[0.0], [0.0]], [0, 2])


def test_bonferroni():
    assert adjusted_confidence(0.95, 10, "bonferroni") == pytest.approx(0.995)
    assert adjusted_confidence(0.95, 10, "none") == 0.95


# ----------------------------------------------------------------------------- config


def test_bench_section_shorthands_and_errors():
    cfg = BenchConfig.model_validate(
        {"sources": ["none", {"source": "file:squad/x.json", "expected": {"single": 0.463}}], "students": ["a/b"]}
    )
    assert [s.name for s in cfg.sources] == ["none", "file:x"]
    assert cfg.sources[1].expected["single"].accuracy == 0.463 and cfg.sources[1].expected["single"].statistic == "macro"
    assert cfg.students[0].name == "b" and [n for n, _ in cfg.protocols.enabled()] == ["single"]
    for bad, msg in [
        ({"sources": ["gpt"]}, "unknown source"),
        ({"sources": ["prompt:nope"]}, "unknown self-edit template"),
        ({"sources": ["none", {"source": "passage", "label": "none"}]}, "duplicate source"),
        ({"sources": ["none"], "protocols": {"multi": {"inner": {"epoch": 3}}}}, "epoch"),
        ({"sources": ["none"], "protocols": {"single": None}}, "no protocol"),
    ]:
        with pytest.raises(ValueError, match=msg):
            BenchConfig.model_validate(bad)
    assert merged_inner(InnerLoopConfig(), {"epochs": 3, "lora": {"rank": 4}}).lora.rank == 4


def test_shipped_bench_recipes_state_paper_figures():
    root = Path(__file__).resolve().parents[1] / "recipes"
    gpu = load_recipe(root / "bench_squad_qwen2.5-7b.yaml")
    exp = {s.name: {k: v.accuracy for k, v in s.expected.items()} for s in gpu.bench.sources}
    paper = json.loads((Path(__file__).resolve().parents[2] / "shared/data/squad/paper_results.json").read_text())
    assert any(v.get("single") == round(paper["single_passage/gpt4_1"]["adapter_mean_accuracy"], 3) for v in exp.values())
    assert any(v.get("multi") == round(paper["multi_passage_200/cpt_iter2"]["overall"]["adapter_accuracy"], 3) for v in exp.values())
    tiny = load_recipe(root / "bench_squad_tiny_cpu.yaml")
    kinds = {s.source.split(":")[0] for s in tiny.bench.sources}
    assert kinds == {"none", "passage", "file", "policy", "prompt"}
    assert any("gpt-4.1" in s.source for s in tiny.bench.sources)


# ----------------------------------------------------------------------------- protocols (real tiny model)


def _recipe(tmp_path, model_dir, data_root, bench: dict, n_eval=3, **extra) -> Path:
    raw = {
        "seed": 0,
        "model": {"name_or_path": str(model_dir), "device": "cpu"},
        "data": {"root": str(data_root), "eval_file": "squad/val_200.json", "n_eval_passages": n_eval},
        "self_edit": {"max_new_tokens": 8, "split_newlines": True},
        "inner": {"lora": {"rank": 4, "alpha": 8}, "epochs": 1, "max_length": 64, "eval_times": 1, "batch_adapters": 8},
        "qa": {"max_new_tokens": 4, "grader": "contains"},
        "bench": bench,
        **extra,
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def tiny(tiny_squad_model):
    from seal.models import load_model

    return load_model(tiny_squad_model, "float32", "cpu")


@pytest.fixture(scope="module")
def val3(data_root):
    return load_passages("squad/val_200.json", 3, root=data_root)


def _base(tiny, passages, qa):
    from seal.scoring import baselines

    return baselines(*tiny, passages, qa)


def test_multi_protocol_pools_every_passage_into_one_adapter(tiny, val3, tmp_path, tiny_squad_model, data_root):
    from seal.bench.protocols import (
        ProtocolContext,
        pooled_jobs,
        protocol_recipe,
        run_multi,
        split_answers,
    )
    from seal.scoring import question_prompts
    from seal.self_edits import train_texts

    recipe = load_recipe(_recipe(tmp_path, tiny_squad_model, data_root, {"sources": ["none"], "protocols": {"multi": {"repetitions": 2}}}))
    pr = protocol_recipe(recipe, "multi", recipe.bench.protocols.multi)
    edits = [["a fact.\nanother fact."], [None], ["x."]]
    per = [train_texts(p, e[0], split_newlines=True) for p, e in zip(val3, edits, strict=True)]
    jobs = pooled_jobs(per, val3, repetitions=2, seed=0)
    assert len(jobs) == 2 and jobs[0].seed != jobs[1].seed
    assert jobs[0].texts == per[0] + per[1] + per[2] and len(jobs[0].texts) == 3 + 1 + 2
    assert jobs[0].prompts == [q for p in val3 for q in question_prompts(p)]
    assert split_answers([str(i) for i in range(len(jobs[0].prompts))], val3)[1][0] == str(len(val3[0].questions))
    assert pooled_jobs([[], [], []], val3, 2, 0) == []

    records = []
    out = run_multi(ProtocolContext(*tiny, pr, seed=0, key={"kind": "multi"}, on_record=records.append), "file:x", val3, edits, _base(tiny, val3, pr.qa))
    assert [r["repetition"] for r in records] == [0, 1]
    assert all(r["n_train_texts"] == 6 and r["error"] is None and len(r["epoch_losses"]) == 1 for r in records)
    assert [len(pp["answers"]) for pp in records[0]["per_passage"]] == [len(p.questions) for p in val3]
    assert [len(v) for v in out.verdicts] == [len(p.questions) for p in val3] and out.n_runs == 2


def test_continual_protocol_matrix_shape_and_bookkeeping(tiny, val3, tmp_path, tiny_squad_model, data_root):
    import torch

    from seal.bench.protocols import (
        ProtocolContext,
        continual_summary,
        protocol_recipe,
        run_continual,
    )

    recipe = load_recipe(_recipe(tmp_path, tiny_squad_model, data_root, {"sources": ["none"], "protocols": {"continual": {"n_passages": 3}}}))
    pr = protocol_recipe(recipe, "continual", recipe.bench.protocols.continual)
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = _base(tiny, val3, pr.qa)
    records = []
    out = run_continual(ProtocolContext(model, tok, pr, seed=0, on_record=records.append), "passage", val3, [[None]] * 3, base)
    m = np.array(out.matrix, dtype=float)
    assert m.shape == (3, 3)
    assert np.isnan(m[np.triu_indices(3, 1)]).all() and np.isfinite(m[np.tril_indices(3)]).all()
    assert [r["step"] for r in records] == [0, 1, 2]
    assert [[s["passage"] for s in r["scored"]] for r in records] == [[0], [0, 1], [0, 1, 2]]
    assert all(r["error"] is None and len(r["epoch_losses"]) == 1 for r in records)
    assert [r["passage_id"] for r in records] == [p.id for p in val3]
    assert out.verdicts == [s["scores"] for s in records[-1]["scored"]]  # the last step's verdicts
    assert out.n_runs == 3 and out.n_failed == 0
    # merges happen on a copy: the benchmark's model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # 'none' trains nothing: every row is the baseline
    none = run_continual(ProtocolContext(model, tok, pr, seed=0), "none", val3, [[]] * 3, base)
    assert none.matrix[2] == [b["accuracy"] for b in base] and math.isnan(none.matrix[0][1])
    s = continual_summary([[0.5, math.nan], [0.2, 0.6]])
    assert s == {"final": pytest.approx(0.4), "acquired": pytest.approx(0.55), "forgetting": pytest.approx(0.3)}


# ----------------------------------------------------------------------------- input checks and the command


def test_file_source_missing_a_passage_fails_naming_it_before_writing(tmp_path, tiny_squad_model, data_root):
    from seal.bench.run import bench

    gpt = json.loads((data_root / "squad/val_200_selfedits_gpt-4.1.json").read_text())
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(gpt[:1] + gpt[2:4]))  # passage 1 of the evaluation set is missing
    val = load_passages("squad/val_200.json", 3, root=data_root)
    recipe = load_recipe(_recipe(tmp_path, tiny_squad_model, data_root, {"sources": ["none", f"file:{partial}"]}))
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        bench(recipe, out)
    assert "passage 1" in str(e.value) and val[1].title in str(e.value) and str(partial) in str(e.value)
    assert not out.exists()
    missing = load_recipe(_recipe(tmp_path, tiny_squad_model, data_root, {"sources": ["policy:runs/nowhere/policy"]}))
    with pytest.raises(RecipeError, match="runs/nowhere/policy"):
        bench(missing, out)
    too_many = load_recipe(_recipe(tmp_path, tiny_squad_model, data_root, {"sources": ["none"], "protocols": {"single": {"n_passages": 5}}}))
    with pytest.raises(RecipeError, match="single.n_passages"):
        bench(too_many, out)
    assert not out.exists()


@pytest.mark.slow
def test_bench_command_writes_report_numbers_and_plots(tmp_path, tiny_squad_model, data_root):
    from typer.testing import CliRunner

    from seal.cli import app

    bench_cfg = {
        "sources": ["none", "passage", {"source": "file:squad/val_200_selfedits_gpt-4.1.json", "label": "GPT-4.1", "author": "gpt-4.1", "expected": {"single": 0.463}},
                    {"source": f"policy:{tiny_squad_model}", "label": "own"}],
        "students": [{"name_or_path": str(tiny_squad_model), "label": "tiny"}],
        "protocols": {"single": {"n_passages": 2}, "multi": {"n_passages": 2, "inner": {"batch_size": 2}}, "continual": {"n_passages": 2}},
        "bootstrap_samples": 200,
    }  # fmt: skip
    path = _recipe(tmp_path, tiny_squad_model, data_root, bench_cfg, n_eval=2)
    out = tmp_path / "res"
    res = CliRunner().invoke(app, ["bench", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    for f in ["report.md", "results.json", "summary.csv", "comparisons.csv", "continual.csv", "verdicts.csv", "config.yaml", "run.json",
              "journal.jsonl", "self_edits/own.json", "plots/accuracy_single.png", "plots/accuracy_multi.png", "plots/continual_tiny.png"]:  # fmt: skip
        assert (out / f).is_file(), f
    results = json.loads((out / "results.json").read_text())
    cells = {c["source"]: c for c in results["protocols"]["single"]["tables"]["tiny"]["cells"]}
    assert set(cells) == {"none", "passage", "GPT-4.1", "own"} and cells["own"]["own_data"] and not cells["GPT-4.1"]["own_data"]
    assert cells["GPT-4.1"]["expected"] == 0.463 and cells["GPT-4.1"]["n_runs"] == 2
    assert len(results["protocols"]["single"]["tables"]["tiny"]["comparisons"]) == 6
    assert len(results["protocols"]["continual"]["tables"]["tiny"]["cells"][0]["continual"]["matrix"]) == 2
    report = (out / "report.md").read_text()
    assert "## Answer" in report and "46.3" in report and "plots/accuracy_single.png" in report
    assert (out / "plots/accuracy_single.png").read_bytes()[:4] == b"\x89PNG"
    # the same directory again is refused, with exit status 1
    again = CliRunner().invoke(app, ["bench", str(path), "--out", str(out)])
    assert again.exit_code == 2 and "already holds results" in " ".join(again.output.split())


def test_train_run_without_finished_rounds_is_refused(tmp_path):
    from seal.bench.sources import train_run_sources
    from seal.config import RecipeError

    with pytest.raises(RecipeError, match=f"bench.train_run: {tmp_path} has no finished round"):
        train_run_sources(tmp_path)


def test_the_answer_opens_with_the_round_comparison():
    """With bench.train_run, the report's Answer says first whether ReST-EM improved the policy:
    last round vs round 0, then each round vs the previous, with their intervals."""
    from seal.bench.report import markdown, round_lines

    labels = ["passage only", "policy round 0 (base)", "policy round 1", "policy round 2"]
    acc = {"passage only": 0.06, "policy round 0 (base)": 0.12, "policy round 1": 0.13, "policy round 2": 0.18}
    rest = dict(own_data=False, author=None, micro=None, gain=None, expected=None, expected_statistic=None, expected_holds=None,
                n_passages=3, n_questions=9, n_failed=0, n_runs=3)  # fmt: skip
    cells = [{"source": s, "accuracy": {"value": acc[s], "lo": acc[s] - 0.02, "hi": acc[s] + 0.02}, **rest} for s in labels]

    def comp(a, b, lo, hi):
        d = acc[a] - acc[b]
        return {"a": a, "b": b, "macro": {"value": d, "lo": lo, "hi": hi}, "verdict": "tie" if lo <= 0 <= hi else ("a" if lo > 0 else "b")}

    table = {"cells": cells, "baseline": None, "baseline_micro": None, "comparisons": [
        comp("passage only", "policy round 0 (base)", -0.08, -0.04),
        comp("policy round 0 (base)", "policy round 1", -0.03, 0.01),
        comp("policy round 0 (base)", "policy round 2", -0.09, -0.03),
        comp("policy round 1", "policy round 2", -0.08, -0.02),
        comp("passage only", "policy round 1", -0.1, -0.04),
        comp("passage only", "policy round 2", -0.15, -0.09),
    ]}  # fmt: skip
    rounds = {"policy round 0 (base)": 0, "policy round 1": 1, "policy round 2": 2}
    lines = round_lines("single", "mw", table, rounds)
    assert lines[0].startswith("- **Did ReST-EM improve the policy?**")
    # stored as round 0 - round 2 = [-9, -3]: flipped to round 2 - round 0 = +6 [+3, +9], better
    assert "policy round 2 − policy round 0 (base) = +6.0 [+3.0, +9.0] points: **better**" in lines[0]
    assert lines[1:] == ["  - policy round 1 − policy round 0 (base) = +1.0 [-1.0, +3.0]: tie",
                         "  - policy round 2 − policy round 1 = +5.0 [+2.0, +8.0]: better"]  # fmt: skip
    assert round_lines("single", "mw", table, {}) == []  # no train run: no round comparison
    setup = {"name": "t", "students": ["mw"], "student_paths": ["mw"], "grader": "contains", "seed": 0, "bootstrap_samples": 10,
             "confidence": 0.95, "multiple_comparisons": "none", "protocols": {"single": {}}, "rounds": rounds}  # fmt: skip
    md = markdown({"protocols": {"single": {"n_passages": 3, "tables": {"mw": table}}}}, setup, [])
    answer = md.split("## Answer\n\n", 1)[1]
    assert answer.startswith(lines[0])
