"""The inner loop: train a fresh LoRA adapter per self-edit, then answer questions with it.

CONTRACT (implementation pending; the signatures and dataclasses below are fixed and
used by seal.train, seal.evaluate and seal.bench).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AdapterJob:
    """One inner-loop evaluation.

    Attributes:
        texts: training texts (already built: title-prefixed, passage last). May be empty:
            then no adapter is trained and the answers are the base model's.
        prompts: no-passage QA prompts, fully formatted; answered greedily after training.
        seed: seeds the adapter's initialisation and its per-epoch data order.
    """

    texts: list[str]
    prompts: list[str]
    seed: int


@dataclass
class AdapterResult:
    """What one :class:`AdapterJob` produced."""

    answers: list[str]  # one greedy answer per prompt, stripped of the prompt
    epoch_losses: list[float] = field(default_factory=list)  # mean token loss per epoch
    n_train_tokens: int = 0  # real (loss-bearing) tokens per epoch
    seconds: float = 0.0  # wall seconds attributed to this job (its chunk's time / chunk size)
    error: str | None = None  # failure reason (non-finite loss, no trainable tokens, ...); answers then empty
