#!/usr/bin/env bash
# Install, then run the whole workflow on the bundled MNIST sample (offline): init, train 10 epochs,
# test the best epoch, export its release, classify a few digits with it, and show the experiment.
# Run it again: it resumes (and finds the training done).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
run() { echo "+ ignite-mnist $*" >&2; .venv/bin/ignite-mnist "$@"; }
NAME=${1:-sample}
if [ ! -f "experiments/$NAME/experiment.json" ]; then
  run -e "$NAME" init --config-path config/config.sample.json
fi
run -e "$NAME" train --max-epochs 10
run -e "$NAME" test --epoch best
release=$(run -e "$NAME" export-release --epoch best | tail -n 1)
digits=$(.venv/bin/python scripts/sample_digits.py "experiments/$NAME/digits" 5)
run predict --release "$release" $digits
run -e "$NAME" info
