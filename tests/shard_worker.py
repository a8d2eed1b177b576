"""The inner loop and the baselines on a base model sharded over the processes (FSDP2).

Run by ``tests/test_sharding.py`` under ``torchrun --nproc_per_node 2`` (gloo on CPU):
``python shard_worker.py MODEL_DIR DATA_ROOT OUT_DIR``. Every rank loads the tiny model,
shards it (:func:`seal.sharding.shard_model`), answers the baseline questions, runs the
inner loop on :func:`inner_loop_jobs` and writes ``OUT_DIR/rank{r}.json``
(:func:`summary`). The test computes the same summary in one unsharded process and compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from seal.config import InnerLoopConfig, LoraConfig
from seal.data import load_passages
from seal.graders import token_f1
from seal.hparams import AdapterSettings
from seal.inner_loop import AdapterJob, answer_questions, run_inner_loop
from seal.prompts import qa_prompt
from seal.self_edits import train_texts

MAX_NEW_TOKENS = 8


def inner_loop_jobs(data_root: Path) -> tuple[list[AdapterJob], list[list[str]], InnerLoopConfig]:
    """Four adapters over 3 SQuAD passages (two chunks of ``batch_adapters=2``): passage-only
    texts, one with its own learning rate, one with no texts (base answers). Returns (jobs,
    gold answers per job, inner-loop config)."""
    passages = load_passages("squad/train_100.json", root=data_root)[:3]
    jobs, golds = [], []
    for i, p in enumerate([*passages, passages[0]]):
        questions = p.questions[:2]
        texts = [] if i == 3 else train_texts(p, f"{p.title} is discussed.\n{p.context[:80]}")
        settings = AdapterSettings(lr=3e-3) if i == 1 else None
        jobs.append(AdapterJob(texts, [qa_prompt(p.title, q.question) for q in questions], seed=100 + i, settings=settings))
        golds.append([q.answer for q in questions])
    cfg = InnerLoopConfig(lora=LoraConfig(rank=4, alpha=8), epochs=2, lr=1e-3, batch_adapters=2, max_length=64, eval_times=1)
    return jobs, golds, cfg


def summary(model, tokenizer, data_root: Path) -> dict:
    """Baseline answers, then per adapter: epoch losses, trained tokens, answers, error and
    reward (mean token F1 of its answers minus the baseline's, on the same questions)."""
    jobs, golds, cfg = inner_loop_jobs(data_root)
    baseline = [answer_questions(model, tokenizer, job.prompts, MAX_NEW_TOKENS) for job in jobs]
    results = run_inner_loop(model, tokenizer, jobs, cfg, max_new_tokens=MAX_NEW_TOKENS)
    adapters = []
    for r, base, gold in zip(results, baseline, golds, strict=True):
        f1 = [token_f1(a, g) for a, g in zip(r.answers, gold, strict=True)] if r.error is None else []
        base_f1 = [token_f1(a, g) for a, g in zip(base, gold, strict=True)]
        reward = sum(f1) / len(f1) - sum(base_f1) / len(base_f1) if f1 else None
        adapters.append({"losses": r.epoch_losses, "tokens": r.n_train_tokens, "answers": r.answers, "error": r.error, "reward": reward})
    return {"baseline": baseline, "adapters": adapters}


def main(model_dir: str, data_root: str, out_dir: str) -> None:
    import torch

    from seal.distributed import get_dist
    from seal.inner_loop import train_and_merge
    from seal.models import load_model
    from seal.sharding import ShardingError, is_sharded, shard_model

    dist = get_dist()  # joins the gloo group torchrun describes
    torch.manual_seed(0)
    model, tokenizer = load_model(model_dir, "float32", "cpu")
    full = {n: p.numel() for n, p in model.named_parameters()}
    model = shard_model(model, "cpu")
    local = {n: p.to_local().numel() for n, p in model.named_parameters()}
    out = summary(model, tokenizer, Path(data_root))
    try:
        train_and_merge(model, tokenizer, ["a text"], inner_loop_jobs(Path(data_root))[2], seed=0)
        out["merge"] = "merged"
    except ShardingError as e:
        out["merge"] = str(e)
    out.update(sharded=is_sharded(model), world_size=dist.world_size, local_numel=sum(local.values()), full_numel=sum(full.values()))
    Path(out_dir, f"rank{dist.rank}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
