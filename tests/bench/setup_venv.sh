#!/usr/bin/env bash
# setup_venv.sh: creates (or reuses) the Python venv that runs the ONNX Runtime benchmark,
# build-bench/venv under the source tree by default, from PyPI's onnxruntime and numpy.
# Idempotent: an existing venv whose imports already work is left as it is.
# Usage: tests/bench/setup_venv.sh [VENV_DIR]   (PYTHON=... picks the interpreter, default python3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-$root/build-bench/venv}"
py="${PYTHON:-python3}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import onnxruntime, numpy' 2>/dev/null; then
    echo "setup_venv: $venv ready (onnxruntime $("$venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)'))"
    exit 0
fi
mkdir -p "$(dirname "$venv")"
if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet onnxruntime numpy
"$venv/bin/python" -c 'import onnxruntime, numpy; print("setup_venv: onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__)'
