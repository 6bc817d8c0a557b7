"""SshTransport: the Transport protocol over one paramiko SSH connection per cluster profile.

The host is resolved through the user's ssh config (HostName, User, Port, IdentityFile, ProxyJump,
ProxyCommand, UserKnownHostsFile) with paramiko.SSHConfig; explicit profile values win, as on the ssh
command line. Host keys are checked against known_hosts and never added silently: an unknown key raises
UnknownHostKeyError (key type + OpenSSH SHA256 fingerprint) so the user can decide and `trust_host_key`,
a changed key raises ChangedHostKeyError naming the known_hosts line. The connection opens on first use,
sends keepalives, and is rebuilt with backoff after a drop: a call in flight raises ConnectionLost, the
next call reconnects. Keys come from ssh-agent or key files; a passphrase/password only from the secret
callback (the OS keyring, see remote/profiles.py), never from files or logs.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import getpass
import hashlib
import io
import logging
import os
import posixpath
import select
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NoReturn

import paramiko
from paramiko.hostkeys import HostKeyEntry, HostKeys

from remote.transport import (
    AuthenticationFailed,
    ChangedHostKeyError,
    CommandResult,
    CommandTimeout,
    ConnectError,
    ConnectionLost,
    RemoteCommandError,
    TransportError,
    UnknownHostKeyError,
    expand_home,
)

log = logging.getLogger("tunedeck.remote.ssh")

DEFAULT_SSH_CONFIG = "~/.ssh/config"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
# Waits between connection attempts (refused, reset, timed out); host key and auth errors never retry.
RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 4.0)
STATUS_WAIT_S = 10.0
LARGE_UPLOAD_BYTES = 4 << 20  # bigger uploads use their own SFTP session
# Connections beyond the main one, opened only when a server refuses another session on it (sshd's MaxSessions,
# 10 by default). A run streams over one channel (its follower, remote/stream.py), so a default server carries
# about eight live runs beside the SFTP session and a status command before a second connection is needed.
MAX_EXTRA_CONNECTIONS = 8
_CHUNK = 65536
_PID_MARK = b"tunedeck-pid "
# Errors paramiko raises when the link is gone (socket closed, transport dead, EOF mid-packet).
_LINK_ERRORS = (paramiko.SSHException, EOFError, OSError, socket.timeout)


def openssh_fingerprint(key: paramiko.PKey) -> str:
    """The key's fingerprint as OpenSSH prints it: `SHA256:` + unpadded base64."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def known_hosts_name(hostname: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts (`[host]:port` unless port 22)."""
    return hostname if port == 22 else f"[{hostname}]:{port}"


@dataclass(frozen=True)
class SshTarget:
    """One resolved hop: where to connect, as whom, with which keys, checked against which known_hosts."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    known_hosts: str = DEFAULT_KNOWN_HOSTS
    jumps: tuple[SshTarget, ...] = ()  # first hop first
    proxy_command: str | None = None

    @property
    def host_key_name(self) -> str:
        return known_hosts_name(self.hostname, self.port)

    def __str__(self) -> str:
        via = f" via {' -> '.join(j.alias for j in self.jumps)}" if self.jumps else ""
        return f"{self.user}@{self.hostname}:{self.port}{via}"


def _expand(path: str) -> str:
    return str(Path(path).expanduser())


def _load_ssh_config(path: str | None) -> paramiko.SSHConfig:
    cfg_path = Path(path or DEFAULT_SSH_CONFIG).expanduser()
    if cfg_path.is_file():
        return paramiko.SSHConfig.from_path(str(cfg_path))
    if path:
        raise ConnectError(f"ssh config {cfg_path} does not exist")
    return paramiko.SSHConfig()


def _parse_hop(text: str) -> tuple[str | None, str, int | None]:
    """`[user@]host[:port]` (or ssh://user@host:port) of a ProxyJump entry."""
    text = text.strip().removeprefix("ssh://")
    user, _, hostport = text.rpartition("@")
    host, port = hostport, None
    if hostport.startswith("["):  # [ipv6]:port
        host, _, rest = hostport[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else None
    elif hostport.count(":") == 1:
        host, port_text = hostport.split(":")
        port = int(port_text)
    return (user or None), host, port


def resolve_target(host: str, *, user: str | None = None, port: int | None = None,
                   identity_file: str | None = None, proxy_jump: str | None = None,
                   known_hosts: str | None = None, ssh_config: str | None = None,
                   _depth: int = 0) -> SshTarget:
    """Resolve an alias or hostname through the ssh config; explicit arguments override it."""
    if _depth > 8:
        raise ConnectError(f"ProxyJump chain too deep at {host!r} (a loop in the ssh config?)")
    cfg = _load_ssh_config(ssh_config)
    found = cfg.lookup(host)
    hostname = found.get("hostname", host)
    resolved_port = port or int(found.get("port", 22))
    resolved_user = user or found.get("user") or getpass.getuser()
    if identity_file:
        identities = (_expand(identity_file),)
    else:
        identities = tuple(_expand(p) for p in found.get("identityfile", []))
    kh = known_hosts or (found.get("userknownhostsfile") or DEFAULT_KNOWN_HOSTS).split()[0]
    kh = _expand(kh)
    jump_spec = proxy_jump if proxy_jump is not None else found.get("proxyjump")
    jumps: list[SshTarget] = []
    if jump_spec and jump_spec.lower() != "none":
        for hop in jump_spec.split(","):
            hop_user, hop_host, hop_port = _parse_hop(hop)
            jumps.append(resolve_target(hop_host, user=hop_user, port=hop_port, known_hosts=known_hosts,
                                        ssh_config=ssh_config, _depth=_depth + 1))
    proxy_command = None if jumps else found.get("proxycommand")
    if proxy_command and proxy_command.lower() == "none":
        proxy_command = None
    return SshTarget(alias=host, hostname=hostname, port=resolved_port, user=resolved_user,
                     identity_files=identities, known_hosts=kh, jumps=tuple(jumps), proxy_command=proxy_command)


def find_known_hosts_line(known_hosts: str, host_key_name: str) -> int | None:
    """1-based line in `known_hosts` recording `host_key_name` (plain or hashed), or None."""
    try:
        lines = Path(known_hosts).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entry = HostKeyEntry.from_line(line, lineno)
        except (paramiko.SSHException, ValueError):
            continue
        if entry is None:
            continue
        for name in entry.hostnames:
            if name == host_key_name:
                return lineno
            if name.startswith("|1|") and HostKeys.hash_host(host_key_name, name) == name:
                return lineno
    return None


def add_known_host(known_hosts: str, host_key_name: str, key: paramiko.PKey) -> None:
    """Append `host_key_name keytype base64` to known_hosts (created 0600 in a 0700 dir if absent)."""
    path = Path(known_hosts).expanduser()
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    existing = path.read_bytes() if path.exists() else b""
    line = f"{host_key_name} {key.get_name()} {key.get_base64()}\n".encode()
    if line in existing.splitlines(keepends=True):
        return
    sep = b"" if not existing or existing.endswith(b"\n") else b"\n"
    # Append (not rewrite): other tools share this file and may write it at the same time.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, sep + line)
    finally:
        os.close(fd)
    log.info("recorded host key %s %s for %s in %s", key.get_name(), openssh_fingerprint(key), host_key_name, path)


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """RejectPolicy that says which key was offered, so the user can check and trust it."""

    def __init__(self, target: SshTarget):
        self.target = target

    def missing_host_key(self, client, hostname, key):
        raise UnknownHostKeyError(self.target.host_key_name, key.get_name(), openssh_fingerprint(key), key=key,
                                  known_hosts=self.target.known_hosts)


# What a saved secret is: a key passphrase never leaves this machine; a password is sent to the server.
SECRET_KINDS = ("passphrase", "password")
_OPENSSH_MAGIC = b"openssh-key-v1\0"


def key_file_is_encrypted(path: str) -> bool | None:
    """Whether a private key file needs a passphrase (OpenSSH or PEM format); None when it cannot be read
    or is no key file we know."""
    try:
        data = Path(path).expanduser().read_bytes()[: 1 << 20]
    except OSError:
        return None
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
        body = data.split(b"-----BEGIN OPENSSH PRIVATE KEY-----", 1)[1].split(b"-----END", 1)[0]
        try:
            raw = base64.b64decode(b"".join(body.split()))
        except ValueError:
            return None
        if not raw.startswith(_OPENSSH_MAGIC):
            return None
        at = len(_OPENSSH_MAGIC)
        cipher = raw[at + 4: at + 4 + int.from_bytes(raw[at: at + 4], "big")]
        return cipher != b"none"
    if b"-----BEGIN" in data and b"PRIVATE KEY-----" in data:
        return b"ENCRYPTED" in data  # Proc-Type: 4,ENCRYPTED, or BEGIN ENCRYPTED PRIVATE KEY (PKCS#8)
    return None


def _connect_hop(target: SshTarget, sock, *, timeout: float, passphrase: str | None = None,
                 password: str | None = None) -> paramiko.SSHClient:
    """Connect and log in to one hop. A key passphrase only unlocks key files here; a password is sent to
    the server, and only after paramiko checked the host key against known_hosts (an unknown or changed key
    raises before any authentication starts)."""
    client = paramiko.SSHClient()
    if Path(target.known_hosts).is_file():
        client.load_host_keys(target.known_hosts)
    client.set_missing_host_key_policy(_RejectUnknown(target))
    try:
        client.connect(
            target.hostname, target.port, username=target.user,
            key_filename=list(target.identity_files) or None, allow_agent=True, look_for_keys=True,
            passphrase=passphrase, password=password, timeout=timeout, banner_timeout=timeout,
            auth_timeout=timeout, channel_timeout=timeout, sock=sock,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        line = find_known_hosts_line(target.known_hosts, target.host_key_name)
        raise ChangedHostKeyError(target.host_key_name, exc.key.get_name(), openssh_fingerprint(exc.key),
                                  target.known_hosts, line, openssh_fingerprint(exc.expected_key)) from None
    except paramiko.SSHException as exc:
        t = client.get_transport()
        client.close()
        if not isinstance(exc, paramiko.AuthenticationException) and t is not None and t.auth_handler is not None:
            # paramiko tries each key file as RSA, ECDSA and Ed25519 and re-raises the LAST error: a refused
            # ECDSA key ends as "encountered EC key, expected OPENSSH key". Authentication had started, so the
            # server refused us: say so (and do not retry), rather than report a broken link.
            raise paramiko.AuthenticationException(f"the server refused every key ({exc})") from exc
        raise
    except BaseException:
        client.close()
        raise
    return client


def _open_socket(target: SshTarget, timeout: float, hops: list[paramiko.SSHClient]):
    """The socket to reach `target` through its jump hosts (direct-tcpip, what `ssh -J` does) or its
    ProxyCommand; None for a direct TCP connection. Hop clients are appended to `hops` for closing."""
    sock = None
    for i, hop in enumerate(target.jumps):
        hops.append(_connect_hop(hop, sock, timeout=timeout))
        nxt = target.jumps[i + 1] if i + 1 < len(target.jumps) else target
        sock = hops[-1].get_transport().open_channel("direct-tcpip", (nxt.hostname, nxt.port), ("127.0.0.1", 0),
                                                     timeout=timeout)
    if sock is None and target.proxy_command:
        sock = paramiko.ProxyCommand(target.proxy_command)
    return sock


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, paramiko.AuthenticationException | TransportError):
        return False
    return isinstance(exc, _LINK_ERRORS)


@dataclass
class _Connection:
    """One live connection: the client, the hop clients under it, and a lazily opened SFTP session."""

    client: paramiko.SSHClient
    hops: list[paramiko.SSHClient] = field(default_factory=list)
    sftp: paramiko.SFTPClient | None = None
    generation: int = 0

    def active(self) -> bool:
        t = self.client.get_transport()
        return t is not None and t.is_active()

    def close(self) -> None:
        for c in [self.sftp, self.client, *reversed(self.hops)]:
            if c is not None:
                with contextlib.suppress(Exception):  # closing a dead link may raise anything paramiko has
                    c.close()


class SshStreamProcess:
    """A remote command whose stdout is read as it arrives; `close` ends it (channel + kill of its pid).

    `read` raises ConnectionLost when the link drops under it (the caller restarts from its offset).
    """

    def __init__(self, owner: SshTransport, chan: paramiko.Channel, command: str, conn: _Connection):
        self._owner = owner
        self._last_heard = time.monotonic()
        self._chan = chan
        self._conn = conn
        self.command = command
        self.pid: int | None = None
        self._stderr = bytearray()
        self._eof = False
        self._closed = False
        self._lock = threading.Lock()

    def _pump_stderr(self) -> None:
        while self._chan.recv_stderr_ready():
            self._stderr += self._chan.recv_stderr(_CHUNK)
        if self.pid is None and b"\n" in self._stderr:
            first, _, rest = bytes(self._stderr).partition(b"\n")
            if first.startswith(_PID_MARK):
                self.pid = int(first[len(_PID_MARK):])
                self._stderr = bytearray(rest)
        del self._stderr[:-16384]  # keep a bounded tail for diagnostics

    @property
    def stderr(self) -> str:
        return bytes(self._stderr).decode("utf-8", errors="replace")

    def wait_started(self, timeout: float) -> None:
        """Until the remote shell reported the command's pid (or the command already ended)."""
        deadline = time.monotonic() + timeout
        while self.pid is None and not self._chan.closed and not self._chan.exit_status_ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandTimeout(self._owner.target_label, self.command, timeout)
            select.select([self._chan], [], [], min(remaining, 0.5))
            self._pump_stderr()
            if self._chan.closed and not self._conn.active():
                raise ConnectionLost(f"{self._owner.target_label}: connection lost starting `{self.command}`")

    def read(self, timeout: float) -> bytes | None:
        with self._lock:
            if self._eof or self._closed:
                return None
            deadline = time.monotonic() + max(0.0, timeout)
            while True:
                if self._chan.recv_ready():
                    self._last_heard = time.monotonic()
                    return self._chan.recv(_CHUNK)
                self._pump_stderr()
                if self._chan.closed or (self._chan.eof_received and not self._chan.recv_ready()):
                    return self._finish()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._probe_if_quiet()
                    return b""
                select.select([self._chan], [], [], remaining)

    def _probe_if_quiet(self) -> None:
        """A follow that stays silent for long may sit on a dead link (laptop sleep): ping the server."""
        now = time.monotonic()
        if now - self._last_heard < self._owner.idle_probe_s:
            return
        self._last_heard = now
        if not self._owner.ping():
            raise ConnectionLost(f"{self._owner.target_label}: no answer from the server during `{self.command}`")

    def _finish(self) -> None:
        self._chan.status_event.wait(STATUS_WAIT_S if self._conn.active() else 0)
        self._eof = True
        if self._chan.exit_status == -1 and not self._conn.active():
            self._owner._drop(self._conn)
            raise ConnectionLost(f"{self._owner.target_label}: connection lost during `{self.command}`")
        return None

    @property
    def returncode(self) -> int | None:
        if self._chan.status_event.is_set() and self._chan.exit_status != -1:
            return self._chan.exit_status
        return None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = not self._chan.exit_status_ready()
            self._pump_stderr()
            with contextlib.suppress(*_LINK_ERRORS):
                self._chan.close()
        # Closing the channel ends `tail -F`; other commands may not notice, so kill them too. sshd starts
        # each session's command as a session (and process group) leader: the group holds its children.
        if running and self.pid is not None and self._conn.active():
            with contextlib.suppress(TransportError):
                self._owner.run(["kill", "-TERM", "--", f"-{self.pid}"], check=False, timeout=10)


class SshTransport:
    """The Transport protocol over SSH (see module doc). Thread-safe: one connection, a channel per call."""

    def __init__(self, name: str, host: str, *, user: str | None = None, port: int | None = None,
                 identity_file: str | None = None, proxy_jump: str | None = None,
                 known_hosts: str | None = None, ssh_config: str | None = None,
                 connect_timeout_s: float = 15.0, keepalive_s: float = 15.0,
                 secret: Callable[[], str | None] | None = None, secret_kind: str = "passphrase",
                 backoff_s: tuple[float, ...] = RECONNECT_BACKOFF_S, idle_probe_s: float = 30.0):
        self.name = name
        self.host = host
        self._resolve_args = dict(user=user, port=port, identity_file=identity_file, proxy_jump=proxy_jump,
                                  known_hosts=known_hosts, ssh_config=ssh_config)
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        if secret_kind not in SECRET_KINDS:
            raise ValueError(f"secret_kind must be one of {SECRET_KINDS}, got {secret_kind!r}")
        self._secret = secret
        self.secret_kind = secret_kind  # what the secret is: it decides whether it may leave this machine
        self.backoff_s = backoff_s
        self.idle_probe_s = idle_probe_s  # a stream quiet this long pings the server
        self._lock = threading.RLock()
        self._sftp_lock = threading.Lock()
        self._conn: _Connection | None = None  # the main connection (commands, SFTP)
        self._extra: list[_Connection] = []  # more channels than the server allows on one connection
        self._generation = 0
        self._home: str | None = None
        self.connect_count = 0  # how many connections were opened (reconnects included)

    def __repr__(self) -> str:
        return f"SshTransport({self.name!r}, {self.host!r})"

    @property
    def target_label(self) -> str:
        return self.name if self.name == self.host else f"{self.name} ({self.host})"

    def target(self) -> SshTarget:
        """The resolved ssh target (re-read from the ssh config on every call)."""
        return resolve_target(self.host, **self._resolve_args)

    # --- connection -------------------------------------------------------------------------------

    def _open(self) -> _Connection:
        target = self.target()
        secret = self._secret() if self._secret else None
        hops: list[paramiko.SSHClient] = []
        try:
            sock = _open_socket(target, self.connect_timeout_s, hops)
            for h in hops:
                h.get_transport().set_keepalive(max(1, int(self.keepalive_s)))
            client = _connect_hop(target, sock, timeout=self.connect_timeout_s,
                                  passphrase=secret if self.secret_kind == "passphrase" else None,
                                  password=secret if self.secret_kind == "password" else None)
        except (paramiko.AuthenticationException, paramiko.SSHException) as exc:
            for h in hops:
                h.close()
            # paramiko says "No authentication methods available" (a plain SSHException) when it has no
            # key at all: an auth failure too, not worth retrying.
            if not isinstance(exc, paramiko.AuthenticationException) and "authentication" not in str(exc).lower():
                raise
            if not secret:
                hint = (f" (if the key needs a passphrase, save it in the OS keyring with `tunedeck cluster add "
                        f"{self.name} ... --force --passphrase-stdin`; for a login password, `--password-stdin`)")
            elif self.secret_kind == "passphrase":
                hint = (" (the saved secret is used only to unlock the key, never sent to the server; if it is your "
                        f"login password, save it as one: `tunedeck cluster add {self.name} ... --force "
                        "--password-stdin`)")
            else:
                hint = " (the server refused the saved password and the keys)"
            raise AuthenticationFailed(f"{self.target_label}: authentication failed for {target}: {exc}{hint}") from None
        except BaseException:
            for h in hops:
                h.close()
            raise
        client.get_transport().set_keepalive(max(1, int(self.keepalive_s)))
        self._generation += 1
        self.connect_count += 1
        log.info("connected to %s (%s), connection #%d", self.name, target, self.connect_count)
        return _Connection(client=client, hops=hops, generation=self._generation)

    def _connection(self) -> _Connection:
        """The live connection, opened (or reopened with backoff) when needed."""
        with self._lock:
            if self._conn is not None and self._conn.active():
                return self._conn
            if self._conn is not None:
                log.warning("connection to %s was lost; reconnecting", self.name)
                self._conn.close()
                self._conn = None
            delays = (0.0, *self.backoff_s)
            last: BaseException | None = None
            for attempt, delay in enumerate(delays):
                if delay:
                    time.sleep(delay)
                try:
                    self._conn = self._open()
                    return self._conn
                except Exception as exc:
                    if not _is_retryable(exc):
                        raise
                    last = exc
                    log.info("connect to %s failed (attempt %d/%d): %s", self.name, attempt + 1, len(delays), exc)
            raise ConnectError(f"{self.target_label}: cannot connect after {len(delays)} attempts: {last}") from last

    def _drop(self, conn: _Connection) -> None:
        """Forget a connection that failed under a call, so that the next call reconnects."""
        with self._lock:
            if self._conn is conn:
                self._conn = None
            self._extra = [c for c in self._extra if c is not conn]
        conn.close()

    def ping(self, timeout: float | None = None) -> bool:
        """Ask the server for a reply; when none comes in time (a silent link after sleep or a network
        change), drop the connection so that streams raise ConnectionLost and the next call reconnects."""
        with self._lock:
            conn = self._conn
        if conn is None or not conn.active():
            return False
        transport = conn.client.get_transport()
        answered = threading.Event()

        def request() -> None:
            # OpenSSH answers unknown global requests with a failure: any answer proves the link is alive.
            transport.global_request("keepalive@openssh.com", wait=True)
            answered.set()

        threading.Thread(target=request, name=f"ssh-ping-{self.name}", daemon=True).start()
        if answered.wait(timeout or self.connect_timeout_s) and transport.is_active():
            return True
        log.warning("%s did not answer within %s s: dropping the connection", self.name,
                    timeout or self.connect_timeout_s)
        self._drop(conn)
        return False

    def connect(self) -> None:
        """Open the connection now (it otherwise opens on first use); raises host key and auth errors."""
        self._connection()

    def paramiko_transport(self) -> paramiko.Transport:
        return self._connection().client.get_transport()

    def _open_channel(self) -> tuple[paramiko.Channel, _Connection]:
        """A fresh session channel; one reconnect when the connection turns out dead before we used it.

        When the server refuses more sessions on a live connection (sshd's MaxSessions, 10 by default),
        the channel goes on an extra connection instead.
        """
        for attempt in (0, 1):
            conn = self._connection()
            try:
                chan = conn.client.get_transport().open_session(timeout=self.connect_timeout_s)
                return chan, conn
            except paramiko.ChannelException as exc:
                if conn.active():
                    return self._overflow_channel(exc)
                self._drop(conn)
                if attempt:
                    raise ConnectionLost(f"{self.target_label}: cannot open a channel: {exc}") from exc
            except _LINK_ERRORS as exc:
                self._drop(conn)
                if attempt:
                    raise ConnectionLost(f"{self.target_label}: cannot open a channel: {exc}") from exc
        raise AssertionError("unreachable")

    def _overflow_channel(self, refused: Exception) -> tuple[paramiko.Channel, _Connection]:
        with self._lock:
            self._extra = [c for c in self._extra if c.active()]
            for conn in self._extra:
                try:
                    return conn.client.get_transport().open_session(timeout=self.connect_timeout_s), conn
                except _LINK_ERRORS:
                    continue
            if len(self._extra) >= MAX_EXTRA_CONNECTIONS:
                raise TransportError(f"{self.target_label}: the server refused another session ({refused}) on "
                                     f"{len(self._extra) + 1} connections") from refused
            log.info("%s refused another session on one connection (%s): opening another", self.name, refused)
            conn = self._open()
            self._extra.append(conn)
        try:
            return conn.client.get_transport().open_session(timeout=self.connect_timeout_s), conn
        except _LINK_ERRORS as exc:
            raise ConnectionLost(f"{self.target_label}: cannot open a channel: {exc}") from exc

    # --- commands ---------------------------------------------------------------------------------

    def _exec(self, command: str, shown: str, timeout: float | None, check: bool,
              stdin: bytes | None) -> CommandResult:
        chan, conn = self._open_channel()
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            # Drain both streams until EOF before asking for the exit status (else a full window hangs it).
            while True:
                while chan.recv_ready():
                    out += chan.recv(_CHUNK)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(_CHUNK)
                if chan.closed or (chan.eof_received and not chan.recv_ready() and not chan.recv_stderr_ready()):
                    break
                wait = 1.0 if deadline is None else deadline - time.monotonic()
                if wait <= 0:
                    chan.close()
                    raise CommandTimeout(self.target_label, shown, timeout or 0)
                select.select([chan], [], [], min(wait, 1.0))
            if not chan.status_event.wait(STATUS_WAIT_S if conn.active() else 0.5):
                chan.close()
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(_CHUNK)
        except _LINK_ERRORS as exc:
            if isinstance(exc, TransportError):
                raise
            self._drop(conn)
            raise ConnectionLost(f"{self.target_label}: connection lost during `{shown}`: {exc}") from exc
        finally:
            with contextlib.suppress(*_LINK_ERRORS):
                chan.close()
        rc = chan.exit_status
        if rc == -1 and not conn.active():
            self._drop(conn)
            raise ConnectionLost(f"{self.target_label}: connection lost during `{shown}`")
        result = CommandResult(rc, out.decode("utf-8", errors="replace"), err.decode("utf-8", errors="replace"))
        if check and rc != 0:
            raise RemoteCommandError(self.target_label, shown, rc, result.stderr)
        return result

    def run(self, argv: list[str], *, timeout: float | None = 60, check: bool = True,
            stdin: bytes | None = None) -> CommandResult:
        command = shlex.join([str(a) for a in argv])
        return self._exec(command, command, timeout, check, stdin)

    def run_shell(self, script: str, *, timeout: float | None = 60, check: bool = True) -> CommandResult:
        return self._exec(shlex.join(["bash", "-c", script]), script, timeout, check, None)

    def start(self, argv: list[str]) -> SshStreamProcess:
        command = shlex.join([str(a) for a in argv])
        # The login shell reports the pid, then becomes the command: close() can kill exactly that pid.
        wrapped = f"printf 'tunedeck-pid %d\\n' $$ >&2; exec {command}"
        chan, conn = self._open_channel()
        try:
            chan.exec_command(wrapped)
            chan.shutdown_write()
        except _LINK_ERRORS as exc:
            self._drop(conn)
            raise ConnectionLost(f"{self.target_label}: connection lost starting `{command}`: {exc}") from exc
        proc = SshStreamProcess(self, chan, command, conn)
        try:
            proc.wait_started(self.connect_timeout_s)
        except BaseException:
            proc.close()
            raise
        return proc

    # --- files ------------------------------------------------------------------------------------

    def _sftp_call(self, what: str, fn: Callable[[paramiko.SFTPClient], object]):
        conn = self._connection()
        try:
            with self._sftp_lock:
                if conn.sftp is None:
                    conn.sftp = conn.client.open_sftp()
                return fn(conn.sftp)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self._raise_sftp_failure(conn, what, exc)

    def _raise_sftp_failure(self, conn: _Connection, what: str, exc: BaseException) -> NoReturn:
        """File errors on a healthy link pass through (FileNotFoundError...); a dead link becomes
        ConnectionLost and is dropped so that the next call reconnects."""
        if isinstance(exc, OSError) and exc.errno is not None and conn.active():
            raise exc
        if conn.active() and not isinstance(exc, EOFError | socket.timeout):
            raise TransportError(f"{self.target_label}: {what} failed: {exc}") from exc
        self._drop(conn)
        raise ConnectionLost(f"{self.target_label}: connection lost during {what}: {exc}") from exc

    def home(self) -> str:
        if self._home is None:
            self._home = self._sftp_call("home", lambda sftp: sftp.normalize("."))
        return self._home

    def _path(self, path: str) -> str:
        path = str(path)
        return expand_home(path, self.home()) if path.startswith("~") else path

    def _put(self, source: BinaryIO, size: int, path: str, mode: int | None) -> None:
        """Write to a temp name beside `path`, then rename over it: readers never see half a file."""
        target = self._path(path)
        tmp = posixpath.join(posixpath.dirname(target), f".{posixpath.basename(target)}.{uuid.uuid4().hex[:8]}.tmp")

        def put(sftp: paramiko.SFTPClient) -> None:
            try:
                f = sftp.open(tmp, "wb")
            except FileNotFoundError:
                self._sftp_makedirs(sftp, posixpath.dirname(target))
                f = sftp.open(tmp, "wb")
            try:
                with f:
                    f.set_pipelined(True)
                    while block := source.read(1 << 20):
                        f.write(block)
                if mode is not None:
                    sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, target)
            except BaseException:
                with contextlib.suppress(*_LINK_ERRORS):
                    sftp.remove(tmp)
                raise

        if size <= LARGE_UPLOAD_BYTES:
            self._sftp_call(f"put {target}", put)
            return
        # A big upload gets its own SFTP session so that small reads (streams, status) are not held up.
        conn = self._connection()
        try:
            sftp = conn.client.open_sftp()
        except _LINK_ERRORS as exc:
            self._drop(conn)
            raise ConnectionLost(f"{self.target_label}: connection lost opening SFTP: {exc}") from exc
        try:
            put(sftp)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self._raise_sftp_failure(conn, f"put {target}", exc)
        finally:
            with contextlib.suppress(*_LINK_ERRORS):
                sftp.close()

    def put_bytes(self, data: bytes, path: str, mode: int | None = None) -> None:
        self._put(io.BytesIO(data), len(data), path, mode)

    def put_file(self, local: Path, path: str, mode: int | None = None) -> None:
        with open(local, "rb") as source:
            self._put(source, Path(local).stat().st_size, path, mode)

    def read_bytes(self, path: str, offset: int = 0, max_bytes: int | None = None) -> bytes:
        target = self._path(path)

        def read(sftp: paramiko.SFTPClient) -> bytes:
            with sftp.open(target, "rb") as f:
                if offset:
                    f.seek(offset)
                if max_bytes is None:
                    size = f.stat().st_size
                    f.prefetch(max(0, size - offset))
                    return f.read()
                return f.read(max_bytes)

        return self._sftp_call(f"read {target}", read)

    def size(self, path: str) -> int | None:
        target = self._path(path)

        def stat(sftp: paramiko.SFTPClient) -> int | None:
            try:
                return sftp.stat(target).st_size
            except FileNotFoundError:
                return None

        return self._sftp_call(f"stat {target}", stat)

    @staticmethod
    def _sftp_makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
        parts, current = [], path
        while current not in ("", "/"):
            try:
                sftp.stat(current)
                break
            except FileNotFoundError:
                parts.append(current)
                current = posixpath.dirname(current)
        for p in reversed(parts):
            try:
                sftp.mkdir(p)
            except OSError as exc:
                if exc.errno != errno.EEXIST and not _sftp_exists(sftp, p):
                    raise

    def makedirs(self, path: str) -> None:
        target = self._path(path)
        self._sftp_call(f"mkdir {target}", lambda sftp: self._sftp_makedirs(sftp, target))

    def close(self) -> None:
        with self._lock:
            conns = [c for c in (self._conn, *self._extra) if c is not None]
            self._conn = None
            self._extra = []
        for conn in conns:
            conn.close()


def _sftp_exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        sftp.stat(path)
        return True
    except FileNotFoundError:
        return False
