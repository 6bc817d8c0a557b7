"""Benchmark: the contamination matcher on a deterministic ~200 MB code-like corpus, against the literal loop.

Run explicitly: `.venv/bin/python tests/bench/bench_decontam.py [--mb 200] [--baseline-mb 10]`
(`--mb 5 --repeat 1` for a quick smoke run). The corpus is the installed standard library's source split into examples
(instruction/answer JSONL rows), with 20 HumanEval prompts planted in it after whitespace and punctuation
changes; it is built once into $TMPDIR and reused. Each measurement runs in a fresh child process, so peak RSS
is the matcher's own. MB/s counts raw training-file bytes end to end (read, process, match, report; one core).
The literal baseline (`window in processed_example` for every example and window, text processed the same
way) is measured on the first --baseline-mb of the corpus and its rate scaled to the whole.
Targets: sampled >= 150 MB/s and >= 50x the baseline; exhaustive >= 50 MB/s; peak RSS < 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

TARGET_SAMPLED_MBS = 150.0
TARGET_RATIO = 50.0
TARGET_EXHAUSTIVE_MBS = 50.0
TARGET_RSS_MB = 1024.0
N_PLANTED = 20


def _disguise(text: str, rng: random.Random) -> str:
    text = text.replace("    ", rng.choice(["\t", "  ", "      "])).replace('"""', "'''")
    text = re.sub(r"([,:()])", lambda m: rng.choice([f" {m.group()} ", m.group(), f"{m.group()}  "]), text)
    return re.sub(r"\n\s*\n", "\n", text)


def build_corpus(path: Path, mb: float) -> list[str]:
    """Write the corpus; return the planted task ids."""
    from core.evalsets import load_humaneval

    rng = random.Random(12345)
    tasks = load_humaneval().tasks
    planted = tasks[:: len(tasks) // N_PLANTED][:N_PLANTED]
    root = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    target = int(mb * 1e6)
    tmp = path.with_suffix(".tmp")
    written, row, cycle = 0, 0, 0
    plant_every = max(1, target // 4300 // (N_PLANTED + 1))  # rows average ~4.3 kB
    todo = list(planted)
    with open(tmp, "w", encoding="utf-8") as out:
        while written < target:
            for src in sources:
                try:
                    text = src.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
                pos = (cycle * 997) % 1500  # other cut points on each pass over the library
                while pos < len(text) and written < target:
                    size = rng.randrange(1500, 6000)
                    chunk = text[pos: pos + size]
                    pos += size
                    rec = {"id": f"row-{row}", "instruction": f"Explain {src.name} part {row}.", "answer": chunk}
                    if todo and row % plant_every == plant_every - 1:
                        task = todo.pop(0)
                        rec["instruction"] = _disguise(task.prompt, rng)
                        rec["id"] = f"planted-{task.task_id}"
                    line = json.dumps(rec, ensure_ascii=False) + "\n"
                    out.write(line)
                    written += len(line.encode())
                    row += 1
                if written >= target:
                    break
            cycle += 1
    os.replace(tmp, path)
    return [t.task_id for t in planted[: N_PLANTED - len(todo)]]


def _peak_rss_mb() -> float:
    """VmHWM (this process image's peak); ru_maxrss survives exec on Linux, so it would count the parent's."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """One measurement in a fresh process; prints JSON."""
    from core.decontam import run_check
    from core.evalsets import load_eval_set

    evals = [load_eval_set("humaneval")]
    if args.mbpp:
        evals.append(load_eval_set(f"mbpp={args.mbpp}"))
    t0, c0 = time.perf_counter(), time.process_time()
    if args.child == "baseline":
        from core.decontam.matcher import prepare_items
        from core.decontam.normalize import process

        items = prepare_items([(t.benchmark, t.task_id, t.question) for e in evals for t in e.tasks],
                              mode="sampled", seed=0, window=50, casefold=False)
        windows = [(i, it.processed[s:e]) for i, it in enumerate(items) for s, e in it.windows]
        found, limit, done = set(), int(args.baseline_mb * 1e6), 0
        with open(args.corpus, "rb") as f:
            for line in f:
                done += len(line)
                row = json.loads(line)
                for value in row.values():
                    if isinstance(value, str):
                        p = process(value)
                        for i, w in windows:
                            if w in p:
                                found.add(items[i].task_id)
                if done >= limit:
                    break
        result = {"bytes": done, "found": sorted(found)}
    else:
        report = run_check([args.corpus], evals, mode=args.child, jobs=args.jobs)
        result = {"bytes": os.path.getsize(args.corpus),
                  "found": sorted(i["task_id"] for i in report["items"] if i["contaminated"])}
    result.update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0, peak_rss_mb=_peak_rss_mb())
    print(json.dumps(result))


def measure(kind: str, args: argparse.Namespace, corpus: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--corpus", str(corpus), "--baseline-mb", str(args.baseline_mb),
           "--jobs", str(args.jobs)] + (["--mbpp", args.mbpp] if args.mbpp else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=200.0, help="Corpus size in MB (default 200).")
    ap.add_argument("--baseline-mb", type=float, default=10.0, help="Prefix the literal baseline runs on.")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="Runs of each matcher mode; the fastest counts.")
    ap.add_argument("--mbpp", help="Also check MBPP (path to mbpp.jsonl); default: ../shared/data if present.")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    if args.mbpp is None:
        default = Path(__file__).resolve().parents[3] / "shared" / "data" / "mbpp" / "mbpp.jsonl"
        args.mbpp = str(default) if default.is_file() else None
    corpus = Path(tempfile.gettempdir()) / f"tunedeck-bench-decontam-{args.mb:g}mb.jsonl"
    meta = corpus.with_suffix(".planted.json")
    if not (corpus.is_file() and meta.is_file()):
        t = time.perf_counter()
        meta.write_text(json.dumps(build_corpus(corpus, args.mb)))
        print(f"built {corpus} in {time.perf_counter() - t:.1f} s")
    planted = set(json.loads(meta.read_text()))
    size_mb = corpus.stat().st_size / 1e6
    print(f"corpus: {size_mb:.1f} MB, {len(planted)} planted HumanEval prompts; evals: humaneval"
          f"{' + mbpp' if args.mbpp else ''}; jobs={args.jobs}; cpu count {os.cpu_count()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    results = {}
    for kind in ("sampled", "exhaustive", "baseline"):
        runs = [measure(kind, args, corpus) for _ in range(1 if kind == "baseline" else args.repeat)]
        r = min(runs, key=lambda x: x["wall_s"])  # the least disturbed run (this machine is shared)
        r["cpu_s"] = min(x["cpu_s"] for x in runs)
        mb = r["bytes"] / 1e6
        r["mbs_wall"], r["mbs_cpu"] = mb / r["wall_s"], mb / r["cpu_s"]
        results[kind] = r
        recall = f"planted found {len(planted & set(r['found']))}/{len(planted)}" if kind != "baseline" else \
            f"on the first {mb:.1f} MB, scaled"
        print(f"{kind:>10}: {r['mbs_wall']:8.1f} MB/s wall  {r['mbs_cpu']:8.1f} MB/s CPU  "
              f"({r['wall_s']:.2f} s wall)  peak RSS {r['peak_rss_mb']:.0f} MB  {recall}")
    s, e, b = results["sampled"], results["exhaustive"], results["baseline"]
    ratio_wall, ratio_cpu = s["mbs_wall"] / b["mbs_wall"], s["mbs_cpu"] / b["mbs_cpu"]
    print(f"sampled / baseline: {ratio_wall:.0f}x wall, {ratio_cpu:.0f}x CPU")
    # Wall-clock rates are what the targets mean on an idle core; on a shared machine the process's own CPU
    # time is the fairer measure of the same single-threaded work, so both verdicts are printed.
    checks = {
        f"sampled >= {TARGET_SAMPLED_MBS:g} MB/s": (s["mbs_wall"] >= TARGET_SAMPLED_MBS, s["mbs_cpu"] >= TARGET_SAMPLED_MBS),
        f"sampled >= {TARGET_RATIO:g}x baseline": (ratio_wall >= TARGET_RATIO, ratio_cpu >= TARGET_RATIO),
        f"exhaustive >= {TARGET_EXHAUSTIVE_MBS:g} MB/s": (e["mbs_wall"] >= TARGET_EXHAUSTIVE_MBS,
                                                          e["mbs_cpu"] >= TARGET_EXHAUSTIVE_MBS),
    }
    rss_ok = max(s["peak_rss_mb"], e["peak_rss_mb"]) < TARGET_RSS_MB
    found_ok = planted <= set(s["found"]) and planted <= set(e["found"])
    for name, (wall_ok, cpu_ok) in checks.items():
        print(f"  {'PASS' if wall_ok else 'MISS'} wall, {'PASS' if cpu_ok else 'MISS'} CPU time  {name}")
    print(f"  {'PASS' if rss_ok else 'MISS'}  peak RSS < {TARGET_RSS_MB:g} MB")
    print(f"  {'PASS' if found_ok else 'MISS'}  every planted prompt found (sampled, exhaustive)")
    return 0 if rss_ok and found_ok and all(w for w, _ in checks.values()) else 1


@pytest.mark.bench
def test_bench_decontam_smoke_finds_every_planted_prompt(tmp_path) -> None:
    """`pytest -m bench tests/bench/bench_decontam.py`: a 5 MB run of the same measurement (targets printed)."""
    out = subprocess.run([sys.executable, __file__, "--mb", "5", "--repeat", "1", "--baseline-mb", "0.5"],
                         capture_output=True, text=True, check=False)
    print(out.stdout, out.stderr)
    assert "PASS  every planted prompt found" in out.stdout


if __name__ == "__main__":
    sys.exit(main())
