"""Making a recipe's model exist before a command runs: pretrain its microworld or build its tiny
model.

Above both :mod:`seal.models` and :mod:`seal.microworld` (which builds on ``seal.models``), so
neither imports the other's caller.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from seal.arc.tasks import load_arc_tasks, task_passage
from seal.config import Recipe
from seal.microworld.pretrain import ensure_microworld
from seal.models import build_tiny_model, passage_texts


def ensure_model(recipe: Recipe, log: Callable[[str], None] = print) -> None:
    """Make the recipe's model exist: pretrain its microworld (``recipe.microworld``, cached) or
    build its tiny model (``model.build_tiny``; with an ``arc`` section its tokenizer also
    trains on the training tasks' queries) if the directory is missing; otherwise nothing.

    ``log`` gets one line before a tiny model is built (microworld pretraining reports its own
    progress on stderr).
    """
    if recipe.microworld is not None:
        world = recipe.microworld
        ensure_microworld(world.cache_dir, seed=world.seed, cfg=world.pretrain_config())
    model = recipe.model
    if model.build_tiny is None or Path(model.name_or_path).exists():
        return
    tiny = model.build_tiny
    log(f"building tiny model at {model.name_or_path}")
    texts = passage_texts(tiny.data, recipe.data.root)
    if recipe.arc is not None:  # the tokenizer also learns the ARC prompts' text
        tasks = load_arc_tasks(recipe.data.train_file, recipe.arc.train_solutions, recipe.data.root)
        texts += [q.question + q.answer for p in map(task_passage, tasks) for q in p.questions]
    build_tiny_model(
        model.name_or_path,
        texts,
        tiny.vocab_size,
        tiny.hidden_size,
        tiny.num_layers,
        tiny.num_heads,
        seed=tiny.seed,
    )
