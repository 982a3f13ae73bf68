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
  # --no-compile: pip would byte-compile every module of every package (all of torch); instead
  # the modules the commands and tests import are compiled once below, by importing them.
  .venv/bin/pip install -q --disable-pip-version-check --no-compile torch==2.14.1 torchvision==0.29.1
  .venv/bin/pip install -q --disable-pip-version-check --no-compile -e '.[test]'
  # writes their bytecode even where PYTHONDONTWRITEBYTECODE is set (without it, every process
  # would compile torch and transformers from source again: ~3x slower starts)
  PYTHONDONTWRITEBYTECODE= DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} .venv/bin/python -c "
import pixparse.app.run, pixparse.app.eval, pixparse.app.export, pixparse.app.write, pixparse.app.synth, pixparse.cli
import pixparse.models.build, pixparse.tasks.registry, pixparse.data.loader, pixparse.data.hub
import deepspeed.launcher.runner, deepspeed.launcher.launch, deepspeed.checkpoint.ds_to_universal
import deepspeed.utils.zero_to_fp32, deepspeed.runtime.engine, deepspeed.runtime.zero.stage3
import deepspeed.runtime.zero.stage_1_and_2, torch.distributed.run, torch.distributed.fsdp
import transformers, timm, webdataset, jiwer, rapidfuzz, zss, pytest, xdist, matplotlib.pyplot
import torch.utils.tensorboard, wandb, boto3, moto, datasets, safetensors, sentencepiece, tokenizers
" > /dev/null
fi
