"""Commands that start the training job on one machine (tests, `launch.sh`, debugging).

    python -m remote.job.launch_local RUN_DIR --nproc 2 [--launcher torchrun|deepspeed] [--dry-run]

The environment the job needs on a CPU-only host: PYTHONPATH pointing at the shipped code, unbuffered
output, gloo's FutureWarnings silenced (~1,800 lines per short run), a cache for DeepSpeed's JIT-compiled
ops. Multi-node runs use the same module under srun + torchrun (the Slurm script renders that).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(code_dir: str | os.PathLike[str], base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = str(code_dir) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "tunedeck" / "torch_extensions"))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def job_command(run_dir: str | os.PathLike[str], nproc: int, launcher: str = "torchrun", master_port: int | None = None,
                python: str = sys.executable) -> list[str]:
    """The argv that starts `remote.job.train RUN_DIR` with `nproc` local processes."""
    port = str(master_port or free_port())
    if launcher == "torchrun":
        return [python, "-m", "remote.job.torchrun", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                "--master_port", port, "-m", "remote.job.train", str(run_dir)]
    if launcher == "deepspeed":
        # On a CPU host the deepspeed launcher starts one process unless --num_gpus is given.
        return [python, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc), "--master_port", port,
                "--module", "remote.job.train", str(run_dir)]
    raise ValueError(f"unknown launcher {launcher!r} (torchrun or deepspeed)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--launcher", choices=("torchrun", "deepspeed"), default="torchrun")
    parser.add_argument("--code-dir", default=None, help="where core/ and remote/ live (default: RUN_DIR/code)")
    parser.add_argument("--dry-run", action="store_true", help="print the command and exit")
    args = parser.parse_args(argv)
    code_dir = args.code_dir or str(Path(args.run_dir) / "code")
    cmd = job_command(args.run_dir, args.nproc, args.launcher)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    return subprocess.call(cmd, env=job_env(code_dir))


if __name__ == "__main__":
    raise SystemExit(main())
