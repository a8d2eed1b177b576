"""Sources of inner-loop training data: checked up front, then turned into self-edits once.

A source's self-edits are produced once for the largest passage set and self-edit count any
protocol asks for, and every protocol and student takes a prefix of them, so every cell of
every table is trained on the same data. Turning a source string into self-edits is
:func:`seal.evaluate.source_self_edits`; this module adds the bench's bookkeeping (who wrote
the data, which checks can run before anything is written, saving sampled self-edits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seal.bench.config import SourceSpec, StudentSpec, looks_like_hub_id
from seal.config import Recipe, RecipeError, parse_source
from seal.data import Passage
from seal.evaluate import source_self_edits
from seal.prompts import check_template
from seal.rundir import RunDir, read_json_or_none, read_jsonl, resolve_policy
from seal.seeding import derive_seed

# Kinds whose self-edits are read or built without a model (cheap: resolved during the checks).
OFFLINE_KINDS = ("none", "passage", "file", "text")


@dataclass
class Source:
    """A source resolved for this bench run.

    Attributes:
        spec: the recipe entry (label, expected figures).
        kind, arg: :func:`seal.config.parse_source` of ``spec.source``.
        author: the model that wrote the self-edits (None for none/passage, and for a file:
            source without an ``author``); decides the "own data" cells of the compatibility matrix.
        edits: per passage, its self-edits (``None`` = passage only, ``[]`` = no training);
            filled by :func:`check_sources` (offline kinds) or :func:`sample_source`.
    """

    spec: SourceSpec
    kind: str
    arg: str | None
    author: str | None
    edits: list[list[str | None]] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def learner(self) -> str | None:
        """The model that learns this row's data (None: each student; ``SourceSpec.learner``)."""
        return self.spec.learner_path()


def same_model(a: str | None, b: str | None) -> bool:
    """Whether two model names/paths denote the same model (local paths compared resolved)."""
    if a is None or b is None:
        return False
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.rstrip("/") == b.rstrip("/")


def check_model_name(name: str, what: str) -> None:
    """A local model directory must exist; a hub id (``org/name``) is left to the loader.

    Raises:
        RecipeError: naming ``what`` (e.g. "source 'policy:runs/x'") and the missing path.
    """
    if Path(name).exists() or looks_like_hub_id(name):
        return
    raise RecipeError(f"{what}: model directory not found: {name}")


def check_sources(
    specs: list[SourceSpec], recipe: Recipe, passages: list[Passage], n_self_edits: int, students: list[StudentSpec]
) -> list[Source]:
    """Resolve every source as far as possible without a model; fail on bad input before any writing.

    file: sources are read and matched to ``passages`` here (their self-edits are filled in);
    policy: checkpoints must exist locally or look like hub ids; prompt: templates must exist.

    Raises:
        RecipeError: bad source string or missing policy checkpoint.
        DataError: a file: source lacks a passage of the evaluation set (the message names the
            file, the passage index, title and id) or has fewer than ``n_self_edits`` self-edits for one.
        PromptError: unknown template.
    """
    out = []
    for spec in specs:
        kind, arg = parse_source(spec.source)
        # An explicit author wins: a policy trained from the student (a SEAL round) writes its own data.
        author = spec.author or {"policy": arg, "prompt": recipe.model.name_or_path}.get(kind)
        src = Source(spec, kind, arg, author)
        if kind in OFFLINE_KINDS:
            src.edits = source_self_edits(spec.source, passages, recipe, n_self_edits, seed=0)
        elif kind == "prompt":
            check_template(arg)
        else:
            check_model_name(arg, f"source {spec.source!r}")
        if spec.learner_path() is not None:
            check_model_name(spec.learner_path(), f"source {spec.source!r}: learner")
        out.append(src)
    for st in students:
        if st.build_tiny is None:
            check_model_name(st.name_or_path, f"student {st.name!r}")
    return out


def sample_source(src: Source, recipe: Recipe, passages: list[Passage], n_self_edits: int, seed: int, base=None) -> None:
    """Fill ``src.edits`` of a policy:/prompt: source by sampling now (``recipe.self_edit`` settings).

    ``base``: an already loaded ``(model, tokenizer)`` of the recipe's model, reused by prompt: sources.
    The sampling seed depends on the bench seed and the source string only.
    """
    src.edits = source_self_edits(src.spec.source, passages, recipe, n_self_edits, derive_seed(seed, "bench-source"), base=base)


def seal_format(passages: list[Passage], edits: list[list[str | None]], prompt_note: str) -> list[dict]:
    """Self-edits as a SEAL-format file (reusable later as a ``file:`` source)."""
    return [
        {
            "title": p.title,
            "context": p.context,
            "questions": [{"question": q.question, "answer": q.answer} for q in p.questions],
            "completions": [c for c in e if c is not None],
            "prompt": prompt_note,
        }
        for p, e in zip(passages, edits, strict=True)
    ]


def train_run_sources(run_dir: str | Path, learner: str = "student") -> tuple[list[SourceSpec], list[dict]]:
    """One ``policy:`` source per finished round of a ``seal train`` run, and its metrics rows.

    Round ``r``'s policy (after ``r + 1`` ReST-EM updates) is labelled ``policy round {r + 1}``,
    with ``round = r + 1``; the base policy is not added (list it in the recipe with ``round: 0``).
    ``learner`` (``bench.train_run_learner``): 'student' (each student learns the rows) or
    'self' (each round's policy learns its own self-edits, ``SourceSpec.learner``).
    Their author is the run's initial model (``model.name_or_path`` in its ``config.yaml``): a
    policy trained by SEAL writes *self*-generated data for the model it started from.

    Raises:
        RecipeError: the directory is not a train run, has no finished round, or is a GRPO /
            RLOO run (``rl.algorithm``), whose one policy is listed as a ``policy:`` source instead.
    """

    run = RunDir(run_dir)
    algorithm = (run.recorded_config().get("rl") or {}).get("algorithm", "restem") if run.exists() else "restem"
    if algorithm != "restem":
        final = read_json_or_none(run.path / "final.json")  # grpo/policy or grpo/adapter (rl.save)
        policy = resolve_policy(run, final["policy"]) if final else run.path / "grpo" / "policy"
        raise RecipeError(
            f"bench.train_run: {run.path} is an rl.algorithm {algorithm} run (no rounds); list its final policy as a source instead: "
            f"policy:{policy}"
        )
    metrics = read_jsonl(run.path / "metrics.jsonl")
    if not metrics:
        raise RecipeError(f"bench.train_run: {run.path} has no finished round (no metrics.jsonl); run seal train first")
    initial = run.recorded_config()["model"]["name_or_path"]
    specs = [
        SourceSpec(
            source=f"policy:{resolve_policy(run, m['next_policy'])}", label=f"policy round {m['round'] + 1}", author=initial, round=m["round"] + 1,
            learner="self" if learner == "self" else None,
        )
        for m in sorted(metrics, key=lambda m: m["round"])
    ]
    return specs, metrics
