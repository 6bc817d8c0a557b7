"""One follower per run over the loopback sshd: ten live runs on one connection, one SSH channel each (counted
on the server), every record once across an sshd restart; and the follower's own framing and fallbacks."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.records import JsonlWriter, RunPaths, metric_record
from core.store import Store
from remote.job import follow
from remote.ssh import SshTransport
from remote.stream import FOLLOWER, Streamer, stop_all
from remote.transport import LocalTransport, wait_for
from tests.remote.daemons import SshdServer, _comm, descendants, free_port

N_RUNS = 10
RATE_HZ = 25  # lines per second per run, into metrics.jsonl and stdout.log


def metric(step: int) -> dict:
    return metric_record(step=step, attempt=1, epoch=0.0, samples=step, tokens=step * 10, loss=1.0 / step,
                         lr=1e-4, grad_norm=1.0, tokens_per_s=100.0, t=1000.0 + step)


def server_commands(sshd: SshdServer) -> dict[int, str]:
    """The commands sshd runs for its sessions right now (its descendants that are not sshd): pid -> cmdline."""
    out = {}
    for pid in descendants(sshd.pid) if sshd.running else []:
        if _comm(pid).startswith("sshd"):
            continue
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return out


def followers_per_run(sshd: SshdServer, run_dirs: list[Path]) -> list[int]:
    commands = server_commands(sshd)
    return [sum(1 for cmd in commands.values() if f" {d} " in f" {cmd} ") for d in run_dirs]


def _writer(run_dirs: list[Path], stop: threading.Event, written: list[int]) -> None:
    with contextlib.ExitStack() as files:
        metrics = [files.enter_context(JsonlWriter(d / RunPaths.METRICS)) for d in run_dirs]
        logs = [files.enter_context((d / RunPaths.STDOUT).open("a", encoding="utf-8")) for d in run_dirs]
        step = 0
        while not stop.is_set():
            step += 1
            for i in range(len(run_dirs)):
                metrics[i].write(metric(step))
                logs[i].write(f"step {step}\n")
                logs[i].flush()
                written[i] = step
            stop.wait(1 / RATE_HZ)


@pytest.mark.slow
def test_ten_runs_stream_over_one_connection_one_channel_each_and_every_record_once_across_an_sshd_restart(
        daemons, tmp_path):
    # OpenSSH refuses more sessions per connection than MaxSessions: 14 leaves room for the ten followers,
    # the SFTP session and a few commands (a follower's restart kills the old one with one), and none for a
    # second channel per run (five `tail -F` each did).
    sshd = SshdServer(tmp_path / "sshd", port=free_port(), max_sessions=N_RUNS + 4, alias="tdtest-ten")
    sshd.start()
    transport = SshTransport("ten", sshd.alias, ssh_config=str(sshd.ssh_config), connect_timeout_s=10)
    store = Store(tmp_path / "store.sqlite3")
    run_dirs, streamers = [], []
    stop = threading.Event()
    written = [0] * N_RUNS
    writer = threading.Thread(target=_writer, args=(run_dirs, stop, written), daemon=True)
    try:
        for i in range(N_RUNS):
            run_dir = tmp_path / f"run{i}"
            run_dir.mkdir()
            if i % 2 == 0:  # half the runs carry the follower in their bundle, half get the app's copy
                (run_dir / FOLLOWER).parent.mkdir(parents=True)
                shutil.copy(follow.__file__, run_dir / FOLLOWER)
            store.create_run(f"r{i}", f"run {i}", None, None, cluster="ten", backend="slurm", run_dir=str(run_dir),
                             status="running")
            run_dirs.append(run_dir)
        writer.start()
        streamers = [Streamer(store, transport, f"r{i}", str(d)) for i, d in enumerate(run_dirs)]
        for s in streamers:
            s.start()
        assert wait_for(lambda: all(len(store.metrics(f"r{i}")) >= 10 for i in range(N_RUNS)), 30)
        # (waited for: a follower restarted under load leaves its predecessor for the moment it takes to exit)
        assert wait_for(lambda: followers_per_run(sshd, run_dirs) == [1] * N_RUNS, 10), server_commands(sshd)
        commands = server_commands(sshd)
        assert not [c for c in commands.values() if "tail" in c.split()[:1]], commands
        assert transport.connect_count == 1  # no second connection: the server's session limit was never hit

        sshd.kill()  # the listener and the connection: every follower's channel drops mid-stream
        time.sleep(0.5)
        sshd.start()
        assert wait_for(lambda: followers_per_run(sshd, run_dirs) == [1] * N_RUNS, 30), server_commands(sshd)
        time.sleep(0.5)  # lines written after the restart, too
        stop.set()
        writer.join(10)
        assert wait_for(lambda: all(len(store.metrics(f"r{i}")) == written[i] for i in range(N_RUNS)), 30)
        # the followers of the killed connection are gone, not left running beside the new ones
        assert wait_for(lambda: followers_per_run(sshd, run_dirs) == [1] * N_RUNS, 10), server_commands(sshd)
    finally:
        stop.set()
        stop_all(streamers)
        transport.close()
        sshd.stop()
    assert wait_for(lambda: not any(f"{tmp_path}/run" in c for c in _all_commands()), 10)
    for i, run_dir in enumerate(run_dirs):
        assert [m["step"] for m in store.metrics(f"r{i}")] == list(range(1, written[i] + 1))
        state = store.stream_state(f"r{i}", RunPaths.METRICS)
        assert state["duplicate_count"] == 0 and state["offset"] == (run_dir / RunPaths.METRICS).stat().st_size
        assert store.log_tail(f"r{i}", 1 << 20) == (run_dir / RunPaths.STDOUT).read_text()
    store.close()


def _all_commands() -> list[str]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return out


# ---------------------------------------------------------------------------------------------- the follower


def test_follower_frames_every_file_by_offset_and_restarts_a_rewritten_one_from_zero(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"0123456789")
    proc = subprocess.Popen([sys.executable, "-u", follow.__file__, "--poll", "0.05", str(tmp_path), "a.jsonl=4",
                             "b.log=0"], stdout=subprocess.PIPE)
    decoder = follow.FrameDecoder()
    frames: list[tuple] = []

    def until(pred, timeout=10.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, frames
            frames.extend(decoder.feed(proc.stdout.read1(65536)))

    try:
        until(lambda: ("data", 0, 4, b"456789") in frames)
        assert frames[0] == ("hello", follow.PROTOCOL_VERSION)
        (tmp_path / "b.log").write_bytes(b"late file\n")  # appears after the follower started
        until(lambda: ("data", 1, 0, b"late file\n") in frames)
        (tmp_path / "a.jsonl").write_bytes(b"xy")  # rewritten shorter than what was sent
        until(lambda: ("data", 0, 0, b"xy") in frames)
        # (seen at size 0 or 2: write_bytes truncates, then writes)
        assert [f[:2] for f in frames if f[0] == "truncated"][:1] == [("truncated", 0)]
    finally:
        proc.stdout.close()  # the reading side goes away: the follower notices and exits
        assert proc.wait(timeout=10) == 0


def test_frame_decoder_reassembles_frames_split_anywhere():
    stream = b"TDFOLLOW 1\nD 0 0 5\nab\ncdH\nT 1 0\nD 1 0 3\nxyz"
    for cut in range(1, len(stream)):
        decoder = follow.FrameDecoder()
        frames = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert frames == [("hello", 1), ("data", 0, 0, b"ab\ncd"), ("heartbeat",), ("truncated", 1, 0),
                          ("data", 1, 0, b"xyz")]
    with pytest.raises(ValueError, match="unknown follower frame"):
        follow.FrameDecoder().feed(b"what\n")


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "store.sqlite3") as s:
        yield s


def _run(store: Store, run_dir: Path) -> None:
    store.create_run("r1", "r1", None, None, cluster="here", backend="local", run_dir=str(run_dir), status="running")


def test_a_bundle_whose_follower_speaks_another_protocol_is_followed_with_this_installations_copy(store, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / FOLLOWER).parent.mkdir(parents=True)
    old = Path(follow.__file__).read_text().replace("PROTOCOL_VERSION = 1", "PROTOCOL_VERSION = 0")
    (run_dir / FOLLOWER).write_text(old)
    _run(store, run_dir)
    s = Streamer(store, LocalTransport("here"), "r1", str(run_dir))
    assert s.follower_argv()[2] == str(run_dir / FOLLOWER)
    s.start()
    try:
        with JsonlWriter(run_dir / RunPaths.METRICS) as w:
            for step in range(1, 6):
                w.write(metric(step))
        assert wait_for(lambda: len(store.metrics("r1")) == 5, 15)
        assert s.follower_argv()[2] == "-c"
    finally:
        s.stop()


def test_without_a_python_on_the_machine_the_run_is_polled_instead(store, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _run(store, run_dir)
    s = Streamer(store, LocalTransport("here"), "r1", str(run_dir), python="/nonexistent/python3", poll_s=0.1)
    s.start()
    try:
        with JsonlWriter(run_dir / RunPaths.METRICS) as w:
            for step in range(1, 4):
                w.write(metric(step))
        assert wait_for(lambda: len(store.metrics("r1")) == 3, 15)
        assert not s.follow
    finally:
        s.stop()
