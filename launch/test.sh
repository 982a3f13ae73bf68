#!/usr/bin/env bash
# The test suite, the multi-process DeepSpeed tests included (GPU-only tests are skipped).
#   bash launch/test.sh           what CI runs: every behaviour, each long proof in its short version
#   bash launch/test.sh --full    the long proofs too (full learning and reading checks, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
# Real third-party pages (FUNSD, SROIE, ...) beside the checkout; tests that need them skip without.
if [ -z "${PIXPARSE_TEST_DATA:-}" ] && [ -d ../shared/data ]; then
  export PIXPARSE_TEST_DATA="$(cd ../shared/data && pwd)"
fi
LONG="and not long"
if [ "${1:-}" = "--full" ]; then LONG=""; shift; fi
# The one-process tests, then the multi-process ones, each tier on 2 pytest workers. Two 2-rank
# launches at once oversubscribe the 2 cores, yet their start-up, saves and waits overlap: the
# multi-process tier took 495 s against 621 s one at a time (2-core AMD EPYC; docs/testing.md).
# Exit status 5 is "no test selected" (arguments that pick only one kind).
tier() {
  local status=0
  python -m pytest -q "$@" || status=$?
  if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then exit "$status"; fi
}
tier -n 2 --durations=5 -m "not slow $LONG and not gpu and not multigpu" "$@"
tier -n 2 --durations=15 -m "slow $LONG and not gpu and not multigpu" "$@"
