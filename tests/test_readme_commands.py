"""Every command the README shows runs as written (issue 22, item 7).

``tests/readme_commands.txt`` lists each command of the README's fenced code blocks with how it
is checked (its header explains the kinds). The fast tests assert that the list is the README's
commands, that the set-up is what ``.ci/run`` runs, and that every expensive command's recipe
and overrides validate (``seal config``) and every script's ``--help`` runs; the slow test runs
the cheap ones (tiny recipes, reduced overrides where the list says so) in a scratch folder, one
after another, as ``python -m seal.cli`` subprocesses: exit status 0, no traceback.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
from train_helpers import REPO, subprocess_env
from typer.testing import CliRunner

from seal.cli import app

LIST = REPO / "tests" / "readme_commands.txt"
PROGRAMS = {"seal", "python", "python3", "bash", "accelerate", "pip"}
OPTIONS_WITH_VALUES = {"--out", "--run-dir", "--resume", "--train-recipe", "--bench-recipe", "--cache-dir", "--seed"}
DEMO_RECIPES = {False: ("recipes/microworld_cpu.yaml", "recipes/bench_microworld_cpu.yaml"), True: ("recipes/microworld_hparams_cpu.yaml", "recipes/bench_microworld_hparams_cpu.yaml")}


def readme_commands(text: str) -> list[list[str]]:
    """The commands of ``text``'s fenced ``bash`` / ``sh`` / unmarked blocks, as shell words
    (continuations joined, comments dropped), for lines that start with a program of
    :data:`PROGRAMS` (other blocks' lines are examples of self-edits or YAML)."""
    out = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if lang not in ("", "bash", "sh", "shell"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in PROGRAMS:
                out.append(words)
    return out


def listed() -> list[tuple[list[str], str, list[str]]]:
    """``(command words, kind, extra overrides)`` for each line of ``readme_commands.txt``."""
    rows = []
    for line in LIST.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        command, _, how = line.partition("##")
        kind, *extra = how.split()
        assert kind in ("setup", "run", "validate", "help", "gpu"), f"{LIST.name}: unknown kind {kind!r} in {line!r}"
        rows.append((shlex.split(command), kind, extra))
    return rows


def seal_arguments(words: list[str]) -> tuple[list[str], list[str], set[str]]:
    """``seal <command...> ARGS``: (the subcommand words, the positional arguments, the flags)."""
    sub = words[1:3] if words[1] == "microworld" else words[1:2]
    rest, positional, flags = words[1 + len(sub) :], [], set()
    i = 0
    while i < len(rest):
        if rest[i] in OPTIONS_WITH_VALUES:
            i += 2
            continue
        if rest[i].startswith("--"):
            flags.add(rest[i])
        else:
            positional.append(rest[i])
        i += 1
    return sub, positional, flags


def validate(words: list[str]) -> None:
    """``seal config`` on the recipe(s) a seal command would run, with its overrides
    (``accelerate launch ... -m seal.cli ARGS``: the ``seal ARGS`` it launches)."""
    if words[0] == "accelerate":
        words = ["seal", *words[words.index("seal.cli") + 1 :]]
    sub, positional, flags = seal_arguments(words)
    if sub == ["microworld", "demo"]:
        runs = [(recipe, positional) for recipe in DEMO_RECIPES["--hparams" in flags]]
    else:
        assert sub[0] in ("train", "evaluate", "bench"), f"no validation for {shlex.join(words)}"
        runs = [(positional[0], positional[1:])]
    for recipe, overrides in runs:
        res = CliRunner().invoke(app, ["config", str(REPO / recipe), *overrides])
        assert res.exit_code == 0, f"{shlex.join(words)}: {res.output}"


def test_the_list_is_the_readmes_commands():
    in_readme = readme_commands((REPO / "README.md").read_text())
    in_list = [words for words, _, _ in listed()]
    assert in_readme, "no command found in the README"
    missing = [shlex.join(w) for w in in_readme if w not in in_list]
    stale = [shlex.join(w) for w in in_list if w not in in_readme]
    assert not missing and not stale, f"README commands not in {LIST.name}: {missing}; listed but not in the README: {stale}"


def test_the_setup_is_what_ci_runs():
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    for words, kind, _ in listed():
        if kind != "setup":
            continue
        steps = [s.strip() for s in shlex.join(words).replace("'&&'", "&&").split("&&")]
        for step in steps[:-1]:
            assert step in ci or shlex.join(shlex.split(step)) in [shlex.join(shlex.split(c)) for c in ci if c and not c.startswith("#")], f".ci/run lacks {step!r}"
        last = shlex.split(steps[-1])
        if last == ["python", "-m", "pytest", "-q"]:
            assert "python -m pytest -q" in ci
        else:
            validate(last)


def test_expensive_commands_validate():
    for words, kind, _ in listed():
        if kind == "validate":
            validate(words)
        elif kind == "help":
            assert words[0] == "python" and words[1].endswith(".py")
            res = subprocess.run([sys.executable, words[1], "--help"], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stderr[-2000:]


RUNS = [(words, extra) for words, kind, extra in listed() if kind == "run"]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One scratch folder for every "run" command (recipes/ and tests/data/ linked, as in a
    clone: recipes/documents_tiny_cpu.yaml reads tests/data): tiny models are built once and
    shared, as on a user's machine."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "recipes").symlink_to(REPO / "recipes")
    (folder / "tests").mkdir()
    (folder / "tests" / "data").symlink_to(REPO / "tests" / "data")
    return folder


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("words, extra", RUNS, ids=[shlex.join(w) + (" +reduced" if e else "") for w, e in RUNS])
def test_cheap_command_runs(words, extra, scratch):
    """A "run" command (in the list's order, in :func:`scratch`) exits 0 without a traceback;
    the README's GRPO example is among them, as written."""
    env = subprocess_env(SEAL_DATA_DIR=os.environ.get("SEAL_DATA_DIR", str(REPO.parent / "shared" / "data")))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    assert words[0] == "seal"
    cmd = [sys.executable, "-m", "seal.cli", *words[1:], *extra]
    res = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=600)
    output = res.stdout + res.stderr
    assert res.returncode == 0 and "Traceback" not in output, f"{shlex.join(words)} {' '.join(extra)}:\n{output[-4000:]}"
    sub, _, _ = seal_arguments(words)
    if sub != ["evaluate"]:
        assert "done:" in res.stdout, output[-2000:]
