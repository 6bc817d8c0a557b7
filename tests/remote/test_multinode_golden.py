"""The multi-node launch files the golden tests pin (phind-codellama-34b-v1: 4 nodes x 8 GPUs), executed for
real on the 4-node namespace cluster (8 fake GPUs per node, partition gpu, hosts gpu-node-01..04).

The golden text alone proves nothing about srun, torchrun or pdsh. Here the same files (only the run
directory and the environment activation differ from the golden ones, and that is checked line for line)
start 32 ranks through Slurm (sbatch -> srun -> torchrun on each node, c10d rendezvous) and through
DeepSpeed's launcher (hostfile, .deepspeed_env, pdsh over ssh to each node). The 34B training job is replaced
by a stand-in that checks in with rank 0 over TCP at MASTER_ADDR (the rendezvous host, by name), so each
rank proves it ran where the script put it, with the environment the script gave it, and could reach rank 0.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from core.plan import JOB_MODULE, LaunchContext, render_plan, write_plan
from core.presets import load_preset
from core.records import RunPaths
from remote.backends import DETACH_SCRIPT, DETACH_WRAPPER
from remote.bundle import job_code_files
from tests.remote.launch_support import VENV_BIN

pytestmark = pytest.mark.slow

PRESET = "phind-codellama-34b-v1"
GOLDEN = Path(__file__).resolve().parents[1] / "core" / "golden" / PRESET
GOLDEN_RUN_ID = "20240101-000000-abcd"
GOLDEN_RUN_DIR = f"/scratch/tunedeck/runs/{GOLDEN_RUN_ID}"
GOLDEN_ENV_SETUP = "source /opt/envs/train/bin/activate"
ENV_SETUP = f"export PATH={VENV_BIN}:$PATH"  # the cluster's training environment: this project's venv
WORLD = 32
TIMEOUT_S = 240

# The stand-in job (python -m remote.job.train RUN_DIR): standard library only, so 32 of them start quickly.
STUB = r'''
import json, os, socket, sys, time
run_dir = sys.argv[-1]
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "CUDA_VISIBLE_DEVICES", "PYTHONPATH", "TUNEDECK_RUN_ID")
me = {"host": socket.gethostname(), "argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keys}}
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
port_file = os.path.join(run_dir, "stub-rank0-port")
if rank == 0:
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(180)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.getsockname()[1]))
    os.replace(port_file + ".tmp", port_file)
    seen = [me]
    while len(seen) < world:
        conn, _ = server.accept()
        with conn, conn.makefile("r") as lines:
            seen.append(json.loads(lines.readline()))
    with open(os.path.join(run_dir, "stub-ranks.json"), "w") as f:
        json.dump(seen, f)
else:
    deadline = time.time() + 180
    while not os.path.exists(port_file):
        if time.time() > deadline:
            sys.exit("rank 0 never opened its port")
        time.sleep(0.05)
    port = int(open(port_file).read())
    with socket.create_connection((os.environ["MASTER_ADDR"], port), timeout=60) as conn:
        conn.sendall((json.dumps(me) + "\n").encode())
'''


def _context(run_dir: Path, backend: str) -> LaunchContext:
    """The golden context (tests/core/test_plan.py golden_ctx) with only the run directory and the
    environment activation of this cluster."""
    return LaunchContext(run_id=GOLDEN_RUN_ID, run_dir=str(run_dir), backend=backend, env_setup=ENV_SETUP,
                         python="python3", master_port=29500, partition="gpu", account="codegen",
                         time_limit="04:00:00", hosts=[f"gpu-node-{i:02d}" for i in range(1, 5)])


def _plan(tmp_path: Path, backend: str) -> Path:
    """Write the phind plan for this cluster, check it IS the golden text, install the stand-in job."""
    cfg = load_preset(PRESET)
    run_dir = tmp_path / "runs" / GOLDEN_RUN_ID
    ctx = _context(run_dir, backend)
    rendered = render_plan(cfg, ctx)
    pinned = {RunPaths.SLURM_SCRIPT: "launch.slurm", RunPaths.HOSTFILE: "hostfile",
              RunPaths.DEEPSPEED_ENV: ".deepspeed_env"}
    if backend == "hostfile":
        pinned[RunPaths.LOCAL_SCRIPT] = "launch-hostfile.sh"
    for name, golden_name in pinned.items():
        golden = (GOLDEN / golden_name).read_text().replace(GOLDEN_RUN_DIR, str(run_dir))
        golden = golden.replace(GOLDEN_ENV_SETUP, ENV_SETUP)
        assert rendered[name] == golden, f"{name} is not the golden {golden_name} (beyond run dir and env setup)"
    write_plan(cfg, ctx, run_dir)
    # The job code a launch ships, with only the training entry point replaced by the stand-in: the launch
    # modules (torchrun) and the evaluation queue the hostfile script drains after training stay the real ones.
    code = run_dir / RunPaths.JOB_CODE
    for rel, src in job_code_files().items():
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, code / rel)
    (code / "remote" / "job" / "train.py").write_text(STUB)
    return run_dir


def _ssh(cluster, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-F", str(cluster.ssh_config), cluster.nodes[0].name, command],
                          capture_output=True, text=True, timeout=timeout)


def _ranks(run_dir: Path) -> list[dict]:
    return sorted(json.loads((run_dir / "stub-ranks.json").read_text()), key=lambda r: int(r["env"]["RANK"]))


def _assert_every_rank_checked_in(run_dir: Path, ranks: list[dict]) -> dict[str, list[int]]:
    assert [int(r["env"]["RANK"]) for r in ranks] == list(range(WORLD))
    by_host: dict[str, list[int]] = {}
    for r in ranks:
        assert r["argv"] == [str(run_dir)]  # the entry-point contract: `python -m remote.job.train RUN_DIR`
        assert r["env"]["WORLD_SIZE"] == str(WORLD)
        assert r["env"]["PYTHONPATH"].split(":")[0] == str(run_dir / RunPaths.JOB_CODE)
        assert r["env"]["TUNEDECK_RUN_ID"] == GOLDEN_RUN_ID
        by_host.setdefault(r["host"], []).append(int(r["env"]["LOCAL_RANK"]))
    assert sorted(by_host) == [f"gpu-node-{i:02d}" for i in range(1, 5)]
    assert all(sorted(local) == list(range(8)) for local in by_host.values()), by_host
    return by_host


def test_golden_4x8_slurm_script_starts_32_ranks_8_per_node_that_reach_rank_0(netns_cluster, tmp_path):
    run_dir = _plan(tmp_path, "slurm")
    res = _ssh(netns_cluster, f"sbatch --parsable {run_dir / RunPaths.SLURM_SCRIPT}")
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip().split(";")[0]
    deadline = time.monotonic() + TIMEOUT_S
    while netns_cluster.squeue_state(job_id) not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
        assert time.monotonic() < deadline, netns_cluster.squeue_state(job_id)
        time.sleep(0.5)
    log = (run_dir / RunPaths.STDOUT).read_text(errors="replace")
    info = netns_cluster.scontrol("show", "job", job_id)
    assert "JobState=COMPLETED" in info, f"{info}\n{log[-4000:]}"
    assert "NumNodes=4" in info and "Account=codegen" in info and "TimeLimit=04:00:00" in info
    ranks = _ranks(run_dir)
    _assert_every_rank_checked_in(run_dir, ranks)
    # torchrun's c10d rendezvous on the first node of the allocation; every rank found rank 0 by name.
    rank0 = ranks[0]
    assert {r["env"]["MASTER_ADDR"] for r in ranks} == {rank0["host"]}
    assert all(r["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7" for r in ranks)  # --gpus-per-node=8
    nodes = set(_ssh(netns_cluster, f"scontrol show hostnames {info.split(' NodeList=')[1].split()[0]}")
                .stdout.split())
    assert nodes == {f"gpu-node-{i:02d}" for i in range(1, 5)}


def test_golden_4x8_hostfile_launch_starts_32_ranks_over_pdsh_with_the_deepspeed_env(netns_cluster, tmp_path):
    from remote.backends import Backend
    from remote.profiles import ClusterProfile, make_transport

    run_dir = _plan(tmp_path, "hostfile")
    (run_dir / DETACH_SCRIPT).write_text(DETACH_WRAPPER)
    profile = ClusterProfile(name="golden", backend="hostfile", host=netns_cluster.nodes[0].name,
                             ssh_config=str(netns_cluster.ssh_config), known_hosts=str(netns_cluster.known_hosts))
    transport = make_transport(profile)
    try:
        pgid = Backend.for_name("hostfile").submit(transport, str(run_dir), GOLDEN_RUN_ID)
        assert pgid.isdigit()
        deadline = time.monotonic() + TIMEOUT_S
        while not (run_dir / RunPaths.EXIT_STATUS).exists():
            assert time.monotonic() < deadline, (run_dir / RunPaths.STDOUT).read_text(errors="replace")[-4000:]
            time.sleep(0.5)
    finally:
        transport.close()
    log = (run_dir / RunPaths.STDOUT).read_text(errors="replace")
    assert (run_dir / RunPaths.EXIT_STATUS).read_text().strip() == "0", log[-4000:]
    ranks = _ranks(run_dir)
    by_host = _assert_every_rank_checked_in(run_dir, ranks)
    # Hostfile order: gpu-node-01 holds ranks 0-7 and is the rendezvous host on every node.
    assert [r["host"] for r in ranks[:8]] == ["gpu-node-01"] * 8 and ranks[8]["host"] == "gpu-node-02"
    assert {r["env"]["MASTER_ADDR"] for r in ranks} == {"gpu-node-01"}
    assert len(by_host) == 4
    # TUNEDECK_RUN_ID reached the other nodes only through .deepspeed_env (pdsh passes no environment).
    assert "deepspeed_env file" in log and "pdsh" in log
    assert JOB_MODULE in log
    # evaluation.placement after_training (phind on a hostfile machine): once the launcher returned, the script
    # ran the queue's drain, which found nothing queued (the stand-in saved no checkpoint), and exited 0.
    eval_log = (run_dir / RunPaths.EVAL_LOG).read_text(errors="replace")
    assert json.loads(eval_log.strip().splitlines()[-1]) == {"evaluated": []}, eval_log
