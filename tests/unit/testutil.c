/* testutil.c: see testutil.h. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fileio.h"
#include "image.h"

const char *tu_source_dir(void) {
    const char *s = getenv("CZ_SOURCE_DIR");
    return s && *s ? s : ".";
}

const char *tu_shared_dir(void) {
    static char buf[4096];
    const char *s = getenv("CZ_SHARED_DIR");
    if (s && *s) return s;
    snprintf(buf, sizeof buf, "%s/../shared", tu_source_dir());
    return buf;
}

char *tu_path(const char *dir, const char *rel) {
    size_t n = strlen(dir) + strlen(rel) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, rel);
    return p;
}

uint64_t tu_rand_u64(uint64_t *s) {
    uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

float tu_rand_uniform(uint64_t *s, float lo, float hi) {
    double u = (double)(tu_rand_u64(s) >> 11) / 9007199254740992.0;
    return (float)(lo + (hi - lo) * u);
}

float tu_rand_normal(uint64_t *s) {
    double u1 = ((double)(tu_rand_u64(s) >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (double)(tu_rand_u64(s) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void tu_fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi) {
    uint64_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) x[i] = tu_rand_uniform(&s, lo, hi);
}

double tu_rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) || isnan(b[i]) || isinf(a[i]) || isinf(b[i])) return INFINITY;
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return sqrt(num) / (den > 1e-30 ? sqrt(den) : 1e-15);
}

int tu_cpu_has_bf16(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16");
}

int tu_write_color_pngs(const char *dir, int n) {
    mkdir(dir, 0755);
    for (int k = 0; k < n; k++) {
        cz_image im;
        if (cz_image_alloc(&im, 64, 64, 3) != CZ_OK) return -1;
        for (int y = 0; y < 64; y++)
            for (int x = 0; x < 64; x++) {
                uint8_t *p = im.px + ((size_t)y * 64 + x) * 3;
                int band = (x / 16 + y / 16 + k) % 3;
                p[0] = (uint8_t)(band == 0 ? 200 : 40 + 2 * x);
                p[1] = (uint8_t)(band == 1 ? 190 : 30 + 3 * y);
                p[2] = (uint8_t)(band == 2 ? 210 : (k * 10) % 256);
            }
        uint8_t *png = NULL;
        size_t len;
        char path[4200];
        snprintf(path, sizeof path, "%s/img_%02d.png", dir, k);
        int bad = cz_image_encode(&im, CZ_FMT_PNG, 90, &png, &len) != CZ_OK ||
                  cz_file_write_atomic(path, png, len) != CZ_OK;
        free(png);
        cz_image_free(&im);
        if (bad) return -1;
    }
    return 0;
}
