/* test_safetensors.c: safetensors reader/writer. Round trips of every float dtype with
 * metadata, each corruption the reader must refuse (bytes crafted by hand here), truncation
 * at every length, a few thousand random byte flips, files laid out the way Python/numpy
 * writers do (crafted here, and the numpy-written fixture in tests/golden/data), fp32
 * conversion of F16/BF16/F64, and the writer's argument checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fileio.h"
#include "safetensors.h"
#include "status.h"
#include "testutil.h"

/* ---- helpers ---- */

/* A file image: 8-byte LE length of `json`, the json bytes, then `dlen` data bytes. */
static uint8_t *mk(const char *json, const void *data, size_t dlen, size_t *len) {
    size_t hl = strlen(json);
    *len = 8 + hl + dlen;
    uint8_t *b = malloc(*len ? *len : 1);
    assert_non_null(b);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, json, hl);
    if (dlen) {
        if (data)
            memcpy(b + 8 + hl, data, dlen);
        else
            memset(b + 8 + hl, 0xab, dlen);
    }
    return b;
}

/* Parses the image both copied and borrowed; expects BAD_WEIGHTS whose detail has `want`. */
static void expect_bad_buf(const uint8_t *b, size_t len, const char *want) {
    for (int copy = 0; copy < 2; copy++) {
        cz_safetensors *st = (cz_safetensors *)0x1;
        cz_error_clear();
        cz_status s = cz_st_parse(b, len, copy, &st);
        if (s != CZ_ERR_BAD_WEIGHTS || !strstr(cz_error_detail(), want))
            fail_msg("expected BAD_WEIGHTS with \"%s\", got %d: %s", want, (int)s,
                     cz_error_detail());
        assert_null(st);
    }
}

static void expect_bad(const char *json, size_t dlen, const char *want) {
    size_t len;
    uint8_t *b = mk(json, NULL, dlen, &len);
    expect_bad_buf(b, len, want);
    free(b);
}

static cz_safetensors *parse_ok(const uint8_t *b, size_t len) {
    cz_safetensors *st = NULL;
    cz_status s = cz_st_parse(b, len, 1, &st);
    if (s != CZ_OK) fail_msg("parse failed: %d %s", (int)s, cz_error_detail());
    return st;
}

static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16); /* truncation: exact for the values used here */
}

/* Exact for the small integers and halves used in these tests. */
static uint16_t f32_to_f16_simple(float f) {
    if (f == 0) return 0;
    uint16_t sign = f < 0 ? 0x8000 : 0;
    float a = fabsf(f);
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    int he = e - 1 + 15;
    uint16_t man = (uint16_t)((m * 2.0f - 1.0f) * 1024.0f);
    return (uint16_t)(sign | (he << 10) | man);
}

/* ---- round trip ---- */

typedef struct {
    const char *name;
    cz_st_dtype dt;
    int ndim;
    int64_t shape[4];
} spec;

static const spec k_specs[] = {
    {"conv.weight", CZ_ST_F32, 4, {8, 3, 4, 4}},
    {"bias", CZ_ST_F32, 1, {3}}, /* 12 bytes: not a multiple of 8 */
    {"half.a", CZ_ST_F16, 2, {5, 3}},
    {"half.b", CZ_ST_F16, 1, {4}},
    {"brain.a", CZ_ST_BF16, 3, {2, 3, 1}},
    {"brain.b", CZ_ST_BF16, 1, {7}},
    {"double.a", CZ_ST_F64, 2, {3, 3}},
    {"double.b", CZ_ST_F64, 0, {0}}, /* scalar */
    {"empty", CZ_ST_F32, 2, {0, 5}},
    {"steps", CZ_ST_I64, 1, {2}},
    {"mask", CZ_ST_U8, 1, {5}},
    {"flag", CZ_ST_BOOL, 1, {1}},
    {"count", CZ_ST_I32, 1, {3}},
};
#define NSPEC (sizeof k_specs / sizeof k_specs[0])

static size_t spec_numel(const spec *s) {
    size_t n = 1;
    for (int d = 0; d < s->ndim; d++) n *= (size_t)s->shape[d];
    return n;
}

/* Values are small multiples of 0.5 so every float dtype represents them exactly. */
static float spec_value(size_t tensor, size_t i) {
    return (float)((int)((tensor * 7 + i * 3) % 41) - 20) * 0.5f;
}

static uint8_t *spec_bytes(size_t k, size_t *nbytes) {
    const spec *s = &k_specs[k];
    size_t n = spec_numel(s), es = cz_st_dtype_size(s->dt);
    *nbytes = n * es;
    uint8_t *b = malloc(*nbytes ? *nbytes : 1);
    assert_non_null(b);
    for (size_t i = 0; i < n; i++) {
        float v = spec_value(k, i);
        switch (s->dt) {
        case CZ_ST_F32: memcpy(b + 4 * i, &v, 4); break;
        case CZ_ST_F64: {
            double d = v;
            memcpy(b + 8 * i, &d, 8);
            break;
        }
        case CZ_ST_F16: {
            uint16_t h = f32_to_f16_simple(v);
            memcpy(b + 2 * i, &h, 2);
            break;
        }
        case CZ_ST_BF16: {
            uint16_t h = f32_to_bf16(v);
            memcpy(b + 2 * i, &h, 2);
            break;
        }
        case CZ_ST_I64: {
            int64_t x = (int64_t)i - 1;
            memcpy(b + 8 * i, &x, 8);
            break;
        }
        case CZ_ST_I32: {
            int32_t x = (int32_t)(i * 1000);
            memcpy(b + 4 * i, &x, 4);
            break;
        }
        default: b[i] = (uint8_t)(i & 1); break;
        }
    }
    return b;
}

static cz_st_writer *make_writer(void) {
    cz_st_writer *w = NULL;
    assert_int_equal(cz_st_writer_create(&w), CZ_OK);
    /* Inserted out of order: the file must list them sorted. */
    assert_int_equal(cz_st_writer_meta(w, "version", "1"), CZ_OK);
    assert_int_equal(cz_st_writer_meta(w, "format", "colorize-unet"), CZ_OK);
    assert_int_equal(cz_st_writer_meta(w, "arch", "old"), CZ_OK);
    assert_int_equal(cz_st_writer_meta(w, "arch", "unet"), CZ_OK); /* replaces */
    assert_int_equal(cz_st_writer_meta(w, "note", "quote \" backslash \\ \xc3\xa9"), CZ_OK);
    for (size_t k = 0; k < NSPEC; k++) {
        size_t nb;
        uint8_t *b = spec_bytes(k, &nb);
        assert_int_equal(cz_st_writer_add(w, k_specs[k].name, k_specs[k].dt, k_specs[k].ndim,
                                          k_specs[k].shape, b, nb),
                         CZ_OK);
        free(b);
    }
    return w;
}

static void check_contents(const cz_safetensors *st) {
    assert_int_equal(cz_st_count(st), NSPEC);
    for (size_t k = 0; k < NSPEC; k++) {
        const cz_st_tensor *t = cz_st_at(st, k); /* header order == insertion order */
        assert_non_null(t);
        assert_string_equal(t->name, k_specs[k].name);
        assert_ptr_equal(cz_st_find(st, k_specs[k].name), t);
        assert_int_equal(t->dtype, k_specs[k].dt);
        assert_int_equal(t->ndim, k_specs[k].ndim);
        for (int d = 0; d < t->ndim; d++) assert_int_equal(t->shape[d], k_specs[k].shape[d]);
        size_t nb;
        uint8_t *want = spec_bytes(k, &nb);
        assert_int_equal(t->nbytes, nb);
        if (nb) assert_memory_equal(t->data, want, nb);
        free(want);
        /* every tensor is at least element-aligned relative to the data section */
        assert_int_equal(((uintptr_t)t->data - (uintptr_t)cz_st_at(st, 0)->data) %
                             cz_st_dtype_size(t->dtype),
                         0);
        size_t n = cz_st_numel(t);
        assert_int_equal(n, spec_numel(&k_specs[k]));
        float *f = malloc((n ? n : 1) * sizeof *f);
        cz_status s = cz_st_to_f32(t, f, n);
        if (t->dtype <= CZ_ST_F64) {
            assert_int_equal(s, CZ_OK);
            for (size_t i = 0; i < n; i++) assert_true(f[i] == spec_value(k, i));
        } else {
            assert_int_equal(s, CZ_ERR_UNSUPPORTED);
        }
        free(f);
    }
    assert_null(cz_st_find(st, "missing"));
    assert_null(cz_st_find(st, "__metadata__"));
    assert_null(cz_st_at(st, NSPEC));
    assert_int_equal(cz_st_meta_count(st), 4);
    const char *keys[] = {"arch", "format", "note", "version"};
    const char *vals[] = {"unet", "colorize-unet", "quote \" backslash \\ \xc3\xa9", "1"};
    for (size_t i = 0; i < 4; i++) {
        const char *k, *v;
        cz_st_meta_at(st, i, &k, &v);
        assert_string_equal(k, keys[i]);
        assert_string_equal(v, vals[i]);
        assert_string_equal(cz_st_meta(st, keys[i]), vals[i]);
    }
    assert_null(cz_st_meta(st, "nope"));
}

static void test_round_trip(void **state) {
    (void)state;
    cz_st_writer *w = make_writer();
    uint8_t *b1, *b2;
    size_t l1, l2;
    assert_int_equal(cz_st_writer_bytes(w, &b1, &l1), CZ_OK);
    assert_int_equal(cz_st_writer_bytes(w, &b2, &l2), CZ_OK); /* deterministic */
    assert_int_equal(l1, l2);
    assert_memory_equal(b1, b2, l1);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | b1[i];
    assert_int_equal((8 + hl) % 8, 0);         /* data section 8-aligned */
    assert_int_equal(b1[8], '{');              /* header starts with the object */
    assert_int_equal(b1[8 + hl - 1], ' ');     /* padded with spaces */
    assert_non_null(memmem(b1 + 8, hl, "{\"__metadata__\":{\"arch\"", 23));

    cz_safetensors *st = parse_ok(b1, l1);
    check_contents(st);
    uint64_t sum = cz_st_checksum(st);
    assert_int_equal(sum, cz_st_checksum(st));

    /* Through the file system: same bytes, same checksum. */
    char path[] = "/tmp/cz_st_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(cz_st_writer_save(w, path), CZ_OK);
    cz_safetensors *st2 = NULL;
    assert_int_equal(cz_st_open(path, &st2), CZ_OK);
    check_contents(st2);
    assert_int_equal(cz_st_checksum(st2), sum);
    uint8_t *fb;
    size_t fl;
    assert_int_equal(cz_file_read(path, 0, &fb, &fl), CZ_OK);
    assert_int_equal(fl, l1);
    assert_memory_equal(fb, b1, l1);
    free(fb);
    unlink(path);

    /* FNV-1a 64 of the whole image, recomputed independently. */
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < l1; i++) h = (h ^ b1[i]) * 1099511628211ull;
    assert_int_equal(sum, h);

    /* A different byte anywhere changes the checksum. */
    b2[l2 - 1] ^= 1;
    cz_safetensors *st3 = parse_ok(b2, l2);
    assert_int_not_equal(cz_st_checksum(st3), sum);

    cz_st_close(st3);
    cz_st_close(st2);
    cz_st_close(st);
    cz_st_close(NULL);
    free(b1);
    free(b2);
    cz_st_writer_destroy(w);
    cz_st_writer_destroy(NULL);
}

static void test_aligned_offsets(void **state) {
    (void)state;
    /* Tensors whose sizes are multiples of 8 all land on 8-aligned file offsets, also when
     * smaller dtypes come first in insertion order. */
    cz_st_writer *w = NULL;
    assert_int_equal(cz_st_writer_create(&w), CZ_OK);
    float f[6] = {0};
    uint16_t h[4] = {0};
    double d[1] = {0};
    int64_t s1[] = {4}, s6[] = {6}, s0[] = {1};
    assert_int_equal(cz_st_writer_add(w, "h", CZ_ST_F16, 1, s1, h, sizeof h), CZ_OK);
    assert_int_equal(cz_st_writer_add(w, "f", CZ_ST_F32, 1, s6, f, sizeof f), CZ_OK);
    assert_int_equal(cz_st_writer_add(w, "d", CZ_ST_F64, 1, s0, d, sizeof d), CZ_OK);
    uint8_t *b;
    size_t l;
    assert_int_equal(cz_st_writer_bytes(w, &b, &l), CZ_OK);
    cz_safetensors *st = parse_ok(b, l);
    /* File offsets: the image was malloc'd (16-aligned) and copied, so pointer alignment is
     * file-offset alignment. */
    for (size_t i = 0; i < cz_st_count(st); i++)
        assert_int_equal((uintptr_t)cz_st_at(st, i)->data % 8, 0);
    assert_string_equal(cz_st_at(st, 0)->name, "h"); /* header keeps insertion order */
    cz_st_close(st);
    free(b);
    cz_st_writer_destroy(w);
}

/* ---- corruption, crafted by hand ---- */

#define T(body) "{\"t\":" body "}"
#define F32_4 "{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}"

static void test_short_and_header_length(void **state) {
    (void)state;
    uint8_t z[16] = {0};
    for (size_t l = 0; l < 8; l++) expect_bad_buf(z, l, "shorter than");
    expect_bad_buf(z, 16, "header length is 0");

    uint8_t b[16];
    memset(b, ' ', sizeof b);
    b[0] = 9; /* claims 9 header bytes, 8 present */
    memset(b + 1, 0, 7);
    expect_bad_buf(b, 16, "past the end");

    uint64_t big = (uint64_t)CZ_ST_MAX_HEADER + 1;
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(big >> (8 * i));
    expect_bad_buf(b, 16, "exceeds the limit");
    for (int i = 0; i < 8; i++) b[i] = 0xff; /* 2^64-1 */
    expect_bad_buf(b, 16, "exceeds the limit");
}

static void test_bad_json(void **state) {
    (void)state;
    expect_bad("{not json", 0, "not valid JSON");
    expect_bad("{\"t\": {}", 0, "not valid JSON");
    expect_bad("{} trailing", 0, "not valid JSON");
    expect_bad("[1, 2]", 0, "expected an object");
    expect_bad("\"str\"", 0, "not valid JSON"); /* jansson refuses non-container roots */
    expect_bad("42", 0, "not valid JSON");
    expect_bad(T("5"), 0, "t: entry is an integer");
    expect_bad(T("[1]"), 0, "t: entry is an array");
    expect_bad(T("null"), 0, "t: entry is null");
    /* embedded NUL inside the header bytes */
    size_t len;
    uint8_t *b = mk("{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}  ", NULL, 0,
                    &len);
    b[8 + 3] = 0;
    expect_bad_buf(b, len, "not valid JSON");
    free(b);
    /* invalid UTF-8 in a key */
    expect_bad("{\"\xff\":" F32_4 "}", 16, "not valid JSON");
}

static void test_bad_dtype(void **state) {
    (void)state;
    expect_bad(T("{\"shape\":[4],\"data_offsets\":[0,16]}"), 16, "t: missing dtype");
    expect_bad(T("{\"dtype\":\"F8\",\"shape\":[4],\"data_offsets\":[0,16]}"), 16,
               "t: unknown dtype \"F8\"");
    expect_bad(T("{\"dtype\":\"f32\",\"shape\":[4],\"data_offsets\":[0,16]}"), 16,
               "t: unknown dtype");
    expect_bad(T("{\"dtype\":4,\"shape\":[4],\"data_offsets\":[0,16]}"), 16,
               "t: dtype is an integer");
}

static void test_bad_shape(void **state) {
    (void)state;
    expect_bad(T("{\"dtype\":\"F32\",\"data_offsets\":[0,16]}"), 16, "t: missing shape");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,16]}"), 16,
               "t: shape is an integer");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}"), 16,
               "t: shape[0] is not a non-negative integer");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[2, 2.0],\"data_offsets\":[0,16]}"), 16,
               "t: shape[1] is not a non-negative integer (a real number)");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[\"4\"],\"data_offsets\":[0,16]}"), 16,
               "t: shape[0] is not a non-negative integer (a string)");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[true],\"data_offsets\":[0,16]}"), 16,
               "(a boolean)");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[[4]],\"data_offsets\":[0,16]}"), 16,
               "(an array)");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,4],\"data_offsets\":[0,16]}"),
               16, "t: shape has 9 dims");
    /* too big for jansson's integer: refused as JSON */
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,16]}"),
               16, "not valid JSON");
    /* 8 dims are fine */
    size_t len;
    uint8_t *b = mk(T("{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,2,2],\"data_offsets\":[0,16]}"),
                    NULL, 16, &len);
    cz_safetensors *st = parse_ok(b, len);
    assert_int_equal(cz_st_at(st, 0)->ndim, 8);
    cz_st_close(st);
    free(b);
}

static void test_bad_offsets(void **state) {
    (void)state;
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[4]}"), 16, "t: missing data_offsets");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16]}"), 16,
               "t: data_offsets is not an array of two");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16,32]}"), 32,
               "t: data_offsets is not an array of two");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":{\"a\":1}}"), 16,
               "t: data_offsets is not an array of two");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0.0,16]}"), 16,
               "t: data_offsets are not two non-negative integers");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,\"16\"]}"), 16,
               "t: data_offsets are not two non-negative integers");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[-16,0]}"), 16,
               "t: data_offsets are not two non-negative integers");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,0]}"), 16,
               "t: data_offsets [16, 0] have begin > end");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}"), 15,
               "t: data_offsets end 16 beyond the data section of 15 bytes");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}"), 16,
               "t: data_offsets end 24 beyond");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,9223372036854775807]}"), 16,
               "beyond the data section");
}

static void test_bad_size(void **state) {
    (void)state;
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}"), 16,
               "t: 16 data bytes but shape and dtype F32 need 12");
    expect_bad(T("{\"dtype\":\"F16\",\"shape\":[2,4],\"data_offsets\":[0,8]}"), 8,
               "t: 8 data bytes but shape and dtype F16 need 16");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,0]}"), 0,
               "t: 0 data bytes but shape and dtype F32 need 4");
    /* numel overflows size_t */
    expect_bad(T("{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,2],\"data_offsets\":[0,0]}"),
               0, "t: shape's byte size overflows");
    /* numel fits, numel * 4 does not */
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}"), 0,
               "t: shape's byte size overflows");
    /* a wrapping product would give exactly the claimed 0 bytes: 2^62 * 4 = 2^64 -> 0 */
    expect_bad(T("{\"dtype\":\"U8\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,0]}"),
               0, "t: shape's byte size overflows");
    expect_bad(T("{\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,0]}"),
               0, "t: shape's byte size overflows");
    /* a zero dim after huge dims is a legitimate empty tensor only if nothing overflows */
    size_t len;
    uint8_t *b = mk(T("{\"dtype\":\"F32\",\"shape\":[0,4611686018427387904],\"data_offsets\":[0,0]}"),
                    NULL, 0, &len);
    cz_safetensors *st = parse_ok(b, len);
    assert_int_equal(cz_st_numel(cz_st_at(st, 0)), 0);
    cz_st_close(st);
    free(b);
}

static void test_layout(void **state) {
    (void)state;
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12, "b: data_offsets [4, 12] overlap tensor a");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
               8, "overlap tensor");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               16, "overlap tensor a");
    /* holes and trailing bytes: the data section must be exactly covered */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
               20, "b: 4 unused bytes in the data section before it");
    expect_bad(T("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"), 9,
               "1 unused bytes at the end of the data section");
    expect_bad("{}", 4, "4 unused bytes at the end");
    /* out of order in the header but contiguous: fine; empty tensors anywhere: fine */
    size_t len;
    uint8_t *b = mk("{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
                    "\"e\":{\"dtype\":\"F16\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                    NULL, 16, &len);
    cz_safetensors *st = parse_ok(b, len);
    assert_int_equal(cz_st_count(st), 3);
    assert_string_equal(cz_st_at(st, 0)->name, "b");
    assert_int_equal(cz_st_find(st, "a")->nbytes, 8);
    assert_int_equal(cz_st_find(st, "e")->nbytes, 0);
    cz_st_close(st);
    free(b);
    /* an empty header object with no data is a valid (empty) file */
    b = mk("{}", NULL, 0, &len);
    st = parse_ok(b, len);
    assert_int_equal(cz_st_count(st), 0);
    assert_int_equal(cz_st_meta_count(st), 0);
    assert_null(cz_st_find(st, "x"));
    cz_st_close(st);
    free(b);
}

static void test_duplicates(void **state) {
    (void)state;
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               8, "duplicate");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               8, "w");
    /* duplicates inside an entry or in the metadata as well */
    expect_bad(T("{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}"), 4,
               "duplicate");
    expect_bad("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, "duplicate");
    expect_bad("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate");
}

static void test_bad_metadata(void **state) {
    (void)state;
    expect_bad("{\"__metadata__\":[\"a\"]}", 0, "__metadata__: is an array");
    expect_bad("{\"__metadata__\":\"x\"}", 0, "__metadata__: is a string");
    expect_bad("{\"__metadata__\":{\"ngf\":64}}", 0,
               "__metadata__: value of \"ngf\" is an integer, expected a string");
    expect_bad("{\"__metadata__\":{\"a\":\"1\",\"b\":null}}", 0, "value of \"b\" is null");
    expect_bad("{\"__metadata__\":{\"a\":{\"x\":\"y\"}}}", 0, "value of \"a\" is an object");
    size_t len;
    uint8_t *b = mk("{\"__metadata__\":{}}", NULL, 0, &len);
    cz_safetensors *st = parse_ok(b, len);
    assert_int_equal(cz_st_meta_count(st), 0);
    cz_st_close(st);
    free(b);
}

/* ---- robustness ---- */

static uint8_t *valid_image(size_t *len) {
    cz_st_writer *w = make_writer();
    uint8_t *b;
    assert_int_equal(cz_st_writer_bytes(w, &b, len), CZ_OK);
    cz_st_writer_destroy(w);
    return b;
}

static void test_truncated_everywhere(void **state) {
    (void)state;
    size_t full;
    uint8_t *img = valid_image(&full);
    for (size_t l = 0; l < full; l++) {
        /* an exact-size copy so that a sanitizer sees any read past the end */
        uint8_t *b = malloc(l ? l : 1);
        memcpy(b, img, l);
        cz_safetensors *st = NULL;
        cz_status s = cz_st_parse(b, l, 0, &st);
        if (s != CZ_ERR_BAD_WEIGHTS) fail_msg("length %zu of %zu: status %d", l, full, (int)s);
        assert_null(st);
        free(b);
    }
    free(img);
}

static void touch_all(const cz_safetensors *st) {
    for (size_t i = 0; i < cz_st_count(st); i++) {
        const cz_st_tensor *t = cz_st_at(st, i);
        assert_ptr_equal(cz_st_find(st, t->name), t);
        size_t n = cz_st_numel(t);
        float *f = malloc((n ? n : 1) * sizeof *f);
        assert_non_null(f);
        cz_status s = cz_st_to_f32(t, f, n);
        assert_true(s == CZ_OK || s == CZ_ERR_UNSUPPORTED);
        free(f);
    }
    for (size_t i = 0; i < cz_st_meta_count(st); i++) {
        const char *k, *v;
        cz_st_meta_at(st, i, &k, &v);
        assert_non_null(k);
        assert_non_null(v);
        assert_string_equal(cz_st_meta(st, k), v);
    }
    (void)cz_st_checksum(st);
}

static void test_random_flips(void **state) {
    (void)state;
    size_t full;
    uint8_t *img = valid_image(&full);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | img[i];
    uint64_t rng = 0x5eed5eedull;
    int ok = 0, bad = 0;
    uint8_t *b = malloc(full);
    for (int iter = 0; iter < 4000; iter++) {
        memcpy(b, img, full);
        int flips = 1 + (int)(tu_rand_u64(&rng) % 4);
        for (int f = 0; f < flips; f++) {
            uint64_t r = tu_rand_u64(&rng);
            /* mostly the length field and the header, where the parser has work to do */
            size_t pos = (r & 3) == 0 ? (size_t)((r >> 8) % full) : (size_t)((r >> 8) % (8 + hl));
            uint8_t x = (uint8_t)(tu_rand_u64(&rng) | 1);
            if ((r & 0x30) == 0x30) x = (uint8_t)(1u << ((r >> 40) & 7)); /* single bit */
            b[pos] ^= x;
        }
        cz_safetensors *st = NULL;
        cz_status s = cz_st_parse(b, full, 0, &st);
        if (s == CZ_OK) {
            touch_all(st);
            cz_st_close(st);
            ok++;
        } else {
            if (s != CZ_ERR_BAD_WEIGHTS) fail_msg("iteration %d: status %d", iter, (int)s);
            assert_non_null(strstr(cz_error_detail(), ""));
            bad++;
        }
    }
    print_message("random flips: %d accepted, %d refused\n", ok, bad);
    assert_true(bad > 1000);
    free(b);
    free(img);
}

/* ---- Python-written files ---- */

/* The layout a Python writer produces with json.dumps (default separators, with spaces),
 * numpy's tobytes() data, a 'format': 'pt' metadata and header padding with spaces. */
static void test_python_layout(void **state) {
    (void)state;
    const char *json =
        "{\"__metadata__\": {\"format\": \"pt\"}, "
        "\"x\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 16]}, "
        "\"y\": {\"dtype\": \"F16\", \"shape\": [3], \"data_offsets\": [16, 22]}, "
        "\"z\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [22, 30]}}";
    size_t hl = strlen(json), padded = (hl + 7) / 8 * 8;
    char *hdr = malloc(padded + 1);
    memcpy(hdr, json, hl);
    memset(hdr + hl, ' ', padded - hl);
    hdr[padded] = 0;
    uint8_t data[30];
    float x[4] = {1.0f, -2.5f, 0.25f, 3.0f};
    uint16_t y[3] = {0x3c00, 0xc100, 0x3800}; /* 1, -2.5, 0.5 */
    int64_t z = -7;
    memcpy(data, x, 16);
    memcpy(data + 16, y, 6);
    memcpy(data + 22, &z, 8);
    size_t len;
    uint8_t *b = mk(hdr, data, sizeof data, &len);
    cz_safetensors *st = parse_ok(b, len);
    assert_string_equal(cz_st_meta(st, "format"), "pt");
    float f[4];
    assert_int_equal(cz_st_to_f32(cz_st_find(st, "x"), f, 4), CZ_OK);
    assert_memory_equal(f, x, 16);
    assert_int_equal(cz_st_to_f32(cz_st_find(st, "y"), f, 3), CZ_OK);
    assert_true(f[0] == 1.0f && f[1] == -2.5f && f[2] == 0.5f);
    const cz_st_tensor *tz = cz_st_find(st, "z");
    int64_t zz;
    memcpy(&zz, tz->data, 8); /* unaligned in the file: copy, never cast */
    assert_int_equal(zz, -7);
    assert_int_equal(cz_st_to_f32(tz, f, 1), CZ_ERR_UNSUPPORTED);
    cz_st_close(st);
    free(b);
    free(hdr);
}

/* tests/golden/data/numpy_small.safetensors, written by tests/golden/torch_unet.py's pure
 * numpy writer (see tests/golden/README.md): values are arange-based. */
static void test_numpy_fixture(void **state) {
    (void)state;
    char *path = tu_path(tu_source_dir(), "tests/golden/data/numpy_small.safetensors");
    cz_safetensors *st = NULL;
    cz_status s = cz_st_open(path, &st);
    if (s != CZ_OK) fail_msg("%s: %s", path, cz_error_detail());
    assert_string_equal(cz_st_meta(st, "writer"), "numpy");
    struct {
        const char *name;
        cz_st_dtype dt;
        size_t n;
    } want[] = {{"a.f32", CZ_ST_F32, 6}, {"b.f16", CZ_ST_F16, 5}, {"c.f64", CZ_ST_F64, 3},
                {"d.bf16", CZ_ST_BF16, 4}, {"e.i64", CZ_ST_I64, 2}};
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        const cz_st_tensor *t = cz_st_find(st, want[k].name);
        assert_non_null(t);
        assert_int_equal(t->dtype, want[k].dt);
        assert_int_equal(cz_st_numel(t), want[k].n);
        if (t->dtype == CZ_ST_I64) {
            for (size_t i = 0; i < want[k].n; i++) {
                int64_t v;
                memcpy(&v, t->data + 8 * i, 8);
                assert_int_equal(v, (int64_t)i - 1);
            }
            continue;
        }
        float f[8];
        assert_int_equal(cz_st_to_f32(t, f, want[k].n), CZ_OK);
        for (size_t i = 0; i < want[k].n; i++) /* value i * 0.5 - 1 */
            assert_true(f[i] == (float)i * 0.5f - 1.0f);
    }
    cz_st_close(st);
    free(path);
}

/* The U-Net golden fixture (written by tests/golden/make_unet_fixture.py) reads cleanly. */
static void test_unet_fixture(void **state) {
    (void)state;
    char *path = tu_path(tu_source_dir(), "tests/golden/data/unet_rgb_ngf4_d6.safetensors");
    cz_safetensors *st = NULL;
    cz_status s = cz_st_open(path, &st);
    if (s != CZ_OK) fail_msg("%s: %s", path, cz_error_detail());
    assert_string_equal(cz_st_meta(st, "format"), "colorize-unet");
    assert_string_equal(cz_st_meta(st, "depth"), "6");
    assert_string_equal(cz_st_meta(st, "fixture"), "1");
    const cz_st_tensor *w0 = cz_st_find(st, "down.0.weight");
    assert_non_null(w0);
    assert_int_equal(w0->ndim, 4);
    assert_int_equal(w0->shape[0], 4);
    assert_int_equal(w0->shape[1], 3);
    assert_non_null(cz_st_find(st, "up.0.bias"));
    assert_non_null(cz_st_find(st, "fixture.expected"));
    for (size_t i = 0; i < cz_st_count(st); i++) assert_int_equal(cz_st_at(st, i)->dtype, CZ_ST_F32);
    touch_all(st);
    cz_st_close(st);
    free(path);
}

/* ---- conversion and writer arguments ---- */

static void test_to_f32(void **state) {
    (void)state;
    uint16_t h[] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0x3555};
    cz_st_tensor t = {.name = "h", .dtype = CZ_ST_F16, .ndim = 1, .shape = {10},
                      .data = (const uint8_t *)h, .nbytes = sizeof h};
    float f[10];
    assert_int_equal(cz_st_to_f32(&t, f, 10), CZ_OK);
    assert_true(f[0] == 1.0f);
    assert_true(f[1] == -2.0f);
    assert_true(f[2] == 65504.0f);
    assert_true(f[3] == 0x1p-24f);
    assert_true(f[4] == 1023 * 0x1p-24f);
    assert_true(f[5] == 0.0f && signbit(f[5]));
    assert_true(isinf(f[6]) && f[6] > 0);
    assert_true(isinf(f[7]) && f[7] < 0);
    assert_true(isnan(f[8]));
    assert_true(fabsf(f[9] - 0.33325195f) < 1e-7f);

    uint16_t bf[] = {0x3f80, 0xc040, 0x7f80, 0x0001};
    t = (cz_st_tensor){.name = "bf", .dtype = CZ_ST_BF16, .ndim = 1, .shape = {4},
                       .data = (const uint8_t *)bf, .nbytes = sizeof bf};
    assert_int_equal(cz_st_to_f32(&t, f, 4), CZ_OK);
    assert_true(f[0] == 1.0f && f[1] == -3.0f && isinf(f[2]) && f[3] > 0 && f[3] < 1e-38f);

    double d[] = {1.5, -1e300, 1e300, 3.4028234663852886e38, NAN};
    t = (cz_st_tensor){.name = "d", .dtype = CZ_ST_F64, .ndim = 1, .shape = {5},
                       .data = (const uint8_t *)d, .nbytes = sizeof d};
    assert_int_equal(cz_st_to_f32(&t, f, 5), CZ_OK);
    assert_true(f[0] == 1.5f && isinf(f[1]) && f[1] < 0 && isinf(f[2]) && f[3] == 3.4028234663852886e38f);
    assert_true(isnan(f[4]));

    /* unaligned source */
    uint8_t raw[1 + 8];
    float one = 1.25f, two = -4.0f;
    memcpy(raw + 1, &one, 4);
    memcpy(raw + 5, &two, 4);
    t = (cz_st_tensor){.name = "u", .dtype = CZ_ST_F32, .ndim = 1, .shape = {2},
                       .data = raw + 1, .nbytes = 8};
    assert_int_equal(cz_st_to_f32(&t, f, 2), CZ_OK);
    assert_true(f[0] == 1.25f && f[1] == -4.0f);
    assert_int_equal(cz_st_to_f32(&t, f, 3), CZ_ERR_SHAPE);

    int32_t ints[2] = {1, 2};
    t = (cz_st_tensor){.name = "i", .dtype = CZ_ST_I32, .ndim = 1, .shape = {2},
                       .data = (const uint8_t *)ints, .nbytes = 8};
    assert_int_equal(cz_st_to_f32(&t, f, 2), CZ_ERR_UNSUPPORTED);
    assert_non_null(strstr(cz_error_detail(), "i: dtype I32"));

    assert_string_equal(cz_st_dtype_name(CZ_ST_BF16), "BF16");
    assert_int_equal(cz_st_dtype_size(CZ_ST_F64), 8);
    assert_int_equal(cz_st_dtype_size(CZ_ST_BOOL), 1);
    assert_int_equal(cz_st_dtype_size(CZ_ST_DTYPE_COUNT_), 0);
}

static void test_writer_args(void **state) {
    (void)state;
    cz_st_writer *w = NULL;
    assert_int_equal(cz_st_writer_create(&w), CZ_OK);
    float x[4] = {0};
    int64_t s4[] = {4}, sneg[] = {-4}, s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 4};
    assert_int_equal(cz_st_writer_add(w, "x", CZ_ST_F32, 1, s4, x, 16), CZ_OK);
    assert_int_equal(cz_st_writer_add(w, "x", CZ_ST_F32, 1, s4, x, 16), CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_st_writer_add(w, "y", CZ_ST_F32, 1, s4, x, 12), CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_st_writer_add(w, "y", CZ_ST_F32, 1, sneg, x, 16), CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_st_writer_add(w, "y", CZ_ST_F32, 9, s9, x, 16), CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_st_writer_add(w, "y", CZ_ST_DTYPE_COUNT_, 1, s4, x, 16),
                     CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_st_writer_add(w, "__metadata__", CZ_ST_F32, 1, s4, x, 16),
                     CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_st_writer_add(w, "bad\xff", CZ_ST_F32, 1, s4, x, 16), CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_st_writer_meta(w, "k", "bad\xc3"), CZ_ERR_INVALID_ARG);
    assert_int_not_equal(cz_st_writer_save(w, "/nonexistent-dir/x.safetensors"), CZ_OK);
    cz_st_writer_destroy(w);

    cz_safetensors *st = NULL;
    assert_int_equal(cz_st_open("/nonexistent-dir/x.safetensors", &st), CZ_ERR_NOT_FOUND);
    assert_null(st);
    assert_int_equal(cz_st_parse(NULL, 4, 0, &st), CZ_ERR_INVALID_ARG);
}

static void test_open_refusal_names_path(void **state) {
    (void)state;
    char path[] = "/tmp/cz_st_bad_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    size_t len;
    uint8_t *b = mk(T("{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}"), NULL, 16, &len);
    assert_int_equal(cz_file_write_atomic(path, b, len), CZ_OK);
    cz_safetensors *st = NULL;
    assert_int_equal(cz_st_open(path, &st), CZ_ERR_BAD_WEIGHTS);
    assert_non_null(strstr(cz_error_detail(), path));
    assert_non_null(strstr(cz_error_detail(), "t: 16 data bytes"));
    unlink(path);
    free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_aligned_offsets),
        cmocka_unit_test(test_short_and_header_length),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_bad_dtype),
        cmocka_unit_test(test_bad_shape),
        cmocka_unit_test(test_bad_offsets),
        cmocka_unit_test(test_bad_size),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_bad_metadata),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_random_flips),
        cmocka_unit_test(test_python_layout),
        cmocka_unit_test(test_numpy_fixture),
        cmocka_unit_test(test_unet_fixture),
        cmocka_unit_test(test_to_f32),
        cmocka_unit_test(test_writer_args),
        cmocka_unit_test(test_open_refusal_names_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
