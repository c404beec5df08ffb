/* test_ops.c: op tests for every backend, through core/backend.h only.
 *   (a) ref self-checks: hand-computed convolutions, deconv as the adjoint of conv, batch norm
 *       against its formula, activations, concat layout, BCE/L1 closed forms, the dropout RNG
 *       pinned to its documented definition, memory ops, shape errors.
 *   (b) parity: every compiled-in backend other than ref that starts here, in fp32 and in each
 *       half type it supports, runs every forward op (and every backward op that it and ref both
 *       implement) on fresh random inputs against ref fp32 (the oracle); ref's own bf16/fp16
 *       storage runs through the same loop. Relative error < 1e-4 (fp32) / 2e-2 (bf16, fp16);
 *       NaN never passes. Batch views (allocated for 4, run with 2) must match a separate
 *       2-image run bit for bit and leave the images beyond the view untouched.
 *   (b') channel views (backend.h): for every backend with view_ok, conv2d/deconv2d/act_fwd
 *       writing into (or act_fwd reading from) channels [0, c) and [c, 2c) of a 2c-channel
 *       tensor, as a batch view of it, in fp32 and bf16, against ref into a plain tensor; every
 *       storage element outside the view must keep the pattern written first; other ops must
 *       refuse views. ref itself has no view_ok and refuses views in every op.
 *   (c) ref backward ops against central finite differences.
 *   (d) merge_lab (the final colorization merge on the device), for every backend that has it,
 *       in fp32, bf16 and fp16 where supported: byte for byte against the host's
 *       cz_render_merge_ab on the ab values tensor_read gives (so half-type rounding is the same
 *       on both sides), a batch of 3 at 256x256 (from a 4-image tensor) and one at 512x256,
 *       several merges in flight, ab rewritten between them (a merge reads what was queued
 *       before it, not after), and the invalid arguments it must refuse. Backends without it
 *       (ref, dnnl: the host merges) print a skip line.
 *   (e) loss_queue / loss_read / adam_multi, for every backend that has them, in fp32 and bf16:
 *       queued losses equal bce_logits_fwd / l1_fwd bit for bit with several in flight;
 *       adam_multi on 40 parameters of varied sizes equals adam_step on each, bit for bit, over
 *       two steps; a NaN or Inf in a gated slot leaves every parameter and moment as it was,
 *       a finite gate updates all of them; and the invalid arguments they must refuse.
 *   (f) step variables (var_set, dropout_fwd_var, adam_multi_var), for every backend that has
 *       them, in fp32 and bf16: the variable forms equal the value forms bit for bit; recorded
 *       once (with a tensor_zero) and replayed with three sets of values, each replay equals
 *       the value forms with that replay's values; var_set refuses to be recorded; a recorded
 *       loss_queue, replayed after an unrecorded loss of another size in its slot, reads back
 *       its own mean; and the invalid arguments they must refuse.
 * Dtype convention in (b): activations and conv weights use the dtype under test; per-channel
 * vectors (bias, BatchNorm parameters and statistics) and the Adam state are fp32.
 * Prints one line per (backend, dtype, op, shape). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "image.h"
#include "testutil.h"

#define TOL_F32 1e-4
#define TOL_HALF 2e-2
#define SENTINEL 7.0f

#define OK(expr)                                                                                    \
    do {                                                                                            \
        cz_status s_ = (expr);                                                                      \
        if (s_ != CZ_OK) fail_msg("%s -> %s (%s)", #expr, cz_strerror(s_), cz_error_detail());      \
    } while (0)

/* Calls a slot, turning a NULL slot into CZ_ERR_UNSUPPORTED. */
#define CALL(be, op, ...)                                                                           \
    ((be)->ops->op ? (be)->ops->op((be), __VA_ARGS__)                                               \
                   : cz_error_set(CZ_ERR_UNSUPPORTED, "%s: slot " #op " is NULL", (be)->ops->name))
#define RUN(expr)                                                                                   \
    do {                                                                                            \
        if (s == CZ_OK) s = (expr);                                                                 \
    } while (0)

static size_t numel4(int n, int c, int h, int w) { return (size_t)n * c * h * w; }

static float *hbuf(size_t n) {
    float *p = calloc(n ? n : 1, sizeof *p);
    assert_non_null(p);
    return p;
}

static float *hrand(size_t n, uint64_t seed, float lo, float hi) {
    float *p = hbuf(n);
    tu_fill_uniform(p, n, seed, lo, hi);
    return p;
}

static cz_backend *ref_backend(void) {
    cz_backend *be = NULL;
    OK(cz_backend_create("ref", NULL, &be));
    return be;
}

/* Allocates and uploads (src NULL: zeros). */
static void put(cz_backend *be, cz_tensor *t, cz_dtype dt, cz_role role, int n, int c, int h, int w,
                const float *src) {
    OK(cz_tensor_alloc(be, t, dt, role, n, c, h, w));
    if (src)
        OK(be->ops->tensor_write(be, t, src));
    else
        OK(be->ops->tensor_zero(be, t));
}

static float *get(cz_backend *be, const cz_tensor *t) {
    float *p = hbuf(cz_tensor_numel(t));
    OK(be->ops->tensor_read(be, t, p));
    return p;
}

static double dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

static double rel_err_d(const double *a, const double *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num) / (den > 1e-30 ? sqrt(den) : 1e-15);
}

static void assert_close(const float *got, const float *want, size_t n, double tol) {
    double e = tu_rel_err(got, want, n);
    if (!(e < tol)) fail_msg("relative error %.3g >= %.3g", e, tol);
}

static double act_ref(cz_act act, double alpha, double v) {
    switch (act) {
    case CZ_ACT_RELU: return v > 0 ? v : 0;
    case CZ_ACT_LRELU: return v > 0 ? v : alpha * v;
    case CZ_ACT_TANH: return tanh(v);
    case CZ_ACT_NONE: break;
    }
    return v;
}

static const char *act_name(cz_act a) {
    switch (a) {
    case CZ_ACT_NONE: return "none";
    case CZ_ACT_RELU: return "relu";
    case CZ_ACT_LRELU: return "lrelu";
    case CZ_ACT_TANH: return "tanh";
    }
    return "?";
}

/* ========================================================================================== */
/* generic op runner: tensor descriptors + a callback that invokes one slot                   */

typedef struct oparg {
    cz_conv_params p;
    int has_bias;
    cz_act act;
    float alpha, eps, mom, prob, target, scale;
    uint64_t seed;
    int acc, inplace;
    double loss;
} oparg;

typedef cz_status (*op_call)(cz_backend *be, cz_tensor *t, oparg *a);

typedef struct tdesc {
    int n, c, h, w;
    cz_role role; /* ACT tensors are allocated for `cap` images and used as an n-image view */
    int f32;      /* fp32 whatever the dtype under test */
    int out;      /* read back after the op */
    float *in;    /* initial contents (cap images for ACT); NULL = SENTINEL */
    const char *name;
} tdesc;

#define MAX_T 8
typedef struct opcase {
    char op[32];
    char label[160];
    size_t slot; /* offsetof(cz_backend_ops, <op>) */
    int is_bwd, f32_only, has_loss;
    op_call call;
    oparg arg;
    int nt;
    tdesc d[MAX_T];
} opcase;

static int slot_present(const cz_backend *be, size_t off) {
    void *p;
    memcpy(&p, (const char *)be->ops + off, sizeof p);
    return p != NULL;
}

static size_t desc_numel(const tdesc *d, int cap) {
    return numel4(d->role == CZ_ROLE_ACT ? cap : d->n, d->c, d->h, d->w);
}

/* Runs one case on `be`; outs[i] receives the full (cap-image) contents of each output. */
static cz_status run_case(cz_backend *be, cz_dtype dt, int cap, opcase *oc, float **outs, double *loss) {
    cz_tensor t[MAX_T];
    memset(t, 0, sizeof t);
    cz_status s = CZ_OK;
    for (int i = 0; i < oc->nt && s == CZ_OK; i++) {
        const tdesc *d = &oc->d[i];
        int alloc_n = d->role == CZ_ROLE_ACT ? cap : d->n;
        RUN(cz_tensor_alloc(be, &t[i], d->f32 ? CZ_F32 : dt, d->role, alloc_n, d->c, d->h, d->w));
        if (s != CZ_OK) break;
        if (d->in) {
            RUN(be->ops->tensor_write(be, &t[i], d->in));
        } else {
            size_t k = desc_numel(d, cap);
            float *tmp = hbuf(k);
            for (size_t j = 0; j < k; j++) tmp[j] = SENTINEL;
            RUN(be->ops->tensor_write(be, &t[i], tmp));
            free(tmp);
        }
        t[i].n = d->n; /* batch view */
    }
    oc->arg.loss = NAN;
    RUN(oc->call(be, t, &oc->arg));
    RUN(be->ops->sync(be));
    for (int i = 0; i < oc->nt && s == CZ_OK; i++) {
        if (!oc->d[i].out) continue;
        cz_tensor full = cz_tensor_batch_view(t[i], t[i].cap_n);
        RUN(be->ops->tensor_read(be, &full, outs[i]));
    }
    if (loss) *loss = oc->arg.loss;
    for (int i = 0; i < oc->nt; i++) cz_tensor_free(be, &t[i]);
    return s;
}

/* ---- callbacks ---- */
static cz_status cb_conv(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, conv2d, &t[0], &t[1], a->has_bias ? &t[2] : NULL, &a->p, &t[3]);
}
static cz_status cb_deconv(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, deconv2d, &t[0], &t[1], a->has_bias ? &t[2] : NULL, &a->p, &t[3]);
}
static cz_status cb_bn_infer(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, bn_infer, &t[0], &t[1], &t[2], &t[3], &t[4], a->eps, &t[5]);
}
static cz_status cb_bn_train(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, bn_train_fwd, &t[0], &t[1], &t[2], a->eps, a->mom, &t[3], &t[4], &t[5], &t[6], &t[7]);
}
static cz_status cb_act(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, act_fwd, a->act, a->alpha, &t[0], a->inplace ? &t[0] : &t[1]);
}
static cz_status cb_concat(cz_backend *be, cz_tensor *t, oparg *a) {
    (void)a;
    return CALL(be, concat, &t[0], &t[1], &t[2]);
}
static cz_status cb_dropout(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, dropout_fwd, a->prob, a->seed, &t[0], &t[1], &t[2]);
}
static cz_status cb_bce(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, bce_logits_fwd, &t[0], a->target, &a->loss);
}
static cz_status cb_l1(cz_backend *be, cz_tensor *t, oparg *a) { return CALL(be, l1_fwd, &t[0], &t[1], &a->loss); }
static cz_status cb_conv_bwd_data(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, conv2d_bwd_data, &t[0], &t[1], &a->p, &t[2]);
}
static cz_status cb_deconv_bwd_data(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, deconv2d_bwd_data, &t[0], &t[1], &a->p, &t[2]);
}
static cz_status cb_conv_bwd_w(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, conv2d_bwd_weights, &t[0], &t[1], &a->p, &t[2], a->has_bias ? &t[3] : NULL, a->acc);
}
static cz_status cb_deconv_bwd_w(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, deconv2d_bwd_weights, &t[0], &t[1], &a->p, &t[2], a->has_bias ? &t[3] : NULL, a->acc);
}
static cz_status cb_bn_bwd(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, bn_train_bwd, &t[0], &t[1], &t[2], &t[3], &t[4], &t[5], &t[6], &t[7], a->acc);
}
static cz_status cb_act_bwd(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, act_bwd, a->act, a->alpha, &t[0], &t[1], &t[2]);
}
static cz_status cb_concat_bwd(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, concat_bwd, &t[0], &t[1], &t[2], a->acc);
}
static cz_status cb_dropout_bwd(cz_backend *be, cz_tensor *t, oparg *a) {
    (void)a;
    return CALL(be, dropout_bwd, &t[0], &t[1], &t[2]);
}
static cz_status cb_bce_bwd(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, bce_logits_bwd, &t[0], a->target, a->scale, &t[1]);
}
static cz_status cb_l1_bwd(cz_backend *be, cz_tensor *t, oparg *a) {
    return CALL(be, l1_bwd, &t[0], &t[1], a->scale, &t[2]);
}
static cz_status cb_adam(cz_backend *be, cz_tensor *t, oparg *a) {
    (void)a;
    for (int step = 1; step <= 3; step++) {
        cz_status s = CALL(be, adam_step, &t[0], &t[1], &t[2], &t[3], 2e-4f, 0.5f, 0.999f, 1e-8f, step);
        if (s != CZ_OK) return s;
    }
    return CZ_OK;
}

/* ---- case construction ---- */
static uint64_t g_seed = 1;

static void oc_init(opcase *oc, const char *op, size_t slot, op_call call, int is_bwd) {
    memset(oc, 0, sizeof *oc);
    snprintf(oc->op, sizeof oc->op, "%s", op);
    oc->slot = slot;
    oc->call = call;
    oc->is_bwd = is_bwd;
}

/* Adds a tensor; `in` for ACT tensors must hold `cap` images (the runner owns it). */
static float *oc_add(opcase *oc, int n, int c, int h, int w, cz_role role, int f32, int out, float lo, float hi,
                     int cap, int fill) {
    assert_true(oc->nt < MAX_T);
    tdesc *d = &oc->d[oc->nt++];
    d->n = n, d->c = c, d->h = h, d->w = w, d->role = role, d->f32 = f32, d->out = out;
    d->in = fill ? hrand(desc_numel(d, cap), g_seed++, lo, hi) : NULL;
    return d->in;
}

static float *oc_add_named(opcase *oc, const char *name, int n, int c, int h, int w, cz_role role, int f32,
                           int out, float lo, float hi, int cap, int fill) {
    float *p = oc_add(oc, n, c, h, w, role, f32, out, lo, hi, cap, fill);
    oc->d[oc->nt - 1].name = name;
    return p;
}

static void oc_free(opcase *oc) {
    for (int i = 0; i < oc->nt; i++) free(oc->d[i].in);
    oc->nt = 0;
}

typedef struct conv_case {
    int n, ic, h, w, oc, k, s, p, bias;
    cz_act act;
} conv_case;

static void conv_out_hw(const conv_case *cc, int tr, int *oh, int *ow) {
    if (tr) {
        *oh = (cc->h - 1) * cc->s - 2 * cc->p + cc->k;
        *ow = (cc->w - 1) * cc->s - 2 * cc->p + cc->k;
    } else {
        *oh = (cc->h + 2 * cc->p - cc->k) / cc->s + 1;
        *ow = (cc->w + 2 * cc->p - cc->k) / cc->s + 1;
    }
}

static void conv_label(opcase *oc, const conv_case *cc, int tr, const char *extra) {
    int oh, ow;
    conv_out_hw(cc, tr, &oh, &ow);
    snprintf(oc->label, sizeof oc->label, "k%ds%dp%d [%d,%d,%d,%d]->[%d,%d,%d,%d]%s%s%s%s", cc->k, cc->s, cc->p, cc->n,
             cc->ic, cc->h, cc->w, cc->n, cc->oc, oh, ow, cc->bias ? " bias" : "",
             cc->act != CZ_ACT_NONE ? " " : "", cc->act != CZ_ACT_NONE ? act_name(cc->act) : "", extra);
}

static void wshape(const conv_case *cc, int tr, int *wn, int *wc) {
    *wn = tr ? cc->ic : cc->oc;
    *wc = tr ? cc->oc : cc->ic;
}

static void case_conv(opcase *oc, const conv_case *cc, int tr, int cap) {
    if (tr)
        oc_init(oc, "deconv2d", offsetof(cz_backend_ops, deconv2d), cb_deconv, 0);
    else
        oc_init(oc, "conv2d", offsetof(cz_backend_ops, conv2d), cb_conv, 0);
    conv_label(oc, cc, tr, "");
    int oh, ow, wn, wc;
    conv_out_hw(cc, tr, &oh, &ow);
    wshape(cc, tr, &wn, &wc);
    float ws = 1.5f / sqrtf((float)(cc->ic * cc->k * cc->k));
    oc_add(oc, cc->n, cc->ic, cc->h, cc->w, CZ_ROLE_ACT, 0, 0, -1, 1, cap, 1);
    oc_add(oc, wn, wc, cc->k, cc->k, tr ? CZ_ROLE_DECONV_W : CZ_ROLE_CONV_W, 0, 0, -ws, ws, cap, 1);
    oc_add(oc, 1, cc->oc, 1, 1, CZ_ROLE_VEC, 1, 0, -0.5f, 0.5f, cap, 1);
    oc_add_named(oc, "y", cc->n, cc->oc, oh, ow, CZ_ROLE_ACT, 0, 1, 0, 0, cap, 0);
    oc->arg.p = (cz_conv_params){cc->s, cc->p, cc->act, 0.2f};
    oc->arg.has_bias = cc->bias;
}

static void shape_label(opcase *oc, int n, int c, int h, int w, const char *extra) {
    snprintf(oc->label, sizeof oc->label, "[%d,%d,%d,%d]%s", n, c, h, w, extra);
}

static void case_bn_infer(opcase *oc, int n, int c, int h, int w, int cap) {
    oc_init(oc, "bn_infer", offsetof(cz_backend_ops, bn_infer), cb_bn_infer, 0);
    shape_label(oc, n, c, h, w, "");
    oc_add(oc, n, c, h, w, CZ_ROLE_ACT, 0, 0, -2, 2, cap, 1);
    oc_add(oc, 1, c, 1, 1, CZ_ROLE_VEC, 1, 0, 0.5f, 1.5f, cap, 1);  /* gamma */
    oc_add(oc, 1, c, 1, 1, CZ_ROLE_VEC, 1, 0, -0.5f, 0.5f, cap, 1); /* beta */
    oc_add(oc, 1, c, 1, 1, CZ_ROLE_VEC, 1, 0, -0.5f, 0.5f, cap, 1); /* mean */
    oc_add(oc, 1, c, 1, 1, CZ_ROLE_VEC, 1, 0, 0.5f, 2.0f, cap, 1);  /* var */
    oc_add_named(oc, "y", n, c, h, w, CZ_ROLE_ACT, 0, 1, 0, 0, cap, 0);
    oc->arg.eps = 1e-5f;
}

static void case_bn_train(opcase *oc, int n, int c, int h, int w, int cap) {
    oc_init(oc, "bn_train_fwd", offsetof(cz_backend_ops, bn_train_fwd), cb_bn_train, 0);
    shape_label(oc, n, c, h, w, " momentum 0.1");
    float *x = oc_add(oc, n, c, h, w, CZ_ROLE_ACT, 0, 0, -1, 1, cap, 1);
    size_t plane = (size_t)h * w;
    for (int i = 0; i < cap; i++) /* per-channel offsets so means are far from zero */
        for (int ch = 0; ch < c; ch++)
            for (size_t j = 0; j < plane; j++) x[((size_t)i * c + ch) * plane + j] += 0.3f * (float)(ch % 5) - 0.6f;
    oc_add(oc, 1, c, 1, 1, CZ_ROLE_VEC, 1, 0, 0.5f, 1.5f, cap, 1);  /* gamma */
    oc_add(oc, 1, c, 1, 1, CZ_ROLE_VEC, 1, 0, -0.5f, 0.5f, cap, 1); /* beta */
    oc_add_named(oc, "running_mean", 1, c, 1, 1, CZ_ROLE_VEC, 1, 1, -0.5f, 0.5f, cap, 1); /* running mean */
    oc_add_named(oc, "running_var", 1, c, 1, 1, CZ_ROLE_VEC, 1, 1, 0.5f, 2.0f, cap, 1);  /* running var */
    oc_add_named(oc, "save_mean", 1, c, 1, 1, CZ_ROLE_VEC, 1, 1, 0, 0, cap, 0);        /* save mean */
    oc_add_named(oc, "save_invstd", 1, c, 1, 1, CZ_ROLE_VEC, 1, 1, 0, 0, cap, 0);        /* save invstd */
    oc_add_named(oc, "y", n, c, h, w, CZ_ROLE_ACT, 0, 1, 0, 0, cap, 0);
    oc->arg.eps = 1e-5f;
    oc->arg.mom = 0.1f;
}

static void case_act(opcase *oc, cz_act act, int inplace, int n, int c, int h, int w, int cap) {
    oc_init(oc, "act_fwd", offsetof(cz_backend_ops, act_fwd), cb_act, 0);
    char extra[64];
    snprintf(extra, sizeof extra, " %s%s", act_name(act), inplace ? " in-place" : "");
    shape_label(oc, n, c, h, w, extra);
    oc_add_named(oc, "y", n, c, h, w, CZ_ROLE_ACT, 0, inplace, -3, 3, cap, 1);
    if (!inplace) oc_add_named(oc, "y", n, c, h, w, CZ_ROLE_ACT, 0, 1, 0, 0, cap, 0);
    oc->arg.act = act;
    oc->arg.alpha = 0.2f;
    oc->arg.inplace = inplace;
}

static void case_concat(opcase *oc, int n, int ca, int cb, int h, int w, int cap) {
    oc_init(oc, "concat", offsetof(cz_backend_ops, concat), cb_concat, 0);
    snprintf(oc->label, sizeof oc->label, "[%d,%d,%d,%d]+[%d,%d,%d,%d]", n, ca, h, w, n, cb, h, w);
    oc_add(oc, n, ca, h, w, CZ_ROLE_ACT, 0, 0, -1, 1, cap, 1);
    oc_add(oc, n, cb, h, w, CZ_ROLE_ACT, 0, 0, -1, 1, cap, 1);
    oc_add_named(oc, "y", n, ca + cb, h, w, CZ_ROLE_ACT, 0, 1, 0, 0, cap, 0);
}

static void case_dropout(opcase *oc, float p, int n, int c, int h, int w, int cap) {
    oc_init(oc, "dropout_fwd", offsetof(cz_backend_ops, dropout_fwd), cb_dropout, 0);
    char extra[64];
    snprintf(extra, sizeof extra, " p %.2f", (double)p);
    shape_label(oc, n, c, h, w, extra);
    oc_add(oc, n, c, h, w, CZ_ROLE_ACT, 0, 0, -1, 1, cap, 1);
    oc_add_named(oc, "mask", n, c, h, w, CZ_ROLE_ACT, 0, 1, 0, 0, cap, 0);
    oc_add_named(oc, "y", n, c, h, w, CZ_ROLE_ACT, 0, 1, 0, 0, cap, 0);
    oc->arg.prob = p;
    oc->arg.seed = 0x5eed0000u + g_seed++;
}

static void case_bce(opcase *oc, float target, int n, int c, int h, int w, int cap) {
    oc_init(oc, "bce_logits_fwd", offsetof(cz_backend_ops, bce_logits_fwd), cb_bce, 0);
    char extra[64];
    snprintf(extra, sizeof extra, " target %g", (double)target);
    shape_label(oc, n, c, h, w, extra);
    oc_add(oc, n, c, h, w, CZ_ROLE_ACT, 0, 0, -4, 4, cap, 1);
    oc->arg.target = target;
    oc->has_loss = 1;
}

/* b = a +- [0.1, 1]: no sign of a-b can flip under half-precision rounding. */
static void separate(float *b, const float *a, size_t k) {
    for (size_t i = 0; i < k; i++) {
        float d = b[i];
        b[i] = a[i] + (d >= 0 ? 0.1f + d : -0.1f + d);
    }
}

static void case_l1(opcase *oc, int n, int c, int h, int w, int cap) {
    oc_init(oc, "l1_fwd", offsetof(cz_backend_ops, l1_fwd), cb_l1, 0);
    shape_label(oc, n, c, h, w, "");
    float *a = oc_add(oc, n, c, h, w, CZ_ROLE_ACT, 0, 0, -1, 1, cap, 1);
    float *b = oc_add(oc, n, c, h, w, CZ_ROLE_ACT, 0, 0, -0.9f, 0.9f, cap, 1);
    separate(b, a, numel4(cap, c, h, w));
    oc->has_loss = 1;
}

/* ---- backward cases ---- */
static void case_conv_bwd_data(opcase *oc, const conv_case *cc, int tr, int cap) {
    if (tr)
        oc_init(oc, "deconv2d_bwd_data", offsetof(cz_backend_ops, deconv2d_bwd_data), cb_deconv_bwd_data, 1);
    else
        oc_init(oc, "conv2d_bwd_data", offsetof(cz_backend_ops, conv2d_bwd_data), cb_conv_bwd_data, 1);
    conv_label(oc, cc, tr, "");
    int oh, ow, wn, wc;
    conv_out_hw(cc, tr, &oh, &ow);
    wshape(cc, tr, &wn, &wc);
    oc_add(oc, cc->n, cc->oc, oh, ow, CZ_ROLE_ACT, 0, 0, -1, 1, cap, 1);
    oc_add(oc, wn, wc, cc->k, cc->k, tr ? CZ_ROLE_DECONV_W : CZ_ROLE_CONV_W, 0, 0, -0.5f, 0.5f, cap, 1);
    oc_add_named(oc, "dx", cc->n, cc->ic, cc->h, cc->w, CZ_ROLE_ACT, 0, 1, 0, 0, cap, 0);
    oc->arg.p = (cz_conv_params){cc->s, cc->p, CZ_ACT_NONE, 0.2f};
}

static void case_conv_bwd_w(opcase *oc, const conv_case *cc, int tr, int acc, int cap) {
    if (tr)
        oc_init(oc, "deconv2d_bwd_weights", offsetof(cz_backend_ops, deconv2d_bwd_weights), cb_deconv_bwd_w, 1);
    else
        oc_init(oc, "conv2d_bwd_weights", offsetof(cz_backend_ops, conv2d_bwd_weights), cb_conv_bwd_w, 1);
    conv_label(oc, cc, tr, acc ? " accumulate" : "");
    int oh, ow, wn, wc;
    conv_out_hw(cc, tr, &oh, &ow);
    wshape(cc, tr, &wn, &wc);
    oc_add(oc, cc->n, cc->ic, cc->h, cc->w, CZ_ROLE_ACT, 0, 0, -1, 1, cap, 1);
    oc_add(oc, cc->n, cc->oc, oh, ow, CZ_ROLE_ACT, 0, 0, -1, 1, cap, 1);
    /* the accumulate cases start from a random gradient, the others from the sentinel */
    oc_add_named(oc, "dw", wn, wc, cc->k, cc->k, tr ? CZ_ROLE_DECONV_W : CZ_ROLE_CONV_W, 0, 1, -2, 2, cap, acc);
    oc_add_named(oc, "db", 1, cc->oc, 1, 1, CZ_ROLE_VEC, 1, 1, -2, 2, cap, acc);
    oc->arg.p = (cz_conv_params){cc->s, cc->p, CZ_ACT_NONE, 0.2f};
    oc->arg.has_bias = cc->bias;
    oc->arg.acc = acc;
}

static void case_bn_bwd(opcase *oc, int n, int c, int h, int w, int acc, int cap) {
    oc_init(oc, "bn_train_bwd", offsetof(cz_backend_ops, bn_train_bwd), cb_bn_bwd, 1);
    shape_label(oc, n, c, h, w, acc ? " accumulate" : "");
    float *x = oc_add(oc, n, c, h, w, CZ_ROLE_ACT, 0, 0, -1, 1, cap, 1);
    oc_add(oc, n, c, h, w, CZ_ROLE_ACT, 0, 0, -1, 1, cap, 1);                /* dy */
    oc_add(oc, 1, c, 1, 1, CZ_ROLE_VEC, 1, 0, 0.5f, 1.5f, cap, 1);           /* gamma */
    float *sm = oc_add(oc, 1, c, 1, 1, CZ_ROLE_VEC, 1, 0, 0, 0, cap, 1);     /* save mean */
    float *si = oc_add(oc, 1, c, 1, 1, CZ_ROLE_VEC, 1, 0, 0, 0, cap, 1);     /* save invstd */
    size_t plane = (size_t)h * w;
    for (int ch = 0; ch < c; ch++) { /* statistics of the n-image view, as the forward saves them */
        double s1 = 0, s2 = 0;
        for (int i = 0; i < n; i++)
            for (size_t j = 0; j < plane; j++) s1 += x[((size_t)i * c + ch) * plane + j];
        double mean = s1 / (double)(n * plane);
        for (int i = 0; i < n; i++)
            for (size_t j = 0; j < plane; j++) {
                double d = x[((size_t)i * c + ch) * plane + j] - mean;
                s2 += d * d;
            }
        sm[ch] = (float)mean;
        si[ch] = (float)(1.0 / sqrt(s2 / (double)(n * plane) + 1e-5));
    }
    oc_add_named(oc, "dx", n, c, h, w, CZ_ROLE_ACT, 0, 1, 0, 0, cap, 0);    /* dx */
    oc_add_named(oc, "dgamma", 1, c, 1, 1, CZ_ROLE_VEC, 1, 1, -1, 1, cap, acc); /* dgamma */
    oc_add_named(oc, "dbeta", 1, c, 1, 1, CZ_ROLE_VEC, 1, 1, -1, 1, cap, acc); /* dbeta */
    oc->arg.acc = acc;
}

static void case_act_bwd(opcase *oc, cz_act act, int n, int c, int h, int w, int cap) {
    oc_init(oc, "act_bwd", offsetof(cz_backend_ops, act_bwd), cb_act_bwd, 1);
    char extra[32];
    snprintf(extra, sizeof extra, " %s", act_name(act));
    shape_label(oc, n, c, h, w, extra);
    float *y = oc_add(oc, n, c, h, w, CZ_ROLE_ACT, 0, 0, -3, 3, cap, 1);
    for (size_t i = 0; i < numel4(cap, c, h, w); i++) y[i] = (float)act_ref(act, 0.2, y[i]);
    oc_add(oc, n, c, h, w, CZ_ROLE_ACT, 0, 0, -1, 1, cap, 1);
    oc_add_named(oc, "dx", n, c, h, w, CZ_ROLE_ACT, 0, 1, 0, 0, cap, 0);
    oc->arg.act = act;
    oc->arg.alpha = 0.2f;
}

static void case_concat_bwd(opcase *oc, int n, int ca, int cb, int h, int w, int acc, int cap) {
    oc_init(oc, "concat_bwd", offsetof(cz_backend_ops, concat_bwd), cb_concat_bwd, 1);
    snprintf(oc->label, sizeof oc->label, "[%d,%d,%d,%d]+[%d,%d,%d,%d]%s", n, ca, h, w, n, cb, h, w,
             acc ? " accumulate" : "");
    oc_add(oc, n, ca + cb, h, w, CZ_ROLE_ACT, 0, 0, -1, 1, cap, 1);
    oc_add_named(oc, "da", n, ca, h, w, CZ_ROLE_ACT, 0, 1, -1, 1, cap, acc);
    oc_add_named(oc, "db", n, cb, h, w, CZ_ROLE_ACT, 0, 1, -1, 1, cap, acc);
    oc->arg.acc = acc;
}

static void case_dropout_bwd(opcase *oc, int n, int c, int h, int w, int cap) {
    oc_init(oc, "dropout_bwd", offsetof(cz_backend_ops, dropout_bwd), cb_dropout_bwd, 1);
    shape_label(oc, n, c, h, w, "");
    float *m = oc_add(oc, n, c, h, w, CZ_ROLE_ACT, 0, 0, 0, 1, cap, 1);
    for (size_t i = 0; i < numel4(cap, c, h, w); i++) m[i] = m[i] < 0.5f ? 0.0f : 2.0f;
    oc_add(oc, n, c, h, w, CZ_ROLE_ACT, 0, 0, -1, 1, cap, 1);
    oc_add_named(oc, "dx", n, c, h, w, CZ_ROLE_ACT, 0, 1, 0, 0, cap, 0);
}

static void case_bce_bwd(opcase *oc, float target, int n, int c, int h, int w, int cap) {
    oc_init(oc, "bce_logits_bwd", offsetof(cz_backend_ops, bce_logits_bwd), cb_bce_bwd, 1);
    char extra[64];
    snprintf(extra, sizeof extra, " target %g scale 0.5", (double)target);
    shape_label(oc, n, c, h, w, extra);
    oc_add(oc, n, c, h, w, CZ_ROLE_ACT, 0, 0, -4, 4, cap, 1);
    oc_add_named(oc, "dx", n, c, h, w, CZ_ROLE_ACT, 0, 1, 0, 0, cap, 0);
    oc->arg.target = target;
    oc->arg.scale = 0.5f;
}

static void case_l1_bwd(opcase *oc, int n, int c, int h, int w, int cap) {
    oc_init(oc, "l1_bwd", offsetof(cz_backend_ops, l1_bwd), cb_l1_bwd, 1);
    shape_label(oc, n, c, h, w, " scale 100");
    float *a = oc_add(oc, n, c, h, w, CZ_ROLE_ACT, 0, 0, -1, 1, cap, 1);
    float *b = oc_add(oc, n, c, h, w, CZ_ROLE_ACT, 0, 0, -0.9f, 0.9f, cap, 1);
    separate(b, a, numel4(cap, c, h, w));
    oc_add_named(oc, "da", n, c, h, w, CZ_ROLE_ACT, 0, 1, 0, 0, cap, 0);
    oc->arg.scale = 100.0f;
}

static void case_adam(opcase *oc, int c, int h, int w) {
    oc_init(oc, "adam_step", offsetof(cz_backend_ops, adam_step), cb_adam, 1);
    snprintf(oc->label, sizeof oc->label, "[%d,%d,%d,%d] 3 steps", c, c, h, w);
    oc_add_named(oc, "param", c, c, h, w, CZ_ROLE_CONV_W, 1, 1, -1, 1, 1, 1);
    oc_add(oc, c, c, h, w, CZ_ROLE_CONV_W, 1, 0, -1, 1, 1, 1);
    oc_add_named(oc, "m", c, c, h, w, CZ_ROLE_CONV_W, 1, 1, -0.1f, 0.1f, 1, 1);
    oc_add_named(oc, "v", c, c, h, w, CZ_ROLE_CONV_W, 1, 1, 0.0f, 0.01f, 1, 1);
    oc->f32_only = 1;
}

/* The U-Net / PatchGAN shapes the parity loop covers. */
static const conv_case k_conv_cases[] = {
    {1, 1, 64, 64, 8, 4, 2, 1, 0, CZ_ACT_NONE},    /* outermost down, 64x64 */
    {3, 8, 32, 32, 16, 4, 2, 1, 0, CZ_ACT_LRELU},  /* level 1, batch 3 */
    {1, 16, 2, 2, 16, 4, 2, 1, 0, CZ_ACT_RELU},    /* innermost down 2x2 -> 1x1 */
    {3, 16, 2, 2, 16, 4, 2, 1, 1, CZ_ACT_NONE},    /* same, batch 3, bias */
    {3, 3, 17, 13, 2, 4, 2, 1, 1, CZ_ACT_TANH},    /* odd channels and sizes */
    {2, 2, 8, 8, 3, 4, 2, 1, 1, CZ_ACT_LRELU},     /* 2 -> 3 channels */
    {2, 16, 8, 8, 1, 4, 1, 1, 1, CZ_ACT_NONE},     /* PatchGAN last conv, stride 1 */
    {1, 8, 9, 9, 16, 4, 1, 1, 0, CZ_ACT_LRELU},    /* PatchGAN stride-1 conv */
    {3, 2, 10, 7, 3, 3, 1, 1, 1, CZ_ACT_RELU},     /* 3x3 same conv */
};
static const conv_case k_deconv_cases[] = {
    {1, 64, 16, 16, 32, 4, 2, 1, 0, CZ_ACT_NONE},  /* up conv 64 -> 32 at 16x16 */
    {3, 16, 1, 1, 16, 4, 2, 1, 0, CZ_ACT_NONE},    /* innermost up 1x1 -> 2x2, batch 3 */
    {1, 16, 1, 1, 8, 4, 2, 1, 1, CZ_ACT_RELU},     /* with bias and relu */
    {1, 16, 32, 32, 2, 4, 2, 1, 1, CZ_ACT_TANH},   /* outermost up: bias + tanh */
    {3, 3, 5, 7, 3, 4, 2, 1, 1, CZ_ACT_LRELU},     /* odd */
    {2, 8, 8, 8, 3, 4, 2, 1, 0, CZ_ACT_RELU},      /* 8 -> 3 */
    {2, 40, 9, 37, 2, 4, 2, 1, 1, CZ_ACT_TANH},    /* outermost up, wider: conv_thin.cu's tiles and channel passes */
    {2, 4, 6, 6, 2, 3, 1, 1, 1, CZ_ACT_NONE},      /* stride 1 */
};
/* 70x70 PatchGAN at its real widths (3 -> 64 -> 128 -> 256 -> 512 -> 1), spatial sizes cut so
 * that the ref oracle stays quick, plus the exact 32 -> 31 -> 30 stride-1 tail of a 256 input
 * at reduced width; forward, backward-data and backward-weights each. */
static const conv_case k_patchgan_cases[] = {
    {2, 3, 32, 32, 64, 4, 2, 1, 1, CZ_ACT_LRELU},    /* first conv: L+ab in, bias */
    {1, 64, 16, 16, 128, 4, 2, 1, 0, CZ_ACT_NONE},   /* s2, BN follows */
    {1, 128, 8, 8, 256, 4, 2, 1, 0, CZ_ACT_NONE},    /* s2 */
    {1, 256, 5, 5, 512, 4, 1, 1, 0, CZ_ACT_NONE},    /* s1, 5 -> 4 */
    {2, 512, 4, 4, 1, 4, 1, 1, 1, CZ_ACT_NONE},      /* last conv, 1 output channel, 4 -> 3 */
    {1, 32, 32, 32, 32, 4, 1, 1, 0, CZ_ACT_LRELU},   /* 32 -> 31 */
    {1, 32, 31, 31, 1, 4, 1, 1, 1, CZ_ACT_NONE},     /* 31 -> 30 patch map */
};
#define NPATCH (sizeof k_patchgan_cases / sizeof k_patchgan_cases[0])
#define NCONV (sizeof k_conv_cases / sizeof k_conv_cases[0])
#define NDECONV (sizeof k_deconv_cases / sizeof k_deconv_cases[0])

static const int k_shapes[][4] = {{1, 8, 32, 32}, {3, 16, 2, 2}, {2, 3, 5, 7}, {4, 64, 1, 1}, {3, 2, 16, 16}};
#define NSHAPES (sizeof k_shapes / sizeof k_shapes[0])

/* Builds every case (forward then backward); returns the count. */
static int build_cases(opcase **out) {
    int cap = 0, k = 0;
    opcase *v = NULL;
#define NEXT() (k == cap ? (v = realloc(v, sizeof *v * (size_t)(cap = cap ? 2 * cap : 64)), assert_non_null(v), &v[k++]) : &v[k++])
    for (size_t i = 0; i < NCONV; i++) case_conv(NEXT(), &k_conv_cases[i], 0, k_conv_cases[i].n);
    for (size_t i = 0; i < NDECONV; i++) case_conv(NEXT(), &k_deconv_cases[i], 1, k_deconv_cases[i].n);
    for (size_t i = 0; i < NSHAPES; i++) {
        const int *s = k_shapes[i];
        case_bn_infer(NEXT(), s[0], s[1], s[2], s[3], s[0]);
        case_bn_train(NEXT(), s[0], s[1], s[2], s[3], s[0]);
    }
    for (int a = 0; a < 4; a++) {
        case_act(NEXT(), (cz_act)a, 0, 3, 8, 16, 16, 3);
        case_act(NEXT(), (cz_act)a, 1, 1, 5, 7, 9, 1);
    }
    case_concat(NEXT(), 1, 8, 8, 32, 32, 1);
    case_concat(NEXT(), 3, 3, 2, 4, 4, 3);
    case_concat(NEXT(), 2, 64, 64, 1, 1, 2);
    case_dropout(NEXT(), 0.5f, 1, 64, 8, 8, 1);
    case_dropout(NEXT(), 0.3f, 3, 5, 4, 4, 3);
    case_bce(NEXT(), 1.0f, 1, 1, 30, 30, 1);
    case_bce(NEXT(), 0.0f, 3, 1, 6, 6, 3);
    case_l1(NEXT(), 1, 2, 64, 64, 1);
    case_l1(NEXT(), 3, 2, 7, 9, 3);
    /* backward */
    for (size_t i = 0; i < NCONV; i += 2) {
        case_conv_bwd_data(NEXT(), &k_conv_cases[i], 0, k_conv_cases[i].n);
        case_conv_bwd_w(NEXT(), &k_conv_cases[i], 0, (int)(i / 2) % 2, k_conv_cases[i].n);
    }
    for (size_t i = 0; i < NDECONV; i++) {
        case_conv_bwd_data(NEXT(), &k_deconv_cases[i], 1, k_deconv_cases[i].n);
        case_conv_bwd_w(NEXT(), &k_deconv_cases[i], 1, (int)i % 2, k_deconv_cases[i].n);
    }
    for (size_t i = 0; i < NPATCH; i++) {
        const conv_case *pc = &k_patchgan_cases[i];
        case_conv(NEXT(), pc, 0, pc->n);
        case_conv_bwd_data(NEXT(), pc, 0, pc->n);
        case_conv_bwd_w(NEXT(), pc, 0, (int)i % 2, pc->n);
    }
    case_bn_bwd(NEXT(), 3, 16, 2, 2, 0, 3);
    case_bn_bwd(NEXT(), 1, 8, 32, 32, 1, 1);
    case_bn_bwd(NEXT(), 2, 64, 8, 8, 1, 2);   /* PatchGAN-width BatchNorm, blocked layout */
    for (int a = 1; a < 4; a++) case_act_bwd(NEXT(), (cz_act)a, 3, 8, 16, 16, 3);
    case_concat_bwd(NEXT(), 3, 3, 2, 4, 4, 0, 3);
    case_concat_bwd(NEXT(), 1, 8, 8, 32, 32, 1, 1);
    case_dropout_bwd(NEXT(), 3, 5, 4, 4, 3);
    case_bce_bwd(NEXT(), 1.0f, 3, 1, 6, 6, 3);
    case_bce_bwd(NEXT(), 0.0f, 1, 1, 30, 30, 1);
    case_l1_bwd(NEXT(), 3, 2, 7, 9, 3);
    case_adam(NEXT(), 8, 4, 4);
#undef NEXT
    *out = v;
    return k;
}

/* ========================================================================================== */
/* (b) parity loop                                                                             */

typedef struct parity_stats {
    int ran, skipped, failed;
} parity_stats;

/* Runs one case on `be` in `dt` against ref fp32; prints one line. */
static void parity_case(cz_backend *ref, cz_backend *be, cz_dtype dt, opcase *oc, parity_stats *st) {
    char tag[64];
    snprintf(tag, sizeof tag, "[%s %s]", be->ops->name, cz_dtype_name(dt));
    if (!slot_present(be, oc->slot) || !slot_present(ref, oc->slot)) {
        if (!oc->is_bwd) {
            printf("%s %-20s %-48s FAIL: forward slot is NULL\n", tag, oc->op, oc->label);
            st->failed++;
        } else {
            printf("%s %-20s %-48s skipped: slot NULL in %s\n", tag, oc->op, oc->label,
                   slot_present(be, oc->slot) ? "ref" : be->ops->name);
            st->skipped++;
        }
        return;
    }
    if (oc->f32_only && dt != CZ_F32) {
        printf("%s %-20s %-48s skipped: fp32 only\n", tag, oc->op, oc->label);
        st->skipped++;
        return;
    }
    float *ro[MAX_T] = {0}, *bo[MAX_T] = {0};
    for (int i = 0; i < oc->nt; i++)
        if (oc->d[i].out) {
            ro[i] = hbuf(desc_numel(&oc->d[i], oc->d[i].n));
            bo[i] = hbuf(desc_numel(&oc->d[i], oc->d[i].n));
        }
    double rloss = NAN, bloss = NAN;
    int cap = oc->d[0].role == CZ_ROLE_ACT ? oc->d[0].n : 1;
    cz_status rs = run_case(ref, CZ_F32, cap, oc, ro, &rloss);
    if (rs != CZ_OK) fail_msg("ref failed on %s %s: %s", oc->op, oc->label, cz_error_detail());
    cz_status bs = run_case(be, dt, cap, oc, bo, &bloss);
    double tol = dt == CZ_F32 ? TOL_F32 : TOL_HALF;
    char msg[256] = "";
    size_t used = 0;
    int bad = 0;
    if (bs != CZ_OK) {
        snprintf(msg, sizeof msg, "error %s: %s", cz_strerror(bs), cz_error_detail());
        bad = 1;
    } else {
        for (int i = 0; i < oc->nt; i++) {
            if (!oc->d[i].out) continue;
            double e = tu_rel_err(bo[i], ro[i], desc_numel(&oc->d[i], oc->d[i].n));
            if (!(e < tol)) bad = 1;
            used += (size_t)snprintf(msg + used, sizeof msg - used, "%s%s %.2e", used ? ", " : "",
                                     oc->d[i].name ? oc->d[i].name : "out", e);
            if (used >= sizeof msg) used = sizeof msg - 1;
        }
        if (oc->has_loss) {
            double e = fabs(bloss - rloss) / fmax(fabs(rloss), 1e-30);
            if (!(e < tol)) bad = 1;
            snprintf(msg + used, sizeof msg - used, "%sloss %.2e", used ? ", " : "", e);
        }
    }
    printf("%s %-20s %-48s %s %s\n", tag, oc->op, oc->label, bad ? "FAIL" : "ok", msg);
    st->ran++;
    st->failed += bad;
    for (int i = 0; i < oc->nt; i++) {
        free(ro[i]);
        free(bo[i]);
    }
}

static float round_to(cz_dtype dt, float v) {
    return dt == CZ_BF16 ? cz_bf16_to_f32(cz_f32_to_bf16(v)) : dt == CZ_F16 ? cz_f16_to_f32(cz_f32_to_f16(v)) : v;
}

/* Batch view: allocated for 4, used with 2, against a separate 2-image run, bit for bit; the
 * outputs' images 2 and 3 must keep the sentinel. */
static void batch_view_case(cz_backend *be, cz_dtype dt, opcase *oc, parity_stats *st) {
    const int cap = 4;
    float *big[MAX_T] = {0}, *small[MAX_T] = {0};
    for (int i = 0; i < oc->nt; i++)
        if (oc->d[i].out) {
            big[i] = hbuf(desc_numel(&oc->d[i], cap));
            small[i] = hbuf(desc_numel(&oc->d[i], oc->d[i].n));
        }
    double lb = NAN, ls = NAN;
    cz_status s1 = run_case(be, dt, cap, oc, big, &lb);
    cz_status s2 = run_case(be, dt, oc->d[0].n, oc, small, &ls);
    int bad = s1 != CZ_OK || s2 != CZ_OK;
    const char *why = bad ? cz_error_detail() : "";
    for (int i = 0; i < oc->nt && !bad; i++) {
        if (!oc->d[i].out) continue;
        size_t k = desc_numel(&oc->d[i], oc->d[i].n), kb = desc_numel(&oc->d[i], cap);
        if (memcmp(big[i], small[i], k * sizeof(float)) != 0) {
            bad = 1;
            why = "view differs from the separate run";
        }
        const float *in = oc->d[i].in; /* in-place outputs keep their input beyond the view */
        cz_dtype sdt = oc->d[i].f32 ? CZ_F32 : dt;
        for (size_t j = k; j < kb && !bad; j++)
            if (big[i][j] != round_to(sdt, in ? in[j] : SENTINEL)) {
                bad = 1;
                why = "wrote beyond the batch view";
            }
    }
    if (!bad && oc->has_loss && memcmp(&lb, &ls, sizeof lb) != 0) {
        bad = 1;
        why = "loss differs";
    }
    printf("[%s %s] %-20s %-48s batch view 2 of 4: %s %s\n", be->ops->name, cz_dtype_name(dt), oc->op,
           oc->label, bad ? "FAIL" : "ok (bit-exact)", why);
    st->ran++;
    st->failed += bad;
    for (int i = 0; i < oc->nt; i++) {
        free(big[i]);
        free(small[i]);
    }
}

static void run_parity(cz_backend *ref, cz_backend *be, cz_dtype dt, parity_stats *st) {
    opcase *cases;
    int n = build_cases(&cases);
    for (int i = 0; i < n; i++) {
        parity_case(ref, be, dt, &cases[i], st);
        oc_free(&cases[i]);
    }
    free(cases);

    /* batch views, cap 4 / n 2, one case per op family that takes a batch */
    opcase oc;
    conv_case cv = {2, 3, 9, 9, 4, 4, 2, 1, 1, CZ_ACT_LRELU};
    conv_case dc = {2, 4, 3, 5, 3, 4, 2, 1, 1, CZ_ACT_TANH};
    for (int which = 0; which < 9; which++) {
        switch (which) {
        case 0: case_conv(&oc, &cv, 0, 4); break;
        case 1: case_conv(&oc, &dc, 1, 4); break;
        case 2: case_bn_infer(&oc, 2, 3, 4, 5, 4); break;
        case 3: case_bn_train(&oc, 2, 3, 4, 5, 4); break;
        case 4: case_act(&oc, CZ_ACT_LRELU, 1, 2, 3, 4, 5, 4); break;
        case 5: case_concat(&oc, 2, 3, 2, 4, 5, 4); break;
        case 6: case_dropout(&oc, 0.5f, 2, 3, 4, 5, 4); break;
        case 7: case_bce(&oc, 1.0f, 2, 1, 4, 5, 4); break;
        default: case_l1(&oc, 2, 2, 4, 5, 4); break;
        }
        if (slot_present(be, oc.slot)) batch_view_case(be, dt, &oc, st);
        oc_free(&oc);
    }
}

static void test_backend_parity(void **state) {
    (void)state;
    cz_backend *ref = ref_backend();
    parity_stats st = {0};
    /* the comparison itself: NaN and Inf never pass */
    const float good[2] = {1, 2}, nan2[2] = {1, NAN}, inf2[2] = {INFINITY, 2};
    assert_false(tu_rel_err(nan2, good, 2) < TOL_HALF);
    assert_false(tu_rel_err(good, nan2, 2) < TOL_HALF);
    assert_false(tu_rel_err(inf2, good, 2) < TOL_HALF);
    const char *const *names = cz_backend_names();
    for (int i = 0; names[i]; i++) {
        cz_backend *be = NULL;
        int is_ref = !strcmp(names[i], "ref");
        if (is_ref) {
            be = ref_backend();
        } else if (cz_backend_create(names[i], NULL, &be) != CZ_OK) {
            printf("skipped: %s not available (%s)\n", names[i], cz_error_detail());
            continue;
        }
        const cz_dtype dts[3] = {CZ_F32, CZ_BF16, CZ_F16};
        for (int d = 0; d < 3; d++) {
            if (is_ref && dts[d] == CZ_F32) continue; /* the oracle itself */
            if (!be->ops->supports(be, dts[d])) {
                printf("skipped: %s %s not supported\n", names[i], cz_dtype_name(dts[d]));
                continue;
            }
            run_parity(ref, be, dts[d], &st);
        }
        /* batch views for the oracle itself too */
        if (is_ref) {
            parity_stats bst = {0};
            opcase oc;
            conv_case cv = {2, 3, 9, 9, 4, 4, 2, 1, 1, CZ_ACT_LRELU};
            case_conv(&oc, &cv, 0, 4);
            batch_view_case(be, CZ_F32, &oc, &bst);
            oc_free(&oc);
            case_bn_train(&oc, 2, 3, 4, 5, 4);
            batch_view_case(be, CZ_F32, &oc, &bst);
            oc_free(&oc);
            st.ran += bst.ran;
            st.failed += bst.failed;
        }
        cz_backend_destroy(be);
    }
    printf("parity: %d cases ran, %d skipped, %d failed\n", st.ran, st.skipped, st.failed);
    fflush(stdout);
    cz_backend_destroy(ref);
    assert_int_equal(st.failed, 0);
}

/* ========================================================================================== */
/* (b') channel views: every backend with view_ok, against ref into a plain tensor             */

/* What a view case runs: the op writes (or, for ACT_FROM_VIEW, reads) channels [c0, c0+c) of a
 * storage tensor with 2*c channels, c0 = 0 or c, allocated for n+1 images and used as an
 * n-image batch view, so channels outside the view and the image beyond the batch view must
 * keep their pattern. */
typedef enum view_kind { VK_CONV, VK_DECONV, VK_ACT, VK_ACT_INPLACE, VK_ACT_FROM_VIEW } view_kind;

typedef struct view_case {
    const char *label;
    view_kind kind;
    int n, ci, h, w, co, k, s, p, bias;
    cz_act act;
} view_case;

static const view_case k_view_cases[] = {
    {"up conv 64->32 8x8 (phase)", VK_DECONV, 2, 64, 8, 8, 32, 4, 2, 1, 1, CZ_ACT_RELU},
    {"innermost up 32->32 1x1", VK_DECONV, 2, 32, 1, 1, 32, 4, 2, 1, 0, CZ_ACT_RELU},
    {"up conv 16->16 4x4", VK_DECONV, 1, 16, 4, 4, 16, 4, 2, 1, 1, CZ_ACT_RELU},
    {"up conv 8->3 plain", VK_DECONV, 2, 8, 4, 4, 3, 4, 2, 1, 1, CZ_ACT_TANH},
    {"down conv 16->32 16x16", VK_CONV, 2, 16, 16, 16, 32, 4, 2, 1, 0, CZ_ACT_LRELU},
    {"first conv 1->16 32x32", VK_CONV, 1, 1, 32, 32, 16, 4, 2, 1, 0, CZ_ACT_NONE},
    {"conv 3->5 plain", VK_CONV, 2, 3, 9, 9, 5, 4, 2, 1, 1, CZ_ACT_LRELU},
    {"relu skip 32ch 8x8", VK_ACT, 2, 32, 8, 8, 32, 0, 0, 0, 0, CZ_ACT_RELU},
    {"relu skip 3ch plain", VK_ACT, 2, 3, 5, 7, 3, 0, 0, 0, 0, CZ_ACT_RELU},
    {"lrelu in place 16ch", VK_ACT_INPLACE, 2, 16, 6, 6, 16, 0, 0, 0, 0, CZ_ACT_LRELU},
    {"tanh view -> dense 32ch", VK_ACT_FROM_VIEW, 2, 32, 4, 4, 32, 0, 0, 0, 0, CZ_ACT_TANH},
};
#define NVIEW (sizeof k_view_cases / sizeof k_view_cases[0])

static float view_pattern(size_t i) { return 5.0f + 0.25f * (float)(i % 7); }

/* Copies channels [c0, c0+c) of images [0, n) out of / into a dense host storage (cs channels). */
static void view_gather(const float *st, int n, int cs, int c0, int c, size_t hw, float *out) {
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * c * hw, st + ((size_t)i * cs + c0) * hw, (size_t)c * hw * sizeof *out);
}
static void view_scatter(float *st, int n, int cs, int c0, int c, size_t hw, const float *in) {
    for (int i = 0; i < n; i++)
        memcpy(st + ((size_t)i * cs + c0) * hw, in + (size_t)i * c * hw, (size_t)c * hw * sizeof *in);
}

/* One case at channel offset c0 on `be` in `dt`; returns 0 ok, 1 failed, -1 skipped (view_ok
 * refuses this geometry). msg gets the detail. */
static int view_case_run(cz_backend *ref, cz_backend *be, cz_dtype dt, const view_case *vc, int c0, char *msg,
                         size_t msz) {
    const int n = vc->n, cap = n + 1;
    int is_act = vc->kind >= VK_ACT, tr = vc->kind == VK_DECONV;
    int oh = vc->h, ow = vc->w;
    if (vc->kind == VK_CONV) {
        oh = (vc->h + 2 * vc->p - vc->k) / vc->s + 1;
        ow = (vc->w + 2 * vc->p - vc->k) / vc->s + 1;
    } else if (tr) {
        oh = (vc->h - 1) * vc->s - 2 * vc->p + vc->k;
        ow = (vc->w - 1) * vc->s - 2 * vc->p + vc->k;
    }
    const int c = vc->co, cs = 2 * c;
    /* the storage holds the view: the output, or for VK_ACT_FROM_VIEW the input */
    const int sh = vc->kind == VK_ACT_FROM_VIEW ? vc->h : oh, sw = vc->kind == VK_ACT_FROM_VIEW ? vc->w : ow;
    const size_t shw = (size_t)sh * sw, xk = numel4(cap, vc->ci, vc->h, vc->w);
    float *xin = hrand(xk, g_seed++, -2.f, 2.f);
    float *win = tr ? hrand(numel4(vc->ci, c, vc->k, vc->k), g_seed++, -0.3f, 0.3f)
                    : hrand(numel4(c, vc->ci, vc->k ? vc->k : 1, vc->k ? vc->k : 1), g_seed++, -0.3f, 0.3f);
    float *bin = hrand((size_t)c, g_seed++, -0.5f, 0.5f);
    size_t sk = numel4(cap, cs, sh, sw);
    float *pat = hbuf(sk), *got = hbuf(sk), *want = hbuf(numel4(n, c, oh, ow)), *view_now = hbuf(numel4(n, c, oh, ow));
    for (size_t i = 0; i < sk; i++) pat[i] = view_pattern(i);
    cz_conv_params p = {vc->s, vc->p, vc->act, 0.2f};
    int rc = 0;
    cz_status s = CZ_OK;

    /* ---- ref into plain tensors, fp32 ---- */
    cz_tensor rx, rw, rb, ry;
    memset(&rw, 0, sizeof rw);
    memset(&rb, 0, sizeof rb);
    put(ref, &rx, CZ_F32, CZ_ROLE_ACT, n, vc->ci, vc->h, vc->w, xin);
    put(ref, &ry, CZ_F32, CZ_ROLE_ACT, n, c, oh, ow, NULL);
    if (!is_act) {
        if (tr)
            put(ref, &rw, CZ_F32, CZ_ROLE_DECONV_W, vc->ci, c, vc->k, vc->k, win);
        else
            put(ref, &rw, CZ_F32, CZ_ROLE_CONV_W, c, vc->ci, vc->k, vc->k, win);
        put(ref, &rb, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, bin);
        if (tr)
            OK(ref->ops->deconv2d(ref, &rx, &rw, vc->bias ? &rb : NULL, &p, &ry));
        else
            OK(ref->ops->conv2d(ref, &rx, &rw, vc->bias ? &rb : NULL, &p, &ry));
    } else {
        OK(ref->ops->act_fwd(ref, vc->act, 0.2f, &rx, &ry));
    }
    OK(ref->ops->tensor_read(ref, &ry, want));

    /* ---- the backend: a storage tensor and a batch view of a channel view of it ---- */
    cz_tensor bx, bw, bb, st, by;
    memset(&bx, 0, sizeof bx);
    memset(&bw, 0, sizeof bw);
    memset(&bb, 0, sizeof bb);
    memset(&by, 0, sizeof by);
    OK(cz_tensor_alloc(be, &st, dt, CZ_ROLE_ACT, cap, cs, sh, sw));
    if (!be->ops->view_ok(be, &st, c0, c)) {
        snprintf(msg, msz, "skipped: view_ok refuses channels %d..%d of %d", c0, c0 + c - 1, cs);
        rc = -1;
        goto done;
    }
    cz_tensor v = cz_tensor_batch_view(cz_tensor_channel_view(st, c0, c), n);
    if (vc->kind == VK_ACT_INPLACE || vc->kind == VK_ACT_FROM_VIEW) view_scatter(pat, cap, cs, c0, c, shw, xin);
    OK(be->ops->tensor_write(be, &st, pat));
    if (vc->kind == VK_ACT_INPLACE) {
        s = be->ops->act_fwd(be, vc->act, 0.2f, &v, &v);
    } else if (vc->kind == VK_ACT_FROM_VIEW) {
        float *sent = hbuf(numel4(cap, c, oh, ow));
        for (size_t i = 0; i < numel4(cap, c, oh, ow); i++) sent[i] = SENTINEL;
        put(be, &by, dt, CZ_ROLE_ACT, cap, c, oh, ow, sent);
        free(sent);
        cz_tensor yv = cz_tensor_batch_view(by, n);
        s = be->ops->act_fwd(be, vc->act, 0.2f, &v, &yv);
    } else {
        put(be, &bx, dt, CZ_ROLE_ACT, cap, vc->ci, vc->h, vc->w, xin);
        cz_tensor xv = cz_tensor_batch_view(bx, n);
        if (vc->kind == VK_ACT) {
            s = be->ops->act_fwd(be, vc->act, 0.2f, &xv, &v);
        } else {
            if (tr)
                put(be, &bw, dt, CZ_ROLE_DECONV_W, vc->ci, c, vc->k, vc->k, win);
            else
                put(be, &bw, dt, CZ_ROLE_CONV_W, c, vc->ci, vc->k, vc->k, win);
            put(be, &bb, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, bin);
            const cz_tensor *bp = vc->bias ? &bb : NULL;
            s = tr ? be->ops->deconv2d(be, &xv, &bw, bp, &p, &v) : be->ops->conv2d(be, &xv, &bw, bp, &p, &v);
        }
    }
    if (s == CZ_OK) s = be->ops->sync(be);
    if (s != CZ_OK) {
        snprintf(msg, msz, "error %s: %s", cz_strerror(s), cz_error_detail());
        rc = 1;
        goto done;
    }
    OK(be->ops->tensor_read(be, &st, got));
    /* the result: in the view, or in the dense y when the view was the input */
    if (vc->kind == VK_ACT_FROM_VIEW) {
        float *yall = get(be, &by);
        memcpy(view_now, yall, numel4(n, c, oh, ow) * sizeof *yall);
        for (size_t i = numel4(n, c, oh, ow); i < numel4(cap, c, oh, ow) && !rc; i++)
            if (yall[i] != round_to(dt, SENTINEL)) rc = 1, snprintf(msg, msz, "wrote beyond y's batch view");
        free(yall);
    } else {
        view_gather(got, n, cs, c0, c, shw, view_now);
    }
    double e = tu_rel_err(view_now, want, numel4(n, c, oh, ow));
    double tol = dt == CZ_F32 ? TOL_F32 : TOL_HALF;
    if (!rc && !(e < tol)) rc = 1, snprintf(msg, msz, "rel err %.2e", e);
    /* everything else in the storage keeps what was written (for FROM_VIEW: all of it) */
    float *expect = hbuf(sk);
    memcpy(expect, pat, sk * sizeof *expect);
    if (vc->kind != VK_ACT_FROM_VIEW) view_scatter(expect, n, cs, c0, c, shw, view_now);
    for (size_t i = 0; i < sk && !rc; i++) {
        float w0 = vc->kind == VK_ACT_FROM_VIEW ? round_to(dt, expect[i]) : expect[i];
        size_t img = i / ((size_t)cs * shw), ch = (i / shw) % (size_t)cs;
        int inside = vc->kind != VK_ACT_FROM_VIEW && img < (size_t)n && (int)ch >= c0 && (int)ch < c0 + c;
        if (!inside) w0 = round_to(dt, pat[i]);
        if (got[i] != w0)
            rc = 1, snprintf(msg, msz, "storage changed outside the view (image %zu channel %zu: %g, was %g)", img, ch,
                             (double)got[i], (double)w0);
    }
    free(expect);
    if (!rc) snprintf(msg, msz, "rel err %.2e, rest untouched", e);
done:
    cz_tensor_free(be, &bx), cz_tensor_free(be, &bw), cz_tensor_free(be, &bb), cz_tensor_free(be, &st);
    cz_tensor_free(be, &by);
    cz_tensor_free(ref, &rx), cz_tensor_free(ref, &rw), cz_tensor_free(ref, &rb), cz_tensor_free(ref, &ry);
    free(xin), free(win), free(bin), free(pat), free(got), free(want), free(view_now);
    return rc;
}

/* Views are refused everywhere else (contract): a few ops with a view where none is allowed. */
static int view_refusals(cz_backend *be, cz_dtype dt, char *msg, size_t msz) {
    cz_tensor a, b2, y, g;
    put(be, &a, dt, CZ_ROLE_ACT, 2, 32, 4, 4, NULL);
    put(be, &b2, dt, CZ_ROLE_ACT, 2, 16, 4, 4, NULL);
    put(be, &y, dt, CZ_ROLE_ACT, 2, 32, 4, 4, NULL);
    put(be, &g, CZ_F32, CZ_ROLE_VEC, 1, 16, 1, 1, NULL);
    int bad = 0;
    if (!be->ops->view_ok(be, &a, 16, 16)) {
        snprintf(msg, msz, "skipped: view_ok refuses channels 16..31 of 32");
        bad = -1;
    } else {
        cz_tensor v = cz_tensor_channel_view(a, 16, 16);
        float *host = hbuf(cz_tensor_numel(&v));
        double loss;
        struct {
            const char *what;
            cz_status s;
        } r[] = {
            {"concat(a = view)", CALL(be, concat, &v, &b2, &y)},
            {"bn_infer(x = view)", CALL(be, bn_infer, &v, &g, &g, &g, &g, 1e-5f, &b2)},
            {"l1_fwd(a = view)", CALL(be, l1_fwd, &v, &b2, &loss)},
            {"tensor_read(view)", be->ops->tensor_read(be, &v, host)},
            {"tensor_write(view)", be->ops->tensor_write(be, &v, host)},
            {"tensor_zero(view)", be->ops->tensor_zero(be, &v)},
        };
        for (size_t i = 0; i < sizeof r / sizeof r[0] && !bad; i++)
            if (r[i].s != CZ_ERR_UNSUPPORTED)
                bad = 1, snprintf(msg, msz, "%s returned %s, expected UNSUPPORTED", r[i].what, cz_strerror(r[i].s));
        if (!bad) snprintf(msg, msz, "concat, bn_infer, l1_fwd, tensor_read/write/zero refuse views");
        free(host);
    }
    cz_tensor_free(be, &a), cz_tensor_free(be, &b2), cz_tensor_free(be, &y), cz_tensor_free(be, &g);
    return bad;
}

static void test_backend_views(void **state) {
    (void)state;
    cz_backend *ref = ref_backend();
    int ran = 0, failed = 0, skipped = 0, backends = 0;
    const char *const *names = cz_backend_names();
    for (int i = 0; names[i]; i++) {
        if (!strcmp(names[i], "ref")) continue;
        cz_backend *be = NULL;
        if (cz_backend_create(names[i], NULL, &be) != CZ_OK) {
            printf("views: %s not available (%s)\n", names[i], cz_error_detail());
            continue;
        }
        if (!be->ops->view_ok) {
            printf("views: %s has no view_ok, nothing to test\n", names[i]);
            cz_backend_destroy(be);
            continue;
        }
        backends++;
        const cz_dtype dts[2] = {CZ_F32, CZ_BF16};
        for (int d = 0; d < 2; d++) {
            if (!be->ops->supports(be, dts[d])) continue;
            char msg[256];
            for (size_t k = 0; k < NVIEW; k++)
                for (int half = 0; half < 2; half++) {
                    const view_case *vc = &k_view_cases[k];
                    int c0 = half ? vc->co : 0;
                    int r = view_case_run(ref, be, dts[d], vc, c0, msg, sizeof msg);
                    printf("[%s %s] view %-28s at channel %-3d %s %s\n", be->ops->name, cz_dtype_name(dts[d]),
                           vc->label, c0, r > 0 ? "FAIL" : r < 0 ? "--" : "ok", msg);
                    ran += r >= 0, failed += r > 0, skipped += r < 0;
                }
            int r = view_refusals(be, dts[d], msg, sizeof msg);
            printf("[%s %s] views elsewhere: %s %s\n", be->ops->name, cz_dtype_name(dts[d]),
                   r > 0 ? "FAIL" : r < 0 ? "--" : "ok", msg);
            ran += r >= 0, failed += r > 0, skipped += r < 0;
        }
        cz_backend_destroy(be);
    }
    printf("views: %d backend(s), %d cases ran, %d skipped, %d failed\n", backends, ran, skipped, failed);
    cz_backend_destroy(ref);
    assert_int_equal(failed, 0);
}

/* The oracle has no views: view_ok is NULL and every op refuses one. */
static void test_ref_refuses_views(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    assert_null(be->ops->view_ok);
    cz_tensor x, w, y, s, g;
    put(be, &x, CZ_F32, CZ_ROLE_ACT, 1, 4, 8, 8, NULL);
    put(be, &w, CZ_F32, CZ_ROLE_CONV_W, 4, 4, 4, 4, NULL);
    put(be, &y, CZ_F32, CZ_ROLE_ACT, 1, 4, 4, 4, NULL);
    put(be, &s, CZ_F32, CZ_ROLE_ACT, 1, 8, 4, 4, NULL);
    put(be, &g, CZ_F32, CZ_ROLE_VEC, 1, 4, 1, 1, NULL);
    cz_conv_params p = {2, 1, CZ_ACT_RELU, 0};
    cz_tensor hi = cz_tensor_channel_view(s, 4, 4), lo = cz_tensor_channel_view(s, 0, 4);
    assert_true(cz_tensor_is_view(&hi) && cz_tensor_is_view(&lo));
    cz_tensor whole = cz_tensor_channel_view(s, 0, 8); /* all channels: not a view */
    assert_false(cz_tensor_is_view(&whole));
    float host[64];
    double loss;
    assert_int_equal(be->ops->conv2d(be, &x, &w, NULL, &p, &hi), CZ_ERR_UNSUPPORTED);
    assert_non_null(strstr(cz_error_detail(), "view"));
    assert_int_equal(be->ops->conv2d(be, &x, &w, NULL, &p, &lo), CZ_ERR_UNSUPPORTED);
    assert_int_equal(be->ops->act_fwd(be, CZ_ACT_RELU, 0.f, &y, &hi), CZ_ERR_UNSUPPORTED);
    assert_int_equal(be->ops->act_fwd(be, CZ_ACT_RELU, 0.f, &hi, &y), CZ_ERR_UNSUPPORTED);
    assert_int_equal(be->ops->act_fwd(be, CZ_ACT_RELU, 0.f, &hi, &hi), CZ_ERR_UNSUPPORTED);
    assert_int_equal(be->ops->bn_infer(be, &hi, &g, &g, &g, &g, 1e-5f, &y), CZ_ERR_UNSUPPORTED);
    assert_int_equal(be->ops->concat(be, &y, &y, &s), CZ_OK); /* plain use still fine */
    assert_int_equal(be->ops->concat(be, &lo, &y, &s), CZ_ERR_UNSUPPORTED);
    assert_int_equal(be->ops->l1_fwd(be, &hi, &y, &loss), CZ_ERR_UNSUPPORTED);
    assert_int_equal(be->ops->tensor_read(be, &hi, host), CZ_ERR_UNSUPPORTED);
    assert_int_equal(be->ops->tensor_write(be, &hi, host), CZ_ERR_UNSUPPORTED);
    assert_int_equal(be->ops->tensor_zero(be, &lo), CZ_ERR_UNSUPPORTED);
    cz_tensor bv = cz_tensor_batch_view(hi, 1); /* a batch view of a view is still a view */
    assert_int_equal(be->ops->act_fwd(be, CZ_ACT_NONE, 0.f, &y, &bv), CZ_ERR_UNSUPPORTED);
    OK(be->ops->act_fwd(be, CZ_ACT_RELU, 0.f, &y, &y));
    OK(be->ops->tensor_read(be, &whole, (float[128]){0}));
    cz_tensor_free(be, &hi); /* a view does not own storage: no-op */
    assert_non_null(s.data);
    cz_tensor_free(be, &x), cz_tensor_free(be, &w), cz_tensor_free(be, &y), cz_tensor_free(be, &s);
    cz_tensor_free(be, &g);
    cz_backend_destroy(be);
}

/* ========================================================================================== */
/* (a) ref self-checks                                                                         */

static void test_ref_memory(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    assert_string_equal(be->ops->name, "ref");
    assert_true(be->ops->supports(be, CZ_F32) && be->ops->supports(be, CZ_BF16) && be->ops->supports(be, CZ_F16));
    const float vals[6] = {1.0f, -2.5f, 3.14159265f, 1.0f + 1.0f / 256.0f, 1e-3f, 0.0f};
    cz_dtype dts[3] = {CZ_F32, CZ_BF16, CZ_F16};
    for (int d = 0; d < 3; d++) {
        cz_tensor t;
        put(be, &t, dts[d], CZ_ROLE_ACT, 3, 1, 1, 2, vals);
        assert_int_equal(t.layout, 0);
        assert_int_equal(t.cap_n, 3);
        float *r = get(be, &t);
        for (int i = 0; i < 6; i++) {
            float want = dts[d] == CZ_F32    ? vals[i]
                         : dts[d] == CZ_BF16 ? cz_bf16_to_f32(cz_f32_to_bf16(vals[i]))
                                             : cz_f16_to_f32(cz_f32_to_f16(vals[i]));
            assert_memory_equal(&r[i], &want, sizeof want);
        }
        free(r);
        /* a batch view reads and zeroes only its prefix */
        cz_tensor v = cz_tensor_batch_view(t, 1);
        OK(be->ops->tensor_zero(be, &v));
        r = get(be, &t);
        assert_true(r[0] == 0.0f && r[1] == 0.0f && r[2] != 0.0f);
        free(r);
        cz_tensor_free(be, &t);
        assert_null(t.data);
    }
    /* 1 + 2^-8 is a tie in bf16 and rounds to even (1.0) */
    assert_true(cz_bf16_to_f32(cz_f32_to_bf16(1.0f + 1.0f / 256.0f)) == 1.0f);
    cz_tensor bad;
    assert_int_equal(cz_tensor_alloc(be, &bad, CZ_F32, CZ_ROLE_ACT, 0, 1, 1, 1), CZ_ERR_INVALID_ARG);
    OK(be->ops->sync(be));
    cz_backend_destroy(be);
}

static void test_ref_conv_known(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    const float x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    const float w2[4] = {1, 2, 3, 4};
    cz_tensor tx, tw, tb, ty;
    put(be, &tx, CZ_F32, CZ_ROLE_ACT, 1, 1, 3, 3, x);
    put(be, &tw, CZ_F32, CZ_ROLE_CONV_W, 1, 1, 2, 2, w2);
    const float bias = -40;
    put(be, &tb, CZ_F32, CZ_ROLE_VEC, 1, 1, 1, 1, &bias);
    put(be, &ty, CZ_F32, CZ_ROLE_ACT, 1, 1, 2, 2, NULL);
    /* 2x2 kernel, stride 1, no pad: 1*1+2*2+3*4+4*5 = 37 and so on */
    cz_conv_params p = {1, 0, CZ_ACT_NONE, 0};
    OK(be->ops->conv2d(be, &tx, &tw, NULL, &p, &ty));
    float *r = get(be, &ty);
    const float want0[4] = {37, 47, 67, 77};
    assert_memory_equal(r, want0, sizeof want0);
    free(r);
    /* bias then relu / leaky relu */
    p.act = CZ_ACT_RELU;
    OK(be->ops->conv2d(be, &tx, &tw, &tb, &p, &ty));
    r = get(be, &ty);
    const float want1[4] = {0, 7, 27, 37};
    assert_memory_equal(r, want1, sizeof want1);
    free(r);
    p.act = CZ_ACT_LRELU;
    p.alpha = 0.1f;
    OK(be->ops->conv2d(be, &tx, &tw, &tb, &p, &ty));
    r = get(be, &ty);
    assert_float_equal(r[0], -0.3f, 1e-6f);
    assert_float_equal(r[3], 37.0f, 0);
    free(r);
    cz_tensor_free(be, &tw);
    /* 3x3 ones, stride 2, pad 1: sums of the 2x2 corners of x */
    const float ones[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    put(be, &tw, CZ_F32, CZ_ROLE_CONV_W, 1, 1, 3, 3, ones);
    p = (cz_conv_params){2, 1, CZ_ACT_NONE, 0};
    OK(be->ops->conv2d(be, &tx, &tw, NULL, &p, &ty));
    r = get(be, &ty);
    const float want2[4] = {12, 16, 24, 28};
    assert_memory_equal(r, want2, sizeof want2);
    free(r);
    cz_tensor_free(be, &tw);
    cz_tensor_free(be, &ty);
    cz_tensor_free(be, &tx);
    /* two input channels, 1x1 kernel [2, -1]: y = 2*x0 - x1, batch 2 */
    const float x2[8] = {1, 2, 3, 4, 10, 20, 30, 40};
    const float w11[2] = {2, -1};
    put(be, &tx, CZ_F32, CZ_ROLE_ACT, 2, 2, 1, 2, x2);
    put(be, &tw, CZ_F32, CZ_ROLE_CONV_W, 1, 2, 1, 1, w11);
    put(be, &ty, CZ_F32, CZ_ROLE_ACT, 2, 1, 1, 2, NULL);
    p = (cz_conv_params){1, 0, CZ_ACT_NONE, 0};
    OK(be->ops->conv2d(be, &tx, &tw, NULL, &p, &ty));
    r = get(be, &ty);
    const float want3[4] = {2 - 3, 4 - 4, 20 - 30, 40 - 40};
    assert_memory_equal(r, want3, sizeof want3);
    free(r);
    cz_tensor_free(be, &tx);
    cz_tensor_free(be, &tw);
    cz_tensor_free(be, &ty);
    cz_tensor_free(be, &tb);
    cz_backend_destroy(be);
}

static void test_ref_deconv_known(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    cz_tensor tx, tw, ty;
    /* one pixel through a 2x2 kernel, stride 2: the kernel scaled */
    const float three = 3, w4[4] = {1, 2, 3, 4};
    put(be, &tx, CZ_F32, CZ_ROLE_ACT, 1, 1, 1, 1, &three);
    put(be, &tw, CZ_F32, CZ_ROLE_DECONV_W, 1, 1, 2, 2, w4);
    put(be, &ty, CZ_F32, CZ_ROLE_ACT, 1, 1, 2, 2, NULL);
    cz_conv_params p = {2, 0, CZ_ACT_NONE, 0};
    OK(be->ops->deconv2d(be, &tx, &tw, NULL, &p, &ty));
    float *r = get(be, &ty);
    const float want0[4] = {3, 6, 9, 12};
    assert_memory_equal(r, want0, sizeof want0);
    free(r);
    cz_tensor_free(be, &tx);
    cz_tensor_free(be, &tw);
    cz_tensor_free(be, &ty);
    /* 2x2 input, 3x3 ones, stride 2, pad 1 -> 3x3 (overlaps add up in the middle) */
    const float x[4] = {1, 2, 3, 4}, ones[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    put(be, &tx, CZ_F32, CZ_ROLE_ACT, 1, 1, 2, 2, x);
    put(be, &tw, CZ_F32, CZ_ROLE_DECONV_W, 1, 1, 3, 3, ones);
    put(be, &ty, CZ_F32, CZ_ROLE_ACT, 1, 1, 3, 3, NULL);
    p = (cz_conv_params){2, 1, CZ_ACT_NONE, 0};
    OK(be->ops->deconv2d(be, &tx, &tw, NULL, &p, &ty));
    r = get(be, &ty);
    const float want1[9] = {1, 3, 2, 4, 10, 6, 3, 7, 4};
    assert_memory_equal(r, want1, sizeof want1);
    free(r);
    /* wrong output shape */
    cz_tensor bad;
    put(be, &bad, CZ_F32, CZ_ROLE_ACT, 1, 1, 4, 4, NULL);
    assert_int_equal(be->ops->deconv2d(be, &tx, &tw, NULL, &p, &bad), CZ_ERR_SHAPE);
    assert_string_equal(cz_error_detail(), "deconv2d: y is [1,1,4,4], expected [1,1,3,3]");
    cz_tensor_free(be, &bad);
    cz_tensor_free(be, &tx);
    cz_tensor_free(be, &tw);
    cz_tensor_free(be, &ty);
    cz_backend_destroy(be);
}

/* <conv(x), dy> == <x, deconv(dy)> with the same weight memory: (out,in,k,k) for the conv is
 * (in,out,k,k) for the transposed conv that maps back. */
static void test_ref_deconv_adjoint(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    const int cfg[][7] = {/* n, ic, h, w, oc, k, stride; pad in pads[] */
                          {2, 3, 8, 8, 5, 4, 2}, {1, 2, 7, 9, 4, 3, 1}, {3, 4, 7, 7, 2, 4, 1}, {2, 3, 2, 2, 6, 4, 2}};
    const int pads[] = {1, 1, 1, 1};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        int n = cfg[c][0], ic = cfg[c][1], h = cfg[c][2], w = cfg[c][3], oc = cfg[c][4], k = cfg[c][5];
        cz_conv_params p = {cfg[c][6], pads[c], CZ_ACT_NONE, 0};
        int oh = (h + 2 * p.pad - k) / p.stride + 1, ow = (w + 2 * p.pad - k) / p.stride + 1;
        size_t nx = numel4(n, ic, h, w), ny = numel4(n, oc, oh, ow), nw = numel4(oc, ic, k, k);
        float *x = hrand(nx, 100 + c, -1, 1), *dy = hrand(ny, 200 + c, -1, 1), *wt = hrand(nw, 300 + c, -1, 1);
        cz_tensor tx, tw, twd, ty, tdy, tdx;
        put(be, &tx, CZ_F32, CZ_ROLE_ACT, n, ic, h, w, x);
        put(be, &tw, CZ_F32, CZ_ROLE_CONV_W, oc, ic, k, k, wt);
        put(be, &twd, CZ_F32, CZ_ROLE_DECONV_W, oc, ic, k, k, wt);
        put(be, &ty, CZ_F32, CZ_ROLE_ACT, n, oc, oh, ow, NULL);
        put(be, &tdy, CZ_F32, CZ_ROLE_ACT, n, oc, oh, ow, dy);
        put(be, &tdx, CZ_F32, CZ_ROLE_ACT, n, ic, h, w, NULL);
        OK(be->ops->conv2d(be, &tx, &tw, NULL, &p, &ty));
        OK(be->ops->deconv2d(be, &tdy, &twd, NULL, &p, &tdx));
        float *y = get(be, &ty), *dx = get(be, &tdx);
        double lhs = dot(y, dy, ny), rhs = dot(x, dx, nx), mag = 0;
        for (size_t i = 0; i < ny; i++) mag += fabs((double)y[i] * dy[i]);
        printf("[ref fp32] adjoint conv/deconv k%ds%dp%d [%d,%d,%d,%d]: <conv x,dy> %.9g <x,deconv dy> %.9g\n", k,
               p.stride, p.pad, n, ic, h, w, lhs, rhs);
        assert_true(fabs(lhs - rhs) <= 1e-6 * mag);
        free(x), free(dy), free(wt), free(y), free(dx);
        cz_tensor_free(be, &tx), cz_tensor_free(be, &tw), cz_tensor_free(be, &twd);
        cz_tensor_free(be, &ty), cz_tensor_free(be, &tdy), cz_tensor_free(be, &tdx);
    }
    cz_backend_destroy(be);
}

static void test_ref_bn(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    const int n = 2, c = 3, h = 4, w = 5;
    size_t nx = numel4(n, c, h, w), plane = (size_t)h * w, M = (size_t)n * plane;
    float *x = hrand(nx, 7, -2, 3);
    const float gamma[3] = {1.5f, 0.5f, -1.0f}, beta[3] = {0.1f, -0.2f, 0.3f};
    const float mean[3] = {0.2f, -0.1f, 0.5f}, var[3] = {1.0f, 2.0f, 0.5f};
    const float rm0[3] = {0.5f, 0.5f, 0.5f}, rv0[3] = {2.0f, 2.0f, 2.0f};
    const float eps = 1e-5f, mom = 0.1f;
    cz_tensor tx, tg, tb, tm, tv, ty, trm, trv, tsm, tsi;
    put(be, &tx, CZ_F32, CZ_ROLE_ACT, n, c, h, w, x);
    put(be, &tg, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, gamma);
    put(be, &tb, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, beta);
    put(be, &tm, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, mean);
    put(be, &tv, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, var);
    put(be, &trm, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, rm0);
    put(be, &trv, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, rv0);
    put(be, &tsm, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, NULL);
    put(be, &tsi, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, NULL);
    put(be, &ty, CZ_F32, CZ_ROLE_ACT, n, c, h, w, NULL);

    OK(be->ops->bn_infer(be, &tx, &tg, &tb, &tm, &tv, eps, &ty));
    float *y = get(be, &ty), *want = hbuf(nx);
    for (int i = 0; i < n; i++)
        for (int ch = 0; ch < c; ch++)
            for (size_t j = 0; j < plane; j++) {
                size_t k = ((size_t)i * c + ch) * plane + j;
                want[k] = (float)((x[k] - mean[ch]) / sqrt((double)var[ch] + eps) * gamma[ch] + beta[ch]);
            }
    assert_close(y, want, nx, 1e-6);
    free(y);

    OK(be->ops->bn_train_fwd(be, &tx, &tg, &tb, eps, mom, &trm, &trv, &tsm, &tsi, &ty));
    y = get(be, &ty);
    float *rm = get(be, &trm), *rv = get(be, &trv), *sm = get(be, &tsm), *si = get(be, &tsi);
    for (int ch = 0; ch < c; ch++) {
        double s = 0, q = 0;
        for (int i = 0; i < n; i++)
            for (size_t j = 0; j < plane; j++) s += x[((size_t)i * c + ch) * plane + j];
        double mu = s / (double)M;
        for (int i = 0; i < n; i++)
            for (size_t j = 0; j < plane; j++) {
                double d = x[((size_t)i * c + ch) * plane + j] - mu;
                q += d * d;
            }
        double var_b = q / (double)M, var_u = q / (double)(M - 1), inv = 1 / sqrt(var_b + eps);
        assert_float_equal(sm[ch], (float)mu, 1e-6f);
        assert_float_equal(si[ch], (float)inv, 1e-6f * (float)inv);
        assert_float_equal(rm[ch], (float)(0.9 * rm0[ch] + 0.1 * mu), 1e-6f);
        assert_float_equal(rv[ch], (float)(0.9 * rv0[ch] + 0.1 * var_u), 1e-6f);
        /* normalized output has mean beta and biased std |gamma| * sqrt(var/(var+eps)) */
        double ys = 0, yq = 0;
        for (int i = 0; i < n; i++)
            for (size_t j = 0; j < plane; j++) {
                size_t k = ((size_t)i * c + ch) * plane + j;
                want[k] = (float)((x[k] - mu) * inv * gamma[ch] + beta[ch]);
                ys += y[k];
            }
        for (int i = 0; i < n; i++)
            for (size_t j = 0; j < plane; j++) {
                double d = y[((size_t)i * c + ch) * plane + j] - ys / (double)M;
                yq += d * d;
            }
        assert_float_equal(ys / (double)M, beta[ch], 1e-6);
        assert_float_equal(sqrt(yq / (double)M), fabs(gamma[ch]) * sqrt(var_b / (var_b + eps)), 1e-5);
    }
    assert_close(y, want, nx, 1e-6);
    free(y), free(rm), free(rv), free(sm), free(si);

    /* one value per channel cannot give batch statistics */
    cz_tensor one, one_y;
    put(be, &one, CZ_F32, CZ_ROLE_ACT, 1, c, 1, 1, NULL);
    put(be, &one_y, CZ_F32, CZ_ROLE_ACT, 1, c, 1, 1, NULL);
    assert_int_equal(be->ops->bn_train_fwd(be, &one, &tg, &tb, eps, mom, NULL, NULL, &tsm, &tsi, &one_y),
                     CZ_ERR_SHAPE);
    /* save tensors must be fp32 */
    cz_tensor sm16;
    put(be, &sm16, CZ_BF16, CZ_ROLE_VEC, 1, c, 1, 1, NULL);
    assert_int_equal(be->ops->bn_train_fwd(be, &tx, &tg, &tb, eps, mom, NULL, NULL, &sm16, &tsi, &ty),
                     CZ_ERR_UNSUPPORTED);
    /* mismatched vector */
    cz_tensor g4;
    put(be, &g4, CZ_F32, CZ_ROLE_VEC, 1, 4, 1, 1, NULL);
    assert_int_equal(be->ops->bn_infer(be, &tx, &g4, &tb, &tm, &tv, eps, &ty), CZ_ERR_SHAPE);
    assert_string_equal(cz_error_detail(), "bn_infer: gamma is [1,4,1,1], expected [1,3,1,1]");
    cz_tensor *all[] = {&tx, &tg, &tb, &tm, &tv, &ty, &trm, &trv, &tsm, &tsi, &one, &one_y, &sm16, &g4};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) cz_tensor_free(be, all[i]);
    free(x), free(want);
    cz_backend_destroy(be);
}

static void test_ref_act(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    const float x[6] = {-2.0f, -0.5f, 0.0f, 0.5f, 2.0f, 30.0f};
    for (int a = 0; a < 4; a++) {
        for (int inplace = 0; inplace < 2; inplace++) {
            cz_tensor tx, ty;
            put(be, &tx, CZ_F32, CZ_ROLE_ACT, 1, 2, 1, 3, x);
            put(be, &ty, CZ_F32, CZ_ROLE_ACT, 1, 2, 1, 3, NULL);
            cz_tensor *out = inplace ? &tx : &ty;
            OK(be->ops->act_fwd(be, (cz_act)a, 0.2f, &tx, out));
            float *r = get(be, out);
            for (int i = 0; i < 6; i++) {
                float want = a == CZ_ACT_RELU    ? (x[i] > 0 ? x[i] : 0.0f)
                             : a == CZ_ACT_LRELU ? (x[i] > 0 ? x[i] : (float)(0.2 * x[i]))
                             : a == CZ_ACT_TANH  ? (float)tanh(x[i])
                                                 : x[i];
                assert_float_equal(r[i], want, 1e-7f);
            }
            free(r);
            cz_tensor_free(be, &tx);
            cz_tensor_free(be, &ty);
        }
    }
    /* concrete values */
    cz_tensor tx;
    put(be, &tx, CZ_F32, CZ_ROLE_ACT, 1, 1, 1, 6, x);
    OK(be->ops->act_fwd(be, CZ_ACT_LRELU, 0.2f, &tx, &tx));
    float *r = get(be, &tx);
    assert_float_equal(r[0], -0.4f, 1e-7f);
    assert_float_equal(r[1], -0.1f, 1e-7f);
    assert_float_equal(r[5], 30.0f, 0);
    free(r);
    cz_tensor_free(be, &tx);
    cz_backend_destroy(be);
}

static void test_ref_concat(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    const float a[8] = {1, 2, 3, 4, 5, 6, 7, 8}, b[4] = {101, 102, 103, 104};
    cz_tensor ta, tb, ty;
    put(be, &ta, CZ_F32, CZ_ROLE_ACT, 2, 2, 1, 2, a);
    put(be, &tb, CZ_F32, CZ_ROLE_ACT, 2, 1, 1, 2, b);
    put(be, &ty, CZ_F32, CZ_ROLE_ACT, 2, 3, 1, 2, NULL);
    OK(be->ops->concat(be, &ta, &tb, &ty));
    float *r = get(be, &ty);
    const float want[12] = {1, 2, 3, 4, 101, 102, 5, 6, 7, 8, 103, 104};
    assert_memory_equal(r, want, sizeof want);
    free(r);
    cz_tensor bad;
    put(be, &bad, CZ_F32, CZ_ROLE_ACT, 2, 4, 1, 2, NULL);
    assert_int_equal(be->ops->concat(be, &ta, &tb, &bad), CZ_ERR_SHAPE);
    assert_string_equal(cz_error_detail(), "concat: y is [2,4,1,2], expected [2,3,1,2]");
    cz_tensor_free(be, &bad);
    cz_tensor_free(be, &ta);
    cz_tensor_free(be, &tb);
    cz_tensor_free(be, &ty);
    cz_backend_destroy(be);
}

static void test_ref_losses(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    const float x[5] = {0.0f, 2.0f, -3.0f, 50.0f, -50.0f};
    cz_tensor tx;
    put(be, &tx, CZ_F32, CZ_ROLE_ACT, 1, 1, 1, 5, x);
    for (int t = 0; t <= 1; t++) {
        double want = 0;
        for (int i = 0; i < 5; i++) {
            /* -[t log s(x) + (1-t) log(1 - s(x))] = log(1 + e^-x) if t=1, log(1 + e^x) if t=0 */
            double z = t ? -x[i] : x[i];
            want += z > 30 ? z + log1p(exp(-z)) : log(1.0 + exp(z));
        }
        want /= 5;
        double got = 0;
        OK(be->ops->bce_logits_fwd(be, &tx, (float)t, &got));
        assert_true(isfinite(got));
        assert_true(fabs(got - want) <= 1e-12 * want);
    }
    double l0 = 0;
    const float zero = 0;
    cz_tensor tz;
    put(be, &tz, CZ_F32, CZ_ROLE_ACT, 1, 1, 1, 1, &zero);
    OK(be->ops->bce_logits_fwd(be, &tz, 1.0f, &l0));
    assert_true(fabs(l0 - log(2.0)) < 1e-15);
    const float a[3] = {1, 2, 3}, b[3] = {0.5f, 4, 3};
    cz_tensor ta, tb;
    put(be, &ta, CZ_F32, CZ_ROLE_ACT, 1, 1, 1, 3, a);
    put(be, &tb, CZ_F32, CZ_ROLE_ACT, 1, 1, 1, 3, b);
    double l1 = 0;
    OK(be->ops->l1_fwd(be, &ta, &tb, &l1));
    assert_true(fabs(l1 - 2.5 / 3.0) < 1e-15);
    cz_tensor_free(be, &tx), cz_tensor_free(be, &tz), cz_tensor_free(be, &ta), cz_tensor_free(be, &tb);
    cz_backend_destroy(be);
}

/* Independent statement of the dropout draw: a sequential SplitMix64 generator seeded with
 * `seed`; element i uses its (i+1)-th output's top 24 bits. */
static float dropout_draw_spec(uint64_t seed, uint64_t i) {
    uint64_t state = seed, z = 0;
    for (uint64_t k = 0; k <= i; k++) {
        state += 0x9E3779B97F4A7C15ull;
        z = state;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z = z ^ (z >> 31);
    }
    return (float)(z >> 40) / 16777216.0f;
}

static void test_ref_dropout(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    const int n = 2, c = 5, h = 100, w = 100;
    size_t k = numel4(n, c, h, w);
    float *x = hrand(k, 42, 0.5f, 1.5f); /* never zero, so y == 0 exactly where dropped */
    const float ps[3] = {0.5f, 0.3f, 0.0f};
    for (int pi = 0; pi < 3; pi++) {
        float p = ps[pi], scale = 1.0f / (1.0f - p);
        cz_tensor tx, tm, ty, tm2, ty2;
        put(be, &tx, CZ_F32, CZ_ROLE_ACT, n, c, h, w, x);
        put(be, &tm, CZ_F32, CZ_ROLE_ACT, n, c, h, w, NULL);
        put(be, &ty, CZ_F32, CZ_ROLE_ACT, n, c, h, w, NULL);
        put(be, &tm2, CZ_F32, CZ_ROLE_ACT, n, c, h, w, NULL);
        put(be, &ty2, CZ_F32, CZ_ROLE_ACT, n, c, h, w, NULL);
        OK(be->ops->dropout_fwd(be, p, 1234, &tx, &tm, &ty));
        float *m = get(be, &tm), *y = get(be, &ty);
        size_t kept = 0;
        for (size_t i = 0; i < k; i++) {
            assert_true(m[i] == 0.0f || m[i] == scale);
            kept += m[i] != 0.0f;
            assert_true(y[i] == (m[i] != 0.0f ? x[i] * scale : 0.0f));
        }
        double frac = (double)kept / (double)k;
        printf("[ref fp32] dropout p %.2f: kept %.4f (expected %.4f)\n", (double)p, frac, 1.0 - p);
        assert_true(fabs(frac - (1.0 - p)) < 0.01);
        /* the documented draw, for the first elements and a few far ones */
        const size_t probe[] = {0, 1, 2, 3, 17, 999, 4321};
        for (size_t j = 0; j < sizeof probe / sizeof probe[0]; j++) {
            int keep = dropout_draw_spec(1234, probe[j]) >= p;
            assert_true((m[probe[j]] != 0.0f) == keep);
        }
        /* same seed: identical; another seed: different */
        OK(be->ops->dropout_fwd(be, p, 1234, &tx, &tm2, &ty2));
        float *m2 = get(be, &tm2);
        assert_memory_equal(m, m2, k * sizeof *m);
        free(m2);
        OK(be->ops->dropout_fwd(be, p, 1235, &tx, &tm2, &ty2));
        m2 = get(be, &tm2);
        size_t diff = 0;
        for (size_t i = 0; i < k; i++) diff += m[i] != m2[i];
        if (p > 0)
            assert_true(diff > k / 10);
        else
            assert_int_equal(diff, 0);
        free(m2), free(m), free(y);
        cz_tensor_free(be, &tx), cz_tensor_free(be, &tm), cz_tensor_free(be, &ty);
        cz_tensor_free(be, &tm2), cz_tensor_free(be, &ty2);
    }
    /* bf16 storage: scale 2 is exact */
    cz_tensor tx, tm, ty;
    put(be, &tx, CZ_BF16, CZ_ROLE_ACT, 1, 1, 10, 10, x);
    put(be, &tm, CZ_BF16, CZ_ROLE_ACT, 1, 1, 10, 10, NULL);
    put(be, &ty, CZ_BF16, CZ_ROLE_ACT, 1, 1, 10, 10, NULL);
    OK(be->ops->dropout_fwd(be, 0.5f, 9, &tx, &tm, &ty));
    float *m = get(be, &tm);
    for (int i = 0; i < 100; i++) assert_true(m[i] == 0.0f || m[i] == 2.0f);
    free(m);
    assert_int_equal(be->ops->dropout_fwd(be, 1.0f, 9, &tx, &tm, &ty), CZ_ERR_INVALID_ARG);
    cz_tensor_free(be, &tx), cz_tensor_free(be, &tm), cz_tensor_free(be, &ty);
    free(x);
    cz_backend_destroy(be);
}

static void test_ref_shape_errors(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    cz_tensor x, w, y, b, y2;
    put(be, &x, CZ_F32, CZ_ROLE_ACT, 2, 8, 128, 128, NULL);
    put(be, &w, CZ_F32, CZ_ROLE_CONV_W, 16, 8, 4, 4, NULL);
    put(be, &y, CZ_F32, CZ_ROLE_ACT, 2, 16, 32, 32, NULL);
    put(be, &b, CZ_F32, CZ_ROLE_VEC, 1, 8, 1, 1, NULL);
    put(be, &y2, CZ_F32, CZ_ROLE_ACT, 2, 16, 64, 64, NULL);
    cz_conv_params p = {2, 1, CZ_ACT_NONE, 0};
    assert_int_equal(be->ops->conv2d(be, &x, &w, NULL, &p, &y), CZ_ERR_SHAPE);
    assert_string_equal(cz_error_detail(), "conv2d: y is [2,16,32,32], expected [2,16,64,64]");
    assert_int_equal(be->ops->conv2d(be, &x, &w, &b, &p, &y2), CZ_ERR_SHAPE);
    assert_string_equal(cz_error_detail(), "conv2d: b is [1,8,1,1], expected [1,16,1,1]");
    /* input channels */
    cz_tensor xv = x;
    xv.c = 3;
    assert_int_equal(be->ops->conv2d(be, &xv, &w, NULL, &p, &y2), CZ_ERR_SHAPE);
    /* batch mismatch between x and y */
    cz_tensor yv = cz_tensor_batch_view(y2, 1);
    assert_int_equal(be->ops->conv2d(be, &x, &w, NULL, &p, &yv), CZ_ERR_SHAPE);
    /* a view larger than the allocation */
    cz_tensor big = cz_tensor_batch_view(x, 3);
    assert_int_equal(be->ops->conv2d(be, &big, &w, NULL, &p, &y2), CZ_ERR_SHAPE);
    /* unallocated, foreign layout, bad params */
    cz_tensor empty = {0};
    assert_int_equal(be->ops->conv2d(be, &empty, &w, NULL, &p, &y2), CZ_ERR_INVALID_ARG);
    cz_tensor foreign = x;
    foreign.layout = 16;
    assert_int_equal(be->ops->conv2d(be, &foreign, &w, NULL, &p, &y2), CZ_ERR_UNSUPPORTED);
    cz_conv_params bad = {0, 1, CZ_ACT_NONE, 0};
    assert_int_equal(be->ops->conv2d(be, &x, &w, NULL, &bad, &y2), CZ_ERR_INVALID_ARG);
    /* in place is for act_fwd only */
    assert_int_equal(be->ops->conv2d(be, &x, &w, NULL, &p, &x), CZ_ERR_INVALID_ARG);
    /* deconv: weights are (in, out, k, k), so w [16,8,4,4] wants 16 input channels */
    assert_int_equal(be->ops->deconv2d(be, &x, &w, NULL, &p, &y2), CZ_ERR_SHAPE);
    OK(be->ops->conv2d(be, &x, &w, NULL, &p, &y2));
    cz_tensor_free(be, &x), cz_tensor_free(be, &w), cz_tensor_free(be, &y), cz_tensor_free(be, &b);
    cz_tensor_free(be, &y2);
    cz_backend_destroy(be);
}

/* ========================================================================================== */
/* (c) ref backward against central finite differences                                         */

typedef struct fd {
    cz_backend *be;
    op_call call;
    oparg arg;
    cz_tensor t[MAX_T];
    int out;        /* output tensor dotted with r; -1: use arg.loss */
    const float *r; /* upstream gradient */
    double lscale;  /* loss multiplier (for the scaled loss ops) */
} fd;

static double fd_loss(fd *f) {
    OK(f->call(f->be, f->t, &f->arg));
    if (f->out < 0) return f->lscale * f->arg.loss;
    float *y = get(f->be, &f->t[f->out]);
    double l = dot(y, f->r, cz_tensor_numel(&f->t[f->out]));
    free(y);
    return l;
}

/* Numerical gradient of the loss with respect to tensor j (host copy v) vs `analytic`. */
static void fd_check(fd *f, int j, float *v, double eps, const float *analytic, double tol, const char *what) {
    size_t k = cz_tensor_numel(&f->t[j]);
    double *num = calloc(k, sizeof *num), *ana = calloc(k, sizeof *ana);
    assert_true(num && ana);
    for (size_t i = 0; i < k; i++) {
        float orig = v[i], up = (float)(orig + eps), dn = (float)(orig - eps);
        v[i] = up;
        OK(f->be->ops->tensor_write(f->be, &f->t[j], v));
        double lp = fd_loss(f);
        v[i] = dn;
        OK(f->be->ops->tensor_write(f->be, &f->t[j], v));
        double lm = fd_loss(f);
        v[i] = orig;
        num[i] = (lp - lm) / ((double)up - (double)dn);
        ana[i] = analytic[i];
    }
    OK(f->be->ops->tensor_write(f->be, &f->t[j], v));
    double e = rel_err_d(ana, num, k);
    printf("[ref fp32] finite differences %-40s rel err %.2e (%zu values)\n", what, e, k);
    free(num), free(ana);
    if (!(e < tol)) fail_msg("%s: finite-difference error %.3g >= %.3g", what, e, tol);
}

static void fd_free(fd *f) {
    for (int i = 0; i < MAX_T; i++) cz_tensor_free(f->be, &f->t[i]);
}

static void test_ref_conv_grads(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    const conv_case cases[] = {
        {2, 3, 7, 6, 4, 3, 2, 1, 1, CZ_ACT_NONE}, {2, 2, 6, 6, 3, 4, 2, 1, 1, CZ_ACT_NONE},
        {1, 2, 5, 5, 2, 4, 1, 1, 1, CZ_ACT_NONE}, {2, 3, 3, 4, 2, 4, 2, 1, 1, CZ_ACT_NONE},
        {1, 2, 2, 2, 3, 3, 1, 1, 1, CZ_ACT_NONE},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        for (int tr = 0; tr < 2; tr++) {
            const conv_case *cc = &cases[ci];
            int oh, ow, wn, wc;
            conv_out_hw(cc, tr, &oh, &ow);
            wshape(cc, tr, &wn, &wc);
            size_t nx = numel4(cc->n, cc->ic, cc->h, cc->w), ny = numel4(cc->n, cc->oc, oh, ow);
            size_t nw = numel4(wn, wc, cc->k, cc->k);
            float *x = hrand(nx, 11 + ci, -1, 1), *wt = hrand(nw, 21 + ci, -1, 1);
            float *bs = hrand((size_t)cc->oc, 31 + ci, -1, 1), *r = hrand(ny, 41 + ci, -1, 1);
            fd f = {.be = be, .call = tr ? cb_deconv : cb_conv, .out = 3, .r = r};
            f.arg.p = (cz_conv_params){cc->s, cc->p, CZ_ACT_NONE, 0};
            f.arg.has_bias = 1;
            cz_role wr = tr ? CZ_ROLE_DECONV_W : CZ_ROLE_CONV_W;
            put(be, &f.t[0], CZ_F32, CZ_ROLE_ACT, cc->n, cc->ic, cc->h, cc->w, x);
            put(be, &f.t[1], CZ_F32, wr, wn, wc, cc->k, cc->k, wt);
            put(be, &f.t[2], CZ_F32, CZ_ROLE_VEC, 1, cc->oc, 1, 1, bs);
            put(be, &f.t[3], CZ_F32, CZ_ROLE_ACT, cc->n, cc->oc, oh, ow, NULL);
            cz_tensor tdy, tdx, tdw, tdb;
            put(be, &tdy, CZ_F32, CZ_ROLE_ACT, cc->n, cc->oc, oh, ow, r);
            put(be, &tdx, CZ_F32, CZ_ROLE_ACT, cc->n, cc->ic, cc->h, cc->w, NULL);
            put(be, &tdw, CZ_F32, wr, wn, wc, cc->k, cc->k, NULL);
            put(be, &tdb, CZ_F32, CZ_ROLE_VEC, 1, cc->oc, 1, 1, NULL);
            if (tr) {
                OK(be->ops->deconv2d_bwd_data(be, &tdy, &f.t[1], &f.arg.p, &tdx));
                OK(be->ops->deconv2d_bwd_weights(be, &f.t[0], &tdy, &f.arg.p, &tdw, &tdb, 0));
            } else {
                OK(be->ops->conv2d_bwd_data(be, &tdy, &f.t[1], &f.arg.p, &tdx));
                OK(be->ops->conv2d_bwd_weights(be, &f.t[0], &tdy, &f.arg.p, &tdw, &tdb, 0));
            }
            float *dx = get(be, &tdx), *dw = get(be, &tdw), *db = get(be, &tdb);
            char what[96];
            const char *nm = tr ? "deconv2d" : "conv2d";
            snprintf(what, sizeof what, "%s k%ds%dp%d [%d,%d,%d,%d] dx", nm, cc->k, cc->s, cc->p, cc->n, cc->ic,
                     cc->h, cc->w);
            fd_check(&f, 0, x, 0.25, dx, 1e-5, what);
            what[strlen(what) - 2] = 0;
            strcat(what, "dw");
            fd_check(&f, 1, wt, 0.25, dw, 1e-5, what);
            what[strlen(what) - 2] = 0;
            strcat(what, "db");
            fd_check(&f, 2, bs, 0.25, db, 1e-5, what);
            /* accumulate adds onto the existing gradient */
            if (tr)
                OK(be->ops->deconv2d_bwd_weights(be, &f.t[0], &tdy, &f.arg.p, &tdw, &tdb, 1));
            else
                OK(be->ops->conv2d_bwd_weights(be, &f.t[0], &tdy, &f.arg.p, &tdw, &tdb, 1));
            float *dw2 = get(be, &tdw), *db2 = get(be, &tdb);
            for (size_t i = 0; i < nw; i++) assert_float_equal(dw2[i], 2 * dw[i], 1e-6f * (1 + fabsf(dw[i])));
            for (int i = 0; i < cc->oc; i++) assert_float_equal(db2[i], 2 * db[i], 1e-6f * (1 + fabsf(db[i])));
            /* conv's backward data is the transposed conv with the same weight memory, bit for bit */
            if (!tr) {
                cz_tensor twd, tdx2;
                put(be, &twd, CZ_F32, CZ_ROLE_DECONV_W, wn, wc, cc->k, cc->k, wt);
                put(be, &tdx2, CZ_F32, CZ_ROLE_ACT, cc->n, cc->ic, cc->h, cc->w, NULL);
                cz_tensor dyh = tdy;
                if ((cc->h + 2 * cc->p - cc->k) % cc->s == 0 && (cc->w + 2 * cc->p - cc->k) % cc->s == 0) {
                    OK(be->ops->deconv2d(be, &dyh, &twd, NULL, &f.arg.p, &tdx2));
                    float *dx2 = get(be, &tdx2);
                    assert_memory_equal(dx, dx2, nx * sizeof *dx);
                    free(dx2);
                }
                cz_tensor_free(be, &twd), cz_tensor_free(be, &tdx2);
            }
            free(dw2), free(db2), free(dx), free(dw), free(db);
            free(x), free(wt), free(bs), free(r);
            cz_tensor_free(be, &tdy), cz_tensor_free(be, &tdx), cz_tensor_free(be, &tdw), cz_tensor_free(be, &tdb);
            fd_free(&f);
        }
    }
    cz_backend_destroy(be);
}

static void test_ref_bn_grads(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    const int n = 2, c = 3, h = 3, w = 4;
    size_t nx = numel4(n, c, h, w);
    float *x = hrand(nx, 5, -1, 2), *g = hrand(3, 6, 0.5f, 1.5f), *bt = hrand(3, 7, -0.5f, 0.5f);
    float *r = hrand(nx, 8, -1, 1);
    fd f = {.be = be, .call = cb_bn_train, .out = 7, .r = r};
    f.arg.eps = 1e-5f;
    f.arg.mom = 0.1f;
    put(be, &f.t[0], CZ_F32, CZ_ROLE_ACT, n, c, h, w, x);
    put(be, &f.t[1], CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, g);
    put(be, &f.t[2], CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, bt);
    for (int i = 3; i < 7; i++) put(be, &f.t[i], CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, NULL);
    put(be, &f.t[7], CZ_F32, CZ_ROLE_ACT, n, c, h, w, NULL);
    fd_loss(&f); /* fills save_mean / save_invstd */
    cz_tensor tdy, tdx, tdg, tdb;
    put(be, &tdy, CZ_F32, CZ_ROLE_ACT, n, c, h, w, r);
    put(be, &tdx, CZ_F32, CZ_ROLE_ACT, n, c, h, w, NULL);
    put(be, &tdg, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, NULL);
    put(be, &tdb, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, NULL);
    OK(be->ops->bn_train_bwd(be, &f.t[0], &tdy, &f.t[1], &f.t[5], &f.t[6], &tdx, &tdg, &tdb, 0));
    float *dx = get(be, &tdx), *dg = get(be, &tdg), *db = get(be, &tdb);
    fd_check(&f, 0, x, 1e-2, dx, 1e-3, "bn_train [2,3,3,4] dx");
    fd_check(&f, 1, g, 1e-2, dg, 1e-4, "bn_train [2,3,3,4] dgamma");
    fd_check(&f, 2, bt, 1e-2, db, 1e-4, "bn_train [2,3,3,4] dbeta");
    OK(be->ops->bn_train_bwd(be, &f.t[0], &tdy, &f.t[1], &f.t[5], &f.t[6], &tdx, &tdg, &tdb, 1));
    float *dg2 = get(be, &tdg);
    for (int i = 0; i < c; i++) assert_float_equal(dg2[i], 2 * dg[i], 1e-6f * (1 + fabsf(dg[i])));
    free(dg2), free(dx), free(dg), free(db), free(x), free(g), free(bt), free(r);
    cz_tensor_free(be, &tdy), cz_tensor_free(be, &tdx), cz_tensor_free(be, &tdg), cz_tensor_free(be, &tdb);
    fd_free(&f);
    cz_backend_destroy(be);
}

static void test_ref_elementwise_grads(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    const int n = 2, c = 3, h = 4, w = 5;
    size_t k = numel4(n, c, h, w);
    /* activations: away from the kink at 0 */
    for (int a = 1; a < 4; a++) {
        float *x = hrand(k, 50 + a, 0.1f, 2.0f), *r = hrand(k, 60 + a, -1, 1);
        for (size_t i = 0; i < k; i += 2) x[i] = -x[i];
        fd f = {.be = be, .call = cb_act, .out = 1, .r = r};
        f.arg.act = (cz_act)a;
        f.arg.alpha = 0.2f;
        put(be, &f.t[0], CZ_F32, CZ_ROLE_ACT, n, c, h, w, x);
        put(be, &f.t[1], CZ_F32, CZ_ROLE_ACT, n, c, h, w, NULL);
        fd_loss(&f);
        cz_tensor tdy, tdx;
        put(be, &tdy, CZ_F32, CZ_ROLE_ACT, n, c, h, w, r);
        put(be, &tdx, CZ_F32, CZ_ROLE_ACT, n, c, h, w, NULL);
        OK(be->ops->act_bwd(be, (cz_act)a, 0.2f, &f.t[1], &tdy, &tdx));
        float *dx = get(be, &tdx);
        char what[64];
        snprintf(what, sizeof what, "act %s dx", act_name((cz_act)a));
        fd_check(&f, 0, x, a == CZ_ACT_TANH ? 1e-3 : 1e-2, dx, 1e-4, what);
        free(dx), free(x), free(r);
        cz_tensor_free(be, &tdy), cz_tensor_free(be, &tdx);
        fd_free(&f);
    }
    /* BCE with logits, both targets, scaled */
    for (int t = 0; t <= 1; t++) {
        float *x = hrand(k, 70 + t, -4, 4);
        fd f = {.be = be, .call = cb_bce, .out = -1, .lscale = 0.5};
        f.arg.target = (float)t;
        put(be, &f.t[0], CZ_F32, CZ_ROLE_ACT, n, c, h, w, x);
        cz_tensor tdx;
        put(be, &tdx, CZ_F32, CZ_ROLE_ACT, n, c, h, w, NULL);
        OK(be->ops->bce_logits_bwd(be, &f.t[0], (float)t, 0.5f, &tdx));
        float *dx = get(be, &tdx);
        fd_check(&f, 0, x, 1e-3, dx, 1e-5, t ? "bce_logits target 1 dx" : "bce_logits target 0 dx");
        free(dx), free(x);
        cz_tensor_free(be, &tdx);
        fd_free(&f);
    }
    /* L1, scaled by 100 as in pix2pix */
    {
        float *a = hrand(k, 80, -1, 1), *b = hrand(k, 81, -0.9f, 0.9f);
        separate(b, a, k);
        fd f = {.be = be, .call = cb_l1, .out = -1, .lscale = 100.0};
        put(be, &f.t[0], CZ_F32, CZ_ROLE_ACT, n, c, h, w, a);
        put(be, &f.t[1], CZ_F32, CZ_ROLE_ACT, n, c, h, w, b);
        cz_tensor tda;
        put(be, &tda, CZ_F32, CZ_ROLE_ACT, n, c, h, w, NULL);
        OK(be->ops->l1_bwd(be, &f.t[0], &f.t[1], 100.0f, &tda));
        float *da = get(be, &tda);
        fd_check(&f, 0, a, 1e-2, da, 1e-6, "l1 da");
        free(da), free(a), free(b);
        cz_tensor_free(be, &tda);
        fd_free(&f);
    }
    /* concat_bwd is the split; dropout_bwd multiplies by the mask */
    {
        float *dy = hrand(numel4(2, 5, 2, 3), 90, -1, 1), *init = hrand(numel4(2, 3, 2, 3), 91, -1, 1);
        cz_tensor tdy, tda, tdb;
        put(be, &tdy, CZ_F32, CZ_ROLE_ACT, 2, 5, 2, 3, dy);
        put(be, &tda, CZ_F32, CZ_ROLE_ACT, 2, 3, 2, 3, init);
        put(be, &tdb, CZ_F32, CZ_ROLE_ACT, 2, 2, 2, 3, NULL);
        OK(be->ops->concat_bwd(be, &tdy, &tda, &tdb, 1));
        float *da = get(be, &tda), *db = get(be, &tdb);
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 18; j++) assert_true(da[i * 18 + j] == init[i * 18 + j] + dy[i * 30 + j]);
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 12; j++) assert_true(db[i * 12 + j] == dy[i * 30 + 18 + j]);
        free(da), free(db), free(dy), free(init);
        cz_tensor_free(be, &tdy), cz_tensor_free(be, &tda), cz_tensor_free(be, &tdb);
    }
    {
        float *x = hrand(k, 92, -1, 1), *dy = hrand(k, 93, -1, 1);
        cz_tensor tx, tm, ty, tdy, tdx;
        put(be, &tx, CZ_F32, CZ_ROLE_ACT, n, c, h, w, x);
        put(be, &tm, CZ_F32, CZ_ROLE_ACT, n, c, h, w, NULL);
        put(be, &ty, CZ_F32, CZ_ROLE_ACT, n, c, h, w, NULL);
        put(be, &tdy, CZ_F32, CZ_ROLE_ACT, n, c, h, w, dy);
        put(be, &tdx, CZ_F32, CZ_ROLE_ACT, n, c, h, w, NULL);
        OK(be->ops->dropout_fwd(be, 0.5f, 77, &tx, &tm, &ty));
        OK(be->ops->dropout_bwd(be, &tm, &tdy, &tdx));
        float *m = get(be, &tm), *dx = get(be, &tdx);
        for (size_t i = 0; i < k; i++) assert_true(dx[i] == dy[i] * m[i]);
        free(m), free(dx), free(x), free(dy);
        cz_tensor_free(be, &tx), cz_tensor_free(be, &tm), cz_tensor_free(be, &ty);
        cz_tensor_free(be, &tdy), cz_tensor_free(be, &tdx);
    }
    cz_backend_destroy(be);
}

static void test_ref_adam(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    const size_t k = 50;
    float *p = hrand(k, 1, -1, 1), *g = hrand(k, 2, -1, 1);
    double *pp = calloc(k, sizeof *pp), *m = calloc(k, sizeof *m), *v = calloc(k, sizeof *v);
    assert_true(pp && m && v);
    for (size_t i = 0; i < k; i++) pp[i] = p[i];
    cz_tensor tp, tg, tm, tv;
    put(be, &tp, CZ_F32, CZ_ROLE_CONV_W, 2, 5, 1, 5, p);
    put(be, &tg, CZ_F32, CZ_ROLE_CONV_W, 2, 5, 1, 5, g);
    put(be, &tm, CZ_F32, CZ_ROLE_CONV_W, 2, 5, 1, 5, NULL);
    put(be, &tv, CZ_F32, CZ_ROLE_CONV_W, 2, 5, 1, 5, NULL);
    const double lr = 2e-4, b1 = 0.5, b2 = 0.999, eps = 1e-8;
    for (int t = 1; t <= 3; t++) {
        OK(be->ops->adam_step(be, &tp, &tg, &tm, &tv, (float)lr, (float)b1, (float)b2, (float)eps, t));
        for (size_t i = 0; i < k; i++) {
            m[i] = b1 * m[i] + (1 - b1) * g[i];
            v[i] = b2 * v[i] + (1 - b2) * (double)g[i] * g[i];
            double mh = m[i] / (1 - pow(b1, t)), vh = v[i] / (1 - pow(b2, t));
            pp[i] -= lr * mh / (sqrt(vh) + eps);
        }
    }
    float *r = get(be, &tp);
    for (size_t i = 0; i < k; i++) assert_float_equal(r[i], pp[i], 1e-6);
    /* with a constant gradient each step moves by lr (bias-corrected m/sqrt(v) = sign(g)) */
    for (size_t i = 0; i < k; i++) assert_true(fabs(fabs((double)r[i] - p[i]) - 3 * lr) < 1e-6);
    cz_tensor bf;
    put(be, &bf, CZ_BF16, CZ_ROLE_CONV_W, 2, 5, 1, 5, NULL);
    assert_int_equal(be->ops->adam_step(be, &bf, &tg, &tm, &tv, 1e-3f, 0.9f, 0.999f, 1e-8f, 1), CZ_ERR_UNSUPPORTED);
    free(r), free(p), free(g), free(pp), free(m), free(v);
    cz_tensor_free(be, &tp), cz_tensor_free(be, &tg), cz_tensor_free(be, &tm), cz_tensor_free(be, &tv);
    cz_tensor_free(be, &bf);
    cz_backend_destroy(be);
}

/* A 256x256 pass through the largest convs of an ngf-8 generator, timed so that a slow ref shows
 * up in the log (no assertion on time). */
static void test_ref_speed(void **state) {
    (void)state;
    cz_backend *be = ref_backend();
    struct timespec t0, t1;
    cz_tensor x, w, y, wd, x2;
    put(be, &x, CZ_F32, CZ_ROLE_ACT, 1, 8, 256, 256, NULL);
    put(be, &w, CZ_F32, CZ_ROLE_CONV_W, 16, 8, 4, 4, NULL);
    put(be, &y, CZ_F32, CZ_ROLE_ACT, 1, 16, 128, 128, NULL);
    put(be, &wd, CZ_F32, CZ_ROLE_DECONV_W, 32, 8, 4, 4, NULL);
    put(be, &x2, CZ_F32, CZ_ROLE_ACT, 1, 32, 128, 128, NULL);
    cz_conv_params p = {2, 1, CZ_ACT_NONE, 0};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    OK(be->ops->conv2d(be, &x, &w, NULL, &p, &y));
    OK(be->ops->deconv2d(be, &x2, &wd, NULL, &p, &x));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    printf("[ref fp32] conv 8->16 256->128 + deconv 32->8 128->256 (100M MAC): %.1f ms\n", ms);
    cz_tensor_free(be, &x), cz_tensor_free(be, &w), cz_tensor_free(be, &y), cz_tensor_free(be, &wd);
    cz_tensor_free(be, &x2);
    cz_backend_destroy(be);
}

/* ========================================================================================== */
/* (d) merge_lab against cz_render_merge_ab                                                    */

#define MERGE_SCALE 110.0f

/* One image's inputs and the host's expected bytes. */
typedef struct merge_img {
    cz_render_geom g;
    cz_host_buf L, rgb;
    uint8_t *want; /* src_w * src_h * 3 */
} merge_img;

static void merge_img_free(cz_backend *be, merge_img *m) {
    cz_host_buf_free(be, &m->L);
    cz_host_buf_free(be, &m->rgb);
    free(m->want);
    m->want = NULL;
}

/* L in [0, 100], with exact 0 and 100 among the values. */
static void merge_fill_L(float *L, size_t px, uint64_t seed) {
    tu_fill_uniform(L, px, seed, 0.0f, 100.0f);
    for (size_t i = 0; i < px; i++) {
        if (i % 97 == 0) L[i] = 0.0f;
        if (i % 89 == 1) L[i] = 100.0f;
    }
}

/* The host's bytes for image i of `ab_read` (tensor_read of a (cap, 2, h, w) tensor). */
static void merge_expect(const float *ab_read, int i, merge_img *m) {
    const cz_render_geom *g = &m->g;
    size_t plane = (size_t)g->net_w * (size_t)g->net_h;
    float *ab = hbuf(2 * plane);
    for (size_t k = 0; k < 2 * plane; k++) ab[k] = ab_read[(size_t)i * 2 * plane + k] * MERGE_SCALE;
    cz_image img;
    OK(cz_render_merge_ab((const float *)m->L.p, ab, g, &img));
    assert_int_equal(img.width, g->src_w);
    assert_int_equal(img.height, g->src_h);
    size_t bytes = (size_t)g->src_w * (size_t)g->src_h * 3;
    free(m->want);
    m->want = malloc(bytes);
    assert_non_null(m->want);
    memcpy(m->want, img.px, bytes);
    cz_image_free(&img);
    free(ab);
}

static cz_merge_item merge_item_of(const merge_img *m) {
    cz_merge_item it = {(const float *)m->L.p, (uint8_t *)m->rgb.p, m->g.src_w, m->g.src_h,
                        m->g.scaled_w,         m->g.scaled_h,      m->g.off_x, m->g.off_y};
    return it;
}

/* Bytes that differ between the device's and the host's images, with the first one in msg. */
static size_t merge_diff(const merge_img *m, char *msg, size_t msz) {
    size_t bytes = (size_t)m->g.src_w * (size_t)m->g.src_h * 3, bad = 0;
    const uint8_t *got = (const uint8_t *)m->rgb.p;
    for (size_t k = 0; k < bytes; k++)
        if (got[k] != m->want[k]) {
            if (!bad)
                snprintf(msg, msz, "first at pixel (%zu, %zu) channel %zu: %u, host %u", k / 3 % (size_t)m->g.src_w,
                         k / 3 / (size_t)m->g.src_w, k % 3, got[k], m->want[k]);
            bad++;
        }
    return bad;
}

/* Sets up image m of geometry (src_w, src_h, render, multiple): L, and rgb poisoned. */
static void merge_img_init(cz_backend *be, merge_img *m, int src_w, int src_h, int render, uint64_t seed) {
    memset(m, 0, sizeof *m);
    OK(cz_render_geom_compute(src_w, src_h, render, 256, &m->g));
    size_t px = (size_t)src_w * (size_t)src_h;
    OK(cz_host_buf_reserve(be, &m->L, px * sizeof(float)));
    OK(cz_host_buf_reserve(be, &m->rgb, px * 3));
    merge_fill_L((float *)m->L.p, px, seed);
    memset(m->rgb.p, 0xa5, px * 3);
}

/* The refusals: each returns CZ_ERR_INVALID_ARG. Returns the number that did not. */
static int merge_refusals(cz_backend *be, cz_tensor *ab, const merge_img *m, char *msg, size_t msz) {
    cz_tensor ab3 = {0};
    OK(cz_tensor_alloc(be, &ab3, ab->dtype, CZ_ROLE_ACT, 1, 3, ab->h, ab->w));
    const cz_merge_item good = merge_item_of(m);
    cz_merge_item bad[12];
    const char *what[12];
    int nb = 0;
#define MERGE_BAD(label, field, value)                                                              \
    do {                                                                                            \
        bad[nb] = good;                                                                             \
        bad[nb].field = value;                                                                      \
        what[nb++] = label;                                                                         \
    } while (0)
    /* scaled more than twice the source (area averaging: the host's) */
    MERGE_BAD("scaled_w > 2 src_w", src_w, (good.scaled_w - 1) / 2);
    MERGE_BAD("scaled_h > 2 src_h", src_h, (good.scaled_h - 1) / 2);
    MERGE_BAD("scaled image past the right edge", off_x, ab->w - good.scaled_w + 1);
    MERGE_BAD("scaled image past the bottom", off_y, ab->h - good.scaled_h + 1);
    MERGE_BAD("negative off_x", off_x, -1);
    MERGE_BAD("src_w 0", src_w, 0);
    MERGE_BAD("scaled_h 0", scaled_h, 0);
    MERGE_BAD("L NULL", L, NULL);
    MERGE_BAD("rgb NULL", rgb, NULL);
#undef MERGE_BAD
    int failed = 0;
    uint64_t ticket = 0;
    msg[0] = 0;
    for (int k = 0; k < nb; k++) {
        cz_status st = be->ops->merge_lab(be, ab, &bad[k], 1, MERGE_SCALE, &ticket);
        if (st != CZ_ERR_INVALID_ARG && !failed++)
            snprintf(msg, msz, "%s: %s, not invalid-arg", what[k], cz_strerror(st));
    }
    /* the call's own arguments; a bad item after a good one */
    cz_merge_item many[5] = {good, good, good, good, good}, two[2] = {good, bad[0]};
    const char *clabel[7] = {"items NULL", "n 0", "n > ab->n", "ab NULL", "ab with 3 channels", "ticket NULL",
                             "bad second item"};
    cz_status cst[7];
    cst[0] = be->ops->merge_lab(be, ab, NULL, 1, MERGE_SCALE, &ticket);
    cst[1] = be->ops->merge_lab(be, ab, many, 0, MERGE_SCALE, &ticket);
    cst[2] = be->ops->merge_lab(be, ab, many, ab->n + 1, MERGE_SCALE, &ticket);
    cst[3] = be->ops->merge_lab(be, NULL, many, 1, MERGE_SCALE, &ticket);
    cst[4] = be->ops->merge_lab(be, &ab3, many, 1, MERGE_SCALE, &ticket);
    cst[5] = be->ops->merge_lab(be, ab, many, 1, MERGE_SCALE, NULL);
    cst[6] = be->ops->merge_lab(be, ab, two, 2, MERGE_SCALE, &ticket);
    for (int k = 0; k < 7; k++)
        if (cst[k] != CZ_ERR_INVALID_ARG && !failed++)
            snprintf(msg, msz, "%s: %s, not invalid-arg", clabel[k], cz_strerror(cst[k]));
    cz_tensor_free(be, &ab3);
    return failed;
}

/* One dtype on `be`: returns the number of failed checks (printing a line for each). */
static int merge_dtype(cz_backend *be, cz_dtype dt) {
    const char *tag = be->ops->name, *dn = cz_dtype_name(dt);
    int failed = 0;
    char msg[256];
    /* batch A: three images at net 256x256, from a 4-image tensor; batch B: one at 512x256 */
    const int srcA[3][2] = {{300, 200}, {256, 256}, {130, 97}};
    merge_img A[3], A2[3], B;
    for (int i = 0; i < 3; i++) {
        merge_img_init(be, &A[i], srcA[i][0], srcA[i][1], 256, 100 + (uint64_t)i);
        merge_img_init(be, &A2[i], srcA[i][0], srcA[i][1], 256, 200 + (uint64_t)i);
        assert_int_equal(A[i].g.net_w, 256);
        assert_int_equal(A[i].g.net_h, 256);
    }
    merge_img_init(be, &B, 1000, 400, 512, 300);
    assert_int_equal(B.g.net_w, 512);
    assert_int_equal(B.g.net_h, 256);
    cz_tensor abA = {0}, abB = {0};
    size_t nA = numel4(4, 2, 256, 256), nB = numel4(1, 2, 256, 512);
    float *srcA1 = hrand(nA, 11 + (uint64_t)dt, -1.0f, 1.0f), *srcA2 = hrand(nA, 22 + (uint64_t)dt, -1.0f, 1.0f);
    float *srcB = hrand(nB, 33 + (uint64_t)dt, -1.0f, 1.0f);
    put(be, &abA, dt, CZ_ROLE_ACT, 4, 2, 256, 256, srcA1);
    put(be, &abB, dt, CZ_ROLE_ACT, 1, 2, 256, 512, srcB);
    float *readA1 = get(be, &abA), *readB = get(be, &abB);
    /* queued in one go: A from the first contents, B, then ab rewritten and A again (the merge
     * slots are reused and the rewrite must come after the first merge's reads) */
    cz_merge_item itA[3], itA2[3], itB = merge_item_of(&B);
    for (int i = 0; i < 3; i++) itA[i] = merge_item_of(&A[i]), itA2[i] = merge_item_of(&A2[i]);
    uint64_t tA = 0, tB = 0, tA2 = 0;
    OK(be->ops->merge_lab(be, &abA, itA, 3, MERGE_SCALE, &tA));
    OK(be->ops->merge_lab(be, &abB, &itB, 1, MERGE_SCALE, &tB));
    OK(be->ops->tensor_write(be, &abA, srcA2));
    OK(be->ops->merge_lab(be, &abA, itA2, 3, MERGE_SCALE, &tA2));
    OK(be->ops->transfer_wait(be, tA2));
    OK(be->ops->transfer_wait(be, tB));
    OK(be->ops->transfer_wait(be, tA));
    float *readA2 = get(be, &abA);
    for (int i = 0; i < 3; i++) {
        merge_expect(readA1, i, &A[i]);
        merge_expect(readA2, i, &A2[i]);
    }
    merge_expect(readB, 0, &B);
    merge_img *all[7] = {&A[0], &A[1], &A[2], &B, &A2[0], &A2[1], &A2[2]};
    size_t bytes = 0;
    for (int k = 0; k < 7; k++) {
        merge_img *m = all[k];
        size_t bad = merge_diff(m, msg, sizeof msg);
        bytes += (size_t)m->g.src_w * (size_t)m->g.src_h * 3;
        printf("[%s %s] merge_lab %4dx%-4d (scaled %dx%d at %d,%d of %dx%d)%s: %s %s\n", tag, dn, m->g.src_w,
               m->g.src_h, m->g.scaled_w, m->g.scaled_h, m->g.off_x, m->g.off_y, m->g.net_w, m->g.net_h,
               k >= 4 ? ", ab rewritten" : "", bad ? "FAIL" : "ok", bad ? msg : "");
        if (bad) {
            printf("    %zu of %zu bytes differ from cz_render_merge_ab\n", bad,
                   (size_t)m->g.src_w * (size_t)m->g.src_h * 3);
            failed++;
        }
    }
    printf("[%s %s] merge_lab: %zu bytes of 7 images compared with cz_render_merge_ab\n", tag, dn, bytes);
    int r = merge_refusals(be, &abA, &A[2], msg, sizeof msg);
    printf("[%s %s] merge_lab refusals (invalid-arg): %s %s\n", tag, dn, r ? "FAIL" : "ok", msg);
    failed += r;
    free(srcA1), free(srcA2), free(srcB), free(readA1), free(readA2), free(readB);
    cz_tensor_free(be, &abA), cz_tensor_free(be, &abB);
    for (int i = 0; i < 3; i++) merge_img_free(be, &A[i]), merge_img_free(be, &A2[i]);
    merge_img_free(be, &B);
    return failed;
}

/* Runs `run` on every compiled-in backend that starts here and `has` accepts (others get a
 * "skipped: <name> <why_not>" line), in each dtype of dts[0..ndt) it supports, and asserts that
 * no run failed. `what` names the group in the printed lines. */
static void each_backend_dtype(const char *what, int (*has)(const cz_backend *), const char *why_not,
                               const cz_dtype *dts, int ndt, int (*run)(cz_backend *, cz_dtype)) {
    int failed = 0, tested = 0;
    const char *const *names = cz_backend_names();
    for (int i = 0; names[i]; i++) {
        cz_backend *be = NULL;
        if (cz_backend_create(names[i], NULL, &be) != CZ_OK) {
            printf("%s: %s not available (%s)\n", what, names[i], cz_error_detail());
            continue;
        }
        if (!has(be)) {
            printf("%s: skipped: %s %s\n", what, names[i], why_not);
            cz_backend_destroy(be);
            continue;
        }
        for (int d = 0; d < ndt; d++) {
            if (!be->ops->supports(be, dts[d])) {
                printf("%s: %s %s not supported\n", what, names[i], cz_dtype_name(dts[d]));
                continue;
            }
            failed += run(be, dts[d]);
            tested++;
        }
        cz_backend_destroy(be);
    }
    printf("%s: %d backend/dtype pair(s) tested, %d failure(s)\n", what, tested, failed);
    assert_int_equal(failed, 0);
}

static int has_merge_lab(const cz_backend *be) {
    if (be->ops->merge_lab) assert_non_null(be->ops->transfer_wait);
    return be->ops->merge_lab != NULL;
}

static void test_backend_merge_lab(void **state) {
    (void)state;
    const cz_dtype dts[3] = {CZ_F32, CZ_BF16, CZ_F16};
    each_backend_dtype("merge_lab", has_merge_lab, "has no merge_lab (the host merges)", dts, 3, merge_dtype);
}

/* ----------------------------------------------------------------------------------------- */
/* (e) queued losses and the gated multi-tensor Adam (loss_queue, loss_read, adam_multi)      */
/* ----------------------------------------------------------------------------------------- */

#define QA_N 40 /* more than one launch's worth on cuda (CUK_ADAM_MAX 32) */

typedef struct qa_param {
    cz_tensor p, g, m, v;
} qa_param;

/* Parameters of varied sizes (a few elements to a few thousand), gradient dtype `gdt`. */
static void qa_params(cz_backend *be, qa_param *q, int n, cz_dtype gdt, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        int c = 1 + (i * 7) % 13, h = 1 + (i % 5), w = 1 + (i * 3) % 41;
        size_t k = numel4(2, c, h, w);
        float *pv = hrand(k, seed + 4 * (uint64_t)i, -1, 1), *gv = hrand(k, seed + 4 * (uint64_t)i + 1, -1, 1);
        float *mv = hrand(k, seed + 4 * (uint64_t)i + 2, -0.1f, 0.1f), *vv = hrand(k, seed + 4 * (uint64_t)i + 3, 0, 0.1f);
        put(be, &q[i].p, CZ_F32, CZ_ROLE_CONV_W, 2, c, h, w, pv);
        put(be, &q[i].g, gdt, CZ_ROLE_CONV_W, 2, c, h, w, gv);
        put(be, &q[i].m, CZ_F32, CZ_ROLE_CONV_W, 2, c, h, w, mv);
        put(be, &q[i].v, CZ_F32, CZ_ROLE_CONV_W, 2, c, h, w, vv);
        free(pv), free(gv), free(mv), free(vv);
    }
}

static void qa_free(cz_backend *be, qa_param *q, int n) {
    for (int i = 0; i < n; i++) {
        cz_tensor_free(be, &q[i].p), cz_tensor_free(be, &q[i].g);
        cz_tensor_free(be, &q[i].m), cz_tensor_free(be, &q[i].v);
    }
}

/* Number of parameters whose p, m or v differ (bitwise) between the two sets. */
static int qa_differ(cz_backend *be, const qa_param *a, const qa_param *b, int n) {
    int bad = 0;
    for (int i = 0; i < n; i++) {
        const cz_tensor *ta[3] = {&a[i].p, &a[i].m, &a[i].v}, *tb[3] = {&b[i].p, &b[i].m, &b[i].v};
        int differ = 0;
        for (int k = 0; k < 3; k++) {
            float *x = get(be, ta[k]), *y = get(be, tb[k]);
            differ |= memcmp(x, y, cz_tensor_numel(ta[k]) * sizeof *x) != 0;
            free(x), free(y);
        }
        bad += differ;
    }
    return bad;
}

static int queued_dtype(cz_backend *be, cz_dtype dt) {
    const char *tag = be->ops->name, *dn = cz_dtype_name(dt);
    int failed = 0;
    /* losses: queued == the synchronous op, bit for bit, several in flight */
    cz_tensor x, y, z;
    float *xv = hrand(numel4(3, 1, 30, 30), 501, -4, 4), *yv = hrand(numel4(3, 2, 17, 19), 502, -1, 1);
    float *zv = hrand(numel4(3, 2, 17, 19), 503, -1, 1);
    put(be, &x, dt, CZ_ROLE_ACT, 3, 1, 30, 30, xv);
    put(be, &y, dt, CZ_ROLE_ACT, 3, 2, 17, 19, yv);
    put(be, &z, dt, CZ_ROLE_ACT, 3, 2, 17, 19, zv);
    double want[4], got[CZ_LOSS_SLOTS + 1];
    OK(be->ops->bce_logits_fwd(be, &x, 0.f, &want[0]));
    OK(be->ops->bce_logits_fwd(be, &x, 1.f, &want[1]));
    OK(be->ops->l1_fwd(be, &y, &z, &want[2]));
    OK(be->ops->l1_fwd(be, &z, &y, &want[3]));
    OK(be->ops->loss_queue(be, 2, &y, &z, 0.f));
    OK(be->ops->loss_queue(be, 0, &x, NULL, 0.f));
    OK(be->ops->loss_queue(be, 1, &x, NULL, 1.f));
    OK(be->ops->loss_queue(be, 3, &z, &y, 0.f));
    OK(be->ops->loss_read(be, got, 4));
    int lbad = 0;
    for (int i = 0; i < 4; i++) lbad += got[i] != want[i];
    printf("[%s %s] loss_queue/loss_read: bce(0) %.9g bce(1) %.9g l1 %.9g %.9g: %s\n", tag, dn, got[0], got[1], got[2],
           got[3], lbad ? "FAIL (differs from bce_logits_fwd / l1_fwd)" : "ok");
    failed += lbad != 0;
    /* refusals */
    cz_status r[5] = {be->ops->loss_queue(be, -1, &x, NULL, 0.f), be->ops->loss_queue(be, CZ_LOSS_SLOTS, &x, NULL, 0.f),
                      be->ops->loss_queue(be, 0, &y, &x, 0.f), be->ops->loss_queue(be, 0, &x, NULL, NAN),
                      be->ops->loss_read(be, got, CZ_LOSS_SLOTS + 1)};
    const cz_status want_r[5] = {CZ_ERR_INVALID_ARG, CZ_ERR_INVALID_ARG, CZ_ERR_SHAPE, CZ_ERR_INVALID_ARG,
                                 CZ_ERR_INVALID_ARG};
    int rbad = 0;
    for (int i = 0; i < 5; i++) rbad += r[i] != want_r[i];
    printf("[%s %s] loss_queue refusals: %s\n", tag, dn, rbad ? "FAIL" : "ok");
    failed += rbad != 0;

    /* adam_multi == adam_step on each parameter, bit for bit, over two steps */
    qa_param *a = calloc(QA_N, sizeof *a), *b = calloc(QA_N, sizeof *b);
    cz_adam_item *items = calloc(QA_N, sizeof *items);
    assert_true(a && b && items);
    qa_params(be, a, QA_N, dt, 600);
    qa_params(be, b, QA_N, dt, 600);
    for (int i = 0; i < QA_N; i++) items[i] = (cz_adam_item){&b[i].p, &b[i].g, &b[i].m, &b[i].v};
    for (int t = 1; t <= 2; t++) {
        for (int i = 0; i < QA_N; i++)
            OK(be->ops->adam_step(be, &a[i].p, &a[i].g, &a[i].m, &a[i].v, 2e-4f, 0.5f, 0.999f, 1e-8f, t));
        OK(be->ops->adam_multi(be, items, QA_N, 2e-4f, 0.5f, 0.999f, 1e-8f, t, 0x3)); /* slots 0, 1: finite */
    }
    int abad = qa_differ(be, a, b, QA_N);
    printf("[%s %s] adam_multi == adam_step on %d parameters, 2 steps, finite gate: %s\n", tag, dn, QA_N,
           abad ? "FAIL" : "ok");
    failed += abad != 0;
    /* a non-finite loss in a gated slot leaves everything as it was; an ungated one does not */
    float nanv = NAN, infv = INFINITY;
    cz_tensor one = {0}, zero;
    OK(cz_tensor_alloc(be, &one, dt, CZ_ROLE_ACT, 1, 1, 1, 1));
    put(be, &zero, dt, CZ_ROLE_ACT, 1, 1, 1, 1, NULL);
    OK(be->ops->tensor_write(be, &one, &nanv));
    OK(be->ops->loss_queue(be, 5, &one, NULL, 1.f));
    OK(be->ops->tensor_write(be, &one, &infv));
    OK(be->ops->loss_queue(be, 6, &one, &zero, 0.f)); /* |Inf - 0| */
    OK(be->ops->adam_multi(be, items, QA_N, 2e-4f, 0.5f, 0.999f, 1e-8f, 3, 1u << 5));
    OK(be->ops->adam_multi(be, items, QA_N, 2e-4f, 0.5f, 0.999f, 1e-8f, 3, (1u << 6) | 1u));
    int gbad = qa_differ(be, a, b, QA_N);
    OK(be->ops->loss_read(be, got, 7));
    int slots_bad = !isnan(got[5]) || !(got[6] > 0 && isinf(got[6])) || got[2] != want[2];
    printf("[%s %s] adam_multi gated on NaN (slot 5 = %g) and Inf (slot 6 = %g): %d of %d parameters changed: %s\n", tag,
           dn, got[5], got[6], gbad, QA_N, gbad || slots_bad ? "FAIL" : "ok");
    failed += gbad != 0 || slots_bad;
    OK(be->ops->adam_multi(be, items, QA_N, 2e-4f, 0.5f, 0.999f, 1e-8f, 3, 1u << 2));
    int moved = qa_differ(be, a, b, QA_N);
    printf("[%s %s] adam_multi gated on a finite slot: %d of %d parameters changed: %s\n", tag, dn, moved, QA_N,
           moved == QA_N ? "ok" : "FAIL");
    failed += moved != QA_N;
    cz_adam_item twice[2] = {items[3], items[3]};
    cz_status ar[3] = {be->ops->adam_multi(be, items, QA_N, 2e-4f, 0.5f, 0.999f, 1e-8f, 0, 0),
                       be->ops->adam_multi(be, items, QA_N, 2e-4f, 0.5f, 0.999f, 1e-8f, 4, 1u << CZ_LOSS_SLOTS),
                       be->ops->adam_multi(be, twice, 2, 2e-4f, 0.5f, 0.999f, 1e-8f, 4, 0)};
    int arbad = ar[0] != CZ_ERR_INVALID_ARG || ar[1] != CZ_ERR_INVALID_ARG || ar[2] != CZ_ERR_INVALID_ARG;
    printf("[%s %s] adam_multi refusals (step 0, gate past the slots, a tensor twice): %s\n", tag, dn,
           arbad ? "FAIL" : "ok");
    failed += arbad;
    qa_free(be, a, QA_N), qa_free(be, b, QA_N);
    free(a), free(b), free(items), free(xv), free(yv), free(zv);
    cz_tensor_free(be, &x), cz_tensor_free(be, &y), cz_tensor_free(be, &z), cz_tensor_free(be, &one);
    cz_tensor_free(be, &zero);
    return failed;
}

static int has_queued_training(const cz_backend *be) {
    const cz_backend_ops *o = be->ops;
    assert_true((o->loss_queue != NULL) == (o->loss_read != NULL) && (o->loss_read != NULL) == (o->adam_multi != NULL));
    return o->loss_queue != NULL;
}

static void test_backend_queued_training(void **state) {
    (void)state;
    const cz_dtype dts[2] = {CZ_F32, CZ_BF16};
    each_backend_dtype("queued training ops", has_queued_training, "has none (training reads each loss)", dts, 2,
                       queued_dtype);
}

/* ----------------------------------------------------------------------------------------- */
/* (f) step variables (var_set, dropout_fwd_var, adam_multi_var) and what recordings may hold  */
/* ----------------------------------------------------------------------------------------- */

static uint64_t dbits(double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

/* Whether tensors a and b read back bit for bit equal. */
static int same_bits(cz_backend *be, const cz_tensor *a, const cz_tensor *b) {
    float *x = get(be, a), *y = get(be, b);
    int same = memcmp(x, y, cz_tensor_numel(a) * sizeof *x) == 0;
    free(x), free(y);
    return same;
}

static int vars_dtype(cz_backend *be, cz_dtype dt) {
    const char *tag = be->ops->name, *dn = cz_dtype_name(dt);
    const cz_backend_ops *o = be->ops;
    int failed = 0;
    enum { VS = 3, VA = 9, QN = 5 };
    const float p = 0.4f, b1 = 0.5f, b2 = 0.999f, eps = 1e-8f;
    const uint64_t add = 0x9FB21C651E98DF25ull * 5;
    cz_tensor x, m0, y0, m1, y1;
    float *xv = hrand(numel4(2, 5, 7, 9), 701, -2, 2);
    put(be, &x, dt, CZ_ROLE_ACT, 2, 5, 7, 9, xv);
    put(be, &m0, dt, CZ_ROLE_ACT, 2, 5, 7, 9, NULL);
    put(be, &y0, dt, CZ_ROLE_ACT, 2, 5, 7, 9, NULL);
    put(be, &m1, dt, CZ_ROLE_ACT, 2, 5, 7, 9, NULL);
    put(be, &y1, dt, CZ_ROLE_ACT, 2, 5, 7, 9, NULL);
    /* the variable form == the value form, unrecorded */
    uint64_t seed = 0xFFFFFFFFFFFFFF00ull; /* seed + add wraps around 2^64 */
    OK(o->var_set(be, VS, 1, &seed));
    OK(o->dropout_fwd_var(be, p, VS, add, &x, &m1, &y1));
    OK(o->dropout_fwd(be, p, seed + add, &x, &m0, &y0));
    int dsame = same_bits(be, &m0, &m1) && same_bits(be, &y0, &y1);
    printf("[%s %s] dropout_fwd_var == dropout_fwd (seed from a variable, plus an offset): %s\n", tag, dn,
           dsame ? "ok" : "FAIL");
    failed += !dsame;

    /* recorded once, replayed with three sets of values: each replay equals the value forms
     * with that replay's values (a zeroed tensor and the Adam update recorded too) */
    qa_param *a = calloc(QN, sizeof *a), *b = calloc(QN, sizeof *b);
    cz_adam_item *items = calloc(QN, sizeof *items);
    assert_true(a && b && items);
    qa_params(be, a, QN, dt, 800);
    qa_params(be, b, QN, dt, 800);
    for (int i = 0; i < QN; i++) items[i] = (cz_adam_item){&b[i].p, &b[i].g, &b[i].m, &b[i].v};
    cz_tensor z;
    float *zv = hrand(numel4(1, 3, 4, 4), 702, 1, 2);
    put(be, &z, dt, CZ_ROLE_ACT, 1, 3, 4, 4, zv);
    cz_recording *rec = NULL;
    OK(o->record_begin(be));
    cz_status rs[4] = {o->dropout_fwd_var(be, p, VS, add, &x, &m1, &y1),
                       o->adam_multi_var(be, items, QN, b1, b2, eps, VA, 0x1), o->tensor_zero(be, &z),
                       o->var_set(be, VS, 1, &seed)};
    OK(o->record_end(be, &rec));
    int rbad = rs[0] != CZ_OK || rs[1] != CZ_OK || rs[2] != CZ_OK || rs[3] != CZ_ERR_UNSUPPORTED;
    printf("[%s %s] recording dropout_fwd_var, adam_multi_var, tensor_zero: %s; var_set refused: %s\n", tag, dn,
           rbad ? "FAIL" : "ok", rs[3] == CZ_ERR_UNSUPPORTED ? "ok" : "FAIL");
    failed += rbad;
    int rep_bad = 0;
    for (int k = 0; k < 3 && !rbad; k++) {
        const int t = k + 1;
        const float lr = 2e-4f * (float)(3 - k);
        uint64_t sk = 1000003ull * (uint64_t)(k + 7);
        uint64_t hv[3] = {dbits((double)lr), dbits(1.0 - pow((double)b1, t)), dbits(1.0 - pow((double)b2, t))};
        OK(o->var_set(be, VS, 1, &sk));
        OK(o->var_set(be, VA, 3, hv));
        OK(o->replay(be, rec));
        OK(o->dropout_fwd(be, p, sk + add, &x, &m0, &y0));
        for (int i = 0; i < QN; i++) OK(o->adam_step(be, &a[i].p, &a[i].g, &a[i].m, &a[i].v, lr, b1, b2, eps, t));
        float *zr = get(be, &z);
        int zeroed = 1;
        for (size_t i = 0; i < cz_tensor_numel(&z); i++) zeroed &= zr[i] == 0.f;
        free(zr);
        int ok = same_bits(be, &m0, &m1) && same_bits(be, &y0, &y1) && qa_differ(be, a, b, QN) == 0 && zeroed;
        printf("[%s %s] replay %d (seed %llu, lr %g, step %d) == the ops with those values: %s\n", tag, dn, k + 1,
               (unsigned long long)sk, (double)lr, t, ok ? "ok" : "FAIL");
        rep_bad += !ok;
        OK(be->ops->tensor_write(be, &z, zv)); /* the next replay must zero it again */
    }
    failed += rep_bad != 0;
    if (rec) o->record_free(be, rec);

    /* a recorded loss keeps its own element count: after an unrecorded loss of another size in
     * the same slot, a replay of the recorded one reads back that one's mean */
    double want = 0, got[2] = {0, 0};
    OK(o->bce_logits_fwd(be, &x, 1.f, &want));
    OK(o->loss_queue(be, 1, &x, NULL, 1.f)); /* unrecorded first: sizes the reduction scratch */
    rec = NULL;
    OK(o->record_begin(be));
    cz_status lq = o->loss_queue(be, 1, &x, NULL, 1.f);
    OK(o->record_end(be, &rec));
    OK(lq);
    OK(o->loss_queue(be, 1, &z, NULL, 1.f));
    OK(o->loss_read(be, got, 2));
    OK(o->replay(be, rec));
    OK(o->loss_read(be, got, 2));
    o->record_free(be, rec);
    printf("[%s %s] recorded loss_queue replayed after a loss of another size: %.9g (bce_logits_fwd %.9g): %s\n", tag,
           dn, got[1], want, got[1] == want ? "ok" : "FAIL");
    failed += got[1] != want;

    /* refusals */
    uint64_t one = 1;
    cz_status r[8] = {o->var_set(be, -1, 1, &one),
                      o->var_set(be, CZ_STEP_VARS - 1, 2, (uint64_t[2]){1, 2}),
                      o->var_set(be, 0, 0, &one),
                      o->var_set(be, 0, 1, NULL),
                      o->dropout_fwd_var(be, p, -1, 0, &x, &m1, &y1),
                      o->dropout_fwd_var(be, p, CZ_STEP_VARS, 0, &x, &m1, &y1),
                      o->adam_multi_var(be, items, QN, b1, b2, eps, CZ_STEP_VARS - 2, 0),
                      o->adam_multi_var(be, items, QN, b1, b2, eps, -1, 0)};
    int fbad = 0;
    for (int i = 0; i < 8; i++) fbad += r[i] != CZ_ERR_INVALID_ARG;
    printf("[%s %s] step variable refusals (outside 0..%d, none, NULL): %s\n", tag, dn, CZ_STEP_VARS - 1,
           fbad ? "FAIL" : "ok");
    failed += fbad != 0;
    qa_free(be, a, QN), qa_free(be, b, QN);
    free(a), free(b), free(items), free(xv), free(zv);
    cz_tensor_free(be, &x), cz_tensor_free(be, &m0), cz_tensor_free(be, &y0), cz_tensor_free(be, &m1);
    cz_tensor_free(be, &y1), cz_tensor_free(be, &z);
    return failed;
}

static int has_step_vars(const cz_backend *be) {
    const cz_backend_ops *o = be->ops;
    assert_true((o->var_set != NULL) == (o->dropout_fwd_var != NULL) &&
                (o->var_set != NULL) == (o->adam_multi_var != NULL));
    if (o->var_set) assert_non_null(o->record_begin);
    return o->var_set != NULL;
}

static void test_backend_step_vars(void **state) {
    (void)state;
    const cz_dtype dts[2] = {CZ_F32, CZ_BF16};
    each_backend_dtype("step variables", has_step_vars, "has none (training steps are not recorded)", dts, 2,
                       vars_dtype);
}

int main(void) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    setvbuf(stdout, NULL, _IOLBF, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ref_memory),        cmocka_unit_test(test_ref_conv_known),
        cmocka_unit_test(test_ref_deconv_known),  cmocka_unit_test(test_ref_deconv_adjoint),
        cmocka_unit_test(test_ref_bn),            cmocka_unit_test(test_ref_act),
        cmocka_unit_test(test_ref_concat),        cmocka_unit_test(test_ref_losses),
        cmocka_unit_test(test_ref_dropout),       cmocka_unit_test(test_ref_shape_errors),
        cmocka_unit_test(test_ref_conv_grads),    cmocka_unit_test(test_ref_bn_grads),
        cmocka_unit_test(test_ref_elementwise_grads), cmocka_unit_test(test_ref_adam),
        cmocka_unit_test(test_ref_speed),         cmocka_unit_test(test_backend_parity),
        cmocka_unit_test(test_ref_refuses_views), cmocka_unit_test(test_backend_views),
        cmocka_unit_test(test_backend_merge_lab), cmocka_unit_test(test_backend_queued_training),
        cmocka_unit_test(test_backend_step_vars),
    };
    const char *only = getenv("CZ_TEST_FILTER"); /* e.g. test_backend_step_vars: run that one alone */
    if (only && *only) cmocka_set_test_filter(only);
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("test_ops: wall time %.2f s\n",
           (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    return rc;
}
