"""Few-shot ARC (seal/arc): grids and their text, augmentations, loaders, configuration
self-edits, the exact-grid grader, and one tiny ``seal train`` round on real ARC tasks."""

from __future__ import annotations

import json

import hostile
import numpy as np
import pytest
from train_helpers import one_thread

from seal.arc.augment import family, permute_colors, rotate, scale, transpose
from seal.arc.config import FAMILIES, ArcSection
from seal.arc.grids import (
    GridError,
    as_grid,
    grid_to_text,
    grids_match,
    parse_grid,
    read_answer_grid,
)
from seal.arc.self_edit import (
    leave_out_tasks,
    parse_configuration,
    read_configuration,
    ttt_tasks,
    ttt_texts,
)
from seal.arc.tasks import ArcPassage, load_arc_tasks, query_text, task_passage
from seal.config import HparamsConfig, RecipeError, load_recipe
from seal.data import DataError
from seal.graders import grade
from seal.hparams import AdapterSettings, HparamsError

TRAIN = "arc/arc-agi_training_challenges_filtered_1B_training_set.json"
EVAL = "arc/arc-agi_evaluation_challenges_filtered_1B_eval_set.json"
SPACE = HparamsConfig(enabled=True, lr={"min": 1e-5, "max": 1e-2}, epochs={"min": 1, "max": 5}, loss_on=["all", "answer"])


@pytest.fixture(scope="module")
def arc_tasks(data_root):
    return load_arc_tasks(TRAIN, root=data_root) + load_arc_tasks(EVAL, root=data_root)


# ----------------------------------------------------------------------------- grids and text


def test_grid_text_round_trips_on_every_real_grid(arc_tasks):
    grids = [g for t in arc_tasks for g in t.grids()]
    assert len(grids) > 150
    for g in grids:
        assert parse_grid(grid_to_text(g)) == g
        assert parse_grid(grid_to_text(g, "numpy") + "#") == g  # the reference's form and footer
        assert read_answer_grid(grid_to_text(g) + "\n\nInput:\n1 2") == g  # trailing text ignored
    assert grid_to_text(((0, 1), (2, 3))) == "0 1\n2 3"
    assert grid_to_text(((0, 1), (2, 3)), "numpy") == "[[0 1]\n [2 3]]" == str(np.array([[0, 1], [2, 3]]))


@pytest.mark.parametrize(
    ("value", "message"),
    [([], "non-empty"), ([[1, 2], [3]], "not rectangular"), ([[1, 10]], "not a colour"), ([[True]], "not a colour"),
     ([[0]] * 31, "31 rows"), ([[0] * 31], "31 cells"), ([[1.0]], "not a colour"), ("12", "non-empty list")],
)  # fmt: skip
def test_invalid_grids_are_refused(value, message):
    with pytest.raises(GridError, match=message):
        as_grid(value)


def test_answer_reading_is_lenient_and_parsing_strict():
    assert read_answer_grid("\n1 2\n3 4\nthat is all") == ((1, 2), (3, 4))
    assert read_answer_grid("1 2\n3") is None  # not rectangular
    assert read_answer_grid("no grid here") is None and read_answer_grid("") is None
    with pytest.raises(GridError, match="not a row of digits"):
        parse_grid("1 2\nx y")


def test_exact_grid_grader():
    assert grids_match("1 2\n3 4\n", "1 2\n3 4") == 1.0
    assert grids_match("1 2\n3 5", "1 2\n3 4") == 0.0  # one cell
    assert grids_match("1 2", "1 2\n3 4") == 0.0  # shape
    assert grids_match("1 2 3 4", "1 2\n3 4") == 0.0  # same cells, other shape
    assert grids_match("garbage", "1 2\n3 4") == 0.0
    assert grade(["q", "q"], ["0 1", "0 1"], ["0 1\nblah", "1 0"], "grid") == [1.0, 0.0]


# ----------------------------------------------------------------------------- augmentations


def test_every_augmentation_inverts_exactly_on_real_grids(arc_tasks):
    rng = np.random.default_rng(0)
    augs = [a for name in FAMILIES for a in family(name, rng)] + [permute_colors(rng) for _ in range(3)]
    assert len(augs) == 11 + 3 + 6 + 3 + 3  # the reference's get_augmenters, without concat
    for task in arc_tasks:
        for g in task.grids():
            for aug in augs:
                assert aug.invert(aug.apply(g)) == g, (task.id, aug.name)


def test_augmentations_are_the_reference_transforms():
    g = ((1, 2, 3), (4, 5, 6))
    a = np.array(g)
    assert rotate(90).apply(g) == tuple(map(tuple, np.rot90(a)))
    assert transpose().apply(g) == ((1, 4), (2, 5), (3, 6))
    assert scale(2, 2).apply(((1, 2),)) == ((1, 1, 2, 2), (1, 1, 2, 2))
    basic = {aug.name: aug for aug in family("basic", np.random.default_rng(0))}
    assert basic["reflect1"].apply(((1, 2),)) == ((1, 2, 2, 1),)
    assert basic["reflect0r"].apply(((1,), (2,))) == ((2,), (1,), (1,), (2,))
    colors = permute_colors(np.random.default_rng(1))
    mapped = colors.apply(((0, 1, 2),))
    assert mapped[0][0] == 0 and len(set(mapped[0])) == 3  # background kept, a bijection
    with pytest.raises(ValueError, match="unknown augmentation family"):
        family("concat", np.random.default_rng(0))


def test_test_time_training_set(arc_tasks):
    task = next(t for t in arc_tasks if t.id == "5582e5ca")  # 3 demonstrations of 3x3 grids
    assert len(leave_out_tasks(task.train, [1])) == 3 and len(leave_out_tasks(task.train, [1, 2])) == 9
    arc = ArcSection(max_train_texts=10_000)
    plain = ttt_tasks(task, (), arc, seed=0)
    basic = ttt_tasks(task, ("basic",), arc, seed=0)
    everything = ttt_tasks(task, FAMILIES, arc, seed=0)
    assert len(plain) <= 18 < len(basic) < len(everything)
    assert all(len(g) <= 30 and len(g[0]) <= 30 for demos, test in everything for e in (*demos, test) for g in (e.input, e.output))
    texts = ttt_texts(task, ("basic",), ArcSection(max_train_texts=20), seed=3)
    assert len(texts) == 20 and texts == ttt_texts(task, ("basic",), ArcSection(max_train_texts=20), seed=3)
    assert all(t.count("Test output:") == 1 for t in texts)
    assert ttt_texts(task, ("basic",), ArcSection(max_text_chars=16), seed=0) == []


# ----------------------------------------------------------------------------- loaders


def test_loader_reads_the_data_folder(arc_tasks, data_root):
    assert len(arc_tasks) == 22
    two = load_arc_tasks(TRAIN, root=data_root, task_ids=["6150a2bd", "5582e5ca"])
    assert [t.id for t in two] == ["6150a2bd", "5582e5ca"]
    passage = task_passage(two[1])
    assert isinstance(passage, ArcPassage) and passage.title == "5582e5ca" and len(passage.questions) == 1
    assert passage.questions[0].question == query_text(two[1].train, two[1].test[0].input)
    assert parse_grid(passage.questions[0].answer) == two[1].test[0].output


def _write(tmp_path, challenges, solutions):
    (tmp_path / "x_challenges.json").write_text(json.dumps(challenges))
    (tmp_path / "x_solutions.json").write_text(json.dumps(solutions))
    return str(tmp_path / "x_challenges.json")


GOOD = {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]}


@pytest.mark.parametrize(
    ("task", "solution", "message"),
    [
        ({"train": [{"input": [[1, 2], [3]], "output": [[2]]}], "test": [{"input": [[3]]}]}, [[[4]]], "task bad: train example 0 input: row 1"),
        ({"train": [{"input": [[1]], "output": [[12]]}], "test": [{"input": [[3]]}]}, [[[4]]], "task bad: train example 0 output: cell"),
        ({"train": [], "test": [{"input": [[3]]}]}, [[[4]]], "task bad: train example: expected a non-empty list"),
        ({"train": GOOD["train"], "test": [{"input": [[0] * 31]}]}, [[[4]]], "task bad: test example 0 input: row 0 has 31"),
        (GOOD, [], "task bad: expected 1 solution grid"),
        (GOOD, [[[1], [1, 2]]], "task bad: solution 0"),
    ],
)
def test_loader_errors_name_the_file_and_task(tmp_path, task, solution, message):
    path = _write(tmp_path, {"ok": GOOD, "bad": task}, {"ok": [[[4]]], "bad": solution})
    with pytest.raises(DataError, match=message) as err:
        load_arc_tasks(path)
    assert "x_" in str(err.value)
    assert [t.id for t in load_arc_tasks(path, task_ids=["ok"])] == ["ok"]


def test_loader_missing_files_and_ids(tmp_path):
    path = _write(tmp_path, {"ok": GOOD}, {"ok": [[[4]]]})
    with pytest.raises(DataError, match="no task 'nope'"):
        load_arc_tasks(path, task_ids=["nope"])
    with pytest.raises(DataError, match="data file not found"):
        load_arc_tasks(tmp_path / "y_challenges.json")


# ----------------------------------------------------------------------------- configurations


@pytest.mark.parametrize(
    ("text", "families", "settings"),
    [
        ('{"basic": true, "size": false, "lr": 0.0001, "epochs": 2, "loss_on": "answer"}', ("basic",), AdapterSettings(1e-4, 2, "answer")),
        ('```json\n{"chain": true, "repeat": true}\n```', ("chain", "repeat"), AdapterSettings()),
        ("{}", (), AdapterSettings()),
        (json.dumps({"data_generation": {"use_basic_augmentations": False, "use_size_augmentations": True},
                     "training": {"strategy": "train_using_output_tokens", "learning_rate": 0.001, "num_train_epochs": 3}}),
         ("size",), AdapterSettings(1e-3, 3, "answer")),
    ],
)  # fmt: skip
def test_good_configurations(text, families, settings):
    config = parse_configuration(text, SPACE, ArcSection())
    assert config.families == families and config.settings == settings


def test_key_value_configuration():
    space = SPACE.model_copy(update={"format": "key-value"})
    config = parse_configuration("basic: true\nrepeat: false\nlr: 3e-4\nloss_on: all", space, ArcSection())
    assert config.families == ("basic",) and config.settings == AdapterSettings(3e-4, None, "all")
    with pytest.raises(HparamsError, match="basic must be true or false"):
        parse_configuration("basic: yes", space, ArcSection())


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"lr": 0.5}', "lr 0.5 outside"),
        ('{"epochs": 9}', "epochs 9 outside"),
        ('{"loss_on": "inputs"}', "loss_on 'inputs' not one of"),
        ('{"lora_rank": 8}', "not declared by the recipe"),
        ('{"repeat": true}', "family 'repeat' is not allowed"),
        ('{"basic": 1}', "basic must be true or false"),
        ('{"basic": true, "rotate": true}', "unknown key 'rotate'"),
        ('{"lr": NaN}', "non-finite"),
        ('{"basic": true, "basic": false}', "given twice"),
        ("I think basic augmentations would help.", "not JSON"),
        ("", "not JSON"),
        ('["basic"]', "not a JSON object"),
        ('{"__import__(\'os\').system(\'ls\')": 1}', "unknown key"),
        ("[" * 100_000, "exceeds max_chars"),
        ("[" * 200 + "]" * 200, "not a JSON object"),
        ('{"training": {"strategy": "everything"}}', "strategy 'everything'"),
        ('{"training": {"epochs": 2}}', "unknown key 'epochs' in training"),
    ],
)
def test_bad_configurations_fail_with_their_reason(text, reason):
    arc = ArcSection(families=["basic", "size", "chain"])
    config, error = read_configuration(text, SPACE, arc)
    assert config is None and error.startswith("arc config: ") and reason in error, error


def test_a_list_as_the_reference_strategy_is_a_reason_not_a_type_error():
    # Before: TypeError: unhashable type: 'list' out of read_configuration.
    text = json.dumps({"training": {"strategy": ["train_using_all_tokens"]}})
    assert read_configuration(text, SPACE, ArcSection()) == (None, "arc config: strategy \"['train_using_all_tokens']\" not one of ['train_using_all_tokens', 'train_using_output_tokens']")


@pytest.mark.parametrize("fmt", ["json", "key-value"])
@pytest.mark.parametrize("max_chars", [512, 20_000_000])
def test_configuration_parsing_is_total_over_hostile_text(fmt, max_chars):
    """Every JSON type at every key (ours and the reference's nested keys), deep nesting, huge
    numbers, NaN literals, a 10 MB string: parse_configuration raises only HparamsError and
    read_configuration returns a configuration or a reason."""
    space = SPACE.model_copy(update={"format": fmt, "max_chars": max_chars, "lora_rank": [4]})
    arc = ArcSection(families=["basic", "size"])
    texts = (hostile.json_texts() if fmt == "json" else hostile.key_value_texts()) + [hostile.HUGE]
    parsed = 0
    for text in texts:
        try:
            parse_configuration(text, space, arc)
            parsed += 1
        except HparamsError as e:
            assert str(e), text[:80]
        config, reason = read_configuration(text, space, arc)
        assert (config is None) != (reason is None), text[:80]
        assert reason is None or reason.startswith("arc config: ")
    assert 0 < parsed < len(texts)


# ----------------------------------------------------------------------------- recipes and a round


def test_recipes_load_and_marker_is_checked(data_root):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes"
    tiny = load_recipe(root / "arc_tiny_cpu.yaml")
    gpu = load_recipe(root / "arc_llama3.2-1b_restem.yaml")
    benches = [load_recipe(root / name) for name in ("bench_arc_tiny_cpu.yaml", "bench_arc_llama3.2-1b.yaml")]
    for recipe in (tiny, gpu, *benches):
        assert recipe.arc is not None and recipe.qa.grader == "grid" and recipe.qa.reward == "accuracy"
    with pytest.raises(RecipeError, match="answer_marker must be 'Test output:'"):
        load_recipe(root / "arc_tiny_cpu.yaml", ["inner.answer_marker=Answer"])
    with pytest.raises(RecipeError, match="not valid YAML.*quote it"):  # a text: source's JSON needs quotes
        load_recipe(root / "arc_tiny_cpu.yaml", ['evaluate.source=text:{"basic": true, "epochs": 1}'])
    quoted = load_recipe(root / "arc_tiny_cpu.yaml", ["evaluate.source='text:{\"basic\": true}'"])
    assert quoted.evaluate.source == 'text:{"basic": true}'


def test_arc_evaluation_builds_the_training_set_and_masks_outputs(arc_tasks, tiny_squad_model):
    from seal.config import SelfEditConfig
    from seal.inner_loop import tokenize_with_loss
    from seal.models import load_tokenizer
    from seal.sections import InnerLoopConfig
    from seal.tasks.arc import arc_evaluation

    passage = task_passage(next(t for t in arc_tasks if t.id == "5582e5ca"))
    self_edit = SelfEditConfig(template="arc-config", hparams=SPACE)
    inner = InnerLoopConfig(answer_marker="Test output:")
    key = {"passage": 0, "self_edit": 0, "repetition": 0}
    ev = arc_evaluation(key, passage, '{"basic": true, "loss_on": "answer"}', self_edit, inner, 7, ArcSection(max_train_texts=5))
    assert ev.invalid is None and len(ev.texts) == 5 and ev.hparams["families"] == ["basic"] and ev.hparams["loss_on"] == "answer"
    bad = arc_evaluation(key, passage, "nonsense", self_edit, inner, 7, ArcSection())
    assert bad.texts == [] and bad.invalid.startswith("arc config: not JSON")
    tok = load_tokenizer(tiny_squad_model)
    rows, starts = tokenize_with_loss(tok, ev.texts, 4096, "answer", inner.answer_marker)
    for text, row, start in zip(ev.texts, rows, starts, strict=True):
        answer = tok.decode(row[start:], skip_special_tokens=True)
        assert answer.strip() == text.split("Test output:\n")[1].strip()  # loss on the output grid only


@pytest.mark.timeout(120)
def test_tiny_arc_round_end_to_end(tiny_squad_model, data_root, tmp_path, monkeypatch):
    """One ReST-EM round on 2 real 3x3 tasks with written configurations (a random tiny policy
    writes none that parse): test-time training, grading, failures, selection and SFT."""
    from pathlib import Path

    import seal.stages
    from seal.rundir import read_jsonl
    from seal.self_edits import SelfEdit
    from seal.train import train

    written = ['{"basic": true, "lr": 0.001, "epochs": 1, "loss_on": "answer"}', '{"size": true, "lr": 0.0005, "loss_on": "all"}', "not a configuration"]

    def scripted(model, tokenizer, passages, template, k, *args, hint="", **kwargs):
        from seal.prompts import self_edit_prompt

        assert "Write only a JSON object" in hint
        return [[SelfEdit(self_edit_prompt(template, p.title, p.context, hint=hint), text) for text in written[:k]] for p in passages]

    monkeypatch.setattr(seal.stages, "generate_self_edits", scripted)
    root = Path(__file__).resolve().parents[1] / "recipes"
    overrides = [f"model.name_or_path={tiny_squad_model}", "model.build_tiny=null", f"data.root={data_root}",
                 "arc.task_ids=[5582e5ca, 6150a2bd]", "arc.max_train_texts=4", "qa.max_new_tokens=12", "inner.max_length=384",
                 "arc.missing_keys=inner-defaults"]  # fmt: skip
    recipe = load_recipe(root / "arc_tiny_cpu.yaml", overrides)
    with one_thread():
        run = train(recipe, tmp_path / "run")
    evals = [r for r in read_jsonl(run / "journal.jsonl") if r["kind"] == "evaluation"]
    assert [(r["passage"], r["self_edit"]) for r in evals] == [(p, e) for p in range(2) for e in range(3)]
    for r in evals:
        if r["self_edit"] == 2:
            assert r["error"].startswith("arc config: not JSON") and r["reward"] == 0.0 and "hparams" not in r
        else:
            assert r["error"] is None and r["reward"] in (0.0, 1.0) and r["reward"] == r["adapter_accuracy"]
            assert r["n_train_texts"] == 4 and len(r["epoch_losses"]) == r["hparams"]["epochs"]
            assert r["hparams"]["families"] == [["basic"], ["size"]][r["self_edit"]]
    metrics = json.loads((run / "round_0" / "metrics.json").read_text())
    assert metrics["n_failed"] == 2 and metrics["sft"]["rows"] == 2 and metrics["hparams"]["n_refused"] == 2
    assert metrics["hparams"]["all"]["families"] == {"basic": 0.5, "size": 0.5}


def test_a_resume_over_saved_self_edits_with_a_list_strategy_finishes(tiny_squad_model, data_root, tmp_path, monkeypatch):
    """Before: once `{"training": {"strategy": [...]}}` was in round_0/self_edits.json, every
    --resume crashed with TypeError. Now that evaluation fails with its reason and the round ends."""
    from pathlib import Path

    import seal.stages
    import seal.train
    from seal.rundir import read_jsonl
    from seal.self_edits import SelfEdit
    from seal.train import train

    bad = json.dumps({"training": {"strategy": ["train_using_all_tokens"]}})
    written = ['{"basic": true, "lr": 0.001, "epochs": 1}', bad]

    def scripted(model, tokenizer, passages, template, k, *args, hint="", **kwargs):
        from seal.prompts import self_edit_prompt

        return [[SelfEdit(self_edit_prompt(template, p.title, p.context, hint=hint), text) for text in written[:k]] for p in passages]

    class Killed(Exception):
        pass

    def killed(round_):
        raise Killed  # the launch ends right after the self-edits were saved

    root = Path(__file__).resolve().parents[1] / "recipes"
    overrides = [f"model.name_or_path={tiny_squad_model}", "model.build_tiny=null", f"data.root={data_root}", "arc.task_ids=[5582e5ca]",
                 "self_edit.k=2", "arc.max_train_texts=2", "qa.max_new_tokens=12", "inner.max_length=384", "rl.sft.max_length=512",
                 "arc.missing_keys=inner-defaults"]  # fmt: skip
    recipe = load_recipe(root / "arc_tiny_cpu.yaml", overrides)
    run = tmp_path / "run"
    monkeypatch.setattr(seal.stages, "generate_self_edits", scripted)
    monkeypatch.setattr(seal.train, "baselines_stage", killed)
    with one_thread(), pytest.raises(Killed):
        train(recipe, run)
    saved = json.loads((run / "round_0" / "self_edits.json").read_text())
    assert saved[0]["completions"] == written

    monkeypatch.undo()
    monkeypatch.setattr(seal.stages, "generate_self_edits", lambda *a, **k: pytest.fail("the saved self-edits must be reused"))
    with one_thread():
        train(recipe, run, resume=True)
    evals = [r for r in read_jsonl(run / "journal.jsonl") if r["kind"] == "evaluation"]
    assert [r["error"] for r in evals] == [None, "arc config: strategy \"['train_using_all_tokens']\" not one of ['train_using_all_tokens', 'train_using_output_tokens']"]
    assert (run / "round_0" / "metrics.json").exists() and (run / "final.json").exists()


@pytest.mark.timeout(120)
def test_tiny_arc_bench_compares_icl_and_a_written_configuration(tiny_squad_model, data_root, tmp_path):
    """``seal bench`` on ARC: in-context learning (no training) against test-time training with
    one hand-written configuration (a ``text:`` source), on one real 4x4 evaluation task."""
    from pathlib import Path

    from seal.bench.run import bench
    from seal.config import parse_source
    from seal.evaluate import source_self_edits

    assert parse_source('text:{"basic": true}') == ("text", '{"basic": true}')
    with pytest.raises(RecipeError, match="needs an argument"):
        parse_source("text:")
    recipe = load_recipe(
        Path(__file__).resolve().parents[1] / "recipes" / "bench_arc_tiny_cpu.yaml",
        [f"model.name_or_path={tiny_squad_model}", "model.build_tiny=null", f"data.root={data_root}", "arc.eval_task_ids=[66e6c45b]",
         "arc.missing_keys=inner-defaults",
         'bench.sources=[{source: none, label: ICL}, {source: "text:{\\"basic\\": true, \\"epochs\\": 1}", label: oracle}]'],
    )  # fmt: skip
    assert source_self_edits(recipe.bench.sources[1].source, [None], recipe, 2, 0) == [['{"basic": true, "epochs": 1}'] * 2]
    with one_thread():
        out = bench(recipe, tmp_path / "bench")
    results = json.loads((out / "results.json").read_text())
    cells = {c["source"]: c for c in next(iter(results["protocols"]["single"]["tables"].values()))["cells"]}
    assert set(cells) == {"ICL", "oracle"} and cells["oracle"]["n_failed"] == 0


# ----------------------------------------------------------------------------- the warmed-up tiny policy


@pytest.mark.parametrize("form", ["json", "key-value"])
def test_drawn_configurations_parse_and_spread(form):
    from seal.arc.warmup import lr_choices, random_configuration

    assert lr_choices(1e-5, 1e-2) == [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2]
    space, arc = SPACE.model_copy(update={"format": form}), ArcSection(families=["basic", "size", "repeat"])
    rng = np.random.default_rng(0)
    drawn = [parse_configuration(random_configuration(rng, space, arc), space, arc) for _ in range(200)]
    assert {c.settings.epochs for c in drawn} == {1, 2, 3, 4, 5} and {c.settings.loss_on for c in drawn} == {"all", "answer"}
    assert set().union(*(c.families for c in drawn)) == {"basic", "size", "repeat"} and len({c.settings.lr for c in drawn}) == 10


def test_configuration_warmup_needs_an_arc_recipe():
    from pathlib import Path

    with pytest.raises(RecipeError, match="needs an arc section"):
        load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "squad_tiny_cpu.yaml", ["model.build_tiny.warmup=arc-configs"])


@pytest.mark.timeout(120)
def test_warmed_up_tiny_policy_writes_configurations_and_a_round_trains_adapters(data_root, tmp_path):
    """``model.build_tiny.warmup: arc-configs`` (a short warm-up at width 32): the tiny policy's
    sampled self-edits parse on real tasks, and a ``seal train`` round then trains adapters with
    the configurations it sampled (not written by hand)."""
    from pathlib import Path

    from seal.prepare import TINY_MARKER, ensure_model
    from seal.rundir import read_jsonl
    from seal.train import train

    model = tmp_path / "tiny-arc-configs"
    overrides = [f"model.name_or_path={model}", f"data.root={data_root}", "model.build_tiny.hidden_size=32",
                 "model.build_tiny.warmup_steps=90", "model.build_tiny.warmup_lr=0.02", "arc.task_ids=[5582e5ca]",
                 "arc.max_train_texts=4", "qa.max_new_tokens=12", "inner.max_length=384"]  # fmt: skip
    path = Path(__file__).resolve().parents[1] / "recipes" / "arc_tiny_cpu.yaml"
    recipe = load_recipe(path, overrides)
    with one_thread():
        ensure_model(recipe, log=lambda line: None)
        warmup = json.loads((model / TINY_MARKER).read_text())["warmup"]
        assert warmup["parse"]["parsed"] >= 1 and warmup["loss_last"] < warmup["loss_first"]
        with pytest.raises(RecipeError, match="with other settings"):
            ensure_model(load_recipe(path, [*overrides, "model.build_tiny.warmup_steps=91"]))
        run = train(recipe, tmp_path / "run")
    sampled = json.loads((run / "round_0" / "self_edits.json").read_text())[0]["completions"]
    evals = [r for r in read_jsonl(run / "journal.jsonl") if r["kind"] == "evaluation"]
    trained = [r for r in evals if r["error"] is None]
    assert trained, [r["error"] for r in evals]
    for r in trained:
        configuration = parse_configuration(sampled[r["self_edit"]], recipe.self_edit.hparams, recipe.arc)
        assert r["hparams"]["families"] == list(configuration.families) and r["n_train_texts"] >= 1
        assert len(r["epoch_losses"]) == r["hparams"]["epochs"] == (configuration.settings.epochs or recipe.inner.epochs)
