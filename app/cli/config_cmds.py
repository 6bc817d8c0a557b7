"""`tunedeck presets`, `tunedeck config new|validate|render` and `tunedeck estimate`.

Exit codes: 0 ok, 1 invalid config, 2 usage error (bad arguments, a file that would be overwritten).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from app.cli.errors import CliError

EXIT_INVALID = 1
CHARS_PER_TOKEN = 3.5  # Code Llama's tokenizer on code and English prose: ~3-4 characters per token


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("presets", help="List the shipped run presets.")
    p.set_defaults(handler=cmd_presets)

    config = subparsers.add_parser("config", help="Create, validate and render run configs.")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    config.set_defaults(handler=lambda args: _help(config))

    new = config_sub.add_parser("new", help="Write a new run config from a preset.")
    new.add_argument("--preset", required=True, help="Preset name (see `tunedeck presets`).")
    new.add_argument("-o", "--output", required=True, type=Path, help="YAML file to write.")
    new.add_argument("--force", action="store_true", help="Overwrite the file if it exists.")
    new.set_defaults(handler=cmd_config_new)

    validate = config_sub.add_parser("validate", help="Check a run config; print every problem with its line.")
    validate.add_argument("file", type=Path)
    validate.set_defaults(handler=cmd_config_validate)

    render = config_sub.add_parser("render", help="Write the launch plan (DeepSpeed JSON, hostfile, scripts).")
    render.add_argument("file", type=Path)
    render.add_argument("--out", required=True, type=Path, help="Directory to write the files into.")
    render.add_argument("--run-dir", help="Absolute run directory ON THE TARGET machine (default: --out, absolute).")
    render.add_argument("--backend", choices=("slurm", "hostfile", "local"), default="slurm",
                        help="Which launch.sh to write (launch.slurm is written whenever it can be).")
    render.add_argument("--run-id", help="Run id (default: the --out directory's name).")
    render.add_argument("--hosts", help="Comma-separated hosts for the hostfile (default: localhost for one "
                        "node, else placeholders node1..nodeN).")
    render.add_argument("--python", default="python3", help="Python interpreter on the target.")
    render.add_argument("--env-setup", default="", help="Shell snippet that activates the training environment.")
    render.add_argument("--master-port", type=int, default=29500)
    render.add_argument("--partition")
    render.add_argument("--account")
    render.add_argument("--qos")
    render.add_argument("--time", dest="time_limit", help="Slurm time limit, e.g. 04:00:00.")
    render.set_defaults(handler=cmd_config_render)

    est = subparsers.add_parser("estimate", help="Pre-flight estimate: memory per GPU, steps, time.")
    est.add_argument("file", type=Path)
    est.add_argument("--mfu", type=float, default=None, help="Model FLOPs utilisation (default 0.40).")
    est.add_argument("--data", nargs="+", type=Path, metavar="PATH",
                     help="Training data (JSONL/JSON/Parquet/CSV files or a saved dataset dir) to count examples and characters.")
    est.add_argument("--calibrate", metavar="RUN",
                     help="A run in the run store (id or unique prefix) on the same GPU type: its measured tokens/s "
                          "per GPU replaces the assumed MFU (both times are printed).")
    est.set_defaults(handler=cmd_estimate)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _load(path: Path):
    """Load a config or print every problem (`file:line:col: field: message`) and raise exit 1."""
    from core.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.format(exc.source), file=sys.stderr)
        n = len(exc.problems)
        raise CliError(f"{n} problem{'s' if n != 1 else ''} in {path}", EXIT_INVALID) from None


def cmd_presets(args: argparse.Namespace) -> int:
    from core.presets import load_preset, preset_names, preset_summary

    rows = []
    for name in preset_names():
        cfg = load_preset(name)
        c = cfg.cluster
        shape = f"{c.nodes}x{c.gpus_per_node} {c.gpu_type}"
        description = preset_summary(name)
        rows.append((name, cfg.model.name_or_path, cfg.model.kind, shape, description))
    headers = ("NAME", "MODEL", "KIND", "CLUSTER", "DESCRIPTION")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(4)]
    room = max(30, shutil.get_terminal_size((160, 24)).columns - sum(widths) - 8)
    for row in [headers, *rows]:
        desc = row[4] if len(row[4]) <= room else row[4][: room - 3] + "..."
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + desc)
    return 0


def cmd_config_new(args: argparse.Namespace) -> int:
    from core.fsutil import atomic_write_text
    from core.presets import PresetError, preset_path

    try:
        source = preset_path(args.preset)
    except PresetError as exc:
        raise CliError(str(exc)) from None
    out: Path = args.output
    if out.exists() and not args.force:
        raise CliError(f"{out} exists; pass --force to overwrite it")
    if out.is_dir():
        raise CliError(f"{out} is a directory")
    # The preset's own text (comments included) is the new config; it validates as shipped.
    atomic_write_text(out, source.read_text(encoding="utf-8"))
    print(f"wrote {out} (preset {args.preset}); check it with `tunedeck config validate {out}`")
    return 0


def _summary(cfg) -> str:
    c, t = cfg.cluster, cfg.training
    return (
        f"{cfg.name!r}: model {cfg.model.name_or_path} ({cfg.model.kind}), world size {cfg.world_size} "
        f"({c.nodes} node{'s' if c.nodes != 1 else ''} x {c.gpus_per_node} {c.gpu_type}), "
        f"global batch {cfg.global_batch} = micro batch {t.micro_batch_size} x accumulation "
        f"{cfg.gradient_accumulation} x {cfg.world_size}, seq {t.max_seq_length}, ZeRO stage {cfg.deepspeed.zero_stage}"
    )


def cmd_config_validate(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    print(f"OK: {args.file}: {_summary(cfg)}")
    return 0


def cmd_config_render(args: argparse.Namespace) -> int:
    from core.plan import LaunchContext, PlanError, describe_nodes, placement_plan, write_plan

    cfg = _load(args.file)
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: exists and is not a directory (the plan is several files: give a directory)")
    run_dir = args.run_dir or str(out.resolve())
    nodes = cfg.cluster.nodes
    if args.hosts:
        hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    else:
        hosts = ["localhost"] if nodes == 1 else [f"node{i}" for i in range(1, nodes + 1)]
        if nodes > 1:
            print(f"note: hostfile uses placeholder hosts node1..node{nodes}; pass --hosts to name them")
    try:
        ctx = LaunchContext(
            run_id=args.run_id or out.resolve().name,
            run_dir=run_dir,
            backend=args.backend,
            env_setup=args.env_setup,
            python=args.python,
            master_port=args.master_port,
            partition=args.partition,
            account=args.account,
            qos=args.qos,
            time_limit=args.time_limit,
            hosts=hosts,
        )
        written = write_plan(cfg, ctx, out)
    except PlanError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"--out {out}: cannot write the plan: {exc.strerror or exc} ({exc.filename or out})") from None
    print(f"wrote the launch plan for {cfg.name!r} (run dir on target: {run_dir}):")
    for path in written.values():
        print(f"  {path}")
    print(placement_plan(cfg, ctx).describe())  # where the evaluations go on this backend, and why
    print(f"where the ranks run ({args.backend}):")
    for line in describe_nodes(cfg, ctx):
        print(f"  {line}")
    return 0


def _count_data(paths: list[Path], cfg):
    """DatasetStats from files: rows counted and characters of the prompt fields / CHARS_PER_TOKEN."""
    from tqdm import tqdm

    from core import datafiles
    from core.estimate import DatasetStats

    fields = [cfg.data.instruction_field, cfg.data.answer_field]
    if cfg.data.system_field:
        fields.append(cfg.data.system_field)
    rows = chars = 0
    for path in paths:
        try:  # the reader training uses (core/datafiles.py): a file counted here is a file the job can read
            ds = datafiles.load_dataset([path])
        except datafiles.DataFileError as exc:
            raise CliError(str(exc)) from None
        missing = [f for f in fields if f not in ds.column_names]
        if missing:
            raise CliError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(ds.column_names)}); "
                           "set data.instruction_field / data.answer_field")
        with tqdm(total=len(ds), desc=f"counting {path.name}", unit="rows", file=sys.stderr) as bar:
            for batch in ds.select_columns(fields).iter(batch_size=4096):
                n = len(batch[fields[0]])
                rows += n
                chars += sum(len(v or "") for f in fields for v in batch[f])
                bar.update(n)
    if rows == 0:
        raise CliError("the data has no rows")
    source = f"{', '.join(str(p) for p in paths)} ({chars:,} characters / {CHARS_PER_TOKEN} chars per token)"
    return DatasetStats(num_samples=rows, total_tokens=round(chars / CHARS_PER_TOKEN), source=source)


def _calibration(run_id: str):
    """The measured speed of a run in the run store (its config, metrics and `started` event)."""
    from core.estimate import calibration_from_run
    from core.store import Store, UnknownRunError
    from remote.runs import get_run

    with Store() as store:
        try:
            row = get_run(store, run_id)
        except UnknownRunError as exc:
            raise CliError(str(exc)) from None
        config = row.config()
        if not config:
            raise CliError(f"run {row.run_id} has no stored config to calibrate from")
        calibration = calibration_from_run(row.run_id, config, store.metrics(row.run_id), store.events(row.run_id))
    if row.status != "finished":
        print(f"note: run {row.run_id} is {row.status}; its {calibration.steps} logged steps are used", file=sys.stderr)
    return calibration


def cmd_estimate(args: argparse.Namespace) -> int:
    from core.estimate import DEFAULT_MFU, EstimateError, estimate, format_estimate

    cfg = _load(args.file)
    mfu = DEFAULT_MFU if args.mfu is None else args.mfu
    if not 0 < mfu <= 1:
        raise CliError(f"--mfu must be in (0, 1], got {mfu}")
    stats = _count_data(args.data, cfg) if args.data else None
    try:
        calibration = _calibration(args.calibrate) if args.calibrate else None
        est = estimate(cfg, stats, mfu=mfu, calibration=calibration)
    except EstimateError as exc:
        raise CliError(str(exc), EXIT_INVALID) from None
    print(f"Estimate for {args.file}: {cfg.name}")
    print(format_estimate(est), end="")
    return 0
