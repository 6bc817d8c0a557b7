"""Cluster profiles: YAML round trip, validation errors with places, secrets only in the keyring."""

from __future__ import annotations

import logging
import subprocess

import keyring
import pytest
import yaml
from keyring.backend import KeyringBackend
from pydantic import ValidationError

from remote.profiles import (
    KEYRING_SERVICE,
    ClusterProfile,
    ProfileError,
    close_transports,
    delete_profile,
    get_profile,
    load_profiles,
    profiles_path,
    save_profile,
    set_secret,
    transport_for,
)
from remote.transport import AuthenticationFailed, LocalTransport


class MemoryKeyring(KeyringBackend):
    """An in-memory keyring: `keyring` is the OS keyring's interface, this stands in for the OS store."""

    priority = 1
    viable = False  # installed explicitly (keyring.set_keyring) by a test, never picked as the session's default

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service, username):
        return self.store.get((service, username))

    def set_password(self, service, username, password):
        self.store[(service, username)] = password

    def delete_password(self, service, username):
        from keyring.errors import PasswordDeleteError

        if self.store.pop((service, username), None) is None:
            raise PasswordDeleteError(username)


@pytest.fixture
def memory_keyring():
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)
    close_transports()


def test_local_profile_exists_out_of_the_box_and_is_the_default():
    assert not profiles_path().exists()
    profiles = load_profiles()
    assert list(profiles) == ["local"]
    local = get_profile()
    assert local.name == "local" and local.backend == "local" and local.host is None
    assert isinstance(transport_for(local), LocalTransport)
    assert transport_for(local) is transport_for(get_profile("local"))


def test_profile_round_trips_through_yaml_with_every_field():
    profile = ClusterProfile(
        name="gpu-a", backend="slurm", host="login.example.org", user="alice", port=2222,
        identity_file="~/.ssh/id_gpu", proxy_jump="bastion", work_root="/scratch/alice/td",
        env_setup="module load cuda/12.4 && source ~/venvs/train/bin/activate", python="python3.11",
        partition="a100", account="proj-42", qos="high", time_limit="2-00:00:00", nodes=2, gpus_per_node=8,
        connect_timeout_s=20, keepalive_s=30, save_password_in_keyring=True,
    )
    path = save_profile(profile)
    save_profile(ClusterProfile(name="hf", backend="hostfile", host="node1", hostfile_hosts=["node1 slots=8", "node2 slots=8"]))
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_profiles()
    assert list(loaded) == ["local", "gpu-a", "hf"]
    assert loaded["gpu-a"] == profile
    assert loaded["hf"].hostfile_hosts == ["node1 slots=8", "node2 slots=8"]
    data = yaml.safe_load(path.read_text())
    assert data["clusters"]["gpu-a"]["env_setup"] == profile.env_setup
    assert "name" not in data["clusters"]["gpu-a"]
    assert not list(path.parent.glob(".*tmp"))  # atomic write left no temp file


def test_defaults_fill_the_work_root_for_remote_and_local():
    remote = ClusterProfile(name="r", backend="hostfile", host="h")
    assert remote.effective_work_root == "~/tunedeck"
    local = get_profile("local")
    assert local.effective_work_root.endswith("data")


def test_saving_local_adjustments_keeps_the_builtin_and_removing_resets_it():
    adjusted = get_profile("local").model_copy(update={"env_setup": "source /opt/venv/bin/activate"})
    save_profile(adjusted)
    assert get_profile("local").env_setup == "source /opt/venv/bin/activate"
    delete_profile("local")
    assert get_profile("local").env_setup is None


def test_delete_removes_the_profile_and_unknown_names_are_reported():
    save_profile(ClusterProfile(name="gone", backend="hostfile", host="h"))
    delete_profile("gone")
    assert "gone" not in load_profiles()
    with pytest.raises(ProfileError, match="no saved cluster profile 'gone'"):
        delete_profile("gone")
    with pytest.raises(ProfileError, match=r"no cluster profile 'nope'.*known: local"):
        get_profile("nope")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"backend": "slurm"}, "the slurm backend needs an SSH host"),
        ({"backend": "local", "host": "h"}, "local profile runs on this machine"),
        ({"backend": "pbs", "host": "h"}, "clusters.bad.backend"),
        ({"backend": "slurm", "host": "h", "port": 70000}, "clusters.bad.port"),
        ({"backend": "slurm", "host": "h", "pasword": "x"}, "clusters.bad.pasword: Extra inputs"),
    ],
)
def test_invalid_profile_in_the_file_names_file_line_and_field(body, message):
    path = profiles_path()
    path.write_text(yaml.safe_dump({"clusters": {"ok": {"backend": "hostfile", "host": "h"}, "bad": body}}))
    with pytest.raises(ProfileError, match=message) as info:
        load_profiles()
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip() == "bad:")
    assert f"{path}:{line}" in str(info.value)


def test_broken_yaml_is_reported_with_its_line():
    profiles_path().write_text("clusters:\n  a:\n    backend: [slurm\n")
    with pytest.raises(ProfileError, match=r"clusters.yaml:\d+: not valid YAML"):
        load_profiles()


def test_bad_names_are_rejected():
    for name in ("", "has space", "-dash", "a/b", "x" * 65, "gpu\n", "gpu\x1b[2J", "gpu\r"):
        with pytest.raises(ValidationError):
            ClusterProfile(name=name, backend="hostfile", host="h")


def test_transport_is_shared_per_profile_and_renewed_when_the_profile_changes(ssh_profile_slurm):
    first = transport_for(ssh_profile_slurm)
    assert transport_for(ssh_profile_slurm.model_copy()) is first
    changed = transport_for(ssh_profile_slurm.model_copy(update={"keepalive_s": 9}))
    assert changed is not first
    close_transports()


def test_passphrase_comes_only_from_the_keyring_never_files_or_logs(
        memory_keyring, sshd_server, ssh_profile_slurm, tmp_path, caplog):
    secret = "pa55-PHRASE-never-in-files-7c1e"
    key = tmp_path / "id_locked"
    key.write_bytes(sshd_server.client_key.read_bytes())
    key.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", secret, "-f", str(key)], check=True)
    profile = ssh_profile_slurm.model_copy(update={"name": "locked", "identity_file": str(key),
                                                   "save_password_in_keyring": True})
    caplog.set_level(logging.DEBUG)
    save_profile(profile)
    # Without the saved passphrase the encrypted key cannot log in.
    with pytest.raises(AuthenticationFailed):
        transport_for(get_profile("locked")).run(["true"])
    set_secret(profile, secret)
    assert memory_keyring.store == {(KEYRING_SERVICE, "locked:root@tdtest-sshd"): secret}
    transport = transport_for(get_profile("locked"))
    assert transport.run(["echo", "unlocked"]).stdout == "unlocked\n"
    home_files = [p for p in profiles_path().parent.parent.rglob("*") if p.is_file()]
    assert home_files and all(secret.encode() not in p.read_bytes() for p in home_files)
    assert secret not in caplog.text
    assert "locked" in caplog.text  # the logs were captured (connection messages) and hold no secret
    delete_profile("locked")
    assert memory_keyring.store == {}
