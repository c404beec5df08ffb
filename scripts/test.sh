#!/usr/bin/env bash
# test.sh: installs what is missing, builds, and runs the whole test suite (CTest: cmocka unit
# tests, the PyTorch golden comparison, CLI end-to-end). Warnings are errors.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh build -DCZ_WERROR=ON
cd build && ctest --output-on-failure -j"$(nproc)" --timeout 1200
