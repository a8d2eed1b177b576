"""The hyperparameter microworld (issue 12): demonstrations end with parseable blocks in the
recipe's declared space; the default world (corpus, cache key) is unchanged; the demo's
recipes agree and its choice table counts shares per round."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from seal.config import RecipeError, load_recipe
from seal.hparams import parse_self_edit, split_block
from seal.microworld.config import PretrainConfig, settings_key
from seal.microworld.corpus import HparamDemos, copy_docs, hparam_block, memory_epoch
from seal.microworld.demo import (
    better_settings,
    better_share,
    check_same_setting,
    hparams_choice_table,
    hparams_choices,
)
from seal.microworld.world import WorldConfig, make_world

REPO = Path(__file__).resolve().parents[1]
TRAIN, BENCH = REPO / "recipes" / "microworld_hparams_cpu.yaml", REPO / "recipes" / "bench_microworld_hparams_cpu.yaml"


def _fingerprint(docs) -> str:
    return hashlib.sha256("\x00".join(d.text + f"|{d.prompt_chars}|{d.kind}|{d.style}" for d in docs).encode()).hexdigest()[:16]


def _settings(hparams_from: PretrainConfig | None = None, **fields) -> PretrainConfig:
    """A small seed-3 corpus's settings; the hyperparameter demonstrations (``hparam_*``) as ``hparams_from``'s."""
    demos = {k: v for k, v in hparams_from.model_dump().items() if k.startswith("hparam_")} if hparams_from else {}
    return PretrainConfig(**{"seed": 3, "n_memory": 20, "memory_epochs": 2, "n_demos": 40, **fields, **demos})


def _corpus(w, hparams_from: PretrainConfig | None = None):
    cfg = _settings(hparams_from)
    return copy_docs(w, cfg, 0, 60) + memory_epoch(w, cfg, 1)


def test_default_world_key_and_corpus_are_unchanged():
    # The default world's key before the hparam_* fields existed (.cache/microworld/149d5e88b26657d0).
    assert settings_key(PretrainConfig()) == "149d5e88b26657d0"
    # While hparam_demos is off the other hparam_* fields are not keyed; on, they are.
    assert settings_key(PretrainConfig(hparam_lrs=[1e-3], hparam_format="key-value")) == "149d5e88b26657d0"
    on = settings_key(PretrainConfig(hparam_demos=True))
    assert on != "149d5e88b26657d0" and on != settings_key(PretrainConfig(hparam_demos=True, hparam_epochs=[2]))
    # The default corpus, document for document, as computed by the code before the switch.
    w = make_world(WorldConfig(seed=3, n_train=20, n_eval=20))
    assert _fingerprint(_corpus(w)) == "9a3de192a7ede7c9"


def test_switched_on_demonstrations_carry_blocks_in_the_declared_space():
    recipe = load_recipe(TRAIN)
    space, world = recipe.self_edit.hparams, recipe.microworld
    assert world.hparam_demos and space.enabled and space.required
    w = make_world(WorldConfig(seed=3, n_train=20, n_eval=20))
    plain, docs = _corpus(w), _corpus(w, world.pretrain_config())
    chosen = Counter()
    for before, doc in zip(plain, docs, strict=True):
        if doc.kind != "demo":  # passages, QA and open-book documents stay as they were
            assert doc == before and space.marker not in doc.text
            continue
        parsed = parse_self_edit(doc.text[doc.prompt_chars :], space)
        assert parsed.error is None, parsed.error
        assert parsed.text == before.text[before.prompt_chars :].rstrip()  # the self-edit itself unchanged
        assert parsed.settings.lr in world.hparam_lrs and parsed.settings.epochs in world.hparam_epochs
        chosen[(parsed.settings.lr, parsed.settings.epochs)] += 1
    assert len(chosen) == 9  # the whole spread, good and bad settings
    # about uniform: 900 demonstrations, 100 expected per setting
    many = memory_epoch(w, _settings(world.pretrain_config(), memory_epochs=1, n_demos=900), 0)
    counts = Counter(split_block(d.text, space.marker)[1] for d in many if d.kind == "demo")
    assert len(counts) == 9 and min(counts.values()) > 60 and max(counts.values()) < 140


@pytest.mark.parametrize("fmt", ["json", "key-value"])
def test_blocks_read_back_in_both_formats(fmt):
    recipe = load_recipe(TRAIN, [f"self_edit.hparams.format={fmt}"])
    spec = HparamDemos((5e-4, 2e-2), (1, 10), fmt, recipe.self_edit.hparams.marker)
    for lr in spec.lrs:
        for epochs in spec.epochs:
            parsed = parse_self_edit("Q: Where? A: Oslo\n" + hparam_block(lr, epochs, spec), recipe.self_edit.hparams)
            assert (parsed.text, parsed.settings.lr, parsed.settings.epochs) == ("Q: Where? A: Oslo", lr, epochs)


def test_hparams_recipes_agree_with_their_world():
    train, bench = load_recipe(TRAIN), load_recipe(BENCH)
    check_same_setting(train, bench)
    assert train.microworld.entry_dir() != load_recipe(REPO / "recipes" / "microworld_cpu.yaml").microworld.entry_dir()
    with pytest.raises(RecipeError, match="differ in self_edit.hparams"):
        check_same_setting(train, load_recipe(BENCH, ["self_edit.hparams.required=false"]))
    with pytest.raises(RecipeError, match="format/marker"):
        off = ["self_edit.hparams.format=key-value"]
        check_same_setting(load_recipe(TRAIN, off), load_recipe(BENCH, off))
    with pytest.raises(RecipeError, match="enabled is off"):
        off = ["self_edit.hparams.enabled=false"]
        check_same_setting(load_recipe(TRAIN, off), load_recipe(BENCH, off))


def test_choice_table_counts_shares_per_round():
    def row(label, p, lr, epochs, acc):
        hp = None if lr is None else {"lr": lr, "epochs": epochs, "loss_on": "all", "lora_rank": 8}
        error = "hparams: no block after a 'Hyperparameters:' line" if lr is None else None
        return {"kind": "single", "student": "s", "source_label": label, "passage": p, "self_edit": 0,
                "repetition": 0, "adapter_accuracy": acc, "hparams": hp, "error": error}  # fmt: skip

    journal = [
        row("r0", 0, 5e-3, 5, 0.8), row("r0", 1, 5e-4, 1, 0.0), row("r0", 2, 2e-2, 10, 0.2), row("r0", 3, None, None, 0.0),
        row("r2", 0, 5e-3, 5, 0.8), row("r2", 1, 5e-3, 5, 0.6), row("r2", 2, 5e-3, 10, 0.9), row("r2", 3, 5e-4, 1, 0.0),
        {"kind": "baseline", "student": "s", "passage": 0},
    ]  # fmt: skip
    choices = hparams_choices(journal, {"r0": 0, "r2": 2, "other": 1})
    assert list(choices) == [0, 2]
    assert choices[0]["n"] == 4 and choices[0]["refused"] == 0.25
    assert choices[2]["settings"]["lr=0.005 epochs=5"] == {"share": 0.5, "accuracy": pytest.approx(0.7)}
    assert better_settings(choices[0]["settings"]) == ["lr=0.005 epochs=5"]
    table = hparams_choice_table(choices)
    assert table.row_count == 4 + 2  # four settings seen, then "better settings" and "no valid block"
    assert better_share(choices[0], ["lr=0.005 epochs=5"]) == 0.25 and better_share(choices[2], ["lr=0.005 epochs=5"]) == 0.5


def test_hparams_corpus_is_json_serialisable_meta():
    # The fields round-trip through meta.json's settings (model_dump -> PretrainConfig).
    cfg = PretrainConfig(hparam_demos=True, hparam_lrs=[1e-3, 1e-2], hparam_epochs=[2, 4], hparam_format="key-value")
    back = PretrainConfig(**json.loads(json.dumps(cfg.model_dump(mode="json"))))
    assert back == cfg and settings_key(back) == settings_key(cfg)
    assert split_block("a\nHyperparameters:\nlr: 0.01", cfg.hparam_marker) == ("a", "lr: 0.01")
    with pytest.raises(ValueError):
        PretrainConfig(hparam_lrs=[0.0])


#: A 20 k-parameter world pretrained in seconds (as tests/test_microworld.py's TINY): it cannot
#: copy, but its demonstrations, and so its samples, carry blocks.
TINY = dict(
    n_train=6, n_eval=6, n_memory=20, memory_epochs=2, n_demos=40, vocab_size=400, hidden_size=32,
    num_layers=1, num_heads=2, intermediate_size=64, batch_size=8, warmup_steps=2, log_every=5,
    n_copy_eval=2, max_length=256, copy_block_steps=3, copy_min_steps=0, n_check_people=4,
    main_copy_docs=8, copy_gate=0.0, min_copy_precision=0.0,
)  # fmt: skip


def test_hparams_demo_end_to_end_on_a_tiny_world(tmp_path):
    """``seal microworld demo --hparams`` on a tiny world (about 7 s): pretraining records the
    base policy's choices, training and bench read (here: refuse) blocks, a round source whose
    every evaluation failed still plots, and the demo prints the choice table."""
    from typer.testing import CliRunner

    from seal.cli import app

    overrides = [f"microworld.{k}={v}" for k, v in TINY.items()] + [
        f"microworld.cache_dir={tmp_path / 'mw'}", "data.n_train_passages=3", "data.n_eval_passages=3", "rl.rounds=2",
        "self_edit.k=2", "self_edit.max_new_tokens=48", "inner.batch_adapters=8", "rl.reward_threshold=-1", "rl.sft.epochs=1",
        "rl.keep_going=true",  # a 37-step policy writes no valid block: every evaluation fails, the plumbing is what is tested
    ]  # fmt: skip
    res = CliRunner().invoke(app, ["microworld", "demo", "--hparams", *overrides, "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "hyperparameter choices on held-out people" in res.output and "round 1" in res.output
    assert "hyperparameter blocks:" in res.output  # the base policy's, measured when pretraining ended
    (entry,) = [p for p in (tmp_path / "mw").iterdir() if p.is_dir()]
    skill = json.loads((entry / "meta.json").read_text())["copy_skill"]["hparams"]
    assert skill["n"] == 4 and sum(skill["settings"].values()) + skill["no_block"] + skill["refused"] == pytest.approx(1)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("hparams" in m for m in metrics)
