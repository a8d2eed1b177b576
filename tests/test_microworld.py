"""The microworld (issue 6): determinism, disjoint pools, answerable questions, style signatures,
a cached pretraining written atomically."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seal.cli import app
from seal.microworld.config import CopySkillError
from seal.microworld.corpus import copy_docs, memory_epoch
from seal.microworld.pretrain import PretrainConfig, ensure_microworld, pretrain, settings_key
from seal.microworld.world import (
    STYLES,
    WorldConfig,
    classify_style,
    copy_stats,
    entity_from_record,
    make_world,
    passage_record,
    render_passage,
    render_self_edit,
)

TINY = dict(
    n_train=8, n_eval=8, n_memory=20, memory_epochs=2, n_demos=40, vocab_size=400, hidden_size=32,
    num_layers=1, num_heads=2, intermediate_size=64, batch_size=8, warmup_steps=2, log_every=5,
    n_copy_eval=2, max_length=256, copy_block_steps=3, copy_min_steps=0, n_check_people=4,
    main_copy_docs=8,
    # a 20 k-parameter model trained for seconds cannot copy: both gates open at 0 here, and
    # test_a_policy_that_cannot_copy_is_refused shuts them
    copy_gate=0.0, min_copy_precision=0.0,
)  # fmt: skip


def test_world_is_deterministic_per_seed():
    a, b, c = (
        make_world(WorldConfig(seed=1)),
        make_world(WorldConfig(seed=1)),
        make_world(WorldConfig(seed=2)),
    )
    assert a.eval == b.eval and a.train == b.train and a.pretrain_names == b.pretrain_names
    assert a.eval != c.eval
    ra = [passage_record(e, random.Random(3)) for e in a.eval[:5]]
    rb = [passage_record(e, random.Random(3)) for e in b.eval[:5]]
    assert ra == rb
    cfg = PretrainConfig(seed=1, n_memory=10, memory_epochs=1, n_demos=20)
    for docs in (lambda w: copy_docs(w, cfg, 0, 30), lambda w: memory_epoch(w, cfg, 0)):
        assert [d.text for d in docs(a)] == [d.text for d in docs(b)]
    assert [d.text for d in copy_docs(a, cfg, 0, 30)] != [d.text for d in copy_docs(a, cfg, 1, 30)]


def test_pools_are_disjoint_and_pretraining_never_sees_heldout_people():
    w = make_world(WorldConfig(seed=0, n_train=150, n_eval=150))
    pre, tr, ev = set(w.pretrain_names), set(w.train_names), set(w.eval_names)
    assert len(tr) == 150 and len(ev) == 150
    assert not (pre & tr) and not (pre & ev) and not (tr & ev)
    held_out = {f"{f} {s}" for f, s in tr | ev}
    memory = {f"{f} {s}" for f, s in w.pretrain_names[:50]}
    cfg = PretrainConfig(seed=0, n_memory=50, memory_epochs=2, n_demos=200)
    chunks = [memory_epoch(w, cfg, ep) for ep in range(2)] + [copy_docs(w, cfg, 0, 500)]
    for chunk in chunks:
        for d in chunk:
            assert not any(n in d.text for n in held_out)
    # the copy curriculum's people are fresh: never a memory person (whose facts are fixed)
    assert not any(n in d.text for d in chunks[-1] for n in memory)
    assert {d.kind for d in chunks[-1]} == {"demo", "openbook"}


def test_every_question_is_answerable_from_its_passage():
    w = make_world(WorldConfig(seed=0))
    rng = random.Random(0)
    for e in w.eval + w.train:
        rec = passage_record(e, rng)
        assert 3 <= len(rec["questions"]) <= 5
        words = set(rec["context"].replace(".", " ").replace(",", " ").split())
        for q in rec["questions"]:
            assert q["answer"] in words, (rec, q)
        assert entity_from_record(rec) == e


def test_every_style_signature_is_classified():
    w = make_world(WorldConfig(seed=0))
    rng = random.Random(0)
    for e in w.eval[:50]:
        passage = render_passage(e, rng)
        for style in STYLES:
            text = render_self_edit(e, style, rng, passage)
            assert classify_style(text) == style, (style, text)
            stats = copy_stats(text, e)
            if style in ("qa", "paraphrase", "facts", "verbatim"):
                assert stats["recall"] == 1.0 and stats["correct"] == stats["mentions"]
            if style == "filler":
                assert stats["mentions"] == 0
    assert classify_style("") == "empty"
    assert classify_style("- a\nQ: b A: c\n* d") == "mixed"


def test_pretraining_writes_a_loadable_cache_atomically(tmp_path):
    from seal.models import load_model

    logs = []
    cfg = PretrainConfig(**TINY)
    entry = ensure_microworld(tmp_path / "mw", seed=0, cfg=cfg, log=logs.append)
    assert entry.name == settings_key(cfg)
    assert sorted(p.name for p in entry.iterdir()) == sorted(
        [
            "model",
            "train.json",
            "eval.json",
            "oracle_train.json",
            "oracle_eval.json",
            "world.json",
            "meta.json",
        ]
    )
    assert not list((tmp_path / "mw").glob("*.tmp-*"))
    assert any("tok/s" in line for line in logs)
    model, tok = load_model(entry / "model", device="cpu")
    assert model.config.num_hidden_layers == 1
    ev = json.loads((entry / "eval.json").read_text())
    orc = json.loads((entry / "oracle_eval.json").read_text())
    assert len(ev) == 8 and [r["title"] for r in ev] == [r["title"] for r in orc]
    assert all(classify_style(r["completions"][0]) == "paraphrase" for r in orc)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["settings"]["seed"] == 0 and "value_precision" in meta["copy_skill"]
    assert meta["copy_steps"] == 3 and meta["copy_checks"][0]["step"] == 3  # one block: the gate opened at 0
    # Cached: a second call returns at once without pretraining.
    logs.clear()
    assert (
        ensure_microworld(tmp_path / "mw", seed=0, cfg=cfg, log=logs.append) == entry and not logs
    )
    # A pretraining killed midway leaves no entry and no temporary directory.
    boom = PretrainConfig(**{**TINY, "seed": 1})

    def explode(msg):
        if msg.startswith("step"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "mw" / "x", boom, log=explode)
    assert sorted(p.name for p in (tmp_path / "mw").iterdir()) == [entry.name]
    # A directory left by a hard-killed pretraining (dead pid) is removed by the next one.
    stale = tmp_path / "mw" / f"{settings_key(boom)}.tmp-999999999"
    (stale / "model").mkdir(parents=True)
    ensure_microworld(tmp_path / "mw", seed=1, cfg=boom, log=lambda m: None)
    assert not stale.exists()


def test_demo_recipes_agree_and_disagreements_are_named():
    from seal.config import RecipeError, load_recipe
    from seal.microworld.demo import check_same_setting

    repo = Path(__file__).resolve().parents[1]
    train, bench = (repo / "recipes" / f for f in ("microworld_cpu.yaml", "bench_microworld_cpu.yaml"))
    check_same_setting(load_recipe(train), load_recipe(bench))
    with pytest.raises(RecipeError, match="differ in inner.lr, qa.template"):
        check_same_setting(load_recipe(train), load_recipe(bench, ["inner.lr=1e-3", "qa.template=reference"]))
    with pytest.raises(RecipeError, match="different microworlds"):
        check_same_setting(load_recipe(train), load_recipe(bench, ["microworld.seed=1"]))


@pytest.mark.parametrize(
    "shut, match",
    [
        ({"copy_gate": 1.0, "copy_max_steps": 7}, r"after 6 steps of the copy curriculum, open-book accuracy"),
        ({"min_copy_precision": 1.0}, r"the finished policy copies 0 % of attribute values right"),
    ],
)
def test_a_policy_that_cannot_copy_is_refused(tmp_path, shut, match):
    """Both copy gates: a shut one stops pretraining with an error that says what was measured
    and what to try, and leaves no cache entry and no temporary directory behind."""
    cfg = PretrainConfig(**{**TINY, **shut})
    with pytest.raises(CopySkillError, match=match) as e:
        ensure_microworld(tmp_path / "mw", seed=0, cfg=cfg, log=lambda m: None)
    assert "pretraining did not learn to copy" in str(e.value) and "Try another microworld.seed" in str(e.value)
    assert list((tmp_path / "mw").iterdir()) == []
    # through the CLI: one clear line and exit status 2
    args = [f"{k}={v}" for k, v in {**TINY, **shut}.items()]
    res = CliRunner().invoke(app, ["microworld", "pretrain", *args, "--cache-dir", str(tmp_path / "cli")])
    assert res.exit_code == 2 and "did not learn to copy" in res.output, res.output
    assert list((tmp_path / "cli").iterdir()) == []
