"""Experiment tracking (``report_to: [tensorboard, wandb, trackio, mlflow]``) through accelerate's trackers.

One tracker run per seal run: :meth:`Tracking.start` opens accelerate's tracker classes
(``accelerate.tracking``: ``TensorBoardTracker``, ``WandBTracker``, ``TrackioTracker``,
``MLflowTracker``, the classes behind ``Accelerator(log_with=...)``) on the main process,
and records the run's identity in ``run.json``'s ``tracking`` block, so that ``seal train
--resume`` continues the same tracker run:

* TensorBoard: the same log directory, ``RUN_DIR/tracking/tensorboard/<run name>`` (a
  resumed launch adds an event file beside the first; TensorBoard reads them as one run);
  each round's SFT (TRL's losses) in ``.../sft/round_<k>``, GRPO's in ``.../grpo``;
* W&B: ``wandb.init(id=<recorded id>, resume="allow")``, files under ``RUN_DIR/tracking``;
  TRL's W&B callback finds the open run and logs into it;
* trackio: ``trackio.init(name=<run name>, resume="allow")``;
* MLflow: ``mlflow.start_run(run_id=<recorded id>)``, the store under ``RUN_DIR/tracking/mlflow``
  unless ``MLFLOW_TRACKING_URI`` is set.

What is logged (seal's own metrics; TRL logs the SFT / GRPO losses itself, through
``report_to`` in its config, :meth:`Tracking.trainer_report_to`): every ReST-EM round's
``metrics.json`` flattened (``round/mean_reward``, ``round/diagnostics/distinct_2``,
``round/timing/evaluations_s``, ``round/hparams/...``), at step = the round; every GRPO
logging step's ``metrics.jsonl`` line (``grpo/...``) at step = the optimizer step; and a
table of the round's sampled self-edits with their rewards (:meth:`Tracking.log_self_edits`).
Tracking is result-neutral: nothing it does touches a seed or a result, and a resume may
add or drop trackers.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from seal.config import RecipeError, recipe_to_dict
from seal.rundir import RunDir, read_json_or_none, write_json_atomic

TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")

#: The Python package each tracker needs (``pip install seal[tracking]`` installs them).
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}


def flatten(values: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a nested metrics dict, keys joined by ``/`` (``{"a": {"b": 1}}`` ->
    ``{"a/b": 1.0}``); booleans become 0/1; strings, lists and None are left out."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, int | float):
            out[name] = float(value)
    return out


def check_installed(names: list[str]) -> None:
    """Raise ``RecipeError`` naming the package to install for a tracker that is missing."""
    missing = [n for n in names if importlib.util.find_spec(PACKAGES[n]) is None]
    if missing:
        raise RecipeError(
            f"report_to {missing}: install {' '.join(PACKAGES[n] for n in missing)} (pip install 'seal[tracking]') or drop it from report_to"
        )


class Tracking:
    """The run's trackers (none when ``report_to`` is empty, and on ranks other than the main one).

    Attributes:
        names: the trackers in use; dir: ``RUN_DIR/tracking``; info: ``run.json``'s ``tracking``
            block (``run_name``, ``project``, ``wandb_id``, ``mlflow_run_id``, ``tensorboard_dir``).
    """

    def __init__(self, names: list[str], run: RunDir | None = None, trackers: list | None = None, info: dict | None = None, table_rows: int | None = None):
        self.names = names
        self.run = run
        self.trackers = trackers or []
        self.info = info or {}
        self.table_rows = table_rows

    @property
    def dir(self) -> Path:
        return self.run.path / "tracking"

    @property
    def tensorboard_dir(self) -> Path:
        """Where the TensorBoard events of seal's metrics are: ``RUN_DIR/tracking/tensorboard/<run name>``."""
        return self.dir / "tensorboard" / self.info["run_name"]

    @classmethod
    def start(cls, recipe, run: RunDir, is_main: bool = True) -> Tracking:
        """Open the trackers of ``recipe.report_to`` for ``run`` (continuing the tracker run
        recorded in ``run.json`` when there is one). Nothing on other ranks.

        Raises:
            RecipeError: a tracker's package is not installed (the message names it).
        """
        names = list(recipe.report_to)
        if not names or not is_main:
            return cls([])
        check_installed(names)
        path = run.path / "run.json"
        record = read_json_or_none(path) or {}
        info = record.get("tracking") or {}
        resumed = bool(info)
        info.setdefault("run_name", run.path.name)
        info.setdefault("project", recipe.tracking.project or recipe.name or "seal")
        info.setdefault("wandb_id", uuid.uuid4().hex[:12])  # W&B's id format: [a-z0-9]
        info.setdefault("started", _dt.datetime.now().isoformat(timespec="seconds"))
        tracking = cls(names, run, [], info, recipe.tracking.table_rows)
        tracking.dir.mkdir(parents=True, exist_ok=True)
        tracking.trackers = [tracking._open(name) for name in names]
        for tracker in tracking.trackers:
            tracker.start()
            if tracker.name == "mlflow":
                info["mlflow_run_id"] = tracker.active_run.info.run_id
        info["tensorboard_dir"] = str(tracking.tensorboard_dir.relative_to(run.path))
        info["report_to"] = sorted(set(info.get("report_to", [])) | set(names))
        record["tracking"] = info
        write_json_atomic(path, record)
        if not resumed:
            tracking.log_config(recipe_to_dict(recipe))
        return tracking

    def _open(self, name: str):
        from accelerate.tracking import (
            MLflowTracker,
            TensorBoardTracker,
            TrackioTracker,
            WandBTracker,
        )

        info = self.info
        if name == "tensorboard":
            return TensorBoardTracker(info["run_name"], self.dir / "tensorboard")
        if name == "wandb":
            os.environ.setdefault("WANDB_DIR", str(self.dir))
            return WandBTracker(info["project"], name=info["run_name"], id=info["wandb_id"], resume="allow", dir=str(self.dir))
        if name == "trackio":
            return TrackioTracker(info["project"], name=info["run_name"], resume="allow")
        if name == "mlflow":
            os.environ.setdefault("MLFLOW_TRACKING_URI", (self.dir / "mlflow").as_uri())
            return MLflowTracker(experiment_name=info["project"], run_id=info.get("mlflow_run_id"), run_name=info["run_name"])
        raise ValueError(f"unknown tracker {name!r}; known: {', '.join(TRACKERS)}")

    def log_config(self, config: dict) -> None:
        """The resolved recipe: as hyperparameters (W&B, trackio, MLflow) or text (TensorBoard)."""
        flat = _flat_config(config)
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                tracker.log({"recipe": "```\n" + yaml.safe_dump(config, sort_keys=False) + "```"}, step=0)
            else:
                tracker.store_init_configuration(flat)

    def log(self, values: dict, step: int, prefix: str = "") -> None:
        """Log the numbers of ``values`` (nested dicts flattened, :func:`flatten`) at ``step``."""
        if not self.trackers:
            return
        scalars = flatten(values, prefix)
        for tracker in self.trackers:
            if tracker.name == "wandb":
                # W&B's step only grows, and TRL's callbacks advance it: the round is a field instead.
                tracker.log(scalars | {prefix + "index": float(step)})
            else:
                tracker.log(scalars, step=step)

    def log_self_edits(self, step: int, rows: list[dict], name: str = "self_edits") -> None:
        """A table of sampled self-edits (``rows``: ``{passage, self_edit, reward, kept, text}``)
        at ``step``: a W&B table; a markdown table as text elsewhere; at most
        ``tracking.table_rows`` rows (None: all)."""
        if not self.trackers or not rows:
            return
        rows = rows[: self.table_rows] if self.table_rows is not None else rows
        columns = list(rows[0])
        for tracker in self.trackers:
            if tracker.name == "wandb":
                tracker.log_table(name, columns=columns, data=[[row[c] for c in columns] for row in rows])
            elif tracker.name == "tensorboard":
                tracker.log({name: markdown_table(columns, rows)}, step=step)
            elif tracker.name == "mlflow":
                import mlflow

                mlflow.log_text(markdown_table(columns, rows), f"{name}/step_{step:05d}.md")

    @contextlib.contextmanager
    def for_trainer(self, subdir: str, last: bool = False) -> Iterator[list[str]]:
        """``report_to`` for a TRL trainer built inside the block (transformers' TensorBoard
        callback reads its log directory, ``.../tensorboard/<run name>/<subdir>``, from
        ``TENSORBOARD_LOGGING_DIR`` when it is built; W&B's and MLflow's find the open run).
        trackio only when ``last`` (GRPO's trainer): transformers' trackio callback finishes the
        trackio run when its training ends, so a ReST-EM round's SFT losses reach trackio
        through the round's ``round/sft/...`` metrics instead."""
        if not self.names:
            yield []
            return
        old = os.environ.get("TENSORBOARD_LOGGING_DIR")
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(self.tensorboard_dir / subdir)
        try:
            yield [n for n in self.names if last or n != "trackio"]
        finally:
            if old is None:
                os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
            else:
                os.environ["TENSORBOARD_LOGGING_DIR"] = old

    def finish(self) -> None:
        """Close every tracker (flushes TensorBoard's writer, ends the W&B run)."""
        for tracker in self.trackers:
            with contextlib.suppress(Exception):  # a tracker's service being gone must not fail a finished run
                tracker.finish()
        self.trackers = []


def _flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, bool | int | float | str) or value is None else str(value)
    return out


def markdown_table(columns: list[str], rows: list[dict], max_chars: int = 400) -> str:
    """``rows`` as a markdown table (TensorBoard's text tab renders it); cells cut at ``max_chars``."""

    def cell(value) -> str:
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def track_round(tracking: Tracking, metrics: dict, self_edits: list[list], rewards: dict[int, list[float | None]], kept: dict[int, list[int]]) -> None:
    """Log a finished ReST-EM round: its metrics (``round/...``, step = the round) and the
    table of its sampled self-edits (passage, self-edit index, mean reward, kept, text)."""
    if not tracking.trackers:
        return
    step = metrics["round"]
    tracking.log(metrics, step=step, prefix="round/")
    rows = [
        {"round": step, "passage": p, "self_edit": e, "reward": rewards[p][e], "kept": e in kept.get(p, []), "text": edit.text}
        for p, edits in enumerate(self_edits)
        for e, edit in enumerate(edits)
    ]
    tracking.log_self_edits(step, rows)
