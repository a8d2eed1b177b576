"""Prompt templates: self-edit generation and no-passage QA (paper Appendix B, Table 9).

Self-edit templates are selected by name in the recipe (``self_edit.template``). Each
ends where the policy's completion begins; ``self-qa`` ends on ``Question 1: `` so the
completion starts with the first question, as in the paper.
"""

from __future__ import annotations

from seal.errors import SealError

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
    # ARC (seal.arc): the context is the task's demonstrations; the hint
    # (seal.arc.self_edit.configuration_hint) says how to write the configuration.
    "arc-config": "Here are the examples of a grid puzzle.\n\n{context}\n\nConfiguration:\n",
    # The reference's configuration prompt, whole (few-shot/utils/prompts.py:3-43,
    # self-edit.py:368-391): Llama-3 chat layout with its system message, the demonstrations
    # as its get_prompt lays them out (seal.arc.tasks.reference_demonstrations_text, the
    # context with arc.text_format: reference), "------" and its instructions with the nested
    # JSON skeleton. Already a chat text: use it with self_edit.chat_template off (the
    # tokenizer adds BOS) and no hint.
    "arc-config-reference": (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "You are a helpful assistant that provide the correct output for the given task immediately."
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{context}------\n\n\n"
        "You are configuring a model training pipeline by selecting from predefined tools.\n\n"
        "You must make two decisions:\n\n"
        "1. **Data Generation Tools** \u2014 For each of the following, choose true or false:\n"
        "    - use_basic_augmentations\n    - use_size_augmentations\n"
        "    - use_chain_augmentations\n    - use_repeat_augmentations\n\n"
        "2. **Training Configuration** \u2014 Choose one of:\n"
        '    - "train_using_all_tokens"\n    - "train_using_output_tokens"\n\n'
        "Also specify:\n    - learning_rate (float)\n    - num_train_epochs (integer)\n\n"
        "### Output Format\n\n"
        "Respond with a valid JSON object. Do not include any explanation, markdown, or extra text. "
        "Use lowercase `true`/`false` for booleans and ensure correct JSON syntax.\n\n"
        "Example output:\n\n"
        "{{\n"
        '  "data_generation": {{\n'
        '    "use_basic_augmentations": ...,\n'
        '    "use_size_augmentations": ...,\n'
        '    "use_chain_augmentations": ...,\n'
        '    "use_repeat_augmentations": ...\n'
        "  }},\n"
        '  "training": {{\n'
        '    "strategy": ...,\n'
        '    "learning_rate": ...,\n'
        '    "num_train_epochs": ...\n'
        "  }}\n"
        "}}\n"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "self-qa": (
        "Let's read the following passage and rewrite it in a question-answer format.\n\n"
        + _PASSAGE
        + "Question 1: "
    ),
}

#: Self-edit templates that are already a whole chat text (no chat template, no hint on top).
CHAT_TEMPLATES = frozenset({"arc-config-reference"})

#: No-passage QA prompts by name (``qa.template``); the answer is generated right after.
QA_TEMPLATES: dict[str, str] = {
    # The reference implementation's prompt; the title goes in as "Topic: {title}".
    "reference": "Let's answer a question directly and concisely.\nQuestion: Topic: {title}\n{question}\nAnswer:\n",
    # One line, the form of a question-answer self-edit line ("Q: ... A: ..."): the
    # microworld's format (seal/microworld), where training texts are "{title}\n{line}".
    "qa-line": "{title}\nQ: {question} A:",
    # ARC: the question is the whole query (seal.arc.tasks.query_text), asked as it is.
    "arc": "{question}",
}


class PromptError(SealError, ValueError):
    """Unknown template name."""


def _known(name: str, registry: dict[str, str], what: str) -> str:
    if name not in registry:
        raise PromptError(f"unknown {what} {name!r}; known: {', '.join(sorted(registry))}")
    return name


def check_template(name: str) -> str:
    """Return ``name`` if it is a known self-edit template.

    Raises:
        PromptError: naming the template and listing the known ones.
    """
    return _known(name, TEMPLATES, "self-edit template")


def self_edit_prompt(template: str, title: str, context: str, tokenizer=None, chat: bool = False, hint: str = "") -> str:
    """The prompt from which the policy samples a self-edit for one passage.

    ``hint`` (a paragraph, e.g. ``seal.hparams.prompt_hint``: how to write a hyperparameter
    block) goes between the passage and the completion cue; "" leaves the prompt as it was.

    With ``chat`` the instruction (everything before the completion cue) becomes a user
    turn of ``tokenizer``'s chat template and the completion cue starts the assistant turn,
    for instruct policies.

    Raises:
        PromptError: unknown template.
    """
    text = TEMPLATES[check_template(template)].format(title=title, context=context)
    if template in CHAT_TEMPLATES:
        if chat or hint:
            raise PromptError(f"self-edit template {template!r} is a whole chat text: set self_edit.chat_template off (and it takes no hint)")
        return text
    if hint:
        body, cue = text.rsplit("\n\n", 1)
        text = f"{body}\n\n{hint.strip()}\n\n{cue}"
    if not chat:
        return text
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise PromptError("self_edit.chat_template is on but the tokenizer has no chat template")
    # The cue ("Implications:\n", "Question 1: ") stays as the start of the assistant turn.
    body, cue = text.rsplit("\n\n", 1)
    head = tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True)
    return head + cue


def check_qa_template(name: str) -> str:
    """Return ``name`` if it is a known QA template (``QA_TEMPLATES``).

    Raises:
        PromptError: naming the template and listing the known ones.
    """
    return _known(name, QA_TEMPLATES, "QA template")


def qa_prompt(title: str, question: str, template: str = "reference") -> str:
    """No-passage QA prompt for one question.

    ``reference`` (the default) prefixes the question with ``Topic: {title}`` as the reference
    implementation does. Raises ``PromptError`` for an unknown template.
    """
    return QA_TEMPLATES[check_qa_template(template)].format(title=title, question=question)


def qa_answer_text(prompt: str, answer: str) -> str:
    """``prompt`` followed by ``answer`` as a model would continue it: a space after a prompt
    that ends mid-line (``"... A:"``), nothing after one ending in a newline or space."""
    return prompt + ("" if prompt.endswith(("\n", " ")) else " ") + answer
