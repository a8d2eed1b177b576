"""Loading causal LMs, and building tiny local ones for CPUs and tests.

Every code path loads models the same way: from a hub id or a local directory through
``transformers.AutoModelForCausalLM``. ``build_tiny_model`` writes such a directory (a
Llama-architecture config with random weights plus a byte-level BPE tokenizer trained with
the ``tokenizers`` library), so nothing is ever downloaded in tests.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from seal.data import load_passages
from seal.errors import ModelNotFoundError

# A minimal chat template for tiny models, so the chat-template prompt variant works everywhere.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

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


def load_tokenizer(name_or_path: str | os.PathLike, trust_remote_code: bool = False):
    """A tokenizer with a pad token (EOS when the model defines none)."""
    from transformers import AutoTokenizer

    tok = _loading(name_or_path, lambda: AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str | os.PathLike,
    dtype: str = "float32",
    device: str = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
):
    """Load ``(model, tokenizer)``; the model in eval mode on ``device``.

    ``attn_implementation``: see :func:`resolve_attn_implementation` (None: transformers'
    default, sdpa).

    Raises:
        ModelNotFoundError: no such directory, or (offline) a hub id not in the cache.
        OSError: a hub id that cannot be downloaded (transformers' own error, which names it).
        ImportError: ``'flash_attention_2'`` without the flash-attn package.
    """
    from transformers import AutoModelForCausalLM

    target = resolve_device(device)
    kwargs = {"trust_remote_code": trust_remote_code}
    kwargs["dtype"] = "auto" if dtype == "auto" else _DTYPES[dtype]
    attn_implementation = resolve_attn_implementation(attn_implementation, target)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = _loading(name_or_path, lambda: AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs))
    model.to(target).eval()
    tok = load_tokenizer(name_or_path, trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def load_model_from_config(cfg) -> tuple:
    """``load_model`` from a :class:`seal.config.ModelConfig` (also applies ``num_threads``)."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return load_model(cfg.name_or_path, cfg.dtype, cfg.device, cfg.attn_implementation, cfg.trust_remote_code)


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
