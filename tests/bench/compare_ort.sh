#!/usr/bin/env bash
# compare_ort.sh [THREADS] [NGF...]: our dnnl backend beside ONNX Runtime (CPU) on the SAME
# weights, same thread count, 256x256, batch 1 and 8. Prints one table with images/s and the
# ratios ours/ORT for fp32 and bf16. A benchmark, not a test: run it on a quiet machine.
# Needs: build/colorize (scripts/build.sh), Debian's python3-torch for the ONNX export
# (/usr/bin/python3), and the ORT venv (tests/bench/setup_venv.sh, made here if missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
threads=${1:-$(nproc)}
shift || true
ngfs=("$@")
[ ${#ngfs[@]} -eq 0 ] && ngfs=(64 32)
out=build-bench
mkdir -p "$out"
bash tests/bench/setup_venv.sh "$out/venv" > /dev/null
/usr/bin/python3 -c 'import torch' 2>/dev/null || { echo "compare_ort: needs python3-torch (apt-get install python3-torch)"; exit 1; }
min_time=${MIN_TIME:-5}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cpus, load $(cut -d' ' -f1 /proc/loadavg); threads $threads"
results=$out/compare.jsonl
: > "$results"
for ngf in "${ngfs[@]}"; do
  w=$out/unet_ngf$ngf.safetensors
  [ -f "$w" ] || ./build/colorize init --ngf "$ngf" --seed 7 -o "$w" > /dev/null
  [ -f "$w.onnx" ] || /usr/bin/python3 tests/bench/export_onnx.py "$w" -o "$w.onnx" > /dev/null
  "$out/venv/bin/python" tests/bench/bench_ort.py "$w.onnx" --batch 1,8 --threads "$threads" \
      --iters 5 --min-seconds "$min_time" | grep '^{' | sed "s/^{/{\"ngf\": $ngf, /" >> "$results"
  OMP_NUM_THREADS=$threads ./build/colorize bench --backend dnnl --model "$w" --batch 1,8 \
      --precision fp32,bf16 --threads "$threads" --min-time "$min_time" --json 2>/dev/null >> "$results"
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ort = {(r["ngf"], r["batch"]): r for r in rows if r.get("bench") == "ort"}
ours = {(r["ngf"], r["batch"], r["precision"]): r for r in rows if r.get("engine") == "colorize"}
print("%4s %5s | %10s %7s | %10s %7s %7s | %10s %7s %7s" % ("ngf", "batch", "ORT img/s", "util",
      "fp32 img/s", "ms", "x ORT", "bf16 img/s", "ms", "x ORT"))
for (ngf, b), o in sorted(ort.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
    f, h = ours.get((ngf, b, "fp32")), ours.get((ngf, b, "bf16"))
    def cell(r):
        if not r: return "%10s %7s %7s" % ("-", "-", "-")
        return "%10.2f %7.1f %7.2f" % (r["images_per_s"], r["ms_per_batch"], r["images_per_s"] / o["images_per_s"])
    print("%4d %5d | %10.2f %7.2f | %s | %s" % (ngf, b, o["images_per_s"], o["cpu_util"], cell(f), cell(h)))
PY
