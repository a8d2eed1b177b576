"""Self-edits per second: HF ``generate`` (``self_edit.backend: hf``) vs vLLM (``vllm``), one GPU.

    python benchmarks/self_edit_backends.py --model-config qwen2.5-0.5b --output benchmarks/results/self_edits

Samples ``--k`` self-edits for each of ``--n-passages`` SQuAD training passages with both
backends, through seal's own code paths (``seal.self_edits.generate_self_edits`` in chunks
of ``--batch-size`` passages; ``seal.vllm_backend.VLLMSampler``, all passages in one call),
and reports self-edits per second, generated tokens per second and vLLM's engine start-up
time (counted apart: ``seal train`` pays it once per round).

The model: ``--model PATH`` (a local model folder), or ``--model-config`` a Qwen2.5
architecture with random weights (no download; ``benchmarks/inner_loop.py``'s
configurations) whose vocabulary is cut to the local BPE tokenizer's 2048 ids so that every
sampled id decodes (the LM head is then smaller than the real model's 151,936 ids). A random
model rarely samples EOS, so nearly every self-edit runs to ``--max-new-tokens``: both
backends decode the same budget, which is what is compared. Needs CUDA and vLLM
(``pip install 'seal[vllm]'``); ``--skip-vllm`` measures HF alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def build_random_model(name: str, out: Path, dtype: torch.dtype) -> Path:
    """``name``'s architecture (random weights, vocabulary = the bench tokenizer's) saved to ``out``."""
    from inner_loop import QWEN25_CONFIGS, bench_tokenizer
    from transformers import AutoModelForCausalLM, Qwen2Config

    if (out / "config.json").is_file():
        return out
    tok = bench_tokenizer(REPO / ".cache" / "inner_loop_bench", None)
    dims = dict(QWEN25_CONFIGS[name]) | {"vocab_size": len(tok)}
    cfg = Qwen2Config(**dims, rope_theta=1e6, rms_norm_eps=1e-6, use_sliding_window=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def n_tokens(tok, edits) -> int:
    return sum(len(tok(e.text, add_special_tokens=False)["input_ids"]) for per in edits for e in per)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="a local model folder (else --model-config)")
    p.add_argument("--model-config", default="qwen2.5-0.5b")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--n-passages", type=int, default=64)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16, help="HF: passages per generate() call")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    p.add_argument("--skip-vllm", action="store_true")
    p.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "self_edit_backends")
    a = p.parse_args()

    from seal.config import SelfEditConfig, VLLMConfig
    from seal.data import default_data_root, load_passages
    from seal.models import load_model
    from seal.self_edits import generate_self_edits
    from seal.vllm_backend import VLLMSampler, stop_token_ids

    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[a.dtype]
    path = a.model or build_random_model(a.model_config, REPO / ".cache" / "self_edit_bench" / f"{a.model_config}-random", dtype)
    passages = load_passages("squad/train_100.json", a.n_passages, default_data_root())
    sampling = SelfEditConfig(template="implications", k=a.k, temperature=1.0, top_p=0.95, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size)
    warm_up = sampling.model_copy(update={"max_new_tokens": 8, "batch_size": 1})
    rows = []

    model, tok = load_model(path, dtype=a.dtype, device="cuda")
    generate_self_edits(model, tok, passages[:1], warm_up, seed=0)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    edits = generate_self_edits(model, tok, passages, sampling, seed=0)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    rows.append({"backend": "hf", "seconds": seconds, "startup_s": 0.0, "self_edits": a.n_passages * a.k, "tokens": n_tokens(tok, edits)})
    stop = stop_token_ids(model.generation_config.eos_token_id, tok)
    del model
    torch.cuda.empty_cache()

    if not a.skip_vllm:
        settings = VLLMConfig(gpu_memory_utilization=a.gpu_memory_utilization, max_model_len=4096)
        sampler = VLLMSampler(str(path), settings, dtype=a.dtype)
        t0 = time.perf_counter()
        sampler.generate(passages[:1], [0], tok, warm_up, 0, stop)  # engine start + warm-up
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        edits = sampler.generate(passages, list(range(len(passages))), tok, sampling, 0, stop)
        seconds = time.perf_counter() - t0
        sampler.close()
        rows.append({"backend": "vllm", "seconds": seconds, "startup_s": startup, "self_edits": a.n_passages * a.k, "tokens": n_tokens(tok, edits)})

    a.output.mkdir(parents=True, exist_ok=True)
    setup = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()} | {"device": torch.cuda.get_device_name(0), "model_path": str(path)}
    (a.output / "self_edit_backends.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))
    lines = [
        f"# Self-edit sampling, HF vs vLLM ({setup['device']}, {a.model or a.model_config}, {a.dtype}, {a.n_passages} passages x k={a.k}, {a.max_new_tokens} new tokens)",
        "",
        "| backend | self-edits/s | tokens/s | seconds | engine start-up s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['self_edits'] / r['seconds']:.1f} | {r['tokens'] / r['seconds']:.0f} | {r['seconds']:.1f} | {r['startup_s']:.1f} |")
    (a.output / "self_edit_backends.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
