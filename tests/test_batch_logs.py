"""What a batch log (stdout in a file, as under ``sbatch --output``) shows: seal's progress
lines inside each stage while it runs, and none of the libraries' output; tables that do not
wrap; experiment tracking (``report_to``) written to TensorBoard event files and continued by
a resume (W&B offline when wandb is installed)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time

import pytest
from rich.console import Console
from rich.table import Table
from train_helpers import (
    REPO,
    one_thread,
    seal_train_cmd,
    subprocess_env,
    tiny_overrides,
    tiny_recipe,
)

from seal.config import RecipeError
from seal.display import LineProgress, print_table, progress_bar
from seal.rundir import RunDir
from seal.tracking import Tracking, flatten, markdown_table
from seal.train import train

PROGRESS = re.compile(r"^round 0: (sampling self-edits|inner-loop evaluations|policy update \(SFT steps\))  (\d+)/(\d+) \(\d+ %\)", re.M)


def test_line_progress_prints_a_line_per_tenth_and_at_the_end():
    out = io.StringIO()
    console = Console(file=out, width=80)
    bar = progress_bar(console)
    assert isinstance(bar, LineProgress)  # a file is no terminal
    with bar:
        task = bar.add_task("round 3: inner-loop evaluations", total=40, completed=10)  # 10 journaled earlier
        for _ in range(30):
            bar.advance(task)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("round 3: inner-loop evaluations  10/40 (25 %)") and "ETA ?" in lines[0]
    done = [int(re.search(r"  (\d+)/40", line).group(1)) for line in lines]
    assert done == [10, 14, 18, 22, 26, 30, 34, 38, 40]  # every 4 units (a tenth of 40), then the end
    assert "/s" in lines[1] and "ETA" in lines[1] and "ETA" not in lines[-1]  # a rate once units were done here


def test_line_progress_prints_a_line_a_minute_while_a_long_unit_runs():
    out = io.StringIO()
    bar = LineProgress(Console(file=out, width=80), every_seconds=60.0)
    waiting = bar.add_task("round 0: inner-loop evaluations", total=4)
    finished = bar.add_task("round 0: sampling self-edits", total=0)  # a resumed stage with nothing left
    start = bar._marks[waiting].last
    bar.tick(start + 30)
    assert len(out.getvalue().splitlines()) == 2  # the two start lines, nothing due yet
    bar.tick(start + 61)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("round 0: inner-loop evaluations  0/4 (0 %)") and "elapsed 0:01:01" in lines[-1]
    bar.advance(waiting, 4)
    bar.tick(start + 200)
    assert [line.split("  ")[0] for line in out.getvalue().splitlines()[3:]] == ["round 0: inner-loop evaluations"]  # its last line only
    assert finished is not None


def test_tables_do_not_wrap_in_a_log():
    out = io.StringIO()
    table = Table(title="t")
    for header in ("round", "similarity within passage", "r(coverage, reward)", "collapse warning", "styles kept"):
        table.add_column(header)
    table.add_row("0", "0.25", "+0.10", "distinct-2 0.150 below 0.25", "paraphrase 40 %, qa 30 %, list 20 %")
    print_table(Console(file=out, width=80), table)
    text = out.getvalue()
    for cell in ("similarity within passage", "r(coverage, reward)", "distinct-2 0.150 below 0.25", "paraphrase 40 %, qa 30 %, list 20 %"):
        assert cell in text
    assert len([line for line in text.splitlines() if line.strip()]) == 4  # title, header, its rule, one row: nothing wrapped


def test_flatten_keeps_the_numbers():
    assert flatten({"a": 1, "b": {"c": 0.5, "d": None, "e": "x", "f": True}, "g": [1]}, "round/") == {"round/a": 1.0, "round/b/c": 0.5, "round/b/f": 1.0}


def test_trainers_get_the_run_s_trackers_and_tensorboard_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    tracking = Tracking(["tensorboard", "trackio"], RunDir(tmp_path), info={"run_name": "r"})
    with tracking.for_trainer("sft/round_1") as report_to:
        assert report_to == ["tensorboard"]  # trackio's callback would finish the run after one SFT
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tracking" / "tensorboard" / "r" / "sft" / "round_1")
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ
    with tracking.for_trainer("grpo", last=True) as report_to:
        assert report_to == ["tensorboard", "trackio"]
    with Tracking([]).for_trainer("grpo") as report_to:
        assert report_to == []
    table = markdown_table(["passage", "reward", "text"], [{"passage": 0, "reward": 0.25, "text": "a | b\nc"}])
    assert table.splitlines() == ["| passage | reward | text |", "|---|---|---|", "| 0 | 0.250 | a \\| b c |"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_batch_log_shows_progress_inside_each_stage_while_it_runs(tiny_squad_model, data_root, tmp_path):
    """`seal train ... > log.txt`: the log is read while the run runs."""
    run, log, err = tmp_path / "run", tmp_path / "log.txt", tmp_path / "err.txt"
    env = subprocess_env(TRANSFORMERS_VERBOSITY="warning")  # the libraries as chatty as by default
    env.pop("PYTHONUNBUFFERED")  # as under sbatch: seal's lines must reach the file by themselves
    cmd = seal_train_cmd(tiny_overrides(tiny_squad_model, data_root, self_edit__k=2), run)
    with open(log, "w") as out, open(err, "w") as errors:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=errors)
        try:
            seen_while_running = None
            deadline = time.monotonic() + 240
            while proc.poll() is None and time.monotonic() < deadline:
                match = PROGRESS.search(log.read_text())
                if match is not None and proc.poll() is None:
                    seen_while_running = match.group(0)
                    break
                time.sleep(0.02)
            assert proc.wait(timeout=240) == 0, log.read_text() + err.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert seen_while_running is not None, f"no progress line appeared while the run ran:\n{text}"
    stages = {m.group(1): [] for m in PROGRESS.finditer(text)}
    for m in PROGRESS.finditer(text):
        stages[m.group(1)].append((int(m.group(2)), int(m.group(3))))
    assert set(stages) == {"sampling self-edits", "inner-loop evaluations", "policy update (SFT steps)"}
    for counts in stages.values():
        assert counts[0][0] == 0 and counts[-1][0] == counts[-1][1] and len(counts) >= 2  # a line at the start, within, at the end
    # The libraries' output is in the run's log file, not on the console.
    for noise in ("{'loss'", "Loading weights", "Writing model shards", "Tokenizing train dataset", "FutureWarning"):
        assert noise not in text, noise
        assert noise not in err.read_text(), noise
    run_log = (run / "log.txt").read_text()
    assert "seal.trainer" in run_log and '"loss"' in run_log and "FutureWarning" in run_log


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_report_to_tensorboard_holds_the_round_metrics_and_a_resume_continues_the_run(tiny_squad_model, data_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    recipe = tiny_recipe(tiny_squad_model, data_root, report_to="[tensorboard]", self_edit__k=2)
    with one_thread():
        train(recipe, run, console=Console(file=io.StringIO()))
        first = json.loads((run / "run.json").read_text())["tracking"]
        train(recipe.model_copy(update={"rl": recipe.rl.model_copy(update={"rounds": 2})}), run, resume=True, console=Console(file=io.StringIO()))
    tracking = json.loads((run / "run.json").read_text())["tracking"]
    assert tracking == first  # the same tracker run: name, directory, W&B id
    events = run / tracking["tensorboard_dir"]
    assert len(list(events.glob("events.out.tfevents.*"))) == 2  # one file per launch, one run
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for name in ("mean_reward", "n_kept", "baseline_accuracy", "sft/train_loss", "diagnostics/distinct_2", "timing/evaluations_s"):
        logged = acc.Scalars(f"round/{name}")
        assert [e.step for e in logged] == [0, 1], name
        head, _, tail = name.partition("/")
        expected = [m[head][tail] if tail else m[head] for m in metrics]
        assert [e.value for e in logged] == pytest.approx(expected, rel=1e-6), name
    assert {"self_edits/text_summary", "recipe/text_summary"} <= set(acc.Tags()["tensors"])
    for r in range(2):  # TRL's SFT losses, one directory per round's policy update
        sft = EventAccumulator(str(events / "sft" / f"round_{r}"))
        sft.Reload()
        assert sft.Scalars("train/loss")


def test_a_tracker_that_is_not_installed_is_refused_before_anything_is_written(tiny_squad_model, data_root, tmp_path):
    import importlib.util

    missing = next((n for n in ("mlflow", "trackio", "wandb") if importlib.util.find_spec(n) is None), None)
    if missing is None:
        pytest.skip("every tracker is installed")
    recipe = tiny_recipe(tiny_squad_model, data_root, report_to=f"[{missing}]")
    with pytest.raises(RecipeError, match=f"report_to.*{missing}.*install"):
        train(recipe, tmp_path / "run", console=Console(file=io.StringIO()))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_report_to_wandb_offline_resumes_the_same_run(tiny_squad_model, data_root, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    recipe = tiny_recipe(tiny_squad_model, data_root, report_to="[wandb]", self_edit__k=2)
    with one_thread():
        train(recipe, run, console=Console(file=io.StringIO()))
        train(recipe.model_copy(update={"rl": recipe.rl.model_copy(update={"rounds": 2})}), run, resume=True, console=Console(file=io.StringIO()))
    run_id = json.loads((run / "run.json").read_text())["tracking"]["wandb_id"]
    offline = sorted((run / "tracking" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 2  # both launches logged to the run of the recorded id


def test_tracking_keys_are_result_neutral_and_the_backend_is_not(tiny_squad_model, data_root, tmp_path):
    import yaml

    from seal.config import recipe_to_dict
    from seal.train import check_resume

    recipe = tiny_recipe(tiny_squad_model, data_root)
    old = recipe_to_dict(recipe)
    del old["report_to"], old["tracking"]  # a run recorded before tracking existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    run = RunDir(tmp_path)
    check_resume(run, recipe_to_dict(recipe))
    check_resume(run, recipe_to_dict(tiny_recipe(tiny_squad_model, data_root, report_to="[tensorboard, wandb]", tracking__project="p", tracking__table_rows=5)))
    with pytest.raises(RecipeError, match="self_edit.backend"):
        check_resume(run, recipe_to_dict(tiny_recipe(tiny_squad_model, data_root, model__device="auto", self_edit__backend="vllm")))
