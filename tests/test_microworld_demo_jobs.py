"""``seal microworld demo --jobs 2`` (the bench's sources that need no round benched in a second
process while the rounds train) gives the one-process demo's results: same train journal and
metrics, same bench journal (record by record, in order), self-edits and statistics; only
timings differ. On a tiny world pretrained in seconds (tests/test_microworld.py's TINY)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from seal.cli import app
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


def demo(tmp_path: Path, jobs: int) -> Path:
    run_dir = tmp_path / f"jobs{jobs}"
    overrides = [f"microworld.{k}={v}" for k, v in TINY.items()] + [
        f"microworld.cache_dir={tmp_path / 'mw'}", "data.n_train_passages=3", "data.n_eval_passages=4", "rl.rounds=2",
        "self_edit.k=2", "self_edit.max_new_tokens=32", "inner.batch_adapters=8", "rl.reward_threshold=-1", "rl.sft.epochs=1",
    ]  # fmt: skip
    res = CliRunner().invoke(app, ["microworld", "demo", *overrides, "--run-dir", str(run_dir), "--jobs", str(jobs)])
    assert res.exit_code == 0, res.output
    return run_dir


def test_two_jobs_give_the_one_process_demos_results(tmp_path):
    one, two = demo(tmp_path, 1), demo(tmp_path, 2)
    assert not (one / "bench-side").exists()
    side = read_jsonl(two / "bench-side" / "journal.jsonl")
    # the second process benched the training-independent sources, and only those
    assert side and {row.get("source_label") for row in side} - {None} == {"passage only", "policy round 0 (base)", "oracle (world generator)"}
    for name in ("metrics.jsonl", "journal.jsonl", "bench/journal.jsonl"):
        assert untimed(read_jsonl(two / name), two) == untimed(read_jsonl(one / name), one), name
    bench = read_jsonl(two / "bench" / "journal.jsonl")
    assert bench[: len(side)] == side  # copied in, not recomputed
    assert {row.get("source_label") for row in bench} >= {"policy round 1", "policy round 2"}
    for path in sorted((one / "bench" / "self_edits").glob("*.json")):
        assert (two / "bench" / "self_edits" / path.name).read_text().replace(str(two), str(one)) == path.read_text()
    results = [untimed(json.loads((d / "bench" / "results.json").read_text()), d) for d in (one, two)]
    assert results[0] == results[1]
