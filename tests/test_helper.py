"""``seal.helper``: a helper process takes chunks of a Scorer's evaluations; the records, and the
journal record by record in order, are those of the Scorer alone (timing aside). The main
process computes a chunk the helper claimed itself when the helper is gone or too slow."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from seal.config import InnerLoopConfig, LoraConfig, ModelConfig, QAConfig, Recipe
from seal.helper import Helper
from seal.models import load_policy
from seal.scoring import Evaluation, EvaluationRecord, RoundKey, Scorer
from seal.tasks.registry import make_task


def timeless(records: list[EvaluationRecord]) -> list[dict]:
    return [{k: v for k, v in record.to_json().items() if k != "seconds"} for record in records]


@pytest.fixture
def scoring(tiny_squad_model, squad_train):
    """A recipe, its learner and five evaluations in chunks of two (2, 2, 1)."""
    recipe = Recipe(
        model=ModelConfig(name_or_path=str(tiny_squad_model), device="cpu"),
        inner=InnerLoopConfig(lora=LoraConfig(rank=4, alpha=8), epochs=1, lr=1e-3, max_length=64, batch_adapters=2),
        qa=QAConfig(grader="contains", max_new_tokens=4),
    )
    model, tok = load_policy(recipe.model)
    evaluations = [
        Evaluation(RoundKey(0, p, e, 0), squad_train[p], [f"{squad_train[p].title}: fact {e}."], seed=10 * p + e, baseline_accuracy=0.0)
        for p in range(2) for e in range(3) if (p, e) != (1, 2)
    ]  # fmt: skip
    return recipe, model, tok, evaluations


def scorer(recipe: Recipe, model, tok, journal, share=None) -> Scorer:
    return Scorer(model, tok, recipe.inner, recipe.qa, make_task(recipe), journal=journal, share=share)


def wait_for(found, what: str, timeout_s: float = 180) -> None:
    t0 = time.time()
    while not found():
        assert time.time() - t0 < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.05)


def claims(root: Path, i: int) -> list[Path]:
    return list(root.glob(f"offer-*/claim-{i}"))


@pytest.mark.slow  # a second Python process (imports torch and transformers), about 15 s
def test_a_helper_process_takes_chunks_and_the_journal_is_the_scorer_alones(scoring, tmp_path, monkeypatch):
    recipe, model, tok, evaluations = scoring
    monkeypatch.setattr("seal.helper.PATIENCE", 1e6)  # a fresh process's first chunk is slow: wait for it
    alone_journal: list[EvaluationRecord] = []
    alone = scorer(recipe, model, tok, alone_journal.append).score(evaluations)

    root, stop = tmp_path / "exchange", tmp_path / "stop"
    code = f"from pathlib import Path; from seal.helper import serve_while; serve_while(Path({str(root)!r}), lambda: not Path({str(stop)!r}).exists())"
    helper = subprocess.Popen([sys.executable, "-c", code])
    journal: list[EvaluationRecord] = []

    def journal_and_wait(record: EvaluationRecord) -> None:
        journal.append(record)
        if len(journal) == 1:  # the first chunk is done here: let the helper claim the second
            wait_for(lambda: claims(root, 1) or helper.poll() is not None, "the helper's claim")

    try:
        share = Helper(root, alive=lambda: helper.poll() is None).share(recipe, recipe.model, recipe.model.name_or_path)
        shared = scorer(recipe, model, tok, journal_and_wait, share).score(evaluations)
    finally:
        stop.touch()
        helper.wait(timeout=60)
    assert helper.returncode == 0
    assert share.helped >= 2  # the second chunk at least, computed by the helper
    assert timeless(shared) == timeless(alone)
    assert timeless(journal) == timeless(alone_journal)  # in chunk order, whoever computed them
    assert not list(root.iterdir())  # the offer withdrawn


@pytest.mark.parametrize("alive", [False, True], ids=["helper-gone", "helper-too-slow"])
def test_the_main_process_computes_a_chunk_its_helper_claimed_but_never_wrote(scoring, tmp_path, alive):
    """A helper that claimed the second chunk and died (or hangs): the main process computes it
    (at once, or after PATIENCE times its own chunk time) and nothing is missing or doubled."""
    recipe, model, tok, evaluations = scoring
    alone = scorer(recipe, model, tok, None).score(evaluations)
    root, journal = tmp_path / "exchange", []

    def journal_and_claim(record: EvaluationRecord) -> None:
        journal.append(record)
        if len(journal) == 1:  # a helper's claim on the second chunk, never computed
            (job,) = root.glob("offer-*")
            (job / "claim-1").write_text("0")

    share = Helper(root, alive=lambda: alive).share(recipe, recipe.model, recipe.model.name_or_path)
    shared = scorer(recipe, model, tok, journal_and_claim, share).score(evaluations)
    assert share.helped == 0
    assert timeless(shared) == timeless(alone) and timeless(journal) == timeless(alone)


def test_no_chunks_are_offered_with_an_llm_judge(tmp_path):
    model = ModelConfig(name_or_path="m")
    assert Helper(tmp_path).share(Recipe(model=model, qa=QAConfig(grader="judge")), model, "m") is None
    assert Helper(tmp_path).share(Recipe(model=model, qa=QAConfig(grader="contains")), model, "m") is not None
