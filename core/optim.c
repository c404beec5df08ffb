/* optim.c: parameter tensors (allocation, load/save through safetensors, host copies) and the
 * Adam optimizer over a parameter list through the backend's adam_step. See optim.h for the
 * update rule and ownership; one thread at a time. Tested by tests/unit/test_train.c and
 * tests/unit/test_train_golden.c (five steps against torch.optim.Adam). */
#include "optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- parameters */

cz_status cz_param_alloc(cz_backend *be, cz_param *p, const char *name, int ndim, const int64_t *shape,
                         cz_role role, int learnable) {
    memset(p, 0, sizeof *p);
    if (strlen(name) >= sizeof p->name)
        return cz_error_set(CZ_ERR_INVALID_ARG, "parameter name '%s' too long", name);
    if (ndim != 1 && ndim != 4)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%s: %d dims, parameters have 1 or 4", name, ndim);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    for (int d = 0; d < 4; d++) p->shape[d] = d < ndim ? shape[d] : 1;
    int n = ndim == 4 ? (int)shape[0] : 1, c = ndim == 4 ? (int)shape[1] : (int)shape[0];
    int h = ndim == 4 ? (int)shape[2] : 1, w = ndim == 4 ? (int)shape[3] : 1;
    CZ_TRY(cz_tensor_alloc(be, &p->value, CZ_F32, role, n, c, h, w));
    CZ_TRY(be->ops->tensor_zero(be, &p->value));
    if (learnable) {
        CZ_TRY(cz_tensor_alloc(be, &p->grad, CZ_F32, role, n, c, h, w));
        CZ_TRY(be->ops->tensor_zero(be, &p->grad));
    }
    return CZ_OK;
}

void cz_param_free(cz_backend *be, cz_param *p) {
    if (!p) return;
    cz_tensor_free(be, &p->value);
    cz_tensor_free(be, &p->grad);
}

cz_status cz_param_load(cz_backend *be, cz_param *p, const cz_safetensors *st) {
    const cz_st_tensor *t = cz_st_find(st, p->name);
    if (!t) return cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: tensor missing", p->name);
    if (t->dtype != CZ_ST_F32 && t->dtype != CZ_ST_F16 && t->dtype != CZ_ST_BF16 && t->dtype != CZ_ST_F64)
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: dtype %s, expected a float type", p->name,
                            cz_st_dtype_name(t->dtype));
    int ok = t->ndim == p->ndim;
    for (int d = 0; ok && d < p->ndim; d++) ok = t->shape[d] == p->shape[d];
    if (!ok)
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: shape does not match the architecture (%d dims, first %lld; "
                            "expected %d dims, first %lld)", p->name, t->ndim,
                            (long long)(t->ndim ? t->shape[0] : 0), p->ndim, (long long)p->shape[0]);
    size_t k = cz_param_numel(p);
    float *v = malloc(k * sizeof *v);
    if (!v) return cz_error_set(CZ_ERR_NOMEM, "%s: out of memory", p->name);
    cz_status s = cz_st_to_f32(t, v, k);
    int is_var = strstr(p->name, "running_var") != NULL;
    for (size_t j = 0; s == CZ_OK && j < k; j++) {
        if (!isfinite(v[j]))
            s = cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: element %zu is not finite", p->name, j);
        else if (is_var && v[j] < 0.f)
            s = cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: element %zu is negative", p->name, j);
    }
    if (s == CZ_OK) s = be->ops->tensor_write(be, &p->value, v);
    free(v);
    return s;
}

cz_status cz_param_read(cz_backend *be, const cz_param *p, int grad, float *dst) {
    const cz_tensor *t = grad ? &p->grad : &p->value;
    if (!t->data) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: has no gradient", p->name);
    return be->ops->tensor_read(be, t, dst);
}

cz_status cz_param_write(cz_backend *be, cz_param *p, int grad, const float *src) {
    cz_tensor *t = grad ? &p->grad : &p->value;
    if (!t->data) return cz_error_set(CZ_ERR_INVALID_ARG, "%s: has no gradient", p->name);
    return be->ops->tensor_write(be, t, src);
}

static cz_status save_tensor(cz_backend *be, const cz_tensor *t, const char *name, int ndim,
                             const int64_t *shape, size_t k, cz_st_writer *w) {
    float *v = malloc(k * sizeof *v);
    if (!v) return cz_error_set(CZ_ERR_NOMEM, "%s: out of memory", name);
    cz_status s = be->ops->tensor_read(be, t, v);
    if (s == CZ_OK) s = cz_st_writer_add(w, name, CZ_ST_F32, ndim, shape, v, k * sizeof *v);
    free(v);
    return s;
}

cz_status cz_param_save(cz_backend *be, const cz_param *p, const char *prefix, cz_st_writer *w) {
    char name[2 * CZ_PARAM_NAME_MAX];
    snprintf(name, sizeof name, "%s%s", prefix ? prefix : "", p->name);
    return save_tensor(be, &p->value, name, p->ndim, p->shape, cz_param_numel(p), w);
}

cz_status cz_params_zero_grad(cz_backend *be, cz_param *params, int n) {
    for (int i = 0; i < n; i++)
        if (cz_param_learnable(&params[i])) CZ_TRY(be->ops->tensor_zero(be, &params[i].grad));
    return CZ_OK;
}

size_t cz_params_count(const cz_param *params, int n) {
    size_t k = 0;
    for (int i = 0; i < n; i++)
        if (cz_param_learnable(&params[i])) k += cz_param_numel(&params[i]);
    return k;
}

/* ---------------------------------------------------------------- Adam */

struct cz_adam {
    cz_backend *be;
    cz_param *params;
    int n;
    cz_adam_config cfg;
    int t;
    cz_tensor *m, *v;    /* per parameter; unallocated for buffers */
    cz_adam_item *items; /* the learnable parameters, for adam_multi */
    int n_items;
};

cz_adam_config cz_adam_config_default(void) {
    cz_adam_config c = {.lr = 2e-4f, .beta1 = 0.5f, .beta2 = 0.999f, .eps = 1e-8f};
    return c;
}

cz_status cz_adam_create(cz_backend *be, cz_param *params, int n, const cz_adam_config *cfg, cz_adam **out) {
    *out = NULL;
    cz_adam_config c = cfg ? *cfg : cz_adam_config_default();
    if (!(c.lr >= 0.f && c.lr < 1.f) || !(c.beta1 >= 0.f && c.beta1 < 1.f) || !(c.beta2 >= 0.f && c.beta2 < 1.f) ||
        !(c.eps > 0.f))
        return cz_error_set(CZ_ERR_INVALID_ARG, "adam: lr %g, beta1 %g, beta2 %g, eps %g out of range",
                            (double)c.lr, (double)c.beta1, (double)c.beta2, (double)c.eps);
    if (!be->ops->adam_step) return cz_error_set(CZ_ERR_UNSUPPORTED, "backend '%s' has no adam_step", be->ops->name);
    cz_adam *a = calloc(1, sizeof *a);
    if (!a) return cz_error_set(CZ_ERR_NOMEM, "adam: out of memory");
    a->be = be;
    a->params = params;
    a->n = n;
    a->cfg = c;
    a->m = calloc((size_t)(n ? n : 1), sizeof *a->m);
    a->v = calloc((size_t)(n ? n : 1), sizeof *a->v);
    a->items = calloc((size_t)(n ? n : 1), sizeof *a->items);
    cz_status s = a->m && a->v && a->items ? CZ_OK : cz_error_set(CZ_ERR_NOMEM, "adam: out of memory");
    for (int i = 0; i < n && s == CZ_OK; i++) {
        const cz_tensor *pv = &params[i].value;
        if (!cz_param_learnable(&params[i])) continue;
        s = cz_tensor_alloc(be, &a->m[i], CZ_F32, pv->role, pv->n, pv->c, pv->h, pv->w);
        if (s == CZ_OK) s = be->ops->tensor_zero(be, &a->m[i]);
        if (s == CZ_OK) s = cz_tensor_alloc(be, &a->v[i], CZ_F32, pv->role, pv->n, pv->c, pv->h, pv->w);
        if (s == CZ_OK) s = be->ops->tensor_zero(be, &a->v[i]);
        if (s == CZ_OK)
            a->items[a->n_items++] = (cz_adam_item){&params[i].value, &params[i].grad, &a->m[i], &a->v[i]};
    }
    if (s != CZ_OK) {
        cz_adam_destroy(a);
        return s;
    }
    *out = a;
    return CZ_OK;
}

void cz_adam_destroy(cz_adam *a) {
    if (!a) return;
    for (int i = 0; i < a->n && a->m && a->v; i++) {
        cz_tensor_free(a->be, &a->m[i]);
        cz_tensor_free(a->be, &a->v[i]);
    }
    free(a->m);
    free(a->v);
    free(a->items);
    free(a);
}

cz_status cz_adam_step(cz_adam *a) {
    int t = a->t + 1;
    for (int i = 0; i < a->n; i++) {
        cz_param *p = &a->params[i];
        if (!cz_param_learnable(p)) continue;
        CZ_TRY(a->be->ops->adam_step(a->be, &p->value, &p->grad, &a->m[i], &a->v[i], a->cfg.lr, a->cfg.beta1,
                                     a->cfg.beta2, a->cfg.eps, t));
    }
    a->t = t;
    return CZ_OK;
}

cz_status cz_adam_step_gated(cz_adam *a, unsigned gate) {
    if (!a->be->ops->adam_multi) return cz_adam_step(a);
    int t = a->t + 1;
    if (a->n_items)
        CZ_TRY(a->be->ops->adam_multi(a->be, a->items, a->n_items, a->cfg.lr, a->cfg.beta1, a->cfg.beta2, a->cfg.eps,
                                      t, gate));
    a->t = t;
    return CZ_OK;
}

static uint64_t double_bits(double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

void cz_adam_next_vars(cz_adam *a, uint64_t bits[3]) {
    int t = ++a->t;
    double b1 = a->cfg.beta1, b2 = a->cfg.beta2;
    bits[0] = double_bits((double)a->cfg.lr);
    bits[1] = double_bits(1.0 - pow(b1, t));
    bits[2] = double_bits(1.0 - pow(b2, t));
}

cz_status cz_adam_step_var(cz_adam *a, int var, unsigned gate) {
    const cz_backend_ops *o = a->be->ops;
    if (!o->adam_multi_var)
        return cz_error_set(CZ_ERR_UNSUPPORTED, "backend '%s' has no adam_multi_var", o->name);
    if (!a->n_items) return CZ_OK;
    return o->adam_multi_var(a->be, a->items, a->n_items, a->cfg.beta1, a->cfg.beta2, a->cfg.eps, var, gate);
}

void cz_adam_rewind(cz_adam *a) {
    if (a->t > 0) a->t--;
}

void cz_adam_set_lr(cz_adam *a, float lr) { a->cfg.lr = lr; }
float cz_adam_get_lr(const cz_adam *a) { return a->cfg.lr; }
int cz_adam_steps(const cz_adam *a) { return a->t; }

cz_status cz_adam_save(const cz_adam *a, const char *prefix, cz_st_writer *w) {
    char name[3 * CZ_PARAM_NAME_MAX], val[32];
    const char *pre = prefix ? prefix : "";
    for (int i = 0; i < a->n; i++) {
        const cz_param *p = &a->params[i];
        if (!cz_param_learnable(p)) continue;
        snprintf(name, sizeof name, "%s%s.adam_m", pre, p->name);
        CZ_TRY(save_tensor(a->be, &a->m[i], name, p->ndim, p->shape, cz_param_numel(p), w));
        snprintf(name, sizeof name, "%s%s.adam_v", pre, p->name);
        CZ_TRY(save_tensor(a->be, &a->v[i], name, p->ndim, p->shape, cz_param_numel(p), w));
    }
    snprintf(name, sizeof name, "%sadam_step", pre);
    snprintf(val, sizeof val, "%d", a->t);
    return cz_st_writer_meta(w, name, val);
}

cz_status cz_adam_load(cz_adam *a, const char *prefix, const cz_safetensors *st) {
    char name[3 * CZ_PARAM_NAME_MAX];
    const char *pre = prefix ? prefix : "";
    snprintf(name, sizeof name, "%sadam_step", pre);
    const char *sv = cz_st_meta(st, name);
    char *end = NULL;
    long t = sv ? strtol(sv, &end, 10) : -1;
    if (!sv || end == sv || *end || t < 0 || t > 2000000000L)
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "metadata '%s' missing or invalid", name);
    for (int i = 0; i < a->n; i++) {
        const cz_param *p = &a->params[i];
        if (!cz_param_learnable(p)) continue;
        for (int k = 0; k < 2; k++) {
            cz_param tmp = *p; /* borrow shape/name checks from cz_param_load */
            snprintf(name, sizeof name, "%s%s.adam_%c", pre, p->name, k ? 'v' : 'm');
            if (strlen(name) >= sizeof tmp.name)
                return cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: name too long", name);
            memcpy(tmp.name, name, strlen(name) + 1);
            tmp.value = k ? a->v[i] : a->m[i];
            CZ_TRY(cz_param_load(a->be, &tmp, st));
        }
    }
    a->t = (int)t;
    return CZ_OK;
}

float cz_lr_linear(float base, long step, long n_const, long n_decay) {
    if (n_decay <= 0 || step < n_const) return base;
    double f = 1.0 - (double)(step - n_const + 1) / (double)(n_decay + 1);
    return f > 0 ? (float)(base * f) : 0.f;
}
