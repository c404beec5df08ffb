/* backend_dnnl_impl.h: private to the oneDNN backend (backend_dnnl.c: instance, memory,
 * caches; backend_dnnl_conv.c: conv2d/deconv2d; backend_dnnl_ops.c: the other forward ops;
 * backend_dnnl_bwd.c: convolution and batch-norm backward; backend_dnnl_train.c: the
 * element-wise backward ops, split and the Adam step). Not for use elsewhere.
 *
 * Storage: every buffer the backend hands out starts with a 64-byte hidden header (magic,
 * a never-reused buffer id, a generation counter bumped whenever the contents change through
 * the backend) followed by the tensor data, so t->data stays 64-byte aligned. Caches key on
 * the buffer id, never on the address, so a freed and reused address cannot alias.
 *
 * Channel views (backend.h): a view keeps t->data = the storage's first element, so the header
 * (and with it the generation counter) is the storage's: a write through a view bumps the
 * generation of the whole buffer, exactly like any other write to it. oneDNN sees a view as a
 * sub-memory descriptor of the storage (dn_tensor_md); within one image a view's channels are
 * one contiguous run laid out like a dense (1, c, h, w) tensor of the storage's layout
 * (dn_img_off), which the per-image paths rely on.
 *
 * Threading: one thread at a time per instance, like every backend. */
#ifndef CZ_BACKEND_DNNL_IMPL_H
#define CZ_BACKEND_DNNL_IMPL_H

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "backend_dnnl.h"

#define DN_MAGIC 0x6c6e6e64637a7a31ull /* "1zzcdnnl" */
#define DN_MAX_ARGS 10
#define DN_AUX_SLOTS 16 /* 0..7 forward ops, 8..15 backward ops */

/* Turns a failing dnnl call into CZ_ERR_BACKEND with file:line, the call and oneDNN's
 * status name, logged at error level, returned from the enclosing function. */
cz_status dn_fail(dnnl_status_t st, const char *file, int line, const char *expr);
#define DN_CHECK(call)                                                              \
    do {                                                                            \
        dnnl_status_t dn_st_ = (call);                                              \
        if (dn_st_ != dnnl_success) return dn_fail(dn_st_, __FILE__, __LINE__, #call); \
    } while (0)

typedef struct dn_hdr {
    uint64_t magic;
    uint64_t id;
    uint64_t gen;
    size_t bytes;
    uint64_t pad_[4];
} dn_hdr;

/* The part of a tensor that decides a primitive: stored dtype, layout, logical shape and, for a
 * channel view, its place in the storage (c_off, c_store; both 0 for a dense tensor). */
typedef struct dn_tkey {
    int32_t dt, layout, n, c, h, w, c_off, c_store;
} dn_tkey;

typedef enum dn_op {
    DN_OP_NONE = 0,
    DN_OP_WRITE,
    DN_OP_READ,
    DN_OP_COPY,
    DN_OP_CONV,
    DN_OP_DECONV_FWD,
    DN_OP_DECONV_BWD,
    DN_OP_BN_INFER,
    DN_OP_BN_TRAIN,
    DN_OP_ACT,
    DN_OP_CONCAT,
    DN_OP_CONV_BWD_DATA,
    DN_OP_CONV_BWD_W,
    DN_OP_BN_BWD,
    DN_OP_ACT_BWD,
    DN_OP_SPLIT,
    DN_OP_COUNT_
} dn_op;

/* Primitive-cache key: zero-initialise, fill, then hash the bytes. */
typedef struct dn_key {
    int32_t op;
    int32_t nt;
    dn_tkey t[4];
    int32_t i[6];
    uint32_t f[2];
} dn_key;

/* One executable step: a primitive and the memory objects for its arguments, created once;
 * at run time only the data handles change. The scratchpad argument is appended by dn_run. */
typedef struct dn_step {
    dnnl_primitive_t prim;
    int nargs;
    dnnl_exec_arg_t args[DN_MAX_ARGS];
    size_t scratch;
    dnnl_memory_t scratch_mem;
    char impl[48];
} dn_step;

/* How a primitive wants a weight tensor: `md`, made from the stored tensor seen as `src_md`
 * by a oneDNN reorder; when `gather` is non-zero the source is first assembled in C as plain
 * OIHW (src_md): DN_GATHER_PHASE takes, from the stored (in, out, k, k) tensor, the
 * sub-kernel of output phase (qh, qw) of a stride-s transposed convolution (see
 * backend_dnnl_conv.c); DN_GATHER_TRIM keeps only kernel rows [th0, th1) and columns
 * [tw0, tw1) (of the phase sub-kernel, or of stored (out, in, k, k) conv weights): the taps
 * that ever meet real input, when the input is so small that the others only see padding. */
enum { DN_GATHER_PHASE = 1, DN_GATHER_TRIM = 2 };
typedef struct dn_wspec {
    dnnl_memory_desc_t src_md;
    dnnl_memory_desc_t md;
    int direct; /* md == src_md and no gather: use the tensor's buffer as it is */
    int gather, s, p, qh, qw;
    int th0, th1, tw0, tw1; /* DN_GATHER_TRIM: the kept tap ranges */
} dn_wspec;

#define DN_MAX_PHASES 4

/* Transposed conv computed as s*s stride-1 convolutions, one per output phase, each written
 * to a temporary and interleaved into y by a strided reorder. */
typedef struct dn_phase {
    int count;
    dn_step conv[DN_MAX_PHASES];
    dn_step shuffle[DN_MAX_PHASES];
    dn_wspec ws[DN_MAX_PHASES];
    size_t part_bytes; /* one phase's temporary */
} dn_phase;

typedef struct dn_prim {
    struct dn_prim *next;
    uint64_t hash;
    dn_key key;
    dn_step main;
    dn_step post;  /* optional second step (bias/activation pass) */
    dn_step extra; /* optional third step (conversion into y) */
    size_t extra_src_bytes; /* size of the temporary `extra` converts from (0: y's dense size) */
    dn_step pre;           /* optional step before `main`: a few-channel input converted into the
                            * blocked layout `main` chose (see dn_pre_build) */
    size_t pre_bytes;      /* size of that converted input */
    dn_wspec ws;   /* weights of `main` */
    dn_phase *ph;  /* phase-decomposed transposed conv, else NULL */
} dn_prim;

/* A weight tensor reordered into one primitive's preferred layout. */
typedef struct dn_wcopy {
    struct dn_wcopy *next;
    uint64_t buf_id;
    uint64_t gen;
    uint32_t gather_tag; /* 0, or which phase sub-kernel / trimmed taps (see dn_wspec) */
    dnnl_memory_desc_t md;
    void *data;
    dnnl_primitive_t reorder;
    dnnl_memory_t src, dst;
} dn_wcopy;

#define DN_BUCKETS 512

typedef struct dn_backend {
    cz_backend base;
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int nthreads; /* value given to OpenMP before each call; 0 = leave the default */
    int deconv_mode;
    int bwd_data_mode; /* conv2d_bwd_data: 0 = auto (transposed-conv forms), 1 = oneDNN backward-data */
    uint64_t next_buf_id;
    dn_prim *buckets[DN_BUCKETS];
    dn_wcopy *wbuckets[DN_BUCKETS];
    void *scratch;
    size_t scratch_cap;
    void *aux[DN_AUX_SLOTS];
    size_t aux_cap[DN_AUX_SLOTS];
    uint64_t hits, misses, wreorders, wentries;
    char last_impl[DN_OP_COUNT_][48];
} dn_backend;

/* ---- backend_dnnl.c ---- */
void dn_enter(dn_backend *b);
dn_hdr *dn_hdr_of(const cz_tensor *t);
/* Validates an op argument; a channel view is refused with CZ_ERR_UNSUPPORTED. */
cz_status dn_check_tensor(const cz_tensor *t, const char *what);
/* Same, but a channel view is accepted when its geometry is one view_ok would allow. */
cz_status dn_check_tensor_view(const cz_tensor *t, const char *what);
/* Whether t is a channel view (a strict part of its storage's channels). */
static inline int dn_is_view(const cz_tensor *t) { return cz_tensor_is_view(t); }
/* Channels of the storage behind t (t->c for a dense tensor). */
static inline int dn_store_c(const cz_tensor *t) { return dn_is_view(t) ? t->c_store : t->c; }
/* Element offset, from t->data, of image `img`'s channels of t: one contiguous run of
 * c*h*w elements for every layout this backend uses (nChw16c views start on a block). */
static inline size_t dn_img_off(const cz_tensor *t, int img) {
    size_t c_off = dn_is_view(t) ? (size_t)t->c_off : 0;
    return ((size_t)img * (size_t)dn_store_c(t) + c_off) * (size_t)t->h * (size_t)t->w;
}
void dn_touch(const cz_tensor *t); /* contents changed: bump the generation */
int dn_stored_dt(const cz_tensor *t); /* dnnl_data_type_t of the stored elements */
dn_tkey dn_tkey_of(const cz_tensor *t);
/* t as oneDNN sees it: for a view, the sub-memory of its storage (data handle = t->data). */
cz_status dn_tensor_md(const cz_tensor *t, dnnl_memory_desc_t *md);
/* t's logical shape as a dense tensor of its storage's layout and dtype (what an op writes
 * before the result is copied into a view). */
cz_status dn_dense_md(const cz_tensor *t, dnnl_memory_desc_t *md);
/* The whole storage behind t (batch t->n, dn_store_c(t) channels), dense. */
cz_status dn_storage_md(const cz_tensor *t, dnnl_memory_desc_t *md);
cz_status dn_plain_md(int n, int c, int h, int w, dnnl_data_type_t dt, dnnl_format_tag_t tag,
                      dnnl_memory_desc_t *md);

dn_prim *dn_cache_find(dn_backend *b, const dn_key *k, uint64_t *hash_out);
cz_status dn_cache_new(dn_backend *b, const dn_key *k, uint64_t hash, dn_prim **out);
/* Links a fully built entry into the cache (counts a miss). */
void dn_cache_insert(dn_backend *b, dn_prim *p);
/* Frees an entry that never made it into the cache. */
void dn_prim_discard(dn_prim *p);
/* Builds a step from a primitive descriptor (consumed: destroyed here in all cases) with
 * memory objects for the listed exec args, and reserves its scratchpad. */
cz_status dn_step_init(dn_backend *b, dn_step *s, dnnl_primitive_desc_t pd, int nargs,
                       const int *arg_ids);
/* Runs a step with the data pointers in arg order. */
cz_status dn_run(dn_backend *b, dn_step *s, void *const *ptrs);
/* Primitive attribute with user scratchpad and an optional eltwise post-op. */
cz_status dn_attr_make(cz_act act, float alpha, dnnl_primitive_attr_t *out);
int dn_act_alg(cz_act act, float alpha, dnnl_alg_kind_t *alg, float *a);
/* Pointer to `w` as spec->md wants it (reordered and cached when needed). */
cz_status dn_weights(dn_backend *b, const dn_wspec *spec, const cz_tensor *w, void **out);
/* Growing backend-owned temporary buffer number `slot`. */
cz_status dn_aux(dn_backend *b, int slot, size_t bytes, void **out);
/* oneDNN has only reference kernels when a plain tensor with few channels (< 16, e.g. the
 * PatchGAN's 1-channel logits) is a convolution's input or output gradient. For those, the
 * primitive is created with that tensor's md set to `any` (use dn_few_any); dn_pre_build then
 * sets up e->pre to convert the tensor into the layout the primitive chose, if it differs. */
int dn_few_channels(const cz_tensor *t);
cz_status dn_few_any(const cz_tensor *t, const dnnl_memory_desc_t *md, dnnl_memory_desc_t *out);
cz_status dn_pre_build(dn_backend *b, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *chosen,
                       dn_prim *e);
/* Runs e->pre (when set) on t's data into aux `slot`; *out is what `main` should read. */
cz_status dn_pre_run(dn_backend *b, dn_prim *e, const cz_tensor *t, int slot, void **out);
/* Copies src into dst (same logical shape, any dtypes/layouts) with a cached reorder. */
cz_status dn_copy(dn_backend *b, const cz_tensor *src, cz_tensor *dst);
void dn_note_impl(dn_backend *b, dn_op op, const dn_step *s);
/* Plain fp32 NCHW copy of a tensor (what tensor_read returns) into dst. */
cz_status dn_read_f32(dn_backend *b, const cz_tensor *t, float *dst);

/* Runs fn(ctx, lo, hi) over disjoint pieces covering [0, n) on the OpenMP threads oneDNN
 * itself uses, or in one call on this thread when n < grain. */
typedef void (*dn_range_fn)(void *ctx, size_t lo, size_t hi);
void dn_parallel(size_t n, size_t grain, dn_range_fn fn, void *ctx);

/* ---- backend_dnnl_ops.c, backend_dnnl_conv.c, backend_dnnl_bwd.c, backend_dnnl_train.c ---- */
void dn_fill_ops(cz_backend_ops *ops);
void dn_fill_conv_ops(cz_backend_ops *ops);
void dn_fill_bwd_ops(cz_backend_ops *ops);
void dn_fill_train_ops(cz_backend_ops *ops);
/* conv2d (transposed = 0) or deconv2d (1) as the forward ops run them, errors naming `op`. */
cz_status dn_conv_like(cz_backend *be, const char *op, int transposed, const cz_tensor *x, const cz_tensor *w,
                       const cz_tensor *bias, const cz_conv_params *p, cz_tensor *y);

/* ---- helpers shared by the op files (validation as in the ref backend, element access) ---- */

#define SHP(t) (t)->n, (t)->c, (t)->h, (t)->w

static inline cz_status req(const char *op, const char *name, const cz_tensor *t) {
    if (!t) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: %s is NULL", op, name);
    char what[64];
    snprintf(what, sizeof what, "%s: %s", op, name);
    return dn_check_tensor(t, what);
}

static inline cz_status opt(const char *op, const char *name, const cz_tensor *t) {
    return t ? req(op, name, t) : CZ_OK;
}

/* req() for the arguments the contract lets be channel views (conv/deconv y, act_fwd x/y). */
static inline cz_status req_view(const char *op, const char *name, const cz_tensor *t) {
    if (!t) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: %s is NULL", op, name);
    char what[64];
    snprintf(what, sizeof what, "%s: %s", op, name);
    return dn_check_tensor_view(t, what);
}

static inline cz_status want(const char *op, const char *name, const cz_tensor *t, int n, int c, int h, int w) {
    if (t->n != n || t->c != c || t->h != h || t->w != w)
        return cz_error_set(CZ_ERR_SHAPE, "%s: %s is [%d,%d,%d,%d], expected [%d,%d,%d,%d]", op, name, SHP(t), n,
                            c, h, w);
    return CZ_OK;
}

static inline cz_status want_vec(const char *op, const char *name, const cz_tensor *t, int c) {
    return t ? want(op, name, t, 1, c, 1, 1) : CZ_OK;
}

static inline cz_status check_act(const char *op, cz_act act) {
    if (act != CZ_ACT_NONE && act != CZ_ACT_RELU && act != CZ_ACT_LRELU && act != CZ_ACT_TANH)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: unknown activation %d", op, (int)act);
    return CZ_OK;
}

static inline cz_status no_alias(const char *op, const cz_tensor *a, const cz_tensor *b) {
    if (a && b && a->data == b->data)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: input and output share storage (only act_fwd may run in place)", op);
    return CZ_OK;
}

static inline uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Dense element access on stored data (fp32 or bf16). */
static inline float ldf(const void *p, int dt, size_t i) {
    return dt == dnnl_f32 ? ((const float *)p)[i] : cz_bf16_to_f32(((const uint16_t *)p)[i]);
}
static inline void stf(void *p, int dt, size_t i, float v) {
    if (dt == dnnl_f32)
        ((float *)p)[i] = v;
    else
        ((uint16_t *)p)[i] = cz_f32_to_bf16(v);
}

/* Physical element offset of logical (n, c, h, w) in t's storage. */
static inline size_t phys(const cz_tensor *t, int n, int c, int h, int w) {
    if (t->layout == CZ_DNNL_LAYOUT_NCHW16C)
        return ((((size_t)n * (t->c / 16) + (size_t)(c / 16)) * t->h + h) * t->w + w) * 16 + (size_t)(c % 16);
    return (((size_t)n * t->c + c) * t->h + h) * t->w + w;
}

/* A (1,C,1,1) tensor as C contiguous floats: the tensor itself when stored fp32 (a vector's
 * only layouts are dense in C order), else a converted copy in aux slot `slot`. */
static inline cz_status vec_f32(dn_backend *b, const cz_tensor *t, int slot, float **out) {
    if (dn_stored_dt(t) == dnnl_f32) {
        *out = t->data;
        return CZ_OK;
    }
    void *p;
    CZ_TRY(dn_aux(b, slot, (size_t)t->c * 4, &p));
    for (int c = 0; c < t->c; c++) ((float *)p)[c] = ldf(t->data, dn_stored_dt(t), (size_t)c);
    *out = p;
    return CZ_OK;
}

static inline void vec_store(cz_tensor *t, const float *v) {
    int dt = dn_stored_dt(t);
    for (int c = 0; c < t->c; c++) stf(t->data, dt, (size_t)c, v[c]);
    dn_touch(t);
}


#endif
