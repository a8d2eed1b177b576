"""The Hugging Face Hub: which commit a pinned ``model.revision`` is, and pushing a trained
policy with its model card (``hub.push_to_hub``).

Everything here but :func:`upload_folder` works offline: :func:`resolved_commit` reads the
local hub cache only, and :func:`stage_policy` / :func:`model_card` write files. The upload is
a thin wrapper over ``huggingface_hub.HfApi`` (``create_repo`` + ``upload_folder``); its token
is ``huggingface_hub``'s own (``HF_TOKEN`` or ``huggingface-cli login``), never the recipe's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

import seal
from seal.display import percent
from seal.models import CHAIN_FILE, is_adapter_chain, read_chain
from seal.rundir import RunDir, read_json_or_none, read_jsonl


def resolved_commit(name_or_path: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> str | None:
    """The commit hash ``revision`` (None: the default branch, ``main``) of the hub model
    ``name_or_path`` resolves to in the local hub cache, read without any network access.

    None for a local folder, and when the cache does not hold the model's ``config.json`` at
    that revision (not downloaded yet; the hub is not asked).
    """
    if Path(name_or_path).exists():
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name_or_path, "config.json", cache_dir=cache_dir, revision=revision)
    except Exception:  # not a valid repo id, an unreadable cache: nothing known
        return None
    # <cache>/models--org--name/snapshots/<commit>/config.json
    return Path(found).parent.name if isinstance(found, str) else None


def model_record(name_or_path: str, revision: str | None) -> dict[str, Any]:
    """``run.json``'s ``model``: what was asked for and, when known, the commit it resolved to."""
    return {"name_or_path": name_or_path, "revision": revision, "commit": resolved_commit(name_or_path, revision)}


def _rewards_table(metrics: list[dict]) -> list[str]:
    """Markdown rows of the measured rewards: per ReST-EM round, or per GRPO / RLOO logging step."""
    if metrics and "round" in metrics[0]:
        rows = ["| round | baseline accuracy | adapted accuracy | mean reward | best-of-k reward | kept |", "|---|---|---|---|---|---|"]
        for m in metrics:
            rows.append(
                f"| {m['round']} | {percent(m.get('baseline_accuracy'))} | {percent(m.get('adapter_accuracy'))} | "
                f"{percent(m.get('mean_reward'), points=True)} | {percent(m.get('best_of_k_reward'), points=True)} | {m.get('n_kept')} |"
            )
        return rows
    rows = ["| step | mean reward | reward std |", "|---|---|---|"]
    for m in metrics:
        rows.append(f"| {m.get('step')} | {percent(m.get('mean_reward'), points=True)} | {percent(m.get('reward_std'), points=True)} |")
    return rows


def model_card(run: RunDir, policy: str | os.PathLike) -> str:
    """The model card (``README.md``) of ``policy``, the final policy of the run in ``run``: the
    recipe (name, algorithm, the resolved YAML), the base model and revision, the round or step
    the policy comes from, the measured rewards of every round (``metrics.jsonl``), and how to
    load it (merged weights, or the adapter chain)."""
    config = run.recorded_config()
    info = read_json_or_none(run.path / "run.json") or {}
    final = read_json_or_none(run.path / "final.json") or {}
    metrics = read_jsonl(run.metrics)
    model = config["model"]
    algorithm = config["rl"]["algorithm"]
    chain = is_adapter_chain(policy)
    if algorithm == "restem":
        where = f"the policy after ReST-EM round {metrics[-1]['round']} ({len(metrics)} rounds)" if metrics else "the initial policy (no round finished)"
    else:
        where = f"the policy after {final.get('steps', '?')} {algorithm.upper()} steps"
    front = {
        "library_name": "peft" if chain else "transformers",
        "base_model": model["name_or_path"],
        "tags": ["seal", "self-adapting-language-models", algorithm],
    }
    commit = (info.get("model") or {}).get("commit")
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {config.get('name') or 'seal'}: {where}",
        "",
        f"Trained with [seal](https://arxiv.org/abs/2506.10943) {seal.__version__} (`pip install {seal.DISTRIBUTION}`), "
        f"recipe `{config.get('name')}`, outer loop `{algorithm}`, seed {config.get('seed')}.",
        f"Base model: `{model['name_or_path']}`" + (f" at revision `{model.get('revision')}`" if model.get("revision") else "")
        + (f" (commit `{commit}`)" if commit else "") + ".",
        "",
        "## Measured rewards",
        "",
        "Reward: no-passage QA accuracy after the inner loop minus before (percentage points), on the run's training passages.",
        "",
        *(_rewards_table(metrics) if metrics else ["No round finished."]),
        "",
        "## Loading",
        "",
    ]
    if chain:
        lines += [
            "An adapter chain (`rl.save: adapter`): the base model with each LoRA adapter of `seal_policy.json` merged in order.",
            "",
            "```python",
            "from seal.models import load_causal_lm  # pip install seal-rl",
            "model = load_causal_lm('PATH')  # PATH: this repository, downloaded",
            "```",
        ]
    else:
        lines += ["```python", "from transformers import AutoModelForCausalLM", "model = AutoModelForCausalLM.from_pretrained('REPO_ID')", "```"]
    lines += ["", "## Recipe", "", "```yaml", yaml.safe_dump(config, sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)


def stage_policy(run: RunDir, policy: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Lay out what :func:`upload_folder` sends: ``policy``'s files and ``README.md`` (the model
    card); an adapter chain with every adapter under ``adapters/<i>/`` and its manifest
    rewritten to them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    policy = Path(policy)
    if is_adapter_chain(policy):
        base, revision, adapters = read_chain(policy)
        for f in policy.iterdir():
            if f.is_file() and f.name != CHAIN_FILE:
                shutil.copy2(f, out / f.name)
        names = []
        for i, adapter in enumerate(adapters):
            names.append(f"adapters/{i}")
            shutil.copytree(adapter, out / names[-1], ignore=shutil.ignore_patterns(CHAIN_FILE), dirs_exist_ok=True)
        # A local base stays named by its path on this machine (the card names it too): a hub
        # base, the intended case, makes the pushed chain loadable anywhere.
        manifest = {"format": "seal-adapter-chain", "base": {"hub_id": base, "revision": revision}, "adapters": names}
        (out / CHAIN_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    else:
        shutil.copytree(policy, out, dirs_exist_ok=True)
    (out / "README.md").write_text(model_card(run, policy))
    return out


def upload_folder(folder: str | os.PathLike, repo_id: str, private: bool) -> str:
    """Create ``repo_id`` (a model repository; kept if it exists) and upload ``folder`` to it
    with ``huggingface_hub``. Returns the commit's URL. Raises what ``huggingface_hub`` raises
    (no token, no network, no permission)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=f"seal {seal.__version__}: {Path(folder).name}")
    return str(getattr(info, "commit_url", info))


def push_policy(run: RunDir, policy: str | os.PathLike, hub_config, log=print) -> str | None:
    """``hub.push_to_hub``: stage the run's final ``policy`` (:func:`stage_policy`, under the run
    directory's ``hub/``) and upload it (:func:`upload_folder`). Off: nothing is staged or sent,
    None is returned."""
    if not hub_config.push_to_hub:
        return None
    staged = run.path / "hub"
    shutil.rmtree(staged, ignore_errors=True)
    stage_policy(run, policy, staged)
    log(f"pushing {staged} to the hub: {hub_config.repo_id} ({'private' if hub_config.private else 'public'})")
    url = upload_folder(staged, hub_config.repo_id, hub_config.private)
    log(f"pushed: {url}")
    return url
