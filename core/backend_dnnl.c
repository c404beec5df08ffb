/* backend_dnnl.c: the `dnnl` backend on oneDNN 2.6 (C API): instance, tensor memory and the
 * caches every op relies on. The ops live in backend_dnnl_conv.c (conv2d, deconv2d),
 * backend_dnnl_ops.c (the other forward ops), backend_dnnl_bwd.c (conv and BatchNorm
 * backward) and backend_dnnl_train.c (element-wise backward, split, Adam);
 * backend_dnnl_impl.h is their private interface.
 *
 * Choices (see also backend.h, the contract):
 * - Storage: activations (role ACT) with C a multiple of 16 are kept in oneDNN's nChw16c,
 *   everything else in plain NCHW; batch is outermost in both, so a batch view is the buffer's
 *   prefix. bf16 tensors store bf16. Per-channel vectors (role VEC: bias, BatchNorm
 *   parameters and statistics) are always stored as fp32 whatever their dtype (layout
 *   CZ_DNNL_LAYOUT_VEC_F32): oneDNN wants fp32 there and they are tiny, so a bf16 bias keeps
 *   full precision. Weights are stored as written (OIHW, or IOHW for transposed convs).
 * - Weight copies: each conv/deconv primitive is created with format_tag_any for its weights;
 *   the backend keeps a copy of the weight tensor reordered into that layout, keyed by
 *   (buffer id, target layout) and rebuilt when the buffer's generation changed (any write
 *   through the backend: tensor_write, tensor_zero, or the tensor being an op's output).
 * - Primitives are cached by a key of (op, stored dtype/layout/shape of every tensor, params);
 *   each cache entry owns its memory objects, and running an op only swaps data handles.
 *   Scratchpads are user-managed: one growing buffer shared by all primitives, sized when a
 *   primitive is created. After warm-up an op allocates nothing.
 * - Threads: this libdnnl is built with OpenMP (libgomp), and so is cz_core. When
 *   options.threads > 0 the backend sets the OpenMP thread count on the calling thread before
 *   every call; 0 keeps the OpenMP default (all cores, or OMP_NUM_THREADS). The backend's own
 *   C loops (backward element-wise ops, Adam, the last layer's scatter) run on the same pool
 *   through dn_parallel.
 * - Channel views (view_ok): channels [c0, c0+nc) of a plain-layout tensor always; of an
 *   nChw16c tensor when c0 (within the storage) and nc are multiples of 16, which is where
 *   oneDNN 2.6's dnnl_memory_desc_init_submemory describes the part exactly (no partial
 *   block). Accepted as conv2d/deconv2d y and act_fwd x/y; every other op, tensor_write/read/
 *   zero included, refuses a view with CZ_ERR_UNSUPPORTED. oneDNN's jit convolutions do not
 *   take a strided destination (they fall back to the reference kernel), so each path writes
 *   the view its own way: phase-split deconvs interleave straight into it (their final
 *   reorders target a sub-memory), the gemm deconv's epilogue reorder does, and the direct
 *   conv/deconv forms compute into a dense temporary and reorder it in. act_fwd runs its
 *   eltwise once per image on the view's contiguous per-image run. Writes through a view bump
 *   the storage's generation (shared header), so weight copies made from it are rebuilt.
 *   tensor_free of a view is a no-op: the view does not own its storage.
 * - Errors: every dnnl status is checked (DN_CHECK) and becomes CZ_ERR_BACKEND naming the
 *   call, file and line; shape disagreements are CZ_ERR_SHAPE.
 *
 * Tested by tests/unit/test_dnnl.c (layouts, caches, error paths) and tests/unit/test_ops.c
 * (every op against the ref backend). tests/bench/bench_layers.c measures it. */
#include "backend_dnnl.h"

#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_dnnl_impl.h"
#include "log.h"

static cz_backend_ops g_dn_ops; /* filled once in create */

cz_status dn_fail(dnnl_status_t st, const char *file, int line, const char *expr) {
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    CZ_LOGE("dnnl", "%s:%d: %s failed: %s", base, line, expr, dnnl_status2str(st));
    return cz_error_set(CZ_ERR_BACKEND, "%s:%d: %s failed: %s", base, line, expr,
                        dnnl_status2str(st));
}

/* ---------------------------------------------------------------- threads */

/* dn_parallel: thread t of T takes the t-th contiguous share of [0, n) on the OpenMP pool
 * oneDNN itself uses (libdnnl and this file link the same libgomp). */
void dn_parallel(size_t n, size_t grain, dn_range_fn fn, void *ctx) {
    if (n == 0) return;
    if (n < grain) {
        fn(ctx, 0, n);
        return;
    }
#pragma omp parallel
    {
        size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads();
        size_t lo = n * t / nt, hi = n * (t + 1) / nt;
        if (lo < hi) fn(ctx, lo, hi);
    }
}

void dn_enter(dn_backend *b) {
    if (b->nthreads > 0) omp_set_num_threads(b->nthreads);
}

/* ---------------------------------------------------------------- tensors */

dn_hdr *dn_hdr_of(const cz_tensor *t) { return (dn_hdr *)((char *)t->data - sizeof(dn_hdr)); }

static size_t elem_bytes(const cz_tensor *t);

/* Where view_ok would accept channels [c0, c0+nc) of storage with `store_c` channels. */
static int view_geometry_ok(int layout, int store_c, int c0, int nc) {
    if (c0 < 0 || nc < 1 || c0 + nc > store_c) return 0;
    if (layout == CZ_DNNL_LAYOUT_NCHW) return 1;
    if (layout == CZ_DNNL_LAYOUT_NCHW16C) return c0 % 16 == 0 && nc % 16 == 0 && store_c % 16 == 0;
    return 0; /* vectors (fp32 whatever the dtype) and anything unknown */
}

static cz_status check_tensor(const cz_tensor *t, const char *what, int allow_view) {
    if (!t || !t->data) return cz_error_set(CZ_ERR_INVALID_ARG, "dnnl: %s is not allocated", what);
    if (dn_hdr_of(t)->magic != DN_MAGIC)
        return cz_error_set(CZ_ERR_INVALID_ARG, "dnnl: %s was not allocated by this backend", what);
    if (t->n <= 0 || t->n > t->cap_n || t->c <= 0 || t->h <= 0 || t->w <= 0)
        return cz_error_set(CZ_ERR_SHAPE, "dnnl: %s has shape [%d,%d,%d,%d] (capacity batch %d)",
                            what, t->n, t->c, t->h, t->w, t->cap_n);
    /* a tensor may use less than its storage, never more (backend.h, "Storage reuse"); a view
     * is measured by the whole tensor it is a view of */
    int v = dn_is_view(t);
    size_t want = (size_t)t->cap_n * (size_t)(v ? t->c_store : t->c) * (size_t)t->h * (size_t)t->w * elem_bytes(t);
    if (want > dn_hdr_of(t)->bytes)
        return cz_error_set(CZ_ERR_SHAPE, "dnnl: %s has shape [%d,%d,%d,%d] (capacity batch %d%s), larger than its "
                            "storage", what, t->n, v ? t->c_store : t->c, t->h, t->w, t->cap_n, v ? ", channels of the whole" : "");
    if (!v) return CZ_OK;
    if (!allow_view)
        return cz_error_set(CZ_ERR_UNSUPPORTED,
                            "dnnl: %s is a channel view (channels %d..%d of %d); only conv2d/deconv2d outputs "
                            "and act_fwd take views",
                            what, t->c_off, t->c_off + t->c - 1, t->c_store);
    if (!view_geometry_ok(t->layout, t->c_store, t->c_off, t->c))
        return cz_error_set(CZ_ERR_UNSUPPORTED,
                            "dnnl: %s is a channel view (channels %d..%d of %d, layout %d) that view_ok refuses",
                            what, t->c_off, t->c_off + t->c - 1, t->c_store, t->layout);
    return CZ_OK;
}

cz_status dn_check_tensor(const cz_tensor *t, const char *what) { return check_tensor(t, what, 0); }
cz_status dn_check_tensor_view(const cz_tensor *t, const char *what) { return check_tensor(t, what, 1); }

void dn_touch(const cz_tensor *t) { dn_hdr_of(t)->gen++; }

int dn_stored_dt(const cz_tensor *t) {
    if (t->layout == CZ_DNNL_LAYOUT_VEC_F32 || t->dtype == CZ_F32) return dnnl_f32;
    return t->dtype == CZ_BF16 ? dnnl_bf16 : dnnl_f16;
}

dn_tkey dn_tkey_of(const cz_tensor *t) {
    int v = dn_is_view(t);
    dn_tkey k = {dn_stored_dt(t), t->layout, t->n, t->c, t->h, t->w, v ? t->c_off : 0, v ? t->c_store : 0};
    return k;
}

cz_status dn_plain_md(int n, int c, int h, int w, dnnl_data_type_t dt, dnnl_format_tag_t tag,
                      dnnl_memory_desc_t *md) {
    dnnl_dims_t d = {n, c, h, w};
    DN_CHECK(dnnl_memory_desc_init_by_tag(md, 4, d, dt, tag));
    return CZ_OK;
}

static dnnl_format_tag_t layout_tag(const cz_tensor *t) {
    return t->layout == CZ_DNNL_LAYOUT_NCHW16C ? dnnl_nChw16c : dnnl_nchw;
}

cz_status dn_dense_md(const cz_tensor *t, dnnl_memory_desc_t *md) {
    return dn_plain_md(t->n, t->c, t->h, t->w, (dnnl_data_type_t)dn_stored_dt(t), layout_tag(t), md);
}

cz_status dn_storage_md(const cz_tensor *t, dnnl_memory_desc_t *md) {
    return dn_plain_md(t->n, dn_store_c(t), t->h, t->w, (dnnl_data_type_t)dn_stored_dt(t), layout_tag(t), md);
}

cz_status dn_tensor_md(const cz_tensor *t, dnnl_memory_desc_t *md) {
    if (!dn_is_view(t)) return dn_dense_md(t, md);
    dnnl_memory_desc_t whole;
    CZ_TRY(dn_storage_md(t, &whole));
    dnnl_dims_t dims = {t->n, t->c, t->h, t->w}, offs = {0, t->c_off, 0, 0};
    DN_CHECK(dnnl_memory_desc_init_submemory(md, &whole, dims, offs));
    return CZ_OK;
}

static int layout_for(cz_role role, int c) {
    if (role == CZ_ROLE_VEC) return CZ_DNNL_LAYOUT_VEC_F32;
    if (role == CZ_ROLE_ACT && c >= 16 && c % 16 == 0) return CZ_DNNL_LAYOUT_NCHW16C;
    return CZ_DNNL_LAYOUT_NCHW;
}

static size_t elem_bytes(const cz_tensor *t) {
    return t->layout == CZ_DNNL_LAYOUT_VEC_F32 ? 4 : cz_dtype_size(t->dtype);
}

static size_t stored_bytes(const cz_tensor *t, int n) {
    return (size_t)n * (size_t)t->c * (size_t)t->h * (size_t)t->w * elem_bytes(t);
}

/* ---------------------------------------------------------------- primitive cache */

static uint64_t hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h;
}

dn_prim *dn_cache_find(dn_backend *b, const dn_key *k, uint64_t *hash_out) {
    uint64_t h = hash_bytes(k, sizeof *k);
    *hash_out = h;
    for (dn_prim *p = b->buckets[h % DN_BUCKETS]; p; p = p->next)
        if (p->hash == h && !memcmp(&p->key, k, sizeof *k)) {
            b->hits++;
            return p;
        }
    return NULL;
}

cz_status dn_cache_new(dn_backend *b, const dn_key *k, uint64_t hash, dn_prim **out) {
    dn_prim *p = calloc(1, sizeof *p);
    if (!p) return cz_error_set(CZ_ERR_NOMEM, "dnnl: primitive cache entry");
    p->key = *k;
    p->hash = hash;
    *out = p;
    return CZ_OK;
}

void dn_cache_insert(dn_backend *b, dn_prim *p) {
    p->next = b->buckets[p->hash % DN_BUCKETS];
    b->buckets[p->hash % DN_BUCKETS] = p;
    b->misses++;
}

static void step_release(dn_step *s);

void dn_prim_discard(dn_prim *p) {
    if (!p) return;
    step_release(&p->main);
    step_release(&p->post);
    step_release(&p->extra);
    step_release(&p->pre);
    if (p->ph) {
        for (int i = 0; i < DN_MAX_PHASES; i++) {
            step_release(&p->ph->conv[i]);
            step_release(&p->ph->shuffle[i]);
        }
        free(p->ph);
    }
    free(p);
}

static void step_release(dn_step *s) {
    for (int i = 0; i < s->nargs; i++) dnnl_memory_destroy(s->args[i].memory);
    if (s->scratch_mem) dnnl_memory_destroy(s->scratch_mem);
    if (s->prim) dnnl_primitive_destroy(s->prim);
    memset(s, 0, sizeof *s);
}

static cz_status scratch_reserve(dn_backend *b, size_t bytes) {
    if (bytes <= b->scratch_cap) return CZ_OK;
    void *p = NULL;
    size_t cap = (bytes + 4095) & ~(size_t)4095;
    if (posix_memalign(&p, 4096, cap)) return cz_error_set(CZ_ERR_NOMEM, "dnnl: scratchpad of %zu bytes", cap);
    free(b->scratch);
    b->scratch = p;
    b->scratch_cap = cap;
    return CZ_OK;
}

cz_status dn_step_init(dn_backend *b, dn_step *s, dnnl_primitive_desc_t pd, int nargs,
                       const int *arg_ids) {
    cz_status st = CZ_OK;
    dnnl_status_t ds = dnnl_success;
    const char *what = "";
    memset(s, 0, sizeof *s);
    if (nargs > DN_MAX_ARGS - 1) {
        dnnl_primitive_desc_destroy(pd);
        return cz_error_set(CZ_ERR_INTERNAL, "dnnl: too many primitive arguments (%d)", nargs);
    }
    for (int i = 0; i < nargs; i++) {
        const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md, arg_ids[i]);
        if (!md) {
            st = cz_error_set(CZ_ERR_INTERNAL, "dnnl: primitive has no argument %d", arg_ids[i]);
            goto done;
        }
        s->args[i].arg = arg_ids[i];
        ds = dnnl_memory_create(&s->args[i].memory, md, b->engine, DNNL_MEMORY_NONE);
        what = "dnnl_memory_create(arg)";
        if (ds != dnnl_success) goto done;
        s->nargs = i + 1;
    }
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    s->scratch = smd ? dnnl_memory_desc_get_size(smd) : 0;
    if (s->scratch > 0) {
        ds = dnnl_memory_create(&s->scratch_mem, smd, b->engine, DNNL_MEMORY_NONE);
        what = "dnnl_memory_create(scratchpad)";
        if (ds != dnnl_success) goto done;
        st = scratch_reserve(b, s->scratch);
        if (st != CZ_OK) goto done;
    }
    const char *impl = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl)
        snprintf(s->impl, sizeof s->impl, "%s", impl);
    ds = dnnl_primitive_create(&s->prim, pd);
    what = "dnnl_primitive_create";
done:
    dnnl_primitive_desc_destroy(pd);
    if (st == CZ_OK && ds != dnnl_success) st = dn_fail(ds, __FILE__, __LINE__, what);
    if (st != CZ_OK) step_release(s);
    return st;
}

cz_status dn_run(dn_backend *b, dn_step *s, void *const *ptrs) {
    int n = s->nargs;
    for (int i = 0; i < n; i++) DN_CHECK(dnnl_memory_set_data_handle(s->args[i].memory, ptrs[i]));
    if (s->scratch > 0) {
        DN_CHECK(dnnl_memory_set_data_handle(s->scratch_mem, b->scratch));
        s->args[n].arg = DNNL_ARG_SCRATCHPAD;
        s->args[n].memory = s->scratch_mem;
        n++;
    }
    DN_CHECK(dnnl_primitive_execute(s->prim, b->stream, n, s->args));
    return CZ_OK;
}

void dn_note_impl(dn_backend *b, dn_op op, const dn_step *s) {
    memcpy(b->last_impl[op], s->impl, sizeof s->impl);
}

int dn_act_alg(cz_act act, float alpha, dnnl_alg_kind_t *alg, float *a) {
    switch (act) {
    case CZ_ACT_RELU: *alg = dnnl_eltwise_relu; *a = 0.f; return 1;
    case CZ_ACT_LRELU: *alg = dnnl_eltwise_relu; *a = alpha; return 1;
    case CZ_ACT_TANH: *alg = dnnl_eltwise_tanh; *a = 0.f; return 1;
    default: return 0;
    }
}

cz_status dn_attr_make(cz_act act, float alpha, dnnl_primitive_attr_t *out) {
    dnnl_primitive_attr_t attr = NULL;
    DN_CHECK(dnnl_primitive_attr_create(&attr));
    dnnl_status_t ds = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    dnnl_alg_kind_t alg;
    float a;
    if (ds == dnnl_success && dn_act_alg(act, alpha, &alg, &a)) {
        dnnl_post_ops_t po = NULL;
        ds = dnnl_post_ops_create(&po);
        if (ds == dnnl_success) ds = dnnl_post_ops_append_eltwise(po, 1.f, alg, a, 0.f);
        if (ds == dnnl_success) ds = dnnl_primitive_attr_set_post_ops(attr, po);
        if (po) dnnl_post_ops_destroy(po);
    }
    if (ds != dnnl_success) {
        dnnl_primitive_attr_destroy(attr);
        return dn_fail(ds, __FILE__, __LINE__, "building primitive attributes");
    }
    *out = attr;
    return CZ_OK;
}

/* Cached reorder between two memory descriptors whose identity is captured by `k`. */
static cz_status reorder_step(dn_backend *b, const dn_key *k, const dnnl_memory_desc_t *from,
                              const dnnl_memory_desc_t *to, dn_prim **out) {
    uint64_t h;
    dn_prim *p = dn_cache_find(b, k, &h);
    if (!p) {
        dnnl_primitive_attr_t attr = NULL;
        dnnl_primitive_desc_t pd = NULL;
        CZ_TRY(dn_attr_make(CZ_ACT_NONE, 0.f, &attr));
        dnnl_status_t ds = dnnl_reorder_primitive_desc_create(&pd, from, b->engine, to, b->engine, attr);
        dnnl_primitive_attr_destroy(attr);
        DN_CHECK(ds);
        CZ_TRY(dn_cache_new(b, k, h, &p));
        static const int ids[2] = {DNNL_ARG_FROM, DNNL_ARG_TO};
        cz_status st = dn_step_init(b, &p->main, pd, 2, ids);
        if (st != CZ_OK) {
            free(p);
            return st;
        }
        dn_cache_insert(b, p);
    }
    *out = p;
    return CZ_OK;
}

cz_status dn_copy(dn_backend *b, const cz_tensor *src, cz_tensor *dst) {
    if (!cz_shape_eq(src, dst))
        return cz_error_set(CZ_ERR_SHAPE, "dnnl copy: [%d,%d,%d,%d] vs [%d,%d,%d,%d]", src->n,
                            src->c, src->h, src->w, dst->n, dst->c, dst->h, dst->w);
    dnnl_memory_desc_t a, c;
    CZ_TRY(dn_tensor_md(src, &a));
    CZ_TRY(dn_tensor_md(dst, &c));
    int views = dn_is_view(src) || dn_is_view(dst);
    if (dnnl_memory_desc_equal(&a, &c) && (!views || src->data == dst->data)) {
        /* same element set; for views only the trivial in-place case (same storage, same md) */
        if (src->data != dst->data) memcpy(dst->data, src->data, dnnl_memory_desc_get_size(&a));
    } else {
        dn_key k;
        memset(&k, 0, sizeof k);
        k.op = DN_OP_COPY;
        k.nt = 2;
        k.t[0] = dn_tkey_of(src);
        k.t[1] = dn_tkey_of(dst);
        dn_prim *p;
        CZ_TRY(reorder_step(b, &k, &a, &c, &p));
        void *ptrs[2] = {src->data, dst->data};
        CZ_TRY(dn_run(b, &p->main, ptrs));
    }
    dn_touch(dst);
    return CZ_OK;
}

int dn_few_channels(const cz_tensor *t) {
    return t->layout != CZ_DNNL_LAYOUT_NCHW16C && !dn_is_view(t) && t->c < 16;
}

cz_status dn_few_any(const cz_tensor *t, const dnnl_memory_desc_t *md, dnnl_memory_desc_t *out) {
    *out = *md;
    if (!dn_few_channels(t)) return CZ_OK;
    dnnl_dims_t d = {t->n, t->c, t->h, t->w};
    DN_CHECK(dnnl_memory_desc_init_by_tag(out, 4, d, md->data_type, dnnl_format_tag_any));
    return CZ_OK;
}

cz_status dn_pre_build(dn_backend *b, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *chosen,
                       dn_prim *e) {
    if (dnnl_memory_desc_equal(from, chosen)) return CZ_OK;
    dnnl_primitive_desc_t rpd = NULL;
    DN_CHECK(dnnl_reorder_primitive_desc_create(&rpd, from, b->engine, chosen, b->engine, NULL));
    static const int rids[2] = {DNNL_ARG_FROM, DNNL_ARG_TO};
    e->pre_bytes = dnnl_memory_desc_get_size(chosen);
    return dn_step_init(b, &e->pre, rpd, 2, rids);
}

cz_status dn_pre_run(dn_backend *b, dn_prim *e, const cz_tensor *t, int slot, void **out) {
    *out = t->data;
    if (!e->pre.prim) return CZ_OK;
    CZ_TRY(dn_aux(b, slot, e->pre_bytes, out));
    void *ra[2] = {t->data, *out};
    return dn_run(b, &e->pre, ra);
}

cz_status dn_aux(dn_backend *b, int slot, size_t bytes, void **out) {
    if (bytes > b->aux_cap[slot]) {
        void *p = NULL;
        size_t cap = (bytes + 4095) & ~(size_t)4095;
        if (posix_memalign(&p, 64, cap)) return cz_error_set(CZ_ERR_NOMEM, "dnnl: temporary of %zu bytes", cap);
        free(b->aux[slot]);
        b->aux[slot] = p;
        b->aux_cap[slot] = cap;
    }
    *out = b->aux[slot];
    return CZ_OK;
}

/* ---------------------------------------------------------------- weight copies */

/* Identifies the gathered source within the weight-copy cache (each field < 16). */
static uint32_t gather_tag(const dn_wspec *sp) {
    if (!sp->gather) return 0u;
    uint32_t t = 0;
    if (sp->gather & DN_GATHER_PHASE) t |= (uint32_t)(1 + sp->qh + 16 * sp->qw + 256 * sp->s + 4096 * sp->p);
    if (sp->gather & DN_GATHER_TRIM)
        t |= (uint32_t)(sp->th0 | sp->th1 << 4 | sp->tw0 << 8 | sp->tw1 << 12) << 16;
    return t;
}

/* Assembles the OIHW source a gathering spec describes, raw elements of the stored dtype.
 * Phase sub-kernel of a stride-s transposed conv (see backend_dnnl_conv.c): tap (u, v) of
 * (o, i) is w[i][o][rh + s*(kk-1-u)][rw + s*(kk-1-v)]; a plain conv's is w[o][i][u][v].
 * Trimming keeps u in [th0, th1), v in [tw0, tw1). */
static void gather_weights(const dn_wspec *sp, const cz_tensor *w, void *out) {
    int phase = sp->gather & DN_GATHER_PHASE, k = w->h, s = phase ? sp->s : 1;
    int co = phase ? w->c : w->n, ci = phase ? w->n : w->c, kk = k / s;
    int rh = phase ? (sp->qh + sp->p) % s : 0, rw = phase ? (sp->qw + sp->p) % s : 0;
    int trim = sp->gather & DN_GATHER_TRIM;
    int u0 = trim ? sp->th0 : 0, u1 = trim ? sp->th1 : kk, v0 = trim ? sp->tw0 : 0, v1 = trim ? sp->tw1 : kk;
    size_t es = dn_stored_dt(w) == dnnl_f32 ? 4 : 2;
    const char *src = w->data;
    char *dst = out;
    size_t to = 0;
    for (int o = 0; o < co; o++)
        for (int i = 0; i < ci; i++)
            for (int u = u0; u < u1; u++)
                for (int v = v0; v < v1; v++, to++) {
                    size_t from;
                    if (phase) {
                        int kh = rh + s * (kk - 1 - u), kw = rw + s * (kk - 1 - v);
                        from = (((size_t)i * co + o) * k + kh) * k + kw;
                    } else {
                        from = (((size_t)o * ci + i) * k + u) * k + v;
                    }
                    memcpy(dst + to * es, src + from * es, es);
                }
}

cz_status dn_weights(dn_backend *b, const dn_wspec *sp, const cz_tensor *w, void **out) {
    if (sp->direct) {
        *out = w->data;
        return CZ_OK;
    }
    dn_hdr *hd = dn_hdr_of(w);
    uint32_t tag = gather_tag(sp);
    dn_wcopy **head = &b->wbuckets[hd->id % DN_BUCKETS];
    dn_wcopy *c = *head;
    while (c && !(c->buf_id == hd->id && c->gather_tag == tag && dnnl_memory_desc_equal(&c->md, &sp->md)))
        c = c->next;
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c) return cz_error_set(CZ_ERR_NOMEM, "dnnl: weight cache entry");
        c->buf_id = hd->id;
        c->gen = hd->gen - 1;
        c->gather_tag = tag;
        c->md = sp->md;
        size_t bytes = dnnl_memory_desc_get_size(&sp->md);
        dnnl_primitive_desc_t pd = NULL;
        dnnl_status_t ds = dnnl_success;
        if (posix_memalign(&c->data, 64, bytes ? bytes : 64)) {
            free(c);
            return cz_error_set(CZ_ERR_NOMEM, "dnnl: reordered weights of %zu bytes", bytes);
        }
        memset(c->data, 0, bytes); /* padded blocks must read as zero */
        ds = dnnl_reorder_primitive_desc_create(&pd, &sp->src_md, b->engine, &sp->md, b->engine, NULL);
        if (ds == dnnl_success) ds = dnnl_primitive_create(&c->reorder, pd);
        if (pd) dnnl_primitive_desc_destroy(pd);
        if (ds == dnnl_success) ds = dnnl_memory_create(&c->src, &sp->src_md, b->engine, DNNL_MEMORY_NONE);
        if (ds == dnnl_success) ds = dnnl_memory_create(&c->dst, &sp->md, b->engine, c->data);
        if (ds != dnnl_success) {
            if (c->reorder) dnnl_primitive_destroy(c->reorder);
            if (c->src) dnnl_memory_destroy(c->src);
            if (c->dst) dnnl_memory_destroy(c->dst);
            free(c->data);
            free(c);
            return dn_fail(ds, __FILE__, __LINE__, "creating the weight reorder");
        }
        c->next = *head;
        *head = c;
        b->wentries++;
    }
    if (c->gen != hd->gen) {
        void *src = w->data;
        if (sp->gather) {
            CZ_TRY(dn_aux(b, 5, dnnl_memory_desc_get_size(&sp->src_md), &src));
            gather_weights(sp, w, src);
        }
        DN_CHECK(dnnl_memory_set_data_handle(c->src, src));
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, c->src}, {DNNL_ARG_TO, c->dst}};
        DN_CHECK(dnnl_primitive_execute(c->reorder, b->stream, 2, args));
        c->gen = hd->gen;
        b->wreorders++;
    }
    *out = c->data;
    return CZ_OK;
}

static void wcopy_free(dn_wcopy *c) {
    dnnl_primitive_destroy(c->reorder);
    dnnl_memory_destroy(c->src);
    dnnl_memory_destroy(c->dst);
    free(c->data);
    free(c);
}

static void wcopy_drop(dn_backend *b, uint64_t id) {
    dn_wcopy **pp = &b->wbuckets[id % DN_BUCKETS];
    while (*pp) {
        dn_wcopy *c = *pp;
        if (c->buf_id == id) {
            *pp = c->next;
            wcopy_free(c);
            b->wentries--;
        } else {
            pp = &c->next;
        }
    }
}

/* ---------------------------------------------------------------- memory ops */

static cz_status dn_tensor_alloc(cz_backend *be, cz_tensor *t) {
    dn_backend *b = (dn_backend *)be;
    if (t->dtype != CZ_F32 && t->dtype != CZ_BF16)
        return cz_error_set(CZ_ERR_UNSUPPORTED, "dnnl: dtype %s not supported", cz_dtype_name(t->dtype));
    if (t->n <= 0 || t->c <= 0 || t->h <= 0 || t->w <= 0)
        return cz_error_set(CZ_ERR_SHAPE, "dnnl: cannot allocate shape [%d,%d,%d,%d]", t->n, t->c, t->h, t->w);
    t->layout = layout_for(t->role, t->c);
    t->cap_n = t->n;
    size_t bytes = stored_bytes(t, t->n);
    void *p = NULL;
    if (posix_memalign(&p, 64, sizeof(dn_hdr) + bytes))
        return cz_error_set(CZ_ERR_NOMEM, "dnnl: tensor of %zu bytes", bytes);
    dn_hdr *h = p;
    memset(h, 0, sizeof *h);
    h->magic = DN_MAGIC;
    h->id = ++b->next_buf_id;
    h->bytes = bytes;
    t->data = (char *)p + sizeof(dn_hdr);
    memset(t->data, 0, bytes);
    return CZ_OK;
}

static void dn_tensor_free(cz_backend *be, cz_tensor *t) {
    if (!t || !t->data) return;
    if (dn_is_view(t)) return; /* a view does not own its storage */
    dn_hdr *h = dn_hdr_of(t);
    if (h->magic != DN_MAGIC) return;
    wcopy_drop((dn_backend *)be, h->id);
    h->magic = 0;
    free(h);
    t->data = NULL;
}

static cz_status host_xfer(dn_backend *b, const cz_tensor *t, void *tensor_ptr, void *host_ptr, int to_host) {
    dnnl_memory_desc_t tm, hm;
    CZ_TRY(dn_tensor_md(t, &tm));
    CZ_TRY(dn_plain_md(t->n, t->c, t->h, t->w, dnnl_f32, dnnl_nchw, &hm));
    if (dnnl_memory_desc_equal(&tm, &hm)) {
        size_t bytes = cz_tensor_numel(t) * 4;
        if (to_host) memcpy(host_ptr, tensor_ptr, bytes);
        else memcpy(tensor_ptr, host_ptr, bytes);
        return CZ_OK;
    }
    dn_key k;
    memset(&k, 0, sizeof k);
    k.op = to_host ? DN_OP_READ : DN_OP_WRITE;
    k.nt = 1;
    k.t[0] = dn_tkey_of(t);
    dn_prim *p;
    CZ_TRY(reorder_step(b, &k, to_host ? &tm : &hm, to_host ? &hm : &tm, &p));
    void *ptrs[2] = {to_host ? tensor_ptr : host_ptr, to_host ? host_ptr : tensor_ptr};
    CZ_TRY(dn_run(b, &p->main, ptrs));
    return CZ_OK;
}

cz_status dn_read_f32(dn_backend *b, const cz_tensor *t, float *dst) {
    return host_xfer(b, t, t->data, dst, 1);
}

static cz_status dn_tensor_write(cz_backend *be, cz_tensor *t, const float *src) {
    dn_backend *b = (dn_backend *)be;
    CZ_TRY(dn_check_tensor(t, "tensor_write target"));
    if (!src) return cz_error_set(CZ_ERR_INVALID_ARG, "dnnl: tensor_write from NULL");
    dn_enter(b);
    CZ_TRY(host_xfer(b, t, t->data, (void *)src, 0));
    dn_touch(t);
    return CZ_OK;
}

static cz_status dn_tensor_read(cz_backend *be, const cz_tensor *t, float *dst) {
    dn_backend *b = (dn_backend *)be;
    CZ_TRY(dn_check_tensor(t, "tensor_read source"));
    if (!dst) return cz_error_set(CZ_ERR_INVALID_ARG, "dnnl: tensor_read into NULL");
    dn_enter(b);
    CZ_TRY(host_xfer(b, t, t->data, dst, 1));
    DN_CHECK(dnnl_stream_wait(b->stream));
    return CZ_OK;
}

static cz_status dn_tensor_zero(cz_backend *be, cz_tensor *t) {
    CZ_TRY(dn_check_tensor(t, "tensor_zero target"));
    memset(t->data, 0, stored_bytes(t, t->n));
    dn_touch(t);
    return CZ_OK;
}

static cz_status dn_sync(cz_backend *be) {
    DN_CHECK(dnnl_stream_wait(((dn_backend *)be)->stream));
    return CZ_OK;
}

static int dn_supports(cz_backend *be, cz_dtype dt) { return dt == CZ_F32 || dt == CZ_BF16; }

/* Channels [c0, c0+nc) of t (itself possibly a view) as a view; see the file-top comment. */
static int dn_view_ok(cz_backend *be, const cz_tensor *t, int c0, int nc) {
    (void)be;
    if (!t || !t->data || dn_hdr_of(t)->magic != DN_MAGIC) return 0;
    if (t->n <= 0 || t->c <= 0 || t->h <= 0 || t->w <= 0) return 0;
    if (c0 < 0 || nc < 1 || c0 > t->c - nc) return 0;
    int base = dn_is_view(t) ? t->c_off : 0;
    return view_geometry_ok(t->layout, dn_store_c(t), base + c0, nc);
}

/* ---------------------------------------------------------------- lifetime */

static void dn_destroy(cz_backend *be) {
    dn_backend *b = (dn_backend *)be;
    if (!b) return;
    for (int i = 0; i < DN_BUCKETS; i++) {
        dn_prim *p = b->buckets[i];
        while (p) {
            dn_prim *nx = p->next;
            dn_prim_discard(p);
            p = nx;
        }
        dn_wcopy *c = b->wbuckets[i];
        while (c) {
            dn_wcopy *nx = c->next;
            wcopy_free(c);
            c = nx;
        }
    }
    if (b->stream) dnnl_stream_destroy(b->stream);
    if (b->engine) dnnl_engine_destroy(b->engine);
    free(b->scratch);
    for (int i = 0; i < DN_AUX_SLOTS; i++) free(b->aux[i]);
    free(b);
}

static const char *isa_name(dnnl_cpu_isa_t isa) {
    switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "other";
    }
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void init_once(void) {
    g_dn_ops.name = "dnnl";
    g_dn_ops.destroy = dn_destroy;
    g_dn_ops.supports = dn_supports;
    g_dn_ops.tensor_alloc = dn_tensor_alloc;
    g_dn_ops.tensor_free = dn_tensor_free;
    g_dn_ops.tensor_write = dn_tensor_write;
    g_dn_ops.tensor_read = dn_tensor_read;
    g_dn_ops.tensor_zero = dn_tensor_zero;
    g_dn_ops.sync = dn_sync;
    g_dn_ops.view_ok = dn_view_ok;
    dn_fill_ops(&g_dn_ops);
}

cz_status cz_backend_dnnl_create(const cz_backend_options *opt, cz_backend **out) {
    *out = NULL;
    pthread_once(&g_once, init_once);
    dn_backend *b = calloc(1, sizeof *b);
    if (!b) return cz_error_set(CZ_ERR_NOMEM, "dnnl: backend instance");
    b->base.ops = &g_dn_ops;
    b->nthreads = opt && opt->threads > 0 ? opt->threads : 0;
    b->base.threads = b->nthreads;
    const char *dm = getenv("CZ_DNNL_DECONV");
    if (dm && !strcmp(dm, "fwd")) b->deconv_mode = 1;
    if (dm && !strcmp(dm, "bwd")) b->deconv_mode = 2;
    if (dm && !strcmp(dm, "phase")) b->deconv_mode = 3;
    const char *bm = getenv("CZ_DNNL_BWD_DATA");
    if (bm && !strcmp(bm, "direct")) b->bwd_data_mode = 1;
    dn_enter(b);
    dnnl_status_t ds = dnnl_engine_create(&b->engine, dnnl_cpu, 0);
    if (ds == dnnl_success) ds = dnnl_stream_create(&b->stream, b->engine, dnnl_stream_default_flags);
    if (ds != dnnl_success) {
        dn_destroy(&b->base);
        return cz_error_set(CZ_ERR_UNAVAILABLE, "dnnl: cannot create a CPU engine/stream: %s",
                            dnnl_status2str(ds));
    }
    const dnnl_version_t *v = dnnl_version();
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    int nthr = omp_get_max_threads();
    CZ_LOGI("dnnl", "oneDNN %d.%d.%d, isa %s (bf16 %s), %d threads%s", v->major, v->minor, v->patch,
            isa_name(isa), (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16 ? "native" : "emulated",
            nthr, b->nthreads ? "" : " (OpenMP default)");
    *out = &b->base;
    return CZ_OK;
}

/* ---------------------------------------------------------------- introspection */

static dn_backend *as_dnnl(cz_backend *be) {
    return be && be->ops && be->ops->name && !strcmp(be->ops->name, "dnnl") ? (dn_backend *)be : NULL;
}

cz_status cz_backend_dnnl_stats(cz_backend *be, cz_dnnl_stats *st) {
    dn_backend *b = as_dnnl(be);
    if (!b || !st) return cz_error_set(CZ_ERR_INVALID_ARG, "not a dnnl backend");
    st->prim_hits = b->hits;
    st->prim_misses = b->misses;
    st->weight_reorders = b->wreorders;
    st->weight_entries = b->wentries;
    st->scratch_bytes = b->scratch_cap;
    return CZ_OK;
}

cz_status cz_backend_dnnl_cache_stats(cz_backend *be, uint64_t *hits, uint64_t *misses) {
    cz_dnnl_stats st = {0};
    CZ_TRY(cz_backend_dnnl_stats(be, &st));
    if (hits) *hits = st.prim_hits;
    if (misses) *misses = st.prim_misses;
    return CZ_OK;
}

const char *cz_backend_dnnl_last_impl(cz_backend *be, const char *op) {
    static const char *names[DN_OP_COUNT_] = {"", "tensor_write", "tensor_read", "copy", "conv2d",
                                              "deconv2d", "deconv2d_bwd_form", "bn_infer", "bn_train_fwd",
                                              "act_fwd", "concat", "conv_bwd_data", "conv_bwd_weights",
                                              "bn_train_bwd", "act_bwd", "concat_bwd"};
    dn_backend *b = as_dnnl(be);
    if (!b || !op) return "";
    for (int i = 1; i < DN_OP_COUNT_; i++)
        if (!strcmp(names[i], op)) return b->last_impl[i];
    return "";
}

cz_status cz_backend_dnnl_set_deconv_mode(cz_backend *be, int mode) {
    dn_backend *b = as_dnnl(be);
    if (!b || mode < 0 || mode > 3) return cz_error_set(CZ_ERR_INVALID_ARG, "dnnl: bad deconv mode %d", mode);
    b->deconv_mode = mode;
    return CZ_OK;
}

cz_status cz_backend_dnnl_set_bwd_data_mode(cz_backend *be, int mode) {
    dn_backend *b = as_dnnl(be);
    if (!b || mode < 0 || mode > 1) return cz_error_set(CZ_ERR_INVALID_ARG, "dnnl: bad bwd-data mode %d", mode);
    b->bwd_data_mode = mode;
    return CZ_OK;
}
