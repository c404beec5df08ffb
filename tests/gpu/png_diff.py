#!/usr/bin/env python3
"""png_diff.py: compares PNG files pixel by pixel for tests/gpu/check.sh, with nothing but the
standard library (zlib, struct) and numpy, so it runs on the GPU machine as it comes.

  png_diff.py A.png B.png [--max-abs N] [--mean-abs X]   exit 0 when A and B have one size and
                                                         max |A-B| <= N and mean |A-B| <= X
  png_diff.py --same A.png B.png                         exit 0 when the pixels are identical

Decodes 8-bit gray/gray-alpha/RGB/RGBA, non-interlaced PNGs (what the daemon writes); anything
else is an error. Prints one line with the figures. Single-threaded, no state."""
import struct
import sys
import zlib

import numpy as np

CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def decode(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, idat, hdr = 8, [], None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    w, h, depth, ctype, _, _, interlace = hdr
    if depth != 8 or ctype not in CHANNELS or interlace:
        raise ValueError(f"{path}: unsupported PNG (depth {depth}, type {ctype}, interlace {interlace})")
    ch = CHANNELS[ctype]
    raw = zlib.decompress(b"".join(idat))
    stride = w * ch
    out = np.zeros((h, stride), dtype=np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(np.int32)
        cur = np.zeros(stride, dtype=np.int32)
        if f == 0:
            cur = line.copy()
        elif f == 2:
            cur = (line + prev) & 255
        else:  # sub, average and paeth depend on the left neighbour: go pixel by pixel
            for i in range(stride):
                a = cur[i - ch] if i >= ch else 0
                b = prev[i]
                c = prev[i - ch] if i >= ch else 0
                if f == 1:
                    p = a
                elif f == 3:
                    p = (a + b) >> 1
                elif f == 4:
                    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                    p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                else:
                    raise ValueError(f"{path}: bad filter {f}")
                cur[i] = (line[i] + p) & 255
        out[y] = cur
        prev = cur
    return out.reshape(h, w, ch)


def main(argv):
    same = "--same" in argv
    args = [a for a in argv if a != "--same"]
    max_abs, mean_abs = 0, 0.0
    if "--max-abs" in args:
        i = args.index("--max-abs")
        max_abs = int(args[i + 1])
        del args[i:i + 2]
    if "--mean-abs" in args:
        i = args.index("--mean-abs")
        mean_abs = float(args[i + 1])
        del args[i:i + 2]
    a, b = decode(args[0]), decode(args[1])
    if a.shape != b.shape:
        print(f"shape {a.shape} vs {b.shape}")
        return 1
    d = np.abs(a - b)
    mx, mean = int(d.max()), float(d.mean())
    print(f"{a.shape[1]}x{a.shape[0]}: max |diff| {mx}, mean |diff| {mean:.4f}, differing values {int((d > 0).sum())}")
    if same:
        return 0 if mx == 0 else 1
    return 0 if mx <= max_abs and mean <= mean_abs else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
