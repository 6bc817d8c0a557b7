#!/bin/bash
# TuneDeck run '20240101-000000-abcd': local launch (torchrun, standalone).
# shellcheck disable=SC2016
set -euo pipefail
cd /scratch/tunedeck/runs/20240101-000000-abcd
set +u
# shellcheck disable=SC1090,SC1091
source /opt/envs/train/bin/activate
set -u
export PYTHONPATH=/scratch/tunedeck/runs/20240101-000000-abcd/code
export PYTHONUNBUFFERED=1
export PYTHONWARNINGS=ignore::FutureWarning
export TUNEDECK_RUN_ID=20240101-000000-abcd
rc=0
command python3 -m remote.job.torchrun --standalone --nproc_per_node 8 -m remote.job.train /scratch/tunedeck/runs/20240101-000000-abcd >> /scratch/tunedeck/runs/20240101-000000-abcd/stdout.log 2>&1 || rc=$?
# evaluation.placement after_training: the checkpoints queued during training, now on the freed GPUs
command python3 -m remote.job.evalqueue drain --run-dir /scratch/tunedeck/runs/20240101-000000-abcd >> /scratch/tunedeck/runs/20240101-000000-abcd/eval.log 2>&1 || true
exit "$rc"
