"""`tunedeck demo`: the newcomer's path on the command line (what the GUI's demo does, without a screen).

Writes the demo dataset, checks it against HumanEval with OpenAI's method (the planted items are flagged),
launches the tiny preset on this machine with the report attached, follows the loss live and prints pass@1
per checkpoint (all / clean / contaminated).
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="Run the demo on this machine: contamination check, a tiny ZeRO-3 run, live loss, pass@1.")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the tiny-demo preset's)")
    p.add_argument("--check-only", action="store_true", help="only write the demo data and check it for contamination")
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from app.cli.errors import CliError
    from core.store import Store
    from remote.demo import check_demo_contamination, demo_config, demo_report_path, ensure_demo_dataset

    print("1/3 demo dataset: instruction/answer pairs from the Python standard library ...", flush=True)
    dataset = ensure_demo_dataset()
    print(f"    {dataset.n_rows} rows in {dataset.path}; planted HumanEval items: {', '.join(dataset.planted_task_ids)}")

    print("2/3 contamination check against HumanEval (OpenAI's method: 3 random 50-char windows per question)")
    with tqdm(total=None, unit="B", unit_scale=True, desc="    matching", file=sys.stdout) as bar:
        def progress(done: int, total: int | None) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        report = check_demo_contamination(dataset, progress=progress)
    flagged = sorted(i["task_id"] for i in report["items"] if i["contaminated"])
    summary = report["summary"]["humaneval"]
    print(f"    {summary['contaminated']} of {summary['items']} HumanEval items contaminated: {', '.join(flagged)}")
    missed = sorted(set(dataset.planted_task_ids) - set(flagged))
    print("    every planted item was found" if not missed else f"    planted but not found: {', '.join(missed)}")
    print(f"    report: {demo_report_path()}")
    if args.check_only:
        return 0 if not missed else 1

    from remote.runs import LaunchError, launch
    from remote.stream import StreamManager

    store = Store()
    config = demo_config(dataset, demo_report_path(), max_steps=args.steps)
    print(f"3/3 launching '{config.name}' on this machine ({config.world_size} processes, ZeRO-3 over gloo)")
    try:
        run_id = launch(config, "local", store, progress=lambda msg: print(f"    {msg}", flush=True))
    except LaunchError as exc:
        raise CliError(str(exc), code=1) from exc
    total = config.training.max_steps
    bar = tqdm(total=total, desc="    training", unit="step", file=sys.stdout)
    seen = {"rowid": 0}

    def on_update(rid: str, file_name: str, n_new: int) -> None:
        if rid != run_id or file_name != "metrics.jsonl":
            return
        for m in store.metrics(run_id, since_rowid=seen["rowid"]):
            seen["rowid"] = max(seen["rowid"], m["rowid"])
            bar.n = m["step"]
            bar.set_postfix(loss=f"{m['loss']:.3f}" if m["loss"] is not None else "-", attempt=m["attempt"])

    manager = StreamManager(store, on_update=on_update, poll_s=1.0)
    try:
        manager.run_until_idle()
    except KeyboardInterrupt:
        bar.close()
        print(f"\nstopped following; the run goes on. Cancel it with: tunedeck cancel {run_id}")
        return 130
    bar.close()
    row = store.get_run(run_id)
    print(f"    run {run_id}: {row.status}{f' ({row.status_reason})' if row.status_reason else ''}")
    evals = store.evals(run_id)
    if evals:
        print("    pass@1 per checkpoint (HumanEval; a tiny random model scores near 0, which is the honest result):")
        for step in sorted({e["step"] for e in evals}):
            cells = {e["subset"]: (e["pass@1"], e["n_tasks"]) for e in evals if e["step"] == step and e["benchmark"] == "humaneval"}
            print(f"      step {step:>4}: " + "  ".join(
                f"{k} {'n/a' if v is None else f'{100 * v:.1f}%'} (n={n})" for k, (v, n) in sorted(cells.items())))
    print(f"Open it in the app: tunedeck gui   (run {run_id})")
    return 0 if row.status == "finished" else 1
