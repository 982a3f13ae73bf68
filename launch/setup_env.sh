#!/usr/bin/env bash
# Create .venv with pinned torch/torchvision first (a bare `torch` may pull a newer CUDA build),
# then pixparse and its test extras. Safe to re-run: a finished install is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import pixparse, deepspeed, timm, transformers, webdataset, pytest, xdist, zss, rapidfuzz, jiwer, orjson, wandb, boto3, moto, matplotlib, datasets" 2>/dev/null; then
  # --no-compile: modules compile to bytecode when first imported, not all of torch at install
  .venv/bin/pip install -q --disable-pip-version-check --no-compile torch==2.14.1 torchvision==0.29.1
  .venv/bin/pip install -q --disable-pip-version-check --no-compile -e '.[test]'
fi
