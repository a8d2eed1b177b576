"""Recipe configuration: one documented field per knob, validated on load.

A recipe is a YAML file (see ``recipes/``) whose sections map one-to-one onto the
classes below and those they import: :mod:`seal.sections` (the base class and the sections
shared with ``bench``), :mod:`seal.bench.config`, :mod:`seal.microworld.config`. Unknown or mistyped keys are errors that name the key and the file;
command-line overrides use dotted paths (``inner.lora.rank=16``).

Defaults are the paper's (Zweiger et al. 2025, Section 4.2 and Appendix B) unless a
field says otherwise.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from seal.bench.config import BenchConfig
from seal.prompts import check_qa_template
from seal.sections import (  # noqa: F401 (re-exported: seal.config is where callers import them from)
    HPARAM_KEYS,
    SOURCE_KINDS,
    FloatRange,
    HparamsConfig,
    InnerLoopConfig,
    IntRange,
    LoraConfig,
    RecipeError,
    Section,
    TinyModelConfig,
    parse_source,
)
from seal.tasks.sections import TaskSections, resolve_placeholders


class ModelConfig(Section):
    """The policy (and, in the knowledge-incorporation setting, the base model it edits)."""

    name_or_path: str = Field(
        description="Hugging Face hub id or local model directory (e.g. one written by `seal tiny-model`)."
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32",
        description="Parameter dtype of the base model, and of every model the run loads (the policy that samples, the inner loop's learner, the ReST-EM policy update and its merge, GRPO / RLOO, evaluate, bench: seal.models.load_policy); auto: the checkpoint's own dtype. Use bfloat16 on GPUs; float32 on CPU. The inner loop's LoRA adapters, their gradients and AdamW state stay float32 whatever this is (the bf16 base output and the fp32 LoRA term are added in fp32 and cast back, as PEFT does).",
    )
    attn_implementation: str | None = Field(
        None,
        description="Attention kernel: None (transformers' default: 'sdpa', PyTorch's scaled_dot_product_attention, for Llama/Qwen2), 'sdpa', 'eager', 'flash_attention_2' (needs flash-attn, the `gpu` extra; CUDA, bf16/fp16 only), or 'auto' (flash_attention_2 when flash-attn is installed and the device is CUDA, else sdpa). Every model the run loads uses it (seal.models.load_policy).",
    )
    trust_remote_code: bool = Field(
        False, description="Allow model code from the hub. Off unless you trust the repository."
    )
    revision: str | None = Field(
        None,
        description="Hub revision of name_or_path (a commit hash, branch or tag), passed to every from_pretrained of the model and its tokenizer and recorded in run.json with the commit it resolved to when the local hub cache knows it. None: the hub's default branch. A local folder has no revision (ignored).",
    )
    device: str = Field("auto", description="'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1', ...")
    shard: Literal["none", "fsdp"] = Field(
        "none",
        description="`seal train` under accelerate/torchrun: 'none' (every process holds the whole model and the processes split the evaluations) or 'fsdp' (the model is sharded over all processes with PyTorch FSDP2, for a base larger than one GPU such as Qwen2.5-32B/72B: every process runs every evaluation in step, same results, memory / world_size, no speed-up; see seal/sharding.py and launch/README.md). Ignored by one process.",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        description="CPU intra-op threads (torch.set_num_threads). None: torch's default (all cores). Tiny models run fastest on 1, and 2+ threads collapse when the cores are shared.",
    )
    build_tiny: TinyModelConfig | None = Field(
        None, description="If name_or_path does not exist, build a tiny local model there first (CPU recipes)."
    )


class DataConfig(Section):
    """Where passages come from. Relative paths resolve against ``root``."""

    root: str | None = Field(
        None,
        description="Data folder. None: $SEAL_DATA_DIR, else ../shared/data beside the repository.",
    )
    train_file: str = Field("squad/train_100.json", description="SEAL-format JSON of RL training passages.")
    eval_file: str = Field("squad/val_200.json", description="SEAL-format JSON of evaluation passages.")
    n_train_passages: int | None = Field(None, ge=1, description="Use the first n training passages (None: all).")
    n_eval_passages: int | None = Field(None, ge=1, description="Use the first n evaluation passages (None: all).")
    passage_schedule: Literal["fixed", "fresh"] = Field(
        "fixed",
        description="Which training passages each ReST-EM round learns from. fixed: the same passages every round (train_file's first n_train_passages). fresh: new passages every round, as the reference's round 2 (50 passages disjoint from round 1's, knowledge-incorporation/results/query_server/train/rank_iter1.json): round r takes round_train_files[r] (its first n_train_passages) when that is set, else passages [r*n, (r+1)*n) of train_file (n = n_train_passages, required). Too few passages for rl.rounds, or a passage repeated across rounds, is an error before any work.",
    )
    round_train_files: list[str] | None = Field(
        None,
        description="passage_schedule fresh only: one SEAL-format file per round (round r reads entry r; at least rl.rounds entries), instead of slices of train_file. The paper recipe: [squad/train_100.json, squad/train_round2_50.json].",
    )
    hf_dataset: str | None = Field(
        None,
        description="Read passages from this hub dataset (e.g. 'rajpurkar/squad') instead of the files; needs network.",
    )


class VLLMConfig(Section):
    """``self_edit.backend: vllm``: the colocated vLLM engine that samples self-edits
    (``seal/vllm_backend.py``); with ``rl.algorithm: grpo | rloo``, TRL's own vLLM generation."""

    gpu_memory_utilization: float = Field(
        0.4, gt=0, le=1, description="Share of the GPU's memory vLLM may take (weights + KV cache); the HF policy and the inner loop share the rest."
    )
    max_model_len: int | None = Field(None, ge=16, description="vLLM's context length (None: the model's); lower it to fit the KV cache.")
    enforce_eager: bool = Field(False, description="No CUDA graphs (faster start, slower decoding).")
    mode: Literal["colocate", "server"] = Field(
        "colocate", description="GRPO / RLOO only: TRL's vllm_mode ('server': a `trl vllm-serve` process you start yourself)."
    )


class SelfEditConfig(Section):
    """Self-edit sampling from the policy (paper Section 3.1 and Appendix B.2)."""

    template: str = Field("implications", description="Prompt template name; see `seal.prompts.TEMPLATES`.")
    chat_template: bool = Field(
        False, description="Wrap the prompt in the tokenizer's chat template (instruct policies)."
    )
    k: int = Field(5, ge=1, description="Self-edits sampled per passage and round.")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(1024, ge=1, description="Token budget of one self-edit.")
    split_newlines: bool = Field(
        False, description="One training text per line of the self-edit (reference: `split_newlines`)."
    )
    batch_size: int = Field(8, ge=1, description="Prompts per generate() call when sampling self-edits.")
    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="What samples self-edits: 'hf' (transformers generate; CPU or GPU) or 'vllm' (vLLM's offline engine, colocated; CUDA only, the `vllm` extra; seeds per passage, other samples than hf: seal/vllm_backend.py). With rl.algorithm grpo/rloo: TRL's use_vllm.",
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="Settings of backend 'vllm'.")
    hparams: HparamsConfig = Field(
        default_factory=HparamsConfig, description="Hyperparameter self-edits: inner-loop settings the policy may choose (off by default)."
    )


class JudgeConfig(Section):
    """An LLM judge behind an OpenAI-compatible chat-completions endpoint (paper: GPT-4.1)."""

    base_url: str = Field("https://api.openai.com/v1")
    model: str = Field("gpt-4.1")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Name of the environment variable holding the key; the key is never saved."
    )
    max_concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    max_retries: int = Field(5, ge=0, description="Retries on errors, timeouts and rate limits (exponential backoff).")
    timeout_s: float = Field(60.0, gt=0, description="Seconds per request.")
    backoff_s: float = Field(1.0, ge=0, description="First backoff in seconds; doubles on each retry.")
    prompt: Literal["strict", "reference"] = Field(
        "strict",
        description="The judge's prompt (seal.judge). strict: seal's (a system prompt, tagged fields; a hedging or multi-answer prediction is wrong). reference: the reference implementation's text verbatim (knowledge-incorporation/src/utils.py:39-45: 'The student answer can include additional information, but it must at least fully convey the gold answer...'), one user message, the question with its 'Topic: <title>' line as the reference sends it (src/query/query_server.py:129).",
    )
    preflight_request: bool = Field(
        False,
        description="Before any work, send the judge one cheap request (no retries) and refuse to start unless it comes back graded (seal.preflight.check_judge). Off: only the key is checked (present, usable in a header).",
    )


class QAConfig(Section):
    """No-passage question answering and grading (paper Section 4.2)."""

    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(64, ge=1, description="Question rows per generate() call.")
    grader: Literal["exact", "f1", "contains", "judge", "grid"] = Field(
        "contains",
        description="exact: SQuAD exact match; f1: token F1 (a score in [0, 1]); contains: normalized gold answer in the prediction; judge: LLM judge; grid: the answer's leading grid equals the gold ARC grid exactly (seal.arc.grids).",
    )
    reward: Literal["gain", "accuracy"] = Field(
        "gain",
        description="A self-edit's reward: 'gain' (adapted minus baseline accuracy, the knowledge-incorporation reward, paper Section 4.2) or 'accuracy' (the adapted model's accuracy alone: ARC's 1 if solved else 0, Section 4.1; the baseline is still recorded).",
    )
    ungraded: Literal["skip", "wrong"] = Field(
        "skip",
        description="A question the grader could not grade (judge unreachable): 'skip' leaves it out of the accuracy; 'wrong' counts it as wrong, like the reference.",
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    template: str = Field(
        "reference",
        description="No-passage QA prompt (seal.prompts.QA_TEMPLATES): 'reference' (the reference implementation's) or 'qa-line' (the microworld's).",
    )

    @field_validator("template")
    @classmethod
    def _known_template(cls, v: str) -> str:
        return check_qa_template(v)  # PromptError is a ValueError: reported under the key


def policy_lora() -> LoraConfig:
    """The policy update's default LoRA (ReST-EM's SFT and GRPO): r=64, alpha=128 on every projection."""
    return LoraConfig(
        rank=64,
        alpha=128,
        dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )


class SFTConfig(Section):
    """The ReST-EM policy update: TRL SFTTrainer + LoRA, then merge (paper Appendix B.3)."""

    lora: LoraConfig = Field(default_factory=policy_lora)
    epochs: int = Field(2, ge=1)
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(1, ge=1, description="Rows per device per step.")
    grad_accum_steps: int = Field(1, ge=1)
    max_length: int = Field(2048, ge=8, description="Prompt + completion tokens; longer rows are truncated.")
    lr_scheduler: str = Field("linear", description="Any transformers scheduler name.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    bf16: bool = Field(False, description="bf16 mixed precision (GPUs).")
    gradient_checkpointing: bool = Field(False)
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config path (e.g. launch/ds_zero3.json).")
    global_batch_size: int | None = Field(
        None,
        ge=1,
        description="Rows per optimizer step over all processes, whatever their number: gradient accumulation is derived as global_batch_size / (batch_size x processes), which must be a whole number (grad_accum_steps must then stay 1). None: batch_size x grad_accum_steps x processes (the step, and so the policy update, depends on the number of processes). The reference: 10 (knowledge-incorporation/scripts/train_SFT.sh:18-19,33: 2 processes x per-device 1 x accumulation 5).",
    )


class CurationWeights(Section):
    """Weights of ``rl.curation: weighted``: a self-edit's score is gain x gain + coverage x
    coverage + novelty x novelty (``seal.restem.curation_scores`` defines the three)."""

    gain: float = Field(1.0, description="Weight of the reward: adapted minus baseline accuracy, in [-1, 1].")
    coverage: float = Field(0.25, description="Weight of the share of the passage's gold answers the self-edit states, in [0, 1].")
    novelty: float = Field(
        0.25, description="Weight of 1 - mean word-bigram Jaccard similarity to the passage's other self-edits, in [0, 1]."
    )


class GRPOConfig(Section):
    """``rl.algorithm: grpo | rloo``: TRL's ``GRPOTrainer`` / ``RLOOTrainer`` on the policy, the
    reward of each completion (a self-edit) being seal's inner loop (``seal/grpo.py``).

    One step: ``prompts_per_step`` passages, ``num_generations`` completions each, every
    completion scored ``inner.eval_times`` times by the batched inner loop, one optimizer step.
    So a run scores ``steps x prompts_per_step x num_generations x inner.eval_times`` evaluations.
    Sampling follows ``self_edit.top_p`` and ``self_edit.template``; TRL's docs:
    https://huggingface.co/docs/trl/grpo_trainer."""

    num_generations: int = Field(
        5, ge=2, description="Group size: completions (self-edits) sampled per passage per step; advantages are relative to the group."
    )
    prompts_per_step: int = Field(8, ge=1, description="Passages per optimizer step (each with num_generations completions).")
    steps: int = Field(50, ge=1, description="Optimizer steps of the whole run (TRL's max_steps).")
    batch_size: int = Field(
        1, ge=1, description="Completions per forward/backward pass; gradient accumulation covers the rest of the step's prompts_per_step x num_generations (which it must divide)."
    )
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the policy's LoRA weights.")
    lr_scheduler: str = Field("constant", description="Any transformers scheduler name, over `steps`.")
    beta: float = Field(
        0.0, ge=0, description="KL coefficient against the initial policy (0: no KL term, TRL's default; DeepSeek-R1 used 0.001)."
    )
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        "dapo", description="GRPO only: TRL's loss aggregation (dapo: normalised by the active tokens of the step, TRL's default)."
    )
    max_completion_length: int | None = Field(
        None, ge=1, description="Token budget of one completion. None: self_edit.max_new_tokens."
    )
    temperature: float | None = Field(None, gt=0, description="Sampling temperature. None: self_edit.temperature.")
    lora: LoraConfig = Field(
        default_factory=policy_lora,
        description="The LoRA adapter trained on the policy (merged into grpo/policy at the end).",
    )
    bf16: bool = Field(False, description="bf16 mixed precision (GPUs).")
    logging_steps: int = Field(1, ge=1, description="A metrics.jsonl line (and console line) every this many steps.")
    save_steps: int = Field(
        10, ge=1, description="A TRL checkpoint (grpo/checkpoint-N) every this many steps: where a killed run resumes from."
    )
    keep_checkpoints: int | None = Field(
        2,
        ge=1,
        description="TRL checkpoints kept, the newest (None: all, for benchmarks/outer_loops.py to bench the policy at each).",
    )


class RLConfig(Section):
    """The outer loop: ReST-EM rounds (paper Section 3.1), or GRPO / RLOO steps (``rl.grpo``)."""

    algorithm: Literal["restem", "grpo", "rloo"] = Field(
        "restem",
        description="restem: the paper's ReST-EM rounds (seal/train.py). grpo / rloo: TRL's GRPOTrainer / RLOOTrainer with the inner loop as reward (seal/grpo.py; not in the paper; needs inner.learner: base).",
    )
    rounds: int = Field(2, ge=0)
    k_best: int = Field(1, ge=1, description="Self-edits kept per passage, best rewards first.")
    reward_threshold: float = Field(0.0, description="Keep a self-edit only if its reward is strictly above this.")
    keep_regardless: bool = Field(
        False,
        description="Keep the best k_best self-edits whatever their reward (the reference's behaviour).",
    )
    curation: Literal["gain", "weighted", "pareto"] = Field(
        "gain",
        description="How the best self-edits are chosen. gain: by reward (the paper's). weighted: by curation_weights' sum of gain, coverage and novelty. pareto: Pareto fronts over (gain, coverage, novelty), ties by gain, coverage, novelty, index. Only gains above reward_threshold compete under all three.",
    )
    curation_weights: CurationWeights = Field(default_factory=CurationWeights)
    keep_going: bool = Field(
        False,
        description="A round with no usable evaluation (every one failed, or the grader graded none of their answers: a judge answering 401 or unreachable) stops the run with exit status 3 and a summary of the reasons, its evaluations journaled (False). True: record the round and go on (nothing is learned from it). Result-neutral: a resume may switch it.",
    )
    sft: SFTConfig = Field(default_factory=SFTConfig)
    save: Literal["merged", "adapter", "both"] = Field(
        "merged",
        description="What a policy update writes. merged: the policy with the LoRA merged, round_k/policy/ (a full model; 15 GB at 7B bf16). adapter: only the LoRA, round_k/adapter/, an adapter chain (base + every round's adapter, merged in order when loaded: the same weights as merged; seal.models.load_causal_lm). both: the two; the next round loads the merged one. GRPO / RLOO: grpo/policy/, grpo/adapter/. Result-neutral.",
    )
    grpo: GRPOConfig = Field(default_factory=GRPOConfig, description="Settings of rl.algorithm grpo and rloo.")


class DiagnosticsConfig(Section):
    """What the self-edits teach (``seal/diagnostics.py``): each round's metrics get a
    ``diagnostics`` block (diversity, format shares, coverage of the passage's facts) and a
    one-line summary, and a warning when the self-edits look collapsed. Read-only: no field
    here changes a result, so a resumed run may change any of them."""

    enabled: bool = Field(True, description="Compute, record and print the diagnostics of every round.")
    min_distinct_2: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Collapse warning when a round's distinct-2 (per passage, averaged) is below this; k identical samples score at most 1/k (0.2 at k=5).",
    )
    max_diversity_drop: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Collapse warning when distinct-2 falls by more than this fraction of the previous round's (0.5: to under half).",
    )
    max_format_share: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Style-collapse warning when one format (a microworld style, or a line format elsewhere) holds more than this share of a round's (or GRPO step's) self-edits, unless it already did in the run's first round or step. 1: off.",
    )
    max_pairs: int = Field(
        2000, ge=1, description="Pairs of self-edits of different passages compared at most (a fixed-seed subsample beyond)."
    )


class TrackingConfig(Section):
    """Experiment tracking (``seal/tracking.py``); the trackers themselves are the top-level
    ``report_to``. Result-neutral: a resumed run may change any of it."""

    project: str | None = Field(None, description="Tracker project (W&B project, MLflow experiment, trackio project). None: the recipe's name.")
    table_rows: int | None = Field(
        200, ge=1, description="Rows at most of each round's table of sampled self-edits and their rewards (None: all)."
    )


class HubConfig(Section):
    """Push the trained policy to the Hugging Face Hub at the end of ``seal train``
    (``seal/hub.py``, through ``huggingface_hub``; the token comes from ``HF_TOKEN`` or
    ``huggingface-cli login``, never from the recipe). Result-neutral."""

    push_to_hub: bool = Field(False, description="Upload the final policy (rl.save decides merged weights or the adapter chain) and a model card naming the recipe, the round and the measured rewards.")
    repo_id: str | None = Field(None, description="The model repository, 'user/name' or 'org/name' (created when missing).")
    private: bool = Field(True, description="Create the repository private.")

    @model_validator(mode="after")
    def _repo_when_pushing(self) -> HubConfig:
        if self.push_to_hub and not self.repo_id:
            raise ValueError("hub.push_to_hub needs hub.repo_id ('user/name')")
        return self


class EvaluateConfig(Section):
    """`seal evaluate`: score one source of inner-loop training data on evaluation passages."""

    source: str = Field(
        "passage",
        description="'none' (base model), 'passage' (passage only), 'policy:<model dir or hub id>', 'file:<SEAL-format JSON>', 'prompt:<template>', 'text:<one self-edit for every passage>'.",
    )
    n_self_edits: int = Field(1, ge=1, description="Self-edits per passage scored (file: the first n; policy: sampled).")


class Recipe(TaskSections, Section):
    """A whole `seal train` / `seal evaluate` recipe."""

    name: str | None = Field(None, description="Used in the default run directory name (default: the recipe file's stem).")
    seed: int = Field(0, description="Every random draw derives from this and the draw's identity; never the clock.")
    output_dir: str = Field("runs", description="Parent of default run directories.")
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    self_edit: SelfEditConfig = Field(default_factory=SelfEditConfig)
    inner: InnerLoopConfig = Field(default_factory=InnerLoopConfig)
    qa: QAConfig = Field(default_factory=QAConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    diagnostics: DiagnosticsConfig = Field(
        default_factory=DiagnosticsConfig, description="Diagnostics of each `seal train` round's self-edits (result-neutral)."
    )
    report_to: list[Literal["tensorboard", "wandb", "trackio", "mlflow"]] = Field(
        default_factory=list,
        description="`seal train`'s experiment trackers (accelerate's tracker classes; TRL's trainers get the same list): round / GRPO-step metrics, the SFT and GRPO losses, a table of sampled self-edits. [] (default): none. Files under RUN_DIR/tracking; the tracker run's id in run.json, so --resume continues it. Needs the tracker's package (the `tracking` extra).",
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Settings of the trackers of report_to.")
    hub: HubConfig = Field(default_factory=HubConfig, description="Push the trained policy to the Hugging Face Hub (off by default; result-neutral).")
    evaluate: EvaluateConfig | None = Field(None, description="Settings of `seal evaluate` (single-passage protocol).")
    bench: BenchConfig | None = Field(None, description="Settings of `seal bench` (see seal/bench/config.py).")

    @model_validator(mode="after")
    def _grpo_learns_with_the_base(self) -> Recipe:
        # With inner.learner: policy the learner would change at every optimizer step (the
        # policy's LoRA), so every baseline would have to be recomputed per step; not supported.
        if self.rl.algorithm != "restem" and self.inner.learner != "base":
            raise ValueError(
                f"rl.algorithm {self.rl.algorithm} needs inner.learner: base (the un-adapted model learns and answers; "
                "its baselines are computed once); add inner.learner=base"
            )
        grpo = self.rl.grpo
        if self.rl.algorithm != "restem" and (grpo.prompts_per_step * grpo.num_generations) % grpo.batch_size:
            raise ValueError(
                f"rl.grpo.batch_size ({grpo.batch_size}) must divide prompts_per_step x num_generations "
                f"({grpo.prompts_per_step} x {grpo.num_generations})"
            )
        return self

    @model_validator(mode="after")
    def _vllm_needs_a_gpu(self) -> Recipe:
        if self.self_edit.backend == "vllm" and self.model.device.startswith("cpu"):
            raise ValueError("self_edit.backend vllm runs on a CUDA GPU and model.device is 'cpu'; use self_edit.backend=hf on a CPU")
        return self

    @model_validator(mode="after")
    def _passage_schedule(self) -> Recipe:
        """What ``data.passage_schedule: fresh`` needs to know each round's passages (the
        passages themselves are counted when they are read, ``seal.train.load_round_passages``)."""
        data = self.data
        if data.passage_schedule == "fixed":
            if data.round_train_files is not None:
                raise ValueError("data.round_train_files needs data.passage_schedule: fresh (fixed trains every round on data.train_file)")
            return self
        if self.rl.algorithm != "restem":
            raise ValueError(f"data.passage_schedule fresh is a ReST-EM schedule (rounds); rl.algorithm {self.rl.algorithm} has none")
        if data.hf_dataset is not None:
            raise ValueError("data.passage_schedule fresh reads files; unset data.hf_dataset")
        if data.round_train_files is None:
            if data.n_train_passages is None:
                raise ValueError("data.passage_schedule fresh without data.round_train_files needs data.n_train_passages (passages per round)")
        else:
            if len(data.round_train_files) < self.rl.rounds:
                raise ValueError(
                    f"data.round_train_files lists {len(data.round_train_files)} files for rl.rounds {self.rl.rounds}: one per round is needed"
                )
        return self

    @model_validator(mode="after")
    def _sft_global_batch(self) -> Recipe:
        """``rl.sft.global_batch_size`` fixes the step: accumulation is derived from it, not set."""
        sft = self.rl.sft
        if sft.global_batch_size is not None and sft.grad_accum_steps != 1:
            raise ValueError("rl.sft.global_batch_size derives the gradient accumulation; leave rl.sft.grad_accum_steps at 1")
        if sft.global_batch_size is not None and sft.global_batch_size % sft.batch_size:
            raise ValueError(f"rl.sft.global_batch_size ({sft.global_batch_size}) must be a multiple of rl.sft.batch_size ({sft.batch_size})")
        return self

    @field_validator("name")
    @classmethod
    def _name_is_a_path_part(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a non-empty file-name part without '/'")
        return v


# ----------------------------------------------------------------------------- loading


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid recipe {source}:"]
    for e in err.errors():
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        if not e["loc"]:  # a check across sections (Recipe's model validator) names its keys itself
            lines.append(f"  {msg.removeprefix('Value error, ')}")
            continue
        lines.append(f"  {'.'.join(str(p) for p in e['loc'])}: {msg}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (['a', 'b', 'c'], value), the value parsed as YAML.

    Raises:
        RecipeError: no '=', an empty key, or a value that is not YAML.
    """
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not of the form key.path=value")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise RecipeError(f"override {text!r} has an empty key")
    try:
        return parts, yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:  # e.g. an unquoted JSON object: quote the value
        raise RecipeError(f"override {text!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e}); quote it") from None


def apply_overrides(raw: dict, overrides: list[str], source: str) -> dict:
    """Return a copy of ``raw`` with dotted overrides applied.

    Raises:
        RecipeError: an override names a key that is not a section (e.g. ``seed.x=1``).
    """
    raw = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(
                    f"override {text!r} ({source}): {'.'.join(parts[: i + 1])} is a value, not a section"
                )
            node = child
        node[parts[-1]] = value
    return raw


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe YAML file.

    Raises:
        RecipeError: file missing, not YAML, not a mapping, or any key unknown or mistyped
            (the message names the file and every bad key).
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path} must be a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [], str(path))
    raw.setdefault("name", path.stem)
    try:
        recipe = Recipe.model_validate(raw)
        return resolve_placeholders(recipe, raw, str(path), Recipe.model_validate)
    except ValidationError as e:
        raise RecipeError(_format_validation_error(e, str(path))) from None


def recipe_to_dict(recipe: BaseModel) -> dict:
    """The resolved recipe as plain data (what a run directory records)."""
    return recipe.model_dump(mode="json")


#: Dotted recipe keys that change speed or bookkeeping but not results: a resumed
#: ``seal train`` or ``seal bench`` may change them (any other difference is refused).
RESULT_NEUTRAL_KEYS = frozenset(
    {
        "name",
        "output_dir",
        "model.device",
        "model.shard",  # sharded or not, the same results (tests/test_sharding.py)
        "inner.batch_adapters",
        "rl.sft.gradient_checkpointing",  # recomputes the same forward: the fix for a policy update out of memory (tests/test_restem.py)
        "qa.batch_size",
        "qa.judge.max_concurrency",
        "qa.judge.timeout_s",
        "qa.judge.max_retries",
        "qa.judge.backoff_s",
        "qa.judge.preflight_request",  # a check before the run, no result depends on it
        "qa.judge.api_key_env",  # where the key is read from; the key itself is never recorded
        "rl.grpo.logging_steps",
        "rl.grpo.save_steps",
        "rl.grpo.keep_checkpoints",
        # how a policy is stored, and where it is uploaded: the same weights either way
        # (tests/test_outputs.py); "hub" itself: a run recorded before the section existed
        "rl.save",
        "hub",
        *(f"hub.{name}" for name in HubConfig.model_fields),
        "rl.keep_going",  # whether a round without usable evaluations stops the run, not what it computed
        # read-only observers; "diagnostics" itself: a run recorded before the section existed
        "diagnostics",
        *(f"diagnostics.{name}" for name in DiagnosticsConfig.model_fields),
        # experiment tracking observes; "tracking" itself: a run recorded before the section existed
        "report_to",
        "tracking",
        *(f"tracking.{name}" for name in TrackingConfig.model_fields),
    }
)


def with_defaults(recorded: dict) -> dict:
    """A recorded resolved recipe with the fields added to the recipe since, at their defaults.

    A new field's default is what a run recorded before it existed did (``rl.curation: gain``),
    so a resume compares like with like. A recording that no longer validates is returned as is.
    """
    try:
        return recipe_to_dict(Recipe.model_validate(recorded))
    except ValidationError:
        return recorded


def diff_recipes(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved recipes (dicts)."""
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        ka = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_recipes(va, vb, ka + ".")
        elif va != vb:
            out.append(ka)
    return out
