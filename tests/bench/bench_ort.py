#!/usr/bin/env python3
"""bench_ort.py: ONNX Runtime (CPU) throughput of an exported generator, the yardstick for our
own CPU backends. A program that prints a table and JSON lines, never a pass/fail test.

Runs in the venv made by tests/bench/setup_venv.sh (PyPI onnxruntime + numpy):
  build-bench/venv/bin/python tests/bench/bench_ort.py MODEL.onnx --batch 1,8 --threads 2

Session: intra_op_num_threads = --threads, inter_op_num_threads = 1, sequential execution,
graph optimization level ORT_ENABLE_ALL. Per batch size: --warmup untimed runs, then --iters
timed runs (or more, until --min-seconds have passed) on a fixed uniform [-1, 1] input; the
median and best per-batch latency are reported, images/s from the median, and the CPU
utilization of the timed loop (process CPU time / (wall * threads): on a shared machine a
value well under 1 means the numbers were disturbed).
--check FIXTURE.safetensors additionally runs the fixture's input and prints the relative
error against fixture.expected (the model must have been exported from that fixture).
Single process, no shared state. """

import argparse
import json
import os
import platform
import struct
import sys
import time

import numpy as np
import onnxruntime as ort


def read_fixture(path):
    """Minimal safetensors reader for the F32 tensors of a fixture (the venv has no torch)."""
    with open(path, "rb") as f:
        blob = f.read()
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + hlen])
    data = blob[8 + hlen :]
    out = {}
    for name in ("fixture.input", "fixture.expected"):
        e = header[name]
        if e["dtype"] != "F32":
            raise ValueError("%s: %s is not F32" % (path, name))
        b, en = e["data_offsets"]
        out[name] = np.frombuffer(data[b:en], dtype="<f4").reshape(e["shape"])
    return out


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None):
    p = argparse.ArgumentParser(description="ONNX Runtime CPU benchmark of a colorize generator")
    p.add_argument("model")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-seconds", type=float, default=0.0,
                   help="keep timing past --iters until this much time has passed")
    p.add_argument("--size", type=int, default=None,
                   help="input height/width (default: the model's static size, else 256)")
    p.add_argument("--check", default=None, help="fixture file to compare outputs with")
    a = p.parse_args(argv)

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter()
    sess = ort.InferenceSession(a.model, sess_options=so, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0
    inp = sess.get_inputs()[0]
    out_name = sess.get_outputs()[0].name
    ch = inp.shape[1]
    size = a.size
    if size is None:
        size = inp.shape[2] if isinstance(inp.shape[2], int) else 256

    if a.check:
        fx = read_fixture(a.check)
        y = sess.run([out_name], {inp.name: fx["fixture.input"]})[0].astype(np.float64)
        ref = fx["fixture.expected"].astype(np.float64)
        rel = np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30)
        print("check: %s rel err %.3e" % (a.check, rel))

    model_mb = os.path.getsize(a.model) / 1e6
    load1 = os.getloadavg()[0]
    print("onnxruntime %s, %s (%d cpus), %d threads (intra), model %s (%.1f MB), input "
          "[B,%d,%d,%d], session load %.2f s, load average %.2f%s"
          % (ort.__version__, cpu_name(), os.cpu_count() or 0, a.threads,
             os.path.basename(a.model), model_mb, ch, size, size, load_s, load1,
             " (machine busy: numbers are noisy)" if load1 > 0.5 else ""))
    rng = np.random.default_rng(0)
    rows = []
    for b in [int(s) for s in a.batch.split(",") if s]:
        x = rng.uniform(-1.0, 1.0, (b, ch, size, size)).astype(np.float32)
        for _ in range(a.warmup):
            sess.run([out_name], {inp.name: x})
        times = []
        cpu0 = os.times()
        start = time.perf_counter()
        while len(times) < a.iters or time.perf_counter() - start < a.min_seconds:
            t = time.perf_counter()
            sess.run([out_name], {inp.name: x})
            times.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
        cpu1 = os.times()
        # share of the requested cores this process actually got: well under 1 means other
        # work competed for the CPUs (or ORT left threads idle) and the timing is suspect
        util = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / (wall * a.threads)
        med = float(np.median(times))
        rows.append({"bench": "ort", "model": os.path.basename(a.model), "batch": b,
                     "size": size, "threads": a.threads, "iters": len(times),
                     "ms_per_batch": round(med * 1e3, 2), "ms_best": round(min(times) * 1e3, 2),
                     "ms_per_image": round(med * 1e3 / b, 2), "images_per_s": round(b / med, 2),
                     "cpu_util": round(util, 3), "ort": ort.__version__,
                     "loadavg_1m": round(os.getloadavg()[0], 2)})

    print("%6s %6s %8s %14s %10s %13s %10s %9s" % ("batch", "size", "threads", "ms/batch(med)",
                                                   "ms best", "ms/image", "images/s", "cpu util"))
    for r in rows:
        print("%6d %6d %8d %14.2f %10.2f %13.2f %10.2f %9.2f"
              % (r["batch"], r["size"], r["threads"], r["ms_per_batch"], r["ms_best"],
                 r["ms_per_image"], r["images_per_s"], r["cpu_util"]))
    for r in rows:
        print(json.dumps(r, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
