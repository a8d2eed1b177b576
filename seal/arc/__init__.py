"""Few-shot ARC (paper Section 4.1): tasks, grid text, augmentations and configuration self-edits.

The policy reads a task's demonstrations and writes a *configuration* (which augmentation
families build the test-time-training set; learning rate, epochs, loss on all tokens or on
outputs only). The inner loop trains a LoRA adapter on that set and the adapted model answers
the test input greedily (or, with ``arc.inference: vote``, as augmented queries whose answers
are voted); the reward is 1 for an exact grid, else 0. Modules, bottom up: ``grids`` (grid
text), ``augment`` (invertible grid transforms), ``tasks`` (loaders, prompts, tasks as
passages), ``config`` (the recipe's ``arc`` section), ``self_edit`` (configurations parsed as
data, the test-time-training set), ``voting`` (augmented inference with voting).

This file imports nothing so that ``seal.graders`` can import ``seal.arc.grids`` cheaply.
"""
