"""ARC self-edits: a configuration, read as data, and the test-time-training set it builds.

The policy reads a task's demonstrations and writes a configuration (paper Section 4.1; the
reference's ``few-shot/utils/prompts.py``). With ``self_edit.hparams.format: json``::

    {"basic": true, "size": false, "chain": false, "repeat": true,
     "lr": 0.0001, "epochs": 3, "loss_on": "answer"}

or, with ``format: key-value``, one ``key: value`` per line (``basic: true``). The whole
self-edit is the configuration (no marker line; a surrounding Markdown code fence is
removed). The reference's nested form is read too (JSON only)::

    {"data_generation": {"use_basic_augmentations": true, ...},
     "training": {"strategy": "train_using_output_tokens", "learning_rate": 0.0001, "num_train_epochs": 3}}

``basic``/``size``/``chain``/``repeat`` switch augmentation families on (``seal.arc.augment``;
a family left out is off; one the recipe's ``arc.families`` does not allow may not be on).
The optimisation keys (``lr``, ``epochs``, ``loss_on``; ``lora_rank`` if declared) are checked
by :func:`seal.hparams.check_settings` against ``self_edit.hparams``. A family switch of
``arc.families`` or a declared key left out (``arc.missing_keys``): ``inner-defaults`` (the
family off, the key the recipe's ``inner`` value), ``reference`` (0 epochs, an untrained
adapter: ``self-edit.py:509-546``) or ``fail``. ``loss_on: answer`` is the inner loop's
answer-marker mask with ``inner.answer_marker`` = ``arc.answer_marker`` (loss on the test
output grid only, the reference's ``train_using_output_tokens``). Any other problem refuses
the configuration with its reason, nothing is clamped: the evaluation fails
(``arc.invalid: fail``), or the self-edit is drawn again (``resample``,
:func:`resample_invalid`; the reference redraws unparseable ones, ``self-edit.py:458-464``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from seal.arc.augment import Augmentation, family, permute_colors
from seal.arc.config import FAMILIES, ArcSection
from seal.arc.tasks import ArcTask, Example, training_text
from seal.hparams import (
    HPARAM_KEYS,
    AdapterSettings,
    HparamsConfig,
    HparamsError,
    check_settings,
    read_block,
    space_description,
)
from seal.prompts import CHAT_TEMPLATES

#: The reference's nested keys -> ours (``data_generation`` and ``training`` objects).
_REFERENCE_KEYS = {
    "use_basic_augmentations": "basic",
    "use_size_augmentations": "size",
    "use_chain_augmentations": "chain",
    "use_repeat_augmentations": "repeat",
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "strategy": "loss_on",
}
_STRATEGIES = {"train_using_all_tokens": "all", "train_using_output_tokens": "answer"}


@dataclass(frozen=True)
class Configuration:
    """A parsed configuration: ``families`` on (in :data:`FAMILIES` order) and the optimisation
    ``settings`` (None fields: the recipe's ``inner`` values). ``untrained``: why it trains 0
    epochs (``arc.missing_keys: reference`` and a key left out; None: it trains as set)."""

    families: tuple[str, ...]
    settings: AdapterSettings
    untrained: str | None = None


def _unfence(text: str) -> str:
    """The text inside a Markdown code fence (```json ... ```), else the text, stripped."""
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text.strip()


def _flatten_reference(raw: dict) -> dict:
    """The reference's nested object as flat keys (other objects unchanged)."""
    if not ({"data_generation", "training"} & set(raw)):
        return raw
    flat: dict = {}
    for section, value in raw.items():
        if section not in ("data_generation", "training") or not isinstance(value, dict):
            raise HparamsError(f"unknown key {str(section)[:32]!r} in the nested form (data_generation, training)")
        for key, v in value.items():
            if key not in _REFERENCE_KEYS:
                raise HparamsError(f"unknown key {str(key)[:40]!r} in {section}")
            if key == "strategy":
                if not isinstance(v, str) or v not in _STRATEGIES:  # a list or object is not hashable
                    raise HparamsError(f"strategy {str(v)[:40]!r} not one of {list(_STRATEGIES)}")
                v = _STRATEGIES[v]
            flat[_REFERENCE_KEYS[key]] = v
    return flat


def _switch(key: str, value, text: bool) -> bool:
    if text and value in ("true", "false"):
        return value == "true"
    if not isinstance(value, bool):
        raise HparamsError(f"{key} must be true or false, got {str(value)[:40]!r}")
    return value


def parse_configuration(text: str, space: HparamsConfig, arc: ArcSection) -> Configuration:
    """A configuration self-edit -> its families and settings (module docstring).

    Raises:
        HparamsError: longer than ``space.max_chars``, not parseable, an unknown key, a family
            switch that is not a boolean or not allowed by ``arc.families``, or an
            optimisation key :func:`seal.hparams.check_settings` refuses. The message is the reason.
    """
    raw = read_block(_unfence(text), space)
    if space.format == "json":
        raw = _flatten_reference(raw)
    unknown = [k for k in raw if k not in FAMILIES and k not in HPARAM_KEYS]
    if unknown:
        raise HparamsError(f"unknown key {str(unknown[0])[:32]!r} (known: {', '.join((*FAMILIES, *HPARAM_KEYS))})")
    on = []
    for name in FAMILIES:
        if name in raw and _switch(name, raw[name], space.format == "key-value"):
            if name not in arc.families:
                raise HparamsError(f"augmentation family {name!r} is not allowed (allowed: {', '.join(arc.families)})")
            on.append(name)
    settings = check_settings({k: v for k, v in raw.items() if k in HPARAM_KEYS}, space)
    missing = [k for k in (*arc.families, *space.declared()) if k not in raw]
    if missing and arc.missing_keys == "fail":
        raise HparamsError(f"missing key {missing[0]!r} (arc.missing_keys: fail)")
    if missing and arc.missing_keys == "reference":
        # self-edit.py:509-546: a missing family switch or training key trains 0 epochs
        # (a missing family also switches every family off).
        families = () if any(k in FAMILIES for k in missing) else tuple(on)
        zeroed = AdapterSettings(settings.lr, 0, settings.loss_on, settings.lora_rank)
        return Configuration(families, zeroed, f"missing key {missing[0]!r}")
    return Configuration(tuple(on), settings)


def read_configuration(text: str, space: HparamsConfig, arc: ArcSection) -> tuple[Configuration | None, str | None]:
    """:func:`parse_configuration` that never raises: (configuration, None) or (None, reason).

    Total over model text: :func:`parse_configuration` raises nothing but ``HparamsError`` for
    any text, whatever JSON value sits at whatever key (tests/test_arc.py feeds it every JSON
    type at every key, deep nesting, huge numbers, NaN literals and a 10 MB string)."""
    try:
        return parse_configuration(text, space, arc), None
    except HparamsError as e:
        return None, f"arc config: {e}"


def configuration_hint(space: HparamsConfig, arc: ArcSection) -> str:
    """The paragraph of the self-edit prompt that says how to write a configuration: the
    family switches the recipe allows and the declared optimisation space."""
    described = {
        "basic": "rotations, flips, reflections, a translation, transposition",
        "size": "grids upscaled 2x in height, width or both",
        "chain": "a rotation, flip or transposition, then a 2x upscale",
        "repeat": "grids tiled 2x",
    }
    families = "; ".join(f"{f}: {described[f]}" for f in arc.families)
    form = "a JSON object" if space.format == "json" else "one 'key: value' per line"
    space_text = space_description(space)
    return (
        f"Configure how a model is trained on this task's examples. Write only {form} with the keys "
        f"{', '.join(arc.families)} (true or false: augmentations that make more training examples; {families})"
        + (f" and {space_text}" if space_text else "")
        + "."
    )


def self_edit_hint(self_edit, arc: ArcSection) -> str:
    """The self-edit prompt's hint of task arc (``self_edit``: the recipe's ``SelfEditConfig``):
    :func:`configuration_hint`, or "" when the template is a whole chat text (the reference's
    prompt carries its own instructions, ``seal.prompts.CHAT_TEMPLATES``)."""
    return "" if self_edit.template in CHAT_TEMPLATES else configuration_hint(self_edit.hparams, arc)


# ----------------------------------------------------------------------------- the training set


Leaveout = tuple[tuple[Example, ...], Example]  # (demonstrations, held-out example)


def leave_out_tasks(train: tuple[Example, ...], leave_n: list[int]) -> list[Leaveout]:
    """The reference's leave-n-out tasks (``get_test_time_train_data``): for each n and each
    demonstration i, i is the test example and, for every choice of n-1 others, those are
    dropped; the rest (kept in order) are the demonstrations. Tasks left without a
    demonstration are skipped."""
    out = []
    for n in leave_n:
        for i in range(len(train)):
            others = [j for j in range(len(train)) if j != i]
            for dropped in itertools.combinations(others, n - 1):
                kept = tuple(train[j] for j in others if j not in dropped)
                if kept:
                    out.append((kept, train[i]))
    return out


def _augment(task: Leaveout, aug: Augmentation) -> Leaveout:
    def ex(e: Example) -> Example:
        return Example(aug.apply(e.input), aug.apply(e.output))

    return tuple(ex(e) for e in task[0]), ex(task[1])


def _fits(task: Leaveout) -> bool:
    return all(len(g) <= 30 and len(g[0]) <= 30 for e in (*task[0], task[1]) for g in (e.input, e.output))


def ttt_tasks(task: ArcTask, families: tuple[str, ...], arc: ArcSection, seed: int) -> list[Leaveout]:
    """The test-time-training tasks of ``task`` under a configuration (the reference's
    ``get_test_time_train_data``): the leave-n-out tasks, each under every augmentation of
    the chosen families (tasks with a side over 30 dropped), then ``arc.permute_n`` copies of
    each with a random colour permutation (only when a family is on) and a random order of
    demonstrations; duplicates removed, first occurrence kept. Seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    initial = leave_out_tasks(task.train, arc.leave_n)
    augs = [a for name in families for a in family(name, rng)]
    augmented = [t for aug in augs for t in (_augment(u, aug) for u in initial) if _fits(t)]
    pool = list(dict.fromkeys([*augmented, *initial]))
    permuted = []
    for _ in range(arc.permute_n):
        for demos, test in pool:
            if augs:
                demos, test = _augment((demos, test), permute_colors(rng))
            order = rng.permutation(len(demos))
            permuted.append((tuple(demos[int(k)] for k in order), test))
    return list(dict.fromkeys([*permuted, *pool]))


def ttt_texts(task: ArcTask, families: tuple[str, ...], arc: ArcSection, seed: int) -> list[str]:
    """The training texts of :func:`ttt_tasks` (:func:`seal.arc.tasks.training_text` in
    ``arc.text_format``), those over ``arc.max_text_chars`` dropped, at most
    ``arc.max_train_texts`` (a seeded sample, in order)."""
    texts = [training_text(demos, test, arc.text_format) for demos, test in ttt_tasks(task, families, arc, seed)]
    if arc.max_text_chars is not None:
        texts = [t for t in texts if len(t) <= arc.max_text_chars]
    if len(texts) > arc.max_train_texts:
        keep = np.random.default_rng(seed + 1).choice(len(texts), arc.max_train_texts, replace=False)
        texts = [texts[i] for i in sorted(int(k) for k in keep)]
    return texts


# ----------------------------------------------------------------------------- resampling

Item = TypeVar("Item")


def resample_invalid(
    rows: list[list[Item]],
    draw: Callable[[list[int], int], list[list[Item]]],
    valid: Callable[[Item], bool],
    rounds: int,
) -> tuple[list[list[Item]], list[list[int]]]:
    """``arc.invalid: resample``: redraw the invalid self-edits of each task until it has as many
    valid ones as it has slots, at most ``rounds`` more draws (the reference redraws one at a
    time until k parse, without a bound: ``self-edit.py:458-464``).

    Args:
        rows: per task, its ``k`` first-drawn self-edits (any item type; ``valid`` judges one).
        draw: ``draw(tasks, attempt)`` -> per listed task (positions in ``rows``), ``k`` fresh
            self-edits; ``attempt`` (1, 2, ...) must seed the draw (the caller derives its seed).
        valid: whether a self-edit's configuration parses and is in the declared space.
        rounds: at most this many draws after the first.

    Returns ``(rows, draws)``: per task, its self-edits with each invalid slot filled in order
    by the next valid fresh one (valid slots stay as drawn; a slot still invalid after
    ``rounds`` keeps its first text and fails), and per slot how many draws it took (1: valid
    at once; ``1 + rounds`` and still invalid: never filled).
    """
    out = [list(row) for row in rows]
    draws = [[1] * len(row) for row in out]
    ok = [[valid(item) for item in row] for row in out]
    for attempt in range(1, rounds + 1):
        short = [p for p, flags in enumerate(ok) if not all(flags)]
        if not short:
            break
        for p, fresh in zip(short, draw(short, attempt), strict=True):
            pool = [item for item in fresh if valid(item)]
            for j, good in enumerate(ok[p]):
                if good:
                    continue
                draws[p][j] += 1
                if pool:
                    out[p][j], ok[p][j] = pool.pop(0), True
    return out, draws


def resample_self_edits(rows: list[list], draw: Callable[[list[int], int], list[list]], recipe) -> list[list]:
    """:func:`resample_invalid` with the recipe's parser (``self_edit.hparams``, ``arc``) and
    bound (``arc.resample_rounds``). Items are :class:`seal.self_edits.SelfEdit` (their
    ``draws`` set) or completion strings (``seal evaluate`` / ``seal bench``)."""
    space, arc = recipe.self_edit.hparams, recipe.arc

    def text(item) -> str:
        return item if isinstance(item, str) else item.text

    out, draws = resample_invalid(rows, draw, lambda item: read_configuration(text(item), space, arc)[0] is not None, arc.resample_rounds)
    return [
        [item if isinstance(item, str) else replace(item, draws=n) for item, n in zip(row, counts, strict=True)]
        for row, counts in zip(out, draws, strict=True)
    ]
