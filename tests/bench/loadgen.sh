#!/usr/bin/env bash
# loadgen.sh BUILD_DIR [loadgen options...]: batched vs unbatched serving throughput.
#
# Makes one fresh ngf-64 generator (`colorize init --ngf 64`), starts `colorized` twice on
# 127.0.0.1 (ephemeral port) with those weights, backend auto (oneDNN on a CPU-only machine),
# all CPU threads: once with model.max_batch 8 (server.max_wait_us 5000) and once with
# model.max_batch 1 (both stay up; only the one being measured gets requests), runs
# tests/bench/loadgen against each, one concurrency level at a time and alternating which
# daemon goes first, so that drifting background load on a shared machine biases neither
# (levels: LOADGEN_LEVELS, default "1 8 32"; extra arguments, e.g. --requests 128, go to
# loadgen), and prints both tables side by side with the ratio of requests/s (batched /
# unbatched) per concurrency, plus the machine.
# A benchmark: it prints numbers and asserts nothing. Every wait is bounded; the daemons are
# stopped (SIGTERM, then SIGKILL) on exit.
set -euo pipefail

BUILD=${1:?usage: loadgen.sh BUILD_DIR [loadgen options...]}
shift
BUILD=$(cd "$BUILD" && pwd)
CLI=$BUILD/colorize
DAEMON=$BUILD/colorized
[ -x "$DAEMON" ] || DAEMON=$BUILD/server/colorized
LOADGEN=$BUILD/tests/integration/loadgen
[ -x "$LOADGEN" ] || LOADGEN=$(find "$BUILD" -maxdepth 4 -type f -name loadgen -perm -u+x | head -n1)
for b in "$CLI" "$DAEMON" "$LOADGEN"; do
  [ -x "$b" ] || { echo "loadgen.sh: missing $b (build colorize, colorized and loadgen first)" >&2; exit 2; }
done
command -v curl >/dev/null || { echo "loadgen.sh: needs curl" >&2; exit 2; }

TMP=$(mktemp -d /tmp/cz_loadgen.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] || continue
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
"$CLI" init --ngf 64 --seed 1 -o "$TMP/w64.safetensors" >/dev/null

# start NAME MAX_BATCH MAX_WAIT_US -> sets PORT
start() {
  local name=$1 mb=$2 wait=$3
  cat > "$TMP/$name.json" <<JSON
{"model": {"backend": "auto", "threads": 0, "max_batch": $mb},
 "server": {"max_wait_us": $wait, "max_queue": 512, "queue_high_water": 512, "request_deadline_ms": 600000,
            "max_connections_per_ip": 256, "max_connections": 512, "drain_timeout_s": 5},
 "log": {"level": "warn"}}
JSON
  rm -f "$TMP/$name.port"
  "$DAEMON" --config "$TMP/$name.json" --listen 127.0.0.1:0 --port-file "$TMP/$name.port" \
    --model "$TMP/w64.safetensors" 2> "$TMP/$name.log" &
  PIDS+=($!)
  local pid=$!
  for _ in $(seq 600); do  # up to 120 s for start-up and warm-up
    if [ -s "$TMP/$name.port" ] && curl -fsS -m 2 "http://127.0.0.1:$(cat "$TMP/$name.port")/readyz" >/dev/null 2>&1; then
      PORT=$(cat "$TMP/$name.port"); return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  echo "loadgen.sh: $name did not become ready:" >&2; tail -n 20 "$TMP/$name.log" >&2; exit 1
}

start batched 8 5000
PORT_B=$PORT
start unbatched 1 0
PORT_U=$PORT
BACKEND=$(curl -fsS -m 5 "http://127.0.0.1:$PORT_B/model" | sed -n 's/.*"backend": *"\([^"]*\)".*/\1/p')
: > "$TMP/batched.csv"
: > "$TMP/unbatched.csv"
flip=0
for c in ${LOADGEN_LEVELS:-1 8 32}; do
  order="batched unbatched"
  [ $flip = 1 ] && order="unbatched batched"
  flip=$((1 - flip))
  for which in $order; do
    port=$PORT_B
    [ "$which" = unbatched ] && port=$PORT_U
    echo "c=$c $which (127.0.0.1:$port) ..." >&2
    "$LOADGEN" --url "http://127.0.0.1:$port" --concurrency "$c" --csv "$@" | tail -n +2 >> "$TMP/$which.csv"
  done
done

CPU=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)
echo "machine: ${CPU:-unknown CPU}, $(nproc) CPUs online; backend $BACKEND (fp32, all threads); generator ngf 64, render 256"
echo "1/5/15-min load average: $LOAD0 before, $(cut -d' ' -f1-3 /proc/loadavg) after (a shared machine is noisy)"
echo "load: POST /colorize, 512x384 gray JPEG in, JPEG out; loadgen $*"
echo
printf '%5s | %-36s | %-36s | %6s\n' "" "batched (max_batch 8, max_wait 5 ms)" "unbatched (max_batch 1)" "ratio"
printf '%5s | %8s %7s %7s %4s %6s | %8s %7s %7s %4s %6s | %6s\n' conc "req/s" "p50 ms" "p99 ms" err batch \
  "req/s" "p50 ms" "p99 ms" err batch "req/s"
paste -d, "$TMP/batched.csv" "$TMP/unbatched.csv" |
  awk -F, '{ r = ($12 > 0) ? $4 / $12 : 0;
             printf "%5d | %8.2f %7.0f %7.0f %4d %6.2f | %8.2f %7.0f %7.0f %4d %6.2f | %6.2f\n",
                    $1, $4, $5, $6, $7, $8, $12, $13, $14, $15, $16, r }'
