"""Shared fixtures: offline mode, the shared data folder, and tiny local models built once."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Tiny models run fastest on one thread, and 2 threads collapse (100x) when the cores are
# shared with other processes; subprocesses (CLI and distributed tests) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from seal.data import default_data_root, load_passages  # noqa: E402


@pytest.fixture(scope="session")
def data_root():
    root = default_data_root()
    if not (root / "squad" / "train_100.json").is_file():
        pytest.fail(f"shared data not found at {root}; set SEAL_DATA_DIR")
    return root


@pytest.fixture(scope="session")
def squad_train(data_root):
    return load_passages("squad/train_100.json", root=data_root)


@pytest.fixture(scope="session")
def tiny_squad_model(tmp_path_factory, squad_train):
    """A tiny random Llama (2 layers, width 32) with a BPE tokenizer trained on SQuAD text."""
    from seal.models import build_tiny_model

    texts = [t for p in squad_train[:40] for t in (p.title, p.context, *(q.question + " " + q.answer for q in p.questions))]
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts, vocab_size=512, hidden_size=32, num_layers=2, num_heads=2)
