"""The test daemons themselves: what the remote tests rely on must hold (Slurm GPUs, sshd restarts)."""

from __future__ import annotations

import subprocess
import time

from remote.transport import wait_for


def _ssh(sshd, command: str) -> subprocess.CompletedProcess:
    # The OpenSSH client with the fixture's config: the pinned host key and alias work for any ssh tool.
    return subprocess.run(["ssh", "-F", str(sshd.ssh_config), "-o", "BatchMode=yes", sshd.alias, command],
                          capture_output=True, text=True, timeout=60)


def test_slurm_job_submitted_over_ssh_gets_two_fake_gpus_and_stays_visible_after_it_ends(
        sshd_server, slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    submit = _ssh(sshd_server, f"sbatch --parsable --gres=gpu:2 -o {out} --wrap 'echo CVD=$CUDA_VISIBLE_DEVICES'")
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip()

    def state() -> str:
        return subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], env=slurm_cluster.env,
                              capture_output=True, text=True).stdout.strip()

    assert wait_for(lambda: state() == "COMPLETED", 30), state()
    assert out.read_text().strip() == "CVD=0,1"
    assert f"JobId={job_id}" in slurm_cluster.scontrol("show", "job", job_id)


def test_sinfo_shows_the_partition_with_eight_gpus(slurm_cluster):
    out = subprocess.run(["sinfo", "-h", "-p", slurm_cluster.partition, "-o", "%G %c"], env=slurm_cluster.env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [f"gpu:{slurm_cluster.gpus}", str(slurm_cluster.cpus)]


def test_sshd_restarts_on_the_same_port_with_the_same_pinned_host_key(sshd_running_after):
    sshd = sshd_running_after
    assert _ssh(sshd, "echo $SLURM_CONF").stdout.strip().endswith("slurm.conf")
    port = sshd.port
    sshd.kill()
    assert not sshd.running and _ssh(sshd, "true").returncode != 0
    t0 = time.monotonic()
    sshd.start()
    assert time.monotonic() - t0 < 5 and sshd.port == port
    assert _ssh(sshd, "echo again").stdout == "again\n"
