"""What the self-edits teach: read-only diagnostics of one round's self-edits (pure Python).

A ``seal train`` round records, beside its rewards, what its ``k`` self-edits per passage look
like (``round_k/metrics.json``'s ``diagnostics`` block, :func:`round_diagnostics`):

* **diversity**: distinct-1 and distinct-2, the self-similarity of a passage's samples and of
  samples of different passages, the mean length. ReST-EM keeps the best self-edit by one
  reward, and curation by a single reward is known to collapse the policy's outputs onto a few
  forms (arXiv 2605.07724); a falling distinct-2 is its first visible sign, hence
  :func:`collapse_warning`.
* **format**: the share of each kind of self-edit, by the task's classifier (a
  :class:`Formats`, ``seal.tasks.base.Task.diagnostics``): by default a line-format classifier
  (:func:`line_format`); a task whose self-edits have exact kinds classifies them exactly.
* **coverage**: the share of the passage's facts a self-edit states (gold answers of its
  questions), and how it relates to the reward. Which evidence in self-generated data turns
  into training signal is an open question (arXiv 2606.32002); here the question is the
  simplest one: does stating more of the answers earn more reward?

Every function is a pure function of its arguments: the diagnostics of a round are the same
in a resumed run and an uninterrupted one, and they change no result (nothing reads the block
back but the next round's collapse warning). Only ``rl.curation: weighted | pareto``, off by
default, uses :func:`coverage` and :func:`similarity` to choose self-edits (``seal.restem``).

Tokens are lower-cased whitespace-separated words (``text.lower().split()``); shares and
similarities are fractions in [0, 1]; lengths are in words.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from statistics import fmean

from seal.data import Passage
from seal.display import percent
from seal.graders import contains

# ----------------------------------------------------------------------------- diversity


def words(text: str) -> list[str]:
    """The tokens every diversity measure counts: lower-cased, split on whitespace."""
    return text.lower().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The ``n``-grams of ``tokens``, in order (none when there are fewer than ``n`` tokens)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct-n (Li et al. 2016) of ``texts`` taken together: distinct n-grams / all n-grams.

    1.0 when no n-gram repeats; ``m`` copies of one text score at most ``1/m``. None when the
    texts have no n-gram at all.
    """
    grams = [g for text in texts for g in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else None


def passage_distinct_n(self_edits: Sequence[Sequence[str]], n: int) -> float | None:
    """Distinct-n of each passage's self-edits pooled, averaged over passages.

    Per passage, so that it measures whether a passage's ``k`` samples say different things,
    and is the same whatever the number of passages (a corpus-wide distinct-n falls as the
    corpus grows). ``k`` identical samples score at most ``1/k``. None: no passage has an n-gram.
    """
    values = [d for edits in self_edits if (d := distinct_n(edits, n)) is not None]
    return fmean(values) if values else None


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the two texts' word-bigram sets: 1.0 same bigrams, 0.0 none shared.

    Two texts without a bigram (empty or one word) are compared on their word sets instead, so
    that two empty self-edits are the same (1.0) and "Paris" and "Oslo" are not.
    """
    x, y = set(ngrams(words(a), 2)), set(ngrams(words(b), 2))
    if not x and not y:
        x, y = set(words(a)), set(words(b))
        if not x and not y:
            return 1.0
    return len(x & y) / len(x | y)


def within_passage_similarity(self_edits: Sequence[Sequence[str]]) -> float | None:
    """Mean :func:`similarity` over every pair of self-edits of the same passage (all pairs of
    all passages weigh the same). None when no passage has two self-edits."""
    values = [similarity(e[i], e[j]) for e in self_edits for i in range(len(e)) for j in range(i + 1, len(e))]
    return fmean(values) if values else None


def across_passage_similarity(self_edits: Sequence[Sequence[str]], max_pairs: int = 2000, seed: int = 0) -> float | None:
    """Mean :func:`similarity` of pairs of self-edits of different passages.

    Every such pair when there are at most ``max_pairs``; else ``max_pairs`` pairs drawn with
    ``random.Random(seed)`` (the same pairs in every run, and a cost bounded whatever the
    round's size). A policy writing one template for every passage scores high here even when
    its samples of one passage differ. None when there are fewer than two passages with self-edits.
    """
    flat = [(p, text) for p, edits in enumerate(self_edits) for text in edits]
    if len({p for p, _ in flat}) < 2:
        return None
    n_pairs = len(flat) * (len(flat) - 1) // 2 - sum(len(e) * (len(e) - 1) // 2 for e in self_edits)
    if n_pairs <= max_pairs:
        pairs = [(i, j) for i in range(len(flat)) for j in range(i + 1, len(flat)) if flat[i][0] != flat[j][0]]
    else:
        rng, pairs = random.Random(seed), []
        while len(pairs) < max_pairs:
            i, j = rng.randrange(len(flat)), rng.randrange(len(flat))
            if flat[i][0] != flat[j][0]:  # a pair of one passage's samples is redrawn
                pairs.append((i, j))
    return fmean(similarity(flat[i][1], flat[j][1]) for i, j in pairs)


# ----------------------------------------------------------------------------- format

#: Line formats of :func:`line_format`, and the self-edit kinds of :func:`edit_format`.
LINE_FORMATS: tuple[str, ...] = ("qa", "list", "sentence", "other")

_QA_LINE = re.compile(r"^(q|a|question|answer)\s*\d*\s*[:.)]", re.IGNORECASE)
_LIST_ITEM = re.compile(r"^([-*+•>]|\d+[.)])\s")
_SENTENCE_END = re.compile(r"[.!;][\"')\]]*$")


def line_format(line: str) -> str:
    """The format of one non-blank line of a self-edit, for any domain (SQuAD's):

    * ``qa``: a question-answer line: starts with ``Q:``, ``A:``, ``Question:``, ``Answer 2.``
      (any case), or ends with ``?``;
    * ``list``: a list item: starts with a bullet (``-``, ``*``, ``+``, ``•``, ``>``) or a
      number (``1.``, ``2)``) and a space;
    * ``sentence``: prose: at least three words and ends with ``.``, ``!`` or ``;``
      (a closing quote or bracket allowed after it);
    * ``other``: anything else (headings, fragments, separators such as ``---``).

    The first rule that matches wins, so a bulleted question is ``qa``.
    """
    line = line.strip()
    if _QA_LINE.match(line) or line.endswith("?"):
        return "qa"
    if _LIST_ITEM.match(line):
        return "list"
    if len(line.split()) >= 3 and _SENTENCE_END.search(line):
        return "sentence"
    return "other"


def edit_format(text: str) -> str:
    """A self-edit's format: the :func:`line_format` of at least 60 % of its non-blank lines
    (a majority rule), ``"mixed"`` when none has it, ``"empty"`` for blank text."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "empty"
    votes = Counter(line_format(ln) for ln in lines)
    best, n = votes.most_common(1)[0]
    return best if n >= 0.6 * len(lines) else "mixed"


class Formats:
    """How a task's self-edits are classified and how their coverage of a passage is measured
    (``seal.tasks.base.Task.diagnostics``). This default, for any text: line formats
    (:func:`edit_format`) and gold answers contained in the self-edit (:func:`contains`)."""

    #: The ``format`` the diagnostics block names (``"line"``: :func:`line_format`'s kinds).
    name = "line"

    def kinds(self) -> tuple[str, ...]:
        """Every kind :meth:`classify` gives, in report order."""
        return (*LINE_FORMATS, "mixed", "empty")

    def classify(self, text: str) -> str:
        """The self-edit's kind (:func:`edit_format`)."""
        return edit_format(text)

    def states(self, text: str, answer: str) -> bool:
        """Whether the self-edit states the gold answer: its normalised form contained, on word
        boundaries, in the normalised self-edit (``graders.contains``, the reward's own
        ``contains`` grader)."""
        return bool(contains(text, answer))


#: The default (text) diagnostics.
TEXT = Formats()


def format_kinds(domain: Formats = TEXT) -> tuple[str, ...]:
    """Every kind :func:`format_shares` reports for ``domain`` (zero shares included)."""
    return domain.kinds()


def classify(text: str, domain: Formats = TEXT) -> str:
    """The self-edit's kind by ``domain``'s classifier."""
    return domain.classify(text)


def format_shares(texts: Sequence[str], domain: Formats = TEXT) -> dict[str, float]:
    """Share of ``texts`` of each kind (:func:`classify`), every kind of ``domain`` listed; sums to 1."""
    counts = Counter(classify(text, domain) for text in texts)
    return {kind: counts[kind] / len(texts) if texts else 0.0 for kind in format_kinds(domain)}


# ----------------------------------------------------------------------------- coverage


def coverage(text: str, passage: Passage, domain: Formats = TEXT) -> float | None:
    """Share of the passage's facts (the gold answers of its questions) the self-edit states
    (:meth:`Formats.states`). Repeated answers count once. None: no answers."""
    answers = {qa.answer for qa in passage.questions if qa.answer.strip()}
    if not answers:
        return None
    return sum(domain.states(text, answer) for answer in answers) / len(answers)


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation of paired values, in [-1, 1]; None with fewer than two pairs or a
    constant side (the correlation is undefined)."""
    if len(xs) < 2:
        return None
    mx, my = fmean(xs), fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return max(-1.0, min(1.0, sxy / (sxx * syy) ** 0.5))


#: Coverage bins of :func:`reward_by_coverage`: quarters of [0, 1], the last one closed.
COVERAGE_BINS: tuple[tuple[float, float], ...] = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))


def coverage_bin(c: float) -> str:
    """The name of ``c``'s bin: ``"0-25%"``, ``"25-50%"``, ``"50-75%"``, ``"75-100%"``."""
    for lo, hi in COVERAGE_BINS:
        if c < hi or hi == 1.0:
            return f"{round(100 * lo)}-{round(100 * hi)}%"
    raise AssertionError("unreachable")


def reward_by_coverage(coverages: Sequence[float], rewards: Sequence[float]) -> dict[str, dict]:
    """Per coverage bin: ``{"n": self-edits, "mean_reward": their mean reward or None}``.
    Fixed bins rather than quantiles: coverage takes few values (a passage has 3-5 facts) and
    bins keep rounds comparable."""
    by_bin: dict[str, list[float]] = {coverage_bin(lo): [] for lo, _ in COVERAGE_BINS}
    for c, r in zip(coverages, rewards, strict=True):
        by_bin[coverage_bin(c)].append(r)
    return {name: {"n": len(rs), "mean_reward": fmean(rs) if rs else None} for name, rs in by_bin.items()}


# ----------------------------------------------------------------------------- one round


def round_diagnostics(
    passages: Sequence[Passage],
    self_edits: Sequence[Sequence[str]],
    domain: Formats = TEXT,
    rewards: Sequence[Sequence[float | None]] | None = None,
    kept: dict[int, Sequence[int]] | None = None,
    max_pairs: int = 2000,
) -> dict:
    """The ``diagnostics`` block of a round's metrics.

    Args:
        passages: the round's passages; self_edits: the texts of their ``k`` self-edits each.
        domain: the task's classifier and coverage (:class:`Formats`; default: line formats,
            normalised answers).
        rewards: per passage, each self-edit's mean reward (None: failed); None: not scored.
        kept: the ReST-EM selection, passage -> kept self-edit indices; None: none yet.
        max_pairs: pairs of :func:`across_passage_similarity`.

    Returns ``n_self_edits``, ``mean_words`` (words), ``distinct_1`` / ``distinct_2``
    (:func:`passage_distinct_n`), ``similarity_within_passage`` / ``similarity_across_passages``,
    ``format`` (``domain.name``: ``"line"``, or the task's, e.g. ``"style"``) with ``format_shares`` of
    all self-edits and ``kept_format_shares`` of the kept ones (what the policy update learns),
    ``coverage`` (mean of :func:`coverage`), and with rewards ``coverage_reward_pearson`` and
    ``reward_by_coverage`` (over self-edits that have both a coverage and a reward).
    """
    texts = [text for edits in self_edits for text in edits]
    covered = [[coverage(text, passage, domain) for text in edits] for passage, edits in zip(passages, self_edits, strict=True)]
    known = [c for cs in covered for c in cs if c is not None]
    out = {
        "n_self_edits": len(texts),
        "mean_words": fmean(len(words(t)) for t in texts) if texts else None,
        "distinct_1": passage_distinct_n(self_edits, 1),
        "distinct_2": passage_distinct_n(self_edits, 2),
        "similarity_within_passage": within_passage_similarity(self_edits),
        "similarity_across_passages": across_passage_similarity(self_edits, max_pairs),
        "format": domain.name,
        "format_shares": format_shares(texts, domain),
        "kept_format_shares": None,
        "coverage": fmean(known) if known else None,
        "coverage_reward_pearson": None,
        "reward_by_coverage": None,
    }
    if kept is not None:
        out["kept_format_shares"] = format_shares([self_edits[p][i] for p in sorted(kept) for i in kept[p]], domain)
    if rewards is not None:
        pairs = [(c, r) for cs, rs in zip(covered, rewards, strict=True) for c, r in zip(cs, rs, strict=True) if c is not None and r is not None]
        out["coverage_reward_pearson"] = pearson([c for c, _ in pairs], [r for _, r in pairs])
        out["reward_by_coverage"] = reward_by_coverage([c for c, _ in pairs], [r for _, r in pairs])
    return out


def collapse_warning(
    diagnostics: dict,
    previous: dict | None,
    min_distinct_2: float,
    max_diversity_drop: float,
    max_format_share: float = 1.0,
    first: dict | None = None,
) -> str | None:
    """Why this round's self-edits look collapsed, or None.

    Warns when ``distinct_2`` is below ``min_distinct_2``, or fell by more than the fraction
    ``max_diversity_drop`` of the previous round's (``previous``: that round's diagnostics;
    None for round 0 or a round recorded without them). Collapse under single-reward curation
    (arXiv 2605.07724): the policy ends up writing one form, which a diversity floor catches
    in absolute terms and a drop catches while it happens.

    A policy can also collapse onto one *style* while its words stay diverse (GRPO in a
    synthetic world wrote 100 % question-answer self-edits about different people, distinct-2
    high): the warning also fires when one format's share of ``format_shares`` (a task's
    exact style, or a line format) is above ``max_format_share``, unless that format already
    held more than ``max_format_share`` in ``first`` (the run's first round or step: the base
    policy's own habit is not a collapse). ``max_format_share`` 1.0 never fires.
    """
    d2 = diagnostics.get("distinct_2")
    if d2 is not None and d2 < min_distinct_2:
        return f"distinct-2 {d2:.3f} is below diagnostics.min_distinct_2 = {min_distinct_2:g}"
    before = (previous or {}).get("distinct_2")
    if d2 is not None and before and d2 < (1 - max_diversity_drop) * before:
        return f"distinct-2 fell from {before:.3f} to {d2:.3f}, by more than diagnostics.max_diversity_drop = {percent(max_diversity_drop)}"
    return style_collapse(diagnostics, max_format_share, first)


def style_collapse(diagnostics: dict, max_format_share: float, first: dict | None = None) -> str | None:
    """The style part of :func:`collapse_warning`: the format holding more than
    ``max_format_share`` of the self-edits (and not already in ``first``), or None."""
    shares = diagnostics.get("format_shares") or {}
    if not shares or max_format_share >= 1:
        return None
    share, kind = max((s, k) for k, s in shares.items())
    if share <= max_format_share:
        return None
    start = ((first or {}).get("format_shares") or {}).get(kind)
    if start is not None and start > max_format_share:
        return None
    was = "" if start is None else f" (it was {percent(start)} at the start)"
    name = "style" if diagnostics.get("format") == "style" else "line format"
    return f"one {name}, {kind}, holds {percent(share)} of the self-edits{was}, above diagnostics.max_format_share = {percent(max_format_share)}"


def summary_line(diagnostics: dict) -> str:
    """One console line: diversity, the most common formats, coverage and its correlation with reward."""
    d = diagnostics

    def num(x: float | None, fmt: str = ".2f") -> str:
        return "n/a" if x is None else format(x, fmt)

    shares = sorted(((s, k) for k, s in d["format_shares"].items() if s > 0), reverse=True)[:3]
    mix = ", ".join(f"{k} {percent(s)}" for s, k in shares) or "none"
    r = d.get("coverage_reward_pearson")
    return (
        f"distinct-2 {num(d['distinct_2'])}, similarity within {num(d['similarity_within_passage'])} / across "
        f"{num(d['similarity_across_passages'])}, {num(d['mean_words'], '.0f')} words; {d['format']}s {mix}; "
        f"coverage {percent(d['coverage'])} (r with reward {num(r, '+.2f')})"
    )
