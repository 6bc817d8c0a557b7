#!/usr/bin/env bash
# bench_gpu_throughput.py on a lent GPU machine that cannot reach a package index (../shared/FACTS.md, "A GPU
# machine"): it has torch, transformers, accelerate, huggingface_hub and pyarrow, but not trl, datasets,
# deepspeed or pydantic. Two steps:
#
#   bash tests/bench/gpu_bench.sh prepare     # HERE (index reachable): wheels for Python 3.12 into .whl/ (~25 MB, ignored)
#   bash tests/bench/gpu_bench.sh run         # THERE, via the device tool with carry [".whl"]: ~5 minutes
#
# `run` installs only the carried wheels whose module the machine lacks (never shadowing its own torch stack)
# into /tmp/site, checks that the job imports, runs the three arms (job, reference, unpacked) and writes the
# table to $OUT/bench_gpu_throughput.txt (and stdout).
set -euo pipefail
cd "$(dirname "$0")/../.."

# Pure-Python or cp312 manylinux wheels the GPU machine may lack: the training stack the job adds to
# transformers, pydantic (core.config is shipped with the job) and their own dependencies.
WHEELS=(
  trl==1.16.0 datasets==5.2.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 hjson==3.1.0 msgpack==1.2.4
  ninja==1.13.2 py-cpuinfo==9.0.0 einops==0.8.2 pandas==3.1.1 python-dateutil==4.0.0 tzdata==2026.6 six
)
# wheel file prefix -> the module that tells whether the machine already has it
declare -A MODULE=(
  [trl]=trl [datasets]=datasets [deepspeed]=deepspeed [pydantic]=pydantic [pydantic_core]=pydantic_core
  [annotated_types]=annotated_types [typing_inspection]=typing_inspection [typing_extensions]=typing_extensions
  [dill]=dill [multiprocess]=multiprocess [xxhash]=xxhash [hjson]=hjson [msgpack]=msgpack [ninja]=ninja
  [py_cpuinfo]=cpuinfo [einops]=einops [pandas]=pandas [python_dateutil]=dateutil [tzdata]=tzdata [six]=six
)

case "${1:-run}" in
prepare)
  py=.venv/bin/python
  rm -rf .whl && mkdir -p .whl
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
  # deepspeed has no wheel on the index; its sdist builds one (pure Python, ops compile at run time)
  "$py" -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl
  ls -1 .whl && du -sh .whl
  ;;
run)
  py=${PYTHON:-python3}
  site=/tmp/tunedeck-site
  mkdir -p "$site"
  for whl in .whl/*.whl; do
    name=$(basename "$whl" | cut -d- -f1 | tr '[:upper:]' '[:lower:]')
    module=${MODULE[$name]:-$name}
    if "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" 2>/dev/null; then
      echo "have $module"
    else
      echo "installing $(basename "$whl")"
      "$py" -m pip install -q --no-index --no-deps --target "$site" "$whl"
    fi
  done
  export PYTHONPATH="$site:$PWD" PYTHONWARNINGS=ignore::FutureWarning TORCH_EXTENSIONS_DIR=/tmp/torch_extensions
  "$py" -c "import torch, transformers, trl, deepspeed, datasets, pydantic; import remote.job.train; \
print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, \
'deepspeed', deepspeed.__version__, 'datasets', datasets.__version__, 'cuda', torch.cuda.is_available())"
  out=${OUT:-/tmp}/bench_gpu_throughput.txt
  timeout 560 "$py" tests/bench/bench_gpu_throughput.py --keep /tmp/tunedeck-bench "${@:2}" 2>&1 | tee "$out"
  # on failure the arms' logs say why
  for log in /tmp/tunedeck-bench/*/*.log; do [ -f "$log" ] && tail -c 4000 "$log" > "${OUT:-/tmp}/$(basename "$(dirname "$log")")-$(basename "$log")"; done
  ;;
*)
  echo "usage: $0 prepare|run [bench options]" >&2
  exit 2
  ;;
esac
