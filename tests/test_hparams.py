"""Hyperparameter self-edits: the block parser (good, out of range, garbage, hostile text), the
recipe section, the failure record of a refused block in a real tiny evaluation, and the
round metrics of the choices. The inner loop's per-adapter settings are tested in
``test_inner_loop.py``."""

from __future__ import annotations

import json

import hostile
import pytest
import torch
from train_helpers import one_thread, tiny_recipe

from seal.config import (
    HparamsConfig,
    InnerLoopConfig,
    LoraConfig,
    QAConfig,
    RecipeError,
    SelfEditConfig,
)
from seal.hparams import (
    AdapterSettings,
    HparamsError,
    parse_block,
    parse_self_edit,
    prompt_hint,
    round_summary,
    split_block,
    summarize,
)
from seal.models import load_model
from seal.prompts import self_edit_prompt
from seal.rundir import read_jsonl
from seal.scoring import EvaluationRecord, RoundKey, score_evaluations, self_edit_evaluation
from seal.train import train

SPACE = dict(
    enabled=True,
    lr={"min": 1e-4, "max": 1e-2},
    epochs={"min": 1, "max": 8},
    loss_on=["all", "answer"],
    lora_rank=[4, 8],
)


def space(**kw) -> HparamsConfig:
    return HparamsConfig(**{**SPACE, **kw})


# ----------------------------------------------------------------------------- parsing


def test_a_json_block_is_split_off_and_read():
    text = 'Fact one.\n---\nFact two.\nHyperparameters:\n{"lr": 0.001, "epochs": 3, "loss_on": "answer", "lora_rank": 8}'
    parsed = parse_self_edit(text, space())
    assert parsed.error is None
    assert parsed.text == "Fact one.\n---\nFact two."
    assert parsed.settings == AdapterSettings(lr=0.001, epochs=3, loss_on="answer", lora_rank=8)


def test_a_key_value_block_is_read_and_missing_keys_take_the_recipe_values():
    text = "Fact.\n  Hyperparameters:  \nlr: 5e-4\n\nepochs: 2\n"
    parsed = parse_self_edit(text, space(format="key-value"))
    assert parsed.error is None and parsed.text == "Fact."
    assert parsed.settings == AdapterSettings(lr=5e-4, epochs=2)
    inner = InnerLoopConfig(lr=1e-3, epochs=10, lora=LoraConfig(rank=4))
    assert parsed.settings.resolve(inner) == {"lr": 5e-4, "epochs": 2, "loss_on": "all", "lora_rank": 4}


def test_the_last_marker_line_opens_the_block_and_a_missing_block_is_declared_defaults():
    body, block = split_block("a\nHyperparameters:\nb\nHyperparameters:\n{}", "Hyperparameters:")
    assert (body, block) == ("a\nHyperparameters:\nb", "{}")
    assert parse_self_edit("just facts", space()).settings == AdapterSettings()
    refused = parse_self_edit("just facts", space(required=True))
    assert refused.settings is None and "no block" in refused.error
    # Off: the text is left whole, even with a block in it (today's behaviour).
    text = 'x\nHyperparameters:\n{"lr": 99}'
    assert parse_self_edit(text, HparamsConfig()) == parse_self_edit(text, HparamsConfig(enabled=False))
    assert parse_self_edit(text, HparamsConfig()).text == text


@pytest.mark.parametrize(
    "block, reason",
    [
        ('{"lr": 0.5}', "lr 0.5 outside [0.0001, 0.01]"),
        ('{"lr": 0}', "outside"),
        ('{"epochs": 9}', "epochs 9 outside [1, 8]"),
        ('{"epochs": 2.5}', "epochs must be an integer"),
        ('{"epochs": true}', "epochs must be a number"),
        ('{"loss_on": "prompt"}', "loss_on 'prompt' not one of"),
        ('{"lora_rank": 16}', "lora_rank 16 not one of [4, 8]"),
        ('{"lr": "0.001"}', "lr must be a number"),
        ('{"batch_size": 4}', "unknown key 'batch_size'"),
    ],
)
def test_values_outside_the_declared_space_are_refused_with_the_reason(block, reason):
    with pytest.raises(HparamsError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_block(block, space())
    parsed = parse_self_edit(f"facts\nHyperparameters:\n{block}", space())
    assert parsed.settings is None and parsed.error.startswith("hparams: ") and parsed.text == "facts"


def test_a_key_the_recipe_does_not_declare_is_refused():
    with pytest.raises(HparamsError, match="'lora_rank' is not declared by the recipe"):
        parse_block('{"lora_rank": 4}', space(lora_rank=None))


@pytest.mark.parametrize(
    "block, fmt, reason",
    [
        ("lr = 0.001", "json", "not JSON"),
        ("[0.001, 3]", "json", "not a JSON object"),
        ('{"lr": NaN}', "json", "non-finite number NaN"),
        ('{"lr": -Infinity}', "json", "non-finite number -Infinity"),
        ('{"lr": 1e999}', "json", "not finite"),
        ('{"epochs": ' + "9" * 400 + "}", "json", "outside"),
        ('{"lr": {"value": 0.001}}', "json", "lr must be a number, got a dict"),
        ('{"lr": [0.001]}', "json", "lr must be a number, got a list"),
        ('{"lr": "__import__(\'os\').system(\'rm -rf /\')"}', "json", "lr must be a number"),
        ("lr: __import__('os').system('ls')", "key-value", "lr must be a number"),
        ("lr: 0x10", "key-value", "lr must be a number"),
        ("lr: nan", "key-value", "lr must be a number"),
        ("lr: inf", "key-value", "lr must be a number"),
        ("lr: 1e999", "key-value", "not finite"),
        ("epochs: 1_000", "key-value", "epochs must be an integer"),
        ("lr: 0.001\nlr: 0.002", "key-value", "given twice"),
        ('{"lr": 0.001, "lr": 0.002}', "json", "key 'lr' given twice"),
        ("import os", "key-value", "line 1 is not 'key: value'"),
        ("Lr: 0.001", "key-value", "not 'key: value'"),
        ('{"lr": 0.001, "epochs": 2, ' + '"x": 1, ' * 100 + "}", "json", "exceeds max_chars"),
    ],
)
def test_garbage_and_hostile_blocks_are_refused_never_evaluated(block, fmt, reason):
    with pytest.raises(HparamsError, match=reason):
        parse_block(block, space(format=fmt))


@pytest.mark.parametrize("fmt", ["json", "key-value"])
@pytest.mark.parametrize("max_chars", [512, 20_000_000])
def test_every_json_value_at_every_key_is_a_value_or_a_reason_never_an_exception(fmt, max_chars):
    """The block parser is total over model text: every JSON type at every key, deep nesting,
    huge numbers, NaN / Infinity literals, a 10 MB string. Only HparamsError may come out of
    parse_block, and parse_self_edit never raises (a reason instead)."""
    sp = space(format=fmt, max_chars=max_chars)
    texts = (hostile.json_texts() if fmt == "json" else hostile.key_value_texts()) + [hostile.HUGE]
    outcomes = set()
    for block in texts:
        try:
            outcomes.add(type(parse_block(block, sp)).__name__)
        except HparamsError as e:
            assert str(e), block[:80]
            outcomes.add("refused")
        parsed = parse_self_edit(f"A fact.\nHyperparameters:\n{block}", sp)
        assert (parsed.settings is None) == (parsed.error is not None), block[:80]
        assert parsed.error is None or parsed.error.startswith("hparams: ")
    assert outcomes == {"AdapterSettings", "refused"}  # both kinds of answer were exercised


def test_a_huge_integer_learning_rate_is_refused_with_a_reason():
    # Before: formatting the reason of a 400-digit lr raised OverflowError out of the parser.
    with pytest.raises(HparamsError, match="lr is not finite"):
        parse_block('{"lr": 1' + "0" * 400 + "}", space())


def test_the_recipe_section_validates_its_space():
    with pytest.raises(ValueError, match="min 0.1 > max 0.01"):
        HparamsConfig(lr={"min": 0.1, "max": 0.01})
    with pytest.raises(ValueError):
        HparamsConfig(loss_on=["everything"])
    with pytest.raises(ValueError):
        HparamsConfig(lora_rank=[0])
    assert space().declared() == ["lr", "epochs", "loss_on", "lora_rank"]
    assert HparamsConfig().declared() == [] and not HparamsConfig().enabled
    assert issubclass(RecipeError, ValueError)


def test_the_prompt_hint_names_the_marker_format_and_space_and_is_empty_when_off():
    assert prompt_hint(HparamsConfig()) == "" and prompt_hint(space(prompt_hint=False)) == ""
    assert self_edit_prompt("implications", "T", "C", hint="") == self_edit_prompt("implications", "T", "C")
    hint = prompt_hint(space())
    for part in ("'Hyperparameters:'", "JSON object", "lr: a number from 0.0001 to 0.01", "epochs: an integer from 1 to 8", 'loss_on: one of "all", "answer"', "lora_rank: one of 4, 8"):
        assert part in hint, part
    assert "one 'key: value' per line" in prompt_hint(space(format="key-value"))
    prompt = self_edit_prompt("implications", "T", "C", hint=hint)
    assert prompt == self_edit_prompt("implications", "T", "C").replace("\n\nImplications:\n", f"\n\n{hint}\n\nImplications:\n")


def test_round_summary_of_choices_among_all_and_kept():
    a = {"lr": 1e-3, "epochs": 2, "loss_on": "all", "lora_rank": 4}
    b = {"lr": 1e-2, "epochs": 4, "loss_on": "answer", "lora_rank": 4}
    out = round_summary({(0, 0): a, (0, 1): b, (1, 0): None, (1, 1): a}, kept={0: [1], 1: [0]})
    assert out["n_refused"] == 1
    assert out["all"]["n"] == 3 and out["all"]["epochs"] == pytest.approx(8 / 3)
    assert out["all"]["lr"] == pytest.approx((1e-3 * 1e-2 * 1e-3) ** (1 / 3))
    assert out["all"]["loss_on"] == pytest.approx({"all": 2 / 3, "answer": 1 / 3})
    assert out["kept"] == {"n": 1, "lr": pytest.approx(1e-2), "epochs": 4.0, "loss_on": {"answer": 1.0}, "lora_rank": {"4": 1.0}}
    assert summarize([]) == {"n": 0, "lr": None, "epochs": None, "loss_on": {}, "lora_rank": {}}


# ----------------------------------------------------------------------------- a real evaluation


def test_a_refused_block_is_a_failure_record_with_the_failure_reward(tiny_squad_model, squad_train):
    """Three self-edits scored in one batched chunk on a tiny model: a good block, one out of
    range, one that does not parse. The two bad ones become failure records (reason, reward
    ``inner.failure_reward``, journaled like any record); the good one trains with its settings."""
    torch.manual_seed(0)
    model, tok = load_model(tiny_squad_model, device="cpu")
    passage = squad_train[0]
    self_edit = SelfEditConfig(hparams=space(lr={"min": 1e-4, "max": 1e-2}, lora_rank=[4, 8]))
    inner = InnerLoopConfig(lora=LoraConfig(rank=4, alpha=8), epochs=2, lr=1e-3, max_length=64, batch_adapters=3, failure_reward=-0.5)
    qa = QAConfig(grader="contains", max_new_tokens=4)
    blocks = ['{"lr": 0.005, "epochs": 1, "lora_rank": 8}', '{"lr": 5.0}', "{lr: 0.001"]
    evaluations = [
        self_edit_evaluation(
            RoundKey(0, 0, e, 0), passage,
            f"{passage.title} is a topic.\nHyperparameters:\n{block}", self_edit, inner, seed=e, baseline_accuracy=0.0,
        )  # fmt: skip
        for e, block in enumerate(blocks)
    ]
    journal: list[dict] = []
    records = score_evaluations(model, tok, evaluations, inner, qa, on_record=lambda r: journal.append(r.to_json()))

    good, out_of_range, garbage = records
    assert good.error is None and len(good.answers) == len(passage.questions)
    assert good.hparams == {"lr": 0.005, "epochs": 1, "loss_on": "all", "lora_rank": 8}
    assert len(good.epoch_losses) == 1  # its own epochs, not inner.epochs
    assert out_of_range.error == "hparams: lr 5 outside [0.0001, 0.01]" and out_of_range.reward == -0.5
    assert garbage.error.startswith("hparams: not JSON") and garbage.reward == -0.5
    for bad in (out_of_range, garbage):
        assert bad.answers == [] and bad.scores == [] and bad.hparams is None and bad.n_train_texts == 2
    assert [row["self_edit"] for row in sorted(journal, key=lambda r: r["self_edit"])] == [0, 1, 2]
    rows = {row["self_edit"]: row for row in journal}
    assert rows[0]["hparams"]["lora_rank"] == 8 and "hparams" not in rows[1]
    assert EvaluationRecord.from_json(json.loads(json.dumps(rows[0]))) == good


@pytest.mark.timeout(180)
def test_a_round_journals_refused_blocks_and_its_metrics_carry_the_choices(tiny_squad_model, data_root, squad_train, tmp_path):
    """A real tiny ``seal train`` round over self-edits with blocks (written as the round's
    ``self_edits.json``, as a finished sampling stage, so that their text is known): a refused
    block is a journaled failure with ``inner.failure_reward``, the round does not crash, the
    others train with their settings, and ``metrics.json`` summarizes the choices."""
    recipe = tiny_recipe(tiny_squad_model, data_root, rl__rounds=0, inner__failure_reward=-1.0, rl__keep_regardless="true")
    recipe.self_edit.hparams = HparamsConfig(**{**SPACE, "lora_rank": None})
    run = tmp_path / "run"
    with one_thread():
        train(recipe, run)  # zero rounds: the run directory and its recorded recipe
        blocks = ['\nHyperparameters:\n{"lr": 0.005, "epochs": 2, "loss_on": "answer"}', '\nHyperparameters:\n{"lr": 5}', ""]
        rows = [
            {"passage": p, "passage_id": passage.id, "title": passage.title, "completions": [f"{passage.title} is a topic.{b}" for b in blocks], "truncated": [False] * 3}
            for p, passage in enumerate(squad_train[:2])
        ]
        (run / "round_0").mkdir()
        (run / "round_0" / "self_edits.json").write_text(json.dumps(rows))
        recipe.rl.rounds = 1
        train(recipe, run, resume=True)

    journal = [row for row in read_jsonl(run / "journal.jsonl") if row.get("kind") == "evaluation"]
    assert len(journal) == 6
    for row in journal:
        if row["self_edit"] == 1:
            assert row["error"] == "hparams: lr 5 outside [0.0001, 0.01]" and row["reward"] == -1.0 and "hparams" not in row
        else:
            assert row["error"] is None and row["reward"] is not None
            want = {"lr": 0.005, "epochs": 2, "loss_on": "answer"} if row["self_edit"] == 0 else {"lr": recipe.inner.lr, "epochs": 1, "loss_on": "all"}
            assert row["hparams"] == {**want, "lora_rank": recipe.inner.lora.rank}
            assert len(row["epoch_losses"]) == want["epochs"]
    metrics = json.loads((run / "round_0" / "metrics.json").read_text())
    assert metrics["n_failed"] == 2 and metrics["failures"] == {"hparams: lr 5 outside [0.0001, 0.01]": 2}
    summary = metrics["hparams"]
    assert summary["n_refused"] == 2 and summary["all"]["n"] == 4 and summary["kept"]["n"] == 2
    assert summary["all"]["loss_on"] == {"all": 0.5, "answer": 0.5} and summary["all"]["epochs"] == 1.5


@pytest.mark.timeout(180)
def test_bench_reports_and_plots_the_choices_per_round_source(tiny_squad_model, data_root, tmp_path):
    """``seal bench`` with hyperparameter self-edits: two sources standing for rounds 0 and 1
    (files of self-edits with blocks) -> results.json, a report table and a plot of the
    choices per round; refused blocks are counted."""
    from seal.bench.run import bench
    from seal.config import Recipe
    from seal.data import load_passages

    passages = load_passages("squad/val_200.json", 2, root=data_root)
    files = {}
    for r, blocks in enumerate([['{"lr": 0.001, "epochs": 1}', '{"epochs": 99}'], ['{"lr": 0.01, "epochs": 3, "loss_on": "answer"}'] * 2]):
        rows = [
            {"title": p.title, "context": p.context, "questions": [{"question": q.question, "answer": q.answer} for q in p.questions],
             "completions": [f"{p.title} matters.\nHyperparameters:\n{b}" for b in blocks]}
            for p in passages
        ]  # fmt: skip
        files[r] = tmp_path / f"round{r}.json"
        files[r].write_text(json.dumps(rows))
    recipe = Recipe.model_validate({
        "seed": 0,
        "model": {"name_or_path": str(tiny_squad_model), "device": "cpu"},
        "data": {"root": str(data_root), "eval_file": "squad/val_200.json", "n_eval_passages": 2},
        "self_edit": {"hparams": {**SPACE, "lora_rank": None}},
        "inner": {"lora": {"rank": 4, "alpha": 8}, "epochs": 1, "max_length": 64, "eval_times": 1, "batch_adapters": 4},
        "qa": {"max_new_tokens": 4, "grader": "contains"},
        "bench": {
            "sources": [{"source": f"file:{files[r]}", "label": f"round {r}", "round": r} for r in (0, 1)],
            "protocols": {"single": {"n_passages": 2, "n_self_edits": 2}},
            "bootstrap_samples": 100,
        },
    })  # fmt: skip
    with one_thread():
        out = bench(recipe, tmp_path / "res")
    choices = json.loads((out / "results.json").read_text())["setup"]["hparams"]
    (student,) = choices
    first, second = choices[student]["round 0"], choices[student]["round 1"]
    assert first["n_refused"] == 2 and first["all"]["n"] == 2 and first["all"]["lr"] == pytest.approx(0.001)
    assert second["n_refused"] == 0 and second["all"]["epochs"] == 3.0 and second["all"]["loss_on"] == {"answer": 1.0}
    report = (out / "report.md").read_text()
    assert "## Hyperparameter choices" in report
    assert "| round 0 | 0 | 2 | 2 | 0.001 | 1.00 | all 100 % | 4 100 % |" in report
    assert (out / "plots" / "hparams_rounds.png").read_bytes()[:4] == b"\x89PNG" and "plots/hparams_rounds.png" in report
