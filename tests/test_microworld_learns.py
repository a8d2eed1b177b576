"""SEAL visibly learns in the microworld: a reduced `seal microworld demo`, through the CLI.

The world and its policy are the demo's own (default ``PretrainConfig``, about 5-7 minutes of
pretraining on one idle core, once; the cache under ``.cache/microworld`` is reused by later runs
and by the demo). The RL part is reduced (``seal.microworld.demo.REDUCED``): 64 RL-training
people, 5 self-edits each, 3 rounds (two ReST-EM updates, the second updated policy's samples
scored), and a 48-passage bench.

The test fails for the right reason: it first asserts the cached policy's copy skill (without
it no self-edit can carry a value, and RL has nothing to improve), then the reward gain.
Thresholds come from the spread measured with ``benchmarks/microworld_seeds.py`` over seeds
0-4 (seed = the world's and the run's); see ``COPY_SPREAD`` and ``SPREAD``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from train_helpers import one_thread
from typer.testing import CliRunner

from seal.cli import app
from seal.config import load_recipe
from seal.microworld.config import CopySkillError
from seal.microworld.demo import REDUCED, seed_overrides
from seal.prepare import ensure_model
from seal.rundir import read_jsonl

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("SEAL_MICROWORLD_CACHE", REPO / ".cache" / "microworld"))

#: Value precision of the pretrained policy's sampled self-edits on 48 held-out people, world
#: seeds 0-4, measured with benchmarks/microworld_seeds.py on the 2-core dev box (AMD EPYC,
#: family 26 model 2; torch 2.13.0 CPU, 1 thread), copy gate 0.40. A policy that never learned
#: to copy reads 0.02-0.05.
COPY_SPREAD = {0: 0.708, 1: 0.719, 2: 0.567, 3: 0.705, 4: 0.669}
#: Half the smallest measured copy precision: 0.28.
COPY_THRESHOLD = min(COPY_SPREAD.values()) / 2
#: Mean reward of round 2's samples minus round 0's (points of accuracy), this reduction, same
#: box and seeds. Round 0 / 1 / 2: 12.8/27.8/32.6, 21.1/35.3/41.6, 23.8/32.8/37.3,
#: 33.6/42.0/49.6, 20.8/28.4/36.9.
SPREAD = {0: 19.77, 1: 20.53, 2: 13.55, 3: 16.01, 4: 16.14}
#: Half the smallest measured gain: 6.8 points.
THRESHOLD = min(SPREAD.values()) / 2


def reduced_overrides(seed: int, cache_dir: Path = CACHE) -> list[str]:
    """Overrides of both demo recipes for the reduced run."""
    return seed_overrides(seed, cache_dir) + REDUCED


def run_reduced(seed: int, run_dir: Path) -> tuple[list[dict], Path]:
    """The reduced demo; returns the train run's metrics rows and the bench directory."""
    with one_thread():
        res = CliRunner().invoke(app, ["microworld", "demo", *reduced_overrides(seed), "--run-dir", str(run_dir)])
    assert res.exit_code == 0, res.output
    return read_jsonl(run_dir / "metrics.jsonl"), run_dir / "bench"


@pytest.mark.slow
@pytest.mark.timeout(3000)  # a hang guard, not a speed goal (pretraining alone: 6-20 min, by load)
def test_reduced_demo_improves_the_reward(tmp_path):
    # 1. the base policy can copy values from a passage (pretrains the world once if needed)
    recipe = load_recipe(REPO / "recipes" / "microworld_cpu.yaml", reduced_overrides(0))
    with one_thread():
        try:
            ensure_model(recipe)
        except CopySkillError as e:
            pytest.fail(f"pretraining did not learn to copy (before any RL): {e}")
    skill = json.loads((recipe.microworld.entry_dir() / "meta.json").read_text())["copy_skill"]
    assert skill["value_precision"] > COPY_THRESHOLD, f"pretraining did not learn to copy: {skill}"

    # 2. ReST-EM improves the reward
    metrics, bench = run_reduced(0, tmp_path / "demo")
    rewards = [100 * m["mean_reward"] for m in metrics]
    assert [m["round"] for m in metrics] == [0, 1, 2]
    assert rewards[2] - rewards[0] > THRESHOLD, f"RL did not improve the reward enough: {rewards}"
    assert all(m["n_failed"] == 0 for m in metrics)
    # inner.learner: base -- every round questions the same round-0 model, so baselines agree
    assert len({m["baseline_accuracy"] for m in metrics}) == 1

    # the bench scored the base policy and each round's policy on held-out people
    results = json.loads((bench / "results.json").read_text())
    cells = {c["source"]: c for c in results["protocols"]["single"]["tables"]["microworld 1M"]["cells"]}
    assert {"policy round 0 (base)", "policy round 1", "policy round 2", "policy round 3"} <= set(cells)
    assert cells["oracle (world generator)"]["accuracy"]["value"] > cells["passage only"]["accuracy"]["value"]
    assert (bench / "plots" / "rounds.png").stat().st_size > 10_000
    assert "Did ReST-EM improve the policy?" in (bench / "report.md").read_text().split("## Answer", 1)[1].split("\n\n")[1]
