#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) from the project root on a fresh machine:
#   bash benchmarks/gpu_check.sh --out /tmp/gpu-check [--budget-s 540] [--dry-run] [--skip-install]
# Creates .venv when there is none (its creation counts against the budget), then hands over to
# Python; no `set -e`: a failed step is in the report and the run goes on.
export GPU_CHECK_T0="${GPU_CHECK_T0:-$(date +%s)}"
cd "$(dirname "$0")/.." || exit 2
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
exec python benchmarks/gpu_check.py "$@"
