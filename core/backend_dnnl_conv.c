/* backend_dnnl_conv.c: conv2d and deconv2d of the `dnnl` backend (oneDNN 2.6 C API); the
 * other ops are in backend_dnnl_ops.c, memory and caches in backend_dnnl.c.
 *
 * conv2d: oneDNN convolution with weights in the layout the primitive prefers (a cached
 *   reorder of the OIHW tensor), bias, and the activation as an eltwise post-op.
 * deconv2d: four equivalent forms (the same sums in other orders):
 *   phase (default where it applies: stride s, k = s + 2*pad, output in nChw16c): s*s
 *        stride-1 forward convolutions, one per output phase, interleaved into y by strided
 *        reorders; bias and activation fused. oneDNN 2.6's own transposed kernels reach
 *        about half the speed of its forward ones on these shapes (tests/bench).
 *   gemm (always for outputs in plain layout, i.e. few channels, like the last layer): a 1x1
 *        convolution producing all (channel, tap) products, then col2im in C; oneDNN has only
 *        reference kernels for transposed convolutions into such outputs.
 *   fwd: oneDNN deconvolution forward; the (in,out,k,k) tensor is described to oneDNN as
 *        weights (out,in,k,k) with the `iohw` tag, so the weight reorder does the transpose.
 *        Used where phase does not apply.
 *   bwd: convolution backward-data (the transposed conv is that op's adjoint) with the tensor
 *        read as (O=in, I=out) OIHW weights of the mirror convolution, then one binary add
 *        (bias, activation as post-op) or an eltwise. Only on request (slower; bf16 bias add
 *        falls back to a reference binary kernel).
 *   cz_backend_dnnl_set_deconv_mode / CZ_DNNL_DECONV=fwd|bwd|phase force a form.
 * Weights of every form go through the backend's weight-copy cache (backend_dnnl.c).
 * conv2d and the phase convolutions drop kernel taps that only ever see padding (tiny inputs,
 *   e.g. the innermost 2x2 -> 1x1 conv and the 1x1 -> 2x2 transposed conv: 4x less weight
 *   traffic there); the weight copy is then gathered from the kept taps (see live_taps).
 * Channel views as y (backend.h; geometry checked by view_ok's rules): phase writes through
 *   its interleaving reorders, which target sub-memories of y's storage anyway; gemm's final
 *   reorder targets the view; conv/fwd/bwd compute into a dense temporary (aux slot 6) and one
 *   more reorder copies it into the view (oneDNN 2.6's jit kernels refuse strided outputs).
 * Tested by tests/unit/test_dnnl.c (every form against ref, batch invariance) and
 * tests/unit/test_ops.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_dnnl_impl.h"

#ifndef CZ_DNNL_DECONV_AUTO
#define CZ_DNNL_DECONV_AUTO 3
#endif


enum { KIND_CONV = 0, KIND_DECONV_FWD = 1, KIND_DECONV_BWD = 2, KIND_DECONV_PHASE = 3, KIND_DECONV_GEMM = 4 };

/* Phase decomposition of a stride-s transposed conv whose output is exactly s times its
 * input (k = s + 2*pad, k a multiple of s). Output row oh = s*m + q receives the kernel rows
 * kh = r + s*t (r = (q+pad) mod s, t < kk = k/s) from input rows m + a - t (a = (q+pad) div s),
 * which is an ordinary stride-1 convolution of x with the kk x kk sub-kernel taken in reverse
 * order, padded kk-1-a before and a after. Each of the s*s phases (both axes) is such a
 * convolution (bias and activation fused) into a temporary, interleaved into y by a reorder
 * to a strided view of y ((n, c, H, s, W, s) with the phase's offsets). The forward
 * convolution kernels are several times faster than oneDNN 2.6's transposed ones here. */
static int phase_ok(const cz_tensor *x, const cz_tensor *w, const cz_conv_params *p, const cz_tensor *y) {
    int k = w->h, s = p->stride;
    if (s < 2 || s * s > DN_MAX_PHASES || k % s || y->h != x->h * s || y->w != x->w * s) return 0;
    if (y->layout != CZ_DNNL_LAYOUT_NCHW16C) return 0;
    for (int q = 0; q < s; q++)
        if ((q + p->pad) / s > k / s - 1) return 0;
    return 1;
}

/* Dead-tap trimming: when the input is tiny (the generator's innermost levels: 2x2 -> 1x1
 * down, 1x1 -> 2x2 up), some kernel taps only ever multiply padding. Dropping them gives the
 * same sums (the dropped terms are exact zeros) with a smaller kernel and less padding, and
 * at batch 1 these layers are bound by reading their weights, which shrink 4x there.
 * live_taps: the taps [*lo, *hi) along one axis that meet real input for some output
 * position (input `in`, output `out`, kernel k, stride s, left pad p). */
static void live_taps(int in, int out, int k, int s, int p, int *lo, int *hi) {
    *lo = k;
    *hi = 0;
    for (int t = 0; t < k; t++)
        for (int o = 0; o < out; o++) {
            int i = o * s - p + t;
            if (i >= 0 && i < in) {
                if (t < *lo) *lo = t;
                *hi = t + 1;
                break;
            }
        }
}

/* Fills the trimmed kernel size and paddings of one axis; 0 when trimming does not apply
 * (nothing to drop, no live tap at all, or a padding would turn negative). */
static int trim_axis(int in, int out, int k, int s, int pl, int *lo, int *hi, dnnl_dim_t *npl, dnnl_dim_t *npr) {
    live_taps(in, out, k, s, pl, lo, hi);
    if (*lo >= *hi || k >= 16 || *lo > pl) return 0;
    *npl = pl - *lo;
    *npr = (dnnl_dim_t)(out - 1) * s + (*hi - *lo) - in - *npl;
    return *npr >= 0;
}

static dnnl_format_tag_t tag_of(const cz_tensor *t) {
    return t->layout == CZ_DNNL_LAYOUT_NCHW16C ? dnnl_nChw16c : dnnl_nchw;
}

static cz_status phase_build(dn_backend *b, const cz_tensor *x, const cz_tensor *w, const cz_tensor *bias,
                             const cz_conv_params *p, const cz_tensor *y, dn_prim *e) {
    int s = p->stride, kk = w->h / s, n = x->n, co = y->c, ci = x->c, H = x->h, W = x->w;
    dn_phase *ph = calloc(1, sizeof *ph);
    if (!ph) return cz_error_set(CZ_ERR_NOMEM, "dnnl: phase plan");
    e->ph = ph;
    ph->count = s * s;
    dnnl_data_type_t cdt = (dnnl_data_type_t)dn_stored_dt(x), ydt = (dnnl_data_type_t)dn_stored_dt(y);
    dnnl_memory_desc_t xm, ym, tm, y6, t6, bm;
    CZ_TRY(dn_tensor_md(x, &xm));
    CZ_TRY(dn_storage_md(y, &ym)); /* all of y's storage; the view's channels are picked below */
    CZ_TRY(dn_plain_md(n, co, H, W, ydt, tag_of(y), &tm));
    int c0 = dn_is_view(y) ? y->c_off : 0;
    dnnl_dims_t y6d = {n, dn_store_c(y), H, s, W, s}, t6d = {n, co, H, 1, W, 1};
    DN_CHECK(dnnl_memory_desc_reshape(&y6, &ym, 6, y6d));
    DN_CHECK(dnnl_memory_desc_reshape(&t6, &tm, 6, t6d));
    if (bias) {
        dnnl_dims_t bd = {co};
        DN_CHECK(dnnl_memory_desc_init_by_tag(&bm, 1, bd, dnnl_f32, dnnl_a));
    }
    ph->part_bytes = dnnl_memory_desc_get_size(&tm);
    for (int q = 0; q < s * s; q++) {
        int qh = q / s, qw = q % s, ah = (qh + p->pad) / s, aw = (qw + p->pad) / s;
        dn_wspec *ws = &ph->ws[q];
        dnnl_memory_desc_t wany, sub;
        dnnl_dims_t one = {1, 1}, pl = {kk - 1 - ah, kk - 1 - aw}, pr = {ah, aw};
        int h0, h1, w0, w1;
        dnnl_dim_t tpl[2], tpr[2];
        int trim = trim_axis(H, H, kk, 1, (int)pl[0], &h0, &h1, &tpl[0], &tpr[0]) &&
                   trim_axis(W, W, kk, 1, (int)pl[1], &w0, &w1, &tpl[1], &tpr[1]) &&
                   (h0 > 0 || h1 < kk || w0 > 0 || w1 < kk);
        int kh = kk, kw = kk;
        ws->gather = DN_GATHER_PHASE;
        if (trim) {
            ws->gather |= DN_GATHER_TRIM;
            ws->th0 = h0, ws->th1 = h1, ws->tw0 = w0, ws->tw1 = w1;
            kh = h1 - h0, kw = w1 - w0;
            pl[0] = tpl[0], pl[1] = tpl[1], pr[0] = tpr[0], pr[1] = tpr[1];
        }
        CZ_TRY(dn_plain_md(co, ci, kh, kw, cdt, dnnl_format_tag_any, &wany));
        CZ_TRY(dn_plain_md(co, ci, kh, kw, (dnnl_data_type_t)dn_stored_dt(w), dnnl_oihw, &ws->src_md));
        ws->s = s;
        ws->p = p->pad;
        ws->qh = qh;
        ws->qw = qw;
        dnnl_convolution_desc_t cd;
        dnnl_primitive_attr_t attr;
        dnnl_primitive_desc_t pd = NULL;
        CZ_TRY(dn_attr_make(p->act, p->alpha, &attr));
        dnnl_status_t ds = dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct,
                                                              &xm, &wany, bias ? &bm : NULL, &tm, one, pl, pr);
        if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&pd, &cd, attr, b->engine, NULL);
        dnnl_primitive_attr_destroy(attr);
        DN_CHECK(ds);
        ws->md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        static const int ids_b[4] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_BIAS, DNNL_ARG_DST};
        static const int ids_n[3] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST};
        CZ_TRY(dn_step_init(b, &ph->conv[q], pd, bias ? 4 : 3, bias ? ids_b : ids_n));
        dnnl_dims_t off = {0, c0, 0, qh, 0, qw};
        DN_CHECK(dnnl_memory_desc_init_submemory(&sub, &y6, t6d, off));
        CZ_TRY(dn_attr_make(CZ_ACT_NONE, 0.f, &attr));
        pd = NULL;
        ds = dnnl_reorder_primitive_desc_create(&pd, &t6, b->engine, &sub, b->engine, attr);
        dnnl_primitive_attr_destroy(attr);
        DN_CHECK(ds);
        static const int rids[2] = {DNNL_ARG_FROM, DNNL_ARG_TO};
        CZ_TRY(dn_step_init(b, &ph->shuffle[q], pd, 2, rids));
    }
    return CZ_OK;
}

static cz_status phase_run(dn_backend *b, dn_prim *e, const cz_tensor *x, const cz_tensor *w, const float *bias,
                           cz_tensor *y) {
    dn_phase *ph = e->ph;
    void *tmp;
    CZ_TRY(dn_aux(b, 7, ph->part_bytes * (size_t)ph->count, &tmp));
    for (int q = 0; q < ph->count; q++) {
        void *wp, *part = (char *)tmp + ph->part_bytes * (size_t)q;
        CZ_TRY(dn_weights(b, &ph->ws[q], w, &wp));
        void *cargs[4] = {x->data, wp, (void *)bias, part};
        if (!bias) cargs[2] = part;
        CZ_TRY(dn_run(b, &ph->conv[q], cargs));
        void *rargs[2] = {part, y->data};
        CZ_TRY(dn_run(b, &ph->shuffle[q], rargs));
    }
    return CZ_OK;
}

/* Transposed conv with few output channels (plain-layout y, e.g. the generator's last layer
 * with 2 or 3): oneDNN has only reference kernels for such outputs, so compute
 *   Z[n, (o,kh,kw), ih, iw] = sum_i x[n, i, ih, iw] * w[i, o, kh, kw]
 * as a 1x1 convolution with co*k*k output channels (the stored (in, out, k, k) tensor is the
 * (O'=out*k*k, I=in) weight matrix in `iohw` order), then scatter-add Z into y (col2im),
 * adding bias and applying the activation in C. Z is fp32 in aux slot 7. */
static int gemm_z_blocked(int co, int k) { return (co * k * k) % 16 == 0; }

static cz_status gemm_build(dn_backend *b, const cz_tensor *x, const cz_tensor *w, const cz_conv_params *p,
                            const cz_tensor *y, dn_prim *e) {
    int k = w->h, zc = y->c * k * k;
    dnnl_memory_desc_t xm, zm, wany, am, ym;
    CZ_TRY(dn_tensor_md(x, &xm));
    CZ_TRY(dn_tensor_md(y, &ym));
    CZ_TRY(dn_plain_md(x->n, zc, x->h, x->w, dnnl_f32, gemm_z_blocked(y->c, k) ? dnnl_nChw16c : dnnl_nchw, &zm));
    CZ_TRY(dn_plain_md(y->n, y->c, y->h, y->w, dnnl_f32, dnnl_nchw, &am)); /* fp32 accumulator */
    dnnl_data_type_t cdt = (dnnl_data_type_t)dn_stored_dt(x);
    CZ_TRY(dn_plain_md(zc, x->c, 1, 1, cdt, dnnl_format_tag_any, &wany));
    CZ_TRY(dn_plain_md(zc, x->c, 1, 1, (dnnl_data_type_t)dn_stored_dt(w), dnnl_iohw, &e->ws.src_md));
    dnnl_dims_t one = {1, 1}, zero = {0, 0};
    dnnl_primitive_attr_t attr;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_convolution_desc_t cd;
    CZ_TRY(dn_attr_make(CZ_ACT_NONE, 0.f, &attr));
    dnnl_status_t ds = dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct, &xm,
                                                          &wany, NULL, &zm, one, zero, zero);
    if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&pd, &cd, attr, b->engine, NULL);
    DN_CHECK(ds);
    e->ws.md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    e->ws.direct = dnnl_memory_desc_equal(&e->ws.md, &e->ws.src_md);
    static const int ids[3] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST};
    CZ_TRY(dn_step_init(b, &e->main, pd, 3, ids));
    /* epilogue: activation in place on the fp32 accumulator, then conversion into y */
    dnnl_alg_kind_t alg;
    float alpha = 0.f;
    if (dn_act_alg(p->act, p->alpha, &alg, &alpha)) {
        dnnl_eltwise_desc_t ed;
        pd = NULL;
        ds = dnnl_eltwise_forward_desc_init(&ed, dnnl_forward_inference, alg, &am, alpha, 0.f);
        if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&pd, &ed, attr, b->engine, NULL);
        if (ds != dnnl_success) dnnl_primitive_attr_destroy(attr);
        DN_CHECK(ds);
        static const int eids[2] = {DNNL_ARG_SRC, DNNL_ARG_DST};
        cz_status st = dn_step_init(b, &e->post, pd, 2, eids);
        if (st != CZ_OK) dnnl_primitive_attr_destroy(attr);
        CZ_TRY(st);
    }
    if (!dnnl_memory_desc_equal(&am, &ym)) {
        pd = NULL;
        ds = dnnl_reorder_primitive_desc_create(&pd, &am, b->engine, &ym, b->engine, attr);
        if (ds != dnnl_success) dnnl_primitive_attr_destroy(attr);
        DN_CHECK(ds);
        static const int rids[2] = {DNNL_ARG_FROM, DNNL_ARG_TO};
        cz_status st = dn_step_init(b, &e->extra, pd, 2, rids);
        if (st != CZ_OK) dnnl_primitive_attr_destroy(attr);
        CZ_TRY(st);
    }
    dnnl_primitive_attr_destroy(attr);
    return CZ_OK;
}

static cz_status gemm_run(dn_backend *b, dn_prim *e, const cz_tensor *x, const cz_tensor *w, void *wp,
                          const float *bias, const cz_conv_params *p, cz_tensor *y) {
    int k = w->h, co = y->c, zc = co * k * k, hi = x->h, wi = x->w, ho = y->h, wo = y->w, s = p->stride;
    int pad = p->pad, blocked = gemm_z_blocked(co, k);
    size_t zplane = (size_t)hi * wi, yplane = (size_t)ho * wo, ysz = cz_tensor_numel(y);
    size_t pstride = blocked ? 16 : 1, zimg = (size_t)zc * zplane;
    void *zp, *ap;
    CZ_TRY(dn_aux(b, 7, (size_t)x->n * zimg * 4, &zp));
    void *ptrs[3] = {x->data, wp, zp};
    CZ_TRY(dn_run(b, &e->main, ptrs));
    float *acc;
    if (e->extra.prim) {
        CZ_TRY(dn_aux(b, 6, ysz * 4, &ap));
        acc = ap;
    } else {
        acc = y->data;
    }
    /* col2im: y[o][ih*s-pad+kh][iw*s-pad+kw] += Z[(o,kh,kw)][ih][iw], channel offsets first */
    size_t zoff[64];
    for (int n = 0; n < x->n; n++) {
        const float *zn = (const float *)zp + (size_t)n * zimg;
        for (int o = 0; o < co; o++) {
            float *yo = acc + ((size_t)n * co + o) * yplane;
            float bv = bias ? bias[o] : 0.f;
            for (size_t i = 0; i < yplane; i++) yo[i] = bv;
            for (int t = 0; t < k * k; t++) {
                size_t c = (size_t)o * k * k + (size_t)t;
                zoff[t] = blocked ? (c / 16) * zplane * 16 + c % 16 : c * zplane;
            }
            for (int ih = 0; ih < hi; ih++)
                for (int kh = 0; kh < k; kh++) {
                    int oh = ih * s - pad + kh;
                    if (oh < 0 || oh >= ho) continue;
                    float *yrow = yo + (size_t)oh * wo;
                    const size_t *zo = zoff + kh * k;
                    for (int iw = 0; iw < wi; iw++) {
                        const float *zpix = zn + ((size_t)ih * wi + iw) * pstride;
                        int ow0 = iw * s - pad;
                        for (int kw = 0; kw < k; kw++) {
                            int ow = ow0 + kw;
                            if (ow >= 0 && ow < wo) yrow[ow] += zpix[zo[kw]];
                        }
                    }
                }
        }
    }
    if (e->post.prim) {
        void *ea[2] = {acc, acc};
        CZ_TRY(dn_run(b, &e->post, ea));
    }
    if (e->extra.prim) {
        void *ra[2] = {acc, y->data};
        CZ_TRY(dn_run(b, &e->extra, ra));
    }
    return CZ_OK;
}

static cz_status conv_build(dn_backend *b, int kind, const cz_tensor *x, const cz_tensor *w,
                            const cz_tensor *bias, const cz_conv_params *p, const cz_tensor *y,
                            dn_prim *e) {
    dnnl_memory_desc_t xm, ym, wany, bm;
    CZ_TRY(dn_tensor_md(x, &xm));
    CZ_TRY(dn_dense_md(y, &ym)); /* a view gets the dense result copied in (e->extra) */
    /* oneDNN has only its reference kernel for a convolution into a plain output with few
     * channels (the PatchGAN's 1-channel last layer: ~170 ms at 256 px instead of <1 ms). For
     * those the primitive picks its own (blocked, channel-padded) output layout and `extra`
     * converts into y, view or not, so both give the same numbers. */
    int few_out = kind == KIND_CONV && y->layout != CZ_DNNL_LAYOUT_NCHW16C && y->c < 16;
    if (dn_is_view(y) && !few_out) {
        dnnl_memory_desc_t vm;
        dnnl_primitive_attr_t rattr = NULL;
        dnnl_primitive_desc_t rpd = NULL;
        CZ_TRY(dn_tensor_md(y, &vm));
        CZ_TRY(dn_attr_make(CZ_ACT_NONE, 0.f, &rattr));
        dnnl_status_t rs = dnnl_reorder_primitive_desc_create(&rpd, &ym, b->engine, &vm, b->engine, rattr);
        dnnl_primitive_attr_destroy(rattr);
        DN_CHECK(rs);
        static const int rids[2] = {DNNL_ARG_FROM, DNNL_ARG_TO};
        CZ_TRY(dn_step_init(b, &e->extra, rpd, 2, rids));
    }
    dnnl_data_type_t cdt = (dnnl_data_type_t)dn_stored_dt(x);
    int k = w->h, s = p->stride, pad = p->pad;
    dnnl_dims_t strides = {s, s}, pl = {pad, pad};
    /* right/bottom padding that makes oneDNN's size arithmetic land on y exactly */
    dnnl_dims_t pr = {pad, pad};
    if (kind == KIND_CONV) {
        pr[0] = (dnnl_dim_t)(y->h - 1) * s + k - x->h - pad;
        pr[1] = (dnnl_dim_t)(y->w - 1) * s + k - x->w - pad;
    }
    /* weight dims as oneDNN sees them (O, I, k, k), and the stored tensor's view of them */
    int wo = kind == KIND_DECONV_BWD ? x->c : y->c, wi = kind == KIND_DECONV_BWD ? y->c : x->c;
    dnnl_format_tag_t stored_tag = kind == KIND_DECONV_FWD ? dnnl_iohw : dnnl_oihw;
    int kh = k, kw = k;
    if (kind == KIND_CONV) { /* drop taps that only see padding (see live_taps) */
        int h0, h1, w0, w1;
        dnnl_dim_t tpl[2], tpr[2];
        if (trim_axis(x->h, y->h, k, s, pad, &h0, &h1, &tpl[0], &tpr[0]) &&
            trim_axis(x->w, y->w, k, s, pad, &w0, &w1, &tpl[1], &tpr[1]) && (h0 > 0 || h1 < k || w0 > 0 || w1 < k)) {
            e->ws.gather = DN_GATHER_TRIM;
            e->ws.th0 = h0, e->ws.th1 = h1, e->ws.tw0 = w0, e->ws.tw1 = w1;
            kh = h1 - h0, kw = w1 - w0;
            pl[0] = tpl[0], pl[1] = tpl[1], pr[0] = tpr[0], pr[1] = tpr[1];
        }
    }
    CZ_TRY(dn_plain_md(wo, wi, kh, kw, cdt, dnnl_format_tag_any, &wany));
    CZ_TRY(dn_plain_md(wo, wi, kh, kw, (dnnl_data_type_t)dn_stored_dt(w), stored_tag, &e->ws.src_md));
    if (bias) {
        dnnl_dims_t bd = {y->c};
        DN_CHECK(dnnl_memory_desc_init_by_tag(&bm, 1, bd, dnnl_f32, dnnl_a));
    }

    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL, hint = NULL;
    dnnl_status_t ds;
    CZ_TRY(dn_attr_make(kind == KIND_DECONV_BWD ? CZ_ACT_NONE : p->act, p->alpha, &attr));
    if (kind == KIND_CONV) {
        dnnl_convolution_desc_t cd;
        dnnl_memory_desc_t yany = ym;
        if (few_out) {
            dnnl_dims_t yd = {y->n, y->c, y->h, y->w};
            DN_CHECK(dnnl_memory_desc_init_by_tag(&yany, 4, yd, ym.data_type, dnnl_format_tag_any));
        }
        ds = dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct, &xm, &wany,
                                                bias ? &bm : NULL, &yany, strides, pl, pr);
        if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&pd, &cd, attr, b->engine, NULL);
    } else if (kind == KIND_DECONV_FWD) {
        dnnl_deconvolution_desc_t dd;
        dnnl_memory_desc_t xany;
        CZ_TRY(dn_few_any(x, &xm, &xany));
        ds = dnnl_deconvolution_forward_desc_init(&dd, dnnl_forward_inference, dnnl_deconvolution_direct, &xany,
                                                  &wany, bias ? &bm : NULL, &ym, strides, pl, pr);
        if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&pd, &dd, attr, b->engine, NULL);
        if (ds == dnnl_success && dn_few_channels(x)) {
            cz_status st = dn_pre_build(b, &xm, dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0), e);
            if (st != CZ_OK) {
                dnnl_primitive_desc_destroy(pd);
                dnnl_primitive_attr_destroy(attr);
                return st;
            }
        }
    } else {
        /* the mirror convolution maps y-shaped tensors to x-shaped ones; its backward-data
         * is our transposed convolution. oneDNN wants the forward pd as a hint. */
        dnnl_convolution_desc_t fd, bd;
        ds = dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct, &ym, &wany,
                                                NULL, &xm, strides, pl, pr);
        if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&hint, &fd, NULL, b->engine, NULL);
        if (ds == dnnl_success)
            ds = dnnl_convolution_backward_data_desc_init(&bd, dnnl_convolution_direct, &ym, &wany, &xm, strides,
                                                          pl, pr);
        if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&pd, &bd, attr, b->engine, hint);
        if (hint) dnnl_primitive_desc_destroy(hint);
    }
    dnnl_primitive_attr_destroy(attr);
    if (ds == dnnl_success && few_out) {
        const dnnl_memory_desc_t *chosen = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
        dnnl_memory_desc_t to;
        cz_status st = dn_tensor_md(y, &to);
        dnnl_primitive_attr_t rattr = NULL;
        dnnl_primitive_desc_t rpd = NULL;
        if (st == CZ_OK) st = dn_attr_make(CZ_ACT_NONE, 0.f, &rattr);
        if (st == CZ_OK) {
            dnnl_status_t rs = dnnl_reorder_primitive_desc_create(&rpd, chosen, b->engine, &to, b->engine, rattr);
            dnnl_primitive_attr_destroy(rattr);
            st = rs == dnnl_success ? CZ_OK : dn_fail(rs, __FILE__, __LINE__, "reorder into a few-channel output");
        }
        static const int rids[2] = {DNNL_ARG_FROM, DNNL_ARG_TO};
        e->extra_src_bytes = dnnl_memory_desc_get_size(chosen);
        if (st == CZ_OK) st = dn_step_init(b, &e->extra, rpd, 2, rids);
        if (st != CZ_OK) {
            dnnl_primitive_desc_destroy(pd);
            return st;
        }
    }
    if (ds != dnnl_success) {
        if (pd) dnnl_primitive_desc_destroy(pd);
        return dn_fail(ds, __FILE__, __LINE__,
                       kind == KIND_CONV ? "convolution primitive descriptor"
                       : kind == KIND_DECONV_FWD ? "deconvolution primitive descriptor"
                                                 : "convolution backward-data primitive descriptor");
    }
    e->ws.md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    e->ws.direct = !e->ws.gather && dnnl_memory_desc_equal(&e->ws.md, &e->ws.src_md);
    if (kind == KIND_DECONV_BWD) {
        static const int ids[3] = {DNNL_ARG_DIFF_DST, DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_SRC};
        CZ_TRY(dn_step_init(b, &e->main, pd, 3, ids));
        /* bias and activation in one more pass over y, in place */
        if (bias || p->act != CZ_ACT_NONE) {
            CZ_TRY(dn_attr_make(p->act, p->alpha, &attr));
            if (bias) {
                dnnl_binary_desc_t bnd;
                dnnl_memory_desc_t b4;
                CZ_TRY(dn_plain_md(1, y->c, 1, 1, dnnl_f32, dnnl_nchw, &b4));
                ds = dnnl_binary_desc_init(&bnd, dnnl_binary_add, &ym, &b4, &ym);
                if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&pd, &bnd, attr, b->engine, NULL);
            } else {
                dnnl_eltwise_desc_t ed;
                dnnl_alg_kind_t alg;
                float a = 0.f;
                dn_act_alg(p->act, p->alpha, &alg, &a);
                dnnl_primitive_attr_destroy(attr);
                CZ_TRY(dn_attr_make(CZ_ACT_NONE, 0.f, &attr));
                ds = dnnl_eltwise_forward_desc_init(&ed, dnnl_forward_inference, alg, &ym, a, 0.f);
                if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&pd, &ed, attr, b->engine, NULL);
            }
            dnnl_primitive_attr_destroy(attr);
            DN_CHECK(ds);
            if (bias) {
                static const int pids[3] = {DNNL_ARG_SRC_0, DNNL_ARG_SRC_1, DNNL_ARG_DST};
                CZ_TRY(dn_step_init(b, &e->post, pd, 3, pids));
            } else {
                static const int pids[2] = {DNNL_ARG_SRC, DNNL_ARG_DST};
                CZ_TRY(dn_step_init(b, &e->post, pd, 2, pids));
            }
        }
    } else if (bias) {
        static const int ids[4] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_BIAS, DNNL_ARG_DST};
        CZ_TRY(dn_step_init(b, &e->main, pd, 4, ids));
    } else {
        static const int ids[3] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST};
        CZ_TRY(dn_step_init(b, &e->main, pd, 3, ids));
    }
    return CZ_OK;
}

cz_status dn_conv_like(cz_backend *be, const char *op, int transposed, const cz_tensor *x, const cz_tensor *w,
                       const cz_tensor *bias, const cz_conv_params *p, cz_tensor *y) {
    dn_backend *b = (dn_backend *)be;
    CZ_TRY(req(op, "x", x));
    CZ_TRY(req(op, "w", w));
    CZ_TRY(opt(op, "b", bias));
    CZ_TRY(req_view(op, "y", y)); /* the one argument that may be a channel view */
    if (!p) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: conv params are NULL", op);
    if (p->stride < 1 || p->pad < 0)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: stride %d / pad %d out of range", op, p->stride, p->pad);
    CZ_TRY(check_act(op, p->act));
    if (w->h != w->w) return cz_error_set(CZ_ERR_SHAPE, "%s: w is [%d,%d,%d,%d], the kernel must be square", op, SHP(w));
    CZ_TRY(no_alias(op, x, y));
    int k = w->h, in_c = transposed ? w->n : w->c, out_c = transposed ? w->c : w->n, oh, ow;
    if (x->c != in_c)
        return cz_error_set(CZ_ERR_SHAPE, "%s: x is [%d,%d,%d,%d] but w [%d,%d,%d,%d] expects %d input channels", op,
                            SHP(x), SHP(w), in_c);
    if (transposed) {
        oh = (x->h - 1) * p->stride - 2 * p->pad + k;
        ow = (x->w - 1) * p->stride - 2 * p->pad + k;
        if (oh < 1 || ow < 1) return cz_error_set(CZ_ERR_SHAPE, "%s: output %dx%d is empty", op, oh, ow);
    } else {
        if (x->h + 2 * p->pad < k || x->w + 2 * p->pad < k)
            return cz_error_set(CZ_ERR_SHAPE, "%s: %dx%d kernel does not fit the padded %dx%d input", op, k, k, x->h,
                                x->w);
        oh = (x->h + 2 * p->pad - k) / p->stride + 1;
        ow = (x->w + 2 * p->pad - k) / p->stride + 1;
    }
    CZ_TRY(want(op, "y", y, x->n, out_c, oh, ow));
    CZ_TRY(want_vec(op, "b", bias, out_c));
    dn_enter(b);

    int kind = KIND_CONV;
    if (transposed) {
        int mode = b->deconv_mode ? b->deconv_mode : CZ_DNNL_DECONV_AUTO;
        kind = mode == 2 ? KIND_DECONV_BWD : KIND_DECONV_FWD;
        if (mode == 3 && phase_ok(x, w, p, y)) kind = KIND_DECONV_PHASE;
        if (y->layout != CZ_DNNL_LAYOUT_NCHW16C && k <= 8) kind = KIND_DECONV_GEMM;
    }
    dn_key key;
    memset(&key, 0, sizeof key);
    key.op = kind == KIND_CONV ? DN_OP_CONV : kind == KIND_DECONV_FWD ? DN_OP_DECONV_FWD : DN_OP_DECONV_BWD;
    key.i[4] = kind;
    key.nt = 3;
    key.t[0] = dn_tkey_of(x);
    key.t[1] = dn_tkey_of(w);
    key.t[2] = dn_tkey_of(y);
    key.i[0] = p->stride;
    key.i[1] = p->pad;
    key.i[2] = (int)p->act;
    key.i[3] = bias != NULL;
    key.f[0] = p->act == CZ_ACT_LRELU ? fbits(p->alpha) : 0;
    uint64_t h;
    dn_prim *e = dn_cache_find(b, &key, &h);
    if (!e) {
        CZ_TRY(dn_cache_new(b, &key, h, &e));
        cz_status st = kind == KIND_DECONV_GEMM    ? gemm_build(b, x, w, p, y, e)
                       : kind == KIND_DECONV_PHASE ? phase_build(b, x, w, bias, p, y, e)
                                                   : conv_build(b, kind, x, w, bias, p, y, e);
        if (st != CZ_OK) {
            dn_prim_discard(e);
            return st;
        }
        dn_cache_insert(b, e);
    }
    void *wp = NULL;
    if (kind != KIND_DECONV_PHASE) CZ_TRY(dn_weights(b, &e->ws, w, &wp));
    float *bp = NULL;
    if (bias) CZ_TRY(vec_f32(b, bias, 0, &bp));
    if (kind == KIND_DECONV_PHASE) {
        CZ_TRY(phase_run(b, e, x, w, bp, y));
    } else if (kind == KIND_DECONV_GEMM) {
        CZ_TRY(gemm_run(b, e, x, w, wp, bp, p, y));
    } else {
        /* direct forms: into y, or into a dense temporary that e->extra copies into the view;
         * a few-channel x converted first when e->pre is set */
        void *yp = y->data, *xp;
        CZ_TRY(dn_pre_run(b, e, x, 3, &xp));
        if (e->extra.prim) {
            dnnl_memory_desc_t dm;
            CZ_TRY(dn_dense_md(y, &dm));
            size_t bytes = e->extra_src_bytes ? e->extra_src_bytes : dnnl_memory_desc_get_size(&dm);
            CZ_TRY(dn_aux(b, 6, bytes, &yp));
        }
        if (kind == KIND_DECONV_BWD) {
            void *ptrs[3] = {xp, wp, yp};
            CZ_TRY(dn_run(b, &e->main, ptrs));
            if (e->post.prim) {
                void *pp[3] = {yp, bp, yp};
                if (!bias) pp[1] = yp;
                CZ_TRY(dn_run(b, &e->post, pp));
            }
        } else if (bias) {
            void *ptrs[4] = {xp, wp, bp, yp};
            CZ_TRY(dn_run(b, &e->main, ptrs));
        } else {
            void *ptrs[3] = {xp, wp, yp};
            CZ_TRY(dn_run(b, &e->main, ptrs));
        }
        if (e->extra.prim) {
            void *ra[2] = {yp, y->data};
            CZ_TRY(dn_run(b, &e->extra, ra));
        }
    }
    dn_note_impl(b, kind == KIND_CONV ? DN_OP_CONV : DN_OP_DECONV_FWD, e->ph ? &e->ph->conv[0] : &e->main);
    dn_touch(y);
    return CZ_OK;
}

static cz_status dn_conv2d(cz_backend *be, const cz_tensor *x, const cz_tensor *w, const cz_tensor *b,
                           const cz_conv_params *p, cz_tensor *y) {
    return dn_conv_like(be, "conv2d", 0, x, w, b, p, y);
}

static cz_status dn_deconv2d(cz_backend *be, const cz_tensor *x, const cz_tensor *w, const cz_tensor *b,
                             const cz_conv_params *p, cz_tensor *y) {
    return dn_conv_like(be, "deconv2d", 1, x, w, b, p, y);
}

void dn_fill_conv_ops(cz_backend_ops *ops) {
    ops->conv2d = dn_conv2d;
    ops->deconv2d = dn_deconv2d;
}
