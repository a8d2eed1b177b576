"""Task ``microworld``: a generated world where SEAL learns on a CPU (``seal.microworld``).

Text passages and self-edits (:class:`seal.tasks.base.TextTask`), plus: the world is pretrained
(or reused from its cache) before a command runs, and the diagnostics classify a self-edit by
its exact style and count a fact as stated when its value occurs as a whole word.
"""

from __future__ import annotations

from collections.abc import Callable

from seal.diagnostics import Formats
from seal.microworld.pretrain import ensure_microworld
from seal.microworld.world import STYLES, classify_style, mentioned_values
from seal.tasks.base import TextTask


class StyleFormats(Formats):
    """The microworld's diagnostics: a self-edit's exact style (``classify_style``: question-answer
    lines, paraphrases, fact lists, ...), and a fact stated when its value is mentioned
    (``mentioned_values``: answers are world attribute values)."""

    name = "style"

    def kinds(self) -> tuple[str, ...]:
        return (*STYLES, "mixed", "empty")

    def classify(self, text: str) -> str:
        return classify_style(text)

    def states(self, text: str, answer: str) -> bool:
        return answer in set(mentioned_values(text))


class MicroworldTask(TextTask):
    """The microworld: :class:`TextTask` with the world pretrained first and style diagnostics."""

    diagnostics = StyleFormats()

    def prepare(self, log: Callable[[str], None] = print) -> None:
        """Pretrain the recipe's world unless it is cached (progress on stderr)."""
        world = self.section
        ensure_microworld(world.cache_dir, seed=world.seed, cfg=world.pretrain_config())
