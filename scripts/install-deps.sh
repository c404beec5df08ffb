#!/usr/bin/env bash
# install-deps.sh: installs the Debian 12 packages colorize needs to build, test and run.
# Idempotent: installs only what is missing. Needs root (or sudo). Used by the quick start,
# by CI (.ci/run) and by docker/Dockerfile, so all three install the same thing.
#   --runtime   only the shared libraries needed to run the binaries
#   --fuzz      the build packages plus clang and its sanitizer/libFuzzer runtimes
set -euo pipefail
build_pkgs=(build-essential cmake pkg-config ca-certificates
            libturbojpeg0-dev libjpeg62-turbo-dev libspng-dev libjansson-dev libdnnl-dev
            libcmocka-dev libcurl4-openssl-dev libmicrohttpd-dev python3 python3-venv python3-numpy)
runtime_pkgs=(libturbojpeg0 libjpeg62-turbo libspng0 libjansson4 libdnnl2 libmicrohttpd12 libcurl4)
pkgs=("${build_pkgs[@]}")
[ "${1:-}" = "--runtime" ] && pkgs=("${runtime_pkgs[@]}")
[ "${1:-}" = "--fuzz" ] && pkgs+=(clang libclang-rt-14-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
