"""Pretraining the microworld's small Llama from scratch, and the cache that keeps its result.

``ensure_microworld()`` returns a directory with everything a CPU-scale SEAL run needs::

    <cache_dir>/<key>/model/            HF model + tokenizer (seal.models.load_model)
                     /train.json        RL-training passages (SEAL format)
                     /eval.json         evaluation passages (SEAL format)
                     /oracle_train.json same passages + "completions": [generator-written self-edit]
                     /oracle_eval.json
                     /world.json        the world's settings and name pools
                     /meta.json         settings, seed, timings, loss curve, copy-skill metrics

``<key>`` hashes every setting plus the prompt templates, so a changed setting or template
builds a new entry and an unchanged one is reused. Each entry is written to a temporary
sibling directory and renamed into place when complete, so a killed pretraining never leaves a
half-written entry: an exception removes the temporary directory, and one left by a hard
kill (SIGKILL/SIGTERM) is deleted by the next pretraining of the same entry.
"""

from __future__ import annotations

import math
import os
import platform
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from seal.config import SelfEditConfig
from seal.data import passage_from_json
from seal.graders import contains
from seal.hparams import parse_self_edit, split_block
from seal.inner_loop import answer_questions
from seal.microworld.config import FORMAT_VERSION, CopySkillError, PretrainConfig, settings_key
from seal.microworld.corpus import SELF_EDIT_TEMPLATE, Doc, copy_docs, memory_epoch, memory_people
from seal.microworld.world import (
    STYLES,
    World,
    WorldConfig,
    classify_style,
    copy_stats,
    entity_from_record,
    make_entity,
    make_world,
    passage_record,
    questions,
    render_self_edit,
)
from seal.models import llama_config, train_tokenizer
from seal.prompts import qa_prompt
from seal.rundir import write_json_atomic
from seal.sections import HparamsConfig
from seal.seeding import derive_seed
from seal.self_edits import sample_self_edits


def _stderr_log(msg: str) -> None:
    print(f"[microworld] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- copy skill


def sample_on_records(model, tok, records: Sequence[dict], k: int, temperature: float | None, seed: int) -> list[list[str]]:
    """``k`` self-edits per SEAL-format passage record with :func:`seal.self_edits.sample_self_edits`
    (``implications`` template, top-p 0.95, up to 256 tokens; ``temperature=None``: greedy, k=1)."""
    passages = [passage_from_json(r, f"microworld passage {i}") for i, r in enumerate(records)]
    sampling = SelfEditConfig(
        template=SELF_EDIT_TEMPLATE, k=k, top_p=0.95, max_new_tokens=256, batch_size=max(1, 64 // k),
        **({} if temperature is None else {"temperature": temperature}),
    )  # fmt: skip
    return sample_self_edits(model, tok, passages, sampling, seed, greedy=temperature is None)


def copy_metrics(records: Sequence[dict], samples: Sequence[Sequence[str]], marker: str | None = None) -> dict:
    """Copy skill of sampled self-edits.

    ``marker``: a hyperparameter world's block marker; the block after it is left out of every
    statistic (it states settings, not facts).

    Returns a dict: ``value_precision`` (share of attribute-value mentions that are the
    passage's own values: the fraction of attribute values copied correctly), ``value_recall``
    (share of the passage's values present, over self-edits of the full styles qa, paraphrase,
    facts, verbatim), ``name_ok`` (share of self-edits containing the full name), ``styles``
    (share of each style), ``per_style_precision``, ``n`` (self-edits).
    """
    styles: Counter = Counter()
    mentions = correct = 0
    rec_sum, rec_n, name_ok, total = 0.0, 0, 0, 0
    style_mentions: Counter = Counter()
    style_correct: Counter = Counter()
    for record, record_samples in zip(records, samples, strict=True):
        entity = entity_from_record(record)
        for sample in record_samples:
            if marker is not None:
                sample = split_block(sample, marker)[0]
            style = classify_style(sample)
            stats = copy_stats(sample, entity)
            styles[style] += 1
            mentions += stats["mentions"]
            correct += stats["correct"]
            style_mentions[style] += stats["mentions"]
            style_correct[style] += stats["correct"]
            if style in ("qa", "paraphrase", "facts", "verbatim"):
                rec_sum += stats["recall"]
                rec_n += 1
            name_ok += stats["name_ok"]
            total += 1
    return {
        "n": total,
        "value_precision": correct / mentions if mentions else 0.0,
        "value_recall": rec_sum / rec_n if rec_n else 0.0,
        "name_ok": name_ok / total if total else 0.0,
        "styles": {k: v / total for k, v in sorted(styles.items())} if total else {},
        "per_style_precision": {k: style_correct[k] / style_mentions[k] for k in sorted(style_mentions) if style_mentions[k]},
    }


# ----------------------------------------------------------------------------- pretraining


def memory_qa_accuracy(model, tok, world: World, cfg: PretrainConfig, n: int = 60) -> dict:
    """Greedy no-passage QA accuracy on memory people: ``with_qa`` (their QA was in the corpus)
    and ``bio_only`` (only their biographies were): the second is the knowledge-extraction
    skill the inner loop relies on (Allen-Zhu & Li 2023, Part 3.1)."""
    mem = memory_people(world, cfg.n_memory, cfg.seed)
    n_qa = round(cfg.qa_fraction * len(mem))
    rng = random.Random(derive_seed(cfg.seed, "microworld", "memory-qa"))
    out = {}
    for name, people in (("with_qa", mem[:n_qa][:n]), ("bio_only", mem[n_qa:][:n])):
        qs = [(e.name, q) for e in people for q in questions(e, rng)]
        if not qs:
            continue
        ans = answer_questions(
            model, tok, [qa_prompt(t, q["question"], cfg.qa_template) for t, q in qs], max_new_tokens=8
        )
        out[name] = sum(contains(a, q["answer"]) for a, (_, q) in zip(ans, qs, strict=True)) / len(qs)
    return out


def openbook_accuracy(model, tok, records: Sequence[dict]) -> float:
    """Share of questions answered right (``contains``) with the passage in context: greedy
    answers to ``"{title}\n{passage}\nQ: {question} A:"``, the open-book format of the copy
    curriculum. The purest measure of the copy skill: finding a value in the context."""
    prompts, golds = [], []
    for record in records:
        for q in record["questions"]:
            prompts.append(f"{record['title']}\n{record['context']}\nQ: {q['question']} A:")
            golds.append(q["answer"])
    answers = answer_questions(model, tok, prompts, max_new_tokens=8, batch_size=128)
    return sum(contains(a, g) for a, g in zip(answers, golds, strict=True)) / len(golds)


def copy_check(model, tok, records: Sequence[dict], seed: int, marker: str | None = None) -> dict:
    """The copy gate's measurement on fresh people: ``openbook`` accuracy (:func:`openbook_accuracy`)
    and the :func:`copy_metrics` of one greedy self-edit each (``marker``: see there).
    Leaves the model in train mode."""
    model.eval()
    try:
        metrics = copy_metrics(records, sample_on_records(model, tok, records, 1, None, seed), marker)
        metrics["openbook"] = openbook_accuracy(model, tok, records)
    finally:
        model.train()
    metrics.pop("per_style_precision")
    return metrics


def _batches(ids: list[list[int]], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted within pools of 50 batches), shuffled."""
    order = list(range(len(ids)))
    rng.shuffle(order)
    pool = 50 * batch_size
    out = []
    for p in range(0, len(order), pool):
        chunk = sorted(order[p : p + pool], key=lambda i: len(ids[i]))
        out += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def _collate(
    ids: list[list[int]], starts: list[int], idx: list[int], pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (int64 [B, L]); labels are
    -100 on padding and before each document's loss start."""
    L = max(len(ids[i]) for i in idx)
    x = torch.full((len(idx), L), pad, dtype=torch.long)
    mask = torch.zeros((len(idx), L), dtype=torch.long)
    labels = torch.full((len(idx), L), -100, dtype=torch.long)
    for r, i in enumerate(idx):
        t = torch.tensor(ids[i])
        x[r, : len(t)] = t
        mask[r, : len(t)] = 1
        labels[r, starts[i] : len(t)] = t[starts[i] :]
    return x, mask, labels


def _check_records(world: World, n: int, seed: int) -> list[dict]:
    """``n`` fresh people (new facts, the corpus's fact counts) on the last pretraining names:
    the copy gate's check set. Never trained on as such: corpus people get new random facts."""
    rng = random.Random(derive_seed(seed, "microworld", "copy-check"))
    names = world.pretrain_names[-n:]
    return [
        passage_record(make_entity(rng, f, s, world.config.min_facts, world.config.max_facts), rng)
        for f, s in names
    ]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_tmp(out: Path) -> None:
    """Delete ``<out>.tmp-<pid>`` directories left by killed pretrainings (their pid is gone)."""
    for tmp in out.parent.glob(f"{out.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


class Pretrainer:
    """The model, its optimizer and tokenizer, and the bookkeeping of one pretraining.

    ``train_on(docs, lr_at)`` runs one pass over a list of documents (length-grouped batches
    of ``cfg.batch_size``, loss after each document's prompt, gradient clipping at 1.0), with
    ``lr_at(step)`` giving the learning rate of the global step. Steps, tokens seen and the
    smoothed loss carry over from one call to the next.
    """

    def __init__(self, cfg: PretrainConfig, tok, log: Callable[[str], None]):
        self.cfg, self.tok, self.log = cfg, tok, log
        mcfg = llama_config(
            tok, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size, max(512, cfg.max_length)
        )
        torch.manual_seed(derive_seed(cfg.seed, "microworld", "init"))
        self.model = LlamaForCausalLM(mcfg)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        params = list(self.model.named_parameters())
        self.opt = torch.optim.AdamW(
            [
                {"params": [p for _, p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            betas=(0.9, 0.98),
        )
        self.order_rng = random.Random(derive_seed(cfg.seed, "microworld", "order"))
        self.step = self.tokens = self.n_tokens_corpus = 0
        self.ema: float | None = None
        self.history: list[dict] = []
        self.t_start = time.perf_counter()
        self._last = (self.t_start, 0)
        self.model.train()

    def encode(self, docs: Sequence[Doc]) -> tuple[list[list[int]], list[int]]:
        """Token ids (EOS appended, truncated to ``max_length``) and each document's loss start."""
        eos = self.tok.eos_token_id
        ids = [(x + [eos])[: self.cfg.max_length] for x in self.tok([doc.text for doc in docs])["input_ids"]]
        heads = self.tok([doc.text[: doc.prompt_chars] for doc in docs])["input_ids"]
        # Loss from the first token after the prompt (token boundaries agree at "\n").
        starts = [len(h) if d.prompt_chars and x[: len(h)] == h else 0 for d, x, h in zip(docs, ids, heads, strict=True)]
        self.n_tokens_corpus += sum(len(x) for x in ids)
        return ids, starts

    def train_on(self, docs: Sequence[Doc], lr_at: Callable[[int], float]) -> None:
        ids, starts = self.encode(docs)
        for idx in _batches(ids, self.cfg.batch_size, self.order_rng):
            for g in self.opt.param_groups:
                g["lr"] = lr_at(self.step)
            x, mask, labels = _collate(ids, starts, idx, self.tok.pad_token_id)
            loss = self.model(input_ids=x, attention_mask=mask, labels=labels).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite pretraining loss at step {self.step}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
            self.tokens += int(mask.sum())  # tokens processed (with or without loss)
            self.ema = loss.item() if self.ema is None else 0.98 * self.ema + 0.02 * loss.item()
            if self.step % self.cfg.log_every == 0:
                self._log_progress(lr_at(self.step - 1))

    def _log_progress(self, lr: float) -> None:
        now = time.perf_counter()
        tps = (self.tokens - self._last[1]) / max(1e-9, now - self._last[0])
        self._last = (now, self.tokens)
        self.history.append({"step": self.step, "loss": round(self.ema, 4), "tokens": self.tokens})
        self.log(f"step {self.step} loss {self.ema:.3f} lr {lr:.2e} {tps:,.0f} tok/s ({now - self.t_start:.0f} s)")


def _marker(cfg: PretrainConfig) -> str | None:
    """The hyperparameter block marker of a world with hyperparameter demonstrations, else None."""
    return cfg.hparam_marker if cfg.hparam_demos else None


def demo_choices(samples: Sequence[Sequence[str]], cfg: PretrainConfig) -> dict:
    """How sampled self-edits chose in a hyperparameter world: ``{"n", "no_block", "refused",
    "settings": {"lr=<lr> epochs=<n>": share of the self-edits}}`` (shares of all ``n``),
    blocks read by :func:`seal.hparams.parse_self_edit` over the demonstrated spread."""
    space = HparamsConfig(
        enabled=True, format=cfg.hparam_format, marker=cfg.hparam_marker, required=True,
        lr={"min": min(cfg.hparam_lrs), "max": max(cfg.hparam_lrs)}, epochs={"min": min(cfg.hparam_epochs), "max": max(cfg.hparam_epochs)},
    )  # fmt: skip
    counts: Counter = Counter()
    n = 0
    for sample in (s for record_samples in samples for s in record_samples):
        n += 1
        parsed = parse_self_edit(sample, space)
        if parsed.settings is None:
            counts["no_block" if "no block" in (parsed.error or "") else "refused"] += 1
        else:
            counts[f"lr={parsed.settings.lr:g} epochs={parsed.settings.epochs}"] += 1
    return {
        "n": n,
        "no_block": counts.pop("no_block", 0) / max(1, n),
        "refused": counts.pop("refused", 0) / max(1, n),
        "settings": {k: v / max(1, n) for k, v in sorted(counts.items())},
    }


def _docs_per_block(cfg: PretrainConfig) -> int:
    return cfg.copy_block_steps * cfg.batch_size


def copy_phase(pt: Pretrainer, world: World, check_recs: list[dict]) -> list[dict]:
    """Train on copy-curriculum blocks (:func:`seal.microworld.corpus.copy_docs`) until the
    copy gate opens: open-book accuracy on the check people at least ``cfg.copy_gate`` after at
    least ``cfg.copy_min_steps`` steps. The learning rate warms up linearly over
    ``cfg.warmup_steps`` and then stays at its peak (the knowledge phase decays it).

    Returns the checks (one dict per block: step, openbook, value precision/recall, styles).
    Raises :class:`CopySkillError` when ``cfg.copy_max_steps`` pass with the gate shut.
    """
    cfg = pt.cfg

    def lr_at(step: int) -> float:
        return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))

    checks: list[dict] = []
    block = 0
    while True:
        pt.train_on(
            copy_docs(world, cfg, block, _docs_per_block(cfg)),
            lr_at,
        )
        block += 1
        gate = copy_check(pt.model, pt.tok, check_recs, cfg.seed, _marker(cfg))
        checks.append({"step": pt.step, **gate})
        is_open = gate["openbook"] >= cfg.copy_gate and pt.step >= cfg.copy_min_steps
        pt.log(
            f"copy gate @ step {pt.step}: open-book accuracy {gate['openbook']:.2f} (gate {cfg.copy_gate:.2f}), "
            f"self-edit value precision {gate['value_precision']:.2f} recall {gate['value_recall']:.2f}"
            + (": open" if is_open else "")
        )
        if is_open:
            return checks
        if pt.step + cfg.copy_block_steps > cfg.copy_max_steps:
            raise CopySkillError(
                f"pretraining did not learn to copy: after {pt.step} steps of the copy curriculum, "
                f"open-book accuracy on {len(check_recs)} fresh people is {gate['openbook']:.2f}, below "
                f"the gate {cfg.copy_gate:.2f} (microworld seed {cfg.seed}). Nothing was cached. Try "
                f"another microworld.seed, or a larger microworld.copy_max_steps."
            )


def knowledge_phase(pt: Pretrainer, world: World) -> None:
    """``cfg.memory_epochs`` epochs of memory people (passages + QA), demonstrations in every
    style, and ``cfg.main_copy_docs`` copy-curriculum documents per epoch, so the copy skill
    keeps being exercised (ending the copy curriculum abruptly made the loss jump and the skill
    fade). The learning rate decays from its peak to 10 % on a cosine over the phase.
    """
    cfg = pt.cfg
    epochs = [
        memory_epoch(world, cfg, ep)
        for ep in range(cfg.memory_epochs)
    ]
    first = pt.step
    n_docs = sum(len(e) for e in epochs) + cfg.memory_epochs * cfg.main_copy_docs
    total = max(1, math.ceil(n_docs / cfg.batch_size))

    def lr_at(step: int) -> float:
        p = min(1.0, (step - first) / total)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    for ep, docs in enumerate(epochs):
        # Copy blocks numbered after any the copy phase can draw, so none is seen twice.
        extra = copy_docs(world, cfg, 10_000 + ep, cfg.main_copy_docs)
        mixed = docs + extra
        random.Random(derive_seed(cfg.seed, "microworld", "mix", ep)).shuffle(mixed)
        pt.train_on(mixed, lr_at)


def _train_tokenizer(world: World, cfg: PretrainConfig):
    """A byte-level BPE trained on the first copy block and the first two knowledge epochs."""
    docs = copy_docs(world, cfg, 0, _docs_per_block(cfg))
    for ep in range(min(2, cfg.memory_epochs)):
        docs += memory_epoch(world, cfg, ep)
    rng = random.Random(derive_seed(cfg.seed, "microworld", "tokenizer"))
    return train_tokenizer((doc.text for doc in rng.sample(docs, min(len(docs), 20000))), cfg.vocab_size)


def final_copy_skill(model, tok, records: Sequence[dict], cfg: PretrainConfig) -> dict:
    """Copy skill of the finished policy on the first ``cfg.n_copy_eval`` evaluation people: 2
    sampled self-edits each (T=1, top-p 0.95, as ReST-EM samples) plus greedy open-book accuracy.

    Raises :class:`CopySkillError` if the value precision is below ``cfg.min_copy_precision``.
    """
    held_out = list(records[: cfg.n_copy_eval])
    if not held_out:
        return {}
    t1 = time.perf_counter()
    samples = sample_on_records(model, tok, held_out, 2, 1.0, cfg.seed)
    metrics = copy_metrics(held_out, samples, _marker(cfg))
    if cfg.hparam_demos:
        metrics["hparams"] = demo_choices(samples, cfg)
    metrics["openbook"] = openbook_accuracy(model, tok, held_out)
    metrics["seconds"] = round(time.perf_counter() - t1, 1)
    metrics["examples"] = [x[0] for x in samples[:3]]
    if metrics["value_precision"] < cfg.min_copy_precision:
        raise CopySkillError(
            f"pretraining did not learn to copy: the finished policy copies {100 * metrics['value_precision']:.0f} % of "
            f"attribute values right in self-edits about {len(held_out)} held-out people (needed: "
            f"{100 * cfg.min_copy_precision:.0f} %; open-book accuracy {100 * metrics['openbook']:.0f} %), "
            f"microworld seed {cfg.seed}. Nothing was cached. Try another microworld.seed, or a "
            f"stricter microworld.copy_gate."
        )
    return metrics


def _write_passages(tmp: Path, world: World, cfg: PretrainConfig) -> dict[str, list[dict]]:
    """``train.json``, ``eval.json`` and the oracle's ``oracle_*.json``; returns the records by split."""
    out = {}
    for split, people in (("train", world.train), ("eval", world.eval)):
        prng = random.Random(derive_seed(cfg.seed, "microworld", "records", split))
        recs = [passage_record(e, prng) for e in people]
        write_json_atomic(tmp / f"{split}.json", recs)
        orng = random.Random(derive_seed(cfg.seed, "microworld", "oracle", split))
        oracle = [
            {**r, "completions": [render_self_edit(e, cfg.oracle_style, orng, r["context"])]}
            for r, e in zip(recs, people, strict=True)
        ]
        write_json_atomic(tmp / f"oracle_{split}.json", oracle)
        out[split] = recs
    return out


def _world_json(world: World, cfg: PretrainConfig) -> dict:
    return {
        "config": world.config.__dict__,
        "n_pretrain_names": len(world.pretrain_names),
        "train_names": [" ".join(n) for n in world.train_names],
        "eval_names": [" ".join(n) for n in world.eval_names],
        "memory_names": [" ".join(n) for n in world.pretrain_names[: cfg.n_memory]],
        "styles": list(STYLES),
    }


def _build(tmp: Path, cfg: PretrainConfig, log: Callable[[str], None]) -> dict:
    """Everything :func:`pretrain` writes, into ``tmp``; returns ``meta.json``'s content."""
    t0 = time.perf_counter()
    world = make_world(WorldConfig(cfg.seed, cfg.n_train, cfg.n_eval, cfg.min_facts, cfg.max_facts))
    tok = _train_tokenizer(world, cfg)
    t_tok = time.perf_counter() - t0
    pt = Pretrainer(cfg, tok, log)
    log(f"model: {pt.n_params / 1e6:.2f} M params, vocab {len(tok)}; copy curriculum until the gate opens, then {cfg.memory_epochs} knowledge epochs")
    checks = copy_phase(pt, world, _check_records(world, cfg.n_check_people, cfg.seed))
    copy_steps = pt.step
    log(f"copy gate open after {copy_steps} steps; knowledge phase")
    knowledge_phase(pt, world)
    t_train = time.perf_counter() - pt.t_start
    pt.model.eval()
    pt.model.generation_config.pad_token_id = tok.pad_token_id
    records = _write_passages(tmp, world, cfg)
    skill = final_copy_skill(pt.model, tok, records["eval"], cfg)
    log(
        f"copy skill on {len(records['eval'][: cfg.n_copy_eval])} held-out people (T=1, top-p 0.95): value precision "
        f"{skill.get('value_precision', 0):.3f} recall {skill.get('value_recall', 0):.3f}, open-book accuracy {skill.get('openbook', 0):.3f}"
    )
    mem_acc = memory_qa_accuracy(pt.model, tok, world, cfg)
    log(f"memory QA accuracy (no passage): {mem_acc}")
    pt.model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    write_json_atomic(tmp / "world.json", _world_json(world, cfg))
    return {
        "settings": cfg.model_dump(mode="json"),
        "key": settings_key(cfg),
        "format_version": FORMAT_VERSION,
        "n_params": pt.n_params,
        "n_tokens": pt.n_tokens_corpus,
        "steps": pt.step,
        "copy_steps": copy_steps,
        "seconds": {
            "tokenizer": round(t_tok, 1),
            "train": round(t_train, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
        "final_loss": pt.history[-1]["loss"] if pt.history else None,
        "loss_history": pt.history,
        "copy_checks": checks,
        "copy_skill": skill,
        "memory_qa_accuracy": mem_acc,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }


def pretrain(
    out_dir: str | os.PathLike,
    cfg: PretrainConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Build the world, pretrain the model and write a complete microworld directory at ``out_dir``.

    Two phases (see :func:`copy_phase`, :func:`knowledge_phase`): a copy curriculum that runs
    until the copy gate opens, then the knowledge phase; the finished policy's copy skill on
    held-out people must clear ``cfg.min_copy_precision``. Writes into ``<out_dir>.tmp-<pid>``
    and renames it to ``out_dir`` at the end (atomic on one file system), so a failed gate or a
    killed run leaves no entry. Progress lines go to ``log`` (default stderr).

    Returns ``out_dir``. Raises ``FileExistsError`` if ``out_dir`` already exists, ``ValueError``
    for inconsistent settings, :class:`CopySkillError` if the copy skill does not emerge.
    """
    cfg = cfg or PretrainConfig()
    log = log or _stderr_log
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; delete it or use ensure_microworld()")
    if cfg.min_facts > cfg.max_facts or cfg.copy_min_facts > cfg.copy_max_facts:
        raise ValueError("min_facts > max_facts")
    old_threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    _remove_stale_tmp(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        meta = _build(tmp, cfg, log)
        write_json_atomic(tmp / "meta.json", meta)  # last: its presence marks a complete entry
        if out.exists():
            raise FileExistsError(f"{out} appeared while pretraining")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(old_threads)
    log(f"wrote {out} in {time.perf_counter() - t0:.0f} s")
    return out


def ensure_microworld(
    cache_dir: str | os.PathLike = ".cache/microworld",
    seed: int = 0,
    cfg: PretrainConfig | None = None,
    log: Callable[[str], None] | None = None,
    **overrides,
) -> Path:
    """The microworld directory for these settings, pretraining it first if it is not cached.

    Args:
        cache_dir: parent of cache entries; each entry is ``<cache_dir>/<settings_key>``.
        seed: the world's and pretraining's seed (overrides ``cfg.seed``).
        cfg: settings (default :class:`PretrainConfig`); ``overrides`` are field=value on top.
        log: progress sink (default: lines on stderr).

    Returns the entry directory (see the module docstring for its contents).
    Raises ``pydantic.ValidationError`` for unknown or invalid settings.
    """
    base = (cfg or PretrainConfig()).model_dump()
    base.update(overrides)
    base["seed"] = seed
    c = PretrainConfig(**base)
    entry = Path(cache_dir) / settings_key(c)
    if (entry / "meta.json").is_file():
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    (log or _stderr_log)(f"pretraining {entry} (once: later runs with these settings reuse it)")
    try:
        return pretrain(entry, c, log)
    except FileExistsError:
        if (entry / "meta.json").is_file():  # another process finished it first
            return entry
        raise
