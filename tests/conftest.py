"""Shared fixtures: offline mode, the shared data folder, and tiny local models built once;
and how pytest-xdist spreads the suite over the cores (``addopts`` in pyproject.toml)."""

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

#: Most workers ``-n auto`` starts: the longest test (the microworld demo, ~9 min on an idle
#: core with its pretraining) bounds the wall time, and the rest is ~12 core-minutes, so more
#: workers gain little and add memory (each holds torch and its runs' models, up to ~1 GB).
MAX_AUTO_WORKERS = 8

#: Test files started first (the longest, measured with ``--durations``): with ``--dist
#: loadfile`` and ``--no-loadscope-reorder`` files are handed out in collection order, so one
#: worker starts the microworld demo and the others run the rest meanwhile; started last, it
#: would run alone at the end.
FIRST = ("test_microworld_learns.py",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per CPU this process may run on (``os.sched_getaffinity``, so a
    container's or ``taskset``'s share, not the host's cores), at most :data:`MAX_AUTO_WORKERS`;
    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` overrides, as in pytest-xdist's own rule."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").isdigit():
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_AUTO_WORKERS))


def pytest_collection_modifyitems(config, items):
    """The files of :data:`FIRST` first (each file's tests keep their order)."""
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))


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
