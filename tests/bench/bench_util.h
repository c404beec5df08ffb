/* bench_util.h: the small pieces the CPU benchmark programs (bench_stages, bench_loader) share:
 * a wall clock, failure exits that run the program's cleanup first, a deterministic RNG, the
 * median of a set of timings and the CPU's name for the table headers. Single-threaded use. */
#ifndef CZ_BENCH_UTIL_H
#define CZ_BENCH_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* Names the program in error messages and sets what bu_fail/bu_xmalloc run before exit(1). */
void bu_init(const char *prog, void (*cleanup)(void));
double bu_now_s(void); /* CLOCK_MONOTONIC, seconds */
/* Prints "PROG: WHAT failed: ..." with the error detail, runs the cleanup, exits 1. */
void bu_fail(const char *what, cz_status s);
#define BU_CHECK(what, expr)                  \
    do {                                      \
        cz_status bu_s_ = (expr);             \
        if (bu_s_ != CZ_OK) bu_fail(what, bu_s_); \
    } while (0)
void *bu_xmalloc(size_t n); /* malloc or exit(1) after the cleanup */
uint64_t bu_rng(uint64_t *s); /* SplitMix64 */
static inline uint8_t bu_clamp8(int v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }
/* Sorts t[0..n) and returns its median (n >= 1). */
double bu_median(double *t, int n);
/* "model name" of /proc/cpuinfo, or "unknown CPU". */
void bu_cpu_model(char *buf, size_t n);

#endif
