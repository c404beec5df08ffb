"""speclib.py: helpers shared by the contract checks in tests/contract/.

Owns: loading openapi.yaml, resolving its local $refs, validating JSON against the schemas it
defines (JSON Schema 2020-12, which OpenAPI 3.1 uses), a raw HTTP/1.1 client on plain
sockets (so that tests control every byte: bodies larger than the server will read, chunked
uploads, broken multipart), and small image fixtures built in pure Python.
No threads of its own; every function is safe to call from several threads.
Tested by using it: check_spec.py and test_spec_live.py (run by tests/contract/run.sh).
"""
import http.client
import socket
import struct
import zlib

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_URI = "urn:colorize:openapi"


class Spec:
    """openapi.yaml, with $ref resolution and schema validation."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.raw = f.read()
        self.doc = yaml.safe_load(self.raw)
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(SPEC_URI, resource)

    def deref(self, node):
        """Follows local $refs ("#/components/...") until a node without one is reached."""
        seen = 0
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise ValueError("only local $refs are supported: " + ref)
            node = self.doc
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            seen += 1
            if seen > 32:
                raise ValueError("$ref loop at " + ref)
        return node

    def validator(self, schema):
        """A 2020-12 validator whose $refs into the document resolve (schema may hold refs)."""
        if isinstance(schema, dict) and "$ref" in schema and schema["$ref"].startswith("#/"):
            schema = {"$ref": SPEC_URI + schema["$ref"]}
        else:
            schema = _rebase_refs(schema)
        return Draft202012Validator(schema, registry=self.registry)

    def errors(self, schema, instance):
        """List of human-readable schema violations ([] when the instance conforms)."""
        out = []
        for e in self.validator(schema).iter_errors(instance):
            where = "/".join(str(p) for p in e.absolute_path) or "(root)"
            out.append("%s: %s" % (where, e.message))
        return out

    def operations(self):
        """Yields (path, method, operation) for every documented operation."""
        for path, item in self.doc["paths"].items():
            for method in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
                if method in item:
                    yield path, method.upper(), item[method]

    def responses(self, op):
        """{status string: resolved response object} of one operation."""
        return {code: self.deref(r) for code, r in op.get("responses", {}).items()}


def _rebase_refs(node):
    if isinstance(node, dict):
        return {k: (SPEC_URI + v if k == "$ref" and isinstance(v, str) and v.startswith("#/") else _rebase_refs(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_rebase_refs(v) for v in node]
    return node


def media_type(value):
    """'Text/Plain; version=0.0.4; charset=utf-8' -> ('text/plain', {'version': '0.0.4', 'charset': 'utf-8'})."""
    if value is None:
        return None, {}
    parts = [p.strip() for p in value.split(";")]
    params = {}
    for p in parts[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            params[k.strip().lower()] = v.strip().strip('"')
    return parts[0].lower(), params


def content_type_matches(documented, received):
    """A received Content-Type matches a documented media type when the type/subtype agree and
    every parameter the document names has the same value (extra ones, e.g. charset, are fine)."""
    dt, dp = media_type(documented)
    rt, rp = media_type(received)
    if rt is None:
        return False
    if dt != rt and not (dt.endswith("/*") and rt.startswith(dt[:-1])) and dt != "*/*":
        return False
    return all(rp.get(k) == v for k, v in dp.items())


# ---------------------------------------------------------------- raw HTTP client


class Response:
    def __init__(self, status, headers, body, note=""):
        self.status = status
        self.headers = headers  # {lower-case name: value} (last one wins)
        self.header_list = []   # [(name, value)] as received
        self.body = body
        self.note = note

    def header(self, name):
        return self.headers.get(name.lower())

    def json(self):
        import json
        return json.loads(self.body.decode("utf-8"))


def request(host, port, method, path, headers=None, body=None, chunked=False, chunk_size=65536,
            timeout=60.0):
    """Sends one request on a fresh connection and returns a Response.

    body: bytes or None. With chunked=True the body goes out with Transfer-Encoding: chunked.
    When the server answers before reading the whole body (413 on Content-Length) and closes
    its side, the send error is swallowed and the response is still read."""
    headers = dict(headers or {})
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s:%d" % (host, port), "Connection: close"]
    names = {k.lower() for k in headers}
    if body is not None and not chunked and "content-length" not in names:
        headers["Content-Length"] = str(len(body))
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
    for k, v in headers.items():
        lines.append("%s: %s" % (k, v))
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    sock = socket.create_connection((host, port), timeout=timeout)
    note = ""
    try:
        try:
            sock.sendall(head)
            if body is not None:
                if chunked:
                    for i in range(0, len(body), chunk_size):
                        piece = body[i:i + chunk_size]
                        sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                    sock.sendall(b"0\r\n\r\n")
                else:
                    for i in range(0, len(body), chunk_size):
                        sock.sendall(body[i:i + chunk_size])
        except (BrokenPipeError, ConnectionResetError) as e:
            note = "server closed while the body was being sent (%s)" % e.__class__.__name__
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        data = resp.read()
        r = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, note)
        r.header_list = resp.getheaders()
        return r
    finally:
        sock.close()


def multipart(fields, boundary="czContractBoundary7MA4YWxkTrZu0gW"):
    """fields: [(name, filename or None, content type or None, bytes)] -> (content type, body)."""
    out = []
    for name, filename, ctype, data in fields:
        out.append(b"--" + boundary.encode() + b"\r\n")
        disp = 'Content-Disposition: form-data; name="%s"' % name
        if filename:
            disp += '; filename="%s"' % filename
        out.append(disp.encode() + b"\r\n")
        if ctype:
            out.append(b"Content-Type: " + ctype.encode() + b"\r\n")
        out.append(b"\r\n" + data + b"\r\n")
    out.append(b"--" + boundary.encode() + b"--\r\n")
    return "multipart/form-data; boundary=" + boundary, b"".join(out)


# ---------------------------------------------------------------- images


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def make_png(width, height, color_type=0, header_only=False, ihdr_size=None):
    """An 8-bit PNG (color_type 0 gray, 2 RGB) with a smooth gradient. ihdr_size=(w, h) writes
    other dimensions into IHDR than the pixel data has (for header-only limit checks)."""
    w, h = ihdr_size or (width, height)
    sig = b"\x89PNG\r\n\x1a\n"
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
    if header_only:
        return sig + ihdr
    ch = 1 if color_type == 0 else 3
    rows = []
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            v = (x * 255 // max(1, width - 1) + y * 255 // max(1, height - 1)) // 2
            row += bytes([v, (v * 3) & 255, 255 - v][:ch])
        rows.append(bytes(row))
    idat = _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
    return sig + ihdr + idat + _png_chunk(b"IEND", b"")


def make_scene_png(width, height, seed=0):
    """An RGB PNG whose colours follow its structure (blue sky over green ground, a red disc
    placed by `seed`): a training image a tiny generator can learn something from."""
    cx = width * (0.3 + 0.4 * ((seed * 37) % 11) / 10.0)
    cy = height * (0.55 + 0.2 * ((seed * 17) % 7) / 6.0)
    rad2 = (min(width, height) * 0.15) ** 2
    rows = []
    for y in range(height):
        t = y / max(1, height - 1)
        row = bytearray([0])
        for x in range(width):
            if (x - cx) ** 2 + (y - cy) ** 2 < rad2:
                c = (220, 40, 30)
            elif t < 0.5:
                c = (int(60 + 100 * t), int(120 + 120 * t), 235)
            else:
                c = (40, int(150 - 60 * (t - 0.5)), 30)
            row += bytes(c)
        rows.append(bytes(row))
    sig = b"\x89PNG\r\n\x1a\n"
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    idat = _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
    return sig + ihdr + idat + _png_chunk(b"IEND", b"")


def corrupt_png_crc(png):
    """The same PNG with the IHDR CRC flipped."""
    b = bytearray(png)
    b[29] ^= 0xFF  # 8 signature + 4 length + 4 type + 13 data = 29: first CRC byte
    return bytes(b)


def jpeg_with_size(jpeg, width, height):
    """The same JPEG with its SOF header claiming width x height (pixel data unchanged)."""
    b = bytearray(jpeg)
    i = 2
    while i + 9 < len(b):
        if b[i] != 0xFF:
            raise ValueError("not at a JPEG marker")
        marker = b[i + 1]
        seglen = struct.unpack(">H", b[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", b, i + 5, height, width)
            return bytes(b)
        i += 2 + seglen
    raise ValueError("no SOF marker")


def image_size(data):
    """(format, width, height) of a PNG or JPEG, read from its header; (None, 0, 0) otherwise."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return "png", w, h
    if data[:3] == b"\xff\xd8\xff":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            seglen = struct.unpack(">H", data[i + 2:i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return "jpeg", w, h
            i += 2 + seglen
        return "jpeg", 0, 0
    return None, 0, 0
