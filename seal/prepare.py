"""Making a recipe's model exist before a command runs: the task's preparation (e.g. pretraining
a world, ``Task.prepare``) and the tiny model (``model.build_tiny``: its tokenizer also learns
the task's text, ``Task.tokenizer_texts``; with a warm-up, ``Task.warm_up``).

Above :mod:`seal.models` and the tasks (``seal.tasks.registry``), so neither imports the other's caller.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from seal.config import Recipe
from seal.models import build_tiny_model, passage_texts
from seal.sections import RecipeError
from seal.tasks.registry import Task, make_task

#: The file a warmed-up tiny model's directory records its build settings in (``tiny_key``).
TINY_MARKER = "seal_tiny.json"


def tiny_key(task: Task) -> str:
    """A 16-hex-digit hash of the task's warm-up settings (``Task.warmup_settings``: the cached
    warmed-up model's key)."""
    return hashlib.sha256(json.dumps(task.warmup_settings(), sort_keys=True).encode()).hexdigest()[:16]


def _check_marker(path: Path, task: Task) -> None:
    """Refuse a directory that was not built with this recipe's warm-up settings.

    Raises:
        RecipeError: no marker file, or one with another key (names the directory and what to do).
    """
    marker = path / TINY_MARKER
    key = json.loads(marker.read_text()).get("key") if marker.is_file() else None
    if key != tiny_key(task):
        raise RecipeError(
            f"{path} was built {'with other settings' if key else 'without a warm-up'} than this recipe's "
            f"model.build_tiny (warm-up key {tiny_key(task)}); delete it to rebuild, or set model.name_or_path"
        )


def ensure_model(recipe: Recipe, log: Callable[[str], None] = print) -> None:
    """Make the recipe's model exist: the task's preparation (``Task.prepare``: task microworld
    pretrains its world, cached), then the tiny model (``model.build_tiny``; its tokenizer also
    trains on ``Task.tokenizer_texts``) if the directory is missing; otherwise nothing.

    With ``model.build_tiny.warmup`` set the new model is then warmed up (``Task.warm_up``;
    task arc's ``arc-configs`` teaches it to write configurations), built in a temporary
    sibling and renamed into place, with its settings' key and the warm-up's report in
    ``seal_tiny.json``.

    ``log`` gets one line before a tiny model is built, and the warm-up's summary (a task's
    preparation may report its own progress on stderr).

    Raises:
        RecipeError: the warm-up's directory exists but was built with other settings.
    """
    task = make_task(recipe)
    task.prepare(log)
    model = recipe.model
    if model.build_tiny is None:
        return
    tiny = model.build_tiny
    path = Path(model.name_or_path)
    if path.exists():
        if tiny.warmup != "none":
            _check_marker(path, task)
        return
    log(f"building tiny model at {model.name_or_path}")
    texts = passage_texts(tiny.data, recipe.data.root) + task.tokenizer_texts(tiny.seed)
    dims = (tiny.vocab_size, tiny.hidden_size, tiny.num_layers, tiny.num_heads)
    if tiny.warmup == "none":
        build_tiny_model(model.name_or_path, texts, *dims, seed=tiny.seed)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        build_tiny_model(tmp, texts, *dims, seed=tiny.seed)
        report = task.warm_up(tmp, log)
        marker = {"key": tiny_key(task), "settings": task.warmup_settings(), "warmup": report}
        (tmp / TINY_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
