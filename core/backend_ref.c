/* backend_ref.c: the `ref` backend, plain C and deliberately simple: the oracle that every
 * other backend is tested against (tests/unit/test_ops.c), and a CPU fallback of last resort.
 *
 * Storage: host memory from calloc, plain NCHW (layout 0), batch outermost, so a batch view is
 * a prefix of the buffer. Elements may be CZ_F32, CZ_BF16 or CZ_F16; every op loads elements
 * into double, does all arithmetic and accumulation in double, and rounds once on store
 * (double -> float -> bf16/f16, round to nearest even at each step). Tensors of one op may mix
 * dtypes; the ref backend converts each on load/store. Exceptions, as the contract demands:
 * bn save_mean/save_invstd and the Adam param/m/v tensors must be CZ_F32.
 *
 * Convolutions: the three spatial kernels below (gather, scatter, weight-gradient) all work on
 * a pair of tensors "S" (the strided, usually smaller side) and "B" (the other side) related by
 * B position = S position * stride - pad + kernel offset, with weights indexed W[cs][cb][kh][kw]:
 *   conv2d            = gather  B=x  -> S=y   (w is (out,in,k,k) = (S channels, B channels))
 *   conv2d_bwd_data   = scatter S=dy -> B=dx
 *   conv2d_bwd_weights= wgrad   S=dy, B=x
 *   deconv2d          = scatter S=x  -> B=y   (w is (in,out,k,k) = (S channels, B channels))
 *   deconv2d_bwd_data = gather  B=dy -> S=dx
 *   deconv2d_bwd_weights = wgrad S=x, B=dy
 * so the transposed convolution is literally the adjoint of the convolution. The innermost
 * loops run over a contiguous row of the S side.
 *
 * Dropout RNG (every backend must reproduce this bit for bit):
 *   element index i = the logical NCHW index ((n*C + c)*H + h)*W + w, 0-based, whatever the
 *   physical layout;
 *   z = seed + (i + 1) * 0x9E3779B97F4A7C15            (all arithmetic mod 2^64)
 *   z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
 *   z = (z ^ (z >> 27)) * 0x94D049BB133111EB
 *   z =  z ^ (z >> 31)                                  (= the (i+1)-th SplitMix64 output)
 *   u = (float)(z >> 40) * 2^-24                        (24 bits, exact in fp32, in [0, 1))
 *   keep = (u >= p) compared in fp32; scale = 1.0f / (1.0f - p) computed in fp32;
 *   mask = keep ? scale : 0 (rounded to mask's dtype); y = x * scale where kept, else 0.
 *
 * Backward conventions: the conv_params' act is ignored by backward ops (apply act_bwd first);
 * `accumulate` applies to parameter gradients (dw, db, dgamma, dbeta) and to concat_bwd's
 * outputs; bn_train_bwd always overwrites dx. NULL db (bias grad), dgamma, dbeta or bn dx are
 * skipped. gamma/beta may be NULL in the BN ops (meaning 1 and 0).
 *
 * Channel views (backend.h): not implemented here, on purpose: view_ok is NULL and every op
 * (and tensor_write/read/zero) refuses a tensor for which cz_tensor_is_view() holds with
 * CZ_ERR_UNSUPPORTED (check_tensor), so a view can never be misread as dense NCHW; freeing
 * a view is a no-op.
 *
 * Threading: single-threaded; an instance has no mutable state, so it is safe to use from one
 * thread at a time as the contract requires. Scratch buffers are malloc'd per call. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

typedef struct ref_backend {
    cz_backend base;
} ref_backend;

/* ------------------------------------------------------------------------------------------ */
/* element access                                                                              */

static inline double ld(const cz_tensor *t, size_t i) {
    switch (t->dtype) {
    case CZ_F32: return ((const float *)t->data)[i];
    case CZ_BF16: return cz_bf16_to_f32(((const uint16_t *)t->data)[i]);
    case CZ_F16: return cz_f16_to_f32(((const uint16_t *)t->data)[i]);
    }
    return NAN;
}

static inline void st(cz_tensor *t, size_t i, double v) {
    float f = (float)v;
    switch (t->dtype) {
    case CZ_F32: ((float *)t->data)[i] = f; break;
    case CZ_BF16: ((uint16_t *)t->data)[i] = cz_f32_to_bf16(f); break;
    case CZ_F16: ((uint16_t *)t->data)[i] = cz_f32_to_f16(f); break;
    }
}

static void ld_range(const cz_tensor *t, size_t off, size_t count, double *dst) {
    for (size_t i = 0; i < count; i++) dst[i] = ld(t, off + i);
}

/* ------------------------------------------------------------------------------------------ */
/* validation                                                                                  */

typedef struct {
    char s[64];
} shape_str;

static shape_str fmt_shape(int n, int c, int h, int w) {
    shape_str r;
    snprintf(r.s, sizeof r.s, "[%d,%d,%d,%d]", n, c, h, w);
    return r;
}

static shape_str tshape(const cz_tensor *t) { return fmt_shape(t->n, t->c, t->h, t->w); }

static cz_status check_tensor(const char *op, const char *name, const cz_tensor *t) {
    if (!t) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: %s is NULL", op, name);
    if (!t->data) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: %s is not allocated", op, name);
    if (t->dtype != CZ_F32 && t->dtype != CZ_BF16 && t->dtype != CZ_F16)
        return cz_error_set(CZ_ERR_UNSUPPORTED, "%s: %s has unknown dtype %d", op, name, (int)t->dtype);
    if (t->layout != 0)
        return cz_error_set(CZ_ERR_UNSUPPORTED, "%s: %s has layout %d, the ref backend only uses plain NCHW (0)",
                            op, name, t->layout);
    if (t->n < 1 || t->c < 1 || t->h < 1 || t->w < 1)
        return cz_error_set(CZ_ERR_SHAPE, "%s: %s is %s, every dim must be positive", op, name, tshape(t).s);
    if (t->n > t->cap_n)
        return cz_error_set(CZ_ERR_SHAPE, "%s: %s is a batch view of %d but was allocated for %d", op, name,
                            t->n, t->cap_n);
    /* channel views: the oracle reads every tensor as dense NCHW, so a view (whose channels
     * sit inside a wider buffer) would be misread; view_ok is NULL and any view is refused */
    if (cz_tensor_is_view(t))
        return cz_error_set(CZ_ERR_UNSUPPORTED,
                            "%s: %s is a channel view (channels %d..%d of %d); the ref backend does not support views",
                            op, name, t->c_off, t->c_off + t->c - 1, t->c_store);
    return CZ_OK;
}

static cz_status check_opt(const char *op, const char *name, const cz_tensor *t) {
    return t ? check_tensor(op, name, t) : CZ_OK;
}

static cz_status expect_shape(const char *op, const char *name, const cz_tensor *t, int n, int c, int h,
                              int w) {
    if (t->n != n || t->c != c || t->h != h || t->w != w)
        return cz_error_set(CZ_ERR_SHAPE, "%s: %s is %s, expected %s", op, name, tshape(t).s,
                            fmt_shape(n, c, h, w).s);
    return CZ_OK;
}

static cz_status expect_same(const char *op, const char *name, const cz_tensor *t, const cz_tensor *like) {
    return expect_shape(op, name, t, like->n, like->c, like->h, like->w);
}

static cz_status expect_vec(const char *op, const char *name, const cz_tensor *t, int c) {
    return t ? expect_shape(op, name, t, 1, c, 1, 1) : CZ_OK;
}

static cz_status expect_f32(const char *op, const char *name, const cz_tensor *t) {
    if (t && t->dtype != CZ_F32)
        return cz_error_set(CZ_ERR_UNSUPPORTED, "%s: %s must be fp32, got %s", op, name, cz_dtype_name(t->dtype));
    return CZ_OK;
}

static cz_status no_alias(const char *op, const char *an, const cz_tensor *a, const char *bn, const cz_tensor *b) {
    if (a && b && a->data == b->data)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: %s and %s share storage (only act_fwd may run in place)", op,
                            an, bn);
    return CZ_OK;
}

static cz_status check_act(const char *op, cz_act act) {
    if (act != CZ_ACT_NONE && act != CZ_ACT_RELU && act != CZ_ACT_LRELU && act != CZ_ACT_TANH)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: unknown activation %d", op, (int)act);
    return CZ_OK;
}

static cz_status check_params(const char *op, const cz_conv_params *p) {
    if (!p) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: conv params are NULL", op);
    if (p->stride < 1 || p->pad < 0)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: stride %d / pad %d out of range", op, p->stride, p->pad);
    return check_act(op, p->act);
}

static double *scratch(const char *op, size_t count, cz_status *s) {
    double *p = malloc((count ? count : 1) * sizeof *p);
    if (!p) *s = cz_error_set(CZ_ERR_NOMEM, "%s: cannot allocate %zu bytes of scratch", op, count * sizeof *p);
    return p;
}

static inline double act_apply(cz_act act, double alpha, double v) {
    switch (act) {
    case CZ_ACT_RELU: return v > 0 ? v : 0.0;
    case CZ_ACT_LRELU: return v > 0 ? v : alpha * v;
    case CZ_ACT_TANH: return tanh(v);
    case CZ_ACT_NONE: break;
    }
    return v;
}

/* ------------------------------------------------------------------------------------------ */
/* spatial kernels (one image at a time)                                                       */

typedef struct geo {
    int cs, cb;         /* channels of the S side and of the B side */
    int hs, ws, hb, wb; /* spatial sizes */
    int k, s, p;        /* kernel, stride, pad */
} geo;

/* Range [*lo, *hi) of S positions o with o*s - p + off inside [0, lb). */
static void s_range(int ns, int lb, int s, int p, int off, int *lo, int *hi) {
    int num = p - off;
    int a = num <= 0 ? 0 : (num + s - 1) / s;
    int top = lb - 1 + p - off;
    int b = top < 0 ? 0 : top / s + 1;
    if (b > ns) b = ns;
    if (a > b) a = b;
    *lo = a;
    *hi = b;
}

/* S[cs] = sum over cb, kh, kw of W[cs][cb][kh][kw] * B[cb][shifted]; S is overwritten. */
static void k_gather(const geo *g, const double *B, const double *W, double *S) {
    size_t ps = (size_t)g->hs * g->ws, pb = (size_t)g->hb * g->wb, kk = (size_t)g->k * g->k;
    memset(S, 0, (size_t)g->cs * ps * sizeof *S);
    for (int cs = 0; cs < g->cs; cs++) {
        double *so = S + cs * ps;
        for (int cb = 0; cb < g->cb; cb++) {
            const double *bi = B + cb * pb;
            const double *wr = W + ((size_t)cs * g->cb + cb) * kk;
            for (int kh = 0; kh < g->k; kh++) {
                int y0, y1;
                s_range(g->hs, g->hb, g->s, g->p, kh, &y0, &y1);
                for (int kw = 0; kw < g->k; kw++) {
                    int x0, x1;
                    s_range(g->ws, g->wb, g->s, g->p, kw, &x0, &x1);
                    double wv = wr[kh * g->k + kw];
                    for (int y = y0; y < y1; y++) {
                        const double *brow = bi + (size_t)(y * g->s - g->p + kh) * g->wb;
                        double *srow = so + (size_t)y * g->ws;
                        int boff = kw - g->p;
                        for (int x = x0; x < x1; x++) srow[x] += wv * brow[x * g->s + boff];
                    }
                }
            }
        }
    }
}

/* B[cb] = sum over cs, kh, kw of W[cs][cb][kh][kw] * S[cs] scattered; B is overwritten. */
static void k_scatter(const geo *g, const double *S, const double *W, double *B) {
    size_t ps = (size_t)g->hs * g->ws, pb = (size_t)g->hb * g->wb, kk = (size_t)g->k * g->k;
    memset(B, 0, (size_t)g->cb * pb * sizeof *B);
    for (int cb = 0; cb < g->cb; cb++) {
        double *bo = B + cb * pb;
        for (int cs = 0; cs < g->cs; cs++) {
            const double *si = S + cs * ps;
            const double *wr = W + ((size_t)cs * g->cb + cb) * kk;
            for (int kh = 0; kh < g->k; kh++) {
                int y0, y1;
                s_range(g->hs, g->hb, g->s, g->p, kh, &y0, &y1);
                for (int kw = 0; kw < g->k; kw++) {
                    int x0, x1;
                    s_range(g->ws, g->wb, g->s, g->p, kw, &x0, &x1);
                    double wv = wr[kh * g->k + kw];
                    for (int y = y0; y < y1; y++) {
                        double *brow = bo + (size_t)(y * g->s - g->p + kh) * g->wb;
                        const double *srow = si + (size_t)y * g->ws;
                        int boff = kw - g->p;
                        for (int x = x0; x < x1; x++) brow[x * g->s + boff] += wv * srow[x];
                    }
                }
            }
        }
    }
}

/* dW[cs][cb][kh][kw] += sum over positions of S[cs][pos] * B[cb][shifted pos]. */
static void k_wgrad(const geo *g, const double *S, const double *B, double *dW) {
    size_t ps = (size_t)g->hs * g->ws, pb = (size_t)g->hb * g->wb, kk = (size_t)g->k * g->k;
    for (int cs = 0; cs < g->cs; cs++) {
        const double *si = S + cs * ps;
        for (int cb = 0; cb < g->cb; cb++) {
            const double *bi = B + cb * pb;
            double *dwr = dW + ((size_t)cs * g->cb + cb) * kk;
            for (int kh = 0; kh < g->k; kh++) {
                int y0, y1;
                s_range(g->hs, g->hb, g->s, g->p, kh, &y0, &y1);
                for (int kw = 0; kw < g->k; kw++) {
                    int x0, x1;
                    s_range(g->ws, g->wb, g->s, g->p, kw, &x0, &x1);
                    double acc = 0;
                    for (int y = y0; y < y1; y++) {
                        const double *brow = bi + (size_t)(y * g->s - g->p + kh) * g->wb;
                        const double *srow = si + (size_t)y * g->ws;
                        int boff = kw - g->p;
                        for (int x = x0; x < x1; x++) acc += srow[x] * brow[x * g->s + boff];
                    }
                    dwr[kh * g->k + kw] += acc;
                }
            }
        }
    }
}

/* Stores channel planes of one image with optional bias and activation. */
static void store_planes(cz_tensor *out, size_t img, const double *acc, const double *bias, cz_act act,
                         double alpha) {
    size_t plane = (size_t)out->h * out->w, base = img * (size_t)out->c * plane;
    for (int c = 0; c < out->c; c++) {
        double bv = bias ? bias[c] : 0.0;
        for (size_t i = 0; i < plane; i++) {
            size_t j = (size_t)c * plane + i;
            st(out, base + j, act_apply(act, alpha, acc[j] + bv));
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* convolutions                                                                                */

static cz_status conv_geom(const char *op, int in_h, int in_w, int k, const cz_conv_params *p, int *oh, int *ow) {
    if (in_h + 2 * p->pad < k || in_w + 2 * p->pad < k)
        return cz_error_set(CZ_ERR_SHAPE, "%s: %dx%d kernel does not fit the padded %dx%d input", op, k, k, in_h,
                            in_w);
    *oh = (in_h + 2 * p->pad - k) / p->stride + 1;
    *ow = (in_w + 2 * p->pad - k) / p->stride + 1;
    return CZ_OK;
}

static cz_status deconv_geom(const char *op, int in_h, int in_w, int k, const cz_conv_params *p, int *oh,
                             int *ow) {
    *oh = (in_h - 1) * p->stride - 2 * p->pad + k;
    *ow = (in_w - 1) * p->stride - 2 * p->pad + k;
    if (*oh < 1 || *ow < 1)
        return cz_error_set(CZ_ERR_SHAPE, "%s: output %dx%d is empty (input %dx%d, k %d, stride %d, pad %d)", op,
                            *oh, *ow, in_h, in_w, k, p->stride, p->pad);
    return CZ_OK;
}

static cz_status check_weight(const char *op, const char *name, const cz_tensor *w) {
    if (w->h != w->w)
        return cz_error_set(CZ_ERR_SHAPE, "%s: %s is %s, the kernel must be square", op, name, tshape(w).s);
    return CZ_OK;
}

/* Forward of conv (gather) or deconv (scatter) with bias and activation. */
static cz_status conv_like_fwd(const char *op, int transposed, const cz_tensor *x, const cz_tensor *w,
                               const cz_tensor *b, const cz_conv_params *p, cz_tensor *y) {
    CZ_TRY(check_tensor(op, "x", x));
    CZ_TRY(check_tensor(op, "w", w));
    CZ_TRY(check_opt(op, "b", b));
    CZ_TRY(check_tensor(op, "y", y));
    CZ_TRY(check_params(op, p));
    CZ_TRY(check_weight(op, "w", w));
    CZ_TRY(no_alias(op, "x", x, "y", y));
    int k = w->h, in_c = transposed ? w->n : w->c, out_c = transposed ? w->c : w->n, oh = 0, ow = 0;
    if (x->c != in_c)
        return cz_error_set(CZ_ERR_SHAPE, "%s: x is %s but w %s expects %d input channels", op, tshape(x).s,
                            tshape(w).s, in_c);
    if (transposed)
        CZ_TRY(deconv_geom(op, x->h, x->w, k, p, &oh, &ow));
    else
        CZ_TRY(conv_geom(op, x->h, x->w, k, p, &oh, &ow));
    CZ_TRY(expect_shape(op, "y", y, x->n, out_c, oh, ow));
    CZ_TRY(expect_vec(op, "b", b, out_c));

    geo g = {.k = k, .s = p->stride, .p = p->pad};
    if (transposed) {
        g.cs = x->c, g.hs = x->h, g.ws = x->w, g.cb = y->c, g.hb = y->h, g.wb = y->w;
    } else {
        g.cs = y->c, g.hs = y->h, g.ws = y->w, g.cb = x->c, g.hb = x->h, g.wb = x->w;
    }
    size_t nw = cz_tensor_numel(w), nin = (size_t)x->c * x->h * x->w, nout = (size_t)y->c * y->h * y->w;
    cz_status s = CZ_OK;
    double *buf = scratch(op, nw + nin + nout + (size_t)out_c, &s);
    if (!buf) return s;
    double *W = buf, *in = W + nw, *out = in + nin, *bias = out + nout;
    ld_range(w, 0, nw, W);
    if (b) ld_range(b, 0, (size_t)out_c, bias);
    for (int n = 0; n < x->n; n++) {
        ld_range(x, (size_t)n * nin, nin, in);
        if (transposed)
            k_scatter(&g, in, W, out);
        else
            k_gather(&g, in, W, out);
        store_planes(y, (size_t)n, out, b ? bias : NULL, p->act, (double)p->alpha);
    }
    free(buf);
    return CZ_OK;
}

static cz_status ref_conv2d(cz_backend *be, const cz_tensor *x, const cz_tensor *w, const cz_tensor *b,
                            const cz_conv_params *p, cz_tensor *y) {
    (void)be;
    return conv_like_fwd("conv2d", 0, x, w, b, p, y);
}

static cz_status ref_deconv2d(cz_backend *be, const cz_tensor *x, const cz_tensor *w, const cz_tensor *b,
                              const cz_conv_params *p, cz_tensor *y) {
    (void)be;
    return conv_like_fwd("deconv2d", 1, x, w, b, p, y);
}

/* Backward data: conv -> scatter dy into dx; deconv -> gather dy into dx. */
static cz_status conv_like_bwd_data(const char *op, int transposed, const cz_tensor *dy, const cz_tensor *w,
                                    const cz_conv_params *p, cz_tensor *dx) {
    CZ_TRY(check_tensor(op, "dy", dy));
    CZ_TRY(check_tensor(op, "w", w));
    CZ_TRY(check_tensor(op, "dx", dx));
    CZ_TRY(check_params(op, p));
    CZ_TRY(check_weight(op, "w", w));
    CZ_TRY(no_alias(op, "dy", dy, "dx", dx));
    int k = w->h, in_c = transposed ? w->n : w->c, out_c = transposed ? w->c : w->n, oh = 0, ow = 0;
    if (dx->c != in_c)
        return cz_error_set(CZ_ERR_SHAPE, "%s: dx is %s but w %s has %d input channels", op, tshape(dx).s,
                            tshape(w).s, in_c);
    if (transposed)
        CZ_TRY(deconv_geom(op, dx->h, dx->w, k, p, &oh, &ow));
    else
        CZ_TRY(conv_geom(op, dx->h, dx->w, k, p, &oh, &ow));
    CZ_TRY(expect_shape(op, "dy", dy, dx->n, out_c, oh, ow));

    geo g = {.k = k, .s = p->stride, .p = p->pad};
    if (transposed) {
        g.cs = dx->c, g.hs = dx->h, g.ws = dx->w, g.cb = dy->c, g.hb = dy->h, g.wb = dy->w;
    } else {
        g.cs = dy->c, g.hs = dy->h, g.ws = dy->w, g.cb = dx->c, g.hb = dx->h, g.wb = dx->w;
    }
    size_t nw = cz_tensor_numel(w), ndy = (size_t)dy->c * dy->h * dy->w, ndx = (size_t)dx->c * dx->h * dx->w;
    cz_status s = CZ_OK;
    double *buf = scratch(op, nw + ndy + ndx, &s);
    if (!buf) return s;
    double *W = buf, *gy = W + nw, *gx = gy + ndy;
    ld_range(w, 0, nw, W);
    for (int n = 0; n < dy->n; n++) {
        ld_range(dy, (size_t)n * ndy, ndy, gy);
        if (transposed)
            k_gather(&g, gy, W, gx);
        else
            k_scatter(&g, gy, W, gx);
        store_planes(dx, (size_t)n, gx, NULL, CZ_ACT_NONE, 0.0);
    }
    free(buf);
    return CZ_OK;
}

static cz_status ref_conv2d_bwd_data(cz_backend *be, const cz_tensor *dy, const cz_tensor *w,
                                     const cz_conv_params *p, cz_tensor *dx) {
    (void)be;
    return conv_like_bwd_data("conv2d_bwd_data", 0, dy, w, p, dx);
}

static cz_status ref_deconv2d_bwd_data(cz_backend *be, const cz_tensor *dy, const cz_tensor *w,
                                       const cz_conv_params *p, cz_tensor *dx) {
    (void)be;
    return conv_like_bwd_data("deconv2d_bwd_data", 1, dy, w, p, dx);
}

/* Adds (or stores) an accumulated double array into tensor t. */
static void store_grad(cz_tensor *t, const double *g, size_t count, int accumulate) {
    for (size_t i = 0; i < count; i++) st(t, i, accumulate ? ld(t, i) + g[i] : g[i]);
}

static cz_status conv_like_bwd_weights(const char *op, int transposed, const cz_tensor *x, const cz_tensor *dy,
                                       const cz_conv_params *p, cz_tensor *dw, cz_tensor *db,
                                       int accumulate) {
    CZ_TRY(check_tensor(op, "x", x));
    CZ_TRY(check_tensor(op, "dy", dy));
    CZ_TRY(check_tensor(op, "dw", dw));
    CZ_TRY(check_opt(op, "db", db));
    CZ_TRY(check_params(op, p));
    CZ_TRY(check_weight(op, "dw", dw));
    int k = dw->h, in_c = transposed ? dw->n : dw->c, out_c = transposed ? dw->c : dw->n, oh = 0, ow = 0;
    if (x->c != in_c)
        return cz_error_set(CZ_ERR_SHAPE, "%s: x is %s but dw %s has %d input channels", op, tshape(x).s,
                            tshape(dw).s, in_c);
    if (transposed)
        CZ_TRY(deconv_geom(op, x->h, x->w, k, p, &oh, &ow));
    else
        CZ_TRY(conv_geom(op, x->h, x->w, k, p, &oh, &ow));
    CZ_TRY(expect_shape(op, "dy", dy, x->n, out_c, oh, ow));
    CZ_TRY(expect_vec(op, "db", db, out_c));

    geo g = {.k = k, .s = p->stride, .p = p->pad};
    const cz_tensor *ts, *tb;
    if (transposed) {
        ts = x, tb = dy;
    } else {
        ts = dy, tb = x;
    }
    g.cs = ts->c, g.hs = ts->h, g.ws = ts->w, g.cb = tb->c, g.hb = tb->h, g.wb = tb->w;
    size_t nw = cz_tensor_numel(dw), ns = (size_t)ts->c * ts->h * ts->w, nb = (size_t)tb->c * tb->h * tb->w;
    size_t plane = (size_t)dy->h * dy->w;
    cz_status s = CZ_OK;
    double *buf = scratch(op, nw + ns + nb + (size_t)out_c, &s);
    if (!buf) return s;
    double *dW = buf, *S = dW + nw, *B = S + ns, *dB = B + nb;
    memset(dW, 0, nw * sizeof *dW);
    memset(dB, 0, (size_t)out_c * sizeof *dB);
    for (int n = 0; n < x->n; n++) {
        ld_range(ts, (size_t)n * ns, ns, S);
        ld_range(tb, (size_t)n * nb, nb, B);
        k_wgrad(&g, S, B, dW);
        const double *gy = transposed ? B : S; /* dy of this image */
        for (int c = 0; c < out_c; c++)
            for (size_t i = 0; i < plane; i++) dB[c] += gy[(size_t)c * plane + i];
    }
    store_grad(dw, dW, nw, accumulate);
    if (db) store_grad(db, dB, (size_t)out_c, accumulate);
    free(buf);
    return CZ_OK;
}

static cz_status ref_conv2d_bwd_weights(cz_backend *be, const cz_tensor *x, const cz_tensor *dy,
                                        const cz_conv_params *p, cz_tensor *dw, cz_tensor *db, int accumulate) {
    (void)be;
    return conv_like_bwd_weights("conv2d_bwd_weights", 0, x, dy, p, dw, db, accumulate);
}

static cz_status ref_deconv2d_bwd_weights(cz_backend *be, const cz_tensor *x, const cz_tensor *dy,
                                          const cz_conv_params *p, cz_tensor *dw, cz_tensor *db,
                                          int accumulate) {
    (void)be;
    return conv_like_bwd_weights("deconv2d_bwd_weights", 1, x, dy, p, dw, db, accumulate);
}

/* ------------------------------------------------------------------------------------------ */
/* batch norm                                                                                  */

static cz_status ref_bn_infer(cz_backend *be, const cz_tensor *x, const cz_tensor *gamma, const cz_tensor *beta,
                              const cz_tensor *mean, const cz_tensor *var, float eps, cz_tensor *y) {
    (void)be;
    const char *op = "bn_infer";
    CZ_TRY(check_tensor(op, "x", x));
    CZ_TRY(check_opt(op, "gamma", gamma));
    CZ_TRY(check_opt(op, "beta", beta));
    CZ_TRY(check_tensor(op, "mean", mean));
    CZ_TRY(check_tensor(op, "var", var));
    CZ_TRY(check_tensor(op, "y", y));
    CZ_TRY(expect_same(op, "y", y, x));
    CZ_TRY(expect_vec(op, "gamma", gamma, x->c));
    CZ_TRY(expect_vec(op, "beta", beta, x->c));
    CZ_TRY(expect_vec(op, "mean", mean, x->c));
    CZ_TRY(expect_vec(op, "var", var, x->c));
    if (!(eps >= 0)) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: eps %g must be >= 0", op, (double)eps);
    size_t plane = (size_t)x->h * x->w;
    for (int c = 0; c < x->c; c++) {
        double scale = (gamma ? ld(gamma, c) : 1.0) / sqrt(ld(var, c) + (double)eps);
        double m = ld(mean, c), sh = beta ? ld(beta, c) : 0.0;
        for (int n = 0; n < x->n; n++) {
            size_t base = ((size_t)n * x->c + c) * plane;
            for (size_t i = 0; i < plane; i++) st(y, base + i, (ld(x, base + i) - m) * scale + sh);
        }
    }
    return CZ_OK;
}

static cz_status ref_bn_train_fwd(cz_backend *be, const cz_tensor *x, const cz_tensor *gamma,
                                  const cz_tensor *beta, float eps, float momentum, cz_tensor *running_mean,
                                  cz_tensor *running_var, cz_tensor *save_mean, cz_tensor *save_invstd,
                                  cz_tensor *y) {
    (void)be;
    const char *op = "bn_train_fwd";
    CZ_TRY(check_tensor(op, "x", x));
    CZ_TRY(check_opt(op, "gamma", gamma));
    CZ_TRY(check_opt(op, "beta", beta));
    CZ_TRY(check_opt(op, "running_mean", running_mean));
    CZ_TRY(check_opt(op, "running_var", running_var));
    CZ_TRY(check_opt(op, "save_mean", save_mean));
    CZ_TRY(check_opt(op, "save_invstd", save_invstd));
    CZ_TRY(check_tensor(op, "y", y));
    CZ_TRY(expect_same(op, "y", y, x));
    CZ_TRY(expect_vec(op, "gamma", gamma, x->c));
    CZ_TRY(expect_vec(op, "beta", beta, x->c));
    CZ_TRY(expect_vec(op, "running_mean", running_mean, x->c));
    CZ_TRY(expect_vec(op, "running_var", running_var, x->c));
    CZ_TRY(expect_vec(op, "save_mean", save_mean, x->c));
    CZ_TRY(expect_vec(op, "save_invstd", save_invstd, x->c));
    CZ_TRY(expect_f32(op, "save_mean", save_mean));
    CZ_TRY(expect_f32(op, "save_invstd", save_invstd));
    if (!(eps >= 0)) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: eps %g must be >= 0", op, (double)eps);
    if (!(momentum >= 0 && momentum <= 1))
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: momentum %g must be in [0, 1]", op, (double)momentum);
    size_t plane = (size_t)x->h * x->w, count = (size_t)x->n * plane;
    if (count < 2)
        return cz_error_set(CZ_ERR_SHAPE, "%s: x is %s, batch statistics need more than 1 value per channel", op,
                            tshape(x).s);
    double mom = (double)momentum;
    for (int c = 0; c < x->c; c++) {
        double sum = 0, sq = 0;
        for (int n = 0; n < x->n; n++) {
            size_t base = ((size_t)n * x->c + c) * plane;
            for (size_t i = 0; i < plane; i++) sum += ld(x, base + i);
        }
        double mean = sum / (double)count;
        for (int n = 0; n < x->n; n++) {
            size_t base = ((size_t)n * x->c + c) * plane;
            for (size_t i = 0; i < plane; i++) {
                double d = ld(x, base + i) - mean;
                sq += d * d;
            }
        }
        double var = sq / (double)count;
        double invstd = 1.0 / sqrt(var + (double)eps);
        double g = gamma ? ld(gamma, c) : 1.0, bt = beta ? ld(beta, c) : 0.0;
        for (int n = 0; n < x->n; n++) {
            size_t base = ((size_t)n * x->c + c) * plane;
            for (size_t i = 0; i < plane; i++) st(y, base + i, (ld(x, base + i) - mean) * invstd * g + bt);
        }
        if (save_mean) st(save_mean, c, mean);
        if (save_invstd) st(save_invstd, c, invstd);
        if (running_mean) st(running_mean, c, (1.0 - mom) * ld(running_mean, c) + mom * mean);
        if (running_var) {
            double unbiased = sq / (double)(count - 1);
            st(running_var, c, (1.0 - mom) * ld(running_var, c) + mom * unbiased);
        }
    }
    return CZ_OK;
}

static cz_status ref_bn_train_bwd(cz_backend *be, const cz_tensor *x, const cz_tensor *dy, const cz_tensor *gamma,
                                  const cz_tensor *save_mean, const cz_tensor *save_invstd, cz_tensor *dx,
                                  cz_tensor *dgamma, cz_tensor *dbeta, int accumulate) {
    (void)be;
    const char *op = "bn_train_bwd";
    CZ_TRY(check_tensor(op, "x", x));
    CZ_TRY(check_tensor(op, "dy", dy));
    CZ_TRY(check_opt(op, "gamma", gamma));
    CZ_TRY(check_tensor(op, "save_mean", save_mean));
    CZ_TRY(check_tensor(op, "save_invstd", save_invstd));
    CZ_TRY(check_opt(op, "dx", dx));
    CZ_TRY(check_opt(op, "dgamma", dgamma));
    CZ_TRY(check_opt(op, "dbeta", dbeta));
    CZ_TRY(expect_same(op, "dy", dy, x));
    if (dx) CZ_TRY(expect_same(op, "dx", dx, x));
    CZ_TRY(expect_vec(op, "gamma", gamma, x->c));
    CZ_TRY(expect_vec(op, "save_mean", save_mean, x->c));
    CZ_TRY(expect_vec(op, "save_invstd", save_invstd, x->c));
    CZ_TRY(expect_vec(op, "dgamma", dgamma, x->c));
    CZ_TRY(expect_vec(op, "dbeta", dbeta, x->c));
    CZ_TRY(expect_f32(op, "save_mean", save_mean));
    CZ_TRY(expect_f32(op, "save_invstd", save_invstd));
    size_t plane = (size_t)x->h * x->w;
    double count = (double)x->n * (double)plane;
    for (int c = 0; c < x->c; c++) {
        double mean = ld(save_mean, c), invstd = ld(save_invstd, c), g = gamma ? ld(gamma, c) : 1.0;
        double sdy = 0, sdyx = 0; /* sum dy, sum dy * xhat */
        for (int n = 0; n < x->n; n++) {
            size_t base = ((size_t)n * x->c + c) * plane;
            for (size_t i = 0; i < plane; i++) {
                double d = ld(dy, base + i);
                sdy += d;
                sdyx += d * (ld(x, base + i) - mean) * invstd;
            }
        }
        if (dx) {
            for (int n = 0; n < x->n; n++) {
                size_t base = ((size_t)n * x->c + c) * plane;
                for (size_t i = 0; i < plane; i++) {
                    double xhat = (ld(x, base + i) - mean) * invstd;
                    double v = g * invstd * (ld(dy, base + i) - sdy / count - xhat * sdyx / count);
                    st(dx, base + i, v);
                }
            }
        }
        if (dgamma) st(dgamma, c, accumulate ? ld(dgamma, c) + sdyx : sdyx);
        if (dbeta) st(dbeta, c, accumulate ? ld(dbeta, c) + sdy : sdy);
    }
    return CZ_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* element-wise                                                                                */

static cz_status ref_act_fwd(cz_backend *be, cz_act act, float alpha, const cz_tensor *x, cz_tensor *y) {
    (void)be;
    const char *op = "act_fwd";
    CZ_TRY(check_act(op, act));
    CZ_TRY(check_tensor(op, "x", x));
    CZ_TRY(check_tensor(op, "y", y));
    CZ_TRY(expect_same(op, "y", y, x));
    if (x->data == y->data && x->dtype != y->dtype)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: in place needs one dtype", op);
    size_t n = cz_tensor_numel(x);
    for (size_t i = 0; i < n; i++) st(y, i, act_apply(act, (double)alpha, ld(x, i)));
    return CZ_OK;
}

static cz_status ref_act_bwd(cz_backend *be, cz_act act, float alpha, const cz_tensor *y, const cz_tensor *dy,
                             cz_tensor *dx) {
    (void)be;
    const char *op = "act_bwd";
    CZ_TRY(check_act(op, act));
    CZ_TRY(check_tensor(op, "y", y));
    CZ_TRY(check_tensor(op, "dy", dy));
    CZ_TRY(check_tensor(op, "dx", dx));
    CZ_TRY(expect_same(op, "dy", dy, y));
    CZ_TRY(expect_same(op, "dx", dx, y));
    size_t n = cz_tensor_numel(y);
    for (size_t i = 0; i < n; i++) {
        double yv = ld(y, i), g = ld(dy, i), d = g;
        switch (act) {
        case CZ_ACT_RELU: d = yv > 0 ? g : 0.0; break;
        case CZ_ACT_LRELU: d = yv > 0 ? g : (double)alpha * g; break;
        case CZ_ACT_TANH: d = g * (1.0 - yv * yv); break;
        case CZ_ACT_NONE: break;
        }
        st(dx, i, d);
    }
    return CZ_OK;
}

static cz_status ref_concat(cz_backend *be, const cz_tensor *a, const cz_tensor *b, cz_tensor *y) {
    (void)be;
    const char *op = "concat";
    CZ_TRY(check_tensor(op, "a", a));
    CZ_TRY(check_tensor(op, "b", b));
    CZ_TRY(check_tensor(op, "y", y));
    CZ_TRY(expect_shape(op, "b", b, a->n, b->c, a->h, a->w));
    CZ_TRY(expect_shape(op, "y", y, a->n, a->c + b->c, a->h, a->w));
    CZ_TRY(no_alias(op, "a", a, "y", y));
    CZ_TRY(no_alias(op, "b", b, "y", y));
    size_t plane = (size_t)a->h * a->w, na = (size_t)a->c * plane, nb = (size_t)b->c * plane;
    for (int n = 0; n < a->n; n++) {
        size_t yo = (size_t)n * (na + nb);
        for (size_t i = 0; i < na; i++) st(y, yo + i, ld(a, (size_t)n * na + i));
        for (size_t i = 0; i < nb; i++) st(y, yo + na + i, ld(b, (size_t)n * nb + i));
    }
    return CZ_OK;
}

static cz_status ref_concat_bwd(cz_backend *be, const cz_tensor *dy, cz_tensor *da, cz_tensor *db,
                                int accumulate) {
    (void)be;
    const char *op = "concat_bwd";
    CZ_TRY(check_tensor(op, "dy", dy));
    CZ_TRY(check_tensor(op, "da", da));
    CZ_TRY(check_tensor(op, "db", db));
    CZ_TRY(expect_shape(op, "da", da, dy->n, da->c, dy->h, dy->w));
    CZ_TRY(expect_shape(op, "db", db, dy->n, dy->c - da->c, dy->h, dy->w));
    size_t plane = (size_t)dy->h * dy->w, na = (size_t)da->c * plane, nb = (size_t)db->c * plane;
    for (int n = 0; n < dy->n; n++) {
        size_t yo = (size_t)n * (na + nb), ao = (size_t)n * na, bo = (size_t)n * nb;
        for (size_t i = 0; i < na; i++)
            st(da, ao + i, (accumulate ? ld(da, ao + i) : 0.0) + ld(dy, yo + i));
        for (size_t i = 0; i < nb; i++)
            st(db, bo + i, (accumulate ? ld(db, bo + i) : 0.0) + ld(dy, yo + na + i));
    }
    return CZ_OK;
}

/* The dropout draw for element i; see the file-top comment. */
static float dropout_u(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

static cz_status ref_dropout_fwd(cz_backend *be, float p, uint64_t seed, const cz_tensor *x, cz_tensor *mask,
                                 cz_tensor *y) {
    (void)be;
    const char *op = "dropout_fwd";
    CZ_TRY(check_tensor(op, "x", x));
    CZ_TRY(check_tensor(op, "mask", mask));
    CZ_TRY(check_tensor(op, "y", y));
    CZ_TRY(expect_same(op, "mask", mask, x));
    CZ_TRY(expect_same(op, "y", y, x));
    CZ_TRY(no_alias(op, "x", x, "mask", mask));
    if (!(p >= 0.0f && p < 1.0f))
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: p = %g must be in [0, 1)", op, (double)p);
    float scale = 1.0f / (1.0f - p);
    size_t n = cz_tensor_numel(x);
    for (size_t i = 0; i < n; i++) {
        int keep = dropout_u(seed, (uint64_t)i) >= p;
        double xv = ld(x, i);
        st(mask, i, keep ? (double)scale : 0.0);
        st(y, i, keep ? xv * (double)scale : 0.0);
    }
    return CZ_OK;
}

static cz_status ref_dropout_bwd(cz_backend *be, const cz_tensor *mask, const cz_tensor *dy, cz_tensor *dx) {
    (void)be;
    const char *op = "dropout_bwd";
    CZ_TRY(check_tensor(op, "mask", mask));
    CZ_TRY(check_tensor(op, "dy", dy));
    CZ_TRY(check_tensor(op, "dx", dx));
    CZ_TRY(expect_same(op, "dy", dy, mask));
    CZ_TRY(expect_same(op, "dx", dx, mask));
    size_t n = cz_tensor_numel(mask);
    for (size_t i = 0; i < n; i++) st(dx, i, ld(dy, i) * ld(mask, i));
    return CZ_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* losses                                                                                      */

static cz_status ref_bce_logits_fwd(cz_backend *be, const cz_tensor *x, float target, double *loss) {
    (void)be;
    const char *op = "bce_logits_fwd";
    CZ_TRY(check_tensor(op, "x", x));
    if (!loss) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: loss is NULL", op);
    if (!isfinite(target)) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: target is not finite", op);
    size_t n = cz_tensor_numel(x);
    double t = (double)target, sum = 0;
    for (size_t i = 0; i < n; i++) {
        double v = ld(x, i);
        sum += (v > 0 ? v : 0.0) - v * t + log1p(exp(-fabs(v)));
    }
    *loss = sum / (double)n;
    return CZ_OK;
}

static cz_status ref_bce_logits_bwd(cz_backend *be, const cz_tensor *x, float target, float scale,
                                    cz_tensor *dx) {
    (void)be;
    const char *op = "bce_logits_bwd";
    CZ_TRY(check_tensor(op, "x", x));
    CZ_TRY(check_tensor(op, "dx", dx));
    CZ_TRY(expect_same(op, "dx", dx, x));
    if (!isfinite(target)) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: target is not finite", op);
    size_t n = cz_tensor_numel(x);
    double k = (double)scale / (double)n, t = (double)target;
    for (size_t i = 0; i < n; i++) {
        double v = ld(x, i), e = exp(-fabs(v));
        double sig = v >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
        st(dx, i, k * (sig - t));
    }
    return CZ_OK;
}

static cz_status ref_l1_fwd(cz_backend *be, const cz_tensor *a, const cz_tensor *b, double *loss) {
    (void)be;
    const char *op = "l1_fwd";
    CZ_TRY(check_tensor(op, "a", a));
    CZ_TRY(check_tensor(op, "b", b));
    CZ_TRY(expect_same(op, "b", b, a));
    if (!loss) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: loss is NULL", op);
    size_t n = cz_tensor_numel(a);
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += fabs(ld(a, i) - ld(b, i));
    *loss = sum / (double)n;
    return CZ_OK;
}

static cz_status ref_l1_bwd(cz_backend *be, const cz_tensor *a, const cz_tensor *b, float scale, cz_tensor *da) {
    (void)be;
    const char *op = "l1_bwd";
    CZ_TRY(check_tensor(op, "a", a));
    CZ_TRY(check_tensor(op, "b", b));
    CZ_TRY(check_tensor(op, "da", da));
    CZ_TRY(expect_same(op, "b", b, a));
    CZ_TRY(expect_same(op, "da", da, a));
    size_t n = cz_tensor_numel(a);
    double k = (double)scale / (double)n;
    for (size_t i = 0; i < n; i++) {
        double d = ld(a, i) - ld(b, i);
        st(da, i, d > 0 ? k : d < 0 ? -k : 0.0);
    }
    return CZ_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* optimizer                                                                                   */

static cz_status ref_adam_step(cz_backend *be, cz_tensor *param, const cz_tensor *grad, cz_tensor *m,
                               cz_tensor *v, float lr, float beta1, float beta2, float eps, int t) {
    (void)be;
    const char *op = "adam_step";
    CZ_TRY(check_tensor(op, "param", param));
    CZ_TRY(check_tensor(op, "grad", grad));
    CZ_TRY(check_tensor(op, "m", m));
    CZ_TRY(check_tensor(op, "v", v));
    CZ_TRY(expect_same(op, "grad", grad, param));
    CZ_TRY(expect_same(op, "m", m, param));
    CZ_TRY(expect_same(op, "v", v, param));
    CZ_TRY(expect_f32(op, "param", param));
    CZ_TRY(expect_f32(op, "m", m));
    CZ_TRY(expect_f32(op, "v", v));
    if (t < 1) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: step %d must be >= 1", op, t);
    double b1 = beta1, b2 = beta2;
    double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
    size_t n = cz_tensor_numel(param);
    for (size_t i = 0; i < n; i++) {
        double g = ld(grad, i);
        double mi = b1 * ld(m, i) + (1.0 - b1) * g;
        double vi = b2 * ld(v, i) + (1.0 - b2) * g * g;
        double step = (double)lr * (mi / bc1) / (sqrt(vi / bc2) + (double)eps);
        st(m, i, mi);
        st(v, i, vi);
        st(param, i, ld(param, i) - step);
    }
    return CZ_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* memory                                                                                      */

static int ref_supports(cz_backend *be, cz_dtype dt) {
    (void)be;
    return dt == CZ_F32 || dt == CZ_BF16 || dt == CZ_F16;
}

static cz_status ref_tensor_alloc(cz_backend *be, cz_tensor *t) {
    if (!t) return cz_error_set(CZ_ERR_INVALID_ARG, "tensor_alloc: tensor is NULL");
    if (!ref_supports(be, t->dtype))
        return cz_error_set(CZ_ERR_UNSUPPORTED, "tensor_alloc: ref does not support dtype %d", (int)t->dtype);
    if (t->n < 1 || t->c < 1 || t->h < 1 || t->w < 1)
        return cz_error_set(CZ_ERR_INVALID_ARG, "tensor_alloc: shape %s has a non-positive dim", tshape(t).s);
    size_t numel = 1;
    const int dims[4] = {t->n, t->c, t->h, t->w};
    for (int i = 0; i < 4; i++) {
        if (numel > SIZE_MAX / 8 / (size_t)dims[i])
            return cz_error_set(CZ_ERR_TOO_LARGE, "tensor_alloc: shape %s is too large", tshape(t).s);
        numel *= (size_t)dims[i];
    }
    t->data = calloc(numel, cz_dtype_size(t->dtype));
    if (!t->data)
        return cz_error_set(CZ_ERR_NOMEM, "tensor_alloc: cannot allocate %zu bytes for %s", numel * cz_dtype_size(t->dtype),
                            tshape(t).s);
    t->layout = 0;
    t->cap_n = t->n;
    return CZ_OK;
}

static void ref_tensor_free(cz_backend *be, cz_tensor *t) {
    (void)be;
    if (!t || !t->data) return;
    if (cz_tensor_is_view(t)) return; /* a view never owns its storage */
    free(t->data);
    t->data = NULL;
}

static cz_status ref_tensor_write(cz_backend *be, cz_tensor *t, const float *src) {
    (void)be;
    CZ_TRY(check_tensor("tensor_write", "t", t));
    if (!src) return cz_error_set(CZ_ERR_INVALID_ARG, "tensor_write: src is NULL");
    size_t n = cz_tensor_numel(t);
    if (t->dtype == CZ_F32) {
        memcpy(t->data, src, n * sizeof *src);
    } else {
        for (size_t i = 0; i < n; i++) st(t, i, src[i]);
    }
    return CZ_OK;
}

static cz_status ref_tensor_read(cz_backend *be, const cz_tensor *t, float *dst) {
    (void)be;
    CZ_TRY(check_tensor("tensor_read", "t", t));
    if (!dst) return cz_error_set(CZ_ERR_INVALID_ARG, "tensor_read: dst is NULL");
    size_t n = cz_tensor_numel(t);
    if (t->dtype == CZ_F32) {
        memcpy(dst, t->data, n * sizeof *dst);
    } else {
        for (size_t i = 0; i < n; i++) dst[i] = (float)ld(t, i);
    }
    return CZ_OK;
}

static cz_status ref_tensor_zero(cz_backend *be, cz_tensor *t) {
    (void)be;
    CZ_TRY(check_tensor("tensor_zero", "t", t));
    memset(t->data, 0, cz_tensor_numel(t) * cz_dtype_size(t->dtype)); /* +0.0 in every dtype */
    return CZ_OK;
}

static cz_status ref_sync(cz_backend *be) {
    (void)be;
    return CZ_OK;
}

static void ref_destroy(cz_backend *be) { free(be); }

static const cz_backend_ops k_ref_ops = {
    .name = "ref",
    .destroy = ref_destroy,
    .supports = ref_supports,
    .tensor_alloc = ref_tensor_alloc,
    .tensor_free = ref_tensor_free,
    .tensor_write = ref_tensor_write,
    .tensor_read = ref_tensor_read,
    .tensor_zero = ref_tensor_zero,
    .sync = ref_sync,
    .conv2d = ref_conv2d,
    .deconv2d = ref_deconv2d,
    .bn_infer = ref_bn_infer,
    .bn_train_fwd = ref_bn_train_fwd,
    .act_fwd = ref_act_fwd,
    .concat = ref_concat,
    .dropout_fwd = ref_dropout_fwd,
    .bce_logits_fwd = ref_bce_logits_fwd,
    .l1_fwd = ref_l1_fwd,
    .conv2d_bwd_data = ref_conv2d_bwd_data,
    .conv2d_bwd_weights = ref_conv2d_bwd_weights,
    .deconv2d_bwd_data = ref_deconv2d_bwd_data,
    .deconv2d_bwd_weights = ref_deconv2d_bwd_weights,
    .bn_train_bwd = ref_bn_train_bwd,
    .act_bwd = ref_act_bwd,
    .concat_bwd = ref_concat_bwd,
    .dropout_bwd = ref_dropout_bwd,
    .bce_logits_bwd = ref_bce_logits_bwd,
    .l1_bwd = ref_l1_bwd,
    .adam_step = ref_adam_step,
};

cz_status cz_backend_ref_create(const cz_backend_options *opt, cz_backend **out) {
    (void)opt;
    if (!out) return cz_error_set(CZ_ERR_INVALID_ARG, "ref: out is NULL");
    *out = NULL;
    ref_backend *rb = calloc(1, sizeof *rb);
    if (!rb) return cz_error_set(CZ_ERR_NOMEM, "ref: cannot allocate the backend");
    rb->base.ops = &k_ref_ops;
    rb->base.threads = 1;
    *out = &rb->base;
    return CZ_OK;
}
