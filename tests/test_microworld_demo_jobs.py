"""``seal microworld demo --jobs 2`` (the bench's sources that need no round benched in a second
process while the rounds train) gives the one-process demo's results: same train journal and
metrics, same bench journal (record by record, in order), self-edits and statistics; only
timings differ. On a tiny world pretrained in seconds (tests/test_microworld.py's TINY)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seal.cli import app
from seal.microworld.demo import last_side_step
from seal.rundir import read_jsonl

#: tests/test_microworld.py's 20 k-parameter world (it cannot copy: both copy gates open at 0).
TINY = dict(
    n_train=8, n_eval=8, n_memory=20, memory_epochs=2, n_demos=40, vocab_size=400, hidden_size=32,
    num_layers=1, num_heads=2, intermediate_size=64, batch_size=8, warmup_steps=2, log_every=5,
    n_copy_eval=2, max_length=256, copy_block_steps=3, copy_min_steps=0, n_check_people=4,
    main_copy_docs=8, copy_gate=0.0, min_copy_precision=0.0,
)  # fmt: skip

#: Fields that are wall-clock measurements, not results.
TIMINGS = {"seconds", "seconds_per_evaluation", "timing"}


def untimed(obj, run_dir: Path):
    """``obj`` without timing fields (at any depth), its run directory's path written ``RUN``
    (round sources name their policy by path)."""
    if isinstance(obj, dict):
        return {k: untimed(v, run_dir) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [untimed(v, run_dir) for v in obj]
    return obj.replace(str(run_dir), "RUN") if isinstance(obj, str) else obj


def tiny_overrides(tmp_path: Path) -> list[str]:
    """The reduced-to-nothing demo on the tiny world (cached under ``tmp_path``)."""
    return [f"microworld.{k}={v}" for k, v in TINY.items()] + [
        f"microworld.cache_dir={tmp_path / 'mw'}", "data.n_train_passages=3", "data.n_eval_passages=4", "rl.rounds=2",
        "self_edit.k=2", "self_edit.max_new_tokens=32", "inner.batch_adapters=2", "rl.reward_threshold=-1", "rl.sft.epochs=1",
    ]  # fmt: skip


def demo(tmp_path: Path, jobs: int) -> Path:
    """``seal microworld demo --jobs <jobs>`` into ``tmp_path/jobs<jobs>``."""
    run_dir = tmp_path / f"jobs{jobs}"
    overrides = tiny_overrides(tmp_path)
    res = CliRunner().invoke(app, ["microworld", "demo", *overrides, "--run-dir", str(run_dir), "--jobs", str(jobs)])
    assert res.exit_code == 0, res.output
    return run_dir


@pytest.mark.slow  # two tiny demos, about 30 s on 2 shared cores
def test_two_jobs_give_the_one_process_demos_results(tmp_path):
    one, two = demo(tmp_path, 1), demo(tmp_path, 2)
    assert not (one / "bench-side").exists() and (two / "bench-side").is_dir()
    for name in ("metrics.jsonl", "journal.jsonl", "bench/journal.jsonl"):
        assert untimed(read_jsonl(two / name), two) == untimed(read_jsonl(one / name), one), name
    # what the second process journaled (all, part or, stopped early on this tiny run, nothing)
    # was copied in, not recomputed
    step = last_side_step(two / "bench-side", 2)
    side = read_jsonl(step / "journal.jsonl") if step else []
    assert read_jsonl(two / "bench" / "journal.jsonl")[: len(side)] == side
    for path in sorted((one / "bench" / "self_edits").glob("*.json")):
        assert (two / "bench" / "self_edits" / path.name).read_text().replace(str(two), str(one)) == path.read_text()
    results = [untimed(json.loads((d / "bench" / "results.json").read_text()), d) for d in (one, two)]
    assert results[0] == results[1]


@pytest.mark.slow  # a tiny demo, then the side steps and the bench again (about 30 s)
def test_side_steps_bench_finished_rounds_and_the_main_bench_reuses_the_last(tmp_path):
    """Deterministically what the race of a real two-job demo does: with round 0 of 2 finished,
    the second process benches the recipe's own sources, then round 1's policy; the main
    process's bench, once round 1 has finished, computes round 2's only and equals a
    one-process bench."""
    import shutil

    from seal.bench.run import bench
    from seal.config import load_recipe
    from seal.microworld.demo import side_bench

    one = demo(tmp_path, 1)
    run = tmp_path / "pipelined"
    shutil.copytree(one, run, ignore=shutil.ignore_patterns("bench"))
    metrics = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(metrics[0])  # as while round 1 trains
    side_bench("recipes/bench_microworld_cpu.yaml", run, 2, tiny_overrides(tmp_path))
    assert {row.get("source_label") for row in read_jsonl(run / "bench-side" / "round-1" / "journal.jsonl")} - {None} == {
        "passage only", "policy round 0 (base)", "oracle (world generator)", "policy round 1",
    }  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(metrics))  # round 1 finished
    recipe = load_recipe("recipes/bench_microworld_cpu.yaml", tiny_overrides(tmp_path) + [f"bench.train_run={run}"])
    bench(recipe, run / "bench", reuse=last_side_step(run / "bench-side", 2))
    side = read_jsonl(run / "bench-side" / "round-1" / "journal.jsonl")
    journal = read_jsonl(run / "bench" / "journal.jsonl")
    assert journal[: len(side)] == side and {row.get("source_label") for row in journal[len(side) :]} == {"policy round 2"}
    assert untimed(journal, run) == untimed(read_jsonl(one / "bench" / "journal.jsonl"), one)
    results = [untimed(json.loads((d / "bench" / "results.json").read_text()), d) for d in (one, run)]
    assert results[0] == results[1]


def test_pretraining_on_two_threads_writes_the_same_weights(tmp_path):
    """What lets the two-job demo pretrain on both threads: the weights (and the copy checks,
    sampled from them) equal one thread's, bit for bit. At the real model's width (128) and
    batch, so the products are big enough for torch to split them across the threads."""
    import torch

    from seal.microworld.config import PretrainConfig
    from seal.microworld.pretrain import pretrain

    wide = {**TINY, "hidden_size": 128, "intermediate_size": 384, "num_heads": 4, "batch_size": 16, "memory_epochs": 1}
    metas, threads_before = [], torch.get_num_threads()
    for threads in (1, 2):
        out = pretrain(tmp_path / f"threads{threads}", PretrainConfig(**wide, num_threads=threads), log=lambda _: None)
        metas.append(json.loads((out / "meta.json").read_text()))
    assert torch.get_num_threads() == threads_before  # pretraining restores the process's threads
    assert (tmp_path / "threads1" / "model" / "model.safetensors").read_bytes() == (tmp_path / "threads2" / "model" / "model.safetensors").read_bytes()
    for key in ("loss_history", "copy_checks", "copy_skill", "memory_qa_accuracy", "steps"):
        assert untimed(metas[0][key], tmp_path) == untimed(metas[1][key], tmp_path), key


def test_the_demo_pretrains_on_two_threads_only_with_two_idle_cores_and_unless_told_otherwise():
    from seal.config import load_recipe
    from seal.microworld.demo import pretrain_threads, with_pretrain_threads

    assert [pretrain_threads(2, idle) for idle in (2.0, 1.8, 1.5, 0.2)] == [2, 2, 1, 1]
    assert pretrain_threads(1, 2.0) == 1
    recipe = load_recipe("recipes/microworld_cpu.yaml", [])
    two = with_pretrain_threads(recipe, 2)
    assert two.microworld.num_threads == 2 and two.microworld.entry_dir() == recipe.microworld.entry_dir()  # same cache entry
    told = load_recipe("recipes/microworld_cpu.yaml", ["microworld.num_threads=1"])
    assert with_pretrain_threads(told, 2).microworld.num_threads == 1
