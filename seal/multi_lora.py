"""Stacked LoRA: N independent adapters over one frozen model, each batch row routed to its own.

PEFT keeps one active adapter per forward pass, so N adapters cost N passes. Here the N
adapters' weights live side by side in one fp32 tensor and every batch row names the
adapter ("slot") it goes through, so one forward/backward pass over the frozen base model
trains or evaluates all of them (Hu et al. 2021 for LoRA; the batching is ours).

For every target ``nn.Linear`` W (``in -> out``) and a row routed to slot i::

    y = W x + (alpha / r) * B_i (A_i dropout(x))        A_i: r x in,  B_i: out x r

The same formula as PEFT's ``lora.Linear`` (which computes in the adapter's dtype, fp32
here, and casts the sum back to the base output's dtype).

Layout: ``LoraBank.params`` is one fp32 tensor of shape ``(N + 1, D)``: row i is slot i's
A and B of every target, flattened and concatenated (``D = sum over targets of
r * (in + out)``). Slot N is the *null slot*: all zeros and never updated, so a row routed
to it (index -1) gets exactly the base model's output. One tensor per bank makes the
optimizer a handful of vectorised ops over all slots and layers (on the CPU, row by row
through the cache), and the per-row weights one ``index_select`` per forward pass instead of
one per layer.

Routing: ``LoraBank.set_rows(slots)`` (a ``(batch,)`` long tensor, -1 = base model) before
the forward pass; forward hooks on the target modules read it. Hooks leave the model's
module tree, ``parameters()`` and ``state_dict()`` untouched; ``detach()`` removes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from seal.config import LoraConfig


class LoraTargetError(ValueError):
    """No module of the model matches the LoRA target names, or a match is not a Linear."""


@dataclass(frozen=True)
class LoraTarget:
    """One adapted linear layer and where its A and B sit in a slot's flat vector.

    Attributes:
        name: the module's qualified name in the model (e.g. ``model.layers.0.self_attn.q_proj``).
        module: the frozen ``nn.Linear``.
        a_offset: start of A (``r * in_features`` values, row-major ``r x in``).
        b_offset: start of B (``out_features * r`` values, row-major ``out x r``).
    """

    name: str
    module: nn.Linear
    a_offset: int
    b_offset: int

    @property
    def in_features(self) -> int:
        return self.module.in_features

    @property
    def out_features(self) -> int:
        return self.module.out_features


def find_targets(model: nn.Module, target_modules: list[str]) -> list[tuple[str, nn.Linear]]:
    """``(name, module)`` of every module whose name is, or ends with ``.`` + one of, ``target_modules``.

    PEFT's matching rule for a list of names. Modules in ``model.named_modules()`` order.

    Raises:
        LoraTargetError: nothing matches, or a match is not an ``nn.Linear``.
    """
    out = []
    for name, module in model.named_modules():
        if not any(name == t or name.endswith("." + t) for t in target_modules):
            continue
        if not isinstance(module, nn.Linear):
            raise LoraTargetError(
                f"LoRA target {name!r} is a {type(module).__name__}, not nn.Linear"
            )
        out.append((name, module))
    if not out:
        raise LoraTargetError(
            f"no module of the model matches lora.target_modules={target_modules}"
        )
    return out


class LoraBank:
    """``n_adapters`` LoRA adapters (plus the null slot) attached to a frozen model by forward hooks.

    Args:
        model: the base model; its weights are never written (except by :meth:`merge_into_base`).
        lora: rank, alpha, dropout and target module names.
        n_adapters: N, the number of trainable slots.

    Attributes:
        params: ``(N + 1, D)`` float32 leaf tensor on the model's device, ``requires_grad``.
        targets: the adapted layers, with their offsets into a slot's row of ``params``.
        scale: ``alpha / rank`` (PEFT's default scaling, not rsLoRA).

    Raises:
        LoraTargetError: see :func:`find_targets`.
    """

    def __init__(self, model: nn.Module, lora: LoraConfig, n_adapters: int):
        if n_adapters < 1:
            raise ValueError(f"n_adapters must be >= 1, got {n_adapters}")
        self.rank = lora.rank
        self.scale = lora.alpha / lora.rank
        self.dropout = lora.dropout
        self.n_adapters = n_adapters
        self.null_slot = n_adapters
        self.targets = self._layout(find_targets(model, lora.target_modules))
        device = self.targets[0].module.weight.device
        self.dim = self.targets[-1].b_offset + self.targets[-1].out_features * self.rank
        self.params = torch.zeros(
            n_adapters + 1, self.dim, dtype=torch.float32, device=device, requires_grad=True
        )
        self.training = False  # LoRA dropout only while training
        self.dropout_generator: torch.Generator | None = None
        self._rows: torch.Tensor | None = None  # (batch,) slot per row
        self._row_params: torch.Tensor | None = None  # (batch, D) gathered once per forward pass
        # (batch, r*in) and (batch, out*r) per target, in layout order: views of _row_params
        self._row_pieces: tuple[torch.Tensor, ...] = ()
        self._piece_sizes = [s for t in self.targets for s in (t.b_offset - t.a_offset, t.out_features * self.rank)]
        self._handles = [
            t.module.register_forward_hook(self._make_hook(i)) for i, t in enumerate(self.targets)
        ]

    def _layout(self, found: list[tuple[str, nn.Linear]]) -> list[LoraTarget]:
        targets, offset = [], 0
        for name, module in found:
            a_size = self.rank * module.in_features
            targets.append(LoraTarget(name, module, offset, offset + a_size))
            offset += a_size + module.out_features * self.rank
        return targets

    # ------------------------------------------------------------------ slots

    def slot_a(self, source: torch.Tensor, t: LoraTarget) -> torch.Tensor:
        """A of target ``t`` from a ``(k, D)`` tensor of slot rows: a ``(k, r, in)`` view."""
        return source[:, t.a_offset : t.b_offset].unflatten(1, (self.rank, t.in_features))

    def slot_b(self, source: torch.Tensor, t: LoraTarget) -> torch.Tensor:
        """B of target ``t`` from a ``(k, D)`` tensor of slot rows: a ``(k, out, r)`` view."""
        end = t.b_offset + t.out_features * self.rank
        return source[:, t.b_offset : end].unflatten(1, (t.out_features, self.rank))

    @torch.no_grad()
    def reset_slot(self, slot: int, seed: int) -> None:
        """Fresh adapter in ``slot``: A ~ PEFT's default init, B = 0.

        A is ``kaiming_uniform_(a=sqrt(5))`` (uniform in +-1/sqrt(in)), drawn target by target
        from a CPU ``torch.Generator`` seeded with ``seed`` alone, so an adapter's init does
        not depend on its slot or on the other adapters of the bank.
        """
        gen = torch.Generator().manual_seed(seed)
        row = self.params[slot]
        for t in self.targets:
            a = torch.empty(self.rank, t.in_features)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
            row[t.a_offset : t.b_offset] = a.flatten().to(row.device)
            row[t.b_offset : t.b_offset + t.out_features * self.rank] = 0.0
        self.params.grad = None

    def weights(self, slot: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{target name: (A (r, in), B (out, r))}`` of one slot: detached fp32 copies."""
        row = self.params.detach()[slot : slot + 1]
        return {
            t.name: (self.slot_a(row, t)[0].clone(), self.slot_b(row, t)[0].clone())
            for t in self.targets
        }

    @torch.no_grad()
    def merge_into_base(self, slot: int) -> None:
        """Fold one slot into the base weights: ``W += (alpha/r) * B @ A`` (cast to W's dtype).

        This writes the base model's weights (like PEFT's ``merge_and_unload``); the slot is
        left as it is.
        """
        row = self.params.detach()[slot : slot + 1]
        for t in self.targets:
            delta = self.scale * (self.slot_b(row, t)[0] @ self.slot_a(row, t)[0])
            t.module.weight.add_(delta.to(t.module.weight.dtype))

    # ---------------------------------------------------------------- routing

    def set_rows(self, slots: torch.Tensor | None) -> None:
        """Route the next forward passes: ``slots`` is ``(batch,)`` long, -1 = base model; None = off.

        The per-row weights (``(batch, D)`` fp32) are gathered here, once: under autograd
        when gradients are enabled (their gradient flows back into ``params``), as a plain
        copy otherwise (generation reuses it for every decoding step). They are cut into
        each target's A and B by one ``split``: its backward writes every piece's gradient
        into one ``(batch, D)`` tensor, where a slice per piece would build a zero-filled
        ``(batch, D)`` gradient per piece and add them all (2 x targets full-size tensors per
        backward pass; the same values; training 64 adapters on the microworld took 11.9 s with
        slices, 9.9 s with the split, one measurement on a loaded 2-core EPYC).
        """
        if slots is None:
            self._rows = self._row_params = None
            self._row_pieces = ()
            return
        slots = slots.to(self.params.device, torch.long)
        slots = torch.where(slots < 0, torch.full_like(slots, self.null_slot), slots)
        self._rows = slots
        self._row_params = self.params.index_select(0, slots)
        self._row_pieces = self._row_params.split(self._piece_sizes, dim=1)

    def _make_hook(self, index: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if self._row_params is None:
                return None
            return self._apply(index, args[0], output)

        return hook

    def _apply(self, index: int, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        t, rows = self.targets[index], self._row_params.shape[0]
        if x.shape[0] != rows:
            raise RuntimeError(
                f"LoRA routing is set for {rows} rows but {t.name} got a batch of {x.shape[0]}"
            )
        h = x.reshape(rows, -1, t.in_features).to(torch.float32)
        if self.training and self.dropout > 0:
            h = self._dropout(h)
        a = self._row_pieces[2 * index].unflatten(1, (self.rank, t.in_features))  # (rows, r, in)
        b = self._row_pieces[2 * index + 1].unflatten(1, (t.out_features, self.rank))  # (rows, out, r)
        h = torch.bmm(h, a.transpose(1, 2))  # (rows, tokens, r)
        delta = torch.bmm(h, b.transpose(1, 2))  # (rows, tokens, out)
        # Add in fp32 and cast the sum, like PEFT (a bf16 base output + fp32 delta).
        return (output + (delta * self.scale).view(output.shape)).to(output.dtype)

    def _dropout(self, h: torch.Tensor) -> torch.Tensor:
        # Our own generator so that runs are reproducible without touching torch's global RNG.
        keep = (
            torch.rand(h.shape, generator=self.dropout_generator, device="cpu").to(h.device)
            >= self.dropout
        )
        return h * keep / (1.0 - self.dropout)

    def detach(self) -> None:
        """Remove the hooks: the model computes exactly its base function again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.set_rows(None)


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every base parameter; both restored on exit.

    Eval mode switches off the base model's own dropout (0 in Llama/Qwen2 configs anyway)
    so that training is deterministic; LoRA dropout is the bank's own. Every module's
    ``training`` flag is restored individually, whatever mix the caller had.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in grads:
            p.requires_grad_(flag)


@contextmanager
def adapter_bank(model: nn.Module, lora: LoraConfig, n_adapters: int) -> Iterator[LoraBank]:
    """A :class:`LoraBank` on a :func:`frozen` model, detached and the model restored on exit."""
    with frozen(model):
        bank = LoraBank(model, lora, n_adapters)
        try:
            yield bank
        finally:
            bank.detach()


class StackedAdamW:
    """AdamW over the slots of a ``(S, D)`` tensor, each slot with its own step count and LR.

    Same update as ``torch.optim.AdamW`` (decoupled weight decay; Loshchilov & Hutter 2019)
    applied row by row, but only to the rows marked active: an inactive slot's parameters,
    moments and step count stay bit-identical (torch's AdamW would still decay them and
    move them by their momentum).

    Args:
        param: the ``(S, D)`` fp32 leaf whose ``.grad`` :meth:`step` reads.
        betas, eps, weight_decay: as ``torch.optim.AdamW`` (HF Trainer's defaults).
    """

    def __init__(
        self, param: torch.Tensor, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0
    ):
        self.param = param
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.exp_avg = torch.zeros_like(param, requires_grad=False)
        self.exp_avg_sq = torch.zeros_like(param, requires_grad=False)
        self.steps = torch.zeros(param.shape[0], dtype=torch.float64, device=param.device)

    @torch.no_grad()
    def step(self, lr: torch.Tensor, active: torch.Tensor) -> None:
        """One AdamW step of the active slots.

        On the CPU the active slots are updated one row at a time (:meth:`_step_rows`), on
        other devices all slots at once (:meth:`_step_all`): the same operations on every
        element, so the same values bit for bit (``tests/test_inner_loop.py``); a row stays
        in the CPU's cache through all of them, where whole-tensor operations stream the
        ``(S, D)`` tensors through memory a dozen times (the microworld's bank, 65 x 81920:
        12-16 ms per step against 54-87 ms, on a loaded 2-core EPYC).

        Args:
            lr: ``(S,)`` float64, this step's learning rate per slot.
            active: ``(S,)`` bool; inactive slots are left exactly as they are.
        """
        col = _column
        lr = torch.where(active, lr, 0.0)
        self.steps += active.to(self.steps.dtype)
        t = self.steps.clamp(min=1.0)  # inactive slots at step 0: any t avoids 0/0; their lr is 0
        step_size = col(lr / (1.0 - self.beta1**t))
        bias2_sqrt = col(torch.sqrt(1.0 - self.beta2**t))
        decay = col(1.0 - lr * self.weight_decay)
        w1 = col(torch.where(active, 1.0 - self.beta1, 0.0))
        w2 = col(torch.where(active, self.beta2, 1.0))
        step = self._step_rows if self.param.device.type == "cpu" else self._step_all
        step(active, step_size, bias2_sqrt, decay, w1, w2)

    def _step_all(self, active, step_size, bias2_sqrt, decay, w1, w2) -> None:
        """Every slot at once, the inactive ones with a zero gradient and neutral factors
        (few kernel launches: the GPU path)."""
        p, m, v = self.param.detach(), self.exp_avg, self.exp_avg_sq
        g = torch.where(active.unsqueeze(1), self.param.grad, 0.0)
        p.mul_(decay)
        m.lerp_(g, w1)
        v.mul_(w2).addcmul_(g, g, value=1.0 - self.beta2)
        denom = (v.sqrt() / bias2_sqrt).add_(self.eps)
        p.sub_(step_size * (m / denom))

    def _step_rows(self, active, step_size, bias2_sqrt, decay, w1, w2) -> None:
        """The active slots one row at a time, through one scratch row (the CPU path).
        Skipping the decay when ``weight_decay`` is 0 skips a multiplication by exactly 1."""
        p, m, v, g = self.param.detach(), self.exp_avg, self.exp_avg_sq, self.param.grad
        scratch = torch.empty_like(p[:1])
        for i in torch.nonzero(active).flatten().tolist():
            r = slice(i, i + 1)
            if self.weight_decay:
                p[r].mul_(decay[r])
            m[r].lerp_(g[r], w1[r])
            v[r].mul_(w2[r]).addcmul_(g[r], g[r], value=1.0 - self.beta2)
            torch.sqrt(v[r], out=scratch)
            scratch.div_(bias2_sqrt[r]).add_(self.eps)
            torch.div(m[r], scratch, out=scratch)
            p[r].sub_(scratch.mul_(step_size[r]))


def _column(x: torch.Tensor) -> torch.Tensor:
    """(S,) per-slot values -> (S, 1) fp32, to broadcast over a slot's row."""
    return x.to(torch.float32).unsqueeze(1)


def clip_grad_norms_(grad: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """Per-slot gradient norms of a ``(S, D)`` gradient; clip each row to ``max_norm`` in place.

    The coefficient is ``torch.nn.utils.clip_grad_norm_``'s: ``min(1, max_norm / (norm + 1e-6))``,
    applied to each slot's row separately (one adapter's norm over all its layers).
    Returns the ``(S,)`` fp32 norms before clipping (non-finite for a broken slot).
    """
    norms = torch.linalg.vector_norm(grad, dim=1)
    if max_norm is not None:
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        grad.mul_(coef.unsqueeze(1))
    return norms
