"""The ``seal`` command line (typer): train, evaluate, bench, tiny-model, microworld.

Every command takes a recipe YAML plus dotted overrides (``inner.lora.rank=16``). Bad
input (a missing file, an unknown key, a passage without questions, a run directory seal did
not create or another process holds, a missing judge key or model, a full disk) is a
``seal.errors.SealError``: one clear line naming the file, key or passage and what to do, exit
status 2, no traceback, nothing half-written (a run stopped because a round had no usable
evaluation exits 3). ``seal --debug <command> ...`` shows the traceback instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

import seal
from seal.config import Recipe, RecipeError, load_recipe, parse_override, recipe_to_dict
from seal.data import DataError
from seal.distributed import get_dist, main_process_first
from seal.errors import DISK_FULL_ERRNOS, USER_ERROR_EXIT, SealError, disk_full_message
from seal.microworld.config import CopySkillError
from seal.preflight import check_recipe
from seal.prompts import PromptError
from seal.rundir import default_run_dir, hold_run_dir

# Each command imports the modules it runs (torch, transformers and the trainer) when it runs,
# so `seal --help` and a bad recipe's error stay fast.

app = typer.Typer(add_completion=False, no_args_is_help=True, help="SEAL: self-adapting language models.")
console = Console()
err_console = Console(stderr=True)

# Every SealError (RecipeError, DataError, PromptError, JudgeError, CopySkillError: a microworld
# pretraining that did not learn to copy, RunDirError, ...) ends the command as bad input: one
# line, exit status 2. The names below stay for callers that listed them.
USER_ERRORS = (SealError, RecipeError, DataError, PromptError, FileNotFoundError, CopySkillError)

_DEBUG = {"on": False}  # set by `seal --debug`


def _version(value: bool) -> None:
    if value:
        console.print(f"seal {seal.__version__} ({seal.DISTRIBUTION})", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print seal's version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of a refused or failed command (otherwise one line)."),
) -> None:
    """SEAL: self-adapting language models."""
    _DEBUG["on"] = debug


def _fail(e: Exception, where: Path | None = None) -> None:
    """Print ``e`` as one line and exit (2, or the error's ``exit_status``); with ``--debug``,
    re-raise it (call inside the ``except`` block)."""
    if _DEBUG["on"]:
        raise e
    disk_full = isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS
    if disk_full:  # "continue with --resume" only where a run directory was started
        message = disk_full_message(e, str(where) if where and (Path(where) / "config.yaml").is_file() else None)
    else:
        message = str(e)
    err_console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True, highlight=False)
    raise typer.Exit(getattr(e, "exit_status", USER_ERROR_EXIT))


@contextmanager
def _reported(where: dict | None = None) -> Iterator[None]:
    """Turn user errors and a full disk raised in the block into one line and an exit status
    (:func:`_fail`); ``where["run"]``, when the block set it, names the run directory."""
    try:
        yield
    except USER_ERRORS as e:
        _fail(e)
    except OSError as e:
        if e.errno not in DISK_FULL_ERRNOS:
            raise
        _fail(e, (where or {}).get("run"))


def _load(recipe_path: Path, overrides: list[str] | None, threads: bool = True) -> Recipe:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    recipe = load_recipe(recipe_path, overrides or [])
    if threads:  # seal train does both once it holds its run directory (a busy one is refused at once)
        check_recipe(recipe)  # every setting that needs no model, before any work (seal.preflight)
        _set_threads(recipe)
    return recipe


def _set_threads(recipe: Recipe) -> None:
    if recipe.model.num_threads:  # before anything runs, so run.json records the real count
        import torch

        torch.set_num_threads(recipe.model.num_threads)


def _main_rank() -> bool:
    """This process is the job's main one (``RANK`` 0 under accelerate / torchrun, or unlaunched),
    read from the launcher's environment before torch is imported."""
    return os.environ.get("RANK", "0") == "0"


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/squad_tiny_cpu.yaml."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides: inner.lora.rank=16 rl.rounds=1"),
    run_dir: Path = typer.Option(None, "--run-dir", help="Run directory (default runs/<recipe>-<timestamp>)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in this directory."),
) -> None:
    """Run SEAL's outer loop on the recipe's training passages: ReST-EM rounds (rl.algorithm=grpo or rloo: TRL steps)."""
    where: dict = {}
    with _reported(where):
        loaded = _load(recipe, overrides, threads=False)
        target = where["run"] = resume or run_dir or default_run_dir(loaded.output_dir, loaded.name)
        # Claimed and locked first (the main process; run_train holds it again), so that a busy
        # or foreign directory is refused at once, before torch is even imported.
        with hold_run_dir(target, lock=_main_rank(), create=resume is None):
            from seal.prepare import ensure_model  # torch, transformers, TRL: seconds to import
            from seal.train import train as run_train

            check_recipe(loaded)
            _set_threads(loaded)
            with main_process_first():  # under accelerate launch, one rank builds a tiny model
                ensure_model(loaded, console.print)
            path = run_train(loaded, target, resume=resume is not None, console=console)
    if get_dist().is_main:
        console.print(f"[bold green]done:[/] {path}")


@app.command()
def evaluate(
    recipe: Path = typer.Argument(..., help="Recipe YAML with an 'evaluate' section."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. evaluate.source=file:squad/val_200_selfedits_gpt-4.1.json"),
    out: Path = typer.Option(None, "--out", help="Results directory (default runs/<recipe>-eval-<timestamp>)."),
) -> None:
    """Score one source of inner-loop training data on evaluation passages (single-passage protocol)."""
    from seal.evaluate import evaluate as run_evaluate
    from seal.prepare import ensure_model

    where: dict = {}
    with _reported(where):
        loaded = _load(recipe, overrides)
        ensure_model(loaded, console.print)
        where["run"] = out or default_run_dir(loaded.output_dir, f"{loaded.name}-eval")
        run_evaluate(loaded, where["run"], console=console)


@app.command()
def bench(
    recipe: Path = typer.Argument(..., help="Recipe YAML with a 'bench' section, e.g. recipes/bench_squad_tiny_cpu.yaml."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. bench.bootstrap_samples=2000"),
    out: Path = typer.Option(None, "--out", help="Results directory (default runs/<recipe>-bench-<timestamp>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the bench in --out: journaled results are read back, only missing ones computed."),
) -> None:
    """Compare sources of inner-loop training data across protocols: report, CSV/JSON and plots with CIs."""
    from seal.bench.run import bench as run_bench
    from seal.prepare import ensure_model

    where: dict = {}
    with _reported(where):
        if resume and out is None:
            raise RecipeError("--resume needs --out DIR, the bench to continue")
        loaded = _load(recipe, overrides)
        ensure_model(loaded, console.print)
        where["run"] = out or default_run_dir(loaded.output_dir, f"{loaded.name}-bench")
        path = run_bench(loaded, where["run"], console=console, resume=resume)
    console.print(f"[bold green]done:[/] {path}")


@app.command()
def env(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Print versions (seal, torch, transformers, ...), Python, platform, CPU, devices, CUDA and optional packages: for bug reports."""
    import json

    from seal.env import environment_report, format_report

    report = environment_report()
    print(json.dumps(report, indent=2) if as_json else format_report(report))


@app.command()
def config(
    recipe: Path = typer.Argument(..., help="Recipe YAML."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, as for seal train."),
) -> None:
    """Print the resolved recipe (every field, defaults and overrides applied) as YAML; builds and runs nothing."""
    import yaml

    try:
        loaded = load_recipe(recipe, overrides or [])
    except USER_ERRORS as e:
        _fail(e)
    print(yaml.safe_dump(recipe_to_dict(loaded), sort_keys=False), end="")


@app.command("tiny-model")
def tiny_model(
    out: Path = typer.Argument(..., help="Model directory to write."),
    data: list[str] = typer.Option(["squad/train_100.json"], "--data", help="SEAL-format files whose text trains the tokenizer."),
    data_root: str = typer.Option(None, "--data-root", help="Folder that relative --data paths resolve against."),
    vocab_size: int = typer.Option(2048),
    hidden_size: int = typer.Option(64),
    num_layers: int = typer.Option(2),
    num_heads: int = typer.Option(4),
    seed: int = typer.Option(0),
) -> None:
    """Build a tiny random Llama-architecture model plus a BPE tokenizer trained on the data's text."""
    from seal.models import build_tiny_model, passage_texts

    with _reported():
        texts = passage_texts(data, data_root)
        path = build_tiny_model(out, texts, vocab_size, hidden_size, num_layers, num_heads, seed=seed)
    console.print(f"[bold green]wrote[/] {path}")


microworld_app = typer.Typer(no_args_is_help=True, help="The synthetic knowledge world (CPU testbed where rewards are non-zero).")
app.add_typer(microworld_app, name="microworld")


@microworld_app.command("pretrain")
def microworld_pretrain(
    overrides: list[str] = typer.Argument(None, help="PretrainConfig fields as key=value, e.g. n_demos=4000 hidden_size=96"),
    cache_dir: Path = typer.Option(Path(".cache/microworld"), "--cache-dir", help="Parent of cache entries."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Generate the world and pretrain its small policy from scratch, or reuse the cached entry.

    Prints the entry directory: model/, train.json, eval.json, oracle_*.json, meta.json.
    """
    from seal.microworld.pretrain import ensure_microworld

    with _reported():
        fields = {}
        for text in overrides or []:
            keys, value = parse_override(text)
            fields[".".join(keys)] = value
        try:
            entry = ensure_microworld(cache_dir, seed=seed, **fields)
        except ValidationError as e:
            raise RecipeError(f"invalid microworld settings: {e}") from e
    console.print(f"[bold green]microworld:[/] {entry}")


@microworld_app.command("demo")
def microworld_demo(
    overrides: list[str] = typer.Argument(None, help="Dotted overrides applied to both recipes, e.g. rl.rounds=3 microworld.seed=1"),
    run_dir: Path = typer.Option(None, "--run-dir", help="Train run directory (resumed if it holds one); the bench goes to <run-dir>/bench. Default runs/microworld-demo (--hparams: runs/microworld-hparams-demo)."),
    train_recipe: Path = typer.Option(None, "--train-recipe", help="Default recipes/microworld_cpu.yaml (--hparams: recipes/microworld_hparams_cpu.yaml)."),
    bench_recipe: Path = typer.Option(None, "--bench-recipe", help="Default recipes/bench_microworld_cpu.yaml (--hparams: recipes/bench_microworld_hparams_cpu.yaml)."),
    hparams: bool = typer.Option(False, "--hparams", help="The hyperparameter world: self-edits choose their inner loop's lr and epochs; prints the share of each choice per round."),
    jobs: int = typer.Option(None, "--jobs", min=1, help="Processes: 1 = all in this one; 2 (default with 2+ cores) = a second process benches, while the rounds train, the sources that need no round and each finished round's policy, and takes chunks of the inner-loop evaluations whenever it waits. Same results."),
) -> None:
    """Pretrain (or reuse) the microworld, run ReST-EM, then benchmark every round's policy on held-out people."""
    from seal.microworld.demo import HPARAMS_RECIPES, HPARAMS_RUN_DIR, default_jobs, run_demo

    if hparams:
        train_recipe = train_recipe or Path(HPARAMS_RECIPES[0])
        bench_recipe = bench_recipe or Path(HPARAMS_RECIPES[1])
        run_dir = run_dir or Path(HPARAMS_RUN_DIR)
    train_recipe = train_recipe or Path("recipes/microworld_cpu.yaml")
    bench_recipe = bench_recipe or Path("recipes/bench_microworld_cpu.yaml")
    run_dir = run_dir or Path("runs/microworld-demo")
    with _reported({"run": run_dir}):
        for path in (train_recipe, bench_recipe):
            _load(path, overrides)  # validate both (and set the thread count) before any work
        out = run_demo(train_recipe, bench_recipe, run_dir, overrides, console=console, jobs=jobs or default_jobs())
    console.print(f"[bold green]done:[/] {out / 'report.md'}")


def main() -> None:  # pragma: no cover - console-script entry
    app()


if __name__ == "__main__":  # python -m seal.cli ..., accelerate launch -m seal.cli ...
    main()
