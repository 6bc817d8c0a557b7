"""The sandbox: reference solutions pass, wrong ones fail, hostile programs are contained and leave nothing.

Every hostile test also checks that nothing is left running: no process carries the sample's marker, and
(with the user drop) no process runs under a sandbox uid.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest

from core.evalsets import load_humaneval, load_mbpp
from remote.job import prompts_eval
from remote.job.sandbox import (
    TAIL_BYTES,
    UID_BASE,
    SandboxJob,
    active_uids,
    check_program,
    find_processes,
    run_samples,
    sandbox_capabilities,
)


@pytest.fixture(scope="module")
def caps() -> dict:
    return sandbox_capabilities()


def leftovers(marker: str, caps: dict) -> list[int]:
    time.sleep(0.05)
    pids = find_processes(marker=marker)
    if caps["user_drop"]:
        for uid in active_uids():  # the uids this process reserved (other evaluations use others)
            pids += find_processes(uid=uid)
    return pids


def test_capabilities_report_isolation_features(caps: dict) -> None:
    for key in ("pid_namespace", "net_namespace", "mount_namespace", "user_drop", "rlimits", "notes"):
        assert key in caps
    if os.geteuid() == 0:
        # as root here (FACTS.md) every feature is available; a missing one must be explained in notes
        assert caps["pid_namespace"] and caps["net_namespace"] and caps["user_drop"] and caps["readonly_root"], caps
        assert caps["root_ssh_readable"] is False


def test_humaneval_canonical_solutions_pass_and_mutants_fail() -> None:
    tasks = load_humaneval().tasks
    jobs = [SandboxJob(prompts_eval.program(t, t.reference[len(t.prompt):]), "ok:" + t.task_id) for t in tasks]
    # Mutant: the body replaced by `return None` (no HumanEval task accepts it on all its tests).
    jobs += [SandboxJob(prompts_eval.program(t, "    return None\n"), "bad:" + t.task_id) for t in tasks]
    res = run_samples(jobs, timeout_s=10.0)
    ok, bad = res[: len(tasks)], res[len(tasks):]
    assert [r.job_id for r in ok if not r.passed] == []
    assert sum(r.passed for r in ok) == 164
    assert [r.job_id for r in bad if r.passed] == []
    assert {r.error for r in bad} <= {"assertion", "exception:TypeError", "exception:AttributeError", "exception:ValueError",
                                      "exception:IndexError", "exception:KeyError"}


@pytest.mark.needs_data
def test_mbpp_test_split_reference_code_passes_500_of_500_and_swapped_code_fails(bench_data: Path) -> None:
    tasks = load_mbpp(bench_data / "mbpp" / "mbpp.jsonl").tasks
    assert len(tasks) == 500
    jobs = [SandboxJob(prompts_eval.program(t, t.reference), t.task_id) for t in tasks]
    # Mutant: each of the first 60 tasks gets its neighbour's code (wrong function, wrong name).
    jobs += [SandboxJob(prompts_eval.program(t, tasks[i + 1].reference), "bad:" + t.task_id) for i, t in enumerate(tasks[:60])]
    res = run_samples(jobs, timeout_s=10.0)
    assert [(r.job_id, r.error) for r in res[:500] if not r.passed] == []
    assert [r.job_id for r in res[500:] if r.passed] == []


@pytest.mark.parametrize(
    ("program", "error"),
    [
        ("import sys\nsys.exit(0)\nassert False\n", "early_exit"),
        ("raise SystemExit(0)\nassert False\n", "early_exit"),
        ("exit()\nassert False\n", "early_exit"),
        ("quit(0)\nassert False\n", "early_exit"),
        ("import os\nos._exit(0)\nassert False\n", "no_token"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "killed:SIGKILL"),
        ("def f(:\n", "syntax"),
        ("assert 1 == 2\n", "assertion"),
        ("len(5)\n", "exception:TypeError"),
    ],
)
def test_programs_that_stop_before_the_checks_or_fail_them_do_not_pass(program: str, error: str, caps: dict) -> None:
    r = check_program(program, timeout_s=5)
    assert not r.passed
    assert r.error == error, r.stderr_tail
    assert leftovers(r.marker, caps) == []


def test_program_cannot_see_the_token_on_stdin_or_in_its_environment() -> None:
    prog = ("import os, sys\nassert sys.stdin.read() == ''\nprint(sorted(os.environ))\n"
            "assert not any('token' in k.lower() for k in os.environ)\n")
    r = check_program(prog, timeout_s=5)
    assert r.passed, r.stderr_tail
    assert "TUNEDECK_SANDBOX_ID" in r.stdout_tail and "SSH_AUTH_SOCK" not in r.stdout_tail


def test_fork_bomb_is_contained_and_leaves_nothing(caps: dict) -> None:
    prog = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t0 = time.monotonic()
    r = check_program(prog, timeout_s=3)
    assert not r.passed and r.error == "timeout"
    assert time.monotonic() - t0 < 15
    assert leftovers(r.marker, caps) == []


@pytest.mark.parametrize(
    "program",
    ["x = bytearray(8 * 2**30)\n", "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))\n"],
    ids=["one-allocation", "gradual"],
)
def test_memory_bomb_fails_with_memory_error(program: str, caps: dict) -> None:
    r = check_program(program, timeout_s=10)
    assert not r.passed and r.error == "killed:memory", (r.error, r.stderr_tail[-500:])
    assert leftovers(r.marker, caps) == []


@pytest.mark.parametrize(
    "program",
    ["while True:\n    pass\n", "sum(range(10**12))\n", "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')\n"],
    ids=["python-loop", "c-level-sum", "regex-catastrophe"],
)
def test_busy_loops_time_out_at_the_wall_clock_limit(program: str, caps: dict) -> None:
    t0 = time.monotonic()
    r = check_program(program, timeout_s=2)
    took = time.monotonic() - t0
    assert not r.passed and r.error == "timeout"
    assert 1.9 < took < 6
    assert leftovers(r.marker, caps) == []


def test_huge_file_write_is_stopped_by_the_file_size_limit(caps: dict) -> None:
    prog = "with open('big.bin', 'wb') as f:\n    for _ in range(400):\n        f.write(b'0' * 2**20)\n"
    r = check_program(prog, timeout_s=10)
    assert not r.passed and r.error == "exception:OSError", r.stderr_tail[-300:]
    assert "File too large" in r.stderr_tail
    assert leftovers(r.marker, caps) == []


def test_files_outside_the_sample_directory_are_untouched(tmp_path: Path, caps: dict) -> None:
    if not (caps["mount_namespace"] or caps["user_drop"]):
        pytest.skip("without namespaces or a user drop the sample runs as this user: " + "; ".join(caps["notes"]))
    # World-writable canaries in the shared temp dirs: only the sandbox (not file permissions) protects them.
    shared = Path(tempfile.mkdtemp(prefix="tunedeck-canary-", dir="/tmp"))
    try:
        shared.chmod(0o777)
        canaries = [shared / "canary.txt", tmp_path / "canary.txt"]
        for c in canaries:
            c.write_text("alive")
            c.chmod(0o666)
        stray = Path("/tmp") / f"tunedeck-stray-{os.getpid()}"
        prog = f"""
import os, shutil
attempts = {{"rm": {[str(c) for c in canaries]!r}, "write": [{str(shared / 'new.txt')!r}, {str(stray)!r},
            "/etc/tunedeck-pwned", "/var/tmp/tunedeck-pwned", {str(Path.cwd() / 'tunedeck-pwned')!r}]}}
for p in attempts["rm"]:
    try:
        os.remove(p)
    except OSError as e:
        print("rm", p, type(e).__name__)
    try:
        open(p, "w").write("pwned")
    except OSError as e:
        print("overwrite", p, type(e).__name__)
for p in attempts["write"]:
    try:
        open(p, "w").write("pwned")
    except OSError as e:
        print("write", p, type(e).__name__)
try:
    shutil.rmtree({str(shared)!r})
except OSError as e:
    print("rmtree", type(e).__name__)
open("inside.txt", "w").write("fine")  # its own directory is writable
assert open("inside.txt").read() == "fine"
"""
        r = check_program(prog, timeout_s=10)
        assert r.passed, r.stderr_tail
        for c in canaries:
            assert c.read_text() == "alive"
        assert sorted(p.name for p in shared.iterdir()) == ["canary.txt"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["canary.txt"]
        for p in (stray, Path("/etc/tunedeck-pwned"), Path.cwd() / "tunedeck-pwned"):
            assert not p.exists()
        assert leftovers(r.marker, caps) == []
    finally:
        for p in shared.iterdir():
            p.unlink()
        shared.rmdir()


def test_ssh_keys_are_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caps: dict) -> None:
    if not (caps["mount_namespace"] or caps["user_drop"]):
        pytest.skip("without namespaces or a user drop the sample runs as this user: " + "; ".join(caps["notes"]))
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY----- fake-secret-4242\n")
    key.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SSH_AUTH_SOCK", str(home / "agent.sock"))
    prog = f"""
import os
print("HOME", os.environ.get("HOME"), "agent", os.environ.get("SSH_AUTH_SOCK"))
for p in [os.path.expanduser("~/.ssh/id_ed25519"), {str(key)!r}, "/root/.ssh/id_rsa", "/root/.ssh/id_ed25519"]:
    try:
        print("READ", open(p).read())
    except OSError as e:
        print("denied", p, type(e).__name__)
print("root home:", os.listdir("/root") if os.access("/root", os.R_OK) else "unreadable")
"""
    r = check_program(prog, timeout_s=10)
    assert r.passed, r.stderr_tail
    assert "fake-secret-4242" not in r.stdout_tail and "READ" not in r.stdout_tail
    assert "agent None" in r.stdout_tail
    assert not os.access("/root/.ssh", os.F_OK) or "denied /root/.ssh/id_rsa" in r.stdout_tail
    assert leftovers(r.marker, caps) == []


def test_network_connection_to_a_local_listener_gets_nothing(caps: dict) -> None:
    if not caps["net_namespace"]:
        pytest.skip("no network namespace here: " + "; ".join(caps["notes"]))
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    got: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                got.append(conn.recv(100))
                conn.close()
            except OSError:
                pass
            try:
                got.append(udp.recv(100))
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    prog = f"""
import socket
try:
    s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
    s.sendall(b"exfiltrated")
    print("CONNECTED")
except OSError as e:
    print("tcp refused", type(e).__name__, e.errno)
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"exfiltrated", ("127.0.0.1", {udp.getsockname()[1]}))
except OSError as e:
    print("udp refused", type(e).__name__)
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    print("CONNECTED")
except OSError as e:
    print("internet refused", type(e).__name__)
"""
    try:
        r = check_program(prog, timeout_s=10)
        time.sleep(0.3)
    finally:
        stop.set()
        th.join()
        srv.close()
        udp.close()
    assert r.passed, r.stderr_tail
    assert "CONNECTED" not in r.stdout_tail
    assert got == []
    assert leftovers(r.marker, caps) == []


def test_detached_children_are_killed_with_the_sample(caps: dict) -> None:
    prog = """
import os, subprocess, time
subprocess.Popen(["sleep", "300"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(300)
    os._exit(0)
time.sleep(0.3)
"""
    r = check_program(prog, timeout_s=10)
    assert r.passed, r.stderr_tail
    assert leftovers(r.marker, caps) == []


def test_detached_children_are_killed_after_a_timeout_too(caps: dict) -> None:
    prog = "import subprocess, time\nsubprocess.Popen(['sleep', '300'], start_new_session=True)\ntime.sleep(300)\n"
    r = check_program(prog, timeout_s=1.5)
    assert r.error == "timeout"
    assert leftovers(r.marker, caps) == []


def test_stdout_flood_keeps_only_a_tail_and_still_finds_the_token(caps: dict) -> None:
    r = check_program("import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 2**20)\n", timeout_s=20)
    assert r.passed, r.stderr_tail[-300:]
    assert r.stdout_bytes >= 200 * 2**20
    assert len(r.stdout_tail) <= TAIL_BYTES
    r = check_program("import sys\nwhile True:\n    sys.stdout.write('y' * 2**16)\n", timeout_s=2)
    assert r.error == "timeout" and len(r.stdout_tail) <= TAIL_BYTES
    assert leftovers(r.marker, caps) == []


def test_workers_run_in_parallel_and_results_keep_input_order() -> None:
    progs = [f"import time\ntime.sleep(0.5)\nassert {i} % 3 != 0\n" for i in range(6)]
    seen: list[int] = []
    t0 = time.monotonic()
    res = run_samples(progs, workers=3, timeout_s=5, progress=lambda d, n: seen.append(d))
    took = time.monotonic() - t0
    assert [r.passed for r in res] == [i % 3 != 0 for i in range(6)]
    assert sorted(seen) == list(range(1, 7))
    assert took < 2.8  # 6 x 0.5 s one at a time would be >= 3 s


def test_cancel_skips_samples_not_yet_started() -> None:
    cancel = threading.Event()
    cancel.set()
    res = run_samples(["assert True"] * 3, cancel=cancel)
    assert [r.error for r in res] == ["cancelled"] * 3


def test_sample_directory_is_private_and_writable(caps: dict) -> None:
    prog = "import os, stat\nst = os.stat('.')\nprint('MODE', oct(stat.S_IMODE(st.st_mode)), 'UID', os.getuid())\nopen('x', 'w').write('1')\n"
    r = check_program(prog, timeout_s=5)
    assert r.passed, r.stderr_tail
    assert "MODE 0o700" in r.stdout_tail
    if caps["user_drop"]:
        uid = int(r.stdout_tail.split("UID ")[1].split()[0])
        assert uid in active_uids() and UID_BASE <= uid < UID_BASE + 4096
    assert stat.S_IMODE(0o700) == 0o700


def test_fallback_without_namespaces_still_kills_detached_children_by_marker_and_session() -> None:
    """Where namespaces are unavailable (not root), the sweep by session and marker must catch escapes."""
    from remote.job.sandbox import Limits, _Mode, _run_one

    mode = _Mode(namespaces=False, pid_ns=False, net_ns=False, user_drop=False, no_new_privs=True)
    prog = ("import os, subprocess, time\nsubprocess.Popen(['sleep', '300'], start_new_session=True)\n"
            "if os.fork() == 0:\n    os.setsid()\n    time.sleep(300)\ntime.sleep(0.3)\n")
    r = _run_one(SandboxJob(prog), slot=7, mode=mode, limits=Limits(), timeout_s=10)
    assert r.passed, r.stderr_tail
    time.sleep(0.05)
    assert find_processes(marker=r.marker) == []
    r = _run_one(SandboxJob("import sys\nsys.exit(0)\nassert False\n"), slot=7, mode=mode, limits=Limits(), timeout_s=5)
    assert r.error == "early_exit"


def test_launcher_servers_exit_when_the_evaluation_process_dies(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("from remote.job.sandbox import run_samples\nimport os, time\nrun_samples(['assert 1'] * 2, workers=2)\n"
            "print(os.getpid(), flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        servers = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == pid]
        assert len(servers) == 2
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{p}").exists() and _state(p) != "Z" for p in servers):
        assert time.monotonic() < deadline, "launcher servers outlived the evaluation"
        time.sleep(0.05)


def _ppid(pid: str) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _state(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"
