"""The recipe's ``arc`` section: few-shot ARC as the training domain (paper Section 4.1).

A recipe with an ``arc`` section trains on ARC tasks instead of passages: ``data.train_file``
/ ``data.eval_file`` name Kaggle-layout challenges files, the self-edit is a configuration
(``seal.arc.self_edit``) whose optimisation keys are checked against ``self_edit.hparams``,
and ``qa.grader: grid`` scores exact grids. Imports only :mod:`seal.sections`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from seal.sections import Section

#: Augmentation families a configuration may switch on, in the reference's order
#: (``use_basic_augmentations``, ``use_size_augmentations``, ...; ``seal.arc.augment``).
FAMILIES = ("basic", "size", "chain", "repeat")

#: The line after which an ARC query's answer (the test output grid) begins
#: (``seal.arc.tasks.query_text``). With ``loss_on: answer`` the recipe's
#: ``inner.answer_marker`` must be this (``seal.config.Recipe`` checks it).
ANSWER_MARKER = "Test output:"

Family = Literal["basic", "size", "chain", "repeat"]

#: Transforms an answer may be asked under with ``inference: vote`` (``seal.arc.voting.TRANSFORMS``).
Transform = Literal["transpose", "flip0", "flip1", "rotate90", "rotate180", "rotate270"]

#: The reference's inference transforms (``few-shot/inference/preprocess.py:45``): Transpose,
#: Flip(0), Flip(1), Rotate(90), Rotate(180).
REFERENCE_TRANSFORMS = ["transpose", "flip0", "flip1", "rotate90", "rotate180"]


class ArcSection(Section):
    """Few-shot ARC: where the solutions are, and how the test-time-training set is built
    (the reference's ``process_task``: leave-n-out tasks, the chosen augmentations, colour and
    example permutations, at most ``max_train_texts``)."""

    train_solutions: str | None = Field(
        None, description="Solutions of data.train_file (None: its name with 'challenges' -> 'solutions', the Kaggle layout)."
    )
    eval_solutions: str | None = Field(None, description="Solutions of data.eval_file (None: derived the same way).")
    task_ids: list[str] | None = Field(None, description="Train on these task ids of data.train_file, in this order (None: all; data.n_train_passages still cuts).")
    eval_task_ids: list[str] | None = Field(
        None, description="Evaluate on these task ids of data.eval_file, in this order (None: all; data.n_eval_passages still cuts)."
    )
    families: list[Family] = Field(
        default_factory=lambda: list(FAMILIES), min_length=1, description="Augmentation families a configuration may switch on."
    )
    leave_n: list[int] = Field(
        default_factory=lambda: [1, 2],
        min_length=1,
        description="Leave-n-out tasks: for n in leave_n, each demonstration in turn is the test and n-1 others are dropped (the reference's leave_n=[1, 2]).",
    )
    permute_n: int = Field(1, ge=0, description="Colour-and-order-permuted copies of each task added (reference: 1; colours only when an augmentation is on).")
    max_train_texts: int = Field(250, ge=1, description="At most this many training texts per adapter, a seeded sample beyond (reference: Nmax=250).")
    max_text_chars: int | None = Field(
        None, ge=16, description="Drop training texts longer than this (the reference drops those over 8192 tokens). None: keep all (inner.max_length still truncates)."
    )

    inference: Literal["greedy", "vote"] = Field(
        "greedy",
        description="How a test input is answered: greedy (one query, every demonstration, one answer) or vote "
        "(augmented queries, answers mapped back, a hierarchical vote gives `attempts` attempts; the reference's; seal.arc.voting).",
    )
    attempts: int = Field(2, ge=1, description="vote: attempts per test input; solved when one equals the gold grid (reference: 2).")
    transforms: list[Transform] = Field(
        default_factory=lambda: list(REFERENCE_TRANSFORMS),
        description="vote: transforms each asked once, on a random query (reference: transpose, flip0, flip1, rotate90, rotate180).",
    )
    query_leave_out: list[int] = Field(
        default_factory=lambda: [1],
        min_length=1,
        description="vote: each query drops n demonstrations, every choice of them, for n in this list (0: all kept; reference --include_n=1).",
    )
    query_permutations: int = Field(2, ge=0, description="vote: random demonstration orders added per leave-out query (reference --permute_n=2).")
    max_queries: int = Field(25, ge=1, description="vote: at most this many queries per test input (the transformed ones kept, the rest sampled).")

    @field_validator("query_leave_out")
    @classmethod
    def _not_negative(cls, v: list[int]) -> list[int]:
        if any(n < 0 for n in v):
            raise ValueError(f"query_leave_out values must be >= 0, got {v}")
        return v

    @field_validator("leave_n")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError(f"leave_n values must be >= 1, got {v}")
        return v
