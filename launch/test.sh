#!/usr/bin/env bash
# The test suite, the multi-process DeepSpeed tests included (GPU-only tests are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
# Real third-party pages (FUNSD, SROIE, ...) beside the checkout; tests that need them skip without.
if [ -z "${PIXPARSE_TEST_DATA:-}" ] && [ -d ../shared/data ]; then
  export PIXPARSE_TEST_DATA="$(cd ../shared/data && pwd)"
fi
python -m pytest -q --durations=15 -m "not gpu and not multigpu" "$@"
