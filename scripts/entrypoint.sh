#!/bin/sh
# entrypoint.sh: the container's entrypoint (docker/Dockerfile, docker/Dockerfile.cpu).
# Runs `colorized "$@"` as PID 1 (exec, so SIGTERM reaches the daemon and its drain runs).
# Before that, when the model file named by COLORIZE_MODEL_PATH (the image sets
# /models/colorize-default.safetensors) does not exist and no --model flag was given, it
# writes freshly initialized pix2pix weights there with `colorize init` (the same placeholder
# the quick start makes until trained weights ship: every stage runs, the colours are
# meaningless) and says so loudly. CZ_INIT_MODEL=0 turns that off (the daemon then refuses to
# start without weights); CZ_INIT_NGF (64) and CZ_INIT_SEED (2017) choose the placeholder.
# Its own variables are CZ_*, not COLORIZE_*: the daemon refuses COLORIZE_* names that are not
# configuration keys. Log lines are JSON on stderr, like the daemon's.
# Tested by: nothing automatic here (it runs only in the image); `sh -n` in docker/README.md.
set -eu

log() { printf '{"level":"%s","module":"entrypoint","msg":"%s"}\n' "$1" "$2" >&2; }

model=${COLORIZE_MODEL_PATH:-}
for arg in "$@"; do
  case $arg in --model|--model=*) model="" ;; esac
done
if [ -n "$model" ] && [ ! -e "$model" ]; then
  if [ "${CZ_INIT_MODEL:-1}" = 1 ]; then
    log warn "no weights at $model: writing UNTRAINED placeholder weights (colorize init --ngf ${CZ_INIT_NGF:-64}); mount trained weights there for real colours"
    mkdir -p "$(dirname "$model")"
    colorize init --ngf "${CZ_INIT_NGF:-64}" --seed "${CZ_INIT_SEED:-2017}" -o "$model"
  else
    log error "no weights at $model and CZ_INIT_MODEL=0"
  fi
fi
exec colorized "$@"
