"""ReST-EM: keep the best self-edits per passage, SFT the policy on them, merge (paper Section 3.1).

ReST-EM (Singh et al. 2023) as SEAL uses it: per round, sample k self-edits per passage,
score each by its inner-loop reward, keep the top ``k_best`` whose reward clears a
threshold (E-step), then fine-tune the policy on ``{prompt, completion}`` rows of the kept
self-edits (M-step) with TRL's ``SFTTrainer`` + LoRA, and merge the adapter so the merged
model is the next round's policy and base model.

Difference from the reference: it keeps the best self-edit whatever its reward; here only
rewards strictly above ``rl.reward_threshold`` are kept, and ``rl.keep_regardless``
restores the reference's behaviour.

Curation (``rl.curation``): ``gain`` (the default, the paper's and the reference's) ranks a
passage's self-edits by their reward alone. Curating self-generated data by one reward can
collapse the policy onto a few forms (arXiv 2605.07724), so two multi-reward curations rank
by the reward (*gain*), the share of the passage's facts stated (*coverage*) and the
difference from the passage's other self-edits (*novelty*), :func:`curation_scores`:
``weighted`` by a weighted sum (:func:`weighted_score`), ``pareto`` by Pareto fronts
(:func:`pareto_order`). The threshold keeps its meaning under all three: only a *gain*
strictly above ``rl.reward_threshold`` is kept (unless ``rl.keep_regardless``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import fmean

import torch

from seal.config import CurationWeights, ModelConfig, SFTConfig
from seal.data import Passage
from seal.diagnostics import TEXT, Formats, coverage, similarity
from seal.models import load_policy, peft_lora_config, policy_revision, write_adapter_chain
from seal.rundir import atomic_dir
from seal.sections import RecipeError


def select_best(
    rewards: Mapping[int, Sequence[float | None]],
    k_best: int = 1,
    threshold: float = 0.0,
    keep_regardless: bool = False,
) -> dict[int, list[int]]:
    """The E-step: for each passage, the indices of the self-edits to keep.

    Args:
        rewards: passage index -> mean reward per self-edit (``None``: every evaluation of
            that self-edit failed; never kept).
        k_best: self-edits kept per passage at most, highest reward first; ties keep the
            lower self-edit index (deterministic).
        threshold: keep only rewards strictly above it (ignored with ``keep_regardless``).

    Returns:
        passage index -> kept self-edit indices (best first); passages with none kept are absent.
    """
    kept: dict[int, list[int]] = {}
    for p, rs in rewards.items():
        ranked = sorted((i for i, r in enumerate(rs) if r is not None), key=lambda i: (-rs[i], i))
        if not keep_regardless:
            ranked = [i for i in ranked if rs[i] > threshold]
        if ranked[:k_best]:
            kept[p] = ranked[:k_best]
    return kept


def curation_scores(passage: Passage, texts: Sequence[str], rewards: Sequence[float | None], domain: Formats = TEXT) -> list[dict | None]:
    """Per self-edit of one passage, what a multi-reward curation ranks it by (None: failed):

    * ``gain``: its mean reward (adapted minus baseline accuracy, in [-1, 1]);
    * ``coverage``: share of the passage's gold answers it states (``seal.diagnostics.coverage``;
      0 when the passage has none), in [0, 1];
    * ``novelty``: 1 minus its mean similarity (Jaccard of word-bigram sets) to the passage's
      other self-edits, failed ones included, in [0, 1]; 1 for a passage's only self-edit.
    """
    out: list[dict | None] = []
    for i, (text, reward) in enumerate(zip(texts, rewards, strict=True)):
        if reward is None:
            out.append(None)
            continue
        others = [similarity(text, other) for j, other in enumerate(texts) if j != i]
        out.append({
            "gain": reward,
            "coverage": coverage(text, passage, domain) or 0.0,
            "novelty": 1.0 - fmean(others) if others else 1.0,
        })  # fmt: skip
    return out


def weighted_score(scores: Mapping[str, float], weights: CurationWeights) -> float:
    """``rl.curation: weighted``: gain x weights.gain + coverage x weights.coverage + novelty x weights.novelty."""
    return weights.gain * scores["gain"] + weights.coverage * scores["coverage"] + weights.novelty * scores["novelty"]


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def pareto_fronts(points: Mapping[int, Sequence[float]]) -> list[list[int]]:
    """Non-dominated sorting: the Pareto front of ``points`` (none dominated: no other point
    at least as high in every coordinate and higher in one), then the front of the rest, ..."""
    left, fronts = dict(points), []
    while left:
        front = [i for i, a in left.items() if not any(_dominates(b, a) for j, b in left.items() if j != i)]
        fronts.append(sorted(front))
        for i in front:
            del left[i]
    return fronts


def pareto_order(scores: Mapping[int, Mapping[str, float]]) -> list[tuple[int, int]]:
    """``rl.curation: pareto``: ``(self-edit index, front)`` best first, over (gain, coverage,
    novelty). The Pareto front first, then the next front, ...; within a front (tie-break)
    higher gain first, then higher coverage, then higher novelty, then the lower index."""
    fronts = pareto_fronts({i: (s["gain"], s["coverage"], s["novelty"]) for i, s in scores.items()})
    order = []
    for rank, front in enumerate(fronts):
        tie_break = sorted(front, key=lambda i: (-scores[i]["gain"], -scores[i]["coverage"], -scores[i]["novelty"], i))
        order += [(i, rank) for i in tie_break]
    return order


def curate(
    scores: Mapping[int, Sequence[dict | None]],
    method: str,
    weights: CurationWeights,
    k_best: int = 1,
    threshold: float = 0.0,
    keep_regardless: bool = False,
) -> dict[int, list[int]]:
    """The E-step of a multi-reward curation (``weighted`` or ``pareto``): per passage, the
    indices of the self-edits to keep, best first; passages with none kept are absent.

    Only self-edits whose gain is strictly above ``threshold`` compete (all with a gain under
    ``keep_regardless``), as in :func:`select_best`; failed ones (None) never. Each kept
    self-edit's score dict gains its ``score`` (weighted: :func:`weighted_score`) or
    ``front`` (pareto: 0 for the Pareto front), recorded in ``sft_rows.jsonl``.
    """
    kept: dict[int, list[int]] = {}
    for p, per_edit in scores.items():
        eligible = {i: s for i, s in enumerate(per_edit) if s is not None and (keep_regardless or s["gain"] > threshold)}
        if method == "weighted":
            for s in eligible.values():
                s["score"] = weighted_score(s, weights)
            ranked = sorted(eligible, key=lambda i: (-eligible[i]["score"], i))
        elif method == "pareto":
            ranked = []
            for i, front in pareto_order(eligible):
                eligible[i]["front"] = front
                ranked.append(i)
        else:
            raise ValueError(f"unknown curation {method!r}; known: gain, weighted, pareto")
        if ranked[:k_best]:
            kept[p] = ranked[:k_best]
    return kept


def sft_rows(prompts: Mapping[int, str], self_edits: Mapping[int, Sequence[str]], kept: Mapping[int, Sequence[int]]) -> list[dict]:
    """``{"prompt", "completion"}`` rows (TRL's prompt-completion format) for the kept self-edits,
    in passage order then rank order."""
    return [
        {"prompt": prompts[p], "completion": self_edits[p][i]}
        for p in sorted(kept)
        for i in kept[p]
    ]


def sft_grad_accum_steps(cfg: SFTConfig, world_size: int) -> int:
    """Gradient accumulation steps of the policy update under ``world_size`` processes.

    With ``rl.sft.global_batch_size`` set, an optimizer step sees that many rows whatever the
    number of processes: ``global_batch_size / (batch_size x world_size)`` (the reference's
    10 = 2 GPUs x 1 x 5, knowledge-incorporation/scripts/train_SFT.sh:18-19,33); without it,
    ``rl.sft.grad_accum_steps`` (the step is then ``world_size`` times larger with more processes).

    Raises:
        RecipeError: ``global_batch_size`` is not a multiple of ``batch_size x world_size``
            (names the key and the numbers).
    """
    if cfg.global_batch_size is None:
        return cfg.grad_accum_steps
    per_step = cfg.batch_size * world_size
    if cfg.global_batch_size % per_step:
        raise RecipeError(
            f"rl.sft.global_batch_size ({cfg.global_batch_size}) is not a multiple of rl.sft.batch_size x processes "
            f"({cfg.batch_size} x {world_size}); change one of them"
        )
    return cfg.global_batch_size // per_step


def update_policy(
    policy_path: str | os.PathLike,
    rows: Sequence[dict],
    cfg: SFTConfig,
    out_dir: str | os.PathLike,
    seed: int,
    model_config: ModelConfig | None = None,
    work_dir: str | os.PathLike | None = None,
    report_to: Sequence[str] = (),
    callbacks: Sequence = (),
    world_size: int = 1,
    save: str = "merged",
    adapter_out: str | os.PathLike | None = None,
) -> dict:
    """The M-step: LoRA-SFT the policy on ``rows``, merge, and save the merged model to ``out_dir``.

    Loss is on completion tokens only (TRL's default for prompt-completion data). Runs
    under ``accelerate launch`` / DeepSpeed as TRL does (``cfg.deepspeed``). The adapter is
    saved by the trainer (which gathers ZeRO-3 shards), then merged into a fresh copy of the
    policy on the main process and written atomically: ``out_dir`` appears whole or not at all.
    ``save`` (``rl.save``): ``merged`` writes ``out_dir`` only; ``adapter`` writes only
    ``adapter_out``, the policy as an adapter chain (``seal.models.write_adapter_chain``: the
    chain of ``policy_path`` plus this adapter); ``both`` writes the two. ``policy_path`` may
    itself be an adapter chain.

    ``model_config``: the recipe's ``model`` section; the policy and the merge base are loaded
    with its dtype, attention implementation, trust_remote_code, and its revision when
    ``policy_path`` is its model (``seal.models.load_policy``). None: ``ModelConfig`` 's
    defaults (float32). The LoRA: ``cfg.lora`` (``seal.models.peft_lora_config``).

    ``report_to``: TRL's trackers for the SFT's losses (``seal.tracking.Tracking.for_trainer``);
    ``callbacks``: extra ``TrainerCallback`` s (``seal.display.trainer_progress``: then TRL's
    ``PrinterCallback``, a dict per step on stdout, is removed).

    ``world_size`` is the number of processes training together (data-parallel): with
    ``cfg.global_batch_size`` it sets the gradient accumulation (:func:`sft_grad_accum_steps`).

    Returns:
        ``{"train_loss": float, "steps": int, "seconds": float, "rows": int, "grad_accum_steps": int}``.

    Raises:
        ValueError: no rows (nothing to learn from; the caller keeps the old policy).
        RecipeError: see :func:`sft_grad_accum_steps`.
    """
    # Here, not at the top: TRL, PEFT and datasets take seconds to import and only the M-step
    # needs them (select_best and sft_rows stay cheap to import).
    from datasets import Dataset
    from peft import PeftModel
    from transformers import PrinterCallback
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    if not rows:
        raise ValueError("no SFT rows: nothing to update the policy with")
    grad_accum_steps = sft_grad_accum_steps(cfg, world_size)
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir.parent / f".{out_dir.name}.sft"
    model_config = model_config or ModelConfig(name_or_path=str(policy_path))
    model, tok = load_policy(model_config, policy_path, for_training=True)
    args = TRLSFTConfig(
        output_dir=str(work),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=grad_accum_steps,
        max_length=cfg.max_length,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the steps
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        deepspeed=cfg.deepspeed,
        completion_only_loss=True,
        save_strategy="no",
        report_to=list(report_to),
        logging_steps=1,
        seed=seed,
        data_seed=seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(list(rows)), processing_class=tok, peft_config=peft_lora_config(cfg.lora),
        callbacks=list(callbacks) or None,
    )
    if callbacks:
        trainer.remove_callback(PrinterCallback)
    result = trainer.train()
    adapter_dir = work / "adapter"
    trainer.save_model(str(adapter_dir))
    stats = {
        "train_loss": float(result.training_loss),
        "steps": int(result.global_step),
        "seconds": float(result.metrics.get("train_runtime", 0.0)),
        "rows": len(rows),
        "grad_accum_steps": grad_accum_steps,
    }
    if trainer.accelerator.is_main_process and save in ("adapter", "both"):
        write_adapter_chain(adapter_out, adapter_dir, tok, policy_path, policy_revision(model_config, policy_path))
    if trainer.accelerator.is_main_process and save in ("merged", "both"):
        base, _ = load_policy(model_config, policy_path, for_training=True)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        with atomic_dir(out_dir) as tmp:
            merged.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    trainer.accelerator.wait_for_everyone()
    del trainer, model
    return stats
