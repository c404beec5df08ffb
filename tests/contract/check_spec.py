#!/usr/bin/env python3
"""check_spec.py: static checks of openapi.yaml, no daemon needed.

1. The document is valid OpenAPI 3.1 (openapi-spec-validator).
2. Every example (parameters, headers, request and response media types) validates against
   the schema it illustrates. The validator in 1 does not look at examples.
3. Every error response's schema narrows `code` to values of the ErrorCode enum, and that
   enum matches the error table of server/CONTRACT.md when that file is present.
4. Every response of every operation documents the X-Request-Id header as required.
5. The admin API (CONTRACT.md, "Training jobs and model activation"): every operation the
   contract lists there is documented with that method; every operation that requires the
   bearerAuth scheme documents 401 (with WWW-Authenticate) and 403; 202 of POST /train has
   Location, every 429 has Retry-After. The error codes the contract names in that section's
   prose ("404 job_not_found", ...) count as part of its error table for check 3.

Usage: check_spec.py [openapi.yaml] [CONTRACT.md]. Prints 'N passed, N failed' last; exit 1 on
any failure. Run by tests/contract/run.sh (in the venv that has the validator).
"""
import os
import re
import sys

from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speclib import Spec  # noqa: E402

passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL", what)


def examples_of(node, spec=None):
    out = []
    if "example" in node:
        out.append(("example", node["example"]))
    for name, ex in (node.get("examples") or {}).items():
        if spec is not None:
            ex = spec.deref(ex)  # components.examples
        if isinstance(ex, dict) and "value" in ex:
            out.append((name, ex["value"]))
    return out


# Words that follow a status number in CONTRACT.md's prose without being an error code.
PROSE_NOT_CODES = {"otherwise", "above", "below", "when", "for", "with"}


def prose_error_codes(text):
    """Error codes named in running text as '<4xx|5xx> code' (also '**403\n  admin_disabled**'
    and '404 job_not_found / checkpoint_not_found'), from the admin section on."""
    i = text.find("## Training jobs and model activation")
    if i < 0:
        return set()
    codes = set()
    for m in re.finditer(r"\b([45]\d\d)\s+\**([a-z][a-z_]*)((?:\s*/\s*[a-z][a-z_]*_[a-z_]+)*)", text[i:]):
        for c in [m.group(2)] + re.findall(r"[a-z][a-z_]+", m.group(3)):
            if c not in PROSE_NOT_CODES:
                codes.add(c)
    return codes


def contract_admin_operations(text):
    """(METHOD, openapi path) of the '### METHOD /path' headings of the admin section."""
    i = text.find("## Training jobs and model activation")
    ops = set()
    if i < 0:
        return ops
    for m in re.finditer(r"^### (GET|POST|DELETE|PUT) (/[^\s?]*)", text[i:], re.M):
        ops.add((m.group(1), m.group(2)))
    for m in re.finditer(r"^GET (/[a-z/]+) (?:stays|gains)", text[i:], re.M):
        ops.add(("GET", m.group(1)))
    return ops


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "openapi.yaml")
    contract = sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "server", "CONTRACT.md")

    doc, _ = read_from_filename(spec_path)
    try:
        validate(doc)
        check(True, "")
    except Exception as e:  # the validator raises its own exception types
        check(False, "openapi-spec-validator: %s" % e)
    check(doc.get("openapi", "").startswith("3.1"), "openapi version is 3.1.x")

    spec = Spec(spec_path)
    comps = spec.doc.get("components", {})

    # 2. examples against schemas
    def check_examples(where, node):
        node = spec.deref(node)
        schema = node.get("schema")
        for name, value in examples_of(node, spec):
            if schema is None:
                check(False, "%s example %s has no schema" % (where, name))
                continue
            if isinstance(value, str) and spec.deref(schema).get("format") == "binary":
                continue
            errs = spec.errors(schema, value)
            check(not errs, "%s example %s: %s" % (where, name, "; ".join(errs)))

    for pname, p in comps.get("parameters", {}).items():
        check_examples("parameter " + pname, p)
    for hname, h in comps.get("headers", {}).items():
        check_examples("header " + hname, h)
    for rname, r in comps.get("responses", {}).items():
        for mt, m in (r.get("content") or {}).items():
            check_examples("response %s %s" % (rname, mt), m)
    n_ops = 0
    for path, method, op in spec.operations():
        n_ops += 1
        for mt, m in ((spec.deref(op.get("requestBody", {})).get("content")) or {}).items():
            check_examples("%s %s request %s" % (method, path, mt), m)
        for code, resp in spec.responses(op).items():
            for mt, m in (resp.get("content") or {}).items():
                check_examples("%s %s %s %s" % (method, path, code, mt), m)
            # 4. X-Request-Id on every response
            h = (resp.get("headers") or {}).get("X-Request-Id")
            check(h is not None and spec.deref(h).get("required") is True,
                  "%s %s %s documents X-Request-Id as required" % (method, path, code))
            # every error status carries the error schema
            if code.startswith(("4", "5")) and not (path == "/readyz" and code == "503"):
                for mt, m in (resp.get("content") or {}).items():
                    s = spec.deref(m.get("schema", {}))
                    refs = [spec.deref(x) for x in s.get("allOf", [])]
                    check(mt == "application/json" and spec.deref(comps["schemas"]["Error"]) in refs,
                          "%s %s %s uses the Error schema as application/json" % (method, path, code))
    # 5. admin operations: auth responses and their headers
    schemes = comps.get("securitySchemes", {})
    check(schemes.get("bearerAuth", {}).get("type") == "http" and
          schemes.get("bearerAuth", {}).get("scheme") == "bearer",
          "components.securitySchemes.bearerAuth is http bearer")
    n_admin = 0
    for path, method, op in spec.operations():
        admin = any("bearerAuth" in req for req in (op.get("security") or spec.doc.get("security") or []))
        responses = spec.responses(op)
        if admin:
            n_admin += 1
            check("401" in responses and "WWW-Authenticate" in (responses["401"].get("headers") or {}),
                  "%s %s (admin) documents 401 with WWW-Authenticate" % (method, path))
            check("403" in responses, "%s %s (admin) documents 403 admin_disabled" % (method, path))
        else:
            check("401" not in responses and "403" not in responses,
                  "%s %s (public) documents no 401/403" % (method, path))
        if "429" in responses:
            check("Retry-After" in (responses["429"].get("headers") or {}),
                  "%s %s 429 documents Retry-After" % (method, path))
    check(n_admin >= 8, "at least the eight admin operations are documented (%d)" % n_admin)
    post_train = (spec.doc["paths"].get("/train") or {}).get("post")
    check(post_train is not None and "Location" in (spec.responses(post_train).get("202", {}).get("headers") or {}),
          "POST /train 202 documents Location")

    for rname in ("NotFound", "MethodNotAllowed"):
        check(rname in comps.get("responses", {}), "components.responses.%s exists" % rname)
    check(n_ops >= 6, "at least the six CONTRACT endpoints are documented (%d)" % n_ops)

    # 3. error codes vs CONTRACT.md
    enum = set(comps["schemas"]["ErrorCode"]["enum"])
    if os.path.exists(contract):
        text = open(contract, encoding="utf-8").read()
        table = set()
        for line in text.splitlines():
            m = re.match(r"\|\s*(\d{3})\s*\|\s*([a-z_ /]+?)\s*\|", line)
            if m:
                table.update(c.strip() for c in m.group(2).split("/"))
        table |= prose_error_codes(text)
        check(table == enum, "ErrorCode enum equals CONTRACT.md's table (only in spec: %s; only in CONTRACT: %s)"
              % (sorted(enum - table), sorted(table - enum)))
        for path in re.findall(r"\| (?:GET|POST) (/[a-z._]+) \|", text):
            check(path in spec.doc["paths"], "CONTRACT endpoint %s is documented" % path)
        for method, path in sorted(contract_admin_operations(text)):
            item = spec.doc["paths"].get(path) or {}
            check(method.lower() in item, "CONTRACT admin operation %s %s is documented" % (method, path))
    else:
        print("note: %s not found; ErrorCode enum not compared" % contract)

    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
