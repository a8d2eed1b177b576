"""Preflight: every setting a run will use, checked before any work is done or written.

A setting that is only read late (the policy update's scheduler, after every evaluation of
a round) must not fail late: the finished work would be stranded, since ``--resume``
refuses a recipe that differs in a key that changes results. So ``seal train``,
``seal evaluate`` and ``seal bench`` call :func:`check_recipe` when the recipe is loaded
and :func:`check_model` as soon as the model's configuration can be read, before the run
directory is written and before the first self-edit is sampled.

What pydantic checks on load (``seal.sections.Section``: unknown keys, types, ranges, every
float finite, at least one LoRA target module) is not repeated here; this module checks
what needs a library or the model: scheduler and attention names, the device, the
DeepSpeed file, the LLM judge's key (and, on request, one judge call), and the LoRA target
modules against the model's module names. Each failure is a :class:`RecipeError` naming the
key and what to do.

What still cannot be known before work starts (out of memory, a judge that goes down, a
full disk) is fixed by keys that are result-neutral, which a resume may change
(``seal.config.RESULT_NEUTRAL_KEYS``; README, "Resuming a run").
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from seal.sections import RecipeError

# transformers and torch are imported inside the functions (seconds to import).


def scheduler_names() -> list[str]:
    """The learning-rate schedule names transformers' Trainer accepts (``SchedulerType``)."""
    from transformers.trainer_utils import SchedulerType

    return [s.value for s in SchedulerType]


# Schedules that step on evaluation metrics: transformers' TrainingArguments refuses them
# without an eval strategy (training_args.py, __post_init__), and the policy update runs none.
_NEEDS_EVALUATION = ("reduce_lr_on_plateau", "greedy")


def scheduler_problem(name: str) -> str | None:
    """Why the policy update (TRL's trainers: no evaluation, no ``lr_scheduler_kwargs``) cannot
    use schedule ``name``, or None: ``reduce_lr_on_plateau`` and ``greedy`` need an evaluation
    strategy; the rest are built by transformers' ``get_scheduler`` on a dummy parameter, as the
    trainer will (``cosine_with_min_lr`` and ``warmup_stable_decay`` need settings seal does not pass)."""
    import torch
    from transformers import get_scheduler

    if name in _NEEDS_EVALUATION:
        return f"lr_scheduler_type {name} requires an eval strategy"  # TrainingArguments.__post_init__'s words
    try:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        get_scheduler(name, optimizer, num_warmup_steps=0, num_training_steps=10)
    except (ValueError, TypeError, KeyError) as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


def check_scheduler(key: str, name: str) -> None:
    """Raises RecipeError unless ``name`` is a transformers ``SchedulerType`` value that the
    policy update can build (:func:`scheduler_problem`); the message lists those that can."""
    names = scheduler_names()
    problem = None if name not in names else scheduler_problem(name)
    if name not in names or problem:
        usable = [n for n in names if scheduler_problem(n) is None]
        why = f"unknown learning-rate scheduler {name!r}" if name not in names else f"scheduler {name!r} cannot run here ({problem})"
        raise RecipeError(f"{key}: {why}; use one of {', '.join(usable)}")


def attention_names() -> list[str]:
    """``model.attn_implementation`` values: 'auto' (seal's), 'eager' and every kernel registered
    in transformers' ``ALL_ATTENTION_FUNCTIONS`` (sdpa, flash_attention_2, flex_attention, ...)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ["auto", "eager", *sorted(ALL_ATTENTION_FUNCTIONS.valid_keys())]


def check_attention(model) -> None:
    """``model.attn_implementation``: a known name (a hub kernel ``org/repo`` is left to
    transformers); 'flash_attention_2' needs the flash-attn package, a CUDA device and a
    16-bit dtype. Raises RecipeError."""
    name = model.attn_implementation
    if name is None or "/" in name:
        return
    names = attention_names()
    if name not in names:
        raise RecipeError(f"model.attn_implementation: unknown attention {name!r}; use one of {', '.join(names)} (or leave it unset)")
    if name == "flash_attention_2":
        from seal.models import resolve_device

        if importlib.util.find_spec("flash_attn") is None:
            raise RecipeError("model.attn_implementation 'flash_attention_2' needs the flash-attn package (pip install -e '.[gpu]' on a CUDA machine); use 'sdpa' or 'auto'")
        if resolve_device(model.device).type != "cuda":
            raise RecipeError(f"model.attn_implementation 'flash_attention_2' runs on CUDA only, not model.device {model.device!r}; use 'sdpa' or 'auto'")
        if model.dtype == "float32":
            raise RecipeError("model.attn_implementation 'flash_attention_2' needs model.dtype bfloat16 or float16; use 'sdpa' for float32")


def check_device(device: str) -> None:
    """``model.device``: 'auto' or a torch device string whose device exists here (a CUDA
    index below the device count). Raises RecipeError."""
    if device == "auto":
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise RecipeError(f"model.device: {device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise RecipeError(f"model.device: {device!r}, but this machine has no CUDA device; use 'cpu' or 'auto'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise RecipeError(f"model.device: {device!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise RecipeError(f"model.device: {device!r}, but MPS is not available here; use 'cpu' or 'auto'")


def check_deepspeed(path: str | None) -> None:
    """``rl.sft.deepspeed``: an existing JSON object file, and the deepspeed package. Raises RecipeError."""
    if path is None:
        return
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"rl.sft.deepspeed: no file {p} (e.g. launch/ds_zero3.json)")
    try:
        config = json.loads(p.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise RecipeError(f"rl.sft.deepspeed: {p} is not JSON ({e})") from None
    if not isinstance(config, dict):
        raise RecipeError(f"rl.sft.deepspeed: {p} must hold a JSON object")
    if importlib.util.find_spec("deepspeed") is None:
        raise RecipeError("rl.sft.deepspeed is set but DeepSpeed is not installed: pip install --no-build-isolation -e '.[deepspeed]', or unset it")


def check_judge(qa) -> None:
    """With ``qa.grader: judge``: the judge's URL and key (present in ``$qa.judge.api_key_env``
    and usable in an HTTP header, ``seal.judge.LLMJudge``); with
    ``qa.judge.preflight_request``, one request (no retries) that must come back graded.
    Raises RecipeError."""
    if qa.grader != "judge":
        return
    from seal.judge import JudgeError, LLMJudge

    try:
        LLMJudge(qa.judge)  # reads and checks the key
    except JudgeError as e:
        raise RecipeError(f"qa.judge: {e}") from None
    if not qa.judge.preflight_request:
        return
    once = LLMJudge(qa.judge.model_copy(update={"max_retries": 0}))
    try:
        verdict = once.grade([("What is two plus two?", "4", "4")])[0]
    except JudgeError as e:
        raise RecipeError(f"qa.judge: {e}") from None
    if verdict is None:
        raise RecipeError(
            f"qa.judge.preflight_request: the judge at {qa.judge.base_url} (model {qa.judge.model!r}) gave no verdict "
            f"(the warning above says why); check qa.judge.base_url, qa.judge.model and ${qa.judge.api_key_env}"
        )


def check_recipe(recipe) -> None:
    """Every check that needs no model: schedulers (``rl.sft.lr_scheduler``,
    ``rl.grpo.lr_scheduler``), ``model.attn_implementation``, ``model.device``,
    ``rl.sft.deepspeed`` and the LLM judge (see the functions above).

    Raises:
        RecipeError: naming the key and what to do.
    """
    check_scheduler("rl.sft.lr_scheduler", recipe.rl.sft.lr_scheduler)
    check_scheduler("rl.grpo.lr_scheduler", recipe.rl.grpo.lr_scheduler)
    check_attention(recipe.model)
    check_device(recipe.model.device)
    check_deepspeed(recipe.rl.sft.deepspeed)
    check_judge(recipe.qa)


# ----------------------------------------------------------------------------- the model


def module_names(name_or_path: str, trust_remote_code: bool = False) -> dict[str, str]:
    """Every module of the model, name -> class name, from its configuration alone (built on
    the meta device: no weights are read or allocated).

    Raises:
        RecipeError: the configuration cannot be read (no such directory or hub id).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    local = Path(str(name_or_path)).expanduser()
    if (local.is_absolute() or str(name_or_path).startswith(".")) and not local.is_dir():
        raise RecipeError(f"model.name_or_path: no model directory {str(name_or_path)!r} (build one with `seal tiny-model`, or give a hub id)")
    try:
        config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecipeError(f"model.name_or_path: cannot read the model {name_or_path!r} ({first})") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return {name: type(module).__name__ for name, module in model.named_modules() if name}


def check_targets(key: str, targets: list[str], modules: dict[str, str], linear_only: bool, where: str = "the model") -> None:
    """Each of ``targets`` must match a module (PEFT's rule for a list of names: the name, or a
    name ending in ``.`` + it), an ``nn.Linear`` when ``linear_only`` (seal's own LoRA bank,
    ``seal.multi_lora``).

    Raises:
        RecipeError: naming the targets that match nothing and listing the linear layers there are.
    """
    linear = sorted({name.rsplit(".", 1)[-1] for name, kind in modules.items() if kind == "Linear"})
    unmatched = [t for t in targets if not any(name == t or name.endswith("." + t) for name in modules)]
    if unmatched:
        raise RecipeError(
            f"{key}.target_modules: {', '.join(map(repr, unmatched))} match no module of {where}; "
            f"its linear layers are: {', '.join(linear)}"
        )
    if linear_only:
        other = sorted({modules[n] for n in modules for t in targets if (n == t or n.endswith("." + t)) and modules[n] != "Linear"})
        if other:
            raise RecipeError(f"{key}.target_modules: {targets} match {', '.join(other)} modules, not linear layers; choose among: {', '.join(linear)}")


def check_model(recipe, lora_keys: list[str]) -> None:
    """The checks that need the model's configuration or tokenizer: the LoRA sections
    ``lora_keys`` (dotted, e.g. ``["inner.lora", "rl.sft.lora"]``) against
    ``model.name_or_path``'s module names (``inner.lora`` is seal's own LoRA, linear layers
    only; the others are PEFT's), and with ``self_edit.chat_template`` a tokenizer that has one.

    Raises:
        RecipeError: the model cannot be read, a target module matches nothing (named), or
            the chat template is missing.
    """
    modules = module_names(recipe.model.name_or_path, recipe.model.trust_remote_code)
    if recipe.self_edit.chat_template:
        from seal.models import load_tokenizer

        if not getattr(load_tokenizer(recipe.model.name_or_path, recipe.model.trust_remote_code), "chat_template", None):
            raise RecipeError(f"self_edit.chat_template is on but the tokenizer of {recipe.model.name_or_path} has no chat template; set self_edit.chat_template=false")
    for key in lora_keys:
        section = recipe
        for part in key.split("."):
            section = getattr(section, part)
        check_targets(key, list(section.target_modules), modules, linear_only=key == "inner.lora")


def train_lora_keys(recipe) -> list[str]:
    """The LoRA sections ``seal train`` uses: the inner loop's, and the policy update's
    (``rl.sft.lora`` for ReST-EM rounds, ``rl.grpo.lora`` for GRPO / RLOO)."""
    return ["inner.lora", "rl.sft.lora" if recipe.rl.algorithm == "restem" else "rl.grpo.lora"]
