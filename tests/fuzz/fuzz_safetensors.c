/* fuzz_safetensors.c: libFuzzer driver for the safetensors reader (core/safetensors.c).
 *
 * The input is parsed in place (cz_st_parse with copy = 0, so ASan catches any read outside
 * the caller's buffer). When the reader accepts it, every promise of safetensors.h is
 * checked, and a broken one aborts (a crash for libFuzzer):
 *   - each tensor has a name, a known dtype, 0..CZ_ST_MAX_DIMS non-negative dims, and
 *     nbytes == numel * dtype size, with its bytes inside the input's data section;
 *   - cz_st_find(name) returns that same tensor; cz_st_at past the end returns NULL;
 *   - cz_st_to_f32 converts every floating tensor of at most FUZZ_MAX_FLOATS elements into a
 *     bounded buffer (F32 must come back bit for bit), refuses integer dtypes with
 *     CZ_ERR_UNSUPPORTED and a wrong element count with CZ_ERR_SHAPE;
 *   - metadata pairs are sorted by key, unique, and cz_st_meta(key) finds each value;
 *   - the checksum is stable between calls;
 *   - writing the parsed file back with the writer (cz_st_writer_*) gives a file the reader
 *     accepts with the same tensors (dtype, shape, bytes) and metadata.
 *
 * Run through tests/fuzz/run.sh (builds it with -fsanitize=fuzzer,address,undefined). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "status.h"

enum { FUZZ_MAX_FLOATS = 1 << 16 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static float g_f32[FUZZ_MAX_FLOATS + 1]; /* one spare slot as a canary */

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("fuzz_safetensors: invariant violated: ", stderr);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (last error detail: %s)\n", cz_error_detail());
    va_end(ap);
    abort();
}

static int is_float(cz_st_dtype dt) {
    return dt == CZ_ST_F32 || dt == CZ_ST_F16 || dt == CZ_ST_BF16 || dt == CZ_ST_F64;
}

static void check_tensor(const cz_safetensors *st, const cz_st_tensor *t, const uint8_t *data, size_t size) {
    if (!t->name) fail("tensor without a name");
    if ((int)t->dtype < 0 || t->dtype >= CZ_ST_DTYPE_COUNT_) fail("%s: dtype %d", t->name, t->dtype);
    if (t->ndim < 0 || t->ndim > CZ_ST_MAX_DIMS) fail("%s: ndim %d", t->name, t->ndim);
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0) fail("%s: shape[%d] = %lld", t->name, d, (long long)t->shape[d]);
    size_t numel = cz_st_numel(t);
    size_t esz = cz_st_dtype_size(t->dtype);
    if (esz == 0 || strcmp(cz_st_dtype_name(t->dtype), "?") == 0)
        fail("%s: dtype %d has no size or name", t->name, t->dtype);
    if (numel * esz != t->nbytes || (numel && t->nbytes / numel != esz))
        fail("%s: %zu elements of %zu bytes but nbytes %zu", t->name, numel, esz, t->nbytes);
    if (t->nbytes) {
        if (!t->data) fail("%s: no data pointer", t->name);
        if (t->data < data + 8 || t->data > data + size || (size_t)(data + size - t->data) < t->nbytes)
            fail("%s: data [%p, +%zu) outside the input [%p, +%zu)", t->name, (const void *)t->data,
                 t->nbytes, (const void *)data, size);
    }
    if (cz_st_find(st, t->name) != t) fail("%s: cz_st_find returns another tensor", t->name);

    cz_status s;
    if (numel <= FUZZ_MAX_FLOATS) {
        g_f32[numel] = 12345.0f;
        s = cz_st_to_f32(t, g_f32, numel);
        if (is_float(t->dtype)) {
            if (s != CZ_OK) fail("%s: cz_st_to_f32 failed: %s", t->name, cz_strerror(s));
            if (g_f32[numel] != 12345.0f) fail("%s: cz_st_to_f32 wrote past numel", t->name);
            if (t->dtype == CZ_ST_F32 && numel && memcmp(g_f32, t->data, t->nbytes) != 0)
                fail("%s: F32 conversion is not a copy", t->name);
        } else if (s != CZ_ERR_UNSUPPORTED) {
            fail("%s: cz_st_to_f32 on %s returned %d, expected CZ_ERR_UNSUPPORTED", t->name,
                 cz_st_dtype_name(t->dtype), (int)s);
        }
    }
    /* A caller expecting a different element count is refused before anything is written. */
    if (numel < FUZZ_MAX_FLOATS) {
        s = cz_st_to_f32(t, g_f32, numel + 1);
        if (s != CZ_ERR_SHAPE) fail("%s: numel mismatch returned %d", t->name, (int)s);
    }
}

static void check_meta(const cz_safetensors *st) {
    size_t n = cz_st_meta_count(st);
    const char *prev = NULL;
    for (size_t i = 0; i < n; i++) {
        const char *k = NULL, *v = NULL;
        cz_st_meta_at(st, i, &k, &v);
        if (!k || !v) fail("metadata pair %zu is NULL", i);
        if (prev && strcmp(prev, k) >= 0) fail("metadata keys not sorted/unique: '%s', '%s'", prev, k);
        if (cz_st_meta(st, k) != v) fail("cz_st_meta('%s') does not find its value", k);
        prev = k;
    }
    const char *k = (const char *)1, *v = (const char *)1;
    cz_st_meta_at(st, n, &k, &v);
    if (k || v) fail("cz_st_meta_at past the end is not NULL");
}

/* Writes the accepted file back through the writer and parses the result again. */
static void check_rewrite(const cz_safetensors *st) {
    cz_st_writer *w = NULL;
    if (cz_st_writer_create(&w) != CZ_OK) return;
    cz_status s = CZ_OK;
    for (size_t i = 0; i < cz_st_meta_count(st) && s == CZ_OK; i++) {
        const char *k, *v;
        cz_st_meta_at(st, i, &k, &v);
        s = cz_st_writer_meta(w, k, v);
    }
    for (size_t i = 0; i < cz_st_count(st) && s == CZ_OK; i++) {
        const cz_st_tensor *t = cz_st_at(st, i);
        s = cz_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, t->nbytes);
    }
    if (s == CZ_ERR_NOMEM) {
        cz_st_writer_destroy(w);
        return;
    }
    if (s != CZ_OK) fail("the writer refuses what the reader accepted: %s", cz_strerror(s));
    uint8_t *buf = NULL;
    size_t len = 0;
    s = cz_st_writer_bytes(w, &buf, &len);
    cz_st_writer_destroy(w);
    if (s == CZ_ERR_NOMEM || s == CZ_ERR_TOO_LARGE) return;
    if (s != CZ_OK) fail("cz_st_writer_bytes failed: %s", cz_strerror(s));

    cz_safetensors *re = NULL;
    s = cz_st_parse(buf, len, 1, &re);
    free(buf); /* copy = 1: the reader keeps its own */
    if (s != CZ_OK) fail("the reader refuses the writer's output: %s", cz_strerror(s));
    if (cz_st_count(re) != cz_st_count(st) || cz_st_meta_count(re) != cz_st_meta_count(st))
        fail("rewrite changed the counts: %zu/%zu tensors, %zu/%zu metadata", cz_st_count(st),
             cz_st_count(re), cz_st_meta_count(st), cz_st_meta_count(re));
    for (size_t i = 0; i < cz_st_count(st); i++) {
        const cz_st_tensor *a = cz_st_at(st, i);
        const cz_st_tensor *b = cz_st_find(re, a->name);
        if (!b) fail("%s: lost in the rewrite", a->name);
        if (b->dtype != a->dtype || b->ndim != a->ndim || b->nbytes != a->nbytes ||
            memcmp(b->shape, a->shape, sizeof a->shape) != 0 ||
            (a->nbytes && memcmp(a->data, b->data, a->nbytes) != 0))
            fail("%s: changed in the rewrite", a->name);
    }
    for (size_t i = 0; i < cz_st_meta_count(st); i++) {
        const char *k, *v;
        cz_st_meta_at(st, i, &k, &v);
        const char *v2 = cz_st_meta(re, k);
        if (!v2 || strcmp(v, v2) != 0) fail("metadata '%s' changed in the rewrite", k);
    }
    cz_st_close(re);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cz_safetensors *st = (cz_safetensors *)1;
    cz_status s = cz_st_parse(data, size, 0, &st);
    if (s > 0 || s < CZ_STATUS_MIN_) fail("cz_st_parse returned %d", (int)s);
    if (s != CZ_OK) {
        if (st) fail("failed parse (%s) left a non-NULL object", cz_strerror(s));
        if (s != CZ_ERR_BAD_WEIGHTS && s != CZ_ERR_NOMEM)
            fail("refusal with %s instead of CZ_ERR_BAD_WEIGHTS", cz_strerror(s));
        return 0;
    }
    if (!st) fail("parse succeeded without an object");

    size_t n = cz_st_count(st);
    for (size_t i = 0; i < n; i++) {
        const cz_st_tensor *t = cz_st_at(st, i);
        if (!t) fail("cz_st_at(%zu) is NULL with %zu tensors", i, n);
        check_tensor(st, t, data, size);
    }
    if (cz_st_at(st, n)) fail("cz_st_at past the end is not NULL");
    check_meta(st);
    uint64_t c1 = cz_st_checksum(st), c2 = cz_st_checksum(st);
    if (c1 != c2) fail("checksum changed between calls");
    check_rewrite(st);
    cz_st_close(st);
    return 0;
}
