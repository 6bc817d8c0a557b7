"""Memory of one checkpoint's evaluation: weights + KV cache for batch x (prompt + new tokens), per GPU.

Standard library only, on duck-typed config sections (model, cluster, evaluation): the config rules use it
(`check_evaluation_fits`), the shipped job validates its config.json with those rules, and core.estimate and
core.placement build on it.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9
EVAL_CPU_OVERHEAD_GB = 0.5  # a CPU evaluation's interpreter and allocator (core.estimate's CPU overhead)

# Share of a GPU's memory an evaluation may plan for (vLLM's default gpu_memory_utilization; the rest is the
# CUDA context, the allocator's fragmentation and what other processes hold).
USABLE_GPU_FRACTION = 0.9
# Longest prompt of each benchmark in tokens: its longest prompt in characters (HumanEval 1,360; MBPP with
# its 3-shot examples 5,898) at 3 characters per token (Llama tokenizers on code), rounded up.
PROMPT_TOKENS_MAX: dict[str, int] = {"humaneval": 460, "humanevalplus": 460, "mbpp": 2000, "mbppplus": 2000}
TEMPLATE_TOKENS = 64  # an instruct template's system prompt and markers around the task
EVAL_OVERHEAD_GB = 3.0  # per GPU: CUDA context, allocator fragmentation, sampler buffers


@dataclass(frozen=True)
class EvalMemory:
    """Memory of one evaluation: weights + KV cache for batch x (prompt + new tokens), on `gpus` devices."""

    gpus: int
    weights: float
    kv_cache: float
    working: float  # prefill activations of one layer + last-token logits
    overhead: float  # over all its GPUs
    sequences: int  # batch_size x n_samples generated together
    prompt_tokens: int
    new_tokens: int
    gpu_memory: float | None  # bytes per GPU
    usable_fraction: float = USABLE_GPU_FRACTION

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.working + self.overhead

    @property
    def per_gpu(self) -> float:
        return self.total / self.gpus

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_memory is None else self.per_gpu <= self.usable_fraction * self.gpu_memory


def evaluation_memory(model, cluster, evaluation, gpus: int) -> EvalMemory:
    """Weights + KV cache of the evaluation's largest batch (longest prompts, all new tokens) on `gpus` GPUs.

    Takes the config's sections (model, cluster, evaluation), so config rules can call it before a RunConfig
    exists. CPU runs evaluate in fp32, GPUs in bf16.
    """
    a = model.architecture
    if a is None:
        raise ValueError("model.architecture is not given: the evaluation estimate needs the model's shape")
    cpu = cluster.gpu_type == "cpu"
    b = 4 if cpu else 2
    benches = [spec.name for spec in evaluation.benchmarks] or ["humaneval"]
    prompt = max(PROMPT_TOKENS_MAX.get(name, PROMPT_TOKENS_MAX["mbpp"]) for name in benches)
    if model.kind == "instruct":
        prompt += TEMPLATE_TOKENS
    sequences = evaluation.batch_size * (evaluation.n_samples if evaluation.decoding == "sampled" else 1)
    tokens = prompt + evaluation.max_new_tokens
    kv_per_token = 2 * a.num_hidden_layers * a.num_key_value_heads * a.head_dim * b
    kv = float(kv_per_token * sequences * tokens)
    # Prefill of the longest batch, one layer at a time: the MLP's working set dominates; logits of the last
    # position only (generate keeps one position's logits).
    working = float(b * sequences * prompt * (2 * a.hidden_size + 2 * a.intermediate_size) + 4 * sequences * a.vocab_size)
    gb = cluster.memory_gb
    overhead = (EVAL_CPU_OVERHEAD_GB if cpu else EVAL_OVERHEAD_GB) * GB * gpus
    return EvalMemory(gpus=gpus, weights=float(b * a.parameter_count()), kv_cache=kv, working=working,
                      overhead=overhead, sequences=sequences, prompt_tokens=prompt,
                      new_tokens=evaluation.max_new_tokens, gpu_memory=None if gb is None else gb * GB)


def evaluation_gpu_choices(model, cluster) -> list[int]:
    """GPU counts an evaluation can use on one node: tensor parallelism splits the attention heads evenly."""
    heads = model.architecture.num_attention_heads if model.architecture is not None else 1
    if cluster.gpu_type == "cpu":
        return [1]
    return [g for g in range(1, cluster.gpus_per_node + 1) if heads % g == 0]


def evaluation_gpus(model, cluster, evaluation) -> int | None:
    """evaluation.gpus, or the fewest GPUs of one node that hold the evaluation (None: no count does)."""
    if evaluation.gpus is not None:
        return evaluation.gpus
    if cluster.memory_gb is None:
        return 1
    for g in evaluation_gpu_choices(model, cluster):
        if evaluation_memory(model, cluster, evaluation, g).fits:
            return g
    return None
