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

import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from seal.data import passage_from_json
from seal.microworld.config import FORMAT_VERSION, PretrainConfig, settings_key
from seal.microworld.corpus import SELF_EDIT_TEMPLATE, Doc, corpus_stream
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
    render_self_edit,
)
from seal.seeding import derive_seed
from seal.self_edits import sample_self_edits


def _stderr_log(msg: str) -> None:
    print(f"[microworld] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- copy skill


def sample_on_records(model, tok, records: Sequence[dict], k: int, temperature: float | None, seed: int) -> list[list[str]]:
    """``k`` self-edits per SEAL-format passage record with :func:`seal.self_edits.sample_self_edits`
    (``implications`` template, top-p 0.95, up to 256 tokens; ``temperature=None``: greedy, k=1)."""
    passages = [passage_from_json(r, f"microworld passage {i}") for i, r in enumerate(records)]
    return sample_self_edits(model, tok, passages, SELF_EDIT_TEMPLATE, k, temperature, 0.95, 256, seed, batch_size=max(1, 64 // k))


def copy_metrics(records: Sequence[dict], samples: Sequence[Sequence[str]]) -> dict:
    """Copy skill of sampled self-edits.

    Returns a dict: ``value_precision`` (share of attribute-value mentions that are the
    passage's own values: the fraction of attribute values copied correctly), ``value_recall``
    (share of the passage's values present, over self-edits of the full styles qa, paraphrase,
    facts, verbatim), ``name_ok`` (share of self-edits containing the full name), ``styles``
    (share of each style), ``per_style_precision``, ``n`` (self-edits).
    """
    from collections import Counter

    styles: Counter = Counter()
    mentions = correct = 0
    rec_sum, rec_n, name_ok, total = 0.0, 0, 0, 0
    ps_m: Counter = Counter()
    ps_c: Counter = Counter()
    for r, ss in zip(records, samples, strict=True):
        e = entity_from_record(r)
        for s in ss:
            st = classify_style(s)
            c = copy_stats(s, e)
            styles[st] += 1
            mentions += c["mentions"]
            correct += c["correct"]
            ps_m[st] += c["mentions"]
            ps_c[st] += c["correct"]
            if st in ("qa", "paraphrase", "facts", "verbatim"):
                rec_sum += c["recall"]
                rec_n += 1
            name_ok += c["name_ok"]
            total += 1
    return {
        "n": total,
        "value_precision": correct / mentions if mentions else 0.0,
        "value_recall": rec_sum / rec_n if rec_n else 0.0,
        "name_ok": name_ok / total if total else 0.0,
        "styles": {k: v / total for k, v in sorted(styles.items())} if total else {},
        "per_style_precision": {k: ps_c[k] / ps_m[k] for k in sorted(ps_m) if ps_m[k]},
    }


# ----------------------------------------------------------------------------- pretraining


def memory_qa_accuracy(model, tok, world: World, cfg: PretrainConfig, n: int = 60) -> dict:
    """Greedy no-passage QA accuracy on memory people: ``with_qa`` (their QA was in the corpus)
    and ``bio_only`` (only their biographies were): the second is the knowledge-extraction
    skill the inner loop relies on (Allen-Zhu & Li 2023, Part 3.1)."""
    from seal.graders import contains
    from seal.inner_loop import answer_questions
    from seal.microworld.corpus import memory_people
    from seal.microworld.world import questions
    from seal.prompts import qa_prompt

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
        out[name] = sum(contains(a, q["answer"]) for a, (_, q) in zip(ans, qs, strict=True)) / len(
            qs
        )
    return out


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


def _fresh_check_records(world: World, n: int, seed: int) -> list[dict]:
    rng = random.Random(derive_seed(seed, "microworld", "copy-check"))
    names = world.pretrain_names[-n:]
    return [
        passage_record(make_entity(rng, f, s, world.config.min_facts, world.config.max_facts), rng)
        for f, s in names
    ]


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1))


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
    for d in out.parent.glob(f"{out.name}.tmp-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def pretrain(
    out_dir: str | os.PathLike,
    cfg: PretrainConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Build the world, pretrain the model and write a complete microworld directory at ``out_dir``.

    Writes into ``<out_dir>.tmp-<pid>`` and renames it to ``out_dir`` at the end (atomic on one
    file system). Progress lines (loss, tokens/s, copy checks) go to ``log`` (default stderr).

    Returns ``out_dir``. Raises ``FileExistsError`` if ``out_dir`` already exists, ``ValueError``
    for inconsistent settings.
    """
    from transformers import LlamaForCausalLM

    from seal.models import llama_config, train_tokenizer

    cfg = cfg or PretrainConfig()
    log = log or _stderr_log
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; delete it or use ensure_microworld()")
    if cfg.min_facts > cfg.max_facts:
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
        world = make_world(
            WorldConfig(cfg.seed, cfg.n_train, cfg.n_eval, cfg.min_facts, cfg.max_facts)
        )
        chunks: list[list[Doc]] = list(
            corpus_stream(
                world,
                cfg.seed,
                cfg.n_memory,
                cfg.memory_epochs,
                cfg.n_demos,
                cfg.style_weights,
                cfg.qa_fraction,
                cfg.warmup_demos,
                cfg.warmup_openbook,
                cfg.warmup_max_facts,
                cfg.qa_template,
            )
        )
        docs = [d for c in chunks for d in c]
        rng = random.Random(derive_seed(cfg.seed, "microworld", "tokenizer"))
        sample = rng.sample(docs, min(len(docs), 20000))
        tok = train_tokenizer((d.text for d in sample), cfg.vocab_size)
        t_tok = time.perf_counter() - t0
        eos = tok.eos_token_id
        chunk_ids, chunk_starts = [], []
        n_tokens = 0
        for c in chunks:
            enc = tok([d.text for d in c])["input_ids"]
            ids = [(x + [eos])[: cfg.max_length] for x in enc]
            heads = tok([d.text[: d.prompt_chars] for d in c])["input_ids"]
            starts = []
            for d, x, h in zip(c, ids, heads, strict=True):
                # Loss from the first token after the prompt (token boundaries agree at "\n").
                starts.append(len(h) if d.prompt_chars and x[: len(h)] == h else 0)
            n_tokens += sum(len(x) for x in ids)
            chunk_ids.append(ids)
            chunk_starts.append(starts)
        kinds = {
            k: sum(1 for d in docs if d.kind == k) for k in ("passage", "qa", "openbook", "demo")
        }
        log(
            f"corpus: {len(docs)} docs {kinds}, {n_tokens / 1e6:.2f} M tokens, vocab {len(tok)} ({time.perf_counter() - t0:.0f} s)"
        )

        mcfg = llama_config(
            tok, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size, max(512, cfg.max_length)
        )
        torch.manual_seed(derive_seed(cfg.seed, "microworld", "init"))
        model = LlamaForCausalLM(mcfg)
        n_params = sum(p.numel() for p in model.parameters())
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            betas=(0.9, 0.98),
        )
        brng = random.Random(derive_seed(cfg.seed, "microworld", "order"))
        plan = [
            (ci, b) for ci, ids in enumerate(chunk_ids) for b in _batches(ids, cfg.batch_size, brng)
        ]
        total = len(plan)

        def lr_at(step: int) -> float:
            if step < cfg.warmup_steps:
                return cfg.lr * (step + 1) / cfg.warmup_steps
            p = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
            return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

        log(f"model: {n_params / 1e6:.2f} M params, {total} steps of {cfg.batch_size} docs")
        check_recs = _fresh_check_records(world, 16, cfg.seed)
        check_at = {
            round(total * (i + 1) / (cfg.n_copy_checks + 1)) for i in range(cfg.n_copy_checks)
        }
        history: list[dict] = []
        checks: list[dict] = []
        model.train()
        t_train = time.perf_counter()
        ema, seen, last_t, last_seen = None, 0, t_train, 0
        for step, (ci, idx) in enumerate(plan):
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            x, mask, labels = _collate(chunk_ids[ci], chunk_starts[ci], idx, tok.pad_token_id)
            loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite pretraining loss at step {step}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            seen += int(mask.sum())  # tokens processed (with or without loss)
            ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                now = time.perf_counter()
                tps = (seen - last_seen) / max(1e-9, now - last_t)
                last_t, last_seen = now, seen
                history.append({"step": step + 1, "loss": round(ema, 4), "tokens": seen})
                eta = (now - t_train) / (step + 1) * (total - step - 1)
                log(
                    f"step {step + 1}/{total} loss {ema:.3f} lr {lr_at(step):.2e} {tps:,.0f} tok/s eta {eta / 60:.1f} min"
                )
            if (step + 1) in check_at:
                model.eval()
                s = sample_on_records(model, tok, check_recs, 1, None, cfg.seed)
                m = copy_metrics(check_recs, s)
                model.train()
                checks.append({"step": step + 1, **m})
                log(
                    f"copy check @ {step + 1}: value precision {m['value_precision']:.2f} recall {m['value_recall']:.2f} "
                    f"name {m['name_ok']:.2f} styles {m['styles']}"
                )
        t_train = time.perf_counter() - t_train
        model.eval()
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(tmp / "model")
        tok.save_pretrained(tmp / "model")

        mem_acc = memory_qa_accuracy(model, tok, world, cfg)
        log(f"memory QA accuracy (no passage): {mem_acc}")
        # Passages of the RL-training and evaluation people, and the oracle's self-edits.
        meta_copy = {}
        for split, people in (("train", world.train), ("eval", world.eval)):
            prng = random.Random(derive_seed(cfg.seed, "microworld", "records", split))
            recs = [passage_record(e, prng) for e in people]
            _write_json(tmp / f"{split}.json", recs)
            orng = random.Random(derive_seed(cfg.seed, "microworld", "oracle", split))
            oracle = [
                {**r, "completions": [render_self_edit(e, cfg.oracle_style, orng, r["context"])]}
                for r, e in zip(recs, people, strict=True)
            ]
            _write_json(tmp / f"oracle_{split}.json", oracle)
            if split == "eval" and cfg.n_copy_eval:
                ev = recs[: cfg.n_copy_eval]
                t1 = time.perf_counter()
                s = sample_on_records(model, tok, ev, 2, 1.0, cfg.seed)
                meta_copy = copy_metrics(ev, s)
                meta_copy["seconds"] = round(time.perf_counter() - t1, 1)
                meta_copy["examples"] = [x[0] for x in s[:3]]
                log(
                    f"copy skill on eval (T=1, top-p 0.95): value precision {meta_copy['value_precision']:.3f} "
                    f"recall {meta_copy['value_recall']:.3f} name {meta_copy['name_ok']:.2f} styles {meta_copy['styles']}"
                )
        _write_json(
            tmp / "world.json",
            {
                "config": world.config.__dict__,
                "n_pretrain_names": len(world.pretrain_names),
                "train_names": [" ".join(n) for n in world.train_names],
                "eval_names": [" ".join(n) for n in world.eval_names],
                "memory_names": [" ".join(n) for n in world.pretrain_names[: cfg.n_memory]],
                "styles": list(STYLES),
            },
        )
        _write_json(
            tmp / "meta.json",
            {
                "settings": cfg.model_dump(mode="json"),
                "key": settings_key(cfg),
                "format_version": FORMAT_VERSION,
                "n_params": n_params,
                "n_docs": len(docs),
                "doc_kinds": kinds,
                "n_tokens": n_tokens,
                "steps": total,
                "seconds": {
                    "tokenizer_and_corpus": round(t_tok, 1),
                    "train": round(t_train, 1),
                    "total": round(time.perf_counter() - t0, 1),
                },
                "final_loss": history[-1]["loss"] if history else None,
                "loss_history": history,
                "copy_checks": checks,
                "copy_skill": meta_copy,
                "memory_qa_accuracy": mem_acc,
            },
        )
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
