#!/usr/bin/python3
"""torch_train.py: an independent PyTorch implementation of colorize's pix2pix training step,
the oracle of tests/unit/test_train_golden.c (testing ladder step 3 in DESIGN.md).

What it owns:
  * the 70x70 PatchGAN discriminator built like the reference implementation's
    NLayerDiscriminator with BatchNorm (conv 4x4 s2 + bias -> LeakyReLU(0.2); then
    conv (no bias) -> BatchNorm -> LeakyReLU for n_layers convs, the last of them stride 1;
    then a stride-1 conv with bias to 1 channel), and its mapping to our tensor names
    disc.{k}.weight / disc.{k}.bias / disc.{k}.bn.* (k = conv index);
  * our dropout RNG re-implemented in numpy (the SplitMix64 counter scheme documented in
    core/backend.h, with the per-step and per-level seeds of core/gan.h and
    core/unet_train.h), and a drop-in replacement for the generator's nn.Dropout that
    multiplies by those masks, so torch sees exactly the masks our engine draws;
  * the pix2pix step in the reference order (Pix2PixModel.optimize_parameters): fake = G(A);
    D: 0.5 * (BCEWithLogits(D(A, fake.detach()), 0) + BCEWithLogits(D(A, B), 1)), backward,
    Adam step; G: BCEWithLogits(D(A, fake), 1) + lambda * L1(fake, B) with D frozen, backward,
    Adam step (torch.optim.Adam, lr 2e-4, betas (0.5, 0.999), eps 1e-8). Everything in float64.
  * a CLI: `check FIXTURE` recomputes a fixture written by make_train_fixture.py and compares,
    `selftest` checks the RNG against values the C engine documents and the naming.

The generator is torch_unet.UnetGenerator (module tree like the reference). Runs under Debian's
/usr/bin/python3 with PyTorch 1.13 (CPU) and numpy. Single-threaded use. """

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_unet as tu  # noqa: E402

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
STEP_MUL = 0xD1B54A32D192ED03   # core/gan.c: cz_gan_step_seed
LEVEL_MUL = 0x9FB21C651E98DF25  # core/unet_train.c: cz_unet_train_level_seed
LOSS_NAMES = ("G_GAN", "G_L1", "D_real", "D_fake")

# ---------------------------------------------------------------------------- dropout RNG


def step_seed(seed, step):
    return (seed + step * STEP_MUL) & M64


def level_seed(seed, level):
    return (seed + (level + 1) * LEVEL_MUL) & M64


def dropout_mask(shape, seed, p=0.5):
    """Our backend's inverted-dropout mask for a tensor of `shape` (NCHW index order)."""
    n = int(np.prod(shape))
    with np.errstate(over="ignore"):
        i = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(seed) + i * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)
    keep = u >= np.float32(p)
    scale = np.float32(1.0) / (np.float32(1.0) - np.float32(p))
    return np.where(keep, scale, np.float32(0)).astype(np.float32).reshape(shape)


class MaskDropout(nn.Module):
    """Stands in for nn.Dropout: multiplies by a mask computed from our RNG at each call."""

    def __init__(self, level):
        super().__init__()
        self.level = level
        self.seed = None  # the step seed; set before each generator forward
        self.p = 0.5

    def forward(self, x):
        if not self.training:
            return x
        m = dropout_mask(tuple(x.shape), level_seed(self.seed, self.level), self.p)
        return x * torch.from_numpy(m).to(x.dtype)


def install_mask_dropout(gen):
    """Replaces every nn.Dropout of a torch_unet.UnetGenerator; returns the new modules."""
    drops = []
    for i, lv in enumerate(gen.levels):
        seq = lv.model
        for k, mod in enumerate(seq):
            if isinstance(mod, nn.Dropout):
                seq[k] = MaskDropout(i)
                drops.append(seq[k])
    return drops


# ---------------------------------------------------------------------------- PatchGAN


class PatchGAN(nn.Module):
    def __init__(self, in_ch, ndf=64, n_layers=3):
        super().__init__()
        self.in_ch, self.ndf, self.n_layers = in_ch, ndf, n_layers
        convs, bns = [], {}
        layers = []
        c = nn.Conv2d(in_ch, ndf, 4, 2, 1, bias=True)
        convs.append(c)
        layers += [c, nn.LeakyReLU(0.2, True)]
        prev = ndf
        for k in range(1, n_layers + 1):
            width = ndf * min(2 ** k, 8)
            c = nn.Conv2d(prev, width, 4, 2 if k < n_layers else 1, 1, bias=False)
            b = nn.BatchNorm2d(width)
            convs.append(c)
            bns[k] = b
            layers += [c, b, nn.LeakyReLU(0.2, True)]
            prev = width
        c = nn.Conv2d(prev, 1, 4, 1, 1, bias=True)
        convs.append(c)
        layers.append(c)
        self.model = nn.Sequential(*layers)
        object.__setattr__(self, "convs", convs)
        object.__setattr__(self, "bns", bns)

    def forward(self, x):
        return self.model(x)

    def named_ours(self):
        out = []
        for k, c in enumerate(self.convs):
            out.append(("disc.%d.weight" % k, c.weight))
            if c.bias is not None:
                out.append(("disc.%d.bias" % k, c.bias))
            if k in self.bns:
                out += tu._bn_items("disc.%d.bn" % k, self.bns[k])
        return out

    def metadata(self):
        return {"disc_in_ch": str(self.in_ch), "disc_ndf": str(self.ndf),
                "disc_n_layers": str(self.n_layers), "disc_bn_eps": "1e-05"}


def load_named(model, tensors):
    with torch.no_grad():
        for name, dst in model.named_ours():
            src = np.asarray(tensors[name])
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError("%s: shape %r, expected %r" % (name, src.shape, tuple(dst.shape)))
            dst.copy_(torch.from_numpy(src.astype(np.float64)).to(dst.dtype))


def models_from(tensors, meta):
    """(G, D) in float64 from a file's tensors and metadata, G's dropout replaced."""
    g = tu.model_from_metadata(meta)
    drops = install_mask_dropout(g)
    d = PatchGAN(int(meta["disc_in_ch"]), int(meta["disc_ndf"]), int(meta["disc_n_layers"]))
    g.double()
    d.double()
    load_named(g, tensors)
    load_named(d, tensors)
    return g, d, drops


# ---------------------------------------------------------------------------- the step


def train(g, d, drops, A, B, steps, seed, lam=100.0, lr=2e-4, betas=(0.5, 0.999), eps=1e-8):
    """Runs `steps` pix2pix steps on one batch. Returns (losses [steps x 4] in LOSS_NAMES
    order, grads of step 1: our name -> float64 numpy array)."""
    A = torch.from_numpy(np.asarray(A, np.float64))
    B = torch.from_numpy(np.asarray(B, np.float64))
    g.train()
    d.train()
    opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=betas, eps=eps)
    opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=betas, eps=eps)
    bce = nn.BCEWithLogitsLoss()
    l1 = nn.L1Loss()
    losses, grads = [], {}
    for t in range(1, steps + 1):
        for m in drops:
            m.seed = step_seed(seed, t)
        fake = g(A)
        # D step
        for p in d.parameters():
            p.requires_grad_(True)
        opt_d.zero_grad()
        pred_fake = d(torch.cat((A, fake.detach()), 1))
        loss_d_fake = bce(pred_fake, torch.zeros_like(pred_fake))
        pred_real = d(torch.cat((A, B), 1))
        loss_d_real = bce(pred_real, torch.ones_like(pred_real))
        loss_d = 0.5 * (loss_d_fake + loss_d_real)
        loss_d.backward()
        if t == 1:
            for name, p in d.named_ours():
                if p.grad is not None:
                    grads[name] = p.grad.detach().numpy().copy()
        opt_d.step()
        # G step, D frozen
        for p in d.parameters():
            p.requires_grad_(False)
        opt_g.zero_grad()
        pred = d(torch.cat((A, fake), 1))
        loss_g_gan = bce(pred, torch.ones_like(pred))
        loss_g_l1 = l1(fake, B) * lam
        loss_g = loss_g_gan + loss_g_l1
        loss_g.backward()
        if t == 1:
            for name, p in g.named_ours():
                if p.grad is not None:
                    grads[name] = p.grad.detach().numpy().copy()
        opt_g.step()
        losses.append([loss_g_gan.item(), loss_g_l1.item(), loss_d_real.item(), loss_d_fake.item()])
    return np.array(losses, np.float64), grads


# ---------------------------------------------------------------------------- CLI


def _cmd_check(a):
    t, meta = tu.read_safetensors(a.fixture)
    g, d, drops = models_from(t, meta)
    steps = int(meta["fixture_steps"])
    losses, grads = train(g, d, drops, t["fixture.A"], t["fixture.B"], steps, int(meta["fixture_seed"]),
                          float(meta["fixture_lambda"]))
    worst = float(np.max(np.abs(losses - t["expected.losses"]) / np.abs(t["expected.losses"])))
    gw = 0.0
    for name, v in grads.items():
        ref = t["grad." + name].astype(np.float64)
        gw = max(gw, np.linalg.norm(v - ref) / max(np.linalg.norm(ref), 1e-30))
    print("torch_train: %s losses worst rel %.2e, gradients worst rel %.2e (%d tensors)"
          % (a.fixture, worst, gw, len(grads)))
    return 0 if worst < 1e-6 and gw < 1e-6 else 1


def _cmd_selftest(_a):
    # the first SplitMix64 outputs for state 0 (public test vector of the generator)
    with np.errstate(over="ignore"):
        z = np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    assert int(z) == 0xE220A8397B1DCDAF, hex(int(z))
    m = dropout_mask((1, 2, 8, 8), 12345)
    frac = float((m > 0).mean())
    assert set(np.unique(m)) <= {0.0, 2.0} and 0.2 < frac < 0.8, frac
    d = PatchGAN(3, 64, 3)
    count = sum(p.numel() for p in d.parameters())
    assert count == 2765633, count
    x = torch.zeros(1, 3, 256, 256)
    assert tuple(d(x).shape) == (1, 1, 30, 30)
    names = [n for n, _ in d.named_ours()]
    assert names[:2] == ["disc.0.weight", "disc.0.bias"] and names[-1] == "disc.4.bias", names
    g = tu.UnetGenerator(1, 2, 4, 8)
    assert len(install_mask_dropout(g)) == 3
    print("torch_train: selftest ok")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="recompute a training fixture and compare")
    c.add_argument("fixture")
    sub.add_parser("selftest", help="RNG, PatchGAN size and naming")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    return {"check": _cmd_check, "selftest": _cmd_selftest}[a.cmd](a) or 0


if __name__ == "__main__":
    sys.exit(main())
