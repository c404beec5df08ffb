#!/usr/bin/python3
"""make_train_fixture.py: writes the pix2pix training fixture that tests/unit/test_train_golden.c
replays, computed by tests/golden/torch_train.py (PyTorch 1.13, float64).

The fixture is ONE safetensors file:
  * generator weights under our names with the unet metadata (torch_unet.py naming), and
    discriminator weights disc.* with metadata disc_in_ch / disc_ndf / disc_n_layers;
  * fixture.A [B, 1, S, S] = L / 50 - 1 and fixture.B [B, 2, S, S] = ab / 110 (lab mode) of
    smooth synthetic sRGB images converted to CIE Lab (D65);
  * expected.losses [steps, 4] F64: G_GAN, G_L1 (with lambda), D_real, D_fake of each of
    `steps` consecutive pix2pix steps on that batch (Adam, lr 2e-4, betas 0.5/0.999);
  * grad.{name} F32 for every learnable tensor of G and D: d(loss_G)/dG and d(loss_D)/dD of
    step 1 (before the optimizer steps);
  * metadata fixture_seed (the training seed that drives our dropout masks, which torch gets
    through torch_train.MaskDropout), fixture_steps, fixture_lambda.

Weights are not the pix2pix init N(0, 0.02) (under which the generator's output is ~0 and
many gradients vanish): convs get He-like stds as in make_unet_fixture.py, BatchNorm gamma
N(1, 0.02), beta N(0, 0.1), biases N(0, 0.1), so every gradient tensor is well away from zero.
Running statistics are 0 / 1 (training mode does not read them).

Deterministic (numpy Generator from --seed, single-threaded float64 torch). Usage:
  /usr/bin/python3 tests/golden/make_train_fixture.py -o tests/golden/data/train_lab_ngf4_ndf8_d6.safetensors
"""

import argparse
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_train as tt  # noqa: E402
import torch_unet as tu  # noqa: E402


def he_init(named, rng, lrelu_before):
    """named: (our name, tensor) pairs. Conv weights N(0, gain/sqrt(fan_in))."""
    out = {}
    for name, t in named:
        shape = tuple(t.shape)
        if len(shape) == 4:
            if name.startswith("up."):  # transposed conv [in, out, 4, 4]: 4 taps per output
                fan_in, gain = shape[0] * 4, math.sqrt(2.0)
            else:
                fan_in = shape[1] * 16
                first = name in ("down.0.weight", "disc.0.weight")
                gain = 1.0 if first else (math.sqrt(2.0 / 1.04) if lrelu_before else math.sqrt(2.0))
            v = rng.normal(0.0, gain / math.sqrt(fan_in), shape)
        elif name.endswith("bn.weight"):
            v = rng.normal(1.0, 0.02, shape)
        elif name.endswith("running_var"):
            v = np.ones(shape)
        elif name.endswith("running_mean"):
            v = np.zeros(shape)
        else:  # BN beta, conv biases
            v = rng.normal(0.0, 0.1, shape)
        out[name] = v.astype(np.float32)
    return out


def srgb_to_lab(rgb):
    """rgb [..., 3] in [0, 1] -> L, a, b (D65)."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    d = 6.0 / 29.0
    f = np.where(xyz > d ** 3, np.cbrt(xyz), xyz / (3 * d * d) + 4.0 / 29.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return L, a, b


def synthetic_batch(rng, n, size):
    """Smooth colorful images: a few random color blobs over a gradient."""
    yy, xx = np.mgrid[0:size, 0:size] / float(size)
    A = np.zeros((n, 1, size, size), np.float32)
    B = np.zeros((n, 2, size, size), np.float32)
    for k in range(n):
        img = np.stack([xx, yy, 1 - xx], -1) * rng.uniform(0.3, 0.7, 3)
        for _ in range(5):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
            w = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
            img = img * (1 - w) + w * rng.uniform(0, 1, 3)
        L, a, b = srgb_to_lab(np.clip(img, 0, 1))
        A[k, 0] = L / 50.0 - 1.0
        B[k, 0] = a / 110.0
        B[k, 1] = b / 110.0
    return A, B


def main(argv=None):
    p = argparse.ArgumentParser(description="write the pix2pix training golden fixture")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--ngf", type=int, default=4)
    p.add_argument("--ndf", type=int, default=8)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--train-seed", type=int, default=11, help="the engine's training seed (dropout masks)")
    p.add_argument("--lam", type=float, default=100.0)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(a.seed)

    g = tu.UnetGenerator(1, 2, a.ngf, a.depth)
    d = tt.PatchGAN(3, a.ndf, 3)
    weights = he_init(g.named_ours(), rng, True)
    weights.update(he_init(d.named_ours(), rng, True))
    A, B = synthetic_batch(rng, a.batch, a.size)
    meta = g.metadata("lab")
    meta.update(d.metadata())
    meta.update({"fixture": "1", "fixture_seed": str(a.train_seed), "fixture_steps": str(a.steps),
                 "fixture_lambda": repr(a.lam), "fixture_batch": str(a.batch), "fixture_size": str(a.size)})

    gm, dm, drops = tt.models_from(weights, meta)
    losses, grads = tt.train(gm, dm, drops, A, B, a.steps, a.train_seed, a.lam)
    out = dict(weights)
    out["fixture.A"] = A
    out["fixture.B"] = B
    out["expected.losses"] = losses
    for name, _ in list(g.named_ours()) + list(d.named_ours()):
        if name in grads:
            out["grad." + name] = grads[name].astype(np.float32)
    tu.write_safetensors(a.out, out, meta)
    small = min(np.linalg.norm(v) for v in grads.values())
    print("make_train_fixture: wrote %s (%d bytes), %d gradients (smallest norm %.3e)"
          % (a.out, os.path.getsize(a.out), len(grads), small))
    for t, row in enumerate(losses, 1):
        print("  step %d: %s" % (t, "  ".join("%s %.6f" % kv for kv in zip(tt.LOSS_NAMES, row))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
