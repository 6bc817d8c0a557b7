"""Where a saved secret goes: a fake SSH server (paramiko's server classes, on 127.0.0.1) records every
authentication attempt.

A key passphrase unlocks the key on this machine and must never reach a server; a password is sent only when
the user saved a password (not a passphrase) for the profile, and only to a host whose key is already in
known_hosts.
"""

from __future__ import annotations

import io
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import keyring
import paramiko
import pytest

from app.cli import main
from remote.profiles import (
    ClusterProfile,
    close_transports,
    get_profile,
    make_transport,
    save_profile,
    set_secret,
)
from remote.transport import AuthenticationFailed, ChangedHostKeyError, UnknownHostKeyError
from tests.remote.test_profiles import MemoryKeyring

PASSPHRASE = "kEy-PaSsPhRaSe-91f3"
PASSWORD = "LoGiN-pAsSwOrD-5d2a"


@dataclass
class Attempt:
    method: str  # publickey | password | keyboard-interactive
    username: str
    secret: str | None  # the password as received (None for other methods)


class RecordingServer(paramiko.ServerInterface):
    """Offers every method, records every attempt; accepts only what the test allows."""

    def __init__(self, fake: FakeSshd):
        self.fake = fake

    def get_allowed_auths(self, username):
        return "publickey,password,keyboard-interactive"

    def check_auth_password(self, username, password):
        self.fake.attempts.append(Attempt("password", username, password))
        ok = self.fake.accept_password is not None and password == self.fake.accept_password
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_publickey(self, username, key):
        self.fake.attempts.append(Attempt("publickey", username, None))
        ok = self.fake.accept_key is not None and key.asbytes() == self.fake.accept_key.asbytes()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_interactive(self, username, submethods):
        self.fake.attempts.append(Attempt("keyboard-interactive", username, None))
        return paramiko.InteractiveQuery("", "", ("Password: ", False))

    def check_auth_interactive_response(self, responses):
        self.fake.attempts.append(Attempt("keyboard-interactive", "?", "\n".join(responses)))
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


@dataclass
class FakeSshd:
    host_key: paramiko.PKey
    accept_key: paramiko.PKey | None = None
    accept_password: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    port: int = 0
    _sock: socket.socket | None = None
    _transports: list[paramiko.Transport] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, name="fake-sshd", daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = paramiko.Transport(conn)
            t.add_server_key(self.host_key)
            self._transports.append(t)
            try:
                t.start_server(server=RecordingServer(self))
            except (paramiko.SSHException, EOFError, OSError):
                continue

    def stop(self) -> None:
        self._stop.set()
        for t in self._transports:
            t.close()
        if self._sock is not None:
            self._sock.close()

    def known_hosts_line(self, key: paramiko.PKey | None = None) -> str:
        key = key or self.host_key
        return f"[127.0.0.1]:{self.port} {key.get_name()} {key.get_base64()}\n"

    @property
    def password_attempts(self) -> list[Attempt]:
        return [a for a in self.attempts if a.method != "publickey"]


@pytest.fixture
def fake_sshd(monkeypatch, tmp_path):
    # Only the keys a test names: no agent, no ~/.ssh/id_* of whoever runs the tests.
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    server = FakeSshd(paramiko.ECDSAKey.generate())
    server.start()
    yield server
    close_transports()
    server.stop()


@pytest.fixture
def memory_keyring():
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


@pytest.fixture
def encrypted_key(tmp_path) -> tuple[Path, paramiko.PKey]:
    key = paramiko.ECDSAKey.generate()
    path = tmp_path / "enc_key"
    key.write_private_key_file(str(path), password=PASSPHRASE)
    return path, key


def _profile(fake: FakeSshd, tmp_path: Path, *, known_hosts: str | None = None, **extra) -> ClusterProfile:
    kh = tmp_path / "known_hosts"
    kh.write_text(fake.known_hosts_line() if known_hosts is None else known_hosts)
    return ClusterProfile(name="fake", backend="slurm", host="127.0.0.1", port=fake.port, user="alice",
                          known_hosts=str(kh), connect_timeout_s=5, **extra)


def _connect(profile: ClusterProfile) -> None:
    transport = make_transport(profile)
    try:
        transport.connect()
    finally:
        transport.close()


def _no_secret_reached_the_server(fake: FakeSshd, *secrets: str) -> None:
    for attempt in fake.attempts:
        for secret in secrets:
            assert secret not in (attempt.secret or ""), attempt


def test_a_saved_key_passphrase_unlocks_the_key_and_is_never_sent_when_the_key_is_refused(
        fake_sshd, memory_keyring, encrypted_key, tmp_path):
    path, _ = encrypted_key
    profile = _profile(fake_sshd, tmp_path, identity_file=str(path), save_password_in_keyring=True,
                       secret_kind="passphrase")
    set_secret(profile, PASSPHRASE)
    with pytest.raises(AuthenticationFailed) as info:
        _connect(profile)
    assert [a.method for a in fake_sshd.attempts] and fake_sshd.password_attempts == []
    _no_secret_reached_the_server(fake_sshd, PASSPHRASE)
    assert "--password-stdin" in str(info.value) and "never sent" in str(info.value)


def test_a_saved_key_passphrase_logs_in_with_the_key_alone(fake_sshd, memory_keyring, encrypted_key, tmp_path):
    path, key = encrypted_key
    fake_sshd.accept_key = key
    profile = _profile(fake_sshd, tmp_path, identity_file=str(path), save_password_in_keyring=True)
    assert profile.secret_kind == "passphrase"  # the default: a secret is not sent unless declared a password
    set_secret(profile, PASSPHRASE)
    _connect(profile)
    assert [a.method for a in fake_sshd.attempts] == ["publickey"]


def test_a_profile_saved_before_secret_kinds_existed_treats_its_secret_as_a_passphrase(
        fake_sshd, memory_keyring, encrypted_key, tmp_path):
    import yaml

    from remote.profiles import profiles_path

    path, _ = encrypted_key
    profile = _profile(fake_sshd, tmp_path, identity_file=str(path), save_password_in_keyring=True)
    save_profile(profile)
    raw = yaml.safe_load(profiles_path().read_text())
    assert "secret_kind" not in raw["clusters"]["fake"]  # as an older TuneDeck wrote it
    set_secret(profile, PASSPHRASE)
    with pytest.raises(AuthenticationFailed):
        _connect(get_profile("fake"))
    assert fake_sshd.password_attempts == []
    _no_secret_reached_the_server(fake_sshd, PASSPHRASE)


def test_a_saved_password_is_sent_to_a_trusted_host_when_no_key_logs_in(fake_sshd, memory_keyring, tmp_path):
    fake_sshd.accept_password = PASSWORD
    profile = _profile(fake_sshd, tmp_path, save_password_in_keyring=True, secret_kind="password")
    set_secret(profile, PASSWORD)
    _connect(profile)
    assert [(a.method, a.username, a.secret) for a in fake_sshd.password_attempts] == [
        ("password", "alice", PASSWORD)]


@pytest.mark.parametrize("known", ["unknown", "changed"])
def test_a_saved_password_never_reaches_a_host_whose_key_is_not_trusted(fake_sshd, memory_keyring, tmp_path, known):
    other = paramiko.ECDSAKey.generate()
    profile = _profile(fake_sshd, tmp_path, known_hosts="" if known == "unknown" else fake_sshd.known_hosts_line(other),
                       save_password_in_keyring=True, secret_kind="password")
    set_secret(profile, PASSWORD)
    with pytest.raises(UnknownHostKeyError if known == "unknown" else ChangedHostKeyError):
        _connect(profile)
    assert fake_sshd.attempts == []  # refused before any authentication: no key, no password


def test_cli_passphrase_stdin_then_check_sends_no_password(fake_sshd, memory_keyring, encrypted_key, tmp_path,
                                                           monkeypatch, capsys):
    path, _ = encrypted_key
    (tmp_path / "known_hosts").write_text(fake_sshd.known_hosts_line())
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSPHRASE + "\n"))
    assert main(["cluster", "add", "fake", "--backend", "slurm", "--host", "127.0.0.1", "--port", str(fake_sshd.port),
                 "--user", "alice", "--known-hosts", str(tmp_path / "known_hosts"), "--identity-file", str(path),
                 "--passphrase-stdin"]) == 0
    assert get_profile("fake").secret_kind == "passphrase"
    assert main(["cluster", "check", "fake", "--timeout", "20"]) == 1
    out = capsys.readouterr()
    assert "authentication failed" in (out.out + out.err).lower()
    assert fake_sshd.attempts and fake_sshd.password_attempts == []
    _no_secret_reached_the_server(fake_sshd, PASSPHRASE)
    assert PASSPHRASE not in out.out + out.err


def test_cli_password_stdin_refuses_an_encrypted_key_and_saves_a_password_for_a_plain_one(
        fake_sshd, memory_keyring, encrypted_key, tmp_path, monkeypatch, capsys):
    path, _ = encrypted_key
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSPHRASE + "\n"))
    # The repro: an encrypted key and its passphrase given as --password-stdin.
    assert main(["cluster", "add", "pw", "--backend", "slurm", "--host", "h", "--user", "u", "--identity-file",
                 str(path), "--password-stdin"]) == 2
    err = capsys.readouterr().err
    assert "is encrypted" in err and "--passphrase-stdin" in err and "nothing was saved" in err
    assert memory_keyring.store == {}
    with pytest.raises(Exception, match="no cluster profile"):
        get_profile("pw")
    plain = tmp_path / "plain_key"
    paramiko.ECDSAKey.generate().write_private_key_file(str(plain))
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["cluster", "add", "pw", "--backend", "slurm", "--host", "h", "--user", "u", "--identity-file",
                 str(plain), "--password-stdin"]) == 0
    assert get_profile("pw").secret_kind == "password"
    assert memory_keyring.store == {("tunedeck", "pw:u@h"): PASSWORD}
    err = capsys.readouterr().err
    assert "saved as the SSH login password" in err and "--passphrase-stdin" in err
    with pytest.raises(SystemExit):  # one secret, said to be one thing
        main(["cluster", "add", "both", "--backend", "slurm", "--host", "h", "--password-stdin", "--passphrase-stdin"])


def test_encrypted_key_files_are_recognised_in_openssh_and_pem_formats(tmp_path):
    import subprocess

    from remote.ssh import key_file_is_encrypted

    for name, passphrase in (("enc", "secret"), ("plain", "")):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(tmp_path / name)],
                       check=True)
    paramiko.RSAKey.generate(2048).write_private_key_file(str(tmp_path / "pem_enc"), password="secret")
    paramiko.RSAKey.generate(2048).write_private_key_file(str(tmp_path / "pem_plain"))
    (tmp_path / "junk").write_text("not a key")
    assert [key_file_is_encrypted(str(tmp_path / n)) for n in ("enc", "plain", "pem_enc", "pem_plain", "junk",
                                                               "missing")] == [True, False, True, False, None, None]
