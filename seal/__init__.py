"""SEAL: self-adapting language models (Zweiger et al. 2025, arXiv 2506.10943).

The distribution is ``seal-rl`` (``pip install seal-rl``); the import name and the command
are ``seal``.
"""

__version__ = "0.1.0"
DISTRIBUTION = "seal-rl"
