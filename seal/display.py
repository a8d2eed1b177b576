"""Console output shared by ``seal train``, ``seal evaluate`` and ``seal bench``: the progress
of every long stage (a live bar on a terminal, :class:`LineProgress`'s lines in a batch log),
tables that stay readable in an 80-column log, the libraries' own output kept off the console
(:func:`library_output_to`), and the one formatter of fractions as percentages."""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(console: Console | None = None) -> Progress:
    """The progress display used by every long stage: on a terminal a live bar (description,
    bar, n/total, elapsed, left); otherwise (stdout in a file) :class:`LineProgress`'s lines."""
    console = console or Console()
    if not console.is_terminal:
        return LineProgress(console)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def percent(x: float | None, points: bool = False) -> str:
    """A fraction as a percentage with one decimal: ``0.123`` -> ``"12.3 %"``; ``"n/a"`` for None.

    ``points=True`` formats a difference of fractions (a reward, a gain) as signed percentage
    points: ``0.05`` -> ``"+5.0 pp"``.
    """
    if x is None:
        return "n/a"
    return f"{100 * x:+.1f} pp" if points else f"{100 * x:.1f} %"


# ----------------------------------------------------------------------------- batch logs

PROGRESS_EVERY_FRACTION = 0.1
"""A batch log gets a stage's line every time this fraction of its units is done..."""
PROGRESS_EVERY_SECONDS = 60.0
"""...or when this many seconds have passed since its last line, whichever comes first."""


def clock(seconds: float | None) -> str:
    """Seconds as ``H:MM:SS`` (``"?"`` for None)."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class _Mark:
    """Where a task's lines stand: when it began in this launch (and with how many units
    done), and its last line (time, units done)."""

    start: float
    start_done: float
    last: float
    last_done: float


class LineProgress(Progress):
    """The progress of a console that is no terminal (``sbatch --output``, ``> log.txt``): plain
    lines instead of a live bar, which such a console prints only once, when it closes.

    Each task (a stage of a round: ``round 2: inner-loop evaluations``) prints a line when it
    is added, whenever ``every_fraction`` of its total more is done or ``every_seconds`` have
    passed since its last line (a heartbeat thread checks every second), and when it completes::

        round 0: inner-loop evaluations  12/40 (30 %)  0.41/s  elapsed 0:00:29  ETA 0:01:08

    The rate and ETA count the units done in this launch (a resumed stage starts from what
    was journaled). Same API as ``rich.progress.Progress`` (``add_task``, ``advance``, ``update``).
    """

    def __init__(self, console: Console, every_fraction: float = PROGRESS_EVERY_FRACTION, every_seconds: float = PROGRESS_EVERY_SECONDS):
        super().__init__(console=console, disable=True)  # tasks are tracked, nothing is rendered live
        self.every_fraction = every_fraction
        self.every_seconds = every_seconds
        self._marks: dict[TaskID, _Mark] = {}

    def start(self) -> None:
        """Start the heartbeat: a thread that calls :meth:`tick` every second, so that a stage
        whose units each take minutes still prints a line every ``every_seconds``."""
        super().start()
        self._stopped = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="seal-progress", daemon=True)
        self._heartbeat.start()

    def stop(self) -> None:
        if getattr(self, "_heartbeat", None) is not None:
            self._stopped.set()
            self._heartbeat.join()
            self._heartbeat = None
        super().stop()

    def _beat(self) -> None:
        while not self._stopped.wait(1.0):
            try:
                self.tick(time.monotonic())
            except Exception:  # a closed console at shutdown: progress lines are not worth a traceback
                return

    def tick(self, now: float) -> None:
        """A line for every unfinished task whose last line is ``every_seconds`` old at ``now``."""
        with self._lock:
            due = [t for t, m in self._marks.items() if now - m.last >= self.every_seconds and not self._done(t)]
        for task_id in due:
            self._line(task_id, now)

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: int = 0, visible: bool = True, **fields) -> TaskID:
        task_id = super().add_task(description, start=start, total=total, completed=completed, visible=visible, **fields)
        now = time.monotonic()
        self._marks[task_id] = _Mark(now, completed, now, completed)
        self._line(task_id, now)
        return task_id

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_line(task_id)

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._maybe_line(task_id)

    def _done(self, task_id: TaskID) -> bool:
        task = self._tasks[task_id]
        return task.total is not None and task.completed >= task.total

    def _maybe_line(self, task_id: TaskID) -> None:
        task, mark, now = self._tasks[task_id], self._marks[task_id], time.monotonic()
        if task.completed == mark.last_done:
            return
        total = task.total or 0
        step = max(1.0, math.ceil(total * self.every_fraction))
        if task.completed >= total or task.completed - mark.last_done >= step or now - mark.last >= self.every_seconds:
            self._line(task_id, now)

    def _line(self, task_id: TaskID, now: float) -> None:
        with self._lock:  # the heartbeat thread and the stage's own thread
            self._write_line(task_id, now)

    def _write_line(self, task_id: TaskID, now: float) -> None:
        task, mark = self._tasks[task_id], self._marks[task_id]
        mark.last, mark.last_done = now, task.completed
        done, total = task.completed, task.total
        elapsed = now - mark.start
        parts = [f"{task.description}  {done:g}/{total:g}" if total else f"{task.description}  {done:g}"]
        if total:
            parts[0] += f" ({100 * done / total:.0f} %)"
        rate = (done - mark.start_done) / elapsed if elapsed > 0 and done > mark.start_done else None
        if rate is not None:
            parts.append(f"{rate:.2f}/s" if rate >= 0.1 else f"{1 / rate:.0f} s each")
        parts.append(f"elapsed {clock(elapsed)}")
        if total and done < total:
            parts.append(f"ETA {clock((total - done) / rate) if rate else '?'}")
        self.console.print("  ".join(parts), highlight=False, markup=False, soft_wrap=True)


def print_table(console: Console, table) -> None:
    """Print a ``rich.table.Table``; on a console that is no terminal (a batch log) as plain
    aligned text (no box) at the table's natural width, so that no cell wraps (a log is read
    with ``less -S`` or an editor, never reflowed): rich would otherwise squeeze it into the
    console's 80 columns, a few characters per line (``parap…``, ``r(cov…``)."""
    if console.is_terminal:
        console.print(table)
        return
    from rich import box
    from rich.measure import Measurement

    table.box, table.title_justify, table.caption_justify = box.SIMPLE_HEAD, "left", "left"  # plain aligned text
    width = Measurement.get(console, console.options.update(width=10_000), table).maximum
    before = console.width
    console.width = max(width, before)  # Console.print(width=) cannot exceed the console's width
    try:
        console.print(table, soft_wrap=False)
    finally:
        console.width = before


#: Loggers of the libraries seal drives, whose output (deprecation notes, load reports,
#: TRL's per-step dicts) goes to the run's log file rather than the console.
LIBRARY_LOGGERS = ("transformers", "trl", "peft", "datasets", "accelerate", "DeepSpeed", "torch", "seal.trainer")


def library_warning(category: type[Warning], filename: str) -> bool:
    """A warning that goes to the run's log file: a deprecation (``DeprecationWarning``,
    ``PendingDeprecationWarning``, ``FutureWarning``) or one raised from an installed
    package's file (``site-packages``, ``dist-packages``)."""
    return issubclass(category, DeprecationWarning | PendingDeprecationWarning | FutureWarning) or any(
        part in filename for part in ("site-packages", "dist-packages")
    )


class library_output_to:
    """Context manager: the libraries' output goes to ``log_file`` (appended), not the console.

    Inside it, the loggers of :data:`LIBRARY_LOGGERS` write only to ``log_file`` (TRL's
    per-step log dicts through the ``seal.trainer`` logger, see :func:`trainer_progress`), so
    do the libraries' Python warnings (:func:`library_warning`: deprecations, and any warning
    raised from an installed package's file; seal's own warnings stay on the console, and
    ``warnings.catch_warnings`` / ``pytest.warns`` still record them), and the progress bars of
    transformers ('Loading weights', 'Writing model shards') and ``datasets`` (map bars) are
    off: seal's own progress lines replace them. Everything is restored on exit.
    """

    def __init__(self, log_file):
        self.log_file = log_file

    def __enter__(self):
        import datasets.utils as ds_logging
        import transformers.utils.logging as hf_logging

        self.handler = logging.FileHandler(self.log_file, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.saved = []
        for name in LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            self.saved.append((logger, logger.handlers[:], logger.propagate, logger.level))
            logger.handlers = [self.handler]
            logger.propagate = False
            if name == "seal.trainer":
                logger.setLevel(logging.INFO)
        self.showwarning = warnings.showwarning
        warnings.showwarning = self._show
        self.bars = (hf_logging.is_progress_bar_enabled(), ds_logging.is_progress_bar_enabled())
        hf_logging.disable_progress_bar()
        ds_logging.disable_progress_bar()
        return self

    def _show(self, message, category, filename, lineno, file=None, line=None):
        if library_warning(category, filename):
            text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
            self.handler.emit(logging.LogRecord("py.warnings", logging.WARNING, filename, lineno, text, None, None))
        else:
            self.showwarning(message, category, filename, lineno, file, line)

    def __exit__(self, *exc):
        import datasets.utils as ds_logging
        import transformers.utils.logging as hf_logging

        if warnings.showwarning == self._show:
            warnings.showwarning = self.showwarning
        for logger, handlers, propagate, level in self.saved:
            logger.handlers, logger.propagate, logger.level = handlers, propagate, level
        if self.bars[0]:
            hf_logging.enable_progress_bar()
        if self.bars[1]:
            ds_logging.enable_progress_bar()
        self.handler.close()
        return False


def trainer_progress(bar: Progress, description: str):
    """A ``transformers.TrainerCallback`` for TRL's trainers: a progress task over the
    optimizer steps (``description``, total ``max_steps``), and each of the trainer's log dicts
    (loss, grad norm, lr...) to the ``seal.trainer`` logger (the run's log file under
    :class:`library_output_to`) instead of the console; use it in place of ``PrinterCallback``."""
    import json

    from transformers import TrainerCallback

    log = logging.getLogger("seal.trainer")

    class Steps(TrainerCallback):
        task = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.task = bar.add_task(description, total=state.max_steps, completed=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.task is not None:
                bar.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                log.info("%s step %d: %s", description, state.global_step, json.dumps(logs, default=str))

    return Steps()
