"""Inner-loop throughput: the reference design vs our sequential and batched LoRA inner loop.

One *self-edit evaluation* = train a fresh LoRA adapter on one self-edit's texts (title-
prefixed parts, passage last) and answer the passage's questions greedily without the
passage (paper Section 4.2). Variants:

* ``reference``: the reference implementation's design, one evaluation at a time: PEFT
  ``get_peft_model`` + HF ``Trainer`` (batch 1, no eval, no saving, ``report_to=none``),
  texts tokenized with ``padding="max_length"`` and ``labels = input_ids`` (loss on the
  padding, pad = EOS, as its TTT server does), adapter written with ``save_pretrained``
  and read back with ``PeftModel.from_pretrained``, then one ``generate`` per question.
* ``sequential``: ``seal.inner_loop.run_inner_loop`` with ``batch_adapters=1``.
* ``batched``: the same with N adapters trained and scored together.

Reported per variant (medians over ``--repeats``): self-edit evaluations per second (and
seconds per evaluation), peak memory growth (MB = MiB; on CPU the peak resident set size over the RSS at the
start of the run, via Linux's VmHWM reset through /proc/self/clear_refs, after
``gc.collect`` + ``malloc_trim``; on CUDA ``torch.cuda.max_memory_allocated`` growth, and its absolute peak, weights included), and
model FLOPs utilisation: useful FLOPs over wall time, against a timed large
``torch.matmul`` of this machine. Useful FLOPs: 4 * P per real training token (forward
2P + input gradients 2P; a frozen base needs no weight gradients, so the textbook 6P
would overstate the work by 1.5x), 2 * P per prompt and answer token, plus causal
attention (P = weights of all linear layers incl. the LM head). Padding is not useful
work, so the reference's padding to max_length shows up as low utilisation. Sequential and batched must give identical answers and rewards (the
reward is the ``contains`` grader's accuracy gain over the base model).

Usage::

    python benchmarks/inner_loop.py [--output DIR] [--n-self-edits 32] [--repeats 3] [--model DIR]
    python benchmarks/inner_loop.py --model-config qwen2.5-7b [--layers N] [--n-reference 0]

Without ``--model`` a tiny Llama model (hidden 128, 2 layers) is built once in ``.cache/``:
a tokenizer trained on SQuAD text and a short pretraining on SQuAD passages and
question/answer lines, so that it answers briefly and stops at EOS like a real model.

``--model-config qwen2.5-0.5b|qwen2.5-1.5b|qwen2.5-7b`` needs no download: it builds that
architecture (a transformers ``Qwen2Config`` with the published dimensions of
:data:`QWEN25_CONFIGS`) with random weights, initialised directly on ``--device`` in
``--dtype`` (bfloat16 by default); ``--layers N`` keeps only N decoder layers (smoke runs).
The tokenizer is the tiny model's local BPE tokenizer (2048 ids, trained once on SQuAD
text), whose ids all lie inside Qwen2.5's vocabulary, so the training texts and prompts
have realistic lengths in tokens, if not Qwen's exact token counts. Random weights never
stop at EOS, and may pick ids the tokenizer does not have: with such a model the answers
decode the full ``--max-new-tokens`` budget, the LM head's logits of the tokenizer's
special tokens (EOS among them) and of ids beyond its vocabulary being set to -inf during
generation (never during training). That is the worst case for generation time (a real
model stops at EOS after a few tokens), and the FLOP count uses exactly that many tokens.
Rewards of a random model mean nothing; ``answers = sequential`` still checks that the
batched inner loop computes what the sequential one does (bit-for-bit on fp32 CPUs; in
bf16 on a GPU, matmuls of different batch shapes may round differently, so the share of
identical answers is reported too).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from seal.config import InnerLoopConfig, LoraConfig  # noqa: E402
from seal.data import Passage, load_passages, resolve_data_path  # noqa: E402
from seal.inner_loop import AdapterJob, answer_questions, run_inner_loop, tokenize_texts  # noqa: E402
from seal.models import build_tiny_model, load_model, peft_lora_config, resolve_attn_implementation  # noqa: E402
from seal.seeding import derive_seed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Published dimensions of the Qwen2.5 base models (source: each model's config.json on the
# Hugging Face hub, Qwen/Qwen2.5-0.5B, Qwen/Qwen2.5-1.5B, Qwen/Qwen2.5-7B). All three use
# rope_theta 1e6, rms_norm_eps 1e-6, SiLU MLPs, biases on q/k/v, no sliding window. The 7B
# has an untied LM head and a vocabulary padded to 152064 (the smaller ones: 151936, tied).
QWEN25_CONFIGS = {
    "qwen2.5-0.5b": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
        max_position_embeddings=32768,
    ),
    "qwen2.5-1.5b": dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
        max_position_embeddings=131072,
    ),
    "qwen2.5-7b": dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
        max_position_embeddings=131072,
    ),
}  # fmt: skip
SELF_EDITS = "squad/train_100_selfedits_qwen2.5-7b_base.json"
QA_TEMPLATE = "Let's answer a question directly and concisely.\nQuestion: {question}\nAnswer:\n"


# ----------------------------------------------------------------------------- data


def qa_prompt(title: str, question: str) -> str:
    try:
        from seal.prompts import qa_prompt as project_prompt
    except ImportError:
        return QA_TEMPLATE.format(question=f"Topic: {title}\n{question}")
    return project_prompt(title, question)


def train_texts(passage: Passage, completion: str, split_newlines: bool) -> list[str]:
    try:
        from seal.self_edits import train_texts as project_texts
    except ImportError:  # the simple way: '---' parts (or lines), title-prefixed, passage last
        parts = [p.strip() for p in completion.split("---") if p.strip()]
        if split_newlines:
            parts = [ln.strip() for p in parts for ln in p.splitlines() if ln.strip()]
        return [f"{passage.title}\n{t}" for t in parts] + [f"{passage.title}\n{passage.context}"]
    return project_texts(passage, completion, split_newlines)


def contains(prediction: str, gold: str) -> float:
    from seal.graders import contains as grader

    return grader(prediction, gold)


@dataclass
class Evaluation:
    passage: Passage
    job: AdapterJob


def load_evaluations(path: Path, n: int, split_newlines: bool) -> list[Evaluation]:
    """The first self-edit of each of the first ``n`` passages (cycling to later self-edits if n > passages)."""
    passages = load_passages(path, require_completions=True)
    evals = []
    for i in range(n):
        p = passages[i % len(passages)]
        completion = p.completions[(i // len(passages)) % len(p.completions)]
        prompts = [qa_prompt(p.title, q.question) for q in p.questions]
        job = AdapterJob(
            texts=train_texts(p, completion, split_newlines),
            prompts=prompts,
            seed=derive_seed(0, "bench", i),
        )
        evals.append(Evaluation(p, job))
    return evals


# ----------------------------------------------------------------------------- model


def pretrain_texts(root: Path | None) -> list[str]:
    """QA lines (prompt + answer + EOS) and passages of SQuAD passages the benchmark does not score."""
    texts = []
    for name in ("squad/pool_767.json", "squad/val_200.json"):
        for p in load_passages(resolve_data_path(name, root)):
            texts.append(f"{p.title}\n{p.context}")
            texts += [qa_prompt(p.title, q.question) + q.answer for q in p.questions]
    return texts


def build_bench_model(cache: Path, root: Path | None, hidden: int, layers: int, steps: int) -> Path:
    """Build (once) the tiny benchmark model in ``cache``; returns its directory."""
    out = cache / f"tiny-h{hidden}-l{layers}-s{steps}"
    if (out / "config.json").is_file():
        return out
    print(f"building the tiny benchmark model in {out} (once) ...", flush=True)
    t0 = time.perf_counter()
    corpus = [f"{p.title}\n{p.context}" for p in load_passages(resolve_data_path(SELF_EDITS, root))]
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache))
    tok_dir = build_tiny_model(
        tmp / "tok",
        corpus + pretrain_texts(root),
        vocab_size=2048,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=4,
    )
    model, tok = load_model(tok_dir, device="cpu")
    _pretrain(model, tok, pretrain_texts(root), steps)
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    (tmp / "model").rename(out)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def bench_tokenizer(cache: Path, root: Path | None):
    """The tiny model's tokenizer (the same BPE training as :func:`build_bench_model`, 2048
    ids), built once in ``cache`` without the model: the tokenizer of ``--model-config`` runs."""
    from seal.models import load_tokenizer, train_tokenizer

    out = cache / "tokenizer-2048"
    if not (out / "tokenizer.json").is_file():
        corpus = [f"{p.title}\n{p.context}" for p in load_passages(resolve_data_path(SELF_EDITS, root))]
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache))
        train_tokenizer(corpus + pretrain_texts(root), 2048).save_pretrained(tmp)
        tmp.rename(out)
    return load_tokenizer(out)


def build_config_model(
    name: str, tok, layers: int | None, dtype: torch.dtype, device: torch.device, attn: str | None
):
    """A Qwen2.5 architecture of :data:`QWEN25_CONFIGS` with random weights, built directly
    on ``device`` in ``dtype`` (no fp32 copy on the host), in eval mode."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    dims = dict(QWEN25_CONFIGS[name])
    if layers:
        dims["num_hidden_layers"] = layers
    if len(tok) > dims["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tok)} ids, more than {name}'s {dims['vocab_size']}")
    cfg = Qwen2Config(
        **dims,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        use_sliding_window=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    kwargs = {"attn_implementation": attn} if attn else {}
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, **kwargs)
    model.to(device).eval()  # a no-op when the weights were created there
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def decode_full_budget(model, tok) -> None:
    """Make greedy decoding of a random model use its whole token budget: during generation
    (inference mode) the LM head's logits of the tokenizer's special tokens (EOS among them)
    and of ids the tokenizer does not have are -inf. Training (autograd on) is untouched."""
    head = model.get_output_embeddings()
    banned = torch.zeros(head.out_features, dtype=torch.bool)
    banned[len(tok) :] = True
    banned[[i for i in tok.all_special_ids if i < head.out_features]] = True
    banned = banned.to(head.weight.device)

    def hook(module, args, output):
        if torch.is_inference_mode_enabled():
            return output.masked_fill(banned, float("-inf"))
        return None

    head.register_forward_hook(hook)


def _pretrain(
    model, tok, texts: list[str], steps: int, batch: int = 32, max_len: int = 128
) -> None:
    """A few hundred AdamW steps of next-token prediction, fixed seed (deterministic given the data)."""
    rows = [r for r in tokenize_texts(tok, texts, max_len)]
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (1 - s / steps)
    )
    model.train()
    for _ in range(steps):
        pick = torch.randint(len(rows), (batch,), generator=gen).tolist()
        width = max(len(rows[i]) for i in pick)
        ids = torch.tensor([rows[i] + [tok.pad_token_id] * (width - len(rows[i])) for i in pick])
        mask = (
            torch.arange(width)[None, :] < torch.tensor([len(rows[i]) for i in pick])[:, None]
        ).long()
        loss = model(
            input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()
    print(f"  pretraining loss after {steps} steps: {loss.item():.2f}", flush=True)


def linear_params(model) -> int:
    """P: weights of every nn.Linear (incl. the LM head): 2 * P FLOPs per token forward."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


# ----------------------------------------------------------------------------- measurement


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Best FLOP/s of a square matmul (2048 on CPU, 8192 on CUDA) at the model's dtype."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(8):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        if i >= 2:
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(field)


class PeakMemory:
    """Peak memory growth of a block, in MiB (see the module docstring for the method); on
    CUDA also the peak of all allocated memory, model weights included (``peak_total_mb``)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "cuda_max_memory_allocated" if device.type == "cuda" else self._cpu_method()
        self.peak_mb = 0.0
        self.peak_total_mb: float | None = None

    @staticmethod
    def _cpu_method() -> str:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            _rss_kb("VmHWM")
            return "rss_hwm"
        except OSError:
            return "rss_sampling_2ms"

    def __enter__(self):
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so RSS starts low
        except OSError:
            pass
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif self.method == "rss_hwm":
            Path("/proc/self/clear_refs").write_text("5")
            self.base = _rss_kb("VmRSS") * 1024
        else:
            self._start_sampler()
        return self

    def _start_sampler(self):
        import psutil

        proc = psutil.Process()
        self.base = self.top = proc.memory_info().rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.002):
                self.top = max(self.top, proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            top = torch.cuda.max_memory_allocated(self.device)
            self.peak_total_mb = top / 2**20
        elif self.method == "rss_hwm":
            top = _rss_kb("VmHWM") * 1024
        else:
            self._stop.set()
            self._thread.join()
            top = self.top
        self.peak_mb = max(0, top - self.base) / 2**20


# ----------------------------------------------------------------------------- variants


def run_ours(
    model, tok, evals: list[Evaluation], cfg: InnerLoopConfig, max_new_tokens: int, qa_batch: int
) -> list[list[str]]:
    results = run_inner_loop(model, tok, [e.job for e in evals], cfg, max_new_tokens, qa_batch)
    for r in results:
        if r.error:
            raise RuntimeError(f"inner loop failed: {r.error}")
    return [r.answers for r in results]


def run_reference(
    model, tok, evals: list[Evaluation], cfg: InnerLoopConfig, max_new_tokens: int, work: Path
) -> list[list[str]]:
    """The reference design, one evaluation after the other (see the module docstring)."""
    from datasets import Dataset
    from peft import PeftModel, get_peft_model
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    old_pad = tok.pad_token
    tok.pad_token = tok.eos_token  # the reference's tokenizer.pad_token = tokenizer.eos_token
    cuda = next(model.parameters()).device.type == "cuda"
    answers = []
    try:
        for k, ev in enumerate(evals):
            rows = []
            for text in ev.job.texts:
                enc = tok(text, truncation=True, max_length=cfg.max_length, padding="max_length")
                rows.append(
                    {
                        "input_ids": enc["input_ids"],
                        "attention_mask": enc["attention_mask"],
                        "labels": list(enc["input_ids"]),
                    }
                )
            lora_model = get_peft_model(model, peft_lora_config(cfg.lora))
            args = TrainingArguments(
                output_dir=str(work / f"run{k}"),
                per_device_train_batch_size=cfg.batch_size,
                num_train_epochs=cfg.epochs,
                learning_rate=cfg.lr,
                weight_decay=cfg.weight_decay,
                max_grad_norm=cfg.max_grad_norm or 0.0,
                lr_scheduler_type=cfg.lr_scheduler,
                logging_steps=1,
                save_strategy="no",
                eval_strategy="no",
                report_to="none",
                remove_unused_columns=False,
                disable_tqdm=True,
                seed=ev.job.seed % 2**32,
                bf16=cuda and torch.cuda.is_bf16_supported(),
                use_cpu=not cuda,
            )
            trainer = Trainer(
                model=lora_model,
                args=args,
                train_dataset=Dataset.from_list(rows),
                data_collator=DataCollatorWithPadding(tok),
            )
            trainer.train()
            adapter_dir = work / f"run{k}" / "final_adapter"
            lora_model.save_pretrained(str(adapter_dir))
            base = lora_model.unload()
            scored = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
            answers.append([_generate_one(scored, tok, p, max_new_tokens) for p in ev.job.prompts])
            model = scored.unload().eval()
            shutil.rmtree(work / f"run{k}", ignore_errors=True)
            del trainer, lora_model, scored
    finally:
        tok.pad_token = old_pad
    return answers


@torch.inference_mode()
def _generate_one(model, tok, prompt: str, max_new_tokens: int) -> str:
    enc = tok(prompt, return_tensors="pt").to(next(model.parameters()).device)
    out = model.generate(
        **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
    )
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


@dataclass
class Shape:
    """What the FLOP count needs: P (linear weights, incl. the LM head), layers, attention width."""

    params: int
    layers: int
    attn_width: int

    @classmethod
    def of(cls, model) -> Shape:
        c = model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return cls(linear_params(model), c.num_hidden_layers, c.num_attention_heads * head_dim)

    def train(self, length: int) -> float:
        """One pass over a text of ``length`` real tokens with frozen base weights: forward 2P
        per token, backward 2P (input gradients only: no weight gradients for a frozen base,
        in PEFT either), causal attention 2 * layers * width * L^2 forward, twice that backward."""
        return 4.0 * self.params * length + 3 * 2.0 * self.layers * self.attn_width * length**2

    def generate(self, prompt: int, answer: int) -> float:
        """Prefill of ``prompt`` tokens, then ``answer`` decoding steps with the KV cache."""
        flops = 2.0 * self.params * prompt + 2.0 * self.layers * self.attn_width * prompt**2
        for k in range(answer):
            flops += 2.0 * self.params + 4.0 * self.layers * self.attn_width * (prompt + k)
        return flops


def useful_flops(
    tok,
    evals: list[Evaluation],
    answers: list[list[str]],
    cfg: InnerLoopConfig,
    shape: Shape,
    answer_tokens: int | None = None,
) -> float:
    """Useful FLOPs of a run: real training tokens (x epochs) and prompt + answer tokens (+ EOS).

    Padding is not useful work, so the reference's padding to max_length counts as waste.
    ``answer_tokens``: every answer has exactly that many tokens (a random model decoding its
    full budget); None: the answers' tokens re-encoded, plus EOS.
    """
    train = sum(
        shape.train(len(r)) for e in evals for r in tokenize_texts(tok, e.job.texts, cfg.max_length)
    )
    flops = train * cfg.epochs
    for e, ans in zip(evals, answers, strict=True):
        prompt_lens = [len(ids) for ids in tok(e.job.prompts)["input_ids"]]
        if answer_tokens is not None:
            answer_lens = [answer_tokens] * len(ans)
        else:
            answer_lens = [len(ids) + 1 for ids in tok(ans, add_special_tokens=False)["input_ids"]]
        flops += sum(shape.generate(p, a) for p, a in zip(prompt_lens, answer_lens, strict=True))
    return flops


def rewards(
    evals: list[Evaluation], answers: list[list[str]], base: list[list[str]]
) -> list[float]:
    out = []
    for e, ans, b in zip(evals, answers, base, strict=True):
        golds = [q.answer for q in e.passage.questions]
        adapted = sum(contains(a, g) for a, g in zip(ans, golds, strict=True)) / len(golds)
        baseline = sum(contains(a, g) for a, g in zip(b, golds, strict=True)) / len(golds)
        out.append(adapted - baseline)
    return out


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--output",
        default=str(REPO / "benchmarks" / "results"),
        help="directory for inner_loop.json / .md",
    )
    p.add_argument(
        "--n-self-edits", type=int, default=32, help="self-edit evaluations per run (ours)"
    )
    p.add_argument(
        "--n-reference",
        type=int,
        default=3,
        help="self-edit evaluations per run of the (slow) reference design (0: skip it)",
    )
    p.add_argument(
        "--skip-reference", action="store_true", help="leave the reference design out (huge models)"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--batch-adapters",
        "--batch-sizes",
        dest="batch_adapters",
        type=int,
        nargs="+",
        default=[4, 8, 16, 32],
        help="N of the batched variants (the sequential variant is N=1)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model directory or hub id (default: the tiny model in .cache/)",
    )
    p.add_argument(
        "--model-config",
        choices=sorted(QWEN25_CONFIGS),
        default=None,
        help="a Qwen2.5 architecture with random weights built on the device: no download (see the docstring)",
    )
    p.add_argument(
        "--layers", type=int, default=None, help="with --model-config: keep only N decoder layers"
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="model dtype (default: bfloat16 with --model-config or on CUDA, else float32)",
    )
    p.add_argument(
        "--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda if available, else cpu)"
    )
    p.add_argument(
        "--attn",
        default=None,
        help="attn_implementation: sdpa, eager, flash_attention_2, auto (default on CUDA: auto, i.e. "
        "flash_attention_2 if flash-attn is installed, else sdpa; on CPU: transformers' default, sdpa)",
    )
    p.add_argument(
        "--data",
        default=SELF_EDITS,
        help="SEAL-format self-edit file (relative: under the data root)",
    )
    p.add_argument(
        "--data-root", default=None, help="data root (default: $SEAL_DATA_DIR or ../shared/data)"
    )
    p.add_argument(
        "--split-newlines", action="store_true", help="one training text per self-edit line"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--alpha", type=float, default=64)
    p.add_argument(
        "--max-length",
        type=int,
        default=2048,
        help="training truncation; the reference pads every text to it (its TTT server's --max_seq_length default: 2048)",
    )
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--qa-batch-size", type=int, default=64)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (0: torch's default). Default 1: on a shared, oversubscribed CPU two "
        "threads spin-wait on each other and runs get 10-50x slower and erratic; use 0 on an idle machine.",
    )
    p.add_argument("--tiny-hidden", type=int, default=128)
    p.add_argument("--tiny-layers", type=int, default=2)
    p.add_argument("--tiny-pretrain-steps", type=int, default=150)
    return p.parse_args(argv)


def load_bench_model(args, root: Path):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    dtype = args.dtype or ("bfloat16" if cuda or args.model_config else "float32")
    # On CUDA: flash_attention_2 when flash-attn is installed, else sdpa (seal's 'auto').
    attn = resolve_attn_implementation(args.attn or ("auto" if cuda else None), device)
    if args.model_config:
        tok = bench_tokenizer(REPO / ".cache" / "inner_loop_bench", root)
        model = build_config_model(
            args.model_config, tok, args.layers, getattr(torch, dtype), device, attn
        )
        decode_full_budget(model, tok)
        name = args.model_config + (f" ({args.layers} layers)" if args.layers else "")
        return model, tok, f"{name}, random weights", dtype, attn
    path = args.model or build_bench_model(
        REPO / ".cache" / "inner_loop_bench",
        root,
        args.tiny_hidden,
        args.tiny_layers,
        args.tiny_pretrain_steps,
    )
    model, tok = load_model(path, dtype=dtype, device=str(device), attn_implementation=attn)
    return model, tok, str(path), dtype, attn


def machine_info(device: torch.device, peak: float, load: tuple) -> dict:
    info = {
        "load_average_1min_start_end": [round(load[0], 2), round(os.getloadavg()[0], 2)],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "matmul_peak_gflops": round(peak / 1e9, 1),
    }
    try:
        info["cpu"] = next(
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    import peft
    import transformers

    info["transformers"], info["peft"] = transformers.__version__, peft.__version__
    return info


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    root = Path(args.data_root) if args.data_root else None
    model, tok, model_path, dtype, attn = load_bench_model(args, root)
    device = next(model.parameters()).device
    cfg = InnerLoopConfig(
        lora=LoraConfig(rank=args.rank, alpha=args.alpha),
        epochs=args.epochs,
        lr=args.lr,
        max_length=args.max_length,
    )
    evals = load_evaluations(
        resolve_data_path(args.data, root), args.n_self_edits, args.split_newlines
    )
    with_reference = args.n_reference > 0 and not args.skip_reference
    ref_evals = evals[: args.n_reference] if with_reference else []
    full_decode = args.max_new_tokens if args.model_config else None
    shape = Shape.of(model)
    params = shape.params
    peak = matmul_peak(device, model.dtype)
    print(
        f"model {model_path}: {params / 1e6:.2f} M linear params, {dtype}, attention {model.config._attn_implementation}, "
        f"on {device}; matmul peak {peak / 1e9:.1f} GFLOP/s",
        flush=True,
    )

    base_answers = answer_questions(
        model,
        tok,
        [p for e in evals for p in e.job.prompts],
        args.max_new_tokens,
        args.qa_batch_size,
    )
    base, i = [], 0
    for e in evals:
        base.append(base_answers[i : i + len(e.job.prompts)])
        i += len(e.job.prompts)
    # On the host: a device copy of a 7B model would take 15 GB of the memory measured.
    before = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    variants = [("reference", 1)] if with_reference else []
    variants += [("sequential", 1)] + [("batched", n) for n in args.batch_adapters]
    runs: dict[tuple, list[dict]] = {v: [] for v in variants}
    answers: dict[tuple, list[list[str]]] = {}
    work = Path(tempfile.mkdtemp(prefix="seal-bench-"))
    try:
        for rep in range(args.repeats):
            for variant, n in variants:
                todo = ref_evals if variant == "reference" else evals
                with PeakMemory(device) as mem:
                    t0, c0 = time.perf_counter(), time.process_time()
                    if variant == "reference":
                        got = run_reference(model, tok, todo, cfg, args.max_new_tokens, work)
                    else:
                        got = run_ours(
                            model,
                            tok,
                            todo,
                            cfg.model_copy(update={"batch_adapters": n}),
                            args.max_new_tokens,
                            args.qa_batch_size,
                        )
                    _sync(device)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                answers[(variant, n)] = got
                flops = useful_flops(tok, todo, got, cfg, shape, full_decode)
                runs[(variant, n)].append(
                    {
                        "seconds": wall,
                        "cpu_seconds": cpu,
                        "peak_mem_mb": mem.peak_mb,
                        "peak_total_mb": mem.peak_total_mb,
                        "mfu": flops / wall / peak,
                    }
                )
                total = "" if mem.peak_total_mb is None else f" ({mem.peak_total_mb / 1024:.1f} GiB in all)"
                print(
                    f"  rep {rep} {variant:10s} N={n:<3d} {len(todo) / wall:7.2f} evals/s  "
                    f"{wall / len(todo):7.3f} s/eval  {mem.peak_mb:8.1f} MB{total}  MFU {flops / wall / peak:.3f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base_intact = all(torch.equal(before[k], v.cpu()) for k, v in model.state_dict().items())

    seq_answers = answers[("sequential", 1)]
    seq_rewards = rewards(evals, seq_answers, base)
    rows = []
    for (variant, n), rs in runs.items():
        todo = ref_evals if variant == "reference" else evals
        got = answers[(variant, n)]
        rew = rewards(todo, got, base[: len(todo)])
        flat = [a for ans in got for a in ans]
        seq_flat = [a for ans in seq_answers for a in ans]
        rows.append(
            {
                "variant": variant,
                "n_adapters": n,
                "n_self_edits": len(todo),
                "evals_per_s": len(todo) / statistics.median(r["seconds"] for r in rs),
                "seconds_per_eval": statistics.median(r["seconds"] for r in rs) / len(todo),
                "evals_per_s_runs": [len(todo) / r["seconds"] for r in rs],
                # Process CPU time: with one thread, what the run would take alone on a core.
                "evals_per_cpu_s": len(todo) / statistics.median(r["cpu_seconds"] for r in rs),
                "peak_mem_mb": statistics.median(r["peak_mem_mb"] for r in rs),
                # CUDA only: torch.cuda.max_memory_allocated, model weights included.
                "peak_total_mb": None
                if rs[0]["peak_total_mb"] is None
                else statistics.median(r["peak_total_mb"] for r in rs),
                "mfu": statistics.median(r["mfu"] for r in rs),
                "mfu_cpu": statistics.median(
                    r["mfu"] * r["seconds"] / r["cpu_seconds"] for r in rs
                ),
                "mean_reward": statistics.mean(rew),
                "answers_equal_sequential": None if variant == "reference" else got == seq_answers,
                "answers_match_fraction": None
                if variant == "reference"
                else sum(a == b for a, b in zip(flat, seq_flat, strict=True)) / max(1, len(flat)),
                "rewards_equal_sequential": None if variant == "reference" else rew == seq_rewards,
            }
        )
    ref_rate = next((r["evals_per_s"] for r in rows if r["variant"] == "reference"), None)
    seq_rate = next(r["evals_per_s"] for r in rows if r["variant"] == "sequential")
    for r in rows:
        r["speedup_vs_reference"] = r["evals_per_s"] / ref_rate if ref_rate else None
        r["speedup_vs_sequential"] = r["evals_per_s"] / seq_rate
    settings = {
        "model": model_path,
        "model_config": args.model_config,
        "layers": args.layers,
        "random_weights_full_decode": full_decode is not None,
        "dtype": dtype,
        "attn_implementation": model.config._attn_implementation,
        "data": str(args.data),
        "n_self_edits": args.n_self_edits,
        "n_reference": len(ref_evals),
        "repeats": args.repeats,
        "split_newlines": args.split_newlines,
        "inner": cfg.model_dump(mode="json"),
        "max_new_tokens": args.max_new_tokens,
        "qa_batch_size": args.qa_batch_size,
        "linear_params": params,
        "n_questions": sum(len(e.job.prompts) for e in evals),
        "n_texts": sum(len(e.job.texts) for e in evals),
        "memory_method": PeakMemory(device).method,
        "base_weights_bit_identical": base_intact,
    }
    report = {
        "rows": rows,
        "machine": machine_info(device, peak, load_before),
        "settings": settings,
    }
    write_report(report, Path(args.output))
    return report


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    cuda = m["device"].startswith("cuda")
    reference = (
        f"reference on the first {s['n_reference']}" if s["n_reference"] else "reference skipped"
    )
    lines = [
        "# Inner-loop benchmark",
        "",
        f"{m.get('gpu') or m['cpu']}, {m['torch_threads']} torch threads, torch {m['torch']}; "
        f"matmul peak {m['matmul_peak_gflops']} GFLOP/s ({s['dtype']}). Model `{s['model']}` "
        f"({s['linear_params'] / 1e6:.2f} M linear params, {s['dtype']}, attention {s['attn_implementation']}). "
        f"LoRA r={s['inner']['lora']['rank']} "
        f"alpha={s['inner']['lora']['alpha']} on {'/'.join(s['inner']['lora']['target_modules'])}, "
        f"{s['inner']['epochs']} epochs, lr {s['inner']['lr']}, batch 1, max_length {s['inner']['max_length']}; "
        f"{s['n_self_edits']} self-edits ({s['n_texts']} texts, {s['n_questions']} questions, "
        f"{s['max_new_tokens']} new tokens at most), {reference}; medians of {s['repeats']} runs.",
        "",
        "| variant | N | self-edits | evals/s | s/eval | x reference | x sequential | evals/CPU-s | peak MB"
        + (" | peak GiB (all)" if cuda else "")
        + " | MFU | answers = sequential | mean reward |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:" + ("|---:" if cuda else "") + "|---:|:---:|---:|",
    ]
    for r in report["rows"]:
        if r["answers_equal_sequential"] is None:
            same = "-"
        elif r["answers_equal_sequential"]:
            same = "yes"
        else:
            same = f"NO ({r['answers_match_fraction']:.0%} equal)"
        ref = "-" if r["speedup_vs_reference"] is None else f"{r['speedup_vs_reference']:.1f}"
        total = ""
        if cuda:
            total = " | -" if r["peak_total_mb"] is None else f" | {r['peak_total_mb'] / 1024:.1f}"
        lines.append(
            f"| {r['variant']} | {r['n_adapters']} | {r['n_self_edits']} | {r['evals_per_s']:.2f} | "
            f"{r['seconds_per_eval']:.3f} | {ref} | {r['speedup_vs_sequential']:.2f} | {r['evals_per_cpu_s']:.2f} | "
            f"{r['peak_mem_mb']:.0f}{total} | {r['mfu']:.3f} | {same} | {r['mean_reward']:+.3f} |"
        )
    lines += [
        "",
        f"evals/CPU-s: per second of process CPU time (the wall-clock rate without other processes' "
        f"contention; load average at start/end: {m['load_average_1min_start_end']}). "
        f"Peak MB: growth during the run, MiB ({s['memory_method']})"
        + ("; peak GiB (all): torch.cuda.max_memory_allocated, model weights included" if cuda else "")
        + ". MFU: useful FLOPs / wall time / matmul peak; "
        "useful FLOPs = 4·P per real training token (forward + input gradients; the frozen base needs no weight "
        "gradients) + 2·P per prompt/answer token + causal attention; padding is not useful work. "
        f"Base weights bit-identical after all runs: {s['base_weights_bit_identical']}.",
    ]
    if s.get("random_weights_full_decode"):
        lines += [
            "",
            "Random weights: every answer decodes the full token budget (EOS and ids outside the local "
            "tokenizer's 2048 are masked during generation), the worst case for generation time; rewards mean "
            "nothing. In bf16 on a GPU, batched and sequential may differ by rounding (matmuls of other shapes).",
        ]
    seq = next(r for r in report["rows"] if r["variant"] == "sequential")
    if not cuda and seq["mfu"] > 0 and seq["mfu_cpu"] > 0.3:
        lines += [
            "",
            f"Why batching gains little here: the sequential path already runs at {seq['mfu']:.0%} of the measured "
            f"matmul peak per wall second and {seq['mfu_cpu']:.0%} per second of CPU time it got, so it is "
            f"compute-bound and no batching can make it more than about {1 / seq['mfu_cpu']:.1f}x faster per CPU "
            "second. Batching pays where one adapter's step leaves the hardware idle (short texts, small models, "
            "GPUs, where a batch-1 step of a 7B model uses a fraction of the device).",
        ]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "inner_loop.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (out / "inner_loop.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
