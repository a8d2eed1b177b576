"""A frozen base model sharded across the job's processes with PyTorch FSDP2 (``model.shard: fsdp``).

For base models larger than one GPU (Qwen2.5-32B/72B in bf16: ~64/145 GB of weights). Each
decoder layer, and then the whole model (embeddings, final norm, LM head), is wrapped by
``torch.distributed.fsdp.fully_shard`` over a 1-D mesh of every rank of the job: a rank
keeps ``1 / world_size`` of each weight and all-gathers a layer's full weights just before
its forward, freeing them again after it (``reshard_after_forward=True``); backward through
a layer all-gathers it once more. No parameter of the base has a gradient, so nothing is
reduce-scattered: the base needs no gradient synchronisation. Nothing here shards by hand.

Consequence for the work split: a forward pass is a collective, so *every rank must run
the same forward passes in the same order*. ``seal train`` therefore gives every rank the
same units of work (``seal.stages.run_stage``); the LoRA bank (``seal.multi_lora``) is
replicated, each rank computes the same inputs, the same all-gathered weights and so the
same gradients, bit for bit, so the banks stay equal without any all-reduce, and only the
main process records results. The cost: no speed-up from more GPUs (each evaluation takes
about what it takes on one GPU, plus the all-gathers: every forward pass, each decoding step
included, moves ``(world_size - 1) / world_size`` of the model's bytes into each rank); the
gain is memory: ``1 / world_size`` of the base per GPU (plus one layer gathered at a time,
and the root's embeddings and head while they are in use).

The alternative, splitting a step's rows between the ranks (data parallel over rows, the
bank's gradient all-reduced), would be faster (each rank about ``1 / world_size`` of the
passes) but needs more machinery: every rank must still run the same number of passes
(micro-batches are cut by length, so a rank short of rows runs empty ones), the whole
bank's ``(S, D)`` gradient is all-reduced every step, generation rows are split with the
decoding steps kept in lockstep, and the gradients' summation order changes, so results
would equal one process's only to float tolerance. Identical work is the simplest correct
design and keeps exact equality; rows in parallel is the follow-up for speed.

Keeping the ranks in step on GPUs. The same inputs give the same forward outputs, but some
CUDA backward kernels add in a nondeterministic order (``index_add``, atomics), so the
replicated banks may drift apart by rounding; the control flow must not. Three small
collectives see to it (all no-ops unless the model is sharded): a training step's "which
slots may step" flags are AND-ed over the ranks (:func:`all_ranks_agree`), the bank is
copied from the main process before it answers (:func:`copy_from_main`: the answers are
then the main process's own), and greedy decoding stops when every rank's rows have ended.
A failure that strikes one rank only (out of memory on one GPU) still splits the ranks: the
launcher's timeout (``SEAL_DIST_TIMEOUT_S``) then ends the job, and ``--resume`` continues it.

Inference mode: FSDP2 writes its all-gathered weights in place into buffers it keeps
between passes, and a buffer first made under ``torch.inference_mode`` can never be written
outside it again (training after a generation would fail with "Inplace update to inference
tensor outside InferenceMode"). :func:`no_grad_for` gives ``torch.no_grad`` for a sharded
model and ``torch.inference_mode`` otherwise (the same numbers either way).

torch is imported where used: ``seal.config`` reads :data:`SHARD_MODES` at CLI start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from seal.errors import SealError

SHARD_MODES = ("none", "fsdp")
"""Values of ``model.shard``: 'none' (every rank holds the whole base model, today's
behaviour) or 'fsdp' (the base is sharded over the job's ranks, FSDP2)."""

FORWARD_METHOD = "seal_forward"
"""Name of the extra forward method a sharded model gets (:func:`run_forward`)."""


class ShardingError(SealError, RuntimeError):
    """A model cannot be sharded (no process group, no decoder layers found) or an operation
    does not support a sharded model (merging an adapter into the base weights)."""


def is_sharded(model: Any) -> bool:
    """True when ``model`` was wrapped by FSDP2 (:func:`shard_model`)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without distributed support
        return False
    return isinstance(model, FSDPModule)


def decoder_layers(model) -> list:
    """The modules of ``model`` whose class is named in its ``_no_split_modules`` (HF's list of
    transformer blocks, e.g. ``Qwen2DecoderLayer``; accelerate's FSDP auto-wrap uses it too).

    Raises:
        ShardingError: the model names no such class, or none of its modules has one.
    """
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ShardingError(f"{type(model).__name__} names no decoder-layer class (_no_split_modules={sorted(names)}); cannot shard it")
    return layers


def shard_model(model, device_type: str):
    """Shard a frozen base model over every rank of the initialised process group (FSDP2).

    Args:
        model: a Hugging Face causal LM (any device; FSDP2 moves each shard to this rank's
            ``device_type`` device, the current CUDA device for ``'cuda'``). Its parameters
            are set to ``requires_grad=False`` for good: a sharded base is never trained.
        device_type: ``'cuda'`` or ``'cpu'`` (gloo, for tests).

    Returns the same object, now an ``FSDP<Class>`` instance whose parameters are
    ``DTensor`` shards (dim 0 split in ``world_size`` parts), with :data:`FORWARD_METHOD`
    registered as an FSDP forward method (:func:`run_forward`).

    Raises:
        ShardingError: no process group, or no decoder layers (:func:`decoder_layers`).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    if not (dist.is_available() and dist.is_initialized()):
        raise ShardingError("model.shard: fsdp needs a process group (launch with accelerate or torchrun)")
    layers = decoder_layers(model)
    for p in model.parameters():
        p.requires_grad_(False)
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    # An instance attribute: FSDP2 wraps it in its pre/post-forward hooks (all-gather of the
    # root's embeddings, norm and head) like forward itself.
    setattr(model, FORWARD_METHOD, _call)
    register_fsdp_forward_method(model, FORWARD_METHOD)
    return model


def _call(fn: Callable, *args, **kwargs):
    return fn(*args, **kwargs)


def run_forward(model, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` as a forward pass of ``model``.

    A sharded model's root parameters (embeddings, final norm, LM head) are all-gathered only
    around ``model(...)``; code that calls its parts (``model.model`` then ``model.lm_head``,
    to compute logits at a few positions only) goes through here so that they are gathered
    too. An unsharded model: a plain call.
    """
    if is_sharded(model):
        return getattr(model, FORWARD_METHOD)(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def no_grad_for(model) -> AbstractContextManager:
    """``torch.no_grad()`` for a sharded model, ``torch.inference_mode()`` otherwise (see the
    module docstring: FSDP2's reused buffers must not become inference tensors)."""
    import torch

    return torch.no_grad() if is_sharded(model) else torch.inference_mode()


def all_ranks_agree(model, flags):
    """Element-wise AND of a bool tensor over the ranks that share a sharded ``model``.

    Args:
        flags: a bool tensor of the same shape on every rank (e.g. ``(S,)`` per slot).

    Returns a bool tensor on ``flags``' device: ``flags`` itself when the model is not
    sharded, else True where it is True on every rank (one ``all_reduce(MIN)``).
    """
    if not is_sharded(model):
        return flags
    import torch
    import torch.distributed as dist

    both = flags.to(torch.int32)
    dist.all_reduce(both, op=dist.ReduceOp.MIN)
    return both.bool()


def copy_from_main(model, tensor) -> None:
    """Overwrite ``tensor`` (any dtype/shape, same on every rank) in place with the main
    process's values when ``model`` is sharded (one broadcast from rank 0); else nothing."""
    if not is_sharded(model):
        return
    import torch.distributed as dist

    dist.broadcast(tensor.detach(), src=0)
