"""Seeds derived from the recipe seed and a draw's identity, never from the clock.

The reference implementation seeds from the wall clock, so no two runs agree. Here every
random draw (a self-edit chunk's sampling, an adapter's initialisation and data order)
gets ``derive_seed(recipe.seed, *identity)``: a resumed or re-sharded run draws the same.
"""

from __future__ import annotations

import hashlib
import random


def derive_seed(seed: int, *identity: object) -> int:
    """A 63-bit seed from ``seed`` and an identity tuple, e.g. ``("adapter", round, passage, edit, rep)``.

    Stable across processes, machines and Python versions (SHA-256 of the repr of the parts).
    """
    key = repr((int(seed),) + tuple(identity)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (for library code we do not control)."""
    import numpy as np  # here, so that derive_seed (used by recipes' validation) needs no torch
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
