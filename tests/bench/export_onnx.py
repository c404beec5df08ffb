#!/usr/bin/python3
"""export_onnx.py: exports one of our generator weights files (safetensors, colorize naming)
to ONNX for the ONNX Runtime comparison bench (tests/bench/bench_ort.py).

Loads the weights into tests/golden/torch_unet.py's model, switches it to eval mode (BatchNorm
on running statistics, dropout off) and runs torch.onnx.export with a dynamic batch axis
(and, with --dynamic-hw, dynamic height and width). Runs under Debian's /usr/bin/python3 with
its PyTorch 1.13; torch's exporter serializes the graph itself and does not need the `onnx`
Python package (checked: the export runs with `import onnx` made to fail). When python3-onnx
is installed, the exported model is also run through onnx.checker.

Usage: /usr/bin/python3 tests/bench/export_onnx.py WEIGHTS.safetensors -o MODEL.onnx
       [--opset 13] [--size S] [--dynamic-hw] """

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden"))
import torch_unet as tu  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description="export colorize U-Net weights to ONNX")
    p.add_argument("weights")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--opset", type=int, default=13)
    p.add_argument("--size", type=int, default=None,
                   help="height/width of the tracing input (default: a fixture's size, else 256)")
    p.add_argument("--dynamic-hw", action="store_true", help="also make height and width dynamic")
    a = p.parse_args(argv)
    if a.opset < 13:
        p.error("--opset must be >= 13")

    model, meta, _ = tu.load_unet(a.weights)
    model.eval()
    size = a.size or int(meta.get("fixture_size", "256"))
    x = torch.zeros(1, model.in_ch, size, size)
    axes = {0: "batch"}
    if a.dynamic_hw:
        axes.update({2: "height", 3: "width"})
    with torch.no_grad():
        torch.onnx.export(model, x, a.out, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": axes, "output": axes}, opset_version=a.opset,
                          do_constant_folding=True)
    try:
        import onnx  # optional: Debian's python3-onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        onnx.checker.check_model(onnx.load(a.out))
    print("export_onnx: %s -> %s (opset %d, ngf %s, depth %s, %s, %d bytes%s)"
          % (a.weights, a.out, a.opset, meta.get("ngf"), meta.get("depth"), meta.get("color_mode"),
             os.path.getsize(a.out), ", checked" if onnx is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
