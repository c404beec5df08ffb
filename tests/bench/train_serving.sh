#!/usr/bin/env bash
# train_serving.sh BUILD_DIR [DATA_ROOT DATASET]: /colorize latency while a training job shares
# the device (DESIGN.md "Threads": training steps run on the device thread between inference
# batches, so a request waits for at most the training step in progress).
#
# Starts one `colorized` (fresh ngf-64 generator, render 256, max_batch 8, backend auto, all
# CPU threads) with an admin token and train.data_root = DATA_ROOT (default ../shared/datasets,
# dataset "train"), then runs tests/bench/loadgen at each concurrency of LEVELS (default "1 4"):
#   1. with no training job (baseline);
#   2. while a job trains (image_size TRAIN_SIZE=256, ngf TRAIN_NGF=32, batch 1, fp32);
# and prints both tables side by side (p50/p99 ms, req/s) plus the job's images/s in the window.
# A benchmark: it prints numbers and asserts nothing. Every wait is bounded; the daemon is
# stopped on exit.
set -euo pipefail

BUILD=${1:?usage: train_serving.sh BUILD_DIR [DATA_ROOT DATASET]}
BUILD=$(cd "$BUILD" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
DATA_ROOT=${2:-$HERE/../../../shared/datasets}
DATASET=${3:-train}
DATA_ROOT=$(cd "$DATA_ROOT" && pwd)
CLI=$BUILD/colorize
DAEMON=$BUILD/colorized
LOADGEN=$(find "$BUILD" -maxdepth 4 -type f -name loadgen -perm -u+x | head -n1)
for b in "$CLI" "$DAEMON" "$LOADGEN"; do
  [ -x "$b" ] || { echo "train_serving.sh: missing $b" >&2; exit 2; }
done
LEVELS=${LEVELS:-1 4}
REQS=${REQUESTS:-48}
TOKEN=bench-token-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
TMP=$(mktemp -d /tmp/cz_trainserve.XXXXXX)
PID=
cleanup() {
  if [ -n "$PID" ]; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

"$CLI" init --ngf 64 --seed 1 -o "$TMP/w64.safetensors" >/dev/null
cat > "$TMP/cfg.json" <<JSON
{"model": {"max_batch": 8},
 "server": {"max_wait_us": 2000, "max_queue": 512, "queue_high_water": 512, "request_deadline_ms": 600000},
 "admin": {"token": "$TOKEN"},
 "train": {"data_root": "$DATA_ROOT", "state_dir": "$TMP/state"},
 "log": {"level": "warn"}}
JSON
"$DAEMON" --config "$TMP/cfg.json" --listen 127.0.0.1:0 --port-file "$TMP/port" --model "$TMP/w64.safetensors" \
  2> "$TMP/log" &
PID=$!
for _ in $(seq 600); do
  [ -s "$TMP/port" ] && curl -fsS -m 2 "http://127.0.0.1:$(cat "$TMP/port")/readyz" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { tail -n 20 "$TMP/log" >&2; exit 1; }
  sleep 0.2
done
URL=http://127.0.0.1:$(cat "$TMP/port")
AUTH="Authorization: Bearer $TOKEN"

measure() { # OUT.csv
  : > "$1"
  for c in $LEVELS; do
    "$LOADGEN" --url "$URL" --concurrency "$c" --requests "$REQS" --csv | tail -n +2 >> "$1"
  done
}

echo "baseline (no training job) ..." >&2
measure "$TMP/idle.csv"

BODY="{\"dataset\":\"$DATASET\",\"steps\":100000,\"image_size\":${TRAIN_SIZE:-256},\"ngf\":${TRAIN_NGF:-32},\"batch_size\":1,\"validate_every\":0,\"checkpoint_every\":0}"
JOB=$(curl -fsS -m 30 -X POST -H "$AUTH" -d "$BODY" "$URL/train" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
[ -n "$JOB" ] || { echo "train_serving.sh: POST /train failed" >&2; tail -n 20 "$TMP/log" >&2; exit 1; }
step_of() { curl -fsS -m 30 -H "$AUTH" "$URL/train/$JOB" | sed -n 's/.*"step":\([0-9]*\).*/\1/p'; }
for _ in $(seq 300); do  # until the job has taken a few steps (dataset opened, primitives built)
  s=$(step_of); [ "${s:-0}" -ge 3 ] && break; sleep 1
done
echo "during training (job $JOB) ..." >&2
s0=$(step_of); t0=$(date +%s.%N)
measure "$TMP/train.csv"
s1=$(step_of); t1=$(date +%s.%N)
curl -fsS -m 30 -X DELETE -H "$AUTH" "$URL/train/$JOB" >/dev/null || true

CPU=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)
echo "machine: ${CPU:-unknown CPU}, $(nproc) CPUs; backend $(curl -fsS "$URL/model" | sed -n 's/.*"backend":"\([^"]*\)".*/\1/p'); serving ngf 64 at render 256, max_batch 8"
echo "training job: image_size ${TRAIN_SIZE:-256}, ngf ${TRAIN_NGF:-32}, batch 1, fp32; $((s1 - s0)) steps during the loaded window ($(awk -v a="$s0" -v b="$s1" -v t0="$t0" -v t1="$t1" 'BEGIN{printf "%.2f", (b-a)/(t1-t0)}') steps/s)"
echo "load: POST /colorize, 512x384 gray JPEG in, JPEG out, $REQS requests per level"
echo
printf '%5s | %-26s | %-26s | %s\n' "" "no training" "training alongside" "p99 ratio"
printf '%5s | %8s %8s %8s | %8s %8s %8s |\n' conc "req/s" "p50 ms" "p99 ms" "req/s" "p50 ms" "p99 ms"
paste -d, "$TMP/idle.csv" "$TMP/train.csv" |
  awk -F, '{ r = ($6 > 0) ? $14 / $6 : 0;
             printf "%5d | %8.2f %8.0f %8.0f | %8.2f %8.0f %8.0f | %6.2f\n", $1, $4, $5, $6, $12, $13, $14, r }'
