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

#: The answer marker of ``arc.text_format: reference``: the assistant header of the Llama-3
#: chat layout (``seal.arc.tasks.reference_query_text``), after which the output grid begins.
REFERENCE_ANSWER_MARKER = "<|start_header_id|>assistant<|end_header_id|>\n\n"

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

    text_format: Literal["plain", "reference"] = Field(
        "plain",
        description="Text of test-time-training texts and queries: 'plain' (instruction, 'Input:'/'Output:' grids as rows of digits, answer after 'Test output:') or 'reference' (the reference's: Llama-3 chat layout, system prompt with numpy-style grids 'in -> out#', the test input as the user turn, the output grid + '#' as the assistant turn; self-edit.py:257-265, GPTTextMessageRepresenterV2; the self-edit prompt's demonstrations as its get_prompt lays them out).",
    )
    missing_keys: Literal["inner-defaults", "reference", "fail"] = Field(
        "inner-defaults",
        description="A configuration that leaves out a family switch of arc.families or a declared optimisation key: 'inner-defaults' (a family left out is off, a key takes the recipe's inner value), 'reference' (0 epochs: an untrained adapter, self-edit.py:509-546) or 'fail' (refused with the reason).",
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        description="Step guard: a configuration whose epochs x texts // inner.batch_size exceeds this trains 0 epochs (an untrained adapter), the reference's 375 (self-edit.py:552-555). None: no guard.",
    )
    invalid: Literal["fail", "resample"] = Field(
        "fail",
        description="A sampled configuration that does not parse or leaves the declared space: 'fail' (its evaluation fails with the reason) or 'resample' (drawn again until the task has self_edit.k valid ones, at most resample_rounds more draws of k; the reference redraws until k parse, self-edit.py:458-464).",
    )
    resample_rounds: int = Field(
        4, ge=1, description="With invalid: resample, at most this many more draws of k self-edits per task; slots still invalid then fail."
    )

    @property
    def answer_marker(self) -> str:
        """The line after which a query's answer begins in this text format (``inner.answer_marker`` must be it for ``loss_on: answer``)."""
        return REFERENCE_ANSWER_MARKER if self.text_format == "reference" else ANSWER_MARKER

    def check_recipe(self, recipe) -> None:
        """The recipe checks of task arc (``seal.tasks.sections.TaskSections`` calls it with the
        whole recipe, a ``seal.config.Recipe``).

        Raises:
            ValueError: ``data.round_train_files`` (fresh rounds take slices of the tasks file);
                ``loss_on: answer`` with another ``inner.answer_marker`` than this text format's
                (ARC's 'loss on outputs only' is the mask at the query's answer line);
                ``inference: vote`` with a grader other than ``grid`` (a vote compares grids).
        """
        if recipe.data.round_train_files is not None:
            raise ValueError("data.round_train_files is for SEAL-format passage files; with an arc section, fresh takes slices of data.train_file")
        answer = recipe.inner.loss_on == "answer" or "answer" in (recipe.self_edit.hparams.loss_on or [])
        if answer and recipe.inner.answer_marker != self.answer_marker:
            raise ValueError(
                f"with an arc section (text_format {self.text_format}) and loss_on 'answer', inner.answer_marker must be {self.answer_marker!r}"
            )
        if self.inference == "vote" and recipe.qa.grader != "grid":
            raise ValueError(f"arc.inference 'vote' grades exact grids: set qa.grader: grid (got {recipe.qa.grader!r})")

    @field_validator("leave_n")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError(f"leave_n values must be >= 1, got {v}")
        return v
