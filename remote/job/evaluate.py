"""Evaluate a checkpoint (or any model) on HumanEval / MBPP (+): generate, run in the sandbox, pass@k.

Runs on the cluster as its own process, so training never waits:

    PYTHONPATH=RUN_DIR/code python -m remote.job.evaluate --run-dir RUN_DIR --checkpoint CKPT --step N --attempt A

It reads RUN_DIR/config.json (the resolved config), holds an exclusive flock on RUN_DIR/.eval.lock for the
whole evaluation (checkpoints queue up: one evaluation process per run at a time, so evals.jsonl has one
writer), appends one record per (benchmark, subset) to evals.jsonl, writes the per-sample JSONL to
samples/step-{N}-{benchmark}.jsonl and its own progress events to eval_events.jsonl.

Imports: standard library, the training stack (torch/transformers/vllm, lazily, only to generate) and the
stdlib-only core modules records, evalsets, passk, fsutil.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.evalsets import MBPP_FEWSHOT_IDS, EvalSet, EvalTask, load_eval_set, load_mbpp
from core.fsutil import atomic_write_text
from core.passk import pass_at_k_all
from core.records import JsonlWriter, RunPaths, eval_record
from remote.job import prompts_eval
from remote.job.sandbox import SandboxJob, run_samples, sandbox_capabilities

EVAL_EVENTS = RunPaths.EVAL_EVENTS
EVAL_LOCK = RunPaths.EVAL_LOCK
Progress = Callable[[str, int, int], None]  # (phase, done, total)


class EvalError(Exception):
    """A user-facing evaluation problem (bad benchmark spec, unreadable report, missing model)."""


@dataclass(frozen=True)
class GenSettings:
    n_samples: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 0.95
    max_new_tokens: int = 512
    batch_size: int = 16

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


# ------------------------------------------------------------------------------------------ benchmarks


def load_benchmark(name: str, path: str | None, limit: int | None = None) -> tuple[EvalSet, list[EvalTask]]:
    """An eval set (first `limit` tasks) plus its few-shot examples (MBPP tasks 2, 3, 4; else none)."""
    spec = name if not path else f"{name}={path}"
    try:
        es = load_eval_set(spec)
    except Exception as exc:  # EvalSetError and file errors: report which benchmark
        raise EvalError(f"benchmark {spec}: {exc}") from exc
    if limit:
        es.tasks = es.tasks[:limit]
    fewshot: list[EvalTask] = []
    if name in prompts_eval.MBPP_BENCHMARKS:
        mbpp_path = path if name == "mbpp" else _find_mbpp_beside(path)
        if mbpp_path:
            prompt_split = load_mbpp(mbpp_path, split="prompt").by_id()
            fewshot = [prompt_split[f"mbpp/{i}"] for i in MBPP_FEWSHOT_IDS if f"mbpp/{i}" in prompt_split]
    return es, fewshot


def _find_mbpp_beside(path: str | None) -> str | None:
    """MBPP+ has no prompt split: take the few-shot examples from mbpp/mbpp.jsonl next to it, if present."""
    if not path:
        return None
    for cand in (Path(path).parent.parent / "mbpp" / "mbpp.jsonl", Path(path).parent / "mbpp.jsonl"):
        if cand.is_file():
            return str(cand)
    return None


# --------------------------------------------------------------------------------------- contamination


def load_contamination(path: str | os.PathLike[str] | None) -> dict[str, set[str]] | None:
    """{"clean": ids, "contaminated": ids} from a TuneDeck report (`items` with a `contaminated` flag) or a
    plain {"clean": [...], "contaminated": [...]} file; None without a report."""
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EvalError(f"contamination report {path}: {exc}") from exc
    clean: set[str] = set()
    dirty: set[str] = set()
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        for i, item in enumerate(data["items"]):
            if not isinstance(item, dict) or "task_id" not in item:
                raise EvalError(f"contamination report {path}: items[{i}] has no task_id")
            (dirty if item.get("contaminated") else clean).add(str(item["task_id"]))
    elif isinstance(data, dict) and ("clean" in data or "contaminated" in data):
        clean = {str(x) for x in data.get("clean", [])}
        dirty = {str(x) for x in data.get("contaminated", [])}
    else:
        raise EvalError(f"contamination report {path}: expected 'items' or 'clean'/'contaminated' lists")
    return {"clean": clean - dirty, "contaminated": dirty}


def subsets_for(task_ids: Sequence[str], report: dict[str, set[str]] | None) -> dict[str, list[str]]:
    """Task ids per subset. With a report that mentions the set's tasks: all, clean, contaminated (tasks
    the report does not mark contaminated count as clean); otherwise only all."""
    out = {"all": list(task_ids)}
    if report is None or not (set(task_ids) & (report["clean"] | report["contaminated"])):
        return out
    out["contaminated"] = [t for t in task_ids if t in report["contaminated"]]
    out["clean"] = [t for t in task_ids if t not in report["contaminated"]]
    return out


# ------------------------------------------------------------------------------------------ generation


@dataclass
class GenStats:
    """What one generate() call produced: tokens generated (all samples) and the seconds it took."""

    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None


def choose_backend() -> str:
    """vllm when it is installed and a GPU exists; transformers otherwise."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        try:
            import torch

            if torch.cuda.is_available():
                return "vllm"
        except ImportError:
            pass
    return "transformers"


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as the cluster names them (CUDA_VISIBLE_DEVICES, else 0..n-1)."""
    import torch

    if not torch.cuda.is_available():
        return []
    n = torch.cuda.device_count()
    named = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return named[:n] if len(named) >= n else [str(i) for i in range(n)]


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices of the prompts, longest first: batches of similar length pad little, and the largest batch
    (the one that decides whether the KV cache fits) runs first, so a memory error comes at once."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


class Generator:
    """Loads a model once and generates n completions per prompt (raw text, cut at the stop strings).

    Engines: vLLM when it is importable and a GPU exists (tensor parallel across the evaluation's GPUs),
    else transformers, with the model spread over the visible GPUs (device_map) when there are several,
    prompts sorted by length into batches, and a static KV cache (allocated once per batch shape, written in
    place: it does not grow, nor reallocate, per generated token).
    """

    def __init__(self, model_path: str, tokenizer_path: str | None = None, backend: str | None = None,
                 gpus: int | None = None):
        self.model_path = model_path
        self.engine = backend or choose_backend()
        self.stats = GenStats()
        gpu_ids = visible_gpus()
        self.gpu_ids = gpu_ids[: gpus or len(gpu_ids)]
        if self.engine == "vllm":
            from vllm import LLM

            if self.gpu_ids:  # tensor parallel over exactly the evaluation's GPUs
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpu_ids)

            self.llm = LLM(model=model_path, tokenizer=tokenizer_path or model_path,
                           tensor_parallel_size=max(1, len(self.gpu_ids)))
            self.tokenizer = self.llm.get_tokenizer()
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or model_path)
        self.tokenizer.padding_side = "left"  # decoder-only: pad on the left so new tokens line up
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if self.gpu_ids else torch.float32}
        if len(self.gpu_ids) > 1:
            # accelerate splits the layers over the evaluation's GPUs (each holds a share of the weights and
            # of the KV cache); generation then runs through them in turn.
            kwargs["device_map"] = "auto"
            kwargs["max_memory"] = {i: torch.cuda.get_device_properties(i).total_memory for i in range(len(self.gpu_ids))}
        self.model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs).eval()
        if len(self.gpu_ids) == 1:
            self.model = self.model.to("cuda")
        self.device = "cuda" if self.gpu_ids else "cpu"  # where inputs go (the first layer's device)

    @property
    def backend(self) -> str:
        return self.engine

    def describe_gpus(self) -> str:
        """`cpu`, or the GPU ids used (as CUDA_VISIBLE_DEVICES names them)."""
        return ",".join(self.gpu_ids) if self.gpu_ids else "cpu"

    def chat_template(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: Sequence[prompts_eval.PromptSpec], gen: GenSettings,
                 progress: Callable[[int, int], None] | None = None,
                 cancel: threading.Event | None = None) -> list[list[str]]:
        """n completions per prompt, in the prompts' order; self.stats counts tokens and time of this call."""
        started = time.monotonic()
        if self.engine == "vllm":
            out, tokens = self._generate_vllm(prompts, gen)
            if progress is not None:
                progress(len(prompts), len(prompts))
        else:
            out, tokens = self._generate_transformers(prompts, gen, progress, cancel)
        self.stats = GenStats(tokens, time.monotonic() - started)
        return out

    def _generate_transformers(self, prompts: Sequence[prompts_eval.PromptSpec], gen: GenSettings,
                               progress: Callable[[int, int], None] | None,
                               cancel: threading.Event | None) -> tuple[list[list[str]], int]:
        import torch

        lengths = [len(ids) for ids in self.tokenizer([p.text for p in prompts])["input_ids"]]
        order = length_order(lengths)
        out: list[list[str] | None] = [None] * len(prompts)
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        tokens = done = 0
        for start in range(0, len(order), gen.batch_size):
            if cancel is not None and cancel.is_set():
                raise EvalError("cancelled")
            idx = order[start:start + gen.batch_size]
            batch = [prompts[i] for i in idx]
            enc = self.tokenizer([p.text for p in batch], return_tensors="pt", padding=True).to(self.device)
            prompt_len = enc["input_ids"].shape[1]
            stops = sorted({s for p in batch for s in p.stops})
            kwargs: dict[str, Any] = {
                "max_new_tokens": gen.max_new_tokens, "num_return_sequences": gen.n_samples, "pad_token_id": pad,
                # Preallocated once for the longest batch, then reused: the cache never grows per token.
                "cache_implementation": "static",
                # No torch.compile: every batch shape would compile anew (minutes for a large model).
                "disable_compile": True,
            }
            if gen.greedy:
                kwargs["do_sample"] = False
            else:
                kwargs.update(do_sample=True, temperature=gen.temperature, top_p=gen.top_p)
            if stops:
                # transformers' own per-row stop-string check (finished rows are padded, not decoded again).
                kwargs.update(stop_strings=stops, tokenizer=self.tokenizer)
            with torch.no_grad():
                seqs = self.model.generate(**enc, **kwargs)
            new = seqs[:, prompt_len:]
            tokens += generated_tokens(new.tolist(), eos, pad)
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            for j, (i, p) in enumerate(zip(idx, batch, strict=True)):
                rows = texts[j * gen.n_samples:(j + 1) * gen.n_samples]
                out[i] = [prompts_eval.truncate(t, p.stops) for t in rows]
            done += len(idx)
            if progress is not None:
                progress(done, len(prompts))
        return [o if o is not None else [] for o in out], tokens

    def _generate_vllm(self, prompts: Sequence[prompts_eval.PromptSpec], gen: GenSettings) -> tuple[list[list[str]], int]:
        from vllm import SamplingParams

        stops = sorted({s for p in prompts for s in p.stops})
        params = SamplingParams(n=gen.n_samples, temperature=0.0 if gen.greedy else gen.temperature,
                                top_p=1.0 if gen.greedy else gen.top_p, max_tokens=gen.max_new_tokens,
                                stop=stops or None)
        results = self.llm.generate([p.text for p in prompts], params)
        tokens = sum(len(o.token_ids) for r in results for o in r.outputs)
        texts = [[prompts_eval.truncate(o.text, p.stops) for o in r.outputs] for p, r in zip(prompts, results, strict=True)]
        return texts, tokens


def generated_tokens(rows: Sequence[Sequence[int]], eos: int | None, pad: int | None) -> int:
    """Tokens generated over all rows: up to and including the first end-of-sequence token; the padding a
    finished row gets while others go on is not counted."""
    total = 0
    for row in rows:
        n = 0
        for tok in row:
            if tok == eos:
                n += 1
                break
            if tok == pad:
                break
            n += 1
        total += n
    return total


# --------------------------------------------------------------------------------------------- scoring


def plus_expected(
    es: EvalSet,
    task_ids: Sequence[str],
    cache_dir: Path | None = None,
    workers: int | None = None,
    cancel: threading.Event | None = None,
    sandbox: str = "auto",
) -> dict[str, tuple[str, float]]:
    """EvalPlus (HumanEval+, MBPP+) canonical outputs per task (marshal hex, canonical seconds), computed in the sandbox once
    and cached in CACHE_DIR/plus-expected-v2-{sha256 of the data file}.json (v2: with the input conversion)."""
    tasks = es.by_id()
    wanted = [t for t in task_ids if prompts_eval.has_plus_inputs(tasks[t])]
    cache_file = cache_dir / f"plus-expected-v2-{es.sha256[:16]}.json" if cache_dir else None
    cached: dict[str, list] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cached = json.loads(cache_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            cached = {}  # a damaged cache is recomputed
    missing = [t for t in wanted if t not in cached]
    if missing:
        jobs = [SandboxJob(prompts_eval.plus_reference_program(tasks[t]), t, timeout_s=120.0, stdout_limit=256 << 20)
                for t in missing]
        # Twice, in fresh interpreters (so with other string hash seeds): where the canonical solution returns
        # its answer in a different order from run to run (a tuple built from a set), the order is no part of
        # the answer, and outputs are then compared as multisets (prompts_eval.reconcile_runs).
        first = run_samples(jobs, workers=workers, cancel=cancel, policy=sandbox)
        again = run_samples([j for j, r in zip(jobs, first, strict=True) if r.passed], workers=workers, cancel=cancel,
                            policy=sandbox)
        second = iter(again)
        for t, res in zip(missing, first, strict=True):
            other = next(second) if res.passed else None
            if res.error == "cancelled" or (other is not None and other.error == "cancelled"):
                continue  # not run to the end: no result, and nothing cached (the next evaluation runs it)
            expected = prompts_eval.parse_plus_expected(res.stdout_tail) if res.passed else None
            other_expected = prompts_eval.parse_plus_expected(other.stdout_tail) if other and other.passed else None
            # (a second run that failed, say near the memory limit, tells nothing of order: the first stands)
            if expected is not None and other_expected is not None and other_expected != expected:
                expected = prompts_eval.reconcile_runs(expected, other_expected)
            # A canonical solution that cannot be run on its inputs (or whose output marshal cannot carry, or
            # whose outputs differ between runs beyond their order) leaves that task with its original tests
            # only; its sample rows say plus_tests: false.
            cached[t] = [expected, res.seconds]
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache_file, json.dumps(cached))
    return {t: (cached[t][0], float(cached[t][1])) for t in wanted if t in cached and cached[t][0] is not None}


def score_completions(
    es: EvalSet,
    completions: dict[str, list[str]],
    kind: str = "base",
    timeout_s: float = 10.0,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    cache_dir: Path | None = None,
    sandbox: str = "auto",
) -> list[dict[str, Any]]:
    """Run every completion of every task in the sandbox (`sandbox`: the evaluation.sandbox policy); one
    sample row per completion."""
    tasks = es.by_id()
    for task_id in completions:
        if task_id not in tasks:
            raise EvalError(f"{es.name}: unknown task_id {task_id!r} in the samples")
    plus = plus_expected(es, list(completions), cache_dir, workers, cancel, sandbox)
    jobs, rows = [], []
    for task_id, comps in completions.items():
        expected, ref_s = plus.get(task_id, (None, 0.0))
        limit = max(timeout_s, 4 * ref_s + 1.0) if expected is not None else timeout_s
        for i, comp in enumerate(comps):
            prog = prompts_eval.program(tasks[task_id], comp, kind, expected)
            jobs.append(SandboxJob(prog, f"{task_id}#{i}", timeout_s=limit))
            row = {"task_id": task_id, "sample": i, "completion": comp}
            if prompts_eval.has_plus_inputs(tasks[task_id]):
                row["plus_tests"] = expected is not None
            rows.append(row)
    results = run_samples(jobs, workers=workers, timeout_s=timeout_s, progress=progress, cancel=cancel, policy=sandbox)
    for row, res in zip(rows, results, strict=True):
        row.update(passed=res.passed, error=res.error, seconds=round(res.seconds, 4))
        if not res.passed:
            row["stderr_tail"] = res.stderr_tail[-2000:]
    return rows


def pass_at_by_subset(rows: Sequence[dict[str, Any]], subsets: dict[str, list[str]]) -> dict[str, tuple[int, dict[int, float]]]:
    """subset -> (n_tasks, {k: pass@k}) for every k <= samples per task."""
    by_task: dict[str, list[bool]] = {}
    for r in rows:
        by_task.setdefault(r["task_id"], []).append(bool(r["passed"]))
    out = {}
    for name, ids in subsets.items():
        res = {t: by_task[t] for t in ids if t in by_task}
        out[name] = (len(res), pass_at_k_all(res) if res else {1: float("nan")})
    return out


def write_outputs(out_dir: Path, es: EvalSet, rows: list[dict[str, Any]], subsets: dict[str, list[str]], *,
                  step: int, attempt: int, checkpoint: str, gen: GenSettings,
                  evals_writer: JsonlWriter, sandbox_mode: str | None = None) -> list[dict[str, Any]]:
    """Per-sample JSONL (samples/step-N-bench.jsonl) and one evals record per subset (which records the
    sandbox mode the samples ran in)."""
    subset_of = {t: name for name in ("clean", "contaminated") for t in subsets.get(name, [])}
    samples_dir = out_dir / RunPaths.SAMPLES
    samples_dir.mkdir(parents=True, exist_ok=True)
    with JsonlWriter(samples_dir / f".step-{step}-{es.name}.jsonl.tmp") as w:
        for r in rows:
            w.write({**r, "subset": subset_of.get(r["task_id"], "all"), "benchmark": es.name, "step": step})
    (samples_dir / f".step-{step}-{es.name}.jsonl.tmp").replace(samples_dir / f"step-{step}-{es.name}.jsonl")
    records = []
    for name, (n_tasks, pass_at) in pass_at_by_subset(rows, subsets).items():
        rec = eval_record(step=step, attempt=attempt, checkpoint=checkpoint, benchmark=es.name, subset=name,
                          n_tasks=n_tasks, samples_per_task=gen.n_samples, temperature=gen.temperature,
                          pass_at=pass_at, sandbox=sandbox_mode)
        evals_writer.write(rec)
        records.append(rec)
    return records


# ----------------------------------------------------------------------------------------- evaluation


def evaluate_model(
    model_path: str,
    benchmarks: Sequence[tuple[str, str | None]],
    out_dir: str | os.PathLike[str],
    *,
    kind: str = "base",
    template: str = "raw",
    system_prompt: str = "",
    gen: GenSettings = GenSettings(),
    limit: int | None = None,
    timeout_s: float = 10.0,
    contamination: str | os.PathLike[str] | None = None,
    step: int = 0,
    attempt: int = 0,
    tokenizer_path: str | None = None,
    backend: str | None = None,
    gpus: int | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    sandbox: str = "auto",
    started_detail: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Generate with a model and score it on each benchmark; returns the evals records written to
    OUT_DIR/evals.jsonl (samples go to OUT_DIR/samples/). `sandbox` is the evaluation.sandbox policy: where
    it cannot be met, SandboxUnavailable says why before a model is loaded or any code runs. Each benchmark's
    records are appended under the run's write lock, so evaluations running side by side (Slurm jobs) never
    interleave their lines."""
    from remote.job.evalqueue import write_lock

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = load_contamination(contamination)
    sets = [load_benchmark(name, path, limit) for name, path in benchmarks]  # fail on bad specs before loading a model
    caps = sandbox_capabilities(sandbox)  # refuses here, before minutes of model loading
    started = time.monotonic()
    generator = Generator(model_path, tokenizer_path, backend, gpus)
    gpu_text = generator.describe_gpus()
    if on_event:
        # `sandbox` says how the samples ran (caps["mode"] == "unconfined" puts a badge on this pass@1)
        on_event("eval_started", {"step": step, "checkpoint": str(model_path), "engine": generator.engine,
                                  "backend": generator.engine, "gpus": gpu_text,
                                  "benchmarks": [es.name for es, _ in sets], "sandbox": caps,
                                  **(started_detail or {})})
    records: list[dict[str, Any]] = []
    tokens, gen_seconds = 0, 0.0
    for es, fewshot in sets:
        chat = generator.chat_template if template == "chat-template" else None
        prompts = [prompts_eval.build_prompt(t, kind, template, system_prompt, fewshot, chat) for t in es.tasks]
        texts = generator.generate(prompts, gen, (lambda d, n, b=es.name: progress(f"generate {b}", d, n)) if progress else None, cancel)
        tokens += generator.stats.tokens
        gen_seconds += generator.stats.seconds
        completions = {p.task_id: comps for p, comps in zip(prompts, texts, strict=True)}
        rows = score_completions(es, completions, kind, timeout_s,
                                 progress=(lambda d, n, b=es.name: progress(f"run {b}", d, n)) if progress else None,
                                 cancel=cancel, cache_dir=out / ".cache", sandbox=sandbox)
        subsets = subsets_for([t.task_id for t in es.tasks], report)
        with write_lock(RunPaths(out)), JsonlWriter(out / RunPaths.EVALS) as writer:
            records += write_outputs(out, es, rows, subsets, step=step, attempt=attempt, checkpoint=str(model_path),
                                     gen=gen, evals_writer=writer, sandbox_mode=caps["mode"])
    if on_event:
        on_event("eval_finished", {"step": step, "seconds": round(time.monotonic() - started, 2),
                                   "engine": generator.engine, "gpus": gpu_text, "tokens_generated": tokens,
                                   "generate_s": round(gen_seconds, 6),  # tokens_per_s = tokens / this: 3 decimals were 1.5% off at 30 ms
                                   "tokens_per_s": round(tokens / gen_seconds, 2) if gen_seconds > 0 else None,
                                   "pass@1": {f"{r['benchmark']}/{r['subset']}": r["pass@1"] for r in records}})
    return records


def score_samples_file(
    samples_path: str | os.PathLike[str],
    benchmark: tuple[str, str | None],
    out_dir: str | os.PathLike[str],
    *,
    kind: str = "base",
    timeout_s: float = 10.0,
    contamination: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    sandbox: str = "auto",
) -> list[dict[str, Any]]:
    """Score a human-eval format samples file (JSONL: task_id, completion; several lines per task for pass@k)
    in the sandbox the `sandbox` policy gets (SandboxUnavailable before anything runs where it cannot)."""
    es, _ = load_benchmark(*benchmark)
    caps = sandbox_capabilities(sandbox)
    completions: dict[str, list[str]] = {}
    with open(samples_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                completions.setdefault(str(row["task_id"]), []).append(str(row["completion"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise EvalError(f"{samples_path}:{line_no}: expected a JSON object with task_id and completion ({exc})") from exc
    if not completions:
        raise EvalError(f"{samples_path}: no samples")
    known = es.by_id()
    unknown = [t for t in completions if t not in known]
    if unknown:
        raise EvalError(f"{samples_path}: task_id {unknown[0]!r} is not in {es.name}")
    counts = {len(v) for v in completions.values()}
    n = min(counts)
    es.tasks = [t for t in es.tasks if t.task_id in completions]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = score_completions(es, completions, kind, timeout_s, workers, progress, cancel, cache_dir=out / ".cache",
                             sandbox=sandbox)
    report = load_contamination(contamination)
    subsets = subsets_for([t.task_id for t in es.tasks], report)
    temp = 0.0
    with JsonlWriter(out / RunPaths.EVALS) as writer:
        return write_outputs(out, es, rows, subsets, step=0, attempt=0, checkpoint=str(samples_path),
                             gen=GenSettings(n_samples=n, temperature=temp), evals_writer=writer,
                             sandbox_mode=caps["mode"])


PROGRESS_EVERY_S = 5.0  # eval_progress events: at most one per this many seconds (and each phase's end)


class ProgressEvents:
    """Turns progress callbacks into throttled `eval_progress` events (the app shows them as a bar)."""

    def __init__(self, emit: Callable[[str, dict[str, Any]], None], step: int, every_s: float = PROGRESS_EVERY_S):
        self.emit, self.step, self.every_s = emit, step, every_s
        self._last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self._last >= self.every_s:
            self._last = now
            self.emit("eval_progress", {"step": self.step, "phase": phase, "done": int(done), "total": int(total)})


def evaluate_checkpoint(run_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str], step: int,
                        attempt: int = 0, cancel: threading.Event | None = None) -> list[dict[str, Any]]:
    """Evaluate one checkpoint of a run as its config.json says; records join RUN_DIR/evals.jsonl.

    Where the run's evaluations share the job's devices (placements other than slurm), this holds
    RUN_DIR/.eval.lock (flock) for the whole evaluation, so that checkpoints queue up; a Slurm evaluation has
    its own GPUs and runs at once. Every append to the record files holds the write lock either way.
    """
    # The schema needs pydantic; imported here, so that scoring in the sandbox (which imports this module) keeps
    # to the standard library, e.g. driven by a system python as another user.
    from core.config import load_resolved_json
    from remote.job.evalqueue import append_event, placement_of

    paths = RunPaths(run_dir)
    ckpt = Path(checkpoint)
    placement = placement_of(paths)
    where = placement.placement
    # Beside training on its GPUs, vLLM would claim most of a GPU training holds: transformers there.
    engine = "transformers" if where == "alongside" else None
    job = os.environ.get("SLURM_JOB_ID")
    lock_fd = os.open(paths / EVAL_LOCK, os.O_RDWR | os.O_CREAT, 0o644) if where != "slurm" else None

    def on_event(event: str, detail: dict[str, Any]) -> None:
        append_event(paths, event, attempt, detail)

    try:
        if lock_fd is not None:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)  # one evaluation at a time on the job's devices: they queue here
        try:
            cfg = load_resolved_json(paths.config_json)  # a config.json the schema refuses is an eval_failed too
            model, data, ev = cfg.model, cfg.data, cfg.evaluation
            sampled = ev.decoding == "sampled"
            gen = GenSettings(n_samples=ev.n_samples if sampled else 1, temperature=ev.temperature if sampled else 0.0,
                              top_p=ev.top_p, max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size)
            benchmarks = [(b.name, b.path) for b in ev.benchmarks]
            tokenizer = str(ckpt) if (ckpt / "tokenizer_config.json").exists() or (ckpt / "tokenizer.json").exists() else None
            if tokenizer is None and model.tokenizer and not model.tokenizer.startswith("train:"):
                tokenizer = model.tokenizer
            if not (ckpt / "config.json").is_file():  # else transformers calls the path a malformed hub repo id
                raise FileNotFoundError(f"{ckpt}: no checkpoint there (config.json missing: pruned, moved, or "
                                        "never completely written)")
            return evaluate_model(
                str(ckpt), benchmarks, paths.root, kind=model.kind,
                template=data.prompt_template, system_prompt=data.system_prompt,
                gen=gen, limit=ev.limit, timeout_s=ev.timeout_s,
                contamination=data.contamination_report, step=step, attempt=attempt,
                tokenizer_path=tokenizer, backend=engine, gpus=placement.gpus,
                cancel=cancel, on_event=on_event, progress=ProgressEvents(on_event, step), sandbox=ev.sandbox,
                started_detail={"placement": where, **({"job_id": job} if job else {}), "pid": os.getpid()},
            )
        except Exception as exc:  # process boundary: record the failure for the GUI, then re-raise
            on_event("eval_failed", {"step": step, "checkpoint": str(ckpt), "error": f"{type(exc).__name__}: {exc}"})
            raise
    finally:
        if lock_fd is not None:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)


class EvaluationStopped(Exception):
    """SIGTERM (a cancelled or preempted run, Slurm ending the job): recorded as eval_failed, not left as a
    started evaluation that never ends."""


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise EvaluationStopped(f"stopped by signal {signum} (the run was cancelled, preempted or ended)")


def main(argv: list[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    p = argparse.ArgumentParser(prog="python -m remote.job.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--attempt", type=int, default=0)
    args = p.parse_args(argv)
    try:
        records = evaluate_checkpoint(args.run_dir, args.checkpoint, args.step, args.attempt)
    except Exception as exc:  # noqa: BLE001  (process boundary: already recorded as eval_failed)
        print(f"evaluate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for r in records:
        print(f"{r['benchmark']:<14} {r['subset']:<13} n={r['n_tasks']:<4} pass@1={r['pass@1']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
