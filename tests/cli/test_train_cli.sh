#!/usr/bin/env bash
# test_train_cli.sh BUILD_DIR: end-to-end checks of `colorize train` on a tiny run: a few
# 32x32 colour PNGs from the PNG suite, ngf 4, depth 5 (--size 32), ref backend. Checks the
# exit status, that the -o weights load in `colorize inspect` and colorize an image with
# `colorize -m`, one losses.jsonl line per step, a sample sheet, state.json, resume from a
# checkpoint, SIGINT (exit 130 with a final checkpoint), and a bad --data dir (exit 1, message).
set -uo pipefail
bin="$1/colorize"
src=$(cd "$(dirname "$0")/../.." && pwd)
shared=${CZ_SHARED_DIR:-$src/../shared}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
check() { # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then pass=$((pass+1)); echo "ok   $name"; else fail=$((fail+1)); echo "FAIL $name"; fi
}

mkdir -p "$tmp/data"
for f in basn2c08 basn2c16 basi2c08 basi2c16 basn6a08 basn6a16 bgan6a08 basi6a08; do
  cp "$shared/testdata/pngsuite/$f.png" "$tmp/data/"
done
common=(--data "$tmp/data" --size 32 --ngf 4 --ndf 8 --batch 2 --backend ref --seed 5)

"$bin" train "${common[@]}" --steps 6 --validate-every 3 --checkpoint-every 3 \
  --out-dir "$tmp/run" -o "$tmp/w.safetensors" > "$tmp/train.out" 2> "$tmp/train.err"; rc=$?
check "train exit 0" test $rc -eq 0
check "weights written" test -s "$tmp/w.safetensors"
check "one losses.jsonl line per step" test "$(wc -l < "$tmp/run/losses.jsonl")" -eq 6
check "losses lines are JSON with g_l1" grep -q '"step":6,.*"g_l1":' "$tmp/run/losses.jsonl"
check "sample sheet written" test -s "$tmp/run/samples/step_3.png"
check "checkpoints written" test -s "$tmp/run/checkpoints/step_6.safetensors"
check "state.json says succeeded" grep -q '"status": "succeeded"' "$tmp/run/state.json"
check "non-TTY progress is JSON lines" grep -q '"event":"train_step"' "$tmp/train.err"
"$bin" inspect "$tmp/w.safetensors" > "$tmp/inspect.txt"; rc=$?
check "weights load in inspect" test $rc -eq 0
check "inspect shows the trained architecture" grep -q "depth 5, ngf 4" "$tmp/inspect.txt"
"$bin" -m "$tmp/w.safetensors" --backend ref -o "$tmp/out.png" "$tmp/data/basn2c08.png"; rc=$?
check "weights colorize an image" test $rc -eq 0 -a -s "$tmp/out.png"

"$bin" train --data "$tmp/data" --backend ref --init "$tmp/run/checkpoints/step_3.safetensors" --steps 8 \
  --out-dir "$tmp/resumed" > /dev/null 2> "$tmp/resume.err"; rc=$?
check "resume exit 0" test $rc -eq 0
check "resume continues the history" test "$(wc -l < "$tmp/resumed/losses.jsonl")" -eq 8
check "resumed run's step 4 equals the original's" \
  test "$(sed -n 4p "$tmp/resumed/losses.jsonl" | cut -d, -f3-6)" = "$(sed -n 4p "$tmp/run/losses.jsonl" | cut -d, -f3-6)"

"$bin" train "${common[@]}" --steps 100000 --checkpoint-every 0 --out-dir "$tmp/int" 2> /dev/null > /dev/null &
pid=$!
for _ in $(seq 50); do [ -s "$tmp/int/losses.jsonl" ] && break; sleep 0.1; done
kill -INT $pid; wait $pid; rc=$?
check "SIGINT exits 130" test $rc -eq 130
check "SIGINT leaves a checkpoint" bash -c "ls '$tmp/int/checkpoints/' | grep -q safetensors"
check "SIGINT state is cancelled" grep -q '"status": "cancelled"' "$tmp/int/state.json"

"$bin" train --data "$tmp/nope" --steps 2 --backend ref --out-dir "$tmp/bad" 2> "$tmp/bad.err"; rc=$?
check "bad --data exit 1" test $rc -eq 1
check "bad --data message names the dir" grep -q "nope" "$tmp/bad.err"
"$bin" train --steps 2 2> /dev/null; rc=$?
check "missing --data is a usage error" test $rc -eq 2

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
