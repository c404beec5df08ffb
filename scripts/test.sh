#!/usr/bin/env bash
# test.sh: installs what is missing, builds, and runs the whole test suite (CTest: cmocka unit
# tests, the PyTorch golden comparison, CLI end-to-end, HTTP integration), then the CUDA
# backend on the CPU emulator under ASan + UBSan (tests/gpu/emu_check.sh: GPU check steps 1-3
# without a GPU). Warnings are errors.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh build -DCZ_WERROR=ON
(cd build && ctest --output-on-failure -j"$(nproc)" --timeout 1200)
bash tests/gpu/emu_check.sh --build build-cuemu
