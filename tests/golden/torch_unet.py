#!/usr/bin/python3
"""torch_unet.py: an independent PyTorch implementation of colorize's generator, the oracle of
the parity tests (testing ladder step 3 in DESIGN.md).

What it owns:
  * safetensors read/write in pure Python (json + struct + numpy, no safetensors package);
  * the pix2pix U-Net generator built module for module like the reference implementation
    (pytorch-CycleGAN-and-pix2pix UnetGenerator with BatchNorm): every level is an
    nn.Sequential [LeakyReLU(0.2, in place), down conv, down BN, inner level, ReLU(in place),
    up conv, up BN, (Dropout)] whose forward returns cat([x, sequential(x)], 1). The in-place
    LeakyReLU rewrites x before the cat, so the skip carries LeakyReLU(x), exactly as the
    reference does. The outermost level has no activation before its down conv and no BN,
    its up conv is the only conv with a bias, and it ends in tanh. Dropout(0.5) sits on the
    depth-5 levels just outside the innermost (training only);
  * the mapping between that module tree and our tensor names (down.{i}.weight,
    down.{i}.bn.*, up.{i}.weight, up.{i}.bn.*, up.0.bias), checked against the metadata;
  * a second, functional formulation of the same network (no modules, no in-place ops),
    which selftest compares against the module tree;
  * import of a reference-implementation state_dict (its key names match our module tree);
  * a CLI: `run WEIGHTS INPUT OUT` (forward pass for a C test to call live), `check FIXTURE`,
    `selftest`, `numpy-sample OUT`, `import-ref PTH OUT`.

Runs under Debian's /usr/bin/python3 with its PyTorch 1.13 (CPU) and numpy; nothing is
downloaded. Single-threaded use; no global state besides torch's own.
Tested by running `torch_unet.py selftest` and through tests/golden/make_unet_fixture.py. """

import argparse
import json
import struct
import sys

import numpy as np

# ---------------------------------------------------------------------------- safetensors

# dtype name -> (numpy dtype of the stored little-endian elements, element size)
_DTYPES = {
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),  # raw bits; see bf16_to_f32 / f32_to_bf16
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "U8": ("u1", 1),
    "BOOL": ("?", 1),
}
_NUMPY_TO_NAME = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("uint8"): "U8",
    np.dtype("bool"): "BOOL",
}
MAX_HEADER = 100 * 1024 * 1024


class Raw:
    """A tensor given as raw element bits plus its safetensors dtype (used for BF16)."""

    def __init__(self, dtype, array):
        if dtype not in _DTYPES:
            raise ValueError("unknown dtype %r" % dtype)
        self.dtype = dtype
        self.array = np.ascontiguousarray(array, dtype=_DTYPES[dtype][0])


def f32_to_bf16(x):
    """float32 array -> Raw BF16 (round to nearest even)."""
    bits = np.ascontiguousarray(x, dtype="<f4").view("<u4").astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return Raw("BF16", rounded.astype("<u2"))


def bf16_to_f32(bits):
    return (np.asarray(bits, dtype="<u2").astype("<u4") << 16).view("<f4")


def read_safetensors(path, raw_bf16=False):
    """Returns (tensors, metadata): name -> numpy array (header order kept), key -> str.
    BF16 tensors come back as float32 unless raw_bf16 (then as uint16 bits)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError("%s: shorter than 8 bytes" % path)
    (hlen,) = struct.unpack("<Q", blob[:8])
    if hlen == 0 or hlen > MAX_HEADER or hlen > len(blob) - 8:
        raise ValueError("%s: bad header length %d" % (path, hlen))

    def no_dupes(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                raise ValueError("%s: duplicate key %r" % (path, k))
            d[k] = v
        return d

    header = json.loads(blob[8 : 8 + hlen].decode("utf-8"), object_pairs_hook=no_dupes)
    if not isinstance(header, dict):
        raise ValueError("%s: header is not an object" % path)
    data = memoryview(blob)[8 + hlen :]
    meta = header.pop("__metadata__", {}) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("%s: __metadata__ must map strings to strings" % path)
    tensors = {}
    spans = []
    for name, e in header.items():
        dt = e.get("dtype")
        if dt not in _DTYPES:
            raise ValueError("%s: %s: unknown dtype %r" % (path, name, dt))
        shape = e.get("shape")
        offs = e.get("data_offsets")
        ok_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0
        if not isinstance(shape, list) or not all(ok_int(s) for s in shape):
            raise ValueError("%s: %s: bad shape %r" % (path, name, shape))
        if not isinstance(offs, list) or len(offs) != 2 or not all(ok_int(o) for o in offs):
            raise ValueError("%s: %s: bad data_offsets %r" % (path, name, offs))
        b, en = offs
        numel = int(np.prod(shape, dtype=object)) if shape else 1
        if b > en or en > len(data) or en - b != numel * _DTYPES[dt][1]:
            raise ValueError("%s: %s: data_offsets %r do not fit shape %r" % (path, name, offs, shape))
        arr = np.frombuffer(data[b:en], dtype=_DTYPES[dt][0]).reshape(shape).copy()
        if dt == "BF16" and not raw_bf16:
            arr = bf16_to_f32(arr).reshape(shape)
        tensors[name] = arr
        if en > b:
            spans.append((b, en, name))
    spans.sort()
    cursor = 0
    for b, en, name in spans:
        if b != cursor:
            raise ValueError("%s: %s: %s at offset %d" % (path, name, "overlap" if b < cursor else "gap", b))
        cursor = en
    if cursor != len(data):
        raise ValueError("%s: %d unused bytes after the last tensor" % (path, len(data) - cursor))
    return tensors, dict(meta)


def safetensors_bytes(tensors, metadata=None, pretty=False):
    """Serializes name -> numpy array (or Raw) in the given order, contiguous, with the header
    padded by spaces so the data section starts 8-aligned. pretty uses json.dumps' default
    separators (", ", ": "), as many Python writers do."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    chunks = []
    off = 0
    for name, t in tensors.items():
        if isinstance(t, Raw):
            dt, arr = t.dtype, t.array
        else:
            arr = np.asarray(t)
            if arr.dtype not in _NUMPY_TO_NAME:
                raise ValueError("%s: unsupported numpy dtype %s" % (name, arr.dtype))
            dt = _NUMPY_TO_NAME[arr.dtype]
            arr = np.ascontiguousarray(arr, dtype=_DTYPES[dt][0])
        raw = arr.tobytes()
        header[name] = {"dtype": dt, "shape": [int(s) for s in arr.shape], "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    seps = (", ", ": ") if pretty else (",", ":")
    hj = json.dumps(header, separators=seps).encode("utf-8")
    hj += b" " * ((8 - (8 + len(hj)) % 8) % 8)
    return struct.pack("<Q", len(hj)) + hj + b"".join(chunks)


def write_safetensors(path, tensors, metadata=None, pretty=False):
    import os

    blob = safetensors_bytes(tensors, metadata, pretty)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- the model

import torch  # noqa: E402  (imported after the pure-numpy part so that part works alone)
import torch.nn as nn  # noqa: E402


class UnetLevel(nn.Module):
    """One level of the U-Net: skip connection around [down -> inner level -> up].
    outer_ch: channels entering (and, for non-outermost levels, the width of the up output);
    inner_ch: width of the down conv."""

    def __init__(self, outer_ch, inner_ch, in_ch=None, inner=None, outermost=False,
                 innermost=False, dropout=False):
        super().__init__()
        self.outermost = outermost
        if in_ch is None:
            in_ch = outer_ch
        # BatchNorm follows every conv but the outermost pair, so no conv bias there.
        down_conv = nn.Conv2d(in_ch, inner_ch, kernel_size=4, stride=2, padding=1, bias=False)
        down_act = nn.LeakyReLU(0.2, inplace=True)
        up_act = nn.ReLU(inplace=True)
        refs = {"down": down_conv}
        if outermost:
            up_conv = nn.ConvTranspose2d(inner_ch * 2, outer_ch, kernel_size=4, stride=2,
                                         padding=1, bias=True)
            layers = [down_conv, inner, up_act, up_conv, nn.Tanh()]
        elif innermost:
            up_conv = nn.ConvTranspose2d(inner_ch, outer_ch, kernel_size=4, stride=2,
                                         padding=1, bias=False)
            up_bn = nn.BatchNorm2d(outer_ch)
            layers = [down_act, down_conv, up_act, up_conv, up_bn]
            refs["up_bn"] = up_bn
        else:
            up_conv = nn.ConvTranspose2d(inner_ch * 2, outer_ch, kernel_size=4, stride=2,
                                         padding=1, bias=False)
            down_bn = nn.BatchNorm2d(inner_ch)
            up_bn = nn.BatchNorm2d(outer_ch)
            layers = [down_act, down_conv, down_bn, inner, up_act, up_conv, up_bn]
            if dropout:
                layers.append(nn.Dropout(0.5))
            refs["down_bn"] = down_bn
            refs["up_bn"] = up_bn
        refs["up"] = up_conv
        self.model = nn.Sequential(*layers)
        # plain dict: not registered twice as submodules
        object.__setattr__(self, "refs", refs)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        # self.model's first op is the in-place LeakyReLU: x is already rewritten when the
        # cat reads it, so the skip carries LeakyReLU(x), as in the reference.
        return torch.cat([x, self.model(x)], 1)


def widths(ngf, depth):
    return [ngf * min(2 ** i, 8) for i in range(depth)]


class UnetGenerator(nn.Module):
    def __init__(self, in_ch, out_ch, ngf=64, depth=8):
        super().__init__()
        if not 5 <= depth <= 8:
            raise ValueError("depth %d outside 5..8" % depth)
        self.in_ch, self.out_ch, self.ngf, self.depth = in_ch, out_ch, ngf, depth
        w = widths(ngf, depth)
        levels = [None] * depth
        # built from the inside out, as the reference does
        block = UnetLevel(w[depth - 2], w[depth - 1], innermost=True)
        levels[depth - 1] = block
        for i in range(depth - 2, 0, -1):
            drop = i >= 4  # the depth-5 levels of width 8*ngf just outside the innermost
            block = UnetLevel(w[i - 1], w[i], inner=block, dropout=drop)
            levels[i] = block
        block = UnetLevel(out_ch, w[0], in_ch=in_ch, inner=block, outermost=True)
        levels[0] = block
        self.model = block
        object.__setattr__(self, "levels", levels)

    def forward(self, x):
        return self.model(x)

    # ---- our naming ----
    def named_ours(self):
        """(our name, parameter or buffer tensor) in layer order."""
        out = []
        for i, lv in enumerate(self.levels):
            out.append(("down.%d.weight" % i, lv.refs["down"].weight))
            if "down_bn" in lv.refs:
                out += _bn_items("down.%d.bn" % i, lv.refs["down_bn"])
        for i, lv in enumerate(self.levels):
            out.append(("up.%d.weight" % i, lv.refs["up"].weight))
            if i == 0:
                out.append(("up.0.bias", lv.refs["up"].bias))
            if "up_bn" in lv.refs:
                out += _bn_items("up.%d.bn" % i, lv.refs["up_bn"])
        return out

    def metadata(self, color_mode):
        return {
            "format": "colorize-unet", "version": "1", "arch": "unet",
            "ngf": str(self.ngf), "depth": str(self.depth), "in_ch": str(self.in_ch),
            "out_ch": str(self.out_ch), "color_mode": color_mode, "norm": "batch",
            "bn_eps": "1e-05",
        }


def _bn_items(prefix, bn):
    return [(prefix + ".weight", bn.weight), (prefix + ".bias", bn.bias),
            (prefix + ".running_mean", bn.running_mean), (prefix + ".running_var", bn.running_var)]


def expected_shapes(in_ch, out_ch, ngf, depth):
    """Our tensor names -> shapes, straight from the naming rules (independent of the module
    tree, so named_ours() is checked against it)."""
    w = widths(ngf, depth)
    s = {}
    for i in range(depth):
        s["down.%d.weight" % i] = [w[i], in_ch if i == 0 else w[i - 1], 4, 4]
        if 1 <= i <= depth - 2:
            for k in ("weight", "bias", "running_mean", "running_var"):
                s["down.%d.bn.%s" % (i, k)] = [w[i]]
    for i in range(depth):
        if i == depth - 1:
            s["up.%d.weight" % i] = [w[i], w[i - 1], 4, 4]
        elif i >= 1:
            s["up.%d.weight" % i] = [2 * w[i], w[i - 1], 4, 4]
        else:
            s["up.0.weight"] = [2 * w[0], out_ch, 4, 4]
            s["up.0.bias"] = [out_ch]
        if i >= 1:
            for k in ("weight", "bias", "running_mean", "running_var"):
                s["up.%d.bn.%s" % (i, k)] = [w[i - 1]]
    return s


COLOR_MODES = {"lab": (1, 2), "rgb": (3, 3)}


def model_from_metadata(meta):
    if meta.get("format") != "colorize-unet" or meta.get("arch") != "unet":
        raise ValueError("not a colorize-unet file: %r" % meta)
    if meta.get("norm", "batch") != "batch" or float(meta.get("bn_eps", "1e-05")) != 1e-5:
        raise ValueError("only norm=batch with bn_eps=1e-05 is supported")
    ngf, depth = int(meta["ngf"]), int(meta.get("depth", "8"))
    in_ch, out_ch = int(meta["in_ch"]), int(meta["out_ch"])
    mode = meta.get("color_mode")
    if mode in COLOR_MODES and COLOR_MODES[mode] != (in_ch, out_ch):
        raise ValueError("color_mode %s needs in/out %r" % (mode, COLOR_MODES[mode]))
    return UnetGenerator(in_ch, out_ch, ngf, depth)


def load_weights(model, tensors):
    """Copies our-named tensors into the model (strict: every name present, shapes equal)."""
    want = expected_shapes(model.in_ch, model.out_ch, model.ngf, model.depth)
    with torch.no_grad():
        for name, dst in model.named_ours():
            if name not in tensors:
                raise KeyError("missing tensor %s" % name)
            src = np.asarray(tensors[name])
            if list(src.shape) != want[name] or list(dst.shape) != want[name]:
                raise ValueError("%s: shape %r, expected %r" % (name, list(src.shape), want[name]))
            dst.copy_(torch.from_numpy(src.astype(np.float32)))
    return model


def load_unet(path):
    """Reads a weights file; returns (model in eval mode, metadata, all tensors)."""
    tensors, meta = read_safetensors(path)
    model = load_weights(model_from_metadata(meta), tensors)
    model.eval()
    return model, meta, tensors


def weights_of(model):
    """Our-named float32 numpy arrays, layer order."""
    return {n: t.detach().to(torch.float32).cpu().numpy().copy() for n, t in model.named_ours()}


def forward(model, x, double=True):
    """Eval-mode forward of a numpy batch; float64 math when double (the oracle)."""
    model.eval()
    dt = torch.float64 if double else torch.float32
    m = model.to(dt)
    with torch.no_grad():
        y = m(torch.from_numpy(np.asarray(x)).to(dt))
    model.to(torch.float32)
    return y.numpy()


def load_reference_state_dict(model, state_dict):
    """Loads a state_dict saved from the reference implementation's UnetGenerator (BatchNorm):
    the module tree above mirrors it layer for layer, so its keys (model.model.0.weight,
    model.model.1.model.1.weight, ...) match ours; num_batches_tracked is accepted."""
    model.load_state_dict(state_dict, strict=True)
    return model


def functional_forward(tensors, depth, x, eps=1e-5):
    """The same network written a second way, straight from our tensor names with
    torch.nn.functional and no in-place ops (float64). Used by selftest to check that the
    module tree (with its in-place LeakyReLU) computes what the naming rules describe:
    level i>0 outputs cat([lrelu(x), up_i(relu(inner(conv_i(lrelu(x)))))])."""
    import torch.nn.functional as F

    T = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in tensors.items()}

    def bn(h, p):
        return F.batch_norm(h, T[p + ".running_mean"], T[p + ".running_var"], T[p + ".weight"],
                            T[p + ".bias"], training=False, eps=eps)

    def level(i, h):
        if i > 0:
            h = F.leaky_relu(h, 0.2)
        d = F.conv2d(h, T["down.%d.weight" % i], stride=2, padding=1)
        if 1 <= i <= depth - 2:
            d = bn(d, "down.%d.bn" % i)
        inner = level(i + 1, d) if i < depth - 1 else d
        u = F.conv_transpose2d(F.relu(inner), T["up.%d.weight" % i],
                               T["up.0.bias"] if i == 0 else None, stride=2, padding=1)
        if i == 0:
            return torch.tanh(u)
        return torch.cat([h, bn(u, "up.%d.bn" % i)], 1)

    with torch.no_grad():
        return level(0, torch.from_numpy(np.asarray(x, np.float64))).numpy()


def numpy_sample():
    """The small mixed-dtype file tests/unit/test_safetensors.c reads (values i * 0.5 - 1,
    I64 values i - 1), in the spacing of json.dumps' defaults."""
    ar = lambda n: np.arange(n, dtype=np.float64) * 0.5 - 1.0
    return {
        "a.f32": ar(6).astype(np.float32).reshape(2, 3),
        "b.f16": ar(5).astype(np.float16),
        "c.f64": ar(3).reshape(3, 1),
        "d.bf16": f32_to_bf16(ar(4).astype(np.float32)),
        "e.i64": np.arange(2, dtype=np.int64) - 1,
    }, {"writer": "numpy"}


# ---------------------------------------------------------------------------- CLI

def _cmd_run(a):
    model, _, _ = load_unet(a.weights)
    inp, _ = read_safetensors(a.input)
    name = a.input_name
    if name is None:
        name = "input" if "input" in inp else "fixture.input"
    x = inp[name].astype(np.float32)
    y = forward(model, x, double=not a.float32)
    write_safetensors(a.out, {"output": y.astype(np.float32)}, {"producer": "torch_unet.py"})
    print("torch_unet: %s %s -> %s %s" % (name, list(x.shape), a.out, list(y.shape)))


def _cmd_check(a):
    model, meta, t = load_unet(a.fixture)
    y = forward(model, t["fixture.input"], double=True)
    ref = t["fixture.expected"].astype(np.float64)
    rel = np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30)
    print("torch_unet: %s rel err %.3e, output std %.4f" % (a.fixture, rel, ref.std()))
    return 0 if rel < 1e-6 else 1


def _cmd_selftest(_a):
    """Checks the module tree against the naming rules and the pure-Python reader against the
    writer; run by hand or by the fixture script."""
    for depth in (5, 6, 7, 8):
        for mode, (ci, co) in COLOR_MODES.items():
            m = UnetGenerator(ci, co, 3, depth)
            got = {n: list(t.shape) for n, t in m.named_ours()}
            assert got == expected_shapes(ci, co, 3, depth), (depth, mode)
            # every parameter and buffer of the module tree is covered exactly once
            ours = {id(t) for _, t in m.named_ours()}
            mods = [p for p in m.parameters()] + [b for n, b in m.named_buffers() if not n.endswith("num_batches_tracked")]
            assert ours == {id(t) for t in mods}, depth
            drops = sum(isinstance(x, nn.Dropout) for x in m.modules())
            assert drops == depth - 5, (depth, drops)
    rng = np.random.default_rng(5)
    for depth, (ci, co) in ((5, (3, 3)), (8, (1, 2))):
        m = UnetGenerator(ci, co, 2, depth)
        w = {n: rng.normal(0, 0.3, tuple(t.shape)).astype(np.float32) for n, t in m.named_ours()}
        for n in w:
            if n.endswith("running_var"):
                w[n] = np.abs(w[n]) + 0.5
        load_weights(m, w)
        x = rng.uniform(-1, 1, (2, ci, 2 ** depth, 2 ** depth)).astype(np.float32)
        a_ = forward(m, x, double=True)
        b_ = functional_forward(w, depth, x)
        assert np.max(np.abs(a_ - b_)) < 1e-12, (depth, np.max(np.abs(a_ - b_)))
        m2 = UnetGenerator(ci, co, 2, depth)
        load_reference_state_dict(m2, m.state_dict())
        assert np.array_equal(forward(m2, x, double=True), a_)
    import os, tempfile
    t = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": f32_to_bf16(np.array([1.0, -2.0], np.float32)),
         "c": np.zeros((0, 4), np.float16)}
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.safetensors")
        write_safetensors(p, t, {"z": "1", "a": "2"}, pretty=True)
        back, meta = read_safetensors(p)
        assert meta == {"a": "2", "z": "1"}
        assert np.array_equal(back["a"], t["a"]) and list(back["b"]) == [1.0, -2.0] and back["c"].shape == (0, 4)
    print("torch_unet: selftest ok")


def _cmd_numpy_sample(a):
    t, meta = numpy_sample()
    write_safetensors(a.out, t, meta, pretty=True)
    print("torch_unet: wrote %s" % a.out)


def _cmd_import_ref(a):
    """Reference checkpoint (state_dict .pth) -> our safetensors naming."""
    sd = torch.load(a.pth, map_location="cpu")
    ci, co = COLOR_MODES[a.mode]
    m = load_reference_state_dict(UnetGenerator(ci, co, a.ngf, a.depth), sd)
    write_safetensors(a.out, weights_of(m), m.metadata(a.mode))
    print("torch_unet: wrote %s" % a.out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="forward pass: WEIGHTS INPUT.safetensors OUT.safetensors")
    r.add_argument("weights")
    r.add_argument("input")
    r.add_argument("out")
    r.add_argument("--input-name", default=None, help="tensor in INPUT (default: input, else fixture.input)")
    r.add_argument("--float32", action="store_true", help="compute in float32 instead of float64")
    c = sub.add_parser("check", help="recompute a fixture's expected output and compare")
    c.add_argument("fixture")
    sub.add_parser("selftest", help="module tree vs naming rules vs a functional re-implementation")
    n = sub.add_parser("numpy-sample", help="write the small mixed-dtype test file")
    n.add_argument("out")
    i = sub.add_parser("import-ref", help="reference UnetGenerator state_dict (.pth) -> our file")
    i.add_argument("pth")
    i.add_argument("out")
    i.add_argument("--ngf", type=int, default=64)
    i.add_argument("--depth", type=int, default=8)
    i.add_argument("--mode", choices=sorted(COLOR_MODES), default="lab")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rc = {"run": _cmd_run, "check": _cmd_check, "selftest": _cmd_selftest,
          "numpy-sample": _cmd_numpy_sample, "import-ref": _cmd_import_ref}[a.cmd](a)
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
