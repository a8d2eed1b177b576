"""A CPU-scale knowledge world in which SEAL visibly learns .

* :mod:`seal.microworld.world`: fictional people, passages, questions, self-edit styles
  (:func:`classify_style`) and copy-skill statistics;
* :mod:`seal.microworld.corpus`: the pretraining corpus (memorised biographies + QA, and
  self-edit demonstrations on fresh people);
* :mod:`seal.microworld.config`: the settings (:class:`PretrainConfig`) and the cache key;
* :mod:`seal.microworld.pretrain`: pretraining a small Llama from scratch and the cache
  (:func:`ensure_microworld`);
* :mod:`seal.microworld.demo`: ``seal microworld demo`` (pretrain or reuse, ReST-EM, bench).

``benchmarks/microworld_styles.py`` measures no-passage accuracy after the inner loop on each
style of self-edit and on the policy's samples.
"""

# Submodules are imported where used (``from seal.microworld.pretrain import ensure_microworld``):
# seal.config imports seal.microworld.config, which must not pull in torch.
