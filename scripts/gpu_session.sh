#!/usr/bin/env bash
# Every GPU check in one go, for a few minutes on a lent GPU: the workflow (gpu_check.sh), the step three ways
# (gpu_step_graph.py), the CUDA tests, then the bench; each part under its own time limit, each log kept.
# Usage: scripts/gpu_session.sh DATA_DIR [LOG_DIR]
#   DATA_DIR: Fashion-MNIST's four IDX files; LOG_DIR (default: a temporary folder) receives one log per part.
# Uses $PYTHON (default python3: a GPU machine's own torch); the checkout must be importable (PYTHONPATH is set
# to it). Parts that fail are reported and the next one runs; exit 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: scripts/gpu_session.sh DATA_DIR [LOG_DIR]}
LOGS=${2:-$(mktemp -d)}
mkdir -p "$LOGS"
export PYTHON=${PYTHON:-python3} PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=0

part() {  # part NAME SECONDS COMMAND...: run it under a time limit, its output to LOGS/NAME.log
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  printf '== %-14s rc %-3s %4ss  (%s)\n' "$name" "$rc" "$(( $(date +%s) - start ))" "$LOGS/$name.log"
  tail -n 4 "$LOGS/$name.log" | cut -c1-300 | sed 's/^/   /'
  [ $rc -eq 0 ] || failed=1
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/GPU: /'
"$PYTHON" -c "import torch, ignite; print('torch', torch.__version__, 'ignite', ignite.__version__)"
part step-graph 120 "$PYTHON" scripts/gpu_step_graph.py --data-path "$DATA"
part workflow 150 env PYTHON="$PYTHON" scripts/gpu_check.sh cuda:0 fashion-mnist "$DATA"
part cuda-tests 60 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_resume.py -k cuda
part engine-host 40 "$PYTHON" scripts/bench_engine_host.py --device cuda --epochs 4 --rounds 2
part bench 200 "$PYTHON" scripts/bench.py --device cuda --data-path "$DATA" --repeats 1 --process-repeats 2
exit $failed
