"""Measure a microworld's inner loop under a grid of learning rates and epoch counts.

What the hyperparameter world's spread of demonstrated settings was chosen from
(``PretrainConfig.hparam_lrs`` / ``hparam_epochs``): which (lr, epochs) teach much less than
others. Usage::

    python benchmarks/microworld_hparams.py .cache/microworld/<key> [--n-eval 32] [--style paraphrase]

For each (lr, epochs) in the grid, one adapter per held-out person (the first ``--n-eval``
of ``eval.json``) is trained on the world generator's self-edit of ``--style`` (plus the
passage, one text per line) with the recipe's inner loop otherwise (rank 8 on all
projections, alpha 16, batch 1), then asked the person's questions without the passage.
Prints the no-passage accuracy (share of questions right) per setting and the base model's,
and writes ``microworld_hparams.json`` to ``--output`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch

from seal.config import InnerLoopConfig, LoraConfig
from seal.data import passage_from_json
from seal.graders import contains
from seal.hparams import AdapterSettings
from seal.inner_loop import AdapterJob, run_inner_loop
from seal.microworld.world import entity_from_record, render_self_edit
from seal.scoring import question_prompts
from seal.seeding import derive_seed
from seal.self_edits import train_texts

sys.path.insert(0, str(Path(__file__).parent))
from provenance import write_results  # noqa: E402

#: The inner loop of recipes/microworld_cpu.yaml (lr and epochs are set per adapter).
RECIPE_INNER = InnerLoopConfig(
    lora=LoraConfig(rank=8, alpha=16, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    epochs=5,
    lr=5e-3,
    batch_size=1,
    max_length=128,
    batch_adapters=64,
)


def measure(world_dir: str | Path, lrs: list[float], epochs: list[int], n_eval: int = 32, style: str = "paraphrase", seed: int = 0) -> dict:
    """Accuracy in [0, 1] per ``"lr=<lr> epochs=<n>"`` (and ``"none"``, the base model) on the
    first ``n_eval`` eval people, trained on the generator's ``style`` self-edits."""
    from seal.models import load_model

    world_dir = Path(world_dir)
    model, tok = load_model(world_dir / "model", device="cpu")
    recs = json.loads((world_dir / "eval.json").read_text())[:n_eval]
    qa_template = json.loads((world_dir / "meta.json").read_text())["settings"]["qa_template"]
    grid = [(lr, ep) for lr in lrs for ep in epochs]
    jobs, keys = [], []
    for i, r in enumerate(recs):
        p = passage_from_json(r, f"eval.json passage {i}")
        prompts = question_prompts(p, qa_template)
        edit = render_self_edit(entity_from_record(r), style, random.Random(derive_seed(seed, "hp-gold", i)), r["context"])
        texts = train_texts(p, edit, split_newlines=True)
        jobs.append(AdapterJob([], prompts, derive_seed(seed, "hp", i, "none")))
        keys.append(("none", i))
        for lr, ep in grid:
            jobs.append(AdapterJob(texts, prompts, derive_seed(seed, "hp", i), AdapterSettings(lr=lr, epochs=ep)))
            keys.append((f"lr={lr:g} epochs={ep}", i))
    t0 = time.perf_counter()
    results = run_inner_loop(model, tok, jobs, RECIPE_INNER, max_new_tokens=8, qa_batch_size=256)
    acc: dict[str, list[float]] = {}
    for res, (cond, i) in zip(results, keys, strict=True):
        golds = [q["answer"] for q in recs[i]["questions"]]
        a = 0.0 if res.error else sum(contains(x, g) for x, g in zip(res.answers, golds, strict=True)) / len(golds)
        acc.setdefault(cond, []).append(a)
    return {
        "n_eval": len(recs),
        "style": style,
        "acc": {c: sum(v) / len(v) for c, v in acc.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("world_dir")
    ap.add_argument("--n-eval", type=int, default=32)
    ap.add_argument("--style", default="paraphrase")
    ap.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 5e-3, 2e-2])
    ap.add_argument("--epochs", type=int, nargs="+", default=[1, 5, 10])
    ap.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--results", type=Path, help="also write the JSON here (docs/results/..., the README's table)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = measure(a.world_dir, a.lrs, a.epochs, a.n_eval, a.style)
    for c, v in out["acc"].items():
        print(f"{c:<24} {100 * v:6.1f} %")
    print(f"{out['seconds']} s, {out['n_eval']} people, style {out['style']}")
    write_results(a.output / f"microworld_hparams_{a.style}.json", out, published=a.results)


if __name__ == "__main__":
    main()
