#!/usr/bin/env bash
# test_cli.sh BUILD_DIR: end-to-end checks of the `colorize` tool: init, inspect, colorizing
# several files with one corrupt among them (reported, others still written, exit 1),
# -o with format from the extension, usage errors (exit 2), bench on a tiny network.
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

"$bin" init --ngf 4 --seed 3 -o "$tmp/w.safetensors" > "$tmp/init.txt"
check "init writes weights" test -s "$tmp/w.safetensors"
"$bin" inspect "$tmp/w.safetensors" > "$tmp/inspect.txt"; rc=$?
check "inspect exit 0" test $rc -eq 0
check "inspect shows architecture" grep -q "depth 8, ngf 4, lab (1 -> 2 channels)" "$tmp/inspect.txt"
check "inspect shows checksum" grep -q "checksum:      fnv1a64:" "$tmp/inspect.txt"
check "inspect validates" grep -q "validation:    ok" "$tmp/inspect.txt"
head -c 1000 "$tmp/w.safetensors" > "$tmp/cut.safetensors"
"$bin" inspect "$tmp/cut.safetensors" > /dev/null 2> "$tmp/cut.err"; rc=$?
check "inspect refuses truncated weights" test $rc -eq 1
check "inspect names the problem" grep -q "cut.safetensors" "$tmp/cut.err"

# inputs: PNG suite images (gray, color, palette, alpha, 16-bit) + one corrupt file
mkdir -p "$tmp/in" "$tmp/out"
for f in basn0g08 basn2c16 basn3p04 basn6a08 basi0g16; do cp "$shared/testdata/pngsuite/$f.png" "$tmp/in/"; done
head -c 100 "$shared/testdata/pngsuite/basn2c08.png" > "$tmp/in/broken.png"
echo "not an image" > "$tmp/in/text.jpg"
"$bin" -m "$tmp/w.safetensors" --backend ref --batch 4 --out-dir "$tmp/out" "$tmp"/in/* 2> "$tmp/run.err"; rc=$?
check "one bad file -> exit 1" test $rc -eq 1
check "good files all written" test "$(ls "$tmp/out" | wc -l)" -eq 5
check "corrupt file reported by name" grep -q "broken.png" "$tmp/run.err"
check "non-image reported as unsupported" grep -q "text.jpg" "$tmp/run.err"
check "output keeps the input format" test -s "$tmp/out/basn6a08.png"

"$bin" -m "$tmp/w.safetensors" --backend ref -o "$tmp/single.jpg" "$tmp/in/basn2c16.png"; rc=$?
check "-o single file exit 0" test $rc -eq 0
check "-o .jpg writes JPEG" bash -c "head -c 3 '$tmp/single.jpg' | od -An -tx1 | grep -q 'ff d8 ff'"

"$bin" -m "$tmp/w.safetensors" -o "$tmp/x.jpg" "$tmp/in/basn0g08.png" "$tmp/in/basn2c16.png" 2>/dev/null; rc=$?
check "-o with two inputs is a usage error" test $rc -eq 2
"$bin" -m "$tmp/w.safetensors" --render 300 -o "$tmp/x.jpg" "$tmp/in/basn0g08.png" 2>/dev/null; rc=$?
check "render not a multiple of 256 refused" test $rc -eq 2
"$bin" -m "$tmp/missing.safetensors" -o "$tmp/x.jpg" "$tmp/in/basn0g08.png" 2>/dev/null; rc=$?
check "missing weights -> exit 1" test $rc -eq 1
COLORIZE_IMAGE_MAX_PIXELS=100 "$bin" -m "$tmp/w.safetensors" --backend ref -o "$tmp/x.png" "$tmp/in/basn0g08.png" 2> "$tmp/px.err"; rc=$?
check "pixel limit from the environment" test $rc -eq 1
check "pixel limit message" grep -qi "pixels" "$tmp/px.err"

"$bin" bench --backend ref --ngf 2 --batch 1 --precision fp32 --min-time 0 > "$tmp/bench.txt"; rc=$?
check "bench runs" test $rc -eq 0
check "bench prints a table" grep -q "images/s" "$tmp/bench.txt"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
