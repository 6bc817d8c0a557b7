"""`tunedeck cluster add|list|check|remove|trust` end to end (real sshd and Slurm on 127.0.0.1)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import keyring
import pytest
import yaml

from app.cli import main
from remote.profiles import get_profile, load_profiles, profiles_path
from tests.remote.test_profiles import MemoryKeyring


def _ssh_args(sshd, known_hosts=None) -> list[str]:
    return ["--host", sshd.alias, "--ssh-config", str(sshd.ssh_config),
            "--known-hosts", str(known_hosts or sshd.known_hosts), "--python", sys.executable]


def test_add_list_and_remove_a_slurm_cluster(capsys):
    rc = main(["cluster", "add", "gpu", "--backend", "slurm", "--host", "login.example.org", "--user", "alice",
               "--port", "2222", "--work-root", "/scratch/alice/td", "--env-setup", "source ~/venvs/t/bin/activate",
               "--partition", "a100", "--nodes", "2", "--gpus-per-node", "8", "--identity-file", "~/.ssh/id_gpu"])
    assert rc == 0 and "saved cluster 'gpu'" in capsys.readouterr().out
    saved = get_profile("gpu")
    assert (saved.host, saved.user, saved.port, saved.partition, saved.nodes, saved.gpus_per_node) == (
        "login.example.org", "alice", 2222, "a100", 2, 8)
    assert saved.env_setup == "source ~/venvs/t/bin/activate" and saved.identity_file == "~/.ssh/id_gpu"
    assert main(["cluster", "list"]) == 0
    out = capsys.readouterr().out
    assert "local *" in out and "alice@login.example.org:2222" in out and "/scratch/alice/td" in out
    assert main(["cluster", "list", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["gpu"]["partition"] == "a100" and listed["local"]["default"] is True
    assert main(["cluster", "remove", "gpu"]) == 0
    assert "gpu" not in load_profiles()


def test_add_refuses_duplicates_and_bad_input_with_clear_errors(capsys, tmp_path):
    assert main(["cluster", "add", "c1", "--backend", "hostfile", "--host", "h"]) == 0
    assert main(["cluster", "add", "c1", "--backend", "hostfile", "--host", "h2"]) == 2
    assert "exists; use --force" in capsys.readouterr().err
    assert main(["cluster", "add", "c1", "--backend", "hostfile", "--host", "h2", "--force"]) == 0
    assert get_profile("c1").host == "h2"
    assert main(["cluster", "add", "c2", "--backend", "slurm"]) == 2
    assert "host: the slurm backend needs an SSH host" in capsys.readouterr().err
    assert main(["cluster", "add", "c3", "--backend", "hostfile", "--host", "h", "--hostfile", str(tmp_path / "no")]) == 2
    assert "--hostfile" in capsys.readouterr().err
    assert main(["cluster", "remove", "nope"]) == 2
    assert "no saved cluster profile 'nope'" in capsys.readouterr().err


def test_add_hostfile_cluster_reads_the_hostfile_lines(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# workers\nnode1 slots=8\n\nnode2 slots=8  # second\n")
    assert main(["cluster", "add", "ds", "--backend", "hostfile", "--host", "node1", "--hostfile", str(hostfile)]) == 0
    assert get_profile("ds").hostfile_hosts == ["node1 slots=8", "node2 slots=8"]


def test_password_from_stdin_goes_to_the_keyring_not_the_file(monkeypatch, capsys):
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    try:
        monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret-Passphrase\n"))
        assert main(["cluster", "add", "k", "--backend", "slurm", "--host", "h", "--user", "u",
                     "--password-stdin"]) == 0
        assert backend.store == {("tunedeck", "k:u@h"): "s3cret-Passphrase"}
        assert "s3cret" not in profiles_path().read_text()
        assert "s3cret" not in capsys.readouterr().out
        assert get_profile("k").save_password_in_keyring is True
    finally:
        keyring.set_keyring(previous)


def test_check_local_prints_the_report_and_exits_0(capsys):
    assert main(["cluster", "check", "local"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "deepspeed" in out and "all required parts present" in out


def test_check_over_ssh_exits_1_and_prints_the_fix_when_packages_are_missing(sshd_server, capsys, tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    args = _ssh_args(sshd_server)
    args[args.index("--python") + 1] = str(bare / "bin" / "python")
    assert main(["cluster", "add", "bare", "--backend", "hostfile", *args, "--work-root", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["cluster", "check", "bare"]) == 1
    out = capsys.readouterr().out
    assert "torch         MISSING" in out and "pip install torch==" in out
    assert main(["cluster", "add", "full", "--backend", "slurm", *_ssh_args(sshd_server), "--partition", "debug",
                 "--work-root", str(tmp_path)]) == 0
    assert main(["cluster", "check", "full", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert report["ok"] is True and {i["name"] for i in report["items"]} >= {"torch", "sbatch", "partition"}


def test_trust_shows_the_fingerprint_and_records_it_only_after_confirmation(sshd_server, capsys, monkeypatch, tmp_path):
    known = tmp_path / "known_hosts"
    assert main(["cluster", "add", "new", "--backend", "slurm", *_ssh_args(sshd_server, known)]) == 0
    assert main(["cluster", "check", "new"]) == 1
    assert sshd_server.host_key_fingerprint in capsys.readouterr().out
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["cluster", "trust", "new"]) == 1
    out = capsys.readouterr().out
    assert sshd_server.host_key_fingerprint in out and "not recorded" in out
    assert not known.exists()
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert main(["cluster", "trust", "new"]) == 0
    assert f"recorded in {known}" in capsys.readouterr().out
    assert known.read_text() == sshd_server.host_key_line
    assert main(["cluster", "trust", "new", "--yes"]) == 0
    assert "is known" in capsys.readouterr().out


def test_trust_refuses_a_changed_key_loudly(sshd_server, capsys, tmp_path):
    known = tmp_path / "known_hosts"
    forged = tmp_path / "forged"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(forged)], check=True)
    known.write_text(f"{sshd_server.known_hosts_name} {' '.join(forged.with_suffix('.pub').read_text().split()[:2])}\n")
    assert main(["cluster", "add", "mitm", "--backend", "slurm", *_ssh_args(sshd_server, known)]) == 0
    assert main(["cluster", "trust", "mitm", "--yes"]) == 1
    err = capsys.readouterr().err
    assert "REMOTE HOST KEY CHANGED" in err and f"{known}:1" in err
    assert yaml.safe_load(profiles_path().read_text())["clusters"]["mitm"]["known_hosts"] == str(known)
    assert len(known.read_text().splitlines()) == 1


@pytest.mark.parametrize("argv", [["cluster"], ["cluster", "check", "missing-profile"]])
def test_cluster_without_action_or_with_unknown_profile_is_a_usage_error(argv, capsys):
    assert main(argv) == 2
