#!/usr/bin/env bash
# quickstart.sh: from a fresh Debian 12 machine to a running colorizer: installs what is
# missing, builds, makes sure the shipped model exists (until trained weights ship it is a
# freshly initialized pix2pix U-Net, written by `colorize init` with a fixed seed: it runs the
# whole data path but does NOT yet produce meaningful colours), then colorizes the sample
# photos in tests/data into ./out with the best backend present.
# The HTTP daemon (`colorized`) is not built yet; when it lands this script starts it instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh build
model=models/colorize-default.safetensors
[ -f "$model" ] || ./build/colorize init --ngf 64 --seed 2017 -o "$model"
mkdir -p out
inputs=(tests/data/*.jpg)
./build/colorize -m "$model" --out-dir out "${inputs[@]}"
echo "colorized ${#inputs[@]} images into $(pwd)/out"
