"""The training job: a full supervised fine-tune with TRL's SFTTrainer and DeepSpeed ZeRO-3.

    PYTHONPATH=RUN_DIR/code python -m torch.distributed.run --nproc_per_node N -m remote.job.train RUN_DIR
    PYTHONPATH=RUN_DIR/code deepspeed --num_gpus N --module remote.job.train RUN_DIR
    srun ... python -m torch.distributed.run --nnodes $SLURM_NNODES ... -m remote.job.train RUN_DIR

Reads RUN_DIR/config.json into the app's own config schema (core.config.RunConfig, shipped with the job: a
field the job reads and the schema lacks fails a type check in CI, not a run on a cluster) and
RUN_DIR/ds_config.json (Trainer "auto" style); writes metrics.jsonl / events.jsonl / heartbeat (rank 0),
ranks/rank-N.json (every rank: host, step, how it ended) and RUN_DIR/checkpoints/checkpoint-N.

Reads top to bottom: settle the hardware (distributed backend, precision, attention path, optimizer, kernels,
data loading; each choice and its reason is an event), load the data into prompt/completion columns,
tokenizer, model, then let the Trainer do the loop, accumulation, schedule, packing and checkpoint mechanics.
Resume is automatic from the newest COMPLETE checkpoint.

Packing (training.packing): TRL packs examples best-fit-decreasing into rows of max_seq_length. With
FlashAttention-2 the micro batch goes flat to its varlen kernel (cu_seq_lens); with any other kernel the
rows stay rows, each with a block-diagonal causal mask, so attention costs at most micro batch x
max_seq_length^2 and never (micro batch x max_seq_length)^2 (remote/job/packing.py says why). Examples longer
than max_seq_length are truncated. Without packing each batch is padded to its longest example.

Per step the job adds no host-device synchronisation of its own: token counts are ints from the collator,
summed over ranks (on a CPU gloo group) only at logging and saving steps; the preemption flag is agreed on
that group too; the Trainer's NaN filter and TRL's per-step metrics (each a .item()) are off.

Metrics after a hard kill: steps logged after the last complete checkpoint are trained and logged again by
the next attempt (with its attempt number; the `resumed` event says from which step). Readers keep the
latest attempt per step. Steps up to the resumed checkpoint are never written twice.

SIGTERM (Slurm preemption, scancel, torchrun forwarding it): every rank finishes its step, they agree,
save a complete checkpoint and exit 0. torchrun itself still exits 1 after forwarding a signal, and SIGKILLs
ranks that take longer than its shutdown timeout (30 s) to save; give big models time (Slurm
`--signal=TERM@120`, KillWait). The run directory must be on a filesystem every node shares (attempts file,
tokenizer, checkpoints). Resuming needs the same world size (ZeRO-3 optimizer shards are per rank).

Standard library, the training stack and the shipped core modules only (core.config needs pydantic, which
DeepSpeed itself depends on, and PyYAML, which transformers depends on).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core import datafiles
from core.config import DataSection, DeepSpeedSection, RunConfig, load_resolved_json
from core.records import RunPaths
from remote.job.packing import (
    DOCUMENT_IDS_KEY,
    ROWS,
    TOKENS_KEY,
    AttentionChoice,
    CountingCollator,
    PackedRowsCollator,
    block_causal_mask,
    choose_attention,
)
from remote.job.templates import chat_messages, format_completion, format_prompt

DATALOADER_WORKERS_GPU = 2  # collation of packed rows is light; two workers keep a batch ready per step


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

    PartialState._prepare_backend = _prepare_backend  # type: ignore[method-assign]


def choose_bf16(wanted: bool) -> tuple[bool, str]:
    import torch

    if not wanted:
        return False, "fp32 (training.bf16 is false)"
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return True, "bf16 (the GPU supports it)"
    if torch.cuda.is_available():
        return False, "fp32: bf16 requested but this GPU lacks bf16"
    return False, "fp32: bf16 requested but there is no GPU (CPU run)"


@dataclass(frozen=True)
class Choice:
    """One speed-relevant decision of the job, recorded in the `performance` event."""

    used: Any
    reason: str


def fused_adam_prebuilt() -> bool:
    """DeepSpeed's FusedAdam op is compiled into this installation (else using it means a JIT build with
    nvcc at start, minutes on every node, and a crash where nvcc is missing)."""
    try:
        from deepspeed.git_version_info import installed_ops
    except ImportError:
        return False
    return bool(installed_ops.get("fused_adam"))


def choose_optimizer(ds_config: dict[str, Any], deepspeed: DeepSpeedSection, cuda: bool) -> Choice:
    """The fastest AdamW this machine has, written into ds_config's optimizer block (DeepSpeed builds it)."""
    block = ds_config.setdefault("optimizer", {"type": "AdamW", "params": {}})
    params = block.setdefault("params", {})
    if deepspeed.offload_optimizer != "none":
        return Choice("DeepSpeedCPUAdam", f"deepspeed.offload_optimizer is {deepspeed.offload_optimizer!r}: the "
                                          "step runs on the CPU with DeepSpeed's vectorised Adam")
    if cuda and not deepspeed.torch_adam and fused_adam_prebuilt():
        params.pop("torch_adam", None)
        return Choice("deepspeed FusedAdam", "DeepSpeed's FusedAdam op is prebuilt in this installation")
    if cuda:
        params["torch_adam"] = True
        params["fused"] = True  # passed through by DeepSpeed to torch.optim.AdamW
        why = ("deepspeed.torch_adam is true" if deepspeed.torch_adam else
               "DeepSpeed's FusedAdam op is not prebuilt here (a JIT build needs nvcc and minutes per node)")
        return Choice("torch.optim.AdamW(fused=True)", f"{why}; torch's fused AdamW is one kernel per step")
    if deepspeed.torch_adam:
        return Choice("torch.optim.AdamW", "deepspeed.torch_adam is true (CPU run: no op to compile)")
    return Choice("deepspeed Adam (compiled on first use)", "deepspeed.torch_adam is false")


def choose_liger(setting: str, cuda: bool) -> Choice:
    """Liger's Triton kernels for RMSNorm, SwiGLU and RoPE (training.liger_kernel: auto | on | off)."""
    if setting == "off":
        return Choice(False, "training.liger_kernel is 'off'")
    if importlib.util.find_spec("liger_kernel") is None:
        return Choice(False, "the liger-kernel package is not installed"
                             + (" (training.liger_kernel is 'on')" if setting == "on" else ""))
    if not cuda:
        return Choice(False, "liger-kernel needs a CUDA GPU (Triton kernels)")
    return Choice(True, "liger-kernel is installed: its RMSNorm, SwiGLU and RoPE kernels replace the model's; the "
                        "cross-entropy is TRL's fused LM head (TRL refuses Liger's, which replaces model.forward)")


def data_loading(workers: int | None, cuda: bool) -> Choice:
    """Worker processes and pinned memory where a GPU waits for batches; neither on a CPU run (the
    workers would compete with training for the same cores, and pinning needs an accelerator)."""
    n = workers if workers is not None else (DATALOADER_WORKERS_GPU if cuda else 0)
    why = "training.dataloader_workers" if workers is not None else (
        "default on a GPU: batches collate off the training process's critical path" if cuda
        else "default on a CPU run: workers would take cores from training")
    return Choice({"workers": n, "pin_memory": cuda, "persistent_workers": n > 0, "prefetch_factor": 4 if n else None},
                  why)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "trl", "accelerate", "deepspeed", "datasets", "pydantic", "flash-attn",
                 "liger-kernel"):
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


def load_rows(data: DataSection, recorder: Any) -> Any:
    """The training rows as a datasets.Dataset, from files, a saved dataset or the demo generator."""
    import datasets

    if data.demo is not None:
        from core.evalsets import EvalSetError
        from remote.job import demo_data

        demo = data.demo
        try:
            rows = demo_data.generate(demo.n_examples, demo.plant_humaneval, demo.seed)
        except EvalSetError as exc:
            recorder.event("warning", {"message": f"demo data: no HumanEval prompts planted ({exc})"})
            rows = demo_data.generate(demo.n_examples, 0, demo.seed)
        return datasets.Dataset.from_list(rows)
    field = "data.dataset_dir" if data.dataset_dir else "data.train_files"
    paths = [data.dataset_dir] if data.dataset_dir else list(data.train_files)
    if not paths:
        raise JobError("no training data: set data.train_files, data.dataset_dir or data.demo")
    try:  # the same reader as the contamination check and the app (core/datafiles.py)
        return datafiles.load_dataset(paths)
    except datafiles.DataFileError as exc:
        raise JobError(f"{field}: {exc}") from None


def to_prompt_completion(ds: Any, data: DataSection, tokenizer: Any | None) -> Any:
    """prompt/completion columns in the configured template (TRL then trains on completion tokens only)."""
    inst, ans, sys_field = data.instruction_field, data.answer_field, data.system_field
    for field in (inst, ans) + ((sys_field,) if sys_field else ()):
        if field not in ds.column_names:
            raise JobError(f"data: column {field!r} not in the training data (columns: {ds.column_names}); "
                           f"set data.instruction_field / data.answer_field / data.system_field")
    template = data.prompt_template
    default_system = data.system_prompt

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


def load_tokenizer(cfg: RunConfig, paths: RunPaths, formatted: Any) -> Any:
    from transformers import AutoTokenizer

    from remote.job import tiny_model
    from remote.job.callbacks import TOKENIZER_DIR

    model = cfg.model
    spec = model.tokenizer or model.name_or_path
    if spec == "train:bpe":
        saved = paths / TOKENIZER_DIR
        if (saved / "tokenizer.json").is_file():  # resumed (or another rank trained it): the same tokenizer
            return AutoTokenizer.from_pretrained(saved)
        if model.architecture is None:
            raise JobError("model.tokenizer 'train:bpe' needs model.architecture (its vocab_size)")
        return tiny_model.train_bpe_tokenizer(tokenizer_texts(formatted), model.architecture.vocab_size, saved)
    tokenizer = AutoTokenizer.from_pretrained(spec)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_model(cfg: RunConfig, tokenizer: Any, attn: str, bf16: bool) -> Any:
    """Call after the TrainingArguments exist: under ZeRO-3 the model is then built partitioned.

    A random-init model depends only on the config: the same training.seed gives the same weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from remote.job import tiny_model

    model_cfg = cfg.model
    if model_cfg.init == "random":
        if model_cfg.architecture is None:
            raise JobError("model.init is 'random' but model.architecture is not given")
        # The Trainer seeds only once it exists, after the model: without this a random-init model starts
        # from different weights on every run with the same training.seed.
        from transformers import set_seed

        set_seed(cfg.training.seed)
        model = tiny_model.build_random_model(model_cfg.architecture, tokenizer, attn)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_cfg.name_or_path, attn_implementation=attn,
                                                     dtype=torch.bfloat16 if bf16 else torch.float32)
    if cfg.training.gradient_checkpointing:
        model.config.use_cache = False  # the cache is useless in training and conflicts with recomputation
    return model


# ------------------------------------------------------------------------------------------- trainer


def packed_trainer_class() -> type:
    """SFTTrainer with the job's packed-batch handling and without per-step host syncs (built lazily:
    importing trl at module level would slow down every `import remote.job.train`)."""
    from trl import SFTTrainer

    class PackedSFTTrainer(SFTTrainer):
        """TRL's SFTTrainer, plus: the job's collator (TRL refuses a custom one with padding-free packing, so
        it is set after TRL's init), the batch's token count taken on the host, the rows path's mask built
        on the device, and TRL's fused-LM-head loss without its per-step metrics (entropy, token accuracy,
        token count: each a gather and a .item(), i.e. a device sync per micro batch)."""

        def __init__(self, *args: Any, token_counter: Any, attention: AttentionChoice, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.data_collator = job_collator(attention, self.processing_class, self.data_collator)
            self.token_counter = token_counter
            self.attention = attention

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            self.token_counter.add(inputs.pop(TOKENS_KEY, 0))
            return super().training_step(model, inputs, num_items_in_batch)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            document_ids = inputs.pop(DOCUMENT_IDS_KEY, None)
            if document_ids is not None:
                inputs["attention_mask"] = block_causal_mask(document_ids, self.attention.implementation,
                                                             self.model.dtype)
            if return_outputs or not model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            outputs = model(**inputs, use_cache=False, fused_lm_head=True, num_items_in_batch=num_items_in_batch)
            loss = outputs.loss
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as TRL/Trainer: DDP averages the gradients
            return loss

    return PackedSFTTrainer


def job_collator(attention: AttentionChoice, tokenizer: Any, default: Any) -> Any:
    """The rows path's collator, or TRL's own (varlen: padding-free with cu_seq_lens; padded) counting tokens."""
    if attention.path == ROWS:
        return PackedRowsCollator(tokenizer.pad_token_id)
    return CountingCollator(default)


# ---------------------------------------------------------------------------------------------- main


def train(paths: RunPaths, cfg: RunConfig, recorder: Any, preemption: Any, rank_beat: Any = None) -> int:
    import torch
    from trl import SFTConfig

    from remote.job import callbacks as callbacks_module
    from remote.job.callbacks import (
        CheckpointCallback,
        MetricsCallback,
        PartitionProbe,
        TokenCounter,
        gather_ranks,
        read_attempt,
    )

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if not cuda and "LOCAL_RANK" in os.environ:
        force_gloo_backend()
    t = cfg.training
    accumulation = cfg.gradient_accumulation
    attention = choose_attention(cfg.attention.implementation, cfg.attention.fallback, t.packing, cuda)
    bf16, precision = choose_bf16(t.bf16)
    recorder.event("attention", {"requested": cfg.attention.implementation, "used": attention.implementation,
                                 "path": attention.path, "reason": attention.reason, "packing": t.packing,
                                 "packing_behaviour": attention.behaviour})
    if world_size != cfg.world_size:
        recorder.event("warning", {"message": f"running with {world_size} processes but the config plans "
                                              f"{cfg.world_size}: the global batch is "
                                              f"{t.micro_batch_size * accumulation * world_size}"})

    rows = load_rows(cfg.data, recorder)  # before the slow distributed start: bad data fails fast
    if not paths.ds_config.is_file():
        raise JobError(f"{paths.ds_config}: missing (the launch bundle writes it)")
    ds_config = json.loads(paths.ds_config.read_text(encoding="utf-8"))
    ds_config["bf16"] = {**ds_config.get("bf16", {}), "enabled": bf16}  # what the hardware allows, not the wish
    if "fp16" in ds_config:
        ds_config["fp16"] = {**ds_config["fp16"], "enabled": False}
    optimizer = choose_optimizer(ds_config, cfg.deepspeed, cuda)
    liger = choose_liger(t.liger_kernel, cuda)
    loading = data_loading(t.dataloader_workers, cuda)
    if t.liger_kernel == "on" and not liger.used:
        recorder.event("warning", {"message": f"training.liger_kernel is 'on' but it is not used: {liger.reason}"})
    recorder.event("performance", {
        "optimizer": asdict(optimizer), "liger_kernel": asdict(liger), "data_loading": asdict(loading),
        "gradient_checkpointing": t.gradient_checkpointing,
        "host_syncs": "none added per step: token counts and the preemption flag are summed on a CPU gloo group, "
                      "only at logging/saving steps for tokens; TRL's per-step metrics and the NaN filter are off",
    })

    warmup = t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio
    workers = loading.used
    args = SFTConfig(
        output_dir=str(paths.checkpoints),
        per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=warmup,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        max_length=t.max_seq_length,
        packing=t.packing,
        packing_strategy="bfd",
        gradient_checkpointing=t.gradient_checkpointing,  # SFTConfig defaults to True: always set
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=bf16,  # SFTConfig defaults to True, which fails on CPU
        fp16=False,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # its isnan/isinf test is a device sync per micro batch; a NaN shows as NaN
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=None,  # pruning is ours: the Trainer's would count incomplete checkpoints as kept
        deepspeed=ds_config,
        report_to="none",
        include_num_input_tokens_seen="no",  # counted on the host by TokenCounter (the Trainer's syncs per step)
        use_liger_kernel=bool(liger.used),
        dataloader_num_workers=workers["workers"],
        dataloader_pin_memory=workers["pin_memory"],  # pinning needs an accelerator (else a warning per epoch)
        dataloader_persistent_workers=workers["persistent_workers"],
        dataloader_prefetch_factor=workers["prefetch_factor"],
        disable_tqdm=True,  # stdout.log gets one line per log instead of a redrawn bar
        log_level="warning",
        # How long a collective waits for the other ranks: a node that dies without closing its connections
        # (power, network) fails the run after this long instead of hanging it (torch's default is 30 min).
        ddp_timeout=cfg.cluster.collective_timeout_s,
    )
    # The process group exists now (the arguments set it up): every rank says who and where it is.
    callbacks_module.COLLECTIVE_TIMEOUT_S = args.ddp_timeout
    ranks = gather_ranks()
    recorder.event("started", {"versions": versions(), "world_size": world_size, "precision": precision,
                               "host": platform.node(), "hosts": list(dict.fromkeys(r["host"] for r in ranks)),
                               "ranks": ranks, "collective_timeout_s": args.ddp_timeout, **device_summary()})

    with args.main_process_first(local=False, desc="tokenizer"):
        # Rank 0 trains/saves a train:bpe tokenizer first; the others then load the same one. They also
        # learn the attempt number rank 0 wrote at start.
        if recorder.attempt is None:
            recorder.attempt = read_attempt(paths)
        tokenizer = load_tokenizer(cfg, paths, to_prompt_completion(rows, cfg.data, None)
                                   if cfg.data.prompt_template != "chat-template" else None)
    dataset = to_prompt_completion(rows, cfg.data, tokenizer)
    model = load_model(cfg, tokenizer, attention.implementation, bf16)

    checkpoints = CheckpointCallback(recorder, paths, cfg, t.save_total_limit, cfg.evaluation.when)
    tokens = TokenCounter()
    # Order matters: preemption decides should_save before the token counter syncs on saving steps.
    callbacks = [preemption, tokens, MetricsCallback(recorder, t.micro_batch_size * accumulation * world_size),
                 checkpoints]
    if rank_beat is not None:
        callbacks.append(rank_beat)
    if os.environ.get("TUNEDECK_DEBUG_PARTITION") == "1":
        callbacks.append(PartitionProbe(paths))
    trainer_class = packed_trainer_class()
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=callbacks, token_counter=tokens, attention=attention)

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
    from remote.job.callbacks import (
        Heartbeat,
        PreemptionCallback,
        RankHeartbeat,
        Recorder,
        bump_attempt,
        dist_rank,
    )

    preemption = PreemptionCallback()
    preemption.install()  # before the slow imports: a SIGTERM during start-up still ends in a checkpoint
    rank = dist_rank()
    if not paths.config_json.is_file():
        print(f"{paths.config_json}: missing (not a TuneDeck run directory?)", file=sys.stderr)
        return 2
    attempt = bump_attempt(paths) if rank == 0 else None
    recorder = Recorder(paths, attempt, enabled=rank == 0)  # type: ignore[arg-type]
    heartbeat = Heartbeat(paths.heartbeat).start() if rank == 0 else None
    rank_beat = RankHeartbeat(paths, lambda: recorder.attempt).start()  # every rank: host, step, how it ended
    try:
        code = train(paths, load_resolved_json(paths.config_json), recorder, preemption, rank_beat)
        rank_beat.finish("preempted" if preemption.stopped_at is not None else "finished")
        return code
    except BaseException as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            rank_beat.finish("finished")
            raise
        if recorder.attempt is None:
            from remote.job.callbacks import read_attempt

            recorder.attempt = read_attempt(paths)
        recorder.failure(exc)
        rank_beat.finish("failed", f"{type(exc).__name__}: {exc}")
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
