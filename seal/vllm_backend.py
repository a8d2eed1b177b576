"""``self_edit.backend: vllm``: self-edits sampled by vLLM's offline engine instead of HF ``generate``.

The reference implementation samples self-edits from a ``vllm serve`` process
(knowledge-incorporation/scripts/make_squad_data.sh:32, scripts/TTT_server.sh:37, queried over HTTP);
TRL, OpenRLHF and verl all hand generation to vLLM because it dominates RL wall time. Here
vLLM runs *colocated*, in the ``seal train`` process: :class:`VLLMSampler` builds
``vllm.LLM`` on the round's policy once (the first chunk a rank samples), every chunk of the
round goes through it, and :meth:`VLLMSampler.close` tears the engine down and hands its GPU
memory back before the baselines and the inner loop (vLLM's sleep mode keeps the weights
for a *later* wake-up of the same model; each round's policy is a new model, so teardown).

Seeds per identity (the contract of ``seal.self_edits.generate_self_edits``): every random
draw derives from the recipe seed and the draw's identity, never the clock. With vLLM each
passage is one request, ``SamplingParams(n=k, seed=derive_seed(seed, "self-edit-vllm",
passage index))``: vLLM gives a request with a seed its own generator, so a passage's k
samples depend on the seed, the round and the passage only, not on ``self_edit.batch_size``,
the chunking, the rank or the other requests in flight (stronger than the HF path, where a
chunk shares one generator seeded by its first passage).

What vLLM cannot reproduce:

* the HF path's samples: a different sampler (its own kernels, top-p implementation, and
  float order), so ``backend`` is a result-changing key, compared on ``--resume``;
* bit-identical samples across vLLM versions, GPU types, tensor-parallel sizes, or
  ``gpu_memory_utilization`` settings that change its batch composition: the logits differ
  in their last bits between batched kernels and can flip a sampled token. On the same
  machine, version and settings, a resumed run re-samples a round identically only if the
  round's ``self_edits.json`` was not yet written (it usually is, and is read back).

Prompts are passed as token ids built by the policy's tokenizer exactly as the HF path
builds them (``add_special_tokens=not chat``), the stop tokens are the same (the model's
``generation_config`` EOS ids and the tokenizer's), and a self-edit is ``truncated`` when
vLLM's ``finish_reason`` is ``"length"`` (the HF path: no EOS among the new tokens).

vLLM is imported here lazily (it is an optional extra, ``pip install 'seal[vllm]'``, and
wants its own environment: it pins torch); everything but :class:`VLLMSampler`'s engine
calls is plain Python tested on CPU (tests/test_vllm_backend.py).
"""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from seal.config import RecipeError, SelfEditConfig
from seal.data import Passage
from seal.models import load_tokenizer
from seal.prompts import self_edit_prompt
from seal.seeding import derive_seed
from seal.self_edits import SelfEdit


def check_vllm(device: str = "auto", world_size: int = 1, shard: str = "none") -> None:
    """Refuse ``self_edit.backend: vllm`` where it cannot run, before anything is written.

    Raises:
        RecipeError: no CUDA device is visible (vLLM's engine here is GPU-only), ``model.device``
            is the CPU, more than one process or a sharded model (one colocated engine per
            process is not wired in this version), or vLLM is not installed.
    """
    if device == "cpu" or device.startswith("cpu"):
        raise RecipeError("self_edit.backend vllm runs on a CUDA GPU; model.device is 'cpu' (use self_edit.backend=hf on a CPU)")
    import torch

    if not torch.cuda.is_available():
        raise RecipeError("self_edit.backend vllm needs a CUDA device and none is visible (use self_edit.backend=hf on a CPU)")
    if world_size > 1 or shard != "none":
        raise RecipeError("self_edit.backend vllm runs in one process without model.shard in this version; launch without accelerate/torchrun")
    if importlib.util.find_spec("vllm") is None:
        raise RecipeError("self_edit.backend vllm: vLLM is not installed; pip install 'seal[vllm]' (README: 'vLLM generation')")


def request_seed(seed: int, passage_index: int) -> int:
    """The seed of a passage's vLLM request: its k samples' generator (64-bit seeds cut to 63
    bits, the range vLLM's ``SamplingParams.seed`` takes as a Python int everywhere)."""
    return derive_seed(seed, "self-edit-vllm", passage_index) % 2**63


@dataclass(frozen=True)
class Request:
    """One passage's vLLM request.

    Attributes:
        prompt: the self-edit prompt (text, for the :class:`SelfEdit`); token_ids: what vLLM
            gets (``{"prompt_token_ids": token_ids}``), the HF path's tokens.
        sampling: ``vllm.SamplingParams`` keyword arguments: ``n`` (k), ``seed``, ``max_tokens``,
            ``temperature`` (0: greedy), ``top_p``, ``stop_token_ids``, ``skip_special_tokens``.
    """

    prompt: str
    token_ids: list[int]
    sampling: dict[str, Any]


def stop_token_ids(generation_eos, tokenizer) -> list[int]:
    """The EOS ids the HF path stops at: the model's ``generation_config.eos_token_id`` (an int
    or a list) and the tokenizer's, sorted, without None."""
    eos = generation_eos if isinstance(generation_eos, list | tuple) else [generation_eos]
    return sorted({int(e) for e in [*eos, tokenizer.eos_token_id] if e is not None})


def build_requests(
    passages: Sequence[Passage],
    passage_indices: Sequence[int],
    tokenizer,
    config: SelfEditConfig,
    seed: int,
    stop_ids: Sequence[int],
    *,
    template: str | None = None,
    k: int | None = None,
    greedy: bool = False,
    hint: str = "",
) -> list[Request]:
    """A request per passage (same order): prompt tokens as the HF path's, ``n = k`` samples
    seeded by :func:`request_seed` of the passage's global index.

    ``config`` (the ``self_edit`` section), ``template``, ``k``, ``greedy`` and ``hint``: as
    :func:`seal.self_edits.generate_self_edits` (``batch_size`` unused: one request per
    passage). Greedy decoding is ``temperature 0`` (then ``k`` must be 1).

    Raises:
        ValueError: greedy decoding with ``k > 1``, or ``passage_indices`` of another length.
    """
    template = config.template if template is None else template
    k = config.k if k is None else k
    if greedy and k != 1:
        raise ValueError(f"greedy decoding gives one self-edit per passage, not k={k}")
    if len(passage_indices) != len(passages):
        raise ValueError(f"{len(passage_indices)} passage indices for {len(passages)} passages")
    out = []
    for passage, index in zip(passages, passage_indices, strict=True):
        prompt = self_edit_prompt(template, passage.title, passage.context, tokenizer, config.chat_template, hint)
        ids = tokenizer(prompt, add_special_tokens=not config.chat_template)["input_ids"]
        sampling = {
            "n": k,
            "seed": request_seed(seed, index),
            "max_tokens": config.max_new_tokens,
            "temperature": 0.0 if greedy else float(config.temperature),
            "top_p": 1.0 if greedy else float(config.top_p),
            "stop_token_ids": list(stop_ids),
            "skip_special_tokens": True,
        }
        out.append(Request(prompt, list(ids), sampling))
    return out


def self_edits_from_outputs(requests: Sequence[Request], outputs: Sequence[Any]) -> list[list[SelfEdit]]:
    """vLLM's ``RequestOutput`` s (same order as ``requests``) as self-edits: per passage, its
    k completions in vLLM's order, each ``SelfEdit(prompt, text.strip(), finish_reason == "length")``.

    Raises:
        ValueError: a count that does not match (outputs per request, completions per output).
    """
    if len(outputs) != len(requests):
        raise ValueError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
    out = []
    for request, output in zip(requests, outputs, strict=True):
        completions = list(output.outputs)
        if len(completions) != request.sampling["n"]:
            raise ValueError(f"vLLM returned {len(completions)} completions for a request of n={request.sampling['n']}")
        out.append([SelfEdit(request.prompt, c.text.strip(), c.finish_reason == "length") for c in completions])
    return out


class VLLMSampler:
    """A colocated ``vllm.LLM`` on one model, built at the first :meth:`generate` and torn
    down by :meth:`close` (GPU memory handed back). ``settings``: ``self_edit.vllm``
    (``seal.config.VLLMConfig``); ``dtype``: ``model.dtype``."""

    def __init__(self, model_path: str, settings, dtype: str = "auto", trust_remote_code: bool = False, seed: int = 0):
        self.model_path = str(model_path)
        self.settings = settings
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.seed = seed
        self.llm = None

    def _engine(self):
        if self.llm is None:
            from vllm import LLM

            s = self.settings
            self.llm = LLM(
                model=self.model_path, dtype=self.dtype, seed=self.seed, trust_remote_code=self.trust_remote_code,
                gpu_memory_utilization=s.gpu_memory_utilization, max_model_len=s.max_model_len, enforce_eager=s.enforce_eager,
            )  # fmt: skip
        return self.llm

    def generate(
        self, passages, passage_indices, tokenizer, config: SelfEditConfig, seed: int, stop_ids,
        *, template: str | None = None, k: int | None = None, greedy: bool = False, hint: str = "",
    ) -> list[list[SelfEdit]]:  # fmt: skip
        """:func:`build_requests` -> one ``LLM.generate`` call -> :func:`self_edits_from_outputs`."""
        from vllm import SamplingParams

        requests = build_requests(passages, passage_indices, tokenizer, config, seed, stop_ids, template=template, k=k, greedy=greedy, hint=hint)
        outputs = self._engine().generate(
            [{"prompt_token_ids": r.token_ids} for r in requests], [SamplingParams(**r.sampling) for r in requests], use_tqdm=False
        )
        return self_edits_from_outputs(requests, outputs)

    def close(self) -> None:
        """Tear the engine down and hand its GPU memory back (before the inner loop)."""
        if self.llm is None:
            return
        import torch

        del self.llm
        self.llm = None
        try:  # vLLM's own clean-up of its process group and allocator (its module moves between versions)
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        except Exception:
            pass
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def sample_texts(model_path: str, passages: Sequence[Passage], recipe, template: str, k: int, seed: int, hint: str = "") -> list[list[str]]:
    """``seal bench`` / ``seal evaluate``'s ``policy:`` and ``prompt:`` sources with
    ``self_edit.backend: vllm``: ``k`` self-edit texts per passage from ``model_path`` (the
    recipe's ``self_edit`` sampling settings), passage ``i`` seeded by ``request_seed(seed, i)``,
    so every policy draws from the same seeds (common random numbers, as the HF path); the
    engine is torn down before returning."""
    from transformers import GenerationConfig

    config, model = recipe.self_edit, recipe.model
    tokenizer = load_tokenizer(model_path, model.trust_remote_code)
    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's EOS alone
        eos = None
    sampler = VLLMSampler(model_path, config.vllm, model.dtype, model.trust_remote_code, recipe.seed)
    try:
        edits = sampler.generate(
            passages, list(range(len(passages))), tokenizer, config, seed, stop_token_ids(eos, tokenizer), template=template, k=k, hint=hint
        )  # fmt: skip
    finally:
        sampler.close()
    return [[e.text for e in per] for per in edits]
