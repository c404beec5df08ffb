/* backend_dnnl_ops.c: the non-convolution forward ops of the `dnnl` backend (oneDNN 2.6 C
 * API); conv2d/deconv2d are in backend_dnnl_conv.c, memory and caches in backend_dnnl.c (its
 * file-top comment has the storage rules).
 *
 * Every op validates shapes the way the ref backend does (CZ_ERR_SHAPE / INVALID_ARG with a
 * detail), looks its primitive up by shape (creating it on first use), binds the tensors'
 * buffers and runs it, then bumps the output's generation (so a weight copy made from it
 * would be rebuilt).
 *
 * bn_infer / bn_train_fwd: oneDNN batch normalization (global stats / batch stats, scale and
 *   shift); save_invstd and the running-stat updates (unbiased variance) are computed in C.
 * act_fwd: eltwise (in place allowed). x and y may be channel views (backend.h): then the
 *   eltwise is built for one image's contiguous run (a dense (1, c, h, w) tensor of the
 *   storage's layout) and run once per image at each side's offset (oneDNN 2.6's jit eltwise
 *   wants dense memory and would fall back to its reference kernel on the strided view);
 *   conversions between dtypes/layouts, and act NONE, are reorders, which take views as they
 *   are. Every other op here refuses views (req() -> CZ_ERR_UNSUPPORTED).
 * concat: oneDNN concat across any layouts.
 * dropout_fwd: the ref backend's SplitMix64 counter RNG on the logical NCHW index, so masks
 *   agree bit for bit. bce_logits_fwd, l1_fwd: double-accumulated loops over the stored
 *   elements (every layout here is dense, so the element set is the same as NCHW's).
 *
 * The backward slots live in backend_dnnl_bwd.c and backend_dnnl_train.c.
 * Tested by tests/unit/test_ops.c and tests/unit/test_dnnl.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_dnnl_impl.h"

/* ---------------------------------------------------------------- batch norm */

static cz_status bn_prim(dn_backend *b, int train, const cz_tensor *x, int has_g, int has_b, float eps,
                         dn_prim **out) {
    dn_key key;
    memset(&key, 0, sizeof key);
    key.op = train ? DN_OP_BN_TRAIN : DN_OP_BN_INFER;
    key.nt = 1;
    key.t[0] = dn_tkey_of(x);
    key.i[0] = has_g;
    key.i[1] = has_b;
    key.f[0] = fbits(eps);
    uint64_t h;
    dn_prim *e = dn_cache_find(b, &key, &h);
    if (e) {
        *out = e;
        return CZ_OK;
    }
    dnnl_memory_desc_t xm;
    CZ_TRY(dn_tensor_md(x, &xm));
    unsigned flags = (train ? 0u : (unsigned)dnnl_use_global_stats) | (has_g ? (unsigned)dnnl_use_scale : 0u) |
                     (has_b ? (unsigned)dnnl_use_shift : 0u);
    dnnl_batch_normalization_desc_t bd;
    dnnl_primitive_attr_t attr;
    dnnl_primitive_desc_t pd = NULL;
    CZ_TRY(dn_attr_make(CZ_ACT_NONE, 0.f, &attr));
    dnnl_status_t ds = dnnl_batch_normalization_forward_desc_init(
        &bd, train ? dnnl_forward_training : dnnl_forward_inference, &xm, eps, flags);
    if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&pd, &bd, attr, b->engine, NULL);
    dnnl_primitive_attr_destroy(attr);
    DN_CHECK(ds);
    /* argument order: SRC, MEAN, VARIANCE, [SCALE], [SHIFT], DST */
    int ids[6], n = 0;
    ids[n++] = DNNL_ARG_SRC;
    ids[n++] = DNNL_ARG_MEAN;
    ids[n++] = DNNL_ARG_VARIANCE;
    if (has_g) ids[n++] = DNNL_ARG_SCALE;
    if (has_b) ids[n++] = DNNL_ARG_SHIFT;
    ids[n++] = DNNL_ARG_DST;
    CZ_TRY(dn_cache_new(b, &key, h, &e));
    cz_status st = dn_step_init(b, &e->main, pd, n, ids);
    if (st != CZ_OK) {
        dn_prim_discard(e);
        return st;
    }
    dn_cache_insert(b, e);
    *out = e;
    return CZ_OK;
}

static cz_status same_storage(const char *op, const cz_tensor *x, const cz_tensor *y) {
    if (dn_stored_dt(x) != dn_stored_dt(y) || x->layout != y->layout)
        return cz_error_set(CZ_ERR_UNSUPPORTED, "%s: x and y must share dtype and layout (%s/%d vs %s/%d)", op,
                            cz_dtype_name(x->dtype), x->layout, cz_dtype_name(y->dtype), y->layout);
    return CZ_OK;
}

static cz_status dn_bn_infer(cz_backend *be, const cz_tensor *x, const cz_tensor *gamma, const cz_tensor *beta,
                             const cz_tensor *mean, const cz_tensor *var, float eps, cz_tensor *y) {
    dn_backend *b = (dn_backend *)be;
    const char *op = "bn_infer";
    CZ_TRY(req(op, "x", x));
    CZ_TRY(opt(op, "gamma", gamma));
    CZ_TRY(opt(op, "beta", beta));
    CZ_TRY(req(op, "mean", mean));
    CZ_TRY(req(op, "var", var));
    CZ_TRY(req(op, "y", y));
    CZ_TRY(want(op, "y", y, SHP(x)));
    CZ_TRY(want_vec(op, "gamma", gamma, x->c));
    CZ_TRY(want_vec(op, "beta", beta, x->c));
    CZ_TRY(want_vec(op, "mean", mean, x->c));
    CZ_TRY(want_vec(op, "var", var, x->c));
    if (!(eps >= 0)) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: eps %g must be >= 0", op, (double)eps);
    CZ_TRY(same_storage(op, x, y));
    dn_enter(b);
    dn_prim *e;
    CZ_TRY(bn_prim(b, 0, x, gamma != NULL, beta != NULL, eps, &e));
    float *g = NULL, *bt = NULL, *m, *v;
    CZ_TRY(vec_f32(b, mean, 0, &m));
    CZ_TRY(vec_f32(b, var, 1, &v));
    if (gamma) CZ_TRY(vec_f32(b, gamma, 2, &g));
    if (beta) CZ_TRY(vec_f32(b, beta, 3, &bt));
    void *ptrs[6];
    int n = 0;
    ptrs[n++] = x->data;
    ptrs[n++] = m;
    ptrs[n++] = v;
    if (gamma) ptrs[n++] = g;
    if (beta) ptrs[n++] = bt;
    ptrs[n++] = y->data;
    CZ_TRY(dn_run(b, &e->main, ptrs));
    dn_note_impl(b, DN_OP_BN_INFER, &e->main);
    dn_touch(y);
    return CZ_OK;
}

static cz_status dn_bn_train_fwd(cz_backend *be, const cz_tensor *x, const cz_tensor *gamma, const cz_tensor *beta,
                                 float eps, float momentum, cz_tensor *rmean, cz_tensor *rvar, cz_tensor *save_mean,
                                 cz_tensor *save_invstd, cz_tensor *y) {
    dn_backend *b = (dn_backend *)be;
    const char *op = "bn_train_fwd";
    CZ_TRY(req(op, "x", x));
    CZ_TRY(opt(op, "gamma", gamma));
    CZ_TRY(opt(op, "beta", beta));
    CZ_TRY(opt(op, "running_mean", rmean));
    CZ_TRY(opt(op, "running_var", rvar));
    CZ_TRY(opt(op, "save_mean", save_mean));
    CZ_TRY(opt(op, "save_invstd", save_invstd));
    CZ_TRY(req(op, "y", y));
    CZ_TRY(want(op, "y", y, SHP(x)));
    CZ_TRY(want_vec(op, "gamma", gamma, x->c));
    CZ_TRY(want_vec(op, "beta", beta, x->c));
    CZ_TRY(want_vec(op, "running_mean", rmean, x->c));
    CZ_TRY(want_vec(op, "running_var", rvar, x->c));
    CZ_TRY(want_vec(op, "save_mean", save_mean, x->c));
    CZ_TRY(want_vec(op, "save_invstd", save_invstd, x->c));
    if (save_mean && save_mean->dtype != CZ_F32)
        return cz_error_set(CZ_ERR_UNSUPPORTED, "%s: save_mean must be fp32", op);
    if (save_invstd && save_invstd->dtype != CZ_F32)
        return cz_error_set(CZ_ERR_UNSUPPORTED, "%s: save_invstd must be fp32", op);
    if (!(eps >= 0)) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: eps %g must be >= 0", op, (double)eps);
    if (!(momentum >= 0 && momentum <= 1))
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: momentum %g must be in [0, 1]", op, (double)momentum);
    size_t count = (size_t)x->n * x->h * x->w;
    if (count < 2)
        return cz_error_set(CZ_ERR_SHAPE, "%s: x is [%d,%d,%d,%d], batch statistics need more than 1 value per channel",
                            op, SHP(x));
    CZ_TRY(same_storage(op, x, y));
    dn_enter(b);
    dn_prim *e;
    CZ_TRY(bn_prim(b, 1, x, gamma != NULL, beta != NULL, eps, &e));
    void *mp, *vp;
    float *g = NULL, *bt = NULL;
    CZ_TRY(dn_aux(b, 4, (size_t)x->c * 4, &mp));
    CZ_TRY(dn_aux(b, 5, (size_t)x->c * 4, &vp));
    if (gamma) CZ_TRY(vec_f32(b, gamma, 2, &g));
    if (beta) CZ_TRY(vec_f32(b, beta, 3, &bt));
    void *ptrs[6];
    int n = 0;
    ptrs[n++] = x->data;
    ptrs[n++] = mp;
    ptrs[n++] = vp;
    if (gamma) ptrs[n++] = g;
    if (beta) ptrs[n++] = bt;
    ptrs[n++] = y->data;
    CZ_TRY(dn_run(b, &e->main, ptrs));
    dn_note_impl(b, DN_OP_BN_TRAIN, &e->main);
    dn_touch(y);
    const float *mean = mp, *var = vp;
    float *tmp;
    void *tp;
    CZ_TRY(dn_aux(b, 6, (size_t)x->c * 4, &tp));
    tmp = tp;
    if (save_mean) vec_store(save_mean, mean);
    if (save_invstd) {
        for (int c = 0; c < x->c; c++) tmp[c] = (float)(1.0 / sqrt((double)var[c] + (double)eps));
        vec_store(save_invstd, tmp);
    }
    double mom = (double)momentum;
    if (rmean) {
        float *cur;
        CZ_TRY(vec_f32(b, rmean, 0, &cur));
        for (int c = 0; c < x->c; c++) tmp[c] = (float)((1.0 - mom) * cur[c] + mom * mean[c]);
        vec_store(rmean, tmp);
    }
    if (rvar) {
        float *cur;
        CZ_TRY(vec_f32(b, rvar, 1, &cur));
        double corr = (double)count / (double)(count - 1);
        for (int c = 0; c < x->c; c++) tmp[c] = (float)((1.0 - mom) * cur[c] + mom * (double)var[c] * corr);
        vec_store(rvar, tmp);
    }
    return CZ_OK;
}

/* ---------------------------------------------------------------- activation, concat */

/* Two tensors on one storage whose channel ranges overlap without being the same range. */
static int partial_overlap(const cz_tensor *x, const cz_tensor *y) {
    if (x->data != y->data) return 0;
    int xo = dn_is_view(x) ? x->c_off : 0, yo = dn_is_view(y) ? y->c_off : 0;
    if (xo == yo && x->c == y->c) return 0; /* in place */
    return xo < yo + y->c && yo < xo + x->c;
}

static cz_status dn_act_fwd(cz_backend *be, cz_act act, float alpha, const cz_tensor *x, cz_tensor *y) {
    dn_backend *b = (dn_backend *)be;
    const char *op = "act_fwd";
    CZ_TRY(check_act(op, act));
    CZ_TRY(req_view(op, "x", x));
    CZ_TRY(req_view(op, "y", y));
    CZ_TRY(want(op, "y", y, SHP(x)));
    if (x->data == y->data && x->dtype != y->dtype)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: in place needs one dtype", op);
    if (partial_overlap(x, y))
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: x (channels %d..) and y (channels %d..) overlap in one storage",
                            op, dn_is_view(x) ? x->c_off : 0, dn_is_view(y) ? y->c_off : 0);
    dn_enter(b);
    if (act == CZ_ACT_NONE) return dn_copy(b, x, y);
    const cz_tensor *src = x;
    if (dn_stored_dt(x) != dn_stored_dt(y) || x->layout != y->layout) {
        CZ_TRY(dn_copy(b, x, y)); /* convert first, then activate in place */
        src = y;
    }
    /* per image when either side is a view: src and y then have one layout and dtype, so one
     * image's run has the same element order on both sides */
    int per_image = dn_is_view(src) || dn_is_view(y);
    dn_key key;
    memset(&key, 0, sizeof key);
    key.op = DN_OP_ACT;
    key.nt = 2;
    key.t[0] = dn_tkey_of(y);
    key.t[1] = dn_tkey_of(src);
    key.i[0] = (int)act;
    key.i[1] = per_image;
    key.f[0] = act == CZ_ACT_LRELU ? fbits(alpha) : 0;
    uint64_t h;
    dn_prim *e = dn_cache_find(b, &key, &h);
    if (!e) {
        dnnl_memory_desc_t ym;
        if (per_image) {
            cz_tensor one = *y;
            one.n = 1;
            one.c_off = one.c_store = 0;
            CZ_TRY(dn_dense_md(&one, &ym));
        } else {
            CZ_TRY(dn_dense_md(y, &ym));
        }
        dnnl_alg_kind_t alg;
        float a = 0.f;
        dn_act_alg(act, alpha, &alg, &a);
        dnnl_eltwise_desc_t ed;
        dnnl_primitive_attr_t attr;
        dnnl_primitive_desc_t pd = NULL;
        CZ_TRY(dn_attr_make(CZ_ACT_NONE, 0.f, &attr));
        dnnl_status_t ds = dnnl_eltwise_forward_desc_init(&ed, dnnl_forward_inference, alg, &ym, a, 0.f);
        if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&pd, &ed, attr, b->engine, NULL);
        dnnl_primitive_attr_destroy(attr);
        DN_CHECK(ds);
        CZ_TRY(dn_cache_new(b, &key, h, &e));
        static const int ids[2] = {DNNL_ARG_SRC, DNNL_ARG_DST};
        cz_status st = dn_step_init(b, &e->main, pd, 2, ids);
        if (st != CZ_OK) {
            dn_prim_discard(e);
            return st;
        }
        dn_cache_insert(b, e);
    }
    if (!per_image) {
        void *ptrs[2] = {src->data, y->data};
        CZ_TRY(dn_run(b, &e->main, ptrs));
    } else {
        size_t es = dn_stored_dt(y) == dnnl_f32 ? 4 : 2;
        for (int i = 0; i < y->n; i++) {
            void *ptrs[2] = {(char *)src->data + dn_img_off(src, i) * es, (char *)y->data + dn_img_off(y, i) * es};
            CZ_TRY(dn_run(b, &e->main, ptrs));
        }
    }
    dn_note_impl(b, DN_OP_ACT, &e->main);
    dn_touch(y);
    return CZ_OK;
}

static cz_status dn_concat(cz_backend *be, const cz_tensor *a, const cz_tensor *bb, cz_tensor *y) {
    dn_backend *b = (dn_backend *)be;
    const char *op = "concat";
    CZ_TRY(req(op, "a", a));
    CZ_TRY(req(op, "b", bb));
    CZ_TRY(req(op, "y", y));
    CZ_TRY(want(op, "b", bb, a->n, bb->c, a->h, a->w));
    CZ_TRY(want(op, "y", y, a->n, a->c + bb->c, a->h, a->w));
    CZ_TRY(no_alias(op, a, y));
    CZ_TRY(no_alias(op, bb, y));
    dn_enter(b);
    dn_key key;
    memset(&key, 0, sizeof key);
    key.op = DN_OP_CONCAT;
    key.nt = 3;
    key.t[0] = dn_tkey_of(a);
    key.t[1] = dn_tkey_of(bb);
    key.t[2] = dn_tkey_of(y);
    uint64_t h;
    dn_prim *e = dn_cache_find(b, &key, &h);
    if (!e) {
        dnnl_memory_desc_t srcs[2], ym;
        CZ_TRY(dn_tensor_md(a, &srcs[0]));
        CZ_TRY(dn_tensor_md(bb, &srcs[1]));
        CZ_TRY(dn_tensor_md(y, &ym));
        dnnl_primitive_attr_t attr;
        dnnl_primitive_desc_t pd = NULL;
        CZ_TRY(dn_attr_make(CZ_ACT_NONE, 0.f, &attr));
        dnnl_status_t ds = dnnl_concat_primitive_desc_create(&pd, &ym, 2, 1, srcs, attr, b->engine);
        dnnl_primitive_attr_destroy(attr);
        DN_CHECK(ds);
        CZ_TRY(dn_cache_new(b, &key, h, &e));
        static const int ids[3] = {DNNL_ARG_MULTIPLE_SRC, DNNL_ARG_MULTIPLE_SRC + 1, DNNL_ARG_DST};
        cz_status st = dn_step_init(b, &e->main, pd, 3, ids);
        if (st != CZ_OK) {
            dn_prim_discard(e);
            return st;
        }
        dn_cache_insert(b, e);
    }
    void *ptrs[3] = {a->data, bb->data, y->data};
    CZ_TRY(dn_run(b, &e->main, ptrs));
    dn_note_impl(b, DN_OP_CONCAT, &e->main);
    dn_touch(y);
    return CZ_OK;
}

/* ---------------------------------------------------------------- dropout, losses */

/* Same draw as the ref backend (its file-top comment is the specification). */
static inline float dropout_u(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

static cz_status dn_dropout_fwd(cz_backend *be, float p, uint64_t seed, const cz_tensor *x, cz_tensor *mask,
                                cz_tensor *y) {
    const char *op = "dropout_fwd";
    (void)be;
    CZ_TRY(req(op, "x", x));
    CZ_TRY(req(op, "mask", mask));
    CZ_TRY(req(op, "y", y));
    CZ_TRY(want(op, "mask", mask, SHP(x)));
    CZ_TRY(want(op, "y", y, SHP(x)));
    CZ_TRY(no_alias(op, x, mask));
    if (!(p >= 0.0f && p < 1.0f))
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: p = %g must be in [0, 1)", op, (double)p);
    float scale = 1.0f / (1.0f - p);
    int xdt = dn_stored_dt(x), mdt = dn_stored_dt(mask), ydt = dn_stored_dt(y);
    uint64_t i = 0;
    for (int n = 0; n < x->n; n++)
        for (int c = 0; c < x->c; c++)
            for (int hh = 0; hh < x->h; hh++)
                for (int ww = 0; ww < x->w; ww++, i++) {
                    int keep = dropout_u(seed, i) >= p;
                    double xv = ldf(x->data, xdt, phys(x, n, c, hh, ww));
                    stf(mask->data, mdt, phys(mask, n, c, hh, ww), keep ? scale : 0.0f);
                    stf(y->data, ydt, phys(y, n, c, hh, ww), keep ? (float)(xv * (double)scale) : 0.0f);
                }
    dn_touch(mask);
    dn_touch(y);
    return CZ_OK;
}

static cz_status dn_bce_logits_fwd(cz_backend *be, const cz_tensor *x, float target, double *loss) {
    const char *op = "bce_logits_fwd";
    (void)be;
    CZ_TRY(req(op, "x", x));
    if (!loss) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: loss is NULL", op);
    if (!isfinite(target)) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: target is not finite", op);
    size_t n = cz_tensor_numel(x);
    int dt = dn_stored_dt(x);
    double t = (double)target, sum = 0;
    for (size_t i = 0; i < n; i++) {
        double v = ldf(x->data, dt, i);
        sum += (v > 0 ? v : 0.0) - v * t + log1p(exp(-fabs(v)));
    }
    *loss = sum / (double)n;
    return CZ_OK;
}

static cz_status dn_l1_fwd(cz_backend *be, const cz_tensor *a, const cz_tensor *bb, double *loss) {
    dn_backend *b = (dn_backend *)be;
    const char *op = "l1_fwd";
    CZ_TRY(req(op, "a", a));
    CZ_TRY(req(op, "b", bb));
    CZ_TRY(want(op, "b", bb, SHP(a)));
    if (!loss) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: loss is NULL", op);
    size_t n = cz_tensor_numel(a);
    const void *pa = a->data, *pb = bb->data;
    int adt = dn_stored_dt(a), bdt = dn_stored_dt(bb);
    if (a->layout != bb->layout && !(a->layout != CZ_DNNL_LAYOUT_NCHW16C && bb->layout != CZ_DNNL_LAYOUT_NCHW16C)) {
        /* different element orders: compare plain fp32 copies */
        void *ta, *tb;
        dn_enter(b);
        CZ_TRY(dn_aux(b, 4, n * 4, &ta));
        CZ_TRY(dn_aux(b, 5, n * 4, &tb));
        CZ_TRY(dn_read_f32(b, a, ta));
        CZ_TRY(dn_read_f32(b, bb, tb));
        pa = ta;
        pb = tb;
        adt = bdt = dnnl_f32;
    }
    double sum = 0;
    if (adt == dnnl_f32 && bdt == dnnl_f32) {
        const float *fa = pa, *fb = pb;
        for (size_t i = 0; i < n; i++) sum += fabs((double)fa[i] - (double)fb[i]);
    } else {
        for (size_t i = 0; i < n; i++) sum += fabs((double)ldf(pa, adt, i) - (double)ldf(pb, bdt, i));
    }
    *loss = sum / (double)n;
    return CZ_OK;
}

void dn_fill_ops(cz_backend_ops *ops) {
    dn_fill_conv_ops(ops);
    dn_fill_bwd_ops(ops);
    dn_fill_train_ops(ops);
    ops->bn_infer = dn_bn_infer;
    ops->bn_train_fwd = dn_bn_train_fwd;
    ops->act_fwd = dn_act_fwd;
    ops->concat = dn_concat;
    ops->dropout_fwd = dn_dropout_fwd;
    ops->bce_logits_fwd = dn_bce_logits_fwd;
    ops->l1_fwd = dn_l1_fwd;
}
