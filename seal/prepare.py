"""Making a recipe's model exist before a command runs: pretrain its microworld or build its tiny
model (and, for ARC recipes that ask, warm it up to write configurations).

Above both :mod:`seal.models` and :mod:`seal.microworld` (which builds on ``seal.models``), so
neither imports the other's caller.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from seal.arc.tasks import load_arc_tasks, task_passage
from seal.config import Recipe
from seal.microworld.pretrain import ensure_microworld
from seal.models import build_tiny_model, passage_texts
from seal.prompts import self_edit_prompt
from seal.sections import RecipeError

#: The file a warmed-up tiny model's directory records its build settings in (``tiny_key``).
TINY_MARKER = "seal_tiny.json"


def tiny_settings(recipe: Recipe) -> dict:
    """What a tiny model with a warm-up is built from: ``model.build_tiny``, the training file,
    the ARC families and the self-edit prompt and space (``self_edit`` without its sampling
    settings). Two recipes with the same settings share a built model."""
    se = recipe.self_edit
    return {
        "build_tiny": recipe.model.build_tiny.model_dump(),
        "train_file": recipe.data.train_file,
        "arc_families": recipe.arc.families,
        "self_edit": {"template": se.template, "chat_template": se.chat_template, "hparams": se.hparams.model_dump()},
    }


def tiny_key(recipe: Recipe) -> str:
    """A 16-hex-digit hash of :func:`tiny_settings` (the cached warmed-up model's key)."""
    return hashlib.sha256(json.dumps(tiny_settings(recipe), sort_keys=True).encode()).hexdigest()[:16]


def _check_marker(path: Path, recipe: Recipe) -> None:
    """Refuse a directory that was not built with this recipe's warm-up settings.

    Raises:
        RecipeError: no marker file, or one with another key (names the directory and what to do).
    """
    marker = path / TINY_MARKER
    key = json.loads(marker.read_text()).get("key") if marker.is_file() else None
    if key != tiny_key(recipe):
        raise RecipeError(
            f"{path} was built {'with other settings' if key else 'without a warm-up'} than this recipe's "
            f"model.build_tiny (warm-up key {tiny_key(recipe)}); delete it to rebuild, or set model.name_or_path"
        )


def _arc_tokenizer_texts(recipe: Recipe, tasks: list, seed: int) -> list[str]:
    """The ARC text a tiny tokenizer learns: every task's queries and answers, and with the
    configuration warm-up also its self-edit prompts, each followed by 20 drawn configurations."""
    texts = [q.question + q.answer for p in map(task_passage, tasks) for q in p.questions]
    if recipe.model.build_tiny.warmup == "arc-configs":
        from seal.arc.warmup import random_configuration
        from seal.scoring import self_edit_hint

        rng = np.random.default_rng(seed)
        hint = self_edit_hint(recipe.self_edit, recipe.arc)
        for p in map(task_passage, tasks):
            prompt = self_edit_prompt(recipe.self_edit.template, p.title, p.context, hint=hint)
            texts += [prompt + random_configuration(rng, recipe.self_edit.hparams, recipe.arc) for _ in range(20)]
    return texts


def ensure_model(recipe: Recipe, log: Callable[[str], None] = print) -> None:
    """Make the recipe's model exist: pretrain its microworld (``recipe.microworld``, cached) or
    build its tiny model (``model.build_tiny``; with an ``arc`` section its tokenizer also
    trains on the training tasks' queries) if the directory is missing; otherwise nothing.

    With ``model.build_tiny.warmup: arc-configs`` the new model is then warmed up to write
    configurations (:func:`seal.arc.warmup.warm_up_tiny_policy`, a minute at most on one CPU
    thread), built in a temporary sibling and renamed into place, with its settings' key and the
    warm-up's report in ``seal_tiny.json``.

    ``log`` gets one line before a tiny model is built, and the warm-up's summary (microworld
    pretraining reports its own progress on stderr).

    Raises:
        RecipeError: the warm-up's directory exists but was built with other settings.
    """
    if recipe.microworld is not None:
        world = recipe.microworld
        ensure_microworld(world.cache_dir, seed=world.seed, cfg=world.pretrain_config())
    model = recipe.model
    if model.build_tiny is None:
        return
    tiny = model.build_tiny
    path = Path(model.name_or_path)
    if path.exists():
        if tiny.warmup != "none":
            _check_marker(path, recipe)
        return
    log(f"building tiny model at {model.name_or_path}")
    texts = passage_texts(tiny.data, recipe.data.root)
    tasks = []
    if recipe.arc is not None:  # the tokenizer also learns the ARC prompts' text
        tasks = load_arc_tasks(recipe.data.train_file, recipe.arc.train_solutions, recipe.data.root)
        texts += _arc_tokenizer_texts(recipe, tasks, tiny.seed)
    dims = (tiny.vocab_size, tiny.hidden_size, tiny.num_layers, tiny.num_heads)
    if tiny.warmup == "none":
        build_tiny_model(model.name_or_path, texts, *dims, seed=tiny.seed)
        return
    from seal.arc.warmup import warm_up_tiny_policy

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        build_tiny_model(tmp, texts, *dims, seed=tiny.seed)
        report = warm_up_tiny_policy(tmp, tasks, recipe, tiny.warmup_steps, tiny.seed, tiny.warmup_lr, log=log)
        marker = {"key": tiny_key(recipe), "settings": tiny_settings(recipe), "warmup": report}
        (tmp / TINY_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
