"""Cluster check: probe a profile's training environment in one remote call and say how to fix gaps.

One `bash -c` over the transport runs the profile's env_setup, then the profile's python with a
standard-library probe (package versions from their metadata, torch's CUDA build from its version file,
so nothing heavy is imported), nvidia-smi, sbatch/sinfo and the free disk of the work root, and the
sandbox probe of the shipped job code (remote/job/sandbox.py, carried in the command: which sandbox model-
written samples will get there, or why evaluation will refuse to run them). The result is a CheckReport of
CheckItems, each with the install command that would fix it. A hostfile profile with several
hosts gets one more call: the login node runs the same probe on every host over plain ssh (the way pdsh and
DeepSpeed's launcher reach them) and each host is compared with the first one.
"""

from __future__ import annotations

import base64
import json
import shlex
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from remote.transport import ChangedHostKeyError, CommandTimeout, ConnectError, HostKeyError, Transport

# The torch build we test with; a fix pins it so that pip does not pull another torch for deepspeed.
RECOMMENDED_TORCH = "2.13.0"
MIN_PYTHON = (3, 10)
MIN_FREE_DISK_GB = 20.0
REQUIRED_PACKAGES = ("torch", "transformers", "trl", "accelerate", "deepspeed", "datasets")
OPTIONAL_PACKAGES = ("flash_attn", "vllm")
_DIST_NAMES = {"flash_attn": "flash-attn"}
_MARK = "TUNEDECK-CHECK "

# Runs on the cluster with the environment's python: standard library only, Python 3.8 syntax.
PROBE = r'''
import json, os, platform, shutil, subprocess, sys
out = {"python": platform.python_version(), "python_path": sys.executable, "packages": {}}
try:
    from importlib import metadata
except ImportError:
    metadata = None
def dist_version(name):
    if metadata is None:
        return None
    try:
        return metadata.version(name)
    except Exception:
        return None
for mod, dist in json.loads(sys.argv[3]).items():
    out["packages"][mod] = dist_version(dist)
cuda = None
try:
    import importlib.util
    spec = importlib.util.find_spec("torch")
    if spec and spec.origin:
        ns = {}
        with open(os.path.join(os.path.dirname(spec.origin), "version.py")) as f:
            exec(compile(f.read(), "torch/version.py", "exec"), ns)
        cuda = ns.get("cuda")
except Exception as exc:
    cuda = "unknown (%s)" % exc
out["torch_cuda"] = cuda
def run(argv):
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
        return p.returncode, p.stdout.strip(), p.stderr.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return None, "", str(exc)
gpus = []
if shutil.which("nvidia-smi"):
    rc, so, se = run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"])
    gpus = [l.strip() for l in so.splitlines() if l.strip()] if rc == 0 else []
    out["nvidia_smi_error"] = None if rc == 0 else (se or so)
out["nvidia_smi"] = shutil.which("nvidia-smi")
out["gpus"] = gpus
out["sbatch"] = shutil.which("sbatch")
if out["sbatch"]:
    out["sbatch_version"] = run(["sbatch", "--version"])[1]
    part = sys.argv[2]
    argv = ["sinfo", "-h", "-o", "%P %a %D %G"] + (["-p", part] if part else [])
    rc, so, se = run(argv)
    out["sinfo"] = so if rc == 0 else None
    out["sinfo_error"] = None if rc == 0 else se
root = os.path.expanduser(sys.argv[1])
probe = root
while not os.path.exists(probe) and os.path.dirname(probe) != probe:
    probe = os.path.dirname(probe)
usage = shutil.disk_usage(probe)
out["work_root"] = root
out["work_root_exists"] = os.path.isdir(root)
out["work_root_writable"] = os.access(probe, os.W_OK)
out["disk_free_gb"] = usage.free / 1e9
if len(sys.argv) > 4:  # the job code's sandbox, run as an evaluation there would run it
    import base64, shutil, tempfile, zlib
    tmp = tempfile.mkdtemp(prefix="tunedeck-check-")
    sb = None
    try:
        files = json.loads(zlib.decompress(base64.b64decode(sys.argv[4])).decode("utf-8"))
        for rel, text in files.items():
            path = os.path.join(tmp, rel)
            if not os.path.isdir(os.path.dirname(path)):
                os.makedirs(os.path.dirname(path))
            with open(path, "w") as f:
                f.write(text)
        sys.path.insert(0, tmp)
        from remote.job import sandbox as sb
        try:
            caps = sb.sandbox_capabilities("auto")
            out["sandbox"] = {k: caps.get(k) for k in ("mode", "confined", "nproc_scope", "bwrap", "notes")}
        except sb.SandboxUnavailable as exc:
            out["sandbox"] = {"mode": None, "refusal": str(exc), "reasons": exc.reasons}
    except Exception as exc:
        out["sandbox"] = {"mode": None, "error": "%s: %s" % (type(exc).__name__, exc)}
    finally:
        if sb is not None:
            sb._close_zygotes()
        shutil.rmtree(tmp, ignore_errors=True)
print("TUNEDECK-CHECK " + json.dumps(out))
'''


@dataclass(frozen=True)
class CheckItem:
    """One probed fact: whether it is fine, what was found, and how to fix it when not."""

    name: str
    ok: bool
    value: str
    fix: str | None = None
    required: bool = True


@dataclass(frozen=True)
class CheckReport:
    profile: str
    items: list[CheckItem] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    checked_at: float = field(default_factory=time.time)
    backend: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"profile": self.profile, "backend": self.backend, "checked_at": self.checked_at,
                "items": [asdict(i) for i in self.items], "raw": self.raw}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckReport:
        return cls(str(data["profile"]), [CheckItem(**i) for i in data.get("items", [])], dict(data.get("raw") or {}),
                   float(data.get("checked_at") or 0.0), str(data.get("backend") or ""))

    @property
    def ok(self) -> bool:
        """True when nothing required is missing (warnings allowed)."""
        return all(i.ok for i in self.items if i.required)

    @property
    def missing(self) -> list[CheckItem]:
        return [i for i in self.items if i.required and not i.ok]

    @property
    def warnings(self) -> list[CheckItem]:
        return [i for i in self.items if not i.required and not i.ok]

    def item(self, name: str) -> CheckItem:
        for i in self.items:
            if i.name == name:
                return i
        raise KeyError(name)

    @property
    def install_command(self) -> str | None:
        """One pip command installing every missing required package (torch pinned), or None."""
        pkgs = [i.name for i in self.missing if i.name in REQUIRED_PACKAGES and i.name != "torch"]
        torch_missing = any(i.name == "torch" for i in self.missing)
        if not pkgs and not torch_missing:
            return None
        torch_v = (self.raw.get("packages") or {}).get("torch")
        return _pip(torch_v.split("+")[0] if torch_v else None, *(_DIST_NAMES.get(p, p) for p in pkgs))

    def format(self) -> str:
        """A plain-text table, then the fixes."""
        width = max((len(i.name) for i in self.items), default=4)
        lines = [f"cluster check: {self.profile}"]
        for i in self.items:
            mark = "ok" if i.ok else ("MISSING" if i.required else "warn")
            lines.append(f"  {i.name.ljust(width)}  {mark:<7}  {i.value}")
        fixes = [i for i in self.items if not i.ok and i.fix]
        if fixes:
            lines.append("to fix:")
            lines.extend(f"  {i.name}: {i.fix}" for i in fixes)
        if self.install_command:
            lines.append(f"install the missing packages (after env_setup): {self.install_command}")
        lines.append("all required parts present" if self.ok else
                     f"missing: {', '.join(i.name for i in self.missing)}")
        return "\n".join(lines)


SANDBOX_CODE = ("remote/__init__.py", "remote/job/__init__.py", "remote/job/sandbox.py", "remote/job/sandbox_launcher.py")


def sandbox_code_arg() -> str:
    """The shipped job code's sandbox modules, as one compressed argument (~15 kB, well under the 128 kB a
    single argument may have), so the check needs no upload."""
    from remote.bundle import job_code_files

    files = job_code_files()
    payload = {rel: files[rel].read_text(encoding="utf-8") for rel in SANDBOX_CODE}
    return base64.b64encode(zlib.compress(json.dumps(payload).encode("utf-8"), 9)).decode("ascii")


def probe_script(profile) -> str:
    """The one shell script the check runs (env_setup, then the probe; every value quoted)."""
    packages = {m: _DIST_NAMES.get(m, m) for m in (*REQUIRED_PACKAGES, *OPTIONAL_PACKAGES)}
    argv = [profile.python, "-c", PROBE, profile.effective_work_root, profile.partition or "", json.dumps(packages),
            sandbox_code_arg()]
    setup = (profile.env_setup or "").strip()
    # env_setup is the user's own shell text for their cluster (like a line in ~/.bashrc): run as written.
    guard = f"{{ {setup}\n}} || {{ echo 'env_setup failed' >&2; exit 97; }}\n" if setup else ""
    return f"{guard}exec {shlex.join(argv)}\n"


def _pip(torch_version: str | None, *packages: str) -> str:
    pinned = f"torch=={torch_version or RECOMMENDED_TORCH}"
    return shlex.join(["pip", "install", pinned, *packages])


def build_report(profile, data: dict[str, Any]) -> CheckReport:
    """Turn the probe's JSON into items (pure: tested without a cluster)."""
    items: list[CheckItem] = []
    py = data.get("python", "?")
    try:
        py_ok = tuple(int(x) for x in py.split(".")[:2]) >= MIN_PYTHON
    except ValueError:
        py_ok = False
    items.append(CheckItem("python", py_ok, f"{py} ({data.get('python_path', '?')})",
                           None if py_ok else f"use Python >= {'.'.join(map(str, MIN_PYTHON))} "
                                              "(set the profile's python or env_setup)"))
    pkgs = data.get("packages", {})
    torch_v = pkgs.get("torch")
    gpus: list[str] = data.get("gpus") or []
    cuda = data.get("torch_cuda")
    if torch_v:
        build = f"CUDA {cuda}" if cuda else "CPU build"
        torch_item = CheckItem("torch", True, f"{torch_v} ({build})")
        if gpus and not cuda:
            torch_item = CheckItem("torch", False, f"{torch_v} (CPU build, but {len(gpus)} GPUs here)",
                                   shlex.join(["pip", "install", "--force-reinstall", f"torch=={torch_v}",
                                               "--index-url", "https://download.pytorch.org/whl/cu126"]))
        items.append(torch_item)
    else:
        items.append(CheckItem("torch", False, "not installed", _pip(None)))
    pinned_torch = torch_v.split("+")[0] if torch_v else None
    for mod in REQUIRED_PACKAGES[1:]:
        v = pkgs.get(mod)
        items.append(CheckItem(mod, bool(v), v or "not installed",
                               None if v else _pip(pinned_torch, _DIST_NAMES.get(mod, mod))))
    has_cuda = bool(gpus) or bool(cuda)
    fa = pkgs.get("flash_attn")
    if fa:
        items.append(CheckItem("flash_attn", True, fa, required=False))
    elif has_cuda:
        items.append(CheckItem("flash_attn", False, "not installed (sdpa attention will be used)",
                               "pip install flash-attn --no-build-isolation", required=False))
    else:
        items.append(CheckItem("flash_attn", True, "not installed (needs CUDA; sdpa attention is used)",
                               required=False))
    vllm = pkgs.get("vllm")
    items.append(CheckItem("vllm", True, vllm or "not installed (optional: faster evaluation)", required=False))
    if gpus:
        items.append(CheckItem("gpus", True, f"{len(gpus)} x {gpus[0]}", required=False))
    else:
        why = data.get("nvidia_smi_error") or ("nvidia-smi not found" if not data.get("nvidia_smi") else "none")
        note = "; Slurm allocates GPUs on compute nodes" if profile.backend == "slurm" else "; training runs on CPU"
        items.append(CheckItem("gpus", True, f"0 ({why}{note})", required=False))
    if profile.backend == "slurm":
        sbatch = data.get("sbatch")
        items.append(CheckItem("sbatch", bool(sbatch), f"{sbatch} ({data.get('sbatch_version', '')})" if sbatch
                               else "not found on PATH",
                               None if sbatch else "load Slurm's client tools in env_setup (e.g. `module load slurm`)"))
        if sbatch:
            sinfo = data.get("sinfo")
            part = profile.partition or "(default)"
            ok = bool(sinfo)
            items.append(CheckItem("partition", ok, f"{part}: {sinfo}" if ok else
                                   f"{part}: {data.get('sinfo_error') or 'not found'}",
                                   None if ok else "set --partition to one listed by `sinfo -s`"))
    free = float(data.get("disk_free_gb", 0.0))
    root = data.get("work_root", profile.effective_work_root)
    items.append(CheckItem("disk", free >= MIN_FREE_DISK_GB, f"{free:.1f} GB free at {root}",
                           None if free >= MIN_FREE_DISK_GB else
                           f"free space or choose another --work-root (checkpoints need >= {MIN_FREE_DISK_GB:g} GB)",
                           required=False))
    items.append(_sandbox_item(profile, data.get("sandbox")))
    writable = bool(data.get("work_root_writable"))
    items.append(CheckItem("work_root", writable, root + ("" if data.get("work_root_exists") else " (will be created)"),
                           None if writable else "choose a writable --work-root"))
    return CheckReport(profile.name, items, data, backend=profile.backend)


# What must be the same on every node of a hostfile run: DeepSpeed's launcher starts the ranks everywhere with
# the login node's interpreter path, and ranks with different stacks fail (or worse, compute differently).
NODE_KEYS = ("python", "python_path", "torch_cuda")
NODE_SSH = ("ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10")


def _hosts(profile) -> list[str]:
    hosts = [line.split()[0] for line in (profile.hostfile_hosts or []) if line.strip()]
    return list(dict.fromkeys(hosts))


def node_probe_script(profile, hosts: list[str]) -> str:
    """One script for the login node: the probe on every host over plain ssh (as pdsh and DeepSpeed's
    launcher reach them), in parallel, each answer base64 on one `N|host|exit|...` line."""
    payload = base64.b64encode(probe_script(profile).encode()).decode()
    q = shlex.quote
    # The probe once, in a variable: the whole script is one argument of `bash -c` (at most 128 KiB on Linux).
    lines = ["set +e", f"probe={payload}"]
    for host in hosts:
        lines.append(f"( out=$(printf '%s' \"$probe\" | base64 -d | {shlex.join(NODE_SSH)} {q(host)} bash -s 2>&1); "
                     f"rc=$?; printf 'N|%s|%s|%s\\n' {q(host)} \"$rc\" \"$(printf '%s' \"$out\" | base64 | tr -d '\\n')\" ) &")
    lines.append("wait")
    return "\n".join(lines) + "\n"


def _node_summary(data: dict[str, Any]) -> dict[str, str]:
    """The facts compared across nodes, as display strings."""
    pkgs = data.get("packages") or {}
    out = {key: str(data.get(key)) for key in NODE_KEYS}
    out.update({mod: str(pkgs.get(mod)) for mod in (*REQUIRED_PACKAGES, *OPTIONAL_PACKAGES)})
    gpus = data.get("gpus") or []
    out["gpus"] = f"{len(gpus)} x {gpus[0]}" if gpus else "0"
    return out


def compare_nodes(profile, answers: dict[str, tuple[int, str]]) -> list[CheckItem]:
    """One item per host: reachable, and the same Python, packages and GPUs as the first host (rank 0's, the
    rendezvous); a host that differs is named with what differs (pure: tested without a cluster)."""
    items: list[CheckItem] = []
    facts: dict[str, dict[str, str]] = {}
    for host, (rc, text) in answers.items():
        line = next((ln for ln in reversed(text.splitlines()) if ln.startswith(_MARK)), None)
        if line is None:
            tail = text.strip()[-400:] or "(no output)"
            if rc == 255:
                items.append(CheckItem(f"node {host}", False, f"not reachable over ssh from the login node: {tail}",
                                       f"set up passwordless ssh from the login node to {host} (pdsh and DeepSpeed's "
                                       "launcher need it), and record its host key"))
            else:
                items.append(CheckItem(f"node {host}", False, f"the probe did not run there (exit {rc}): {tail}",
                                       f"install the training environment on {host} (the same python and env_setup)"))
            continue
        facts[host] = _node_summary(json.loads(line[len(_MARK):]))
    if not facts:
        return items
    ref_host = next(h for h in answers if h in facts)
    ref = facts[ref_host]
    for host, have in facts.items():
        diffs = [f"{k} {have[k]} ({ref_host}: {ref[k]})" for k in ref if have.get(k) != ref[k]]
        if not diffs:
            items.append(CheckItem(f"node {host}", True, f"reachable; Python {have['python']}, torch {have['torch']}, "
                                   f"deepspeed {have['deepspeed']}, GPUs {have['gpus']}"
                                   + ("" if host != ref_host else " (reference: rank 0's node)")))
            continue
        pins = [f"{_DIST_NAMES.get(k, k)}=={ref[k]}" for k in (*REQUIRED_PACKAGES, *OPTIONAL_PACKAGES)
                if have.get(k) != ref[k] and ref[k] not in ("None", "")]
        fix = (f"make {host} match {ref_host}: " + (shlex.join(["pip", "install", *pins]) + " (after env_setup)"
                                                     if pins else "the same Python and GPUs"))
        items.append(CheckItem(f"node {host}", False, f"differs from {ref_host}: " + "; ".join(diffs), fix))
    return items


def check_nodes(profile, transport: Transport, *, timeout: float = 120) -> list[CheckItem]:
    """Probe every host of a hostfile profile from its login node and compare them (see compare_nodes)."""
    hosts = _hosts(profile)
    res = transport.run_shell(node_probe_script(profile, hosts), timeout=timeout, check=False)
    answers: dict[str, tuple[int, str]] = {h: (255, "no answer") for h in hosts}
    for line in res.stdout.splitlines():
        parts = line.split("|", 3)
        if len(parts) == 4 and parts[0] == "N" and parts[1] in answers:
            answers[parts[1]] = (int(parts[2]) if parts[2].lstrip("-").isdigit() else 255,
                                 base64.b64decode(parts[3]).decode("utf-8", "replace"))
    return compare_nodes(profile, answers)


def check_cluster(profile, transport: Transport | None = None, *, timeout: float = 120) -> CheckReport:
    """Probe the profile's machine (over its transport) and report what is there and what is missing."""
    if transport is None:
        from remote.profiles import transport_for

        transport = transport_for(profile)
    try:
        result = transport.run_shell(probe_script(profile), timeout=timeout, check=False)
    except (HostKeyError, ConnectError, CommandTimeout) as exc:
        return CheckReport(profile.name, [CheckItem("connection", False, str(exc), _connection_fix(exc))],
                           backend=profile.backend)
    line = next((ln for ln in reversed(result.stdout.splitlines()) if ln.startswith(_MARK)), None)
    if line is None:
        stderr = result.stderr.strip()[-1500:] or "(no output)"
        if result.rc == 97:
            return CheckReport(profile.name, [CheckItem("env_setup", False, f"`{profile.env_setup}` failed: {stderr}",
                                                        "fix the profile's env_setup command")],
                               backend=profile.backend)
        return CheckReport(profile.name, [CheckItem(
            "python", False, f"`{profile.python}` did not run the probe (exit {result.rc}): {stderr}",
            "install Python >= 3.10 or set the profile's python / env_setup")], backend=profile.backend)
    report = build_report(profile, json.loads(line[len(_MARK):]))
    if profile.backend == "hostfile" and len(_hosts(profile)) > 1:
        # Several nodes: each must be reachable from the login node and run the same stack.
        try:
            nodes = check_nodes(profile, transport, timeout=timeout)
        except CommandTimeout as exc:
            nodes = [CheckItem("nodes", False, f"probing the nodes timed out: {exc}", "check ssh between the nodes")]
        report = CheckReport(report.profile, [*report.items, *nodes], report.raw, backend=report.backend)
    return report


def _sandbox_item(profile, sb: dict[str, Any] | None) -> CheckItem:
    """Which sandbox model-written samples will get there (a warning, not a blocker: training runs without)."""
    where = " (probed on the login node; compute nodes may differ)" if profile.backend == "slurm" else ""
    if not sb:
        return CheckItem("sandbox", False, "not probed (the probe's python is too old or failed)" + where,
                         "use Python >= 3.10 for the profile", required=False)
    if sb.get("confined"):
        tool = f", {sb['notes'][0].split(': ', 1)[-1]}" if sb.get("mode") == "bwrap" and sb.get("notes") else ""
        return CheckItem("sandbox", True, f"{sb['mode']}{tool}: pid, network, mount, IPC and UTS namespaces; "
                         f"read-only root, homes hidden; process limit {sb.get('nproc_scope')}" + where,
                         required=False)
    if sb.get("refusal"):
        reasons = "; ".join(f"{k}: {v}" for k, v in (sb.get("reasons") or {}).items())
        return CheckItem("sandbox", False, f"NONE: evaluation will refuse to run model-written samples ({reasons})"
                         + where, "install bubblewrap, or ask the admins to allow unprivileged user namespaces; or "
                         "set `evaluation.sandbox: unconfined` in the run config (samples then run as you, with "
                         "your files and network)", required=False)
    return CheckItem("sandbox", False, f"could not probe: {sb.get('error') or sb}" + where, None, required=False)


def _connection_fix(exc: Exception) -> str:
    if isinstance(exc, ChangedHostKeyError):
        return "do not trust it blindly: ask the cluster admins whether the host key changed"
    if isinstance(exc, HostKeyError):
        return "check the fingerprint, then `tunedeck cluster trust NAME`"
    return "check the host, user, port and keys (ssh-agent or --identity-file)"


# ------------------------------------------------------------------------------ the last check, kept


def checks_dir() -> Path:
    from core.paths import config_dir

    return config_dir() / "checks"


def save_report(report: CheckReport) -> Path:
    """Keep a profile's latest check (config dir/checks/NAME.json; no secrets are in it): launches and the
    config page judge against it without probing the cluster again within a day."""
    from core.fsutil import atomic_write_text

    path = checks_dir() / f"{report.profile}.json"
    atomic_write_text(path, json.dumps(report.to_json(), indent=1))
    return path


def load_report(profile_name: str) -> CheckReport | None:
    """The profile's last stored check, or None (never checked, or the file is unreadable)."""
    path = checks_dir() / f"{profile_name}.json"
    try:
        return CheckReport.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def gpu_facts(report: CheckReport) -> tuple[int | None, str | None, float | None, str]:
    """(GPUs per node, GPU name, memory per GPU in GB, where that was seen) from a check.

    nvidia-smi on the probed machine counts where training runs there (local, hostfile); on a Slurm login
    node without GPUs, the partition's gres (`gpu:8`, `gpu:a100:8`) says what a compute node has."""
    from core.guardrails import parse_gres

    raw = report.raw
    gpus = raw.get("gpus") or []
    if gpus and report.backend != "slurm":  # a Slurm login node's own GPUs say nothing of the compute nodes
        name, mem = gpus[0], None
        if "," in gpus[0]:
            name, _, mem_text = gpus[0].rpartition(",")
            digits = "".join(ch for ch in mem_text if ch.isdigit() or ch == ".")
            mem = float(digits) / 1024 if digits else None  # nvidia-smi: MiB
        return len(gpus), name.strip(), mem, "nvidia-smi"
    if report.backend == "slurm" and raw.get("sinfo"):
        best: tuple[int | None, str | None] = (None, None)
        for line in str(raw["sinfo"]).splitlines():
            parts = line.split()
            if len(parts) >= 4:
                n, kind = parse_gres(parts[3])
                if n is not None and (best[0] is None or n > best[0]):
                    best = (n, kind)
        if best[0] is not None:
            return best[0], best[1], None, "the Slurm partition's gres (sinfo)"
        return None, None, None, "sinfo shows no GPU gres"
    if not raw:
        return None, None, None, "the check did not run"
    why = raw.get("nvidia_smi_error") or ("nvidia-smi not found" if not raw.get("nvidia_smi") else "no GPU listed")
    if report.backend == "slurm":
        return None, None, None, why
    return 0, None, None, why
