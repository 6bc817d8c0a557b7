"""Cluster profiles: where runs go (this machine, or a Slurm / DeepSpeed-hostfile cluster over SSH).

Saved as YAML in core.paths.config_dir()/clusters.yaml with atomic writes. No secret is ever written
there or logged: keys come from ssh-agent or key files; a passphrase or password the user chooses to
save goes to the OS keyring (service "tunedeck", username "<profile>:<user>@<host>"). The `local`
profile exists out of the box and is the default.
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.fsutil import atomic_write_text
from core.names import printable
from core.paths import config_dir, local_runs_dir
from remote.transport import AuthenticationFailed, LocalTransport, Transport, UnknownHostKeyError

LOCAL = "local"
DEFAULT_PROFILE = LOCAL
KEYRING_SERVICE = "tunedeck"
REMOTE_WORK_ROOT = "~/tunedeck"
_NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z: `$` would let a trailing newline in
_HEADER = (
    "# TuneDeck cluster profiles (`tunedeck cluster add/list/remove`).\n"
    "# No secrets here: keys come from ssh-agent or key files; saved passphrases live in the OS keyring.\n"
)


# Which backends a field applies to, for the Clusters page form (a list: one of these): SSH settings mean
# nothing for the local backend, Slurm's for the hostfile launcher, the hostfile's for Slurm.
_REMOTE_ONLY: dict[str, Any] = {"ui": {"show_if": {"backend": ["slurm", "hostfile"]}}}
_SLURM_ONLY: dict[str, Any] = {"ui": {"show_if": {"backend": "slurm"}}}
_HOSTFILE_ONLY: dict[str, Any] = {"ui": {"show_if": {"backend": "hostfile"}}}
_NOT_SLURM: dict[str, Any] = {"ui": {"show_if": {"backend": ["hostfile", "local"]}}}  # Slurm gives evaluations jobs


class ProfileError(Exception):
    """A profile that cannot be loaded, found or saved; the message names the file, line or field."""


class ClusterProfile(BaseModel):
    """One place to run: backend, SSH target and the cluster-side settings a launch needs."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field(description="Profile name (letters, digits, . _ -).")
    backend: Literal["slurm", "hostfile", "local"] = Field(description="How jobs start: sbatch, the DeepSpeed launcher with a hostfile, or on this machine.")
    host: str | None = Field(None, description="SSH alias (from ~/.ssh/config) or hostname; empty for local.", json_schema_extra=_REMOTE_ONLY)
    user: str | None = Field(None, description="SSH user (default: from the ssh config, else the local user).", json_schema_extra=_REMOTE_ONLY)
    port: int | None = Field(None, gt=0, lt=65536, description="SSH port (default: from the ssh config, else 22).", json_schema_extra=_REMOTE_ONLY)
    identity_file: str | None = Field(None, description="Private key file (default: ssh config IdentityFile, ssh-agent, ~/.ssh/id_*).", json_schema_extra=_REMOTE_ONLY)
    proxy_jump: str | None = Field(None, description="Jump host(s), as ssh -J: [user@]host[:port][,...] (default: ssh config ProxyJump).", json_schema_extra=_REMOTE_ONLY)
    ssh_config: str | None = Field(None, description="ssh config file to resolve the host alias with (default ~/.ssh/config).", json_schema_extra=_REMOTE_ONLY)
    known_hosts: str | None = Field(None, description="known_hosts file (default: ssh config UserKnownHostsFile, else ~/.ssh/known_hosts).", json_schema_extra=_REMOTE_ONLY)
    work_root: str | None = Field(None, description="Where runs and datasets live on the cluster (default ~/tunedeck; for local, TuneDeck's data dir).")
    env_setup: str | None = Field(None, description="Shell command that activates the training environment, e.g. `source ~/venvs/train/bin/activate`.")
    python: str = Field("python3", description="Python interpreter of the training environment.")
    partition: str | None = Field(None, description="Slurm partition.", json_schema_extra=_SLURM_ONLY)
    account: str | None = Field(None, description="Slurm account.", json_schema_extra=_SLURM_ONLY)
    qos: str | None = Field(None, description="Slurm QOS.", json_schema_extra=_SLURM_ONLY)
    time_limit: str | None = Field(None, description="Slurm time limit, e.g. 2-00:00:00.", json_schema_extra=_SLURM_ONLY)
    nodes: int | None = Field(None, gt=0, description="Nodes per job (default: from the run config).", json_schema_extra=_REMOTE_ONLY)
    gpus_per_node: int | None = Field(None, gt=0, description="GPUs per node (default: from the run config).", json_schema_extra=_REMOTE_ONLY)
    hostfile_hosts: list[str] = Field(default_factory=list, description="DeepSpeed hostfile lines, e.g. `node1 slots=8`.", json_schema_extra=_HOSTFILE_ONLY)
    eval_devices: str | None = Field(
        None,
        description="GPUs of the first node reserved for evaluation, e.g. `7` or `6,7` (hostfile/local): "
        "evaluation.placement devices runs evaluations there while training uses the others.",
        json_schema_extra=_NOT_SLURM,
    )
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables every training process gets, "
                                "on every node (exported by the launch script and listed in .deepspeed_env, which "
                                "DeepSpeed's launcher exports on the other nodes), e.g. HF_HOME, NCCL_SOCKET_IFNAME.",
                                json_schema_extra=_REMOTE_ONLY)
    connect_timeout_s: float = Field(15.0, gt=0, description="Seconds to wait for the SSH connection.", json_schema_extra=_REMOTE_ONLY)
    keepalive_s: float = Field(15.0, gt=0, description="Seconds between SSH keepalives.", json_schema_extra=_REMOTE_ONLY)
    save_password_in_keyring: bool = Field(False, description="Use a passphrase/password saved in the OS keyring.", json_schema_extra=_REMOTE_ONLY)
    secret_kind: Literal["passphrase", "password"] = Field(
        "passphrase", description="What the saved secret is. passphrase: it unlocks the SSH key on this computer "
        "and is never sent anywhere. password: the SSH login password, sent to the cluster (only once its host key "
        "matches known_hosts) when no key logs in.", json_schema_extra=_REMOTE_ONLY)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"{value!r}: use letters, digits, '.', '_' or '-' (at most 64, not starting "
                             "with . _ -)")
        return value

    @field_validator("hostfile_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        for line in value:
            if not line.strip() or "\n" in line or line.strip().startswith("#"):
                raise ValueError(f"hostfile line {line!r}: expected `HOST slots=N`")
        return [line.strip() for line in value]

    @field_validator("eval_devices")
    @classmethod
    def _check_eval_devices(cls, value: str | None) -> str | None:
        from core.placement import PlacementError, parse_devices

        try:
            parse_devices(value)
        except PlacementError as exc:
            raise ValueError(str(exc)) from None
        return value.replace(" ", "") if value else None
    @field_validator("env")
    @classmethod
    def _check_env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"env: {key!r} is not an environment variable name")
            if "\n" in val or "\x00" in val:
                raise ValueError(f"env: the value of {key} holds a newline or NUL byte")
        return value

    @model_validator(mode="after")
    def _check_backend_host(self) -> ClusterProfile:
        if self.backend == "local":
            if self.host:
                raise ValueError("host: a local profile runs on this machine; use backend slurm or hostfile with a host")
        elif not self.host:
            raise ValueError(f"host: the {self.backend} backend needs an SSH host (alias or hostname)")
        return self

    @property
    def is_local(self) -> bool:
        return self.backend == "local"

    @property
    def effective_work_root(self) -> str:
        """work_root, or its default (`~` is expanded on the machine, see Transport.home)."""
        if self.work_root:
            return self.work_root
        return str(local_runs_dir().parent) if self.is_local else REMOTE_WORK_ROOT

    def keyring_username(self) -> str:
        """The keyring entry name: `<profile>:<user>@<host>`."""
        if self.is_local:
            raise ProfileError(f"profile {self.name!r} is local: it has no SSH secret")
        user = self.user
        if not user:
            from remote.ssh import resolve_target

            user = resolve_target(self.host, ssh_config=self.ssh_config).user
        return f"{self.name}:{user}@{self.host}"

    def describe(self) -> str:
        if self.is_local:
            return "this machine"
        target = self.host if not self.user else f"{self.user}@{self.host}"
        return f"{target}{':' + str(self.port) if self.port else ''}"


def local_profile() -> ClusterProfile:
    """The built-in profile for this machine; its python is the app's own interpreter (where the training
    stack is installed in a source install), or `python3` in a frozen desktop build."""
    python = "python3" if getattr(sys, "frozen", False) else sys.executable
    return ClusterProfile(name=LOCAL, backend="local", python=python)


def profiles_path() -> Path:
    return config_dir() / "clusters.yaml"


_lock = threading.RLock()


def _read_raw() -> dict[str, dict[str, Any]]:
    path = profiles_path()
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ProfileError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    clusters = data.get("clusters", {}) if isinstance(data, dict) else None
    if not isinstance(clusters, dict):
        raise ProfileError(f"{path}: expected a mapping `clusters: {{NAME: {{backend: ..., host: ...}}}}`")
    for name, body in clusters.items():
        if not isinstance(body, dict):
            raise ProfileError(f"{path}: clusters.{name}: expected a mapping of fields")
    return clusters


def _line_of(path: Path, name: str) -> str:
    try:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip().startswith(f"{name}:"):
                return f"{path}:{i}"
    except OSError:
        pass
    return str(path)


def _build(name: str, body: dict[str, Any], source: Path | None = None) -> ClusterProfile:
    try:
        return ClusterProfile(**{**body, "name": name})
    except ValidationError as exc:
        where = _line_of(source, name) if source else "profile"
        problems = "; ".join(
            f"clusters.{printable(name)}.{'.'.join(str(p) for p in err['loc']) or '(profile)'}: "
            f"{printable(err['msg'].removeprefix('Value error, '))}" for err in exc.errors()
        )
        raise ProfileError(f"{where}: {problems}") from None


def load_profiles() -> dict[str, ClusterProfile]:
    """All profiles by name, `local` first (built in; a saved `local` entry may adjust it)."""
    with _lock:
        raw = _read_raw()
        path = profiles_path()
        profiles = {LOCAL: local_profile()}
        for name, body in raw.items():
            if name == LOCAL:  # adjustments over the built-in defaults
                body = {**local_profile().model_dump(exclude={"name"}), **body}
            profiles[str(name)] = _build(str(name), body, path)
        return profiles


def get_profile(name: str | None = None) -> ClusterProfile:
    """The named profile (the default, `local`, when None)."""
    name = name or DEFAULT_PROFILE
    profiles = load_profiles()
    if name not in profiles:
        raise ProfileError(f"no cluster profile {name!r} (known: {', '.join(profiles)}); add it with `tunedeck cluster add`")
    return profiles[name]


def _dump(profile: ClusterProfile) -> dict[str, Any]:
    body = profile.model_dump(exclude={"name"}, exclude_defaults=True)
    if profile.name == LOCAL:  # only what differs from the built-in local profile
        builtin = local_profile()
        body = {k: v for k, v in body.items() if getattr(builtin, k) != v}
    return {"backend": profile.backend, **body}  # backend always explicit


def save_profile(profile: ClusterProfile) -> Path:
    """Add or replace a profile (atomic rewrite of clusters.yaml); returns the file."""
    with _lock:
        raw = _read_raw()
        raw[profile.name] = _dump(profile)
        if profile.name == LOCAL and raw[LOCAL] == {"backend": "local"}:
            del raw[LOCAL]  # the built-in default needs no entry
        path = profiles_path()
        atomic_write_text(path, _HEADER + yaml.safe_dump({"clusters": raw}, sort_keys=False, allow_unicode=True),
                          mode=0o600)
        _forget_transport(profile.name)
        return path


def delete_profile(name: str) -> None:
    """Remove a saved profile (and its keyring secret); `local` is reset to its defaults."""
    with _lock:
        raw = _read_raw()
        if name not in raw and name != LOCAL:
            raise ProfileError(f"no saved cluster profile {name!r} (known: {', '.join(load_profiles())})")
        if name in raw:
            old = _build(name, raw[name])
            del raw[name]
            atomic_write_text(profiles_path(), _HEADER + yaml.safe_dump({"clusters": raw}, sort_keys=False,
                                                                        allow_unicode=True), mode=0o600)
            if not old.is_local:
                from keyring.errors import KeyringError

                try:
                    delete_secret(old)
                except KeyringError as exc:
                    _forget_transport(name)
                    raise ProfileError(f"removed cluster profile {name!r}, but its saved passphrase is still in the OS "
                                       f"keyring ({type(exc).__name__}: {exc}): unlock the keyring and remove the "
                                       f"entry {KEYRING_SERVICE!r} / {old.keyring_username()!r}") from exc
        _forget_transport(name)


# --- secrets (OS keyring only) ---------------------------------------------------------------------

def set_secret(profile: ClusterProfile, secret: str) -> None:
    """Save the key passphrase / password for this profile in the OS keyring (`profile.secret_kind` says
    which it is; the caller saves the profile with it)."""
    import keyring

    keyring.set_password(KEYRING_SERVICE, profile.keyring_username(), secret)


def get_secret(profile: ClusterProfile) -> str | None:
    if profile.is_local or not profile.save_password_in_keyring:
        return None
    import keyring

    return keyring.get_password(KEYRING_SERVICE, profile.keyring_username())


def delete_secret(profile: ClusterProfile) -> None:
    """Remove the saved secret. Nothing saved, or no keyring backend at all (so nothing saved there either),
    is fine; a keyring that refuses (locked, say) raises keyring's error: the secret is still there."""
    import keyring
    from keyring.errors import NoKeyringError, PasswordDeleteError

    try:
        keyring.delete_password(KEYRING_SERVICE, profile.keyring_username())
    except (PasswordDeleteError, NoKeyringError):
        pass


# --- transports ------------------------------------------------------------------------------------

_transports: dict[str, tuple[str, Transport]] = {}


def _forget_transport(name: str) -> None:
    with _lock:
        entry = _transports.pop(name, None)
    if entry is not None:
        entry[1].close()


def make_transport(profile: ClusterProfile) -> Transport:
    """A new, unshared transport for the profile (tests, one-off tools); prefer `transport_for`."""
    if profile.is_local:
        return LocalTransport(profile.name)
    from remote.ssh import SshTransport

    return SshTransport(
        profile.name, profile.host, user=profile.user, port=profile.port, identity_file=profile.identity_file,
        proxy_jump=profile.proxy_jump, known_hosts=profile.known_hosts, ssh_config=profile.ssh_config,
        connect_timeout_s=profile.connect_timeout_s, keepalive_s=profile.keepalive_s,
        secret=(lambda: get_secret(profile)) if profile.save_password_in_keyring else None,
        secret_kind=profile.secret_kind,
        idle_probe_s=max(30.0, 2 * profile.keepalive_s),
    )


def transport_for(profile: ClusterProfile) -> Transport:
    """The shared transport of a profile (one SSH connection per profile, reused by all callers).

    A changed profile (same name, other settings) gets a new transport; the old one is closed.
    """
    key = profile.model_dump_json()
    with _lock:
        entry = _transports.get(profile.name)
        if entry is not None and entry[0] == key:
            return entry[1]
        transport = make_transport(profile)
        _transports[profile.name] = (key, transport)
    if entry is not None:
        entry[1].close()
    return transport


def close_transports() -> None:
    """Close every shared transport (app exit, tests)."""
    with _lock:
        entries = list(_transports.values())
        _transports.clear()
    for _, transport in entries:
        transport.close()


# --- host keys -------------------------------------------------------------------------------------

def ssh_target(profile: ClusterProfile):
    """The profile's resolved SSH target (remote.ssh.SshTarget)."""
    if profile.is_local:
        raise ProfileError(f"profile {profile.name!r} is local: no SSH host")
    from remote.ssh import resolve_target

    return resolve_target(profile.host, user=profile.user, port=profile.port, identity_file=profile.identity_file,
                          proxy_jump=profile.proxy_jump, known_hosts=profile.known_hosts,
                          ssh_config=profile.ssh_config)


def fetch_host_key(profile: ClusterProfile) -> UnknownHostKeyError | None:
    """Connect once and return the unknown-key error to show the user (it carries the key for
    `trust_host_key`), or None when the host's key (and its jump hosts') is already known.
    A changed key raises ChangedHostKeyError; an unreachable host raises ConnectError."""
    transport = make_transport(profile)
    try:
        transport.connect()
    except UnknownHostKeyError as exc:
        return exc
    except AuthenticationFailed:
        return None  # the login is checked after the host key, so the key was known
    finally:
        transport.close()
    return None


def trust_host_key(profile: ClusterProfile, key: Any) -> str:
    """Record a host key the user accepted in the profile's known_hosts; returns that file's path.

    `key` is the UnknownHostKeyError (it names the host, maybe a jump host, and carries the key)
    or a paramiko PKey for the profile's own host.
    """
    from remote.ssh import add_known_host

    target = ssh_target(profile)
    if isinstance(key, UnknownHostKeyError):
        if key.key is None:
            raise ProfileError(f"no key to trust for {key.host}: connect again to fetch it")
        host_name, known_hosts, pkey = key.host, key.known_hosts or target.known_hosts, key.key
    else:
        host_name, known_hosts, pkey = target.host_key_name, target.known_hosts, key
    add_known_host(known_hosts, host_name, pkey)
    _forget_transport(profile.name)
    return known_hosts
