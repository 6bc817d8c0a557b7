"""Benchmark: a year of runs in the store, and the app still answers in a second.

Run explicitly: `.venv/bin/python tests/bench/bench_store_scale.py [--sizes S,M,L] [--rebuild]` (or
`pytest -m bench tests/bench/bench_store_scale.py` for S alone). Sizes: S = 10 runs x 10k steps, M = 100 x 10k,
L = 300 x 100k (~30M metric rows). Each store is built with the project's own functions: every run's
metrics.jsonl is written by core.records.JsonlWriter, then read back the way the streamer does (8 MB chunks
through core.records.IncrementalReader) and ingested with Store.ingest, with evals at every tenth of the run
and stdout lines; one run in ten is resumed (a second attempt redoes the last 15% of its steps). S and M are
built on every run; L is built once into .cache/bench_store_scale/ (gitignored) and reused, with the ingest
rates measured when it was built.

For each size, the app is measured offscreen in a fresh process (the real MainWindow on the built store, no
streamer), with the responsiveness probe of tests/app/test_responsiveness.py (StallMeter: the longest gap
between ticks of a 5 ms UI-thread timer) running during each measure:
  - Runs page: MainWindow created and shown -> the table holds every run;
  - run view: open_run(the longest run) -> loaded and painted;
  - compare of 10 runs: open_compare(10 longest runs) -> data_loaded and painted;
  - memory per open run tab: RSS growth over opening 10 run tabs of the longest runs, divided by 10;
  - idle CPU with those 10 tabs open: process CPU time over 5 s of an idle event loop (the probe stopped).
Targets at L: Runs page <= 1 s (growth S->L <= 3x); ingest >= 200k records/s; run view <= 0.5 s with no stall
over 100 ms; compare <= 1 s; <= 15 MB per tab; idle CPU <= 1% of a core. The last line reads
`runs page at L: X.XX s; growth S->L: Y.Yx`.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SIZES = {"S": (10, 10_000), "M": (100, 10_000), "L": (300, 100_000)}
CACHED_SIZES = ("L",)
# TUNEDECK_BENCH_CACHE: build the cached store elsewhere (e.g. a new build while the old one is in use)
CACHE = Path(os.environ.get("TUNEDECK_BENCH_CACHE") or REPO / ".cache" / "bench_store_scale")
RECIPE_VERSION = 1  # bump when the data written below changes: the cached store is rebuilt
READ_CHUNK = 8 << 20  # what the streamer's drain reads at once
RESUME_EVERY = 10  # one run in ten has a second attempt
LOG_EVERY = 100  # one stdout line per this many steps
COMPARE_RUNS = TABS = 10
IDLE_S = 5.0
RUNS_PAGE_REPEATS = 3
BASELINE_MAX_POINTS = 5_000_000  # the pre-v4 listing is timed up to M (at L it took 110-123 s: issue 17)


# ---------------------------------------------------------------------------------------------- building


def _resumed(i: int) -> bool:
    return i % RESUME_EVERY == RESUME_EVERY - 1


def _run_length(i: int, steps: int) -> int:
    return int(steps * 0.9) + steps - int(steps * 0.85) if _resumed(i) else steps


def _run_records(i: int, steps: int, t0: float):
    """The records a job of `steps` steps writes (a resumed run: attempt 2 redoes the last 15%)."""
    from core.records import metric_record

    def rec(step: int, attempt: int) -> dict[str, Any]:
        return metric_record(step=step, attempt=attempt, epoch=step / steps, samples=8 * step, tokens=4096 * step,
                             loss=0.3 + 3.0 * math.exp(-step / (steps / 5)) + 0.05 * math.sin(step + i),
                             lr=2e-5 * min(1.0, step / 100), grad_norm=1.0 + 0.1 * math.cos(step),
                             tokens_per_s=5000.0 + (step * 7919 % 101), t=t0 + 0.5 * step + 600 * (attempt - 1),
                             step_time_s=0.5)

    if _resumed(i):
        redo = int(steps * 0.85)
        for step in range(1, int(steps * 0.9) + 1):
            yield rec(step, 1)
        for step in range(redo + 1, steps + 1):
            yield rec(step, 2)
    else:
        for step in range(1, steps + 1):
            yield rec(step, 1)


def build_store(size: str, path: Path, progress: bool = True) -> dict[str, float]:
    """Write, read and ingest every run of `size` into a new store at `path`; returns the timings."""
    from tqdm import tqdm

    from core.records import IncrementalReader, JsonlWriter, RunPaths, eval_record, read_records
    from core.store import Store

    n_runs, steps = SIZES[size]
    if path.exists():
        path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    # wall-clock and this thread's CPU time: on a shared machine the second says what the code costs
    stats = {"records": 0, "write_s": 0.0, "parse_s": 0.0, "store_s": 0.0, "parse_cpu_s": 0.0, "store_cpu_s": 0.0}
    config = {"model": {"name": "codellama/CodeLlama-7b-hf"}, "training": {"max_steps": steps, "learning_rate": 2e-5}}
    work = Path(tempfile.mkdtemp(prefix=f"bench-store-{size}-"))
    total = sum(_run_length(i, steps) for i in range(n_runs))
    bar = tqdm(total=total, desc=f"building {size} ({n_runs} runs x {steps:,} steps)", unit="rec",
               unit_scale=True, file=sys.stderr, disable=not progress)
    try:
        with Store(path) as store:
            for i in range(n_runs):
                run_id = f"{size.lower()}{i:04d}-{'resumed' if _resumed(i) else 'plain'}"
                t0 = 1_700_000_000.0 + 86_400 * i
                store.create_run(run_id, f"{size} run {i}", "preset: codellama-7b\n", config, "cluster-a", "slurm",
                                 f"/scratch/runs/{run_id}", preset="codellama-7b",
                                 status="finished" if i < n_runs - 3 else "running")
                run_dir = RunPaths(work / run_id)
                started = time.perf_counter()
                with JsonlWriter(run_dir.metrics) as writer:
                    for rec in _run_records(i, steps, t0):
                        writer.write(rec)
                stats["write_s"] += time.perf_counter() - started
                reader = IncrementalReader("metrics")
                with open(run_dir.metrics, "rb") as f:
                    while True:
                        data = f.read(READ_CHUNK)
                        if not data:
                            break
                        started, started_cpu = time.perf_counter(), time.thread_time()
                        res = reader.feed(data)
                        parsed, parsed_cpu = time.perf_counter(), time.thread_time()
                        store.ingest(run_id, RunPaths.METRICS, res.records, reader.offset, reader.line_no,
                                     len(res.corrupt))
                        stats["parse_s"] += parsed - started
                        stats["store_s"] += time.perf_counter() - parsed
                        stats["parse_cpu_s"] += parsed_cpu - started_cpu
                        stats["store_cpu_s"] += time.thread_time() - parsed_cpu
                        stats["records"] += len(res.records)
                        bar.update(len(res.records))
                with JsonlWriter(run_dir.evals) as writer:
                    for k in range(1, 11):
                        for bench in ("humaneval", "mbpp"):
                            for subset in ("all", "clean", "contaminated"):
                                writer.write(eval_record(
                                    step=k * steps // 10, attempt=1, checkpoint=f"checkpoint-{k * steps // 10}",
                                    benchmark=bench, subset=subset, n_tasks=164, samples_per_task=1, temperature=0.0,
                                    pass_at={1: 0.3 + 0.02 * k + 0.001 * i}, t=t0 + 0.05 * k * steps))
                evals, _bad = read_records(run_dir.evals, "evals")
                store.ingest(run_id, RunPaths.EVALS, evals, run_dir.evals.stat().st_size, len(evals))
                text = "".join(f"[rank0] step {s} loss {0.3 + 3.0 * math.exp(-s / (steps / 5)):.4f}\n"
                               for s in range(LOG_EVERY, steps + 1, LOG_EVERY))
                store.ingest(run_id, RunPaths.STDOUT, [{"text": text}], len(text.encode()), text.count("\n"))
                shutil.rmtree(run_dir.root)
            assert store.integrity_check() == "ok"
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    return stats


def _commit() -> str:
    """The commit whose ingest built a store (with '+' when the checkout had changes): a cached store's ingest
    rates are that code's."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def cached_store(size: str, rebuild: bool) -> tuple[Path, dict[str, float], bool]:
    """The store of `size` (built now, or reused from the cache for CACHED_SIZES); (path, build stats, reused)."""
    from core.store import SCHEMA_VERSION

    key = {"size": size, "runs": SIZES[size][0], "steps": SIZES[size][1], "recipe": RECIPE_VERSION,
           "schema": SCHEMA_VERSION}
    if size in CACHED_SIZES:
        CACHE.mkdir(parents=True, exist_ok=True)
        path, meta = CACHE / f"{size}.sqlite3", CACHE / f"{size}.json"
        if not rebuild and path.exists() and meta.exists():
            saved = json.loads(meta.read_text())
            if saved.get("key") == key:
                return path, saved["stats"], True
        meta.unlink(missing_ok=True)
        started, started_cpu = time.perf_counter(), time.process_time()
        stats = build_store(size, path)
        stats["build_s"] = time.perf_counter() - started
        stats["build_cpu_s"] = time.process_time() - started_cpu
        stats["built_by"] = _commit()
        meta.write_text(json.dumps({"key": key, "stats": stats, "built_at": time.time(),
                                    "load_average": os.getloadavg()[0]}, indent=1))
        return path, stats, False
    path = Path(tempfile.mkdtemp(prefix=f"bench-store-{size}-")) / "store.sqlite3"
    started, started_cpu = time.perf_counter(), time.process_time()
    stats = build_store(size, path)
    stats["build_s"] = time.perf_counter() - started
    stats["build_cpu_s"] = time.process_time() - started_cpu
    return path, stats, False


# ---------------------------------------------------------------------------------------------- the app


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _summaries_before_v4(store: Any) -> list[dict[str, Any]]:
    """The baseline: what the Runs page read before run summaries were kept (Store.summary per run, which
    fetched every metric row of the run, latest attempt per step), on the same store."""
    out = []
    conn = store._conn()
    for run in store.list_runs():
        run_id = run.run_id
        latest = conn.execute(
            "SELECT m.step, m.loss, m.tokens FROM metrics m"
            " JOIN (SELECT step, MAX(attempt) AS attempt FROM metrics WHERE run_id = ? GROUP BY step) l"
            " ON m.step = l.step AND m.attempt = l.attempt WHERE m.run_id = ? ORDER BY m.step DESC",
            (run_id, run_id)).fetchall()
        span = conn.execute("SELECT MIN(t), MAX(t), COUNT(*) FROM metrics WHERE run_id = ?", (run_id,)).fetchone()
        evals = conn.execute("SELECT benchmark, subset, pass_at FROM evals WHERE run_id = ?", (run_id,)).fetchall()
        best: dict[str, dict[str, float]] = {}
        for bench, subset, pass_at in evals:
            value = json.loads(pass_at).get("pass@1")
            if value is not None and value > best.setdefault(bench, {}).get(subset, float("-inf")):
                best[bench][subset] = value
        out.append({"steps": latest[0][0] if latest else None,
                    "final_loss": next((r[1] for r in latest if r[1] is not None), None),
                    "wall_time_s": span[1] - span[0] if span[2] else None, "best": best})
    return out


def measure_store(store: Any, longest: list[str]) -> dict[str, float]:
    """What the store's read APIs cost on this store (the first call of each: a cold page cache for its rows)."""
    out: dict[str, float] = {}

    def timed(name: str, fn) -> None:
        started = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - started

    timed("api_list", store.list_run_summaries)
    if len(longest) * store.summary(longest[0])["metric_points"] <= BASELINE_MAX_POINTS:
        timed("api_list_before_v4", lambda: _summaries_before_v4(store))
    timed("api_envelope", lambda: store.metric_envelope(longest[0], buckets=1000))
    extent = store.summary(longest[0])["steps"]
    timed("api_envelope_zoom", lambda: store.metric_envelope(longest[0], x_range=(extent * 0.5, extent * 0.51),
                                                             buckets=1000))
    timed("api_envelope_tokens", lambda: store.metric_envelope(longest[0], x_axis="tokens", buckets=1000))
    timed("api_envelope_10", lambda: [store.metric_envelope(r, buckets=1000) for r in longest[1:COMPARE_RUNS + 1]])
    timed("api_metrics", lambda: store.metrics(longest[0]))
    return out


def measure_app(path: Path) -> dict[str, Any]:
    """The app on the store at `path` (run in a fresh process: clean memory and a fresh QApplication)."""
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from app.gui.app import create_app
    from app.gui.main_window import PAGE_RUNS, MainWindow
    from core.store import Store
    from tests.app.test_responsiveness import StallMeter

    _app = create_app()  # kept: the QApplication must outlive the window
    store = Store(path)
    n_runs = len(store.list_runs())
    longest = [run.run_id for run, s in sorted(store.list_run_summaries(), key=lambda rs: -(rs[1].metric_points or 0))]
    out: dict[str, Any] = {"runs": n_runs, "load_before": os.getloadavg()[0], **measure_store(store, longest)}

    # The waits run an event loop of their own, as the app runs app.exec(). QTest.qWait holds the GIL while it
    # waits: the app's worker threads (the views' envelope reads among them) ran at half their speed or less
    # while the benchmark polled with it, which made the views' load times depend on the polling.
    def pump(ms: int) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    def wait_until(cond, timeout_s: float = 600.0) -> bool:
        deadline = time.monotonic() + timeout_s
        if cond():
            return True
        loop = QEventLoop()
        poll = QTimer(interval=2)
        poll.timeout.connect(lambda: (cond() or time.monotonic() > deadline) and loop.quit())
        poll.start()
        loop.exec()
        poll.stop()
        return bool(cond())

    def timed(name: str, start, done, paint) -> None:
        meter = StallMeter()
        meter.start()
        began, began_cpu = time.perf_counter(), time.process_time()
        target = start()
        ok = wait_until(lambda: done(target))
        if ok:
            paint(target)
        out[f"{name}_s"] = time.perf_counter() - began if ok else float("nan")
        out[f"{name}_cpu_s"] = time.process_time() - began_cpu  # every thread of the app, polling included
        pump(50)
        meter.stop()
        out[f"{name}_stall_ms"] = meter.worst_ms

    # The window as `tunedeck gui` builds it (its Runs page starts reading the store in its constructor), then
    # shown: the Runs page's time runs from show() to a filled table, as a user sees it. Three windows, one after
    # another: the median time (and CPU), the worst stall, so one scheduling hiccup does not make the number.
    fills: list[tuple[float, float, float, float]] = []
    window: Any = None
    for _attempt in range(RUNS_PAGE_REPEATS):
        if window is not None:
            window.close()
            window.deleteLater()
            pump(100)
        started = time.perf_counter()
        window = MainWindow(store, offer_demo=False, stream=False)
        window.resize(1360, 880)
        window.tabs.setCurrentIndex(PAGE_RUNS)
        built = time.perf_counter() - started

        def show_window(window=window):
            window.show()
            return window.runs_page

        timed("runs_page", show_window, lambda page: len(page.model.rows) == n_runs and not page.is_refreshing,
              lambda page: page.table.viewport().repaint())
        fills.append((out["runs_page_s"], out["runs_page_cpu_s"], out["runs_page_stall_ms"], built))
    out["runs_page_s"] = statistics.median(f[0] for f in fills)
    out["runs_page_cpu_s"] = statistics.median(f[1] for f in fills)
    out["runs_page_stall_ms"] = max(f[2] for f in fills)
    out["window_built_s"] = statistics.median(f[3] for f in fills)
    timed("runs_refresh", lambda: (window.runs_page.refresh(), window.runs_page)[1],
          lambda page: not page.is_refreshing, lambda page: page.table.viewport().repaint())

    def close_tabs() -> None:
        while window.tabs.count() > 4:
            window.close_tab(window.tabs.count() - 1)
        pump(200)
        gc.collect()

    timed("run_view", lambda: window.open_run(longest[0]), lambda view: bool(getattr(view, "loaded", False)),
          lambda view: view.repaint())
    out["run_view_points"] = store.summary(longest[0])["metric_points"]
    close_tabs()

    loaded: list[Any] = []

    def open_compare():
        view = window.open_compare(longest[:COMPARE_RUNS])
        view.data_loaded.connect(loaded.append)
        return view

    timed("compare", open_compare, lambda view: bool(loaded), lambda view: view.repaint())
    close_tabs()

    pump(500)
    gc.collect()
    before = _rss_mb()
    meter = StallMeter()
    meter.start()
    for run_id in longest[:TABS]:
        view = window.open_run(run_id)
        wait_until(lambda view=view: bool(getattr(view, "loaded", False)))
    pump(2000)  # settle: workers done, first polls made
    meter.stop()
    gc.collect()
    out["tabs_open_stall_ms"] = meter.worst_ms
    out["mb_per_tab"] = (_rss_mb() - before) / TABS
    # The app's idle CPU without the probe (its 5 ms timer alone costs ~0.8% of a core), then the probe over
    # as long again for the idle stall.
    cpu, wall = time.process_time(), time.perf_counter()
    pump(int(IDLE_S * 1000))
    out["idle_cpu_pct"] = 100 * (time.process_time() - cpu) / (time.perf_counter() - wall)
    idle = StallMeter()
    idle.start()
    pump(int(IDLE_S * 1000))
    idle.stop()
    out["idle_stall_ms"] = idle.worst_ms
    window.close()
    QApplication.processEvents()
    store.close()
    out["load_after"] = os.getloadavg()[0]
    return out


def app_in_child(path: Path, timeout_s: float = 3600) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("r", suffix=".json") as result:
        proc = subprocess.run([sys.executable, __file__, "--measure-app", str(path), "--out", result.name],
                              cwd=REPO, timeout=timeout_s, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the app measurement failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return json.loads(Path(result.name).read_text())


# ---------------------------------------------------------------------------------------------- report

ROWS = (  # key, label, format, larger is better
    ("ingest_store", "ingest: Store.ingest (records/s)", "{:,.0f}", True),
    ("ingest_store_cpu", "  per CPU-second of the ingesting thread", "{:,.0f}", True),
    ("ingest_e2e", "ingest: JSONL bytes -> IncrementalReader -> Store.ingest (records/s)", "{:,.0f}", True),
    ("ingest_e2e_cpu", "  per CPU-second of the ingesting thread", "{:,.0f}", True),
    ("api_list", "Store.list_run_summaries: every run with its summary (s)", "{:.3f}", False),
    ("api_list_before_v4", "  baseline: the same numbers as read before v4 (every point of every run) (s)",
     "{:.2f}", False),
    ("api_envelope", "Store.metric_envelope: longest run, 4 fields x 1000 px (s)", "{:.3f}", False),
    ("api_envelope_zoom", "  zoomed to 1% of its steps (raw rows) (s)", "{:.3f}", False),
    ("api_envelope_tokens", "  over tokens instead of steps (s)", "{:.3f}", False),
    ("api_envelope_10", f"  the next {COMPARE_RUNS} longest runs, one after another (s)", "{:.3f}", False),
    ("api_metrics", "Store.metrics: every point of a run, as the views load today (s)", "{:.2f}", False),
    ("window_built_s", "main window constructed (s; the Runs page starts reading meanwhile)", "{:.2f}", False),
    ("runs_page_s", f"Runs page: window shown -> table filled (s, median of {RUNS_PAGE_REPEATS} windows)", "{:.2f}",
     False),
    ("runs_page_cpu_s", "  CPU seconds the app used meanwhile (median)", "{:.2f}", False),
    ("runs_page_stall_ms", "  longest UI stall (ms, worst)", "{:.0f}", False),
    ("runs_refresh_s", "Runs page: one more refresh (s)", "{:.3f}", False),
    ("run_view_s", "run view of the longest run: opened -> drawn (s)", "{:.2f}", False),
    ("run_view_cpu_s", "  CPU seconds the app used meanwhile", "{:.2f}", False),
    ("run_view_stall_ms", "  longest UI stall (ms)", "{:.0f}", False),
    ("run_view_points", "  metric points of that run", "{:,.0f}", None),
    ("compare_s", f"compare of {COMPARE_RUNS} runs: opened -> drawn (s)", "{:.2f}", False),
    ("compare_cpu_s", "  CPU seconds the app used meanwhile", "{:.2f}", False),
    ("compare_stall_ms", "  longest UI stall (ms)", "{:.0f}", False),
    ("mb_per_tab", f"memory per open run tab ({TABS} tabs, MB)", "{:.1f}", False),
    ("tabs_open_stall_ms", f"  longest UI stall opening {TABS} tabs (ms)", "{:.0f}", False),
    ("idle_cpu_pct", f"idle CPU with {TABS} tabs open (% of a core)", "{:.2f}", False),
    ("idle_stall_ms", "  longest UI stall while idle (ms)", "{:.0f}", False),
)


def table(results: dict[str, dict[str, Any]]) -> str:
    sizes = list(results)
    lines = ["| measure | " + " | ".join(f"{s} ({SIZES[s][0]} x {SIZES[s][1] // 1000}k)" for s in sizes)
             + (" | growth S->L |" if {"S", "L"} <= set(sizes) else " |"),
             "|---|" + "---|" * len(sizes) + ("---|" if {"S", "L"} <= set(sizes) else "")]
    for key, label, fmt, _better in ROWS:
        cells = []
        for s in sizes:
            v = results[s].get(key)
            cells.append("n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
        row = f"| {label} | " + " | ".join(cells) + " |"
        if {"S", "L"} <= set(sizes):
            a, b = results["S"].get(key), results["L"].get(key)
            row += f" {b / a:.1f}x |" if a and b and not math.isnan(a) and not math.isnan(b) else " |"
        lines.append(row)
    return "\n".join(lines)


def run(sizes: list[str], rebuild: bool = False, progress: bool = True) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for size in sizes:
        path, stats, reused = cached_store(size, rebuild)
        row: dict[str, Any] = {
            "ingest_store": stats["records"] / stats["store_s"],
            "ingest_e2e": stats["records"] / (stats["store_s"] + stats["parse_s"]),
            "ingest_store_cpu": stats["records"] / stats["store_cpu_s"] if stats.get("store_cpu_s") else None,
            "ingest_e2e_cpu": stats["records"] / (stats["store_cpu_s"] + stats["parse_cpu_s"])
            if stats.get("store_cpu_s") else None,
            "records": stats["records"], "build_s": stats.get("build_s"), "reused": reused,
            "build_cpu_s": stats.get("build_cpu_s"), "built_by": stats.get("built_by"),
            "db_mb": os.path.getsize(path) / 1e6,
        }
        if progress:
            how = f"reused from {CACHE}" if reused else f"built in {stats.get('build_s') or 0:.0f} s"
            print(f"{size}: {stats['records']:,} metric records, store {row['db_mb']:,.0f} MB, {how}; "
                  "measuring the app...", file=sys.stderr, flush=True)
        row.update(app_in_child(path))
        results[size] = row
        if size not in CACHED_SIZES:
            shutil.rmtree(path.parent, ignore_errors=True)
    return results


def report(results: dict[str, dict[str, Any]]) -> str:
    cpus = os.cpu_count()
    header = (f"store scale benchmark on {cpus} CPUs (load average {os.getloadavg()[0]:.1f} at the end); "
              f"wall-clock times; ingest rates of a cached store are those measured when it was built")
    builds = "; ".join(f"{s}: {r['records']:,} records, {r['db_mb']:,.0f} MB"
                       + (f" (cached, ingest measured at its build by {r.get('built_by') or 'an older commit'})"
                          if r["reused"] else f", built in {r['build_s']:.0f} s")
                       + (f" ({r['build_cpu_s']:.0f} CPU s)" if r.get("build_cpu_s") else "")
                       + f", app measured at load average {r['load_before']:.1f}-{r['load_after']:.1f}"
                       for s, r in results.items())
    if "L" in results and "S" in results:
        last = (f"runs page at L: {results['L']['runs_page_s']:.2f} s; "
                f"growth S->L: {results['L']['runs_page_s'] / results['S']['runs_page_s']:.1f}x")
    else:
        last = "runs page at L: n/a (L not measured: --sizes S,M,L)"
    return "\n".join([header, builds, table(results), last])


@pytest.mark.bench
def test_bench_store_scale_small():
    results = run(["S"], progress=False)
    print(report(results))
    assert results["S"]["runs_page_s"] < 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="S,M,L", help="comma-separated, of S, M, L (default: all)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached L store")
    parser.add_argument("--build-only", action="store_true", help="build (or check) the cached L store and stop")
    parser.add_argument("--measure-app", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_app:
        args.out.write_text(json.dumps(measure_app(args.measure_app)))
        return 0
    sizes = [s.strip().upper() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    if args.build_only:
        for size in CACHED_SIZES:
            path, stats, reused = cached_store(size, args.rebuild)
            print(f"{size}: {path} ({'cached' if reused else 'built'}): {json.dumps(stats)}")
        return 0
    print(report(run(sizes, args.rebuild)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
