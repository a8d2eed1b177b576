"""Measure a microworld: no-passage accuracy after inner-loop training on each kind of self-edit.

What the microworld's recipes were chosen from (inner-loop settings that separate the styles,
and how much each style can teach). Usage::

    python benchmarks/microworld_styles.py .cache/microworld/<key> [--n-eval 64] [--k 5] [--output DIR]

prints the accuracy per condition and writes ``microworld_styles.json`` to ``--output``
(default ``benchmarks/results/``).

Conditions, on held-out evaluation people (never seen in pretraining):

* ``none``: the base model (no adapter);
* ``passage``: an adapter trained on the passage only;
* ``gold:<style>``: on a generator-written self-edit of each style (plus the passage);
* ``policy``: on self-edits sampled from the pretrained policy (T=1, top-p 0.95), also
  broken down by the sampled self-edit's style, and the best of the ``k`` samples per passage
  by reward, with the style mixture of those best samples (what a ReST-EM round trains on).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from seal.config import InnerLoopConfig
from seal.data import passage_from_json
from seal.graders import contains
from seal.inner_loop import AdapterJob, AdapterResult, run_inner_loop
from seal.microworld.pretrain import copy_metrics, sample_on_records
from seal.microworld.world import STYLES, classify_style, entity_from_record, render_self_edit
from seal.scoring import question_prompts
from seal.seeding import derive_seed
from seal.self_edits import train_texts


def _acc(res: AdapterResult, rec: dict) -> float:
    golds = [q["answer"] for q in rec["questions"]]
    if res.error:
        return 0.0
    return sum(contains(a, g) for a, g in zip(res.answers, golds, strict=True)) / len(golds)


def measure(
    world_dir: str | Path,
    n_eval: int = 64,
    k: int = 5,
    inner: InnerLoopConfig | None = None,
    split_newlines: bool = True,
    seed: int = 0,
    model=None,
    tok=None,
    styles: tuple[str, ...] = STYLES,
    log=print,
) -> dict:
    """Accuracy (share of questions right, in [0, 1]) per condition on the first ``n_eval`` eval passages.

    The inner loop is :func:`seal.inner_loop.run_inner_loop` with ``inner`` (default: the
    paper's settings with ``batch_adapters=64``; answers up to 8 new tokens).
    ``model``/``tok`` default to ``<world_dir>/model``. Returns a dict with ``acc`` (condition ->
    mean accuracy), ``reward`` (condition -> mean accuracy minus the base model's),
    ``policy_by_style``, ``best_of_k`` (accuracy and style shares of the best sample per passage),
    ``copy`` (copy metrics of the policy samples) and ``seconds``.
    """
    from seal.models import load_model

    world_dir = Path(world_dir)
    if model is None:
        model, tok = load_model(world_dir / "model", device="cpu")
    recs = json.loads((world_dir / "eval.json").read_text())[:n_eval]
    meta = json.loads((world_dir / "meta.json").read_text())
    qa_template = meta["settings"].get("qa_template", "reference")
    t0 = time.perf_counter()
    samples = sample_on_records(model, tok, recs, k, 1.0, seed) if k else [[] for _ in recs]
    t_sample = time.perf_counter() - t0
    inner = inner or InnerLoopConfig(batch_adapters=64)
    jobs: list[AdapterJob] = []
    keys: list[tuple[str, int, int]] = []
    for i, r in enumerate(recs):
        p = passage_from_json(r, f"{world_dir / 'eval.json'}: passage {i}")
        prompts = question_prompts(p, qa_template)
        e = entity_from_record(r)
        rng = random.Random(derive_seed(seed, "measure-gold", i))
        conds = [("none", []), ("passage", train_texts(p, None))]
        for st in styles:
            conds.append(
                (
                    f"gold:{st}",
                    train_texts(p, render_self_edit(e, st, rng, r["context"]), split_newlines),
                )
            )
        for j, s in enumerate(samples[i]):
            conds.append((f"policy#{j}", train_texts(p, s, split_newlines)))
        for c, texts in conds:
            jobs.append(AdapterJob(texts, prompts, derive_seed(seed, "measure", i, c)))
            keys.append((c, i, 0))
    t1 = time.perf_counter()
    done = [0]

    def _progress(n: int) -> None:
        done[0] += n
        log(f"  adapters {done[0]}/{len(jobs)} ({time.perf_counter() - t1:.0f} s)")

    # Similar lengths share a chunk (fewer idle rows); results are put back in job order.
    order = sorted(range(len(jobs)), key=lambda j: sum(len(t) for t in jobs[j].texts))
    ran = run_inner_loop(
        model,
        tok,
        [jobs[j] for j in order],
        inner,
        max_new_tokens=8,
        qa_batch_size=256,
        progress=_progress,
    )
    results: list[AdapterResult] = [None] * len(jobs)  # type: ignore[list-item]
    for j, r in zip(order, ran, strict=True):
        results[j] = r
    t_train = time.perf_counter() - t1
    acc: dict[str, list[float]] = defaultdict(list)
    per_passage: dict[int, dict[str, float]] = defaultdict(dict)
    for res, (c, i, _) in zip(results, keys, strict=True):
        per_passage[i][c] = _acc(res, recs[i])
    by_style: dict[str, list[float]] = defaultdict(list)
    best_styles: Counter = Counter()
    best_acc = []
    for i, d in per_passage.items():
        for c, a in d.items():
            acc["policy" if c.startswith("policy#") else c].append(a)
        pol = [(d[f"policy#{j}"], j) for j in range(len(samples[i]))]
        for a, j in pol:
            by_style[classify_style(samples[i][j])].append(a - d["none"])
        if pol:
            a, j = max(pol, key=lambda t: (t[0], -t[1]))
            best_acc.append(a)
            if a > d["none"]:
                best_styles[classify_style(samples[i][j])] += 1
    mean = {c: sum(v) / len(v) for c, v in acc.items()}
    res = {
        "n_eval": len(recs),
        "n_questions": sum(len(r["questions"]) for r in recs),
        "acc": mean,
        "reward": {c: v - mean["none"] for c, v in mean.items()},
        "policy_by_style": {
            s: {"n": len(v), "reward": sum(v) / len(v)} for s, v in sorted(by_style.items())
        },
        "best_of_k": {
            "acc": sum(best_acc) / len(best_acc) if best_acc else None,
            "kept_styles": dict(best_styles),
        },
        "copy": copy_metrics(recs, samples) if k else {},
        "seconds": {
            "sample": round(t_sample, 1),
            "inner_loops": round(t_train, 1),
            "n_adapters": len(jobs),
        },
        "inner": inner.model_dump(mode="json"),
        "errors": sum(1 for r in results if r.error),
        "split_newlines": split_newlines,
    }
    return res


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("world_dir")
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    a = ap.parse_args()
    torch.set_num_threads(1)  # a 1M-parameter model: 2 threads contend on 2 cores
    out = measure(a.world_dir, a.n_eval, a.k)
    print(f"{'condition':<20} {'accuracy':>9}")
    for c, v in sorted(out["acc"].items(), key=lambda t: -t[1]):
        print(f"{c:<20} {100 * v:8.1f}%")
    a.output.mkdir(parents=True, exist_ok=True)
    (a.output / "microworld_styles.json").write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
