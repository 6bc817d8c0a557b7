"""Benchmark: peak memory of the contamination check on ONE very long training line, in every mode.

Run explicitly: `.venv/bin/python tests/bench/bench_decontam_memory.py [--mb 300] [--modes sampled,exhaustive,ngram13]`
(`--mb 20` for a quick run). The input is a JSONL file holding a single row whose text field is --mb MB of code-like
text (the standard library's source) with a HumanEval prompt planted in its middle, so the matcher has a hit to
map back to the raw text (the path that once built per-character lists of the whole line); `--unicode` puts one
non-ASCII character in it (a Python str of such text takes 4 bytes per character). Each mode runs in a fresh
child process; it prints the process's peak RSS (VmHWM), the RSS after imports and eval loading (before the
check), and both against the input size. Target: peak RSS <= 2x the input in every mode; the planted prompt is
found in every mode.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

TARGET_RATIO = 2.0
MODES = ("sampled", "exhaustive", "ngram13")


def build(path: Path, mb: float, unicode: bool) -> str:
    """Write the one-line corpus; return the planted task id."""
    from core.evalsets import load_humaneval

    task = load_humaneval().tasks[10]
    root = Path(sysconfig.get_paths()["stdlib"])
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.glob("*.py"))[:60])
    text = text.replace("\x00", "")
    target = int(mb * 1e6)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write('{"id": "one-long-row", "text": "')
        written, planted = 0, False
        piece = json.dumps(text, ensure_ascii=False)[1:-1]
        while written < target:
            if not planted and written >= target // 2:
                out.write(json.dumps("\n" + task.prompt + "\n", ensure_ascii=False)[1:-1])
                if unicode:
                    out.write("\u2603")  # one snowman: the whole str becomes 4 bytes per character
                planted = True
            out.write(piece)
            written += len(piece)
        out.write('"}\n')
    os.replace(tmp, path)
    return task.task_id


def _rss_mb(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024


def child(args: argparse.Namespace) -> None:
    from core.decontam import run_check
    from core.evalsets import load_eval_set

    evals = [load_eval_set("humaneval")]
    before = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    report = run_check([args.corpus], evals, mode=args.child)
    print(json.dumps({"wall_s": time.perf_counter() - t0, "before_mb": before, "peak_mb": _rss_mb("VmHWM"),
                      "found": sorted(i["task_id"] for i in report["items"] if i["contaminated"])}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=300.0, help="Length of the single line in MB (default 300).")
    ap.add_argument("--modes", default=",".join(MODES), help="Comma-separated modes (default: all three).")
    ap.add_argument("--unicode", action="store_true", help="Put one non-ASCII character in the line.")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    corpus = Path(tempfile.gettempdir()) / f"tunedeck-bench-longline-{args.mb:g}mb{'-u' if args.unicode else ''}.jsonl"
    meta = corpus.with_suffix(".planted.json")
    if not (corpus.is_file() and meta.is_file()):
        meta.write_text(json.dumps(build(corpus, args.mb, args.unicode)))
    planted = json.loads(meta.read_text())
    size_mb = corpus.stat().st_size / 2**20
    print(f"input: one line of {size_mb:.0f} MiB ({corpus}){' with a non-ASCII character' if args.unicode else ''}; "
          f"planted {planted}; load average {os.getloadavg()[0]:.1f}")
    ok = True
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, "--child", mode, "--corpus", str(corpus)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{mode:>10}: FAILED (exit {proc.returncode}): {proc.stderr.strip()[-600:]}")
            ok = False
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        ratio = r["peak_mb"] / size_mb
        found = planted in r["found"]
        passed = ratio <= TARGET_RATIO and found
        ok &= passed
        print(f"{mode:>10}: peak RSS {r['peak_mb']:7.0f} MiB = {ratio:5.2f}x the input "
              f"(RSS before the check {r['before_mb']:.0f} MiB; the check's own {r['peak_mb'] - r['before_mb']:.0f} MiB "
              f"= {(r['peak_mb'] - r['before_mb']) / size_mb:.2f}x)  {r['wall_s']:6.1f} s  "
              f"planted {'found' if found else 'MISSED'}  {'PASS' if passed else 'MISS'} (<= {TARGET_RATIO:g}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
