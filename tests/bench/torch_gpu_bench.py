#!/usr/bin/env python3
"""torch_gpu_bench.py: PyTorch's side of the GPU speed table in tests/gpu/check.sh: the same
U-Net generator (1 -> 2 channels, depth 8, 256x256) and pix2pix training step that
`colorize bench` times, on the same GPU, so the two can be printed side by side.

Models are the test oracles' builders (tests/golden/torch_unet.py UnetGenerator, module tree
like the reference implementation; tests/golden/torch_train.py PatchGAN), not copies.
Measured:
  * forward, eval mode, no grad: eager bf16 weights + channels_last ("eager-bf16"), and
    torch.compile of the same module ("compile-bf16") while --compile-budget seconds last
    (compilation per batch size is slow; cells past the budget are skipped and say so);
  * one training step in the reference order (fake = G(A); D on (A, fake.detach()) and (A, B)
    with BCE-with-logits, Adam on D; G on BCE(D(A, fake), 1) + 100 L1, Adam on G): autocast
    bf16 + channels_last ("eager-bf16") and plain fp32 with TF32 off ("eager-fp32"); and two
    settings beside them, for comparing like with like: bf16 with cudnn.deterministic
    ("eager-bf16-det", at --det-batch: our backend only takes deterministic algorithms unless
    COLORIZE_CUDA_NONDET=1) and fp32 with TF32 allowed ("eager-tf32", at --tf32-batch: PyTorch's
    default for cuDNN convolutions; ours with COLORIZE_CUDA_TF32=1).
Tensors stay on the device (no host copies: generous to torch; our bench includes them).
Timing: CUDA-synchronized wall clock, one warm-up, then iterations until both --min-time and
3 iterations; the median is reported. Output: a table, or JSON lines with --json (engine
"torch", kind fwd|train, mode, ngf, batch, ms_per_batch, images_per_s).
Usage: python3 tests/bench/torch_gpu_bench.py [--ngf 64,32] [--batch 1,16,64,256]
           [--train-batch 16,64] [--det-batch 64] [--tf32-batch 1] [--size 256] [--min-time 1]
           [--compile-budget 150] [--json]
           [--device cuda|cpu]
Needs a CUDA build of PyTorch (2.x). Single process, one GPU. --device cpu is a smoke test of
this script on a machine without one (small --size and --ngf; its numbers mean nothing). """

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "golden"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import torch_train as tt  # noqa: E402
import torch_unet as tu  # noqa: E402


DEV = "cuda"


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def empty_cache():
    if DEV == "cuda":
        torch.cuda.empty_cache()


def ints(s):
    return [int(v) for v in s.split(",") if v]


def timed(fn, min_time):
    fn()
    sync()
    times, start = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= 2000:
            break
    return statistics.median(times), len(times)


def emit(args, kind, mode, ngf, batch, sec, iters, note=""):
    r = {"engine": "torch", "kind": kind, "mode": mode, "ngf": ngf, "batch": batch, "size": args.size,
         "ms_per_batch": sec * 1e3, "images_per_s": batch / sec, "iters": iters, "torch": torch.__version__}
    if args.json:
        print(json.dumps(r), flush=True)
    else:
        print(f"{kind:<6} {mode:<13} ngf {ngf:<3} batch {batch:<4} {sec * 1e3:10.3f} ms {batch / sec:12.1f} img/s"
              f" {iters:6d} iters {note}", flush=True)


def make_gen(ngf, size):
    torch.manual_seed(1)
    g = tu.UnetGenerator(1, 2, ngf=ngf, depth=8 if size >= 256 else 5)
    return g.to(DEV)


def bench_forward(args, ngf, compile_deadline):
    # bf16 on the GPU; the CPU smoke test stays fp32 (old CPU builds of torch get bf16
    # transposed convolutions wrong)
    dt = torch.bfloat16 if DEV == "cuda" else torch.float32
    g = make_gen(ngf, args.size).eval().to(dt).to(memory_format=torch.channels_last)
    compiled = None
    for b in args.batch:
        x = (torch.rand(b, 1, args.size, args.size, device=DEV) * 2 - 1).to(dt)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            sec, it = timed(lambda: g(x), args.min_time)
        emit(args, "fwd", "eager-bf16", ngf, b, sec, it)
        if time.time() < compile_deadline:
            try:
                if compiled is None:
                    compiled = torch.compile(g)
                with torch.no_grad():
                    sec, it = timed(lambda: compiled(x), args.min_time)
                emit(args, "fwd", "compile-bf16", ngf, b, sec, it)
            except Exception as e:  # a compile failure is reported, not fatal
                print(f"torch.compile ngf {ngf} batch {b} failed: {e}", file=sys.stderr)
                compile_deadline = 0
        else:
            print(f"torch.compile ngf {ngf} batch {b}: skipped (compile budget spent)", file=sys.stderr)
        del x
    del g, compiled
    empty_cache()
    return compile_deadline


def bench_train(args, ngf, batch, mode):
    g = make_gen(ngf, args.size).train()
    d = tt.PatchGAN(3, ndf=64, n_layers=3).to(DEV).train()
    bf16 = mode in ("eager-bf16", "eager-bf16-det")
    if bf16:
        g = g.to(memory_format=torch.channels_last)
        d = d.to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce, l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()
    A = torch.rand(batch, 1, args.size, args.size, device=DEV) * 2 - 1
    B = (torch.rand(batch, 2, args.size, args.size, device=DEV) * 2 - 1) * 0.5
    if bf16:
        A = A.contiguous(memory_format=torch.channels_last)
        B = B.contiguous(memory_format=torch.channels_last)
    use_amp = bf16 and DEV == "cuda"

    def step():
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=use_amp):
            fake = g(A)
            for p in d.parameters():
                p.requires_grad_(True)
            opt_d.zero_grad(set_to_none=True)
            pf = d(torch.cat((A, fake.detach()), 1))
            pr = d(torch.cat((A, B), 1))
            loss_d = 0.5 * (bce(pf, torch.zeros_like(pf)) + bce(pr, torch.ones_like(pr)))
        loss_d.backward()
        opt_d.step()
        for p in d.parameters():
            p.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=use_amp):
            pf = d(torch.cat((A, fake), 1))
            loss_g = bce(pf, torch.ones_like(pf)) + 100.0 * l1(fake, B)
        loss_g.backward()
        opt_g.step()

    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.deterministic = mode == "eager-bf16-det"
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = mode == "eager-tf32"
    try:
        sec, it = timed(step, args.min_time)
    finally:
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = saved
    emit(args, "train", mode, ngf, batch, sec, it)
    del g, d, opt_g, opt_d, A, B
    empty_cache()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ngf", default="64,32")
    p.add_argument("--batch", default="1,16,64,256")
    p.add_argument("--train-batch", default="16,64")
    p.add_argument("--det-batch", default="64", help="training batches also run with cudnn.deterministic")
    p.add_argument("--tf32-batch", default="1", help="training batches also run in fp32 with TF32 allowed")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--compile-budget", type=float, default=150.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = p.parse_args()
    args.batch = ints(args.batch)
    global DEV
    DEV = args.device
    if DEV == "cuda" and not torch.cuda.is_available():
        print("torch_gpu_bench: no CUDA device", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    where = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke test)"
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {where}", file=sys.stderr)
    deadline = time.time() + args.compile_budget
    for ngf in ints(args.ngf):
        deadline = bench_forward(args, ngf, deadline)
    for b in ints(args.train_batch):
        for mode in ("eager-bf16", "eager-fp32"):
            bench_train(args, 64, b, mode)
    for b in ints(args.det_batch):
        bench_train(args, 64, b, "eager-bf16-det")
    for b in ints(args.tf32_batch):
        bench_train(args, 64, b, "eager-tf32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
