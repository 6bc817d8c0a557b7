"""`tunedeck decontaminate`, `tunedeck decontaminate merge` and `tunedeck data download`.

Exit codes: 0 ok, 2 bad input or usage (the message names the file, line and reason), 130 interrupted.
Nothing is written unless the whole check succeeded (report, ids and cleaned data are renamed into place last).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.errors import CliError

MERGE_WORD = "merge"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "decontaminate",
        help="Check training data for HumanEval/MBPP contamination (OpenAI's 50-character substring method).",
        description="Check training data against eval sets. `tunedeck decontaminate merge PARTIAL... --report OUT` "
        "combines shard reports.",
    )
    p.add_argument("--train", action="append", default=[], metavar="PATH",
                   help="Training data: .jsonl, .json, .parquet, .csv or a saved dataset directory (repeatable).")
    p.add_argument("--field", action="append", default=None, metavar="NAME",
                   help="Text field to check (repeatable; default: every string field and chat list of a row).")
    p.add_argument("--eval", action="append", default=[], metavar="SPEC",
                   help="Eval set: humaneval, mbpp=PATH, mbppplus=PATH, humanevalplus=PATH or custom=PATH (repeatable).")
    p.add_argument("--mode", choices=("sampled", "exhaustive", "ngram13"), default="sampled",
                   help="sampled: 3 random 50-char windows per question (OpenAI); exhaustive: every window; "
                   "ngram13: lowercase 13-word n-grams (GPT-3 style). Memory, in every mode: rows are read in "
                   "batches, and a line longer than 8 MB is streamed from the file and matched 1M characters at "
                   "a time, so peak memory stays under twice the input (measured: ~0.3x for one 300 MB line).")
    p.add_argument("--seed", type=int, default=0, help="Seed for the sampled windows (with the task id).")
    p.add_argument("--window", type=int, default=50, help="Window length in processed characters.")
    p.add_argument("--casefold", action="store_true", help="Ignore case (default: case is kept).")
    p.add_argument("--mbpp-with-tests", action="store_true", help="Match MBPP's tests along with its text.")
    p.add_argument("--report", required=True, metavar="OUT.json", help="Report to write.")
    p.add_argument("--write-clean", metavar="OUT",
                   help="Write the training set without flagged rows (same format) and OUT.removed.jsonl.")
    p.add_argument("--jobs", type=int, default=1, help="Processes to use (the report is identical for any N).")
    p.add_argument("--shard", type=int, metavar="I", help="Run shard I of --num-shards (a slice of the files).")
    p.add_argument("--num-shards", type=int, metavar="N", help="Number of shards.")
    p.add_argument("--max-matches", type=int, default=20, help="Matches recorded per eval item.")
    p.add_argument("--boilerplate-rows", type=int, default=50,
                   help="Windows matching more training rows than this are listed as boilerplate.")
    p.add_argument("--allow-no-text", action="store_true",
                   help="Write the report even when a training file has no text to compare (say, only number "
                        "columns); it is marked NO TEXT CHECKED. Without this, that is an error.")
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")
    p.add_argument("partials", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_decontaminate)

    data = subparsers.add_parser("data", help="Benchmark data (MBPP, MBPP+, HumanEval+).")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(handler=lambda args: (data.print_help(), 2)[1])
    dl = data_sub.add_parser("download", help="Download MBPP, MBPP+ and HumanEval+ and verify their sha256.")
    dl.add_argument("names", nargs="*", help="Which (default: all): mbpp, mbppplus, humanevalplus.")
    dl.add_argument("--dest", type=Path, help="Directory (default: TuneDeck's benchmark data directory).")
    dl.add_argument("--force", action="store_true", help="Download again even if a verified file exists.")
    dl.set_defaults(handler=cmd_data_download)


def _bar(enabled: bool, desc: str, total: int | None = None):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not enabled,
                dynamic_ncols=True, file=sys.stderr)


def _print_summary(report: dict) -> None:
    rows = [(b, s["items"], s["contaminated"], f"{s['percent']:.1f}") for b, s in report["summary"].items()]
    head = ("benchmark", "items", "contaminated", "%")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    print(f"method: {report['method']}  training rows: {report['train']['rows']}")
    for r in [head, *rows]:
        print("  ".join(str(v).ljust(widths[i]) if i == 0 else str(v).rjust(widths[i]) for i, v in enumerate(r)))


def cmd_decontaminate(args: argparse.Namespace) -> int:
    from core.decontam import DecontamError, load_report, merge_reports, scan, write_outputs

    if args.partials:
        if args.partials[0] != MERGE_WORD:
            raise CliError(f"unexpected arguments: {' '.join(args.partials)}")
        paths = args.partials[1:]
        if not paths:
            raise CliError("decontaminate merge: give the partial reports to merge")
        try:
            report = merge_reports([load_report(p) for p in paths])
            write_outputs(report, args.report)
        except DecontamError as exc:
            raise CliError(str(exc)) from None
        _print_summary(report)
        for warning in report.get("warnings", []):
            print(f"tunedeck: WARNING: {warning}", file=sys.stderr)
        print(f"wrote {args.report}")
        return 0
    if not args.train:
        raise CliError("give training data with --train PATH")
    from core.decontam.clean import output_targets

    try:  # before the scan: a wrong output path found after an hour of matching helps nobody
        output_targets(args.report, args.train if args.write_clean else None, args.write_clean)
    except DecontamError as exc:
        raise CliError(str(exc)) from None
    if not args.eval:
        raise CliError("give eval sets with --eval humaneval / --eval mbpp=PATH ...")
    shard = None
    if args.shard is not None or args.num_shards is not None:
        if args.shard is None or args.num_shards is None:
            raise CliError("--shard and --num-shards go together")
        shard = (args.shard, args.num_shards)
        if args.write_clean:
            raise CliError("--write-clean needs the whole training set: run it without --shard")
    bar = _bar(not args.no_progress, "decontaminate")

    def progress(done: int, total: int | None) -> None:
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        report, flagged = scan(args.train, args.eval, fields=args.field, mode=args.mode, seed=args.seed,
                               window=args.window, casefold=args.casefold, jobs=args.jobs, shard=shard,
                               max_matches_per_item=args.max_matches, boilerplate_rows=args.boilerplate_rows,
                               question_with_tests=args.mbpp_with_tests, progress=progress,
                               allow_no_text=args.allow_no_text)
        bar.close()
        written = write_outputs(report, args.report, train_paths=args.train, flagged=flagged,
                                clean_out=args.write_clean)
    except DecontamError as exc:
        bar.close()
        raise CliError(str(exc)) from None
    except OSError as exc:  # disk full, permissions: write_outputs has put everything back
        bar.close()
        raise CliError(f"cannot write the outputs ({exc.strerror or exc}: {exc.filename or ''}); nothing was "
                       "written") from None
    for warning in report.get("warnings", []):
        print(f"tunedeck: WARNING: {warning}", file=sys.stderr)
    if shard is None:
        _print_summary(report)
    else:
        print(f"partial report for shard {shard[0]} of {shard[1]}: merge with `tunedeck decontaminate merge`")
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    from core import evalsets, paths
    from core.fsutil import atomic_path, sha256_file

    names = args.names or list(evalsets.UPSTREAM)
    unknown = [n for n in names if n not in evalsets.UPSTREAM]
    if unknown:
        raise CliError(f"unknown data set {', '.join(unknown)}: choose from {', '.join(evalsets.UPSTREAM)}")
    dest = args.dest or paths.bench_data_dir()
    for name in names:
        entry = evalsets.UPSTREAM[name]
        target = dest / entry["file"]
        if target.is_file() and not args.force and sha256_file(target) == entry["sha256"]:
            print(f"{name}: {target} already verified; use it as --eval {name}={target}")
            continue
        try:
            with urllib.request.urlopen(entry["url"], timeout=60) as resp, atomic_path(target) as tmp:
                total = resp.headers.get("Content-Length")
                bar = _bar(True, name, int(total) if total else None)
                with open(tmp, "wb") as out:
                    while block := resp.read(1 << 16):
                        out.write(block)
                        bar.update(len(block))
                bar.close()
                got = sha256_file(tmp)
                if got != entry["sha256"]:
                    raise CliError(f"{name}: sha256 mismatch for {entry['url']}: got {got}, expected "
                                   f"{entry['sha256']} (nothing written)")
        except (urllib.error.URLError, OSError) as exc:
            raise CliError(f"{name}: download from {entry['url']} failed: {exc}") from None
        print(f"{name}: {target} ({entry['licence']}); use it as --eval {name}={target}")
    return 0
