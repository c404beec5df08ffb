#!/usr/bin/env bash
# tests/contract/run.sh [BUILD_DIR]: checks the live daemon against openapi.yaml.
#   1. makes (once) the Python venv build-contract/venv with the pinned packages of
#      tests/contract/requirements.txt (reinstalled only when that file changes);
#   2. check_spec.py: openapi.yaml is valid OpenAPI 3.1 and its examples fit its schemas;
#   3. writes tiny generator weights (`colorize init --ngf 4`; the main daemon's is depth 6, the
#      depth of a 64 px training run, so that its checkpoints can be activated) and a training
#      data root (datasets `photos`, `photos/portraits`: a few 64x64 colour PNGs; `empty`),
#      starts `colorized --listen 127.0.0.1:0 --port-file ...` from BUILD_DIR (default: build)
#      with the shipped config/colorized.json, a 2 MiB body limit, an admin token, that data
#      root, a state dir, and training limits that keep every job cheap (train.max_jobs 2,
#      max_steps 20, max_batch 2, max_image_size 128), waits for /readyz;
#   4. schemathesis (examples, coverage and fuzzing phases, positive and negative data, at
#      most CZ_CONTRACT_MAX_EXAMPLES (100) cases per operation and phase, killed after 170 s;
#      it sends the admin token on every request, so the admin operations run for real)
#      with the checks not_a_server_error, status_code_conformance, content_type_conformance,
#      response_schema_conformance, response_headers_conformance, unsupported_method (405 +
#      Allow for undocumented methods) and allow_header_conformance;
#   5. test_spec_live.py: every documented (path, method, status) it can provoke, including
#      503/504/drain and 403 admin_disabled on a second daemon it starts itself, the admin API
#      (a tiny training job run to the end, activation, cancel, resume, 429) on the main one;
#   6. stops the daemon with SIGTERM and expects exit status 0.
# Exits non-zero when any step fails; the last line is 'contract: N passed, N failed' over
# the steps. Everything runs on 127.0.0.1; temp files go to a directory removed at exit.
# Environment: CZ_CONTRACT_MAX_EXAMPLES (default 100), PYTHON (the interpreter that makes the
# venv, default python3).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
venv=$root/build-contract/venv
max_body=2097152
admin_token=contract-admin-token-5d1f08c2
steps_ok=0 steps_failed=0
step() { echo; echo "=== contract: $*"; }
ok() { steps_ok=$((steps_ok + 1)); echo "--- ok: $*"; }
bad() { steps_failed=$((steps_failed + 1)); echo "--- FAILED: $*"; }

for bin in colorize colorized; do
  if [ ! -x "$build/$bin" ]; then
    echo "contract: $build/$bin not found; build first (scripts/build.sh)"
    echo "contract: 0 passed, 1 failed"
    exit 1
  fi
done

# ---- 1. venv (idempotent)
step "python venv ($venv)"
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  if ! "$py" -m venv --help >/dev/null 2>&1 || ! "$py" -c 'import ensurepip' 2>/dev/null; then
    echo "installing python3-venv"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv
    py=/usr/bin/python3
  fi
  mkdir -p "$(dirname "$venv")"
  "$py" -m venv "$venv" || { echo "contract: cannot create the venv"; echo "contract: 0 passed, 1 failed"; exit 1; }
fi
want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt" \
    || { echo "contract: pip install failed"; echo "contract: 0 passed, 1 failed"; exit 1; }
  echo "$want" > "$venv/.requirements.sha256"
fi
echo "schemathesis $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))')"

# ---- 2. the document itself
step "check_spec.py (openapi.yaml validity, examples vs schemas)"
if "$venv/bin/python" "$here/check_spec.py" "$root/openapi.yaml" "$root/server/CONTRACT.md"; then
  ok "spec"
else
  bad "spec"
fi

# ---- 3. daemon
tmp=$(mktemp -d /tmp/cz-contract.XXXXXX)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
step "daemon ($build/colorized, tiny weights)"
{ "$build/colorize" init --ngf 4 --seed 7 -o "$tmp/tiny.safetensors" &&
  "$build/colorize" init --ngf 4 --depth 6 --seed 7 -o "$tmp/tiny6.safetensors"; } > "$tmp/init.log" 2>&1 \
  || { cat "$tmp/init.log"; echo "contract: 0 passed, 1 failed"; exit 1; }
mkdir -p "$tmp/data/photos/portraits" "$tmp/data/empty" "$tmp/state"
"$venv/bin/python" - "$tmp/data" "$here" <<'PY' || { echo "contract: cannot write the dataset"; echo "contract: 0 passed, 1 failed"; exit 1; }
import os, sys
sys.path.insert(0, sys.argv[2])
from speclib import make_scene_png
for i in range(6):
    open(os.path.join(sys.argv[1], "photos", "p%d.png" % i), "wb").write(make_scene_png(64, 64, i))
for i in range(2):
    open(os.path.join(sys.argv[1], "photos", "portraits", "q%d.png" % i), "wb").write(make_scene_png(64, 64, 10 + i))
PY
"$build/colorized" --config "$root/config/colorized.json" --listen 127.0.0.1:0 --port-file "$tmp/port" \
  --model "$tmp/tiny6.safetensors" --threads 2 --set "server.max_body_bytes=$max_body" \
  --set "admin.token=$admin_token" --set "train.data_root=$tmp/data" --set "train.state_dir=$tmp/state" \
  --set train.max_jobs=2 --set train.max_steps=20 --set train.max_batch=2 --set train.max_image_size=128 \
  --set train.keep_checkpoints=2 --set train.workers=1 \
  > "$tmp/daemon.log" 2>&1 &
pid=$!
port=""
for _ in $(seq 1 600); do
  [ -s "$tmp/port" ] && port=$(cat "$tmp/port") && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
ready=""
if [ -n "$port" ]; then
  for _ in $(seq 1 600); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz") && [ "$code" = 200 ] && { ready=1; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
fi
if [ -z "$ready" ]; then
  echo "daemon did not become ready (port '${port}'); log:"
  tail -n 40 "$tmp/daemon.log"
  echo "contract: $steps_ok passed, $((steps_failed + 1)) failed"
  exit 1
fi
url=http://127.0.0.1:$port
echo "daemon pid $pid on $url"

# ---- 4. schemathesis
step "schemathesis"
t0=$(date +%s)
# From $tmp: schemathesis keeps a cache (.schemathesis/) in its working directory.
# One worker: with two, hypothesis describes its filter lambdas by ast.parse()-ing their source
# on both threads at once, which CPython 3.11 can answer with "SystemError: AST constructor
# recursion depth mismatch" (seen on GET /train/{id}); the run is short enough without.
if (cd "$tmp" && timeout 170 "$venv/bin/schemathesis" run "$root/openapi.yaml" --url "$url" \
     -H "Authorization: Bearer $admin_token" \
     --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,unsupported_method,allow_header_conformance \
     --phases examples,coverage,fuzzing --mode all --max-examples "${CZ_CONTRACT_MAX_EXAMPLES:-100}" \
     --seed 2017 --workers 1 --request-timeout 30 --no-color \
     --report junit --report-junit-path "$tmp/schemathesis.xml") > "$tmp/schemathesis.log" 2>&1; then
  tail -n 25 "$tmp/schemathesis.log"
  ok "schemathesis ($(( $(date +%s) - t0 )) s)"
else
  cat "$tmp/schemathesis.log" | tail -n 300
  bad "schemathesis ($(( $(date +%s) - t0 )) s)"
fi

echo "note: POST /train answered 202 $(grep -c '"method":"POST","path":"/train","status":202' "$tmp/daemon.log") time(s)," \
  "429 $(grep -c '"method":"POST","path":"/train","status":429' "$tmp/daemon.log") time(s) during schemathesis"

# ---- 5. spec-driven live test
step "test_spec_live.py"
if "$venv/bin/python" "$here/test_spec_live.py" --spec "$root/openapi.yaml" --url "$url" --max-body "$max_body" \
     --jpeg "$root/tests/data/old_w_scratch_c.jpg" --colorized "$build/colorized" --model "$tmp/tiny.safetensors" \
     --admin-token "$admin_token" --state-dir "$tmp/state"; then
  ok "live"
else
  bad "live"
fi

# ---- 6. clean shutdown
step "SIGTERM"
kill -TERM "$pid"
rc=""
for _ in $(seq 1 300); do
  if ! kill -0 "$pid" 2>/dev/null; then wait "$pid"; rc=$?; break; fi
  sleep 0.1
done
pid_was=$pid; pid=""
if [ "$rc" = 0 ]; then
  ok "daemon exited 0"
else
  kill -KILL "$pid_was" 2>/dev/null
  bad "daemon exit status '${rc:-still running after 30 s}'"
  tail -n 20 "$tmp/daemon.log"
fi
if grep -q '"level":"error"' "$tmp/daemon.log"; then
  echo "note: the daemon logged errors:"; grep '"level":"error"' "$tmp/daemon.log" | head -n 5
fi

echo
echo "contract: $steps_ok passed, $steps_failed failed"
[ "$steps_failed" -eq 0 ]
