"""Drives the shipped job code's sandbox as another user: one JSON request per stdin line, one reply per line.

Run by tests/job/sandbox_users.py as `runuser -u USER -- /usr/bin/python3 -I sandbox_driver.py CODE_DIR
[--no-userns]`, with CODE_DIR a world-readable copy of the job code (remote/job/**, the stdlib-only core
modules). Standard library only: an ordinary user cannot read the test venv (its python lives under /root).

--no-userns first enters a user namespace (the user mapped to itself) whose limit on nested user namespaces
is 0, then re-executes itself without that flag: bubblewrap and our own unshare(CLONE_NEWUSER) then both
fail for real, as on a machine that forbids unprivileged user namespaces.
"""

import json
import os
import subprocess
import sys
import threading
import time
import traceback

CLONE_NEWUSER = 0x10000000


def forbid_user_namespaces() -> None:
    import ctypes

    uid, gid = os.getuid(), os.getgid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                       ("/proc/self/gid_map", f"{gid} {gid} 1"), ("/proc/sys/user/max_user_namespaces", "0")):
        with open(path, "w") as f:
            f.write(text)
    # exec: the capabilities this process holds in its new namespace end here (it is not uid 0 there)
    os.execv(sys.executable, [sys.executable, "-I", *[a for a in sys.argv if a != "--no-userns"]])


def main() -> None:
    code_dir = sys.argv[1]
    if "--no-userns" in sys.argv:
        forbid_user_namespaces()
    sys.path.insert(0, code_dir)
    from remote.job import evaluate, sandbox

    sleepers: list[subprocess.Popen] = []

    def result_dict(r: "sandbox.SandboxResult") -> dict:
        return r.to_dict()

    def handle(req: dict) -> dict:
        op = req["op"]
        policy = req.get("policy", "auto")
        if op == "caps":
            return {"caps": sandbox.sandbox_capabilities(policy)}
        if op == "run":
            jobs = [sandbox.SandboxJob(j["program"], j.get("job_id", ""), j.get("timeout_s")) for j in req["jobs"]]
            seen: list[int] = []
            cancel = threading.Event()
            if req.get("cancel"):
                cancel.set()
            t0 = time.perf_counter()
            res = sandbox.run_samples(jobs, workers=req.get("workers"), timeout_s=req.get("timeout_s", 10.0),
                                      progress=lambda d, n: seen.append(d), cancel=cancel, policy=policy)
            seconds = time.perf_counter() - t0
            return {"results": [result_dict(r) for r in res], "progress": seen, "seconds": seconds}
        if op == "score":
            records = evaluate.score_samples_file(req["samples"], tuple(req["bench"]), req["out"],
                                                  timeout_s=req.get("timeout_s", 10.0), workers=req.get("workers"),
                                                  sandbox=policy)
            return {"records": records}
        if op == "evaluate_checkpoint":
            return {"records": evaluate.evaluate_checkpoint(req["run_dir"], req["checkpoint"], req["step"])}
        if op == "shell":  # a transport's run_shell, as this user (`tunedeck cluster check` runs its probe so)
            p = subprocess.run(["bash", "-c", req["script"]], capture_output=True, text=True, timeout=req.get("timeout", 120))
            return {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}
        if op == "sleepers":  # processes of this user that are no sample's: RLIMIT_NPROC must not count them
            sleepers.extend(subprocess.Popen(["sleep", str(req.get("seconds", 120))]) for _ in range(req["n"]))
            return {"pids": [p.pid for p in sleepers]}
        if op == "stop_sleepers":
            for p in sleepers:
                p.kill()
                p.wait()
            sleepers.clear()
            return {}
        raise ValueError(f"unknown op {op!r}")

    out = sys.stdout
    out.write(json.dumps({"pid": os.getpid(), "uid": os.getuid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            reply = handle(req)
        except sandbox.SandboxUnavailable as exc:
            reply = {"refused": str(exc), "reasons": exc.reasons}
        except Exception as exc:  # the test reads the error (the driver keeps serving)
            reply = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
