#!/usr/bin/env bash
# tests/fuzz/run.sh: builds the libFuzzer drivers in tests/fuzz/ with clang
# (-fsanitize=fuzzer,address,undefined) against every core/*.c, then fuzzes each
# target for a fixed time on a scratch copy of its committed seed corpus.
#
#   bash tests/fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS: time per target (default 60). TARGET: image, safetensors, config, body
# (default: all four; `body` is the daemon's request body parser, server/body.c).
# Exit status 0 when no target found anything; 1 when a
# driver crashed, leaked, hung (>10 s on one input), ran out of memory or hit an
# invariant check; 2 when the build failed. Reproducers are printed and left in
# build-fuzz/artifacts/<target>/.
#
# Environment:
#   CC             compiler (default: clang, then clang-14)
#   FUZZ_PARALLEL  set to 1 to fuzz all targets at the same time (wall time SECONDS instead
#                  of SECONDS x targets; wants a core per target)
#   FUZZ_BUILD     build directory (default: <repo>/build-fuzz, git-ignored by /build*/)
#   FUZZ_ARGS      extra libFuzzer flags appended to every run (e.g. -use_value_profile=1)
#   FUZZ_NO_BUILD  set to 1 to reuse the drivers already built
#
# Nothing is written into the source tree: the corpus is copied to
# build-fuzz/work/<target>/ and libFuzzer adds what it finds there. See
# tests/fuzz/README.md for longer runs and for turning a crash into a seed.
set -u -o pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
secs=${1:-60}
shift $(( $# > 0 ? 1 : 0 ))
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(image safetensors config body)

case "$secs" in
    '' | *[!0-9]*) echo "run.sh: SECONDS must be a whole number, got '$secs'" >&2; exit 2 ;;
esac

build=${FUZZ_BUILD:-$root/build-fuzz}
parallel=${FUZZ_PARALLEL:-0}
cc=${CC:-}
if [ -z "$cc" ]; then
    for c in clang clang-14; do
        if command -v "$c" >/dev/null 2>&1; then cc=$c; break; fi
    done
fi
if [ -z "$cc" ]; then echo "run.sh: clang not found (set CC)" >&2; exit 2; fi

# Extra sources a driver needs beyond core/ (compiled with coverage, linked into that driver).
extra_srcs_of() {
    case "$1" in
        body) echo "$root/server/body.c" ;;
    esac
}

# Per-target input size cap (bytes) for libFuzzer's -max_len.
max_len_of() {
    case "$1" in
        image) echo 65536 ;;
        safetensors) echo 16384 ;;
        config) echo 4096 ;;
        body) echo 65536 ;;
        *) return 1 ;;
    esac
}
for t in "${targets[@]}"; do
    if ! max_len_of "$t" >/dev/null || [ ! -f "$here/fuzz_$t.c" ]; then
        echo "run.sh: unknown target '$t' (image, safetensors, config, body)" >&2
        exit 2
    fi
done

# Same language flags as the CMake build (C11, _GNU_SOURCE, core/ on the include path),
# plus the sanitizers. Core code is instrumented for coverage (fuzzer-no-link); every UBSan
# finding aborts so that libFuzzer records it as a crash. No -Werror here: warnings are the
# regular build's business, a fuzz run should not fail on them.
# shellcheck disable=SC2054 # the commas are inside -fsanitize=, not between elements
cflags=(-std=c11 -D_GNU_SOURCE -DCZ_VERSION="\"fuzz\"" -I"$root/core" -I"$root/server" -Wno-source-uses-openmp -g -O1
        -fno-omit-frame-pointer -Wall -Wextra -Wno-unused-parameter
        -fsanitize=address,undefined -fno-sanitize-recover=undefined)
libs=(-ljansson -lspng -lturbojpeg -ljpeg -ldnnl -lgomp -lm -lpthread)

build_all() {
    mkdir -p "$build/obj" "$build/bin" || return 1
    local srcs=("$root"/core/*.c)
    echo "== building ${#srcs[@]} core sources + ${#targets[@]} driver(s) with $cc into $build"
    # Compile core in parallel; every file must compile, even the ones no driver links.
    local ncpu
    ncpu=$(nproc 2>/dev/null || echo 2)
    rm -f "$build"/obj/*.o "$build/libcz_core_fuzz.a"
    # shellcheck disable=SC2016 # $0/$1 are expanded by the inner sh, on purpose
    if ! printf '%s\n' "${srcs[@]}" |
        xargs -P "$ncpu" -I{} sh -c 'f="$1"; shift; o="$0/obj/$(basename "$f" .c).o";
            "$@" -fsanitize=fuzzer-no-link -c "$f" -o "$o" || { echo "FAILED: $f" >&2; exit 255; }' \
            "$build" {} "$cc" "${cflags[@]}"; then
        echo "run.sh: compiling core/ failed" >&2
        return 1
    fi
    # An archive, so each driver links only the objects it needs (and their dependencies).
    ar rcs "$build/libcz_core_fuzz.a" "$build"/obj/*.o || return 1
    for t in "${targets[@]}"; do
        local extra=() e
        for e in $(extra_srcs_of "$t"); do
            "$cc" "${cflags[@]}" -fsanitize=fuzzer-no-link -c "$e" -o "$build/obj_${t}_$(basename "$e" .c).o" ||
                { echo "run.sh: compiling $e failed" >&2; return 1; }
            extra+=("$build/obj_${t}_$(basename "$e" .c).o")
        done
        "$cc" "${cflags[@]}" -fsanitize=fuzzer "$here/fuzz_$t.c" "${extra[@]}" "$build/libcz_core_fuzz.a" \
            "${libs[@]}" -o "$build/bin/fuzz_$t" || { echo "run.sh: linking fuzz_$t failed" >&2; return 1; }
    done
}

if [ "${FUZZ_NO_BUILD:-0}" != 1 ]; then
    t0=$(date +%s)
    build_all || exit 2
    echo "== build took $(( $(date +%s) - t0 )) s"
fi

# LeakSanitizer is on by default in libFuzzer+ASan; keep symbolized stacks readable and make
# UBSan print stacks. Respect anything the caller already exported.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:symbolize=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# Runs one target; returns libFuzzer's exit status. Output goes to build-fuzz/logs/<t>.log.
fuzz_one() {
    local t=$1 work="$build/work/$1" art="$build/artifacts/$1/" log="$build/logs/$1.log"
    rm -rf "$work" "$art"
    mkdir -p "$work" "$art" "$build/logs"
    # Scratch copy of the committed seeds: libFuzzer writes new inputs into its first corpus
    # directory, and CI must never modify the tree.
    if [ -d "$here/corpus/$t" ]; then cp -R "$here/corpus/$t/." "$work/"; fi
    # Committed crash reproducers of this target (tests/fuzz/crashes/<t>-*) are replayed too.
    local dict=()
    [ -f "$here/dict/$t.dict" ] && dict=(-dict="$here/dict/$t.dict")
    # -fork is not used: one process keeps the final stats line meaningful.
    # shellcheck disable=SC2086
    "$build/bin/fuzz_$t" "$work" "${dict[@]}" \
        -max_total_time="$secs" -max_len="$(max_len_of "$t")" -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$art" -print_final_stats=1 -reload=0 ${FUZZ_ARGS:-} >"$log" 2>&1
}

# Replays the committed reproducers for every target first: a regression shows up at once,
# before any fuzzing time is spent.
replay_crashes() {
    local t=$1 files=()
    shopt -s nullglob
    files=("$here"/crashes/"$t"-*)
    shopt -u nullglob
    [ ${#files[@]} -eq 0 ] && return 0
    echo "== $t: replaying ${#files[@]} committed reproducer(s) from tests/fuzz/crashes/"
    "$build/bin/fuzz_$t" -runs=1 -rss_limit_mb=2048 -timeout=10 "${files[@]}" \
        >"$build/logs/$t.replay.log" 2>&1
}

# Prints the first sanitizer / libFuzzer / invariant report of a log (its top 45 lines) and
# the one-line summaries, rather than the shadow-memory dump that ends an ASan report.
show_error() {
    awk '/==[0-9]+==ERROR|runtime error:|invariant violated|ERROR: libFuzzer/ { if (!done) on = 1 }
         on && /Shadow bytes around/ { on = 0; done = 1 }
         on && n >= 45 { on = 0; done = 1 }
         on { print; n++; if (/^SUMMARY:/) seen[$0] = 1; next }
         /^SUMMARY:/ && !($0 in seen) { print; seen[$0] = 1 }
         /Test unit written to|^Base64:/ { print }' "$1" | sed 's/^/   | /'
}

report() {
    local t=$1 rc=$2 log="$build/logs/$1.log"
    # Final counters and coverage as libFuzzer printed them.
    local last stats
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
    stats=$(grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" |
        sed 's/^stat:://' | tr -s ' \n' ' ')
    echo "== $t: exit $rc; last status: ${last:-none}"
    [ -n "$stats" ] && echo "   stats: $stats"
    if [ "$rc" -ne 0 ]; then
        echo "-- $t FAILED; first report in $log:"
        show_error "$log"
        local f
        for f in "$build/artifacts/$t"/*; do
            [ -e "$f" ] || continue
            echo "   reproducer: $f"
            echo "   replay:     $build/bin/fuzz_$t $f"
        done
    fi
}

status=0
# Replay committed reproducers (regressions) before fuzzing.
for t in "${targets[@]}"; do
    if ! replay_crashes "$t"; then
        echo "-- $t: a committed reproducer fails again; see $build/logs/$t.replay.log"
        show_error "$build/logs/$t.replay.log"
        status=1
    fi
done

echo "== fuzzing ${targets[*]} for $secs s each$([ "$parallel" = 1 ] && echo ', in parallel')"
declare -A rcs=()
if [ "$parallel" != 1 ]; then
    for t in "${targets[@]}"; do
        fuzz_one "$t"
        rcs[$t]=$?
        report "$t" "${rcs[$t]}"
    done
else
    declare -A pids=()
    for t in "${targets[@]}"; do
        fuzz_one "$t" &
        pids[$t]=$!
    done
    for t in "${targets[@]}"; do
        wait "${pids[$t]}"
        rcs[$t]=$?
    done
    for t in "${targets[@]}"; do report "$t" "${rcs[$t]}"; done
fi

for t in "${targets[@]}"; do
    [ "${rcs[$t]}" -ne 0 ] && status=1
done
if [ "$status" -ne 0 ]; then
    echo "== FAILED: at least one fuzz target found a problem (reproducers above)"
else
    echo "== OK: no crash, leak, timeout or OOM in ${targets[*]}"
fi
exit "$status"
