#!/usr/bin/env bash
# nginx-test.sh [BUILD_DIR]: drives colorized THROUGH docker/nginx.conf on loopback.
# Installs nginx (Debian package) when missing, renders a test copy of docker/nginx.conf
# (upstream -> the daemon's ephemeral port, listen -> 127.0.0.1:<free port>, pid, logs and
# temp paths -> a temp dir, `user root;` when run as root, and one test-only realip rule so a
# request can pretend to come from a public address), starts the daemon (tiny weights from
# `colorize init --ngf 4`, the shipped config/colorized.json) and nginx (daemon off, in the background), runs
# the checks below with curl, then stops nginx and the daemon (SIGTERM; the daemon must exit 0).
# Checks: nginx.conf's limits agree with config/colorized.json; POST /colorize multipart and
# raw -> 200 with an image; X-Request-Id echoed when sent, generated when not or when invalid,
# and the same id in nginx's and the daemon's logs; a body just under the limit reaches the
# daemon; one above it -> 413 as JSON from nginx (plain and chunked); /healthz, /readyz, /metrics;
# /metrics refused (JSON 404) to a public address; unknown path -> JSON 404; with the daemon
# gone -> JSON 503 with Retry-After. Last line: 'N passed, N failed'. Exit 1 on any failure.
# CZ_KEEP_TMP=1 keeps the temp dir (rendered config, nginx and daemon logs) for debugging.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${1:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
passed=0 failed=0
pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
finish() { echo; echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit $?; }

for bin in colorize colorized; do
  [ -x "$build/$bin" ] || { echo "nginx-test: $build/$bin not found; build first"; fail "binaries"; finish; }
done
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "nginx-test: installing nginx"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  had_pid=""; [ -e /run/nginx.pid ] && had_pid=1
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx >/dev/null
  # Where the package's postinst started the system nginx (port 80), stop that instance again:
  # this test runs its own, and the install started that one only as a side effect.
  if [ -z "$had_pid" ] && [ -s /run/nginx.pid ]; then $SUDO nginx -s quit 2>/dev/null || true; fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v curl >/dev/null || { fail "curl is missing"; finish; }

tmp=$(mktemp -d /tmp/cz-nginx.XXXXXX)
dpid="" npid=""
cleanup() {
  [ -n "$npid" ] && kill -TERM "$npid" 2>/dev/null
  [ -n "$dpid" ] && kill -KILL "$dpid" 2>/dev/null
  wait 2>/dev/null
  if [ -n "${CZ_KEEP_TMP:-}" ]; then echo "nginx-test: kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- docker/nginx.conf agrees with config/colorized.json
body_limit=$(python3 - docker/nginx.conf config/colorized.json <<'EOF'
import json, re, sys
conf = open(sys.argv[1]).read()
srv = json.load(open(sys.argv[2]))["server"]
def size(v):
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", v)
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
def secs(v):
    m = re.fullmatch(r"(\d+)(ms|s|m)?", v)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60}[m.group(2)]
def one(name, text=conf):
    return re.search(r"^\s*%s\s+(\S+?);" % name, text, re.M).group(1)
upstream = re.search(r"upstream colorized \{(.*?)\}", conf, re.S).group(1)
problems = []
if size(one("client_max_body_size")) != srv["max_body_bytes"]:
    problems.append("client_max_body_size %s != server.max_body_bytes %d" % (one("client_max_body_size"), srv["max_body_bytes"]))
if secs(one("proxy_read_timeout")) * 1000 <= srv["request_deadline_ms"]:
    problems.append("proxy_read_timeout %s is not above server.request_deadline_ms %d" % (one("proxy_read_timeout"), srv["request_deadline_ms"]))
if secs(one("keepalive_timeout", upstream)) >= srv["connection_timeout_s"]:
    problems.append("upstream keepalive_timeout is not below server.connection_timeout_s %d" % srv["connection_timeout_s"])
m = re.search(r"max_conns=(\d+)", upstream)
if not m or int(m.group(1)) >= srv["max_connections_per_ip"]:
    problems.append("upstream max_conns is not below server.max_connections_per_ip %d" % srv["max_connections_per_ip"])
if re.search(r"^\s*proxy_request_buffering\s+off", conf, re.M):
    problems.append("proxy_request_buffering must stay on")
for p in problems:
    print("mismatch: " + p, file=sys.stderr)
print(srv["max_body_bytes"])
sys.exit(1 if problems else 0)
EOF
) && pass "docker/nginx.conf limits agree with config/colorized.json" || fail "docker/nginx.conf vs config/colorized.json"
[ -n "$body_limit" ] || body_limit=52428800

# ---- daemon
"$build/colorize" init --ngf 4 --seed 7 -o "$tmp/tiny.safetensors" > "$tmp/init.log" 2>&1 || { cat "$tmp/init.log"; fail "colorize init"; finish; }
"$build/colorized" --config config/colorized.json --listen 127.0.0.1:0 --port-file "$tmp/port" \
  --model "$tmp/tiny.safetensors" --threads 2 > "$tmp/daemon.log" 2>&1 &
dpid=$!
for _ in $(seq 1 600); do [ -s "$tmp/port" ] && break; kill -0 "$dpid" 2>/dev/null || break; sleep 0.1; done
dport=$(cat "$tmp/port" 2>/dev/null)
[ -n "$dport" ] || { tail -n 30 "$tmp/daemon.log"; fail "daemon did not start"; finish; }
for _ in $(seq 1 600); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$dport/readyz")" = 200 ] && break; sleep 0.1
done

# ---- render the test copy of docker/nginx.conf
nport=$(free_port)
conf=$tmp/nginx.conf
mkdir -p "$tmp/logs" "$tmp/body" "$tmp/proxy" "$tmp/fastcgi" "$tmp/uwsgi" "$tmp/scgi"
# `user nginx;` (the official image's worker user) becomes `user root;` when run as root
# (workers must write the temp dirs under $tmp) and is dropped otherwise.
user_line=""; [ "$(id -u)" -eq 0 ] && user_line="user root;"
{
  sed -e "s|^user nginx;|$user_line|" \
      -e "s|^\(\s*\)server colorized:8080\b|\1server 127.0.0.1:$dport|" \
      -e "s|^\(\s*\)listen 8080;|\1listen 127.0.0.1:$nport;|" \
      -e "s|^pid .*;|pid $tmp/nginx.pid;|" \
      -e "s|^error_log .*;|error_log $tmp/logs/error.log info;|" \
      -e "s|^\(\s*\)access_log /dev/stdout cz_json;|\1access_log $tmp/logs/access.log cz_json;|" \
      -e "s|^http {|http {\n    client_body_temp_path $tmp/body;\n    proxy_temp_path $tmp/proxy;\n    fastcgi_temp_path $tmp/fastcgi;\n    uwsgi_temp_path $tmp/uwsgi;\n    scgi_temp_path $tmp/scgi;|" \
      -e "s|^\(\s*\)server_name _;|\1server_name _;\n\1set_real_ip_from 127.0.0.1;\n\1real_ip_header X-Test-Client-IP;|" \
      docker/nginx.conf
} > "$conf"
for want in "server 127.0.0.1:$dport" "listen 127.0.0.1:$nport;" "pid $tmp/nginx.pid;" "access_log $tmp/logs/access.log" \
            "client_body_temp_path $tmp/body;" "real_ip_header X-Test-Client-IP;"; do
  grep -qF "$want" "$conf" || { fail "rendering docker/nginx.conf: '$want' not produced (did its shape change?)"; finish; }
done
if grep -nE "colorized:8080|/dev/stdout|/var/run|^user nginx" "$conf"; then fail "rendering left production paths in the test copy"; finish; fi
if "$NGINX" -t -q -c "$conf" -p "$tmp/" > "$tmp/nginx-t.log" 2>&1; then pass "nginx -t accepts the rendered docker/nginx.conf"; else cat "$tmp/nginx-t.log"; fail "nginx -t"; finish; fi
"$NGINX" -c "$conf" -p "$tmp/" -g 'daemon off;' > "$tmp/logs/nginx.out" 2>&1 &
npid=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$nport/healthz" && break; sleep 0.1; done
url=http://127.0.0.1:$nport
echo "nginx-test: daemon on $dport, nginx on $nport"

# ---- checks. req NAME EXPECT_STATUS EXPECT_CTYPE_PREFIX CURL_ARGS... -> files $tmp/h (headers), $tmp/b (body)
req() {
  local name=$1 want=$2 ctype=$3; shift 3
  local code
  code=$(curl -s -o "$tmp/b" -D "$tmp/h" -w '%{http_code}' "$@") || true
  local got_ct
  got_ct=$(hdr Content-Type)
  if [ "$code" != "$want" ]; then fail "$name: status $code, expected $want ($(head -c 200 "$tmp/b" | tr -d '\0'))"; return 1; fi
  case $got_ct in "$ctype"*) ;; *) fail "$name: Content-Type '$got_ct', expected $ctype"; return 1 ;; esac
  return 0
}
hdr() { grep -i "^$1:" "$tmp/h" | tail -n 1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//'; }
is_hex32() { [[ $1 =~ ^[0-9a-f]{32}$ ]]; }
json_err() {  # json_err CODE: the body is the error schema with that code and the header's request id
  python3 - "$tmp/b" "$1" "$(hdr X-Request-Id)" <<'EOF'
import json, sys
body = json.load(open(sys.argv[1]))
e = body["error"]
assert e["code"] == sys.argv[2], "code %r" % e["code"]
assert e["message"], "empty message"
assert e["request_id"] == sys.argv[3], "request_id %r vs header %r" % (e["request_id"], sys.argv[3])
EOF
}
magic() { head -c 4 "$tmp/b" | od -An -tx1 | tr -d ' \n'; }

jpeg=tests/data/old_w_scratch_c.jpg
python3 -c 'import sys,struct,zlib
w,h=48,32
raw=b"".join(b"\0"+bytes((x*5+y*3)&255 for x in range(w)) for y in range(h))
c=lambda t,d: struct.pack(">I",len(d))+t+d+struct.pack(">I",zlib.crc32(t+d)&0xffffffff)
sys.stdout.buffer.write(b"\x89PNG\r\n\x1a\n"+c(b"IHDR",struct.pack(">IIBBBBB",w,h,8,0,0,0,0))+c(b"IDAT",zlib.compress(raw))+c(b"IEND",b""))' > "$tmp/in.png"

if req "POST /colorize multipart" 200 image/jpeg -F "image=@$jpeg" "$url/colorize"; then
  rid=$(hdr X-Request-Id)
  if [ "$(magic | head -c 6)" = ffd8ff ] && is_hex32 "$rid"; then pass "POST /colorize multipart -> 200 JPEG, generated X-Request-Id $rid"
  else fail "POST /colorize multipart: body magic $(magic), X-Request-Id '$rid'"; fi
fi
if req "POST /colorize raw PNG" 200 image/png -H 'Content-Type: image/png' -H 'X-Request-Id: nginx-test.raw-1' \
     --data-binary "@$tmp/in.png" "$url/colorize"; then
  if [ "$(magic)" = 89504e47 ] && [ "$(hdr X-Request-Id)" = nginx-test.raw-1 ] && [ -n "$(hdr Server-Timing)" ]; then
    pass "POST /colorize raw PNG -> 200 PNG, X-Request-Id echoed, Server-Timing passed through"
  else fail "POST /colorize raw PNG: magic $(magic), X-Request-Id '$(hdr X-Request-Id)', Server-Timing '$(hdr Server-Timing)'"; fi
  grep -q '"request_id":"nginx-test.raw-1"' "$tmp/logs/access.log" 2>/dev/null && grep -q '"request_id":"nginx-test.raw-1"' "$tmp/daemon.log" \
    && pass "the client's request id is in nginx's and the daemon's logs" \
    || fail "request id nginx-test.raw-1 missing from nginx's access log or the daemon's log"
fi
if req "POST /colorize with an invalid X-Request-Id" 200 image/jpeg -H 'Content-Type: image/jpeg' -H 'X-Request-Id: not valid!' \
     --data-binary "@$jpeg" "$url/colorize"; then
  is_hex32 "$(hdr X-Request-Id)" && pass "invalid client X-Request-Id replaced by a generated one ($(hdr X-Request-Id))" \
    || fail "invalid client X-Request-Id: got '$(hdr X-Request-Id)'"
fi

# Large bodies. The daemon runs with the shipped limit (server.max_body_bytes = 50 MiB), the
# same as nginx's client_max_body_size (checked above), so nginx refuses an oversized body
# itself. (A daemon limit BELOW nginx's is a misconfiguration: the daemon answers 413 early
# and closes, nginx is still writing the body, gets EPIPE and turns it into a 502.)
head -c $((body_limit - 65536)) /dev/zero > "$tmp/under.bin"
if req "49.9 MiB body through nginx" 415 application/json -H 'Content-Type: image/jpeg' -H 'X-Request-Id: big-body.1' \
     --data-binary "@$tmp/under.bin" "$url/colorize"; then
  err=$(json_err unsupported_media_type 2>&1) && [ "$(hdr X-Request-Id)" = big-body.1 ] \
    && pass "a body just under the limit is buffered by nginx and reaches the daemon (415 for zeros)" \
    || fail "body under the limit: $err / X-Request-Id '$(hdr X-Request-Id)'"
fi
head -c $((body_limit + 1)) /dev/zero > "$tmp/over.bin"
if req "413 from nginx" 413 application/json -H 'Content-Type: image/jpeg' --data-binary "@$tmp/over.bin" "$url/colorize"; then
  err=$(json_err payload_too_large 2>&1) && is_hex32 "$(hdr X-Request-Id)" \
    && pass "a body one byte above the limit -> 413 from nginx, as JSON with X-Request-Id" \
    || fail "413 from nginx: $err / X-Request-Id '$(hdr X-Request-Id)'"
fi
if req "413 from nginx, chunked" 413 application/json -H 'Content-Type: image/jpeg' -H 'Transfer-Encoding: chunked' \
     -H 'X-Request-Id: chunked-big.1' --data-binary "@$tmp/over.bin" "$url/colorize"; then
  err=$(json_err payload_too_large 2>&1) && [ "$(hdr X-Request-Id)" = chunked-big.1 ] \
    && pass "a chunked body above the limit -> 413 JSON, client's X-Request-Id kept" \
    || fail "chunked 413: $err / X-Request-Id '$(hdr X-Request-Id)'"
fi
rm -f "$tmp/under.bin" "$tmp/over.bin"

req "GET /healthz" 200 application/json "$url/healthz" && grep -q '"ok"' "$tmp/b" && pass "GET /healthz -> 200 {\"status\":\"ok\"}"
req "GET /readyz" 200 application/json "$url/readyz" && grep -q '"ready"' "$tmp/b" && pass "GET /readyz -> 200 {\"status\":\"ready\"}"
if req "GET /metrics from loopback" 200 "text/plain; version=0.0.4" "$url/metrics"; then
  grep -q '^colorize_http_requests_total' "$tmp/b" && pass "GET /metrics from loopback -> 200 Prometheus text" || fail "/metrics lacks colorize_http_requests_total"
fi
req "GET /metrics from a public address" 404 application/json -H 'X-Test-Client-IP: 203.0.113.7' "$url/metrics" \
  && { err=$(json_err not_found 2>&1) && pass "GET /metrics from a public address -> JSON 404" || fail "/metrics refusal: $err"; }
req "GET /nope" 404 application/json "$url/nope" \
  && { err=$(json_err not_found 2>&1) && pass "GET /nope -> JSON 404 from the daemon" || fail "404: $err"; }

# ---- the daemon goes away: SIGTERM, it must exit 0; nginx then answers JSON 503 itself
kill -TERM "$dpid"
rc=""
for _ in $(seq 1 300); do kill -0 "$dpid" 2>/dev/null || { wait "$dpid"; rc=$?; break; }; sleep 0.1; done
dpid_was=$dpid; dpid=""
[ "$rc" = 0 ] && pass "daemon exits 0 after SIGTERM" || { kill -KILL "$dpid_was" 2>/dev/null; fail "daemon exit status '${rc:-still running}'"; }
if req "POST /colorize with the daemon gone" 503 application/json -H 'Content-Type: image/jpeg' --data-binary "@$jpeg" "$url/colorize"; then
  err=$(json_err shutting_down 2>&1) && [ "$(hdr Retry-After)" = 5 ] && pass "daemon gone -> nginx answers JSON 503 with Retry-After: 5" \
    || fail "daemon gone: $err / Retry-After '$(hdr Retry-After)'"
fi

kill -TERM "$npid"; wait "$npid" 2>/dev/null; npid=""
if grep -E '\[(emerg|alert|crit)\]' "$tmp/logs/error.log" 2>/dev/null; then fail "nginx logged emerg/alert/crit"; fi
finish
