#!/usr/bin/env bash
# ctest_gpu.sh BUILD_DIR: the `gpu` CTest entry. Without a usable NVIDIA GPU (or without the
# CUDA backend in this build) it prints "skipped: no GPU" and exits 77, which CTest reports as
# Skipped in its summary. With one, it runs tests/gpu/check.sh on this build's binaries.
set -uo pipefail
BUILD=${1:?usage: ctest_gpu.sh BUILD_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "skipped: no GPU (nvidia-smi finds no device; tests/gpu/check.sh is the GPU check)"
  exit 77
fi
if ! "$BUILD/colorize" bench --backend cuda --ngf 4 --size 64 --batch 1 --precision fp32 --min-time 0 >/dev/null 2>&1; then
  echo "skipped: no GPU (the cuda backend is not built or cannot start here)"
  exit 77
fi
BIN=$(mktemp -d /tmp/cz_gpu_bin.XXXXXX)
trap 'rm -rf "$BIN"' EXIT
for b in colorize colorized tests/test_ops tests/test_unet_golden tests/test_train_golden tests/bench/bench_layers \
  tests/test_unet tests/integration/loadgen tests/bench/bench_loader; do
  [ -e "$BUILD/$b" ] && ln -s "$BUILD/$b" "$BIN/$(basename "$b")"
done
CZ_GPU_BIN=$BIN bash "$HERE/check.sh"
