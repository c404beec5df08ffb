/* test_dnnl.c: the oneDNN backend's own promises (core/backend_dnnl.c): physical layouts and
 * exact write/read round trips (also through batch views), the primitive cache and the
 * weight-copy cache (reuse, invalidation by tensor_write), both deconv forms and the other
 * forward ops against the ref backend, batch invariance of conv/deconv (an image's output
 * never depends on its batch), channel views (view_ok's answers for blocked and plain
 * layouts, every deconv form and conv writing into a view bit-identically to a dense run,
 * writes through a view invalidating weight copies, refusals), and error paths. Backward (training):
 * accumulate adds exactly (twice == 2x) for weight/bias, BatchNorm and split gradients; adam_step on a
 * weight tensor bumps its generation so the next conv re-reorders it; bf16 activations with fp32 weight
 * gradients keep fp32 accuracy; backward error paths. Operator parity over many shapes is
 * tests/unit/test_ops.c's job; this file checks what is specific to this backend. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_dnnl.h"
#include "testutil.h"

typedef struct {
    cz_backend *dn;
    cz_backend *ref;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    cz_backend_options o = {.threads = 2};
    if (cz_backend_create("dnnl", &o, &f->dn) != CZ_OK) {
        fprintf(stderr, "dnnl backend unavailable: %s\n", cz_error_detail());
        free(f);
        return -1;
    }
    if (cz_backend_create("ref", NULL, &f->ref) != CZ_OK) f->ref = NULL;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    cz_backend_destroy(f->dn);
    cz_backend_destroy(f->ref);
    free(f);
    return 0;
}

static float *rnd(size_t n, uint64_t seed, float lo, float hi) {
    float *p = malloc(n * sizeof *p);
    tu_fill_uniform(p, n, seed, lo, hi);
    return p;
}

static float bf16_round(float v) { return cz_bf16_to_f32(cz_f32_to_bf16(v)); }

/* Allocates on `be` and writes `data` (may be NULL). */
static void mk(cz_backend *be, cz_tensor *t, cz_dtype dt, cz_role role, int n, int c, int h, int w,
               const float *data) {
    assert_int_equal(cz_tensor_alloc(be, t, dt, role, n, c, h, w), CZ_OK);
    if (data) assert_int_equal(be->ops->tensor_write(be, t, data), CZ_OK);
}

static float *rd(cz_backend *be, const cz_tensor *t) {
    float *p = malloc(cz_tensor_numel(t) * sizeof *p);
    assert_int_equal(be->ops->tensor_read(be, t, p), CZ_OK);
    return p;
}

/* ------------------------------------------------------------------ layouts */

static void test_roundtrip_layouts(void **state) {
    fixture *f = *state;
    static const int cs[] = {1, 2, 3, 16, 48, 64};
    for (int d = 0; d < 2; d++) {
        cz_dtype dt = d ? CZ_BF16 : CZ_F32;
        for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++) {
            int n = 3, c = cs[k], h = 5, w = 7;
            size_t total = (size_t)n * c * h * w, per = total / n;
            cz_tensor t;
            float *src = rnd(total, 100 + k, -3.f, 3.f);
            mk(f->dn, &t, dt, CZ_ROLE_ACT, n, c, h, w, src);
            assert_int_equal(t.cap_n, n);
            assert_int_equal(t.layout, c % 16 == 0 ? CZ_DNNL_LAYOUT_NCHW16C : CZ_DNNL_LAYOUT_NCHW);
            float *back = rd(f->dn, &t);
            for (size_t i = 0; i < total; i++)
                assert_true(back[i] == (dt == CZ_F32 ? src[i] : bf16_round(src[i])));
            /* a batch view reads the prefix */
            cz_tensor v = cz_tensor_batch_view(t, 2);
            float *pre = rd(f->dn, &v);
            assert_memory_equal(pre, back, 2 * per * sizeof(float));
            /* writing through a view changes the prefix only */
            float *src2 = rnd(2 * per, 200 + k, -1.f, 1.f);
            assert_int_equal(f->dn->ops->tensor_write(f->dn, &v, src2), CZ_OK);
            float *all = rd(f->dn, &t);
            for (size_t i = 0; i < 2 * per; i++)
                assert_true(all[i] == (dt == CZ_F32 ? src2[i] : bf16_round(src2[i])));
            assert_memory_equal(all + 2 * per, back + 2 * per, per * sizeof(float));
            free(src);
            free(src2);
            free(back);
            free(pre);
            free(all);
            cz_tensor_free(f->dn, &t);
        }
    }
}

static void test_roundtrip_roles(void **state) {
    fixture *f = *state;
    float v[48];
    tu_fill_uniform(v, 48, 7, -2.f, 2.f);
    cz_tensor t, w;
    /* vectors are kept in fp32 even when bf16: exact */
    mk(f->dn, &t, CZ_BF16, CZ_ROLE_VEC, 1, 48, 1, 1, v);
    assert_int_equal(t.layout, CZ_DNNL_LAYOUT_VEC_F32);
    float *b = rd(f->dn, &t);
    assert_memory_equal(b, v, sizeof v);
    free(b);
    /* weights stay as written (plain) */
    float *wd = rnd(32 * 16 * 16, 8, -1.f, 1.f);
    mk(f->dn, &w, CZ_F32, CZ_ROLE_CONV_W, 32, 16, 4, 4, wd);
    assert_int_equal(w.layout, CZ_DNNL_LAYOUT_NCHW);
    b = rd(f->dn, &w);
    assert_memory_equal(b, wd, 32 * 16 * 16 * sizeof(float));
    free(b);
    free(wd);
    /* zero */
    assert_int_equal(f->dn->ops->tensor_zero(f->dn, &t), CZ_OK);
    b = rd(f->dn, &t);
    for (int i = 0; i < 48; i++) assert_true(b[i] == 0.f);
    free(b);
    cz_tensor_free(f->dn, &t);
    cz_tensor_free(f->dn, &w);
    cz_tensor none = {0};
    cz_tensor_free(f->dn, &none); /* no-op */
    cz_tensor h16;
    assert_int_equal(cz_tensor_alloc(f->dn, &h16, CZ_F16, CZ_ROLE_ACT, 1, 1, 1, 1), CZ_ERR_UNSUPPORTED);
    assert_true(f->dn->ops->supports(f->dn, CZ_BF16));
    assert_false(f->dn->ops->supports(f->dn, CZ_F16));
}

/* ------------------------------------------------------------------ ops vs ref */

typedef struct {
    int transposed, n, ci, co, h, w, k, s, p, bias;
    cz_act act;
} conv_case;

/* Runs one conv/deconv on both backends with the same data; returns the relative error. */
static double conv_vs_ref(fixture *f, const conv_case *cc, cz_dtype dt, uint64_t seed) {
    int oh = cc->transposed ? (cc->h - 1) * cc->s - 2 * cc->p + cc->k : (cc->h + 2 * cc->p - cc->k) / cc->s + 1;
    int ow = cc->transposed ? (cc->w - 1) * cc->s - 2 * cc->p + cc->k : (cc->w + 2 * cc->p - cc->k) / cc->s + 1;
    int wn = cc->transposed ? cc->ci : cc->co, wc = cc->transposed ? cc->co : cc->ci;
    size_t nx = (size_t)cc->n * cc->ci * cc->h * cc->w, nw = (size_t)wn * wc * cc->k * cc->k;
    size_t ny = (size_t)cc->n * cc->co * oh * ow;
    float *xd = rnd(nx, seed, -1.f, 1.f), *wd = rnd(nw, seed + 1, -0.2f, 0.2f), *bd = rnd((size_t)cc->co, seed + 2, -.5f, .5f);
    cz_conv_params p = {cc->s, cc->p, cc->act, 0.2f};
    cz_role wr = cc->transposed ? CZ_ROLE_DECONV_W : CZ_ROLE_CONV_W;
    float *out[2];
    cz_backend *bes[2] = {f->dn, f->ref};
    for (int i = 0; i < 2; i++) {
        cz_backend *be = bes[i];
        cz_tensor x, w, b, y;
        mk(be, &x, dt, CZ_ROLE_ACT, cc->n, cc->ci, cc->h, cc->w, xd);
        mk(be, &w, dt, wr, wn, wc, cc->k, cc->k, wd);
        mk(be, &b, dt, CZ_ROLE_VEC, 1, cc->co, 1, 1, bd);
        mk(be, &y, dt, CZ_ROLE_ACT, cc->n, cc->co, oh, ow, NULL);
        cz_status s = cc->transposed ? be->ops->deconv2d(be, &x, &w, cc->bias ? &b : NULL, &p, &y)
                                     : be->ops->conv2d(be, &x, &w, cc->bias ? &b : NULL, &p, &y);
        if (s != CZ_OK) fprintf(stderr, "%s: %s\n", be->ops->name, cz_error_detail());
        assert_int_equal(s, CZ_OK);
        out[i] = rd(be, &y);
        cz_tensor_free(be, &x);
        cz_tensor_free(be, &w);
        cz_tensor_free(be, &b);
        cz_tensor_free(be, &y);
    }
    double e = tu_rel_err(out[0], out[1], ny);
    free(out[0]);
    free(out[1]);
    free(xd);
    free(wd);
    free(bd);
    return e;
}

static void test_conv_deconv_vs_ref(void **state) {
    fixture *f = *state;
    if (!f->ref) skip();
    static const conv_case cases[] = {
        {0, 2, 1, 16, 16, 16, 4, 2, 1, 1, CZ_ACT_NONE},   /* first layer: C=1 plain in */
        {0, 2, 16, 32, 8, 8, 4, 2, 1, 0, CZ_ACT_LRELU},   /* blocked -> blocked, lrelu */
        {0, 1, 32, 3, 9, 7, 3, 1, 1, 1, CZ_ACT_TANH},     /* odd sizes, plain out */
        {0, 2, 3, 5, 9, 9, 4, 2, 1, 1, CZ_ACT_RELU},      /* plain both sides, floor size */
        {1, 2, 32, 16, 4, 4, 4, 2, 1, 0, CZ_ACT_NONE},    /* up conv */
        {1, 2, 32, 2, 8, 8, 4, 2, 1, 1, CZ_ACT_TANH},     /* outermost up: 2 channels, bias, tanh */
        {1, 1, 16, 16, 1, 1, 4, 2, 1, 0, CZ_ACT_RELU},    /* innermost up: 1x1 -> 2x2 */
        {1, 2, 3, 5, 5, 6, 3, 1, 1, 1, CZ_ACT_LRELU},     /* plain, stride 1 */
    };
    for (int mode = 1; mode <= 3; mode++) { /* deconv: fwd, bwd-data, phase */
        assert_int_equal(cz_backend_dnnl_set_deconv_mode(f->dn, mode), CZ_OK);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            if (mode >= 2 && !cases[i].transposed) continue;
            for (int d = 0; d < 2; d++) {
                cz_dtype dt = d ? CZ_BF16 : CZ_F32;
                double e = conv_vs_ref(f, &cases[i], dt, 1000 + i);
                if (e > (d ? 2e-2 : 1e-4))
                    fprintf(stderr, "case %zu mode %d %s: rel err %g\n", i, mode, cz_dtype_name(dt), e);
                assert_true(e <= (d ? 2e-2 : 1e-4));
            }
        }
    }
    assert_int_equal(cz_backend_dnnl_set_deconv_mode(f->dn, 0), CZ_OK);
}

/* An image's result must not depend on the batch it ran in (server batching is bit-exact). */
static void test_batch_invariance(void **state) {
    fixture *f = *state;
    static const conv_case cases[] = {
        {0, 4, 64, 128, 32, 32, 4, 2, 1, 0, CZ_ACT_LRELU},
        {1, 4, 128, 64, 16, 16, 4, 2, 1, 0, CZ_ACT_NONE},
        {1, 4, 128, 2, 32, 32, 4, 2, 1, 1, CZ_ACT_TANH},
    };
    for (int d = 0; d < 2; d++) {
        cz_dtype dt = d ? CZ_BF16 : CZ_F32;
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            const conv_case *cc = &cases[i];
            int oh = cc->transposed ? cc->h * 2 : cc->h / 2, ow = oh;
            int wn = cc->transposed ? cc->ci : cc->co, wc = cc->transposed ? cc->co : cc->ci;
            size_t nx = (size_t)cc->n * cc->ci * cc->h * cc->w, per_y = (size_t)cc->co * oh * ow;
            float *xd = rnd(nx, 50 + i, -1.f, 1.f), *wd = rnd((size_t)wn * wc * 16, 60 + i, -.1f, .1f);
            float bd[128];
            tu_fill_uniform(bd, 128, 70 + i, -.3f, .3f);
            cz_conv_params p = {2, 1, cc->act, 0.2f};
            cz_tensor x, w, b, y, x1, y1;
            mk(f->dn, &x, dt, CZ_ROLE_ACT, cc->n, cc->ci, cc->h, cc->w, xd);
            mk(f->dn, &w, dt, cc->transposed ? CZ_ROLE_DECONV_W : CZ_ROLE_CONV_W, wn, wc, 4, 4, wd);
            mk(f->dn, &b, CZ_F32, CZ_ROLE_VEC, 1, cc->co, 1, 1, bd);
            mk(f->dn, &y, dt, CZ_ROLE_ACT, cc->n, cc->co, oh, ow, NULL);
            /* image 2 alone, in a separate batch-1 tensor */
            size_t per_x = nx / cc->n;
            mk(f->dn, &x1, dt, CZ_ROLE_ACT, 1, cc->ci, cc->h, cc->w, xd + 2 * per_x);
            mk(f->dn, &y1, dt, CZ_ROLE_ACT, 1, cc->co, oh, ow, NULL);
            const cz_tensor *bp = cc->bias ? &b : NULL;
            if (cc->transposed) {
                assert_int_equal(f->dn->ops->deconv2d(f->dn, &x, &w, bp, &p, &y), CZ_OK);
                assert_int_equal(f->dn->ops->deconv2d(f->dn, &x1, &w, bp, &p, &y1), CZ_OK);
            } else {
                assert_int_equal(f->dn->ops->conv2d(f->dn, &x, &w, bp, &p, &y), CZ_OK);
                assert_int_equal(f->dn->ops->conv2d(f->dn, &x1, &w, bp, &p, &y1), CZ_OK);
            }
            float *all = rd(f->dn, &y), *one = rd(f->dn, &y1);
            if (memcmp(all + 2 * per_y, one, per_y * sizeof(float)))
                fprintf(stderr, "batch invariance: case %zu %s differs\n", i, cz_dtype_name(dt));
            assert_memory_equal(all + 2 * per_y, one, per_y * sizeof(float));
            free(all);
            free(one);
            free(xd);
            free(wd);
            cz_tensor_free(f->dn, &x);
            cz_tensor_free(f->dn, &w);
            cz_tensor_free(f->dn, &b);
            cz_tensor_free(f->dn, &y);
            cz_tensor_free(f->dn, &x1);
            cz_tensor_free(f->dn, &y1);
        }
    }
}

/* bn_infer, bn_train_fwd, act_fwd, concat, dropout, losses on both backends. */
static void test_other_ops_vs_ref(void **state) {
    fixture *f = *state;
    if (!f->ref) skip();
    for (int d = 0; d < 2; d++) {
        cz_dtype dt = d ? CZ_BF16 : CZ_F32;
        double tol = d ? 2e-2 : 1e-5;
        int n = 2, c = 32, h = 6, w = 5;
        size_t nx = (size_t)n * c * h * w;
        float *xd = rnd(nx, 11, -2.f, 2.f), *x2 = rnd((size_t)n * 16 * h * w, 12, -2.f, 2.f);
        float g[32], bt[32], m[32], v[32], rm[32], rv[32];
        tu_fill_uniform(g, 32, 13, .5f, 1.5f);
        tu_fill_uniform(bt, 32, 14, -.5f, .5f);
        tu_fill_uniform(m, 32, 15, -.5f, .5f);
        tu_fill_uniform(v, 32, 16, .2f, 2.f);
        tu_fill_uniform(rm, 32, 17, -.5f, .5f);
        tu_fill_uniform(rv, 32, 18, .5f, 1.5f);
        float *res[2][10];
        double loss[2][3];
        cz_backend *bes[2] = {f->dn, f->ref};
        for (int i = 0; i < 2; i++) {
            cz_backend *be = bes[i];
            const cz_backend_ops *o = be->ops;
            cz_tensor x, xb, tg, tb, tm, tv, trm, trv, sm, si, y, cat, mask, y2, a3;
            mk(be, &x, dt, CZ_ROLE_ACT, n, c, h, w, xd);
            mk(be, &xb, dt, CZ_ROLE_ACT, n, 16, h, w, x2);
            mk(be, &tg, dt, CZ_ROLE_VEC, 1, c, 1, 1, g);
            mk(be, &tb, dt, CZ_ROLE_VEC, 1, c, 1, 1, bt);
            mk(be, &tm, dt, CZ_ROLE_VEC, 1, c, 1, 1, m);
            mk(be, &tv, dt, CZ_ROLE_VEC, 1, c, 1, 1, v);
            mk(be, &trm, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, rm);
            mk(be, &trv, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, rv);
            mk(be, &sm, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, NULL);
            mk(be, &si, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, NULL);
            mk(be, &y, dt, CZ_ROLE_ACT, n, c, h, w, NULL);
            mk(be, &y2, dt, CZ_ROLE_ACT, n, c, h, w, NULL);
            mk(be, &mask, dt, CZ_ROLE_ACT, n, c, h, w, NULL);
            mk(be, &cat, dt, CZ_ROLE_ACT, n, c + 16, h, w, NULL);
            mk(be, &a3, dt, CZ_ROLE_ACT, n, 3, h, w, xd);
            assert_int_equal(o->bn_infer(be, &x, &tg, &tb, &tm, &tv, 1e-5f, &y), CZ_OK);
            res[i][0] = rd(be, &y);
            assert_int_equal(o->bn_train_fwd(be, &x, &tg, &tb, 1e-5f, 0.1f, &trm, &trv, &sm, &si, &y), CZ_OK);
            res[i][1] = rd(be, &y);
            res[i][2] = rd(be, &sm);
            res[i][3] = rd(be, &si);
            res[i][4] = rd(be, &trm);
            res[i][5] = rd(be, &trv);
            assert_int_equal(o->act_fwd(be, CZ_ACT_LRELU, 0.2f, &x, &y), CZ_OK);
            assert_int_equal(o->act_fwd(be, CZ_ACT_TANH, 0.f, &y, &y), CZ_OK); /* in place */
            res[i][6] = rd(be, &y);
            assert_int_equal(o->concat(be, &x, &xb, &cat), CZ_OK);
            res[i][7] = rd(be, &cat);
            assert_int_equal(o->dropout_fwd(be, 0.5f, 1234, &x, &mask, &y2), CZ_OK);
            res[i][8] = rd(be, &mask);
            res[i][9] = rd(be, &y2);
            assert_int_equal(o->bce_logits_fwd(be, &x, 1.f, &loss[i][0]), CZ_OK);
            assert_int_equal(o->l1_fwd(be, &x, &y2, &loss[i][1]), CZ_OK);
            assert_int_equal(o->bce_logits_fwd(be, &a3, 0.f, &loss[i][2]), CZ_OK);
            cz_tensor *all[] = {&x, &xb, &tg, &tb, &tm, &tv, &trm, &trv, &sm, &si, &y, &cat, &mask, &y2, &a3};
            for (size_t j = 0; j < sizeof all / sizeof all[0]; j++) cz_tensor_free(be, all[j]);
        }
        size_t sizes[10] = {nx, nx, 32, 32, 32, 32, nx, (size_t)n * (c + 16) * h * w, nx, nx};
        for (int j = 0; j < 10; j++) {
            double e = tu_rel_err(res[0][j], res[1][j], sizes[j]);
            if (e > tol) fprintf(stderr, "%s: result %d rel err %g\n", cz_dtype_name(dt), j, e);
            assert_true(e <= tol);
            free(res[0][j]);
            free(res[1][j]);
        }
        for (int j = 0; j < 3; j++) assert_true(fabs(loss[0][j] - loss[1][j]) <= 1e-6 * (1 + fabs(loss[1][j])));
        free(xd);
        free(x2);
    }
}

/* ------------------------------------------------------------------ caches */

static void test_primitive_cache(void **state) {
    fixture *f = *state;
    cz_tensor x, w, y;
    float *xd = rnd(4 * 16 * 8 * 8, 1, -1, 1), *wd = rnd(32 * 16 * 16, 2, -1, 1);
    mk(f->dn, &x, CZ_F32, CZ_ROLE_ACT, 4, 16, 8, 8, xd);
    mk(f->dn, &w, CZ_F32, CZ_ROLE_CONV_W, 32, 16, 4, 4, wd);
    mk(f->dn, &y, CZ_F32, CZ_ROLE_ACT, 4, 32, 4, 4, NULL);
    cz_conv_params p = {2, 1, CZ_ACT_RELU, 0.f};
    uint64_t h0, m0, h1, m1, h2, m2, h3, m3;
    assert_int_equal(f->dn->ops->conv2d(f->dn, &x, &w, NULL, &p, &y), CZ_OK);
    assert_int_equal(cz_backend_dnnl_cache_stats(f->dn, &h0, &m0), CZ_OK);
    cz_dnnl_stats st0, st1;
    assert_int_equal(cz_backend_dnnl_stats(f->dn, &st0), CZ_OK);
    assert_int_equal(f->dn->ops->conv2d(f->dn, &x, &w, NULL, &p, &y), CZ_OK);
    assert_int_equal(cz_backend_dnnl_cache_stats(f->dn, &h1, &m1), CZ_OK);
    assert_int_equal(m1, m0);     /* nothing created */
    assert_int_equal(h1, h0 + 1); /* found */
    assert_int_equal(cz_backend_dnnl_stats(f->dn, &st1), CZ_OK);
    assert_int_equal(st1.weight_reorders, st0.weight_reorders); /* weights copy reused */
    assert_int_equal(st1.scratch_bytes, st0.scratch_bytes);
    /* a batch view is another shape: one new primitive, then cached too */
    cz_tensor xv = cz_tensor_batch_view(x, 2), yv = cz_tensor_batch_view(y, 2);
    assert_int_equal(f->dn->ops->conv2d(f->dn, &xv, &w, NULL, &p, &yv), CZ_OK);
    assert_int_equal(cz_backend_dnnl_cache_stats(f->dn, &h2, &m2), CZ_OK);
    assert_int_equal(m2, m1 + 1);
    assert_int_equal(f->dn->ops->conv2d(f->dn, &xv, &w, NULL, &p, &yv), CZ_OK);
    assert_int_equal(cz_backend_dnnl_cache_stats(f->dn, &h3, &m3), CZ_OK);
    assert_int_equal(m3, m2);
    /* the other backend is not a dnnl backend */
    if (f->ref) assert_int_equal(cz_backend_dnnl_cache_stats(f->ref, &h3, &m3), CZ_ERR_INVALID_ARG);
    assert_string_not_equal(cz_backend_dnnl_last_impl(f->dn, "conv2d"), "");
    free(xd);
    free(wd);
    cz_tensor_free(f->dn, &x);
    cz_tensor_free(f->dn, &w);
    cz_tensor_free(f->dn, &y);
}

static void test_weight_invalidation(void **state) {
    fixture *f = *state;
    for (int t = 0; t < 2; t++) { /* conv, deconv */
        int ci = 16, co = 32;
        cz_tensor x, w, y;
        float *xd = rnd((size_t)2 * ci * 8 * 8, 3, -1, 1), *w1 = rnd((size_t)ci * co * 16, 4, -1, 1);
        float *w2 = rnd((size_t)ci * co * 16, 5, -1, 1);
        mk(f->dn, &x, CZ_F32, CZ_ROLE_ACT, 2, ci, 8, 8, xd);
        if (t)
            mk(f->dn, &w, CZ_F32, CZ_ROLE_DECONV_W, ci, co, 4, 4, w1);
        else
            mk(f->dn, &w, CZ_F32, CZ_ROLE_CONV_W, co, ci, 4, 4, w1);
        int oh = t ? 16 : 4;
        mk(f->dn, &y, CZ_F32, CZ_ROLE_ACT, 2, co, oh, oh, NULL);
        cz_conv_params p = {2, 1, CZ_ACT_NONE, 0.f};
        cz_status (*fn)(cz_backend *, const cz_tensor *, const cz_tensor *, const cz_tensor *,
                        const cz_conv_params *, cz_tensor *) = t ? f->dn->ops->deconv2d : f->dn->ops->conv2d;
        cz_dnnl_stats s0, s1, s2;
        assert_int_equal(fn(f->dn, &x, &w, NULL, &p, &y), CZ_OK);
        float *y1 = rd(f->dn, &y);
        assert_int_equal(cz_backend_dnnl_stats(f->dn, &s0), CZ_OK);
        assert_int_equal(f->dn->ops->tensor_write(f->dn, &w, w2), CZ_OK);
        assert_int_equal(fn(f->dn, &x, &w, NULL, &p, &y), CZ_OK);
        float *y2 = rd(f->dn, &y);
        assert_int_equal(cz_backend_dnnl_stats(f->dn, &s1), CZ_OK);
        assert_true(s1.weight_reorders > s0.weight_reorders); /* rebuilt (once per copy) */
        assert_memory_not_equal(y1, y2, 16 * sizeof(float));
        /* the result equals a fresh backend's with the new weights */
        cz_backend *fresh;
        cz_backend_options o = {.threads = 2};
        assert_int_equal(cz_backend_create("dnnl", &o, &fresh), CZ_OK);
        cz_tensor fx, fw, fy;
        mk(fresh, &fx, CZ_F32, CZ_ROLE_ACT, 2, ci, 8, 8, xd);
        if (t)
            mk(fresh, &fw, CZ_F32, CZ_ROLE_DECONV_W, ci, co, 4, 4, w2);
        else
            mk(fresh, &fw, CZ_F32, CZ_ROLE_CONV_W, co, ci, 4, 4, w2);
        mk(fresh, &fy, CZ_F32, CZ_ROLE_ACT, 2, co, oh, oh, NULL);
        assert_int_equal((t ? fresh->ops->deconv2d : fresh->ops->conv2d)(fresh, &fx, &fw, NULL, &p, &fy), CZ_OK);
        float *y3 = rd(fresh, &fy);
        assert_memory_equal(y2, y3, (size_t)2 * co * oh * oh * sizeof(float));
        /* no write, no rebuild */
        assert_int_equal(fn(f->dn, &x, &w, NULL, &p, &y), CZ_OK);
        assert_int_equal(cz_backend_dnnl_stats(f->dn, &s2), CZ_OK);
        assert_int_equal(s2.weight_reorders, s1.weight_reorders);
        /* freeing the weights drops their copies */
        uint64_t before = s2.weight_entries;
        cz_tensor_free(f->dn, &w);
        assert_int_equal(cz_backend_dnnl_stats(f->dn, &s2), CZ_OK);
        assert_true(s2.weight_entries < before);
        free(y1);
        free(y2);
        free(y3);
        free(xd);
        free(w1);
        free(w2);
        cz_tensor_free(f->dn, &x);
        cz_tensor_free(f->dn, &y);
        cz_tensor_free(fresh, &fx);
        cz_tensor_free(fresh, &fw);
        cz_tensor_free(fresh, &fy);
        cz_backend_destroy(fresh);
    }
}

/* ------------------------------------------------------------------ channel views */

/* view_ok: plain layouts take any channel range; nChw16c only whole 16-channel blocks. */
static void test_view_ok(void **state) {
    fixture *f = *state;
    cz_backend *dn = f->dn;
    assert_non_null(dn->ops->view_ok);
    for (int d = 0; d < 2; d++) {
        cz_dtype dt = d ? CZ_BF16 : CZ_F32;
        cz_tensor blk, pl, pl24, vec;
        mk(dn, &blk, dt, CZ_ROLE_ACT, 2, 64, 4, 4, NULL);
        mk(dn, &pl, dt, CZ_ROLE_ACT, 2, 6, 4, 4, NULL);
        mk(dn, &pl24, dt, CZ_ROLE_ACT, 1, 24, 3, 3, NULL);
        mk(dn, &vec, dt, CZ_ROLE_VEC, 1, 32, 1, 1, NULL);
        assert_int_equal(blk.layout, CZ_DNNL_LAYOUT_NCHW16C);
        assert_int_equal(pl.layout, CZ_DNNL_LAYOUT_NCHW);
        assert_int_equal(pl24.layout, CZ_DNNL_LAYOUT_NCHW);
        int (*ok)(cz_backend *, const cz_tensor *, int, int) = dn->ops->view_ok;
        /* blocked: offsets and sizes in whole blocks, inside the tensor */
        assert_true(ok(dn, &blk, 0, 32) && ok(dn, &blk, 32, 32) && ok(dn, &blk, 16, 16) && ok(dn, &blk, 0, 64));
        assert_false(ok(dn, &blk, 8, 16));  /* offset inside a block */
        assert_false(ok(dn, &blk, 0, 24));  /* partial last block */
        assert_false(ok(dn, &blk, 48, 32)); /* past the end */
        assert_false(ok(dn, &blk, -16, 16));
        assert_false(ok(dn, &blk, 0, 0));
        /* plain: any range inside */
        assert_true(ok(dn, &pl, 0, 3) && ok(dn, &pl, 3, 3) && ok(dn, &pl, 1, 2) && ok(dn, &pl, 5, 1));
        assert_false(ok(dn, &pl, 4, 3));
        assert_true(ok(dn, &pl24, 0, 12) && ok(dn, &pl24, 12, 12) && ok(dn, &pl24, 3, 5));
        /* vectors are stored fp32 whatever the dtype: no views */
        assert_false(ok(dn, &vec, 0, 16));
        /* nested: ranges are relative to the view, blocks to the storage */
        cz_tensor hi = cz_tensor_channel_view(blk, 32, 32);
        assert_true(ok(dn, &hi, 0, 16) && ok(dn, &hi, 16, 16));
        assert_false(ok(dn, &hi, 8, 16));
        assert_false(ok(dn, &hi, 16, 32));
        cz_tensor mid = cz_tensor_channel_view(pl, 1, 4);
        assert_true(ok(dn, &mid, 1, 3));
        assert_false(ok(dn, &mid, 2, 3));
        /* batch views keep the answer */
        cz_tensor one = cz_tensor_batch_view(blk, 1);
        assert_true(ok(dn, &one, 32, 32));
        cz_tensor_free(dn, &blk), cz_tensor_free(dn, &pl), cz_tensor_free(dn, &pl24), cz_tensor_free(dn, &vec);
    }
    /* (Tensors of another backend are outside the contract: the storage header dnnl checks
     * sits before the data pointer, so probing a foreign allocation would read out of bounds.) */
}

/* Every deconv form (fwd, bwd-data, phase, and gemm for plain outputs) and conv writing into a
 * view: bit-identical to the same op into a dense tensor, the rest of the storage untouched,
 * with the view at both halves in turn (the primitive cache must tell them apart). */
static void test_view_outputs_all_forms(void **state) {
    fixture *f = *state;
    cz_backend *dn = f->dn;
    static const conv_case cases[] = {
        {1, 2, 32, 16, 4, 4, 4, 2, 1, 1, CZ_ACT_RELU},  /* blocked out */
        {1, 3, 16, 16, 1, 1, 4, 2, 1, 0, CZ_ACT_RELU},  /* innermost 1x1 -> 2x2 */
        {1, 2, 8, 3, 4, 4, 4, 2, 1, 1, CZ_ACT_TANH},    /* plain out (gemm) */
        {0, 2, 16, 32, 8, 8, 4, 2, 1, 0, CZ_ACT_LRELU}, /* conv, blocked out */
        {0, 2, 3, 5, 9, 9, 4, 2, 1, 1, CZ_ACT_NONE},    /* conv, plain out */
    };
    for (int mode = 1; mode <= 3; mode++) {
        assert_int_equal(cz_backend_dnnl_set_deconv_mode(dn, mode), CZ_OK);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            const conv_case *cc = &cases[i];
            if (mode >= 2 && !cc->transposed) continue;
            for (int d = 0; d < 2; d++) {
                cz_dtype dt = d ? CZ_BF16 : CZ_F32;
                int oh = cc->transposed ? (cc->h - 1) * cc->s - 2 * cc->p + cc->k : (cc->h + 2 * cc->p - cc->k) / cc->s + 1;
                int ow = cc->transposed ? (cc->w - 1) * cc->s - 2 * cc->p + cc->k : (cc->w + 2 * cc->p - cc->k) / cc->s + 1;
                int wn = cc->transposed ? cc->ci : cc->co, wc = cc->transposed ? cc->co : cc->ci, cs = 2 * cc->co;
                size_t hw = (size_t)oh * ow, per = (size_t)cc->co * hw, sk = (size_t)(cc->n + 1) * cs * hw;
                float *xd = rnd((size_t)cc->n * cc->ci * cc->h * cc->w, 70 + i, -1.f, 1.f);
                float *wd = rnd((size_t)wn * wc * cc->k * cc->k, 80 + i, -.2f, .2f);
                float *bd = rnd((size_t)cc->co, 90 + i, -.5f, .5f);
                float *pat = malloc(sk * sizeof *pat);
                for (size_t j = 0; j < sk; j++) pat[j] = bf16_round(-3.f + (float)(j % 11) * 0.5f);
                cz_conv_params p = {cc->s, cc->p, cc->act, 0.2f};
                cz_tensor x, w, b, y, st;
                mk(dn, &x, dt, CZ_ROLE_ACT, cc->n, cc->ci, cc->h, cc->w, xd);
                mk(dn, &w, dt, cc->transposed ? CZ_ROLE_DECONV_W : CZ_ROLE_CONV_W, wn, wc, cc->k, cc->k, wd);
                mk(dn, &b, CZ_F32, CZ_ROLE_VEC, 1, cc->co, 1, 1, bd);
                mk(dn, &y, dt, CZ_ROLE_ACT, cc->n, cc->co, oh, ow, NULL);
                mk(dn, &st, dt, CZ_ROLE_ACT, cc->n + 1, cs, oh, ow, pat);
                const cz_tensor *bp = cc->bias ? &b : NULL;
                cz_status s = cc->transposed ? dn->ops->deconv2d(dn, &x, &w, bp, &p, &y) : dn->ops->conv2d(dn, &x, &w, bp, &p, &y);
                assert_int_equal(s, CZ_OK);
                float *dense = rd(dn, &y);
                for (int half = 0; half < 2; half++) {
                    int c0 = half ? cc->co : 0;
                    assert_true(dn->ops->view_ok(dn, &st, c0, cc->co));
                    cz_tensor v = cz_tensor_batch_view(cz_tensor_channel_view(st, c0, cc->co), cc->n);
                    s = cc->transposed ? dn->ops->deconv2d(dn, &x, &w, bp, &p, &v) : dn->ops->conv2d(dn, &x, &w, bp, &p, &v);
                    if (s != CZ_OK) fprintf(stderr, "mode %d case %zu: %s\n", mode, i, cz_error_detail());
                    assert_int_equal(s, CZ_OK);
                    float *all = rd(dn, &st);
                    for (int img = 0; img <= cc->n; img++)
                        for (int c = 0; c < cs; c++) {
                            const float *got = all + ((size_t)img * cs + c) * hw;
                            int inside = img < cc->n && c >= c0 && c < c0 + cc->co;
                            /* earlier half's result stays where it was written */
                            int earlier = half && img < cc->n && c < cc->co;
                            const float *want = inside || earlier ? dense + (size_t)img * per + (size_t)(c % cc->co) * hw
                                                                  : pat + ((size_t)img * cs + c) * hw;
                            if (memcmp(got, want, hw * sizeof *got)) {
                                fprintf(stderr, "mode %d case %zu %s half %d: image %d channel %d differs\n", mode, i,
                                        cz_dtype_name(dt), half, img, c);
                                fail();
                            }
                        }
                    free(all);
                }
                free(dense), free(xd), free(wd), free(bd), free(pat);
                cz_tensor_free(dn, &x), cz_tensor_free(dn, &w), cz_tensor_free(dn, &b), cz_tensor_free(dn, &y);
                cz_tensor_free(dn, &st);
            }
        }
    }
    assert_int_equal(cz_backend_dnnl_set_deconv_mode(dn, 0), CZ_OK);
}

/* A write through a view is a write to the storage: a weight copy made from that storage
 * must be rebuilt (the generation counter lives in the storage's header). */
static void test_view_write_invalidates_weights(void **state) {
    fixture *f = *state;
    if (!f->ref) skip();
    cz_backend *dn = f->dn;
    /* weights (16, 32, 4, 4) held in an ACT tensor with 32 channels: nChw16c would not be OIHW,
     * so use 8 input channels (plain) and a view over half of them */
    const int co = 16, ci = 8, k = 4;
    size_t nw = (size_t)co * ci * k * k;
    float *xd = rnd((size_t)ci * 8 * 8, 5, -1.f, 1.f), *wd = rnd(nw, 6, -.3f, .3f);
    float *neg = malloc((size_t)co * 4 * k * k * sizeof *neg);
    for (size_t i = 0; i < (size_t)co * 4 * k * k; i++) neg[i] = -1.f;
    cz_conv_params p = {2, 1, CZ_ACT_NONE, 0.f};
    cz_tensor x, w, y, src;
    mk(dn, &x, CZ_F32, CZ_ROLE_ACT, 1, ci, 8, 8, xd);
    mk(dn, &w, CZ_F32, CZ_ROLE_ACT, co, ci, k, k, wd); /* plain: the same bytes as OIHW */
    assert_int_equal(w.layout, CZ_DNNL_LAYOUT_NCHW);
    mk(dn, &y, CZ_F32, CZ_ROLE_ACT, 1, co, 4, 4, NULL);
    mk(dn, &src, CZ_F32, CZ_ROLE_ACT, co, 4, k, k, neg);
    assert_int_equal(dn->ops->conv2d(dn, &x, &w, NULL, &p, &y), CZ_OK); /* caches a weight copy */
    /* relu(-1) = 0 into input channels 4..7 of every output channel's weights */
    assert_true(dn->ops->view_ok(dn, &w, 4, 4));
    cz_tensor wv = cz_tensor_channel_view(w, 4, 4);
    assert_int_equal(dn->ops->act_fwd(dn, CZ_ACT_RELU, 0.f, &src, &wv), CZ_OK);
    for (int o = 0; o < co; o++)
        for (int i = 4; i < ci; i++)
            for (int t = 0; t < k * k; t++) wd[((size_t)o * ci + i) * k * k + t] = 0.f;
    assert_int_equal(dn->ops->conv2d(dn, &x, &w, NULL, &p, &y), CZ_OK);
    float *got = rd(dn, &y);
    cz_tensor rx, rw, ry;
    mk(f->ref, &rx, CZ_F32, CZ_ROLE_ACT, 1, ci, 8, 8, xd);
    mk(f->ref, &rw, CZ_F32, CZ_ROLE_CONV_W, co, ci, k, k, wd);
    mk(f->ref, &ry, CZ_F32, CZ_ROLE_ACT, 1, co, 4, 4, NULL);
    assert_int_equal(f->ref->ops->conv2d(f->ref, &rx, &rw, NULL, &p, &ry), CZ_OK);
    float *want = rd(f->ref, &ry);
    assert_true(tu_rel_err(got, want, (size_t)co * 16) < 1e-5);
    free(got), free(want), free(xd), free(wd), free(neg);
    cz_tensor_free(dn, &x), cz_tensor_free(dn, &w), cz_tensor_free(dn, &y), cz_tensor_free(dn, &src);
    cz_tensor_free(f->ref, &rx), cz_tensor_free(f->ref, &rw), cz_tensor_free(f->ref, &ry);
}

/* Views are refused where the contract does not allow them, and validated where it does. */
static void test_view_refusals(void **state) {
    fixture *f = *state;
    cz_backend *dn = f->dn;
    const cz_backend_ops *o = dn->ops;
    cz_tensor s, x, w;
    mk(dn, &s, CZ_F32, CZ_ROLE_ACT, 2, 64, 4, 4, NULL);
    mk(dn, &x, CZ_F32, CZ_ROLE_ACT, 2, 32, 4, 4, NULL);
    mk(dn, &w, CZ_F32, CZ_ROLE_CONV_W, 32, 32, 3, 3, NULL);
    cz_conv_params p = {1, 1, CZ_ACT_NONE, 0.f};
    cz_tensor hi = cz_tensor_channel_view(s, 32, 32);
    /* a view as conv input is not allowed */
    cz_tensor y;
    mk(dn, &y, CZ_F32, CZ_ROLE_ACT, 2, 32, 4, 4, NULL);
    assert_int_equal(o->conv2d(dn, &hi, &w, NULL, &p, &y), CZ_ERR_UNSUPPORTED);
    assert_int_equal(o->conv2d(dn, &x, &w, NULL, &p, &hi), CZ_OK);
    /* a hand-made view that view_ok would refuse (inside a block) */
    cz_tensor odd = cz_tensor_channel_view(s, 8, 32);
    assert_int_equal(o->conv2d(dn, &x, &w, NULL, &p, &odd), CZ_ERR_UNSUPPORTED);
    assert_int_equal(o->act_fwd(dn, CZ_ACT_RELU, 0.f, &x, &odd), CZ_ERR_UNSUPPORTED);
    /* overlapping but different ranges of one storage */
    cz_tensor lo = cz_tensor_channel_view(s, 0, 32), mid = cz_tensor_channel_view(s, 16, 32);
    assert_int_equal(o->act_fwd(dn, CZ_ACT_RELU, 0.f, &lo, &mid), CZ_ERR_INVALID_ARG);
    assert_int_equal(o->act_fwd(dn, CZ_ACT_RELU, 0.f, &lo, &hi), CZ_OK); /* disjoint halves */
    assert_int_equal(o->act_fwd(dn, CZ_ACT_RELU, 0.f, &hi, &hi), CZ_OK); /* in place */
    cz_tensor_free(dn, &hi); /* no-op */
    cz_tensor_free(dn, &s), cz_tensor_free(dn, &x), cz_tensor_free(dn, &w), cz_tensor_free(dn, &y);
}

/* ------------------------------------------------------------------ errors */

static void test_error_paths(void **state) {
    fixture *f = *state;
    const cz_backend_ops *o = f->dn->ops;
    cz_tensor x, w, y, bad, v, cat;
    mk(f->dn, &x, CZ_F32, CZ_ROLE_ACT, 2, 16, 8, 8, NULL);
    mk(f->dn, &w, CZ_F32, CZ_ROLE_CONV_W, 32, 16, 4, 4, NULL);
    mk(f->dn, &y, CZ_F32, CZ_ROLE_ACT, 2, 32, 4, 4, NULL);
    mk(f->dn, &bad, CZ_F32, CZ_ROLE_ACT, 2, 32, 5, 4, NULL);
    mk(f->dn, &v, CZ_F32, CZ_ROLE_VEC, 1, 31, 1, 1, NULL);
    mk(f->dn, &cat, CZ_F32, CZ_ROLE_ACT, 2, 40, 8, 8, NULL);
    cz_conv_params p = {2, 1, CZ_ACT_NONE, 0.f};
    assert_int_equal(o->conv2d(f->dn, &x, &w, NULL, &p, &bad), CZ_ERR_SHAPE);
    assert_non_null(strstr(cz_error_detail(), "conv2d"));
    assert_int_equal(o->conv2d(f->dn, &x, &w, &v, &p, &y), CZ_ERR_SHAPE); /* bias length */
    assert_int_equal(o->conv2d(f->dn, &bad, &w, NULL, &p, &y), CZ_ERR_SHAPE); /* channels */
    assert_int_equal(o->deconv2d(f->dn, &x, &w, NULL, &p, &y), CZ_ERR_SHAPE);
    assert_int_equal(o->concat(f->dn, &x, &x, &cat), CZ_ERR_SHAPE);
    assert_int_equal(o->act_fwd(f->dn, CZ_ACT_RELU, 0.f, &x, &y), CZ_ERR_SHAPE);
    assert_int_equal(o->bn_infer(f->dn, &y, &v, NULL, &v, &v, 1e-5f, &y), CZ_ERR_SHAPE);
    double l;
    assert_int_equal(o->l1_fwd(f->dn, &x, &y, &l), CZ_ERR_SHAPE);
    cz_tensor over = cz_tensor_batch_view(x, 3); /* beyond capacity */
    assert_int_equal(o->act_fwd(f->dn, CZ_ACT_RELU, 0.f, &over, &over), CZ_ERR_SHAPE);
    cz_conv_params badp = {0, 1, CZ_ACT_NONE, 0.f};
    assert_int_equal(o->conv2d(f->dn, &x, &w, NULL, &badp, &y), CZ_ERR_INVALID_ARG);
    cz_tensor unalloc = x;
    unalloc.data = NULL;
    assert_int_equal(o->act_fwd(f->dn, CZ_ACT_RELU, 0.f, &unalloc, &x), CZ_ERR_INVALID_ARG);
    assert_int_equal(o->dropout_fwd(f->dn, 1.0f, 1, &x, &cat, &x), CZ_ERR_SHAPE);
    cz_tensor_free(f->dn, &x);
    cz_tensor_free(f->dn, &w);
    cz_tensor_free(f->dn, &y);
    cz_tensor_free(f->dn, &bad);
    cz_tensor_free(f->dn, &v);
    cz_tensor_free(f->dn, &cat);
}

/* ------------------------------------------------------------------ backward */

/* Runs a grad op once overwriting and once accumulating into fp32 gradients: the second
 * result must be exactly twice the first (x + x is exact in fp32). */
static void assert_doubled(const float *once, const float *twice, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (twice[i] != 2.0f * once[i]) fail_msg("%s: element %zu: %g after accumulate, want 2 x %g", what, i,
                                                 (double)twice[i], (double)once[i]);
}

static void test_bwd_accumulate(void **state) {
    fixture *f = *state;
    cz_backend *dn = f->dn;
    const cz_backend_ops *o = dn->ops;
    cz_conv_params p = {2, 1, CZ_ACT_NONE, 0.f};
    for (int t = 0; t < 2; t++) { /* conv, deconv: weights and bias gradients */
        int n = 2, ci = 16, co = 32, hi = t ? 4 : 8, ho = t ? 8 : 4;
        cz_tensor x, dy, dw, db;
        float *xd = rnd((size_t)n * ci * hi * hi, 11 + t, -1, 1), *dyd = rnd((size_t)n * co * ho * ho, 21 + t, -1, 1);
        mk(dn, &x, CZ_F32, CZ_ROLE_ACT, n, ci, hi, hi, xd);
        mk(dn, &dy, CZ_F32, CZ_ROLE_ACT, n, co, ho, ho, dyd);
        if (t)
            mk(dn, &dw, CZ_F32, CZ_ROLE_DECONV_W, ci, co, 4, 4, NULL);
        else
            mk(dn, &dw, CZ_F32, CZ_ROLE_CONV_W, co, ci, 4, 4, NULL);
        mk(dn, &db, CZ_F32, CZ_ROLE_VEC, 1, co, 1, 1, NULL);
        cz_status (*fn)(cz_backend *, const cz_tensor *, const cz_tensor *, const cz_conv_params *, cz_tensor *,
                        cz_tensor *, int) = t ? o->deconv2d_bwd_weights : o->conv2d_bwd_weights;
        assert_int_equal(fn(dn, &x, &dy, &p, &dw, &db, 0), CZ_OK);
        float *w1 = rd(dn, &dw), *b1 = rd(dn, &db);
        assert_int_equal(fn(dn, &x, &dy, &p, &dw, &db, 1), CZ_OK);
        float *w2 = rd(dn, &dw), *b2 = rd(dn, &db);
        assert_doubled(w1, w2, cz_tensor_numel(&dw), t ? "deconv dw" : "conv dw");
        assert_doubled(b1, b2, (size_t)co, t ? "deconv db" : "conv db");
        /* overwrite again: back to the single gradient */
        assert_int_equal(fn(dn, &x, &dy, &p, &dw, &db, 0), CZ_OK);
        float *w3 = rd(dn, &dw);
        assert_memory_equal(w1, w3, cz_tensor_numel(&dw) * sizeof(float));
        free(xd), free(dyd), free(w1), free(b1), free(w2), free(b2), free(w3);
        cz_tensor_free(dn, &x), cz_tensor_free(dn, &dy), cz_tensor_free(dn, &dw), cz_tensor_free(dn, &db);
    }
    { /* BatchNorm: dgamma, dbeta accumulate; dx is overwritten either way */
        int n = 2, c = 16, h = 4, w = 4;
        cz_tensor x, dy, g, sm, si, dx, dg, dbt;
        float *xd = rnd((size_t)n * c * h * w, 31, -1, 1), *dyd = rnd((size_t)n * c * h * w, 32, -1, 1);
        float *gd = rnd((size_t)c, 33, 0.5f, 1.5f), *md = rnd((size_t)c, 34, -0.1f, 0.1f), *sd = rnd((size_t)c, 35, 0.5f, 2);
        mk(dn, &x, CZ_F32, CZ_ROLE_ACT, n, c, h, w, xd);
        mk(dn, &dy, CZ_F32, CZ_ROLE_ACT, n, c, h, w, dyd);
        mk(dn, &g, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, gd);
        mk(dn, &sm, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, md);
        mk(dn, &si, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, sd);
        mk(dn, &dx, CZ_F32, CZ_ROLE_ACT, n, c, h, w, NULL);
        mk(dn, &dg, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, NULL);
        mk(dn, &dbt, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1, NULL);
        assert_int_equal(o->bn_train_bwd(dn, &x, &dy, &g, &sm, &si, &dx, &dg, &dbt, 0), CZ_OK);
        float *x1 = rd(dn, &dx), *g1 = rd(dn, &dg), *b1 = rd(dn, &dbt);
        assert_int_equal(o->bn_train_bwd(dn, &x, &dy, &g, &sm, &si, &dx, &dg, &dbt, 1), CZ_OK);
        float *x2 = rd(dn, &dx), *g2 = rd(dn, &dg), *b2 = rd(dn, &dbt);
        assert_doubled(g1, g2, (size_t)c, "dgamma");
        assert_doubled(b1, b2, (size_t)c, "dbeta");
        assert_memory_equal(x1, x2, cz_tensor_numel(&dx) * sizeof(float));
        free(xd), free(dyd), free(gd), free(md), free(sd), free(x1), free(g1), free(b1), free(x2), free(g2), free(b2);
        cz_tensor *all[8] = {&x, &dy, &g, &sm, &si, &dx, &dg, &dbt};
        for (int i = 0; i < 8; i++) cz_tensor_free(dn, all[i]);
    }
    { /* split: blocked halves (reorders) and a split inside a 16-channel block (C loop) */
        static const int splits[2][2] = {{16, 16}, {8, 24}};
        for (int k = 0; k < 2; k++) {
            int n = 2, ca = splits[k][0], cb = splits[k][1], h = 3, w = 5;
            cz_tensor dy, da, db;
            float *dyd = rnd((size_t)n * (ca + cb) * h * w, 41 + k, -1, 1);
            mk(dn, &dy, CZ_F32, CZ_ROLE_ACT, n, ca + cb, h, w, dyd);
            mk(dn, &da, CZ_F32, CZ_ROLE_ACT, n, ca, h, w, NULL);
            mk(dn, &db, CZ_F32, CZ_ROLE_ACT, n, cb, h, w, NULL);
            assert_int_equal(o->concat_bwd(dn, &dy, &da, &db, 0), CZ_OK);
            float *a1 = rd(dn, &da), *c1 = rd(dn, &db);
            assert_int_equal(o->concat_bwd(dn, &dy, &da, &db, 1), CZ_OK);
            float *a2 = rd(dn, &da), *c2 = rd(dn, &db);
            assert_doubled(a1, a2, cz_tensor_numel(&da), "split da");
            assert_doubled(c1, c2, cz_tensor_numel(&db), "split db");
            for (int i = 0; i < n; i++) /* the parts are dy's channel ranges */
                assert_memory_equal(a1 + (size_t)i * ca * h * w, dyd + (size_t)i * (ca + cb) * h * w,
                                    (size_t)ca * h * w * sizeof(float));
            free(dyd), free(a1), free(c1), free(a2), free(c2);
            cz_tensor_free(dn, &dy), cz_tensor_free(dn, &da), cz_tensor_free(dn, &db);
        }
    }
}

/* adam_step writing a weight tensor in place bumps its generation: the next conv re-reorders
 * it and computes with the new values (as a fresh backend given those values does). */
static void test_adam_invalidates_weights(void **state) {
    fixture *f = *state;
    cz_backend *dn = f->dn;
    for (int t = 0; t < 2; t++) { /* conv, deconv (phase form: gathered sub-kernels) */
        int ci = 16, co = 32, hi = 8, ho = t ? 16 : 4;
        size_t nw = (size_t)ci * co * 16;
        cz_tensor x, w, g, m, v, y;
        float *xd = rnd((size_t)2 * ci * hi * hi, 51, -1, 1), *wd = rnd(nw, 52, -0.2f, 0.2f);
        float *gd = rnd(nw, 53, -1, 1);
        mk(dn, &x, CZ_F32, CZ_ROLE_ACT, 2, ci, hi, hi, xd);
        cz_role wr = t ? CZ_ROLE_DECONV_W : CZ_ROLE_CONV_W;
        int wn = t ? ci : co, wc = t ? co : ci;
        mk(dn, &w, CZ_F32, wr, wn, wc, 4, 4, wd);
        mk(dn, &g, CZ_F32, wr, wn, wc, 4, 4, gd);
        mk(dn, &m, CZ_F32, wr, wn, wc, 4, 4, NULL);
        mk(dn, &v, CZ_F32, wr, wn, wc, 4, 4, NULL);
        mk(dn, &y, CZ_F32, CZ_ROLE_ACT, 2, co, ho, ho, NULL);
        cz_conv_params p = {2, 1, CZ_ACT_NONE, 0.f};
        cz_status (*fn)(cz_backend *, const cz_tensor *, const cz_tensor *, const cz_tensor *,
                        const cz_conv_params *, cz_tensor *) = t ? dn->ops->deconv2d : dn->ops->conv2d;
        assert_int_equal(fn(dn, &x, &w, NULL, &p, &y), CZ_OK);
        float *y1 = rd(dn, &y);
        cz_dnnl_stats s0, s1;
        assert_int_equal(cz_backend_dnnl_stats(dn, &s0), CZ_OK);
        assert_int_equal(dn->ops->adam_step(dn, &w, &g, &m, &v, 1e-2f, 0.5f, 0.999f, 1e-8f, 1), CZ_OK);
        assert_int_equal(fn(dn, &x, &w, NULL, &p, &y), CZ_OK);
        float *y2 = rd(dn, &y), *w2 = rd(dn, &w);
        assert_int_equal(cz_backend_dnnl_stats(dn, &s1), CZ_OK);
        assert_true(s1.weight_reorders > s0.weight_reorders);
        assert_memory_not_equal(y1, y2, 16 * sizeof(float));
        /* Adam's first step moves every weight by lr * sign(g) (up to eps) */
        for (size_t i = 0; i < nw; i++) assert_true(fabsf(w2[i] - (wd[i] - 1e-2f * (gd[i] > 0 ? 1.f : -1.f))) < 1e-5f);
        cz_backend *fresh;
        cz_backend_options o = {.threads = 2};
        assert_int_equal(cz_backend_create("dnnl", &o, &fresh), CZ_OK);
        cz_tensor fx, fw, fy;
        mk(fresh, &fx, CZ_F32, CZ_ROLE_ACT, 2, ci, hi, hi, xd);
        mk(fresh, &fw, CZ_F32, wr, wn, wc, 4, 4, w2);
        mk(fresh, &fy, CZ_F32, CZ_ROLE_ACT, 2, co, ho, ho, NULL);
        assert_int_equal((t ? fresh->ops->deconv2d : fresh->ops->conv2d)(fresh, &fx, &fw, NULL, &p, &fy), CZ_OK);
        float *y3 = rd(fresh, &fy);
        assert_memory_equal(y2, y3, (size_t)2 * co * ho * ho * sizeof(float));
        free(xd), free(wd), free(gd), free(y1), free(y2), free(w2), free(y3);
        cz_tensor *all[6] = {&x, &w, &g, &m, &v, &y};
        for (int i = 0; i < 6; i++) cz_tensor_free(dn, all[i]);
        cz_tensor_free(fresh, &fx), cz_tensor_free(fresh, &fw), cz_tensor_free(fresh, &fy);
        cz_backend_destroy(fresh);
    }
}

/* bf16 activations and output gradients with fp32 weight/bias gradients: the result is the
 * fp32 gradient of the bf16-rounded inputs (ref on the rounded values, fp32 tolerance) and is
 * not itself rounded to bf16. */
static void test_bf16_acts_fp32_wgrad(void **state) {
    fixture *f = *state;
    if (!f->ref) skip();
    cz_backend *dn = f->dn, *ref = f->ref;
    cz_conv_params p = {2, 1, CZ_ACT_NONE, 0.f};
    for (int t = 0; t < 2; t++) {
        int n = 2, ci = 16, co = 32, hi = t ? 8 : 16, ho = t ? 16 : 8;
        size_t nx = (size_t)n * ci * hi * hi, ny = (size_t)n * co * ho * ho, nw = (size_t)ci * co * 16;
        float *xd = rnd(nx, 61 + t, -1, 1), *dyd = rnd(ny, 71 + t, -1, 1);
        for (size_t i = 0; i < nx; i++) xd[i] = bf16_round(xd[i]);
        for (size_t i = 0; i < ny; i++) dyd[i] = bf16_round(dyd[i]);
        cz_role wr = t ? CZ_ROLE_DECONV_W : CZ_ROLE_CONV_W;
        int wn = t ? ci : co, wc = t ? co : ci;
        float *gw[2], *gb[2];
        for (int k = 0; k < 2; k++) { /* 0: dnnl, bf16 x/dy; 1: ref, fp32 */
            cz_backend *be = k ? ref : dn;
            cz_dtype adt = k ? CZ_F32 : CZ_BF16;
            cz_tensor x, dy, dw, db;
            mk(be, &x, adt, CZ_ROLE_ACT, n, ci, hi, hi, xd);
            mk(be, &dy, adt, CZ_ROLE_ACT, n, co, ho, ho, dyd);
            mk(be, &dw, CZ_F32, wr, wn, wc, 4, 4, NULL);
            mk(be, &db, CZ_F32, CZ_ROLE_VEC, 1, co, 1, 1, NULL);
            cz_status st = t ? be->ops->deconv2d_bwd_weights(be, &x, &dy, &p, &dw, &db, 0)
                             : be->ops->conv2d_bwd_weights(be, &x, &dy, &p, &dw, &db, 0);
            assert_int_equal(st, CZ_OK);
            gw[k] = rd(be, &dw);
            gb[k] = rd(be, &db);
            cz_tensor_free(be, &x), cz_tensor_free(be, &dy), cz_tensor_free(be, &dw), cz_tensor_free(be, &db);
        }
        double ew = tu_rel_err(gw[0], gw[1], nw), eb = tu_rel_err(gb[0], gb[1], (size_t)co);
        printf("bf16 x/dy, fp32 %s: dw rel err %.2e, db %.2e\n", t ? "deconv grads" : "conv grads", ew, eb);
        assert_true(ew < 1e-5);
        assert_true(eb < 1e-5);
        size_t off_grid = 0; /* values a bf16 store would have rounded */
        for (size_t i = 0; i < nw; i++) off_grid += gw[0][i] != bf16_round(gw[0][i]);
        assert_true(off_grid > nw / 2);
        free(gw[0]), free(gw[1]), free(gb[0]), free(gb[1]), free(xd), free(dyd);
    }
}

static void test_bwd_error_paths(void **state) {
    fixture *f = *state;
    cz_backend *dn = f->dn;
    const cz_backend_ops *o = dn->ops;
    cz_tensor x, dy, w, dw, bad, pb, cat;
    mk(dn, &x, CZ_F32, CZ_ROLE_ACT, 2, 16, 8, 8, NULL);
    mk(dn, &dy, CZ_F32, CZ_ROLE_ACT, 2, 32, 4, 4, NULL);
    mk(dn, &w, CZ_F32, CZ_ROLE_CONV_W, 32, 16, 4, 4, NULL);
    mk(dn, &dw, CZ_F32, CZ_ROLE_CONV_W, 32, 16, 4, 4, NULL);
    mk(dn, &bad, CZ_F32, CZ_ROLE_ACT, 2, 32, 5, 4, NULL);
    mk(dn, &pb, CZ_BF16, CZ_ROLE_CONV_W, 32, 16, 4, 4, NULL);
    mk(dn, &cat, CZ_F32, CZ_ROLE_ACT, 2, 32, 8, 8, NULL);
    cz_conv_params p = {2, 1, CZ_ACT_NONE, 0.f};
    assert_int_equal(o->conv2d_bwd_data(dn, &bad, &w, &p, &x), CZ_ERR_SHAPE);
    assert_non_null(strstr(cz_error_detail(), "conv2d_bwd_data"));
    assert_int_equal(o->conv2d_bwd_weights(dn, &x, &bad, &p, &dw, NULL, 0), CZ_ERR_SHAPE);
    assert_int_equal(o->deconv2d_bwd_data(dn, &x, &w, &p, &dy), CZ_OK); /* the adjoint shapes */
    assert_int_equal(o->deconv2d_bwd_data(dn, &bad, &w, &p, &dy), CZ_ERR_SHAPE);
    assert_int_equal(o->adam_step(dn, &pb, &dw, &dw, &dw, 1e-3f, 0.9f, 0.999f, 1e-8f, 1), CZ_ERR_UNSUPPORTED);
    cz_tensor m2;
    mk(dn, &m2, CZ_F32, CZ_ROLE_CONV_W, 32, 16, 4, 4, NULL);
    assert_int_equal(o->adam_step(dn, &w, &dw, &m2, &pb, 1e-3f, 0.9f, 0.999f, 1e-8f, 0), CZ_ERR_UNSUPPORTED);
    assert_int_equal(o->concat_bwd(dn, &cat, &x, &bad, 0), CZ_ERR_SHAPE);
    /* a channel view is refused by every backward op */
    assert_true(dn->ops->view_ok(dn, &cat, 0, 16));
    cz_tensor half = cz_tensor_channel_view(cat, 0, 16);
    assert_int_equal(o->act_bwd(dn, CZ_ACT_RELU, 0.f, &half, &x, &x), CZ_ERR_UNSUPPORTED);
    assert_int_equal(o->dropout_bwd(dn, &x, &x, &half), CZ_ERR_UNSUPPORTED);
    cz_tensor *all[8] = {&x, &dy, &w, &dw, &bad, &pb, &cat, &m2};
    for (int i = 0; i < 8; i++) cz_tensor_free(dn, all[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_layouts), cmocka_unit_test(test_roundtrip_roles),
        cmocka_unit_test(test_conv_deconv_vs_ref), cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_other_ops_vs_ref),   cmocka_unit_test(test_primitive_cache),
        cmocka_unit_test(test_weight_invalidation), cmocka_unit_test(test_error_paths),
        cmocka_unit_test(test_view_ok),             cmocka_unit_test(test_view_outputs_all_forms),
        cmocka_unit_test(test_view_write_invalidates_weights), cmocka_unit_test(test_view_refusals),
        cmocka_unit_test(test_bwd_accumulate),      cmocka_unit_test(test_adam_invalidates_weights),
        cmocka_unit_test(test_bf16_acts_fp32_wgrad), cmocka_unit_test(test_bwd_error_paths),
    };
    return cmocka_run_group_tests_name("dnnl", tests, setup, teardown);
}
