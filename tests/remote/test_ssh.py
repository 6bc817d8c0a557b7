"""The Transport layer against a real sshd on 127.0.0.1 (and LocalTransport for the same contract)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remote.profiles import make_transport, trust_host_key
from remote.ssh import SshTransport, find_known_hosts_line, resolve_target
from remote.transport import (
    AuthenticationFailed,
    ChangedHostKeyError,
    CommandTimeout,
    ConnectionLost,
    LocalTransport,
    RemoteCommandError,
    StreamProcess,
    Transport,
    UnknownHostKeyError,
    wait_for,
)
from tests.remote.daemons import SshdServer, free_port

HOSTILE = [
    "plain",
    "with space",
    "it's",
    'say "hi"',
    "$(touch {s})",
    "`touch {s}`",
    "; touch {s}",
    "&& touch {s} &&",
    "| touch {s}",
    "line\ntouch {s}",
    "'; touch {s}; '",
    '"; touch {s}; "',
    "$HOME ${HOME} $((1+1))",
    "*",
    "~",
    "-n",
    "\\",
    "tab\there",
    "naïve Ünïcödé ✓ 模型",
    "",
]


@pytest.fixture(params=["local", "ssh"])
def any_transport(request) -> Transport:
    return LocalTransport() if request.param == "local" else request.getfixturevalue("ssh_transport")


def _stream_until(proc: StreamProcess, want: bytes, timeout: float = 10.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while want not in got and time.monotonic() < deadline:
        chunk = proc.read(0.5)
        if chunk is None:
            break
        got += chunk
    return got


def _pgrep(pattern: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return out.stdout.split()


def test_run_returns_output_and_exit_code_and_remote_stderr_in_errors(any_transport):
    result = any_transport.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (result.rc, result.stdout, result.stderr) == (3, "out\n", "err\n")
    with pytest.raises(RemoteCommandError) as info:
        any_transport.run(["sh", "-c", "echo 'no such partition: gpu' >&2; exit 1"])
    assert info.value.rc == 1
    assert "no such partition: gpu" in info.value.stderr
    assert "no such partition: gpu" in str(info.value) and "exited 1" in str(info.value)
    assert any_transport.run(["cat"], stdin=b"piped in").stdout == "piped in"


def test_hostile_values_pass_through_argv_exactly_and_never_run(any_transport, tmp_path):
    sentinel = tmp_path / "SENTINEL"
    values = [v.replace("{s}", str(sentinel)) for v in HOSTILE]
    out = any_transport.run(["printf", "%s\\0", *values]).stdout
    assert out.split("\0")[:-1] == values
    # The same values as file names and contents over the file calls.
    for i, value in enumerate(values[:12]):
        path = str(tmp_path / f"f{i} {value.replace('/', '_')}")
        any_transport.put_bytes(value.encode(), path)
        assert any_transport.read_bytes(path) == value.encode()
        assert any_transport.run(["cat", path]).stdout == value
    assert not sentinel.exists()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=30),
                       min_size=1, max_size=4))
def test_any_text_in_argv_reaches_the_remote_command_unchanged(ssh_transport, values, tmp_path):
    out = ssh_transport.run(["printf", "%s\\0", *values]).stdout
    assert out.split("\0")[:-1] == values
    assert not list(tmp_path.iterdir())


def test_large_output_on_both_streams_is_drained_before_the_exit_status(ssh_transport):
    script = "head -c 6000000 /dev/zero | tr '\\0' o; head -c 2000000 /dev/zero | tr '\\0' e >&2; exit 7"
    result = ssh_transport.run_shell(script, check=False, timeout=60)
    assert result.rc == 7
    assert len(result.stdout) == 6_000_000 and set(result.stdout) == {"o"}
    assert len(result.stderr) == 2_000_000


def test_command_past_its_timeout_raises_command_timeout(any_transport):
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout):
        any_transport.run(["sleep", "30"], timeout=0.5)
    assert time.monotonic() - t0 < 5


def test_put_and_read_bytes_with_offsets_sizes_and_modes(any_transport, tmp_path):
    path = str(tmp_path / "new" / "dir" / "data.bin")
    data = bytes(range(256)) * 1000
    any_transport.put_bytes(data, path, mode=0o640)
    assert Path(path).read_bytes() == data
    assert Path(path).stat().st_mode & 0o777 == 0o640
    assert any_transport.size(path) == len(data)
    assert any_transport.read_bytes(path, offset=1000, max_bytes=10) == data[1000:1010]
    assert any_transport.read_bytes(path, offset=len(data) - 5) == data[-5:]
    assert any_transport.read_bytes(path, offset=len(data)) == b""
    assert any_transport.read_bytes(path) == data
    any_transport.put_bytes(b"replaced", path)
    assert any_transport.read_bytes(path) == b"replaced"
    assert sorted(p.name for p in Path(path).parent.iterdir()) == ["data.bin"]  # no temp file left behind
    local = tmp_path / "local.txt"
    local.write_text("from a file\n")
    any_transport.put_file(local, str(tmp_path / "copy.sh"), mode=0o755)
    assert (tmp_path / "copy.sh").read_text() == "from a file\n" and (tmp_path / "copy.sh").stat().st_mode & 0o111
    assert any_transport.size(str(tmp_path / "absent")) is None
    with pytest.raises(FileNotFoundError):
        any_transport.read_bytes(str(tmp_path / "absent"))
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(251)) * 25_000)  # > 4 MiB: the SSH transport uses its own SFTP session
    any_transport.put_file(big, str(tmp_path / "up" / "big.bin"))
    assert (tmp_path / "up" / "big.bin").read_bytes() == big.read_bytes()
    any_transport.makedirs(str(tmp_path / "a" / "b" / "c"))
    assert (tmp_path / "a" / "b" / "c").is_dir()
    assert any_transport.home() == str(Path.home())


def test_start_streams_lines_as_appended_and_close_kills_the_remote_tail(any_transport, tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_bytes(b"first\n")
    proc = any_transport.start(["tail", "-c", "+1", "-F", str(log)])
    try:
        assert _stream_until(proc, b"first\n") == b"first\n"
        assert proc.read(0.2) == b""  # nothing new yet
        with log.open("ab") as f:
            f.write(b"second\n")
        t0 = time.monotonic()
        assert _stream_until(proc, b"second\n") == b"second\n"
        assert time.monotonic() - t0 < 1.0
        assert _pgrep(str(log)), "the remote tail should be running"
        assert proc.returncode is None
    finally:
        proc.close()
    assert wait_for(lambda: not _pgrep(str(log)), 5), f"tail still running: {_pgrep(str(log))}"
    assert proc.read(0.1) is None


def test_close_kills_a_stream_command_that_never_writes(ssh_transport):
    seconds = f"{random.randint(1000, 9999)}.{random.randint(0, 999999):06d}"
    marker = f"sleep {seconds}"
    # A pipeline: the shell's children must go too, not only the process we started.
    proc = ssh_transport.start(["sh", "-c", f"sleep {seconds} | cat; echo never"])
    assert proc.pid is not None
    assert wait_for(lambda: bool(_pgrep(marker)), 5)
    proc.close()
    assert wait_for(lambda: not _pgrep(marker), 5), "a quiet command must die with its stream"


def test_stream_of_a_finished_command_ends_with_its_exit_code(any_transport):
    proc = any_transport.start(["sh", "-c", "echo done; exit 5"])
    assert _stream_until(proc, b"done\n") == b"done\n"
    assert proc.read(5) is None
    assert wait_for(lambda: proc.returncode is not None, 5)
    assert proc.returncode == 5
    proc.close()


def test_concurrent_calls_from_threads_share_one_connection(ssh_transport, tmp_path):
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(4):
                assert ssh_transport.run(["echo", f"{i}-{j}"]).stdout == f"{i}-{j}\n"
                path = str(tmp_path / f"t{i}-{j}")
                ssh_transport.put_bytes(f"{i}:{j}".encode(), path)
                assert ssh_transport.read_bytes(path) == f"{i}:{j}".encode()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert ssh_transport.connect_count == 1


def test_more_streams_than_the_servers_max_sessions_open_extra_connections(daemons, tmp_path):
    small = SshdServer(tmp_path / "small-sshd", port=free_port(), max_sessions=2, alias="tdtest-small")
    small.start()
    transport = SshTransport("small", small.alias, ssh_config=str(small.ssh_config))
    streams = []
    try:
        for i in range(5):
            log = tmp_path / f"s{i}.log"
            log.write_text(f"line {i}\n")
            streams.append(transport.start(["tail", "-F", str(log)]))
        for i, stream in enumerate(streams):
            assert _stream_until(stream, f"line {i}\n".encode()) == f"line {i}\n".encode()
        assert transport.run(["echo", "still ok"]).stdout == "still ok\n"
        assert transport.connect_count >= 3
    finally:
        for stream in streams:
            stream.close()
        transport.close()
        small.stop()


def test_connection_is_lazy_and_sets_keepalive(ssh_profile_slurm):
    transport = make_transport(ssh_profile_slurm.model_copy(update={"keepalive_s": 7}))
    try:
        assert transport.connect_count == 0
        transport.run(["true"])
        packetizer = transport.paramiko_transport().packetizer
        assert packetizer._Packetizer__keepalive_interval == 7  # paramiko keeps it private
        assert transport.connect_count == 1
    finally:
        transport.close()


def test_reconnects_after_sshd_is_killed_and_restarted_on_the_same_port(ssh_transport, sshd_running_after, tmp_path):
    sshd = sshd_running_after
    assert ssh_transport.run(["echo", "before"]).stdout == "before\n"
    port = sshd.port
    log = tmp_path / "out.log"
    log.write_text("a\n")
    stream = ssh_transport.start(["tail", "-F", str(log)])
    assert _stream_until(stream, b"a\n") == b"a\n"
    in_flight: list[BaseException] = []

    def long_call() -> None:
        try:
            ssh_transport.run(["sleep", "20"])
        except BaseException as exc:
            in_flight.append(exc)

    caller = threading.Thread(target=long_call)
    caller.start()
    time.sleep(0.5)
    sshd.kill()
    caller.join(10)
    assert in_flight and isinstance(in_flight[0], ConnectionLost), in_flight
    with pytest.raises(ConnectionLost):
        _stream_until(stream, b"never", timeout=5)
    sshd.start()
    assert sshd.port == port
    assert ssh_transport.run(["echo", "after"]).stdout == "after\n"
    assert ssh_transport.connect_count == 2
    assert ssh_transport.read_bytes(str(log)) == b"a\n"


def test_call_while_sshd_is_down_retries_with_backoff_until_it_returns(ssh_transport, sshd_running_after):
    sshd = sshd_running_after
    ssh_transport.run(["true"])
    sshd.kill()
    threading.Timer(0.6, sshd.start).start()
    t0 = time.monotonic()
    assert ssh_transport.run(["echo", "ok"]).stdout == "ok\n"
    assert 0.5 < time.monotonic() - t0 < 8


def test_silent_link_is_found_by_ping_and_the_quiet_stream_raises_connection_lost(sshd_server, ssh_transport,
                                                                                  tmp_path):
    ssh_transport.idle_probe_s = 0.5
    ssh_transport.connect_timeout_s = 2
    log = tmp_path / "quiet.log"
    log.write_text("x\n")
    stream = ssh_transport.start(["tail", "-F", str(log)])
    assert _stream_until(stream, b"x\n") == b"x\n"
    assert ssh_transport.ping(5)
    # Freeze the server side of every connection: the TCP link stays up but nothing answers (like a sleep).
    frozen = sshd_server.connection_pids()
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(ConnectionLost, match="no answer"):
            while time.monotonic() - t0 < 15:
                stream.read(0.3)
        assert time.monotonic() - t0 < 6
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert ssh_transport.run(["echo", "back"]).stdout == "back\n"
    assert ssh_transport.connect_count == 2


def test_changed_host_key_is_refused_naming_the_known_hosts_line(sshd_server, ssh_profile_slurm, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    forged = other.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"# comment\nexample.org ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7\n"
                     f"{sshd_server.known_hosts_name} {forged[0]} {forged[1]}\n")
    transport = make_transport(ssh_profile_slurm.model_copy(update={"known_hosts": str(known)}))
    with pytest.raises(ChangedHostKeyError) as info:
        transport.run(["true"])
    err = info.value
    assert err.line == 3 and err.known_hosts == str(known)
    assert err.fingerprint_sha256 == sshd_server.host_key_fingerprint
    assert f"{known}:3" in str(err) and "CHANGED" in str(err)
    assert transport.connect_count == 0


def test_unknown_host_is_refused_with_its_fingerprint_and_connects_after_trust(sshd_server, ssh_profile_slurm, tmp_path):
    known = tmp_path / "ssh" / "known_hosts"
    profile = ssh_profile_slurm.model_copy(update={"known_hosts": str(known)})
    transport = make_transport(profile)
    with pytest.raises(UnknownHostKeyError) as info:
        transport.run(["true"])
    err = info.value
    assert err.key_type == sshd_server.host_key_type
    assert err.fingerprint_sha256 == sshd_server.host_key_fingerprint
    assert err.host == sshd_server.known_hosts_name
    # ssh-keygen agrees with our fingerprint of the key the server offered.
    keygen = subprocess.run(["ssh-keygen", "-lf", str(sshd_server.host_key) + ".pub"], capture_output=True, text=True)
    assert err.fingerprint_sha256 in keygen.stdout
    assert trust_host_key(profile, err) == str(known)
    assert known.read_text() == sshd_server.host_key_line
    assert find_known_hosts_line(str(known), sshd_server.known_hosts_name) == 1
    assert transport.run(["echo", "trusted"]).stdout == "trusted\n"
    transport.close()


def test_hashed_known_hosts_entries_are_honoured(sshd_server, ssh_profile_slurm, tmp_path):
    known = tmp_path / "known_hosts"
    shutil.copy(sshd_server.known_hosts, known)
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    assert sshd_server.known_hosts_name not in known.read_text()
    transport = make_transport(ssh_profile_slurm.model_copy(update={"known_hosts": str(known)}))
    assert transport.run(["echo", "hashed"]).stdout == "hashed\n"
    assert find_known_hosts_line(str(known), sshd_server.known_hosts_name) == 1
    transport.close()


def test_proxy_jump_through_the_same_sshd_reaches_the_host(sshd_server, ssh_profile_slurm):
    profile = ssh_profile_slurm.model_copy(update={"host": sshd_server.jump_alias})
    transport = make_transport(profile)
    try:
        target = transport.target()
        assert [hop.alias for hop in target.jumps] == [sshd_server.alias]
        before = sshd_server.log.read_text().count("Accepted publickey")
        assert transport.run(["echo", "via jump"]).stdout == "via jump\n"
        assert len(transport._conn.hops) == 1
        # Two logins: the hop, then the target through the hop's direct-tcpip channel.
        assert wait_for(lambda: sshd_server.log.read_text().count("Accepted publickey") - before == 2, 5)
        proc = transport.start(["echo", "streamed"])
        assert _stream_until(proc, b"streamed\n") == b"streamed\n"
        proc.close()
    finally:
        transport.close()


def test_key_held_only_by_ssh_agent_logs_in(sshd_server, tmp_path, monkeypatch):
    if shutil.which("ssh-agent") is None:
        pytest.skip("ssh-agent (openssh-client) not installed")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        assert wait_for(sock.exists, 5)
        env = {"SSH_AUTH_SOCK": str(sock), "PATH": "/usr/bin:/bin"}
        subprocess.run(["ssh-add", str(sshd_server.client_key)], env=env, check=True, capture_output=True)
        config = tmp_path / "ssh_config"  # no IdentityFile: only the agent has the key
        config.write_text(f"Host agent-only\n  HostName {sshd_server.host}\n  Port {sshd_server.port}\n"
                          f"  User {sshd_server.user}\n  UserKnownHostsFile {sshd_server.known_hosts}\n")
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* to fall back on
        transport = SshTransport("agent", "agent-only", ssh_config=str(config))
        assert transport.run(["echo", "agent"]).stdout == "agent\n"
        transport.close()
        monkeypatch.delenv("SSH_AUTH_SOCK")
        with pytest.raises(AuthenticationFailed):
            SshTransport("agent", "agent-only", ssh_config=str(config)).run(["true"])
    finally:
        agent.terminate()
        agent.wait(5)


def test_ssh_config_alias_resolves_hostname_user_port_identity_and_jumps(tmp_path):
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host gpu\n  HostName login.example.org\n  User alice\n  Port 2222\n  IdentityFile ~/.ssh/id_gpu\n"
        "  ProxyJump bastion\n  UserKnownHostsFile ~/kh\n"
        "Host bastion\n  HostName bastion.example.org\n  User bob\n"
    )
    target = resolve_target("gpu", ssh_config=str(cfg))
    assert (target.hostname, target.user, target.port) == ("login.example.org", "alice", 2222)
    assert target.identity_files == (str(Path("~/.ssh/id_gpu").expanduser()),)
    assert target.known_hosts == str(Path("~/kh").expanduser())
    assert [(j.hostname, j.user, j.port) for j in target.jumps] == [("bastion.example.org", "bob", 22)]
    assert target.host_key_name == "[login.example.org]:2222"
    # Explicit profile values win over the config, as on the ssh command line.
    over = resolve_target("gpu", user="carol", port=22, proxy_jump="dave@hop1:2200,hop2", ssh_config=str(cfg))
    assert (over.user, over.port, over.host_key_name) == ("carol", 22, "login.example.org")
    assert [(j.alias, j.user, j.port) for j in over.jumps] == [("hop1", "dave", 2200), ("hop2", over.jumps[1].user, 22)]
    assert resolve_target("plain.example.org", ssh_config=str(cfg)).hostname == "plain.example.org"


def test_ssh_transport_satisfies_the_transport_protocol(ssh_transport):
    assert isinstance(ssh_transport, SshTransport)
    assert isinstance(ssh_transport, Transport)
    assert isinstance(LocalTransport(), Transport)
