"""The inner loop: train a fresh LoRA adapter per self-edit, then answer questions with it.

Paper Section 4.2 (knowledge incorporation): for each self-edit, a LoRA adapter (r=32,
alpha=64 on q/v by default) is fine-tuned on the self-edit's texts for a few epochs, then
the adapted model answers the passage's questions without the passage. The reference
implementation does this one adapter at a time with PEFT + HF ``Trainer``; here
:func:`run_inner_loop` trains ``cfg.batch_adapters`` (N) adapters *together* in one pass
over the frozen base model (:mod:`seal.multi_lora`) and answers all their questions in
one batched greedy generation. N=1 is the sequential path, through the same code.

Per adapter, the result is what training it alone with a standard loop gives:

* Data: a text is tokenized as BOS (if the tokenizer adds one) + text + EOS and cut to
  ``cfg.max_length`` tokens (a cut text loses its EOS). Texts without a single content
  token (empty strings) are dropped. Each epoch shuffles the adapter's texts with a
  generator seeded from (job seed, epoch) (:func:`epoch_order`), and step s of the epoch
  takes its texts ``s*B ... (s+1)*B - 1``, ``B = batch_size * grad_accum_steps``
  (gradient accumulation is exactly a larger batch here, :func:`step_rows`).
* A global step feeds every adapter that still has a batch in this epoch; an adapter
  whose texts are exhausted gets no rows and no update (no Adam step, no decay, its step
  count and LR schedule do not advance).
* Loss: per adapter, mean token cross-entropy over the loss-bearing tokens of its rows in
  this step (HF's causal-LM loss for a batch); the objective is the sum over adapters, so
  each adapter's gradient is the one it would get alone. A step's rows go through the
  model in length-sorted passes (:func:`micro_batches`) whose gradients are summed; rows
  are right-padded within a pass and padding never carries loss, so neither the padding
  nor the grouping changes the update. ``cfg.train_on_padding`` instead reproduces the
  reference implementation: every row padded to ``cfg.max_length`` with the tokenizer's
  pad token (attention mask 0 there) and loss on the pad positions too, as its TTT
  server's ``labels = input_ids.copy()`` after ``padding="max_length"`` (with
  ``DataCollatorWithPadding``, which keeps those labels) does. The reference sets pad =
  EOS, so it also learns to emit EOS over and over; set the tokenizer's pad token to EOS
  to match that too. (HF's ``DataCollatorForLanguageModeling`` would instead mask the
  pad labels, which is the default behaviour here.)
* Optimizer: AdamW (0.9, 0.999, 1e-8, ``cfg.weight_decay``) per adapter, LR linear from
  ``cfg.lr`` to 0 over the adapter's own ``epochs * ceil(n_texts / B)`` steps
  (HF Trainer's default schedule), half-cosine or constant, after ``cfg.warmup_steps`` of
  linear warm-up (:func:`_learning_rates`); gradient norm clipped per adapter to
  ``cfg.max_grad_norm`` (HF Trainer's default 1.0).
* Init: A as PEFT's default (kaiming-uniform) from a generator seeded by the job seed
  (independent of the slot, :func:`init_seed`); B = 0.

Per-adapter settings (hyperparameter self-edits, :mod:`seal.hparams`; ``AdapterJob.settings``):
lr, epochs and the loss mask are *batched*: each slot has its own peak LR and its schedule
runs over its own ``epochs * steps_per_epoch`` steps, a slot past its epochs gets no rows
(as an exhausted slot above), and each row carries its loss start (``loss_on: answer``:
the tokens after ``cfg.answer_marker``, :func:`tokenize_with_loss`). LoRA rank is *grouped*:
one bank holds one rank, so :func:`run_inner_loop` trains a chunk's adapters rank by rank.
Either way an adapter's result is the one it gets trained alone with the same settings.

Deliberate differences from the reference: seeds come from the job, never the clock; the
base model runs in eval mode while adapters train (its dropout is 0 in Llama/Qwen2
anyway); LoRA dropout > 0 draws its masks from one generator per chunk, so with dropout
the batched and the sequential runs draw different (equally distributed) masks.

Memory. With S = N + 1 slots, D = sum over target layers of r * (in + out) LoRA
parameters per adapter, L_t target layers, V the vocabulary, and a training step split
into passes of t padded tokens in k rows (t <= max(tokens_per_pass, longest row), see
:func:`micro_batches`), the inner loop adds to the frozen model, in bytes::

    adapters      16 * S * D                        fp32 weights, grads, Adam m and v
    row weights    8 * k * D                        one pass's gathered A/B per row + grads
    activations    t * (a_base + 4 * L_t * (in + r + out))   saved for backward, one pass
    logits         8 * t * V                        fp32 logits + their grad, loss tokens only
    generation     q * (P + G) * 2 * n_layers * kv_dim * dtype_bytes + 4 * q * D

where a_base is the frozen model's own activation bytes per token, q = min(qa_batch_size,
questions of the chunk) rows per generation pass, P/G the prompt and generated lengths.
Only the adapter state grows with N (linearly, 16 * D bytes per adapter): activations
and logits are bounded by the pass budget, not by N. For Qwen2.5-7B with r=32 on q/v,
D ~ 10.1 M, i.e. ~160 MB of adapter state per adapter (5 GB at N=32). With Qwen2.5's
vocabulary (V ~ 152 k) the logits term is the largest at GPU pass sizes: a full pass of
16384 loss tokens is ~20 GB (fp32 logits and their gradient; more for the bf16 head output
and the softmax), whatever N. ``benchmarks/inner_loop.py`` measures the peak.

Host synchronisation. A training step reads one small tensor back from the device (which
slots' loss and gradient were finite: a failing slot must get no rows in the next step);
loss positions are gathered by an index built on the host (a boolean mask would make the
host wait for the device), and epoch losses are summed on the device (float64, exactly the
host sum) and read once per epoch. Greedy generation reads one flag per decoding step
(whether every row has ended), to stop early.

Sharded base (``model.shard: fsdp``, :mod:`seal.sharding`). Every rank runs the same jobs in
step with a replicated bank; three small collectives keep the control flow equal across
ranks whatever the rounding of their backward kernels: the per-step "slot may step" flags
(one ``(S,)`` all-reduce per step), the bank copied from rank 0 before answering (one
broadcast of ``S * D`` fp32 per chunk), and the decoding stop flag (one per decoding step).
Unsharded, they are not called.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.nn.functional as F

from seal.config import InnerLoopConfig
from seal.hparams import AdapterSettings
from seal.multi_lora import LoraBank, StackedAdamW, adapter_bank, clip_grad_norms_, frozen
from seal.seeding import derive_seed
from seal.sharding import (
    ShardingError,
    all_ranks_agree,
    copy_from_main,
    is_sharded,
    no_grad_for,
    run_forward,
)


@dataclass
class AdapterJob:
    """One inner-loop evaluation.

    Attributes:
        texts: training texts (already built: title-prefixed, passage last). May be empty:
            then no adapter is trained and the answers are the base model's.
        prompts: no-passage QA prompts, fully formatted; answered greedily after training.
        seed: seeds the adapter's initialisation and its per-epoch data order.
        settings: the adapter's own lr / epochs / loss_on / LoRA rank (a hyperparameter
            self-edit, :mod:`seal.hparams`); None or a None field: the ``cfg`` value.
    """

    texts: list[str]
    prompts: list[str]
    seed: int
    settings: AdapterSettings | None = None


@dataclass
class AdapterResult:
    """What one :class:`AdapterJob` produced."""

    answers: list[str]  # one greedy answer per prompt, stripped of the prompt
    epoch_losses: list[float] = field(default_factory=list)  # mean token loss per epoch
    n_train_tokens: int = 0  # real (loss-bearing) tokens per epoch
    seconds: float = 0.0  # wall seconds attributed to this job (its chunk's time / chunk size)
    error: str | None = (
        None  # failure reason (non-finite loss, no trainable tokens, ...); answers then empty
    )


class InnerLoopError(RuntimeError):
    """Training an adapter failed (non-finite loss or gradient, no trainable tokens)."""


@dataclass
class TrainStats:
    """One adapter's training record.

    Attributes:
        epoch_losses: per epoch, the token-weighted mean cross-entropy (nats/token) of the
            epoch's steps, measured before each step's update. Empty if not trained.
        n_train_tokens: loss-bearing tokens per epoch (with ``train_on_padding``, pads included).
        error: why training failed, else None. A failed adapter's weights are garbage.
    """

    epoch_losses: list[float] = field(default_factory=list)
    n_train_tokens: int = 0
    error: str | None = None


# ----------------------------------------------------------------------------- data


def _adds_eos(tokenizer) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[-1] == tokenizer.eos_token_id


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Training token ids: BOS (if the tokenizer adds it) + text + EOS, cut to ``max_length``.

    Texts with no content token (empty strings) are dropped, so the result may be shorter
    than ``texts``. Token ids are plain ints.
    """
    if not texts:
        return []
    n_special = tokenizer.num_special_tokens_to_add(pair=False)
    eos = tokenizer.eos_token_id
    append_eos = eos is not None and not _adds_eos(tokenizer)
    out = []
    for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]:
        if len(ids) <= n_special:
            continue
        ids = list(ids) + ([eos] if append_eos else [])
        out.append(ids[:max_length])
    return out


def tokenize_with_loss(
    tokenizer, texts: Sequence[str], max_length: int, loss_on: str = "all", marker: str = "A:"
) -> tuple[list[list[int]], list[int]]:
    """Training rows and, per row, the index of its first loss-bearing (target) token.

    ``loss_on="all"``: the rows of :func:`tokenize_texts`, every start 1 (every token after
    the first is a target). ``"answer"``: a text containing ``marker`` has its targets start
    at the first token whose characters begin at or after the end of the marker's first
    occurrence (a token straddling the marker is not a target); a text without the marker
    keeps start 1. A row whose targets were all cut by ``max_length`` is dropped (it has
    nothing to learn), like an empty text. Needs a fast tokenizer (character offsets) for
    ``"answer"``.

    Returns (rows, starts): token id lists and ints, ``1 <= starts[i] < len(rows[i])``.

    Raises:
        ValueError: unknown ``loss_on``, or ``"answer"`` with a tokenizer without offsets.
    """
    if loss_on == "all":
        rows = tokenize_texts(tokenizer, texts, max_length)
        return rows, [1] * len(rows)
    if loss_on != "answer":
        raise ValueError(f"unknown loss_on {loss_on!r}; expected 'all' or 'answer'")
    if not texts:
        return [], []
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("loss_on='answer' needs a fast tokenizer (character offsets)")
    n_special = tokenizer.num_special_tokens_to_add(pair=False)
    eos = tokenizer.eos_token_id
    append_eos = eos is not None and not _adds_eos(tokenizer)
    enc = tokenizer(list(texts), add_special_tokens=True, return_offsets_mapping=True)
    rows, starts = [], []
    for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"], strict=True):
        if len(ids) <= n_special:
            continue
        at = text.find(marker)
        start = 1
        if at >= 0:
            end = at + len(marker)
            # Special tokens have (0, 0) offsets; a trailing one (EOS) counts as after the marker.
            start = next(
                (j for j in range(1, len(ids)) if offsets[j][0] >= end or offsets[j] == (0, 0)),
                len(ids),  # the marker ends the text: only the EOS appended below is a target
            )
        row = (list(ids) + ([eos] if append_eos else []))[:max_length]
        if start < len(row):
            rows.append(row)
            starts.append(start)
    return rows, starts


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The order in which an adapter sees its ``n`` texts in ``epoch``: a permutation of range(n).

    Drawn with ``torch.randperm`` from a CPU generator seeded by ``derive_seed(seed,
    "data-order", epoch)``: it depends on the job seed and the epoch only.
    """
    gen = torch.Generator().manual_seed(derive_seed(seed, "data-order", epoch))
    return torch.randperm(n, generator=gen).tolist()


def init_seed(seed: int) -> int:
    """Seed of an adapter's A initialisation, derived from the job seed."""
    return derive_seed(seed, "lora-init")


@dataclass
class _Batch:
    """One training step's rows, right-padded.

    input_ids/attention_mask: (rows, T) long; loss_pos: (rows, T) bool, True where the
    position's next-token prediction carries loss (the next token is real, or a pad in
    reference mode, and at or after the row's loss start); targets: (M,) long, the next tokens at
    those positions; token_slot: (M,) long, their adapter; row_slot: (rows,) long;
    loss_index: (M,) long, the loss positions as indices into the flattened (rows * T)
    positions, in row-major order (``loss_pos``'s ``True`` entries, computed on the host,
    so that gathering them on a GPU needs no device-to-host synchronisation).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_pos: torch.Tensor
    targets: torch.Tensor
    token_slot: torch.Tensor
    row_slot: torch.Tensor
    loss_index: torch.Tensor


def _collate(
    rows: list[list[int]], slots: list[int], pad_id: int, pad_to: int | None, device, starts: list[int] | None = None
) -> _Batch:
    width = pad_to or max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    # Reference mode (pad_to set): pads are targets too, like its labels = input_ids.
    labelled = torch.ones_like(mask, dtype=torch.bool) if pad_to else mask.bool()
    for i, start in enumerate(starts or []):
        labelled[i, :start] = False  # before the loss start (position 0 is never a target anyway)
    loss_pos = torch.zeros_like(labelled)
    loss_pos[:, :-1] = labelled[:, 1:]
    row_slot = torch.tensor(slots, dtype=torch.long)
    targets = input_ids[:, 1:][loss_pos[:, :-1]]
    token_slot = row_slot.unsqueeze(1).expand_as(loss_pos)[loss_pos]
    loss_index = loss_pos.flatten().nonzero().squeeze(1)
    return _Batch(
        *(
            t.to(device)
            for t in (input_ids, mask, loss_pos, targets, token_slot, row_slot, loss_index)
        )
    )


def _n_loss_tokens(rows: list[list[int]], starts: list[int], cfg: InnerLoopConfig) -> int:
    if cfg.train_on_padding:
        return sum(cfg.max_length - s for s in starts)
    return sum(len(r) - s for r, s in zip(rows, starts, strict=True))


# ----------------------------------------------------------------------------- training

# Rows of one step are sorted by length and split into forward/backward passes ("micro-
# batches") whose padded size stays within PAD_SLACK x their real tokens and within a
# budget of padded tokens. Padding to the longest row of N adapters would otherwise cost
# up to N x (and attention quadratically more); the gradients are summed before the
# optimizer step, so the update is the same. The budget also bounds activation memory.
# On CPUs small passes are faster per token (activations stay in cache: measured on a
# 2-core EPYC, 1k-token passes beat 16k-token ones by ~15%); GPUs want large ones.
TOKENS_PER_PASS = {"cpu": 1024, "default": 16384}
PAD_SLACK = 1.25


def default_tokens_per_pass(device: torch.device) -> int:
    """Padded tokens per forward/backward pass on ``device`` (see TOKENS_PER_PASS)."""
    return TOKENS_PER_PASS.get(device.type, TOKENS_PER_PASS["default"])


def micro_batches(
    lengths: Sequence[int], tokens_per_pass: int, pad_slack: float = PAD_SLACK
) -> list[list[int]]:
    """Group row indices (longest first) so that each group's padded area ``rows x longest``
    is at most ``pad_slack`` x its real tokens and at most ``tokens_per_pass`` (a longer
    single row still gets its own group)."""
    groups: list[list[int]] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups:
            width, n = lengths[groups[-1][0]], len(groups[-1]) + 1
            if n * width <= tokens_per_pass and n * width <= pad_slack * (real + lengths[i]):
                groups[-1].append(i)
                real += lengths[i]
                continue
        groups.append([i])
        real = lengths[i]
    return groups


def _split_model(model):
    """(backbone, lm_head) when logits are a plain linear head on the last hidden state, else None.

    Computing the head on loss positions only skips the padding's (rows x T x V) logits.
    Models that scale or soft-cap their logits go through the full forward instead.
    """
    cfg = model.config
    if any(
        getattr(cfg, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")
    ):
        return None
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = model.get_output_embeddings()
    if backbone is None or backbone is model or not isinstance(head, torch.nn.Linear):
        return None
    return backbone, head


def _loss_logits(model, batch: _Batch, pad_mask: bool) -> torch.Tensor:
    """Logits ``(M, V)`` at the loss positions of the batch.

    With right padding and no loss on the pads (``pad_mask=False``) the attention mask is
    left out: a real token's causal attention never reaches a pad (pads come after it), so
    its output is the same, and attention takes the fast causal path instead of a dense
    (rows, 1, T, T) mask. Loss on pads (the reference mode) needs the mask.
    A sharded base (``model.shard: fsdp``) runs the backbone and head as one FSDP forward
    (:func:`seal.sharding.run_forward`).
    """
    mask = batch.attention_mask if pad_mask else None
    split = _split_model(model)
    if split is None:
        out = model(input_ids=batch.input_ids, attention_mask=mask, use_cache=False)
        return _at_loss_positions(out.logits, batch)
    return run_forward(model, _split_loss_logits, *split, batch, mask)


def _split_loss_logits(backbone, head, batch: _Batch, mask: torch.Tensor | None) -> torch.Tensor:
    hidden = backbone(input_ids=batch.input_ids, attention_mask=mask, use_cache=False)[0]
    return head(_at_loss_positions(hidden, batch))


def _at_loss_positions(x: torch.Tensor, batch: _Batch) -> torch.Tensor:
    """``x[batch.loss_pos]`` (the same rows, in the same order) by a host-computed index:
    a boolean mask would make the GPU wait for the host to learn how many rows it selects."""
    return x.flatten(0, 1).index_select(0, batch.loss_index)


def _slot_loss_sums(model, bank: LoraBank, batch: _Batch, pad_mask: bool) -> torch.Tensor:
    """Per-slot sum of the batch's token cross-entropies: ``(S,)`` fp32, with graph (nats)."""
    bank.set_rows(batch.row_slot)
    logits = _loss_logits(model, batch, pad_mask)
    ce = F.cross_entropy(logits.float(), batch.targets, reduction="none")
    return torch.zeros(bank.params.shape[0], device=ce.device).index_add(0, batch.token_slot, ce)


def _learning_rates(
    cfg: InnerLoopConfig, peak: torch.Tensor, done_steps: torch.Tensor, total_steps: torch.Tensor
) -> torch.Tensor:
    """``(S,)`` float64 LR of each slot's next step from its ``(S,)`` float64 peak LR, ``t``
    steps done of its ``T``: HF's schedules (``transformers.optimization``), each slot on its
    own ``t`` and ``T``. With ``W = cfg.warmup_steps``: ``lr * t / W`` while ``t < W``; then
    linear ``lr * (T - t) / (T - W)``, cosine ``lr * (1 + cos(pi * (t - W) / (T - W))) / 2``
    (both floored at 0, ``T - W`` at least 1), or constant ``lr``."""
    warm = cfg.warmup_steps
    if cfg.lr_scheduler == "linear" and warm == 0:  # today's expression, bit for bit
        return peak * ((total_steps - done_steps) / total_steps.clamp(min=1.0)).clamp(min=0.0)
    if cfg.lr_scheduler == "constant":
        factor = torch.ones_like(done_steps)
    else:
        span = (total_steps - warm).clamp(min=1.0)
        progress = (done_steps - warm) / span
        if cfg.lr_scheduler == "cosine":
            factor = (0.5 * (1.0 + torch.cos(math.pi * progress))).clamp(min=0.0)
        else:
            factor = ((total_steps - done_steps) / span).clamp(min=0.0)
    if warm == 0:
        return peak * factor if cfg.lr_scheduler != "constant" else peak.clone()
    return peak * torch.where(done_steps < warm, done_steps / max(1, warm), factor)


def step_rows(cfg: InnerLoopConfig) -> int:
    """Texts per optimizer step, per adapter: ``batch_size * grad_accum_steps``.

    Accumulating g batches of b texts with the loss normalised by all their loss tokens (HF
    Trainer since transformers 4.46: ``num_items_in_batch``) is one batch of g*b texts: the
    same rows per step (the epoch order cut in g*b-text steps, a short last one), the same
    token-mean loss, ``ceil(n / (g*b))`` steps per epoch for the schedule (= HF's
    ``ceil(ceil(n / b) / g)``). The passes of a step are already split by the token budget
    (:func:`micro_batches`), so memory is bounded either way.
    """
    return cfg.batch_size * cfg.grad_accum_steps


class _SlotData:
    """One slot's tokenized texts, its settings (lr, epochs) and step bookkeeping."""

    def __init__(
        self, rows: list[list[int]], starts: list[int], seed: int, cfg: InnerLoopConfig, lr: float, epochs: int
    ):
        self.rows = rows
        self.starts = starts  # per row, its first target token (see tokenize_with_loss)
        self.seed = seed
        self.lr = lr
        self.epochs = epochs
        self.in_epoch = False  # this slot trains in the current epoch (epoch < self.epochs)
        self.steps_per_epoch = math.ceil(len(rows) / step_rows(cfg))
        self.order: list[int] = []
        self.error: str | None = None
        self.loss_sum = 0.0
        self.loss_tokens = 0
        self.epoch_losses: list[float] = []

    def batch(self, step: int, batch_size: int) -> list[int]:
        """Indices of this slot's rows at ``step`` of the current epoch ([] when exhausted,
        past its own epochs, or failed)."""
        if self.error or not self.in_epoch or step >= self.steps_per_epoch:
            return []
        return self.order[step * batch_size : (step + 1) * batch_size]


class _BankTrainer:
    """The training loop of :func:`train_bank`: epochs of global steps over all slots."""

    def __init__(
        self,
        model,
        bank: LoraBank,
        data: list[_SlotData],
        cfg: InnerLoopConfig,
        pad_id: int,
        tokens_per_pass: int,
    ):
        self.model, self.bank, self.data, self.cfg = model, bank, data, cfg
        self.pad_id, self.tokens_per_pass = pad_id, tokens_per_pass
        self.device = bank.params.device
        self.opt = StackedAdamW(bank.params, weight_decay=cfg.weight_decay)
        n_slots = bank.params.shape[0]
        self.total_steps = torch.zeros(n_slots, dtype=torch.float64, device=self.device)
        # Peak LR per slot (the null slot and unused slots: never active, any value).
        self.peak_lr = torch.full((n_slots,), cfg.lr, dtype=torch.float64, device=self.device)
        for slot, d in enumerate(data):
            self.total_steps[slot] = d.epochs * d.steps_per_epoch
            self.peak_lr[slot] = d.lr
        # Per-slot sums of this epoch's token losses, kept on the device (float64, so that
        # adding the fp32 step sums is exactly what Python floats on the host would give)
        # and read once per epoch.
        self.loss_sums = torch.zeros(n_slots, dtype=torch.float64, device=self.device)

    def run_epoch(self, epoch: int) -> None:
        for d in self.data:
            d.in_epoch = epoch < d.epochs
            if d.in_epoch:
                d.order = epoch_order(d.seed, epoch, len(d.rows))
            d.loss_tokens = 0
        self.loss_sums.zero_()
        step = 0
        while self.step(step):
            step += 1
        loss_sums = self.loss_sums.tolist()  # the epoch's one read of the losses
        for d, loss_sum in zip(self.data, loss_sums, strict=False):
            d.loss_sum = loss_sum
            if d.in_epoch and d.rows and not d.error:
                d.epoch_losses.append(d.loss_sum / d.loss_tokens)

    def step(self, step: int) -> bool:
        """One global step; False when no slot had rows left in this epoch.

        One device-to-host read per step: which slots' loss and gradient were finite. A slot
        that fails stops training at once (the next step has none of its rows), which the
        host must know before it builds that step.
        """
        rows, starts, slots = [], [], []
        for slot, d in enumerate(self.data):
            part = d.batch(step, step_rows(self.cfg))
            rows += [d.rows[j] for j in part]
            starts += [d.starts[j] for j in part]
            slots += [slot] * len(part)
        if not rows:
            return False
        sums, counts, finite, host_counts = self._accumulate_gradients(rows, starts, slots)
        norms = clip_grad_norms_(self.bank.params.grad, self.cfg.max_grad_norm)
        # A sharded base: a slot steps only if it may on every rank (the ranks' rows must match).
        ok = all_ranks_agree(self.model, (counts > 0) & finite & torch.isfinite(norms))
        self.opt.step(_learning_rates(self.cfg, self.peak_lr, self.opt.steps, self.total_steps), ok)
        self.loss_sums += torch.where(ok, sums.to(torch.float64), 0.0)
        finite_host, ok_host = torch.stack([finite, ok]).tolist()
        self._record(host_counts, finite_host, ok_host)
        return True

    def _accumulate_gradients(self, rows, starts, slots):
        """Forward/backward every micro-batch; returns per-slot loss sums, token counts,
        finiteness (on the device) and the token counts as a host list."""
        pad_to = self.cfg.max_length if self.cfg.train_on_padding else None
        lengths = [pad_to or len(r) for r in rows]
        n_slots = self.bank.params.shape[0]
        per_slot = [0] * n_slots
        for slot, n, start in zip(slots, lengths, starts, strict=True):
            per_slot[slot] += n - start  # positions start-1 .. n-2 predict a loss-bearing token
        counts = torch.tensor(per_slot, device=self.device)
        denominators = counts.clamp(min=1).to(torch.float32)
        sums = torch.zeros(n_slots, device=self.device)
        finite = torch.ones(n_slots, dtype=torch.bool, device=self.device)
        self.bank.params.grad = None
        for group in micro_batches(lengths, self.tokens_per_pass):
            batch = _collate(
                [rows[i] for i in group],
                [slots[i] for i in group],
                self.pad_id,
                pad_to,
                self.device,
                [starts[i] for i in group],
            )
            part = _slot_loss_sums(self.model, self.bank, batch, self.cfg.train_on_padding)
            ok = torch.isfinite(part)
            # Leave broken slots out of the objective: they then add no gradient to the others.
            torch.where(ok, part / denominators, 0.0).sum().backward()
            sums += part.detach()
            finite &= ok
        return sums, counts, finite, per_slot

    def _record(self, counts, finite, ok) -> None:
        """Host bookkeeping of a step: token counts of the slots that stepped, failures."""
        for slot, d in enumerate(self.data):
            if not counts[slot]:
                continue
            if not ok[slot]:
                what = "loss" if not finite[slot] else "gradient"
                d.error = f"non-finite {what} at step {int(self.opt.steps[slot]) + 1}"
                continue
            d.loss_tokens += counts[slot]


def train_bank(
    model,
    tokenizer,
    bank: LoraBank,
    texts: Sequence[Sequence[str]],
    seeds: Sequence[int],
    cfg: InnerLoopConfig,
    tokens_per_pass: int | None = None,
    settings: Sequence[AdapterSettings | None] | None = None,
) -> list[TrainStats]:
    """Train fresh adapters in slots ``0 .. len(texts)-1`` of ``bank``, all in the same steps.

    Args:
        model: the frozen base model the bank is attached to (see :func:`seal.multi_lora.adapter_bank`).
        texts: per slot, its training texts; an empty list leaves the slot untrained.
        seeds: per slot, the job seed (init: :func:`init_seed`; data order: :func:`epoch_order`).
        cfg: epochs, lr, batch_size, max_length, schedule, clipping, weight decay, padding mode.
        tokens_per_pass: padded tokens per forward/backward pass (see :func:`micro_batches`);
            None: :func:`default_tokens_per_pass` of the bank's device. Changes speed and
            memory, not the result (up to float rounding).
        settings: per slot, its own lr, epochs and loss_on (None, or a None field: ``cfg``'s).
            These are *batched*: slots with different values share every step. Each slot's
            LR schedule runs over its own ``epochs * steps_per_epoch`` steps; a slot past its
            epochs gets no rows and no update (as an exhausted slot within an epoch); the
            loss mask is per row. ``lora_rank`` must be the bank's (ranks are grouped into
            banks by :func:`run_inner_loop`, since one bank holds one rank).

    Returns one :class:`TrainStats` per slot. A slot that fails (no trainable token,
    non-finite loss or gradient) stops training there and records the reason; the other
    slots are unaffected. Never raises for a single slot's failure.

    Raises:
        ValueError: more text lists than slots, ``len(seeds) != len(texts)``, settings of
            another length, or a setting's ``lora_rank`` differing from ``bank.rank``.
    """
    if len(texts) > bank.n_adapters or len(seeds) != len(texts):
        raise ValueError(
            f"{len(texts)} text lists and {len(seeds)} seeds for a bank of {bank.n_adapters}"
        )
    settings = list(settings) if settings is not None else [None] * len(texts)
    if len(settings) != len(texts):
        raise ValueError(f"{len(settings)} settings for {len(texts)} text lists")
    own = [_own_settings(s, cfg) for s in settings]
    for *_, rank in own:
        if rank != bank.rank:
            raise ValueError(f"an adapter of LoRA rank {rank} in a bank of rank {bank.rank}")
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    data = []
    for t, s, (lr, epochs, loss_on, _) in zip(texts, seeds, own, strict=True):
        rows, starts = tokenize_with_loss(tokenizer, t, cfg.max_length, loss_on, cfg.answer_marker)
        data.append(_SlotData(rows, starts, s, cfg, lr, epochs))
    for slot, (d, t, s) in enumerate(zip(data, texts, seeds, strict=True)):
        if t and not d.rows:
            d.error = "no trainable tokens (every text is empty, or has no loss-bearing token)"
        bank.reset_slot(slot, init_seed(s))
    budget = tokens_per_pass or default_tokens_per_pass(bank.params.device)
    trainer = _BankTrainer(model, bank, data, cfg, pad_id, budget)
    bank.dropout_generator = torch.Generator().manual_seed(
        derive_seed(seeds[0] if seeds else 0, "lora-dropout")
    )
    bank.training = True
    try:
        with torch.enable_grad():
            for epoch in range(max((d.epochs for d in data), default=0)):
                trainer.run_epoch(epoch)
    finally:
        bank.training = False
        bank.set_rows(None)
        bank.params.grad = None
    return [TrainStats(d.epoch_losses, _n_loss_tokens(d.rows, d.starts, cfg), d.error) for d in data]


def _own_settings(settings: AdapterSettings | None, cfg: InnerLoopConfig) -> tuple[float, int, str, int]:
    """(lr, epochs, loss_on, lora_rank) of one adapter: its settings, else ``cfg``'s."""
    s = (settings or AdapterSettings()).resolve(cfg)
    return s["lr"], s["epochs"], s["loss_on"], s["lora_rank"]


def job_rank(job: AdapterJob, cfg: InnerLoopConfig) -> int:
    """The LoRA rank of a job's adapter (its settings', else ``cfg.lora.rank``)."""
    return _own_settings(job.settings, cfg)[3]


# ----------------------------------------------------------------------------- generation


def _eos_ids(model, tokenizer) -> list[int]:
    ids = (
        getattr(model.generation_config, "eos_token_id", None)
        if hasattr(model, "generation_config")
        else None
    )
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def _greedy_batch(
    model, prompts: list[list[int]], max_new_tokens: int, pad_id: int, eos: torch.Tensor
) -> list[list[int]]:
    """Greedy continuations (token ids, EOS excluded) of left-padded prompts, with the KV cache.

    Under ``torch.inference_mode`` (``torch.no_grad`` for a sharded base,
    :func:`seal.sharding.no_grad_for`). With a sharded base every rank must call this with
    the same prompts: each decoding step is a forward pass that all-gathers weights, and the
    ranks stop at the same step (the "every row has ended" flag is agreed between them).
    """
    with no_grad_for(model):
        return _greedy_tokens(model, prompts, max_new_tokens, pad_id, eos)


def _greedy_tokens(
    model, prompts: list[list[int]], max_new_tokens: int, pad_id: int, eos: torch.Tensor
) -> list[list[int]]:
    if max_new_tokens < 1:
        return [[] for _ in prompts]
    device = eos.device
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    # Positions count real tokens only (as HF generate does for left padding).
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
    )
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    tokens = []
    for step in range(max_new_tokens):
        nxt = out.logits[:, -1].argmax(-1).masked_fill(done, pad_id)
        tokens.append(nxt)
        done |= torch.isin(nxt, eos)
        # A sharded base: every rank runs the next forward unless all ranks are done.
        if step == max_new_tokens - 1 or bool(all_ranks_agree(model, done.all())):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=nxt.unsqueeze(1),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=out.past_key_values,
            use_cache=True,
            logits_to_keep=1,
        )
    eos_set = set(eos.tolist())
    result = []
    for row in torch.stack(tokens, dim=1).tolist():
        cut = next((i for i, t in enumerate(row) if t in eos_set), len(row))
        result.append(row[:cut])
    return result


def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[str],
    slots: Sequence[int] | None = None,
    bank: LoraBank | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 64,
) -> list[str]:
    """Greedy answers, each prompt's row routed through ``bank`` slot ``slots[i]`` (-1: base model).

    Prompts are tokenized with the tokenizer's special tokens (BOS if it adds one), left
    padded, decoded from the first generated token to the first EOS (of the model's
    generation config or the tokenizer), special tokens skipped, ``.strip()``-ed.
    ``batch_size`` rows per forward pass. The model must already be in the mode wanted
    (:func:`answer_questions` and :func:`run_inner_loop` put it in eval mode).

    Raises:
        ValueError: ``slots`` given without ``bank``, or of the wrong length.
    """
    if slots is not None and (bank is None or len(slots) != len(prompts)):
        raise ValueError("slots need a bank and one slot per prompt")
    if not prompts:
        return []
    device = next(model.parameters()).device
    eos = torch.tensor(_eos_ids(model, tokenizer), device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(eos[0])
    ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    answers: list[list[int]] = []
    for start in range(0, len(ids), batch_size):
        if bank is not None:
            routed = (
                slots[start : start + batch_size]
                if slots is not None
                else [-1] * len(ids[start : start + batch_size])
            )
            with no_grad_for(model):
                bank.set_rows(torch.tensor(routed))
        try:
            answers += _greedy_batch(
                model, ids[start : start + batch_size], max_new_tokens, pad_id, eos
            )
        finally:
            if bank is not None:
                bank.set_rows(None)
    return [t.strip() for t in tokenizer.batch_decode(answers, skip_special_tokens=True)]


def answer_questions(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 64, batch_size: int = 64
) -> list[str]:
    """Greedy answers of the un-adapted model (the baseline), one per prompt, in order.

    Batched ``batch_size`` prompts at a time, left padding, KV cache, stop at EOS; the
    continuation only, decoded without special tokens and stripped (the reference scores
    vLLM's completion text the same way). The model runs in eval mode; its mode is restored.
    """
    with frozen(model):
        return generate_answers(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
        )


# ----------------------------------------------------------------------------- chunks of adapters

T = TypeVar("T")


def adapter_chunks(items: Sequence[T], batch_adapters: int) -> list[list[T]]:
    """``items`` (jobs, evaluations) in consecutive chunks of ``batch_adapters`` (the last one
    shorter): the adapters of a chunk train together in one :func:`train_bank`.

    The one place where ``inner.batch_adapters`` cuts work: ``seal.scoring.Scorer`` (every outer
    loop's evaluations, the units dealt to the processes) and :func:`run_inner_loop` for its
    other callers (the bench's pooled jobs).
    """
    n = max(1, batch_adapters)
    return [list(items[s : s + n]) for s in range(0, len(items), n)]


def out_of_memory_types() -> tuple[type[BaseException], ...]:
    """The exception types torch raises when a device runs out of memory (CUDA and others)."""
    types = [getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)]
    return tuple(t for t in types if t is not None)


def free_memory() -> None:
    """Collect garbage and return cached CUDA blocks to the driver (after a failure, or
    between models)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- public loop


def _run_chunk(
    model,
    tokenizer,
    bank: LoraBank,
    chunk: Sequence[AdapterJob],
    cfg,
    max_new_tokens,
    qa_batch_size,
):
    stats = train_bank(
        model, tokenizer, bank, [j.texts for j in chunk], [j.seed for j in chunk], cfg,
        settings=[j.settings for j in chunk],
    )  # fmt: skip
    copy_from_main(model, bank.params)  # a sharded base: answer with the main process's adapters
    prompts, slots, owners = [], [], []
    for i, (job, st) in enumerate(zip(chunk, stats, strict=True)):
        if st.error is None:
            prompts += job.prompts
            slots += [i if job.texts else -1] * len(job.prompts)
            owners += [i] * len(job.prompts)
    answers = generate_answers(
        model, tokenizer, prompts, slots, bank, max_new_tokens, qa_batch_size
    )
    per_job: list[list[str]] = [[] for _ in chunk]
    for owner, answer in zip(owners, answers, strict=True):
        per_job[owner].append(answer)
    return [
        AdapterResult(a, st.epoch_losses, st.n_train_tokens, error=st.error)
        for a, st in zip(per_job, stats, strict=True)
    ]


def run_inner_loop(
    model,
    tokenizer,
    jobs: list[AdapterJob],
    cfg: InnerLoopConfig,
    max_new_tokens: int = 64,
    qa_batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> list[AdapterResult]:
    """Train one fresh LoRA adapter per job and answer its prompts with it; results in job order.

    Jobs go in chunks of ``cfg.batch_adapters`` (N): a chunk's adapters train together
    (:func:`train_bank`), then every prompt of the chunk is answered in one batched greedy
    generation, each row through its own adapter (``qa_batch_size`` rows per pass,
    ``max_new_tokens`` at most). A job with no texts gets the base model's answers; a job
    whose training fails gets ``AdapterResult(answers=[], error=reason)`` and leaves the
    other jobs of its chunk as they would be without it.

    ``progress(n)`` is called after each chunk with the number of jobs it finished (an
    increment). ``AdapterResult.seconds`` is the chunk's wall time divided by its size.

    Per-adapter settings (``job.settings``, hyperparameter self-edits): lr, epochs and loss
    mask are *batched* (adapters with different values train in the same steps, see
    :func:`train_bank`); LoRA rank is *grouped*: a chunk's jobs are split by rank, in order
    of first appearance, and each group trains and answers in a bank of its rank (one bank
    per rank, kept for the whole call: adapter memory grows with the number of distinct
    ranks). With one rank (the default) this is one bank, as without settings.

    The base model's weights are bit-identical afterwards, and each module's train/eval
    mode and each parameter's ``requires_grad`` are restored. Works for any dtype/device
    of the model (adapters are fp32 on the model's device).

    Raises:
        seal.multi_lora.LoraTargetError: no module matches ``cfg.lora.target_modules``.
    """
    if not jobs:
        return []
    n = min(cfg.batch_adapters, len(jobs))
    results: list[AdapterResult] = []
    banks: dict[int, LoraBank] = {}
    with ExitStack() as stack:

        def bank_of(rank: int) -> LoraBank:
            if rank not in banks:
                lora = cfg.lora if rank == cfg.lora.rank else cfg.lora.model_copy(update={"rank": rank})
                banks[rank] = stack.enter_context(adapter_bank(model, lora, n))
            return banks[rank]

        for chunk in adapter_chunks(jobs, cfg.batch_adapters):
            t0 = time.perf_counter()
            by_rank: dict[int, list[int]] = {}
            for i, job in enumerate(chunk):
                by_rank.setdefault(job_rank(job, cfg), []).append(i)
            part: list[AdapterResult | None] = [None] * len(chunk)
            for rank, members in by_rank.items():
                group = [chunk[i] for i in members]
                out = _run_chunk(model, tokenizer, bank_of(rank), group, cfg, max_new_tokens, qa_batch_size)
                for i, result in zip(members, out, strict=True):
                    part[i] = result
            for result in part:
                result.seconds = (time.perf_counter() - t0) / len(chunk)
            results += part
            if progress:
                progress(len(chunk))
    return results


def train_full(model, tokenizer, texts: Sequence[str], cfg: InnerLoopConfig, seed: int) -> list[float]:
    """Full fine-tuning: every weight of ``model`` trains on ``texts``, in place (the caller
    passes a copy). The reference's CPT in the paper's second version (their issue 13).

    The same data, order, loss and schedule as an adapter of :func:`train_bank`: rows of
    :func:`tokenize_with_loss`, :func:`epoch_order` per epoch, :func:`step_rows` texts per
    step with the token-mean loss over them (one row per forward/backward pass, the gradients
    summed), AdamW (0.9, 0.999, 1e-8, ``cfg.weight_decay``) over all parameters in their own
    dtype, the schedule of :func:`_learning_rates` over ``epochs * steps_per_epoch`` steps, the
    global gradient norm clipped to ``cfg.max_grad_norm``. ``cfg.lora`` is unused. Memory:
    the model's weights, gradients and two AdamW moments, about 4x its bytes, in one process
    (no ZeRO sharding). Returns the epoch losses (nats/token).

    Raises:
        InnerLoopError: no trainable token, or a non-finite loss or gradient (``model`` is then
            part-trained: discard it).
        ValueError: ``cfg.train_on_padding`` (not supported here).
    """
    if cfg.train_on_padding:
        raise ValueError("full fine-tuning does not reproduce train_on_padding")
    rows, starts = tokenize_with_loss(tokenizer, texts, cfg.max_length, cfg.loss_on, cfg.answer_marker)
    if not rows:
        raise InnerLoopError("no trainable tokens (every text is empty, or has no loss-bearing token)")
    device = next(model.parameters()).device
    per_step = step_rows(cfg)
    steps_per_epoch = math.ceil(len(rows) / per_step)
    total = cfg.epochs * steps_per_epoch
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    peak, steps = torch.tensor([cfg.lr], dtype=torch.float64), torch.tensor([float(total)], dtype=torch.float64)
    losses = []
    with frozen(model):  # eval mode (no dropout), restored after; the weights are made trainable below
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for epoch in range(cfg.epochs):
                order, loss_sum, n_tokens = epoch_order(seed, epoch, len(rows)), 0.0, 0
                for step in range(steps_per_epoch):
                    part = order[step * per_step : (step + 1) * per_step]
                    count = sum(len(rows[j]) - starts[j] for j in part)
                    for j in part:
                        ids = torch.tensor([rows[j]], device=device)
                        logits = model(input_ids=ids).logits[0, starts[j] - 1 : -1].float()
                        loss = F.cross_entropy(logits, ids[0, starts[j] :], reduction="sum")
                        if not torch.isfinite(loss):
                            raise InnerLoopError(f"non-finite loss at step {epoch * steps_per_epoch + step + 1}")
                        (loss / count).backward()
                        loss_sum += loss.item()
                    norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
                    if not torch.isfinite(norm):
                        raise InnerLoopError(f"non-finite gradient at step {epoch * steps_per_epoch + step + 1}")
                    done = torch.tensor([float(epoch * steps_per_epoch + step)], dtype=torch.float64)
                    for group in opt.param_groups:  # the adapters' schedule (_learning_rates), one slot
                        group["lr"] = float(_learning_rates(cfg, peak, done, steps)[0])
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    n_tokens += count
                losses.append(loss_sum / n_tokens)
    return losses


def train_and_merge(
    model, tokenizer, texts: Sequence[str], cfg: InnerLoopConfig, seed: int
) -> list[float]:
    """Train one adapter on ``texts`` and fold it into the base weights: ``W += (alpha/r) * B @ A``.

    For continual self-edits: the next step starts from the merged model. Training is
    :func:`train_bank` with one slot (same data order, init, loss and optimizer as
    :func:`run_inner_loop`); ``cfg.batch_adapters`` is ignored. No texts: nothing is
    trained or merged. Returns the epoch losses (nats/token).

    Raises:
        InnerLoopError: training failed (no trainable token, non-finite loss or
            gradient); the model is then left unchanged.
        seal.sharding.ShardingError: the model is sharded (``model.shard: fsdp``).
    """
    if not texts:
        return []
    if is_sharded(model):
        raise ShardingError("train_and_merge writes the base weights; it does not support a sharded base (model.shard: fsdp)")
    with adapter_bank(model, cfg.lora, 1) as bank:
        (st,) = train_bank(model, tokenizer, bank, [list(texts)], [seed], cfg)
        if st.error is not None:
            raise InnerLoopError(st.error)
        bank.merge_into_base(0)
    return st.epoch_losses
