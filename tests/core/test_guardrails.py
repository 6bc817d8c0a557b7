"""Launch guardrails: each reason a launch cannot work, as one paragraph that names the numbers and the fix."""

from __future__ import annotations

import time

from core.guardrails import ClusterFacts, MissingPart, Preflight, gpu_family, launch_findings, parse_gres
from core.presets import load_preset


def cpu_only() -> ClusterFacts:
    """A profile checked two minutes ago that found no GPU."""
    return ClusterFacts(profile="laptop", backend="local", checked_at=time.time() - 120, gpus_per_node=0,
                        gpu_source="nvidia-smi not found")


def test_phind_preset_on_a_cpu_only_profile_is_refused_for_data_and_gpus() -> None:
    facts = cpu_only()
    findings = launch_findings(load_preset("phind-codellama-34b-v1"), "local", facts)
    assert [f.code for f in findings] == ["no_data", "gpus"]
    text = Preflight(tuple(findings), facts).format()
    assert "2 reasons" in text and "--force" in text
    assert "8 GPUs per node of type A100-80GB (80 GB each)" in text and "no GPU (nvidia-smi not found)" in text
    assert "34B-parameter model cannot train on CPU" in text and "2 min ago" in text
    for f in findings:  # one paragraph each
        assert "\n" not in f.paragraph() and f.fix


def test_tiny_preset_on_the_same_profile_goes() -> None:
    assert launch_findings(load_preset("tiny-demo"), "local", cpu_only()) == []


def test_missing_packages_refusal_carries_the_checks_fix_line() -> None:
    facts = ClusterFacts(profile="c", backend="slurm", checked_at=time.time(),
                         missing=(MissingPart("torch", "not installed", "pip install torch==2.13.0"),),
                         install_command="pip install torch==2.13.0")
    (finding,) = launch_findings(load_preset("tiny-demo"), "slurm", facts)
    assert finding.code == "missing_packages" and "missing torch" in finding.title
    assert "pip install torch==2.13.0 (after the profile's env_setup)" in finding.fix
    assert "tunedeck cluster check c" in finding.fix


def test_fewer_gpus_another_type_and_less_memory_are_each_named() -> None:
    facts = ClusterFacts(profile="c", backend="hostfile", checked_at=time.time(), gpus_per_node=4,
                         gpu_name="NVIDIA A10G", gpu_memory_gb=22.0, gpu_source="nvidia-smi")
    codes = {f.code: f for f in launch_findings(load_preset("codellama-7b-base"), "hostfile", facts)}
    assert set(codes) >= {"gpus", "gpu_type", "gpu_memory"}
    assert "found 4" in codes["gpus"].text and "at most 4" in codes["gpus"].fix
    assert "A100-80GB" in codes["gpu_type"].text and "NVIDIA A10G" in codes["gpu_type"].text
    assert "80 GB per GPU" in codes["gpu_memory"].text and "22 GB" in codes["gpu_memory"].text


def test_an_estimate_that_does_not_fit_and_an_impossible_placement_are_refused() -> None:
    cfg = load_preset("codellama-7b-base")
    slurm_on_hostfile = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"placement": "slurm"})})
    codes = [f.code for f in launch_findings(slurm_on_hostfile, "hostfile", None, estimate_fits=False,
                                             estimate_text="peak 95.0 GB per GPU > 80 GB")]
    assert codes == ["no_data", "does_not_fit", "placement"]


def test_gpu_names_and_gres_are_read() -> None:
    assert gpu_family("NVIDIA A100-SXM4-80GB") == "A100" == gpu_family("A100-80GB")
    assert gpu_family("NVIDIA H100 80GB HBM3") == "H100" and gpu_family("mystery") is None
    assert parse_gres("gpu:8") == (8, None)
    assert parse_gres("gpu:a100:4(S:0-1),gpu:h100:8") == (8, "h100")
    assert parse_gres("(null)") == (None, None)
