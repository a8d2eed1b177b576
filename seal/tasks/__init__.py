"""Tasks: what differs between the domains SEAL learns on (SQuAD passages, the microworld, ARC,
a user's documents), behind one interface.

* :mod:`seal.tasks.sections` (bottom layer, imported by :mod:`seal.config`): the recipe's
  ``task`` field and the task sections, each task's recipe checks and placeholders;
* :mod:`seal.tasks.base`: :class:`~seal.tasks.base.Task`, the interface, and
  :class:`~seal.tasks.base.TextTask`, SQuAD's behaviour that the text tasks reuse;
* :mod:`seal.tasks.squad`, :mod:`seal.tasks.microworld`, :mod:`seal.tasks.arc`: the tasks;
* :mod:`seal.tasks.registry`: ``make_task(recipe)`` and ``register_task`` (the one module the
  generic code imports).

This package's ``__init__`` imports nothing, so the recipe (``seal.config``) loads the sections
without torch.
"""
