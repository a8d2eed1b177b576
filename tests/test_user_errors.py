"""Bad input and failed rounds, as a user meets them on the command line (issue 20, part A).

* Run directories are owned and locked: a folder seal did not create, or a path that is a
  file, is refused untouched; a directory held by a live process is refused naming its pid;
  a dead holder's lock does not block.
* Every user error is one line (``error: ...``) with exit status 2 and no traceback (``seal
  --debug`` raises it): a damaged recorded ``config.yaml``, a missing or malformed judge key, a
  missing model directory, a full disk; a refused start leaves nothing behind.
* Failure is loud: a round without a usable evaluation (every one failed, or a judge answering
  401 graded nothing) stops the run (exit 3) with the reasons, unless ``rl.keep_going``; a
  self-edit whose every evaluation failed never becomes an SFT row; every JSON file is strict.

Real tiny runs of ``recipes/squad_tiny_cpu.yaml`` (tiny model, real SQuAD passages); the full
disk is the one injected fault (``os.fsync`` of one file).
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from train_helpers import RECIPE, REPO, one_thread, subprocess_env, tiny_overrides, tiny_recipe
from typer.testing import CliRunner

from seal.cli import app
from seal.config import recipe_to_dict
from seal.errors import RoundFailedError, RunDirBusyError, RunDirError
from seal.rundir import (
    MARKER,
    RunDir,
    append_jsonl,
    claim_run_dir,
    hold_run_dir,
    write_json_atomic,
    write_jsonl_atomic,
)
from seal.train import train

try:
    from judge_server import JudgeServer, Reply
except ImportError:  # tests/ became a package
    from tests.judge_server import JudgeServer, Reply

pytestmark = pytest.mark.timeout(120)


def seal(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_error(res, exit_code: int = 2) -> str:
    """The error line of a refused command; fails unless it is one line, no traceback."""
    assert res.exit_code == exit_code, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def strict_json(text: str):
    """``json.loads`` that refuses NaN and infinities (what a strict reader does)."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def train_args(model, data_root, *extra: str, **overrides) -> list[str]:
    return ["train", str(RECIPE), *tiny_overrides(model, data_root, data__n_train_passages=1, self_edit__k=2, **overrides), *extra]


# ----------------------------------------------------------------------------- ownership and the lock


def test_a_folder_seal_did_not_create_is_refused_untouched(tiny_squad_model, data_root, tmp_path):
    user = tmp_path / "mine"
    (user / "round_0" / "policy").mkdir(parents=True)
    (user / "metrics.jsonl").write_text('{"mine": 1}\n')
    (user / "round_0" / "policy" / "weights.bin").write_bytes(b"precious")
    line = one_line_error(seal(*train_args(tiny_squad_model, data_root, "--run-dir", str(user))))
    assert "not created by seal" in line and "metrics.jsonl" in line
    assert sorted(str(p.relative_to(user)) for p in user.rglob("*")) == ["metrics.jsonl", "round_0", "round_0/policy", "round_0/policy/weights.bin"]
    assert (user / "metrics.jsonl").read_text() == '{"mine": 1}\n'
    # --resume of it is refused the same way, and so is a path that is a regular file.
    assert "not created by seal" in one_line_error(seal(*train_args(tiny_squad_model, data_root, "--resume", str(user))))
    file = tmp_path / "notes.txt"
    file.write_text("notes")
    assert "is a file, not a directory" in one_line_error(seal(*train_args(tiny_squad_model, data_root, "--run-dir", str(file))))
    assert "is a file, not a directory" in one_line_error(seal(*train_args(tiny_squad_model, data_root, "--resume", str(file))))
    assert file.read_text() == "notes"
    # With --debug the same error is raised with its traceback.
    res = seal("--debug", *train_args(tiny_squad_model, data_root, "--run-dir", str(file)))
    assert isinstance(res.exception, RunDirError)


def test_a_held_directory_is_refused_naming_the_holder_and_a_dead_holder_does_not_block(tmp_path):
    run = tmp_path / "run"
    claim = [sys.executable, "-c", "import sys; from seal.rundir import claim_run_dir; claim_run_dir(sys.argv[1])", str(run)]
    with hold_run_dir(run):
        with hold_run_dir(run):  # re-entrant in one process (microworld demo -> train)
            pass
        assert json.loads((run / MARKER).read_text())["pid"] == os.getpid()
        other = subprocess.run(claim, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=60)
        assert other.returncode != 0
        assert "RunDirBusyError" in other.stderr and f"pid {os.getpid()}" in other.stderr
    # A holder killed with the lock held (a crash): the kernel released it.
    crash = claim[:2] + [claim[2] + "; import os, signal; os.kill(os.getpid(), signal.SIGKILL)", str(run)]
    killed = subprocess.run(crash, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((run / MARKER).read_text())["pid"] != os.getpid()  # the dead holder's pid stays
    os.close(claim_run_dir(run))
    # A run written before the marker existed (config.yaml + seal's run.json) is adopted.
    legacy = tmp_path / "legacy"
    RunDir(legacy).start({"seed": 0}, seeds={"seed": 0})  # as seal wrote runs before the marker
    with hold_run_dir(legacy):
        assert (legacy / MARKER).is_file()
    with pytest.raises(RunDirError, match="no such directory"):
        claim_run_dir(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()
    # A start refused after the claim leaves no directory behind.
    with pytest.raises(RunDirBusyError), hold_run_dir(tmp_path / "refused"):
        raise RunDirBusyError("refused after the claim")
    assert not (tmp_path / "refused").exists()


# ----------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize("content, message", [("model: [unclosed\n", "cannot be read"), ("- a\n- b\n", "not a mapping")])
def test_a_damaged_recorded_config_is_one_line_on_resume(tiny_squad_model, data_root, tmp_path, content, message):
    run = tmp_path / "run"
    RunDir(run).start(recipe_to_dict(tiny_recipe(tiny_squad_model, data_root)), seeds={"seed": 0})
    (run / "config.yaml").write_text(content)
    line = one_line_error(seal(*train_args(tiny_squad_model, data_root, "--resume", str(run))))
    assert "config.yaml" in line and message in line


def test_judge_key_missing_or_malformed_is_one_line_and_nothing_written(tiny_squad_model, data_root, tmp_path, monkeypatch):
    var = "SEAL_TEST_USER_ERRORS_JUDGE_KEY"
    judge = dict(qa__grader="judge", qa__judge__base_url="https://judge.invalid/v1", qa__judge__api_key_env=var)
    run = tmp_path / "run"
    monkeypatch.delenv(var, raising=False)
    line = one_line_error(seal(*train_args(tiny_squad_model, data_root, "--run-dir", str(run), **judge)))
    assert var in line and "not set" in line and not run.exists()
    monkeypatch.setenv(var, "sk-with a space\n")
    line = one_line_error(seal(*train_args(tiny_squad_model, data_root, "--run-dir", str(run), **judge)))
    assert var in line and "not allowed in an HTTP header" in line and "sk-with" not in line and not run.exists()


def test_a_missing_model_directory_is_one_line_naming_the_key(tiny_squad_model, data_root, tmp_path):
    run = tmp_path / "run"
    args = train_args(tiny_squad_model, data_root, "--run-dir", str(run))
    args = [a if not a.startswith("model.name_or_path=") else f"model.name_or_path={tmp_path / 'no' / 'model'}" for a in args]
    line = one_line_error(seal(*args))
    assert "model.name_or_path" in line and str(tmp_path / "no" / "model") in line and "Repo id" not in line
    assert not run.exists()


def test_a_full_disk_is_one_line_naming_the_file_and_the_refused_start_leaves_nothing(tiny_squad_model, data_root, tmp_path, monkeypatch):
    real = os.fsync

    def full_for_config(fd):
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".config.yaml."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a real write reports it: no file name
        return real(fd)

    run = tmp_path / "run"
    monkeypatch.setattr(os, "fsync", full_for_config)
    line = one_line_error(seal(*train_args(tiny_squad_model, data_root, "--run-dir", str(run))))
    assert "no space left" in line and str(run / "config.yaml") in line and "run the command again" in line
    assert not run.exists()


def test_a_full_disk_mid_run_names_the_file_and_the_resume(tiny_squad_model, data_root, tmp_path, monkeypatch):
    real = os.fsync

    def full_for_journal(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("journal.jsonl"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    run = tmp_path / "run"
    monkeypatch.setattr(os, "fsync", full_for_journal)
    with one_thread():
        line = one_line_error(seal(*train_args(tiny_squad_model, data_root, "--run-dir", str(run))))
    assert f"writing {run / 'journal.jsonl'}" in line and f"on disk in {run}" in line and "--resume" in line
    assert (run / "config.yaml").is_file() and (run / "round_0" / "self_edits.json").is_file()  # finished work kept


# ----------------------------------------------------------------------------- failure is loud


def test_strict_json_writers_write_no_nan(tmp_path):
    """``inner.failure_reward: .nan`` (refused at recipe load) or a diverged loss: null, never NaN."""
    row = {"reward": math.nan, "loss": [math.inf, -math.inf, 1.5], "nested": {"x": (math.nan, 2)}}
    write_json_atomic(tmp_path / "a.json", row)
    write_jsonl_atomic(tmp_path / "b.jsonl", [row])
    append_jsonl(tmp_path / "c.jsonl", row)
    expected = {"reward": None, "loss": [None, None, 1.5], "nested": {"x": [None, 2]}}
    assert strict_json((tmp_path / "a.json").read_text()) == expected
    assert [strict_json(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()] == [expected]
    assert [strict_json(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()] == [expected]


NO_BLOCK = dict(self_edit__hparams__enabled="true", self_edit__hparams__required="true", self_edit__hparams__lr="{min: 0.0001, max: 0.01}")


def _preseeded(run: Path, recipe, edits: list[str]) -> None:
    """A run whose round 0 self-edits are given: none has the required hyperparameter block, so
    every evaluation fails (a model-written failure no recipe check can foresee)."""
    RunDir(run).start(recipe_to_dict(recipe), seeds={"seed": recipe.seed})
    write_json_atomic(run / "round_0" / "self_edits.json", [{"passage": 0, "completions": edits, "truncated": [False] * len(edits)}])


def test_a_round_where_every_evaluation_failed_stops_the_run_unless_keep_going(tiny_squad_model, data_root, tmp_path):
    recipe = tiny_recipe(tiny_squad_model, data_root, data__n_train_passages=1, self_edit__k=2, inner__failure_reward=0.0, **NO_BLOCK)
    assert recipe.rl.keep_regardless  # the tiny recipe keeps the best self-edit whatever its reward
    run = tmp_path / "run"
    _preseeded(run, recipe, ["1. The first fact.", "1. The second fact."])
    with one_thread(), pytest.raises(RoundFailedError) as err:
        train(recipe, run, resume=True, console=Console(file=io.StringIO()))
    message = str(err.value)
    assert "round 0: no usable evaluation of 2: 2 failed (2 x hparams: no block" in message and "rl.keep_going=true" in message
    assert err.value.exit_status == 3
    rows = [strict_json(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["baseline", "evaluation", "evaluation"] and all(r["reward"] == 0.0 for r in rows[1:])
    assert not (run / "round_0" / "metrics.json").exists()

    # rl.keep_going (result-neutral: the resume accepts it) records the round; nothing is learned,
    # though failure_reward 0.0 with keep_regardless would have kept the "best" failed self-edit.
    going = recipe.model_copy(update={"rl": recipe.rl.model_copy(update={"keep_going": True})})
    out = io.StringIO()
    with one_thread():
        train(going, run, resume=True, console=Console(file=out, width=300))
    assert "no usable evaluation of 2" in out.getvalue() and "going on (rl.keep_going)" in out.getvalue()
    m = strict_json((run / "round_0" / "metrics.json").read_text())
    assert m["n_failed"] == m["n_evaluations"] == 2 and m["n_kept"] == 0 and m["sft"] is None
    assert (run / "round_0" / "sft_rows.jsonl").read_text() == ""  # never an SFT row
    for path in run.rglob("*.json*"):
        for line in [path.read_text()] if path.suffix == ".json" else path.read_text().splitlines():
            strict_json(line)


def test_failed_self_edits_are_never_kept_even_with_a_failure_reward(tiny_squad_model, data_root, tmp_path):
    """One self-edit fails (no block), the other trains: with failure_reward above every real
    reward and keep_regardless, the failed one still never becomes an SFT row."""
    recipe = tiny_recipe(tiny_squad_model, data_root, data__n_train_passages=1, self_edit__k=2, inner__failure_reward=1.0, **NO_BLOCK)
    run = tmp_path / "run"
    _preseeded(run, recipe, ["1. A fact.\nHyperparameters:\n{\"lr\": 0.001}", "1. No block here."])
    with one_thread():
        train(recipe, run, resume=True, console=Console(file=io.StringIO()))
    m = strict_json((run / "round_0" / "metrics.json").read_text())
    assert m["n_failed"] == 1 and m["n_kept"] == 1
    (row,) = [strict_json(line) for line in (run / "round_0" / "sft_rows.jsonl").read_text().splitlines()]
    assert row["completion"].startswith("1. A fact.")


def test_a_judge_answering_401_stops_the_run_with_exit_3_and_the_reason(tiny_squad_model, data_root, tmp_path, monkeypatch):
    var = "SEAL_TEST_USER_ERRORS_401_KEY"
    monkeypatch.setenv(var, "sk-wrong-key")
    run = tmp_path / "run"
    with JudgeServer(lambda call: Reply(status=401)) as server:
        judge = dict(qa__grader="judge", qa__judge__base_url=server.url, qa__judge__api_key_env=var, qa__judge__max_retries=0)
        with one_thread():
            res = seal(*train_args(tiny_squad_model, data_root, "--run-dir", str(run), **judge))
    line = one_line_error(res, exit_code=3)
    assert "no usable evaluation of 2" in line and "none of their" in line and "HTTP 401" in line and var in line
    assert "sk-wrong-key" not in res.output
    assert not (run / "round_0" / "metrics.json").exists()
    assert len((run / "journal.jsonl").read_text().splitlines()) == 3  # baseline + 2 evaluations, journaled
