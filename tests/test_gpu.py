"""The GPU path on a CUDA device (marker ``gpu``; every test here is skipped without one).

* batched vs sequential inner loop on CUDA: in fp32 (close) and in bf16 (within bf16's own
  precision, the tolerance of the CPU test ``test_bf16_batched_matches_sequential_within_bf16_precision``);
* out-of-memory retry: a batch of adapters that does not fit is retried in halves by
  ``run_in_halves``, every adapter then succeeds, and the memory allocated returns to where it
  started (nothing of the failed attempt stays referenced);
* one tiny ``seal train`` round (``recipes/squad_tiny_cpu.yaml`` with overrides) on ``cuda``.

Run: ``python -m pytest -m gpu -v`` (or ``benchmarks/gpu_check.sh``, which also runs the
inner-loop benchmark at 0.5B, 1.5B and 7B). Not measured yet: no GPU was available when
these were written, so the tolerances below are the CPU ones or stated guesses.
"""

from __future__ import annotations

import pytest
import torch
from test_inner_loop import (
    PROMPTS,
    TEXTS,
    bf16_batching_errors,
    build_model_dir,
    make_cfg,
    trained_weights,
    unequal_jobs,
)

from seal.config import InnerLoopConfig, LoraConfig
from seal.inner_loop import AdapterJob, free_memory, run_inner_loop
from seal.models import load_model, load_tokenizer
from seal.multi_lora import adapter_bank
from seal.scoring import run_in_halves

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device (torch.cuda.is_available() is False)",
    ),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir(tmp_path_factory)


def test_fp32_batched_equals_sequential_on_cuda(model_dir):
    """fp32 on CUDA: batched and sequential adapters agree closely (cuBLAS may pick other
    kernels for other batch shapes, so 1e-3 relative rather than the CPU's 1e-5; a guess)."""
    model, tok = load_model(model_dir, dtype="float32", device="cuda")
    cfg, jobs = make_cfg(), unequal_jobs()
    w4, s4 = trained_weights(model, tok, jobs, cfg, 4)
    w1, s1 = trained_weights(model, tok, jobs, cfg, 1)
    for a, b, sa, sb in zip(w4, w1, s4, s1, strict=True):
        assert sa.error is None and sb.error is None
        assert sa.epoch_losses == pytest.approx(sb.epoch_losses, rel=1e-5)
        for name in a:
            delta_a = a[name][1] @ a[name][0]
            delta_b = b[name][1] @ b[name][0]
            assert float((delta_a - delta_b).norm() / delta_b.norm()) < 1e-3, name
    r4 = run_inner_loop(model, tok, jobs, cfg.model_copy(update={"batch_adapters": 4}), 8)
    r1 = run_inner_loop(model, tok, jobs, cfg, 8)
    assert [r.answers for r in r4] == [r.answers for r in r1]


def test_bf16_batched_matches_sequential_on_cuda(model_dir):
    """bf16 base, fp32 adapters on CUDA: batching adds no error beyond bf16's own (the
    batched-vs-sequential error of the weight changes is below the bf16-vs-fp32 one, the CPU
    test's tolerance), and epoch losses agree to 5e-3 relative (CPU: 1e-3; GPU kernels may
    round differently per batch shape, so a guessed margin)."""
    batching, dtype_error, loss_err = bf16_batching_errors(model_dir, "cuda")
    assert batching < dtype_error, (batching, dtype_error)
    assert loss_err < 5e-3
    model, tok = load_model(model_dir, dtype="bfloat16", device="cuda")
    with adapter_bank(model, make_cfg().lora, 2) as bank:
        assert bank.params.dtype == torch.float32 and bank.params.device.type == "cuda"


def test_out_of_memory_retry_succeeds_and_releases_memory(model_dir):
    """Leave room for a few adapters only (a tensor fills the rest of the device), run 8 in
    one batch through ``run_in_halves`` as ``seal train`` does: the batch of 8 runs out of
    memory, the halves succeed, and ``torch.cuda.memory_allocated`` is back at its start."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(model_dir)
    # LoRA state dominates here: rank 256 on all 7 projections of a 2-layer, width-1024 model
    # is D ~ 12 M values, 16 * D ~ 190 MB per adapter (fp32 weights, gradient, Adam m and v).
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=1024, intermediate_size=4096, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=8, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).eval()
    lora = LoraConfig(
        rank=256,
        alpha=512,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    inner = InnerLoopConfig(lora=lora, epochs=1, lr=1e-3, max_length=48, batch_adapters=8)
    jobs = [AdapterJob(texts=TEXTS[i % 7 : i % 7 + 2], prompts=PROMPTS[:1], seed=i) for i in range(8)]

    def run(chunk: list[AdapterJob]) -> None:
        cfg = inner.model_copy(update={"batch_adapters": len(chunk)})
        for job, result in zip(chunk, run_inner_loop(model, tok, chunk, cfg, 4), strict=True):
            results[job.seed] = result

    with adapter_bank(model, lora, 1) as bank:
        per_adapter = 16 * bank.dim
    results: dict = {}
    run(jobs[:1])  # warm-up: cuBLAS workspaces and the like stay allocated after a first use
    free_memory()
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run(jobs[:1])  # what one adapter needs at its peak
    one = torch.cuda.max_memory_allocated() - start
    free_memory()
    assert torch.cuda.memory_allocated() == start

    # Room for one adapter's run plus ~2.5 more adapters' state: 8 cannot fit, 1 always does.
    room = one + int(2.5 * per_adapter) + 64 * 2**20
    free, _ = torch.cuda.mem_get_info()
    assert free > room, "the device is too full for this test"
    filler = torch.empty(free - room, dtype=torch.uint8, device="cuda")
    retries, failures, results = [], [], {}
    try:
        run_in_halves(
            jobs,
            run,
            lambda job, reason, seconds: failures.append((job.seed, reason)),
            on_retry=lambda n, reason: retries.append((n, reason)),
        )
    finally:
        del filler
    free_memory()
    assert retries and retries[0][0] == 8 and "out of memory" in retries[0][1], retries
    assert failures == []
    assert sorted(results) == list(range(8))
    assert all(r.error is None and len(r.answers) == 1 for r in results.values())
    assert torch.cuda.memory_allocated() == start


@pytest.mark.timeout(600)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_seal_train_round_on_cuda(tiny_squad_model, data_root, tmp_path, dtype):
    """One tiny ``seal train`` round with ``model.device=cuda``: every evaluation succeeds and
    the round's policy and metrics are written. Needs TRL (the ReST-EM policy update)."""
    pytest.importorskip("trl", reason="seal train's policy update (ReST-EM M-step) needs TRL")
    from train_helpers import RECIPE, tiny_overrides
    from typer.testing import CliRunner

    from seal.cli import app
    from seal.rundir import read_jsonl

    run = tmp_path / "run"
    overrides = tiny_overrides(
        tiny_squad_model, data_root, model__device="cuda", model__dtype=dtype,
        self_edit__k=2, inner__batch_adapters=2,
    )  # fmt: skip
    res = CliRunner().invoke(app, ["train", str(RECIPE), *overrides, "--run-dir", str(run)])
    assert res.exit_code == 0, res.output
    evals = [r for r in read_jsonl(run / "journal.jsonl") if r["kind"] == "evaluation"]
    assert len(evals) == 4 and all(r["error"] is None for r in evals)
    assert (run / "round_0" / "metrics.json").is_file()
    assert (run / "round_0" / "policy").is_dir()


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory, squad_train):
    """A tiny random Llama that vLLM can serve (head size 64), with its BPE tokenizer."""
    pytest.importorskip("vllm", reason="self_edit.backend vllm needs vLLM (pip install 'seal[vllm]')")
    from seal.models import build_tiny_model

    texts = [t for p in squad_train[:40] for t in (p.title, p.context, *(q.question + " " + q.answer for q in p.questions))]
    return build_tiny_model(tmp_path_factory.mktemp("vllm") / "model", texts, vocab_size=512, hidden_size=128, num_layers=2, num_heads=2)


@pytest.mark.timeout(600)
def test_vllm_self_edits_are_seeded_per_passage_and_memory_is_handed_back(vllm_model, squad_train):
    """seal.vllm_backend on the engine: a passage's k samples depend on its identity only (the
    same whether it is sampled with three other passages or alone, in a second engine), the
    counts follow the request, and close() gives the GPU memory back."""
    from seal.config import SelfEditConfig, VLLMConfig
    from seal.vllm_backend import VLLMSampler, stop_token_ids

    tok = load_tokenizer(vllm_model)
    settings = VLLMConfig(gpu_memory_utilization=0.2, max_model_len=1024, enforce_eager=True)
    free_before = torch.cuda.mem_get_info()[0]
    sampling = SelfEditConfig(template="implications", k=3, temperature=1.0, top_p=0.95, max_new_tokens=48)
    args = dict(tokenizer=tok, config=sampling, seed=5, stop_ids=stop_token_ids(None, tok))
    sampler = VLLMSampler(vllm_model, settings, dtype="float32")
    four = sampler.generate(squad_train[:4], [0, 1, 2, 3], **args)
    again = sampler.generate(squad_train[2:3], [2], **args)
    sampler.close()
    assert torch.cuda.mem_get_info()[0] > free_before - 2**30  # within 1 GiB of where it started
    assert [len(edits) for edits in four] == [3, 3, 3, 3]
    assert again[0] == four[2]
    assert len({e.text for e in four[0]}) > 1  # k samples, not k copies


@pytest.mark.timeout(600)
def test_seal_train_round_with_vllm_self_edits(vllm_model, data_root, tmp_path):
    """One tiny ``seal train`` round with ``self_edit.backend=vllm``: self-edits from vLLM, then
    the HF inner loop on the same GPU after the engine was torn down."""
    pytest.importorskip("trl", reason="seal train's policy update (ReST-EM M-step) needs TRL")
    from train_helpers import RECIPE, tiny_overrides
    from typer.testing import CliRunner

    from seal.cli import app
    from seal.rundir import read_json, read_jsonl

    run = tmp_path / "run"
    overrides = tiny_overrides(
        vllm_model, data_root, model__device="cuda", self_edit__k=2, inner__batch_adapters=2, self_edit__backend="vllm",
        self_edit__vllm__gpu_memory_utilization=0.2, self_edit__vllm__max_model_len=1024, self_edit__vllm__enforce_eager="true",
    )  # fmt: skip
    res = CliRunner().invoke(app, ["train", str(RECIPE), *overrides, "--run-dir", str(run)])
    assert res.exit_code == 0, res.output
    rows = read_json(run / "round_0" / "self_edits.json")
    assert [len(r["completions"]) for r in rows] == [2, 2]
    evals = [r for r in read_jsonl(run / "journal.jsonl") if r["kind"] == "evaluation"]
    assert len(evals) == 4 and all(r["error"] is None for r in evals)
