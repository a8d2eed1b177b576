"""The bottom layer of recipe configuration: the base :class:`Section`, :class:`RecipeError`, and
the sections that more than one recipe part builds on (the inner loop's settings, tiny models,
source strings).

``seal.config`` (the whole :class:`~seal.config.Recipe`), ``seal.bench.config`` and
``seal.microworld.config`` import from here; this module imports no other seal module but one, so the
configuration modules import one way (its one seal import is ``seal.errors``, a leaf that imports
nothing: ``RecipeError`` is a ``SealError``). Everything here is re-exported by ``seal.config``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from seal.errors import SealError


class RecipeError(SealError, ValueError):
    """A recipe file or override is invalid. The message names the file and the key."""


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, values are re-validated on set,
    and every float must be finite (``.nan`` / ``.inf`` are refused naming the key: a NaN
    threshold keeps nothing, a NaN failure reward poisons the metrics, an infinite learning
    rate fails every evaluation)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TinyModelConfig(Section):
    """A tiny random Llama-architecture model built locally (``seal tiny-model``) for CPUs and tests."""

    data: list[str] = Field(
        default_factory=lambda: ["squad/train_100.json"],
        description="SEAL-format files whose text trains the BPE tokenizer (relative to data.root).",
    )
    vocab_size: int = Field(2048, ge=300)
    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    seed: int = Field(0)
    warmup: str = Field(
        "none",
        description="After building: 'none' (a random model) or a warm-up the recipe's task offers (task arc: 'arc-configs', warmup_steps of training on the recipe's self-edit prompts of the training tasks, each followed by a configuration drawn from the declared space, so sampled self-edits parse; seal.arc.warmup). With a warm-up the directory records these settings (seal_tiny.json) and a directory built otherwise is refused.",
    )
    warmup_steps: int = Field(200, ge=1, description="AdamW steps of the warm-up (batch 8; about 0.1-0.15 s each at width 64 on one CPU thread).")
    warmup_lr: float = Field(1e-2, gt=0, description="The warm-up's peak AdamW learning rate (20 warm-up steps, then linear decay to 0).")


class LoraConfig(Section):
    """A LoRA adapter's shape (Hu et al. 2021)."""

    rank: int = Field(32, ge=1)
    alpha: float = Field(64, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        description="Names of the linear layers to adapt (at least one; each must match a module of the model, checked before a run starts: seal.preflight). ['q_proj', 'v_proj'] is PEFT's default for Llama/Qwen2.",
    )


class InnerLoopConfig(Section):
    """The inner loop: a fresh LoRA adapter trained on one self-edit's texts (paper Section 4.2)."""

    lora: LoraConfig = Field(default_factory=LoraConfig)
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(1, ge=1, description="Training texts per forward/backward batch, per adapter.")
    grad_accum_steps: int = Field(
        1,
        ge=1,
        description="Batches accumulated per optimizer step (HF Trainer's gradient_accumulation_steps; the reference's base and GPT-4.1 CPT runs used 2). A step then learns batch_size x grad_accum_steps texts with the token-mean loss over all of them: exactly one batch of that size (transformers >= 4.46, the reference's 4.52.4, normalises by the accumulated tokens too). 1: today's steps, bit-identical.",
    )
    max_grad_norm: float | None = Field(
        1.0, description="Per-adapter gradient clipping (HF Trainer's default, which the reference inherits). None: off."
    )
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: Literal["linear", "constant", "cosine"] = Field(
        "linear",
        description="Per-adapter schedule over its own steps: 'linear' (HF Trainer's default: decay to 0), 'constant', or 'cosine' (HF's half-cosine to 0, the ARC reference's, arclib/update_model.py:276); after warmup_steps.",
    )
    warmup_steps: int = Field(
        0, ge=0, description="Per-adapter linear warm-up from 0 over its first steps (HF's: step t < W has lr * t / W), before the schedule (ARC reference: 11). 0: none."
    )
    max_length: int = Field(1024, ge=8, description="Training texts are truncated to this many tokens.")
    train_on_padding: bool = Field(
        False,
        description="Reproduce the reference's loss on padded positions (sequences padded to max_length). Off: loss on real tokens only.",
    )
    eval_times: int = Field(3, ge=1, description="Repetitions of (train adapter, answer questions) per self-edit.")
    batch_adapters: int = Field(
        1, ge=1, description="Adapters trained and scored together in one pass over the base model (1: sequential)."
    )
    failure_reward: float | None = Field(
        None,
        description="Reward of a failed evaluation (non-finite loss, nothing to train on). None: left out of the self-edit's mean; a self-edit whose every repetition failed is never kept.",
    )
    loss_on: Literal["all", "answer"] = Field(
        "all",
        description="Which tokens of a training text carry loss: 'all' (every token after BOS), or 'answer' (only the tokens after the first `answer_marker` in the text, e.g. the answer of a 'Q: ... A: ...' line; a text without the marker keeps loss on every token, so the passage still trains). A self-edit's hyperparameter block may override it per adapter.",
    )
    answer_marker: str = Field(
        "A:", min_length=1, description="With loss_on: answer, the loss starts after the first occurrence of this string in a training text."
    )
    learner: Literal["policy", "base"] = Field(
        "policy",
        description="The model the inner loop adapts and questions in `seal train`: 'policy' (each round's policy learns from its own self-edits, SEAL's self-adaptation) or 'base' (model.name_or_path stays the learner every round and only the writing of self-edits is trained: a teacher-student variant; one more model in memory).",
    )


class FloatRange(Section):
    """A closed range ``[min, max]`` of floats, both finite and > 0 (learning rates)."""

    min: float = Field(gt=0, allow_inf_nan=False)
    max: float = Field(gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self


class IntRange(Section):
    """A closed range ``[min, max]`` of integers >= 1 (epochs)."""

    min: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self


class HparamsConfig(Section):
    """Hyperparameter self-edits: a self-edit may end with a block of inner-loop settings.

    The block is everything after the last line of the self-edit that equals ``marker``
    (surrounding spaces ignored); the training texts are made from the text before that line.
    It is read as data (``format``), never evaluated (``seal.hparams.parse_self_edit``).
    The policy may set only the keys declared here (a key left None is not declared); a key
    it leaves out takes the recipe's ``inner`` value (``inner.lr``, ``inner.epochs``,
    ``inner.loss_on``, ``inner.lora.rank``). An undeclared key, a value outside its declared
    space, or a block that does not parse fails that self-edit's evaluations with the reason
    (reward ``inner.failure_reward``); nothing is clamped or replaced.
    """

    enabled: bool = Field(False, description="Read a hyperparameter block from each self-edit. Off: self-edits are training text only (today's behaviour).")
    format: Literal["json", "key-value"] = Field(
        "json",
        description="'json': one JSON object, e.g. {\"lr\": 0.001, \"epochs\": 5}; 'key-value': one 'key: value' per line, e.g. 'lr: 0.001'.",
    )
    marker: str = Field("Hyperparameters:", min_length=1, description="The line that opens the block (the last such line of the self-edit).")
    required: bool = Field(False, description="A self-edit without a block fails (True) or trains with the recipe's inner values (False).")
    prompt_hint: bool = Field(
        True, description="Tell the policy, in the self-edit prompt, the block's format and the declared space (seal.hparams.prompt_hint)."
    )
    max_chars: int = Field(512, ge=16, description="A longer block fails unread (bounds the parser's work on hostile text).")
    lr: FloatRange | None = Field(None, description="Allowed learning rates [min, max] (None: the policy may not set lr).")
    epochs: IntRange | None = Field(None, description="Allowed epoch counts [min, max] (None: the policy may not set epochs).")
    loss_on: list[Literal["all", "answer"]] | None = Field(
        None, min_length=1, description="Allowed loss masks (see inner.loss_on; None: the policy may not set loss_on)."
    )
    lora_rank: list[int] | None = Field(
        None, min_length=1, description="Allowed LoRA ranks (None: the policy may not set lora_rank). Adapters of different ranks train in separate banks."
    )

    @field_validator("lora_rank")
    @classmethod
    def _positive_ranks(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(r < 1 for r in v):
            raise ValueError(f"LoRA ranks must be >= 1, got {v}")
        return v

    def declared(self) -> list[str]:
        """The keys the policy may set, in a fixed order."""
        return [k for k in HPARAM_KEYS if getattr(self, k) is not None]


#: Keys a hyperparameter block may carry (each must also be declared in the recipe).
HPARAM_KEYS = ("lr", "epochs", "loss_on", "lora_rank")


#: Kinds of source of inner-loop training data (``seal evaluate``'s ``evaluate.source``, ``seal bench``'s sources).
SOURCE_KINDS = ("none", "passage", "file", "policy", "prompt", "text")


def parse_source(source: str) -> tuple[str, str | None]:
    """Split a source of inner-loop training data, ``kind:arg``, into (kind, arg) (``text:``'s
    argument, one self-edit written out, may itself hold colons: only the first one splits).

    Raises:
        RecipeError: unknown kind, or a missing/extra argument.
    """
    kind, _, arg = source.partition(":")
    if kind not in SOURCE_KINDS:
        raise RecipeError(f"unknown source {source!r}; expected one of none, passage, file:<path>, policy:<model>, prompt:<template>, text:<self-edit>")
    if kind in ("none", "passage") and arg:
        raise RecipeError(f"source {kind!r} takes no argument (got {source!r})")
    if kind in ("file", "policy", "prompt", "text") and not arg:
        raise RecipeError(f"source {source!r} needs an argument: {kind}:<...>")
    return kind, arg or None
