#!/usr/bin/env bash
# The whole workflow on a CUDA GPU, step by step, each step's result and time:
#   init, train 2 epochs, resume to 3, test, export-release (pt, pt2, onnx), predict; on a GPU, also
#   train 2 epochs and resume to 3 with training.cuda_graphs on.
# Usage: scripts/gpu_check.sh [DEVICE] [DATASET] [DATA_PATH]   (defaults: cuda:0, mnist-sample; cpu: a dry run)
# Exit 0 when every step passed; the last line is one JSON object with each step's seconds and outcome.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cuda:0}
DATASET=${2:-mnist-sample}
DATA_PATH=${3:-data}
PY=${PYTHON:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CLI=("$PY" -m ignite_mnist --experiments-path "$WORK/experiments" --data-path "$DATA_PATH" -e gpu)
GRAPHS=("$PY" -m ignite_mnist --experiments-path "$WORK/experiments" --data-path "$DATA_PATH" -e graphs)
results=()
failed=0

step() {  # step NAME COMMAND...: run it, print its last line and time, remember both
  local name=$1; shift
  local start end rc
  start=$(date +%s%N)
  "$@" > "$WORK/$name.out" 2>&1
  rc=$?
  end=$(date +%s%N)
  local seconds
  seconds=$(awk "BEGIN { printf \"%.2f\", ($end - $start) / 1e9 }")
  printf '%-16s %6.1fs  %s  %s\n' "$name" "$seconds" "$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")" \
    "$(tail -n 1 "$WORK/$name.out" | cut -c1-150)"
  [ $rc -eq 0 ] || { failed=1; tail -n 20 "$WORK/$name.out" | sed 's/^/    /'; }
  results+=("\"$name\": {\"seconds\": $seconds, \"ok\": $([ $rc -eq 0 ] && echo true || echo false)}")
}

if [ "$DEVICE" != cpu ]; then  # (cpu: a dry run of this script where there is no GPU)
  "$PY" -c "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name(0))" \
    || { echo "error: no CUDA GPU here: this check needs one (or pass cpu for a dry run)" >&2; exit 2; }
fi
step init "${CLI[@]}" init --set "data.dataset=$DATASET"
step train-2 "${CLI[@]}" train --max-epochs 2 --device "$DEVICE"
step resume-3 "${CLI[@]}" train --max-epochs 3 --device "$DEVICE"
step test "${CLI[@]}" test --epoch best --device "$DEVICE" --json
step export-pt "${CLI[@]}" export-release --epoch best
step export-pt2 "${CLI[@]}" export-release --epoch best --format pt2
step export-onnx "${CLI[@]}" export-release --epoch best --format onnx
if [ "$DEVICE" != cpu ]; then  # the training step captured in CUDA graphs (torch.compile), and its resume
  step graphs-init "${GRAPHS[@]}" init --set "data.dataset=$DATASET" --set training.cuda_graphs=true
  step graphs-train-2 "${GRAPHS[@]}" train --max-epochs 2 --device "$DEVICE"
  step graphs-resume-3 "${GRAPHS[@]}" train --max-epochs 3 --device "$DEVICE"
  grep -q "resuming experiment graphs from epoch 2" "$WORK/graphs-resume-3.out" || { echo "graphs: resume did not resume"; failed=1; }
fi
release=$(tail -n 1 "$WORK/export-onnx.out")
digits=$("$PY" scripts/sample_digits.py "$WORK/digits" 5)
# shellcheck disable=SC2086
step predict "$PY" -m ignite_mnist predict --release "$release" $digits
grep -q "resuming experiment gpu from epoch 2" "$WORK/resume-3.out" || { echo "resume did not resume"; failed=1; }
(IFS=,; echo "{\"device\": \"$DEVICE\", \"dataset\": \"$DATASET\", \"ok\": $([ $failed -eq 0 ] && echo true || echo false), \"steps\": {${results[*]}}}")
exit $failed
