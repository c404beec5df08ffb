/* backend_dnnl_train.c: the element-wise backward ops, concat_bwd and the Adam step of the
 * `dnnl` backend; convolution and batch-norm backward are in backend_dnnl_bwd.c. Semantics
 * are the ref backend's (its file-top comment): accumulate applies to concat_bwd's outputs;
 * act_bwd works from the forward OUTPUT y.
 *
 * act_bwd: oneDNN eltwise backward with the "use_dst_for_bwd" algorithms (relu with alpha =
 *   LeakyReLU's slope: dst > 0 ? dy : alpha*dy; tanh: dy * (1 - dst^2)) when y, dy and dx share
 *   dtype and layout; otherwise the same formulas in C. act NONE copies dy.
 * concat_bwd: one reorder per part from a sub-memory of dy (a channel range) into da / db;
 *   with accumulate the reorders carry a sum post-op (out = part + out). Where a sub-memory
 *   cannot describe the part (dy in nChw16c split inside a 16-channel block) a C loop does it.
 * dropout_bwd (dx = dy * mask), bce_logits_bwd (dx = scale/N * (sigmoid(x) - target)), l1_bwd
 *   (da = scale/N * sign(a - b)): C loops over the stored elements, split across the OpenMP
 *   threads (dn_parallel). Every layout here is dense and shared by tensors of one shape and
 *   role, so element i of each tensor is the same logical element; when the layouts of the
 *   arguments differ the inputs are read as plain fp32 and the result written back through
 *   tensor_write (same numbers, slower).
 * adam_step: param, m and v must be fp32 (as in ref); grad may be fp32 or bf16. The update is
 *   ref's formula term for term in double precision, so results match ref bit for bit:
 *     m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;
 *     param -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
 *   The generations of param, m and v are bumped, so conv primitives re-reorder a weight
 *   tensor that Adam updated in place (tests/unit/test_dnnl.c checks it).
 * Channel views are refused everywhere here. Aux slots 8..11 are used here.
 * Tested by tests/unit/test_ops.c (parity with ref) and tests/unit/test_dnnl.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_dnnl_impl.h"

#define EW_GRAIN 32768 /* elements below which a loop stays on the calling thread */

/* ---------------------------------------------------------------- element-wise runner */

typedef struct ew {
    const void *in[2];
    int idt[2];
    void *out;
    int odt;
    cz_act act;
    double k, t; /* scale / target of the losses, alpha of act_bwd */
} ew;

static int blocked(const cz_tensor *t) { return t->layout == CZ_DNNL_LAYOUT_NCHW16C; }

/* Binds the inputs and the output of an element-wise op and runs fn over every element; when
 * the tensors' element orders differ, runs it on plain fp32 copies instead. */
static cz_status ew_run(dn_backend *b, int nin, const cz_tensor *const *ins, cz_tensor *out, ew *e,
                        dn_range_fn fn) {
    size_t n = cz_tensor_numel(out);
    int mixed = 0;
    for (int i = 0; i < nin; i++) mixed |= blocked(ins[i]) != blocked(out);
    dn_enter(b);
    if (!mixed) {
        for (int i = 0; i < nin; i++) {
            e->in[i] = ins[i]->data;
            e->idt[i] = dn_stored_dt(ins[i]);
        }
        e->out = out->data;
        e->odt = dn_stored_dt(out);
        dn_parallel(n, EW_GRAIN, fn, e);
        dn_touch(out);
        return CZ_OK;
    }
    for (int i = 0; i < nin; i++) {
        void *p;
        CZ_TRY(dn_aux(b, 8 + i, n * 4, &p));
        CZ_TRY(dn_read_f32(b, ins[i], p));
        e->in[i] = p;
        e->idt[i] = dnnl_f32;
    }
    void *o;
    CZ_TRY(dn_aux(b, 10, n * 4, &o));
    e->out = o;
    e->odt = dnnl_f32;
    dn_parallel(n, EW_GRAIN, fn, e);
    return b->base.ops->tensor_write(&b->base, out, o); /* bumps the generation */
}

/* ---------------------------------------------------------------- act_bwd */

static void act_bwd_range(void *ctx, size_t lo, size_t hi) {
    const ew *e = ctx;
    for (size_t i = lo; i < hi; i++) {
        float y = ldf(e->in[0], e->idt[0], i), g = ldf(e->in[1], e->idt[1], i), d = g;
        switch (e->act) {
        case CZ_ACT_RELU: d = y > 0 ? g : 0.f; break;
        case CZ_ACT_LRELU: d = y > 0 ? g : (float)(e->k * (double)g); break;
        case CZ_ACT_TANH: d = (float)((double)g * (1.0 - (double)y * (double)y)); break;
        case CZ_ACT_NONE: break;
        }
        stf(e->out, e->odt, i, d);
    }
}

static cz_status act_bwd_prim(dn_backend *b, cz_act act, float alpha, const cz_tensor *y, dn_prim **out) {
    dn_key key;
    memset(&key, 0, sizeof key);
    key.op = DN_OP_ACT_BWD;
    key.nt = 1;
    key.t[0] = dn_tkey_of(y);
    key.i[0] = (int)act;
    key.f[0] = act == CZ_ACT_LRELU ? fbits(alpha) : 0;
    uint64_t h;
    dn_prim *e = dn_cache_find(b, &key, &h);
    if (e) {
        *out = e;
        return CZ_OK;
    }
    dnnl_memory_desc_t ym;
    CZ_TRY(dn_tensor_md(y, &ym));
    dnnl_alg_kind_t alg = act == CZ_ACT_TANH ? dnnl_eltwise_tanh_use_dst_for_bwd : dnnl_eltwise_relu_use_dst_for_bwd;
    float a = act == CZ_ACT_LRELU ? alpha : 0.f;
    dnnl_eltwise_desc_t fd, bd;
    dnnl_primitive_desc_t hint = NULL, pd = NULL;
    dnnl_primitive_attr_t attr;
    CZ_TRY(dn_attr_make(CZ_ACT_NONE, 0.f, &attr));
    dnnl_status_t ds = dnnl_eltwise_forward_desc_init(&fd, dnnl_forward_training, alg, &ym, a, 0.f);
    if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&hint, &fd, NULL, b->engine, NULL);
    if (ds == dnnl_success) ds = dnnl_eltwise_backward_desc_init(&bd, alg, &ym, &ym, a, 0.f);
    if (ds == dnnl_success) ds = dnnl_primitive_desc_create(&pd, &bd, attr, b->engine, hint);
    if (hint) dnnl_primitive_desc_destroy(hint);
    dnnl_primitive_attr_destroy(attr);
    DN_CHECK(ds);
    CZ_TRY(dn_cache_new(b, &key, h, &e));
    static const int ids[3] = {DNNL_ARG_DST, DNNL_ARG_DIFF_DST, DNNL_ARG_DIFF_SRC};
    cz_status st = dn_step_init(b, &e->main, pd, 3, ids);
    if (st != CZ_OK) {
        dn_prim_discard(e);
        return st;
    }
    dn_cache_insert(b, e);
    *out = e;
    return CZ_OK;
}

static cz_status dn_act_bwd(cz_backend *be, cz_act act, float alpha, const cz_tensor *y, const cz_tensor *dy,
                            cz_tensor *dx) {
    dn_backend *b = (dn_backend *)be;
    const char *op = "act_bwd";
    CZ_TRY(check_act(op, act));
    CZ_TRY(req(op, "y", y));
    CZ_TRY(req(op, "dy", dy));
    CZ_TRY(req(op, "dx", dx));
    CZ_TRY(want(op, "dy", dy, SHP(y)));
    CZ_TRY(want(op, "dx", dx, SHP(y)));
    if (dx->data == y->data && act != CZ_ACT_NONE)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: dx must not overwrite y", op);
    dn_enter(b);
    if (act == CZ_ACT_NONE) return dn_copy(b, dy, dx);
    int uniform = dn_stored_dt(dy) == dn_stored_dt(y) && dn_stored_dt(dx) == dn_stored_dt(y) &&
                  dy->layout == y->layout && dx->layout == y->layout;
    if (!uniform) {
        ew e = {.act = act, .k = (double)alpha};
        const cz_tensor *ins[2] = {y, dy};
        return ew_run(b, 2, ins, dx, &e, act_bwd_range);
    }
    dn_prim *e = NULL;
    CZ_TRY(act_bwd_prim(b, act, alpha, y, &e));
    void *ptrs[3] = {y->data, dy->data, dx->data};
    CZ_TRY(dn_run(b, &e->main, ptrs));
    dn_note_impl(b, DN_OP_ACT_BWD, &e->main);
    dn_touch(dx);
    return CZ_OK;
}

/* ---------------------------------------------------------------- concat_bwd */

/* Whether channels [c0, c0+nc) of dy can be a oneDNN sub-memory (whole blocks when blocked). */
static int part_ok(const cz_tensor *dy, int c0, int nc) {
    return !blocked(dy) || (c0 % 16 == 0 && nc % 16 == 0);
}

static cz_status split_part_step(dn_backend *b, const cz_tensor *dy, int c0, const cz_tensor *part, int accumulate,
                                 dn_step *s) {
    dnnl_memory_desc_t whole, sub, pm;
    CZ_TRY(dn_tensor_md(dy, &whole));
    dnnl_dims_t dims = {part->n, part->c, part->h, part->w}, offs = {0, c0, 0, 0};
    DN_CHECK(dnnl_memory_desc_init_submemory(&sub, &whole, dims, offs));
    CZ_TRY(dn_tensor_md(part, &pm));
    dnnl_primitive_attr_t attr;
    CZ_TRY(dn_attr_make(CZ_ACT_NONE, 0.f, &attr));
    dnnl_status_t ds = dnnl_success;
    if (accumulate) {
        dnnl_post_ops_t po = NULL;
        ds = dnnl_post_ops_create(&po);
        if (ds == dnnl_success) ds = dnnl_post_ops_append_sum(po, 1.f);
        if (ds == dnnl_success) ds = dnnl_primitive_attr_set_post_ops(attr, po);
        if (po) dnnl_post_ops_destroy(po);
    }
    dnnl_primitive_desc_t pd = NULL;
    if (ds == dnnl_success) ds = dnnl_reorder_primitive_desc_create(&pd, &sub, b->engine, &pm, b->engine, attr);
    dnnl_primitive_attr_destroy(attr);
    DN_CHECK(ds);
    static const int ids[2] = {DNNL_ARG_FROM, DNNL_ARG_TO};
    return dn_step_init(b, s, pd, 2, ids);
}

/* out = [acc ? out : 0] + dy channels [c0, c0 + out->c), element by element. */
static void split_loop(const cz_tensor *dy, int c0, cz_tensor *out, int accumulate) {
    int ddt = dn_stored_dt(dy), odt = dn_stored_dt(out);
    for (int n = 0; n < out->n; n++)
        for (int c = 0; c < out->c; c++)
            for (int h = 0; h < out->h; h++)
                for (int w = 0; w < out->w; w++) {
                    size_t o = phys(out, n, c, h, w);
                    float v = ldf(dy->data, ddt, phys(dy, n, c0 + c, h, w));
                    stf(out->data, odt, o, accumulate ? ldf(out->data, odt, o) + v : v);
                }
}

static cz_status dn_concat_bwd(cz_backend *be, const cz_tensor *dy, cz_tensor *da, cz_tensor *db, int accumulate) {
    dn_backend *b = (dn_backend *)be;
    const char *op = "concat_bwd";
    CZ_TRY(req(op, "dy", dy));
    CZ_TRY(req(op, "da", da));
    CZ_TRY(req(op, "db", db));
    CZ_TRY(want(op, "da", da, dy->n, da->c, dy->h, dy->w));
    CZ_TRY(want(op, "db", db, dy->n, dy->c - da->c, dy->h, dy->w));
    CZ_TRY(no_alias(op, dy, da));
    CZ_TRY(no_alias(op, dy, db));
    CZ_TRY(no_alias(op, da, db));
    dn_enter(b);
    cz_tensor *parts[2] = {da, db};
    int offs[2] = {0, da->c};
    dn_key key;
    memset(&key, 0, sizeof key);
    key.op = DN_OP_SPLIT;
    key.nt = 3;
    key.t[0] = dn_tkey_of(dy);
    key.t[1] = dn_tkey_of(da);
    key.t[2] = dn_tkey_of(db);
    key.i[0] = accumulate != 0;
    int ok[2] = {part_ok(dy, 0, da->c), part_ok(dy, da->c, db->c)};
    uint64_t h;
    dn_prim *e = dn_cache_find(b, &key, &h);
    if (!e) {
        CZ_TRY(dn_cache_new(b, &key, h, &e));
        cz_status st = CZ_OK;
        if (ok[0]) st = split_part_step(b, dy, 0, da, accumulate, &e->main);
        if (st == CZ_OK && ok[1]) st = split_part_step(b, dy, da->c, db, accumulate, &e->post);
        if (st != CZ_OK) {
            dn_prim_discard(e);
            return st;
        }
        dn_cache_insert(b, e);
    }
    dn_step *steps[2] = {&e->main, &e->post};
    for (int i = 0; i < 2; i++) {
        if (ok[i]) {
            void *ptrs[2] = {dy->data, parts[i]->data};
            CZ_TRY(dn_run(b, steps[i], ptrs));
        } else {
            split_loop(dy, offs[i], parts[i], accumulate);
        }
        dn_touch(parts[i]);
    }
    if (e->main.prim) dn_note_impl(b, DN_OP_SPLIT, &e->main);
    return CZ_OK;
}

/* ---------------------------------------------------------------- dropout, losses */

static void dropout_bwd_range(void *ctx, size_t lo, size_t hi) {
    const ew *e = ctx;
    if (e->idt[0] == dnnl_f32 && e->idt[1] == dnnl_f32 && e->odt == dnnl_f32) {
        const float *m = e->in[0], *g = e->in[1];
        float *o = e->out;
        for (size_t i = lo; i < hi; i++) o[i] = g[i] * m[i];
        return;
    }
    for (size_t i = lo; i < hi; i++)
        stf(e->out, e->odt, i, ldf(e->in[1], e->idt[1], i) * ldf(e->in[0], e->idt[0], i));
}

static cz_status dn_dropout_bwd(cz_backend *be, const cz_tensor *mask, const cz_tensor *dy, cz_tensor *dx) {
    const char *op = "dropout_bwd";
    CZ_TRY(req(op, "mask", mask));
    CZ_TRY(req(op, "dy", dy));
    CZ_TRY(req(op, "dx", dx));
    CZ_TRY(want(op, "dy", dy, SHP(mask)));
    CZ_TRY(want(op, "dx", dx, SHP(mask)));
    ew e = {.act = CZ_ACT_NONE};
    const cz_tensor *ins[2] = {mask, dy};
    return ew_run((dn_backend *)be, 2, ins, dx, &e, dropout_bwd_range);
}

static void bce_bwd_range(void *ctx, size_t lo, size_t hi) {
    const ew *e = ctx;
    for (size_t i = lo; i < hi; i++) {
        double v = ldf(e->in[0], e->idt[0], i), z = exp(-fabs(v));
        double sig = v >= 0 ? 1.0 / (1.0 + z) : z / (1.0 + z);
        stf(e->out, e->odt, i, (float)(e->k * (sig - e->t)));
    }
}

static cz_status dn_bce_logits_bwd(cz_backend *be, const cz_tensor *x, float target, float scale, cz_tensor *dx) {
    const char *op = "bce_logits_bwd";
    CZ_TRY(req(op, "x", x));
    CZ_TRY(req(op, "dx", dx));
    CZ_TRY(want(op, "dx", dx, SHP(x)));
    if (!isfinite(target)) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: target is not finite", op);
    ew e = {.k = (double)scale / (double)cz_tensor_numel(x), .t = (double)target};
    const cz_tensor *ins[1] = {x};
    return ew_run((dn_backend *)be, 1, ins, dx, &e, bce_bwd_range);
}

static void l1_bwd_range(void *ctx, size_t lo, size_t hi) {
    const ew *e = ctx;
    float pos = (float)e->k, neg = (float)-e->k;
    for (size_t i = lo; i < hi; i++) {
        float a = ldf(e->in[0], e->idt[0], i), bv = ldf(e->in[1], e->idt[1], i);
        stf(e->out, e->odt, i, a > bv ? pos : a < bv ? neg : 0.f);
    }
}

static cz_status dn_l1_bwd(cz_backend *be, const cz_tensor *a, const cz_tensor *bb, float scale, cz_tensor *da) {
    const char *op = "l1_bwd";
    CZ_TRY(req(op, "a", a));
    CZ_TRY(req(op, "b", bb));
    CZ_TRY(req(op, "da", da));
    CZ_TRY(want(op, "b", bb, SHP(a)));
    CZ_TRY(want(op, "da", da, SHP(a)));
    ew e = {.k = (double)scale / (double)cz_tensor_numel(a)};
    const cz_tensor *ins[2] = {a, bb};
    return ew_run((dn_backend *)be, 2, ins, da, &e, l1_bwd_range);
}

/* ---------------------------------------------------------------- Adam */

typedef struct adam_ctx {
    float *p, *m, *v;
    const void *g;
    int gdt;
    double lr, b1, b2, bc1, bc2, eps;
} adam_ctx;

static void adam_range(void *ctx, size_t lo, size_t hi) {
    const adam_ctx *a = ctx;
    const double b1 = a->b1, b2 = a->b2, bc1 = a->bc1, bc2 = a->bc2, lr = a->lr, eps = a->eps;
    for (size_t i = lo; i < hi; i++) {
        double g = a->gdt == dnnl_f32 ? (double)((const float *)a->g)[i] : (double)ldf(a->g, a->gdt, i);
        double mi = b1 * (double)a->m[i] + (1.0 - b1) * g;
        double vi = b2 * (double)a->v[i] + (1.0 - b2) * g * g;
        double step = lr * (mi / bc1) / (sqrt(vi / bc2) + eps);
        a->m[i] = (float)mi;
        a->v[i] = (float)vi;
        a->p[i] = (float)((double)a->p[i] - step);
    }
}

static cz_status dn_adam_step(cz_backend *be, cz_tensor *param, const cz_tensor *grad, cz_tensor *m, cz_tensor *v,
                              float lr, float beta1, float beta2, float eps, int t) {
    dn_backend *b = (dn_backend *)be;
    const char *op = "adam_step";
    CZ_TRY(req(op, "param", param));
    CZ_TRY(req(op, "grad", grad));
    CZ_TRY(req(op, "m", m));
    CZ_TRY(req(op, "v", v));
    CZ_TRY(want(op, "grad", grad, SHP(param)));
    CZ_TRY(want(op, "m", m, SHP(param)));
    CZ_TRY(want(op, "v", v, SHP(param)));
    const cz_tensor *st[3] = {param, m, v};
    static const char *names[3] = {"param", "m", "v"};
    for (int i = 0; i < 3; i++) {
        if (st[i]->dtype != CZ_F32)
            return cz_error_set(CZ_ERR_UNSUPPORTED, "%s: %s must be fp32, got %s", op, names[i],
                                cz_dtype_name(st[i]->dtype));
        if (blocked(st[i]) != blocked(param))
            return cz_error_set(CZ_ERR_UNSUPPORTED, "%s: param, m and v must share a layout", op);
    }
    if (param->data == m->data || param->data == v->data || m->data == v->data || grad->data == param->data)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: param, grad, m and v must be distinct tensors", op);
    if (t < 1) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: step %d must be >= 1", op, t);
    dn_enter(b);
    size_t n = cz_tensor_numel(param);
    adam_ctx a = {param->data, m->data, v->data, grad->data, dn_stored_dt(grad), (double)lr, (double)beta1,
                  (double)beta2, 0, 0, (double)eps};
    a.bc1 = 1.0 - pow(a.b1, t);
    a.bc2 = 1.0 - pow(a.b2, t);
    if (blocked(grad) != blocked(param)) {
        if (blocked(param))
            return cz_error_set(CZ_ERR_UNSUPPORTED, "%s: grad and param must share a layout", op);
        void *g;
        CZ_TRY(dn_aux(b, 11, n * 4, &g));
        CZ_TRY(dn_read_f32(b, grad, g));
        a.g = g;
        a.gdt = dnnl_f32;
    }
    dn_parallel(n, EW_GRAIN, adam_range, &a);
    dn_touch(param); /* weight copies made from param are rebuilt on next use */
    dn_touch(m);
    dn_touch(v);
    return CZ_OK;
}

void dn_fill_train_ops(cz_backend_ops *ops) {
    ops->act_bwd = dn_act_bwd;
    ops->concat_bwd = dn_concat_bwd;
    ops->dropout_bwd = dn_dropout_bwd;
    ops->bce_logits_bwd = dn_bce_logits_bwd;
    ops->l1_bwd = dn_l1_bwd;
    ops->adam_step = dn_adam_step;
}
