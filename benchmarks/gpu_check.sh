#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): kernel tests on the GPU, engine parity, decode/prefill
# against the H100's limits, and Hugging Face generate on the same batch workload. One H100, < 8 min.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" benchmarks/gpu_check.py "$@"
