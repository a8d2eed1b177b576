"""The one base class of user errors, and how the ``seal`` command reports them.

Every error that a user can fix (a recipe key, a data file, a run directory, a judge key, a
model path, a full disk) is a :class:`SealError`: ``RecipeError``, ``DataError``,
``PromptError``, ``JudgeError``, ``CopySkillError``, ``ShardingError``, and the errors below
derive from it. The command line prints such an error as one line (the file, key or passage
and what to do) and exits with :data:`USER_ERROR_EXIT` (2), without a traceback; ``seal
--debug ...`` shows the traceback. Anything else is a bug and keeps its traceback.

This module imports nothing from seal, so that every module can import it.
"""

from __future__ import annotations

import errno

USER_ERROR_EXIT = 2
"""Exit status of a command refused by a :class:`SealError` (typer's own usage errors, such
as an unknown option, exit 2 as well); a run stopped by :class:`RoundFailedError` exits 3."""

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""``OSError.errno`` values that mean the disk (or the user's quota) is full."""


class SealError(Exception):
    """An error the user can fix. The message names the file, key or passage and what to do."""

    exit_status: int = USER_ERROR_EXIT


class RunDirError(SealError):
    """A run directory seal may not use: not a directory, or a folder seal did not create
    (``seal.rundir.claim_run_dir``), or one whose recorded recipe is damaged."""


class RunDirBusyError(RunDirError):
    """Another live process holds the run directory's lock; the message names its pid."""


class ModelNotFoundError(SealError):
    """``model.name_or_path`` (or a policy to load) is neither a model directory nor a hub id
    that can be loaded."""


class RoundFailedError(SealError):
    """A ``seal train`` round produced no usable evaluation (every one failed, or nothing was
    graded); the message summarises the reasons (``seal.stages.check_round_usable``). Exit
    status 3: the run ran, and stopped, rather than being refused."""

    exit_status = 3


def disk_full_message(e: OSError, where: str | None = None) -> str:
    """The one line for a full disk: which file, and that finished work is kept.

    ``where`` names the run directory (and the command to continue) when known.
    """
    target = f" writing {e.filename}" if e.filename else ""
    kept = (
        f"; everything finished before it is on disk in {where}: free some space and continue with --resume"
        if where
        else "; free some space and run the command again"
    )
    return f"no space left on the device{target} ({e.strerror or 'ENOSPC'}){kept}"
