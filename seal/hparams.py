"""Hyperparameter self-edits: reading a self-edit's block of inner-loop settings as data.

A self-edit may end with a block that chooses the inner loop's settings for itself (the
recipe's ``self_edit.hparams``, :class:`seal.sections.HparamsConfig`)::

    The Normans gave their name to Normandy.
    ---
    Rollo was their first ruler.
    Hyperparameters:
    {"lr": 0.0003, "epochs": 4, "loss_on": "all"}

The block is everything after the *last* line equal to ``marker`` (spaces around it
ignored); the training text is what comes before that line. With ``format: key-value`` the
block is one ``key: value`` per line instead (``lr: 0.0003``). Model text is parsed as data
(``json.loads`` or a strict line regex), never evaluated, and the block is bounded
(``max_chars``) before any parsing.

Validation is strict: a key that is unknown or not declared by the recipe, a value of the
wrong type, a non-finite number, or a value outside the declared range/choices is a failure
with its reason; nothing is clamped or replaced. A declared key the block leaves out takes
the recipe's ``inner`` value (:meth:`AdapterSettings.resolve`); that default is declared in
the recipe, not a substitute for a bad value.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass

from seal.sections import HPARAM_KEYS, HparamsConfig, InnerLoopConfig


@dataclass(frozen=True)
class AdapterSettings:
    """One adapter's inner-loop settings chosen by its self-edit; None: the recipe's ``inner`` value.

    Attributes:
        lr: peak learning rate (per optimizer step, before the schedule).
        epochs: passes over the adapter's training texts.
        loss_on: ``"all"`` or ``"answer"`` (see ``inner.loss_on``).
        lora_rank: the adapter's LoRA rank r (``inner.lora.alpha`` stays, so the scale alpha/r
            changes with r, as it does when r alone is changed in a PEFT config).
    """

    lr: float | None = None
    epochs: int | None = None
    loss_on: str | None = None
    lora_rank: int | None = None

    def resolve(self, inner: InnerLoopConfig) -> dict:
        """Every setting, the block's value or else the recipe's ``inner`` one:
        ``{"lr", "epochs", "loss_on", "lora_rank"}`` (what journal records and metrics carry)."""
        return {
            "lr": self.lr if self.lr is not None else inner.lr,
            "epochs": self.epochs if self.epochs is not None else inner.epochs,
            "loss_on": self.loss_on if self.loss_on is not None else inner.loss_on,
            "lora_rank": self.lora_rank if self.lora_rank is not None else inner.lora.rank,
        }

    def chosen(self) -> dict:
        """Only the settings the block set."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ParsedSelfEdit:
    """A self-edit split into its training text and its settings.

    Attributes:
        text: the self-edit without the block (the whole text when there is none).
        settings: the block's settings (all None when there is no block); None when it failed.
        error: why the block was refused (None: it was not).
    """

    text: str
    settings: AdapterSettings | None
    error: str | None = None


# "key: value" with a lowercase identifier key and a short value on one line; nothing else.
_KEY_VALUE = re.compile(r"^\s*([a-z_][a-z0-9_]{0,31})\s*:\s*(\S(?:.{0,62}\S)?)\s*$")
# Plain decimal or scientific numbers only: no hex, no underscores, no "inf"/"nan".
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?$")
_INT = re.compile(r"^[+-]?\d{1,9}$")


class HparamsError(ValueError):
    """A hyperparameter block that does not parse or leaves the declared space (the reason)."""


def split_block(text: str, marker: str) -> tuple[str, str | None]:
    """(text before the block's marker line, the block) — block None when no line equals ``marker``."""
    lines = text.split("\n")
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip() == marker.strip():
            return "\n".join(lines[:i]).rstrip(), "\n".join(lines[i + 1 :]).strip()
    return text, None


def _read_json(block: str) -> dict:
    def no_constants(name: str):  # NaN, Infinity, -Infinity are not JSON numbers
        raise HparamsError(f"non-finite number {name}")

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:  # json.loads would keep the last
        keys = [k for k, _ in pairs]
        for k in keys:
            if keys.count(k) > 1:
                raise HparamsError(f"key {k[:32]!r} given twice")
        return dict(pairs)

    try:
        value = json.loads(block, parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise HparamsError(f"not JSON ({e.msg} at character {e.pos})") from None
    except HparamsError:
        raise
    except (ValueError, RecursionError) as e:  # e.g. an integer past Python's digit limit
        raise HparamsError(f"not JSON ({type(e).__name__})") from None
    if not isinstance(value, dict):
        raise HparamsError(f"not a JSON object (a {type(value).__name__})")
    return value


def _read_key_values(block: str) -> dict:
    """``key: value`` lines -> {key: str value}; values stay text until :func:`_check`."""
    out: dict = {}
    for n, line in enumerate(block.split("\n"), start=1):
        if not line.strip():
            continue
        match = _KEY_VALUE.match(line)
        if match is None:
            raise HparamsError(f"line {n} is not 'key: value': {line.strip()[:40]!r}")
        key, value = match.groups()
        if key in out:
            raise HparamsError(f"key {key!r} given twice")
        out[key] = value
    return out


def _number(key: str, value, integer: bool, text: bool) -> float | int:
    """A JSON number (``text=False``) or a key-value string (``text=True``) as a finite
    float / int, else HparamsError. A JSON string is not a number."""
    if isinstance(value, bool):  # bool is an int subclass in Python
        raise HparamsError(f"{key} must be a number, got {value!r}")
    if isinstance(value, str) and not text:
        raise HparamsError(f"{key} must be a number, got a string")
    if isinstance(value, str):
        pattern = _INT if integer else _NUMBER
        if not pattern.match(value):
            raise HparamsError(f"{key} must be {'an integer' if integer else 'a number'}, got {value[:40]!r}")
        value = int(value) if integer else float(value)
    if integer and isinstance(value, float) and value.is_integer() and abs(value) < 2**31:
        value = int(value)  # "epochs": 3.0 is 3
    if integer and not isinstance(value, int):
        raise HparamsError(f"{key} must be an integer, got {value!r}")
    if not isinstance(value, (int, float)):
        raise HparamsError(f"{key} must be a number, got a {type(value).__name__}")
    if not integer:
        if abs(value) > 1e300:  # huge JSON ints would overflow float() (and a format of them)
            raise HparamsError(f"{key} is not finite (over 1e300)")
        value = float(value)
        if not math.isfinite(value):
            raise HparamsError(f"{key} {value} is not finite")
    return value


def _check(raw: dict, space: HparamsConfig, text: bool) -> AdapterSettings:
    """Validate every key and value against the declared space; the first problem raises.
    ``text``: values are key-value strings (numbers to be read), not JSON values."""
    declared = space.declared()
    out: dict = {}
    for key, value in raw.items():
        if key not in HPARAM_KEYS:
            raise HparamsError(f"unknown key {str(key)[:32]!r} (known: {', '.join(HPARAM_KEYS)})")
        if key not in declared:
            raise HparamsError(f"key {key!r} is not declared by the recipe (declared: {', '.join(declared) or 'none'})")
        if key == "lr":
            lr = _number(key, value, integer=False, text=text)
            if not space.lr.min <= lr <= space.lr.max:
                raise HparamsError(f"lr {lr:g} outside [{space.lr.min:g}, {space.lr.max:g}]")
            out[key] = lr
        elif key == "epochs":
            epochs = _number(key, value, integer=True, text=text)
            if not space.epochs.min <= epochs <= space.epochs.max:
                raise HparamsError(f"epochs {epochs} outside [{space.epochs.min}, {space.epochs.max}]")
            out[key] = epochs
        elif key == "loss_on":
            if not isinstance(value, str) or value not in space.loss_on:
                raise HparamsError(f"loss_on {str(value)[:40]!r} not one of {space.loss_on}")
            out[key] = value
        elif key == "lora_rank":
            rank = _number(key, value, integer=True, text=text)
            if rank not in space.lora_rank:
                raise HparamsError(f"lora_rank {rank} not one of {space.lora_rank}")
            out[key] = rank
    return AdapterSettings(**out)


def read_block(block: str, space: HparamsConfig) -> dict:
    """A block's text -> its keys and raw values, not yet checked (JSON values, or strings
    with ``format: key-value``; :func:`check_settings` checks them).

    Raises:
        HparamsError: longer than ``space.max_chars``, or not parseable in ``space.format``.
    """
    if len(block) > space.max_chars:
        raise HparamsError(f"block of {len(block)} characters exceeds max_chars={space.max_chars}")
    return _read_json(block) if space.format == "json" else _read_key_values(block)


def check_settings(raw: dict, space: HparamsConfig) -> AdapterSettings:
    """:func:`read_block`'s keys and values checked against the declared space (a task
    whose self-edits carry more keys checks its own and passes the rest here).

    Raises:
        HparamsError: an unknown or undeclared key, a wrong type, a non-finite number, or a
            value outside the declared range / choices.
    """
    return _check(raw, space, text=space.format == "key-value")


def parse_block(block: str, space: HparamsConfig) -> AdapterSettings:
    """A block's text -> its validated settings.

    Raises:
        HparamsError: longer than ``space.max_chars``, not parseable in ``space.format``,
            an unknown or undeclared key, a wrong type, a non-finite number, or a value
            outside the declared range / choices. The message is the reason.
    """
    return check_settings(read_block(block, space), space)


def parse_self_edit(text: str, space: HparamsConfig) -> ParsedSelfEdit:
    """Split a self-edit into training text and settings (never raises for model text).

    With ``space.enabled`` off the text is returned whole with default settings (today's
    behaviour). A missing block gives default settings, or the failure "no hyperparameter
    block" when ``space.required``.
    """
    if not space.enabled:
        return ParsedSelfEdit(text, AdapterSettings())
    body, block = split_block(text, space.marker)
    if block is None:
        if space.required:
            return ParsedSelfEdit(text, None, f"hparams: no block after a {space.marker!r} line")
        return ParsedSelfEdit(text, AdapterSettings())
    try:
        return ParsedSelfEdit(body, parse_block(block, space))
    except HparamsError as e:
        return ParsedSelfEdit(body, None, f"hparams: {e}")


# ----------------------------------------------------------------------------- metrics


def summarize(settings: list[dict]) -> dict:
    """How a set of self-edits chose: ``{"n", "lr", "epochs", "loss_on", "lora_rank"}``.

    ``settings``: one resolved dict per self-edit (:meth:`AdapterSettings.resolve`). ``lr``
    is the geometric mean (learning rates are compared on a log scale), ``epochs`` the mean,
    ``loss_on`` and ``lora_rank`` the share of each value (keys as strings, sorted; shares
    sum to 1). All None / empty when ``settings`` is empty. A list-valued key (a task's set of
    choices, e.g. a list of augmentation families) gives, per member, the share of settings that chose it.
    """
    n = len(settings)

    def shares(key: str) -> dict:
        values = sorted({str(s[key]) for s in settings})
        return {v: sum(str(s[key]) == v for s in settings) / n for v in values}

    out = {
        "n": n,
        "lr": math.exp(sum(math.log(s["lr"]) for s in settings) / n) if n else None,
        "epochs": sum(s["epochs"] for s in settings) / n if n else None,
        "loss_on": shares("loss_on"),
        "lora_rank": shares("lora_rank"),
    }
    # A task's list-valued choices (e.g. augmentation families): the share of settings that chose each member.
    for key in sorted({k for s in settings for k, v in s.items() if isinstance(v, list)}):
        names = sorted({f for s in settings for f in s.get(key, [])})
        out[key] = {f: sum(f in s.get(key, []) for s in settings) / n for f in names}
    return out


def round_summary(chosen: dict[tuple[int, int], dict | None], kept: dict[int, list[int]]) -> dict:
    """A round's hyperparameter metrics: ``{"all": summarize(...), "kept": summarize(...), "n_refused"}``.

    ``chosen``: (passage, self-edit) -> its resolved settings, None when its block was
    refused (counted in ``n_refused``, left out of both summaries). ``kept``: passage ->
    the self-edit indices kept for the policy update (ReST-EM's SFT rows).
    """
    valid = {k: v for k, v in chosen.items() if v is not None}
    kept_keys = [(p, e) for p, edits in kept.items() for e in edits]
    return {
        "all": summarize(list(valid.values())),
        "kept": summarize([valid[k] for k in kept_keys if k in valid]),
        "n_refused": len(chosen) - len(valid),
    }


# ----------------------------------------------------------------------------- prompt


def space_description(space: HparamsConfig) -> str:
    """The declared keys and their allowed values, e.g. ``lr: a number from 1e-05 to 0.001;
    epochs: an integer from 1 to 5`` ("" when nothing is declared)."""
    choices = {
        "lr": lambda r: f"a number from {r.min:g} to {r.max:g}",
        "epochs": lambda r: f"an integer from {r.min} to {r.max}",
        "loss_on": lambda c: "one of " + ", ".join(f'"{v}"' for v in c),
        "lora_rank": lambda c: "one of " + ", ".join(str(v) for v in c),
    }
    return "; ".join(f"{k}: {choices[k](getattr(space, k))}" for k in space.declared())


def prompt_hint(space: HparamsConfig) -> str:
    """The paragraph the self-edit prompt gains (``space.prompt_hint``): where the block goes,
    its format and the declared space. "" when hyperparameter self-edits are off, the hint is
    off, or nothing is declared (the prompt is then the template's alone)."""
    if not (space.enabled and space.prompt_hint) or not space.declared():
        return ""
    keys = space_description(space)
    if space.format == "json":
        form = 'a JSON object such as {"' + space.declared()[0] + '": ...}'
    else:
        form = "one 'key: value' per line"
    return (
        f"After your answer you may choose how it is learned: a line '{space.marker}' followed by "
        f"{form}, with any of these keys ({keys}). Keys left out keep their defaults."
    )


def journal_choices(rows: list[dict]) -> dict[tuple[int, int], dict | None]:
    """(passage, self-edit) -> its settings, from evaluation journal lines: a line's ``hparams``,
    or None for a refused block (``error`` starting "hparams:"). Lines with neither (the
    feature off, or a failure before settings were recorded) are left out."""
    out: dict[tuple[int, int], dict | None] = {}
    for row in rows:
        key = (row["passage"], row["self_edit"])
        if row.get("hparams") is not None:
            out[key] = row["hparams"]
        elif str(row.get("error") or "").startswith("hparams:"):
            out.setdefault(key, None)
    return out
