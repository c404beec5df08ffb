#!/usr/bin/env bash
# build.sh [BUILD_DIR] [cmake args...]: configures and builds colorize (Release with debug info).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}; shift || true
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" > "$dir.configure.log" 2>&1 || { cat "$dir.configure.log"; exit 1; }
grep -E "colorize:" "$dir.configure.log" || true
cmake --build "$dir" -j"$(nproc)"
