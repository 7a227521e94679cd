#!/usr/bin/env bash
# The GPU checks of bmojo in one run: the GPU-only parity tests, `bmojo bench --device cuda`, and torch.compile
# of a training step on CUDA.  Usage: bash benchmarks/gpu_check.sh OUT_DIR  (from the repo root, on a machine
# with a CUDA device and torch; bmojo importable from the checkout).  Each step has its own time limit.
set -o pipefail
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, importlib.util as u; print('torch', torch.__version__, 'cuda', torch.version.cuda);
print({p: u.find_spec(p) is not None for p in ('mamba_ssm', 'causal_conv1d', 'mambapy', 'transformers')})"
} 2>&1 | tee "$out/gpu.txt"
timeout "${PYTEST_S:-150}" python3 -m pytest -q -rs -p no:cacheprovider tests/ops/test_cuda.py tests/ops/test_flex.py \
  tests/ops/test_attention.py tests/models/test_dtypes.py tests/ops/test_backend.py 2>&1 | tee "$out/pytest_gpu.txt"
timeout "${BENCH_S:-280}" python3 -m bmojo bench --device cuda --out "$out/bench" 2>&1 \
  | grep -v -i "warn" | tee "$out/bench_log.txt"
timeout "${COMPILE_S:-120}" python3 benchmarks/compile_check.py --device cuda --presets transformer,bmojo \
  --out "$out/compile_check_cuda.json" 2>&1 | grep -v -i "warn" | tail -6 | tee "$out/compile.txt"
