"""Benchmark: the training job's throughput against a hand-written DeepSpeed loop on the same model and batch.

    python tests/bench/bench_gpu_throughput.py [--gpus 1] [--steps 20] [--micro-batch 4] [--layers 22] [--seq 4096]
                                               [--gradient-checkpointing] [--keep DIR]
    python tests/bench/bench_gpu_throughput.py --cpu-smoke      # the same three arms on the CPU, 2 gloo ranks

Three arms, one after the other, in this one invocation, on the same model (TinyLlama-1.1B's shape, random
init, nothing downloaded), the same data (the built-in demo rows in the phind template, a byte-level BPE
trained on them by the first arm and reused by the others), the same micro batch and sequence length, ZeRO-3:

  job        `remote.job.train` under torchrun, packing on, attention as the job picks it (FlashAttention-2's
             varlen kernel where flash-attn imports, else packed rows with a block-diagonal mask per row; its
             `attention` event says which and why);
  reference  a minimal hand-written loop in this file (deepspeed.initialize, engine.backward/step; no Trainer, no
             callbacks): the same rows of max_seq_length packed by its own first-fit, positions restarting per
             document, the same attention kernel and path, the same AdamW as the job's `performance` event says;
  unpacked   the job with packing off (each micro batch padded to its longest example).

For each: tokens/s per GPU (real tokens, after WARMUP_STEPS), MFU against the datasheet peak and against a bf16
matmul measured in this run (on the CPU: an fp32 matmul on one thread per rank, the precision and threads the
ranks train with), peak memory (GPU: max allocated; CPU: the ranks' peak RSS), and last `job / reference: R.RRx`.

MFU counts useful FLOPs per real token: 6 x parameters without the input embedding, plus causal attention
within documents, 6 x layers x hidden x (token-weighted mean document length + 1); masked or padded work is
not useful work. Peak: core.config.GPU_PEAK_TFLOPS by device name (H100 SXM / H200 989 TFLOP/s, A100 312).

The job arms are stopped with SIGKILL once they have logged --steps steps (no final checkpoint: a 1.1B ZeRO-3
checkpoint would write ~15 GB). On a GPU they run under tests/bench/sync_probe.py, which counts the host-device
synchronisations of three untimed warm-up steps by source line (printed under the table). One H200: ~4-5
minutes in all, start-ups included (tests/bench/gpu_bench.sh carries the wheels such a machine lacks).
Targets: on a GPU, job >= 0.9 x reference and packed MFU >= 35% (sdpa rows) / 45% (flash-attn); on the CPU,
job / reference >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

ONE_B = {  # TinyLlama-1.1B's shape (Llama-2 architecture, grouped-query attention)
    "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
    "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 4096, "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
CPU_SMOKE = {  # small, but a shape where attention matters: seq 1024 with hidden 256
    "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 1024, "max_position_embeddings": 1024, "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
WARMUP_STEPS = 5
CPU_WARMUP_STEPS = 2
SYSTEM = "You are an intelligent programming assistant."
ARM_TIMEOUT_S = 420
SYNC_PROBE = Path(__file__).resolve().with_name("sync_probe.py")


# ------------------------------------------------------------------------------------------------ setup


def peak_tflops(device_name: str) -> float | None:
    from core.config import GPU_PEAK_TFLOPS

    name = device_name.upper()
    if "H100" in name:
        return GPU_PEAK_TFLOPS["H100-PCIe"] if "PCIE" in name else GPU_PEAK_TFLOPS["H100-80GB"]
    for key, value in GPU_PEAK_TFLOPS.items():
        if key != "cpu" and key.split("-")[0] in name:
            return value
    return None


def measured_matmul_tflops(cuda: bool) -> float:
    """Dense matmul throughput on this device, measured now: bf16 8192^3 on a GPU; fp32 1024^3 on one CPU
    thread (what each CPU rank trains with)."""
    import torch

    if cuda:
        n, dtype, iters = 8192, torch.bfloat16, 20
        a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        torch.cuda.synchronize()
        return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n, iters = 1024, 10
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12
    finally:
        torch.set_num_threads(threads)


def job_config(arch: dict[str, Any], args: argparse.Namespace, packing: bool) -> Any:
    from core.config import validate_data
    from core.presets import load_preset

    data = load_preset("tiny-demo").model_dump(mode="json")
    data["name"] = f"throughput packing={packing}"
    data["model"]["architecture"] = arch
    data["data"]["demo"] = {"n_examples": args.examples, "plant_humaneval": 0, "seed": 0}
    steps = args.steps + 1000  # never reached: the bench stops the job after --steps logged steps
    data["training"].update({
        "max_steps": steps, "save_steps": steps, "max_seq_length": args.seq, "packing": packing, "bf16": True,
        "micro_batch_size": args.micro_batch, "gradient_accumulation_steps": 1, "learning_rate": 1e-4,
        "warmup_steps": 0, "gradient_checkpointing": args.gradient_checkpointing, "logging_steps": 1,
    })
    data["attention"] = {"implementation": "flash_attention_2", "fallback": "sdpa"}
    data["cluster"] = {"nodes": 1, "gpus_per_node": args.gpus, "gpu_type": "H100-80GB" if not args.cpu_smoke else "cpu"}
    data["evaluation"]["when"] = "never"
    config, problems = validate_data(data)
    if config is None:
        raise SystemExit("bad benchmark config: " + "; ".join(f"{p.path}: {p.message}" for p in problems))
    return config


def arm_env() -> dict[str, str]:
    from remote.job.launch_local import job_env

    env = job_env(REPO_ROOT)
    env["TUNEDECK_NO_EVAL"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun sets it to 1 per rank anyway; the reference gets the same
    return env


def process_tree(root_pid: int) -> list[int]:
    """A process and its descendants (torchrun starts each rank in a session of its own, so killing
    torchrun's process group would leave the ranks running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    tree, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_peak_rss_gb(pids: list[int]) -> float:
    """Largest peak RSS (VmHWM) among these processes (CPU runs)."""
    peak = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak / 1e6


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    for pid in reversed(process_tree(proc.pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_arm(cmd: list[str], root: Path, until: Any, label: str, timeout_s: float,
            env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run `cmd` in its own session until `until()` is true (then SIGKILL the group) or it exits.
    Returns (wall seconds, peak RSS GB of its process tree)."""
    t0 = time.time()
    peak = 0.0
    with open(root / f"{label}.log", "wb") as log:
        proc = subprocess.Popen(cmd, env={**arm_env(), **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=root)
        try:
            while proc.poll() is None:
                peak = max(peak, tree_peak_rss_gb(process_tree(proc.pid)))
                if until():
                    kill_tree(proc)
                    break
                if time.time() - t0 > timeout_s:
                    kill_tree(proc)
                    print((root / f"{label}.log").read_text(errors="replace")[-6000:])
                    raise SystemExit(f"[{label}] no result within {timeout_s:.0f} s")
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
    if not until():
        print((root / f"{label}.log").read_text(errors="replace")[-6000:])
        raise SystemExit(f"[{label}] ended (status {proc.returncode}) without a result")
    return time.time() - t0, peak


# ---------------------------------------------------------------------------------------------- job arms


def run_job(root: Path, arch: dict[str, Any], args: argparse.Namespace, packing: bool, label: str) -> dict[str, Any]:
    from core.config import resolved_dict
    from core.plan import render_ds_config
    from core.records import RunPaths, read_records
    from remote.job.launch_local import job_command

    paths = RunPaths(root)
    root.mkdir(parents=True)
    config = job_config(arch, args, packing)
    paths.config_json.write_text(json.dumps(resolved_dict(config), indent=1))
    paths.ds_config.write_text(json.dumps(render_ds_config(config), indent=1))
    target = args.steps

    def done() -> bool:
        metrics, _ = read_records(paths.metrics, "metrics") if paths.metrics.exists() else ([], 0)
        return any(m["step"] >= target for m in metrics)

    cmd, env = job_command(root, args.gpus), {}
    if not args.cpu_smoke:  # on a GPU: the job under the sync audit (tests/bench/sync_probe.py), same entry point
        assert cmd[-3:] == ["-m", "remote.job.train", str(root)], cmd
        cmd, env = [*cmd[:-3], str(SYNC_PROBE), str(root)], {"TUNEDECK_SYNC_AUDIT": str(root / "sync-audit")}
    wall, rss = run_arm(cmd, root, done, label, args.arm_timeout, env)
    metrics, _ = read_records(paths.metrics, "metrics")
    events, _ = read_records(paths.events, "events")
    warm = next(m for m in metrics if m["step"] == args.warmup)
    last = max((m for m in metrics if m["step"] <= target), key=lambda m: m["step"])
    steps = last["step"] - warm["step"]
    attention = next(e["detail"] for e in events if e["event"] == "attention")
    performance = next(e["detail"] for e in events if e["event"] == "performance")
    return {"tokens_per_s": (last["tokens"] - warm["tokens"]) / (last["t"] - warm["t"]),
            "tokens_per_step": (last["tokens"] - warm["tokens"]) / steps, "steps": steps,
            "step_s": (last["t"] - warm["t"]) / steps, "wall_s": wall, "rss_gb": rss,
            "gpu_mem_gb": max((m.get("gpu_mem_gb") or 0.0) for m in metrics),
            "attention": attention["used"], "path": attention["path"], "reason": attention["reason"],
            "optimizer": performance["optimizer"]["used"], "liger": performance["liger_kernel"]["used"],
            "syncs": json.loads(audit.read_text()) if (audit := root / "sync-audit.rank0.json").exists() else None}


# ------------------------------------------------------------------------------------------- reference


def run_reference(root: Path, job_dir: Path, args: argparse.Namespace, job: dict[str, Any]) -> dict[str, Any]:
    root.mkdir(parents=True)
    out = root / "result.json"
    spec = {"job_dir": str(job_dir), "out": str(out), "steps": args.steps, "warmup": args.warmup,
            "micro_batch": args.micro_batch, "seq": args.seq, "attention": job["attention"], "path": job["path"],
            "gradient_checkpointing": args.gradient_checkpointing, "examples": args.examples}
    (root / "spec.json").write_text(json.dumps(spec))
    from remote.job.launch_local import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.gpus), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), str(Path(__file__).resolve()), "--reference-worker",
           str(root / "spec.json")]
    wall, rss = run_arm(cmd, root, out.exists, "reference", args.arm_timeout)
    time.sleep(0.2)
    return {**json.loads(out.read_text()), "wall_s": wall, "rss_gb": rss}


def first_fit_rows(docs: list[list[int]], seq: int) -> list[list[list[int]]]:
    """Documents (each at most seq tokens) packed first-fit decreasing into rows of at most seq tokens."""
    rows: list[list[list[int]]] = []
    room: list[int] = []
    for doc in sorted(docs, key=len, reverse=True):
        for i, free in enumerate(room):
            if len(doc) <= free:
                rows[i].append(doc)
                room[i] -= len(doc)
                break
        else:
            rows.append([doc])
            room.append(seq - len(doc))
    return rows


def reference_worker(spec_path: str) -> None:
    """The minimal hand-written ZeRO-3 loop (one process per rank, under torchrun)."""
    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import AutoTokenizer
    from transformers.integrations import HfDeepSpeedConfig

    from core.config import load_resolved_json
    from remote.job import demo_data, tiny_model
    from remote.job.templates import format_completion, format_prompt

    spec = json.loads(Path(spec_path).read_text())
    cuda = torch.cuda.is_available()
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    job_dir = Path(spec["job_dir"])
    cfg = load_resolved_json(job_dir / "config.json")
    assert cfg.model.architecture is not None
    arch, seq, micro = cfg.model.architecture, spec["seq"], spec["micro_batch"]
    tokenizer = AutoTokenizer.from_pretrained(job_dir / "tokenizer")  # the job arm's trained tokenizer

    texts = [format_prompt("phind", r["instruction"], SYSTEM) + format_completion("phind", r["answer"])
             for r in demo_data.generate(spec["examples"], 0, 0)]
    docs = [[*ids, tokenizer.eos_token_id][:seq] for ids in tokenizer(texts)["input_ids"]]
    rows = first_fit_rows(docs, seq)[rank::world]
    needed = (spec["steps"] + 1) * micro
    rows = (rows * (needed // max(len(rows), 1) + 1))[:needed]

    bf16 = cuda and torch.cuda.is_bf16_supported()
    h = arch.hidden_size
    ds_config = {
        "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1, "train_batch_size": micro * world,
        "gradient_clipping": 1.0, "bf16": {"enabled": bf16}, "steps_per_print": 10**9, "wall_clock_breakdown": False,
        "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
                              "reduce_bucket_size": h * h, "stage3_prefetch_bucket_size": int(0.9 * h * h),
                              "stage3_param_persistence_threshold": 10 * h, "stage3_max_live_parameters": 10**9,
                              "stage3_max_reuse_distance": 10**9, "sub_group_size": 10**9},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
                                                  "torch_adam": True, **({"fused": True} if cuda else {})}},
    }
    attention, path = spec["attention"], spec["path"]
    torch.manual_seed(0)
    # transformers' documented non-Trainer ZeRO-3 integration: while this object lives, from_config builds the
    # model inside deepspeed.zero.Init (each rank only ever holds its partition)
    zero3 = HfDeepSpeedConfig(ds_config)
    model = tiny_model.build_random_model(arch, tokenizer, attention, torch.bfloat16 if bf16 else torch.float32)
    model.config.use_cache = False
    if spec["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)

    def batch(chunk: list[list[list[int]]]) -> tuple[dict[str, Any], int]:
        lengths = [[len(d) for d in row] for row in chunk]
        tokens = sum(map(sum, lengths))
        if path == "varlen":  # one flat row; the documents' boundaries as the varlen kernel's kwargs
            flat = [t for row in chunk for d in row for t in d]
            docs_len = [n for row in lengths for n in row]
            cu = torch.tensor([0, *torch.tensor(docs_len).cumsum(0).tolist()], dtype=torch.int32)
            ids = torch.tensor([flat])
            pos = torch.cat([torch.arange(n) for n in docs_len])[None]
            return {"input_ids": ids, "position_ids": pos, "labels": ids.masked_fill(pos == 0, -100),
                    "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(docs_len),
                    "max_length_k": max(docs_len)}, tokens
        width = -(-max(map(sum, lengths)) // 8) * 8
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        pos = torch.zeros((len(chunk), width), dtype=torch.long)
        doc = torch.full((len(chunk), width), -1)
        for b, row in enumerate(chunk):
            start = 0
            for d, tokens_of_doc in enumerate(row):
                n = len(tokens_of_doc)
                ids[b, start:start + n] = torch.tensor(tokens_of_doc)
                pos[b, start:start + n] = torch.arange(n)
                doc[b, start:start + n] = d
                start += n
        labels = ids.masked_fill((pos == 0) | (doc < 0), -100)
        return {"input_ids": ids, "position_ids": pos, "labels": labels, "document_ids": doc}, tokens

    def to_device(inputs: dict[str, Any]) -> dict[str, Any]:
        out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in inputs.items()}
        doc = out.pop("document_ids", None)
        if doc is not None:  # block-diagonal causal mask per row, built on the device
            same = (doc[:, :, None] == doc[:, None, :]) & torch.ones(doc.shape[1], doc.shape[1], dtype=torch.bool,
                                                                     device=device).tril()
            mask = same[:, None]
            if attention == "eager":
                dtype = torch.bfloat16 if bf16 else torch.float32
                mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
            out["attention_mask"] = mask
        return out

    engine.train()
    tokens_timed, t0 = 0, 0.0
    for step in range(1, spec["steps"] + 1):
        inputs, tokens = batch(rows[(step - 1) * micro:step * micro])
        loss = engine(**to_device(inputs)).loss
        engine.backward(loss)
        engine.step()
        if step == spec["warmup"]:
            if cuda:
                torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter()
        elif step > spec["warmup"]:
            tokens_timed += tokens
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    elapsed = time.perf_counter() - t0
    total = torch.tensor([float(tokens_timed)], device=device, dtype=torch.float64)
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0], device=device, dtype=torch.float64)
    dist.all_reduce(total)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    steps = spec["steps"] - spec["warmup"]
    del zero3
    if rank == 0:
        result = {"tokens_per_s": float(total[0]) / elapsed, "tokens_per_step": float(total[0]) / steps,
                  "steps": steps, "step_s": elapsed / steps, "gpu_mem_gb": float(peak[0]), "attention": attention,
                  "path": path, "optimizer": "torch.optim.AdamW" + ("(fused=True)" if cuda else ""),
                  "loss": float(loss)}
        tmp = Path(spec["out"]).with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.rename(spec["out"])
    dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------- main


def token_weighted_document_length(job_dir: Path, args: argparse.Namespace) -> float:
    """Sum(n^2) / sum(n) over the demo documents with the trained tokenizer: the mean length of the document
    a token sits in (causal attention work per token grows with it)."""
    from transformers import AutoTokenizer

    from remote.job import demo_data
    from remote.job.templates import format_completion, format_prompt

    tok = AutoTokenizer.from_pretrained(job_dir / "tokenizer")
    texts = [format_prompt("phind", r["instruction"], SYSTEM) + format_completion("phind", r["answer"])
             for r in demo_data.generate(min(args.examples, 1000), 0, 0)]
    lengths = [min(args.seq, len(ids) + 1) for ids in tok(texts)["input_ids"]]
    return sum(n * n for n in lengths) / sum(lengths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="steps per arm (the first --warmup are not timed)")
    parser.add_argument("--micro-batch", type=int, default=4, help="packed rows (or examples unpacked) per GPU")
    parser.add_argument("--layers", type=int, default=ONE_B["num_hidden_layers"])
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--arms", default="job,reference,unpacked", help="which arms to run (comma-separated)")
    parser.add_argument("--keep", default=None, help="keep the run directories under this path")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="the same three arms on the CPU: hidden 256, 4 layers, seq 1024, micro batch 4, 2 ranks")
    parser.add_argument("--reference-worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference_worker:
        reference_worker(args.reference_worker)
        return 0

    import torch

    cuda = torch.cuda.is_available()
    if args.cpu_smoke:
        arch = dict(CPU_SMOKE)
        args.seq, args.gpus, args.micro_batch = 1024, 2, 4
        args.steps = args.steps if "--steps" in (argv or sys.argv) else 8
        args.warmup, args.examples, args.arm_timeout = CPU_WARMUP_STEPS, 1200, 1500
        device, peak = "cpu (2 gloo ranks, 1 thread each)", None
    elif not cuda:
        print("SKIP bench_gpu_throughput: no CUDA GPU on this machine (run it where a GPU is lent, or --cpu-smoke)")
        return 0
    else:
        arch = {**ONE_B, "num_hidden_layers": args.layers, "max_position_embeddings": max(4096, args.seq)}
        args.warmup, args.examples, args.arm_timeout = WARMUP_STEPS, 4000, ARM_TIMEOUT_S
        device = torch.cuda.get_device_name(0)
        peak = peak_tflops(device)
    if args.steps <= args.warmup:
        raise SystemExit(f"--steps must exceed the {args.warmup} warm-up steps")
    matmul = measured_matmul_tflops(cuda and not args.cpu_smoke)
    from core.config import LlamaArchitecture

    n_params = LlamaArchitecture(**arch).parameter_count()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tunedeck-throughput-"))
    base.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(f"device: {device} x{args.gpus}; datasheet peak {peak} TFLOP/s; measured matmul {matmul:,.3g} TFLOP/s "
          f"({'bf16 8192^3' if cuda and not args.cpu_smoke else 'fp32 1024^3, 1 thread'}); model {n_params / 1e6:,.1f}M "
          f"params; seq {args.seq}; micro batch {args.micro_batch}; gradient checkpointing {args.gradient_checkpointing}; "
          f"{args.steps} steps per arm, {args.warmup} not timed; runs in {base}", flush=True)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    results: dict[str, dict[str, Any]] = {}
    results["job"] = run_job(base / "job", arch, args, packing=True, label="job")
    print(f"[job] done in {results['job']['wall_s']:.0f} s", flush=True)
    if "reference" in arms:
        results["reference"] = run_reference(base / "reference", base / "job", args, results["job"])
        print(f"[reference] done in {results['reference']['wall_s']:.0f} s", flush=True)
    if "unpacked" in arms:
        results["unpacked"] = run_job(base / "unpacked", arch, args, packing=False, label="unpacked")
        print(f"[unpacked] done in {results['unpacked']['wall_s']:.0f} s", flush=True)

    ctx = token_weighted_document_length(base / "job", args)
    non_embedding = n_params - arch["vocab_size"] * arch["hidden_size"]
    flops_per_token = 6 * non_embedding + 6 * arch["num_hidden_layers"] * arch["hidden_size"] * (ctx + 1)
    print(f"token-weighted mean document length {ctx:,.0f} tokens; {flops_per_token / 1e9:.3f} GFLOP per token")
    print(f"{'arm':<10} {'attention':<22} {'tokens/s/GPU':>13} {'step s':>7} {'tokens/step':>12} {'MFU sheet':>10} "
          f"{'MFU matmul':>11} {'peak mem':>10}  optimizer")
    for label, r in results.items():
        per_gpu = r["tokens_per_s"] / args.gpus
        achieved = per_gpu * flops_per_token / 1e12
        sheet = f"{achieved / peak:.1%}" if peak else "n/a"
        memory = f"{r['gpu_mem_gb']:.1f} GB" if cuda and not args.cpu_smoke else f"{r['rss_gb']:.2f} GB RSS"
        attention = f"{r['attention']} ({r['path']})"
        print(f"{label:<10} {attention:<22} {per_gpu:>13,.0f} {r['step_s']:>7.2f} {r['tokens_per_step']:>12,.0f} "
              f"{sheet:>10} {achieved / matmul:>11.1%} {memory:>10}  {r['optimizer']}")
    print(f"job attention: {results['job']['reason']}; liger kernels: {results['job']['liger']}")
    for label in ("job", "unpacked"):
        audit = results.get(label, {}).get("syncs")
        if audit:
            ours = [s for s in audit["sources"] if s["job_frame"]]
            print(f"[{label}] host-device syncs: {audit['total'] / audit['micro_steps']:.1f} per step "
                  f"({audit['total']} in {audit['micro_steps']} steps); under remote/job: "
                  f"{sum(s['count'] for s in ours)}")
            for source in audit["sources"][:8]:
                print(f"    {source['count']:>4}  {source['where']}"
                      + (f"  (job: {source['job_frame']})" if source["job_frame"] else ""))
    print(f"total wall time {time.time() - started:.0f} s")
    if "unpacked" in results:
        print(f"job / unpacked: {results['job']['tokens_per_s'] / results['unpacked']['tokens_per_s']:.2f}x")
    if "reference" in results:
        print(f"job / reference: {results['job']['tokens_per_s'] / results['reference']['tokens_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
