"""Ranks, sharding and collectives for ``seal train`` under ``accelerate launch`` (or torchrun).

``seal train`` runs unchanged with one process or many: each process ("rank") holds its
own replica of the base model and works through its share of a round; results meet
through ``torch.distributed`` object collectives (gloo on CPU, NCCL on GPUs). Nothing here
is a server of our own: the process group is the one ``accelerate`` (``PartialState``)
sets up from the launcher's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...).

Unlaunched (plain ``seal train``) it is one process of rank 0 and every collective is the
identity.

Work is split by *unit index*, round-robin: unit ``i`` of a list goes to rank
``i % world_size``. Units are fixed by the recipe (a chunk of self-edit prompts, a chunk
of ``inner.batch_adapters`` evaluations), never by the number of processes, so each unit
is computed exactly as a single process computes it and the gathered results are the same.

With ``model.shard: fsdp`` (``seal.sharding``) the ranks instead share one base model
sharded across them, so every rank computes every unit in step and the main process
records (``seal.stages.Round.sharded``).

Difference from the reference implementation: there, one single-threaded ZMQ server per
GPU pair trains adapters for a driver process; here every rank is a full worker and no
extra server or port is involved beyond the process group itself.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

TIMEOUT_ENV = "SEAL_DIST_TIMEOUT_S"
"""Environment variable: seconds a collective may wait for the slowest rank (default 6 h).

Ranks meet once per round stage; the slowest rank's share of a stage can be long on big
models (hours of inner loops on a 7B model), much longer than torch's 10-30 minute
default. A rank that dies is noticed by the launcher (torchrun / accelerate), which stops
the others, so a long timeout does not leave a job hanging."""

DEFAULT_TIMEOUT_S = 6 * 3600


class Dist:
    """This process's place in the job: ``rank``, ``world_size``, ``is_main``, plus collectives.

    Built from ``accelerate.PartialState`` (``cpu=True`` when no CUDA device is visible, so
    that CPU processes join a gloo group). ``rank``/``world_size`` are read once and kept:
    the HF ``Trainer`` resets accelerate's shared state when it builds its own, the process
    group stays.
    """

    def __init__(self):
        # torch and accelerate are imported where used: the CLI imports this module at start-up.
        import torch
        from accelerate import PartialState

        timeout = _dt.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        kwargs = {"timeout": timeout} if launched else {}
        state = PartialState(cpu=not torch.cuda.is_available(), **kwargs)
        self.rank: int = int(state.process_index)
        self.world_size: int = int(state.num_processes)
        self.local_rank: int = int(state.local_process_index)
        self.is_main: bool = self.rank == 0
        self.backend: str | None = state.backend

    def __repr__(self) -> str:
        return f"Dist(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r})"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def mine(self, n: int) -> list[int]:
        """The unit indices in ``range(n)`` this rank works on: ``i % world_size == rank``."""
        return [i for i in range(n) if i % self.world_size == self.rank]

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's round-robin share of ``items`` (in order)."""
        return [items[i] for i in self.mine(len(items))]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), indexed by rank, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj`` on every rank (other ranks' values are ignored)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def main_decides(self, fn, *args, **kwargs):
        """Run ``fn`` on the main process only and return its result on every rank.

        An exception in ``fn`` is re-raised on every rank (same type when it can be rebuilt
        from its message, else ``RuntimeError``), so all ranks fail together and none hangs.
        """
        result, error = None, None
        if self.is_main:
            try:
                result = fn(*args, **kwargs)
            except Exception as e:  # sent to the other ranks, then re-raised everywhere
                error = e
        if not self.distributed:
            if error is not None:
                raise error
            return result
        result, kind, msg = self.broadcast(
            (result, None, None) if error is None else (None, type(error), str(error))
        )
        if error is not None:
            raise error
        if kind is not None:
            try:
                exc = kind(msg)
            except Exception:
                exc = RuntimeError(f"{kind.__name__}: {msg}")
            raise exc
        return result


_DIST: Dist | None = None


def get_dist() -> Dist:
    """The process-wide :class:`Dist` (created on first use)."""
    global _DIST
    if _DIST is None:
        _DIST = Dist()
    return _DIST


@contextmanager
def main_process_first():
    """Run the block on the main process first, then on the others (e.g. building a tiny model
    that every rank then loads)."""
    dist = get_dist()
    if not dist.is_main:
        dist.barrier()
    yield
    if dist.is_main:
        dist.barrier()
