/* backend_cuda_ops.c: the op slots of the `cuda` backend: argument and shape validation (the
 * same rules and error codes as the ref backend), then cuDNN (cudnn_ops.c) for the
 * convolutions and our kernels (*.cu via cu_kernels.h) for everything else. Ops queue their
 * work on the instance's stream and return without waiting, except the two losses, which
 * copy their scalar back to the host, and loss_read.
 *
 * Conventions beyond backend.h (shared with ref): the conv params' act is ignored by backward
 * ops; `accumulate` applies to parameter gradients and concat_bwd; bn_train_bwd overwrites dx;
 * NULL db/dgamma/dbeta/dx are skipped; gamma/beta may be NULL; bn save tensors and Adam state
 * are fp32. Convolutions need x and y (dy and dx) in one dtype; weights of another dtype are
 * converted once and cached (cu_weight_as); a weight gradient of another dtype than x is
 * computed in x's dtype and converted while being added.
 *
 * Transposed convolutions reuse cuDNN's convolution with the roles exchanged: for deconv
 * weights (in, out, k, k) the convolution that cuDNN sees maps the deconv's OUTPUT (out
 * channels) to its INPUT (in channels), so deconv2d = backward data, deconv2d_bwd_data =
 * forward, deconv2d_bwd_weights = backward filter with x and dy exchanged.
 *
 * Every output's generation is bumped (cu_touch) so weight copies made from it are rebuilt.
 * Threading: one thread at a time per instance. Tested by tests/unit/test_ops.c (parity of
 * every op with ref in fp32, bf16 and fp16; batch views bit for bit), run on a GPU by
 * tests/gpu/check.sh. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cuda_impl.h"

#define BE(be) ((cu_backend *)(be))

static cz_status var_at(cu_backend *b, const char *op, int var, int n);

/* ------------------------------------------------------------------------------ helpers */

static cz_status check_act(const char *op, cz_act act) {
    if (act != CZ_ACT_NONE && act != CZ_ACT_RELU && act != CZ_ACT_LRELU && act != CZ_ACT_TANH)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: unknown activation %d", op, (int)act);
    return CZ_OK;
}

static cz_status check_params(const char *op, const cz_conv_params *p) {
    if (!p) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: conv params are NULL", op);
    if (p->stride < 1 || p->pad < 0)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: stride %d / pad %d out of range", op, p->stride, p->pad);
    return check_act(op, p->act);
}

static cz_status no_alias(const char *op, const char *an, const cz_tensor *a, const char *bn, const cz_tensor *b) {
    if (a && b && a->data == b->data)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: %s and %s share storage (only act_fwd may run in place)",
                            op, an, bn);
    return CZ_OK;
}

static cz_status same_dtype(const char *op, const char *an, const cz_tensor *a, const char *bn, const cz_tensor *b) {
    if (a->dtype != b->dtype)
        return cz_error_set(CZ_ERR_UNSUPPORTED, "cuda %s: %s is %s but %s is %s; convolutions need one dtype", op,
                            an, cz_dtype_name(a->dtype), bn, cz_dtype_name(b->dtype));
    return CZ_OK;
}

static cz_status expect_f32(const char *op, const char *name, const cz_tensor *t) {
    if (t && t->dtype != CZ_F32)
        return cz_error_set(CZ_ERR_UNSUPPORTED, "cuda %s: %s must be fp32, got %s", op, name,
                            cz_dtype_name(t->dtype));
    return CZ_OK;
}

static cz_status square(const char *op, const char *name, const cz_tensor *w) {
    if (w->h != w->w)
        return cz_error_set(CZ_ERR_SHAPE, "cuda %s: %s is [%d,%d,%d,%d], the kernel must be square", op, name, w->n,
                            w->c, w->h, w->w);
    return CZ_OK;
}

static cz_status conv_geom(const char *op, int in_h, int in_w, int k, const cz_conv_params *p, int *oh, int *ow) {
    if (in_h + 2 * p->pad < k || in_w + 2 * p->pad < k)
        return cz_error_set(CZ_ERR_SHAPE, "cuda %s: %dx%d kernel does not fit the padded %dx%d input", op, k, k,
                            in_h, in_w);
    *oh = (in_h + 2 * p->pad - k) / p->stride + 1;
    *ow = (in_w + 2 * p->pad - k) / p->stride + 1;
    return CZ_OK;
}

static cz_status deconv_geom(const char *op, int in_h, int in_w, int k, const cz_conv_params *p, int *oh, int *ow) {
    *oh = (in_h - 1) * p->stride - 2 * p->pad + k;
    *ow = (in_w - 1) * p->stride - 2 * p->pad + k;
    if (*oh < 1 || *ow < 1)
        return cz_error_set(CZ_ERR_SHAPE, "cuda %s: output %dx%d is empty (input %dx%d, k %d, stride %d, pad %d)",
                            op, *oh, *ow, in_h, in_w, k, p->stride, p->pad);
    return CZ_OK;
}

static const void *dev_opt(const cz_tensor *t) { return t ? cu_dev(t) : NULL; }
static int dt_opt(const cz_tensor *t) { return t ? (int)t->dtype : 0; }

/* Reduction scratch: partials, then three double vectors of c, then a float pair table. */
typedef struct red_bufs {
    double *part, *a, *b, *c2;
    float *ab;
} red_bufs;

static cz_status red_get(cu_backend *b, size_t rows, int c, red_bufs *r) {
    size_t part = cuk_chan_reduce_scratch(rows, c), vec = (size_t)c * sizeof(double);
    void *p;
    CZ_TRY(cu_scratch_get(b, &b->red, part + 3 * vec + 2 * (size_t)c * sizeof(float), &p));
    r->part = p;
    r->a = (double *)((char *)p + part);
    r->b = (double *)((char *)p + part + vec);
    r->c2 = (double *)((char *)p + part + 2 * vec);
    r->ab = (float *)((char *)p + part + 3 * vec);
    return CZ_OK;
}

/* y = act(conv + bias) after a convolution: in place on y when the convolution wrote y itself
 * (and there is anything to do), else from the packed result `src` into the view y. */
static cz_status epilogue(cu_backend *b, const void *src, cz_tensor *y, const cz_tensor *bias,
                          const cz_conv_params *p) {
    size_t rows = (size_t)y->n * y->h * y->w;
    if (!src) {
        if (!bias && p->act == CZ_ACT_NONE) return CZ_OK;
        CUK_CHECK(b, cuk_bias_act(cu_dev(y), y->dtype, y->c, 0, dev_opt(bias), dt_opt(bias), (int)p->act, p->alpha,
                                  cu_dev(y), y->dtype, y->c, 0, rows, y->c, b->stream));
        return CZ_OK;
    }
    CUK_CHECK(b, cuk_bias_act(src, y->dtype, y->c, 0, dev_opt(bias), dt_opt(bias), (int)p->act, p->alpha, cu_dev(y),
                              y->dtype, cu_ch_stride(y), cu_ch_off(y), rows, y->c, b->stream));
    return CZ_OK;
}

/* Bias gradient: db (+)= per-channel sum of dy over its pixels. */
static cz_status bias_grad(cu_backend *b, const cz_tensor *dy, cz_tensor *db, int accumulate) {
    if (!db) return CZ_OK;
    size_t rows = (size_t)dy->n * dy->h * dy->w;
    red_bufs r;
    CZ_TRY(red_get(b, rows, dy->c, &r));
    CUK_CHECK(b, cuk_chan_reduce(CUK_RED_SUM, cu_dev(dy), dy->dtype, NULL, 0, rows, dy->c, NULL, 0, NULL, NULL,
                                 r.part, r.a, NULL, b->stream));
    CUK_CHECK(b, cuk_store_vec(r.a, cu_dev(db), db->dtype, db->c, accumulate, b->stream));
    cu_touch(db);
    return CZ_OK;
}

/* ------------------------------------------------------------------------- convolutions */

static cz_status conv_like_fwd(cz_backend *be, const char *op, int tr, const cz_tensor *x, const cz_tensor *w,
                               const cz_tensor *bias, const cz_conv_params *p, cz_tensor *y) {
    cu_backend *b = BE(be);
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check(op, "x", x));
    CZ_TRY(cu_check(op, "w", w));
    CZ_TRY(cu_check_opt(op, "b", bias));
    CZ_TRY(cu_check_view(op, "y", y));
    CZ_TRY(check_params(op, p));
    CZ_TRY(square(op, "w", w));
    CZ_TRY(no_alias(op, "x", x, "y", y));
    int k = w->h, in_c = tr ? w->n : w->c, out_c = tr ? w->c : w->n, oh = 0, ow = 0;
    if (x->c != in_c)
        return cz_error_set(CZ_ERR_SHAPE, "cuda %s: x has %d channels but w [%d,%d,%d,%d] expects %d", op, x->c,
                            w->n, w->c, w->h, w->w, in_c);
    if (tr)
        CZ_TRY(deconv_geom(op, x->h, x->w, k, p, &oh, &ow));
    else
        CZ_TRY(conv_geom(op, x->h, x->w, k, p, &oh, &ow));
    CZ_TRY(cu_expect_shape(op, "y", y, x->n, out_c, oh, ow));
    CZ_TRY(cu_expect_vec(op, "b", bias, out_c));
    CZ_TRY(same_dtype(op, "x", x, "y", y));
    const void *wp;
    /* a thin end (at most CUK_THIN_MAX channels in; 2 or 3 out of a transposed conv): our direct
     * kernel with the bias and activation fused, straight into y (conv_thin.cu; b->thin says
     * which of the two are in use) */
    cuk_conv tp = tr ? (cuk_conv){x->dtype, x->n, out_c, oh, ow, in_c, k, x->h, x->w, p->stride, p->pad}
                     : (cuk_conv){x->dtype, x->n, in_c, x->h, x->w, out_c, k, oh, ow, p->stride, p->pad};
    if ((b->thin & (tr ? 2 : 1)) && cuk_conv_thin_ok(&tp, tr)) {
        CZ_TRY(cu_weight_as(b, w, CZ_F32, &wp));
        if (tr)
            CUK_CHECK(b, cuk_deconv_thin_out_fwd(&tp, cu_dev(x), wp, dev_opt(bias), dt_opt(bias), (int)p->act,
                                                 p->alpha, cu_dev(y), cu_ch_stride(y), cu_ch_off(y), b->stream));
        else
            CUK_CHECK(b, cuk_conv_thin_in_fwd(&tp, cu_dev(x), wp, dev_opt(bias), dt_opt(bias), (int)p->act, p->alpha,
                                              cu_dev(y), cu_ch_stride(y), cu_ch_off(y), b->stream));
        cu_touch(y);
        return CZ_OK;
    }
    CZ_TRY(cu_weight_as(b, w, x->dtype, &wp));
    /* a view output: cuDNN writes a packed temporary, the epilogue the view */
    void *tmp = NULL, *out = cu_dev(y);
    if (cz_tensor_is_view(y)) {
        CZ_TRY(cu_scratch_get(b, &b->tmp2, cz_tensor_numel(y) * cz_dtype_size(y->dtype), &tmp));
        out = tmp;
    }
    if (tr) /* cuDNN's convolution maps y (out channels) to x (in channels) */
        CZ_TRY(cdn_conv_bwd_data(b, &tp, wp, cu_dev(x), out));
    else
        CZ_TRY(cdn_conv_fwd(b, &tp, cu_dev(x), wp, out));
    CZ_TRY(epilogue(b, tmp, y, bias, p));
    cu_touch(y);
    return CZ_OK;
}

static cz_status cu_conv2d(cz_backend *be, const cz_tensor *x, const cz_tensor *w, const cz_tensor *bias,
                           const cz_conv_params *p, cz_tensor *y) {
    return conv_like_fwd(be, "conv2d", 0, x, w, bias, p, y);
}

static cz_status cu_deconv2d(cz_backend *be, const cz_tensor *x, const cz_tensor *w, const cz_tensor *bias,
                             const cz_conv_params *p, cz_tensor *y) {
    return conv_like_fwd(be, "deconv2d", 1, x, w, bias, p, y);
}

static cz_status conv_like_bwd_data(cz_backend *be, const char *op, int tr, const cz_tensor *dy, const cz_tensor *w,
                                    const cz_conv_params *p, cz_tensor *dx) {
    cu_backend *b = BE(be);
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check(op, "dy", dy));
    CZ_TRY(cu_check(op, "w", w));
    CZ_TRY(cu_check(op, "dx", dx));
    CZ_TRY(check_params(op, p));
    CZ_TRY(square(op, "w", w));
    CZ_TRY(no_alias(op, "dy", dy, "dx", dx));
    int k = w->h, in_c = tr ? w->n : w->c, out_c = tr ? w->c : w->n, oh = 0, ow = 0;
    if (dx->c != in_c)
        return cz_error_set(CZ_ERR_SHAPE, "cuda %s: dx has %d channels but w [%d,%d,%d,%d] has %d inputs", op,
                            dx->c, w->n, w->c, w->h, w->w, in_c);
    if (tr)
        CZ_TRY(deconv_geom(op, dx->h, dx->w, k, p, &oh, &ow));
    else
        CZ_TRY(conv_geom(op, dx->h, dx->w, k, p, &oh, &ow));
    CZ_TRY(cu_expect_shape(op, "dy", dy, dx->n, out_c, oh, ow));
    CZ_TRY(same_dtype(op, "dy", dy, "dx", dx));
    const void *wp;
    CZ_TRY(cu_weight_as(b, w, dy->dtype, &wp));
    if (tr) {
        cuk_conv cp = {dy->dtype, dx->n, out_c, oh, ow, in_c, k, dx->h, dx->w, p->stride, p->pad};
        CZ_TRY(cdn_conv_fwd(b, &cp, cu_dev(dy), wp, cu_dev(dx)));
    } else {
        cuk_conv cp = {dy->dtype, dx->n, in_c, dx->h, dx->w, out_c, k, oh, ow, p->stride, p->pad};
        CZ_TRY(cdn_conv_bwd_data(b, &cp, wp, cu_dev(dy), cu_dev(dx)));
    }
    cu_touch(dx);
    return CZ_OK;
}

static cz_status cu_conv2d_bwd_data(cz_backend *be, const cz_tensor *dy, const cz_tensor *w, const cz_conv_params *p,
                                    cz_tensor *dx) {
    return conv_like_bwd_data(be, "conv2d_bwd_data", 0, dy, w, p, dx);
}

static cz_status cu_deconv2d_bwd_data(cz_backend *be, const cz_tensor *dy, const cz_tensor *w,
                                      const cz_conv_params *p, cz_tensor *dx) {
    return conv_like_bwd_data(be, "deconv2d_bwd_data", 1, dy, w, p, dx);
}

static cz_status conv_like_bwd_weights(cz_backend *be, const char *op, int tr, const cz_tensor *x,
                                       const cz_tensor *dy, const cz_conv_params *p, cz_tensor *dw, cz_tensor *db,
                                       int accumulate) {
    cu_backend *b = BE(be);
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check(op, "x", x));
    CZ_TRY(cu_check(op, "dy", dy));
    CZ_TRY(cu_check(op, "dw", dw));
    CZ_TRY(cu_check_opt(op, "db", db));
    CZ_TRY(check_params(op, p));
    CZ_TRY(square(op, "dw", dw));
    int k = dw->h, in_c = tr ? dw->n : dw->c, out_c = tr ? dw->c : dw->n, oh = 0, ow = 0;
    if (x->c != in_c)
        return cz_error_set(CZ_ERR_SHAPE, "cuda %s: x has %d channels but dw [%d,%d,%d,%d] has %d inputs", op,
                            x->c, dw->n, dw->c, dw->h, dw->w, in_c);
    if (tr)
        CZ_TRY(deconv_geom(op, x->h, x->w, k, p, &oh, &ow));
    else
        CZ_TRY(conv_geom(op, x->h, x->w, k, p, &oh, &ow));
    CZ_TRY(cu_expect_shape(op, "dy", dy, x->n, out_c, oh, ow));
    CZ_TRY(cu_expect_vec(op, "db", db, out_c));
    CZ_TRY(same_dtype(op, "x", x, "dy", dy));
    CZ_TRY(no_alias(op, "x", x, "dw", dw));
    CZ_TRY(no_alias(op, "dy", dy, "dw", dw));
    cuk_conv cp;
    const void *cx, *cdy; /* the convolution's x and dy as cuDNN sees them */
    if (tr) {
        cuk_conv t = {x->dtype, x->n, out_c, oh, ow, in_c, k, x->h, x->w, p->stride, p->pad};
        cp = t;
        cx = cu_dev(dy);
        cdy = cu_dev(x);
    } else {
        cuk_conv t = {x->dtype, x->n, in_c, x->h, x->w, out_c, k, oh, ow, p->stride, p->pad};
        cp = t;
        cx = cu_dev(x);
        cdy = cu_dev(dy);
    }
    if (dw->dtype == x->dtype) {
        CZ_TRY(cdn_conv_bwd_filter(b, &cp, cx, cdy, cu_dev(dw), accumulate));
    } else {
        size_t count = cz_tensor_numel(dw);
        void *tmp;
        CZ_TRY(cu_scratch_get(b, &b->tmp2, count * cz_dtype_size(x->dtype), &tmp));
        CZ_TRY(cdn_conv_bwd_filter(b, &cp, cx, cdy, tmp, 0));
        CUK_CHECK(b, cuk_add_into(tmp, x->dtype, cu_dev(dw), dw->dtype, count, accumulate, b->stream));
    }
    cu_touch(dw);
    return bias_grad(b, dy, db, accumulate);
}

static cz_status cu_conv2d_bwd_weights(cz_backend *be, const cz_tensor *x, const cz_tensor *dy,
                                       const cz_conv_params *p, cz_tensor *dw, cz_tensor *db, int accumulate) {
    return conv_like_bwd_weights(be, "conv2d_bwd_weights", 0, x, dy, p, dw, db, accumulate);
}

static cz_status cu_deconv2d_bwd_weights(cz_backend *be, const cz_tensor *x, const cz_tensor *dy,
                                         const cz_conv_params *p, cz_tensor *dw, cz_tensor *db, int accumulate) {
    return conv_like_bwd_weights(be, "deconv2d_bwd_weights", 1, x, dy, p, dw, db, accumulate);
}

/* --------------------------------------------------------------------------- batch norm */

static cz_status cu_bn_infer(cz_backend *be, const cz_tensor *x, const cz_tensor *gamma, const cz_tensor *beta,
                             const cz_tensor *mean, const cz_tensor *var, float eps, cz_tensor *y) {
    cu_backend *b = BE(be);
    const char *op = "bn_infer";
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check(op, "x", x));
    CZ_TRY(cu_check_opt(op, "gamma", gamma));
    CZ_TRY(cu_check_opt(op, "beta", beta));
    CZ_TRY(cu_check(op, "mean", mean));
    CZ_TRY(cu_check(op, "var", var));
    CZ_TRY(cu_check(op, "y", y));
    CZ_TRY(cu_expect_same(op, "y", y, x));
    CZ_TRY(cu_expect_vec(op, "gamma", gamma, x->c));
    CZ_TRY(cu_expect_vec(op, "beta", beta, x->c));
    CZ_TRY(cu_expect_vec(op, "mean", mean, x->c));
    CZ_TRY(cu_expect_vec(op, "var", var, x->c));
    if (!(eps >= 0)) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: eps %g must be >= 0", op, (double)eps);
    CUK_CHECK(b, cuk_bn_infer(cu_dev(x), x->dtype, dev_opt(gamma), dt_opt(gamma), dev_opt(beta), dt_opt(beta),
                              cu_dev(mean), mean->dtype, cu_dev(var), var->dtype, eps, cu_dev(y), y->dtype,
                              cz_tensor_numel(x), x->c, b->stream));
    cu_touch(y);
    return CZ_OK;
}

static cz_status cu_bn_train_fwd(cz_backend *be, const cz_tensor *x, const cz_tensor *gamma, const cz_tensor *beta,
                                 float eps, float momentum, cz_tensor *running_mean, cz_tensor *running_var,
                                 cz_tensor *save_mean, cz_tensor *save_invstd, cz_tensor *y) {
    cu_backend *b = BE(be);
    const char *op = "bn_train_fwd";
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check(op, "x", x));
    CZ_TRY(cu_check_opt(op, "gamma", gamma));
    CZ_TRY(cu_check_opt(op, "beta", beta));
    CZ_TRY(cu_check_opt(op, "running_mean", running_mean));
    CZ_TRY(cu_check_opt(op, "running_var", running_var));
    CZ_TRY(cu_check_opt(op, "save_mean", save_mean));
    CZ_TRY(cu_check_opt(op, "save_invstd", save_invstd));
    CZ_TRY(cu_check(op, "y", y));
    CZ_TRY(cu_expect_same(op, "y", y, x));
    CZ_TRY(cu_expect_vec(op, "gamma", gamma, x->c));
    CZ_TRY(cu_expect_vec(op, "beta", beta, x->c));
    CZ_TRY(cu_expect_vec(op, "running_mean", running_mean, x->c));
    CZ_TRY(cu_expect_vec(op, "running_var", running_var, x->c));
    CZ_TRY(cu_expect_vec(op, "save_mean", save_mean, x->c));
    CZ_TRY(cu_expect_vec(op, "save_invstd", save_invstd, x->c));
    CZ_TRY(expect_f32(op, "save_mean", save_mean));
    CZ_TRY(expect_f32(op, "save_invstd", save_invstd));
    if (!(eps >= 0)) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: eps %g must be >= 0", op, (double)eps);
    if (!(momentum >= 0 && momentum <= 1))
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: momentum %g must be in [0, 1]", op, (double)momentum);
    size_t rows = (size_t)x->n * x->h * x->w;
    if (rows < 2)
        return cz_error_set(CZ_ERR_SHAPE, "cuda %s: x is [%d,%d,%d,%d], batch statistics need more than 1 value per "
                                          "channel",
                            op, x->n, x->c, x->h, x->w);
    red_bufs r;
    CZ_TRY(red_get(b, rows, x->c, &r));
    /* two passes like the oracle: the mean, then the squared deviations from it */
    CUK_CHECK(b, cuk_chan_reduce(CUK_RED_SUM, cu_dev(x), x->dtype, NULL, 0, rows, x->c, NULL, 0, NULL, NULL, r.part,
                                 r.a, NULL, b->stream));
    CUK_CHECK(b, cuk_chan_reduce(CUK_RED_SQDEV, cu_dev(x), x->dtype, NULL, 0, rows, x->c, r.a, 1.0 / (double)rows,
                                 NULL, NULL, r.part, r.b, NULL, b->stream));
    CUK_CHECK(b, cuk_bn_finalize(r.a, r.b, (double)rows, eps, momentum, save_mean ? cu_dev(save_mean) : NULL,
                                 save_invstd ? cu_dev(save_invstd) : NULL,
                                 running_mean ? cu_dev(running_mean) : NULL, dt_opt(running_mean),
                                 running_var ? cu_dev(running_var) : NULL, dt_opt(running_var), r.ab, x->c,
                                 b->stream));
    CUK_CHECK(b, cuk_bn_apply(cu_dev(x), x->dtype, r.ab, dev_opt(gamma), dt_opt(gamma), dev_opt(beta), dt_opt(beta),
                              cu_dev(y), y->dtype, cz_tensor_numel(x), x->c, b->stream));
    cu_touch(y);
    cu_touch(running_mean);
    cu_touch(running_var);
    cu_touch(save_mean);
    cu_touch(save_invstd);
    return CZ_OK;
}

static cz_status cu_bn_train_bwd(cz_backend *be, const cz_tensor *x, const cz_tensor *dy, const cz_tensor *gamma,
                                 const cz_tensor *save_mean, const cz_tensor *save_invstd, cz_tensor *dx,
                                 cz_tensor *dgamma, cz_tensor *dbeta, int accumulate) {
    cu_backend *b = BE(be);
    const char *op = "bn_train_bwd";
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check(op, "x", x));
    CZ_TRY(cu_check(op, "dy", dy));
    CZ_TRY(cu_check_opt(op, "gamma", gamma));
    CZ_TRY(cu_check(op, "save_mean", save_mean));
    CZ_TRY(cu_check(op, "save_invstd", save_invstd));
    CZ_TRY(cu_check_opt(op, "dx", dx));
    CZ_TRY(cu_check_opt(op, "dgamma", dgamma));
    CZ_TRY(cu_check_opt(op, "dbeta", dbeta));
    CZ_TRY(cu_expect_same(op, "dy", dy, x));
    if (dx) CZ_TRY(cu_expect_same(op, "dx", dx, x));
    CZ_TRY(cu_expect_vec(op, "gamma", gamma, x->c));
    CZ_TRY(cu_expect_vec(op, "save_mean", save_mean, x->c));
    CZ_TRY(cu_expect_vec(op, "save_invstd", save_invstd, x->c));
    CZ_TRY(cu_expect_vec(op, "dgamma", dgamma, x->c));
    CZ_TRY(cu_expect_vec(op, "dbeta", dbeta, x->c));
    CZ_TRY(expect_f32(op, "save_mean", save_mean));
    CZ_TRY(expect_f32(op, "save_invstd", save_invstd));
    size_t rows = (size_t)x->n * x->h * x->w;
    red_bufs r;
    CZ_TRY(red_get(b, rows, x->c, &r));
    const float *m = cu_dev(save_mean), *is = cu_dev(save_invstd);
    CUK_CHECK(b, cuk_chan_reduce(CUK_RED_BNBWD, cu_dev(dy), dy->dtype, cu_dev(x), x->dtype, rows, x->c, NULL, 0, m,
                                 is, r.part, r.a, r.b, b->stream));
    if (dx) {
        CUK_CHECK(b, cuk_bn_bwd_dx(cu_dev(x), x->dtype, cu_dev(dy), dy->dtype, dev_opt(gamma), dt_opt(gamma), m, is,
                                   r.a, r.b, (double)rows, cu_dev(dx), dx->dtype, cz_tensor_numel(x), x->c,
                                   b->stream));
        cu_touch(dx);
    }
    if (dgamma) {
        CUK_CHECK(b, cuk_store_vec(r.b, cu_dev(dgamma), dgamma->dtype, x->c, accumulate, b->stream));
        cu_touch(dgamma);
    }
    if (dbeta) {
        CUK_CHECK(b, cuk_store_vec(r.a, cu_dev(dbeta), dbeta->dtype, x->c, accumulate, b->stream));
        cu_touch(dbeta);
    }
    return CZ_OK;
}

/* --------------------------------------------------------------------------- element-wise */

static cz_status cu_act_fwd(cz_backend *be, cz_act act, float alpha, const cz_tensor *x, cz_tensor *y) {
    cu_backend *b = BE(be);
    const char *op = "act_fwd";
    CZ_TRY(cu_enter(b));
    CZ_TRY(check_act(op, act));
    CZ_TRY(cu_check_view(op, "x", x));
    CZ_TRY(cu_check_view(op, "y", y));
    CZ_TRY(cu_expect_same(op, "y", y, x));
    if (x->data == y->data && (x->dtype != y->dtype || x->c_off != y->c_off || cu_ch_stride(x) != cu_ch_stride(y)))
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: in place needs one dtype and the same channels", op);
    CUK_CHECK(b, cuk_bias_act(cu_dev(x), x->dtype, cu_ch_stride(x), cu_ch_off(x), NULL, 0, (int)act, alpha, cu_dev(y),
                              y->dtype, cu_ch_stride(y), cu_ch_off(y), (size_t)x->n * x->h * x->w, x->c, b->stream));
    cu_touch(y);
    return CZ_OK;
}

static cz_status cu_act_bwd(cz_backend *be, cz_act act, float alpha, const cz_tensor *y, const cz_tensor *dy,
                            cz_tensor *dx) {
    cu_backend *b = BE(be);
    const char *op = "act_bwd";
    CZ_TRY(cu_enter(b));
    CZ_TRY(check_act(op, act));
    CZ_TRY(cu_check(op, "y", y));
    CZ_TRY(cu_check(op, "dy", dy));
    CZ_TRY(cu_check(op, "dx", dx));
    CZ_TRY(cu_expect_same(op, "dy", dy, y));
    CZ_TRY(cu_expect_same(op, "dx", dx, y));
    CUK_CHECK(b, cuk_act_bwd((int)act, alpha, cu_dev(y), y->dtype, cu_dev(dy), dy->dtype, cu_dev(dx), dx->dtype,
                             cz_tensor_numel(y), b->stream));
    cu_touch(dx);
    return CZ_OK;
}

static cz_status cu_concat(cz_backend *be, const cz_tensor *a, const cz_tensor *bt, cz_tensor *y) {
    cu_backend *b = BE(be);
    const char *op = "concat";
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check(op, "a", a));
    CZ_TRY(cu_check(op, "b", bt));
    CZ_TRY(cu_check(op, "y", y));
    CZ_TRY(cu_expect_shape(op, "b", bt, a->n, bt->c, a->h, a->w));
    CZ_TRY(cu_expect_shape(op, "y", y, a->n, a->c + bt->c, a->h, a->w));
    CZ_TRY(no_alias(op, "a", a, "y", y));
    CZ_TRY(no_alias(op, "b", bt, "y", y));
    CUK_CHECK(b, cuk_concat(cu_dev(a), a->dtype, a->c, cu_dev(bt), bt->dtype, bt->c, cu_dev(y), y->dtype,
                            (size_t)a->n * a->h * a->w, b->stream));
    cu_touch(y);
    return CZ_OK;
}

static cz_status cu_concat_bwd(cz_backend *be, const cz_tensor *dy, cz_tensor *da, cz_tensor *db, int accumulate) {
    cu_backend *b = BE(be);
    const char *op = "concat_bwd";
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check(op, "dy", dy));
    CZ_TRY(cu_check(op, "da", da));
    CZ_TRY(cu_check(op, "db", db));
    CZ_TRY(cu_expect_shape(op, "da", da, dy->n, da->c, dy->h, dy->w));
    CZ_TRY(cu_expect_shape(op, "db", db, dy->n, dy->c - da->c, dy->h, dy->w));
    CZ_TRY(no_alias(op, "dy", dy, "da", da));
    CZ_TRY(no_alias(op, "dy", dy, "db", db));
    CUK_CHECK(b, cuk_concat_bwd(cu_dev(dy), dy->dtype, cu_dev(da), da->dtype, da->c, cu_dev(db), db->dtype, db->c,
                                (size_t)dy->n * dy->h * dy->w, accumulate, b->stream));
    cu_touch(da);
    cu_touch(db);
    return CZ_OK;
}

/* dropout_fwd, with the seed taken from variable seed_var plus `seed` when seed_var >= 0. */
static cz_status dropout_fwd(cu_backend *b, const char *op, float p, uint64_t seed, int seed_var, const cz_tensor *x,
                             cz_tensor *mask, cz_tensor *y) {
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check(op, "x", x));
    CZ_TRY(cu_check(op, "mask", mask));
    CZ_TRY(cu_check(op, "y", y));
    CZ_TRY(cu_expect_same(op, "mask", mask, x));
    CZ_TRY(cu_expect_same(op, "y", y, x));
    CZ_TRY(no_alias(op, "x", x, "mask", mask));
    CZ_TRY(no_alias(op, "y", y, "mask", mask));
    if (!(p >= 0.0f && p < 1.0f))
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: p = %g must be in [0, 1)", op, (double)p);
    const uint64_t *sv = NULL;
    if (seed_var >= 0) {
        CZ_TRY(var_at(b, op, seed_var, 1));
        sv = b->vars_dev + seed_var;
    }
    CUK_CHECK(b, cuk_dropout_fwd(p, seed, sv, cu_dev(x), x->dtype, cu_dev(mask), mask->dtype, cu_dev(y), y->dtype,
                                 x->n, x->c, x->h, x->w, b->stream));
    cu_touch(mask);
    cu_touch(y);
    return CZ_OK;
}

static cz_status cu_dropout_fwd(cz_backend *be, float p, uint64_t seed, const cz_tensor *x, cz_tensor *mask,
                                cz_tensor *y) {
    return dropout_fwd(BE(be), "dropout_fwd", p, seed, -1, x, mask, y);
}

static cz_status cu_dropout_fwd_var(cz_backend *be, float p, int seed_var, uint64_t seed_add, const cz_tensor *x,
                                    cz_tensor *mask, cz_tensor *y) {
    if (seed_var < 0)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda dropout_fwd_var: variable %d outside 0..%d", seed_var,
                            CZ_STEP_VARS - 1);
    return dropout_fwd(BE(be), "dropout_fwd_var", p, seed_add, seed_var, x, mask, y);
}

static cz_status cu_dropout_bwd(cz_backend *be, const cz_tensor *mask, const cz_tensor *dy, cz_tensor *dx) {
    cu_backend *b = BE(be);
    const char *op = "dropout_bwd";
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check(op, "mask", mask));
    CZ_TRY(cu_check(op, "dy", dy));
    CZ_TRY(cu_check(op, "dx", dx));
    CZ_TRY(cu_expect_same(op, "dy", dy, mask));
    CZ_TRY(cu_expect_same(op, "dx", dx, mask));
    CUK_CHECK(b, cuk_mul(cu_dev(dy), dy->dtype, cu_dev(mask), mask->dtype, cu_dev(dx), dx->dtype,
                         cz_tensor_numel(mask), b->stream));
    cu_touch(dx);
    return CZ_OK;
}

/* ------------------------------------------------------------------------------- losses */

/* Sum over all elements (mode 0 BCE, 1 L1), copied back to the host. */
static cz_status loss_sum(cu_backend *b, int mode, const cz_tensor *a, const cz_tensor *bt, float target,
                          double *out) {
    size_t n = cz_tensor_numel(a), part = cuk_sum_scratch(n);
    void *p;
    CZ_TRY(cu_recording_guard(b, "a loss (it reads its value back to the host)"));
    CZ_TRY(cu_scratch_get(b, &b->red, part + sizeof(double), &p));
    double *res = (double *)((char *)p + part);
    CUK_CHECK(b, cuk_loss_sum(mode, cu_dev(a), a->dtype, bt ? cu_dev(bt) : NULL, dt_opt(bt), target, n, p, res,
                              b->stream));
    double sum = 0;
    CU_CHECK(b, cudaMemcpyAsync(&sum, res, sizeof sum, cudaMemcpyDeviceToHost, b->stream));
    CU_SYNC(b);
    *out = sum / (double)n;
    return CZ_OK;
}

static cz_status cu_bce_logits_fwd(cz_backend *be, const cz_tensor *x, float target, double *loss) {
    cu_backend *b = BE(be);
    const char *op = "bce_logits_fwd";
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check(op, "x", x));
    if (!loss) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: loss is NULL", op);
    if (!isfinite(target)) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: target is not finite", op);
    return loss_sum(b, 0, x, NULL, target, loss);
}

static cz_status cu_l1_fwd(cz_backend *be, const cz_tensor *a, const cz_tensor *bt, double *loss) {
    cu_backend *b = BE(be);
    const char *op = "l1_fwd";
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check(op, "a", a));
    CZ_TRY(cu_check(op, "b", bt));
    CZ_TRY(cu_expect_same(op, "b", bt, a));
    if (!loss) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: loss is NULL", op);
    return loss_sum(b, 1, a, bt, 0.f, loss);
}

static cz_status cu_bce_logits_bwd(cz_backend *be, const cz_tensor *x, float target, float scale, cz_tensor *dx) {
    cu_backend *b = BE(be);
    const char *op = "bce_logits_bwd";
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check(op, "x", x));
    CZ_TRY(cu_check(op, "dx", dx));
    CZ_TRY(cu_expect_same(op, "dx", dx, x));
    if (!isfinite(target)) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: target is not finite", op);
    size_t n = cz_tensor_numel(x);
    CUK_CHECK(b, cuk_bce_bwd(cu_dev(x), x->dtype, target, (double)scale / (double)n, cu_dev(dx), dx->dtype, n,
                             b->stream));
    cu_touch(dx);
    return CZ_OK;
}

static cz_status cu_l1_bwd(cz_backend *be, const cz_tensor *a, const cz_tensor *bt, float scale, cz_tensor *da) {
    cu_backend *b = BE(be);
    const char *op = "l1_bwd";
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check(op, "a", a));
    CZ_TRY(cu_check(op, "b", bt));
    CZ_TRY(cu_check(op, "da", da));
    CZ_TRY(cu_expect_same(op, "b", bt, a));
    CZ_TRY(cu_expect_same(op, "da", da, a));
    size_t n = cz_tensor_numel(a);
    CUK_CHECK(b, cuk_l1_bwd(cu_dev(a), a->dtype, cu_dev(bt), bt->dtype, (double)scale / (double)n, cu_dev(da),
                            da->dtype, n, b->stream));
    cu_touch(da);
    return CZ_OK;
}

/* ---------------------------------------------------------------------------- optimizer */

static cz_status cu_adam_step(cz_backend *be, cz_tensor *param, const cz_tensor *grad, cz_tensor *m, cz_tensor *v,
                              float lr, float beta1, float beta2, float eps, int t) {
    cu_backend *b = BE(be);
    const char *op = "adam_step";
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check(op, "param", param));
    CZ_TRY(cu_check(op, "grad", grad));
    CZ_TRY(cu_check(op, "m", m));
    CZ_TRY(cu_check(op, "v", v));
    CZ_TRY(cu_expect_same(op, "grad", grad, param));
    CZ_TRY(cu_expect_same(op, "m", m, param));
    CZ_TRY(cu_expect_same(op, "v", v, param));
    CZ_TRY(expect_f32(op, "param", param));
    CZ_TRY(expect_f32(op, "m", m));
    CZ_TRY(expect_f32(op, "v", v));
    if (t < 1) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: step %d must be >= 1", op, t);
    double b1 = beta1, b2 = beta2;
    double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
    CUK_CHECK(b, cuk_adam(cu_dev(param), cu_dev(grad), grad->dtype, cu_dev(m), cu_dev(v), cz_tensor_numel(param), (double)lr, b1,
                          b2, (double)eps, bc1, bc2, b->stream));
    cu_touch(param);
    cu_touch(m);
    cu_touch(v);
    return CZ_OK;
}

/* ---- queued losses and the gated multi-tensor Adam (backend.h loss_queue) ---- */

/* The loss slots and the step variables (one allocation), zeroed on first use. */
static cz_status loss_slots(cu_backend *b, const char *op) {
    if (b->loss_dev) return CZ_OK;
    CZ_TRY(cu_recording_guard(b, op));
    const size_t bytes = CZ_LOSS_SLOTS * sizeof(double) + CZ_STEP_VARS * sizeof(uint64_t);
    void *p = NULL;
    CU_CHECK(b, cudaMalloc(&p, bytes));
    b->loss_dev = p;
    b->vars_dev = (uint64_t *)(b->loss_dev + CZ_LOSS_SLOTS);
    CU_CHECK(b, cudaMemsetAsync(p, 0, bytes, b->stream));
    return CZ_OK;
}

/* Variables [var, var + n) exist (made on first use; not while recording). */
static cz_status var_at(cu_backend *b, const char *op, int var, int n) {
    if (var < 0 || n < 1 || var > CZ_STEP_VARS - n)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: variables %d..%d outside 0..%d", op, var, var + n - 1,
                            CZ_STEP_VARS - 1);
    return loss_slots(b, op);
}

static cz_status cu_loss_queue(cz_backend *be, int slot, const cz_tensor *a, const cz_tensor *bt, float target) {
    cu_backend *b = BE(be);
    const char *op = "loss_queue";
    CZ_TRY(cu_enter(b));
    if (slot < 0 || slot >= CZ_LOSS_SLOTS)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: slot %d outside 0..%d", op, slot, CZ_LOSS_SLOTS - 1);
    CZ_TRY(cu_check(op, "a", a));
    if (bt) {
        CZ_TRY(cu_check(op, "b", bt));
        CZ_TRY(cu_expect_same(op, "b", bt, a));
    } else if (!isfinite(target)) {
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: target is not finite", op);
    }
    CZ_TRY(loss_slots(b, op));
    size_t n = cz_tensor_numel(a), part = cuk_sum_scratch(n);
    void *p;
    CZ_TRY(cu_scratch_get(b, &b->red, part, &p));
    CUK_CHECK(b, cuk_loss_sum(bt ? 1 : 0, cu_dev(a), a->dtype, bt ? cu_dev(bt) : NULL, dt_opt(bt), target, n, p,
                              b->loss_dev + slot, b->stream));
    b->loss_count[slot] = (double)n;
    if (b->recording) b->rec_loss_slots |= 1u << slot; /* a replay sets the count again */
    return CZ_OK;
}

static cz_status cu_loss_read(cz_backend *be, double *out, int n) {
    cu_backend *b = BE(be);
    const char *op = "loss_read";
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_recording_guard(b, op));
    if (!out || n < 0 || n > CZ_LOSS_SLOTS)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: %d slots (0..%d) into %p", op, n, CZ_LOSS_SLOTS, (void *)out);
    CZ_TRY(loss_slots(b, op));
    double sums[CZ_LOSS_SLOTS];
    CU_CHECK(b, cudaMemcpyAsync(sums, b->loss_dev, sizeof sums, cudaMemcpyDeviceToHost, b->stream));
    CU_SYNC(b);
    for (int i = 0; i < n; i++) out[i] = b->loss_count[i] > 0 ? sums[i] / b->loss_count[i] : 0.0;
    return CZ_OK;
}

/* adam_multi and adam_multi_var: lr, bc1 and bc2 from the arguments, or read when the kernel
 * runs from variables [var, var + 3) when var >= 0. */
static cz_status adam_multi(cu_backend *b, const char *op, const cz_adam_item *items, int n, double lr, float beta1,
                            float beta2, float eps, double bc1, double bc2, int var, unsigned gate) {
    CZ_TRY(cu_enter(b));
    if (n < 0 || (n > 0 && !items)) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: %d items", op, n);
    if (CZ_LOSS_SLOTS < 32 && (gate >> CZ_LOSS_SLOTS))
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: gate 0x%x names slots past %d", op, gate, CZ_LOSS_SLOTS - 1);
    for (int i = 0; i < n; i++) {
        const cz_adam_item *it = &items[i];
        CZ_TRY(cu_check(op, "param", it->param));
        CZ_TRY(cu_check(op, "grad", it->grad));
        CZ_TRY(cu_check(op, "m", it->m));
        CZ_TRY(cu_check(op, "v", it->v));
        CZ_TRY(cu_expect_same(op, "grad", it->grad, it->param));
        CZ_TRY(cu_expect_same(op, "m", it->m, it->param));
        CZ_TRY(cu_expect_same(op, "v", it->v, it->param));
        CZ_TRY(expect_f32(op, "param", it->param));
        CZ_TRY(expect_f32(op, "m", it->m));
        CZ_TRY(expect_f32(op, "v", it->v));
        /* the blocks of one launch run in any order: a tensor updated twice would race */
        for (int j = 0; j < i; j++)
            if (items[j].param->data == it->param->data || items[j].m->data == it->m->data ||
                items[j].v->data == it->v->data)
                return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: items %d and %d update the same tensor", op, j, i);
    }
    if (var >= 0)
        CZ_TRY(var_at(b, op, var, 3));
    else
        CZ_TRY(loss_slots(b, op));
    const double *hv = var >= 0 ? (const double *)(b->vars_dev + var) : NULL;
    for (int i0 = 0; i0 < n; i0 += CUK_ADAM_MAX) {
        cuk_adam_list l;
        memset(&l, 0, sizeof l);
        l.n = n - i0 < CUK_ADAM_MAX ? n - i0 : CUK_ADAM_MAX;
        for (int j = 0; j < l.n; j++) {
            const cz_adam_item *it = &items[i0 + j];
            l.param[j] = cu_dev(it->param);
            l.grad[j] = cu_dev(it->grad);
            l.gdt[j] = (int)it->grad->dtype;
            l.m[j] = cu_dev(it->m);
            l.v[j] = cu_dev(it->v);
            l.count[j] = cz_tensor_numel(it->param);
        }
        CUK_CHECK(b, cuk_adam_multi(&l, lr, (double)beta1, (double)beta2, (double)eps, bc1, bc2, hv, b->loss_dev, gate,
                                    b->stream));
    }
    for (int i = 0; i < n; i++) {
        cu_touch(items[i].param);
        cu_touch(items[i].m);
        cu_touch(items[i].v);
    }
    return CZ_OK;
}

static cz_status cu_adam_multi(cz_backend *be, const cz_adam_item *items, int n, float lr, float beta1, float beta2,
                               float eps, int t, unsigned gate) {
    if (t < 1) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda adam_multi: step %d must be >= 1", t);
    double b1 = beta1, b2 = beta2;
    return adam_multi(BE(be), "adam_multi", items, n, (double)lr, beta1, beta2, eps, 1.0 - pow(b1, t),
                      1.0 - pow(b2, t), -1, gate);
}

static cz_status cu_adam_multi_var(cz_backend *be, const cz_adam_item *items, int n, float beta1, float beta2,
                                   float eps, int var, unsigned gate) {
    if (var < 0)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda adam_multi_var: variable %d outside 0..%d", var,
                            CZ_STEP_VARS - 1);
    return adam_multi(BE(be), "adam_multi_var", items, n, 0.0, beta1, beta2, eps, 0.0, 0.0, var, gate);
}

static cz_status cu_var_set(cz_backend *be, int first, int n, const uint64_t *bits) {
    cu_backend *b = BE(be);
    const char *op = "var_set";
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_recording_guard(b, op));
    if (!bits) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: bits is NULL", op);
    CZ_TRY(var_at(b, op, first, n));
    _Static_assert(CZ_STEP_VARS <= CUK_VARS_MAX, "one launch sets every variable");
    cuk_vars v = {.first = first, .n = n};
    memcpy(v.bits, bits, (size_t)n * sizeof *bits);
    CUK_CHECK(b, cuk_vars_set(b->vars_dev, &v, b->stream));
    return CZ_OK;
}

void cu_fill_ops(cz_backend_ops *ops) {
    memset(ops, 0, sizeof *ops);
    cu_fill_mem_ops(ops);
    ops->loss_queue = cu_loss_queue;
    ops->loss_read = cu_loss_read;
    ops->adam_multi = cu_adam_multi;
    ops->var_set = cu_var_set;
    ops->dropout_fwd_var = cu_dropout_fwd_var;
    ops->adam_multi_var = cu_adam_multi_var;
    ops->conv2d = cu_conv2d;
    ops->deconv2d = cu_deconv2d;
    ops->bn_infer = cu_bn_infer;
    ops->bn_train_fwd = cu_bn_train_fwd;
    ops->act_fwd = cu_act_fwd;
    ops->concat = cu_concat;
    ops->dropout_fwd = cu_dropout_fwd;
    ops->bce_logits_fwd = cu_bce_logits_fwd;
    ops->l1_fwd = cu_l1_fwd;
    ops->conv2d_bwd_data = cu_conv2d_bwd_data;
    ops->conv2d_bwd_weights = cu_conv2d_bwd_weights;
    ops->deconv2d_bwd_data = cu_deconv2d_bwd_data;
    ops->deconv2d_bwd_weights = cu_deconv2d_bwd_weights;
    ops->bn_train_bwd = cu_bn_train_bwd;
    ops->act_bwd = cu_act_bwd;
    ops->concat_bwd = cu_concat_bwd;
    ops->dropout_bwd = cu_dropout_bwd;
    ops->bce_logits_bwd = cu_bce_logits_bwd;
    ops->l1_bwd = cu_l1_bwd;
    ops->adam_step = cu_adam_step;
}
