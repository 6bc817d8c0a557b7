"""Benchmark: training throughput and MFU of the real job on a GPU (skips without one).

    python tests/bench/bench_gpu_throughput.py [--gpus 1] [--steps 25] [--micro-batch 4] [--layers 22]

Runs `remote.job.train` under torchrun twice on a ~1.1B Llama-shaped model built from a config (random init,
nothing downloaded; a byte-level BPE trained on the demo data; 4,000 demo rows): ZeRO-3, bf16, sequence
length 4096, once with packing and the best attention (flash_attention_2 when flash_attn imports, else what
the job falls back to, as its `attention` event says) and once with sdpa and no packing (each micro batch
padded to its longest example). Prints non-padding tokens/s per GPU and MFU for both.

MFU = tokens/s x FLOPs per token / peak, FLOPs per token = 6 x non-embedding parameters + 6 x layers x hidden
x mean example length (causal attention, forward + backward; packed examples attend only within themselves).
Peak: core.config.GPU_PEAK_TFLOPS by device name (H100 SXM / H200 989, H100 PCIe 756, A100 312 TFLOP/s).
Target on one H100: MFU >= 45% for the packed run.
"""

from __future__ import annotations

import argparse
import json
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
SEQ = 4096
WARMUP_STEPS = 5


def peak_tflops(device_name: str) -> float | None:
    from core.config import GPU_PEAK_TFLOPS

    name = device_name.upper()
    if "H100" in name:
        return GPU_PEAK_TFLOPS["H100-PCIe"] if "PCIE" in name else GPU_PEAK_TFLOPS["H100-80GB"]
    for key, value in GPU_PEAK_TFLOPS.items():
        if key.split("-")[0] in name:
            return value
    return None


def run_config(arch: dict[str, Any], args: argparse.Namespace, attention: str, packing: bool) -> tuple[dict[str, Any], Any]:
    from core.config import resolved_dict, validate_data
    from core.presets import load_preset

    data = load_preset("tiny-demo").model_dump(mode="json")
    data["name"] = f"throughput {attention} packing={packing}"
    data["model"]["architecture"] = arch
    data["data"]["demo"] = {"n_examples": 4000, "plant_humaneval": 0, "seed": 0}
    data["training"].update({
        "max_steps": args.steps, "save_steps": args.steps, "max_seq_length": args.seq, "packing": packing, "bf16": True,
        "micro_batch_size": args.micro_batch, "gradient_accumulation_steps": 1, "learning_rate": 1e-4,
        "gradient_checkpointing": args.gradient_checkpointing, "logging_steps": 1,
    })
    data["attention"] = {"implementation": attention, "fallback": "sdpa"}
    data["cluster"] = {"nodes": 1, "gpus_per_node": args.gpus, "gpu_type": "H100-80GB"}
    data["evaluation"]["when"] = "never"
    config, problems = validate_data(data)
    if problems:
        raise SystemExit("bad benchmark config: " + "; ".join(f"{p.path}: {p.message}" for p in problems))
    return resolved_dict(config), config


def run_job(root: Path, arch: dict[str, Any], args: argparse.Namespace, attention: str, packing: bool) -> dict[str, Any]:
    from core.plan import render_ds_config
    from core.records import RunPaths, read_records
    from remote.job.launch_local import job_command, job_env

    paths = RunPaths(root)
    root.mkdir(parents=True)
    resolved, config = run_config(arch, args, attention, packing)
    paths.config_json.write_text(json.dumps(resolved, indent=1))
    paths.ds_config.write_text(json.dumps(render_ds_config(config), indent=1))
    env = job_env(REPO_ROOT)
    env["TUNEDECK_NO_EVAL"] = "1"
    t0 = time.time()
    with open(root / "job.log", "wb") as log:
        rc = subprocess.call(job_command(root, args.gpus), env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    if rc != 0:
        print((root / "job.log").read_text(errors="replace")[-6000:])
        raise SystemExit(f"job failed ({rc}) for attention={attention} packing={packing}")
    metrics, _ = read_records(paths.metrics, "metrics")
    events, _ = read_records(paths.events, "events")
    warm = next(m for m in metrics if m["step"] == WARMUP_STEPS)
    last = metrics[-1]
    tokens_per_s = (last["tokens"] - warm["tokens"]) / (last["t"] - warm["t"])
    used = next(e["detail"] for e in events if e["event"] == "attention")
    return {"tokens_per_s": tokens_per_s, "attention": used["used"], "reason": used["reason"], "wall_s": wall,
            "gpu_mem_gb": max((m.get("gpu_mem_gb") or 0) for m in metrics), "steps": last["step"]}


def mean_example_tokens(root: Path, seq: int) -> float:
    """Mean tokens per demo example with the trained tokenizer (for the attention FLOPs)."""
    from transformers import AutoTokenizer

    from remote.job import demo_data
    from remote.job.callbacks import TOKENIZER_DIR
    from remote.job.templates import format_prompt

    tok = AutoTokenizer.from_pretrained(root / TOKENIZER_DIR)
    rows = demo_data.generate(400, 0, 0)
    texts = [format_prompt("phind", r["instruction"], "You are an intelligent programming assistant.") + r["answer"] for r in rows]
    return sum(min(seq, len(tok(t)["input_ids"]) + 1) for t in texts) / len(texts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--micro-batch", type=int, default=4, help="packed rows (or examples without packing) per GPU")
    parser.add_argument("--layers", type=int, default=ONE_B["num_hidden_layers"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--keep", default=None, help="keep the run directories under this path")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="check the script itself on CPU: the tiny preset's shape, seq 256, 2 processes (no MFU)")
    args = parser.parse_args(argv)
    args.seq = SEQ

    import torch

    if args.cpu_smoke:
        from core.presets import load_preset

        arch = load_preset("tiny-demo").model.architecture.model_dump()
        args.seq, args.gpus, args.steps = 256, 2, max(args.steps, WARMUP_STEPS + 3)
        device, peak = "cpu", None
    elif not torch.cuda.is_available():
        print("SKIP bench_gpu_throughput: no CUDA GPU on this machine (run it where a GPU is lent)")
        return 0
    else:
        device = torch.cuda.get_device_name(0)
        peak = peak_tflops(device)
        arch = {**ONE_B, "num_hidden_layers": args.layers}
    from core.config import LlamaArchitecture

    n_params = LlamaArchitecture(**arch).parameter_count()
    non_embed = n_params - arch["vocab_size"] * arch["hidden_size"]
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tunedeck-throughput-"))
    print(f"device: {device} x{args.gpus}; peak {peak} TFLOP/s bf16; model {n_params / 1e9:.2f}B params; seq {args.seq}; "
          f"micro batch {args.micro_batch}; gradient checkpointing {args.gradient_checkpointing}")
    results = {}
    for label, attention, packing in (("best", "flash_attention_2", True), ("baseline", "sdpa", False)):
        results[label] = run_job(base / label, arch, args, attention, packing)
    ctx = mean_example_tokens(base / "best", args.seq)
    flops_per_token = 6 * non_embed + 6 * arch["num_hidden_layers"] * arch["hidden_size"] * ctx
    print(f"mean example length {ctx:.0f} tokens; {flops_per_token / 1e9:.2f} GFLOP per token")
    for label, r in results.items():
        per_gpu = r["tokens_per_s"] / args.gpus
        mfu = per_gpu * flops_per_token / (peak * 1e12) if peak else float("nan")
        print(f"[{label}] attention={r['attention']} ({r['reason']}); packing={label == 'best'}: "
              f"{per_gpu:,.0f} tokens/s/GPU, MFU {mfu:.1%}, peak mem {r['gpu_mem_gb']:.1f} GB, wall {r['wall_s']:.0f} s")
    ratio = results["best"]["tokens_per_s"] / results["baseline"]["tokens_per_s"]
    print(f"best / baseline throughput: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
