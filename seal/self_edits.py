"""Self-edits: sampling them from the policy, and turning one into inner-loop training texts.

A self-edit is the policy's completion of a self-edit prompt (``seal.prompts``): a list of
implications, rewrites or question-answer pairs about a passage (paper Section 3.1).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from seal.data import Passage
from seal.prompts import self_edit_prompt
from seal.seeding import derive_seed
from seal.sharding import no_grad_for

if TYPE_CHECKING:  # the section's type only: seal.config sits above this module (tests/test_imports.py)
    from seal.config import SelfEditConfig


@dataclass(frozen=True)
class SelfEdit:
    """One self-edit the policy wrote for a passage.

    Attributes:
        prompt: the self-edit prompt it completes (``seal.prompts.self_edit_prompt``; the
            ``prompt`` of its ReST-EM SFT row when kept).
        text: the completion, stripped.
        truncated: the completion stopped at ``self_edit.max_new_tokens`` without an
            end-of-sequence token (cut off by the token budget).
        draws: how many draws its slot took (``arc.invalid: resample``,
            :func:`seal.arc.self_edit.resample_invalid`; 1: the first draw was kept).
    """

    prompt: str
    text: str
    truncated: bool = False
    draws: int = 1


_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•]|Question\s+\d+:)")
_QUESTION_N = re.compile(r"(?:^|\n)\s*Question\s+\d+:\s*")


def split_self_edit(completion: str, split_newlines: bool = False, template: str = "implications") -> list[str]:
    """Split a self-edit into its training texts (without the title prefix).

    Rules (reference implementation, with its edge cases):

    * parts are separated by ``---``; blank parts are dropped;
    * with ``split_newlines`` each non-blank line becomes its own text, except for the
      ``self-qa`` template, whose output is split on ``Question N:`` so that a question
      stays with its answer;
    * with ``split_newlines``, a chatty first line ("Here are some implications:") is
      dropped when it is not a list item but the next line is.

    Returns a list of stripped, non-empty strings (possibly empty).
    """
    parts = [p.strip() for p in completion.split("---") if p.strip()]
    if not split_newlines:
        return parts
    texts: list[str] = []
    for part in parts:
        if template == "self-qa":
            # The prompt ends on "Question 1: ", so the first chunk is question 1's text.
            texts += [c.strip() for c in _QUESTION_N.split(part) if c.strip()]
            continue
        lines = [ln.strip() for ln in part.split("\n") if ln.strip()]
        if len(lines) > 1 and not _LIST_ITEM.match(lines[0]) and _LIST_ITEM.match(lines[1]):
            lines = lines[1:]
        texts += lines
    return texts


def train_texts(passage: Passage, completion: str | None, split_newlines: bool = False, template: str = "implications") -> list[str]:
    """Inner-loop training texts for one self-edit: each ``"{title}\\n{text}"``, passage last.

    ``completion=None`` gives the passage-only baseline (just the passage).
    """
    parts = split_self_edit(completion, split_newlines, template) if completion else []
    return [f"{passage.title}\n{t}" for t in parts] + [f"{passage.title}\n{passage.context}"]


def generate_self_edits(
    model,
    tokenizer,
    passages: Sequence[Passage],
    config: SelfEditConfig,
    seed: int,
    *,
    template: str | None = None,
    k: int | None = None,
    greedy: bool = False,
    passage_indices: Sequence[int] | None = None,
    hint: str = "",
) -> list[list[SelfEdit]]:
    """Sample ``k`` self-edits per passage: a list (per passage) of ``k`` :class:`SelfEdit`.

    ``config``: the recipe's ``self_edit`` section; its ``template``, ``k``, ``temperature``,
    ``top_p``, ``max_new_tokens``, ``batch_size`` and ``chat_template`` decide the draws.
    ``template`` and ``k`` override the section's for this call (``seal evaluate``'s
    ``prompt:`` sources, a bench source's number of self-edits).

    Passages are generated in chunks of ``config.batch_size`` (``batch_size * k`` rows per
    ``generate`` call, left padding). Each chunk seeds torch from ``seed`` and its first
    passage's global index (``passage_indices``, default ``range(len(passages))``), never the
    clock, so a chunk's samples do not depend on which process or call produced it.

    ``greedy=True`` decodes greedily (then ``k`` must be 1; ``temperature`` and ``top_p`` are
    unused). ``hint``: see :func:`seal.prompts.self_edit_prompt` ("" for the template alone).
    A sharded base (``model.shard: fsdp``): every rank must call this with the same arguments.

    Raises:
        PromptError: unknown template.
        ValueError: greedy decoding with ``k > 1``.
    """
    template = config.template if template is None else template
    k = config.k if k is None else k
    if greedy and k != 1:
        raise ValueError(f"greedy decoding gives one self-edit per passage, not k={k}")
    decoding = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=0)
    batch_size, chat = config.batch_size, config.chat_template
    indices = list(passage_indices) if passage_indices is not None else list(range(len(passages)))
    out: list[list[SelfEdit]] = []
    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tokenizer.eos_token_id}
    eos_ids.discard(None)
    with no_grad_for(model):  # inference mode, but no_grad for a sharded base (seal.sharding)
        old_side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            for start in range(0, len(passages), batch_size):
                chunk = passages[start : start + batch_size]
                prompts = [self_edit_prompt(template, p.title, p.context, tokenizer, chat, hint) for p in chunk]
                enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat).to(device)
                torch.manual_seed(derive_seed(seed, "self-edit", indices[start]))
                gen = model.generate(
                    **enc,
                    **decoding,
                    max_new_tokens=config.max_new_tokens,
                    num_return_sequences=k,
                    pad_token_id=tokenizer.pad_token_id,
                )
                new = gen[:, enc["input_ids"].shape[1] :]
                texts = tokenizer.batch_decode(new, skip_special_tokens=True)
                cut = [not any(int(t) in eos_ids for t in row) for row in new.tolist()]
                out += [
                    [SelfEdit(prompt, texts[j].strip(), cut[j]) for j in range(i * k, (i + 1) * k)]
                    for i, prompt in enumerate(prompts)
                ]
        finally:
            tokenizer.padding_side = old_side
        return out


def sample_self_edits(*args, **kwargs) -> list[list[str]]:
    """The texts of :func:`generate_self_edits` (same arguments, same draws): a list (per
    passage) of ``k`` completion strings, for callers that need neither prompts nor
    truncation flags."""
    return [[edit.text for edit in edits] for edits in generate_self_edits(*args, **kwargs)]


def self_edits_to_json(passages: Sequence[Passage], self_edits: Sequence[Sequence[SelfEdit]]) -> list[dict]:
    """``round_k/self_edits.json``'s rows: ``{passage, passage_id, title, completions, truncated}``
    (and ``draws`` when a slot was resampled) per passage (the prompts are not stored: they follow from the passage and the recipe)."""
    rows = [
        {"passage": i, "passage_id": p.id, "title": p.title, "completions": [e.text for e in edits], "truncated": [e.truncated for e in edits]}
        for i, (p, edits) in enumerate(zip(passages, self_edits, strict=True))
    ]
    for row, edits in zip(rows, self_edits, strict=True):
        if any(e.draws != 1 for e in edits):  # resampled (arc.invalid: resample); absent otherwise
            row["draws"] = [e.draws for e in edits]
    return rows


def self_edits_from_json(
    rows: Sequence[dict], passages: Sequence[Passage], template: str, tokenizer, chat: bool = False, hint: str = ""
) -> list[list[SelfEdit]]:
    """The self-edits saved by :func:`self_edits_to_json`, their prompts rebuilt for
    ``tokenizer`` (files without ``truncated`` flags: none truncated)."""
    out = []
    for row, p in zip(rows, passages, strict=True):
        prompt = self_edit_prompt(template, p.title, p.context, tokenizer, chat, hint)
        flags = row.get("truncated") or [False] * len(row["completions"])
        draws = row.get("draws") or [1] * len(row["completions"])
        out.append([SelfEdit(prompt, text, bool(cut), int(n)) for text, cut, n in zip(row["completions"], flags, draws, strict=True)])
    return out
