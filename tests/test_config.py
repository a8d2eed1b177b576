"""Recipe validation: unknown or mistyped keys name the key and the file; overrides; shipped recipes load."""

from pathlib import Path

import pytest

from seal.config import RecipeError, diff_recipes, load_recipe, recipe_to_dict

RECIPES = sorted(Path(__file__).resolve().parents[1].glob("recipes/*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    load_recipe(path)


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("model: {name_or_path: x}\ninner: {lora: {rnak: 4}}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(f)
    assert "inner.lora.rnak: unknown key" in str(e.value) and str(f) in str(e.value)


def test_mistyped_value_and_missing_model(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("model: {name_or_path: x}\ninner: {epochs: many}\n")
    with pytest.raises(RecipeError, match="inner.epochs"):
        load_recipe(f)
    f.write_text("seed: 1\n")
    with pytest.raises(RecipeError, match="model"):
        load_recipe(f)


def test_overrides_and_errors(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("model: {name_or_path: x}\n")
    r = load_recipe(f, ["inner.lora.rank=16", "rl.rounds=1", "inner.lora.target_modules=[q_proj]"])
    assert (r.inner.lora.rank, r.rl.rounds, r.inner.lora.target_modules, r.name) == (16, 1, ["q_proj"], "r")
    with pytest.raises(RecipeError, match="rl.rnds"):
        load_recipe(f, ["rl.rnds=1"])
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(f, ["rl.rounds"])
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    f.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(f)


def test_diff_recipes_lists_dotted_keys(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("model: {name_or_path: x}\n")
    a = recipe_to_dict(load_recipe(f))
    b = recipe_to_dict(load_recipe(f, ["inner.lr=0.1", "seed=3"]))
    assert diff_recipes(a, b) == ["inner.lr", "seed"]


def test_qa_template_is_checked_and_used(tmp_path):
    from seal.data import QA, Passage
    from seal.scoring import question_prompts

    f = tmp_path / "r.yaml"
    f.write_text("model: {name_or_path: x}\nqa: {template: qa-line}\n")
    r = load_recipe(f)
    p = Passage("Ada Vell", "Ada Vell was born in Oslo.", (QA("Where was Ada Vell born?", "Oslo"),))
    assert question_prompts(p, r.qa.template) == ["Ada Vell\nQ: Where was Ada Vell born? A:"]
    assert question_prompts(p) == ["Let's answer a question directly and concisely.\nQuestion: Topic: Ada Vell\nWhere was Ada Vell born?\nAnswer:\n"]
    with pytest.raises(RecipeError, match=r"qa.template.*unknown QA template 'qa-lines'"):
        load_recipe(f, ["qa.template=qa-lines"])


def test_microworld_placeholder_resolves_to_the_settings_entry(tmp_path):
    from seal.microworld.config import PretrainConfig, settings_key

    f = tmp_path / "r.yaml"
    f.write_text(
        "microworld: {cache_dir: " + str(tmp_path / "mw") + ", seed: 3, hidden_size: 32}\n"
        'model: {name_or_path: "{microworld}/model"}\ndata: {root: "{microworld}"}\n'
    )
    r = load_recipe(f)
    entry = tmp_path / "mw" / settings_key(PretrainConfig(seed=3, hidden_size=32))
    assert (r.model.name_or_path, r.data.root) == (f"{entry}/model", str(entry))
    assert load_recipe(f, ["microworld.seed=4"]).data.root != str(entry)  # a changed setting is a new world
    f.write_text('model: {name_or_path: "{microworld}/model"}\n')
    with pytest.raises(RecipeError, match="uses {microworld} but has no 'microworld' section"):
        load_recipe(f)
    f.write_text('microworld: {hiden_size: 32}\nmodel: {name_or_path: "{microworld}/model"}\n')
    with pytest.raises(RecipeError, match="microworld.hiden_size: unknown key"):
        load_recipe(f)


def test_attn_implementation_auto_and_flash_check(monkeypatch):
    """model.attn_implementation: 'auto' picks flash_attention_2 only on CUDA with flash-attn
    installed (else sdpa); None and explicit names pass through; flash_attention_2 without
    flash-attn fails with a message that names the fix."""
    import importlib.util

    import torch

    from seal.models import resolve_attn_implementation

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    real = importlib.util.find_spec

    def without_flash(name, *a, **k):
        return None if name == "flash_attn" else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", without_flash)
    assert resolve_attn_implementation(None, cpu) is None
    assert resolve_attn_implementation("eager", cuda) == "eager"
    assert resolve_attn_implementation("auto", cpu) == resolve_attn_implementation("auto", cuda) == "sdpa"
    with pytest.raises(ImportError, match="flash-attn"):
        resolve_attn_implementation("flash_attention_2", cuda)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: object() if name == "flash_attn" else real(name, *a, **k))
    assert resolve_attn_implementation("auto", cuda) == "flash_attention_2"
    assert resolve_attn_implementation("auto", cpu) == "sdpa"


# ----------------------------------------------------------------------------- preflight (issue 20)


@pytest.mark.parametrize(
    "override",
    ["rl.reward_threshold=.nan", "inner.failure_reward=.nan", "inner.lr=.inf", "inner.max_grad_norm=-.inf",
     "rl.curation_weights.gain=.nan", "self_edit.hparams.lr={min: 0.001, max: .inf}", "qa.judge.timeout_s=.inf"],
)  # fmt: skip
def test_every_float_knob_must_be_finite(tmp_path, override):
    """Before: a NaN threshold kept nothing, a NaN failure reward reached metrics.jsonl and an
    infinite lr failed every evaluation, each exiting 0. Now refused on load, naming the key."""
    f = tmp_path / "r.yaml"
    f.write_text("model: {name_or_path: x}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(f, [override])
    key = override.split("=")[0].removeprefix("self_edit.hparams.lr")
    assert "finite number" in str(e.value) and (key or "self_edit.hparams.lr.max") in str(e.value) and str(f) in str(e.value)


def test_an_empty_list_of_lora_target_modules_is_refused(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("model: {name_or_path: x}\n")
    for key in ("inner.lora", "rl.sft.lora", "rl.grpo.lora"):
        with pytest.raises(RecipeError, match=rf"{key}.target_modules: List should have at least 1 item"):
            load_recipe(f, [f"{key}.target_modules=[]"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rl.sft.lr_scheduler=bogus", "rl.sft.lr_scheduler: unknown learning-rate scheduler 'bogus'; use one of linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup, inverse_sqrt\n"),
        ("rl.sft.lr_scheduler=reduce_lr_on_plateau", "rl.sft.lr_scheduler: scheduler 'reduce_lr_on_plateau' cannot run here (lr_scheduler_type reduce_lr_on_plateau requires an eval strategy)"),
        ("rl.sft.lr_scheduler=cosine_with_min_lr", "rl.sft.lr_scheduler: scheduler 'cosine_with_min_lr' cannot run here (One of min_lr or min_lr_rate"),
        ("rl.grpo.lr_scheduler=warmup_stable_decay", "rl.grpo.lr_scheduler: scheduler 'warmup_stable_decay' cannot run here"),
        ("rl.grpo.lr_scheduler=bogus", "rl.grpo.lr_scheduler: unknown learning-rate scheduler 'bogus'"),
        ("model.attn_implementation=bogus", "model.attn_implementation: unknown attention 'bogus'; use one of auto, eager"),
        ("model.device=banana", "model.device: 'banana' is not a device"),
        ("model.device=cuda:x", "model.device: 'cuda:x' is not a device"),
        ("rl.sft.deepspeed=missing/ds.json", "rl.sft.deepspeed: no file missing/ds.json"),
        ("qa.grader=judge", "qa.judge: the LLM judge at https://api.openai.com/v1 needs an API key in the environment variable SEAL_TEST_NO_KEY"),
    ],
)
def test_preflight_refuses_settings_that_would_fail_late(tmp_path, monkeypatch, override, message):
    from seal.preflight import check_recipe

    monkeypatch.delenv("SEAL_TEST_NO_KEY", raising=False)
    f = tmp_path / "r.yaml"
    f.write_text("model: {name_or_path: x}\nqa: {judge: {api_key_env: SEAL_TEST_NO_KEY}}\n")
    recipe = load_recipe(f, [override])
    with pytest.raises(RecipeError) as e:
        check_recipe(recipe)
    assert message in str(e.value) + "\n"
    check_recipe(load_recipe(f))  # the defaults pass


def test_preflight_of_devices_attention_and_the_judge_key(tmp_path, monkeypatch):
    import importlib.util

    import torch

    from seal.preflight import check_recipe

    f = tmp_path / "r.yaml"
    f.write_text("model: {name_or_path: x}\n")
    for ok in ["model.device=cpu", "model.device=auto", "model.attn_implementation=sdpa", "model.attn_implementation=eager", "rl.sft.lr_scheduler=cosine"]:
        check_recipe(load_recipe(f, [ok]))
    if not torch.cuda.is_available():
        with pytest.raises(RecipeError, match="model.device: 'cuda', but this machine has no CUDA device"):
            check_recipe(load_recipe(f, ["model.device=cuda"]))
    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(RecipeError, match="needs the flash-attn package"):
            check_recipe(load_recipe(f, ["model.attn_implementation=flash_attention_2"]))
    judge = ["qa.grader=judge", "qa.judge.api_key_env=SEAL_TEST_KEY"]
    monkeypatch.setenv("SEAL_TEST_KEY", "sk-bad key")
    with pytest.raises(RecipeError, match="qa.judge: the environment variable SEAL_TEST_KEY holds characters not allowed"):
        check_recipe(load_recipe(f, judge))
    monkeypatch.setenv("SEAL_TEST_KEY", "sk-good")
    check_recipe(load_recipe(f, judge))  # well-formed; no request unless qa.judge.preflight_request


def test_lora_target_modules_are_checked_against_the_model(tmp_path, tiny_squad_model):
    from seal.preflight import check_model, train_lora_keys

    f = tmp_path / "r.yaml"
    f.write_text(f"model: {{name_or_path: {tiny_squad_model}}}\n")
    recipe = load_recipe(f)
    check_model(recipe, train_lora_keys(recipe))  # the defaults exist in a Llama
    with pytest.raises(RecipeError) as e:
        check_model(load_recipe(f, ["inner.lora.target_modules=[q_proj, qproj, w_in]"]), ["inner.lora"])
    assert str(e.value) == (
        "inner.lora.target_modules: 'qproj', 'w_in' match no module of the model; "
        "its linear layers are: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"
    )
    with pytest.raises(RecipeError, match="rl.sft.lora.target_modules: 'c_attn' match no module"):
        check_model(load_recipe(f, ["rl.sft.lora.target_modules=[c_attn]"]), ["rl.sft.lora"])
    with pytest.raises(RecipeError, match="match Embedding modules, not linear layers"):
        check_model(load_recipe(f, ["inner.lora.target_modules=[embed_tokens]"]), ["inner.lora"])
    check_model(load_recipe(f, ["rl.sft.lora.target_modules=[embed_tokens]"]), ["rl.sft.lora"])  # PEFT adapts embeddings
    with pytest.raises(RecipeError, match="model.name_or_path: no model directory"):
        check_model(load_recipe(f, [f"model.name_or_path={tmp_path / 'nope'}"]), ["inner.lora"])


def test_a_chat_template_the_tokenizer_lacks_is_refused_before_sampling(tmp_path, tiny_squad_model):
    import shutil

    from seal.preflight import check_model

    model = shutil.copytree(tiny_squad_model, tmp_path / "model")
    (model / "chat_template.jinja").unlink(missing_ok=True)
    f = tmp_path / "r.yaml"
    f.write_text(f"model: {{name_or_path: {model}}}\nself_edit: {{chat_template: true}}\n")
    with pytest.raises(RecipeError, match="self_edit.chat_template is on but the tokenizer of .* has no chat template"):
        check_model(load_recipe(f), ["inner.lora"])
    check_model(load_recipe(f, [f"model.name_or_path={tiny_squad_model}"]), ["inner.lora"])  # the tiny tokenizer has one


def test_resume_accepts_the_judge_fixes_and_refuses_other_changes(tmp_path):
    """The keys a resume may change are those that fix what no preflight can know (a judge key
    moved to another variable, a device or batch out of memory); the rest are preflighted."""
    import yaml

    from seal.rundir import RunDir
    from seal.train import check_resume

    f = tmp_path / "r.yaml"
    f.write_text("model: {name_or_path: x}\nqa: {grader: judge}\n")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (run.path / "config.yaml").write_text(yaml.safe_dump(recipe_to_dict(load_recipe(f))))
    fixes = ["qa.judge.api_key_env=OTHER_KEY", "rl.sft.gradient_checkpointing=true", "qa.judge.preflight_request=true", "qa.judge.timeout_s=5", "model.device=cpu", "inner.batch_adapters=2", "qa.batch_size=8"]
    check_resume(run, recipe_to_dict(load_recipe(f, fixes)))
    with pytest.raises(RecipeError, match="differs from the recorded one in: model.attn_implementation, rl.sft.lr_scheduler"):
        check_resume(run, recipe_to_dict(load_recipe(f, ["rl.sft.lr_scheduler=cosine", "model.attn_implementation=eager"])))
