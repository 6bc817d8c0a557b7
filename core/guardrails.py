"""Launch guardrails: what makes a launch certain to fail, said as one readable paragraph each.

Pure logic over a config, its backend and what the cluster check last found (`ClusterFacts`, filled by
remote.preflight from remote.check). The CLI (`tunedeck launch`, `--force` to override), the app's Launch
button and the config page all show the same findings.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from core.config import RunConfig
from core.placement import PlacementError, resolve_placement

CHECK_MAX_AGE_S = 24 * 3600  # an older check is run again before a launch
# GPU families whose names nvidia-smi / Slurm gres types carry (matched case-insensitively).
GPU_FAMILIES = ("H200", "H100", "A100", "A10G", "L40S", "L40", "A40", "A6000", "RTX-4090", "4090", "V100", "T4", "L4")
MEMORY_TOLERANCE = 0.93  # nvidia-smi reports GiB-ish totals a little under the marketing size


@dataclass(frozen=True)
class MissingPart:
    name: str
    value: str
    fix: str | None


@dataclass(frozen=True)
class ClusterFacts:
    """What a profile's last cluster check found, as plain data."""

    profile: str
    backend: str
    checked_at: float | None  # epoch seconds of the check
    missing: tuple[MissingPart, ...] = ()
    install_command: str | None = None
    gpus_per_node: int | None = None  # None: not known (e.g. a Slurm login node without gres information)
    gpu_name: str | None = None
    gpu_memory_gb: float | None = None
    gpu_source: str = ""  # where the GPU facts come from, e.g. "nvidia-smi on this machine"
    fresh: bool = True  # run just now (False: read from the stored last check)

    def age_text(self, now: float | None = None) -> str:
        if self.checked_at is None:
            return "never"
        age = max(0.0, (now or time.time()) - self.checked_at)
        if age < 90:
            return "just now"
        if age < 5400:
            return f"{age / 60:.0f} min ago"
        if age < 2 * 86400:
            return f"{age / 3600:.0f} h ago"
        return f"{age / 86400:.0f} days ago"


@dataclass(frozen=True)
class Finding:
    """One reason a launch would fail: a short title and one paragraph saying what, why and how to fix it."""

    code: str  # no_data | missing_packages | gpus | gpu_type | gpu_memory | does_not_fit | placement
    title: str
    text: str
    fix: str | None = None

    def paragraph(self) -> str:
        return f"{self.title}: {self.text}" + (f" Fix: {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Preflight:
    """Findings for one (config, profile), with the facts they were judged on."""

    findings: tuple[Finding, ...]
    facts: ClusterFacts | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.findings

    def format(self) -> str:
        """The refusal as the CLI prints it: one paragraph per finding."""
        head = (f"launch refused: {len(self.findings)} reason{'s' if len(self.findings) != 1 else ''} this run "
                "cannot work (--force launches anyway)")
        return "\n\n".join([head, *(f.paragraph() for f in self.findings)])


def gpu_family(name: str | None) -> str | None:
    """The GPU family in a config gpu_type or a device name (A100, H100, ...), None when not recognised."""
    if not name:
        return None
    upper = name.upper().replace(" ", "-")
    for fam in GPU_FAMILIES:
        if fam in upper:
            return "RTX-4090" if fam == "4090" else fam
    return None


def has_training_data(config: RunConfig) -> bool:
    d = config.data
    return bool(d.train_files or d.dataset_dir or d.demo)


def launch_findings(config: RunConfig, backend: str, facts: ClusterFacts | None, *,
                    eval_devices: tuple[int, ...] = (), estimate_fits: bool | None = None,
                    estimate_text: str = "") -> list[Finding]:
    """Everything that makes this launch certain to fail (empty: go)."""
    findings: list[Finding] = []
    if not has_training_data(config):
        findings.append(Finding(
            "no_data", "No training data",
            "data.train_files, data.dataset_dir and data.demo are all empty, so the job would start, load "
            "nothing and fail in its first minute.",
            "add training files (JSONL, JSON, Parquet or CSV) to data.train_files or a saved dataset to "
            "data.dataset_dir, or start from the tiny-demo preset, which generates its own demo data."))
    if facts is not None:
        findings += _check_findings(config, facts, eval_devices)
    if estimate_fits is False:
        findings.append(Finding(
            "does_not_fit", "The estimate says training does not fit in GPU memory",
            (estimate_text or "the pre-flight estimate's peak memory per GPU exceeds cluster.gpu_memory_gb")
            + ": the job would stop with an out-of-memory error at its first step.",
            "use more GPUs (cluster.nodes / gpus_per_node), ZeRO-3 with offload, gradient checkpointing or a "
            "smaller training.micro_batch_size; `tunedeck estimate FILE` shows the breakdown."))
    try:
        resolve_placement(config, backend, eval_devices)
    except PlacementError as exc:
        findings.append(Finding("placement", "The evaluation placement cannot work here", f"{exc}.",
                                "set evaluation.placement to auto (the plan preview says what it picks and why)."))
    return findings


def _check_findings(config: RunConfig, facts: ClusterFacts, eval_devices: tuple[int, ...]) -> list[Finding]:
    out: list[Finding] = []
    when = f"the check of cluster {facts.profile!r} ({facts.age_text()})"
    if facts.missing:
        names = ", ".join(m.name for m in facts.missing)
        fixes = [f"{facts.install_command} (after the profile's env_setup)"] if facts.install_command else []
        fixes += [f"{m.name}: {m.fix}" for m in facts.missing
                  if m.fix and not (facts.install_command and m.fix.startswith("pip install"))]
        details = "; ".join(f"{m.name}: {m.value}" for m in facts.missing)
        out.append(Finding(
            "missing_packages", f"The cluster's training environment is missing {names}",
            f"{when[0].upper()}{when[1:]} found {details}. The job would fail at its first import.",
            "; ".join([*fixes, f"then `tunedeck cluster check {facts.profile}`"]) + "."))
    c = config.cluster
    if c.gpu_type == "cpu":
        return out
    want_mem = c.memory_gb
    shape = f"{c.gpus_per_node} GPU{'s' if c.gpus_per_node != 1 else ''} per node of type {c.gpu_type}" + (
        f" ({want_mem:g} GB each)" if want_mem else "")
    need = c.gpus_per_node + len(eval_devices)
    if facts.gpus_per_node == 0:
        out.append(Finding(
            "gpus", "No GPU where this config needs GPUs",
            f"The config asks for {shape}, but {when} found no GPU ({facts.gpu_source or 'none reported'}). "
            f"A {_params(config)} model cannot train on CPU: the job would fail or run for months.",
            "launch on a cluster profile with GPUs, or use a CPU-sized config (the tiny-demo preset) here."))
        return out
    if facts.gpus_per_node is not None and facts.gpus_per_node < need:
        extra = f" plus {len(eval_devices)} reserved for evaluation" if eval_devices else ""
        out.append(Finding(
            "gpus", "Fewer GPUs per node than the config asks for",
            f"The config asks for {shape}{extra}, but {when} found {facts.gpus_per_node} "
            f"({facts.gpu_source}). Training would not start with that many processes per node.",
            f"set cluster.gpus_per_node to at most {facts.gpus_per_node - len(eval_devices)} (the batch split "
            "follows), or launch where each node has enough GPUs."))
    fam_want, fam_found = gpu_family(c.gpu_type), gpu_family(facts.gpu_name)
    if fam_want and fam_found and fam_want != fam_found:
        out.append(Finding(
            "gpu_type", "The GPU type differs from the config's",
            f"The config plans for {c.gpu_type} but {when} found {facts.gpu_name} ({facts.gpu_source}): the "
            "memory estimate and the time estimate were made for other hardware.",
            "set cluster.gpu_type (and gpu_memory_gb) to what the cluster has, then check `tunedeck estimate`."))
    if want_mem and facts.gpu_memory_gb is not None and facts.gpu_memory_gb < MEMORY_TOLERANCE * want_mem:
        out.append(Finding(
            "gpu_memory", "The GPUs have less memory than the config assumes",
            f"The config's estimate assumes {want_mem:g} GB per GPU but {when} found {facts.gpu_memory_gb:.0f} GB "
            f"({facts.gpu_name}, {facts.gpu_source}): a run sized for the larger GPU runs out of memory.",
            f"set cluster.gpu_memory_gb to {facts.gpu_memory_gb:.0f} and re-check the estimate."))
    return out


def _params(config: RunConfig) -> str:
    a = config.model.architecture
    if a is None:
        return "pretrained"
    p = a.parameter_count()
    return f"{p / 1e9:.0f}B-parameter" if p >= 1e9 else f"{p / 1e6:.0f}M-parameter"


def parse_gres(text: str) -> tuple[int | None, str | None]:
    """(GPUs per node, gres type) from a sinfo %G value such as `gpu:8`, `gpu:a100:4(S:0-1)` or `(null)`."""
    best: tuple[int | None, str | None] = (None, None)
    for item in text.split(","):
        m = re.match(r"\s*gpu(?::([A-Za-z][\w.-]*))?:(\d+)", item)
        if m:
            n = int(m.group(2))
            if best[0] is None or n > best[0]:
                best = (n, m.group(1))
    return best
