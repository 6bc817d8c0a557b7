"""Benchmark: metric-line latency through the streamer over the loopback sshd, and launch-to-RUNNING on Slurm.

    .venv/bin/python tests/bench/bench_stream_latency.py [--lines 200] [--interval-ms 20]

Starts a real sshd and single-node Slurm on 127.0.0.1 (tests/remote/daemons.py; root), then:
1. appends N metric lines to a run's metrics.jsonl on the "cluster" and measures, per line, the time from
   its write to its record committed in the store by a Streamer over SSH (the run's follower process,
   remote/job/follow.py, following every record file of the run on one channel): p50 / p95 / max.
   Baseline in the same run: the polling follower (read_bytes every 2 s, what the anchors do).
   Target: p95 <= 300 ms.
2. the time from `launch()` (bundle upload + sbatch) to the job's RUNNING state in squeue.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from core.records import JsonlWriter, RunPaths, metric_record  # noqa: E402
from core.store import Store  # noqa: E402
from remote.stream import Streamer  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def measure_latency(transport, work: Path, n_lines: int, interval_s: float, follow: bool, poll_s: float = 2.0
                    ) -> list[float]:
    run_dir = work / f"run-{'follow' if follow else 'poll'}"
    run_dir.mkdir(parents=True)
    store = Store(work / f"store-{'follow' if follow else 'poll'}.sqlite3")
    store.create_run("bench", "bench", None, None, cluster="loop", backend="slurm", run_dir=str(run_dir),
                     status="running")
    written: dict[int, float] = {}
    arrived: dict[int, float] = {}
    last_rowid = [0]
    done = threading.Event()

    def on_update(run_id: str, file_name: str, n: int) -> None:
        if file_name != RunPaths.METRICS:
            return
        now = time.monotonic()
        rows = store.metrics(run_id, since_rowid=last_rowid[0])
        for r in rows:
            arrived.setdefault(r["step"], now)
            last_rowid[0] = max(last_rowid[0], r["rowid"])
        if len(arrived) >= n_lines:
            done.set()

    streamer = Streamer(store, transport, "bench", str(run_dir), on_update=on_update, follow=follow,
                        poll_s=poll_s, files=(RunPaths.METRICS,) if not follow else RunPaths.STREAMED)
    streamer.start()
    time.sleep(1.0)  # the follower is connected and waiting
    with JsonlWriter(run_dir / RunPaths.METRICS) as w:
        for step in range(1, n_lines + 1):
            rec = metric_record(step=step, attempt=1, epoch=0.0, samples=step, tokens=step, loss=1.0, lr=1e-4,
                                grad_norm=1.0, tokens_per_s=1.0)
            written[step] = time.monotonic()
            w.write(rec)
            time.sleep(interval_s)
    done.wait(30)
    streamer.stop()
    store.close()
    missing = [s for s in written if s not in arrived]
    if missing:
        raise SystemExit(f"{len(missing)} lines never arrived (first {missing[:5]})")
    return [(arrived[s] - written[s]) * 1000 for s in sorted(written)]


def launch_to_running(sshd, slurm, work: Path, repeats: int) -> list[tuple[float, float]]:
    from remote.profiles import make_transport
    from remote.runs import launch
    from tests.remote.launch_support import fast_config, ssh_profile

    sleeper = work / "sleeper"
    sleeper.write_text("#!/bin/sh\nsleep 30\n")
    sleeper.chmod(0o755)
    profile = ssh_profile("bench-slurm", "slurm", sshd, work / "slurm-root", partition=slurm.partition)
    profile = profile.model_copy(update={"python": str(sleeper), "env_setup": ""})
    transport = make_transport(profile)
    out = []
    with Store(work / "launch.sqlite3") as store:
        for _ in range(repeats):
            t0 = time.monotonic()
            run_id = launch(fast_config(), profile.name, store, profile=profile, transport=transport)
            t_submitted = time.monotonic() - t0
            job = store.get_run(run_id).job_id
            while time.monotonic() - t0 < 60:
                state = transport.run(["squeue", "-h", "-j", job, "-o", "%T"], check=False).stdout.strip()
                if state == "RUNNING":
                    break
                time.sleep(0.02)
            out.append((t_submitted, time.monotonic() - t0))
            transport.run(["scancel", job], check=False)
    transport.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--launches", type=int, default=3)
    args = parser.parse_args()
    from remote.profiles import make_transport
    from tests.remote.daemons import start_daemons
    from tests.remote.launch_support import ssh_profile

    work = Path(tempfile.mkdtemp(prefix="td-bench-"))
    with start_daemons(work / "daemons") as (sshd, slurm):
        transport = make_transport(ssh_profile("bench", "slurm", sshd, work / "root"))
        transport.run(["true"])  # connect before timing
        tail = measure_latency(transport, work, args.lines, args.interval_ms / 1000, follow=True)
        poll = measure_latency(transport, work, args.lines, args.interval_ms / 1000, follow=False)
        transport.close()
        runs = launch_to_running(sshd, slurm, work, args.launches)
    p50, p95 = percentile(tail, 0.5), percentile(tail, 0.95)
    b50, b95 = percentile(poll, 0.5), percentile(poll, 0.95)
    print(f"metric line -> store over loopback sshd, {args.lines} lines every {args.interval_ms:g} ms")
    print(f"  run follower     : p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  max {max(tail):7.1f} ms  "
          f"(target p95 <= 300 ms: {'PASS' if p95 <= 300 else 'FAIL'})")
    print(f"  baseline poll 2 s: p50 {b50:7.1f} ms  p95 {b95:7.1f} ms  max {max(poll):7.1f} ms")
    print(f"  ratio baseline/follower: p50 x{b50 / p50:.1f}  p95 x{b95 / p95:.1f}")
    print(f"launch -> RUNNING on loopback Slurm ({len(runs)} launches):")
    print(f"  launch() returned (upload + sbatch): median {statistics.median(r[0] for r in runs):.2f} s")
    print(f"  RUNNING in squeue                  : median {statistics.median(r[1] for r in runs):.2f} s "
          f"(all: {', '.join(f'{r[1]:.2f}' for r in runs)})")
    return 0 if p95 <= 300 else 1


if __name__ == "__main__":
    sys.exit(main())
