"""Invertible grid augmentations: the reference's four families (``few-shot/self-edit.py``,
``get_augmenters``; transforms from ``arclib/augmenters.py``).

=========  ===================================================================================
family     augmentations (each applied to every grid of a task, inputs and outputs alike)
=========  ===================================================================================
basic      rotate 90 / 270 / 180, flip rows / columns, reflect (the grid and its mirror image
           side by side, 4 ways), translate (a cyclic shift by (dy, dx) in [0, 4), drawn once
           per task), transpose
size       resolution x2 (each cell becomes 2x2), height x2, width x2
chain      rotate 90 / 270 / 180, flip rows / columns or transpose, each then resolution x2
repeat     the grid tiled 2x vertically, 2x horizontally, 2x2
=========  ===================================================================================

Every augmentation has an exact inverse (:meth:`Augmentation.invert`): the reference inverts
rotations, flips, transposition and colour permutation (``arclib.augmenters.inverse``, used to
map answers to augmented test inputs back); here every one is invertible, which the tests
check on real grids. :func:`permute_colors` (a bijection of colours 1-9, 0 kept) is applied
on top of the chosen families, as the reference does, not chosen by the policy.

Differences from the reference: translation draws one shift per task in [0, 4) (the
reference draws per grid in [0, min(4, side))), and colour permutation is a uniform
permutation of 1-9 (the reference maps used colours to unused ones first). Grids are numpy
int arrays inside this module, :data:`seal.arc.grids.Grid` tuples outside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from seal.arc.config import FAMILIES
from seal.arc.grids import Grid

Array = np.ndarray


@dataclass(frozen=True)
class Augmentation:
    """A named grid transform and its inverse: ``invert(apply(g)) == g`` for every grid ``g``."""

    name: str
    forward: Callable[[Array], Array]
    backward: Callable[[Array], Array]

    def apply(self, grid: Grid) -> Grid:
        """The transformed grid (may be larger than 30 per side: callers drop such tasks)."""
        return to_grid(self.forward(np.asarray(grid, dtype=np.int64)))

    def invert(self, grid: Grid) -> Grid:
        """The grid that :meth:`apply` maps to ``grid``."""
        return to_grid(self.backward(np.asarray(grid, dtype=np.int64)))


def to_grid(array: Array) -> Grid:
    """A 2-D int array as a :data:`Grid` (tuple of tuples of int)."""
    return tuple(tuple(int(c) for c in row) for row in array)


def rotate(degrees: int) -> Augmentation:
    """Counter-clockwise rotation by 90, 180 or 270 degrees (numpy ``rot90``, the reference's)."""
    k = degrees // 90
    return Augmentation(f"rotate{degrees}", lambda g: np.rot90(g, k), lambda g: np.rot90(g, -k))


def flip(axis: int) -> Augmentation:
    """Flip rows (``axis=0``, upside down) or columns (``axis=1``, left-right)."""
    return Augmentation(f"flip{axis}", lambda g: np.flip(g, axis), lambda g: np.flip(g, axis))


def transpose() -> Augmentation:
    """Swap rows and columns."""
    return Augmentation("transpose", lambda g: g.T, lambda g: g.T)


def reflect(axis: int, reverse: bool) -> Augmentation:
    """The grid and its mirror image along ``axis`` side by side (mirror first when
    ``reverse``): doubles that side. Inverse: the original half."""

    def forward(g: Array) -> Array:
        mirror = np.flip(g, axis)
        return np.concatenate((mirror, g) if reverse else (g, mirror), axis=axis)

    def backward(g: Array) -> Array:
        half = g.shape[axis] // 2
        part = slice(half, None) if reverse else slice(0, half)
        return g[part] if axis == 0 else g[:, part]

    return Augmentation(f"reflect{axis}{'r' if reverse else ''}", forward, backward)


def translate(dy: int, dx: int) -> Augmentation:
    """Cyclic shift by ``dy`` rows and ``dx`` columns (``np.roll``)."""
    return Augmentation(f"translate{dy}{dx}", lambda g: np.roll(g, (dy, dx), (0, 1)), lambda g: np.roll(g, (-dy, -dx), (0, 1)))


def scale(rows: int, cols: int) -> Augmentation:
    """Each cell becomes a ``rows x cols`` block. Inverse: every ``rows``-th row, ``cols``-th column."""
    name = "resolution" if rows == cols else ("height" if cols == 1 else "width")
    factor = max(rows, cols)
    return Augmentation(
        f"{name}{factor}", lambda g: np.repeat(np.repeat(g, rows, 0), cols, 1), lambda g: g[::rows, ::cols]
    )


def tile(rows: int, cols: int) -> Augmentation:
    """The grid repeated ``rows`` times vertically and ``cols`` times horizontally. Inverse: the first tile."""

    def backward(g: Array) -> Array:
        return g[: g.shape[0] // rows, : g.shape[1] // cols]

    return Augmentation(f"repeat{rows}x{cols}", lambda g: np.tile(g, (rows, cols)), backward)


def chain(first: Augmentation, then: Augmentation) -> Augmentation:
    """``then`` after ``first``; inverted in the opposite order."""
    return Augmentation(
        f"{first.name}+{then.name}", lambda g: then.forward(first.forward(g)), lambda g: first.backward(then.backward(g))
    )


def permute_colors(rng: np.random.Generator) -> Augmentation:
    """A random bijection of colours 1-9 (0, the background, stays), drawn from ``rng``."""
    table = np.concatenate(([0], rng.permutation(9) + 1))
    inverse = np.argsort(table)
    return Augmentation("colors" + "".join(str(c) for c in table[1:]), lambda g: table[g], lambda g: inverse[g])


def family(name: str, rng: np.random.Generator) -> list[Augmentation]:
    """The augmentations of one family (module table), in the reference's order; ``rng``
    draws the translation of ``basic``.

    Raises:
        ValueError: unknown family.
    """
    if name == "basic":
        dy, dx = (int(v) for v in rng.integers(0, 4, size=2))
        return [
            rotate(90), rotate(270), rotate(180), flip(0), flip(1),
            reflect(0, True), reflect(1, True), reflect(0, False), reflect(1, False),
            translate(dy, dx), transpose(),
        ]  # fmt: skip
    if name == "size":
        return [scale(2, 2), scale(2, 1), scale(1, 2)]
    if name == "chain":
        return [chain(a, scale(2, 2)) for a in (rotate(90), rotate(270), rotate(180), flip(0), flip(1), transpose())]
    if name == "repeat":
        return [tile(2, 1), tile(1, 2), tile(2, 2)]
    raise ValueError(f"unknown augmentation family {name!r}; known: {', '.join(FAMILIES)}")
