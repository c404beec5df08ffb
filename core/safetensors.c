/* safetensors.c: validating reader and atomic writer for safetensors files (see safetensors.h).
 *
 * Reader. The whole file lives in one buffer (owned, or borrowed from the caller). The header
 * JSON is parsed with jansson using JSON_REJECT_DUPLICATES (jansson would otherwise keep the
 * last of two equal keys silently) and every entry is checked before any tensor is handed out:
 * dtype known, shape an array of at most CZ_ST_MAX_DIMS non-negative integers (reals, strings,
 * booleans refused), data_offsets two non-negative integers with begin <= end <= data size,
 * end - begin == numel * dtype size computed with overflow checks. Then the non-empty tensors
 * are sorted by offset and must tile the data section exactly, as the format requires:
 *   - two tensors sharing a byte is an overlap (refused);
 *   - bytes that belong to no tensor, between tensors or after the last one, are refused too.
 *     The format says the data section is exactly covered, the reference implementation
 *     rejects such files, and unexplained bytes in a weights file most often mean a damaged
 *     or concatenated file. Empty tensors (a zero dim) own no bytes and only need
 *     begin == end within the data section.
 * Unknown keys inside an entry are ignored, as the reference implementation does.
 * Every refusal is CZ_ERR_BAD_WEIGHTS with a detail "<tensor>: <what was wrong>".
 * Tensor order (cz_st_at) is the header's order; cz_st_find uses a name-sorted index;
 * metadata is kept sorted by key. The checksum (FNV-1a 64 over every byte of the file) is
 * computed on first request and cached.
 *
 * Writer. Tensors are copied in; the header JSON puts "__metadata__" first (keys sorted), then
 * the tensors in insertion order, and is padded with spaces so the data section starts at an
 * 8-byte aligned file offset (as the reference writer does). Data bytes are contiguous (no
 * holes, so any conforming reader accepts the file); to keep every tensor naturally aligned
 * they are laid out in insertion order within groups of decreasing element size (8-byte
 * dtypes, then 4, 2, 1). Offsets are therefore 8-aligned whenever the tensors before them
 * have sizes that are multiples of 8, which holds for every model file we write; a file
 * with, say, an F16 tensor of 3 elements gets that tensor element-aligned only.
 * cz_st_writer_save goes through cz_file_write_atomic.
 *
 * Threading: none; one object per thread. Tested by tests/unit/test_safetensors.c. */
#include "safetensors.h"

#include <float.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"

#define ST_META_KEY "__metadata__"

/* ---- dtypes ---- */

typedef struct {
    const char *name;
    size_t size;
} dtype_info;

static const dtype_info k_dtypes[CZ_ST_DTYPE_COUNT_] = {
    [CZ_ST_F32] = {"F32", 4}, [CZ_ST_F16] = {"F16", 2}, [CZ_ST_BF16] = {"BF16", 2},
    [CZ_ST_F64] = {"F64", 8}, [CZ_ST_I64] = {"I64", 8}, [CZ_ST_I32] = {"I32", 4},
    [CZ_ST_U8] = {"U8", 1},   [CZ_ST_BOOL] = {"BOOL", 1},
};

static int dtype_valid(cz_st_dtype dt) { return (int)dt >= 0 && dt < CZ_ST_DTYPE_COUNT_; }

const char *cz_st_dtype_name(cz_st_dtype dt) { return dtype_valid(dt) ? k_dtypes[dt].name : "?"; }

size_t cz_st_dtype_size(cz_st_dtype dt) { return dtype_valid(dt) ? k_dtypes[dt].size : 0; }

static int dtype_from_name(const char *s, cz_st_dtype *out) {
    for (int i = 0; i < CZ_ST_DTYPE_COUNT_; i++) {
        if (strcmp(s, k_dtypes[i].name) == 0) {
            *out = (cz_st_dtype)i;
            return 1;
        }
    }
    return 0;
}

/* Element count of a shape; 0 on overflow of size_t (caller distinguishes via *ok). */
static size_t shape_numel(const int64_t *shape, int ndim, int *ok) {
    size_t n = 1;
    *ok = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (uint64_t)shape[d] > SIZE_MAX) {
            *ok = 0;
            return 0;
        }
        if (__builtin_mul_overflow(n, (size_t)shape[d], &n)) {
            *ok = 0;
            return 0;
        }
    }
    return n;
}

size_t cz_st_numel(const cz_st_tensor *t) {
    int ok;
    size_t n = shape_numel(t->shape, t->ndim, &ok);
    return ok ? n : 0;
}

/* ---- reader ---- */

typedef struct {
    char *key;
    char *value;
} meta_pair;

struct cz_safetensors {
    uint8_t *owned; /* file image when owned, else NULL */
    const uint8_t *buf;
    size_t len;
    cz_st_tensor *tensors; /* header order */
    size_t ntensors;
    size_t *by_name; /* indices into tensors, sorted by name */
    meta_pair *meta; /* sorted by key */
    size_t nmeta;
    char *names; /* arena for tensor names */
    int have_checksum;
    uint64_t checksum;
};

void cz_st_close(cz_safetensors *st) {
    if (!st) return;
    for (size_t i = 0; i < st->nmeta; i++) {
        free(st->meta[i].key);
        free(st->meta[i].value);
    }
    free(st->meta);
    free(st->by_name);
    free(st->tensors);
    free(st->names);
    free(st->owned);
    free(st);
}

static cz_status bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static cz_status bad(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    cz_status s = cz_error_setv(CZ_ERR_BAD_WEIGHTS, fmt, ap);
    va_end(ap);
    return s;
}

/* A JSON value that is an integer in [0, max]. */
static int json_uint(const json_t *v, uint64_t max, uint64_t *out) {
    if (!json_is_integer(v)) return 0;
    json_int_t x = json_integer_value(v);
    if (x < 0 || (unsigned long long)x > max) return 0;
    *out = (uint64_t)x;
    return 1;
}

static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "unknown";
}

typedef struct {
    size_t begin, end;
} range;

/* Parses one tensor entry into t (name set by the caller); data_len is the data section size. */
static cz_status parse_entry(const char *name, const json_t *e, size_t data_len, cz_st_tensor *t,
                             range *r) {
    if (!json_is_object(e)) return bad("%s: entry is %s, expected an object", name, json_kind(e));

    const json_t *jd = json_object_get(e, "dtype");
    if (!jd) return bad("%s: missing dtype", name);
    if (!json_is_string(jd)) return bad("%s: dtype is %s, expected a string", name, json_kind(jd));
    if (!dtype_from_name(json_string_value(jd), &t->dtype))
        return bad("%s: unknown dtype \"%.32s\"", name, json_string_value(jd));

    const json_t *js = json_object_get(e, "shape");
    if (!js) return bad("%s: missing shape", name);
    if (!json_is_array(js)) return bad("%s: shape is %s, expected an array", name, json_kind(js));
    size_t nd = json_array_size(js);
    if (nd > CZ_ST_MAX_DIMS)
        return bad("%s: shape has %zu dims, at most %d supported", name, nd, CZ_ST_MAX_DIMS);
    t->ndim = (int)nd;
    for (size_t d = 0; d < nd; d++) {
        uint64_t v;
        const json_t *jv = json_array_get(js, d);
        if (!json_uint(jv, INT64_MAX, &v))
            return bad("%s: shape[%zu] is not a non-negative integer (%s)", name, d,
                       json_kind(jv));
        t->shape[d] = (int64_t)v;
    }
    for (size_t d = nd; d < CZ_ST_MAX_DIMS; d++) t->shape[d] = 0;

    const json_t *jo = json_object_get(e, "data_offsets");
    if (!jo) return bad("%s: missing data_offsets", name);
    if (!json_is_array(jo) || json_array_size(jo) != 2)
        return bad("%s: data_offsets is not an array of two integers", name);
    uint64_t b, en;
    if (!json_uint(json_array_get(jo, 0), SIZE_MAX, &b) ||
        !json_uint(json_array_get(jo, 1), SIZE_MAX, &en))
        return bad("%s: data_offsets are not two non-negative integers", name);
    if (b > en)
        return bad("%s: data_offsets [%" PRIu64 ", %" PRIu64 "] have begin > end", name, b, en);
    if (en > data_len)
        return bad("%s: data_offsets end %" PRIu64 " beyond the data section of %zu bytes", name,
                   en, data_len);

    int ok;
    size_t numel = shape_numel(t->shape, t->ndim, &ok);
    size_t need;
    if (!ok || __builtin_mul_overflow(numel, k_dtypes[t->dtype].size, &need))
        return bad("%s: shape's byte size overflows", name);
    if (need != (size_t)(en - b))
        return bad("%s: %" PRIu64 " data bytes but shape and dtype %s need %zu", name, en - b,
                   k_dtypes[t->dtype].name, need);
    r->begin = (size_t)b;
    r->end = (size_t)en;
    return CZ_OK;
}

static int cmp_meta(const void *a, const void *b) {
    return strcmp(((const meta_pair *)a)->key, ((const meta_pair *)b)->key);
}

static cz_status parse_meta(cz_safetensors *st, const json_t *m) {
    if (!json_is_object(m))
        return bad(ST_META_KEY ": is %s, expected an object of strings", json_kind(m));
    size_t n = json_object_size(m);
    st->meta = calloc(n ? n : 1, sizeof *st->meta);
    if (!st->meta) return cz_error_set(CZ_ERR_NOMEM, ST_META_KEY ": out of memory");
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)m, k, v) {
        if (!json_is_string(v))
            return bad(ST_META_KEY ": value of \"%.64s\" is %s, expected a string", k,
                       json_kind(v));
        meta_pair *p = &st->meta[st->nmeta];
        p->key = strdup(k);
        p->value = strdup(json_string_value(v));
        st->nmeta++;
        if (!p->key || !p->value) return cz_error_set(CZ_ERR_NOMEM, ST_META_KEY ": out of memory");
    }
    qsort(st->meta, st->nmeta, sizeof *st->meta, cmp_meta);
    return CZ_OK;
}

/* A non-empty tensor's byte range and its header index, for the layout check. */
typedef struct {
    range r;
    size_t idx;
} ranged;

static int cmp_ranged(const void *a, const void *b) {
    const ranged *x = a, *y = b;
    if (x->r.begin != y->r.begin) return x->r.begin < y->r.begin ? -1 : 1;
    if (x->r.end != y->r.end) return x->r.end < y->r.end ? -1 : 1;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

static int name_cmp(const cz_st_tensor *t, size_t a, size_t b) {
    return strcmp(t[a].name, t[b].name);
}

/* Name index: a heap sort over tensor indices (qsort has no context argument in C11). */
static void sift_down(const cz_st_tensor *t, size_t *idx, size_t root, size_t n) {
    for (;;) {
        size_t c = 2 * root + 1;
        if (c >= n) return;
        if (c + 1 < n && name_cmp(t, idx[c], idx[c + 1]) < 0) c++;
        if (name_cmp(t, idx[root], idx[c]) >= 0) return;
        size_t tmp = idx[root];
        idx[root] = idx[c];
        idx[c] = tmp;
        root = c;
    }
}

static void sort_by_name(const cz_st_tensor *t, size_t *idx, size_t n) {
    for (size_t i = n / 2; i-- > 0;) sift_down(t, idx, i, n);
    for (size_t end = n; end > 1; end--) {
        size_t tmp = idx[0];
        idx[0] = idx[end - 1];
        idx[end - 1] = tmp;
        sift_down(t, idx, 0, end - 1);
    }
}

static cz_status check_layout(const cz_safetensors *st, const range *rs, size_t data_len) {
    size_t n = 0;
    ranged *v = malloc((st->ntensors ? st->ntensors : 1) * sizeof *v);
    if (!v) return cz_error_set(CZ_ERR_NOMEM, "safetensors: out of memory");
    for (size_t i = 0; i < st->ntensors; i++) {
        if (rs[i].begin == rs[i].end) continue; /* empty tensors own no bytes */
        v[n].r = rs[i];
        v[n].idx = i;
        n++;
    }
    qsort(v, n, sizeof *v, cmp_ranged);
    size_t cursor = 0;
    cz_status s = CZ_OK;
    for (size_t i = 0; i < n && s == CZ_OK; i++) {
        const char *name = st->tensors[v[i].idx].name;
        if (v[i].r.begin < cursor)
            s = bad("%s: data_offsets [%zu, %zu] overlap tensor %s", name, v[i].r.begin,
                    v[i].r.end, st->tensors[v[i - 1].idx].name);
        else if (v[i].r.begin > cursor)
            s = bad("%s: %zu unused bytes in the data section before it (at offset %zu)", name,
                    v[i].r.begin - cursor, cursor);
        cursor = v[i].r.end;
    }
    if (s == CZ_OK && cursor != data_len)
        s = bad("safetensors: %zu unused bytes at the end of the data section (tensors end at "
                "%zu of %zu)",
                data_len - cursor, cursor, data_len);
    free(v);
    return s;
}

static cz_status parse_header(cz_safetensors *st, const json_t *root, size_t data_len) {
    size_t n = json_object_size(root);
    st->tensors = calloc(n ? n : 1, sizeof *st->tensors);
    range *rs = calloc(n ? n : 1, sizeof *rs);
    size_t name_bytes = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)root, k, v) name_bytes += strlen(k) + 1;
    st->names = malloc(name_bytes ? name_bytes : 1);
    if (!st->tensors || !rs || !st->names) {
        free(rs);
        return cz_error_set(CZ_ERR_NOMEM, "safetensors: out of memory for %zu entries", n);
    }
    char *np = st->names;
    int seen_meta = 0;
    cz_status s = CZ_OK;
    json_object_foreach((json_t *)root, k, v) {
        if (strcmp(k, ST_META_KEY) == 0) {
            seen_meta = 1;
            s = parse_meta(st, v);
            if (s != CZ_OK) break;
            continue;
        }
        size_t kl = strlen(k) + 1;
        memcpy(np, k, kl);
        cz_st_tensor *t = &st->tensors[st->ntensors];
        t->name = np;
        np += kl;
        s = parse_entry(t->name, v, data_len, t, &rs[st->ntensors]);
        if (s != CZ_OK) break;
        st->ntensors++;
    }
    if (s == CZ_OK && !seen_meta) {
        st->meta = calloc(1, sizeof *st->meta);
        if (!st->meta) s = cz_error_set(CZ_ERR_NOMEM, "safetensors: out of memory");
    }
    if (s == CZ_OK) s = check_layout(st, rs, data_len);
    if (s == CZ_OK) {
        const uint8_t *data = st->buf + (st->len - data_len);
        for (size_t i = 0; i < st->ntensors; i++) {
            st->tensors[i].data = data + rs[i].begin;
            st->tensors[i].nbytes = rs[i].end - rs[i].begin;
        }
        st->by_name = malloc((st->ntensors ? st->ntensors : 1) * sizeof *st->by_name);
        if (!st->by_name) {
            s = cz_error_set(CZ_ERR_NOMEM, "safetensors: out of memory");
        } else {
            for (size_t i = 0; i < st->ntensors; i++) st->by_name[i] = i;
            sort_by_name(st->tensors, st->by_name, st->ntensors);
            /* JSON_REJECT_DUPLICATES already refused equal keys; keep the invariant checked. */
            for (size_t i = 1; i < st->ntensors && s == CZ_OK; i++)
                if (name_cmp(st->tensors, st->by_name[i - 1], st->by_name[i]) == 0)
                    s = bad("%s: duplicate tensor name", st->tensors[st->by_name[i]].name);
        }
    }
    free(rs);
    return s;
}

static cz_status parse_image(cz_safetensors *st) {
    if (st->len < 8)
        return bad("safetensors: file of %zu bytes is shorter than the 8-byte header length",
                   st->len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | st->buf[i];
    if (hlen == 0) return bad("safetensors: header length is 0");
    if (hlen > CZ_ST_MAX_HEADER)
        return bad("safetensors: header length %" PRIu64 " exceeds the limit of %u bytes", hlen,
                   CZ_ST_MAX_HEADER);
    if (hlen > st->len - 8)
        return bad("safetensors: header length %" PRIu64 " runs past the end of the %zu-byte "
                   "file",
                   hlen, st->len);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)st->buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES,
                              &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_duplicate_key) /* text names the key */
            return bad("safetensors: header is not valid JSON: duplicate name (%s at byte %d)",
                       jerr.text, jerr.position);
        return bad("safetensors: header is not valid JSON (%s at byte %d)", jerr.text,
                   jerr.position);
    }
    cz_status s;
    if (!json_is_object(root))
        s = bad("safetensors: header is %s, expected an object", json_kind(root));
    else
        s = parse_header(st, root, st->len - 8 - (size_t)hlen);
    json_decref(root);
    return s;
}

cz_status cz_st_parse(const void *buf, size_t len, int copy, cz_safetensors **out) {
    if (!out || (!buf && len)) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_st_parse: NULL argument");
    *out = NULL;
    cz_safetensors *st = calloc(1, sizeof *st);
    if (!st) return cz_error_set(CZ_ERR_NOMEM, "safetensors: out of memory");
    if (copy) {
        st->owned = malloc(len ? len : 1);
        if (!st->owned) {
            free(st);
            return cz_error_set(CZ_ERR_NOMEM, "safetensors: cannot copy %zu bytes", len);
        }
        if (len) memcpy(st->owned, buf, len);
        st->buf = st->owned;
    } else {
        st->buf = buf;
    }
    st->len = len;
    cz_status s = parse_image(st);
    if (s != CZ_OK) {
        cz_st_close(st);
        return s;
    }
    *out = st;
    return CZ_OK;
}

cz_status cz_st_open(const char *path, cz_safetensors **out) {
    if (!path || !out) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_st_open: NULL argument");
    *out = NULL;
    uint8_t *data;
    size_t len;
    CZ_TRY(cz_file_read(path, 0, &data, &len));
    cz_safetensors *st = calloc(1, sizeof *st);
    if (!st) {
        free(data);
        return cz_error_set(CZ_ERR_NOMEM, "safetensors: out of memory");
    }
    st->owned = data;
    st->buf = data;
    st->len = len;
    cz_status s = parse_image(st);
    if (s != CZ_OK) {
        /* Prefix the path once so the caller knows which file was refused. */
        char detail[512];
        snprintf(detail, sizeof detail, "%s", cz_error_detail());
        cz_st_close(st);
        return cz_error_set(s, "%s: %s", path, detail);
    }
    *out = st;
    return CZ_OK;
}

size_t cz_st_count(const cz_safetensors *st) { return st ? st->ntensors : 0; }

const cz_st_tensor *cz_st_at(const cz_safetensors *st, size_t i) {
    return st && i < st->ntensors ? &st->tensors[i] : NULL;
}

const cz_st_tensor *cz_st_find(const cz_safetensors *st, const char *name) {
    if (!st || !name) return NULL;
    size_t lo = 0, hi = st->ntensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const cz_st_tensor *t = &st->tensors[st->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *cz_st_meta(const cz_safetensors *st, const char *key) {
    if (!st || !key) return NULL;
    size_t lo = 0, hi = st->nmeta;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(key, st->meta[mid].key);
        if (c == 0) return st->meta[mid].value;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

size_t cz_st_meta_count(const cz_safetensors *st) { return st ? st->nmeta : 0; }

void cz_st_meta_at(const cz_safetensors *st, size_t i, const char **key, const char **value) {
    const char *k = NULL, *v = NULL;
    if (st && i < st->nmeta) {
        k = st->meta[i].key;
        v = st->meta[i].value;
    }
    if (key) *key = k;
    if (value) *value = v;
}

static uint64_t fnv1a64(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

uint64_t cz_st_checksum(const cz_safetensors *st) {
    if (!st) return 0;
    /* Cached on first use; the object is never const at allocation, so the cast is sound. */
    cz_safetensors *m = (cz_safetensors *)st;
    if (!m->have_checksum) {
        m->checksum = fnv1a64(st->buf, st->len);
        m->have_checksum = 1;
    }
    return m->checksum;
}

/* ---- conversion ---- */

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) { /* inf / NaN (payload kept, quiet bit set) */
        bits = sign | 0x7f800000u | (man << 13) | (man ? 0x00400000u : 0);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal half: value = man * 2^-24, exact in float */
        float f = (float)man * 0x1p-24f;
        return sign ? -f : f;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static float f64_to_f32(double d) {
    /* Out-of-range conversion is undefined in ISO C; round to infinity explicitly, using the
     * IEEE midpoint between FLT_MAX and 2^128 as the threshold. */
    const double lim = 0x1.ffffffp127;
    if (d >= lim) return INFINITY;
    if (d <= -lim) return -INFINITY;
    return (float)d; /* NaN converts to NaN */
}

cz_status cz_st_to_f32(const cz_st_tensor *t, float *dst, size_t numel) {
    if (!t || (!dst && numel)) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_st_to_f32: NULL argument");
    size_t n = cz_st_numel(t);
    if (n != numel)
        return cz_error_set(CZ_ERR_SHAPE, "%s: has %zu elements, caller expects %zu", t->name, n,
                            numel);
    if (!dtype_valid(t->dtype) || t->nbytes != n * k_dtypes[t->dtype].size)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: inconsistent tensor descriptor", t->name);
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case CZ_ST_F32:
        if (n) memcpy(dst, p, n * 4);
        break;
    case CZ_ST_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(p[2 * i] | (p[2 * i + 1] << 8));
            dst[i] = f16_to_f32(h);
        }
        break;
    case CZ_ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint32_t bits = ((uint32_t)p[2 * i] << 16) | ((uint32_t)p[2 * i + 1] << 24);
            memcpy(&dst[i], &bits, 4);
        }
        break;
    case CZ_ST_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = f64_to_f32(d);
        }
        break;
    default:
        return cz_error_set(CZ_ERR_UNSUPPORTED, "%s: dtype %s is not a floating type", t->name,
                            k_dtypes[t->dtype].name);
    }
    return CZ_OK;
}

/* ---- writer ---- */

typedef struct {
    char *name;
    cz_st_dtype dtype;
    int ndim;
    int64_t shape[CZ_ST_MAX_DIMS];
    uint8_t *data;
    size_t nbytes;
    size_t offset; /* assigned at serialization */
} w_tensor;

struct cz_st_writer {
    w_tensor *t;
    size_t n, cap;
    meta_pair *meta; /* kept sorted by key */
    size_t nmeta, capmeta;
};

cz_status cz_st_writer_create(cz_st_writer **out) {
    if (!out) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_st_writer_create: NULL argument");
    *out = calloc(1, sizeof **out);
    return *out ? CZ_OK : cz_error_set(CZ_ERR_NOMEM, "safetensors writer: out of memory");
}

void cz_st_writer_destroy(cz_st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    for (size_t i = 0; i < w->nmeta; i++) {
        free(w->meta[i].key);
        free(w->meta[i].value);
    }
    free(w->t);
    free(w->meta);
    free(w);
}

/* Whether jansson will accept s as a JSON string (valid UTF-8). */
static int utf8_ok(const char *s) {
    json_t *j = json_string(s);
    if (!j) return 0;
    json_decref(j);
    return 1;
}

cz_status cz_st_writer_meta(cz_st_writer *w, const char *key, const char *value) {
    if (!w || !key || !value)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_st_writer_meta: NULL argument");
    if (!utf8_ok(key) || !utf8_ok(value))
        return cz_error_set(CZ_ERR_INVALID_ARG, "metadata %.64s: not valid UTF-8", key);
    size_t pos = 0;
    while (pos < w->nmeta && strcmp(w->meta[pos].key, key) < 0) pos++;
    char *v = strdup(value);
    if (!v) return cz_error_set(CZ_ERR_NOMEM, "safetensors writer: out of memory");
    if (pos < w->nmeta && strcmp(w->meta[pos].key, key) == 0) { /* replace */
        free(w->meta[pos].value);
        w->meta[pos].value = v;
        return CZ_OK;
    }
    if (w->nmeta == w->capmeta) {
        size_t nc = w->capmeta ? 2 * w->capmeta : 8;
        meta_pair *m = realloc(w->meta, nc * sizeof *m);
        if (!m) {
            free(v);
            return cz_error_set(CZ_ERR_NOMEM, "safetensors writer: out of memory");
        }
        w->meta = m;
        w->capmeta = nc;
    }
    char *k = strdup(key);
    if (!k) {
        free(v);
        return cz_error_set(CZ_ERR_NOMEM, "safetensors writer: out of memory");
    }
    memmove(&w->meta[pos + 1], &w->meta[pos], (w->nmeta - pos) * sizeof *w->meta);
    w->meta[pos].key = k;
    w->meta[pos].value = v;
    w->nmeta++;
    return CZ_OK;
}

cz_status cz_st_writer_add(cz_st_writer *w, const char *name, cz_st_dtype dtype, int ndim,
                           const int64_t *shape, const void *data, size_t nbytes) {
    if (!w || !name || (ndim > 0 && !shape) || (nbytes && !data))
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_st_writer_add: NULL argument");
    if (!dtype_valid(dtype)) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: invalid dtype", name);
    if (ndim < 0 || ndim > CZ_ST_MAX_DIMS)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: %d dims (0..%d allowed)", name, ndim,
                            CZ_ST_MAX_DIMS);
    if (strcmp(name, ST_META_KEY) == 0 || !utf8_ok(name))
        return cz_error_set(CZ_ERR_INVALID_ARG, "%.64s: reserved or invalid tensor name", name);
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return cz_error_set(CZ_ERR_INVALID_ARG, "%s: tensor added twice", name);
    int ok;
    size_t numel = shape_numel(shape, ndim, &ok), need;
    if (!ok || __builtin_mul_overflow(numel, k_dtypes[dtype].size, &need))
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: negative dim or size overflow", name);
    if (need != nbytes)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: %zu bytes given, shape and dtype need %zu",
                            name, nbytes, need);
    if (w->n == w->cap) {
        size_t nc = w->cap ? 2 * w->cap : 16;
        w_tensor *t = realloc(w->t, nc * sizeof *t);
        if (!t) return cz_error_set(CZ_ERR_NOMEM, "safetensors writer: out of memory");
        w->t = t;
        w->cap = nc;
    }
    w_tensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->data = malloc(nbytes ? nbytes : 1);
    if (!t->name || !t->data) {
        free(t->name);
        free(t->data);
        return cz_error_set(CZ_ERR_NOMEM, "%s: cannot copy %zu bytes", name, nbytes);
    }
    if (nbytes) memcpy(t->data, data, nbytes);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    t->nbytes = nbytes;
    w->n++;
    return CZ_OK;
}

static int jset(json_t *obj, const char *key, json_t *v) {
    return v && json_object_set_new(obj, key, v) == 0;
}

/* Builds the header JSON; offsets must be assigned. Returns a malloc'd string or NULL. */
static char *writer_header(const cz_st_writer *w) {
    json_t *root = json_object();
    int ok = root != NULL;
    if (ok && w->nmeta) {
        json_t *m = json_object();
        ok = jset(root, ST_META_KEY, m);
        for (size_t i = 0; ok && i < w->nmeta; i++)
            ok = jset(m, w->meta[i].key, json_string(w->meta[i].value));
    }
    for (size_t i = 0; ok && i < w->n; i++) {
        const w_tensor *t = &w->t[i];
        /* Every new value is handed to its parent at once, so a failure leaks nothing. */
        json_t *e = json_object();
        ok = jset(root, t->name, e) && jset(e, "dtype", json_string(k_dtypes[t->dtype].name)) &&
             jset(e, "shape", json_array()) && jset(e, "data_offsets", json_array());
        json_t *shape = ok ? json_object_get(e, "shape") : NULL;
        json_t *offs = ok ? json_object_get(e, "data_offsets") : NULL;
        for (int d = 0; ok && d < t->ndim; d++)
            ok = json_array_append_new(shape, json_integer((json_int_t)t->shape[d])) == 0;
        ok = ok && json_array_append_new(offs, json_integer((json_int_t)t->offset)) == 0;
        ok = ok &&
             json_array_append_new(offs, json_integer((json_int_t)(t->offset + t->nbytes))) == 0;
    }
    char *s = ok ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return s;
}

cz_status cz_st_writer_bytes(cz_st_writer *w, uint8_t **out, size_t *len) {
    if (!w || !out || !len) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_st_writer_bytes: NULL argument");
    *out = NULL;
    *len = 0;
    /* Data layout: groups of decreasing element size, insertion order inside each group. */
    size_t off = 0;
    static const size_t k_sizes[] = {8, 4, 2, 1};
    for (size_t g = 0; g < sizeof k_sizes / sizeof k_sizes[0]; g++) {
        for (size_t i = 0; i < w->n; i++) {
            if (k_dtypes[w->t[i].dtype].size != k_sizes[g]) continue;
            w->t[i].offset = off;
            if (__builtin_add_overflow(off, w->t[i].nbytes, &off))
                return cz_error_set(CZ_ERR_TOO_LARGE, "safetensors writer: data size overflows");
        }
    }
    char *hdr = writer_header(w);
    if (!hdr) return cz_error_set(CZ_ERR_NOMEM, "safetensors writer: cannot build header JSON");
    size_t hl = strlen(hdr);
    size_t padded = hl + (8 - (8 + hl) % 8) % 8; /* data section starts 8-aligned */
    size_t total;
    if (padded > CZ_ST_MAX_HEADER || __builtin_add_overflow(8 + padded, off, &total)) {
        free(hdr);
        return cz_error_set(CZ_ERR_TOO_LARGE, "safetensors writer: header of %zu bytes too large",
                            padded);
    }
    uint8_t *buf = malloc(total);
    if (!buf) {
        free(hdr);
        return cz_error_set(CZ_ERR_NOMEM, "safetensors writer: cannot allocate %zu bytes", total);
    }
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    memset(buf + 8 + hl, ' ', padded - hl);
    free(hdr);
    uint8_t *data = buf + 8 + padded;
    for (size_t i = 0; i < w->n; i++)
        if (w->t[i].nbytes) memcpy(data + w->t[i].offset, w->t[i].data, w->t[i].nbytes);
    *out = buf;
    *len = total;
    return CZ_OK;
}

cz_status cz_st_writer_save(cz_st_writer *w, const char *path) {
    if (!path) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_st_writer_save: NULL path");
    uint8_t *buf;
    size_t len;
    CZ_TRY(cz_st_writer_bytes(w, &buf, &len));
    cz_status s = cz_file_write_atomic(path, buf, len);
    free(buf);
    return s;
}
