"""ReST-EM: keep the best self-edits per passage, SFT the policy on them, merge (paper Section 3.1).

ReST-EM (Singh et al. 2023) as SEAL uses it: per round, sample k self-edits per passage,
score each by its inner-loop reward, keep the top ``k_best`` whose reward clears a
threshold (E-step), then fine-tune the policy on ``{prompt, completion}`` rows of the kept
self-edits (M-step) with TRL's ``SFTTrainer`` + LoRA, and merge the adapter so the merged
model is the next round's policy and base model.

Difference from the reference: it keeps the best self-edit whatever its reward; here only
rewards strictly above ``rl.reward_threshold`` are kept, and ``rl.keep_regardless``
restores the reference's behaviour.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from seal.config import SFTConfig
from seal.models import _DTYPES, load_tokenizer
from seal.rundir import atomic_dir


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


def sft_rows(prompts: Mapping[int, str], self_edits: Mapping[int, Sequence[str]], kept: Mapping[int, Sequence[int]]) -> list[dict]:
    """``{"prompt", "completion"}`` rows (TRL's prompt-completion format) for the kept self-edits,
    in passage order then rank order."""
    return [
        {"prompt": prompts[p], "completion": self_edits[p][i]}
        for p in sorted(kept)
        for i in kept[p]
    ]


def update_policy(
    policy_path: str | os.PathLike,
    rows: Sequence[dict],
    cfg: SFTConfig,
    out_dir: str | os.PathLike,
    seed: int,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    work_dir: str | os.PathLike | None = None,
) -> dict:
    """The M-step: LoRA-SFT the policy on ``rows``, merge, and save the merged model to ``out_dir``.

    Loss is on completion tokens only (TRL's default for prompt-completion data). Runs
    under ``accelerate launch`` / DeepSpeed as TRL does (``cfg.deepspeed``). The adapter is
    saved by the trainer (which gathers ZeRO-3 shards), then merged into a fresh copy of the
    policy on the main process and written atomically: ``out_dir`` appears whole or not at all.

    Returns:
        ``{"train_loss": float, "steps": int, "seconds": float, "rows": int}``.

    Raises:
        ValueError: no rows (nothing to learn from; the caller keeps the old policy).
    """
    # Here, not at the top: TRL, PEFT and datasets take seconds to import and only the M-step
    # needs them (select_best and sft_rows stay cheap to import).
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    if not rows:
        raise ValueError("no SFT rows: nothing to update the policy with")
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir.parent / f".{out_dir.name}.sft"
    tok = load_tokenizer(policy_path, trust_remote_code)
    torch_dtype = _DTYPES.get(dtype, torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(policy_path), dtype=torch_dtype, trust_remote_code=trust_remote_code)
    args = TRLSFTConfig(
        output_dir=str(work),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        max_length=cfg.max_length,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the steps
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        deepspeed=cfg.deepspeed,
        completion_only_loss=True,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        seed=seed,
        data_seed=seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    peft_cfg = LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(list(rows)), processing_class=tok, peft_config=peft_cfg
    )
    result = trainer.train()
    adapter_dir = work / "adapter"
    trainer.save_model(str(adapter_dir))
    stats = {
        "train_loss": float(result.training_loss),
        "steps": int(result.global_step),
        "seconds": float(result.metrics.get("train_runtime", 0.0)),
        "rows": len(rows),
    }
    if trainer.accelerator.is_main_process:
        base = AutoModelForCausalLM.from_pretrained(str(policy_path), dtype=torch_dtype, trust_remote_code=trust_remote_code)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        with atomic_dir(out_dir) as tmp:
            merged.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    trainer.accelerator.wait_for_everyone()
    del trainer, model
    return stats
