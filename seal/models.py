"""Loading causal LMs, and building tiny local ones for CPUs and tests.

Every model a run loads (the policy that samples, the inner loop's learner, the ReST-EM policy
update and its merge base, the GRPO / RLOO policy, ``seal evaluate`` and ``seal bench``) goes
through :func:`load_policy`, with the recipe's ``model`` section (dtype, attention
implementation, revision, trust_remote_code, device); every PEFT LoRA config through
:func:`peft_lora_config`. Underneath, from a hub id or a local directory through
``transformers.AutoModelForCausalLM``. ``build_tiny_model`` writes such a directory (a
Llama-architecture config with random weights plus a byte-level BPE tokenizer trained with
the ``tokenizers`` library), so nothing is ever downloaded in tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from seal.data import load_passages
from seal.errors import ModelNotFoundError
from seal.rundir import atomic_dir

if TYPE_CHECKING:
    from seal.sections import LoraConfig

# A minimal chat template for tiny models, so the chat-template prompt variant works everywhere.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype | str:
    """``from_pretrained``'s ``dtype`` for ``model.dtype``: ``'auto'`` passes through (the
    checkpoint's own dtype, its config's ``dtype``), the others are torch dtypes."""
    return "auto" if name == "auto" else _DTYPES[name]


# transformers and tokenizers are imported inside the functions that use them (seconds to import).


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' is CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_attn_implementation(name: str | None, device: torch.device) -> str | None:
    """The attention implementation to ask transformers for (``model.attn_implementation``).

    ``'auto'``: ``'flash_attention_2'`` when the flash-attn package is installed and the
    device is CUDA, else ``'sdpa'``. None (transformers' own default: ``'sdpa'``, PyTorch's
    ``scaled_dot_product_attention``, for Llama and Qwen2), ``'sdpa'`` and ``'eager'`` pass
    through, and so does any other name transformers knows.

    Raises:
        ImportError: ``'flash_attention_2'`` without the flash-attn package.
    """
    flash = importlib.util.find_spec("flash_attn") is not None
    if name == "auto":
        return "flash_attention_2" if flash and device.type == "cuda" else "sdpa"
    if name == "flash_attention_2" and not flash:
        raise ImportError(
            "model.attn_implementation 'flash_attention_2' needs the flash-attn package "
            "(pip install -e '.[gpu]' on a CUDA machine); use 'sdpa' or 'auto'"
        )
    return name


# ----------------------------------------------------------------------------- adapter chains

CHAIN_FILE = "seal_policy.json"
"""The manifest of an adapter-chain policy (``rl.save: adapter``): a folder holding one PEFT
LoRA adapter (``adapter_config.json``, ``adapter_model.safetensors``), the tokenizer, and this
file: ``{"format": "seal-adapter-chain", "base": {"path" | "hub_id": ..., "revision": ...},
"adapters": [folders, oldest first, relative to this folder; the last is "."]}``."""


def _revision(revision: str | None) -> dict:
    """``from_pretrained``'s revision argument: left out (the hub's default branch) when None."""
    return {"revision": revision} if revision else {}


def is_adapter_chain(name_or_path: str | os.PathLike) -> bool:
    """True when ``name_or_path`` is a folder written as an adapter chain (:data:`CHAIN_FILE`)."""
    return (Path(name_or_path) / CHAIN_FILE).is_file()


def read_chain(path: str | os.PathLike) -> tuple[str, str | None, list[Path]]:
    """``(base model, its revision, adapter folders oldest first)`` of an adapter-chain policy.

    The policy's weights are the base with every adapter merged in order: adapter ``i`` was
    trained on the base with adapters ``0 .. i-1`` merged (one ReST-EM round each).

    Raises:
        ValueError: the manifest is not a seal adapter chain, or an adapter folder is missing.
    """
    path = Path(path)
    manifest = json.loads((path / CHAIN_FILE).read_text())
    if manifest.get("format") != "seal-adapter-chain":
        raise ValueError(f"{path / CHAIN_FILE}: not a seal adapter chain")
    base = manifest["base"]
    name = str((path / base["path"]).resolve()) if "path" in base else base["hub_id"]
    adapters = [(path / a).resolve() for a in manifest["adapters"]]
    for a in adapters:
        if not (a / "adapter_config.json").is_file():
            raise ValueError(f"{path / CHAIN_FILE}: adapter {a} is missing (no adapter_config.json)")
    return name, base.get("revision"), adapters


def write_adapter_chain(
    out_dir: str | os.PathLike, adapter_dir: str | os.PathLike, tokenizer, trained_on: str | os.PathLike, revision: str | None = None
) -> Path:
    """Write the policy ``trained_on`` + the LoRA adapter in ``adapter_dir`` as an adapter chain.

    ``trained_on`` is the policy the adapter was trained on: an adapter chain (its chain is
    extended) or a plain model (hub id or folder, at ``revision``), which becomes the base.
    The adapter's ``base_model_name_or_path`` is set to ``trained_on``. ``out_dir`` appears
    whole or not at all. Returns it.
    """
    out = Path(out_dir)
    if is_adapter_chain(trained_on):
        base_name, base_revision, previous = read_chain(trained_on)
    else:
        base_name, base_revision, previous = str(trained_on), revision, []
    local = Path(base_name).exists()
    with atomic_dir(out) as tmp:
        for f in Path(adapter_dir).iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        config_path = tmp / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = str(trained_on)
        config_path.write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(tmp)
        manifest = {
            "format": "seal-adapter-chain",
            "base": ({"path": os.path.relpath(Path(base_name).resolve(), out.resolve())} if local else {"hub_id": base_name})
            | {"revision": base_revision},
            "adapters": [os.path.relpath(a, out.resolve()) for a in previous] + ["."],
        }
        (tmp / CHAIN_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def check_model_source(name_or_path: str | os.PathLike, key: str = "model.name_or_path") -> None:
    """Refuse, before any work, a model that cannot be loaded: ``name_or_path`` must be a local
    directory, or a hub id (``org/name``); while ``HF_HUB_OFFLINE`` is set, one in the local
    hub cache. An online hub id is not checked here (its download names it if it fails).

    Raises:
        ModelNotFoundError: naming ``key`` and what to do.
    """
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ModelNotFoundError(f"{key}: {name} is a file, not a model directory")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelNotFoundError(
            f"{key}: no model directory {name} (and it is not a hub id such as Qwen/Qwen2.5-7B): check the path, "
            f"or build a tiny model there (`seal tiny-model {name}`, or model.build_tiny in the recipe)"
        ) from None
    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise ModelNotFoundError(
            f"{key}: {name} is not a local directory, and HF_HUB_OFFLINE is set but the hub cache has no copy of it: "
            "check the path, or download it once without HF_HUB_OFFLINE"
        )


def _loading(name_or_path: str | os.PathLike, load):
    """``load()``, with transformers' error for a missing model (a path it takes for an invalid
    repo id, a hub id it cannot find) turned into a one-line :class:`ModelNotFoundError`."""
    from huggingface_hub.utils import HFValidationError

    try:
        return load()
    except (HFValidationError, OSError) as e:
        if Path(str(name_or_path)).expanduser().is_dir() or getattr(e, "errno", None) is not None:
            raise  # a directory that exists (a damaged model), or a disk error: not "not found"
        check_model_source(name_or_path, key="model")  # raises with the reason when it can tell
        raise


def load_causal_lm(name_or_path: str | os.PathLike, revision: str | None = None, **kwargs):
    """``AutoModelForCausalLM.from_pretrained(name_or_path, revision=revision, **kwargs)``; for an
    adapter chain (:func:`is_adapter_chain`), its base at the recorded revision with each
    adapter merged in order by PEFT (``PeftModel.from_pretrained(...).merge_and_unload()``):
    the same computation, on the same device and dtype, as ``rl.save: merged`` performs before
    saving, so the weights equal the merged policy's. On the CPU (``from_pretrained``'s default).
    """
    from transformers import AutoModelForCausalLM

    if not is_adapter_chain(name_or_path):
        return _loading(name_or_path, lambda: AutoModelForCausalLM.from_pretrained(str(name_or_path), **_revision(revision), **kwargs))
    from peft import PeftModel

    base, base_revision, adapters = read_chain(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(base, **_revision(base_revision), **kwargs)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return model


# ----------------------------------------------------------------------------- loading


def load_tokenizer(name_or_path: str | os.PathLike, trust_remote_code: bool = False, revision: str | None = None):
    """A tokenizer with a pad token (EOS when the model defines none); ``revision`` pins a hub
    model's commit, branch or tag (``model.revision``)."""
    from transformers import AutoTokenizer

    tok = _loading(name_or_path, lambda: AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code, **_revision(revision)))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _model_kwargs(dtype: str, attn_implementation: str | None, trust_remote_code: bool, device: torch.device) -> dict:
    """``from_pretrained``'s keyword arguments for the recipe's model settings; the attention
    implementation is resolved for ``device`` and left out when None (transformers' default)."""
    kwargs = {"trust_remote_code": trust_remote_code, "dtype": torch_dtype(dtype)}
    attn_implementation = resolve_attn_implementation(attn_implementation, device)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def load_model(
    name_or_path: str | os.PathLike,
    dtype: str = "float32",
    device: str = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
):
    """Load ``(model, tokenizer)``; the model in eval mode on ``device``.

    ``attn_implementation``: see :func:`resolve_attn_implementation` (None: transformers'
    default, sdpa). ``name_or_path`` may be an adapter chain (``rl.save: adapter``,
    :func:`load_causal_lm`); ``revision`` pins a hub model (``model.revision``).

    Raises:
        ModelNotFoundError: no such directory, or (offline) a hub id not in the cache.
        OSError: a hub id that cannot be downloaded (transformers' own error, which names it).
        ImportError: ``'flash_attention_2'`` without the flash-attn package.
    """
    target = resolve_device(device)
    model = load_causal_lm(name_or_path, revision, **_model_kwargs(dtype, attn_implementation, trust_remote_code, target))
    model.to(target).eval()
    tok = load_tokenizer(name_or_path, trust_remote_code, revision)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def policy_revision(cfg, name_or_path: str | os.PathLike) -> str | None:
    """``model.revision`` when ``name_or_path`` is the recipe's model (``cfg.name_or_path``), else
    None (a round's policy is a local folder; an adapter chain records its base's revision)."""
    return cfg.revision if str(name_or_path) == cfg.name_or_path else None


def load_policy(cfg, name_or_path: str | os.PathLike | None = None, *, for_training: bool = False) -> tuple:
    """``(model, tokenizer)`` of ``name_or_path`` (None: ``cfg.name_or_path``) loaded with the
    recipe's model section ``cfg`` (:class:`seal.config.ModelConfig`): ``dtype`` (``auto``: the
    checkpoint's own dtype), ``attn_implementation`` (:func:`resolve_attn_implementation` for
    ``cfg.device``), ``trust_remote_code``, and ``revision`` when ``name_or_path`` is the recipe's
    model (:func:`policy_revision`). ``name_or_path`` may be an adapter chain. Every model a run
    loads comes from here, so ``model.dtype`` means the same in every stage.

    ``for_training=False`` (sampling, the inner loop, scoring): on ``cfg.device`` in eval mode,
    the config's pad token set (:func:`load_model`); applies ``cfg.num_threads`` and, on the
    CPU, :func:`keep_freed_cpu_memory`.
    ``for_training=True`` (the ReST-EM policy update and its merge base, GRPO / RLOO): as
    ``from_pretrained`` returns it, on the CPU; TRL's trainer (accelerate / DeepSpeed) places
    it and switches it to train mode.

    Raises:
        ModelNotFoundError, OSError, ImportError: see :func:`load_model`.
    """
    name = cfg.name_or_path if name_or_path is None else name_or_path
    revision = policy_revision(cfg, name)
    if for_training:
        tok = load_tokenizer(name, cfg.trust_remote_code, revision)
        kwargs = _model_kwargs(cfg.dtype, cfg.attn_implementation, cfg.trust_remote_code, resolve_device(cfg.device))
        return load_causal_lm(name, revision, **kwargs), tok
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if resolve_device(cfg.device).type == "cpu":
        keep_freed_cpu_memory()
    return load_model(name, cfg.dtype, cfg.device, cfg.attn_implementation, cfg.trust_remote_code, revision)


#: ``mallopt`` parameters of glibc (``malloc.h``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Environment variable: ``0`` leaves glibc's allocator as it is (see :func:`keep_freed_cpu_memory`).
KEEP_MEMORY_ENV = "SEAL_KEEP_CPU_MEMORY"


def keep_freed_cpu_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Let glibc keep freed memory for reuse instead of returning it to the system at once.

    Each step of the inner loop allocates and frees tensors of tens of MB (a bank's ``(S, D)``
    gradient: 21 MB on the microworld). glibc serves blocks that large with fresh ``mmap``
    pages, so every step pays a page fault per 4 KB. With allocations up to ``mmap_threshold``
    bytes served from the heap, and up to ``trim_threshold`` bytes of free heap kept, the pages
    are reused: training 64 adapters on the microworld (two runs) had 124 k minor page faults
    instead of 604 k and took 4.0-4.7 s instead of 4.7-5.5 s (loaded 2-core EPYC), with the
    same trained weights (the allocator never changes a value). The cost: the process keeps up to ``trim_threshold`` of freed memory.
    PyTorch's CPU tuning guide suggests jemalloc or tcmalloc for the same reason; this needs
    no preload. Process-wide and idempotent; applied when a model is loaded on the CPU
    (:func:`load_policy`). ``SEAL_KEEP_CPU_MEMORY=0`` turns it off.

    Returns True when applied (Linux with glibc), False elsewhere or when turned off.
    """
    if os.environ.get(KEEP_MEMORY_ENV, "1") == "0":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False


def peft_lora_config(lora: LoraConfig):
    """The ``peft.LoraConfig`` (causal LM) of a recipe's LoRA section (:class:`seal.sections.LoraConfig`:
    rank, alpha, dropout, target_modules): the one builder for every PEFT adapter (the ReST-EM
    policy update ``rl.sft.lora``, GRPO / RLOO ``rl.grpo.lora``). The inner loop's adapters are
    seal's own (:mod:`seal.multi_lora`) with the same shape and scale (``alpha / rank``)."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules), task_type="CAUSAL_LM"
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """A byte-level BPE tokenizer trained on ``texts``, wrapped for transformers.

    Special tokens: ``<s>`` (BOS), ``</s>`` (EOS), ``<pad>``. Byte-level, so any text encodes.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<s>", "</s>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    bos = tk.token_to_id("<s>")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="right"
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def llama_config(
    tok,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
):
    """A small Llama-architecture config (tied embeddings, no GQA) sized to ``tok``'s vocabulary.

    It has Llama's and Qwen2's module names (q/k/v/o_proj, gate/up/down_proj), so every
    recipe's LoRA target modules exist.
    """
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )


def build_tiny_model(
    out_dir: str | os.PathLike,
    texts: Iterable[str],
    vocab_size: int = 2048,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised Llama-architecture model and its tokenizer to ``out_dir``.

    The tokenizer is trained on ``texts``; the model has ``q/k/v/o_proj`` and
    ``gate/up/down_proj`` like Llama and Qwen2, so every recipe's target modules exist.
    Returns the directory, loadable by :func:`load_model`.
    """
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(texts, vocab_size)
    cfg = llama_config(tok, hidden_size, num_layers, num_heads, intermediate_size, max_position_embeddings)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def passage_texts(paths: Iterable[str], root: str | None) -> list[str]:
    """Every string of SEAL-format files (titles, contexts, QA, completions): tokenizer training text.

    Raises:
        DataError / FileNotFoundError: a file is missing or malformed (named).
    """
    texts = []
    for path in paths:
        for p in load_passages(path, root=root, require_questions=False):
            texts += [p.title, p.context, *(q.question + " " + q.answer for q in p.questions), *p.completions]
    return texts
