"""``seal train recipes/squad_tiny_cpu.yaml`` end to end on real SQuAD passages (reduced by
overrides), through the CLI: what the run directory holds; and bad input failing early,
clearly, without writing a run directory."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from train_helpers import RECIPE, one_thread, tiny_overrides, tiny_recipe
from typer.testing import CliRunner

from seal.cli import app
from seal.config import recipe_to_dict
from seal.models import load_model
from seal.rundir import read_jsonl

EVAL_FIELDS = {
    "kind", "round", "passage", "passage_id", "self_edit", "repetition", "seed", "reward",
    "adapter_accuracy", "baseline_accuracy", "answers", "scores", "epoch_losses",
    "n_train_texts", "n_train_tokens", "seconds", "error", "truncated",
}  # fmt: skip


def invoke(*args: str):
    return CliRunner().invoke(app, ["train", str(RECIPE), *args])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_seal_train_round_writes_the_whole_run_directory(tiny_squad_model, data_root, tmp_path):
    run = tmp_path / "run"
    extra = dict(self_edit__k=2, inner__eval_times=2, inner__batch_adapters=2)
    with one_thread():
        res = invoke(*tiny_overrides(tiny_squad_model, data_root, **extra), "--run-dir", str(run))
    assert res.exit_code == 0, res.output
    assert "done:" in res.output

    # config.yaml: the resolved recipe; run.json: versions, machine, seeds, launches
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config == recipe_to_dict(tiny_recipe(tiny_squad_model, data_root, **extra))
    assert config["model"]["trust_remote_code"] is False  # off unless the recipe turns it on
    info = json.loads((run / "run.json").read_text())
    assert info["seeds"]["seed"] == 0 and "derive_seed" in info["seeds"]["derivation"]
    assert info["versions"]["torch"] and info["versions"]["transformers"] and info["versions"]["trl"]
    assert info["launches"][0]["world_size"] == 1

    # journal.jsonl: a baseline per passage, then one line per (passage, self-edit, repetition)
    rows = read_jsonl(run / "journal.jsonl")
    evals = [r for r in rows if r["kind"] == "evaluation"]
    assert [r["passage"] for r in rows if r["kind"] == "baseline"] == [0, 1]
    assert [(r["passage"], r["self_edit"], r["repetition"]) for r in evals] == [(p, e, k) for p in range(2) for e in range(2) for k in range(2)]
    for r in evals:
        assert EVAL_FIELDS <= set(r), EVAL_FIELDS - set(r)
        assert r["error"] is None and r["seconds"] > 0 and len(r["answers"]) == len(r["scores"]) > 0
        assert r["reward"] == pytest.approx(r["adapter_accuracy"] - r["baseline_accuracy"])

    rdir = run / "round_0"
    edits = json.loads((rdir / "self_edits.json").read_text())
    assert [len(e["completions"]) for e in edits] == [2, 2] and all(len(e["truncated"]) == 2 for e in edits)
    sft = read_jsonl(rdir / "sft_rows.jsonl")
    assert len(sft) == 2 and all(set(r) == {"prompt", "completion"} for r in sft)  # keep_regardless
    m = json.loads((rdir / "metrics.json").read_text())
    assert m["n_evaluations"] == 8 and m["n_kept"] == 2 and m["sft"]["rows"] == 2
    assert read_jsonl(run / "metrics.jsonl") == [m]
    # what the self-edits teach (seal.diagnostics): recorded and printed, on by default
    d = m["diagnostics"]
    assert d["n_self_edits"] == 4 and d["format"] == "line" and sum(d["format_shares"].values()) == pytest.approx(1.0)
    assert 0 <= d["distinct_2"] <= 1 and 0 <= d["coverage"] <= 1 and "collapse_warning" in d
    assert sum(b["n"] for b in d["reward_by_coverage"].values()) == 4
    assert "round 0: self-edits: distinct-2" in res.output
    assert json.loads((run / "final.json").read_text())["policy"] == "round_0/policy"
    assert not list(rdir.glob(".*"))  # no temporary or work folders left behind

    # policy/: a loadable merged model that differs from the initial one
    merged, _ = load_model(rdir / "policy", device="cpu")
    initial, _ = load_model(tiny_squad_model, device="cpu")
    a, b = merged.state_dict(), initial.state_dict()
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def _bad_data(tmp_path):
    (tmp_path / "squad").mkdir(parents=True)
    good = {"title": "T", "context": "Some text.", "questions": [{"question": "Q?", "answer": "A"}]}
    bad = {"title": "Lonely", "context": "No questions here.", "questions": []}
    (tmp_path / "squad" / "bad.json").write_text(json.dumps([good, bad]))
    return [f"data.root={tmp_path}", "data.train_file=squad/bad.json"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing data file", "data file not found"),
        ("passage without questions", "has no questions"),
        ("unknown template", "unknown self-edit template"),
        ("unknown recipe key", "unknown key"),
    ],
)
def test_bad_input_fails_clearly_and_writes_nothing(case, message, tiny_squad_model, data_root, tmp_path):
    overrides = tiny_overrides(tiny_squad_model, data_root)
    overrides += {
        "missing data file": lambda: ["data.train_file=squad/no_such_file.json"],
        "passage without questions": lambda: _bad_data(tmp_path / "data"),
        "unknown template": lambda: ["self_edit.template=no-such-template"],
        "unknown recipe key": lambda: ["inner.lora.rnak=4"],
    }[case]()
    run = tmp_path / "run"
    res = invoke(*overrides, "--run-dir", str(run))
    assert res.exit_code == 2
    assert "error:" in res.output and message in res.output, res.output
    assert "Traceback" not in res.output
    assert not run.exists()
