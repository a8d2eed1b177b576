"""A CPU-scale knowledge world in which SEAL visibly learns (issue 6).

* :mod:`seal.microworld.world`: fictional people, passages, questions, self-edit styles
  (:func:`classify_style`) and copy-skill statistics;
* :mod:`seal.microworld.corpus`: the pretraining corpus (memorised biographies + QA, and
  self-edit demonstrations on fresh people);
* :mod:`seal.microworld.pretrain`: pretraining a small Llama from scratch and the cache
  (:func:`ensure_microworld`);
* :mod:`seal.microworld.measure`: no-passage accuracy after the inner loop
  (``seal.inner_loop``) on each style of self-edit and on the policy's samples.
"""

from seal.microworld.pretrain import PretrainConfig, ensure_microworld, pretrain
from seal.microworld.world import STYLES, WorldConfig, classify_style, make_world

__all__ = [
    "PretrainConfig",
    "STYLES",
    "WorldConfig",
    "classify_style",
    "ensure_microworld",
    "make_world",
    "pretrain",
]
