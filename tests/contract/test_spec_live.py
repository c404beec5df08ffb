#!/usr/bin/env python3
"""test_spec_live.py: walks openapi.yaml and provokes, on a live `colorized`, every documented
(path, method, status) it can, checking each answer against the document.

For every response it checks: the status is the one the case provokes AND is documented for
that operation (404 / 405 use components.responses.NotFound / MethodNotAllowed, which the
spec applies to any unknown path / unsupported method); the Content-Type matches a documented
media type (parameters such as version=0.0.4 included); every header the document marks
required is present and validates against its schema; JSON bodies validate against their
schema; error bodies carry the expected `code` and the same request id as the X-Request-Id
header. Images must be of the requested format and of the upload's width and height.

With --admin-token (the main daemon's admin.token; it must have train.data_root holding the
datasets `photos` and `empty`, train.max_jobs = 2 and serve a depth-6 generator), the admin
API: 401 on every admin operation, bad bodies, a tiny training job followed to the end (job,
list, losses, stride, sample sheet), activation of its best checkpoint, 404/409/422 of
activation (the 422 by truncating a checkpoint under --state-dir), the 429 queue bound,
cancel and resume. 403 admin_disabled is checked on the overload daemon (no token), 409
training_disabled on a third daemon with a token and no data root.

Cases that need a specially configured daemon (503 queue_full, 504 deadline_exceeded, 503
shutting_down and /readyz draining) run on a second daemon this script starts itself when
given --colorized and --model (ref backend, one-image batches, a one-slot queue, a short
deadline). Whether the overload cases are hit depends on timing, so a status that could not
be provoked is reported as skipped, never as passed; every response that does come back must
still conform.

At the end every documented (path, method, status) that no case provoked is listed as skipped.
Last line: 'N passed, N failed, N skipped'. Exit status 1 when anything failed.

Usage: test_spec_live.py --spec openapi.yaml --url http://127.0.0.1:PORT --max-body BYTES
         [--jpeg FILE] [--colorized BIN --model WEIGHTS] [--admin-token T [--state-dir DIR]]
         [--verbose]
Needs PyYAML and jsonschema (the venv made by tests/contract/run.sh). No threads except the
concurrent requests of the overload case; no state outside a temp dir it removes.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import speclib  # noqa: E402
from speclib import Spec, content_type_matches, image_size, request  # noqa: E402

GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
METRIC_NAMES = [
    "colorize_http_requests_total", "colorize_http_request_duration_seconds", "colorize_queue_depth",
    "colorize_batch_size", "colorize_inference_seconds", "colorize_rejections_total",
    "colorize_http_request_bytes_total", "colorize_http_response_bytes_total", "colorize_model_info",
    "colorize_ready",
]


class Checker:
    def __init__(self, spec, verbose=False):
        self.spec = spec
        self.verbose = verbose
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.covered = set()  # (path, METHOD, status string)
        self.lock = threading.Lock()

    # ------------------------------------------------------------ bookkeeping
    def result(self, name, problems):
        with self.lock:
            if problems:
                self.failed += 1
                print("FAIL %s" % name)
                for p in problems:
                    print("     - %s" % p)
            else:
                self.passed += 1
                if self.verbose:
                    print("ok   %s" % name)

    def skip(self, name, why):
        with self.lock:
            self.skipped += 1
            print("SKIP %s: %s" % (name, why))

    # ------------------------------------------------------------ the document's view
    def documented(self, path, method, status):
        """(response object, coverage key) the spec gives for this answer, or (None, reason)."""
        st = str(status)
        item = self.spec.doc["paths"].get(path)
        if item is None:
            if st == "404":
                return self.spec.deref(self.spec.doc["components"]["responses"]["NotFound"]), ("*", "*", "404")
            return None, "path %s is not documented and the answer is %s, not 404" % (path, st)
        op = item.get(method.lower())
        if op is None:
            if st == "405":
                return (self.spec.deref(self.spec.doc["components"]["responses"]["MethodNotAllowed"]),
                        (path, "*", "405"))
            return None, "%s %s is not documented and the answer is %s, not 405" % (method, path, st)
        responses = self.spec.responses(op)
        if st not in responses:
            return None, "status %s is not documented for %s %s (documented: %s)" % (
                st, method, path, ", ".join(sorted(responses)))
        return responses[st], (path, method, st)

    def conform(self, path, method, resp, want_status, codes=None, sent_id=None):
        """Problems (list of strings) with resp as an answer to METHOD path."""
        problems = []
        if isinstance(want_status, int):
            want_status = (want_status,)
        if resp.status not in want_status:
            ct = resp.header("Content-Type") or ""
            if ct.startswith(("application/json", "text/")):
                detail = resp.body[:300].decode("utf-8", "replace")
            else:
                detail = "%d bytes of %s" % (len(resp.body), ct or "no Content-Type")
            problems.append("status %d, expected %s; body: %s" % (
                resp.status, "/".join(map(str, want_status)), detail))
        doc, key = self.documented(path, method, resp.status)
        if doc is None:
            problems.append(key)
            return problems
        if not problems:
            with self.lock:
                self.covered.add(key)
        # headers
        for name, h in (doc.get("headers") or {}).items():
            h = self.spec.deref(h)
            value = resp.header(name)
            if value is None:
                if h.get("required"):
                    problems.append("required header %s missing" % name)
                continue
            schema = self.spec.deref(h.get("schema", {}))
            inst = value
            if schema.get("type") == "integer":
                try:
                    inst = int(value)
                except ValueError:
                    problems.append("header %s = %r is not an integer" % (name, value))
                    continue
            for e in self.spec.errors(h.get("schema", {}), inst):
                problems.append("header %s = %r: %s" % (name, value, e))
        rid = resp.header("X-Request-Id")
        if sent_id is not None and rid is not None:
            if speclib_valid_id(sent_id) and rid != sent_id:
                problems.append("X-Request-Id %r not echoed (got %r)" % (sent_id, rid))
            if not speclib_valid_id(sent_id) and not GENERATED_ID.match(rid or ""):
                problems.append("invalid client id %r should be replaced by 32 hex chars, got %r" % (sent_id, rid))
        if sent_id is None and rid is not None and not GENERATED_ID.match(rid):
            problems.append("generated X-Request-Id %r is not 32 lowercase hex characters" % rid)
        # content type and body
        content = doc.get("content") or {}
        ctype = resp.header("Content-Type")
        if not content:
            return problems
        match = [mt for mt in content if content_type_matches(mt, ctype)]
        if not match:
            problems.append("Content-Type %r is none of the documented %s" % (ctype, ", ".join(content)))
            return problems
        media = content[match[0]]
        mt = speclib.media_type(match[0])[0]
        if mt == "application/json":
            try:
                body = resp.json()
            except ValueError as e:
                problems.append("body is not JSON (%s): %r" % (e, resp.body[:200]))
                return problems
            problems += self.spec.errors(media.get("schema", {}), body)
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                err = body["error"]
                if codes is not None and err.get("code") not in codes:
                    problems.append("error code %r, expected %s" % (err.get("code"), "/".join(codes)))
                if rid is not None and err.get("request_id") != rid:
                    problems.append("error.request_id %r differs from X-Request-Id %r" % (err.get("request_id"), rid))
        elif mt in ("image/jpeg", "image/png"):
            fmt, w, h = image_size(resp.body)
            if fmt != mt.split("/")[1]:
                problems.append("Content-Type %s but the body is %s" % (mt, fmt or "neither JPEG nor PNG"))
        elif mt == "application/yaml":
            import yaml
            try:
                problems += self.spec.errors(media.get("schema", {}), yaml.safe_load(resp.body))
            except yaml.YAMLError as e:
                problems.append("body is not YAML: %s" % e)
        elif mt.startswith("text/"):
            try:
                resp.body.decode("utf-8")
            except UnicodeDecodeError:
                problems.append("%s body is not UTF-8" % mt)
        return problems


# Values for the path templates of the document (a well-formed id that names no job).
PATH_VALUES = {"id": "20240101-000000-abcdef", "step": "1"}


def concrete_path(template):
    return re.sub(r"\{([a-z_]+)\}", lambda m: PATH_VALUES.get(m.group(1), "x"), template)


def admin_operations(spec):
    """(path template, METHOD) of every operation that requires the bearerAuth scheme."""
    out = []
    for path, method, op in spec.operations():
        if any("bearerAuth" in req for req in (op.get("security") or spec.doc.get("security") or [])):
            out.append((path, method))
    return out


def speclib_valid_id(s):
    return bool(re.match(r"^[A-Za-z0-9._-]{1,128}$", s))


class Target:
    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host = u.hostname
        self.port = u.port or 80

    def send(self, method, path, headers=None, body=None, **kw):
        return request(self.host, self.port, method, path, headers, body, **kw)


# ---------------------------------------------------------------- the cases


def run_main_cases(ck, tgt, jpeg, max_body):
    png = speclib.make_png(80, 60)
    png_rgb = speclib.make_png(40, 30, color_type=2)
    _, jw, jh = image_size(jpeg)

    def case(name, method, path, want, codes=None, headers=None, body=None, image=None, sent_id=None,
             extra=None, **kw):
        headers = dict(headers or {})
        if sent_id is not None:
            headers["X-Request-Id"] = sent_id
        try:
            r = tgt.send(method, path, headers, body, **kw)
        except OSError as e:
            ck.result(name, ["request failed: %s" % e])
            return None
        bare = path.split("?")[0]
        problems = ck.conform(bare, method, r, want, codes, sent_id)
        if image is not None and r.status == 200:
            fmt, w, h = image_size(r.body)
            if (fmt, w, h) != image:
                problems.append("image %s %dx%d, expected %s %dx%d" % ((fmt, w, h) + image))
        if extra and not problems:
            problems += extra(r)
        ck.result(name, problems)
        return r

    def server_timing(r):
        st = r.header("Server-Timing") or ""
        names = [m.group(1) for m in re.finditer(r"([a-z]+);dur=", st)]
        out = []
        if names != ["decode", "queue", "infer", "encode"]:
            out.append("Server-Timing %r should name decode, queue, infer, encode in that order" % st)
        return out

    mp_type, mp_jpeg = speclib.multipart([("image", "old.jpg", "image/jpeg", jpeg)])
    # ---- 200
    case("POST /colorize multipart JPEG -> 200 image/jpeg", "POST", "/colorize", 200,
         headers={"Content-Type": mp_type}, body=mp_jpeg, image=("jpeg", jw, jh), extra=server_timing)
    case("POST /colorize raw image/png -> 200 image/png", "POST", "/colorize", 200,
         headers={"Content-Type": "image/png"}, body=png, image=("png", 80, 60), sent_id="contract-test.1")
    case("POST /colorize raw octet-stream JPEG ?format=png -> 200 image/png", "POST", "/colorize?format=png", 200,
         headers={"Content-Type": "application/octet-stream"}, body=jpeg, image=("png", jw, jh))
    case("POST /colorize raw image/jpeg ?format=jpeg&quality=1&render=512 -> 200", "POST",
         "/colorize?format=jpeg&quality=1&render=512", 200,
         headers={"Content-Type": "image/jpeg"}, body=jpeg, image=("jpeg", jw, jh))
    case("POST /colorize RGB PNG under a wrong Content-Type (sniffed) -> 200", "POST", "/colorize?format=jpeg", 200,
         headers={"Content-Type": "text/plain"}, body=png_rgb, image=("jpeg", 40, 30))
    mp_other_type, mp_other = speclib.multipart([("note", None, None, b"hello"), ("image", "a.png", "image/png", png)])
    case("POST /colorize multipart with other fields first -> 200", "POST", "/colorize?unknown=1", 200,
         headers={"Content-Type": mp_other_type}, body=mp_other, image=("png", 80, 60))
    case("POST /colorize invalid client X-Request-Id is replaced", "POST", "/colorize", 200,
         headers={"Content-Type": "image/png"}, body=png, sent_id="bad id with spaces")
    case("POST /colorize chunked upload -> 200", "POST", "/colorize", 200,
         headers={"Content-Type": "image/jpeg"}, body=jpeg, chunked=True, chunk_size=4096, image=("jpeg", jw, jh))

    # ---- GET endpoints
    case("GET /healthz -> 200", "GET", "/healthz", 200, sent_id="health.check")
    case("GET /readyz -> 200 ready", "GET", "/readyz", 200)

    def model_extra(r):
        m = r.json()
        out = []
        if m.get("backend") == "auto":
            out.append("backend should be the one in use, not auto")
        return out
    case("GET /model -> 200 ModelInfo", "GET", "/model", 200, extra=model_extra)

    def metrics_extra(r):
        text = r.body.decode("utf-8", "replace")
        return ["metric %s missing" % n for n in METRIC_NAMES if not re.search(r"^%s[ {_]" % n, text, re.M)] + \
               ["metric line %r is not in the text format" % ln for ln in text.splitlines()
                if ln and not ln.startswith("#") and not re.match(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? \S+( \d+)?$", ln)][:5]
    case("GET /metrics -> 200 Prometheus text", "GET", "/metrics", 200, extra=metrics_extra)

    def openapi_extra(r):
        import yaml
        try:
            served = yaml.safe_load(r.body)
        except yaml.YAMLError as e:
            return ["served document is not YAML: %s" % e]
        out = []
        if served.get("openapi") != ck.spec.doc.get("openapi"):
            out.append("served openapi version %r" % served.get("openapi"))
        if served != ck.spec.doc:
            out.append("served document differs from openapi.yaml in the source tree (rebuild?)")
        return out
    case("GET /openapi.yaml -> 200 this document", "GET", "/openapi.yaml", 200, extra=openapi_extra)

    # ---- 400
    mp_none_type, mp_none = speclib.multipart([("file", "old.jpg", "image/jpeg", jpeg)])
    case("400 missing_image: multipart without an image part", "POST", "/colorize", 400, ["missing_image"],
         headers={"Content-Type": mp_none_type}, body=mp_none, sent_id="err-400.a")
    case("400 missing_image: empty raw body", "POST", "/colorize", 400, ["missing_image"],
         headers={"Content-Type": "image/jpeg"}, body=b"")
    case("400 bad_multipart: no boundary", "POST", "/colorize", 400, ["bad_multipart"],
         headers={"Content-Type": "multipart/form-data"}, body=mp_jpeg)
    case("400 bad_multipart: unterminated", "POST", "/colorize", 400, ["bad_multipart"],
         headers={"Content-Type": mp_type}, body=mp_jpeg[:len(mp_jpeg) // 2])
    for q, pname in (("format=gif", "format"), ("quality=0", "quality"), ("quality=101", "quality"),
                     ("quality=abc", "quality"), ("render=300", "render"), ("render=128", "render"),
                     ("render=2048", "render"), ("render=", "render")):
        def names_param(r, pname=pname):
            msg = r.json()["error"]["message"]
            return [] if pname in msg else ["message %r does not name the parameter %s" % (msg, pname)]
        case("400 invalid_parameter: ?%s" % q, "POST", "/colorize?" + q, 400, ["invalid_parameter"],
             headers={"Content-Type": "image/png"}, body=png, extra=names_param)

    # ---- 404 / 405
    case("404 not_found: GET /nope", "GET", "/nope", 404, ["not_found"], sent_id="err-404")
    case("404 not_found: POST /colorize/extra", "POST", "/colorize/extra", 404, ["not_found"],
         headers={"Content-Type": "image/png"}, body=png)
    for path, item in ck.spec.doc["paths"].items():
        allowed = [m.upper() for m in item if m in ("get", "post", "put", "delete", "patch")]
        concrete = concrete_path(path)
        for method in sorted({"GET", "POST", "DELETE", "PUT"} - set(allowed)):
            def allow_ok(r, allowed=allowed):
                got = sorted(a.strip() for a in (r.header("Allow") or "").split(","))
                return [] if got == sorted(allowed) else ["Allow %r, expected %s" % (r.header("Allow"), allowed)]
            body = b"" if method != "GET" else None
            try:
                r = tgt.send(method, concrete, {}, body)
            except OSError as e:
                ck.result("405 method_not_allowed: %s %s" % (method, concrete), ["request failed: %s" % e])
                continue
            problems = ck.conform(path, method, r, 405, ["method_not_allowed"])
            if not problems:
                problems = allow_ok(r)
            ck.result("405 method_not_allowed: %s %s" % (method, concrete), problems)

    # ---- 413
    big = b"\xff\xd8\xff\xe0" + b"\0" * (max_body + 4096)
    case("413 payload_too_large: Content-Length above the limit", "POST", "/colorize", 413, ["payload_too_large"],
         headers={"Content-Type": "image/jpeg"}, body=big)
    case("413 payload_too_large: chunked body above the limit", "POST", "/colorize", 413, ["payload_too_large"],
         headers={"Content-Type": "image/jpeg"}, body=big, chunked=True)
    big_mp_type, big_mp = speclib.multipart([("image", "big.jpg", "image/jpeg", big)])
    case("413 payload_too_large: multipart above the limit", "POST", "/colorize", 413, ["payload_too_large"],
         headers={"Content-Type": big_mp_type}, body=big_mp)

    # ---- 415
    case("415 unsupported_media_type: GIF bytes", "POST", "/colorize", 415, ["unsupported_media_type"],
         headers={"Content-Type": "image/gif"}, body=b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + b"\0" * 32)
    case("415 unsupported_media_type: text in a multipart image part", "POST", "/colorize", 415,
         ["unsupported_media_type"], headers={"Content-Type": speclib.multipart([("image", "a.txt", "text/plain", b"hello, world")])[0]},
         body=speclib.multipart([("image", "a.txt", "text/plain", b"hello, world")])[1])

    # ---- 422
    case("422 truncated_image: first 40% of a JPEG", "POST", "/colorize", 422, ["truncated_image"],
         headers={"Content-Type": "image/jpeg"}, body=jpeg[:len(jpeg) * 2 // 5])
    case("422 truncated_image: first half of a PNG", "POST", "/colorize", 422, ["truncated_image"],
         headers={"Content-Type": "image/png"}, body=png[:len(png) // 2])
    case("422 corrupt_image: PNG with a bad IHDR CRC", "POST", "/colorize", 422, ["corrupt_image"],
         headers={"Content-Type": "image/png"}, body=speclib.corrupt_png_crc(png))
    garbled = bytearray(jpeg)
    for i in range(len(garbled) // 2, len(garbled) - 2, 7):
        garbled[i] = 0xFF if garbled[i] != 0xFF else 0x00
    case("422 corrupt_image: JPEG with a garbled scan", "POST", "/colorize", 422, ["corrupt_image", "truncated_image"],
         headers={"Content-Type": "image/jpeg"}, body=bytes(garbled))
    case("422 too_many_pixels: PNG header 60000x60000", "POST", "/colorize", 422, ["too_many_pixels"],
         headers={"Content-Type": "image/png"}, body=speclib.make_png(8, 8, ihdr_size=(60000, 60000)))
    case("422 too_many_pixels: JPEG header 65000x65000", "POST", "/colorize", 422, ["too_many_pixels"],
         headers={"Content-Type": "image/jpeg"}, body=speclib.jpeg_with_size(jpeg, 65000, 65000))
    case("422 empty_image: JPEG header 0x16", "POST", "/colorize", 422, ["empty_image"],
         headers={"Content-Type": "image/jpeg"}, body=speclib.jpeg_with_size(jpeg, 0, 16))
    # PNG forbids a zero width in IHDR: the decoder calls that header corrupt, not empty.
    case("422 corrupt_image: PNG header 0x16", "POST", "/colorize", 422, ["corrupt_image", "empty_image"],
         headers={"Content-Type": "image/png"}, body=speclib.make_png(8, 8, ihdr_size=(0, 16)))
    case("200 GET /healthz ignores query parameters; a 129-character id is replaced", "GET", "/healthz?x=1", 200,
         sent_id="a" * 129)


# ---------------------------------------------------------------- the admin API


def run_admin_cases(ck, tgt, token, state_dir):
    """Training jobs and model activation on the main daemon (which has admin.token,
    train.data_root with the datasets `photos` and `empty`, train.max_jobs = 2 and small
    train.max_* limits, and serves a depth-6 generator so that a 64 px job's checkpoints can be
    activated)."""
    auth = {"Authorization": "Bearer " + token}
    json_hdr = dict(auth, **{"Content-Type": "application/json"})

    def send(method, path, body=None, headers=None):
        try:
            return tgt.send(method, path, json_hdr if headers is None else headers, body)
        except OSError as e:
            return e

    def case(name, method, path, template, want, codes=None, body=None, headers=None, extra=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        r = send(method, path, body, headers)
        if isinstance(r, Exception):
            ck.result(name, ["request failed: %s" % r])
            return None
        problems = ck.conform(template, method, r, want, codes)
        if extra and not problems:
            problems += extra(r)
        ck.result(name, problems)
        return r

    def job(jid):
        r = send("GET", "/train/" + jid)
        return r.json() if not isinstance(r, Exception) and r.status == 200 else {}

    def wait(jid, states, timeout):
        end = time.time() + timeout
        j = {}
        while time.time() < end:
            j = job(jid)
            if j.get("status") in states:
                return j
            time.sleep(0.2)
        return j

    # 0. jobs that schemathesis started: cancel them, so that this run's jobs do not queue
    r = send("GET", "/train")
    active = [] if isinstance(r, Exception) or r.status != 200 else \
        [j["id"] for j in r.json().get("jobs", []) if j.get("status") in ("queued", "running")]
    for jid in active:
        send("DELETE", "/train/" + jid)
    for jid in active:
        wait(jid, ("cancelled", "succeeded", "failed"), 60)
    print("note: %d job(s) left queued/running by schemathesis were cancelled" % len(active))

    # 1. authentication, for every admin operation
    for template, method in admin_operations(ck.spec):
        path = concrete_path(template)
        body = b"{}" if method == "POST" else None
        case("401 unauthorized: %s %s without a token" % (method, template), method, path, template, 401,
             ["unauthorized"], body=body, headers={"Content-Type": "application/json"})
    case("401 unauthorized: GET /train with another token", "GET", "/train", "/train", 401, ["unauthorized"],
         headers={"Authorization": "Bearer not-the-token"})

    # 2. bad bodies
    case("POST /train invalid JSON -> 400 invalid_json", "POST", "/train", "/train", 400, ["invalid_json"],
         body=b'{"dataset":')
    case("POST /train a JSON array -> 400 invalid_json", "POST", "/train", "/train", 400, ["invalid_json"],
         body=b"[1]")
    case("POST /train unknown field -> 400 invalid_field", "POST", "/train", "/train", 400, ["invalid_field"],
         body={"dataset": "photos", "steps": 2, "bogus": 1})
    case("POST /train steps and epochs -> 400 invalid_field", "POST", "/train", "/train", 400, ["invalid_field"],
         body={"dataset": "photos", "steps": 2, "epochs": 1})
    case("POST /train dataset ../x -> 400 invalid_field", "POST", "/train", "/train", 400, ["invalid_field"],
         body={"dataset": "../x", "steps": 2})
    big = b'{"dataset":"photos","steps":2,"pad":"' + b"x" * 70000 + b'"}'
    case("POST /train 70 kB body -> 413 payload_too_large", "POST", "/train", "/train", 413, ["payload_too_large"],
         body=big)
    case("POST /train missing dataset -> 404 dataset_not_found", "POST", "/train", "/train", 404,
         ["dataset_not_found"], body={"dataset": "nope", "steps": 2, "image_size": 64})
    case("POST /train empty dataset -> 422 empty_dataset", "POST", "/train", "/train", 422, ["empty_dataset"],
         body={"dataset": "empty", "steps": 2, "image_size": 64})
    case("POST /train init_job unknown -> 404", "POST", "/train", "/train", 404,
         ["job_not_found", "checkpoint_not_found"],
         body={"dataset": "photos", "steps": 2, "image_size": 64, "init": "checkpoint",
               "init_job": PATH_VALUES["id"]})
    case("POST /model invalid field -> 400 invalid_field", "POST", "/model", "/model", 400, ["invalid_field"],
         body={"job": PATH_VALUES["id"], "step": "worst"})
    case("POST /model 70 kB body -> 413 payload_too_large", "POST", "/model", "/model", 413, ["payload_too_large"],
         body=big)
    case("POST /model unknown job -> 404 job_not_found", "POST", "/model", "/model", 404, ["job_not_found"],
         body={"job": PATH_VALUES["id"]})
    for template in ("/train/{id}", "/train/{id}/losses", "/train/{id}/samples/{step}.png"):
        case("GET %s unknown job -> 404" % template, "GET", concrete_path(template), template, 404,
             ["job_not_found"])
    case("DELETE /train/{id} unknown job -> 404", "DELETE", concrete_path("/train/{id}"), "/train/{id}", 404,
         ["job_not_found"])
    case("POST /train/{id}/resume unknown job -> 404", "POST", concrete_path("/train/{id}/resume"),
         "/train/{id}/resume", 404, ["job_not_found"], body=b"")

    # 3. a tiny job, run to the end
    def location_ok(r):
        j = r.json()
        out = []
        if r.header("Location") != "/train/%s" % j.get("id"):
            out.append("Location %r, job id %r" % (r.header("Location"), j.get("id")))
        if j.get("status") != "queued":
            out.append("status %r in the 202 body, expected queued" % j.get("status"))
        return out
    tiny = {"dataset": "photos", "steps": 6, "image_size": 64, "batch_size": 1, "ngf": 4,
            "validate_every": 2, "checkpoint_every": 3, "seed": 1}
    r = case("POST /train tiny job -> 202 + Location", "POST", "/train", "/train", 202, body=tiny, extra=location_ok)
    jid = r.json().get("id") if r is not None and r.status == 202 else None
    if jid is None:
        ck.skip("admin: the rest of the job cases", "no job was accepted")
        return
    j = wait(jid, ("succeeded", "failed", "cancelled", "interrupted"), 120)
    case("GET /train/{id} -> 200 job (%s)" % j.get("status"), "GET", "/train/" + jid, "/train/{id}", 200,
         extra=lambda r: [] if r.json().get("status") == "succeeded" else
         ["tiny job ended %r (%r), expected succeeded" % (r.json().get("status"), r.json().get("error"))])
    case("GET /train -> 200 job list", "GET", "/train", "/train", 200,
         extra=lambda r: [] if any(x.get("id") == jid for x in r.json().get("jobs", [])) else ["job not listed"])
    case("GET /train/{id}/losses -> 200", "GET", "/train/%s/losses" % jid, "/train/{id}/losses", 200,
         extra=lambda r: [] if len(r.json().get("losses", [])) == 6 else
         ["%d loss records, expected 6" % len(r.json().get("losses", []))])
    case("GET /train/{id}/losses?stride=4 -> 200", "GET", "/train/%s/losses?stride=4" % jid,
         "/train/{id}/losses", 200,
         extra=lambda r: [] if [x.get("step") for x in r.json().get("losses", [])] == [1, 5] else
         ["stride 4 kept steps %s, expected [1, 5]" % [x.get("step") for x in r.json().get("losses", [])]])
    case("GET /train/{id}/losses?stride=0 -> 400 invalid_parameter", "GET", "/train/%s/losses?stride=0" % jid,
         "/train/{id}/losses", 400, ["invalid_parameter"])
    samples = j.get("samples") or []
    if samples:
        case("GET /train/{id}/samples/{step}.png -> 200 PNG", "GET", "/train/%s/samples/%d.png" % (jid, samples[0]),
             "/train/{id}/samples/{step}.png", 200)
    else:
        ck.result("tiny job lists sample sheets", ["samples is empty: %r" % j])
    case("GET /train/{id}/samples/{step}.png no such sheet -> 404 not_found", "GET",
         "/train/%s/samples/99999.png" % jid, "/train/{id}/samples/{step}.png", 404, ["not_found"])
    case("DELETE a succeeded job -> 409 job_finished", "DELETE", "/train/" + jid, "/train/{id}", 409,
         ["job_finished"])
    case("POST resume on a succeeded job -> 409 job_not_resumable", "POST", "/train/%s/resume" % jid,
         "/train/{id}/resume", 409, ["job_not_resumable"], body=b"")

    # 4. activation
    def source_ok(r):
        src = r.json().get("source") or {}
        return [] if src.get("kind") == "checkpoint" and src.get("job") == jid else ["source %r" % src]
    case("POST /model {job, step: best} -> 200 ModelInfo", "POST", "/model", "/model", 200,
         body={"job": jid, "step": "best"}, extra=source_ok)
    case("GET /model after activation -> 200 with source checkpoint", "GET", "/model", "/model", 200,
         extra=source_ok)
    case("POST /model no such step -> 404 checkpoint_not_found", "POST", "/model", "/model", 404,
         ["checkpoint_not_found"], body={"job": jid, "step": 99999})
    r7 = send("POST", "/train", json.dumps({"dataset": "photos", "steps": 1, "image_size": 128, "batch_size": 1,
                                            "ngf": 4, "checkpoint_every": 0, "validate_every": 0}).encode())
    if not isinstance(r7, Exception) and r7.status == 202:
        j7 = wait(r7.json()["id"], ("succeeded", "failed", "cancelled"), 120)
        case("POST /model depth-7 checkpoint on a depth-6 model -> 409 incompatible_model", "POST", "/model",
             "/model", 409, ["incompatible_model"], body={"job": j7.get("id"), "step": "latest"})
    else:
        ck.skip("409 incompatible_model", "a 128 px job was not accepted (%s)" %
                (r7 if isinstance(r7, Exception) else r7.status))
    cks = [c["step"] for c in (j.get("checkpoints") or [])]
    if cks and state_dir:
        f = os.path.join(state_dir, "jobs", jid, "run", "checkpoints", "step_%d.safetensors" % cks[0])
        try:
            data = open(f, "rb").read()
            open(f, "wb").write(data[:len(data) // 2])
            case("POST /model truncated checkpoint -> 422 bad_weights", "POST", "/model", "/model", 422,
                 ["bad_weights"], body={"job": jid, "step": cks[0]})
        except OSError as e:
            ck.skip("422 bad_weights", "cannot truncate %s: %s" % (f, e))

    # 5. the queue bound, cancel, resume
    # A: submitted and cancelled at once (resumable); B, C fill the queue (train.max_jobs = 2).
    slow = {"dataset": "photos", "steps": 20, "image_size": 128, "batch_size": 1, "ngf": 64,
            "checkpoint_every": 0, "validate_every": 0}
    ids = []
    for i in range(3):
        r = send("POST", "/train", json.dumps(dict(slow, seed=i)).encode())
        if not isinstance(r, Exception) and r.status == 202:
            ids.append(r.json()["id"])
        if i == 0 and ids:
            case("DELETE a queued/running job -> 202 (A)", "DELETE", "/train/" + ids[0], "/train/{id}", 202)
            wait(ids[0], ("cancelled", "succeeded", "failed"), 60)
    case("POST /train beyond train.max_jobs -> 429 too_many_jobs", "POST", "/train", "/train", 429,
         ["too_many_jobs"], body=slow)
    if len(ids) == 3:
        case("POST resume beyond train.max_jobs -> 429 too_many_jobs", "POST", "/train/%s/resume" % ids[0],
             "/train/{id}/resume", 429, ["too_many_jobs"], body=b"")
        case("POST resume on a queued/running job -> 409 job_not_resumable", "POST", "/train/%s/resume" % ids[2],
             "/train/{id}/resume", 409, ["job_not_resumable"], body=b"")
    for i, x in enumerate(ids[1:]):
        case("DELETE a queued/running job -> 202 (%s)" % "BC"[i], "DELETE", "/train/" + x, "/train/{id}", 202)
    for x in ids[1:]:
        wait(x, ("cancelled", "succeeded", "failed"), 60)
    if ids:
        case("POST resume on a cancelled job -> 202", "POST", "/train/%s/resume" % ids[0], "/train/{id}/resume",
             202, body=b"", extra=lambda r: [] if r.json().get("status") == "queued" else
             ["status %r after resume" % r.json().get("status")])
        send("DELETE", "/train/" + ids[0])
        wait(ids[0], ("cancelled", "succeeded", "failed"), 60)


def run_disabled_cases(ck, tgt, what, token=None):
    """403 admin_disabled (no token configured) or 409 training_disabled (no data root)."""
    if token is None:
        for template, method in admin_operations(ck.spec):
            body = b"{}" if method == "POST" else None
            try:
                r = tgt.send(method, concrete_path(template), {"Authorization": "Bearer x",
                                                              "Content-Type": "application/json"}, body)
            except OSError as e:
                ck.result("403 admin_disabled: %s %s" % (method, template), ["request failed: %s" % e])
                continue
            ck.result("403 admin_disabled (%s): %s %s" % (what, method, template),
                      ck.conform(template, method, r, 403, ["admin_disabled"]))
    else:
        r = tgt.send("POST", "/train", {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
                     b'{"dataset": "photos", "steps": 2}')
        ck.result("409 training_disabled (%s): POST /train" % what,
                  ck.conform("/train", "POST", r, 409, ["training_disabled"]))


# ---------------------------------------------------------------- the overload daemon


def start_daemon(binary, model, tmp, extra):
    port_file = os.path.join(tmp, "port")
    log = open(os.path.join(tmp, "daemon.log"), "wb")
    argv = [binary, "--listen", "127.0.0.1:0", "--port-file", port_file, "--model", model] + extra
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("daemon exited with %d; log:\n%s" % (
                proc.returncode, open(os.path.join(tmp, "daemon.log"), errors="replace").read()[-3000:]))
        try:
            port = int(open(port_file).read().strip())
            break
        except (OSError, ValueError):
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("daemon wrote no port file in 60 s")
    tgt = Target("http://127.0.0.1:%d" % port)
    while time.time() < deadline:
        try:
            if tgt.send("GET", "/readyz", timeout=5).status == 200:
                return proc, tgt
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("daemon not ready in 60 s")


def run_notrain_cases(ck, binary, model, token):
    """A daemon with an admin token and no train.data_root: POST /train is 409 training_disabled."""
    tmp = tempfile.mkdtemp(prefix="cz-contract-")
    proc = None
    try:
        proc, tgt = start_daemon(binary, model, tmp, [
            "--backend", "ref", "--threads", "1", "--set", "admin.token=" + token,
            "--set", "train.state_dir=" + os.path.join(tmp, "state")])
        run_disabled_cases(ck, tgt, "no train.data_root", token)
    except (RuntimeError, OSError) as e:
        ck.result("no-data-root daemon", [str(e)])
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def run_overload_cases(ck, binary, model, jpeg):
    tmp = tempfile.mkdtemp(prefix="cz-contract-")
    proc = None
    try:
        # ref backend + largest render + one image per batch + a one-slot queue: a forward pass
        # takes long enough that concurrent requests overflow the queue or outlive the deadline.
        proc, tgt = start_daemon(binary, model, tmp, [
            "--backend", "ref", "--max-batch", "1", "--threads", "1",
            "--set", "server.max_queue=1", "--set", "server.queue_high_water=1",
            "--set", "server.request_deadline_ms=100", "--set", "server.max_wait_us=0",
            "--set", "server.drain_timeout_s=60"])
        run_disabled_cases(ck, tgt, "no admin.token")
        path = "/colorize?render=1024"
        t0 = time.time()
        first = tgt.send("POST", path, {"Content-Type": "image/jpeg"}, jpeg)
        one = time.time() - t0
        ck.result("overload daemon: one request alone -> 200 (%.2f s)" % one,
                  ck.conform("/colorize", "POST", first, 200))

        results = []

        def fire():
            try:
                results.append(tgt.send("POST", path, {"Content-Type": "image/jpeg"}, jpeg, timeout=120))
            except OSError as e:
                results.append(e)
        threads = [threading.Thread(target=fire) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(one / 3)
        try:  # the queue is at its high-water mark now: readiness should say so
            rz = tgt.send("GET", "/readyz", timeout=10)
            probs = ck.conform("/readyz", "GET", rz, (200, 503))
            if rz.status == 503 and not probs and rz.json().get("reason") != "queue_high":
                probs.append("reason %r during overload, expected queue_high" % rz.json().get("reason"))
            ck.result("overload: GET /readyz -> %d %s" % (rz.status, rz.body[:60].decode("utf-8", "replace")), probs)
        except OSError as e:
            ck.result("overload: GET /readyz", ["request failed: %s" % e])
        for t in threads:
            t.join()
        seen = {}
        for r in results:
            if isinstance(r, Exception):
                ck.result("overload: concurrent request", ["request failed: %s" % r])
                continue
            seen.setdefault(r.status, []).append(r)
        print("note: 6 concurrent requests on the overload daemon: %s" % ", ".join(
            "%d x %d" % (len(v), k) for k, v in sorted(seen.items())))
        for st, rs in sorted(seen.items()):
            for i, r in enumerate(rs):
                codes = {503: ["queue_full"], 504: ["deadline_exceeded"]}.get(st)
                probs = ck.conform("/colorize", "POST", r, (200, 503, 504), codes)
                if st == 503 and r.header("Retry-After") != "1":
                    probs.append("Retry-After %r, expected 1 with queue_full" % r.header("Retry-After"))
                ck.result("overload: concurrent request #%d -> %d" % (i + 1, st), probs)
        if 503 not in seen:
            print("note: no request was refused with 503 queue_full (a forward pass took %.2f s)" % one)
        if 504 not in seen:
            print("note: no request outlived the 100 ms deadline in the queue (504)")

        # drain: SIGTERM while a request runs, then readiness and new work are refused.
        inflight = []
        t = threading.Thread(target=lambda: inflight.append(
            tgt.send("POST", path, {"Content-Type": "image/jpeg"}, jpeg, timeout=120)))
        t.start()
        time.sleep(min(0.3, one / 4))
        proc.send_signal(signal.SIGTERM)
        time.sleep(min(0.1, one / 8))
        drained = one > 0.2  # otherwise the daemon may be gone before we ask
        try:
            ready = tgt.send("GET", "/readyz", timeout=10)
            probs = ck.conform("/readyz", "GET", ready, 503)
            if not probs and ready.json().get("reason") != "draining":
                probs.append("reason %r, expected draining" % ready.json().get("reason"))
            ck.result("draining: GET /readyz -> 503 draining", probs)
            late = tgt.send("POST", "/colorize", {"Content-Type": "image/jpeg"}, jpeg, timeout=10)
            probs = ck.conform("/colorize", "POST", late, 503, ["shutting_down"])
            if late.header("Retry-After") != "5":
                probs.append("Retry-After %r, expected 5 with shutting_down" % late.header("Retry-After"))
            ck.result("draining: POST /colorize -> 503 shutting_down", probs)
        except OSError as e:
            if drained:
                ck.result("draining: daemon still answers while a request is in flight", ["%s" % e])
            else:
                ck.skip("draining", "the in-flight request finished before we asked (%s)" % e)
        t.join()
        if inflight:
            ck.result("draining: the in-flight request still completes -> 200",
                      ck.conform("/colorize", "POST", inflight[0], 200))
        try:
            rc = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "still running after 90 s"
        ck.result("draining: daemon exits 0 after SIGTERM", [] if rc == 0 else ["exit status %s" % rc])
        proc = None
    except (RuntimeError, OSError) as e:
        ck.result("overload daemon", [str(e)])
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if ck.failed and os.path.exists(os.path.join(tmp, "daemon.log")):
            print("overload daemon log (tail):")
            print(open(os.path.join(tmp, "daemon.log"), errors="replace").read()[-2000:])
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- main


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default=os.path.join(root, "openapi.yaml"))
    ap.add_argument("--url", required=True)
    ap.add_argument("--max-body", type=int, required=True, help="the daemon's server.max_body_bytes")
    ap.add_argument("--jpeg", default=os.path.join(root, "tests", "data", "old_w_scratch_c.jpg"))
    ap.add_argument("--colorized", help="binary, to start the overload/drain daemon")
    ap.add_argument("--model", help="weights for the overload/drain daemon")
    ap.add_argument("--admin-token", help="the main daemon's admin.token: run the admin API cases")
    ap.add_argument("--state-dir", help="the main daemon's train.state_dir (to corrupt a checkpoint)")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args()

    spec = Spec(args.spec)
    ck = Checker(spec, args.verbose)
    jpeg = open(args.jpeg, "rb").read()
    t0 = time.time()
    run_main_cases(ck, Target(args.url), jpeg, args.max_body)
    if args.admin_token:
        run_admin_cases(ck, Target(args.url), args.admin_token, args.state_dir)
    else:
        print("note: no --admin-token: admin API cases not run")
    if args.colorized and args.model:
        run_overload_cases(ck, args.colorized, args.model, jpeg)
        if args.admin_token:
            run_notrain_cases(ck, args.colorized, args.model, args.admin_token)
    else:
        print("note: no --colorized/--model: 503/504 and drain cases not run")

    # coverage of the document
    documented = set()
    for path, method, op in spec.operations():
        for code in spec.responses(op):
            documented.add((path, method, code))
    documented.add(("*", "*", "404"))
    for path in spec.doc["paths"]:
        documented.add((path, "*", "405"))
    missing = sorted(documented - ck.covered)
    for key in missing:
        ck.skip("%s %s %s" % key, "documented, not provoked by any case")
    print("covered %d of %d documented (path, method, status) in %.1f s" % (
        len(documented & ck.covered), len(documented), time.time() - t0))
    print("%d passed, %d failed, %d skipped" % (ck.passed, ck.failed, ck.skipped))
    return 1 if ck.failed else 0


if __name__ == "__main__":
    sys.exit(main())
