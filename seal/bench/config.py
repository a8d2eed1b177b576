"""The recipe's ``bench`` section: which sources of training data, which students, which protocols.

A bench recipe is a normal recipe (``model``, ``data``, ``self_edit``, ``inner``, ``qa`` are
reused as they are) plus::

    bench:
      sources:                       # rows of the table; a string or a mapping
        - none
        - passage
        - source: file:squad/val_200_selfedits_gpt-4.1.json
          label: GPT-4.1
          expected: {single: 0.463, multi: 0.394}   # paper figures shown beside the row
          inner: {multi: {grad_accum_steps: 2}}     # this row's own inner settings, per protocol
        - {source: "policy:runs/x/round_1/policy", learner: self}   # the policy learns its own self-edits
      students: null                 # models trained on the data (default: [model.name_or_path])
      protocols:
        single: {n_passages: 200, n_self_edits: 1}
        multi: {n_passages: 200, n_self_edits: 5, inner: {epochs: 3, batch_size: 4}}
        continual: {n_passages: 8}   # or {order: random, runs: 8, sequences: 8, writer: current}
      bootstrap_samples: 10000
      confidence: 0.95
      seed: null                     # default: the recipe's seed
      train_run: null                # a `seal train` run: adds each round's policy as a source
      train_run_learner: student     # or self: each round's policy learns its own rows
"""

from __future__ import annotations

import copy
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from seal.prompts import check_template
from seal.sections import InnerLoopConfig, Section, TinyModelConfig, parse_source

PROTOCOLS = ("single", "multi", "continual")

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def deep_merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` applied recursively (nested dicts merged, other values replaced)."""
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def merged_inner(inner: InnerLoopConfig, overrides: dict) -> InnerLoopConfig:
    """The recipe's inner-loop settings with a protocol's overrides applied and re-validated.

    Raises:
        pydantic.ValidationError: an override key is unknown or its value mistyped.
    """
    return InnerLoopConfig.model_validate(deep_merge(inner.model_dump(), overrides))


def default_label(source: str) -> str:
    """A short row label: ``file:squad/val_200_selfedits_gpt-4.1.json`` -> ``file:val_200_selfedits_gpt-4.1``."""
    kind, _, arg = source.partition(":")
    if kind == "file":
        return "file:" + arg.rstrip("/").rsplit("/", 1)[-1].removesuffix(".json")
    if kind == "policy":
        parts = [p for p in arg.rstrip("/").split("/") if p]
        return "policy:" + "/".join(parts[-2:])
    return source


class Expected(Section):
    """A reference figure for one (source, protocol), e.g. from the paper; a bare number means macro accuracy."""

    accuracy: float = Field(ge=0, le=1, description="A fraction (0.463 for 46.3 %).")
    statistic: Literal["macro", "micro"] = Field(
        "macro", description="macro: mean over passages (paper Table 2); micro: over questions (the paper's CPT figures)."
    )
    note: str | None = Field(None, description="Where the figure comes from.")

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, v):
        return {"accuracy": v} if isinstance(v, (int, float)) else v


class SourceSpec(Section):
    """One source of inner-loop training data: a row of every table."""

    source: str = Field(
        description="'none', 'passage', 'file:<SEAL-format JSON>', 'policy:<model dir or hub id>', 'prompt:<template>', 'text:<one self-edit for every passage>' (e.g. a hand-written configuration)."
    )
    label: str | None = Field(None, description="Row name in reports and plots (default: derived from source).")
    author: str | None = Field(
        None,
        description="Model that wrote a file: source's self-edits (marks 'own data' cells of the compatibility matrix). Default for policy: the checkpoint, for prompt: the recipe's model; set it to the starting model for a policy trained from it (seal train rounds).",
    )
    round: int | None = Field(
        None, ge=0, description="ReST-EM rounds behind a policy: source (0: the base policy); such rows are drawn per round in rounds.png."
    )
    expected: dict[Literal["single", "multi", "continual"], Expected] = Field(
        default_factory=dict,
        description="Reference figure per protocol (e.g. the paper's), printed beside the measured one: a fraction (macro accuracy) or {accuracy, statistic, note}.",
    )
    learner: str | None = Field(
        None,
        description="The model that learns this row's data, answers, and gives its un-adapted baseline: None (each student, as before), 'self' (a policy: source's own checkpoint: a round's self-edits learned by that round's policy, as the reference's SEAL rows, TTT_server.sh:13), or a model directory / hub id (e.g. the round's checkpoint for a file: of its self-edits). Such a row is trained once and shown under every student, its gain measured against the learner's own baseline.",
    )
    protocols: list[Literal["single", "multi", "continual"]] | None = Field(
        None,
        description="The protocols this row runs in (None: every enabled one); a row left out of a protocol is absent from its table (e.g. the continual protocol for the SEAL policy only, as the reference ran it: 64 sequences x 8 merged steps per row).",
    )
    inner: dict[Literal["single", "multi", "continual"], dict[str, Any]] = Field(
        default_factory=dict,
        description="Per protocol, overrides of that protocol's inner settings for this source only, applied after the protocol's (e.g. the reference's passage-only CPT at lr 1e-4: {multi: {lr: 1.0e-4}}).",
    )

    @field_validator("source")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        kind, arg = parse_source(v)  # RecipeError is a ValueError: pydantic reports it under the key
        if kind == "prompt":
            check_template(arg)
        return v

    @field_validator("inner")
    @classmethod
    def _valid_inner(cls, v: dict) -> dict:
        for overrides in v.values():
            merged_inner(InnerLoopConfig(), overrides)  # unknown or mistyped keys fail at load time
        return v

    @model_validator(mode="after")
    def _self_is_a_policy(self) -> SourceSpec:
        if self.learner == "self" and not self.source.startswith("policy:"):
            raise ValueError(f"learner 'self' needs a policy: source (its checkpoint learns); {self.source!r} has none: give a model path")
        return self

    def runs_in(self, protocol: str) -> bool:
        """Whether this row runs in ``protocol`` (``protocols``)."""
        return self.protocols is None or protocol in self.protocols

    def learner_path(self) -> str | None:
        """The model that learns this row (None: each student)."""
        return parse_source(self.source)[1] if self.learner == "self" else self.learner

    @property
    def name(self) -> str:
        """The row label (explicit or derived)."""
        return self.label or default_label(self.source)


class StudentSpec(Section):
    """A model trained on every source's data (a column of the compatibility matrix).

    dtype, device and attention settings are the recipe's ``model`` section's.
    """

    name_or_path: str = Field(description="Hub id or local model directory.")
    label: str | None = Field(None, description="Column name (default: the path's last part).")
    build_tiny: TinyModelConfig | None = Field(None, description="Build a tiny local model there first if missing (CPU recipes).")

    @property
    def name(self) -> str:
        return self.label or self.name_or_path.rstrip("/").rsplit("/", 1)[-1]


class ProtocolConfig(Section):
    """Knobs shared by the three protocols."""

    n_passages: int | None = Field(
        None, ge=1, description="First n evaluation passages (None: every passage the data section loads)."
    )
    n_self_edits: int = Field(1, ge=1, description="Self-edits per passage used as training data (file: the first n).")
    repetitions: int | None = Field(
        None,
        ge=1,
        description="Independent repetitions (adapter seeds) averaged per question. None: inner.eval_times for 'single', 1 otherwise.",
    )
    split_newlines: bool | None = Field(None, description="Override self_edit.split_newlines for this protocol.")
    inner: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the recipe's inner section for this protocol (e.g. {epochs: 3, batch_size: 4})."
    )

    @field_validator("inner")
    @classmethod
    def _valid_inner(cls, v: dict) -> dict:
        merged_inner(InnerLoopConfig(), v)  # unknown or mistyped keys fail at load time
        return v


class SingleConfig(ProtocolConfig):
    """Protocol 1 (paper Table 2): a fresh adapter per (passage, self-edit, repetition); that passage's questions."""


class MultiConfig(ProtocolConfig):
    """Protocol 2 (paper Section 4.2, 'continued pretraining'): one adapter on the self-edits of n passages at once.

    Paper: n = 200, 5 self-edits per passage, epochs 3, batch size 4, lr 1e-3, split_newlines off.
    """

    update: Literal["lora", "full"] = Field(
        "lora",
        description="'lora': one LoRA adapter (the inner section's; paper v1's CPT). 'full': every weight of a copy of the learner trains (seal.inner_loop.train_full: the same data, order, loss, lr schedule, accumulation and clipping; the paper v2's CPT, the authors' issue 13). One process, about 4x the model's bytes in memory (weights, gradients, AdamW moments: ~60 GB for Qwen2.5-7B in bf16, AdamW moments in bf16 too); no ZeRO-3 sharding yet.",
    )


class ContinualConfig(ProtocolConfig):
    """Protocol 3 (paper Section 5, catastrophic forgetting): self-edits applied one passage after another.

    Each step trains LoRA on one passage's texts and merges it into the model; after each
    step every passage seen so far is scored.
    """

    n_passages: int | None = Field(8, ge=1, description="Sequence length (the paper uses 8).")
    order: Literal["first", "random"] = Field(
        "first",
        description="'first': one sequence, the first n_passages evaluation passages (as before); 'random': runs x sequences sequences, each n_passages passages drawn without replacement from the pool, seeded by (bench seed, run, sequence) and shared by every source (the reference: continual_self_edits.py:417-419).",
    )
    pool: int | None = Field(None, ge=1, description="order random: draw from the first `pool` evaluation passages (None: every passage the data section loads).")
    runs: int = Field(1, ge=1, description="order random: independent runs (the reference: 8 jobs, continual_self_edits.sh INDEX 0-7).")
    sequences: int = Field(1, ge=1, description="order random: sequences per run (the reference: N_SEQUENCES=8); the matrix is the mean over all runs x sequences.")
    writer: Literal["fixed", "current"] = Field(
        "fixed",
        description="'fixed': every step learns the source's self-edits produced up front (as before); 'current': policy: and prompt: sources' self-edits are written at every step by the model being updated (the merged model so far), n_self_edits fresh samples with the source's template (the reference, continual_self_edits.py:244-263; pair with learner: self so that the policy writes and learns). Other kinds keep their fixed texts.",
    )

    @model_validator(mode="after")
    def _one_first_sequence(self) -> ContinualConfig:
        if self.order == "first" and (self.runs > 1 or self.sequences > 1 or self.pool is not None):
            raise ValueError("runs, sequences and pool need order: random (order: first is the one sequence of the first n_passages passages; use repetitions for adapter seeds)")
        if self.pool is not None and self.n_passages is not None and self.pool < self.n_passages:
            raise ValueError(f"pool {self.pool} < n_passages {self.n_passages}: a sequence draws n_passages distinct passages from the pool")
        return self

    def n_sequences(self) -> int:
        """Sequences in all (runs x sequences)."""
        return self.runs * self.sequences


class ProtocolsConfig(Section):
    """Which protocols run (a missing or null entry does not run)."""

    single: SingleConfig | None = Field(default_factory=SingleConfig)
    multi: MultiConfig | None = None
    continual: ContinualConfig | None = None

    def enabled(self) -> list[tuple[str, ProtocolConfig]]:
        """(name, config) of the protocols that run, in the fixed order single, multi, continual."""
        return [(n, getattr(self, n)) for n in PROTOCOLS if getattr(self, n) is not None]


class BenchConfig(Section):
    """`seal bench`: every source x student x protocol, with paired bootstrap CIs."""

    sources: list[SourceSpec] = Field(min_length=1, description="Rows: strings ('none', 'file:...') or {source, label, author, expected}.")
    students: list[StudentSpec] | None = Field(
        None, description="Models trained on the data (strings or {name_or_path, label, build_tiny}). None: [model.name_or_path]."
    )
    protocols: ProtocolsConfig = Field(default_factory=ProtocolsConfig)
    bootstrap_samples: int = Field(10000, ge=100, description="Bootstrap resamples per interval.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Two-sided confidence level of every interval.")
    multiple_comparisons: Literal["none", "bonferroni"] = Field(
        "none",
        description="'bonferroni' widens each pairwise interval to confidence 1-(1-confidence)/m for m comparisons per table.",
    )
    seed: int | None = Field(None, description="Seed of sampling, adapters and bootstrap (None: the recipe's seed).")
    train_run: str | None = Field(
        None,
        description="A `seal train` run directory: one 'policy round N' source is added per finished round (after the listed sources), and rounds.png plots accuracy per round.",
    )
    train_run_learner: Literal["student", "self"] = Field(
        "student",
        description="Who learns the rows bench.train_run adds: 'student' (each student, as before) or 'self' (each round's policy learns its own self-edits and is its own baseline: the reference's SEAL rows; see the sources' `learner`).",
    )

    @field_validator("sources", mode="before")
    @classmethod
    def _strings_to_sources(cls, v):
        return [{"source": s} if isinstance(s, str) else s for s in v] if isinstance(v, list) else v

    @field_validator("students", mode="before")
    @classmethod
    def _strings_to_students(cls, v):
        return [{"name_or_path": s} if isinstance(s, str) else s for s in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _unique_names(self) -> BenchConfig:
        for what, names in (("source", [s.name for s in self.sources]), ("student", [s.name for s in self.students or []])):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"duplicate {what} label(s) {dup}: give each entry a distinct 'label'")
        if not self.protocols.enabled():
            raise ValueError("no protocol enabled: set at least one of protocols.single/multi/continual")
        return self


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` with no further slashes: a Hugging Face hub id rather than a local path."""
    return bool(_HUB_ID.match(name)) and not name.startswith(".")
