"""``self_edit.backend: vllm`` on a CPU: everything around vLLM's engine (requests, seeds per
identity, the mapping of its outputs to self-edits, TRL's flags, the refusal without CUDA).
The engine itself runs in tests/test_gpu.py (``gpu``-marked) and benchmarks/self_edit_backends.py."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from train_helpers import RECIPE, tiny_recipe

from seal.config import RecipeError, SelfEditConfig, load_recipe
from seal.grpo import trl_config
from seal.models import load_tokenizer
from seal.prompts import self_edit_prompt
from seal.self_edits import SelfEdit
from seal.train import train
from seal.vllm_backend import (
    build_requests,
    check_vllm,
    request_seed,
    self_edits_from_outputs,
    stop_token_ids,
)


def requests_for(tokenizer, passages, indices, seed=7, **kw):
    config = SelfEditConfig(template="implications", k=3, temperature=1.0, top_p=0.95, max_new_tokens=32)
    return build_requests(passages, indices, tokenizer, config, seed, [2], **kw)


def test_requests_carry_the_hf_paths_tokens_and_a_seed_per_passage(tiny_squad_model, squad_train):
    tok = load_tokenizer(tiny_squad_model)
    passages = squad_train[:4]
    requests = requests_for(tok, passages, [10, 11, 12, 13])
    for passage, request in zip(passages, requests, strict=True):
        prompt = self_edit_prompt("implications", passage.title, passage.context, tok, False, "")
        assert request.prompt == prompt and request.token_ids == tok(prompt)["input_ids"]
        assert request.sampling["n"] == 3 and request.sampling["max_tokens"] == 32 and request.sampling["stop_token_ids"] == [2]
        assert request.sampling["temperature"] == 1.0 and request.sampling["top_p"] == 0.95
    seeds = [r.sampling["seed"] for r in requests]
    assert seeds == [request_seed(7, i) for i in (10, 11, 12, 13)] and len(set(seeds)) == 4
    # A passage's request depends on its identity only: not on the chunk it is sampled in.
    alone = requests_for(tok, passages[2:3], [12])
    assert alone[0] == requests[2]
    assert requests_for(tok, passages[:1], [10], seed=8)[0].sampling["seed"] != seeds[0]  # nor the same across recipe seeds / rounds
    assert all(0 <= s < 2**63 for s in seeds)


def test_greedy_requests_and_their_refusals(tiny_squad_model, squad_train):
    tok = load_tokenizer(tiny_squad_model)
    greedy = requests_for(tok, squad_train[:1], [0], k=1, greedy=True)[0]
    assert greedy.sampling["temperature"] == 0.0 and greedy.sampling["n"] == 1
    with pytest.raises(ValueError, match="greedy"):
        requests_for(tok, squad_train[:1], [0], k=2, greedy=True)
    with pytest.raises(ValueError, match="indices"):
        requests_for(tok, squad_train[:2], [0])


def test_stop_tokens_are_the_models_and_the_tokenizers_eos():
    tok = SimpleNamespace(eos_token_id=2)
    assert stop_token_ids([5, 2], tok) == [2, 5] and stop_token_ids(None, tok) == [2] and stop_token_ids(7, SimpleNamespace(eos_token_id=None)) == [7]


def test_outputs_map_to_self_edits_in_order_with_truncation(tiny_squad_model, squad_train):
    tok = load_tokenizer(tiny_squad_model)
    requests = requests_for(tok, squad_train[:2], [0, 1], k=2)

    def completion(text, reason):  # the fields of vllm.CompletionOutput that are read
        return SimpleNamespace(text=text, finish_reason=reason)

    outputs = [
        SimpleNamespace(outputs=[completion(" a\n", "stop"), completion("b", "length")]),
        SimpleNamespace(outputs=[completion("c", "stop"), completion(" d ", "stop")]),
    ]
    edits = self_edits_from_outputs(requests, outputs)
    assert edits == [
        [SelfEdit(requests[0].prompt, "a", False), SelfEdit(requests[0].prompt, "b", True)],
        [SelfEdit(requests[1].prompt, "c", False), SelfEdit(requests[1].prompt, "d", False)],
    ]
    with pytest.raises(ValueError, match="outputs"):
        self_edits_from_outputs(requests, outputs[:1])
    with pytest.raises(ValueError, match="completions"):
        self_edits_from_outputs(requests, [outputs[0], SimpleNamespace(outputs=[completion("c", "stop")])])


def test_vllm_is_refused_on_a_cpu_with_a_clear_message(tiny_squad_model, data_root, tmp_path):
    with pytest.raises(RecipeError, match=r"self_edit.backend vllm runs on a CUDA GPU"):
        load_recipe(RECIPE, ["self_edit.backend=vllm"])  # the recipe's model.device is cpu
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(RecipeError, match="needs a CUDA device"):
        check_vllm("auto")
    recipe = tiny_recipe(tiny_squad_model, data_root, model__device="auto", self_edit__backend="vllm")
    with pytest.raises(RecipeError, match="needs a CUDA device"):
        train(recipe, tmp_path / "run", console=Console(file=io.StringIO()))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_grpo_passes_vllm_through_to_trl(tiny_squad_model, data_root, tmp_path):
    extra = dict(rl__algorithm="grpo", inner__learner="base", rl__grpo__prompts_per_step=2, rl__grpo__num_generations=2)
    plain = trl_config(tiny_recipe(tiny_squad_model, data_root, **extra), tmp_path)
    assert not plain.use_vllm
    recipe = tiny_recipe(tiny_squad_model, data_root, model__device="auto", self_edit__backend="vllm", self_edit__vllm__gpu_memory_utilization=0.25, **extra)
    args = trl_config(recipe, tmp_path)
    assert args.use_vllm and args.vllm_mode == "colocate" and args.vllm_gpu_memory_utilization == 0.25


def test_bench_and_evaluate_refuse_vllm_on_a_cpu_before_writing(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    from seal.bench.run import bench
    from seal.evaluate import evaluate

    repo = RECIPE.parent
    recipe = load_recipe(repo / "bench_squad_tiny_cpu.yaml", ["model.device=auto", "self_edit.backend=vllm"])
    with pytest.raises(RecipeError, match="needs a CUDA device"):
        bench(recipe, tmp_path / "bench", console=Console(file=io.StringIO()))
    recipe = load_recipe(RECIPE, ["model.device=auto", "self_edit.backend=vllm", "evaluate.source=policy:some/model"])
    with pytest.raises(RecipeError, match="needs a CUDA device"):
        evaluate(recipe, tmp_path / "eval", console=Console(file=io.StringIO()))
    assert not (tmp_path / "bench").exists() and not (tmp_path / "eval").exists()
