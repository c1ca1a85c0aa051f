#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) from the project root on a fresh machine:
#   bash benchmarks/gpu_check.sh --out /tmp/gpu-check [--budget-s SECONDS] [--dry-run] [--skip-install]
# Creates .venv when there is none (its creation counts against the budget), then hands over to
# Python; no `set -e`: a failed step is in the report and the run goes on.
export GPU_CHECK_T0="${GPU_CHECK_T0:-$(date +%s)}"
cd "$(dirname "$0")/.." || exit 2
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    # Debian and Ubuntu ship python3 without venv/ensurepip: say so in one line, not a traceback.
    if ! python3 -m venv .venv >/dev/null 2>&1; then
      rm -rf .venv
      echo "gpu_check: 'python3 -m venv .venv' failed (Debian/Ubuntu: apt-get install python3-venv); or run from an activated virtualenv" >&2
      exit 2
    fi
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
exec python benchmarks/gpu_check.py "$@"
