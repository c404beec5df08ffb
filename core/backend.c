/* backend.c: backend registry ("auto" = cuda -> dnnl -> ref), dtype helpers, float
 * conversions and tensor allocation wrappers. See backend.h. Tested by tests/unit/test_ops.c
 * and tests/unit/test_core.c. */
#include "backend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

size_t cz_dtype_size(cz_dtype dt) { return dt == CZ_F32 ? 4 : 2; }

const char *cz_dtype_name(cz_dtype dt) {
    switch (dt) {
    case CZ_F32: return "fp32";
    case CZ_BF16: return "bf16";
    case CZ_F16: return "fp16";
    }
    return "?";
}

int cz_dtype_parse(const char *name) {
    if (!name) return -1;
    if (!strcmp(name, "fp32") || !strcmp(name, "f32") || !strcmp(name, "float32")) return CZ_F32;
    if (!strcmp(name, "bf16") || !strcmp(name, "bfloat16")) return CZ_BF16;
    if (!strcmp(name, "fp16") || !strcmp(name, "f16") || !strcmp(name, "float16")) return CZ_F16;
    return -1;
}

typedef cz_status (*create_fn)(const cz_backend_options *, cz_backend **);
typedef struct {
    const char *name;
    create_fn create;
} registry_row;

/* In order of preference for "auto". */
static const registry_row k_registry[] = {
#ifdef CZ_HAVE_CUDA
    {"cuda", cz_backend_cuda_create},
#endif
    {"dnnl", cz_backend_dnnl_create},
    {"ref", cz_backend_ref_create},
};
#define REGISTRY_N (sizeof k_registry / sizeof k_registry[0])

const char *const *cz_backend_names(void) {
    static const char *names[REGISTRY_N + 1];
    for (size_t i = 0; i < REGISTRY_N; i++) names[i] = k_registry[i].name;
    names[REGISTRY_N] = NULL;
    return names;
}

cz_status cz_backend_create(const char *name, const cz_backend_options *opt, cz_backend **out) {
    *out = NULL;
    cz_backend_options defaults = {0};
    if (!opt) opt = &defaults;
    if (!name || !strcmp(name, "auto")) {
        for (size_t i = 0; i < REGISTRY_N; i++) {
            cz_status s = k_registry[i].create(opt, out);
            if (s == CZ_OK) {
                CZ_LOGI("backend", "auto selected backend '%s'", k_registry[i].name);
                return CZ_OK;
            }
            CZ_LOGI("backend", "backend '%s' not usable: %s", k_registry[i].name, cz_error_detail());
        }
        return cz_error_set(CZ_ERR_UNAVAILABLE, "no backend could start");
    }
    for (size_t i = 0; i < REGISTRY_N; i++)
        if (!strcmp(name, k_registry[i].name)) return k_registry[i].create(opt, out);
    if (!strcmp(name, "cuda"))
        return cz_error_set(CZ_ERR_UNAVAILABLE, "backend 'cuda' is not compiled into this build");
    return cz_error_set(CZ_ERR_INVALID_ARG, "unknown backend '%s' (expected auto, cuda, dnnl or ref)", name);
}

void cz_backend_destroy(cz_backend *be) {
    if (be) be->ops->destroy(be);
}

cz_status cz_tensor_alloc(cz_backend *be, cz_tensor *t, cz_dtype dt, cz_role role, int n, int c,
                          int h, int w) {
    memset(t, 0, sizeof *t);
    if (n <= 0 || c <= 0 || h <= 0 || w <= 0)
        return cz_error_set(CZ_ERR_INVALID_ARG, "tensor shape [%d,%d,%d,%d] has a non-positive dim", n, c, h, w);
    if (!be->ops->supports(be, dt))
        return cz_error_set(CZ_ERR_UNSUPPORTED, "backend '%s' does not support %s", be->ops->name, cz_dtype_name(dt));
    t->dtype = dt;
    t->role = role;
    t->n = n;
    t->c = c;
    t->h = h;
    t->w = w;
    return be->ops->tensor_alloc(be, t);
}

void cz_tensor_free(cz_backend *be, cz_tensor *t) {
    if (!t || !t->data) return;
    be->ops->tensor_free(be, t);
    memset(t, 0, sizeof *t);
}

int cz_shape_eq(const cz_tensor *a, const cz_tensor *b) {
    return a->n == b->n && a->c == b->c && a->h == b->h && a->w == b->w;
}

uint16_t cz_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float cz_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t cz_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);   /* NaN */
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  /* overflow -> inf */
    if (absx < 0x38800000u) {                                     /* subnormal or zero */
        if (absx < 0x33000000u) return (uint16_t)sign;
        uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
        int shift = 113 - (int)(absx >> 23) + 13;
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1u);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t r = absx - 0x38000000u;          /* rebias exponent */
    uint32_t half = r >> 13;
    uint32_t rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) half++;
    return (uint16_t)(sign | half);
}

float cz_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    float f;
    if (e == 0) {
        f = ldexpf((float)m, -24);
        if (sign) f = -f;
        return f;
    }
    uint32_t u = e == 31 ? (sign | 0x7f800000u | (m << 13)) : (sign | ((e + 112u) << 23) | (m << 13));
    memcpy(&f, &u, 4);
    return f;
}

cz_status cz_act_dtype_check(cz_backend *be, cz_dtype cur, cz_dtype dt, int planned) {
    if (dt != cur && planned)
        return cz_error_set(CZ_ERR_INVALID_ARG, "activation dtype must be set before the graph is planned");
    if (!be->ops->supports(be, dt))
        return cz_error_set(CZ_ERR_UNSUPPORTED, "backend %s has no %s tensors", be->ops->name, cz_dtype_name(dt));
    return CZ_OK;
}

void cz_host_buf_free(cz_backend *be, cz_host_buf *hb) {
    if (!hb || !hb->p) return;
    if (hb->from_backend)
        be->ops->host_free(be, hb->p);
    else
        free(hb->p);
    memset(hb, 0, sizeof *hb);
}

cz_status cz_host_buf_reserve(cz_backend *be, cz_host_buf *hb, size_t bytes) {
    if (hb->p && hb->bytes >= bytes) return CZ_OK;
    cz_host_buf_free(be, hb);
    if (be->ops->host_alloc && (hb->p = be->ops->host_alloc(be, bytes))) {
        hb->from_backend = 1; /* a failure (say, a page-locking limit) falls back to malloc */
    } else {
        hb->p = malloc(bytes ? bytes : 1);
        hb->from_backend = 0;
    }
    if (!hb->p) return cz_error_set(CZ_ERR_NOMEM, "cannot allocate a %zu byte host buffer", bytes);
    hb->bytes = bytes;
    return CZ_OK;
}
