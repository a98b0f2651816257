#!/usr/bin/env bash
# The GPU check (issue 29), one command: bash benchmarks/gpu_check.sh OUT_DIR [--dry-run] [--budget SECONDS] [--skip STEP]
# Facts, seconds per shape change per cuDNN algorithm search, the device noise's law, CERTIFY as the CLI runs it
# (six modes, ResNet-110 and ResNet-50) against bare ceilings and PyTorch, then pytest -m gpu; writes
# OUT_DIR/gpu_check.json and OUT_DIR/GPU.md after every step. See benchmarks/gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m benchmarks.gpu "$@"
