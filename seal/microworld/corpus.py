"""The pretraining corpus of the microworld: knowledge documents and self-edit demonstrations.

Three kinds of documents, all about pretraining-pool people only (never RL-training or
evaluation people):

* ``passage``: ``"{title}\\n{biography}"`` of a *memory* person, re-rendered with fresh
  templates and order at every repetition (knowledge augmentation);
* ``qa``: the evaluation prompt (``seal.prompts.qa_prompt``, template ``qa_template``) about a memory person, followed by
  the gold answer: with the facts memorised from the passages, this teaches the model to
  answer from knowledge stored in its weights. Allen-Zhu & Li 2023 ("Physics of Language
  Models, Part 3.1", arXiv 2309.14316) show that such mixed training with augmented
  biographies is what makes stored knowledge extractable for people seen only in biographies;
* ``openbook``: ``"{title}\n{biography}\nQ: <question> A: <value>"`` lines for a fresh person:
  a short, dense exercise of the skill the policy needs most, finding a value in the context;
* ``demo``: the self-edit prompt (``seal.prompts.self_edit_prompt``, template
  ``implications``) for a *fresh* person (new random facts every time, so nothing can be
  memorised and the values must be copied from the passage in context), followed by a self-edit
  in a style drawn from ``style_weights``. In a world with hyperparameter demonstrations
  (``PretrainConfig.hparam_demos``) every demonstration, in both phases, ends with a block
  choosing the inner loop's lr and epochs (:class:`HparamDemos`), drawn uniformly from a
  spread of good and bad settings by an RNG of its own, so the rest of the corpus is the
  same document for document as without blocks.

Pretraining (``seal.microworld.pretrain``) has two phases. The *copy curriculum*
(:func:`copy_docs`, in blocks) holds demonstrations and open-book documents only, on people
with 1-3 facts, copy-dense styles weighted up; it runs until a measured copy gate opens. The
*knowledge phase* (:func:`memory_epoch`) mixes memory documents with demonstrations in every
style and keeps some copy-curriculum documents in every epoch. Loss is computed only after
``Doc.prompt_chars`` (the self-edit of a demonstration, the answers of an open-book document):
the passage of a fresh person is unpredictable noise, and leaving it out concentrates the
gradient on copying.

Every document ends with the tokenizer's EOS. Each block and epoch is a pure function of the
seed and its index.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from seal.microworld.world import (
    STYLES,
    Entity,
    World,
    make_entity,
    questions,
    render_passage,
    render_self_edit,
)
from seal.prompts import qa_answer_text, qa_prompt, self_edit_prompt
from seal.seeding import derive_seed

if TYPE_CHECKING:  # the type only: seal.microworld.config imports this module
    from seal.microworld.config import PretrainConfig

SELF_EDIT_TEMPLATE = "implications"
#: The microworld's no-passage QA prompt: one ``Q: ... A:`` line, the form of a ``qa``-style
#: self-edit line, so the styles differ in content, not in how far their format is from the
#: test's (recipes set ``qa.template: qa-line``).
QA_TEMPLATE_NAME = "qa-line"


@dataclass(frozen=True)
class Doc:
    """One pretraining document: ``text`` (no BOS/EOS) and its ``kind`` ('passage', 'qa', 'openbook', 'demo').

    ``prompt_chars``: the loss starts after this many characters (0: on the whole text).
    ``style``: a demonstration's self-edit style.
    """

    kind: str
    text: str
    prompt_chars: int = 0
    style: str = ""


@dataclass(frozen=True)
class HparamDemos:
    """The hyperparameter blocks appended to demonstrations (``PretrainConfig.hparam_*``).

    Attributes:
        lrs: learning rates to choose from (inner-loop optimizer steps).
        epochs: epoch counts to choose from (passes over the self-edit's texts).
        format: ``"json"`` (``{"lr": 0.005, "epochs": 5}``) or ``"key-value"`` (``lr: 0.005``
            and ``epochs: 5`` on two lines), as ``seal.hparams`` reads them.
        marker: the line that opens the block.
    """

    lrs: tuple[float, ...]
    epochs: tuple[int, ...]
    format: str = "json"
    marker: str = "Hyperparameters:"


def hparam_block(lr: float, epochs: int, spec: HparamDemos) -> str:
    """The block for ``(lr, epochs)``, marker line first: what follows a self-edit (no newline before or after)."""
    if spec.format == "json":
        body = json.dumps({"lr": lr, "epochs": epochs})
    else:
        body = f"lr: {json.dumps(lr)}\nepochs: {epochs}"
    return f"{spec.marker}\n{body}"


def with_hparams(doc: Doc, spec: HparamDemos, rng: random.Random) -> Doc:
    """``doc`` (a demonstration) with a block of a uniformly drawn (lr, epochs) appended on new lines."""
    block = hparam_block(rng.choice(spec.lrs), rng.choice(spec.epochs), spec)
    return replace(doc, text=f"{doc.text.rstrip()}\n{block}")


def _hparam_rng(seed: int, *where) -> random.Random:
    """The blocks' own RNG, so drawing them leaves the corpus's other draws unchanged."""
    return random.Random(derive_seed(seed, "microworld", "hparams", *where))


def memory_people(world: World, n: int, seed: int) -> list[Entity]:
    """The first ``n`` pretraining names as memory people (fixed facts, seen many times)."""
    if n > len(world.pretrain_names) // 2:
        raise ValueError(f"n_memory={n} leaves too few pretraining names for demonstrations")
    rng = random.Random(derive_seed(seed, "microworld", "memory"))
    cfg = world.config
    return [
        make_entity(rng, f, s, cfg.min_facts, cfg.max_facts) for f, s in world.pretrain_names[:n]
    ]


def demo_doc(e: Entity, style: str, rng: random.Random) -> Doc:
    """Self-edit prompt for a fresh rendering of ``e`` plus a self-edit of ``style``."""
    passage = render_passage(e, rng)
    prompt = self_edit_prompt(SELF_EDIT_TEMPLATE, e.name, passage)
    return Doc("demo", prompt + render_self_edit(e, style, rng, passage), len(prompt), style)


#: Copy warm-up style weights (qa, paraphrase, facts, verbatim, partial, filler): copy-dense first.
WARMUP_STYLE_WEIGHTS = (2.0, 1.0, 2.0, 2.0, 0.5, 0.5)


def openbook_doc(e: Entity, rng: random.Random) -> Doc:
    """Passage followed by ``Q: ... A: value`` lines about it (loss on the lines only)."""
    head = f"{e.name}\n{render_passage(e, rng)}\n"
    return Doc("openbook", head + render_self_edit(e, "qa", rng), len(head), "qa")


def qa_doc(e: Entity, rng: random.Random, qa_template: str = QA_TEMPLATE_NAME) -> list[Doc]:
    """One evaluation-format QA document per fact of ``e`` (``qa_template``: a ``seal.prompts.QA_TEMPLATES`` name)."""
    return [
        Doc("qa", qa_answer_text(qa_prompt(e.name, q["question"], qa_template), q["answer"]))
        for q in questions(e, rng)
    ]


def copy_docs(world: World, cfg: PretrainConfig, block: int, n_docs: int, openbook_share: float = 0.45) -> list[Doc]:
    """Block ``block`` of the copy curriculum: ``n_docs`` documents about fresh people (new random
    facts every time, so nothing can be memorised and every value must be found in the context).

    ``cfg``: the world's settings (:class:`seal.microworld.config.PretrainConfig`); read are
    ``seed``, ``n_memory``, ``copy_min_facts``, ``copy_max_facts`` and the hyperparameter
    demonstrations (``hparam_spec()``).

    People come from the pretraining names after the first ``cfg.n_memory`` (the memory people).
    A share ``openbook_share`` are open-book QA documents, the rest self-edit demonstrations in
    the copy-dense ``WARMUP_STYLE_WEIGHTS``. People state ``copy_min_facts..copy_max_facts``
    facts: with one fact, the value to copy is the only value in the passage, which gives the
    attention pattern a strong first gradient; with two or three it must also match the attribute.

    With ``cfg.hparam_demos`` every demonstration ends with a hyperparameter block (:func:`with_hparams`).

    A pure function of ``(cfg.seed, block)``: the copy phase draws block after block until the
    copy gate opens, so how many blocks a pretraining used decides its corpus.
    """
    seed, n_memory, min_facts, max_facts, hparams = cfg.seed, cfg.n_memory, cfg.copy_min_facts, cfg.copy_max_facts, cfg.hparam_spec()
    rng = random.Random(derive_seed(seed, "microworld", "corpus", "copy", block))
    hp_rng = _hparam_rng(seed, "copy", block)
    names = world.pretrain_names[n_memory:]  # never a memory person: their facts are fixed
    docs = []
    for _ in range(n_docs):
        f, s = rng.choice(names)
        e = make_entity(rng, f, s, min_facts, max_facts)
        if rng.random() < openbook_share:
            docs.append(openbook_doc(e, rng))
        else:
            doc = demo_doc(e, rng.choices(STYLES, WARMUP_STYLE_WEIGHTS)[0], rng)
            docs.append(with_hparams(doc, hparams, hp_rng) if hparams else doc)
    return docs


def memory_epoch(world: World, cfg: PretrainConfig, epoch: int) -> list[Doc]:
    """Epoch ``epoch`` of the knowledge phase, shuffled: every memory person's passage (a fresh
    rendering) and QA documents (for the first ``cfg.qa_fraction`` of them, in the
    ``cfg.qa_template`` format), plus ``cfg.n_demos / cfg.memory_epochs`` demonstrations about
    fresh people in the styles ``cfg.style_weights``, each ending with a hyperparameter block
    when ``cfg.hparam_demos`` is on (:func:`with_hparams`).

    ``cfg``: the world's settings (:class:`seal.microworld.config.PretrainConfig`, which checks
    the style weights). Raises ``ValueError`` for more memory people than pretraining names.
    """
    seed, n_memory, memory_epochs, n_demos = cfg.seed, cfg.n_memory, cfg.memory_epochs, cfg.n_demos
    weights, qa_fraction, qa_template, hparams = list(cfg.style_weights), cfg.qa_fraction, cfg.qa_template, cfg.hparam_spec()
    mem = memory_people(world, n_memory, seed)
    demo_names = world.pretrain_names[n_memory:]
    facts = world.config  # fresh demonstration people state as many facts as the world's
    n_qa = round(qa_fraction * len(mem))
    rng = random.Random(derive_seed(seed, "microworld", "corpus", epoch))
    hp_rng = _hparam_rng(seed, "epoch", epoch)
    docs: list[Doc] = []
    for i, e in enumerate(mem):
        docs.append(Doc("passage", f"{e.name}\n{render_passage(e, rng)}"))
        if i < n_qa:
            docs += qa_doc(e, rng, qa_template)
    lo, hi = epoch * n_demos // memory_epochs, (epoch + 1) * n_demos // memory_epochs
    for _ in range(lo, hi):
        f, s = rng.choice(demo_names)
        e = make_entity(rng, f, s, facts.min_facts, facts.max_facts)
        doc = demo_doc(e, rng.choices(STYLES, weights)[0], rng)
        docs.append(with_hparams(doc, hparams, hp_rng) if hparams else doc)
    rng.shuffle(docs)
    return docs
