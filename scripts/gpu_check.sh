#!/usr/bin/env bash
# The prepared GPU check (compress/bench/gpu_check.py): SD1.5, SDXL, PixArt-Sigma and
# SD3-medium architectures with random weights (--archs picks), every row of
# compress/bench/gpu_rows.py timed side by side; writes reports/gpu.md and reports/gpu.json.
# On one H100 it keeps to about 8 minutes, compile included (compiled rows that would not fit
# are skipped and named).
#
#   bash scripts/gpu_check.sh               # on the GPU
#   bash scripts/gpu_check.sh --cpu-smoke   # tiny configs on the CPU (runs/gpu-smoke/gpu.md)
#
# Wheels in .whl/ (see "How to run" in reports/gpu.md) are installed into a temporary folder
# first, for a machine whose Python has torch but not the rest; otherwise the current
# environment is used. PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
path="$PWD"
if compgen -G ".whl/*.whl" > /dev/null; then
  site="${GPU_CHECK_SITE:-/tmp/compress-gpu-check-site}"
  echo "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into $site"
  "$py" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
    --target "$site" .whl/*.whl
  path="$site:$path"
fi
export PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m compress.bench.gpu_check "$@"
