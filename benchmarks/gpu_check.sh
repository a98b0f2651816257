#!/usr/bin/env bash
# The GPU check (issue: GPU), one command: bash benchmarks/gpu_check.sh OUT_DIR [--dry-run] [--budget SECONDS]
# Proves the CUDA provider, runs `pytest -m gpu`, measures CERTIFY against the ceiling and PyTorch;
# writes OUT_DIR/gpu_check.json and OUT_DIR/GPU.md. See benchmarks/gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m benchmarks.gpu "$@"
