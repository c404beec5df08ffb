#!/usr/bin/python3
"""torch_train_bench.py: times one pix2pix training step in PyTorch (CPU, float32) at the sizes
`colorize bench --train` uses, so the two can be compared side by side on one machine.

The models are the test oracles' own builders: the U-Net generator from
tests/golden/torch_unet.py (module tree like the reference UnetGenerator, plain nn.Dropout) and
the 70x70 PatchGAN from tests/golden/torch_train.py. The step is the reference order
(Pix2PixModel.optimize_parameters): fake = G(A); D on (A, fake.detach()) and (A, B), Adam on D;
G on BCE(D(A, fake), 1) + 100 L1, Adam on G. Synthetic data; one warm-up step, then timed steps
until both --min-time seconds and --iters steps have passed; the median is reported.

Usage: /usr/bin/python3 tests/bench/torch_train_bench.py [--ngf 64,32] [--batch 1,16]
           [--size 256] [--threads N] [--min-time S] [--iters N] [--json]
Runs under Debian's python3-torch (1.13). Prints a table (or JSON lines). """

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


def depth_for(size):
    d = 0
    while d < 8 and (2 << d) <= size:
        d += 1
    return max(d, 5)


def bench_one(ngf, batch, size, min_time, min_iters):
    torch.manual_seed(1)
    g = tu.UnetGenerator(1, 2, ngf=ngf, depth=depth_for(size)).float().train()
    d = tt.PatchGAN(3, ndf=64, n_layers=3).float().train()
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce, l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()
    A = torch.rand(batch, 1, size, size) * 2 - 1
    B = (torch.rand(batch, 2, size, size) * 2 - 1) * 0.5

    def step():
        fake = g(A)
        for p in d.parameters():
            p.requires_grad_(True)
        opt_d.zero_grad()
        pf = d(torch.cat((A, fake.detach()), 1))
        pr = d(torch.cat((A, B), 1))
        loss_d = 0.5 * (bce(pf, torch.zeros_like(pf)) + bce(pr, torch.ones_like(pr)))
        loss_d.backward()
        opt_d.step()
        for p in d.parameters():
            p.requires_grad_(False)
        opt_g.zero_grad()
        pred = d(torch.cat((A, fake), 1))
        loss_g = bce(pred, torch.ones_like(pred)) + 100.0 * l1(fake, B)
        loss_g.backward()
        opt_g.step()

    step()  # warm-up
    times = []
    t_start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - t_start < min_time:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ngf", default="64,32")
    ap.add_argument("--batch", default="1")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--min-time", type=float, default=0.0)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not a.json:
        print("torch %s pix2pix step, %dx%d, fp32, CPU, threads %d" % (torch.__version__, a.size, a.size,
                                                                     torch.get_num_threads()))
        print("%-5s %6s %12s %12s %8s" % ("ngf", "batch", "ms/step", "images/s", "iters"))
    for ngf in [int(x) for x in a.ngf.split(",")]:
        for batch in [int(x) for x in a.batch.split(",")]:
            med, iters = bench_one(ngf, batch, a.size, a.min_time, a.iters)
            if a.json:
                print(json.dumps({"engine": "torch", "mode": "train", "precision": "fp32", "ngf": ngf,
                                  "size": a.size, "batch": batch, "threads": torch.get_num_threads(),
                                  "ms_per_step": med * 1e3, "images_per_s": batch / med, "iters": iters}))
            else:
                print("%-5d %6d %12.1f %12.3f %8d" % (ngf, batch, med * 1e3, batch / med, iters))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
