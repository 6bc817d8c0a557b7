"""Every value that reaches a shell is quoted: runs whose names, paths and fields carry quotes, `$()`,
backticks, `;`, newlines, spaces and non-ASCII either start with those values intact or fail with a clear
error; the injected text never runs (a sentinel file is never created).

The training command is replaced by a recorder interpreter (the profile's `python` field) that writes
the argv it received: that checks the round trip of the values without a training run per example.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import check_run_name
from core.store import Store
from remote.profiles import ClusterProfile, make_transport
from remote.runs import LaunchError, launch, refresh_cluster
from remote.transport import LocalTransport
from tests.remote.launch_support import PYTHON, fast_config, ssh_profile

SENTINEL = f"td_pwned_{secrets.token_hex(4)}"
# Each fragment would create ~/SENTINEL if any shell evaluated it (cd first: no "/" needed in a path part).
INJECTIONS = [
    f"$(cd;touch {SENTINEL})", f"`cd;touch {SENTINEL}`", f";cd;touch {SENTINEL};", f"'$(cd;touch {SENTINEL})'",
    f'"$(cd;touch {SENTINEL})"', f"\ncd;touch {SENTINEL}\n", f"&&cd&&touch {SENTINEL}", f"|cd;touch {SENTINEL}",
    f"' ; cd ; touch {SENTINEL} ; '", "${HOME}", "$((6*7))", "\\", "%j %% %x", "# comment", "é ü 中文 🚀",
    "  two  spaces ", "--partition=evil", "*", "~",
]
RECORDER = """#!{python}
# Stands in for the training interpreter: records the argv it got, in the directory it was started in.
import json, os, sys
with open("argv.json", "w") as f:
    json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd()}}, f)
"""


def refused_name(name: str) -> bool:
    """Whether launch refuses `name` as a run name (control characters, blank, too long) before recording it."""
    try:
        check_run_name(name)
    except ValueError:
        return True
    return False


def sentinel_paths(*roots: Path) -> list[Path]:
    found = [p for p in (Path.home() / SENTINEL,) if p.exists()]
    for root in roots:
        found += list(root.rglob(f"*{SENTINEL}*")) if root.exists() else []
    # A directory *named* with the injection text is expected; only a plain file named SENTINEL is a hit.
    return [p for p in found if p.name == SENTINEL]


def nasty_text(min_size: int = 1):
    piece = st.one_of(st.sampled_from(INJECTIONS), st.text(st.characters(blacklist_categories=("Cs",),
                                                                         blacklist_characters="\x00/"), max_size=4))
    return st.lists(piece, min_size=min_size, max_size=3).map("".join).filter(lambda s: s.strip() not in ("", ".", ".."))


def path_part(text: str, max_bytes: int = 100) -> str:
    """A file name from hostile text: at most max_bytes of UTF-8 (a name is limited to 255 bytes)."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore") or "x"


def recorder(tmp: Path) -> str:
    path = tmp / "recorder-python"
    path.write_text(RECORDER.format(python=PYTHON))
    path.chmod(0o755)
    return str(path)


def wait_ended(store: Store, run_id: str, cluster: str, transport, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        refresh_cluster(store, cluster, [store.get_run(run_id)], transport)
        row = store.get_run(run_id)
        if row.is_terminal:
            return row.status
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not end: {store.get_run(run_id)}")


def make_dataset(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(4)))
    return path


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=nasty_text(), description=nasty_text(), dir_part=nasty_text(), data_part=nasty_text())
def test_local_launch_with_hostile_names_paths_and_fields_never_runs_injected_text(
        tmp_path_factory, name, description, dir_part, data_part):
    tmp = tmp_path_factory.mktemp("quoting")
    work_root = tmp / path_part(dir_part) / "root"
    data = make_dataset(tmp / "data", path_part(data_part))
    cfg = fast_config()
    cfg = cfg.model_copy(update={
        "description": description,
        "data": cfg.data.model_copy(update={"demo": None, "train_files": [str(data)]}),
    })
    profile = ClusterProfile(name="q-local", backend="local", work_root=str(work_root), python=recorder(tmp))
    transport = LocalTransport("q-local")
    with Store(tmp / "store.sqlite3") as store:
        try:
            # force: the profile's python is a recorder script, which the launch guardrails find is no Python.
            run_id = launch(cfg, profile.name, store, name=name, profile=profile, transport=transport, force=True)
        except LaunchError as exc:
            if refused_name(name):
                # A run name is one line of plain text: refused, saying why, before anything is recorded.
                assert "run name" in str(exc) and store.list_runs() == []
            else:
                # Refused values must be named, and the run recorded as failed with that reason.
                assert any(word in str(exc) for word in ("run_dir", "name", "path", "PYTHONPATH")), str(exc)
                row = store.list_runs()[0]
                assert row.status == "failed" and row.status_reason.startswith("launch failed")
        else:
            row = store.get_run(run_id)
            assert row.name == name and not refused_name(name)
            assert wait_ended(store, run_id, profile.name, transport) == "finished"
            run_dir = Path(row.run_dir)
            assert run_dir.parent.parent == work_root
            got = json.loads((run_dir / "argv.json").read_text())
            assert got["argv"][-1] == row.run_dir  # the path arrived intact, as one argument
            assert got["cwd"] == row.run_dir
            shipped = json.loads((run_dir / "config.json").read_text())
            assert shipped["name"] == name and shipped["description"] == description
            train_file = Path(shipped["data"]["train_files"][0])
            assert train_file.name == data.name and train_file.read_bytes() == data.read_bytes()
    assert sentinel_paths(tmp) == []


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["slurm", "hostfile"])
def test_ssh_launch_with_hostile_work_root_and_name_never_runs_injected_text(
        backend, sshd_server, slurm_cluster, tmp_path):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    rec = recorder(bin_dir)
    (bin_dir / "deepspeed").symlink_to(rec)  # the hostfile backend runs `deepspeed ...`
    safe_for_deepspeed = "a b;c(d)&e|é中 %j"  # DeepSpeed's launcher refuses quotes, $ and backticks: see below
    work_root = tmp_path / (safe_for_deepspeed if backend == "hostfile" else INJECTIONS[0] + INJECTIONS[3] + " é")
    extra = {"partition": slurm_cluster.partition} if backend == "slurm" else {"hostfile_hosts": ["localhost"]}
    profile = ssh_profile(f"q-{backend}", backend, sshd_server, work_root, **extra)
    profile = profile.model_copy(update={"python": rec, "env_setup": f"export PATH={bin_dir}:$PATH"})
    transport = make_transport(profile)
    name = INJECTIONS[1] + INJECTIONS[6] + INJECTIONS[2]
    try:
        with Store(tmp_path / "store.sqlite3") as store:
            # A name with a newline (INJECTIONS[5]) is refused before anything is recorded or uploaded.
            with pytest.raises(LaunchError, match="control or invisible format characters"):
                launch(fast_config(), profile.name, store, name=INJECTIONS[5], profile=profile, transport=transport,
                       force=True)
            assert store.list_runs() == []
            # force: the profile's python is a recorder script, which the launch guardrails find is no Python.
            run_id = launch(fast_config(), profile.name, store, name=name, profile=profile, transport=transport,
                            force=True)
            row = store.get_run(run_id)
            assert wait_ended(store, run_id, profile.name, transport, timeout=120) == "finished", row
            got = json.loads((Path(row.run_dir) / "argv.json").read_text())
            assert got["argv"][-1] == row.run_dir
            assert row.run_dir.startswith(str(work_root))
            # The same hostile root is refused by name for the hostfile backend when it has quotes or `$`.
            if backend == "hostfile":
                bad = profile.model_copy(update={"work_root": str(tmp_path / INJECTIONS[0])})
                with pytest.raises(LaunchError, match="DeepSpeed's launcher passes unescaped"):
                    launch(fast_config(), bad.name, store, profile=bad, transport=transport, force=True)
                refused = store.list_runs()[0]
                assert refused.status == "failed" and "use a path without them" in refused.status_reason
    finally:
        transport.close()
    assert sentinel_paths(tmp_path) == []
