"""A helper process that takes chunks of inner-loop evaluations off the main process.

``seal microworld demo`` on two cores runs a second process beside the rounds
(``seal.microworld.demo.side_bench``); when it has nothing of its own to do, it helps. The
main process *offers* the chunks of one :meth:`seal.scoring.Scorer.score` call (the rounds'
evaluations, the final bench's): it writes them to a folder of the exchange directory
(``offer.pkl``: the chunks and what scores them, the recipe and the learner's path). Both
processes then take the chunks in order, a chunk claimed by creating its ``claim-<i>`` file
exclusively; the helper loads the learner once, scores each chunk it claimed and writes its
records to ``done-<i>.pkl``. The main process journals every chunk's records in chunk order
(its own and the helper's), so the journal reads as one process's; its own chunk's records
wait, in memory, for a helper's chunk before them (a crash then loses at most those).

Results are the one-process run's: the chunks are the Scorer's own (cut by
``inner.batch_adapters`` whoever computes them), every evaluation's seed derives from its
identity, and a chunk is computed whole by a process that loaded the same learner with the
same settings (``model``: device, dtype, threads). Only the timing fields differ.

The main process never depends on the helper: it waits for a chunk the helper claimed only
while the helper lives, and for at most :data:`PATIENCE` times its own mean chunk time (a
helper on cores other jobs hold falls behind); then it computes the chunk itself (the records
are the same; the helper's late file is ignored). Offers with an LLM judge
(``qa.grader: judge``) are not made: the helper holds no judge client.

Pickle carries the offers and records between the two processes of one user; the exchange
directory is the run's own.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from seal.config import ModelConfig, Recipe
    from seal.scoring import Evaluation, EvaluationRecord, Scorer

#: The main process computes a chunk the helper claimed once the helper has held it this many
#: times the main process's mean seconds per chunk (or :data:`FIRST_PATIENCE_S` before it has
#: timed one).
PATIENCE = 2.0
FIRST_PATIENCE_S = 120.0

#: Seconds between two looks at the exchange directory (the helper for offers, the main
#: process for a claimed chunk's records).
POLL_S = 0.1


@dataclass
class Offer:
    """What the helper needs to score an offer's chunks as the main process does.

    Attributes:
        recipe: the recipe whose ``inner``, ``qa`` and task (``seal.tasks.make_task``) score them.
        model: the model settings the learner was loaded with (``load_policy``'s ``cfg``).
        learner: the learner's name or path (the model each chunk's adapters are trained on).
        retry_in_halves: the main process's Scorer setting (a failed chunk retried in halves).
        chunks: the Scorer's chunks, in order (each at most ``inner.batch_adapters`` evaluations).
    """

    recipe: Recipe
    model: ModelConfig
    learner: str
    retry_in_halves: bool
    chunks: list[list[Evaluation]]


@dataclass
class Helper:
    """The main process's side of a helper process: where to offer chunks, and whether it lives.

    Attributes:
        root: the exchange directory (the helper's :func:`serve` watches the same one).
        alive: whether the helper process still runs (``seal microworld demo``: its ``Popen.poll()``).
    """

    root: Path
    alive: Callable[[], bool] = lambda: True

    def share(self, recipe: Recipe, model: ModelConfig, learner: str | Path) -> SharedChunks | None:
        """The chunks of a Scorer whose learner was loaded by ``load_policy(model, learner)``,
        to be shared with the helper; None when they cannot be (``qa.grader: judge``)."""
        if recipe.qa.grader == "judge":
            return None
        return SharedChunks(self, recipe, model, str(learner))


@dataclass
class SharedChunks:
    """A Scorer's chunks offered to the helper (:meth:`Helper.share`; ``Scorer.share``).

    Attributes:
        helped: evaluations the helper computed in the last :meth:`score` (for the timings).
    """

    helper: Helper
    recipe: Recipe
    model: ModelConfig
    learner: str
    helped: int = 0

    def score(
        self, scorer: Scorer, chunks: list[list[Evaluation]], finished: Mapping[Hashable, EvaluationRecord]
    ) -> dict[Hashable, EvaluationRecord]:
        """Every chunk's records by ``key.id``, but those in ``finished``: the chunks offered,
        taken in turn by this process and the helper, and journaled (``scorer.journal``) in
        chunk order; ``scorer.progress`` counts the helper's chunks too.

        Returns ``{key.id: record}`` of the evaluations not in ``finished`` (:attr:`helped`:
        how many of them the helper computed).

        Raises:
            whatever ``scorer.score_chunk`` raises in this process (the offer is withdrawn).
        """
        quiet = replace(scorer, journal=None)  # records journaled here, in chunk order
        job = _post(self.helper.root, Offer(self.recipe, self.model, self.learner, scorer.retry_in_halves, chunks))
        results: dict[int, list[EvaluationRecord]] = {}
        mine: list[float] = []  # seconds per chunk this process computed
        journaled, self.helped = 0, 0

        def compute(i: int) -> None:
            t0 = time.perf_counter()
            results[i] = quiet.score_chunk(chunks[i], finished)
            mine.append(time.perf_counter() - t0)

        def take_helpers() -> None:  # the helper's finished chunks, read once
            for i in range(len(chunks)):
                if i not in results and (records := _read(job / f"done-{i}.pkl")) is not None:
                    results[i] = records
                    pending = sum(e.key.id not in finished for e in chunks[i])
                    self.helped += pending
                    if scorer.progress:
                        scorer.progress(pending)

        def flush() -> None:  # journal the chunks ready, in order
            nonlocal journaled
            while journaled in results:
                for evaluation, record in zip(chunks[journaled], results[journaled], strict=True):
                    if scorer.journal and evaluation.key.id not in finished:
                        scorer.journal(record)
                journaled += 1

        try:
            for i in range(len(chunks)):
                if _claim(job / f"claim-{i}"):
                    compute(i)
                take_helpers()
                flush()
            for i in range(len(chunks)):  # the helper's claims: wait while it is worth it, else compute
                patience = PATIENCE * sum(mine) / len(mine) if mine else FIRST_PATIENCE_S
                while i not in results:
                    take_helpers()
                    if i in results:
                        break
                    held = time.time() - _mtime(job / f"claim-{i}")
                    if not self.helper.alive() or held > patience:
                        compute(i)
                    else:
                        time.sleep(POLL_S)
                flush()
        finally:
            _withdraw(job)
        return {e.key.id: record for i, chunk in enumerate(chunks) for e, record in zip(chunk, results[i], strict=True) if e.key.id not in finished}


def _post(root: Path, offer: Offer) -> Path:
    """Write ``offer`` into a new folder of ``root`` (complete before its name appears); returns the folder."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".offer.", dir=root))
    (tmp / "offer.pkl").write_bytes(pickle.dumps(offer, protocol=pickle.HIGHEST_PROTOCOL))
    job = root / f"offer-{time.time_ns()}-{os.getpid()}"
    tmp.rename(job)
    return job


def _withdraw(job: Path) -> None:
    """Remove an offer: renamed first (atomic), so that the helper can neither claim nor write
    anything more in it, then deleted."""
    gone = job.with_name(f".withdrawn-{job.name}")
    try:
        job.rename(gone)
    except FileNotFoundError:
        return
    shutil.rmtree(gone, ignore_errors=True)


def _claim(path: Path) -> bool:
    """Claim a chunk: True for the one process that creates ``path`` (it holds its pid)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def _read(path: Path) -> Any:
    """The pickled object at ``path``, or None while it is not there (written whole by rename)."""
    try:
        return pickle.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def _write(path: Path, obj: Any) -> None:
    """Pickle ``obj`` to ``path`` by rename; nothing when the folder is gone (the offer was withdrawn)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except FileNotFoundError:
        return
    with os.fdopen(fd, "wb") as f:
        f.write(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    try:
        os.rename(tmp, path)
    except FileNotFoundError:
        pass


def open_offers(root: Path) -> list[Path]:
    """The offers under ``root``, oldest first (folders named ``offer-<ns>-<pid>``)."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("offer-*") if (p / "offer.pkl").is_file()), key=lambda p: int(p.name.split("-")[1]))


def serve(root: Path, models: dict | None = None) -> int:
    """The helper's side: take chunks of the oldest open offer under ``root`` until none is
    left unclaimed (or the offer is withdrawn), writing each one's records; returns how many
    chunks it computed (0: no open offer).

    ``models``: a cache ``{(model settings, learner): (model, tokenizer)}`` kept between calls
    (the same learner serves every round of a ``learner: base`` run); at most one is kept.
    """
    from seal.models import load_policy
    from seal.scoring import Scorer
    from seal.tasks.registry import make_task

    models = {} if models is None else models
    for job in open_offers(root):
        offer: Offer | None = _read(job / "offer.pkl")
        if offer is None:  # withdrawn meanwhile
            continue
        key = (offer.model.model_dump_json(), offer.learner)
        if key not in models:
            models.clear()
            models[key] = load_policy(offer.model, offer.learner)
        model, tokenizer = models[key]
        recipe = offer.recipe
        scorer = Scorer(model, tokenizer, recipe.inner, recipe.qa, make_task(recipe), retry_in_halves=offer.retry_in_halves)
        done = 0
        for i, chunk in enumerate(offer.chunks):
            if not job.is_dir():
                break
            try:
                claimed = _claim(job / f"claim-{i}")
            except FileNotFoundError:  # withdrawn
                break
            if claimed:
                _write(job / f"done-{i}.pkl", scorer.score_chunk(chunk))
                done += 1
        return done
    return 0


def serve_while(root: Path, waiting: Callable[[], bool], models: dict | None = None) -> None:
    """:func:`serve` offers under ``root`` while ``waiting()`` holds, looking every :data:`POLL_S` seconds."""
    models = {} if models is None else models
    while waiting():
        if not serve(root, models):
            time.sleep(POLL_S)
