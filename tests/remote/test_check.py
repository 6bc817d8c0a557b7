"""Cluster check on this machine and over the test sshd: what it finds must match what is installed."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from remote.check import RECOMMENDED_TORCH, build_report, check_cluster, probe_script
from remote.job.sandbox import find_bwrap
from remote.profiles import ClusterProfile, get_profile, make_transport
from remote.transport import LocalTransport


def _installed(dist: str) -> str:
    return importlib.metadata.version(dist)


def test_local_check_reports_the_installed_training_stack():
    profile = get_profile("local").model_copy(update={"python": sys.executable})
    report = check_cluster(profile, LocalTransport())
    assert report.item("python").value.startswith(".".join(map(str, sys.version_info[:3])))
    assert report.item("torch").ok and report.item("torch").value.startswith(_installed("torch"))
    assert "CPU build" in report.item("torch").value  # this machine has the CPU wheel
    for dist in ("transformers", "deepspeed", "datasets", "trl", "accelerate"):
        assert report.item(dist).value == _installed(dist)
    assert report.item("flash_attn").value.startswith("not installed (needs CUDA")
    assert report.item("gpus").value.startswith("0")
    assert report.ok and report.install_command is None
    assert "all required parts present" in report.format()
    with pytest.raises(KeyError):
        report.item("sbatch")  # only checked for the slurm backend
    # the shipped sandbox's own probe ran there (as root here: its own namespaces and a uid per slot)
    sandbox = report.item("sandbox")
    expected = "root-namespaces" if os.geteuid() == 0 else ("bwrap" if find_bwrap() else "userns")
    assert sandbox.ok and sandbox.value.startswith(expected) and report.raw["sandbox"]["confined"] is True


def test_check_over_ssh_finds_the_stack_sbatch_partition_gpus_and_disk(ssh_profile_slurm, ssh_transport):
    report = check_cluster(ssh_profile_slurm, ssh_transport)
    assert report.ok, report.format()
    assert report.item("torch").value.startswith(_installed("torch"))
    assert report.item("deepspeed").value == _installed("deepspeed")
    assert report.item("transformers").value == _installed("transformers")
    assert report.item("sbatch").ok and "slurm" in report.item("sbatch").value
    # The partition line comes from sinfo on the test cluster: 8 fake GPUs.
    assert report.item("partition").ok and "gpu:8" in report.item("partition").value
    assert ssh_profile_slurm.work_root in report.item("disk").value
    assert report.item("work_root").ok
    # the sandbox probe went over SSH inside the one command, and says where it was measured
    assert report.item("sandbox").ok and "login node" in report.item("sandbox").value


def test_check_over_ssh_names_missing_packages_and_the_pip_command(ssh_profile_slurm, ssh_transport, tmp_path):
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    profile = ssh_profile_slurm.model_copy(update={"python": str(bare / "bin" / "python"), "partition": "nope"})
    report = check_cluster(profile, ssh_transport)
    assert not report.ok
    missing = {i.name for i in report.missing}
    assert {"torch", "transformers", "deepspeed", "datasets", "partition"} <= missing
    assert report.item("torch").fix == f"pip install torch=={RECOMMENDED_TORCH}"
    assert report.item("deepspeed").fix == f"pip install torch=={RECOMMENDED_TORCH} deepspeed"
    assert report.install_command == (f"pip install torch=={RECOMMENDED_TORCH} transformers trl accelerate "
                                      "deepspeed datasets")
    text = report.format()
    assert "MISSING" in text and "missing: torch" in text and report.install_command in text


def test_env_setup_runs_before_the_probe_and_gpus_bring_cuda_hints(ssh_profile_slurm, ssh_transport, tmp_path):
    # No GPU here: a stand-in nvidia-smi on PATH (set by env_setup) answers like a 2-GPU node.
    fake_bin = tmp_path / "bin with space"
    fake_bin.mkdir()
    smi = fake_bin / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559 MiB'\necho 'NVIDIA H100 80GB HBM3, 81559 MiB'\n")
    smi.chmod(0o755)
    profile = ssh_profile_slurm.model_copy(update={"env_setup": f"export PATH='{fake_bin}':\"$PATH\""})
    report = check_cluster(profile, ssh_transport)
    assert report.item("gpus").value == "2 x NVIDIA H100 80GB HBM3, 81559 MiB"
    torch = report.item("torch")
    assert not torch.ok and "CPU build, but 2 GPUs" in torch.value and "--index-url" in torch.fix
    flash = report.item("flash_attn")
    assert not flash.ok and not flash.required and flash.fix == "pip install flash-attn --no-build-isolation"


def test_failing_env_setup_is_reported_with_its_error(ssh_profile_slurm, ssh_transport):
    profile = ssh_profile_slurm.model_copy(update={"env_setup": "source /nonexistent/venv/bin/activate"})
    report = check_cluster(profile, ssh_transport)
    assert [i.name for i in report.items] == ["env_setup"]
    assert "/nonexistent/venv/bin/activate" in report.items[0].value and not report.ok


def test_unreachable_or_unknown_host_is_one_connection_item(ssh_profile_slurm, sshd_server, tmp_path):
    profile = ssh_profile_slurm.model_copy(update={"known_hosts": str(tmp_path / "empty_known_hosts")})
    transport = make_transport(profile)
    report = check_cluster(profile, transport)
    assert [i.name for i in report.items] == ["connection"]
    assert sshd_server.host_key_fingerprint in report.items[0].value
    assert "cluster trust" in report.items[0].fix
    transport.close()


def test_probe_script_quotes_every_value_and_keeps_env_setup_verbatim():
    profile = ClusterProfile(name="q", backend="hostfile", host="h", python="/opt/my py/bin/python",
                             work_root="/scratch/$(touch x)/`y`", env_setup="source ~/venv/bin/activate")
    script = probe_script(profile)
    assert script.startswith("{ source ~/venv/bin/activate\n}")
    assert "'/opt/my py/bin/python'" in script and "'/scratch/$(touch x)/`y`'" in script


def test_old_python_is_reported_as_missing():
    profile = ClusterProfile(name="old", backend="hostfile", host="h")
    report = build_report(profile, {"python": "3.8.18", "packages": {}, "disk_free_gb": 500,
                                    "work_root_writable": True, "work_root": "/w"})
    assert not report.item("python").ok and "Python >= 3.10" in report.item("python").fix
    assert report.item("disk").ok
    low = build_report(profile, {"python": "3.11.2", "packages": {}, "disk_free_gb": 3.2,
                                 "work_root_writable": True, "work_root": "/w"})
    assert not low.item("disk").ok and not low.item("disk").required


def test_node_comparison_names_the_host_that_differs_and_the_unreachable_one():
    from remote.check import _MARK, compare_nodes

    profile = ClusterProfile(name="hf", backend="hostfile", host="login",
                             hostfile_hosts=["n1 slots=8", "n2 slots=8", "n3 slots=8"])

    def probe(deepspeed: str, gpus: int = 8) -> str:
        data = {"python": "3.11.7", "python_path": "/env/bin/python", "torch_cuda": "12.6",
                "packages": {"torch": "2.13.0", "transformers": "5.25.0", "trl": "1.16.0", "accelerate": "1.16.0",
                             "deepspeed": deepspeed, "datasets": "5.2.0", "flash_attn": None, "vllm": None},
                "gpus": ["NVIDIA A100-SXM4-80GB, 81920 MiB"] * gpus}
        return "noise\n" + _MARK + json.dumps(data) + "\n"

    items = compare_nodes(profile, {"n1": (0, probe("0.19.8")), "n2": (0, probe("0.19.7", gpus=7)),
                                    "n3": (255, "ssh: connect to host n3 port 22: No route to host")})
    by_name = {i.name: i for i in items}
    assert by_name["node n1"].ok and "reference" in by_name["node n1"].value
    n2 = by_name["node n2"]
    assert not n2.ok and n2.value.startswith("differs from n1: deepspeed 0.19.7 (n1: 0.19.8)")
    assert "gpus 7 x" in n2.value and n2.fix == "make n2 match n1: pip install deepspeed==0.19.8 (after env_setup)"
    n3 = by_name["node n3"]
    assert not n3.ok and "not reachable over ssh from the login node: ssh: connect" in n3.value
    assert "passwordless ssh" in n3.fix


def test_check_of_a_hostfile_profile_probes_every_node_and_says_which_one_differs(netns_cluster, tmp_path, capsys):
    """Over SSH to the login node, then plain ssh from there to each host (as pdsh does): node 3 carries an
    older deepspeed (its own mount namespace shows another METADATA), and one hostfile line names no host."""
    from app.cli import main
    from remote.check import load_report
    from remote.profiles import save_profile
    from tests.remote.launch_support import PYTHON, VENV_BIN

    nodes = netns_cluster.nodes
    dist = importlib.metadata.distribution("deepspeed")
    metadata = Path(str(dist._path)) / "METADATA"  # the file the probe reads, on every node
    stale = tmp_path / "METADATA"
    stale.write_text(metadata.read_text().replace(f"Version: {dist.version}", "Version: 0.14.0", 1))
    profile = ClusterProfile(name="ns-check", backend="hostfile", host=nodes[0].name,
                             ssh_config=str(netns_cluster.ssh_config), known_hosts=str(netns_cluster.known_hosts),
                             work_root=str(tmp_path / "work"), python=PYTHON, env_setup=f"export PATH={VENV_BIN}:$PATH",
                             hostfile_hosts=[f"{n.name} slots=8" for n in nodes[:3]] + ["gpu-node-09 slots=8"])
    save_profile(profile)
    nodes[2].bind_mount(stale, metadata)
    try:  # as the user runs it: `tunedeck cluster check ns-check` (exit 1: something differs)
        rc = main(["cluster", "check", "ns-check"])
    finally:
        nodes[2].umount(metadata)
    out = capsys.readouterr().out
    assert rc == 1, out
    report = load_report("ns-check")  # what the command kept for the launch guardrails
    assert report.format() == out.rstrip("\n")
    assert report.item("deepspeed").ok  # the login node itself is fine
    assert report.item(f"node {nodes[0].name}").ok and report.item(f"node {nodes[1].name}").ok
    odd = report.item(f"node {nodes[2].name}")
    assert not odd.ok
    assert odd.value == f"differs from {nodes[0].name}: deepspeed 0.14.0 ({nodes[0].name}: {dist.version})"
    assert odd.fix == f"make {nodes[2].name} match {nodes[0].name}: pip install deepspeed=={dist.version} (after env_setup)"
    assert "not reachable over ssh" in report.item("node gpu-node-09").value
    assert not report.ok
    text = report.format()
    assert f"node {nodes[2].name}" in text and "MISSING" in text
