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

Every JSON file is strict JSON (RFC 8259): a non-finite number (NaN, +-inf, which JSON cannot
express) is written as ``null``, "no number", as :func:`finite_json` says; a strict reader
(``jq``, JavaScript, Go) reads every file seal writes.

Ownership and the lock
----------------------
Commands that write a run directory (``seal train``, ``seal bench``, ``seal evaluate``,
``seal microworld demo``) first claim it with :func:`hold_run_dir`: seal writes only into a new
or empty directory, or one it created before (it holds the marker file ``.seal-run``); any
other folder, or a path that is a file, is refused (:class:`~seal.errors.RunDirError`)
before anything is written. A directory written by a seal version older than the marker (it
holds ``config.yaml`` and seal's ``run.json``) is adopted. The marker is also the lock: an
exclusive ``flock`` held for the whole command by the main process (rank 0 under accelerate;
the other ranks share its directory and lock nothing), with the holder's pid written in it. A
second process on the same directory is refused at once (:class:`~seal.errors.RunDirBusyError`,
naming that pid); the kernel releases a lock when its process dies, so a crashed run's
directory resumes without any cleaning. ``flock`` is per machine on some network file
systems (old NFS): two machines writing one shared run directory are not stopped there.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import math
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
from seal.errors import DISK_FULL_ERRNOS, RunDirBusyError, RunDirError


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


def _named(e: OSError, path: Path) -> OSError:
    """``e`` with ``path`` as its file name when it has none (a write or fsync error names no
    file), so a full disk's message can say which file; other errors unchanged."""
    if e.errno in DISK_FULL_ERRNOS and not e.filename:
        return OSError(e.errno, e.strerror, str(path))
    return e


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder, fsync, then rename.

    On any error (a full disk, say) the temporary file is removed and the previous
    ``path``, if any, is untouched.

    Raises:
        OSError: as the file system reports it; a full disk's error (``ENOSPC``) names ``path``.
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
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        named = _named(e, path)
        if named is e:
            raise
        raise named from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by None, containers copied.

    JSON has no NaN or infinity (RFC 8259); ``json.dumps`` writes the non-standard tokens
    ``NaN``/``Infinity`` by default, which strict readers reject. seal writes "no number"
    (``null``) instead: what a reader of a reward, loss or accuracy gets for one that is not a
    number (``inner.failure_reward: .nan`` is refused at recipe load; a diverged loss can
    still be NaN).
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj`` (non-finite numbers as ``null``: :func:`finite_json`)."""
    return json.dumps(finite_json(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic strict-JSON write (indent 2; non-finite numbers as ``null``)."""
    return write_text_atomic(path, json_text(obj, indent=2) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Atomic strict JSON-lines write (non-finite numbers as ``null``)."""
    return write_text_atomic(path, "".join(json_text(r) + "\n" for r in rows))


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
    line = (json_text(row) + "\n").encode("utf-8")
    try:
        with open(path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        named = _named(e, Path(path))
        if named is e:
            raise
        raise named from e


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
        """The resolved recipe this run was started with.

        Raises:
            RunDirError: ``config.yaml`` cannot be read, is not YAML, or is not a mapping
                (the message names the file).
        """
        path = self.path / "config.yaml"
        try:
            recorded = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            why = getattr(e, "problem", None) or getattr(e, "strerror", None) or type(e).__name__
            raise RunDirError(f"{path}: the run's recorded recipe cannot be read ({why}); restore it from a copy, or start a new run in another directory") from None
        if not isinstance(recorded, dict):
            raise RunDirError(f"{path}: the run's recorded recipe is not a mapping of sections (got {type(recorded).__name__}); restore it from a copy, or start a new run in another directory")
        return recorded

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


# ----------------------------------------------------------------------------- ownership and the lock

MARKER = ".seal-run"
"""The file that marks a directory seal created, and whose ``flock`` is the run's lock."""

# Directories this process holds: resolved path -> [file descriptor, depth]. A command that
# runs another in the same directory (microworld demo -> train) takes the lock once.
_HELD: dict[Path, list[int]] = {}


def _legacy_run(path: Path) -> bool:
    """A run directory written before the marker existed: seal's ``config.yaml`` and a
    ``run.json`` with the seeds and versions seal records."""
    try:
        info = json.loads((path / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return (path / "config.yaml").is_file() and isinstance(info, dict) and {"seeds", "versions"} <= info.keys()


def _holder(fd: int) -> str:
    """The pid (and host) the lock holder wrote in the marker, as words."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {int(info['pid'])} on {info.get('host', '?')}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown (it is starting)"


def claim_run_dir(path: str | os.PathLike, create: bool = True) -> int:
    """Claim ``path`` for seal and lock it; returns the marker's file descriptor (the lock).

    The directory may not exist (it is created, unless ``create`` is off: a resume), be empty, hold seal's marker, or be a run
    written before the marker existed (:func:`_legacy_run`, adopted); the module docstring
    has the rules. The lock is an exclusive, non-blocking ``flock`` on the marker; the holder's
    pid, host and start time are written into it.

    Raises:
        RunDirError: ``path`` is a file, missing (``create`` off), or a non-empty folder seal
            did not create (the message lists a few of its entries); nothing is written.
        RunDirBusyError: another live process holds the lock (the message names its pid).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} is a file, not a directory: choose a new or empty directory for the run")
    created = not path.exists()
    if created and not create:
        raise RunDirError(f"cannot resume {path}: no such directory")
    marker = path / MARKER
    if not created and not marker.exists():
        entries = sorted(p.name for p in path.iterdir())
        if entries and not _legacy_run(path):
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise RunDirError(
                f"{path} is not empty and was not created by seal (it holds {shown}); seal writes only into "
                "a new or empty directory or one of its own runs: choose another directory"
            )
    path.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _holder(fd)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise RunDirBusyError(
                f"{path} is in use by another seal process ({holder}); wait for it to finish, or stop it, "
                "then --resume; or choose another directory"
            ) from None
        raise
    info = {"seal": "run directory", "pid": os.getpid(), "host": platform.node(), "since": _dt.datetime.now().isoformat(timespec="seconds")}
    data = (json.dumps(info) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    except OSError:
        os.close(fd)  # releases the lock
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return fd


@contextmanager
def hold_run_dir(path: str | os.PathLike, lock: bool = True, create: bool = True) -> Iterator[Path]:
    """Claim and lock ``path`` (:func:`claim_run_dir`, ``create`` as there) for the block;
    released at its end (and by the kernel if the process dies). Re-entrant within a process.
    ``lock=False`` (ranks other than the main one) does nothing. A directory created here that
    still holds nothing but the marker when the block raises (a start refused after the claim)
    is removed: a refused start leaves nothing behind.

    Raises:
        RunDirError, RunDirBusyError: as :func:`claim_run_dir`.
    """
    path = Path(path)
    if not lock:
        yield path
        return
    created = not path.exists()
    key = path.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        created = False
    else:
        _HELD[key] = [claim_run_dir(path, create), 1]
    failed = True
    try:
        yield path
        failed = False
    finally:
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            os.close(_HELD.pop(key)[0])
            if failed and created and {p.name for p in path.iterdir()} <= {MARKER}:
                shutil.rmtree(path, ignore_errors=True)
