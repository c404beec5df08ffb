#!/usr/bin/python3
"""make_unet_fixture.py: writes a U-Net golden fixture (or, with --init-only, a plain freshly
initialized weights file) in colorize's safetensors naming, using tests/golden/torch_unet.py.

A fixture is ONE safetensors file: the generator's weights under our names and metadata, plus
  fixture.input     [B, in_ch, S, S]  uniform in [-1, 1]
  fixture.expected  [B, out_ch, S, S] the eval-mode output, computed in float64, stored F32
and metadata "fixture": "1" (and the generation parameters, fixture_*).

Weights for a fixture are NOT the pix2pix init (convs N(0, 0.02)): with that the output of an
8-level net is ~0 and relative-error tests say nothing. Instead every conv gets a He-like
std (gain / sqrt(fan_in)), BN gamma N(1, 0.02), beta N(0, 0.1), running_mean N(0, 0.1),
running_var U(0.5, 1.5) so that folding BatchNorm into the convs is really exercised, and the
outermost bias N(0, 0.1). The script refuses to write a fixture whose expected output has
std <= 0.05. --init-only --pix2pix-init gives the plain pix2pix init instead (for benches).

Deterministic: one torch.Generator / numpy Generator seeded from --seed, single-threaded
float64 forward. Usage: see tests/golden/README.md. """

import argparse
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_unet as tu  # noqa: E402

# Gains chosen so activations stay O(1) through 8 levels (checked by the std guard below).
DOWN_GAIN = math.sqrt(2.0 / (1.0 + 0.2 ** 2))  # LeakyReLU(0.2) before each down conv
UP_GAIN = math.sqrt(2.0)  # ReLU before each up conv


def init_fixture(model, rng):
    """rng: numpy Generator. Fills every parameter and buffer from rng, layer order."""
    with torch.no_grad():
        for name, t in model.named_ours():
            shape = tuple(t.shape)
            if name.endswith(".weight") and len(shape) == 4:
                if name.startswith("down."):
                    fan_in = shape[1] * 16
                    gain = 1.0 if name == "down.0.weight" else DOWN_GAIN
                else:  # transposed conv [in, out, 4, 4]: stride 2 -> 4 taps per output pixel
                    fan_in = shape[0] * 4
                    gain = UP_GAIN
                v = rng.normal(0.0, gain / math.sqrt(fan_in), shape)
            elif name.endswith("bn.weight"):
                v = rng.normal(1.0, 0.02, shape)
            elif name.endswith("bn.bias") or name == "up.0.bias":
                v = rng.normal(0.0, 0.1, shape)
            elif name.endswith("running_mean"):
                v = rng.normal(0.0, 0.1, shape)
            elif name.endswith("running_var"):
                v = rng.uniform(0.5, 1.5, shape)
            else:
                raise AssertionError(name)
            t.copy_(torch.from_numpy(v.astype(np.float32)))


def init_pix2pix(model, rng):
    """The reference's training init: convs N(0, 0.02), BN gamma N(1, 0.02), beta 0, bias 0,
    running stats 0 / 1."""
    with torch.no_grad():
        for name, t in model.named_ours():
            shape = tuple(t.shape)
            if name.endswith(".weight") and len(shape) == 4:
                v = rng.normal(0.0, 0.02, shape)
            elif name.endswith("bn.weight"):
                v = rng.normal(1.0, 0.02, shape)
            elif name.endswith("running_var"):
                v = np.ones(shape)
            else:
                v = np.zeros(shape)
            t.copy_(torch.from_numpy(v.astype(np.float32)))


def main(argv=None):
    p = argparse.ArgumentParser(description="write a colorize U-Net fixture or weights file")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--mode", choices=sorted(tu.COLOR_MODES), default="lab")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-only", action="store_true", help="weights only, no fixture tensors")
    p.add_argument("--pix2pix-init", action="store_true",
                   help="with --init-only: the reference N(0, 0.02) init instead of the fixture init")
    p.add_argument("-o", "--out", required=True)
    a = p.parse_args(argv)

    if not 5 <= a.depth <= 8:
        p.error("--depth must be 5..8")
    if a.size <= 0 or a.size % (2 ** a.depth):
        p.error("--size must be a positive multiple of 2^depth = %d" % 2 ** a.depth)
    if a.ngf < 1 or a.batch < 1:
        p.error("--ngf and --batch must be >= 1")

    torch.manual_seed(a.seed)
    torch.set_num_threads(1)  # reproducible reductions
    rng = np.random.default_rng(a.seed)
    in_ch, out_ch = tu.COLOR_MODES[a.mode]
    model = tu.UnetGenerator(in_ch, out_ch, a.ngf, a.depth)
    (init_pix2pix if a.pix2pix_init else init_fixture)(model, rng)
    model.eval()
    meta = model.metadata(a.mode)
    tensors = tu.weights_of(model)

    if not a.init_only:
        x = rng.uniform(-1.0, 1.0, (a.batch, in_ch, a.size, a.size)).astype(np.float32)
        y = tu.forward(model, x, double=True)
        std = float(y.std())
        sat = float(np.mean(np.abs(y) > 0.99))
        if std <= 0.05:
            sys.exit("make_unet_fixture: expected output std %.4f <= 0.05; refusing" % std)
        tensors["fixture.input"] = x
        tensors["fixture.expected"] = y.astype(np.float32)
        meta.update({"fixture": "1", "fixture_seed": str(a.seed), "fixture_batch": str(a.batch),
                     "fixture_size": str(a.size),
                     "fixture_note": "expected = eval-mode torch_unet forward in float64"})
        print("make_unet_fixture: output std %.4f, |y|>0.99: %.2f%%" % (std, 100 * sat))

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tu.write_safetensors(a.out, tensors, meta)
    nparam = sum(v.size for k, v in tensors.items() if not k.startswith("fixture."))
    print("make_unet_fixture: wrote %s (%d bytes, %d weights, ngf %d depth %d %s)"
          % (a.out, os.path.getsize(a.out), nparam, a.ngf, a.depth, a.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
