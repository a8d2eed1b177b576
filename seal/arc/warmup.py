"""A tiny ARC policy's warm-up: a few hundred steps that teach a random tiny model to write
configurations (``model.build_tiny.warmup: arc-configs``).

A tiny random policy never writes a configuration that parses (``seal.arc.self_edit``), so
test-time training never runs in a CPU round. The warm-up trains the freshly built tiny model
on the recipe's own self-edit prompts (``self_edit.template`` with the configuration hint,
``seal.arc.self_edit.self_edit_hint``) of the training tasks, each followed by a configuration drawn
at random from the recipe's declared space (``arc.families`` switches, ``self_edit.hparams``
``lr``/``epochs``/``loss_on``/``lora_rank``) and EOS; the loss is on the configuration and EOS
only. Sampled self-edits then mostly parse and vary (a spread of families and settings), so a
round parses them, builds test-time-training sets, trains adapters and updates the policy. It
teaches the format and the space's marginal distribution, not which configuration helps.

The same idea as ``benchmarks/inner_loop.py``'s ``_pretrain`` and the microworld's
pretraining (``seal.microworld.pretrain``), sized for one CPU thread (seconds to a minute).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from seal.arc.augment import permute_colors
from seal.arc.config import FAMILIES, ArcSection
from seal.arc.self_edit import read_configuration, self_edit_hint
from seal.arc.tasks import ArcTask, Example, task_passage
from seal.prompts import self_edit_prompt
from seal.sections import HparamsConfig

#: Learning rates a drawn configuration uses: 1, 2 and 5 times powers of ten, those in the
#: declared range (short numbers the tiny tokenizer writes in a few tokens).
_MANTISSAS = (1.0, 2.0, 5.0)


def lr_choices(low: float, high: float) -> list[float]:
    """1, 2 and 5 x 10^k within ``[low, high]`` (both > 0), ascending; ``[low]`` when none is."""
    values = []
    for exp in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1):
        for m in _MANTISSAS:
            v = float(f"{m}e{exp}")
            if low <= v <= high:
                values.append(v)
    return values or [low]


def random_configuration(rng: np.random.Generator, space: HparamsConfig, arc: ArcSection) -> str:
    """One configuration drawn from the recipe's declared space, as the self-edit text a policy
    would write (``space.format``): each family of ``arc.families`` on or off with probability
    1/2, then every declared optimisation key (``lr`` from :func:`lr_choices`, ``epochs``
    uniform in its range, ``loss_on`` / ``lora_rank`` uniform over the choices). It always
    parses with :func:`seal.arc.self_edit.parse_configuration`."""
    values: dict = {f: bool(rng.random() < 0.5) for f in FAMILIES if f in arc.families}
    if space.lr is not None:
        choices = lr_choices(space.lr.min, space.lr.max)
        values["lr"] = choices[int(rng.integers(len(choices)))]
    if space.epochs is not None:
        values["epochs"] = int(rng.integers(space.epochs.min, space.epochs.max + 1))
    if space.loss_on is not None:
        values["loss_on"] = space.loss_on[int(rng.integers(len(space.loss_on)))]
    if space.lora_rank is not None:
        values["lora_rank"] = space.lora_rank[int(rng.integers(len(space.lora_rank)))]
    if space.format == "json":
        return json.dumps(values)
    return "\n".join(f"{k}: {json.dumps(v).strip(chr(34))}" for k, v in values.items())


def _recoloured(task: ArcTask, rng: np.random.Generator) -> ArcTask:
    """``task`` with one random colour permutation applied to every grid (a new prompt)."""
    aug = permute_colors(rng)

    def ex(e: Example) -> Example:
        return Example(aug.apply(e.input), aug.apply(e.output))

    return ArcTask(task.id, tuple(map(ex, task.train)), tuple(map(ex, task.test)))


def warmup_prompts(tasks: Sequence[ArcTask], recipe, tokenizer, copies: int, seed: int) -> list[str]:
    """The self-edit prompts the warm-up trains on: each task's prompt as a round builds it
    (``self_edit.template``, ``chat_template``, the configuration hint) and ``copies`` more
    with its colours permuted (seeded by ``seed``)."""
    rng = np.random.default_rng(seed)
    config = recipe.self_edit
    hint = self_edit_hint(config, recipe.arc)
    variants = [v for t in tasks for v in (t, *(_recoloured(t, rng) for _ in range(copies)))]
    return [
        self_edit_prompt(config.template, p.title, p.context, tokenizer, config.chat_template, hint)
        for p in map(task_passage, variants)
    ]


def _batch(rows: list[tuple[list[int], int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, labels) of (token ids, prompt length) rows, right-padded; labels
    are -100 on prompts and padding."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for i, (row, start) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, start : len(row)] = torch.tensor(row[start:])
    return ids, mask, labels


def train_warmup(
    model,
    tokenizer,
    prompts: Sequence[str],
    draw: Callable[[], str],
    steps: int,
    seed: int,
    batch_size: int = 8,
    lr: float = 1e-2,
    chat: bool = False,
) -> list[float]:
    """``steps`` AdamW steps (``lr`` peak, 20 warm-up steps then linear decay, clip 1.0) of
    next-token loss on prompt + ``draw()`` + EOS, the loss on the configuration and EOS only;
    ``batch_size`` prompts drawn with replacement per step. Seeded by ``seed`` (torch and the
    prompt draws; ``draw`` carries its own generator). Returns the loss of every step; the model
    is left in eval mode.

    Raises:
        ValueError: no prompts.
    """
    if not prompts:
        raise ValueError("the warm-up has no prompts (every task's prompt is too long?)")
    torch.manual_seed(seed)
    pick = np.random.default_rng(seed)
    encoded = [tokenizer(p, add_special_tokens=not chat)["input_ids"] for p in prompts]
    eos = tokenizer.eos_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * (1 - s / steps))
    model.train()
    losses = []
    for _ in range(steps):
        rows = []
        for i in pick.integers(len(encoded), size=batch_size):
            prompt = encoded[int(i)]
            rows.append((prompt + tokenizer(draw(), add_special_tokens=False)["input_ids"] + [eos], len(prompt)))
        ids, mask, labels = _batch(rows, tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(round(loss.item(), 4))
    model.eval()
    return losses


def parse_share(model, tokenizer, tasks: Sequence[ArcTask], recipe, k: int, seed: int) -> dict:
    """Sample ``k`` self-edits per task as a round does (the recipe's ``self_edit`` settings) and
    count those that parse: ``{"n", "parsed", "share", "distinct", "examples"}`` (``distinct``:
    different parsed configurations; ``examples``: the first three texts)."""
    from seal.self_edits import sample_self_edits

    config = recipe.self_edit
    texts = [
        t
        for row in sample_self_edits(
            model, tokenizer, [task_passage(t) for t in tasks], config.template, k, config.temperature, config.top_p,
            config.max_new_tokens, seed=seed, batch_size=config.batch_size, chat=config.chat_template,
            hint=self_edit_hint(config, recipe.arc),
        )  # fmt: skip
        for t in row
    ]
    parsed = [c for c, _ in (read_configuration(t, config.hparams, recipe.arc) for t in texts) if c is not None]
    return {
        "n": len(texts),
        "parsed": len(parsed),
        "share": len(parsed) / len(texts) if texts else 0.0,
        "distinct": len(set(parsed)),
        "examples": texts[:3],
    }


def warm_up_tiny_policy(
    model_dir: str | Path,
    tasks: Sequence[ArcTask],
    recipe,
    steps: int,
    seed: int,
    lr: float = 1e-2,
    max_prompt_tokens: int = 512,
    log: Callable[[str], None] = print,
) -> dict:
    """Warm up the tiny model in ``model_dir`` in place (module docstring) and save it.

    Args:
        tasks: the tasks whose prompts it trains on (those over ``max_prompt_tokens`` tokens
            are left out) and on which the parse share is measured (the first 8, 4 samples each).
        recipe: a :class:`seal.config.Recipe` with an ``arc`` section (its ``self_edit``
            settings, declared space and families).
        steps, seed, lr: AdamW steps (one thread: about 0.1-0.15 s each at width 64), the seed
            and the peak learning rate (:func:`train_warmup`).

    Returns the warm-up's report: steps, seconds, prompts, first and last losses (mean of 10
    steps, nats per configuration token), and :func:`parse_share`'s figures.

    Raises:
        ValueError: no task's prompt fits ``max_prompt_tokens``.
    """
    from seal.models import load_model

    t0 = time.perf_counter()
    model, tok = load_model(model_dir, device="cpu")
    chat = recipe.self_edit.chat_template
    prompts = [p for p in warmup_prompts(tasks, recipe, tok, copies=7, seed=seed) if len(tok(p)["input_ids"]) <= max_prompt_tokens]
    rng = np.random.default_rng(seed + 1)
    losses = train_warmup(
        model, tok, prompts, lambda: random_configuration(rng, recipe.self_edit.hparams, recipe.arc), steps, seed, lr=lr, chat=chat
    )
    share = parse_share(model, tok, tasks[:8], recipe, k=4, seed=seed)
    model.save_pretrained(model_dir)
    report = {
        "steps": steps,
        "lr": lr,
        "seconds": round(time.perf_counter() - t0, 1),
        "prompts": len(prompts),
        "loss_first": round(float(np.mean(losses[:10])), 3),
        "loss_last": round(float(np.mean(losses[-10:])), 3),
        "parse": share,
    }
    log(
        f"warmed up the tiny policy in {report['seconds']} s ({steps} steps on {len(prompts)} prompts, "
        f"loss {report['loss_first']} -> {report['loss_last']}): {share['parsed']}/{share['n']} sampled "
        f"configurations parse, {share['distinct']} distinct"
    )
    return report
