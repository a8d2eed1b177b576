"""Prompt templates: self-edit generation and no-passage QA (paper Appendix B, Table 9).

Self-edit templates are selected by name in the recipe (``self_edit.template``). Each
ends where the policy's completion begins; ``self-qa`` ends on ``Question 1: `` so the
completion starts with the first question, as in the paper.
"""

from __future__ import annotations

_PASSAGE = "Passage:\n{title}\n{context}\n\n"

TEMPLATES: dict[str, str] = {
    "implications": (
        "Let's read the following passage and produce a list of implications derived directly "
        "or indirectly from the content.\n\n" + _PASSAGE + "Implications:\n"
    ),
    "implications-long": (
        "Let's read the following passage and produce a long list of implications derived directly "
        "or indirectly from the content.\n\n" + _PASSAGE + "Implications:\n"
    ),
    "implications-very-long": (
        "Let's read the following passage and produce a very long list of implications derived "
        "directly or indirectly from the content.\n\n" + _PASSAGE + "Implications:\n"
    ),
    "rewrite": (
        "Let's read the following passage and rewrite it in a few different ways, each one "
        "separated by a newline.\n\n" + _PASSAGE + "Rewritten passages:\n"
    ),
    "self-qa": (
        "Let's read the following passage and rewrite it in a question-answer format.\n\n"
        + _PASSAGE
        + "Question 1: "
    ),
}

QA_TEMPLATE = "Let's answer a question directly and concisely.\nQuestion: {question}\nAnswer:\n"


class PromptError(ValueError):
    """Unknown template name."""


def check_template(name: str) -> str:
    """Return ``name`` if it is a known self-edit template.

    Raises:
        PromptError: naming the template and listing the known ones.
    """
    if name not in TEMPLATES:
        raise PromptError(f"unknown self-edit template {name!r}; known: {', '.join(sorted(TEMPLATES))}")
    return name


def self_edit_prompt(template: str, title: str, context: str, tokenizer=None, chat: bool = False) -> str:
    """The prompt from which the policy samples a self-edit for one passage.

    With ``chat`` the instruction (everything before the completion cue) becomes a user
    turn of ``tokenizer``'s chat template and the completion cue starts the assistant turn,
    for instruct policies.

    Raises:
        PromptError: unknown template.
    """
    text = TEMPLATES[check_template(template)].format(title=title, context=context)
    if not chat:
        return text
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise PromptError("self_edit.chat_template is on but the tokenizer has no chat template")
    # The cue ("Implications:\n", "Question 1: ") stays as the start of the assistant turn.
    body, cue = text.rsplit("\n\n", 1)
    head = tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True)
    return head + cue


def qa_prompt(title: str, question: str) -> str:
    """No-passage QA prompt: the question is prefixed ``Topic: {title}`` (reference behaviour)."""
    return QA_TEMPLATE.format(question=f"Topic: {title}\n{question}")
