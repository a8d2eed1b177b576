"""A procedurally generated knowledge world: fictional people, their passages and questions.

Every person has a short two-word name and 4-6 attributes (birth city, birth year,
university, field, employer, hobby), each drawn from its own list of one-word values; the
lists are disjoint, so the type of a value identifies the attribute it belongs to. A person is
rendered as a short biography ("passage") with varied sentence templates, subject forms
(full name, first name, pronoun) and sentence order, and asked one question per stated
attribute whose short gold answer is the value, which occurs verbatim in the passage.

Self-edits are written by the generator itself in six *styles* of very different usefulness
as inner-loop training data (``STYLES``). Each style has a line-prefix signature, so the
share of styles among self-edits sampled from a policy can be measured with
:func:`classify_style`. The data-format insight (facts restated in several forms, and in the
question-answer form, are far easier to extract from a model's weights than one biography)
follows Allen-Zhu & Li 2023, "Physics of Language Models, Part 3.1: Knowledge Storage and
Extraction" (arXiv 2309.14316).

Names are partitioned into disjoint pools (pretraining, RL training, evaluation), so no
RL-training or evaluation person appears in pretraining. Everything is a pure function of
the seed (``random.Random`` seeded from :func:`seal.seeding.derive_seed`), never the clock.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from seal.seeding import derive_seed

# ----------------------------------------------------------------------------- vocabulary

FIRST_NAMES: tuple[str, ...] = (
    "Ada", "Bo", "Cy", "Di", "Eli", "Fay", "Gus", "Hal", "Ida", "Jo", "Kai", "Lea", "Max", "Nia",
    "Otto", "Pia", "Quin", "Rex", "Sal", "Tess", "Uma", "Vic", "Wes", "Xia", "Yan", "Zoe", "Abe",
    "Bea", "Cal", "Dot", "Ed", "Eve", "Flo", "Gil", "Hugo", "Ivy", "Jay", "Kit", "Lou", "Mae",
    "Ned", "Ona", "Pat", "Ray", "Rose", "Sid", "Tom", "Val", "Wren", "Zac", "Ali", "Ben", "Cleo",
    "Dan", "Ema", "Finn", "Gia", "Hana", "Ike", "Joy",
)  # fmt: skip
LAST_NAMES: tuple[str, ...] = (
    "Vell", "Marsh", "Kade", "Rook", "Penn", "Holt", "Dray", "Lusk", "Moss", "Nash", "Orr", "Pike",
    "Quill", "Ross", "Stone", "Tate", "Urey", "Vance", "Wolfe", "York", "Ames", "Birch", "Cole",
    "Dunn", "Elm", "Frost", "Gray", "Hale", "Ives", "Jett", "Knox", "Lane", "Mott", "Noor", "Oakes",
    "Pratt", "Reed", "Shaw", "Thorn", "Voss", "Webb", "Zane", "Beck", "Crane", "Drake", "Finch",
    "Gage", "Hart", "Kerr", "Lowe", "Mead", "Nye", "Page", "Rhee", "Sato", "Todd", "Wade", "Yoon",
    "Bask", "Dale",
)  # fmt: skip
# Gender only picks the pronoun; it is never asked about.
_FEMALE = {
    "Ada", "Di", "Fay", "Ida", "Jo", "Lea", "Nia", "Pia", "Tess", "Uma", "Xia", "Zoe", "Bea", "Dot",
    "Eve", "Flo", "Ivy", "Kit", "Mae", "Ona", "Rose", "Val", "Wren", "Cleo", "Ema", "Gia", "Hana", "Joy",
}  # fmt: skip


@dataclass(frozen=True)
class Attribute:
    """One kind of fact about a person.

    Attributes:
        name: identifier (``"birth_city"``).
        values: the one-word values it takes; disjoint from every other attribute's.
        passage: biography sentence templates; ``{S}`` sentence-initial subject (name, first
            name or pronoun), ``{P}`` sentence-initial possessive, ``{s}`` a non-initial
            subject, ``{v}`` the value.
        fact: the canonical self-edit statement (``{N}`` full name, ``{v}`` value).
        paraphrases: alternative self-edit statements (``{N}``, ``{v}``).
        questions: evaluation question templates (``{N}``); the gold answer is ``{v}``.
    """

    name: str
    values: tuple[str, ...]
    passage: tuple[str, ...]
    fact: str
    paraphrases: tuple[str, ...]
    questions: tuple[str, ...]


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        "birth_city",
        ("Paris", "Oslo", "Lima", "Cairo", "Rome", "Kyoto", "Dublin", "Quito", "Perth", "Delhi",
         "Berlin", "Madrid", "Vienna", "Prague", "Athens", "Lisbon", "Seoul", "Tokyo", "Boston",
         "Denver", "Austin", "Dallas", "Miami", "Toronto", "Sydney", "Nairobi", "Lagos", "Accra",
         "Dakar", "Tunis", "Riga", "Minsk", "Warsaw", "Munich", "Milan", "Naples"),
        ("{S} was born in {v}.", "{S} was born in the city of {v}.", "{P} birthplace is {v}.",
         "{S} comes from {v}.", "The city of {v} is where {s} was born.", "{S} is a native of {v}."),
        "{N} was born in {v}.",
        ("{N} comes from {v}.", "The birthplace of {N} is {v}.", "{N} is a native of {v}."),
        ("Where was {N} born?", "In which city was {N} born?"),
    ),
    Attribute(
        "birth_year",
        tuple(str(y) for y in range(1950, 2000)),
        ("{S} was born in the year {v}.", "{S} was born in {v}.", "{P} year of birth is {v}.",
         "In {v}, {s} was born.", "{S} arrived in the world in {v}."),
        "{N} was born in the year {v}.",
        ("The birth year of {N} is {v}.", "In {v}, {N} was born.", "{N} came into the world in {v}."),
        ("In what year was {N} born?", "When was {N} born?"),
    ),
    Attribute(
        "university",
        ("Yale", "Harvard", "Stanford", "Oxford", "Cambridge", "Princeton", "Cornell", "Duke",
         "Brown", "Columbia", "Caltech", "Berkeley", "Purdue", "Emory", "Tufts", "Vassar", "Oberlin",
         "Dartmouth", "Baylor", "Auburn", "Clemson", "Tulane", "Fordham", "Rutgers", "Drexel",
         "Howard", "Bowdoin", "Colgate", "Wesleyan", "Amherst"),
        ("{S} studied at {v}.", "{S} attended {v}.", "{S} graduated from {v}.",
         "{P} university was {v}.", "At {v}, {s} earned a degree."),
        "{N} studied at {v}.",
        ("{N} attended {v}.", "{N} graduated from {v}.", "The university of {N} was {v}."),
        ("Which university did {N} attend?", "Where did {N} study?"),
    ),
    Attribute(
        "field",
        ("physics", "chemistry", "biology", "law", "music", "history", "economics", "medicine",
         "geology", "botany", "zoology", "philosophy", "linguistics", "astronomy", "statistics",
         "psychology", "sociology", "architecture", "engineering", "nursing", "theology", "ecology",
         "genetics", "robotics", "finance", "journalism", "accounting", "archaeology", "mathematics",
         "optics"),
        ("{S} works in {v}.", "{S} is an expert in {v}.", "{P} field is {v}.",
         "{S} specialized in {v}.", "{S} built a career in {v}."),
        "{N} is an expert in {v}.",
        ("{N} specialized in {v}.", "The field of {N} is {v}.", "{N} works in {v}."),
        ("What field did {N} specialize in?", "What is the field of {N}?"),
    ),
    Attribute(
        "employer",
        ("Nokia", "Intel", "Boeing", "Siemens", "Toyota", "Honda", "Pfizer", "Oracle", "Adobe",
         "Cisco", "Nike", "Sony", "Canon", "Nikon", "Bayer", "Shell", "Lego", "Ikea", "Volvo", "Ford",
         "Airbus", "Philips", "Samsung", "Nestle", "Danone", "Unilever", "Xerox", "Kodak", "Dell",
         "Yamaha"),
        ("{S} works for {v}.", "{S} is employed by {v}.", "{P} employer is {v}.",
         "{S} has a job at {v}.", "{v} employs {s}."),
        "{N} works for {v}.",
        ("{N} is employed by {v}.", "The employer of {N} is {v}.", "{N} has a job at {v}."),
        ("Which company does {N} work for?", "Who employs {N}?"),
    ),
    Attribute(
        "hobby",
        ("chess", "tennis", "golf", "sailing", "fishing", "knitting", "hiking", "cycling", "rowing",
         "fencing", "archery", "surfing", "skiing", "boxing", "juggling", "pottery", "origami",
         "gardening", "birding", "climbing", "baking", "karate", "judo", "bowling", "darts", "poker",
         "yoga", "skating", "diving", "running"),
        ("{S} enjoys {v}.", "{P} hobby is {v}.", "In free time, {s} likes {v}.",
         "{S} spends weekends on {v}.", "{S} is fond of {v}."),
        "{N} enjoys {v}.",
        ("The hobby of {N} is {v}.", "{N} is fond of {v}.", "{N} likes {v} in free time."),
        ("What is the hobby of {N}?", "What does {N} enjoy in free time?"),
    ),
)  # fmt: skip

ATTRIBUTE_BY_NAME: dict[str, Attribute] = {a.name: a for a in ATTRIBUTES}
VALUE_TO_ATTRIBUTE: dict[str, str] = {v: a.name for a in ATTRIBUTES for v in a.values}
assert len(VALUE_TO_ATTRIBUTE) == sum(len(a.values) for a in ATTRIBUTES), (
    "attribute value lists must be disjoint"
)

# ----------------------------------------------------------------------------- styles

#: Self-edit styles, roughly from most to least useful as inner-loop training data.
STYLES: tuple[str, ...] = ("qa", "paraphrase", "facts", "verbatim", "partial", "filler")

#: The line prefix that signs each style (``verbatim`` is the passage itself, unprefixed).
STYLE_PREFIX: dict[str, str] = {
    "qa": "Q: ",
    "paraphrase": "* ",
    "facts": "- ",
    "partial": "+ ",
    "filler": "> ",
    "verbatim": "",
}

_FILLER = (
    "This passage is a short biography.",
    "The text describes one person.",
    "It gives a few details about {N}.",
    "{N} is mentioned in this passage.",
    "Biographies like this one are common.",
    "The passage is about the life of {N}.",
    "Many people have interesting lives.",
    "Some facts are listed in the text.",
)


@dataclass(frozen=True)
class Entity:
    """A fictional person: a name and an ordered mapping of attribute name -> value."""

    first: str
    last: str
    facts: tuple[
        tuple[str, str], ...
    ]  # ((attribute name, value), ...) in canonical ATTRIBUTES order

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"

    @property
    def female(self) -> bool:
        return self.first in _FEMALE


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of the world's disjoint name pools and the shape of each person.

    Attributes:
        seed: everything derives from it.
        n_train: RL-training people (``train.json``).
        n_eval: evaluation people (``eval.json``).
        min_facts, max_facts: attributes stated (and asked) per person, inclusive bounds
            (between 1 and 6); every stated attribute gets one question.
    """

    seed: int = 0
    n_train: int = 200
    n_eval: int = 200
    min_facts: int = 3
    max_facts: int = 5


@dataclass
class World:
    """The name pools of one seed. Build with :func:`make_world`.

    Attributes:
        config: the settings.
        pretrain_names, train_names, eval_names: disjoint lists of ``(first, last)``.
        train, eval: the RL-training and evaluation people, one per name of their pool.
    """

    config: WorldConfig
    pretrain_names: list[tuple[str, str]]
    train_names: list[tuple[str, str]]
    eval_names: list[tuple[str, str]]
    train: list[Entity] = field(default_factory=list)
    eval: list[Entity] = field(default_factory=list)


def make_entity(
    rng: random.Random, first: str, last: str, min_facts: int = 3, max_facts: int = 5
) -> Entity:
    """A person with a random subset of ``min_facts..max_facts`` attributes, values drawn uniformly."""
    if not 1 <= min_facts <= max_facts <= len(ATTRIBUTES):
        raise ValueError(
            f"need 1 <= min_facts <= max_facts <= {len(ATTRIBUTES)}, got {min_facts}, {max_facts}"
        )
    n = rng.randint(min_facts, max_facts)
    chosen = set(rng.sample([a.name for a in ATTRIBUTES], n))
    facts = tuple((a.name, rng.choice(a.values)) for a in ATTRIBUTES if a.name in chosen)
    return Entity(first, last, facts)


def make_world(config: WorldConfig | None = None) -> World:
    """Partition all ``len(FIRST_NAMES) * len(LAST_NAMES)`` names into three disjoint pools.

    The RL-training and evaluation pools get ``n_train`` / ``n_eval`` names and one person
    each; every other name belongs to pretraining (people drawn on demand by the corpus).

    Raises:
        ValueError: the pools would leave fewer than 1000 pretraining names.
    """
    cfg = config or WorldConfig()
    names = [(f, s) for f in FIRST_NAMES for s in LAST_NAMES]
    random.Random(derive_seed(cfg.seed, "microworld", "names")).shuffle(names)
    if len(names) - cfg.n_train - cfg.n_eval < 1000:
        raise ValueError(
            f"n_train + n_eval = {cfg.n_train + cfg.n_eval} leaves too few pretraining names"
        )
    eval_names = names[: cfg.n_eval]
    train_names = names[cfg.n_eval : cfg.n_eval + cfg.n_train]
    pre = names[cfg.n_eval + cfg.n_train :]
    w = World(cfg, pre, train_names, eval_names)
    rng_t = random.Random(derive_seed(cfg.seed, "microworld", "train"))
    rng_e = random.Random(derive_seed(cfg.seed, "microworld", "eval"))
    w.train = [make_entity(rng_t, f, s, cfg.min_facts, cfg.max_facts) for f, s in train_names]
    w.eval = [make_entity(rng_e, f, s, cfg.min_facts, cfg.max_facts) for f, s in eval_names]
    return w


# ----------------------------------------------------------------------------- rendering


def _subject_forms(e: Entity, form: str) -> dict[str, str]:
    if form == "full":
        return {"S": e.name, "P": f"{e.name}'s", "s": e.name}
    if form == "first":
        return {"S": e.first, "P": f"{e.first}'s", "s": e.first}
    return {
        "S": "She" if e.female else "He",
        "P": "Her" if e.female else "His",
        "s": "she" if e.female else "he",
    }


def render_passage(e: Entity, rng: random.Random) -> str:
    """A biography: one sentence per fact, shuffled, random templates; the first names the person in full.

    Returns one line of text (sentences separated by single spaces). Every value appears verbatim.
    """
    order = list(e.facts)
    rng.shuffle(order)
    out = []
    for i, (attr, value) in enumerate(order):
        form = "full" if i == 0 else rng.choice(("full", "first", "pronoun", "pronoun"))
        tmpl = rng.choice(ATTRIBUTE_BY_NAME[attr].passage)
        out.append(tmpl.format(v=value, **_subject_forms(e, form)))
    return " ".join(out)


def questions(e: Entity, rng: random.Random) -> list[dict]:
    """One question per stated attribute: ``[{"question", "answer"}]``, in canonical attribute order."""
    return [
        {"question": rng.choice(ATTRIBUTE_BY_NAME[a].questions).format(N=e.name), "answer": v}
        for a, v in e.facts
    ]


def render_self_edit(e: Entity, style: str, rng: random.Random, passage: str | None = None) -> str:
    """A self-edit of ``style`` for ``e``, as the world generator itself would write it.

    Styles (one training text per line when split on newlines):

    * ``qa``: ``Q: <question> A: <value>`` per fact;
    * ``paraphrase``: ``* <statement>`` three times per fact (canonical + two paraphrases);
    * ``facts``: ``- <canonical statement>`` per fact;
    * ``verbatim``: ``passage`` itself (required for this style);
    * ``partial``: ``+ <canonical statement>`` for one fact only;
    * ``filler``: ``> <generic sentence>`` lines with no facts.

    Fact order is shuffled. Raises ``ValueError`` for an unknown style or ``verbatim`` without a passage.
    """
    facts = list(e.facts)
    rng.shuffle(facts)
    N = e.name
    if style == "qa":
        lines = [
            f"Q: {rng.choice(ATTRIBUTE_BY_NAME[a].questions).format(N=N)} A: {v}" for a, v in facts
        ]
    elif style == "paraphrase":
        lines = []
        for a, v in facts:
            attr = ATTRIBUTE_BY_NAME[a]
            for t in [attr.fact, *rng.sample(attr.paraphrases, 2)]:
                lines.append("* " + t.format(N=N, v=v))
    elif style == "facts":
        lines = ["- " + ATTRIBUTE_BY_NAME[a].fact.format(N=N, v=v) for a, v in facts]
    elif style == "partial":
        lines = [
            "+ " + ATTRIBUTE_BY_NAME[a].fact.format(N=N, v=v) for a, v in facts[:1]
        ]
    elif style == "filler":
        lines = ["> " + t.format(N=N) for t in rng.sample(_FILLER, rng.randint(3, 4))]
    elif style == "verbatim":
        if passage is None:
            raise ValueError("style 'verbatim' needs the passage")
        return passage
    else:
        raise ValueError(f"unknown self-edit style {style!r}; known: {', '.join(STYLES)}")
    return "\n".join(lines)


def classify_style(text: str) -> str:
    """The style of a self-edit from its line-prefix signature (see ``STYLE_PREFIX``).

    Each non-blank line votes for the style whose prefix it starts with (``A: `` counts for
    ``qa``); unprefixed lines vote ``verbatim``. Returns the majority style when it holds at
    least 60 % of the lines, ``"mixed"`` otherwise, and ``"empty"`` for blank text.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "empty"
    votes: dict[str, int] = {}
    for ln in lines:
        style = "verbatim"
        for s, p in STYLE_PREFIX.items():
            if p and ln.startswith(p.strip()):
                style = s
                break
        if ln.startswith("A:"):
            style = "qa"
        votes[style] = votes.get(style, 0) + 1
    best = max(votes, key=votes.get)
    return best if votes[best] >= 0.6 * len(lines) else "mixed"


_WORD = re.compile(r"[A-Za-z]+|\d+")


def mentioned_values(text: str) -> list[str]:
    """Attribute values (from any attribute's list) that occur in ``text`` as whole words, in order."""
    return [w for w in _WORD.findall(text) if w in VALUE_TO_ATTRIBUTE]


def copy_stats(self_edit: str, e: Entity) -> dict:
    """How faithfully a self-edit copies ``e``'s facts.

    Returns ``{"mentions": int, "correct": int, "recall": float, "name_ok": bool}``:
    attribute-value mentions in the text, how many of them are values of ``e`` (of the same
    attribute), the fraction of ``e``'s values present, and whether the full name occurs.
    """
    own = set(v for _, v in e.facts)
    m = mentioned_values(self_edit)
    correct = sum(1 for v in m if v in own)
    present = set(m) & own
    return {
        "mentions": len(m),
        "correct": correct,
        "recall": len(present) / len(own) if own else 0.0,
        "name_ok": e.name in self_edit,
    }


def passage_record(e: Entity, rng: random.Random, completions: Sequence[str] | None = None) -> dict:
    """A SEAL-format passage: ``{"title", "context", "questions"[, "completions"]}``."""
    rec = {"title": e.name, "context": render_passage(e, rng), "questions": questions(e, rng)}
    if completions is not None:
        rec["completions"] = list(completions)
    return rec


def entity_from_record(rec: dict) -> Entity:
    """Recover the :class:`Entity` of a passage record (name from the title, facts from the answers)."""
    first, last = rec["title"].split(" ", 1)
    by_value = {q["answer"]: VALUE_TO_ATTRIBUTE[q["answer"]] for q in rec["questions"]}
    order = [a.name for a in ATTRIBUTES]
    facts = tuple(sorted(((a, v) for v, a in by_value.items()), key=lambda av: order.index(av[0])))
    return Entity(first, last, facts)
