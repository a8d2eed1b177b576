"""The pieces a ``seal train`` round is built from: typed journal records, chunks of adapters
retried in halves, self-edits saved and read back, and ``run_stage``'s resumption."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console
from train_helpers import tiny_recipe

from seal.config import QAConfig, SelfEditConfig
from seal.display import percent, progress_bar
from seal.distributed import get_dist
from seal.inner_loop import AdapterResult, adapter_chunks
from seal.rundir import RunDir, read_json_or_none, write_json_atomic
from seal.scoring import (
    BaselineRecord,
    Evaluation,
    EvaluationRecord,
    RoundKey,
    Scorer,
    SourceKey,
    StepKey,
    baselines,
    run_in_halves,
)
from seal.stages import Round, run_stage

# The journal schema of an evaluation, in the order written since the first release.
JOURNAL_FIELDS = [
    "kind", "round", "passage", "self_edit", "repetition", "passage_id", "seed", "reward", "adapter_accuracy",
    "baseline_accuracy", "answers", "scores", "epoch_losses", "n_train_texts", "n_train_tokens", "seconds", "error",
]  # fmt: skip


def an_evaluation(passage, baseline: float | None = 0.25) -> Evaluation:
    key = RoundKey(1, 3, 2, 0)
    return Evaluation(key=key, passage=passage, texts=["a", "b", "c"], seed=7, baseline_accuracy=baseline)


def test_a_graded_record_scores_its_answers_and_round_trips_through_json(squad_train):
    passage = squad_train[0]
    gold = [q.answer for q in passage.questions]
    answers = [f"it is {gold[0]}", "no idea", *gold[2:]]
    result = AdapterResult(answers, epoch_losses=[2.5, 1.25], n_train_tokens=40, seconds=0.5)
    record = EvaluationRecord.graded(an_evaluation(passage), result, QAConfig(grader="contains"))

    assert record.scores == [1.0, 0.0, *[1.0] * (len(gold) - 2)]
    assert record.adapter_accuracy == pytest.approx((len(gold) - 1) / len(gold))
    assert record.reward == pytest.approx(record.adapter_accuracy - 0.25)
    assert record.identity == (3, 2, 0) and record.error is None

    row = record.to_json()
    assert list(row) == JOURNAL_FIELDS  # no "truncated" until it is recorded
    assert row["passage_id"] == passage.id and row["n_train_texts"] == 3 and row["seed"] == 7
    assert EvaluationRecord.from_json(json.loads(json.dumps(row))) == record

    record.truncated = True
    row = record.to_json()
    assert list(row) == [*JOURNAL_FIELDS, "truncated"] and row["truncated"] is True
    assert EvaluationRecord.from_json(row) == record


def test_the_failure_forms_share_the_schema_and_carry_the_failure_reward(squad_train):
    evaluation = an_evaluation(squad_train[0], baseline=None)
    raised = EvaluationRecord.failed(evaluation, "RuntimeError: boom", seconds=1.5, failure_reward=-1.0)
    assert list(raised.to_json()) == JOURNAL_FIELDS
    assert (raised.reward, raised.error, raised.answers, raised.scores, raised.n_train_tokens) == (-1.0, "RuntimeError: boom", [], [], 0)
    assert raised.baseline_accuracy is None and raised.seconds == 1.5 and raised.n_train_texts == 3

    # A job the inner loop reported as failed keeps its losses (non-finite ones, say); no grading.
    reported = AdapterResult([], epoch_losses=[float("nan")], n_train_tokens=12, seconds=0.25, error="non-finite loss")
    record = EvaluationRecord.graded(evaluation, reported, QAConfig(grader="contains"), failure_reward=None)
    assert (record.reward, record.adapter_accuracy, record.scores, record.n_train_tokens, record.seconds) == (None, None, [], 12, 0.25)
    assert record.error == "non-finite loss" and list(record.to_json()) == JOURNAL_FIELDS


def test_typed_keys_write_todays_journal_fields_in_order():
    """An evaluation's key is typed per outer loop; its JSON form is the journal's key fields,
    in the order journals have always had them (resumes and comparisons read them)."""
    assert list(RoundKey(1, 2, 3, 0).to_json()) == ["kind", "round", "passage", "self_edit", "repetition"]
    step = StepKey(4, 1, 0, 2, "ab12", "text")
    assert list(step.to_json()) == ["kind", "step", "passage", "self_edit", "repetition", "completion", "completion_text"]
    assert step.id == StepKey.id_of(step.to_json()) == (4, 1, 0, 2, "ab12")  # the text is recorded, not identity
    bench = SourceKey("file:x", 1, 0, 0, context=(("protocol", "single"), ("student", "tiny")))
    assert list(bench.to_json()) == ["protocol", "student", "source", "passage", "self_edit", "repetition"]
    assert RoundKey.id_of(RoundKey(1, 2, 3, 0).to_json()) == RoundKey(1, 2, 3, 0).id


def test_the_scorer_reads_back_the_journal_and_recomputes_whole_chunks(tiny_squad_model, squad_train):
    """``Scorer.score``: three evaluations in chunks of two. Resumed with the first journaled,
    the first chunk is computed whole (the same as uninterrupted) but only its unfinished member
    journaled; every record equals the uninterrupted run's (timing aside), ``truncated`` included."""
    from seal.config import InnerLoopConfig, LoraConfig
    from seal.models import load_model

    torch.manual_seed(0)
    model, tok = load_model(tiny_squad_model, device="cpu")
    passage = squad_train[0]
    inner = InnerLoopConfig(lora=LoraConfig(rank=4, alpha=8), epochs=1, lr=1e-3, max_length=64, batch_adapters=2)
    qa = QAConfig(grader="contains", max_new_tokens=4)
    evaluations = [
        Evaluation(RoundKey(0, 0, e, 0), passage, [f"{passage.title}: fact {e}."], seed=e, baseline_accuracy=0.0, truncated=e == 1) for e in range(3)
    ]
    journal: list[EvaluationRecord] = []
    full = Scorer(model, tok, inner, qa, journal=journal.append).score(evaluations)
    assert [r.key for r in journal] == [e.key.to_json() for e in evaluations]
    assert [r.truncated for r in full] == [False, True, False] and list(full[1].to_json())[-1] == "truncated"

    def timeless(record: EvaluationRecord) -> dict:
        return {k: v for k, v in record.to_json().items() if k != "seconds"}

    again: list[EvaluationRecord] = []
    resumed = Scorer(model, tok, inner, qa, journal=again.append).score(evaluations, {evaluations[0].key.id: full[0]})
    assert [r.key["self_edit"] for r in again] == [1, 2] and resumed[0] is full[0]
    assert [timeless(r) for r in resumed] == [timeless(r) for r in full]
    none: list[EvaluationRecord] = []
    assert Scorer(model, tok, inner, qa, journal=none.append).score(evaluations, {e.key.id: r for e, r in zip(evaluations, full, strict=True)}) == full
    assert none == []


def test_a_baseline_record_is_a_journal_line_of_the_unadapted_answers(tiny_squad_model, squad_train):
    from seal.models import load_model

    model, tok = load_model(tiny_squad_model, device="cpu")
    passages = squad_train[:2]
    rows = baselines(model, tok, passages, QAConfig(grader="contains", max_new_tokens=4))
    records = [BaselineRecord(key={"kind": "baseline", "round": 0, "passage": i}, passage_id=p.id, **row) for i, (p, row) in enumerate(zip(passages, rows, strict=True))]
    for record, passage in zip(records, passages, strict=True):
        line = record.to_json()
        assert list(line) == ["kind", "round", "passage", "passage_id", "answers", "scores", "accuracy", "seconds"]
        assert len(line["answers"]) == len(line["scores"]) == len(passage.questions)
        assert BaselineRecord.from_json(json.loads(json.dumps(line))) == record


def test_adapter_chunks_cut_once_in_order():
    assert adapter_chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert adapter_chunks([], 4) == []
    assert adapter_chunks("abc", 8) == [["a", "b", "c"]]


def test_run_in_halves_retries_down_to_the_item_that_fails():
    """A chunk "runs out of memory" above 2 items; item 5 always raises: the others all finish."""
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    finished, failed, retries = [], [], []

    def run(chunk: list[int]) -> None:
        if len(chunk) > 2:
            raise oom("CUDA out of memory. Tried to allocate 2 GiB\nmore detail")
        if 5 in chunk:
            raise ValueError("bad item")
        finished.extend(chunk)

    run_in_halves(list(range(7)), run, lambda item, reason, s: failed.append((item, reason)), on_retry=lambda n, reason: retries.append((n, reason)))
    assert finished == [0, 1, 2, 3, 4, 6]
    assert failed == [(5, "ValueError: bad item")]
    assert retries[0] == (7, "out of memory with 7 adapter(s) per batch: CUDA out of memory. Tried to allocate 2 GiB")
    assert [n for n, _ in retries] == [7, 4, 3, 2]

    with pytest.raises(KeyError):  # a fatal type propagates at once
        run_in_halves([1, 2], lambda chunk: (_ for _ in ()).throw(KeyError("no key")), lambda *a: None, fatal=(KeyError,))


def test_self_edits_keep_their_prompt_and_truncation_and_read_back_the_same(tiny_squad_model, squad_train):
    from seal.models import load_model
    from seal.prompts import self_edit_prompt
    from seal.self_edits import (
        generate_self_edits,
        sample_self_edits,
        self_edits_from_json,
        self_edits_to_json,
    )

    model, tok = load_model(tiny_squad_model, device="cpu")
    args = (model, tok, squad_train[:3], SelfEditConfig(template="implications", k=2, temperature=1.0, top_p=0.95, max_new_tokens=6, batch_size=2))
    drawn = generate_self_edits(*args, seed=4)
    assert [[e.text for e in edits] for edits in drawn] == sample_self_edits(*args, seed=4)
    for passage, edits in zip(squad_train[:3], drawn, strict=True):
        assert [e.prompt for e in edits] == [self_edit_prompt("implications", passage.title, passage.context)] * 2
    assert {type(e.truncated) for edits in drawn for e in edits} == {bool}

    rows = self_edits_to_json(squad_train[:3], drawn)
    assert list(rows[0]) == ["passage", "passage_id", "title", "completions", "truncated"]
    assert self_edits_from_json(json.loads(json.dumps(rows)), squad_train[:3], "implications", tok) == drawn


def test_run_stage_computes_only_unfinished_units_and_saved_reads_a_finished_stage(tmp_path, tiny_squad_model, data_root):
    round_ = Round(
        tiny_recipe(tiny_squad_model, data_root), RunDir(tmp_path), 0, "policy", [], get_dist(), Console(quiet=True), progress_bar(Console(quiet=True))
    )
    computed = []

    def square(unit: list[int]) -> dict[int, int]:
        computed.append(unit)
        return {i: i * i for i in unit}

    units = [[0, 1], [2, 3], [4]]
    done, per_rank = run_stage(round_, units, square, {0: 0, 1: 1, 2: 4}, progress="squares")
    assert computed == [[2, 3], [4]]  # [0, 1] finished earlier; [2, 3] is pending as a whole
    assert done == {i: i * i for i in range(5)} and per_rank == [3]

    computed.clear()
    again, per_rank = run_stage(round_, units, square, done)
    assert computed == [] and again == done and per_rank == [0]

    path = tmp_path / "round_0" / "stage.json"
    assert round_.saved(path) is None and read_json_or_none(path) is None
    write_json_atomic(path, {"finished": True})
    assert round_.saved(path) == {"finished": True}
    assert round_.saved(path, requires=[tmp_path / "round_0" / "policy"]) is None  # its companion is missing


def test_percent_formats_fractions_and_differences():
    assert (percent(None), percent(0.1234), percent(0.05, points=True), percent(-0.5, points=True)) == ("n/a", "12.3 %", "+5.0 pp", "-50.0 pp")
