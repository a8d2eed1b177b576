"""The installable package and its small commands: the distribution name, version bounds that
the installed (tested) environment satisfies, ``seal --version``, ``seal env``, ``seal config``,
and recipe checks that come before a run directory is created."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from train_helpers import RECIPE, REPO, tiny_recipe
from typer.testing import CliRunner

import seal
from seal.cli import app
from seal.config import RecipeError, load_recipe, recipe_to_dict
from seal.env import version_of
from seal.train import train

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_distribution_name_and_version():
    project = PYPROJECT["project"]
    assert project["name"] == seal.DISTRIBUTION == "seal-rl"  # "seal" on the index is another project
    assert project["scripts"] == {"seal": "seal.cli:app"}
    assert "version" in project["dynamic"] and PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "seal.__version__"}
    Version(seal.__version__)  # a valid version


@pytest.mark.parametrize("extra", [None, "dev"])
def test_every_bound_is_satisfied_by_the_tested_install(extra):
    """Lower and upper bounds on every dependency, and the environment the tests run in (CI's
    install) satisfies them: the bounds describe what is tested."""
    reqs = PYPROJECT["project"]["dependencies"] if extra is None else PYPROJECT["project"]["optional-dependencies"][extra]
    for text in reqs:
        req = Requirement(text)
        ops = {spec.operator for spec in req.specifier}
        if req.name != "ruff":  # a linter: any recent one
            assert ">=" in ops and "<" in ops, f"{text}: needs a lower and an upper bound"
        installed = version_of(req.name)
        assert installed is not None, f"{req.name} is not installed"
        assert req.specifier.contains(Version(installed).base_version if req.name == "torch" else installed, prereleases=True), f"{req.name} {installed} outside {text}"


def test_deepspeed_is_an_extra_not_a_dependency():
    deps = [Requirement(t).name for t in PYPROJECT["project"]["dependencies"]]
    assert "deepspeed" not in deps
    assert [Requirement(t).name for t in PYPROJECT["project"]["optional-dependencies"]["deepspeed"]] == ["deepspeed"]


def test_seal_version_prints_the_version():
    out = subprocess.run([sys.executable, "-m", "seal.cli", "--version"], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"seal {seal.__version__} (seal-rl)"


def test_seal_env_reports_versions_devices_and_optional_packages():
    res = CliRunner().invoke(app, ["env"])
    assert res.exit_code == 0, res.output
    import torch
    import transformers

    lines = res.output.splitlines()
    assert f"seal: {seal.__version__} (seal-rl)" in lines
    assert f"torch: {torch.__version__}" in lines and f"transformers: {transformers.__version__}" in lines
    assert any(line.startswith("python: ") for line in lines) and any(line.startswith("cpu: ") for line in lines)
    assert any(line.startswith("cuda: ") for line in lines)
    assert any(line.startswith("flash-attn: ") for line in lines) and any(line.startswith("vllm: ") for line in lines)
    as_json = json.loads(CliRunner().invoke(app, ["env", "--json"]).output)
    assert as_json["libraries"]["peft"] == version_of("peft") and as_json["cuda_available"] == torch.cuda.is_available()
    assert set(as_json["optional"]) == {"flash-attn", "vllm"} and as_json["cpu"]


def test_seal_config_prints_the_resolved_recipe():
    res = CliRunner().invoke(app, ["config", str(RECIPE), "rl.rounds=1", "rl.save=adapter"])
    assert res.exit_code == 0, res.output
    printed = yaml.safe_load(res.output)
    assert printed == recipe_to_dict(load_recipe(RECIPE, ["rl.rounds=1", "rl.save=adapter"]))
    assert printed["rl"]["rounds"] == 1 and printed["inner"]["lr"] == 1e-3 and printed["hub"]["push_to_hub"] is False
    bad = CliRunner().invoke(app, ["config", str(RECIPE), "rl.roundz=1"])
    assert bad.exit_code == 2 and "rl.roundz: unknown key" in bad.output


def test_too_many_grpo_passages_fail_before_a_run_directory(tiny_squad_model, data_root, tmp_path):
    recipe = tiny_recipe(tiny_squad_model, data_root, rl__algorithm="grpo", inner__learner="base", rl__grpo__prompts_per_step=3)
    with pytest.raises(RecipeError, match=r"rl.grpo.prompts_per_step \(3\) exceeds the 2 training passages"):
        train(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_readme_grpo_example_fits_the_tiny_recipe():
    recipe = load_recipe(RECIPE, ["rl.algorithm=grpo", "inner.learner=base"])
    g = recipe.rl.grpo
    assert g.prompts_per_step <= recipe.data.n_train_passages
    assert g.steps * g.prompts_per_step * g.num_generations * recipe.inner.eval_times <= 40  # about one ReST-EM round
