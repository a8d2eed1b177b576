"""``seal train`` under ``accelerate launch`` with 2 CPU processes (gloo): the merged journal
and the round's metrics equal a 1-process run's with the same seed; a killed 2-process run
loses nothing and resumes with 1 process; bad input stops every rank. Plus the launch
configs and the sharding rules."""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from train_helpers import (
    REPO,
    count_evaluations,
    journal,
    metrics,
    one_thread,
    run_cli,
    seal_train_cmd,
    subprocess_env,
    tiny_overrides,
    tiny_recipe,
)

from seal.distributed import Dist, get_dist
from seal.journal import journal_key, read_journal
from seal.rundir import RunDir
from seal.stages import baseline_chunks
from seal.train import train

LAUNCH = REPO / "launch"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_cmd(n: int, overrides: list[str], **target) -> list[str]:
    """``accelerate launch`` of ``python -m seal.cli train`` with ``n`` processes (the multi-GPU
    config; on a CPU-only machine each process joins a gloo group)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(LAUNCH / "accelerate_multi_gpu.yaml"),
        "--num_processes", str(n), "--main_process_port", str(free_port()),
        *seal_train_cmd(overrides, **target)[1:],
    ]  # fmt: skip


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts each rank in its own session)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def without_sft(rows: list[dict]) -> list[dict]:
    """Round metrics minus the policy update's stats (data-parallel: they depend on the process count)."""
    return [{k: v for k, v in m.items() if k != "sft"} for m in rows]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_squad_model, data_root) -> Path:
    run = tmp_path_factory.mktemp("one") / "run"
    with one_thread():
        train(tiny_recipe(tiny_squad_model, data_root), run, console=Console(file=io.StringIO()))
    return run


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_two_processes_equal_one(one_process, tiny_squad_model, data_root, tmp_path):
    run = tmp_path / "run"
    res = run_cli(accelerate_cmd(2, tiny_overrides(tiny_squad_model, data_root), run_dir=run), timeout=280)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 processes (gloo)" in res.stdout

    assert journal(run) == journal(one_process)  # identical content, timings aside
    assert without_sft(metrics(run)) == without_sft(metrics(one_process))
    m = json.loads((run / "round_0" / "metrics.json").read_text())
    assert m["timing"]["evaluations_computed_by_rank"] == [3, 3]  # both ranks worked, no overlap
    assert m["sft"]["rows"] == 2 and (run / "round_0" / "policy" / "config.json").exists()
    assert json.loads((run / "round_0" / "self_edits.json").read_text()) == json.loads((one_process / "round_0" / "self_edits.json").read_text())
    assert not list(run.glob("journal.rank*.jsonl"))  # merged into journal.jsonl
    launches = json.loads((run / "run.json").read_text())["launches"]
    assert launches == [{**launches[0], "world_size": 2, "backend": "gloo", "resume": False}]


@pytest.mark.distributed
@pytest.mark.timeout(400)
def test_fresh_passages_and_global_sft_batch_under_two_processes(tiny_squad_model, data_root, tmp_path):
    """``data.passage_schedule: fresh`` and ``rl.sft.global_batch_size`` under 2 processes: the
    same passages per round and the same round-0 journal as one process, and the policy
    update takes the same optimizer steps (2 rows, one step: accumulation 2 alone, 1 per process
    with two)."""
    overrides = tiny_overrides(tiny_squad_model, data_root, rl__rounds=2, rl__sft__global_batch_size=2, self_edit__k=2)
    overrides += ["data.passage_schedule=fresh"]
    one, two = tmp_path / "one", tmp_path / "two"
    res = run_cli(seal_train_cmd(overrides, run_dir=one), timeout=380)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res = run_cli(accelerate_cmd(2, overrides, run_dir=two), timeout=380)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for run in (one, two):
        ids = [(r["round"], r["passage_id"]) for r in journal(run) if r["kind"] == "baseline"]
        assert len({i for _, i in ids}) == 4 and [r for r, _ in ids] == [0, 0, 1, 1]  # 2 new passages a round
    assert [r for r in journal(two) if r["round"] == 0] == [r for r in journal(one) if r["round"] == 0]
    sft = {run: [m["sft"] for m in metrics(run)] for run in (one, two)}
    assert [(s["rows"], s["steps"], s["grad_accum_steps"]) for s in sft[one]] == [(2, 1, 2)] * 2
    assert [(s["rows"], s["steps"], s["grad_accum_steps"]) for s in sft[two]] == [(2, 1, 1)] * 2


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_two_processes_sharded_equal_one(one_process, tiny_squad_model, data_root, tmp_path):
    """``model.shard=fsdp``: the round's models are sharded over both processes (FSDP2), which
    sample, answer and evaluate everything in step; the main process alone journals, and the
    journal and round metrics equal the unsharded one-process run's."""
    run = tmp_path / "run"
    res = run_cli(accelerate_cmd(2, tiny_overrides(tiny_squad_model, data_root, model__shard="fsdp"), run_dir=run), timeout=280)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "sharded over 2 processes (FSDP2" in res.stdout
    assert journal(run) == journal(one_process)
    assert without_sft(metrics(run)) == without_sft(metrics(one_process))
    m = json.loads((run / "round_0" / "metrics.json").read_text())
    assert m["timing"]["evaluations_computed_by_rank"] == [6]  # every rank ran all 6, rank 0 recorded
    assert not list(run.glob("journal.rank*.jsonl"))


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_sharded_run_calls_the_judge_from_the_main_process_only(tiny_squad_model, data_root, tmp_path):
    """With the LLM judge, a sharded 2-process run sends the judge exactly the requests a
    1-process run sends (the other rank abstains) and journals the same grades."""
    try:
        from judge_server import JudgeServer
    except ImportError:  # tests/ became a package
        from tests.judge_server import JudgeServer

    key_env = "SEAL_TEST_SHARDED_JUDGE_KEY"
    runs, calls = {}, {}
    for name, n in (("one", 1), ("sharded", 2)):
        with JudgeServer() as server:
            judge = dict(qa__grader="judge", qa__judge__base_url=server.url, qa__judge__model="test-judge", qa__judge__api_key_env=key_env)
            overrides = tiny_overrides(tiny_squad_model, data_root, model__shard="fsdp", **judge)
            runs[name] = tmp_path / name
            cmd = accelerate_cmd(n, overrides, run_dir=runs[name]) if n > 1 else seal_train_cmd(overrides, run_dir=runs[name])
            res = run_cli(cmd, timeout=140, **{key_env: "sk-test"})
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
            calls[name] = len(server.calls)
    assert calls["sharded"] == calls["one"] > 0
    assert journal(runs["sharded"]) == journal(runs["one"])


@pytest.mark.distributed
@pytest.mark.faults
@pytest.mark.timeout(300)
def test_killed_two_process_run_resumes_with_one(one_process, tiny_squad_model, data_root, tmp_path):
    """SIGKILL the whole 2-process job once both ranks journaled an evaluation: each rank's
    finished evaluations survive in its own journal file, and a 1-process resume reads them
    all, computes only the rest, and ends with the uninterrupted run's journal and metrics."""
    run = tmp_path / "run"
    overrides = tiny_overrides(tiny_squad_model, data_root)
    log = tmp_path / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(accelerate_cmd(2, overrides, run_dir=run), cwd=REPO, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        try:
            while count_evaluations(run / "journal.jsonl") < 1 or count_evaluations(run / "journal.rank1.jsonl") < 1:
                if proc.poll() is not None:
                    pytest.fail(f"the job exited ({proc.returncode}) before it could be killed:\n{log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail("no evaluation journaled in time")
                time.sleep(0.01)
            kill_tree(proc.pid)  # the launcher and both ranks at once (a node dies)
        finally:
            if proc.poll() is None:
                kill_tree(proc.pid)
            proc.wait()
    assert not (run / "round_0" / "metrics.json").exists(), "killed too late"
    survived = {journal_key(r): r["seconds"] for r in read_journal(RunDir(run)) if r.get("kind") == "evaluation"}
    assert 2 <= len(survived) < 6

    res = run_cli(seal_train_cmd(overrides, resume=run))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert journal(run) == journal(one_process)
    assert metrics(run) == metrics(one_process)  # 1-process update on both sides: equal, sft included
    after = {journal_key(r): r["seconds"] for r in read_journal(RunDir(run)) if r.get("kind") == "evaluation"}
    assert all(after[k] == v for k, v in survived.items())  # read back, not recomputed
    assert not list(run.glob("journal.rank*.jsonl"))
    assert [x["world_size"] for x in json.loads((run / "run.json").read_text())["launches"]] == [2, 1]


@pytest.mark.distributed
@pytest.mark.timeout(200)
def test_two_processes_fail_together_on_bad_input(one_process, tiny_squad_model, data_root):
    """The main process decides (a fresh run into a directory that holds one): every rank
    raises the same error and exits, none is left waiting in a collective."""
    before = sorted(p.name for p in one_process.iterdir())
    res = run_cli(accelerate_cmd(2, tiny_overrides(tiny_squad_model, data_root), run_dir=one_process), timeout=180)
    assert res.returncode != 0
    assert (res.stdout + res.stderr).count("already holds a run") >= 2  # both ranks say why
    assert sorted(p.name for p in one_process.iterdir()) == before


# ----------------------------------------------------------------------------- units and configs


def test_single_process_dist_is_the_identity():
    d = get_dist()
    assert (d.rank, d.world_size, d.is_main) == (0, 1, True)
    assert d.gather({"a": 1}) == [{"a": 1}] and d.broadcast(3) == 3
    assert d.shard(list("abcde")) == list("abcde")
    with pytest.raises(KeyError):
        d.main_decides(lambda: {}["missing"])


def test_round_robin_sharding_covers_every_unit_once():
    ranks = []
    for r in range(3):
        d = object.__new__(Dist)
        d.rank, d.world_size = r, 3
        ranks.append(d.mine(8))
    assert ranks == [[0, 3, 6], [1, 4, 7], [2, 5]]


def test_baseline_chunks_depend_on_the_recipe_only():
    from seal.data import QA, Passage

    ps = [Passage(f"t{i}", "c", tuple(QA("q", "a") for _ in range(n))) for i, n in enumerate([3, 3, 5, 1, 9])]
    assert baseline_chunks(ps, 6) == [[0, 1], [2, 3], [4]]  # a passage over the limit goes alone
    assert baseline_chunks(ps, 100) == [[0, 1, 2, 3, 4]]


@pytest.mark.parametrize("name, kind, stage", [
    ("accelerate_single_gpu.yaml", "NO", None),
    ("accelerate_multi_gpu.yaml", "MULTI_GPU", None),
    ("accelerate_zero2.yaml", "DEEPSPEED", 2),
    ("accelerate_zero3.yaml", "DEEPSPEED", 3),
])  # fmt: skip
def test_launch_configs_load(name, kind, stage):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(LAUNCH / name))
    assert cfg.distributed_type.value == kind
    if stage is not None:
        ds_file = REPO / cfg.deepspeed_config["deepspeed_config_file"]
        ds = json.loads(ds_file.read_text())
        assert ds["zero_optimization"]["stage"] == stage
        assert ds["train_micro_batch_size_per_gpu"] == "auto"  # filled from rl.sft by the trainer
        assert cfg.deepspeed_config["zero3_init_flag"] is False  # inner-loop replicas load whole


def test_recipes_name_existing_launch_files():
    text = (REPO / "recipes" / "squad_qwen2.5-7b_restem.yaml").read_text()
    recipe = yaml.safe_load(text)
    assert (REPO / recipe["rl"]["sft"]["deepspeed"]).is_file()
    assert "launch/accelerate_multi_gpu.yaml" in text and (LAUNCH / "accelerate_multi_gpu.yaml").is_file()
    ds = json.loads((REPO / recipe["rl"]["sft"]["deepspeed"]).read_text())
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]


def test_slurm_script_is_valid_bash():
    script = LAUNCH / "slurm_multinode.sbatch"
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH --nodes" in text and "--machine_rank" in text and "--resume" in text
