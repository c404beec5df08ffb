/* unet_train.c: the U-Net generator's training graph: parameters (fp32 masters + gradients),
 * memory plan, training/eval forward, backward, export/import in our naming. The graph, the
 * in-place LeakyReLU gradient and the dropout seeding are described in unet_train.h. One
 * thread at a time. Tested by tests/unit/test_train.c and tests/unit/test_train_golden.c. */
#include "unet_train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LRELU_SLOPE 0.2f
#define BN_MOMENTUM 0.1f
#define DROPOUT_FIRST_LEVEL 4 /* dropout on levels 4 .. depth-2 (torch_unet.py: i >= 4) */

typedef struct tlevel {
    /* parameters (pointers into cz_unet_train.params; NULL where the level has none) */
    cz_param *dw, *dgam, *dbet, *drm, *drv;
    cz_param *uw, *ub, *ugam, *ubet, *urm, *urv;
    cz_tensor dsm, dsi, usm, usi; /* BatchNorm save_mean / save_invstd */
    /* activations (see unet_train.h; d[0] holds a[0], d[D-1] holds r, u[0] the output) */
    cz_tensor d, a, u, e, mask, ed, c;
    /* gradients: ga wrt a[i] (r at D-1), gh after the lrelu/relu backward, gd after the down
     * BN backward, gu wrt u[i] (pre-BN), ge wrt e[i], ged after dropout, gc wrt c[i], gcr
     * after its relu backward */
    cz_tensor ga, gh, gd, gu, ge, ged, gc, gcr;
} tlevel;

struct cz_unet_train {
    cz_backend *be;
    cz_unet_arch arch;
    float dropout;
    cz_param params[CZ_UNET_MAX_PARAMS];
    int nparams;
    tlevel L[CZ_UNET_MAX_DEPTH];
    cz_tensor x, out_view;
    int max_batch, h, w;
    int n_last; /* batch of the last training forward (0: none) */
    cz_dtype act_dt; /* activations and their gradients (weights stay fp32) */
};

const cz_unet_arch *cz_unet_train_get_arch(const cz_unet_train *g) { return &g->arch; }
cz_tensor *cz_unet_train_input(cz_unet_train *g) { return &g->x; }

cz_param *cz_unet_train_params(cz_unet_train *g, int *count) {
    *count = g->nparams;
    return g->params;
}

uint64_t cz_unet_train_level_seed(uint64_t seed, int level) {
    return seed + 0x9FB21C651E98DF25ull * (uint64_t)(level + 1);
}

cz_status cz_unet_train_set_dropout(cz_unet_train *g, float p) {
    if (!(p >= 0.f && p < 1.f)) return cz_error_set(CZ_ERR_INVALID_ARG, "dropout %g must be in [0, 1)", (double)p);
    g->dropout = p;
    return CZ_OK;
}

static int has_dropout(const cz_unet_train *g, int i) {
    return g->dropout > 0.f && i >= DROPOUT_FIRST_LEVEL && i <= g->arch.depth - 2;
}

static cz_param *find_param(cz_unet_train *g, const char *fmt, int level) {
    char name[CZ_PARAM_NAME_MAX];
    snprintf(name, sizeof name, fmt, level);
    for (int i = 0; i < g->nparams; i++)
        if (!strcmp(g->params[i].name, name)) return &g->params[i];
    return NULL;
}

static void plan_free(cz_unet_train *g) {
    cz_backend *be = g->be;
    cz_tensor_free(be, &g->x);
    for (int i = 0; i < CZ_UNET_MAX_DEPTH; i++) {
        tlevel *l = &g->L[i];
        cz_tensor *t[] = {&l->d, &l->a, &l->u, &l->e, &l->mask, &l->ed, &l->c, &l->ga, &l->gh,
                          &l->gd, &l->gu, &l->ge, &l->ged, &l->gc, &l->gcr};
        for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) cz_tensor_free(be, t[k]);
    }
    g->max_batch = g->h = g->w = g->n_last = 0;
}

void cz_unet_train_destroy(cz_unet_train *g) {
    if (!g) return;
    plan_free(g);
    for (int i = 0; i < CZ_UNET_MAX_DEPTH; i++) {
        cz_tensor_free(g->be, &g->L[i].dsm);
        cz_tensor_free(g->be, &g->L[i].dsi);
        cz_tensor_free(g->be, &g->L[i].usm);
        cz_tensor_free(g->be, &g->L[i].usi);
    }
    for (int i = 0; i < g->nparams; i++) cz_param_free(g->be, &g->params[i]);
    free(g);
}

static cz_status vec_alloc(cz_backend *be, cz_tensor *t, int c) {
    return cz_tensor_alloc(be, t, CZ_F32, CZ_ROLE_VEC, 1, c, 1, 1);
}

/* Allocates the parameter list and wires the per-level pointers. */
static cz_status build_params(cz_unet_train *g) {
    const cz_unet_arch *a = &g->arch;
    cz_unet_param_spec specs[CZ_UNET_MAX_PARAMS];
    int n = cz_unet_param_specs(a, specs, CZ_UNET_MAX_PARAMS);
    for (int i = 0; i < n; i++) {
        const cz_unet_param_spec *sp = &specs[i];
        int learnable = strstr(sp->name, ".running_") == NULL;
        cz_role role = sp->ndim == 1 ? CZ_ROLE_VEC : !strncmp(sp->name, "up.", 3) ? CZ_ROLE_DECONV_W : CZ_ROLE_CONV_W;
        CZ_TRY(cz_param_alloc(g->be, &g->params[i], sp->name, sp->ndim, sp->shape, role, learnable));
        g->nparams = i + 1;
    }
    for (int i = 0; i < a->depth; i++) {
        tlevel *l = &g->L[i];
        l->dw = find_param(g, "down.%d.weight", i);
        l->dgam = find_param(g, "down.%d.bn.weight", i);
        l->dbet = find_param(g, "down.%d.bn.bias", i);
        l->drm = find_param(g, "down.%d.bn.running_mean", i);
        l->drv = find_param(g, "down.%d.bn.running_var", i);
        l->uw = find_param(g, "up.%d.weight", i);
        l->ub = find_param(g, "up.%d.bias", i);
        l->ugam = find_param(g, "up.%d.bn.weight", i);
        l->ubet = find_param(g, "up.%d.bn.bias", i);
        l->urm = find_param(g, "up.%d.bn.running_mean", i);
        l->urv = find_param(g, "up.%d.bn.running_var", i);
        if (l->dgam) {
            CZ_TRY(vec_alloc(g->be, &l->dsm, (int)l->dgam->shape[0]));
            CZ_TRY(vec_alloc(g->be, &l->dsi, (int)l->dgam->shape[0]));
        }
        if (l->ugam) {
            CZ_TRY(vec_alloc(g->be, &l->usm, (int)l->ugam->shape[0]));
            CZ_TRY(vec_alloc(g->be, &l->usi, (int)l->ugam->shape[0]));
        }
    }
    return CZ_OK;
}

static int arch_eq(const cz_unet_arch *x, const cz_unet_arch *y) {
    return x->ngf == y->ngf && x->depth == y->depth && x->in_ch == y->in_ch && x->out_ch == y->out_ch &&
           x->mode == y->mode && x->bn_eps == y->bn_eps;
}

cz_status cz_unet_train_load(cz_unet_train *g, const cz_safetensors *st) {
    cz_unet_arch a;
    CZ_TRY(cz_unet_arch_from_meta(st, &a));
    if (!arch_eq(&a, &g->arch))
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "weights are ngf %d depth %d %s, the model is ngf %d depth %d %s",
                            a.ngf, a.depth, cz_color_mode_name(a.mode), g->arch.ngf, g->arch.depth,
                            cz_color_mode_name(g->arch.mode));
    /* like cz_unet_create: generator tensors the architecture does not have are refused */
    for (size_t i = 0; i < cz_st_count(st); i++) {
        const char *name = cz_st_at(st, i)->name;
        if (strncmp(name, "down.", 5) && strncmp(name, "up.", 3)) continue;
        int found = 0;
        for (int j = 0; j < g->nparams && !found; j++) found = !strcmp(g->params[j].name, name);
        if (!found) return cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: unexpected tensor for this U-Net", name);
    }
    for (int i = 0; i < g->nparams; i++) CZ_TRY(cz_param_load(g->be, &g->params[i], st));
    return CZ_OK;
}

cz_status cz_unet_train_create(cz_backend *be, const cz_unet_arch *arch, const cz_safetensors *st, uint64_t seed,
                               cz_unet_train **out) {
    *out = NULL;
    cz_unet_arch a;
    cz_safetensors *fresh = NULL;
    if (st) {
        CZ_TRY(cz_unet_arch_from_meta(st, &a));
    } else {
        if (!arch) return cz_error_set(CZ_ERR_INVALID_ARG, "unet_train: neither weights nor an architecture");
        a = *arch;
        cz_st_writer *w = NULL;
        uint8_t *bytes = NULL;
        size_t len = 0;
        cz_status s = cz_st_writer_create(&w);
        if (s == CZ_OK) s = cz_unet_init_weights(&a, seed, w);
        if (s == CZ_OK) s = cz_st_writer_bytes(w, &bytes, &len);
        if (s == CZ_OK) s = cz_st_parse(bytes, len, 1, &fresh);
        free(bytes);
        cz_st_writer_destroy(w);
        CZ_TRY(s);
        st = fresh;
    }
    cz_unet_train *g = calloc(1, sizeof *g);
    cz_status s = g ? CZ_OK : cz_error_set(CZ_ERR_NOMEM, "unet_train: out of memory");
    if (g) {
        g->be = be;
        g->arch = a;
        g->dropout = 0.5f;
        s = build_params(g);
        if (s == CZ_OK) s = cz_unet_train_load(g, st);
    }
    cz_st_close(fresh);
    if (s != CZ_OK) {
        cz_unet_train_destroy(g);
        return s;
    }
    *out = g;
    return CZ_OK;
}

cz_status cz_unet_train_export(cz_unet_train *g, cz_st_writer *w) {
    CZ_TRY(cz_unet_arch_to_meta(&g->arch, w));
    for (int i = 0; i < g->nparams; i++) CZ_TRY(cz_param_save(g->be, &g->params[i], NULL, w));
    return CZ_OK;
}

/* ---------------------------------------------------------------- plan */

static cz_status act(const cz_unet_train *g, cz_tensor *t, int n, int c, int h, int w) {
    return cz_tensor_alloc(g->be, t, g->act_dt, CZ_ROLE_ACT, n, c, h, w);
}

cz_status cz_unet_train_set_act_dtype(cz_unet_train *g, cz_dtype dt) {
    CZ_TRY(cz_act_dtype_check(g->be, g->act_dt, dt, g->max_batch != 0));
    g->act_dt = dt;
    return CZ_OK;
}

cz_status cz_unet_train_plan(cz_unet_train *g, int max_batch, int h, int w) {
    const cz_unet_arch *a = &g->arch;
    const int D = a->depth, m = cz_unet_multiple(a);
    if (max_batch < 1 || max_batch > 4096)
        return cz_error_set(CZ_ERR_INVALID_ARG, "train plan: max_batch %d out of range 1..4096", max_batch);
    if (h < m || w < m || h % m || w % m || h > 16384 || w > 16384)
        return cz_error_set(CZ_ERR_INVALID_ARG, "train plan: %dx%d is not a positive multiple of %d", w, h, m);
    /* BatchNorm needs two values per channel: the smallest BN map is down.{D-2} at h >> (D-1) */
    if ((size_t)max_batch * (size_t)(h >> (D - 1)) * (size_t)(w >> (D - 1)) < 2)
        return cz_error_set(CZ_ERR_INVALID_ARG, "train plan: batch %d at %dx%d leaves BatchNorm one value per channel",
                            max_batch, w, h);
    if (g->max_batch == max_batch && g->h == h && g->w == w) return CZ_OK;
    plan_free(g);
    const int N = max_batch;
    cz_status s = act(g, &g->x, N, a->in_ch, h, w);
    for (int i = 0; i < D && s == CZ_OK; i++) {
        tlevel *l = &g->L[i];
        int wi = cz_unet_width(a, i), hi = h >> (i + 1), wd = w >> (i + 1); /* down side of level i */
        int uo = i == 0 ? a->out_ch : cz_unet_width(a, i - 1), hu = h >> i, wu = w >> i; /* up output */
        s = act(g, &l->d, N, wi, hi, wd);
        if (s == CZ_OK) s = act(g, &l->ga, N, wi, hi, wd);
        if (s == CZ_OK) s = act(g, &l->gh, N, wi, hi, wd);
        if (s == CZ_OK && i >= 1 && i <= D - 2) s = act(g, &l->a, N, wi, hi, wd);
        if (s == CZ_OK && i >= 1 && i <= D - 2) s = act(g, &l->gd, N, wi, hi, wd);
        if (s == CZ_OK) s = act(g, &l->u, N, uo, hu, wu);
        if (s == CZ_OK) s = act(g, &l->gu, N, uo, hu, wu);
        if (s == CZ_OK && i >= 1) s = act(g, &l->e, N, uo, hu, wu);
        if (s == CZ_OK && i >= 1) s = act(g, &l->ge, N, uo, hu, wu);
        /* dropout buffers exist for every potential dropout level (p may change later) */
        if (s == CZ_OK && i >= DROPOUT_FIRST_LEVEL && i <= D - 2) {
            s = act(g, &l->mask, N, uo, hu, wu);
            if (s == CZ_OK) s = act(g, &l->ed, N, uo, hu, wu);
            if (s == CZ_OK) s = act(g, &l->ged, N, uo, hu, wu);
        }
        if (s == CZ_OK && i <= D - 2) s = act(g, &l->c, N, 2 * wi, hi, wd);
        if (s == CZ_OK && i <= D - 2) s = act(g, &l->gc, N, 2 * wi, hi, wd);
        if (s == CZ_OK && i <= D - 2) s = act(g, &l->gcr, N, 2 * wi, hi, wd);
    }
    if (s != CZ_OK) {
        plan_free(g);
        return s;
    }
    g->max_batch = max_batch;
    g->h = h;
    g->w = w;
    return CZ_OK;
}

/* ---------------------------------------------------------------- forward / backward */

#define V(t) cz_tensor_batch_view((t), n)

/* a[i]: the lrelu'd output of down level i (a[0] lives in d[0]). */
static cz_tensor a_of(const cz_unet_train *g, int i, int n) { return i == 0 ? V(g->L[0].d) : V(g->L[i].a); }

static cz_status bn_fwd(cz_unet_train *g, int training, const cz_tensor *x, cz_param *gam, cz_param *bet,
                        cz_param *rm, cz_param *rv, cz_tensor *sm, cz_tensor *si, cz_tensor *y) {
    cz_backend *be = g->be;
    if (training)
        return be->ops->bn_train_fwd(be, x, &gam->value, &bet->value, g->arch.bn_eps, BN_MOMENTUM, &rm->value,
                                     &rv->value, sm, si, y);
    return be->ops->bn_infer(be, x, &gam->value, &bet->value, &rm->value, &rv->value, g->arch.bn_eps, y);
}

/* The forward pass; the dropout seed is `seed`, or backend variable seed_var when >= 0. */
static cz_status forward(cz_unet_train *g, int n, int training, uint64_t seed, int seed_var, const cz_tensor **out) {
    if (!g->max_batch || n < 1 || n > g->max_batch)
        return cz_error_set(CZ_ERR_INVALID_ARG, "unet_train forward: batch %d not planned (max %d)", n, g->max_batch);
    cz_backend *be = g->be;
    const cz_backend_ops *ops = be->ops;
    const int D = g->arch.depth;
    const cz_conv_params cp = {.stride = 2, .pad = 1, .act = CZ_ACT_NONE, .alpha = 0.f};
    g->n_last = 0;
    cz_tensor x = V(g->x);
    /* encoder */
    for (int i = 0; i < D; i++) {
        tlevel *l = &g->L[i];
        cz_tensor in = i == 0 ? x : a_of(g, i - 1, n), d = V(l->d);
        CZ_TRY(ops->conv2d(be, &in, &l->dw->value, NULL, &cp, &d));
        if (i == 0) {
            CZ_TRY(ops->act_fwd(be, CZ_ACT_LRELU, LRELU_SLOPE, &d, &d));
        } else if (i <= D - 2) {
            cz_tensor av = V(l->a);
            CZ_TRY(bn_fwd(g, training, &d, l->dgam, l->dbet, l->drm, l->drv, &l->dsm, &l->dsi, &av));
            CZ_TRY(ops->act_fwd(be, CZ_ACT_LRELU, LRELU_SLOPE, &av, &av));
        } else {
            CZ_TRY(ops->act_fwd(be, CZ_ACT_RELU, 0.f, &d, &d));
        }
    }
    /* decoder */
    for (int i = D - 1; i >= 1; i--) {
        tlevel *l = &g->L[i];
        cz_tensor src = i == D - 1 ? V(l->d) : V(l->c), u = V(l->u), e = V(l->e);
        CZ_TRY(ops->deconv2d(be, &src, &l->uw->value, NULL, &cp, &u));
        CZ_TRY(bn_fwd(g, training, &u, l->ugam, l->ubet, l->urm, l->urv, &l->usm, &l->usi, &e));
        cz_tensor eo = e;
        if (training && has_dropout(g, i)) {
            cz_tensor mask = V(l->mask), ed = V(l->ed);
            if (seed_var >= 0)
                CZ_TRY(ops->dropout_fwd_var(be, g->dropout, seed_var, cz_unet_train_level_seed(0, i), &e, &mask, &ed));
            else
                CZ_TRY(ops->dropout_fwd(be, g->dropout, cz_unet_train_level_seed(seed, i), &e, &mask, &ed));
            eo = ed;
        }
        cz_tensor skip = a_of(g, i - 1, n), c = V(g->L[i - 1].c);
        CZ_TRY(ops->concat(be, &skip, &eo, &c));
        CZ_TRY(ops->act_fwd(be, CZ_ACT_RELU, 0.f, &c, &c));
    }
    cz_conv_params outer = {.stride = 2, .pad = 1, .act = CZ_ACT_TANH, .alpha = 0.f};
    cz_tensor c0 = V(g->L[0].c);
    g->out_view = V(g->L[0].u);
    CZ_TRY(ops->deconv2d(be, &c0, &g->L[0].uw->value, &g->L[0].ub->value, &outer, &g->out_view));
    g->n_last = training ? n : 0;
    *out = &g->out_view;
    return CZ_OK;
}

cz_status cz_unet_train_forward(cz_unet_train *g, int n, int training, uint64_t seed, const cz_tensor **out) {
    return forward(g, n, training, seed, -1, out);
}

cz_status cz_unet_train_forward_var(cz_unet_train *g, int n, int seed_var, const cz_tensor **out) {
    if (!g->be->ops->dropout_fwd_var)
        return cz_error_set(CZ_ERR_UNSUPPORTED, "backend '%s' has no dropout_fwd_var", g->be->ops->name);
    if (seed_var < 0) /* (forward reads a negative one as "no variable"; the backend checks the rest) */
        return cz_error_set(CZ_ERR_INVALID_ARG, "unet_train forward: variable %d is negative", seed_var);
    return forward(g, n, 1, 0, seed_var, out);
}

cz_status cz_unet_train_backward(cz_unet_train *g, const cz_tensor *dout, cz_grad_mode mode) {
    const int n = g->n_last;
    if (!n) return cz_error_set(CZ_ERR_INVALID_ARG, "unet_train backward: no training forward to differentiate");
    if (!cz_shape_eq(dout, &g->out_view))
        return cz_error_set(CZ_ERR_SHAPE, "unet_train backward: dout [%d,%d,%d,%d] does not match the output", dout->n,
                            dout->c, dout->h, dout->w);
    cz_backend *be = g->be;
    const cz_backend_ops *ops = be->ops;
    const int D = g->arch.depth, acc = mode == CZ_GRAD_ACCUMULATE, pg = mode != CZ_GRAD_NONE;
    const cz_conv_params cp = {.stride = 2, .pad = 1, .act = CZ_ACT_NONE, .alpha = 0.f};
    /* outermost up: tanh, then the transposed conv with bias */
    tlevel *l0 = &g->L[0];
    cz_tensor gu0 = V(l0->gu), c0 = V(l0->c), gc0 = V(l0->gc);
    CZ_TRY(ops->act_bwd(be, CZ_ACT_TANH, 0.f, &g->out_view, dout, &gu0));
    if (pg) CZ_TRY(ops->deconv2d_bwd_weights(be, &c0, &gu0, &cp, &l0->uw->grad, &l0->ub->grad, acc));
    CZ_TRY(ops->deconv2d_bwd_data(be, &gu0, &l0->uw->value, &cp, &gc0));
    /* inward along the decoder: level i's up path, fed by the gradient of c[i-1] */
    for (int i = 1; i <= D - 1; i++) {
        tlevel *l = &g->L[i], *lo = &g->L[i - 1];
        cz_tensor c = V(lo->c), gc = V(lo->gc), gcr = V(lo->gcr), ga = V(lo->ga), ge = V(l->ge);
        CZ_TRY(ops->act_bwd(be, CZ_ACT_RELU, 0.f, &c, &gc, &gcr));
        /* the skip half lands in ga[i-1] for now; it is re-added after the down path below */
        CZ_TRY(ops->concat_bwd(be, &gcr, &ga, &ge, 0));
        cz_tensor gbn = ge;
        if (has_dropout(g, i)) {
            cz_tensor mask = V(l->mask), ged = V(l->ged);
            CZ_TRY(ops->dropout_bwd(be, &mask, &ge, &ged));
            gbn = ged;
        }
        cz_tensor u = V(l->u), gu = V(l->gu);
        CZ_TRY(ops->bn_train_bwd(be, &u, &gbn, &l->ugam->value, &l->usm, &l->usi, &gu, pg ? &l->ugam->grad : NULL,
                                 pg ? &l->ubet->grad : NULL, acc));
        cz_tensor src = i == D - 1 ? V(l->d) : V(l->c);
        cz_tensor gsrc = i == D - 1 ? V(l->ga) : V(l->gc);
        if (pg) CZ_TRY(ops->deconv2d_bwd_weights(be, &src, &gu, &cp, &l->uw->grad, NULL, acc));
        CZ_TRY(ops->deconv2d_bwd_data(be, &gu, &l->uw->value, &cp, &gsrc));
    }
    /* innermost: r = relu(d[D-1]) */
    tlevel *li = &g->L[D - 1];
    cz_tensor r = V(li->d), gr = V(li->ga), g_pre = V(li->gh);
    CZ_TRY(ops->act_bwd(be, CZ_ACT_RELU, 0.f, &r, &gr, &g_pre));
    /* outward along the encoder: g_pre is the gradient wrt conv i's output */
    for (int i = D - 1; i >= 0; i--) {
        tlevel *l = &g->L[i];
        cz_tensor in = i == 0 ? V(g->x) : a_of(g, i - 1, n);
        if (pg) CZ_TRY(ops->conv2d_bwd_weights(be, &in, &g_pre, &cp, &l->dw->grad, NULL, acc));
        if (i == 0) break;
        tlevel *lo = &g->L[i - 1];
        cz_tensor ga = V(lo->ga), gcr = V(lo->gcr), junk = V(l->ge), gh = V(lo->gh);
        CZ_TRY(ops->conv2d_bwd_data(be, &g_pre, &l->dw->value, &cp, &ga));
        /* + the skip's share of concat(a[i-1], e[i]); e[i]'s half goes to ge[i], consumed */
        CZ_TRY(ops->concat_bwd(be, &gcr, &ga, &junk, 1));
        /* one LeakyReLU for both uses of a[i-1] (in-place in the reference) */
        CZ_TRY(ops->act_bwd(be, CZ_ACT_LRELU, LRELU_SLOPE, &in, &ga, &gh));
        if (i - 1 >= 1) {
            cz_tensor d = V(lo->d), gd = V(lo->gd);
            CZ_TRY(ops->bn_train_bwd(be, &d, &gh, &lo->dgam->value, &lo->dsm, &lo->dsi, &gd,
                                     pg ? &lo->dgam->grad : NULL, pg ? &lo->dbet->grad : NULL, acc));
            g_pre = gd;
        } else {
            g_pre = gh;
        }
    }
    return CZ_OK;
}
