"""Run directories: the resolved recipe, versions and seeds, an append-only journal, atomic files.

Layout of ``seal train``'s run directory::

    config.yaml          resolved recipe (no secrets: the judge key is only an env var name)
    run.json             library versions, machine, seeds, command line, start time, the model
                         (name, revision, the commit it resolved to), launches
    journal.jsonl        one line per inner-loop evaluation, flushed and fsynced when it ends
    metrics.jsonl        one line per finished round
    round_0/             self_edits.json, sft_rows.jsonl, metrics.json, policy/ (merged) and/or
                         adapter/ (an adapter chain; rl.save)
    ...

Finished work is never lost: journal lines are appended and fsynced one by one, and every
other file is written to a temporary name and renamed into place (atomic on POSIX).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from seal.env import cpu_model, library_versions


def machine_info() -> dict[str, Any]:
    """Python, platform, CPU count and, when present, the CUDA devices."""
    import torch  # here: reading and writing run directories needs no torch (seal bench reports)

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder, fsync, then rename.

    On any error (a full disk, say) the temporary file is removed and the previous
    ``path``, if any, is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # not the locale's: readers decode UTF-8
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON write (indent 2)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Atomic JSON-lines write."""
    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` whole.

    A crash or error inside the block leaves ``path`` as it was (a previous checkpoint
    survives) and removes the temporary folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one JSON line and fsync it, so a finished record survives a crash right after."""
    line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    with open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file written by :func:`write_json_atomic` (UTF-8)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file, skipping (with a warning) lines that are not one JSON object.

    The file is read as bytes and split on ``\n`` only: a record whose strings hold U+2028,
    U+0085 or other characters that ``str.splitlines`` treats as line breaks (written raw,
    ``ensure_ascii=False``) stays whole. A crash mid-append leaves at most one partial last
    line, possibly cut inside a multi-byte UTF-8 character; it, and any line that is not
    UTF-8, not JSON or not an object, is skipped with a warning and the rest kept (a resume
    recomputes what it held).
    """
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for n, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            warnings.warn(f"{path}:{n}: skipping a corrupt (partially written) journal line", stacklevel=2)
    return rows


def default_run_dir(output_dir: str, name: str) -> Path:
    """``<output_dir>/<name>-<YYYYmmdd-HHMMSS>``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(output_dir) / f"{name}-{stamp}"


class RunDir:
    """A run directory (layout in the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def journal(self) -> Path:
        return self.path / "journal.jsonl"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def round_dir(self, r: int) -> Path:
        return self.path / f"round_{r}"

    def exists(self) -> bool:
        return (self.path / "config.yaml").exists()

    def recorded_config(self) -> dict:
        """The resolved recipe this run was started with."""
        return yaml.safe_load((self.path / "config.yaml").read_text())

    def start(self, config: dict, seeds: dict, argv: list[str] | None = None) -> None:
        """Create the folder and record the resolved config, versions, machine and seeds."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        write_json_atomic(
            self.path / "run.json",
            {
                "started": _dt.datetime.now().isoformat(timespec="seconds"),
                "argv": argv if argv is not None else sys.argv,
                "seeds": seeds,
                "versions": library_versions(),
                "machine": machine_info(),
            },
        )


def read_json_or_none(path: str | os.PathLike) -> Any:
    """:func:`read_json` of ``path``, or None when it does not exist (a stage not finished yet)."""
    path = Path(path)
    return read_json(path) if path.exists() else None


def portable_path(run: RunDir, path: str | os.PathLike) -> str:
    """``path`` relative to the run directory when it lies inside it (``round_0/policy``), so a
    run directory can be moved or copied and still resumed; anything else (a hub id, a base
    model folder) as given."""
    try:
        return str(Path(path).resolve().relative_to(run.path.resolve()))
    except (ValueError, OSError):
        return str(path)


def resolve_policy(run: RunDir, recorded: str) -> str:
    """The model a recorded policy names: a path inside the run directory, or as recorded."""
    inside = run.path / recorded
    return str(inside) if not Path(recorded).is_absolute() and inside.exists() else recorded
