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

Reported per variant (medians over ``--repeats``): self-edit evaluations per second,
peak memory growth (MB = MiB; on CPU the peak resident set size over the RSS at the
start of the run, via Linux's VmHWM reset through /proc/self/clear_refs, after
``gc.collect`` + ``malloc_trim``; on CUDA ``torch.cuda.max_memory_allocated`` growth), and
model FLOPs utilisation: useful FLOPs over wall time, against a timed large
``torch.matmul`` of this machine. Useful FLOPs: 4 * P per real training token (forward
2P + input gradients 2P; a frozen base needs no weight gradients, so the textbook 6P
would overstate the work by 1.5x), 2 * P per prompt and answer token, plus causal
attention (P = weights of all linear layers incl. the LM head). Padding is not useful
work, so the reference's padding to max_length shows up as low utilisation. Sequential and batched must give identical answers and rewards (the
reward is the ``contains`` grader's accuracy gain over the base model).

Usage::

    python benchmarks/inner_loop.py [--output DIR] [--n-self-edits 32] [--repeats 3] [--model DIR]

Without ``--model`` a tiny Llama model (hidden 128, 2 layers) is built once in ``.cache/``:
a tokenizer trained on SQuAD text and a short pretraining on SQuAD passages and
question/answer lines, so that it answers briefly and stops at EOS like a real model.
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
from seal.models import build_tiny_model, load_model  # noqa: E402
from seal.seeding import derive_seed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
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
    """Peak memory growth of a block, in MiB (see the module docstring for the method)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "cuda_max_memory_allocated" if device.type == "cuda" else self._cpu_method()
        self.peak_mb = 0.0

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
    from peft import LoraConfig as PeftLoraConfig
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
            lora_cfg = PeftLoraConfig(
                r=cfg.lora.rank,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=cfg.lora.target_modules,
                task_type="CAUSAL_LM",
            )
            lora_model = get_peft_model(model, lora_cfg)
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
    tok, evals: list[Evaluation], answers: list[list[str]], cfg: InnerLoopConfig, shape: Shape
) -> float:
    """Useful FLOPs of a run: real training tokens (x epochs) and prompt + answer tokens (+ EOS).

    Padding is not useful work, so the reference's padding to max_length counts as waste.
    """
    train = sum(
        shape.train(len(r)) for e in evals for r in tokenize_texts(tok, e.job.texts, cfg.max_length)
    )
    flops = train * cfg.epochs
    for e, ans in zip(evals, answers, strict=True):
        prompt_lens = [len(ids) for ids in tok(e.job.prompts)["input_ids"]]
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
        help="self-edit evaluations per run of the (slow) reference design",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--batch-adapters",
        type=int,
        nargs="+",
        default=[4, 8, 16, 32],
        help="N of the batched variants",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model directory or hub id (default: the tiny model in .cache/)",
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
    cuda = torch.cuda.is_available()
    dtype = "bfloat16" if cuda else "float32"
    attn = None
    if cuda:
        try:
            import flash_attn  # noqa: F401

            attn = "flash_attention_2"
        except ImportError:
            attn = "sdpa"
    path = args.model or build_bench_model(
        REPO / ".cache" / "inner_loop_bench",
        root,
        args.tiny_hidden,
        args.tiny_layers,
        args.tiny_pretrain_steps,
    )
    model, tok = load_model(path, dtype=dtype, device="auto", attn_implementation=attn)
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
    ref_evals = evals[: args.n_reference]
    shape = Shape.of(model)
    params = shape.params
    peak = matmul_peak(device, model.dtype)
    print(
        f"model {model_path}: {params / 1e6:.2f} M linear params, {dtype}, on {device}; matmul peak {peak / 1e9:.1f} GFLOP/s",
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
    before = {k: v.clone() for k, v in model.state_dict().items()}

    variants = [("reference", 1), ("sequential", 1)] + [("batched", n) for n in args.batch_adapters]
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
                flops = useful_flops(tok, todo, got, cfg, shape)
                runs[(variant, n)].append(
                    {
                        "seconds": wall,
                        "cpu_seconds": cpu,
                        "peak_mem_mb": mem.peak_mb,
                        "mfu": flops / wall / peak,
                    }
                )
                print(
                    f"  rep {rep} {variant:10s} N={n:<3d} {len(todo) / wall:7.2f} evals/s  {mem.peak_mb:8.1f} MB  MFU {flops / wall / peak:.3f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base_intact = all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    seq_answers = answers[("sequential", 1)]
    seq_rewards = rewards(evals, seq_answers, base)
    rows = []
    for (variant, n), rs in runs.items():
        todo = ref_evals if variant == "reference" else evals
        got = answers[(variant, n)]
        rew = rewards(todo, got, base[: len(todo)])
        rows.append(
            {
                "variant": variant,
                "n_adapters": n,
                "n_self_edits": len(todo),
                "evals_per_s": len(todo) / statistics.median(r["seconds"] for r in rs),
                "evals_per_s_runs": [len(todo) / r["seconds"] for r in rs],
                # Process CPU time: with one thread, what the run would take alone on a core.
                "evals_per_cpu_s": len(todo) / statistics.median(r["cpu_seconds"] for r in rs),
                "peak_mem_mb": statistics.median(r["peak_mem_mb"] for r in rs),
                "mfu": statistics.median(r["mfu"] for r in rs),
                "mfu_cpu": statistics.median(
                    r["mfu"] * r["seconds"] / r["cpu_seconds"] for r in rs
                ),
                "mean_reward": statistics.mean(rew),
                "answers_equal_sequential": None if variant == "reference" else got == seq_answers,
                "rewards_equal_sequential": None if variant == "reference" else rew == seq_rewards,
            }
        )
    ref_rate = rows[0]["evals_per_s"]
    seq_rate = rows[1]["evals_per_s"]
    for r in rows:
        r["speedup_vs_reference"] = r["evals_per_s"] / ref_rate
        r["speedup_vs_sequential"] = r["evals_per_s"] / seq_rate
    settings = {
        "model": model_path,
        "dtype": dtype,
        "attn_implementation": attn,
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
    lines = [
        "# Inner-loop benchmark",
        "",
        f"{m.get('gpu') or m['cpu']}, {m['torch_threads']} torch threads, torch {m['torch']}; "
        f"matmul peak {m['matmul_peak_gflops']} GFLOP/s ({s['dtype']}). Model `{s['model']}` "
        f"({s['linear_params'] / 1e6:.2f} M linear params). LoRA r={s['inner']['lora']['rank']} "
        f"alpha={s['inner']['lora']['alpha']} on {'/'.join(s['inner']['lora']['target_modules'])}, "
        f"{s['inner']['epochs']} epochs, lr {s['inner']['lr']}, batch 1, max_length {s['inner']['max_length']}; "
        f"{s['n_self_edits']} self-edits ({s['n_texts']} texts, {s['n_questions']} questions), "
        f"reference on the first {s['n_reference']}; medians of {s['repeats']} runs.",
        "",
        "| variant | N | self-edits | evals/s | x reference | x sequential | evals/CPU-s | peak MB | MFU | answers = sequential | mean reward |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|",
    ]
    for r in report["rows"]:
        same = (
            "-"
            if r["answers_equal_sequential"] is None
            else ("yes" if r["answers_equal_sequential"] else "NO")
        )
        lines.append(
            f"| {r['variant']} | {r['n_adapters']} | {r['n_self_edits']} | {r['evals_per_s']:.2f} | "
            f"{r['speedup_vs_reference']:.1f} | {r['speedup_vs_sequential']:.2f} | {r['evals_per_cpu_s']:.2f} | {r['peak_mem_mb']:.0f} | "
            f"{r['mfu']:.3f} | {same} | {r['mean_reward']:+.3f} |"
        )
    lines += [
        "",
        f"evals/CPU-s: per second of process CPU time (the wall-clock rate without other processes' "
        f"contention; load average at start/end: {m['load_average_1min_start_end']}). "
        f"Peak MB: growth during the run, MiB ({s['memory_method']}). MFU: useful FLOPs / wall time / matmul peak; "
        "useful FLOPs = 4·P per real training token (forward + input gradients; the frozen base needs no weight "
        "gradients) + 2·P per prompt/answer token + causal attention; padding is not useful work. "
        f"Base weights bit-identical after all runs: {s['base_weights_bit_identical']}.",
    ]
    seq = next(r for r in report["rows"] if r["variant"] == "sequential")
    if seq["mfu"] > 0:
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
