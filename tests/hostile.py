"""Hostile model-written text for the parsers of self-edits (tests/test_hparams.py,
tests/test_arc.py): every JSON type at every key, the reference's nested form, deep nesting,
huge numbers, NaN / Infinity literals, a 10 MB string, top-level non-objects, broken text."""

from __future__ import annotations

import json

#: One of every JSON type, and the edge values of each.
JSON_VALUES = [
    None, True, False, 0, -1, 3, 1.5, -0.0, 1e-320, 1e308, -1e308, 10**400, -(10**400), 2**31, 2**63,
    "", "x", "true", "1e-3", "all", "answer", "train_using_all_tokens", "\u2028\u0085\x00",
    [], [1], ["train_using_all_tokens"], [[[]]], {}, {"a": 1}, {"train_using_all_tokens": True},
]  # fmt: skip

#: Texts that are not made of JSON values by json.dumps.
RAW_TEXTS = [
    '{"lr": NaN}', '{"lr": Infinity}', '{"lr": -Infinity}', '{"epochs": 1' + "0" * 5000 + "}",
    '{"lr": 1' + "0" * 400 + "}", '{"lr": 1e999}', '{"lr": -1e999}', "[" * 100_000, "{" * 100_000,
    '{"a":' * 50_000 + "1" + "}" * 50_000, "[" * 200 + "]" * 200, '{"basic": true, "basic": false}',
    "", " ", "\n", "```", "```json\n", "```json\n{}\n```", "\x00", "\ud800", "\ufeff{}", "null", "1", '"s"',
    '{"training": {"strategy": ["train_using_all_tokens"]}}', '{"training": ["strategy"]}',
    '{"data_generation": null, "training": {}}', '{"training": {"strategy": {"x": 1}}, "basic": true}',
    "Hyperparameters:\n", "Hyperparameters:\n{}", "Hyperparameters:\nHyperparameters:\n[",
]  # fmt: skip

#: Keys of the flat forms (ours) and the reference's nested form, and ones nobody knows.
FLAT_KEYS = ["lr", "epochs", "loss_on", "lora_rank", "basic", "size", "chain", "repeat", "unknown", "", "\u2028"]
NESTED = {
    "data_generation": ["use_basic_augmentations", "use_size_augmentations", "use_chain_augmentations", "use_repeat_augmentations", "x"],
    "training": ["strategy", "learning_rate", "num_train_epochs", "x"],
}


def json_texts() -> list[str]:
    """Every JSON value at every key (flat and nested), every value as the whole text and as a
    nested section, and the raw texts."""
    texts = []
    for value in JSON_VALUES:
        texts.append(json.dumps(value))
        for key in FLAT_KEYS:
            texts.append(json.dumps({key: value}))
        for section, keys in NESTED.items():
            texts.append(json.dumps({section: value}))
            for key in keys:
                texts.append(json.dumps({section: {key: value}}))
    return texts + RAW_TEXTS


def key_value_texts() -> list[str]:
    """``key: value`` lines with every key and every value's text (and broken lines)."""
    values = [json.dumps(v) for v in JSON_VALUES] + ["nan", "inf", "-inf", "1e999", "0x10", "1_000", "true", "yes", "9" * 5000]
    texts = [f"{key}: {value}" for key in FLAT_KEYS for value in values]
    return texts + ["lr", ": 1", "lr: 1\nlr: 2", "lr:\n1", "a" * 10_000 + ": 1"] + RAW_TEXTS


#: A 10 MB self-edit (a JSON string value, and as plain text).
HUGE = json.dumps({"loss_on": "a" * 10_000_000})
