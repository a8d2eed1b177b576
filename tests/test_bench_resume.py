"""``seal bench --resume``: a bench SIGKILLed midway, then resumed, ends with the results of an
uninterrupted one, and what the killed launch had journaled is read back, not recomputed.

The bench: a tiny model, 2 SQuAD passages, four sources (none, passage, a GPT-4.1 file, the
model's own sampled self-edits), all three protocols, 2 repetitions, one adapter per chunk so
that the journal grows record by record. It is killed inside a cell (the single protocol on
the sampled source); each protocol's reuse of part of a cell is also checked in-process.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from train_helpers import REPO, kill_when, one_thread, subprocess_env

from seal.bench.run import bench
from seal.config import RecipeError, load_recipe
from seal.errors import RunDirError
from seal.rundir import read_jsonl

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

#: Journal records of the bench below: per student 2 baselines; single 3 sources x 2 passages x
#: 1 self-edit x 2 repetitions; multi 3 sources x 2 repetitions; continual 3 sources x 2 x 2 steps.
N_RECORDS = 2 + 12 + 6 + 12
#: Killed once this many records are journaled: 2 baselines, the passage and GPT-4.1 sources'
#: single cells (4 each), and one adapter of the sampled source's single cell.
KILL_AT = 11


def without_timings(obj):
    """``obj`` without ``seconds`` fields (wall time, the only thing two runs may differ in)."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def write_recipe(folder: Path, model_dir: Path, data_root: Path) -> Path:
    raw = {
        "seed": 0,
        "model": {"name_or_path": str(model_dir), "device": "cpu", "num_threads": 1},
        "data": {"root": str(data_root), "eval_file": "squad/val_200.json", "n_eval_passages": 2},
        "self_edit": {"max_new_tokens": 8, "split_newlines": True},
        "inner": {"lora": {"rank": 4, "alpha": 8}, "epochs": 1, "max_length": 64, "eval_times": 2, "batch_adapters": 1},
        "qa": {"max_new_tokens": 4, "grader": "contains"},
        "bench": {
            "sources": ["none", "passage", {"source": "file:squad/val_200_selfedits_gpt-4.1.json", "label": "GPT-4.1"},
                        {"source": f"policy:{model_dir}", "label": "own"}],
            "protocols": {"single": {}, "multi": {"repetitions": 2}, "continual": {"n_passages": 2, "repetitions": 2}},
            "bootstrap_samples": 200,
        },
    }  # fmt: skip
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def bench_cmd(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "seal.cli", "bench", str(recipe), "--out", str(out), *extra]


def complete_lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, tiny_squad_model, data_root) -> Path:
    return write_recipe(tmp_path_factory.mktemp("recipe"), tiny_squad_model, data_root)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, recipe) -> Path:
    out = tmp_path_factory.mktemp("reference") / "bench"
    with one_thread():
        bench(load_recipe(recipe), out, console=Console(file=io.StringIO()))
    return out


@pytest.fixture(scope="module")
def killed(tmp_path_factory, recipe) -> Path:
    """``seal bench`` in a subprocess, SIGKILLed once ``KILL_AT`` records are journaled."""
    out = tmp_path_factory.mktemp("killed") / "bench"
    log = out.parent / "log.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = kill_when(bench_cmd(recipe, out), log, lambda: complete_lines(out / "journal.jsonl") >= KILL_AT, "journaling enough records", poll_s=0.005)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists(), "killed too late: the bench had finished"
    assert KILL_AT <= complete_lines(out / "journal.jsonl") < N_RECORDS
    return out


def test_sigkill_then_resume_equals_uninterrupted(killed, reference, recipe):
    before = read_jsonl(killed / "journal.jsonl")
    lines_before = (killed / "journal.jsonl").read_text().splitlines()[: len(before)]
    res = subprocess.run(bench_cmd(recipe, killed, "--resume"), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"{len(before)} journaled records read back" in " ".join(res.stdout.split())

    resumed = json.loads((killed / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    assert without_timings(resumed) == without_timings(expected)
    journal = read_jsonl(killed / "journal.jsonl")
    assert len(journal) == N_RECORDS
    assert without_timings(journal) == without_timings(read_jsonl(reference / "journal.jsonl"))
    # The killed launch's records were read back, not recomputed: they are still there, byte
    # for byte (timings included), and nothing was journaled twice.
    assert (killed / "journal.jsonl").read_text().splitlines()[: len(before)] == lines_before
    assert json.loads((killed / "run.json").read_text())["resumed"]


def test_an_existing_bench_is_refused_without_resume_and_a_changed_recipe_with_it(killed, recipe, tmp_path):
    from typer.testing import CliRunner

    from seal.cli import app

    again = CliRunner().invoke(app, ["bench", str(recipe), "--out", str(killed)])
    assert again.exit_code == 2 and "already holds results" in " ".join(again.output.split())
    assert "--resume" in again.output
    with pytest.raises(RecipeError, match="differs from the recorded one in: inner.epochs"):
        bench(load_recipe(recipe, ["inner.epochs=2"]), killed, resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecipeError, match="cannot resume.*no config.yaml"):
        bench(load_recipe(recipe), tmp_path / "empty", resume=True)
    with pytest.raises(RunDirError, match="cannot resume .*: no such directory"):
        bench(load_recipe(recipe), tmp_path / "missing", resume=True)
    assert not (tmp_path / "missing").exists()
    no_out = CliRunner().invoke(app, ["bench", str(recipe), "--resume"])
    assert no_out.exit_code == 2 and "--resume needs --out" in " ".join(no_out.output.split())


@pytest.mark.parametrize("protocol", ["single", "multi", "continual"])
def test_each_protocol_reads_back_part_of_a_cell(protocol, recipe, tiny_squad_model):
    """A cell cut after its first record: the runner reads it back, computes and records the
    rest only, and returns the outcome of the whole run (continual: the cut repetition is
    recomputed from its start, its journaled step not recorded again)."""
    from seal.bench.protocols import PROTOCOL_RUNNERS, ProtocolContext, protocol_recipe
    from seal.evaluate import load_eval_passages
    from seal.models import load_model
    from seal.scoring import baselines

    loaded = load_recipe(recipe)
    proto = protocol_recipe(loaded, protocol, getattr(loaded.bench.protocols, protocol))
    passages = load_eval_passages(loaded)
    with one_thread():
        model, tok = load_model(tiny_squad_model, "float32", "cpu")
        base = baselines(model, tok, passages, proto.qa)
        runner = PROTOCOL_RUNNERS[protocol]
        args = ("passage", passages, [[None]] * len(passages), base)
        full, rest, steps = [], [], []
        whole = runner(ProtocolContext(model, tok, proto, 0, on_record=full.append), *args)
        part = runner(ProtocolContext(model, tok, proto, 0, on_record=rest.append, progress=steps.append, done=full[:1]), *args)
    assert len(full) == (2 if protocol == "multi" else 4)
    assert without_timings(rest) == without_timings(full[1:])
    assert sum(steps) == len(full)
    for field in ("verdicts", "n_runs", "n_failed"):
        assert getattr(part, field) == getattr(whole, field)
    assert json.dumps(part.matrix) == json.dumps(whole.matrix)  # NaN above the diagonal


def test_a_partially_written_last_line_is_dropped_and_recomputed(reference, recipe, tmp_path):
    """A kill in the middle of an append leaves half a record: the resume cuts it off and
    computes that record again; the rest of the journal is read back."""
    import shutil

    out = shutil.copytree(reference, tmp_path / "bench")
    lines = (out / "journal.jsonl").read_text().splitlines(keepends=True)
    (out / "journal.jsonl").write_text("".join(lines[:KILL_AT]) + lines[KILL_AT][:40])
    for name in ("results.json", "report.md"):
        (out / name).unlink()
    with one_thread():
        bench(load_recipe(recipe), out, console=Console(file=io.StringIO()), resume=True)
    assert (out / "journal.jsonl").read_text().splitlines(keepends=True)[:KILL_AT] == lines[:KILL_AT]
    assert without_timings(read_jsonl(out / "journal.jsonl")) == without_timings(read_jsonl(reference / "journal.jsonl"))
    resumed, expected = (json.loads((folder / "results.json").read_text()) for folder in (out, reference))
    assert without_timings(resumed) == without_timings(expected)


def test_resuming_a_finished_bench_computes_nothing(reference, recipe, tmp_path):
    import shutil

    out = shutil.copytree(reference, tmp_path / "bench")
    journal = (out / "journal.jsonl").read_text()
    with one_thread():
        bench(load_recipe(recipe), out, console=Console(file=io.StringIO()), resume=True)
    assert (out / "journal.jsonl").read_text() == journal
    resumed, expected = (json.loads((folder / "results.json").read_text()) for folder in (out, reference))
    assert without_timings(resumed) == without_timings(expected)


def test_a_new_bench_reuses_another_benchs_journal(reference, recipe, tmp_path):
    """``bench(..., reuse=DIR)`` (``seal microworld demo --jobs 2``): a new bench copies in what
    another bench of the same recipe journaled (here: stopped mid-append) and computes only the
    rest; a bench of another recipe is refused before anything is written."""
    import shutil

    other = shutil.copytree(reference, tmp_path / "other")
    lines = (other / "journal.jsonl").read_text().splitlines(keepends=True)
    (other / "journal.jsonl").write_text("".join(lines[:KILL_AT]) + lines[KILL_AT][:40])
    with pytest.raises(RecipeError, match="cannot reuse .* differs from this one in: inner.epochs"):
        bench(load_recipe(recipe, ["inner.epochs=2"]), tmp_path / "refused", reuse=other)
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "bench"
    with one_thread():
        bench(load_recipe(recipe), out, console=Console(file=io.StringIO()), reuse=other)
    assert (out / "journal.jsonl").read_text().splitlines(keepends=True)[:KILL_AT] == lines[:KILL_AT]  # read back, not recomputed
    assert without_timings(read_jsonl(out / "journal.jsonl")) == without_timings(read_jsonl(reference / "journal.jsonl"))
    reused, expected = (json.loads((folder / "results.json").read_text()) for folder in (out, reference))
    assert without_timings(reused) == without_timings(expected)
    assert "resumed" not in json.loads((out / "run.json").read_text())
