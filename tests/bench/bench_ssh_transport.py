"""Benchmark: the SSH transport's latency over the loopback test sshd, against LocalTransport in the same run.

    .venv/bin/python tests/bench/bench_ssh_transport.py [--lines 200] [--interval 0.02]

Starts the test daemons (tests/remote/daemons.py; root needed), then measures:
  stream: a line appended to a file -> the same bytes returned by StreamProcess.read of `tail -c +1 -F`
          (p50/p95 over --lines lines; the streamer adds parsing on top). Target p95 <= 300 ms.
  run:    a round trip of `run(["true"])` on the open connection (login shell start included).
  connect: first call on a fresh transport (TCP + key exchange + auth + the command).
Baseline: the same stream and run measured with LocalTransport (subprocess on this machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))


def stream_latencies(transport, path: Path, lines: int, interval: float) -> list[float]:
    path.write_bytes(b"")
    proc = transport.start(["tail", "-c", "+1", "-F", str(path)])
    out = []
    try:
        with path.open("ab", buffering=0) as f:
            for i in range(lines):
                line = f'{{"step": {i}, "loss": 1.0}}\n'.encode()
                t0 = time.perf_counter()
                f.write(line)
                got = b""
                while not got.endswith(line):
                    chunk = proc.read(2.0)
                    if chunk is None:
                        raise RuntimeError("stream ended early")
                    got += chunk
                out.append(time.perf_counter() - t0)
                time.sleep(interval)
    finally:
        proc.close()
    return out


def run_latencies(transport, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        transport.run(["true"])
        out.append(time.perf_counter() - t0)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def show(name: str, values: list[float]) -> None:
    print(f"{name:<22} p50 {1000 * statistics.median(values):8.1f} ms   p95 {1000 * pct(values, 0.95):8.1f} ms   "
          f"max {1000 * max(values):8.1f} ms   (n={len(values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between appended lines")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    from remote.ssh import SshTransport
    from remote.transport import LocalTransport
    from tests.remote.daemons import start_daemons

    work = Path(tempfile.mkdtemp(prefix="td-bench-ssh-"))
    with start_daemons(work / "daemons") as (sshd, _slurm):
        local = LocalTransport()
        t0 = time.perf_counter()
        ssh = SshTransport("bench", sshd.alias, ssh_config=str(sshd.ssh_config))
        ssh.run(["true"])
        connect_s = time.perf_counter() - t0
        base_stream = stream_latencies(local, work / "local.jsonl", args.lines, args.interval)
        ssh_stream = stream_latencies(ssh, work / "ssh.jsonl", args.lines, args.interval)
        base_run = run_latencies(local, args.runs)
        ssh_run = run_latencies(ssh, args.runs)
        ssh.close()
    print(f"connect + first command over ssh: {1000 * connect_s:.1f} ms")
    show("stream local (base)", base_stream)
    show("stream ssh", ssh_stream)
    show("run local (base)", base_run)
    show("run ssh", ssh_run)
    ratio = pct(ssh_stream, 0.95) / max(pct(base_stream, 0.95), 1e-6)
    print(f"stream p95 ssh / local: {ratio:.2f}x; target p95 <= 300 ms: "
          f"{'met' if pct(ssh_stream, 0.95) <= 0.3 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
