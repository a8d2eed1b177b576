"""Settings of one microworld (:class:`PretrainConfig`) and the cache key that names its directory.

Kept apart from :mod:`seal.microworld.pretrain` so that recipes (``seal.config``) can validate a
``microworld`` section and compute its directory without importing torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from seal.errors import SealError
from seal.microworld.corpus import QA_TEMPLATE_NAME, SELF_EDIT_TEMPLATE, HparamDemos
from seal.microworld.world import STYLES
from seal.prompts import QA_TEMPLATES, TEMPLATES, check_qa_template

FORMAT_VERSION = 3


class CopySkillError(SealError, RuntimeError):
    """Pretraining ended without the copy skill (the gate stayed shut, or the finished policy
    copies too few values right): no cache entry was written. The message says what was
    measured and what to try."""


class PretrainConfig(BaseModel):
    """Settings of one microworld: the world, its corpus, the model and the pretraining schedule.

    The defaults are the measured CPU recipe: a 1.03 M-parameter Llama (4 layers, width 128)
    trained in two phases of 16-document steps (``seal.microworld.pretrain``):

    1. **Copy curriculum**: biographies of fresh people with 1-3 facts, followed by a
       self-edit or an open-book answer that copies them, at a constant learning rate, in
       blocks of ``copy_block_steps``. After each block from ``copy_min_steps`` on, the copy
       gate measures greedy open-book accuracy on ``n_check_people`` fresh people; it opens
       at ``copy_gate``. Copying emerges abruptly (open-book 0.01-0.06 before, 0.14-0.33 in
       the first block after) and keeps improving: at the 0.40 gate it opened after 1000-2000
       steps on seeds 0-4 (AMD EPYC family 26). Still shut after ``copy_max_steps``:
       ``CopySkillError``. The gate was 0.25 until a measurement over seeds showed that the
       weakest copier (value precision 0.29) gave the weakest held-out gain (+2.6 points,
       interval touching 0); at 0.40 every seed's policy copies 57-72 % of values right.
    2. **Knowledge phase**: ``memory_epochs`` epochs of the memory people's biographies and
       QA, the self-edit demonstrations and ``main_copy_docs`` copy documents per epoch (so
       the skill is kept, not overwritten), cosine decay to 10 %.

    Finally the policy's sampled self-edits on ``n_copy_eval`` held-out people must copy at
    least ``min_copy_precision`` of their values right, else ``CopySkillError`` and nothing is
    cached. 2570-3570 steps in all on seeds 0-4. Before the gate (format version
    2), one fixed warm-up of 3-5-fact documents ended abruptly and copying emerged on some
    machines and seeds only (value precision 0.02-0.05 on seed 4 of our AMD box, seed 0 of an
    Intel one). Smaller corpora or models were measured not to learn to copy at all (under
    3 % of values right with 1.3 M tokens, or with a 3-layer width-96 model).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # as seal.sections.Section

    seed: int = Field(
        0, description="Seeds the world, the corpus, the initialisation and the data order."
    )
    # world
    n_train: int = Field(200, ge=1, description="RL-training people (train.json).")
    n_eval: int = Field(200, ge=1, description="Evaluation people (eval.json).")
    min_facts: int = Field(
        3, ge=1, le=6, description="Fewest attributes stated (and asked) per person."
    )
    max_facts: int = Field(
        5, ge=1, le=6, description="Most attributes stated (and asked) per person."
    )
    # corpus
    n_memory: int = Field(
        300, ge=1, description="Pretraining people whose facts the model memorises (passages + QA)."
    )
    memory_epochs: int = Field(
        10, ge=1, description="Repetitions of each memory person (fresh rendering each time)."
    )
    n_demos: int = Field(
        6000,
        ge=0,
        description="Self-edit demonstrations (all styles) mixed with the memory documents in the knowledge phase.",
    )
    style_weights: list[float] = Field(
        default_factory=lambda: [1.0] * len(STYLES),
        description=f"Relative frequency of the self-edit styles {list(STYLES)} among demonstrations.",
    )
    # copy curriculum and its gate
    copy_block_steps: int = Field(
        250, ge=1, description="Optimizer steps per block of the copy curriculum; the copy gate is checked after each block."
    )
    copy_min_steps: int = Field(
        1000, ge=0, description="Fewest copy-curriculum steps before the gate may open."
    )
    copy_max_steps: int = Field(
        3000,
        ge=1,
        description="Budget of the copy curriculum: if the gate is still shut after this many steps, pretraining stops with CopySkillError and caches nothing.",
    )
    copy_gate: float = Field(
        0.40,
        ge=0,
        le=1,
        description="Open-book accuracy (greedy, passage in context) on n_check_people fresh people that ends the copy curriculum.",
    )
    n_check_people: int = Field(32, ge=1, description="Fresh people the copy gate is measured on.")
    copy_min_facts: int = Field(1, ge=1, le=6, description="Fewest facts per person in the copy curriculum.")
    copy_max_facts: int = Field(3, ge=1, le=6, description="Most facts per person in the copy curriculum.")
    main_copy_docs: int = Field(
        400, ge=0, description="Copy-curriculum documents mixed into each knowledge epoch, so the skill keeps being used."
    )
    min_copy_precision: float = Field(
        0.15,
        ge=0,
        le=1,
        description="Least value precision of the finished policy's sampled self-edits on n_copy_eval held-out people; below it, CopySkillError and no cache entry.",
    )
    qa_fraction: float = Field(
        1.0, ge=0, le=1, description="Share of memory people with QA documents."
    )
    qa_template: str = Field(
        QA_TEMPLATE_NAME,
        description="No-passage QA prompt (a seal.prompts.QA_TEMPLATES name) of the memory QA documents; recipes on this world set the same qa.template.",
    )
    oracle_style: str = Field(
        "paraphrase", description="Style of the generator-written self-edits in oracle_*.json."
    )
    # hyperparameter demonstrations (left out of the cache key while hparam_demos is off)
    hparam_demos: bool = Field(
        False,
        description="Every self-edit demonstration ends with a hyperparameter block (seal.hparams) choosing lr and epochs uniformly from hparam_lrs x hparam_epochs, good and bad settings alike, so the base policy writes a spread and ReST-EM can learn which to choose. Recipes on such a world enable self_edit.hparams with the same format and marker.",
    )
    hparam_format: Literal["json", "key-value"] = Field(
        "json", description="Format of the demonstrated blocks (the recipe's self_edit.hparams.format)."
    )
    hparam_marker: str = Field(
        "Hyperparameters:", min_length=1, description="The line that opens a demonstrated block (the recipe's self_edit.hparams.marker)."
    )
    hparam_lrs: list[float] = Field(
        default_factory=lambda: [5e-4, 5e-3, 2e-2],
        min_length=1,
        description="Learning rates the demonstrations choose from (per optimizer step of the inner loop). Measured on the seed-0 world (benchmarks/microworld_hparams.py): see the README.",
    )
    hparam_epochs: list[int] = Field(
        default_factory=lambda: [1, 5, 10],
        min_length=1,
        description="Epoch counts the demonstrations choose from (passes of the inner loop over the self-edit's texts).",
    )
    # tokenizer + model
    vocab_size: int = Field(1536, ge=300, description="Byte-level BPE vocabulary size.")
    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(384, ge=16)
    max_length: int = Field(384, ge=32, description="Documents are truncated to this many tokens.")
    # schedule
    batch_size: int = Field(16, ge=1, description="Documents per optimizer step.")
    lr: float = Field(
        2e-3, gt=0, description="Peak AdamW learning rate (linear warm-up, cosine decay to 10 %)."
    )
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    # reporting
    log_every: int = Field(50, ge=1, description="Steps between progress lines.")
    n_copy_eval: int = Field(
        48,
        ge=0,
        description="Evaluation passages sampled (T=1, top-p 0.95, 2 each) for the final copy metrics and min_copy_precision.",
    )
    num_threads: int | None = Field(
        1,
        ge=1,
        description="torch threads while pretraining (None: leave as is). 1 is fastest for this size, and far faster than 2 on shared cores.",
    )

    @field_validator("oracle_style")
    @classmethod
    def _known_style(cls, v: str) -> str:
        if v not in STYLES:
            raise ValueError(f"must be one of {list(STYLES)}")
        return v

    @field_validator("hparam_lrs")
    @classmethod
    def _positive_lrs(cls, v: list[float]) -> list[float]:
        if min(v) <= 0:
            raise ValueError(f"learning rates must be > 0, got {v}")
        return v

    @field_validator("hparam_epochs")
    @classmethod
    def _positive_epochs(cls, v: list[int]) -> list[int]:
        if min(v) < 1:
            raise ValueError(f"epoch counts must be >= 1, got {v}")
        return v

    @field_validator("qa_template")
    @classmethod
    def _known_qa_template(cls, v: str) -> str:
        return check_qa_template(v)

    @field_validator("style_weights")
    @classmethod
    def _one_weight_per_style(cls, v: list[float]) -> list[float]:
        if len(v) != len(STYLES) or min(v) < 0 or sum(v) <= 0:
            raise ValueError(
                f"needs {len(STYLES)} non-negative weights ({', '.join(STYLES)}), not all 0"
            )
        return v

    def hparam_spec(self) -> HparamDemos | None:
        """The demonstrations' hyperparameter blocks (None: ``hparam_demos`` is off)."""
        if not self.hparam_demos:
            return None
        return HparamDemos(tuple(self.hparam_lrs), tuple(self.hparam_epochs), self.hparam_format, self.hparam_marker)


#: Fields that do not change what is written (left out of the cache key).
_UNKEYED = {"log_every", "num_threads", "cache_dir"}
#: The hyperparameter-demonstration fields: keyed only when ``hparam_demos`` is on, so every
#: world without them keeps the key (and cache entry) it had before they existed.
_HPARAM_FIELDS = {"hparam_demos", "hparam_format", "hparam_marker", "hparam_lrs", "hparam_epochs"}


def settings_key(cfg: PretrainConfig) -> str:
    """16 hex digits hashing the settings (but ``log_every``, ``num_threads``, and the ``hparam_*``
    fields while ``hparam_demos`` is off), the prompt templates and the cache format."""
    unkeyed = _UNKEYED if cfg.hparam_demos else _UNKEYED | _HPARAM_FIELDS
    blob = json.dumps(
        {
            "cfg": cfg.model_dump(mode="json", exclude=unkeyed),
            "se": TEMPLATES[SELF_EDIT_TEMPLATE],
            "qa": QA_TEMPLATES[cfg.qa_template],
            "v": FORMAT_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class MicroworldSection(PretrainConfig):
    """A recipe's ``microworld`` section: the world to pretrain (or reuse) before the run.

    Every :class:`PretrainConfig` field, plus ``cache_dir``. In the recipe's strings,
    ``{microworld}`` stands for the world's directory (``entry_dir()``), e.g.
    ``model.name_or_path: "{microworld}/model"`` and ``data.root: "{microworld}"``.
    """

    cache_dir: str = Field(".cache/microworld", description="Parent of cached worlds, one folder per settings key.")

    #: Stands for :meth:`placeholder_value` in every string of the recipe (``seal.tasks.sections.resolve_placeholders``).
    placeholder: ClassVar[str] = "{microworld}"

    def placeholder_value(self) -> str:
        """The world's directory (:meth:`entry_dir`); computed from the settings alone, the world
        is pretrained later (``seal.prepare.ensure_model``) if it is not cached."""
        return str(self.entry_dir())

    def pretrain_config(self) -> PretrainConfig:
        """The settings without ``cache_dir``."""
        return PretrainConfig(**self.model_dump(exclude={"cache_dir"}))

    def entry_dir(self) -> Path:
        """``<cache_dir>/<settings_key>``: where the world is (or will be) written."""
        return Path(self.cache_dir) / settings_key(self.pretrain_config())
