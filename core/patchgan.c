/* patchgan.c: the PatchGAN discriminator: architecture tables, parameter specs and init,
 * loading/export, memory plan, training-mode forward and backward. Graph, naming and
 * threading rules are in patchgan.h. Tested by tests/unit/test_train.c and
 * tests/unit/test_train_golden.c. */
#include "patchgan.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LRELU_SLOPE 0.2f
#define BN_MOMENTUM 0.1f

/* ---------------------------------------------------------------- architecture */

cz_patchgan_arch cz_patchgan_arch_default(cz_color_mode mode, int ndf) {
    cz_patchgan_arch a = {.in_ch = mode == CZ_COLOR_RGB ? 6 : 3, .ndf = ndf, .n_layers = 3, .bn_eps = 1e-5f};
    return a;
}

cz_status cz_patchgan_arch_validate(const cz_patchgan_arch *a) {
    if (a->in_ch < 1 || a->in_ch > 64) return cz_error_set(CZ_ERR_INVALID_ARG, "disc in_ch %d out of range 1..64", a->in_ch);
    if (a->ndf < 1 || a->ndf > 1024) return cz_error_set(CZ_ERR_INVALID_ARG, "disc ndf %d out of range 1..1024", a->ndf);
    if (a->n_layers < 1 || a->n_layers > CZ_PATCHGAN_MAX_LAYERS)
        return cz_error_set(CZ_ERR_INVALID_ARG, "disc n_layers %d out of range 1..%d", a->n_layers,
                            CZ_PATCHGAN_MAX_LAYERS);
    if (!(a->bn_eps > 0.f && a->bn_eps < 1.f))
        return cz_error_set(CZ_ERR_INVALID_ARG, "disc bn_eps %g out of range (0, 1)", (double)a->bn_eps);
    return CZ_OK;
}

static int mult(int k) { return k >= 3 ? 8 : 1 << k; }

int cz_patchgan_width(const cz_patchgan_arch *a, int k) {
    if (k == a->n_layers + 1) return 1;
    return a->ndf * mult(k);
}

int cz_patchgan_stride(const cz_patchgan_arch *a, int k) { return k < a->n_layers ? 2 : 1; }

static int conv_in(const cz_patchgan_arch *a, int k) { return k == 0 ? a->in_ch : cz_patchgan_width(a, k - 1); }
static int has_bn(const cz_patchgan_arch *a, int k) { return k >= 1 && k <= a->n_layers; }
static int nconv(const cz_patchgan_arch *a) { return a->n_layers + 2; }
static int conv_out_size(int in, int stride) { return (in + 2 - 4) / stride + 1; }

int cz_patchgan_out_size(const cz_patchgan_arch *a, int in) {
    int s = in;
    for (int k = 0; k < nconv(a); k++) {
        if (s + 2 < 4) return 0;
        s = conv_out_size(s, cz_patchgan_stride(a, k));
    }
    return s;
}

static void spec_set(cz_unet_param_spec *out, int cap, int *n, const char *name, int ndim, int64_t d0, int64_t d1) {
    if (*n < cap) {
        cz_unet_param_spec *p = &out[*n];
        snprintf(p->name, sizeof p->name, "%s", name);
        p->ndim = ndim;
        p->shape[0] = d0;
        p->shape[1] = ndim == 4 ? d1 : 1;
        p->shape[2] = ndim == 4 ? 4 : 1;
        p->shape[3] = ndim == 4 ? 4 : 1;
    }
    (*n)++;
}

static const char *const k_bn_fields[4] = {"weight", "bias", "running_mean", "running_var"};

int cz_patchgan_param_specs(const cz_patchgan_arch *a, cz_unet_param_spec *out, int cap) {
    int n = 0;
    char name[40];
    for (int k = 0; k < nconv(a); k++) {
        int oc = cz_patchgan_width(a, k);
        snprintf(name, sizeof name, "disc.%d.weight", k);
        spec_set(out, cap, &n, name, 4, oc, conv_in(a, k));
        if (!has_bn(a, k)) {
            snprintf(name, sizeof name, "disc.%d.bias", k);
            spec_set(out, cap, &n, name, 1, oc, 0);
        } else {
            for (int f = 0; f < 4; f++) {
                snprintf(name, sizeof name, "disc.%d.bn.%s", k, k_bn_fields[f]);
                spec_set(out, cap, &n, name, 1, oc, 0);
            }
        }
    }
    return n;
}

size_t cz_patchgan_param_count(const cz_patchgan_arch *a) {
    cz_unet_param_spec specs[CZ_PATCHGAN_MAX_PARAMS];
    int n = cz_patchgan_param_specs(a, specs, CZ_PATCHGAN_MAX_PARAMS);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (strstr(specs[i].name, ".running_")) continue;
        size_t k = 1;
        for (int d = 0; d < specs[i].ndim; d++) k *= (size_t)specs[i].shape[d];
        total += k;
    }
    return total;
}

cz_status cz_patchgan_arch_to_meta(const cz_patchgan_arch *a, cz_st_writer *w) {
    char buf[32];
    snprintf(buf, sizeof buf, "%d", a->in_ch);
    CZ_TRY(cz_st_writer_meta(w, "disc_in_ch", buf));
    snprintf(buf, sizeof buf, "%d", a->ndf);
    CZ_TRY(cz_st_writer_meta(w, "disc_ndf", buf));
    snprintf(buf, sizeof buf, "%d", a->n_layers);
    CZ_TRY(cz_st_writer_meta(w, "disc_n_layers", buf));
    snprintf(buf, sizeof buf, "%g", (double)a->bn_eps);
    return cz_st_writer_meta(w, "disc_bn_eps", buf);
}

static cz_status meta_int(const cz_safetensors *st, const char *key, int *out) {
    const char *v = cz_st_meta(st, key);
    if (!v) return cz_error_set(CZ_ERR_BAD_WEIGHTS, "metadata key '%s' missing", key);
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < 0 || x > 1 << 20)
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "metadata '%s' = '%s' is not a valid integer", key, v);
    *out = (int)x;
    return CZ_OK;
}

cz_status cz_patchgan_arch_from_meta(const cz_safetensors *st, cz_patchgan_arch *a) {
    if (!cz_st_meta(st, "disc_ndf")) return cz_error_set(CZ_ERR_NOT_FOUND, "no discriminator metadata (disc_ndf)");
    memset(a, 0, sizeof *a);
    CZ_TRY(meta_int(st, "disc_in_ch", &a->in_ch));
    CZ_TRY(meta_int(st, "disc_ndf", &a->ndf));
    CZ_TRY(meta_int(st, "disc_n_layers", &a->n_layers));
    a->bn_eps = 1e-5f;
    const char *eps = cz_st_meta(st, "disc_bn_eps");
    if (eps) {
        char *end;
        double e = strtod(eps, &end);
        if (end == eps || *end) return cz_error_set(CZ_ERR_BAD_WEIGHTS, "metadata 'disc_bn_eps' = '%s' is not a number", eps);
        a->bn_eps = (float)e;
    }
    cz_status s = cz_patchgan_arch_validate(a);
    return s == CZ_OK ? s : cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s", cz_error_detail());
}

cz_status cz_patchgan_init_weights(const cz_patchgan_arch *a, uint64_t seed, cz_st_writer *w) {
    CZ_TRY(cz_patchgan_arch_validate(a));
    CZ_TRY(cz_patchgan_arch_to_meta(a, w));
    cz_unet_param_spec specs[CZ_PATCHGAN_MAX_PARAMS];
    int n = cz_patchgan_param_specs(a, specs, CZ_PATCHGAN_MAX_PARAMS);
    return cz_init_params_pix2pix(specs, n, seed ^ 0x706174636867616eull, w);
}

/* ---------------------------------------------------------------- model */

typedef struct layer {
    cz_param *w, *b;                    /* conv weight, bias (NULL with BN) */
    cz_param *gamma, *beta, *rmean, *rvar; /* BN (NULL without) */
    cz_tensor save_mean, save_invstd;
    /* plan: y = conv output (BN input for BN layers; lrelu output for layer 0; logits for the
     * last), a = lrelu(BN(y)) for BN layers; gradients ga (wrt the layer's output), gh (after
     * the lrelu backward), gd (after the BN backward) */
    cz_tensor y, a, ga, gh, gd;
} layer;

struct cz_patchgan {
    cz_backend *be;
    cz_patchgan_arch arch;
    cz_param params[CZ_PATCHGAN_MAX_PARAMS];
    int nparams;
    layer L[CZ_PATCHGAN_MAX_CONVS];
    cz_tensor x, dx;
    cz_tensor logits, dx_view; /* batch views handed out by forward / backward */
    int max_batch, h, w, n_last; /* n_last: batch of the last forward (0: none) */
    cz_dtype act_dt;             /* activations and their gradients */
};

const cz_patchgan_arch *cz_patchgan_get_arch(const cz_patchgan *d) { return &d->arch; }
cz_tensor *cz_patchgan_input(cz_patchgan *d) { return &d->x; }

cz_param *cz_patchgan_params(cz_patchgan *d, int *count) {
    *count = d->nparams;
    return d->params;
}

static cz_param *find_param(cz_patchgan *d, const char *name) {
    for (int i = 0; i < d->nparams; i++)
        if (!strcmp(d->params[i].name, name)) return &d->params[i];
    return NULL;
}

static void plan_free(cz_patchgan *d) {
    cz_backend *be = d->be;
    cz_tensor_free(be, &d->x);
    cz_tensor_free(be, &d->dx);
    for (int k = 0; k < CZ_PATCHGAN_MAX_CONVS; k++) {
        layer *l = &d->L[k];
        cz_tensor_free(be, &l->y);
        cz_tensor_free(be, &l->a);
        cz_tensor_free(be, &l->ga);
        cz_tensor_free(be, &l->gh);
        cz_tensor_free(be, &l->gd);
    }
    d->max_batch = d->h = d->w = d->n_last = 0;
}

void cz_patchgan_destroy(cz_patchgan *d) {
    if (!d) return;
    plan_free(d);
    for (int k = 0; k < CZ_PATCHGAN_MAX_CONVS; k++) {
        cz_tensor_free(d->be, &d->L[k].save_mean);
        cz_tensor_free(d->be, &d->L[k].save_invstd);
    }
    for (int i = 0; i < d->nparams; i++) cz_param_free(d->be, &d->params[i]);
    free(d);
}

static cz_status create_params(cz_patchgan *d, const cz_safetensors *st) {
    const cz_patchgan_arch *a = &d->arch;
    cz_unet_param_spec specs[CZ_PATCHGAN_MAX_PARAMS];
    int n = cz_patchgan_param_specs(a, specs, CZ_PATCHGAN_MAX_PARAMS);
    for (int i = 0; i < n; i++) {
        const cz_unet_param_spec *sp = &specs[i];
        int learnable = strstr(sp->name, ".running_") == NULL;
        cz_role role = sp->ndim == 4 ? CZ_ROLE_CONV_W : CZ_ROLE_VEC;
        CZ_TRY(cz_param_alloc(d->be, &d->params[i], sp->name, sp->ndim, sp->shape, role, learnable));
        d->nparams = i + 1;
        CZ_TRY(cz_param_load(d->be, &d->params[i], st));
    }
    char name[40];
    for (int k = 0; k < nconv(a); k++) {
        layer *l = &d->L[k];
#define P(fmt, ...) (snprintf(name, sizeof name, fmt, __VA_ARGS__), find_param(d, name))
        l->w = P("disc.%d.weight", k);
        if (has_bn(a, k)) {
            l->gamma = P("disc.%d.bn.weight", k);
            l->beta = P("disc.%d.bn.bias", k);
            l->rmean = P("disc.%d.bn.running_mean", k);
            l->rvar = P("disc.%d.bn.running_var", k);
            int oc = cz_patchgan_width(a, k);
            CZ_TRY(cz_tensor_alloc(d->be, &l->save_mean, CZ_F32, CZ_ROLE_VEC, 1, oc, 1, 1));
            CZ_TRY(cz_tensor_alloc(d->be, &l->save_invstd, CZ_F32, CZ_ROLE_VEC, 1, oc, 1, 1));
        } else {
            l->b = P("disc.%d.bias", k);
        }
#undef P
    }
    return CZ_OK;
}

cz_status cz_patchgan_create(cz_backend *be, const cz_patchgan_arch *a, const cz_safetensors *st, uint64_t seed,
                             cz_patchgan **out) {
    *out = NULL;
    CZ_TRY(cz_patchgan_arch_validate(a));
    cz_safetensors *fresh = NULL;
    if (!st) { /* fresh weights: serialize the initializer's output and load it like a file */
        cz_st_writer *w = NULL;
        uint8_t *bytes = NULL;
        size_t len = 0;
        cz_status s = cz_st_writer_create(&w);
        if (s == CZ_OK) s = cz_patchgan_init_weights(a, seed, w);
        if (s == CZ_OK) s = cz_st_writer_bytes(w, &bytes, &len);
        if (s == CZ_OK) s = cz_st_parse(bytes, len, 1, &fresh);
        free(bytes);
        cz_st_writer_destroy(w);
        CZ_TRY(s);
        st = fresh;
    }
    cz_patchgan *d = calloc(1, sizeof *d);
    cz_status s = d ? CZ_OK : cz_error_set(CZ_ERR_NOMEM, "patchgan: out of memory");
    if (d) {
        d->be = be;
        d->arch = *a;
        s = create_params(d, st);
    }
    cz_st_close(fresh);
    if (s != CZ_OK) {
        cz_patchgan_destroy(d);
        return s;
    }
    *out = d;
    return CZ_OK;
}

cz_status cz_patchgan_export(cz_patchgan *d, cz_st_writer *w) {
    CZ_TRY(cz_patchgan_arch_to_meta(&d->arch, w));
    for (int i = 0; i < d->nparams; i++) CZ_TRY(cz_param_save(d->be, &d->params[i], NULL, w));
    return CZ_OK;
}

static cz_status act_alloc(const cz_patchgan *d, cz_tensor *t, int n, int c, int h, int w) {
    return cz_tensor_alloc(d->be, t, d->act_dt, CZ_ROLE_ACT, n, c, h, w);
}

cz_status cz_patchgan_set_act_dtype(cz_patchgan *d, cz_dtype dt) {
    CZ_TRY(cz_act_dtype_check(d->be, d->act_dt, dt, d->max_batch != 0));
    d->act_dt = dt;
    return CZ_OK;
}

cz_status cz_patchgan_plan(cz_patchgan *d, int max_batch, int h, int w) {
    const cz_patchgan_arch *a = &d->arch;
    if (max_batch < 1 || max_batch > 4096)
        return cz_error_set(CZ_ERR_INVALID_ARG, "patchgan plan: max_batch %d out of range 1..4096", max_batch);
    if (cz_patchgan_out_size(a, h) < 1 || cz_patchgan_out_size(a, w) < 1 || h > 16384 || w > 16384)
        return cz_error_set(CZ_ERR_INVALID_ARG, "patchgan plan: %dx%d input is too small (or too large) for %d layers",
                            w, h, a->n_layers);
    if (d->max_batch == max_batch && d->h == h && d->w == w) return CZ_OK;
    plan_free(d);
    cz_status s = act_alloc(d, &d->x, max_batch, a->in_ch, h, w);
    if (s == CZ_OK) s = act_alloc(d, &d->dx, max_batch, a->in_ch, h, w);
    int hh = h, ww = w;
    for (int k = 0; k < nconv(a) && s == CZ_OK; k++) {
        layer *l = &d->L[k];
        int st = cz_patchgan_stride(a, k), oc = cz_patchgan_width(a, k);
        hh = conv_out_size(hh, st);
        ww = conv_out_size(ww, st);
        if (has_bn(a, k) && (size_t)max_batch * hh * ww < 2) {
            s = cz_error_set(CZ_ERR_INVALID_ARG, "patchgan plan: BatchNorm of disc.%d would see one value", k);
            break;
        }
        s = act_alloc(d, &l->y, max_batch, oc, hh, ww);
        if (s == CZ_OK && k <= a->n_layers) s = act_alloc(d, &l->ga, max_batch, oc, hh, ww);
        if (s == CZ_OK && k <= a->n_layers) s = act_alloc(d, &l->gh, max_batch, oc, hh, ww);
        if (s == CZ_OK && has_bn(a, k)) s = act_alloc(d, &l->a, max_batch, oc, hh, ww);
        if (s == CZ_OK && has_bn(a, k)) s = act_alloc(d, &l->gd, max_batch, oc, hh, ww);
    }
    if (s != CZ_OK) {
        plan_free(d);
        return s;
    }
    d->max_batch = max_batch;
    d->h = h;
    d->w = w;
    return CZ_OK;
}

#define V(t) cz_tensor_batch_view((t), n)

/* Output of layer k as seen by the next layer (the lrelu'd activation). */
static cz_tensor layer_out(const cz_patchgan *d, int k, int n) {
    const layer *l = &d->L[k];
    return has_bn(&d->arch, k) ? V(l->a) : V(l->y);
}

cz_status cz_patchgan_forward(cz_patchgan *d, int n, const cz_tensor **logits) {
    if (!d->max_batch || n < 1 || n > d->max_batch)
        return cz_error_set(CZ_ERR_INVALID_ARG, "patchgan forward: batch %d not planned (max %d)", n, d->max_batch);
    cz_backend *be = d->be;
    const cz_backend_ops *ops = be->ops;
    const cz_patchgan_arch *a = &d->arch;
    const int K = nconv(a);
    cz_tensor in = V(d->x);
    for (int k = 0; k < K; k++) {
        layer *l = &d->L[k];
        int last = k == K - 1;
        cz_conv_params p = {.stride = cz_patchgan_stride(a, k), .pad = 1, .act = CZ_ACT_NONE, .alpha = 0.f};
        if (k == 0) {
            p.act = CZ_ACT_LRELU;
            p.alpha = LRELU_SLOPE;
        }
        cz_tensor y = V(l->y);
        CZ_TRY(ops->conv2d(be, &in, &l->w->value, l->b ? &l->b->value : NULL, &p, &y));
        if (has_bn(a, k)) {
            cz_tensor act = V(l->a);
            CZ_TRY(ops->bn_train_fwd(be, &y, &l->gamma->value, &l->beta->value, a->bn_eps, BN_MOMENTUM,
                                     &l->rmean->value, &l->rvar->value, &l->save_mean, &l->save_invstd, &act));
            CZ_TRY(ops->act_fwd(be, CZ_ACT_LRELU, LRELU_SLOPE, &act, &act));
        }
        if (!last) in = layer_out(d, k, n);
    }
    d->n_last = n;
    d->logits = V(d->L[K - 1].y);
    *logits = &d->logits;
    return CZ_OK;
}

cz_status cz_patchgan_backward(cz_patchgan *d, const cz_tensor *dlogits, cz_grad_mode mode, const cz_tensor **dx) {
    const int n = d->n_last;
    if (!n) return cz_error_set(CZ_ERR_INVALID_ARG, "patchgan backward: no forward to differentiate");
    const cz_patchgan_arch *a = &d->arch;
    const int K = nconv(a);
    if (!cz_shape_eq(dlogits, &d->logits))
        return cz_error_set(CZ_ERR_SHAPE, "patchgan backward: dlogits [%d,%d,%d,%d], logits [%d,%d,%d,%d]", dlogits->n,
                            dlogits->c, dlogits->h, dlogits->w, n, 1, d->logits.h, d->logits.w);
    cz_backend *be = d->be;
    const cz_backend_ops *ops = be->ops;
    const int acc = mode == CZ_GRAD_ACCUMULATE;
    cz_tensor g = *dlogits; /* gradient wrt the pre-activation output of conv k */
    for (int k = K - 1; k >= 0; k--) {
        layer *l = &d->L[k];
        cz_conv_params p = {.stride = cz_patchgan_stride(a, k), .pad = 1, .act = CZ_ACT_NONE, .alpha = 0.f};
        cz_tensor in = k == 0 ? V(d->x) : layer_out(d, k - 1, n);
        if (mode != CZ_GRAD_NONE)
            CZ_TRY(ops->conv2d_bwd_weights(be, &in, &g, &p, &l->w->grad, l->b ? &l->b->grad : NULL, acc));
        if (k == 0) {
            if (dx) {
                d->dx_view = V(d->dx);
                CZ_TRY(ops->conv2d_bwd_data(be, &g, &l->w->value, &p, &d->dx_view));
                *dx = &d->dx_view;
            }
            break;
        }
        layer *lp = &d->L[k - 1];
        cz_tensor ga = V(lp->ga), gh = V(lp->gh);
        CZ_TRY(ops->conv2d_bwd_data(be, &g, &l->w->value, &p, &ga));
        CZ_TRY(ops->act_bwd(be, CZ_ACT_LRELU, LRELU_SLOPE, &in, &ga, &gh)); /* in = lrelu output */
        if (has_bn(a, k - 1)) {
            cz_tensor y = V(lp->y), gd = V(lp->gd);
            int pg = mode != CZ_GRAD_NONE;
            CZ_TRY(ops->bn_train_bwd(be, &y, &gh, &lp->gamma->value, &lp->save_mean, &lp->save_invstd, &gd,
                                     pg ? &lp->gamma->grad : NULL, pg ? &lp->beta->grad : NULL, acc));
            g = gd;
        } else {
            g = gh;
        }
    }
    return CZ_OK;
}
