#!/usr/bin/env bash
# emu_check.sh [--build] [BUILD_DIR]: the GPU check without a GPU. Runs tests/gpu/check.sh
# steps 1-3 on a CZ_CUDA=EMU build (default build-cuemu: the `cuda` backend compiled with the
# host compiler against the CPU emulator in kernels/emu), the batcher, training, U-Net and
# colorizer unit tests with the emulated device as their `auto` backend, and test_trainer on it
# (CZ_TEST_BACKEND=cuda: whole runs whose steps overlap the next upload) (test_unet also runs
# pipelined passes: upload, compute and download streams; test_colorize compares jobs finished
# on the device with the host's), test_ops again with tiny grid caps and threads in reverse
# order, and again with cuDNN calls limited to 8192 elements (COLORIZE_CUDNN_MAX_ELEMS: batches
# run as sub-batches, as real ones of 2^31 elements and more do, and larger images on the
# direct kernels), the emulator's own stream-model test, step 4's
# programs end to end at tiny sizes, then the failure path only an
# emulator can provoke on demand: a sticky device error in the middle of serving (the request
# gets 503 with a JSON body, and the daemon exits with status 3 so that a supervisor restarts
# it). (Splitting a batch that runs out of device memory is tested in
# tests/unit/test_batcher.c with a fault-injecting backend.)
# Step 4 (speed) means nothing on an emulator and is skipped. Model: a fresh ngf-8, depth-6
# generator at render 64, so that the emulated convolutions stay fast.
# What passing here proves and what it cannot: see kernels/emu/cuemu.h.
# --build configures BUILD_DIR (with -Werror and ASan + UBSan, so that a kernel indexing out of
# its buffers stops the run) and builds just the targets used here; scripts/test.sh does that.
set -uo pipefail
cd "$(dirname "$0")/../.."
build=0
[ "${1:-}" = --build ] && { build=1; shift; }
BUILD=${1:-build-cuemu}
case $BUILD in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
targets=(colorize colorized test_ops test_unet_golden test_train_golden test_batcher test_train test_unet bench_layers
  test_cuemu_streams test_colorize test_trainer)
if [ $build = 1 ]; then
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCZ_CUDA=EMU -DCZ_WERROR=ON -DCZ_SANITIZE=ON \
    > "$BUILD.configure.log" 2>&1 || { cat "$BUILD.configure.log"; exit 1; }
  cmake --build "$BUILD" -j"$(nproc)" --target "${targets[@]}" || exit 1
fi
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
# No race between conv_small.cu's kernels and cuDNN when a small convolution is planned (the
# emulator's timings mean nothing, and each race runs the kernels' thread blocks as fibers six
# times per plan: test_ops alone took 27 -> 90 s): check.sh's parity forces them on every small
# convolution instead, and one short run below races (COLORIZE_CUDA_DIRECT=auto) for the race's code.
export COLORIZE_CUDA_DIRECT=${COLORIZE_CUDA_DIRECT:-0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
if ! grep -q "^CZ_CUDA:STRING=EMU" "$BUILD/CMakeCache.txt" 2>/dev/null; then
  echo "emu_check: $BUILD is not a CZ_CUDA=EMU build (bash scripts/build.sh build-cuemu -DCZ_CUDA=EMU)" >&2
  exit 2
fi
WORK=$(mktemp -d /tmp/cz_emu.XXXXXX)
# png_diff.py needs numpy: Debian's python3-numpy (scripts/install-deps.sh) unless PYTHON says
export PYTHON=${PYTHON:-/usr/bin/python3}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$WORK"; }
trap cleanup EXIT
for b in colorize colorized tests/test_ops tests/test_unet_golden tests/test_train_golden; do
  ln -s "$BUILD/$b" "$WORK/$(basename "$b")"
done
"$BUILD/colorize" init --ngf 8 --depth 6 --seed 7 -o "$WORK/tiny.safetensors" > /dev/null || exit 1

fail=0
t0=$(date +%s)
since() { echo "$(( $(date +%s) - ${1:-$t0} )) s"; } # seconds since $1 (default: the start)
CZ_GPU_BIN=$WORK CZ_GPU_SKIP_BENCH=1 CZ_GPU_THIN_ALL=0 CZ_GPU_MODEL=$WORK/tiny.safetensors CZ_GPU_RENDER=64 \
  bash tests/gpu/check.sh || fail=1

echo
echo "=== emulator: the batcher, training, U-Net, colorizer and trainer unit tests on the emulated device (auto"
echo "    = cuda here; test_unet compares recorded (CUDA graph) forward passes with op-by-op ones, test_colorize"
echo "    jobs finished on the device with the host's; test_trainer whole runs, steps overlapping the next upload)"
echo "    (check.sh steps 1-3 took $(since))"
for t in test_batcher test_train test_unet test_colorize test_trainer; do
  t1=$(date +%s)
  if CZ_SOURCE_DIR=$PWD CZ_TEST_BACKEND=cuda "$BUILD/tests/$t" > "$WORK/$t.log" 2>&1 &&
     grep -q '"module":"cuda"' "$WORK/$t.log"; then
    echo "ok   $t on the emulated cuda backend ($(grep -c '\[       OK \]' "$WORK/$t.log") tests, $(since "$t1"))"
  else
    fail=1; echo "FAIL $t (log below)"; tail -30 "$WORK/$t.log"
  fi
done

echo
echo "=== emulator: an image alone == in a batch, and recorded training steps == op by op, with conv_small.cu's"
echo "    kernels on every small convolution (COLORIZE_CUDA_DIRECT=force: the innermost layers)"
t1=$(date +%s)
if CZ_SOURCE_DIR=$PWD CZ_TEST_BACKEND=cuda CZ_TEST_FILTER=test_batch_invariance COLORIZE_CUDA_DIRECT=force \
     "$BUILD/tests/test_unet" > "$WORK/test_unet_direct.log" 2>&1 &&
   [ "$(grep -c "batch invariance ok: cuda" "$WORK/test_unet_direct.log")" -ge 2 ] &&
   grep -q "direct kernel (forced)" "$WORK/test_unet_direct.log"; then
  echo "ok   test_unet batch invariance, fp32 and bf16, $(grep -c "direct kernel (forced)" "$WORK/test_unet_direct.log") plans on conv_small.cu ($(since "$t1"))"
else
  fail=1; echo "FAIL test_unet batch invariance with conv_small.cu forced (log below)"; tail -30 "$WORK/test_unet_direct.log"
fi
# and inside recorded training steps (CUDA graphs), which must equal op-by-op ones bit for bit
t1=$(date +%s)
if CZ_SOURCE_DIR=$PWD CZ_TEST_BACKEND=cuda CZ_TEST_FILTER=test_recorded_steps COLORIZE_CUDA_DIRECT=force \
     "$BUILD/tests/test_train" > "$WORK/test_train_direct.log" 2>&1 &&
   grep -q "cuda bf16: checkpoints after .*: identical" "$WORK/test_train_direct.log" &&
   grep -q "direct kernel (forced)" "$WORK/test_train_direct.log"; then
  echo "ok   test_train recorded steps == op by op, $(grep -c "direct kernel (forced)" "$WORK/test_train_direct.log") plans on conv_small.cu ($(since "$t1"))"
else
  fail=1; echo "FAIL test_train recorded steps with conv_small.cu forced (log below)"; tail -30 "$WORK/test_train_direct.log"
fi

echo
echo "=== emulator: op parity again with grids capped at 3 blocks and 2 partial sums, threads run last to first"
echo "    (small tensors then take the several-passes paths of real sizes; a race between threads changes results),"
echo "    and both of conv_thin.cu's kernels in use (COLORIZE_CUDA_THIN=all; check.sh ran the default)"
t1=$(date +%s)
if COLORIZE_CUDA_THIN=all CZ_CUEMU_ORDER=reverse CZ_CUEMU_MAX_BLOCKS=3 CZ_CUEMU_MAX_PARTS=2 "$BUILD/tests/test_ops" > "$WORK/test_ops_capped.log" 2>&1 &&
   ! grep -q "skipped: cuda not available" "$WORK/test_ops_capped.log"; then
  echo "ok   test_ops, capped grids, reverse order: $(grep -m1 '^parity:' "$WORK/test_ops_capped.log") ($(since "$t1"))"
else
  fail=1; echo "FAIL test_ops with capped grids (log below)"; grep -E "FAIL|parity:" "$WORK/test_ops_capped.log" | head -20
fi

echo
echo "=== emulator: the race between conv_small.cu's kernels and cuDNN's algorithm (COLORIZE_CUDA_DIRECT=auto, the GPU"
echo "    default) on test_ops' channel-view convolutions: every race logged, results right whichever path won"
t1=$(date +%s)
if CZ_TEST_FILTER=test_backend_views COLORIZE_CUDA_DIRECT=auto "$BUILD/tests/test_ops" > "$WORK/test_ops_race.log" 2>&1 &&
   ! grep -q "skipped: cuda not available" "$WORK/test_ops_race.log" && grep -q '"msg":"race ' "$WORK/test_ops_race.log"; then
  echo "ok   test_ops views with races: $(grep -c '"msg":"race ' "$WORK/test_ops_race.log") raced, $(grep -c 'direct kernel kept' "$WORK/test_ops_race.log") kept the direct kernel ($(since "$t1"))"
else
  fail=1; echo "FAIL test_ops views with races (log below)"; grep -E "FAIL|race|error" "$WORK/test_ops_race.log" | head -20
fi

echo
echo "=== emulator: op parity again with cuDNN calls limited to 8192 elements (sub-batches; larger images on"
echo "    the direct kernels), as calls of 2^31 elements or more are split on a GPU"
t1=$(date +%s)
if COLORIZE_CUDNN_MAX_ELEMS=8192 "$BUILD/tests/test_ops" > "$WORK/test_ops_split.log" 2>&1 &&
   ! grep -q "skipped: cuda not available" "$WORK/test_ops_split.log" &&
   grep -q "more than cuDNN takes (8192)" "$WORK/test_ops_split.log"; then
  echo "ok   test_ops, cuDNN calls split: $(grep -m1 '^parity:' "$WORK/test_ops_split.log") ($(since "$t1"))"
else
  fail=1; echo "FAIL test_ops with cuDNN calls split (log below)"; grep -E "FAIL|parity:" "$WORK/test_ops_split.log" | head -20
fi

echo
echo "=== emulator: its own stream model (streams run apart, event waits, legacy barrier, sticky errors)"
if "$BUILD/tests/test_cuemu_streams" > "$WORK/streams.log" 2>&1; then
  echo "ok   test_cuemu_streams ($(grep -c '^ok' "$WORK/streams.log") checks)"
else
  fail=1; echo "FAIL test_cuemu_streams (log below)"; grep -v '^ok' "$WORK/streams.log" | tail -20
fi

echo
echo "=== emulator: step 4's programs run end to end on cuda (tiny sizes; the numbers mean nothing)"
if "$BUILD/colorize" bench --backend cuda --ngf 4 --size 256 --batch 1,2 --precision fp32,bf16 --min-time 0 --json \
     > "$WORK/bench.jsonl" 2> "$WORK/bench.err" && [ "$(grep -c '"device_images_per_s"' "$WORK/bench.jsonl")" = 4 ] &&
     [ "$(grep -c '"pipelined_images_per_s"' "$WORK/bench.jsonl")" = 4 ]; then
  echo "ok   colorize bench --backend cuda: 4 rows with the device-only and pipelined figures"
else
  fail=1; echo "FAIL colorize bench --backend cuda"; tail -5 "$WORK/bench.err"; cat "$WORK/bench.jsonl"
fi
if "$BUILD/tests/bench/bench_layers" --backend cuda --ngf 4 --size 64 --batch 1 --dtype fp32,bf16 --min-ms 1 \
     --json-file "$WORK/layers.jsonl" > "$WORK/layers.txt" 2>&1 && [ "$(grep -c '"layer": *"total"' "$WORK/layers.jsonl")" = 2 ]; then
  echo "ok   bench_layers --backend cuda: $(grep -c . "$WORK/layers.jsonl") JSON rows, 2 totals"
else
  fail=1; echo "FAIL bench_layers --backend cuda"; tail -5 "$WORK/layers.txt"
fi

# the launch-by-launch profile check.sh prints (kernels/backend_cuda_prof.c): it runs and tags
if COLORIZE_CUDA_PROFILE=1 COLORIZE_CUDA_GRAPHS=0 "$BUILD/colorize" bench --backend cuda --ngf 4 --size 256 --batch 1 \
     --precision fp32 --min-time 0 > /dev/null 2> "$WORK/profile.txt" && grep -q "^cuda profile" "$WORK/profile.txt" &&
     grep -q "^cudnn fwd 8->16 64x64->32x32 " "$WORK/profile.txt" && grep -q "^cuk_bias_act " "$WORK/profile.txt" &&
     grep -q "^host: after a sync " "$WORK/profile.txt"; then
  echo "ok   COLORIZE_CUDA_PROFILE=1 colorize bench: $(grep -c -E '^(cudnn|cuk_|copy|memset|host)' "$WORK/profile.txt") tags timed"
else
  fail=1; echo "FAIL COLORIZE_CUDA_PROFILE=1 colorize bench (stderr below)"; tail -20 "$WORK/profile.txt"
fi

echo
echo "=== emulator only: device failures while serving"
pass=0
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=1; echo "FAIL $*"; }
start() { # start NAME ENV... -- ARGS... ; sets port
  local name=$1; shift
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" "$BUILD/colorized" --listen 127.0.0.1:0 --port-file "$WORK/$name.port" --log-level warn \
    --backend cuda --model "$WORK/tiny.safetensors" --set image.render=64 --set server.plan_renders= "$@" \
    > "$WORK/$name.out" 2> "$WORK/$name.err" &
  pid=$!
  pids+=("$pid")
  port=
  for _ in $(seq 1 300); do [ -s "$WORK/$name.port" ] && break; sleep 0.1; done
  port=$(cat "$WORK/$name.port" 2>/dev/null)
  [ -n "$port" ] || { bad "daemon $name did not start"; tail -5 "$WORK/$name.err"; return 1; }
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && return 0; sleep 0.1; done
  bad "daemon $name never became ready"; return 1
}
post() { curl -s -o "$3" -w "%{http_code}" -F "image=@$2" "http://127.0.0.1:$1/colorize?format=png"; }

# A sticky error: the fault file makes the next kernel fault as an illegal address would.
fault=$WORK/fault
if start sticky "CZ_CUEMU_FAULT_FILE=$fault" --; then
  code=$(post "$port" tests/data/old_a.jpg "$WORK/s1.png")
  [ "$code" = 200 ] && ok "sticky: a request before the fault gets 200" || bad "sticky: first request got $code"
  touch "$fault"
  code=$(post "$port" tests/data/old_a.jpg "$WORK/s2.png")
  [ "$code" = 503 ] && ok "sticky: the request that meets the fault gets 503" || bad "sticky: got $code, not 503"
  grep -q '"unavailable"\|"backend' "$WORK/s2.png" && ok "sticky: the 503 body is JSON naming the problem ($(head -c 120 "$WORK/s2.png"))" ||
    bad "sticky: 503 body: $(head -c 200 "$WORK/s2.png")"
  rc=
  for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then wait "$pid"; rc=$?; break; fi
    sleep 0.1
  done
  [ "$rc" = 3 ] && ok "sticky: the daemon exited with status 3" || bad "sticky: daemon exit status '$rc' (want 3)"
  grep -q "cuemu: .*injected fault" "$WORK/sticky.err" && ok "sticky: the emulator logged the injected fault" ||
    bad "sticky: no injected fault in the log"
fi

echo "emulator failure checks: $pass passed"
echo "emu_check: $(since) in all"
[ $fail -eq 0 ]
