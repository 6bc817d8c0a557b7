"""The training job: a full supervised fine-tune with TRL's SFTTrainer and DeepSpeed ZeRO-3.

    PYTHONPATH=RUN_DIR/code python -m torch.distributed.run --nproc_per_node N -m remote.job.train RUN_DIR
    PYTHONPATH=RUN_DIR/code deepspeed --num_gpus N --module remote.job.train RUN_DIR
    srun ... python -m torch.distributed.run --nnodes $SLURM_NNODES ... -m remote.job.train RUN_DIR

Reads RUN_DIR/config.json (core.config.resolved_dict) and RUN_DIR/ds_config.json (Trainer "auto" style),
writes metrics.jsonl / events.jsonl / heartbeat (rank 0) and RUN_DIR/checkpoints/checkpoint-N.

Reads top to bottom: settle the hardware (distributed backend, precision, attention), load the data into
prompt/completion columns, tokenizer, model, then let the Trainer do the loop, accumulation, schedule,
packing and checkpoint mechanics. Resume is automatic from the newest COMPLETE checkpoint.

Packing (training.packing): TRL's best-fit-decreasing packing ("bfd") is padding-free: each batch is one flat
row whose position ids restart at every example. With flash_attention_2 the boundaries go to the kernel as
cu_seq_lens; with sdpa/eager transformers builds a block-diagonal causal mask from the position ids. Either
way no token attends across packed examples (sdpa/eager pay an O(L^2) mask per packed row). Examples longer
than max_seq_length are truncated. Without packing each batch is padded to its longest example.

Metrics after a hard kill: steps logged after the last complete checkpoint are trained and logged again by
the next attempt (with its attempt number; the `resumed` event says from which step). Readers keep the
latest attempt per step. Steps up to the resumed checkpoint are never written twice.

SIGTERM (Slurm preemption, scancel, torchrun forwarding it): every rank finishes its step, they agree,
save a complete checkpoint and exit 0. torchrun itself still exits 1 after forwarding a signal, and SIGKILLs
ranks that take longer than its shutdown timeout (30 s) to save; give big models time (Slurm
`--signal=TERM@120`, KillWait). The run directory must be on a filesystem every node shares (attempts file,
tokenizer, checkpoints). Resuming needs the same world size (ZeRO-3 optimizer shards are per rank).

Standard library, the training stack and core.records/core.fsutil/core.evalsets only: shipped with each run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from core.records import RunPaths
from remote.job.templates import chat_messages, format_completion, format_prompt

PACKING_BEHAVIOUR = {
    "flash_attention_2": "padding-free bfd packing; example boundaries passed to FlashAttention-2 as cu_seq_lens "
                         "(from position ids): no attention across packed examples",
    "sdpa": "padding-free bfd packing; transformers builds a block-diagonal causal mask from the restarting "
            "position ids: no attention across packed examples (O(L^2) mask per packed row)",
    "eager": "padding-free bfd packing; block-diagonal causal mask from the restarting position ids: no attention "
             "across packed examples",
}
NO_PACKING = "no packing: each batch padded to its longest example, padding masked"


class JobError(Exception):
    """A problem with the run directory, config or data that the user must fix (said plainly)."""


# ------------------------------------------------------------------------------------------ hardware


def force_gloo_backend() -> None:
    """Make accelerate use gloo on a host without an accelerator (it picks no backend there and every rank
    then trains alone). Only for DeepSpeed without a GPU, and only when launched distributed."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    def _prepare_backend(self: Any, cpu: bool = False, sagemaker_dp: bool = False, backend: str | None = None) -> tuple[str, Any]:
        return "gloo", DistributedType.MULTI_CPU

    PartialState._prepare_backend = _prepare_backend


def choose_attention(requested: str, fallback: str) -> tuple[str, str]:
    """(implementation used, why)."""
    import torch

    if requested != "flash_attention_2":
        return requested, f"{requested} requested"
    if not torch.cuda.is_available():
        return fallback, f"flash_attention_2 requested, no CUDA GPU -> {fallback}"
    try:
        importlib.import_module("flash_attn")
    except ImportError as exc:
        return fallback, f"flash_attention_2 requested, flash_attn not importable ({exc}) -> {fallback}"
    return requested, "flash_attention_2 requested, flash_attn imports and a CUDA GPU is present"


def choose_bf16(wanted: bool) -> tuple[bool, str]:
    import torch

    if not wanted:
        return False, "fp32 (training.bf16 is false)"
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return True, "bf16 (the GPU supports it)"
    if torch.cuda.is_available():
        return False, "fp32: bf16 requested but this GPU lacks bf16"
    return False, "fp32: bf16 requested but there is no GPU (CPU run)"


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "trl", "accelerate", "deepspeed", "datasets", "flash-attn"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def device_summary() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {"device": torch.cuda.get_device_name(0), "gpus_visible": torch.cuda.device_count()}
    return {"device": "cpu", "cpu_threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------- data


def load_rows(data: dict[str, Any], recorder: Any) -> Any:
    """The training rows as a datasets.Dataset, from files, a saved dataset or the demo generator."""
    import datasets

    if data.get("demo"):
        from core.evalsets import EvalSetError
        from remote.job import demo_data

        demo = data["demo"]
        try:
            rows = demo_data.generate(demo["n_examples"], demo.get("plant_humaneval", 0), demo.get("seed", 0))
        except EvalSetError as exc:
            recorder.event("warning", {"message": f"demo data: no HumanEval prompts planted ({exc})"})
            rows = demo_data.generate(demo["n_examples"], 0, demo.get("seed", 0))
        return datasets.Dataset.from_list(rows)
    if data.get("dataset_dir"):
        ds = datasets.load_from_disk(data["dataset_dir"])
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise JobError(f"data.dataset_dir {data['dataset_dir']}: a DatasetDict without a 'train' split ({list(ds)})")
            ds = ds["train"]
        return ds
    files = data.get("train_files") or []
    if not files:
        raise JobError("no training data: set data.train_files, data.dataset_dir or data.demo")
    parts = []
    for path in files:
        suffix = Path(path).suffix.lower()
        builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(suffix)
        if builder is None:
            raise JobError(f"data.train_files: {path}: unsupported file type {suffix!r} (JSONL, JSON, Parquet or CSV)")
        if not Path(path).is_file():
            raise JobError(f"data.train_files: {path}: file not found on this machine")
        parts.append(datasets.load_dataset(builder, data_files=str(path), split="train"))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def to_prompt_completion(ds: Any, data: dict[str, Any], tokenizer: Any | None) -> Any:
    """prompt/completion columns in the configured template (TRL then trains on completion tokens only)."""
    inst, ans, sys_field = data["instruction_field"], data["answer_field"], data.get("system_field")
    for field in (inst, ans) + ((sys_field,) if sys_field else ()):
        if field not in ds.column_names:
            raise JobError(f"data: column {field!r} not in the training data (columns: {ds.column_names}); "
                           f"set data.instruction_field / data.answer_field / data.system_field")
    template = data["prompt_template"]
    default_system = data.get("system_prompt", "")

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        system = (row.get(sys_field) if sys_field else None) or default_system
        if template == "chat-template":
            return {"prompt": chat_messages(row[inst], system),
                    "completion": [{"role": "assistant", "content": row[ans]}]}
        return {"prompt": format_prompt(template, row[inst], system), "completion": format_completion(template, row[ans])}

    if template == "chat-template" and (tokenizer is None or not getattr(tokenizer, "chat_template", None)):
        raise JobError("data.prompt_template is 'chat-template' but the tokenizer has no chat template")
    return ds.map(convert, remove_columns=ds.column_names, desc="formatting")


def tokenizer_texts(ds: Any) -> list[str]:
    return [p + c for p, c in zip(ds["prompt"], ds["completion"], strict=True)]


# --------------------------------------------------------------------------------------------- model


def load_tokenizer(cfg: dict[str, Any], paths: RunPaths, formatted: Any) -> Any:
    from transformers import AutoTokenizer

    from remote.job import tiny_model
    from remote.job.callbacks import TOKENIZER_DIR

    model = cfg["model"]
    spec = model.get("tokenizer") or model["name_or_path"]
    if spec == "train:bpe":
        saved = paths / TOKENIZER_DIR
        if (saved / "tokenizer.json").is_file():  # resumed (or another rank trained it): the same tokenizer
            return AutoTokenizer.from_pretrained(saved)
        return tiny_model.train_bpe_tokenizer(tokenizer_texts(formatted), model["architecture"]["vocab_size"], saved)
    tokenizer = AutoTokenizer.from_pretrained(spec)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_model(cfg: dict[str, Any], tokenizer: Any, attn: str, bf16: bool) -> Any:
    """Call after the TrainingArguments exist: under ZeRO-3 the model is then built partitioned.

    A random-init model depends only on the config: the same training.seed gives the same weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from remote.job import tiny_model

    model_cfg = cfg["model"]
    if model_cfg["init"] == "random":
        # The Trainer seeds only once it exists, after the model: without this a random-init model starts
        # from different weights on every run with the same training.seed.
        from transformers import set_seed

        set_seed(cfg["training"]["seed"])
        model = tiny_model.build_random_model(model_cfg["architecture"], tokenizer, attn)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_cfg["name_or_path"], attn_implementation=attn,
                                                     dtype=torch.bfloat16 if bf16 else torch.float32)
    if cfg["training"]["gradient_checkpointing"]:
        model.config.use_cache = False  # the cache is useless in training and conflicts with recomputation
    return model


# ---------------------------------------------------------------------------------------------- main


def train(paths: RunPaths, cfg: dict[str, Any], recorder: Any, preemption: Any) -> int:
    import torch
    from trl import SFTConfig, SFTTrainer

    from remote.job.callbacks import CheckpointCallback, MetricsCallback, PartitionProbe, read_attempt

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        force_gloo_backend()
    t, derived = cfg["training"], cfg["derived"]
    attn, attn_why = choose_attention(cfg["attention"]["implementation"], cfg["attention"]["fallback"])
    bf16, precision = choose_bf16(t["bf16"])
    recorder.event("started", {"versions": versions(), "world_size": world_size, "precision": precision,
                               "host": platform.node(), **device_summary()})
    recorder.event("attention", {"requested": cfg["attention"]["implementation"], "used": attn, "reason": attn_why,
                                 "packing": t["packing"],
                                 "packing_behaviour": PACKING_BEHAVIOUR[attn] if t["packing"] else NO_PACKING})
    if world_size != derived["world_size"]:
        recorder.event("warning", {"message": f"running with {world_size} processes but the config plans "
                                              f"{derived['world_size']}: the global batch is "
                                              f"{t['micro_batch_size'] * derived['gradient_accumulation_steps'] * world_size}"})

    rows = load_rows(cfg["data"], recorder)  # before the slow distributed start: bad data fails fast
    if not paths.ds_config.is_file():
        raise JobError(f"{paths.ds_config}: missing (the launch bundle writes it)")
    ds_config = json.loads(paths.ds_config.read_text(encoding="utf-8"))
    ds_config["bf16"] = {**ds_config.get("bf16", {}), "enabled": bf16}  # what the hardware allows, not the wish
    if "fp16" in ds_config:
        ds_config["fp16"] = {**ds_config["fp16"], "enabled": False}

    warmup = t["warmup_steps"] if t["warmup_steps"] > 0 else t["warmup_ratio"]
    args = SFTConfig(
        output_dir=str(paths.checkpoints),
        per_device_train_batch_size=t["micro_batch_size"],
        gradient_accumulation_steps=derived["gradient_accumulation_steps"],
        num_train_epochs=t["epochs"],
        max_steps=t["max_steps"] or -1,
        learning_rate=t["learning_rate"],
        lr_scheduler_type=t["lr_scheduler"],
        warmup_steps=warmup,
        weight_decay=t["weight_decay"],
        max_grad_norm=t["max_grad_norm"],
        max_length=t["max_seq_length"],
        packing=t["packing"],
        packing_strategy="bfd",
        gradient_checkpointing=t["gradient_checkpointing"],  # SFTConfig defaults to True: always set
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=bf16,  # SFTConfig defaults to True, which fails on CPU
        fp16=False,
        seed=t["seed"],
        data_seed=t["seed"],
        logging_steps=t["logging_steps"],
        save_strategy="steps",
        save_steps=t["save_steps"],
        save_total_limit=None,  # pruning is ours: the Trainer's would count incomplete checkpoints as kept
        deepspeed=ds_config,
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning needs an accelerator (else a warning per epoch)
        disable_tqdm=True,  # stdout.log gets one line per log instead of a redrawn bar
        log_level="warning",
    )

    with args.main_process_first(local=False, desc="tokenizer"):
        # Rank 0 trains/saves a train:bpe tokenizer first; the others then load the same one. They also
        # learn the attempt number rank 0 wrote at start.
        if recorder.attempt is None:
            recorder.attempt = read_attempt(paths)
        tokenizer = load_tokenizer(cfg, paths, to_prompt_completion(rows, cfg["data"], None)
                                   if cfg["data"]["prompt_template"] != "chat-template" else None)
    dataset = to_prompt_completion(rows, cfg["data"], tokenizer)
    model = load_model(cfg, tokenizer, attn, bf16)

    checkpoints = CheckpointCallback(recorder, paths, cfg, t["save_total_limit"], cfg["evaluation"]["when"])
    callbacks = [preemption, MetricsCallback(recorder, t["micro_batch_size"] * derived["gradient_accumulation_steps"] * world_size),
                 checkpoints]
    if os.environ.get("TUNEDECK_DEBUG_PARTITION") == "1":
        callbacks.append(PartitionProbe(paths))
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)

    resume = paths.complete_checkpoints()
    resume_from = None
    if resume:
        step, resume_from = resume[-1]
        recorder.event("resumed", {"from_step": step, "checkpoint": str(resume_from), "attempt": recorder.attempt})
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    final_step = int(trainer.state.global_step)
    last = checkpoints.last_complete
    if preemption.stopped_at is not None:
        recorder.event("preempted", {"step": final_step, "checkpoint": str(last[1]) if last else None})
        return 0
    # The job ends when the evaluations of its checkpoints have ended too: a finished run then has all its
    # records, and Slurm (which kills a job's leftover processes at its end) never cuts the last one short.
    # The ranks leave the process group first so the others need not wait with rank 0.
    shutdown_distributed()
    unfinished = checkpoints.wait_for_evaluations(float(os.environ.get("TUNEDECK_EVAL_WAIT_S", 6 * 3600)))
    if unfinished:
        recorder.event("warning", {"message": f"evaluations still running at exit: {unfinished}"})
    recorder.event("finished", {"step": final_step, "checkpoint": str(last[1]) if last else None,
                                "train_loss": result.training_loss, "runtime_s": result.metrics.get("train_runtime")})
    return 0


def single_process_defaults() -> None:
    """A plain `python -m remote.job.train RUN_DIR` runs as one process: DeepSpeed needs the torchrun
    variables (without them it looks for MPI and fails with "No module named 'mpi4py'")."""
    if "RANK" in os.environ:
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):
        os.environ.setdefault(key, value)


def shutdown_distributed() -> None:
    """Tear the process group down before exit: left to interpreter shutdown, gloo's threads abort the
    process ("terminate called without an active exception", status -6) after a clean finish."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m remote.job.train", description="TuneDeck training job")
    parser.add_argument("run_dir", help="the run directory (config.json, ds_config.json, records, checkpoints)")
    # The deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    # The launch scripts redirect stdout into stdout.log, which the app tails: no block buffering.
    sys.stdout.reconfigure(line_buffering=True, write_through=True)
    sys.stderr.reconfigure(line_buffering=True)
    paths = RunPaths(Path(args.run_dir).resolve())
    single_process_defaults()
    from remote.job.callbacks import Heartbeat, PreemptionCallback, Recorder, bump_attempt, dist_rank

    preemption = PreemptionCallback()
    preemption.install()  # before the slow imports: a SIGTERM during start-up still ends in a checkpoint
    rank = dist_rank()
    if not paths.config_json.is_file():
        print(f"{paths.config_json}: missing (not a TuneDeck run directory?)", file=sys.stderr)
        return 2
    attempt = bump_attempt(paths) if rank == 0 else None
    recorder = Recorder(paths, attempt, enabled=rank == 0)  # type: ignore[arg-type]
    heartbeat = Heartbeat(paths.heartbeat).start() if rank == 0 else None
    try:
        cfg = json.loads(paths.config_json.read_text(encoding="utf-8"))
        return train(paths, cfg, recorder, preemption)
    except BaseException as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        if recorder.attempt is None:
            from remote.job.callbacks import read_attempt

            recorder.attempt = read_attempt(paths)
        recorder.failure(exc)
        raise
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        recorder.close()
        shutdown_distributed()


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown. Everything of ours is written and closed by now;
    what teardown would add is C++ destructors of threads that torch.distributed, gloo and DeepSpeed
    leave behind, and one of them aborts the process now and then ("terminate called without an active
    exception", status -6) after a clean finish, so the launcher reports a failure for a run that ended
    well (seen here about once in 12 runs, even after destroy_process_group)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run_main() -> None:
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except Exception:  # noqa: BLE001 -- process boundary: main() recorded a "failed" event; log the traceback
        import traceback

        traceback.print_exc()
        code = 1
    exit_now(code)


if __name__ == "__main__":
    run_main()
