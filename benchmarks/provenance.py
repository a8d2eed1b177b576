"""Where a benchmark's figures came from: the command, commit, CPU and date, stamped into every
results file the benchmarks write, and the committed copies under ``docs/results/`` that the
README's figure tables are built from (``tests/test_readme_results.py`` checks every number).

Usage from a benchmark script::

    from provenance import write_results
    write_results(path, {"rows": rows}, published=args.results)

``published``: also write the file to this path (e.g. ``docs/results/microworld_seeds.json``)
for committing beside the README.
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu_info() -> dict:
    """``lscpu``'s model name, CPU family and model (the floating-point behaviour of training
    from scratch differs between CPU families, so every figure names its machine)."""
    fields = {"Model name": "model_name", "CPU family": "family", "Model": "model", "CPU(s)": "cpus"}
    out: dict = {"model_name": platform.processor() or None}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in fields:
            out[fields[key.strip()]] = value.strip()
    return out


def stamp(argv: list[str] | None = None) -> dict:
    """The provenance block: ``command`` (this process's argv), ``commit`` (HEAD, ``+dirty``
    when the tree has uncommitted changes outside the results folders), ``cpu`` (:func:`cpu_info`), ``date`` (UTC, ISO
    8601), ``python`` and ``torch`` versions."""
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    commit = _git("rev-parse", "--short", "HEAD")
    # dirty: code or recipes changed; results files being written by this very run do not count
    if commit and _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/results", ":!benchmarks/results"):
        commit += "+dirty"
    return {
        "command": " ".join(["python", *(sys.argv if argv is None else argv)]),
        "commit": commit,
        "cpu": cpu_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch_version,
    }


def write_results(path: str | Path, payload: dict, published: str | Path | None = None) -> dict:
    """Write ``payload`` with a ``provenance`` block (:func:`stamp`) to ``path`` and, when given,
    to ``published`` too (strict JSON: a NaN raises ``ValueError`` rather than write a file a
    reader rejects). Returns what was written."""
    data = {"provenance": stamp(), **payload}
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    for p in [path] + ([published] if published else []):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        Path(p).write_text(text)
    return data
