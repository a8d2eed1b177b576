"""What a run writes and where it goes: ``rl.save`` (merged weights, an adapter chain, both),
``model.revision`` in ``run.json``, and ``hub.push_to_hub``'s model card and staging.

* Two ReST-EM rounds of ``recipes/squad_tiny_cpu.yaml`` (tiny overrides) with ``rl.save:
  merged`` and with ``rl.save: adapter`` (one round, then ``--resume`` for the second, so
  round 1 starts from round 0's adapter chain read back): the same self-edits, rewards and
  metrics, and round 1's adapter chain loads to exactly the merged policy's weights and logits.
* ``bench.train_run`` lists the adapter chains as ``policy:`` sources, which load.
* PEFT alone loads a round-0 adapter on the base model to the merged policy's logits.
* The hub: the commit a revision resolves to in a local hub cache; the model card (recipe,
  round, measured rewards); a staged adapter chain loads; with ``push_to_hub`` off nothing is
  staged or uploaded, on it stages and calls the upload once.

Nothing in seal, transformers or PEFT is mocked; only the upload (the network) is replaced
by a recorder where a test turns the push on.
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from train_helpers import RECIPE, metrics, one_thread, tiny_recipe

from seal import hub
from seal.bench.sources import train_run_sources
from seal.config import RecipeError, load_recipe
from seal.models import CHAIN_FILE, is_adapter_chain, load_causal_lm, load_model, read_chain
from seal.rundir import RunDir, read_json
from seal.train import train

pytestmark = pytest.mark.timeout(300)

# Two rounds, every self-edit kept (keep_regardless in the recipe), a small policy LoRA.
SMALL = {"rl.sft.lora.rank": 4, "rl.sft.lora.alpha": 8}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def run_train(model, data_root, run_dir, resume=False, **extra):
    with one_thread():
        return train(tiny_recipe(model, data_root, **SMALL, **extra), run_dir, resume=resume, console=quiet())


@pytest.fixture(scope="module")
def merged_run(tiny_squad_model, data_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("merged") / "run"
    run_train(tiny_squad_model, data_root, run, rl__rounds=2)
    return run


@pytest.fixture(scope="module")
def adapter_run(tiny_squad_model, data_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("adapter") / "run"
    run_train(tiny_squad_model, data_root, run, rl__rounds=1, rl__save="adapter")
    run_train(tiny_squad_model, data_root, run, resume=True, rl__rounds=2, rl__save="adapter")  # rl.rounds: resumable
    return run


def test_adapter_chain_run_equals_the_merged_run(merged_run, adapter_run, tiny_squad_model):
    for r in (0, 1):
        assert (merged_run / f"round_{r}" / "policy" / "model.safetensors").is_file()
        assert not (merged_run / f"round_{r}" / "adapter").exists()
        assert not (adapter_run / f"round_{r}" / "policy").exists()
        files = {f.name for f in (adapter_run / f"round_{r}" / "adapter").iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", CHAIN_FILE, "tokenizer.json"} <= files
        assert "model.safetensors" not in files
    # Round 1 sampled from round 0's chain and trained on it: every self-edit, reward and
    # metric is the merged run's.
    renamed = [{**m, "next_policy": m["next_policy"].replace("adapter", "policy"), "policy": m["policy"].replace("adapter", "policy")} for m in metrics(adapter_run)]
    assert renamed == metrics(merged_run)
    assert (adapter_run / "round_1" / "self_edits.json").read_text() == (merged_run / "round_1" / "self_edits.json").read_text()
    assert read_json(adapter_run / "final.json")["policy"] == "round_1/adapter"

    chain = adapter_run / "round_1" / "adapter"
    base, revision, adapters = read_chain(chain)
    assert base == str(tiny_squad_model.resolve()) and revision is None
    assert adapters == [(adapter_run / "round_0" / "adapter").resolve(), chain.resolve()]
    assert json.loads((chain / "adapter_config.json").read_text())["base_model_name_or_path"] == str(adapter_run / "round_0" / "adapter")

    from_chain = load_causal_lm(chain).state_dict()
    merged = load_causal_lm(merged_run / "round_1" / "policy").state_dict()
    assert from_chain.keys() == merged.keys()
    assert all(torch.equal(from_chain[k], merged[k]) for k in merged)
    base_weights = load_causal_lm(tiny_squad_model).state_dict()
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], base_weights["model.layers.0.self_attn.q_proj.weight"])

    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    (m1, _), (m2, _) = load_model(chain, device="cpu"), load_model(merged_run / "round_1" / "policy", device="cpu")
    with torch.no_grad():
        assert torch.equal(m1(ids).logits, m2(ids).logits)


def test_peft_alone_loads_a_round_adapter(merged_run, adapter_run, tiny_squad_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_squad_model), adapter_run / "round_0" / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_run / "round_0" / "policy").eval()
    with torch.no_grad():  # unmerged LoRA (x W + x A B s) against merged weights: float rounding apart
        torch.testing.assert_close(peft_model(ids).logits, merged(ids).logits, rtol=1e-5, atol=1e-5)


def test_bench_train_run_reads_adapter_chains(adapter_run):
    specs, rows = train_run_sources(adapter_run)
    assert [s.source for s in specs] == [f"policy:{adapter_run / f'round_{r}' / 'adapter'}" for r in (0, 1)]
    assert all(is_adapter_chain(s.source.removeprefix("policy:")) for s in specs)
    model, tok = load_model(specs[1].source.removeprefix("policy:"), device="cpu")
    assert tok.pad_token is not None and model.config.pad_token_id is not None


def test_run_json_records_the_model_and_save_is_result_neutral(adapter_run, tiny_squad_model, data_root):
    info = read_json(adapter_run / "run.json")
    assert info["model"] == {"name_or_path": str(tiny_squad_model), "revision": None, "commit": None}  # a local folder
    assert info["versions"]["seal"] and info["machine"]["cpu"]
    # Switching rl.save (or the hub settings) on resume is allowed: the weights are the same.
    run_train(tiny_squad_model, data_root, adapter_run, resume=True, rl__rounds=2, rl__save="both")


def test_resolved_commit_reads_the_local_hub_cache(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "refs" / "v1").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    assert hub.resolved_commit("someone/tiny", None, cache_dir=tmp_path) == commit
    assert hub.resolved_commit("someone/tiny", "v1", cache_dir=tmp_path) == commit
    assert hub.resolved_commit("someone/tiny", commit, cache_dir=tmp_path) == commit
    assert hub.resolved_commit("someone/tiny", "v2", cache_dir=tmp_path) is None  # not in the cache: unknown
    assert hub.resolved_commit("someone/other", None, cache_dir=tmp_path) is None
    assert hub.resolved_commit(str(tmp_path), None, cache_dir=tmp_path) is None  # a local folder


def test_revision_picks_the_pinned_commit_from_the_hub_cache(tiny_squad_model, tmp_path):
    """A hub model with two commits in a local hub cache (offline): ``model.revision`` picks
    the pinned one, None the default branch's, and run.json's commit lookup agrees."""
    import shutil

    from transformers import AutoModelForCausalLM

    old, new = "a" * 40, "b" * 40
    repo = tmp_path / "models--someone--tiny"
    (repo / "refs").mkdir(parents=True)
    shutil.copytree(tiny_squad_model, repo / "snapshots" / old)
    changed = AutoModelForCausalLM.from_pretrained(tiny_squad_model)
    with torch.no_grad():
        changed.model.layers[0].self_attn.q_proj.weight.mul_(2)
    changed.save_pretrained(repo / "snapshots" / new)
    (repo / "refs" / "v1").write_text(old)
    (repo / "refs" / "main").write_text(new)
    q = "model.layers.0.self_attn.q_proj.weight"
    pinned = load_causal_lm("someone/tiny", "v1", cache_dir=tmp_path).state_dict()[q]
    default = load_causal_lm("someone/tiny", None, cache_dir=tmp_path).state_dict()[q]
    torch.testing.assert_close(default, 2 * pinned)
    assert hub.resolved_commit("someone/tiny", "v1", cache_dir=tmp_path) == old
    assert hub.resolved_commit("someone/tiny", None, cache_dir=tmp_path) == new


def test_model_card_names_recipe_round_and_rewards(adapter_run):
    card = hub.model_card(RunDir(adapter_run), adapter_run / "round_1" / "adapter")
    rows = [json.loads(line) for line in (adapter_run / "metrics.jsonl").read_text().splitlines()]
    assert "library_name: peft" in card and "squad_tiny_cpu" in card
    assert "the policy after ReST-EM round 1 (2 rounds)" in card
    assert "| round | baseline accuracy | adapted accuracy | mean reward | best-of-k reward | kept |" in card
    for m in rows:
        assert f"| {m['round']} | " in card and f"| {m['n_kept']} |" in card
    assert "rl:\n  algorithm: restem" in card and "save: adapter" in card  # the resolved recipe


def test_staged_adapter_chain_loads_to_the_same_weights(adapter_run, tmp_path):
    staged = hub.stage_policy(RunDir(adapter_run), adapter_run / "round_1" / "adapter", tmp_path / "staged")
    assert (staged / "README.md").is_file() and (staged / "adapters" / "0" / "adapter_model.safetensors").is_file()
    a, b = load_causal_lm(staged).state_dict(), load_causal_lm(adapter_run / "round_1" / "adapter").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_push_off_stages_and_sends_nothing_push_on_sends_once(merged_run, monkeypatch):
    sent = []
    monkeypatch.setattr(hub, "upload_folder", lambda folder, repo_id, private: sent.append((folder, repo_id, private)) or "url")
    run = RunDir(merged_run)
    off = load_recipe(RECIPE, ["model.build_tiny=null"]).hub
    assert hub.push_policy(run, merged_run / "round_1" / "policy", off) is None
    assert sent == [] and not (merged_run / "hub").exists()
    on = load_recipe(RECIPE, ["model.build_tiny=null", "hub.push_to_hub=true", "hub.repo_id=someone/seal-tiny"]).hub
    assert hub.push_policy(run, merged_run / "round_1" / "policy", on, log=lambda _: None) == "url"
    assert sent == [(merged_run / "hub", "someone/seal-tiny", True)]
    assert {"README.md", "model.safetensors", "config.json"} <= {f.name for f in (merged_run / "hub").iterdir()}
    assert "library_name: transformers" in (merged_run / "hub" / "README.md").read_text()


def test_push_needs_a_repo_id():
    with pytest.raises(RecipeError, match="hub.push_to_hub needs hub.repo_id"):
        load_recipe(RECIPE, ["hub.push_to_hub=true"])


def test_grpo_writes_the_merged_policy_and_the_adapter_chain(tiny_squad_model, data_root, tmp_path):
    """``rl.save: both`` under GRPO (one TRL step): grpo/adapter is a one-adapter chain on the
    base that loads to grpo/policy's weights; final.json names the merged policy."""
    from test_grpo import grpo_overrides

    recipe = load_recipe(RECIPE, grpo_overrides(tiny_squad_model, data_root) + ["rl.grpo.steps=1", "rl.save=both"])
    with one_thread():
        run = train(recipe, tmp_path / "run", console=quiet())
    assert read_json(run / "final.json")["policy"] == "grpo/policy"
    base, _, adapters = read_chain(run / "grpo" / "adapter")
    assert base == str(tiny_squad_model.resolve()) and adapters == [(run / "grpo" / "adapter").resolve()]
    a, b = load_causal_lm(run / "grpo" / "adapter").state_dict(), load_causal_lm(run / "grpo" / "policy").state_dict()
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    with pytest.raises(RecipeError, match="grpo/policy"):
        train_run_sources(run)


def test_load_policy_dtype_auto_is_the_checkpoint_dtype_for_every_stage(tiny_squad_model, tmp_path):
    """``seal.models.load_policy``, the one loader of a run: ``model.dtype: auto`` is the
    checkpoint's dtype both for sampling / the inner loop and for training (the ReST-EM policy
    update, GRPO), where it used to be float32; a float32 checkpoint stays float32 (today's CPU
    recipes, bit for bit). An explicit dtype wins over the checkpoint's."""
    import shutil

    from transformers import AutoModelForCausalLM

    from seal.config import ModelConfig
    from seal.models import load_policy

    bf16_dir = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_squad_model, dtype=torch.bfloat16).save_pretrained(bf16_dir)
    for f in tiny_squad_model.glob("tokenizer*"):
        shutil.copy(f, bf16_dir / f.name)
    auto = ModelConfig(name_or_path=str(tiny_squad_model), dtype="auto", device="cpu")

    def dtypes(model) -> set:
        return {p.dtype for p in model.parameters()}

    for for_training in (False, True):
        assert dtypes(load_policy(auto, bf16_dir, for_training=for_training)[0]) == {torch.bfloat16}
        assert dtypes(load_policy(auto, for_training=for_training)[0]) == {torch.float32}
        assert dtypes(load_policy(auto.model_copy(update={"dtype": "float16"}), bf16_dir, for_training=for_training)[0]) == {torch.float16}
    assert load_policy(auto, for_training=True)[1].pad_token is not None  # the tokenizer comes with it
