#!/usr/bin/env bash
# quickstart.sh: from a fresh Debian 12 machine to a running colorization service: installs
# what is missing, builds, makes sure the shipped model exists, and starts the daemon
# `colorized` in the foreground on 0.0.0.0:8080 with config/colorized.json, on the best
# backend present (cuda, else oneDNN). Then, from another shell:
#   curl -F image=@tests/data/old_a.jpg http://localhost:8080/colorize > colorized.jpg
# Until trained weights ship, the model is a freshly initialized pix2pix U-Net, written by
# `colorize init` with a fixed seed: it runs the whole data path but does NOT yet produce
# meaningful colours (models/MODEL_CARD.md). Extra arguments go to colorized
# (e.g. --listen 127.0.0.1:9000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh build
model=models/colorize-default.safetensors
[ -f "$model" ] || ./build/colorize init --ngf 64 --seed 2017 -o "$model"
exec ./build/colorized --config config/colorized.json --model "$model" "$@"
