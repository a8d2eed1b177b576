"""Task ``squad``: knowledge incorporation on SQuAD passages (paper Section 4.2), SEAL-format
JSON files or a hub dataset with SQuAD's columns; :class:`seal.tasks.base.TextTask` as is."""

from __future__ import annotations

from seal.tasks.base import TextTask


class SquadTask(TextTask):
    """SQuAD passages, text self-edits, ``qa.grader`` on their questions."""
