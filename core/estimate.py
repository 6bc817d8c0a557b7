"""Pre-flight estimate: memory per GPU, tokens, optimizer steps and wall time of a run, before launching it.

Every number that is not read from the config is an Assumption (name, value, why) and is printed with the
result. Formulas (bytes; P = parameters, N = GPUs over which ZeRO partitions, L = layers, h = hidden,
i = MLP width, kv = key/value width, a = heads, V = vocabulary, t = tokens per micro batch = micro x seq):

Model states (bf16 mixed-precision AdamW; Rajbhandari et al. 2020, "ZeRO"): 2 bytes bf16 parameters,
2 bytes bf16 gradients, 12 bytes fp32 master copy + Adam m and v. ZeRO-1 partitions the 12, ZeRO-2 also
the gradients, ZeRO-3 also the parameters. The optimizer step additionally materialises an fp32 copy of
the gradient partition (4 bytes; under ZeRO-3 one `sub_group_size` group at a time), which is transient:
it peaks while activations are freed. ZeRO-3 gathers the largest layer (bf16 weights + gradients,
4 bytes x its size, as DeepSpeed's own estimator counts) and keeps parameters under
`stage3_param_persistence_threshold` (the RMSNorm weights) whole on every GPU.

Activations per layer per token (bf16, Llama block, FlashAttention: no s^2 term; cf. Korthikanti et al.
2022, whose 34 s*b*h for a GPT block becomes, for RMSNorm + GQA + SwiGLU):
  2 x (6h + 2kv + 4i) bytes: two norm inputs, two normed inputs, q, k, v, attention output, gate, up,
  silu(gate), gate*up; plus 4a bytes of softmax statistics. Eager attention adds 2 x a x s (the
  probabilities). With gradient checkpointing (one checkpoint per decoder layer, as transformers does):
  L x 2h (the layer inputs) + one layer's full working set, recomputed in the backward pass.
Logits: V x 4 bytes (fp32) per token of one chunk of TRL's fused LM head (it computes the log-probabilities of at
most FUSED_HEAD_CHUNK_TOKENS labelled tokens at once, never the whole micro batch's logits). Packed attention
(`attention_path`): FlashAttention-2's varlen kernel needs no mask; any other kernel gets packed rows with a
block-diagonal mask each, built on the GPU: 2 x micro x seq^2 bytes (two boolean (micro, seq, seq) tensors),
plus a float copy of 4 bytes per entry for eager. Framework overhead (CUDA context, NCCL buffers, allocator
fragmentation) is a stated constant.

Time: 6 x P x training tokens FLOPs (Kaplan et al. 2020; attention FLOPs and the recomputation of
gradient checkpointing are not counted, so they are part of what keeps MFU below 1) at a stated MFU of
the cluster's peak dense bf16 throughput. `calibration_from_run` replaces the stated MFU with what a finished
run measured on the same GPU type: its tokens/s per GPU directly when it trained the same model shape and
sequence length, else the MFU it achieved. On a CPU (cluster.gpu_type "cpu") there is no datasheet to scale:
each optimizer step costs CPU_STEP_OVERHEAD_S (ZeRO-3's gathers and the Trainer's bookkeeping over gloo)
plus 6 x P x tokens per process at CPU_MODEL_GFLOPS, both measured on a 2-core machine.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from core.config import RunConfig

# One checkpoint's evaluation (weights + KV cache) lives in core.evalmemory, shipped with the job (the config
# rules use it, and the job validates its config.json); re-exported here beside the training estimate.
from core.evalmemory import (  # noqa: F401
    EVAL_OVERHEAD_GB,
    PROMPT_TOKENS_MAX,
    TEMPLATE_TOKENS,
    USABLE_GPU_FRACTION,
    EvalMemory,
    evaluation_gpu_choices,
    evaluation_gpus,
    evaluation_memory,
)

GB = 1e9
DEFAULT_MFU = 0.40
DEFAULT_AVG_TOKENS = 1000.0
PACKING_EFFICIENCY = 0.98
GPU_OVERHEAD_GB = 3.0
CPU_OVERHEAD_GB = 0.5
ADAM_STATE_BYTES = 12  # fp32 master weights + Adam m + v
FP32_GRAD_BYTES = 4
FUSED_HEAD_CHUNK_TOKENS = 32_768  # TRL 1.16's fused LM head: labelled tokens whose logits exist at once
# A CPU rank (1 thread, fp32, ZeRO-3 over gloo, 2 ranks on 2 cores), measured on the build machine:
# `bench_gpu_throughput.py --cpu-smoke`'s job arm did 6 x 3.4M params x 4,000 tokens = 82 GFLOP per rank-step in
# 13 s (6.3 GFLOP/s; attention of its 1024-token rows included); the tiny-demo preset (0.22M params, 1.3 GFLOP
# per rank-step) took 0.71 s per step, so ~0.5 s of per-step overhead, both while other jobs loaded the
# machine (load average ~15); the same tiny-demo run took ~22 s for 60 steps (0.37 s/step) on a quieter one.
# The overhead is set between the two: a tiny-demo estimate of ~34 s.
CPU_STEP_OVERHEAD_S = 0.35
CPU_MODEL_GFLOPS = 6.0
CALIBRATION_WARMUP_LOGS = 3  # logged steps per attempt left out of a measured rate (start-up, first allocations)


class EstimateError(ValueError):
    """The config lacks what the estimate needs (names the field)."""


@dataclass(frozen=True)
class Assumption:
    name: str
    value: str
    why: str


@dataclass(frozen=True)
class DatasetStats:
    """What the estimate needs from a dataset: examples and tokens per epoch."""

    num_samples: int
    total_tokens: int
    source: str = "dataset"

    @property
    def avg_tokens(self) -> float:
        return self.total_tokens / self.num_samples if self.num_samples else 0.0


def dataset_stats_from_lengths(lengths: Iterable[int], source: str = "dataset") -> DatasetStats:
    """DatasetStats from per-example token counts (prompt + answer)."""
    n = total = 0
    for length in lengths:
        n += 1
        total += int(length)
    return DatasetStats(num_samples=n, total_tokens=total, source=source)


@dataclass(frozen=True)
class PublishedReference:
    hours: float
    source: str


# Presets whose published training time is known, for the "published comparison" block.
PUBLISHED: dict[str, PublishedReference] = {
    "phind-codellama-34b-v1": PublishedReference(
        3.0, "Phind blog (Aug 2023): ~80k examples x 2 epochs on 32 A100-80GB in ~3 hours"
    ),
}


@dataclass(frozen=True)
class PublishedComparison:
    reference_hours: float
    source: str
    estimate_hours: float
    mfu_for_reference: float  # MFU that gives exactly the reference time at the stated tokens/sample
    tokens_per_sample_for_reference: float | None  # tokens/sample that give the reference time at the stated MFU
    sensitivity: tuple[tuple[str, float], ...]  # (label, hours)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU (and offloaded bytes per node) of one configuration."""

    params_gpu: float
    grads_gpu: float
    optimizer_gpu: float
    gathered_gpu: float  # ZeRO-3 working set: largest layer gathered + persistent params + buckets
    step_transient_gpu: float  # fp32 gradient copy during the optimizer step
    activations_gpu: float
    logits_gpu: float
    overhead_gpu: float
    cpu_offload_per_node: float
    attention_mask_gpu: float = 0.0  # packed rows' block-diagonal masks (no varlen kernel)

    @property
    def model_states_gpu(self) -> float:
        """Steady model states: parameters, gradients, optimizer state held on the GPU."""
        return self.params_gpu + self.grads_gpu + self.optimizer_gpu

    @property
    def model_states_peak_gpu(self) -> float:
        """Model states at their peak, without activations (the quantity DeepSpeed's estimator reports)."""
        return self.model_states_gpu + max(self.gathered_gpu, self.step_transient_gpu)

    @property
    def peak_gpu(self) -> float:
        forward_backward = self.gathered_gpu + self.activations_gpu + self.logits_gpu + self.attention_mask_gpu
        return self.model_states_gpu + max(forward_backward, self.step_transient_gpu) + self.overhead_gpu


@dataclass(frozen=True)
class Estimate:
    parameter_count: int
    world_size: int
    zero_stage: int
    memory: MemoryBreakdown
    activations_checkpointed_gpu: float
    activations_full_gpu: float
    gpu_memory_gb: float | None
    fits: bool | None
    samples_per_epoch: int | None
    tokens_per_epoch: int | None
    sequences_per_epoch: int | None
    steps_per_epoch: int | None
    total_steps: int | None
    training_tokens: int | None
    global_batch: int
    epochs: float
    flops: float | None
    mfu: float
    peak_tflops: float | None
    time_hours: float | None
    assumptions: tuple[Assumption, ...]
    published: PublishedComparison | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    assumed_time_hours: float | None = None  # at the stated MFU (or the CPU rate), also when a measurement replaced it
    measured: MeasuredTime | None = None  # from --calibrate RUN: what time_hours then is
    cpu_rate: bool = False  # time from the CPU rate (gpu_type cpu) rather than a GPU datasheet
    evaluation: EvalMemory | None = None  # one checkpoint's evaluation on the fewest GPUs that hold it

    @property
    def examples_seen(self) -> int | None:
        """Examples passed through training over all epochs (Phind: 80k x 2 = 160k)."""
        return None if self.samples_per_epoch is None else round(self.samples_per_epoch * self.epochs)

    @property
    def peak_gb(self) -> float:
        return self.memory.peak_gpu / GB


@dataclass(frozen=True)
class Calibration:
    """What a finished run measured: its training speed on its GPU type, for the next estimate."""

    run: str
    gpu_type: str  # the run config's cluster.gpu_type
    device: str | None  # what the job saw (its `started` event), e.g. "NVIDIA H200"
    world_size: int
    parameter_count: int
    max_seq_length: int
    tokens_per_s_per_gpu: float  # median over the logged steps after each attempt's first few
    steps: int  # logged steps the median is over
    peak_tflops: float | None  # of its GPU type (to express the rate as an MFU)

    @property
    def mfu(self) -> float | None:
        if not self.peak_tflops:
            return None
        return 6.0 * self.parameter_count * self.tokens_per_s_per_gpu / (self.peak_tflops * 1e12)


@dataclass(frozen=True)
class MeasuredTime:
    hours: float | None
    basis: str  # how the measurement was carried over to this config


def calibration_from_run(run: str, config: dict[str, Any], metrics: Iterable[dict[str, Any]],
                         events: Iterable[dict[str, Any]]) -> Calibration:
    """A Calibration from a run's resolved config, metrics and events (as the run store holds them).

    Each step counts once (the latest attempt's); each attempt's first CALIBRATION_WARMUP_LOGS logged steps
    are left out (start-up, first allocations). The job's tokens/s is summed over its processes."""
    from core.series import segments

    data = {k: v for k, v in config.items() if k != "derived"}
    try:
        cfg = RunConfig.model_validate(data)
    except ValueError as exc:
        raise EstimateError(f"run {run}: its stored config does not validate ({exc})") from None
    rates = [float(y) for seg in segments(metrics, "tokens_per_s") for y in seg.y[CALIBRATION_WARMUP_LOGS:]
             if y == y and y > 0]  # y == y drops NaN (a step logged without a rate)
    if len(rates) < 3:
        raise EstimateError(f"run {run} has {len(rates)} logged steps with a rate after each attempt's first "
                            f"{CALIBRATION_WARMUP_LOGS}: too few to calibrate from")
    started = [e for e in events if e.get("event") == "started"]
    detail = max(started, key=lambda e: e.get("attempt", 0)).get("detail", {}) if started else {}
    world = int(detail.get("world_size") or cfg.world_size)
    arch = _arch(cfg)
    return Calibration(run=run, gpu_type=cfg.cluster.gpu_type, device=detail.get("device"), world_size=world,
                       parameter_count=arch.parameter_count(), max_seq_length=cfg.training.max_seq_length,
                       tokens_per_s_per_gpu=statistics.median(rates) / world, steps=len(rates),
                       peak_tflops=cfg.cluster.tflops)


def calibrated_time(calibration: Calibration, config: RunConfig, training_tokens: int | None) -> MeasuredTime:
    """Hours of `config` at the calibration run's measured speed."""
    if training_tokens is None:
        return MeasuredTime(None, "training tokens unknown")
    world = config.cluster.world_size
    p = _arch(config).parameter_count()
    if p == calibration.parameter_count and config.training.max_seq_length == calibration.max_seq_length:
        return MeasuredTime(training_tokens / (calibration.tokens_per_s_per_gpu * world) / 3600.0,
                            "same model shape and sequence length: its tokens/s per GPU, used as is")
    mfu, tflops = calibration.mfu, config.cluster.tflops
    if mfu is None or not tflops:
        raise EstimateError(f"run {calibration.run} trained another model shape and its GPU type has no peak "
                            "TFLOP/s to turn its rate into an MFU")
    return MeasuredTime(hours_for(p, training_tokens, world, tflops, mfu),
                        f"another model shape ({calibration.parameter_count / 1e9:.2f}B params, seq "
                        f"{calibration.max_seq_length}): its measured MFU {mfu:.2f} applied")


# ---------------------------------------------------------------------------------------------- memory


def largest_layer_params(config: RunConfig) -> int:
    """Elements of the largest single module's own parameters (embedding/head or the MLP's gate)."""
    a = _arch(config)
    return max(a.vocab_size * a.hidden_size, a.hidden_size * a.intermediate_size, a.hidden_size * a.hidden_size)


def activation_bytes_per_token_layer(config: RunConfig) -> float:
    """Stored activation bytes of one decoder layer per token (see the module docstring)."""
    a = _arch(config)
    b = 2 if config.training.bf16 else 4
    kv = a.num_key_value_heads * a.head_dim
    per = b * (6 * a.hidden_size + 2 * kv + 4 * a.intermediate_size) + 4 * a.num_attention_heads
    if config.attention.implementation == "eager":
        per += b * a.num_attention_heads * config.training.max_seq_length
    return per


def activation_bytes(config: RunConfig, checkpointing: bool) -> float:
    a = _arch(config)
    b = 2 if config.training.bf16 else 4
    tokens = config.training.micro_batch_size * config.training.max_seq_length
    per_layer = activation_bytes_per_token_layer(config) * tokens
    if checkpointing:
        return a.num_hidden_layers * b * a.hidden_size * tokens + per_layer
    return a.num_hidden_layers * per_layer


def memory_breakdown(config: RunConfig, checkpointing: bool | None = None) -> MemoryBreakdown:
    """Memory per GPU for the config (checkpointing overrides training.gradient_checkpointing)."""
    a = _arch(config)
    ds, c = config.deepspeed, config.cluster
    p = a.parameter_count()
    n = c.world_size
    stage = ds.zero_stage
    b = 2 if config.training.bf16 else 4  # parameter/gradient bytes (fp32 training keeps 4)
    off_opt = stage >= 1 and ds.offload_optimizer != "none"
    off_par = stage == 3 and ds.offload_param != "none"

    params = b * p / n if stage == 3 else b * p
    grads = b * p / n if stage >= 2 else b * p
    optimizer = ADAM_STATE_BYTES * p / n if stage >= 1 else ADAM_STATE_BYTES * p
    partition = p / n if stage >= 1 else p
    if stage == 3:
        partition = min(partition, ds.sub_group_size)
    transient = FP32_GRAD_BYTES * partition
    cpu = 0.0
    if off_opt:
        cpu += (ADAM_STATE_BYTES + FP32_GRAD_BYTES) * p * c.gpus_per_node / n
        optimizer = transient = 0.0
        if stage >= 2:
            cpu += b * p * c.gpus_per_node / n
            grads = 0.0
    if off_par:
        cpu += b * p * c.gpus_per_node / n
        params = 0.0

    gathered = 0.0
    if stage == 3:
        persistent = (2 * a.num_hidden_layers + 1) * a.hidden_size  # RMSNorm weights stay whole
        prefetch = ds.stage3_prefetch_bucket_size if isinstance(ds.stage3_prefetch_bucket_size, int) else 0.9 * a.hidden_size**2
        gathered = 2 * b * largest_layer_params(config) + b * persistent + b * prefetch
    if stage >= 1:
        reduce_bucket = ds.reduce_bucket_size if isinstance(ds.reduce_bucket_size, int) else a.hidden_size**2
        gathered += b * reduce_bucket

    ckpt = config.training.gradient_checkpointing if checkpointing is None else checkpointing
    tokens = config.training.micro_batch_size * config.training.max_seq_length
    mask = 0.0
    if config.training.packing:
        rows = config.training.micro_batch_size * config.training.max_seq_length**2
        mask = 2.0 * rows + (4.0 * rows if config.attention.implementation == "eager" else 0.0)
    return MemoryBreakdown(
        params_gpu=params,
        grads_gpu=grads,
        optimizer_gpu=optimizer,
        gathered_gpu=gathered,
        step_transient_gpu=transient,
        activations_gpu=activation_bytes(config, ckpt),
        logits_gpu=4.0 * a.vocab_size * min(tokens, FUSED_HEAD_CHUNK_TOKENS),
        overhead_gpu=(CPU_OVERHEAD_GB if c.gpu_type == "cpu" else GPU_OVERHEAD_GB) * GB,
        cpu_offload_per_node=cpu,
        attention_mask_gpu=mask,
    )


def attention_path(config: RunConfig) -> Assumption:
    """Which attention kernel the job will run and what a packed micro batch costs it (as remote/job/packing.py
    chooses at start; the run's `attention` event records the actual choice)."""
    impl, fallback = config.attention.implementation, config.attention.fallback
    cpu = config.cluster.gpu_type == "cpu"
    dense = fallback if impl == "flash_attention_2" else impl
    if not config.training.packing:
        used = dense if cpu or impl != "flash_attention_2" else f"{impl} (else {fallback})"
        return Assumption("attention", f"{used}, no packing", "each micro batch padded to its longest example"
                          + ("; eager keeps the s^2 probabilities" if dense == "eager" else ""))
    rows = (f"packed rows of max_seq_length with a block-diagonal mask each: work <= micro x seq^2, "
            f"mask {2 if dense != 'eager' else 6} x micro x seq^2 bytes")
    if impl == "flash_attention_2" and not cpu:
        return Assumption("attention", f"varlen {impl}, else {fallback} rows",
                          f"where flash-attn imports: documents reach the varlen kernel (work per document, no mask); "
                          f"else {fallback} on {rows} (the mask is counted)")
    why = "no CUDA GPU, so no FlashAttention-2; " if cpu and impl == "flash_attention_2" else ""
    return Assumption("attention", f"{dense} on packed rows", why + rows
                      + ("; eager keeps the s^2 probabilities" if dense == "eager" else ""))


def _arch(config: RunConfig):
    if config.model.architecture is None:
        raise EstimateError(
            "model.architecture is not given: the estimate needs the model's shape (presets carry it)"
        )
    return config.model.architecture


# ----------------------------------------------------------------------------------------- evaluation

@dataclass(frozen=True)
class AlongsideMemory:
    """Per GPU: training's peak and what an evaluation beside it adds on each of its GPUs."""

    training: float
    evaluation: float
    gpus: int
    gpu_memory: float | None

    @property
    def fits(self) -> bool | None:
        if self.gpu_memory is None:
            return None
        return self.training + self.evaluation <= self.gpu_memory


def alongside_memory(model, training, deepspeed, attention, cluster, evaluation) -> AlongsideMemory:
    """An evaluation on the first evaluation.gpus GPUs of the node while training holds its peak on each."""
    from types import SimpleNamespace

    shape = SimpleNamespace(model=model, training=training, deepspeed=deepspeed, attention=attention, cluster=cluster)
    peak = memory_breakdown(shape).peak_gpu  # type: ignore[arg-type]
    gpus = evaluation_gpus(model, cluster, evaluation) or cluster.gpus_per_node
    m = evaluation_memory(model, cluster, evaluation, gpus)
    return AlongsideMemory(peak, m.per_gpu, gpus, None if cluster.memory_gb is None else cluster.memory_gb * GB)


# ------------------------------------------------------------------------------------ tokens and time


@dataclass(frozen=True)
class _Tokens:
    samples: int | None
    tokens_per_epoch: int | None
    sequences_per_epoch: int | None
    steps_per_epoch: int | None
    total_steps: int | None
    training_tokens: int | None


def _token_counts(config: RunConfig, samples: int | None, avg_tokens: float | None) -> _Tokens:
    t = config.training
    gb = config.global_batch
    seq = t.max_seq_length
    if samples is None or avg_tokens is None:
        if t.max_steps is None:
            return _Tokens(None, None, None, None, None, None)
        per_seq = seq * PACKING_EFFICIENCY if t.packing else min(avg_tokens or DEFAULT_AVG_TOKENS, seq)
        return _Tokens(None, None, None, None, t.max_steps, int(t.max_steps * gb * per_seq))
    per_sample = avg_tokens if t.packing else min(avg_tokens, seq)  # without packing, long examples are cut
    tokens = round(samples * per_sample)
    sequences = math.ceil(tokens / (seq * PACKING_EFFICIENCY)) if t.packing else samples
    steps_epoch = math.ceil(sequences / gb)
    total_steps = math.ceil(sequences * t.epochs / gb)
    training_tokens = int(tokens * t.epochs)
    if t.max_steps is not None:
        training_tokens = int(training_tokens * min(1.0, t.max_steps / total_steps))
        total_steps = t.max_steps
    return _Tokens(samples, tokens, sequences, steps_epoch, total_steps, training_tokens)


def hours_for(params: int, tokens: float, world: int, tflops: float, mfu: float) -> float:
    """Wall hours of 6 x params x tokens FLOPs at `mfu` of world x tflops."""
    return 6.0 * params * tokens / (world * tflops * 1e12 * mfu) / 3600.0


def estimate(
    config: RunConfig,
    dataset_stats: DatasetStats | None = None,
    mfu: float = DEFAULT_MFU,
    calibration: Calibration | None = None,
) -> Estimate:
    """The pre-flight estimate of a run (see the module docstring for every formula); `calibration` (a
    finished run on the same GPU type) replaces the assumed MFU with its measured rate."""
    if not 0 < mfu <= 1:
        raise EstimateError(f"mfu must be in (0, 1], got {mfu}")
    arch = _arch(config)
    c, t = config.cluster, config.training
    p = arch.parameter_count()
    if calibration is not None and calibration.gpu_type != c.gpu_type:
        raise EstimateError(f"run {calibration.run} was measured on {calibration.gpu_type} but this config's "
                            f"cluster.gpu_type is {c.gpu_type}: a rate measured on one GPU type does not carry over")
    assumptions = [
        Assumption("precision", "bf16 weights+grads, fp32 AdamW" if t.bf16 else "fp32 weights+grads, fp32 AdamW",
                   "16 bytes/param in model states (2 + 2 + 12), ZeRO paper accounting" if t.bf16
                   else "20 bytes/param in model states (4 + 4 + 12)"),
        attention_path(config),
    ]
    overhead = CPU_OVERHEAD_GB if c.gpu_type == "cpu" else GPU_OVERHEAD_GB
    assumptions.append(Assumption("framework overhead", f"{overhead:g} GB per GPU", "CUDA context, NCCL buffers, allocator fragmentation"))
    assumptions.append(Assumption("logits", f"fp32, <= {FUSED_HEAD_CHUNK_TOKENS:,} tokens at once",
                                  "TRL's fused LM head computes log-probs chunk by chunk, never the micro batch's V x tokens"))

    mem = memory_breakdown(config)
    gpu_gb = c.memory_gb
    fits = None if gpu_gb is None else mem.peak_gpu <= gpu_gb * GB
    if gpu_gb is None:
        assumptions.append(Assumption("GPU memory", "unknown", f"gpu_type {c.gpu_type!r} is not in the table; set cluster.gpu_memory_gb"))

    # Data: the dataset when given, else the config's stated count and average length.
    samples: int | None
    avg: float | None
    if dataset_stats is not None:
        samples, avg = dataset_stats.num_samples, dataset_stats.avg_tokens
        assumptions.append(Assumption("examples per epoch", f"{samples:,}", f"counted in {dataset_stats.source}"))
        assumptions.append(Assumption("tokens per example", f"{avg:,.0f}", f"measured in {dataset_stats.source}"))
    else:
        samples = config.data.num_samples
        if samples is None and config.data.demo is not None:
            samples = config.data.demo.n_examples
        if samples is not None:
            assumptions.append(Assumption("examples per epoch", f"{samples:,}", "data.num_samples" if config.data.num_samples else "data.demo.n_examples"))
        else:
            assumptions.append(Assumption("examples per epoch", "unknown", "set data.num_samples or pass the data (--data)"))
        avg = config.data.avg_tokens_per_sample
        if avg is not None:
            assumptions.append(Assumption("tokens per example", f"{avg:,.0f}", "data.avg_tokens_per_sample (stated, not measured)"))
        else:
            avg = DEFAULT_AVG_TOKENS
            assumptions.append(Assumption("tokens per example", f"{avg:,.0f}", "default: data.avg_tokens_per_sample not set"))
    if t.packing:
        assumptions.append(Assumption("packing efficiency", f"{PACKING_EFFICIENCY:.0%}", "share of each packed sequence holding real tokens"))
    counts = _token_counts(config, samples, avg)

    tflops = c.tflops
    flops = 6.0 * p * counts.training_tokens if counts.training_tokens is not None else None
    cpu_rate = c.gpu_type == "cpu" and c.peak_tflops is None
    if cpu_rate:
        tokens_per_step = t.micro_batch_size * config.gradient_accumulation * (
            t.max_seq_length * PACKING_EFFICIENCY if t.packing else min(avg or DEFAULT_AVG_TOKENS, t.max_seq_length))
        step_s = CPU_STEP_OVERHEAD_S + 6.0 * p * tokens_per_step / (CPU_MODEL_GFLOPS * 1e9)
        assumptions.append(Assumption("CPU rate", f"{CPU_MODEL_GFLOPS:g} GFLOP/s per process",
                                      "6 x P x tokens on one thread, fp32 (measured: bench_gpu_throughput --cpu-smoke)"))
        assumptions.append(Assumption("CPU step overhead", f"{CPU_STEP_OVERHEAD_S:g} s per step",
                                      "ZeRO-3 gathers and Trainer bookkeeping over gloo (measured: the tiny-demo run)"))
        hours = counts.total_steps * step_s / 3600.0 if counts.total_steps is not None else None
    else:
        assumptions.append(Assumption("MFU", f"{mfu:.2f}", "model FLOPs utilisation; 0.3-0.5 is typical for ZeRO-3 full fine-tunes"))
        if tflops is None:
            assumptions.append(Assumption("peak TFLOP/s", "unknown", f"gpu_type {c.gpu_type!r} not in the table; set cluster.peak_tflops"))
        else:
            assumptions.append(Assumption("peak TFLOP/s", f"{tflops:g} per GPU", "dense bf16, vendor datasheet" if c.peak_tflops is None else "cluster.peak_tflops"))
        hours = flops / (c.world_size * tflops * 1e12 * mfu) / 3600.0 if flops is not None and tflops else None
    assumed_hours = hours
    measured: MeasuredTime | None = None
    if calibration is not None:
        measured = calibrated_time(calibration, config, counts.training_tokens)
        hours = measured.hours
        assumptions.append(Assumption("measured rate", f"{calibration.tokens_per_s_per_gpu:,.0f} tokens/s per GPU",
                                      f"run {calibration.run} on {calibration.device or calibration.gpu_type} "
                                      f"(median of {calibration.steps} logged steps): {measured.basis}"))

    published = None
    ref = PUBLISHED.get(config.preset or "")
    if ref is not None and assumed_hours is not None and counts.training_tokens and tflops and samples and not cpu_rate:
        tokens = counts.training_tokens
        mfu_ref = mfu * assumed_hours / ref.hours
        tps_ref = (avg or DEFAULT_AVG_TOKENS) * ref.hours / assumed_hours
        sens: list[tuple[str, float]] = [(f"MFU {m:.1f}", hours_for(p, tokens, c.world_size, tflops, m)) for m in (0.3, 0.4, 0.5)]
        for tps in (500, 1000, 2000):
            tt = _token_counts(config, samples, float(tps)).training_tokens or 0
            sens.append((f"{tps} tokens/example", hours_for(p, tt, c.world_size, tflops, mfu)))
        published = PublishedComparison(ref.hours, ref.source, assumed_hours, mfu_ref, tps_ref, tuple(sens))

    notes = []
    if t.max_steps is not None:
        notes.append(f"training.max_steps ({t.max_steps}) caps the run")
    if cpu_rate:
        notes.append("CPU run: start-up (imports, DeepSpeed's shared-memory op, data) adds ~30-60 s before step 1")
    eval_memory = None
    if config.evaluation.when != "never":
        eval_gpus = evaluation_gpus(config.model, c, config.evaluation)
        eval_memory = evaluation_memory(config.model, c, config.evaluation, eval_gpus or c.gpus_per_node)
        assumptions.append(Assumption("eval prompt", f"{eval_memory.prompt_tokens} tokens",
                                      "longest prompt of the benchmarks at 3 characters per token"))
    return Estimate(
        parameter_count=p,
        world_size=c.world_size,
        zero_stage=config.deepspeed.zero_stage,
        memory=mem,
        activations_checkpointed_gpu=activation_bytes(config, True),
        activations_full_gpu=activation_bytes(config, False),
        gpu_memory_gb=gpu_gb,
        fits=fits,
        samples_per_epoch=counts.samples,
        tokens_per_epoch=counts.tokens_per_epoch,
        sequences_per_epoch=counts.sequences_per_epoch,
        steps_per_epoch=counts.steps_per_epoch,
        total_steps=counts.total_steps,
        training_tokens=counts.training_tokens,
        global_batch=config.global_batch,
        epochs=t.epochs,
        flops=flops,
        mfu=mfu,
        peak_tflops=tflops,
        time_hours=hours,
        assumptions=tuple(assumptions),
        published=published,
        notes=tuple(notes),
        assumed_time_hours=assumed_hours,
        measured=measured,
        cpu_rate=cpu_rate,
        evaluation=eval_memory,
    )


# ------------------------------------------------------------------------------------------- printing


def _gb(x: float) -> str:
    if x and x < 0.1 * GB:
        return f"{x / 1e6:8.2f} MB"
    return f"{x / GB:8.2f} GB"


def _hours(h: float) -> str:
    if h * 60 < 1:
        return f"{h * 3600:.1f} s"
    if h < 1:
        return f"{h * 60:.1f} min"
    return f"{h:.2f} h"


def _time(hours: float | None) -> str:
    return "unknown" if hours is None else _hours(hours)


def _params(p: int) -> str:
    return f"{p / 1e9:.2f}B" if p >= 1e9 else f"{p / 1e6:.2f}M"


def _n(x: float | None, fmt: str = ",") -> str:
    return "unknown" if x is None else format(x, fmt)


def format_estimate(est: Estimate) -> str:
    """A readable report: memory per GPU, data, steps, time, assumptions, published comparison."""
    m = est.memory
    lines = [
        f"Model: {_params(est.parameter_count)} parameters, ZeRO stage {est.zero_stage}, {est.world_size} GPUs",
        "",
        "Memory per GPU",
        f"  parameters            {_gb(m.params_gpu)}",
        f"  gradients             {_gb(m.grads_gpu)}",
        f"  optimizer state       {_gb(m.optimizer_gpu)}",
        f"  gathered + buckets    {_gb(m.gathered_gpu)}",
        f"  optimizer-step fp32   {_gb(m.step_transient_gpu)}   (transient, not at the same time as activations)",
        f"  activations           {_gb(m.activations_gpu)}   (checkpointed {_gb(est.activations_checkpointed_gpu).strip()},"
        f" without checkpointing {_gb(est.activations_full_gpu).strip()})",
        f"  logits (fp32)         {_gb(m.logits_gpu)}",
        f"  attention masks       {_gb(m.attention_mask_gpu)}",
        f"  framework overhead    {_gb(m.overhead_gpu)}",
        f"  model states peak     {_gb(m.model_states_peak_gpu)}",
        f"  peak total            {_gb(m.peak_gpu)}",
    ]
    if m.cpu_offload_per_node:
        lines.append(f"  CPU memory (offload)  {_gb(m.cpu_offload_per_node)} per node")
    if est.fits is None:
        lines.append("  verdict: unknown GPU memory (set cluster.gpu_memory_gb)")
    else:
        verdict = "FITS" if est.fits else "DOES NOT FIT"
        lines.append(f"  verdict: {verdict} in {est.gpu_memory_gb:g} GB ({est.peak_gb / est.gpu_memory_gb:.0%} used)")
    lines += [
        "",
        "Data and steps",
        f"  examples per epoch    {_n(est.samples_per_epoch)}",
        f"  examples seen         {_n(est.examples_seen)}"
        + (f" ({est.samples_per_epoch:,} x {est.epochs:g} epochs)" if est.examples_seen is not None else ""),
        f"  tokens per epoch      {_n(est.tokens_per_epoch)}",
        f"  sequences per epoch   {_n(est.sequences_per_epoch)}",
        f"  global batch          {est.global_batch:,} sequences",
        f"  steps per epoch       {_n(est.steps_per_epoch)}",
        f"  optimizer steps       {_n(est.total_steps)}",
        f"  training tokens       {_n(est.training_tokens)}",
        "",
        "Time",
        f"  FLOPs (6 x P x T)     {_n(est.flops, '.3e')}",
    ]
    if est.cpu_rate:
        assumed = (f"   (CPU: {_n(est.total_steps)} steps x ({CPU_STEP_OVERHEAD_S:g} s + compute at "
                   f"{CPU_MODEL_GFLOPS:g} GFLOP/s per process))")
    else:
        assumed = f"   (MFU {est.mfu:.2f} of {est.world_size} x {_n(est.peak_tflops, 'g')} TFLOP/s)"
    if est.measured is None:
        lines.append(f"  time                  {_time(est.time_hours)}{assumed}")
    else:
        lines.append(f"  time, measured rate   {_time(est.measured.hours)}   ({est.measured.basis})")
        lines.append(f"  time, assumed         {_time(est.assumed_time_hours)}{assumed}")
    lines += [f"  note: {n}" for n in est.notes]
    if est.evaluation is not None:
        e = est.evaluation
        lines += [
            "",
            "Evaluation (one checkpoint)",
            f"  weights               {_gb(e.weights)}",
            f"  KV cache              {_gb(e.kv_cache)}   ({e.sequences} sequences x ({e.prompt_tokens} prompt + "
            f"{e.new_tokens} new tokens))",
            f"  working memory        {_gb(e.working)}",
            f"  overhead              {_gb(e.overhead)}",
            f"  total                 {_gb(e.total)}   on {e.gpus} {'device' if e.gpus == 1 else 'GPUs'}"
            + (f" ({_gb(e.per_gpu).strip()} each, {e.per_gpu / e.gpu_memory:.0%} of {e.gpu_memory / GB:g} GB)"
               if e.gpu_memory else ""),
        ]
    lines += ["", "Assumptions"]
    width = max(len(a.name) for a in est.assumptions)
    lines += [f"  {a.name:<{width}}  {a.value:<36} {a.why}" for a in est.assumptions]
    if est.published is not None:
        pc = est.published
        lines += [
            "",
            f"Published comparison ({pc.source})",
            f"  published {pc.reference_hours:.1f} h, estimate {pc.estimate_hours:.2f} h ({pc.estimate_hours / pc.reference_hours:.0%} of published)",
            f"  MFU giving exactly {pc.reference_hours:g} h at the stated tokens/example: {pc.mfu_for_reference:.2f}",
        ]
        if pc.tokens_per_sample_for_reference is not None:
            lines.append(
                f"  tokens/example giving {pc.reference_hours:g} h at MFU {est.mfu:.2f}: {pc.tokens_per_sample_for_reference:,.0f}"
            )
        lines.append("  sensitivity: " + ", ".join(f"{label}: {h:.2f} h" for label, h in pc.sensitivity))
        mfu_change = pc.mfu_for_reference / est.mfu - 1
        lines.append(
            f"  time is linear in both: matching {pc.reference_hours:g} h needs MFU {mfu_change:+.0%}"
            + (f" or tokens/example {pc.reference_hours / pc.estimate_hours - 1:+.0%}"
               if pc.tokens_per_sample_for_reference else "")
            + "; tokens/example was not published, so it is the least certain input"
        )
    return "\n".join(lines) + "\n"
