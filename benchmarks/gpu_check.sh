#!/usr/bin/env bash
# The GPU check in one command: benchmarks/gpu_check.sh OUT_DIR [--tiny] [gpu_check.py flags]
# Writes OUT_DIR/gpu_check.json (see benchmarks/gpu_check.py). At most 8 minutes on one
# H100-class GPU; --tiny runs the same sections at CPU sizes in well under a minute.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 OUT_DIR [--tiny] [more gpu_check.py flags]" >&2
  exit 2
fi
out="$1"
shift
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
# Leave headroom for the CPU-side parity check and the sweep's host arrays.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "${PYTHON:-python}" "${repo}/benchmarks/gpu_check.py" \
  --out="${out}" "$@"
