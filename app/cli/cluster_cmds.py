"""`tunedeck cluster add|list|check|remove|trust`: manage where runs go (profiles in remote/profiles.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.cli.errors import CliError


def register(subparsers: argparse._SubParsersAction) -> None:
    cluster = subparsers.add_parser("cluster", help="add, list, check, trust or remove cluster profiles",
                                    description="Cluster profiles: this machine (local) or Slurm / DeepSpeed-hostfile "
                                                "clusters over SSH. No secret is written to files: keys come from "
                                                "ssh-agent or key files, a saved key passphrase or login password goes to "
                                                "the OS keyring.")
    sub = cluster.add_subparsers(dest="cluster_command", metavar="ACTION")
    cluster.set_defaults(handler=lambda args: (cluster.print_help(), 2)[1])

    add = sub.add_parser("add", help="add (or with --force replace) a cluster profile")
    add.add_argument("name", help="profile name (letters, digits, . _ -)")
    add.add_argument("--backend", required=True, choices=["slurm", "hostfile", "local"])
    add.add_argument("--host", help="SSH alias from ~/.ssh/config, or a hostname (not for local)")
    add.add_argument("--user", help="SSH user (default: ssh config, else your user name)")
    add.add_argument("--port", type=int, help="SSH port (default: ssh config, else 22)")
    add.add_argument("--identity-file", help="private key file (default: ssh config, ssh-agent, ~/.ssh/id_*)")
    add.add_argument("--proxy-jump", help="jump host(s) as for ssh -J (default: ssh config ProxyJump)")
    add.add_argument("--ssh-config", help="ssh config file to resolve --host with (default ~/.ssh/config)")
    add.add_argument("--known-hosts", help="known_hosts file (default: ssh config, else ~/.ssh/known_hosts)")
    add.add_argument("--work-root", help="where runs live on the cluster (default ~/tunedeck)")
    add.add_argument("--env-setup", help="shell command activating the training environment, "
                                         "e.g. 'source ~/venvs/train/bin/activate'")
    add.add_argument("--python", help="python of the training environment (default python3)")
    add.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                     help="environment variable for every training process on every node (repeatable; also "
                          "written to .deepspeed_env, which DeepSpeed's launcher exports on the other nodes)")
    add.add_argument("--partition", help="Slurm partition")
    add.add_argument("--account", help="Slurm account")
    add.add_argument("--qos", help="Slurm QOS")
    add.add_argument("--time-limit", help="Slurm time limit, e.g. 2-00:00:00")
    add.add_argument("--nodes", type=int, help="nodes per job")
    add.add_argument("--gpus-per-node", type=int, help="GPUs per node")
    add.add_argument("--hostfile", type=Path, help="DeepSpeed hostfile (lines `HOST slots=N`) for --backend hostfile")
    add.add_argument("--eval-devices", help="GPUs of the first node reserved for evaluation, e.g. 7 or 6,7 "
                                            "(hostfile/local; evaluation.placement devices)")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument("--passphrase-stdin", action="store_true",
                        help="read the SSH key's passphrase from stdin and save it in the OS keyring; it only "
                             "unlocks the key on this computer and is never sent to the cluster")
    secret.add_argument("--password-stdin", action="store_true",
                        help="read the SSH login password from stdin and save it in the OS keyring; it is sent to "
                             "the cluster, only after its host key matched known_hosts, when no key logs in")
    add.add_argument("--force", action="store_true", help="replace an existing profile of that name")
    add.set_defaults(handler=_add)

    lst = sub.add_parser("list", help="list cluster profiles")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(handler=_list)

    check = sub.add_parser("check", help="probe the cluster's training environment (exit 1 if something is missing)")
    check.add_argument("name", nargs="?", default="local")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.add_argument("--timeout", type=float, default=120, help="seconds for the probe (default 120)")
    check.set_defaults(handler=_check)

    remove = sub.add_parser("remove", help="remove a cluster profile (and its saved passphrase)")
    remove.add_argument("name")
    remove.set_defaults(handler=_remove)

    trust = sub.add_parser("trust", help="show the host key fingerprint and record it in known_hosts after confirmation")
    trust.add_argument("name")
    trust.add_argument("--yes", action="store_true", help="record without asking")
    trust.set_defaults(handler=_trust)


def _profile(name: str):
    from remote.profiles import ProfileError, get_profile

    try:
        return get_profile(name)
    except ProfileError as exc:
        raise CliError(str(exc)) from None


def _read_hostfile(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CliError(f"--hostfile {path}: {exc.strerror}") from None
    hosts = [ln.split("#", 1)[0].strip() for ln in lines]
    hosts = [h for h in hosts if h]
    if not hosts:
        raise CliError(f"--hostfile {path}: no `HOST slots=N` lines")
    return hosts


def _add(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from remote.profiles import ClusterProfile, ProfileError, load_profiles, save_profile, set_secret

    try:
        existing = load_profiles()
    except ProfileError as exc:
        raise CliError(str(exc)) from None
    if args.name in existing and not args.force and args.name != "local":
        raise CliError(f"cluster {args.name!r} exists; use --force to replace it")
    fields = {
        "host": args.host, "user": args.user, "port": args.port, "identity_file": args.identity_file,
        "proxy_jump": args.proxy_jump, "ssh_config": args.ssh_config, "known_hosts": args.known_hosts,
        "work_root": args.work_root, "env_setup": args.env_setup, "python": args.python,
        "partition": args.partition, "account": args.account, "qos": args.qos, "time_limit": args.time_limit,
        "nodes": args.nodes, "gpus_per_node": args.gpus_per_node, "eval_devices": args.eval_devices,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    if args.env:
        env = {}
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CliError(f"--env {item!r}: expected KEY=VALUE")
            env[key] = value
        fields["env"] = env
    if args.hostfile is not None:
        if args.backend != "hostfile":
            raise CliError("--hostfile is for --backend hostfile")
        fields["hostfile_hosts"] = _read_hostfile(args.hostfile)
    if args.password_stdin or args.passphrase_stdin:
        fields["save_password_in_keyring"] = True
        fields["secret_kind"] = "password" if args.password_stdin else "passphrase"
    try:
        profile = ClusterProfile(name=args.name, backend=args.backend, **fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'profile'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise CliError(f"cluster {args.name!r}: {problems}") from None
    if args.password_stdin or args.passphrase_stdin:
        flag = "--password-stdin" if args.password_stdin else "--passphrase-stdin"
        what = profile.secret_kind
        secret = sys.stdin.readline().rstrip("\n")
        if not secret:
            raise CliError(f"{flag}: nothing on stdin")
        if args.password_stdin and args.identity_file:
            from remote.ssh import key_file_is_encrypted

            if key_file_is_encrypted(args.identity_file):
                # Most likely the key's passphrase given the wrong name: as a "password" it would be sent out.
                raise CliError(f"--identity-file {args.identity_file} is encrypted, so it needs its passphrase: give "
                               "that with --passphrase-stdin (it unlocks the key here and is never sent). "
                               "--password-stdin is for a login password, which is sent to the cluster; nothing "
                               "was saved")
            print(f"note: saved as the SSH login password (sent to {profile.host} when no key logs in); if it is the "
                  f"passphrase of {args.identity_file}, use --passphrase-stdin instead", file=sys.stderr)
        from keyring.errors import KeyringError

        try:
            set_secret(profile, secret)
        except KeyringError as exc:  # no OS keyring here, or it is locked
            raise CliError(f"cannot save the {what} in the OS keyring: {exc}") from None
    path = save_profile(profile)
    print(f"saved cluster {profile.name!r} ({profile.backend}, {profile.describe()}) in {path}")
    if not profile.is_local:
        print(f"next: `tunedeck cluster check {profile.name}` (first time: `tunedeck cluster trust {profile.name}`)")
    return 0


def _list(args: argparse.Namespace) -> int:
    from remote.profiles import DEFAULT_PROFILE, ProfileError, load_profiles

    try:
        profiles = load_profiles()
    except ProfileError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps([{**p.model_dump(), "default": name == DEFAULT_PROFILE,
                           "work_root": p.effective_work_root} for name, p in profiles.items()], indent=2))
        return 0
    rows = [("NAME", "BACKEND", "TARGET", "WORK ROOT")]
    for name, p in profiles.items():
        rows.append((name + (" *" if name == DEFAULT_PROFILE else ""), p.backend, p.describe(), p.effective_work_root))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    print("(* default)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from remote.check import check_cluster, save_report
    from remote.profiles import close_transports

    profile = _profile(args.name)
    try:
        report = check_cluster(profile, timeout=args.timeout)
    finally:
        close_transports()
    try:
        save_report(report)  # launches judge against it (see remote.preflight)
    except OSError as exc:
        print(f"tunedeck: warning: cannot keep the check result: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps({"profile": report.profile, "ok": report.ok, "install_command": report.install_command,
                          "items": [vars(i) for i in report.items]}, indent=2))
    else:
        print(report.format())
    return 0 if report.ok else 1


def _remove(args: argparse.Namespace) -> int:
    from remote.profiles import ProfileError, delete_profile

    try:
        delete_profile(args.name)
    except ProfileError as exc:
        raise CliError(str(exc)) from None
    print(f"removed cluster {args.name!r}" if args.name != "local" else "reset the local profile to its defaults")
    return 0


def _trust(args: argparse.Namespace) -> int:
    from remote.profiles import fetch_host_key, ssh_target, trust_host_key
    from remote.transport import ChangedHostKeyError, ConnectError

    profile = _profile(args.name)
    if profile.is_local:
        raise CliError(f"cluster {profile.name!r} is local: there is no host key to trust")
    # A jump host's key comes first, then the next hop's: one round per unknown key.
    for _ in range(len(ssh_target(profile).jumps) + 1):
        try:
            unknown = fetch_host_key(profile)
        except ChangedHostKeyError as exc:
            raise CliError(str(exc), code=1) from None
        except ConnectError as exc:
            raise CliError(str(exc), code=1) from None
        if unknown is None:
            print(f"host key of {profile.name!r} is known (in {ssh_target(profile).known_hosts})")
            return 0
        print(f"{unknown.host} offers a {unknown.key_type} key with fingerprint\n  {unknown.fingerprint_sha256}")
        print("Compare it with the fingerprint your cluster admins publish before trusting it.")
        if not args.yes:
            answer = input("Trust this key and record it in known_hosts? [y/N] ").strip().lower()
            if answer not in ("y", "yes"):
                print("not recorded")
                return 1
        path = trust_host_key(profile, unknown)
        print(f"recorded in {path}")
    return 0
