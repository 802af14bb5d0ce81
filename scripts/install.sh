#!/usr/bin/env bash
# Create .venv and install ignite-mnist into it (editable, with the test, export and serve extras). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Installed already from these very files (and it runs): nothing to do, no package index needed (offline).
STAMP=.venv/.ignite-mnist-installed
WANT=$(cat pyproject.toml setup.cfg scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/ignite-mnist ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ] \
    && .venv/bin/ignite-mnist --help >/dev/null 2>&1; then
  echo "installed already: ignite-mnist in $(pwd)/.venv"
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch and torchvision are pinned to the releases this project is tested with.
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
# extras: test (pytest, httpx, selenium), export (onnx, onnxscript, onnxruntime), serve (starlette, uvicorn),
# sweep (optuna, optuna-integration)
.venv/bin/python -m pip install --quiet -e ".[test,export,serve,sweep]"
.venv/bin/ignite-mnist --help >/dev/null
echo "$WANT" > "$STAMP"
echo "installed: ignite-mnist in $(pwd)/.venv"
