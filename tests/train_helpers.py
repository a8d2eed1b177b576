"""Helpers shared by the train, fault and distributed tests: the smallest recipe that runs a
real ReST-EM round, runs in-process or as ``python -m seal.cli`` subprocesses, and journal
and metrics comparisons that leave out timings (``seal.train.TIMING_FIELDS``)."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from seal.config import Recipe, load_recipe
from seal.rundir import read_jsonl
from seal.train import TIMING_FIELDS

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "squad_tiny_cpu.yaml"


def tiny_overrides(model: Path, data_root: Path, **extra) -> list[str]:
    """squad_tiny_cpu.yaml cut to the bone: 2 real SQuAD passages x 3 self-edits x 1 repetition,
    1 epoch, one adapter per chunk (6 chunks to shard and to kill in the middle of), 1 round."""
    values = {
        "model.name_or_path": str(model),
        "model.build_tiny": "null",
        "data.root": str(data_root),
        "data.n_train_passages": 2,
        "self_edit.k": 3,
        "self_edit.max_new_tokens": 24,
        "self_edit.batch_size": 1,
        "inner.eval_times": 1,
        "inner.epochs": 1,
        "inner.batch_adapters": 1,
        "inner.max_length": 64,
        "qa.max_new_tokens": 8,
        "rl.rounds": 1,
        "rl.sft.max_length": 1024,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


def tiny_recipe(model: Path, data_root: Path, **extra) -> Recipe:
    return load_recipe(RECIPE, tiny_overrides(model, data_root, **extra))


@contextmanager
def one_thread():
    """Run torch single-threaded (the CI machine has 2 shared cores; oversubscribed OpenMP
    threads make a tiny run 5-10x slower). Results do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def seal_train_cmd(overrides: list[str], run_dir: Path | None = None, resume: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "seal.cli", "train", str(RECIPE), *overrides]
    if resume is not None:
        cmd += ["--resume", str(resume)]
    elif run_dir is not None:
        cmd += ["--run-dir", str(run_dir)]
    return cmd


def run_cli(cmd: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout)


def journal(run_dir: Path) -> list[dict]:
    """The run's journal records without timing fields (``journal.jsonl`` only)."""
    rows = read_jsonl(Path(run_dir) / "journal.jsonl")
    for row in rows:
        for key in TIMING_FIELDS["journal"]:
            row.pop(key, None)
    return rows


def _drop(d: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        if isinstance(d.get(head), dict):
            _drop(d[head], rest)
    else:
        d.pop(head, None)


def metrics(run_dir: Path) -> list[dict]:
    """``metrics.jsonl`` without timing fields, run-directory paths replaced by ``<run>``."""
    rows = [copy.deepcopy(m) for m in read_jsonl(Path(run_dir) / "metrics.jsonl")]
    for m in rows:
        for key in TIMING_FIELDS["metrics"]:
            _drop(m, key)
        for key in ("policy", "next_policy"):
            m[key] = m[key].replace(str(run_dir), "<run>")
    return rows


def journal_text(run_dir: Path) -> str:
    return (Path(run_dir) / "journal.jsonl").read_text()


def count_evaluations(path: Path) -> int:
    """Complete evaluation lines in a journal file (no parsing of a partial last line)."""
    if not path.exists():
        return 0
    n = 0
    for line in path.read_text().splitlines():
        try:
            n += json.loads(line).get("kind") == "evaluation"
        except ValueError:
            pass
    return n


def kill_when(cmd: list[str], log: Path, reached, what: str, timeout_s: float = 240, poll_s: float = 0.01) -> subprocess.Popen:
    """Run ``cmd`` (stdout and stderr to ``log``) and SIGKILL it as soon as ``reached()`` is true.

    Fails the test if the process exits first or ``reached()`` stays false for ``timeout_s``
    seconds (``what`` names the awaited event). Returns the finished (killed) process.
    """
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        try:
            while not reached():
                if proc.poll() is not None:
                    pytest.fail(f"{cmd[3]} exited ({proc.returncode}) before it could be killed:\n{log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{what} did not happen in time")
                time.sleep(poll_s)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return proc
