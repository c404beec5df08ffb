/* backend_dnnl_bwd.c: the convolution and batch-norm backward ops of the `dnnl` backend
 * (oneDNN 2.6 C API). Forward convolutions are in backend_dnnl_conv.c, the element-wise
 * backward ops and Adam in backend_dnnl_train.c, memory and caches in backend_dnnl.c.
 *
 * Precision: activations and their gradients (x, dy, dx) are in the model's dtype (fp32 or
 * bf16); weight and bias gradients may be fp32 or bf16 whatever x/dy are. The training code
 * keeps fp32 master weights and fp32 weight gradients, so the usual bf16 call has bf16 x/dy
 * and an fp32 dw: oneDNN accumulates the weight gradient in fp32 and it is stored once, in
 * dw's dtype (no bf16 rounding for an fp32 dw). Bias gradients are fp32 (vectors are stored
 * fp32 by this backend).
 *
 * The four convolution slots reduce to two oneDNN computations, because a transposed
 * convolution is the adjoint of the convolution with the same weight tensor:
 *   deconv2d_bwd_data(dy, w)    = conv2d(dy, w) with w's (in, out, k, k) read as OIHW: the
 *                                 forward conv path (blocked weights cache, dead-tap trimming).
 *   conv2d_bwd_data(dy, w)      = deconv2d(dy, w) with the (out, in, k, k) tensor read as the
 *                                 transposed conv's (in, out, k, k): the forward deconv forms
 *                                 (phase-split stride-1 convolutions where they apply, gemm +
 *                                 col2im for few output channels, else oneDNN's deconvolution).
 *                                 Where the conv dropped input rows/columns (input size not
 *                                 recovered by the transposed conv's size formula) or on request
 *                                 (CZ_DNNL_BWD_DATA=direct) it is oneDNN's backward-data.
 *   conv2d_bwd_weights(x, dy)   = oneDNN backward-weights with src x, diff_dst dy.
 *   deconv2d_bwd_weights(x, dy) = the same primitive with src dy and diff_dst x (the deconv
 *                                 weight tensor (in, out, k, k) is exactly that conv's OIHW
 *                                 gradient); its bias gradient is the per-channel sum of dy,
 *                                 computed in C.
 * Backward-weights writes an fp32 gradient in the primitive's preferred layout into a
 * temporary; a cached reorder stores it into dw (plain, dw's dtype), and with `accumulate` the
 * reorder carries a sum post-op (dw = new + dw), so no extra pass. Bias gradients are
 * stored/added in C. The conv params' act is ignored (the contract: apply act_bwd first).
 *
 * bn_train_bwd: oneDNN batch normalization backward (scale and shift) from the saved mean and
 * the variance recovered from save_invstd (var = 1/invstd^2, with epsilon 0 in the primitive,
 * so oneDNN's 1/sqrt(var + 0) gives invstd back to within an ulp); gamma NULL is a ones
 * vector. dx is always overwritten (NULL dx: into a temporary); dgamma/dbeta are stored or
 * added in C. x, dy and dx must share dtype and layout (as in the forward op).
 *
 * All primitives are cached by shape like the forward ops'; every output's generation is
 * bumped. Channel views are refused in every argument (backend.h allows them only for the
 * forward outputs). Aux slots 8..14 are used here.
 * Tested by tests/unit/test_ops.c (parity with ref, fp32 and bf16) and tests/unit/test_dnnl.c
 * (accumulate, fp32 gradients of bf16 activations, weight-copy invalidation). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_dnnl_impl.h"

/* ---------------------------------------------------------------- validation */

static cz_status check_p(const char *op, const cz_conv_params *p) {
    if (!p) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: conv params are NULL", op);
    if (p->stride < 1 || p->pad < 0)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: stride %d / pad %d out of range", op, p->stride, p->pad);
    return check_act(op, p->act);
}

/* Output size of conv (transposed = 0) or deconv over an input of `in`; 0 when empty. */
static int out_size(int transposed, int in, int k, int s, int pad) {
    if (transposed) {
        int o = (in - 1) * s - 2 * pad + k;
        return o > 0 ? o : 0;
    }
    if (in + 2 * pad < k) return 0;
    return (in + 2 * pad - k) / s + 1;
}

/* Shapes of a (de)conv with input `xi` (n, ci, hi, wi), weights `w` and output `yo`. */
static cz_status check_geometry(const char *op, int transposed, const cz_tensor *xi, const cz_tensor *w,
                                const cz_tensor *yo, const cz_conv_params *p, const char *xname,
                                const char *yname) {
    if (w->h != w->w)
        return cz_error_set(CZ_ERR_SHAPE, "%s: w is [%d,%d,%d,%d], the kernel must be square", op, SHP(w));
    int in_c = transposed ? w->n : w->c, out_c = transposed ? w->c : w->n, k = w->h;
    if (xi->c != in_c)
        return cz_error_set(CZ_ERR_SHAPE, "%s: %s is [%d,%d,%d,%d] but w [%d,%d,%d,%d] has %d input channels", op,
                            xname, SHP(xi), SHP(w), in_c);
    int oh = out_size(transposed, xi->h, k, p->stride, p->pad), ow = out_size(transposed, xi->w, k, p->stride, p->pad);
    if (oh < 1 || ow < 1)
        return cz_error_set(CZ_ERR_SHAPE, "%s: %dx%d kernel (stride %d, pad %d) gives no output for %dx%d", op, k, k,
                            p->stride, p->pad, xi->h, xi->w);
    return want(op, yname, yo, xi->n, out_c, oh, ow);
}

/* ---------------------------------------------------------------- backward data */

/* oneDNN convolution backward-data, for the conv shapes the transposed forms cannot take. */
static cz_status bwd_data_direct(dn_backend *b, const cz_tensor *dy, const cz_tensor *w, const cz_conv_params *p,
                                 cz_tensor *dx) {
    dn_key key;
    memset(&key, 0, sizeof key);
    key.op = DN_OP_CONV_BWD_DATA;
    key.nt = 3;
    key.t[0] = dn_tkey_of(dy);
    key.t[1] = dn_tkey_of(w);
    key.t[2] = dn_tkey_of(dx);
    key.i[0] = p->stride;
    key.i[1] = p->pad;
    uint64_t h;
    dn_prim *e = dn_cache_find(b, &key, &h);
    if (!e) {
        CZ_TRY(dn_cache_new(b, &key, h, &e));
        cz_status st = CZ_OK;
        dnnl_memory_desc_t dym, dxm, wany;
        int k = w->h, s = p->stride, pad = p->pad;
        dnnl_dims_t strides = {s, s}, pl = {pad, pad};
        dnnl_dims_t pr = {(dnnl_dim_t)(dy->h - 1) * s + k - dx->h - pad, (dnnl_dim_t)(dy->w - 1) * s + k - dx->w - pad};
        dnnl_data_type_t cdt = (dnnl_data_type_t)dn_stored_dt(dy);
        if (st == CZ_OK) st = dn_tensor_md(dy, &dym);
        if (st == CZ_OK) st = dn_tensor_md(dx, &dxm);
        if (st == CZ_OK) st = dn_plain_md(w->n, w->c, k, k, cdt, dnnl_format_tag_any, &wany);
        if (st == CZ_OK)
            st = dn_plain_md(w->n, w->c, k, k, (dnnl_data_type_t)dn_stored_dt(w), dnnl_oihw, &e->ws.src_md);
        dnnl_primitive_attr_t attr = NULL;
        if (st == CZ_OK) st = dn_attr_make(CZ_ACT_NONE, 0.f, &attr);
        if (st == CZ_OK) {
            dnnl_convolution_desc_t fd, bd;
            dnnl_primitive_desc_t hint = NULL, pd = NULL;
            dnnl_status_t ds = dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct,
                                                                  &dxm, &wany, NULL, &dym, strides, pl, pr);
            if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&hint, &fd, NULL, b->engine, NULL);
            if (ds == dnnl_success)
                ds = dnnl_convolution_backward_data_desc_init(&bd, dnnl_convolution_direct, &dxm, &wany, &dym,
                                                              strides, pl, pr);
            if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&pd, &bd, attr, b->engine, hint);
            if (hint) dnnl_primitive_desc_destroy(hint);
            dnnl_primitive_attr_destroy(attr);
            if (ds != dnnl_success) {
                st = dn_fail(ds, __FILE__, __LINE__, "convolution backward-data primitive descriptor");
            } else {
                e->ws.md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
                e->ws.direct = dnnl_memory_desc_equal(&e->ws.md, &e->ws.src_md);
                static const int ids[3] = {DNNL_ARG_DIFF_DST, DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_SRC};
                st = dn_step_init(b, &e->main, pd, 3, ids);
            }
        }
        if (st != CZ_OK) {
            dn_prim_discard(e);
            return st;
        }
        dn_cache_insert(b, e);
    }
    void *wp;
    CZ_TRY(dn_weights(b, &e->ws, w, &wp));
    void *ptrs[3] = {dy->data, wp, dx->data};
    CZ_TRY(dn_run(b, &e->main, ptrs));
    dn_note_impl(b, DN_OP_CONV_BWD_DATA, &e->main);
    dn_touch(dx);
    return CZ_OK;
}

static cz_status bwd_data(cz_backend *be, const char *op, int transposed, const cz_tensor *dy, const cz_tensor *w,
                          const cz_conv_params *p, cz_tensor *dx) {
    dn_backend *b = (dn_backend *)be;
    CZ_TRY(req(op, "dy", dy));
    CZ_TRY(req(op, "w", w));
    CZ_TRY(req(op, "dx", dx));
    CZ_TRY(check_p(op, p));
    CZ_TRY(no_alias(op, dy, dx));
    CZ_TRY(check_geometry(op, transposed, dx, w, dy, p, "dx", "dy"));
    cz_conv_params q = {p->stride, p->pad, CZ_ACT_NONE, 0.f};
    if (transposed) return dn_conv_like(be, op, 0, dy, w, NULL, &q, dx); /* a forward conv */
    /* the transposed conv of dy must land exactly on dx's size (conv may drop edge rows) */
    int k = w->h;
    int fits = out_size(1, dy->h, k, p->stride, p->pad) == dx->h && out_size(1, dy->w, k, p->stride, p->pad) == dx->w;
    if (fits && !b->bwd_data_mode) return dn_conv_like(be, op, 1, dy, w, NULL, &q, dx);
    dn_enter(b);
    return bwd_data_direct(b, dy, w, p, dx);
}

static cz_status dn_conv2d_bwd_data(cz_backend *be, const cz_tensor *dy, const cz_tensor *w,
                                    const cz_conv_params *p, cz_tensor *dx) {
    return bwd_data(be, "conv2d_bwd_data", 0, dy, w, p, dx);
}

static cz_status dn_deconv2d_bwd_data(cz_backend *be, const cz_tensor *dy, const cz_tensor *w,
                                      const cz_conv_params *p, cz_tensor *dx) {
    return bwd_data(be, "deconv2d_bwd_data", 1, dy, w, p, dx);
}

/* ---------------------------------------------------------------- backward weights */

/* Cached plan: main = backward-weights (src, diff_dst -> fp32 diff_weights [, diff_bias]);
 * post = reorder of the gradient into dw; extra = the same reorder with a sum post-op. */
static cz_status wgrad_build(dn_backend *b, const cz_tensor *src, const cz_tensor *dd, const cz_tensor *dw, int k,
                             const cz_conv_params *p, int with_bias, dn_prim *e) {
    dnnl_memory_desc_t sm, dm, wany, bm, wout;
    int s = p->stride, pad = p->pad;
    dnnl_dims_t strides = {s, s}, pl = {pad, pad};
    dnnl_dims_t pr = {(dnnl_dim_t)(dd->h - 1) * s + k - src->h - pad, (dnnl_dim_t)(dd->w - 1) * s + k - src->w - pad};
    CZ_TRY(dn_tensor_md(src, &sm));
    CZ_TRY(dn_tensor_md(dd, &dm));
    dnnl_memory_desc_t dany; /* a few-channel dd: let the primitive pick (see dn_few_any) */
    CZ_TRY(dn_few_any(dd, &dm, &dany));
    CZ_TRY(dn_plain_md(dd->c, src->c, k, k, dnnl_f32, dnnl_format_tag_any, &wany));
    CZ_TRY(dn_plain_md(dd->c, src->c, k, k, (dnnl_data_type_t)dn_stored_dt(dw), dnnl_oihw, &wout));
    if (with_bias) {
        dnnl_dims_t bd = {dd->c};
        DN_CHECK(dnnl_memory_desc_init_by_tag(&bm, 1, bd, dnnl_f32, dnnl_a));
    }
    /* the forward hint wants weights of the data type */
    dnnl_memory_desc_t whint;
    CZ_TRY(dn_plain_md(dd->c, src->c, k, k, (dnnl_data_type_t)dn_stored_dt(src), dnnl_format_tag_any, &whint));
    dnnl_primitive_attr_t attr = NULL;
    CZ_TRY(dn_attr_make(CZ_ACT_NONE, 0.f, &attr));
    dnnl_convolution_desc_t fd, bd;
    dnnl_primitive_desc_t hint = NULL, pd = NULL;
    dnnl_status_t ds = dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct, &sm,
                                                          &whint, with_bias ? &bm : NULL, &dany, strides, pl, pr);
    if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&hint, &fd, NULL, b->engine, NULL);
    if (ds == dnnl_success)
        ds = dnnl_convolution_backward_weights_desc_init(&bd, dnnl_convolution_direct, &sm, &wany,
                                                         with_bias ? &bm : NULL, &dany, strides, pl, pr);
    if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&pd, &bd, attr, b->engine, hint);
    if (hint) dnnl_primitive_desc_destroy(hint);
    if (ds != dnnl_success) {
        dnnl_primitive_attr_destroy(attr);
        return dn_fail(ds, __FILE__, __LINE__, "convolution backward-weights primitive descriptor");
    }
    if (dn_few_channels(dd)) {
        cz_status pst = dn_pre_build(b, &dm, dnnl_primitive_desc_query_md(pd, dnnl_query_diff_dst_md, 0), e);
        if (pst != CZ_OK) {
            dnnl_primitive_desc_destroy(pd);
            dnnl_primitive_attr_destroy(attr);
            return pst;
        }
    }
    e->ws.md = *dnnl_primitive_desc_query_md(pd, dnnl_query_diff_weights_md, 0);
    static const int ids_b[4] = {DNNL_ARG_SRC, DNNL_ARG_DIFF_DST, DNNL_ARG_DIFF_WEIGHTS, DNNL_ARG_DIFF_BIAS};
    cz_status st = dn_step_init(b, &e->main, pd, with_bias ? 4 : 3, ids_b);
    static const int rids[2] = {DNNL_ARG_FROM, DNNL_ARG_TO};
    if (st == CZ_OK) { /* overwrite */
        pd = NULL;
        ds = dnnl_reorder_primitive_desc_create(&pd, &e->ws.md, b->engine, &wout, b->engine, attr);
        st = ds == dnnl_success ? dn_step_init(b, &e->post, pd, 2, rids)
                                : dn_fail(ds, __FILE__, __LINE__, "weight-gradient reorder");
    }
    if (st == CZ_OK) { /* accumulate: dw = gradient + 1.0 * dw */
        dnnl_post_ops_t po = NULL;
        ds = dnnl_post_ops_create(&po);
        if (ds == dnnl_success) ds = dnnl_post_ops_append_sum(po, 1.f);
        if (ds == dnnl_success) ds = dnnl_primitive_attr_set_post_ops(attr, po);
        if (po) dnnl_post_ops_destroy(po);
        pd = NULL;
        if (ds == dnnl_success) ds = dnnl_reorder_primitive_desc_create(&pd, &e->ws.md, b->engine, &wout, b->engine, attr);
        st = ds == dnnl_success ? dn_step_init(b, &e->extra, pd, 2, rids)
                                : dn_fail(ds, __FILE__, __LINE__, "accumulating weight-gradient reorder");
    }
    dnnl_primitive_attr_destroy(attr);
    return st;
}

/* Per-channel sums of t (double accumulation) into out[c], any layout this backend uses. */
typedef struct chsum_ctx {
    const cz_tensor *t;
    double *out;
} chsum_ctx;

static void chsum_range(void *ctx, size_t lo, size_t hi) {
    const chsum_ctx *c = ctx;
    const cz_tensor *t = c->t;
    int dt = dn_stored_dt(t);
    size_t plane = (size_t)t->h * t->w;
    for (size_t ch = lo; ch < hi; ch++) {
        double acc = 0;
        for (int n = 0; n < t->n; n++) {
            if (t->layout == CZ_DNNL_LAYOUT_NCHW16C) {
                size_t base = phys(t, n, (int)ch, 0, 0);
                for (size_t i = 0; i < plane; i++) acc += ldf(t->data, dt, base + i * 16);
            } else {
                size_t base = ((size_t)n * t->c + ch) * plane;
                for (size_t i = 0; i < plane; i++) acc += ldf(t->data, dt, base + i);
            }
        }
        c->out[ch] = acc;
    }
}

/* db = g (or db += g), fp32 math on the stored vector. */
static cz_status store_vec_grad(dn_backend *b, cz_tensor *db, const float *g, int accumulate) {
    float *cur = NULL, *tmp;
    void *tp;
    CZ_TRY(dn_aux(b, 14, (size_t)db->c * 4, &tp));
    tmp = tp;
    if (accumulate) CZ_TRY(vec_f32(b, db, 13, &cur));
    for (int c = 0; c < db->c; c++) tmp[c] = accumulate ? cur[c] + g[c] : g[c];
    vec_store(db, tmp);
    return CZ_OK;
}

static cz_status bwd_weights(cz_backend *be, const char *op, int transposed, const cz_tensor *x, const cz_tensor *dy,
                             const cz_conv_params *p, cz_tensor *dw, cz_tensor *db, int accumulate) {
    dn_backend *b = (dn_backend *)be;
    CZ_TRY(req(op, "x", x));
    CZ_TRY(req(op, "dy", dy));
    CZ_TRY(req(op, "dw", dw));
    CZ_TRY(opt(op, "db", db));
    CZ_TRY(check_p(op, p));
    CZ_TRY(check_geometry(op, transposed, x, dw, dy, p, "x", "dy"));
    CZ_TRY(want_vec(op, "db", db, transposed ? dw->c : dw->n));
    if (dn_stored_dt(x) != dn_stored_dt(dy))
        return cz_error_set(CZ_ERR_UNSUPPORTED, "%s: x (%s) and dy (%s) must share a dtype", op,
                            cz_dtype_name(x->dtype), cz_dtype_name(dy->dtype));
    if (dw->layout != CZ_DNNL_LAYOUT_NCHW)
        return cz_error_set(CZ_ERR_UNSUPPORTED, "%s: dw must be a weight tensor (plain layout), got layout %d", op,
                            dw->layout);
    dn_enter(b);
    /* the convolution whose weight gradient is dw: src -> dd */
    const cz_tensor *src = transposed ? dy : x, *dd = transposed ? x : dy;
    int conv_bias = db && !transposed;
    dn_key key;
    memset(&key, 0, sizeof key);
    key.op = DN_OP_CONV_BWD_W;
    key.nt = 3;
    key.t[0] = dn_tkey_of(src);
    key.t[1] = dn_tkey_of(dd);
    key.t[2] = dn_tkey_of(dw);
    key.i[0] = p->stride;
    key.i[1] = p->pad;
    key.i[2] = conv_bias;
    key.i[3] = dw->h;
    uint64_t h;
    dn_prim *e = dn_cache_find(b, &key, &h);
    if (!e) {
        CZ_TRY(dn_cache_new(b, &key, h, &e));
        cz_status st = wgrad_build(b, src, dd, dw, dw->h, p, conv_bias, e);
        if (st != CZ_OK) {
            dn_prim_discard(e);
            return st;
        }
        dn_cache_insert(b, e);
    }
    void *gw, *gb = NULL;
    CZ_TRY(dn_aux(b, 8, dnnl_memory_desc_get_size(&e->ws.md), &gw));
    if (conv_bias) CZ_TRY(dn_aux(b, 9, (size_t)dd->c * 4, &gb));
    void *ddp;
    CZ_TRY(dn_pre_run(b, e, dd, 15, &ddp));
    void *ptrs[4] = {src->data, ddp, gw, gb};
    CZ_TRY(dn_run(b, &e->main, ptrs));
    void *rp[2] = {gw, dw->data};
    CZ_TRY(dn_run(b, accumulate ? &e->extra : &e->post, rp));
    dn_note_impl(b, DN_OP_CONV_BWD_W, &e->main);
    dn_touch(dw);
    if (db && transposed) { /* bias of a transposed conv: per-channel sum of its output gradient */
        double *sums;
        void *sp;
        CZ_TRY(dn_aux(b, 9, (size_t)dy->c * (8 + 4), &sp));
        sums = sp;
        chsum_ctx c = {dy, sums};
        dn_parallel((size_t)dy->c, 2, chsum_range, &c);
        float *g = (float *)(sums + dy->c);
        for (int ch = 0; ch < dy->c; ch++) g[ch] = (float)sums[ch];
        gb = g;
    }
    if (db) CZ_TRY(store_vec_grad(b, db, gb, accumulate));
    return CZ_OK;
}

static cz_status dn_conv2d_bwd_weights(cz_backend *be, const cz_tensor *x, const cz_tensor *dy,
                                       const cz_conv_params *p, cz_tensor *dw, cz_tensor *db, int accumulate) {
    return bwd_weights(be, "conv2d_bwd_weights", 0, x, dy, p, dw, db, accumulate);
}

static cz_status dn_deconv2d_bwd_weights(cz_backend *be, const cz_tensor *x, const cz_tensor *dy,
                                         const cz_conv_params *p, cz_tensor *dw, cz_tensor *db, int accumulate) {
    return bwd_weights(be, "deconv2d_bwd_weights", 1, x, dy, p, dw, db, accumulate);
}

/* ---------------------------------------------------------------- batch norm backward */

static cz_status bn_bwd_prim(dn_backend *b, const cz_tensor *x, dn_prim **out) {
    dn_key key;
    memset(&key, 0, sizeof key);
    key.op = DN_OP_BN_BWD;
    key.nt = 1;
    key.t[0] = dn_tkey_of(x);
    uint64_t h;
    dn_prim *e = dn_cache_find(b, &key, &h);
    if (e) {
        *out = e;
        return CZ_OK;
    }
    dnnl_memory_desc_t xm;
    CZ_TRY(dn_tensor_md(x, &xm));
    unsigned flags = (unsigned)dnnl_use_scale | (unsigned)dnnl_use_shift;
    dnnl_batch_normalization_desc_t fd, bd;
    dnnl_primitive_desc_t hint = NULL, pd = NULL;
    dnnl_primitive_attr_t attr;
    CZ_TRY(dn_attr_make(CZ_ACT_NONE, 0.f, &attr));
    dnnl_status_t ds = dnnl_batch_normalization_forward_desc_init(&fd, dnnl_forward_training, &xm, 0.f, flags);
    if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&hint, &fd, NULL, b->engine, NULL);
    if (ds == dnnl_success) ds = dnnl_batch_normalization_backward_desc_init(&bd, dnnl_backward, &xm, &xm, 0.f, flags);
    if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&pd, &bd, attr, b->engine, hint);
    if (hint) dnnl_primitive_desc_destroy(hint);
    dnnl_primitive_attr_destroy(attr);
    DN_CHECK(ds);
    /* oneDNN 2.6 lists SHIFT as an input of the backward pass too (never read there) */
    static const int ids[9] = {DNNL_ARG_SRC,      DNNL_ARG_MEAN,       DNNL_ARG_VARIANCE,
                               DNNL_ARG_DIFF_DST, DNNL_ARG_SCALE,      DNNL_ARG_SHIFT,
                               DNNL_ARG_DIFF_SRC, DNNL_ARG_DIFF_SCALE, DNNL_ARG_DIFF_SHIFT};
    CZ_TRY(dn_cache_new(b, &key, h, &e));
    cz_status st = dn_step_init(b, &e->main, pd, 9, ids);
    if (st != CZ_OK) {
        dn_prim_discard(e);
        return st;
    }
    dn_cache_insert(b, e);
    *out = e;
    return CZ_OK;
}

static cz_status dn_bn_train_bwd(cz_backend *be, const cz_tensor *x, const cz_tensor *dy, const cz_tensor *gamma,
                                 const cz_tensor *save_mean, const cz_tensor *save_invstd, cz_tensor *dx,
                                 cz_tensor *dgamma, cz_tensor *dbeta, int accumulate) {
    dn_backend *b = (dn_backend *)be;
    const char *op = "bn_train_bwd";
    CZ_TRY(req(op, "x", x));
    CZ_TRY(req(op, "dy", dy));
    CZ_TRY(opt(op, "gamma", gamma));
    CZ_TRY(req(op, "save_mean", save_mean));
    CZ_TRY(req(op, "save_invstd", save_invstd));
    CZ_TRY(opt(op, "dx", dx));
    CZ_TRY(opt(op, "dgamma", dgamma));
    CZ_TRY(opt(op, "dbeta", dbeta));
    CZ_TRY(want(op, "dy", dy, SHP(x)));
    if (dx) CZ_TRY(want(op, "dx", dx, SHP(x)));
    CZ_TRY(want_vec(op, "gamma", gamma, x->c));
    CZ_TRY(want_vec(op, "save_mean", save_mean, x->c));
    CZ_TRY(want_vec(op, "save_invstd", save_invstd, x->c));
    CZ_TRY(want_vec(op, "dgamma", dgamma, x->c));
    CZ_TRY(want_vec(op, "dbeta", dbeta, x->c));
    if (save_mean->dtype != CZ_F32 || save_invstd->dtype != CZ_F32)
        return cz_error_set(CZ_ERR_UNSUPPORTED, "%s: save_mean and save_invstd must be fp32", op);
    const cz_tensor *others[2] = {dy, dx};
    for (int i = 0; i < 2; i++)
        if (others[i] && (dn_stored_dt(others[i]) != dn_stored_dt(x) || others[i]->layout != x->layout))
            return cz_error_set(CZ_ERR_UNSUPPORTED, "%s: x, dy and dx must share dtype and layout", op);
    if (dx && (dx->data == x->data || dx->data == dy->data))
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: dx shares storage with x or dy", op);
    dn_enter(b);
    dn_prim *e = NULL;
    CZ_TRY(bn_bwd_prim(b, x, &e));
    int C = x->c;
    void *vp, *dxp;
    CZ_TRY(dn_aux(b, 8, (size_t)C * 4 * 5, &vp)); /* var, ones, zeros, dscale, dshift */
    float *var = vp, *ones = var + C, *zeros = ones + C, *dscale = zeros + C, *dshift = dscale + C;
    float *mean, *invstd, *g = ones;
    CZ_TRY(vec_f32(b, save_mean, 9, &mean));
    CZ_TRY(vec_f32(b, save_invstd, 10, &invstd));
    for (int c = 0; c < C; c++) {
        double is = (double)invstd[c];
        var[c] = (float)(1.0 / (is * is));
        ones[c] = 1.f;
        zeros[c] = 0.f;
    }
    if (gamma) CZ_TRY(vec_f32(b, gamma, 11, &g));
    if (dx) {
        dxp = dx->data;
    } else {
        dnnl_memory_desc_t xm;
        CZ_TRY(dn_tensor_md(x, &xm));
        CZ_TRY(dn_aux(b, 12, dnnl_memory_desc_get_size(&xm), &dxp));
    }
    void *ptrs[9] = {x->data, mean, var, dy->data, g, zeros, dxp, dscale, dshift};
    CZ_TRY(dn_run(b, &e->main, ptrs));
    dn_note_impl(b, DN_OP_BN_BWD, &e->main);
    if (dx) dn_touch(dx);
    if (dgamma) CZ_TRY(store_vec_grad(b, dgamma, dscale, accumulate));
    if (dbeta) CZ_TRY(store_vec_grad(b, dbeta, dshift, accumulate));
    return CZ_OK;
}

void dn_fill_bwd_ops(cz_backend_ops *ops) {
    ops->conv2d_bwd_data = dn_conv2d_bwd_data;
    ops->deconv2d_bwd_data = dn_deconv2d_bwd_data;
    ops->conv2d_bwd_weights = dn_conv2d_bwd_weights;
    ops->deconv2d_bwd_weights = dn_deconv2d_bwd_weights;
    ops->bn_train_bwd = dn_bn_train_bwd;
}
