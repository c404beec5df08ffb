/* unet.c: the pix2pix U-Net generator for inference: architecture, weight specs, pix2pix
 * initialization, loading with validation and BatchNorm folding, memory plans, forward.
 * See unet.h for the graph and the threading rule. Tested by tests/unit/test_unet.c and
 * tests/unit/test_unet_golden.c. */
#include "unet.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define LRELU_SLOPE 0.2f

/* ---------------------------------------------------------------- architecture */

cz_unet_arch cz_unet_arch_default(int ngf, cz_color_mode mode) {
    cz_unet_arch a = {.ngf = ngf, .depth = 8, .mode = mode, .bn_eps = 1e-5f};
    a.in_ch = mode == CZ_COLOR_RGB ? 3 : 1;
    a.out_ch = mode == CZ_COLOR_RGB ? 3 : 2;
    return a;
}

const char *cz_color_mode_name(cz_color_mode m) { return m == CZ_COLOR_RGB ? "rgb" : "lab"; }

int cz_color_mode_parse(const char *name) {
    if (name && !strcmp(name, "lab")) return CZ_COLOR_LAB;
    if (name && !strcmp(name, "rgb")) return CZ_COLOR_RGB;
    return -1;
}

cz_status cz_unet_arch_validate(const cz_unet_arch *a) {
    if (a->ngf < 1 || a->ngf > 1024)
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "ngf %d out of range 1..1024", a->ngf);
    if (a->depth < CZ_UNET_MIN_DEPTH || a->depth > CZ_UNET_MAX_DEPTH)
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "depth %d out of range %d..%d", a->depth,
                            CZ_UNET_MIN_DEPTH, CZ_UNET_MAX_DEPTH);
    int want_in = a->mode == CZ_COLOR_RGB ? 3 : 1, want_out = a->mode == CZ_COLOR_RGB ? 3 : 2;
    if (a->in_ch != want_in || a->out_ch != want_out)
        return cz_error_set(CZ_ERR_BAD_WEIGHTS,
                            "color_mode %s needs in_ch %d and out_ch %d, metadata says %d and %d",
                            cz_color_mode_name(a->mode), want_in, want_out, a->in_ch, a->out_ch);
    if (!(a->bn_eps > 0.f && a->bn_eps < 1.f))
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "bn_eps %g out of range (0, 1)", (double)a->bn_eps);
    return CZ_OK;
}

int cz_unet_width(const cz_unet_arch *a, int level) {
    int m = level >= 3 ? 8 : 1 << level;
    return a->ngf * m;
}

int cz_unet_multiple(const cz_unet_arch *a) { return 1 << a->depth; }

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

cz_status cz_unet_arch_from_meta(const cz_safetensors *st, cz_unet_arch *a) {
    const char *fmt = cz_st_meta(st, "format");
    if (!fmt || strcmp(fmt, "colorize-unet"))
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "metadata 'format' is %s%s%s, expected \"colorize-unet\"",
                            fmt ? "\"" : "", fmt ? fmt : "missing", fmt ? "\"" : "");
    const char *ver = cz_st_meta(st, "version");
    if (!ver || strcmp(ver, "1"))
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "metadata 'version' is %s, this build reads version 1",
                            ver ? ver : "missing");
    const char *norm = cz_st_meta(st, "norm");
    if (norm && strcmp(norm, "batch"))
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "metadata 'norm' is \"%s\", only \"batch\" is supported", norm);
    memset(a, 0, sizeof *a);
    CZ_TRY(meta_int(st, "ngf", &a->ngf));
    CZ_TRY(meta_int(st, "depth", &a->depth));
    CZ_TRY(meta_int(st, "in_ch", &a->in_ch));
    CZ_TRY(meta_int(st, "out_ch", &a->out_ch));
    const char *mode = cz_st_meta(st, "color_mode");
    int m = cz_color_mode_parse(mode);
    if (m < 0)
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "metadata 'color_mode' is %s, expected lab or rgb",
                            mode ? mode : "missing");
    a->mode = (cz_color_mode)m;
    const char *eps = cz_st_meta(st, "bn_eps");
    a->bn_eps = 1e-5f;
    if (eps) {
        char *end;
        double e = strtod(eps, &end);
        if (end == eps || *end)
            return cz_error_set(CZ_ERR_BAD_WEIGHTS, "metadata 'bn_eps' = '%s' is not a number", eps);
        a->bn_eps = (float)e;
    }
    return cz_unet_arch_validate(a);
}

cz_status cz_unet_arch_to_meta(const cz_unet_arch *a, cz_st_writer *w) {
    char buf[32];
    CZ_TRY(cz_st_writer_meta(w, "format", "colorize-unet"));
    CZ_TRY(cz_st_writer_meta(w, "version", "1"));
    CZ_TRY(cz_st_writer_meta(w, "arch", "unet"));
    CZ_TRY(cz_st_writer_meta(w, "norm", "batch"));
    CZ_TRY(cz_st_writer_meta(w, "color_mode", cz_color_mode_name(a->mode)));
    snprintf(buf, sizeof buf, "%d", a->ngf);
    CZ_TRY(cz_st_writer_meta(w, "ngf", buf));
    snprintf(buf, sizeof buf, "%d", a->depth);
    CZ_TRY(cz_st_writer_meta(w, "depth", buf));
    snprintf(buf, sizeof buf, "%d", a->in_ch);
    CZ_TRY(cz_st_writer_meta(w, "in_ch", buf));
    snprintf(buf, sizeof buf, "%d", a->out_ch);
    CZ_TRY(cz_st_writer_meta(w, "out_ch", buf));
    snprintf(buf, sizeof buf, "%g", (double)a->bn_eps);
    return cz_st_writer_meta(w, "bn_eps", buf);
}

/* ---------------------------------------------------------------- parameter specs */

static void spec_add(cz_unet_param_spec *out, int cap, int *n, int ndim, const int64_t *shape,
                     const char *fmt, int level, const char *suffix) {
    if (*n < cap) {
        cz_unet_param_spec *p = &out[*n];
        snprintf(p->name, sizeof p->name, fmt, level, suffix);
        p->ndim = ndim;
        for (int k = 0; k < 4; k++) p->shape[k] = k < ndim ? shape[k] : 1;
    }
    (*n)++;
}

static const char *const k_bn_fields[4] = {"weight", "bias", "running_mean", "running_var"};

/* Input channels of down conv i and the up conv i's (in, out). */
static int down_in(const cz_unet_arch *a, int i) { return i == 0 ? a->in_ch : cz_unet_width(a, i - 1); }
static int up_in(const cz_unet_arch *a, int i) {
    return i == a->depth - 1 ? cz_unet_width(a, i) : 2 * cz_unet_width(a, i);
}
static int up_out(const cz_unet_arch *a, int i) { return i == 0 ? a->out_ch : cz_unet_width(a, i - 1); }
static int down_has_bn(const cz_unet_arch *a, int i) { return i >= 1 && i <= a->depth - 2; }
static int up_has_bn(const cz_unet_arch *a, int i) { return i >= 1; }

int cz_unet_param_specs(const cz_unet_arch *a, cz_unet_param_spec *out, int cap) {
    int n = 0;
    for (int i = 0; i < a->depth; i++) {
        int64_t w[4] = {cz_unet_width(a, i), down_in(a, i), 4, 4};
        spec_add(out, cap, &n, 4, w, "down.%d.%s", i, "weight");
        if (down_has_bn(a, i))
            for (int f = 0; f < 4; f++) spec_add(out, cap, &n, 1, w, "down.%d.bn.%s", i, k_bn_fields[f]);
    }
    for (int i = a->depth - 1; i >= 0; i--) {
        int64_t w[4] = {up_in(a, i), up_out(a, i), 4, 4};
        spec_add(out, cap, &n, 4, w, "up.%d.%s", i, "weight");
        int64_t v[1] = {up_out(a, i)};
        if (i == 0) spec_add(out, cap, &n, 1, v, "up.%d.%s", i, "bias");
        if (up_has_bn(a, i))
            for (int f = 0; f < 4; f++) spec_add(out, cap, &n, 1, v, "up.%d.bn.%s", i, k_bn_fields[f]);
    }
    return n;
}

static int64_t spec_numel(const cz_unet_param_spec *p) {
    int64_t k = 1;
    for (int d = 0; d < p->ndim; d++) k *= p->shape[d];
    return k;
}

static int is_running_stat(const char *name) { return strstr(name, ".running_") != NULL; }

size_t cz_unet_param_count(const cz_unet_arch *a) {
    cz_unet_param_spec specs[CZ_UNET_MAX_PARAMS];
    int n = cz_unet_param_specs(a, specs, CZ_UNET_MAX_PARAMS);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        if (!is_running_stat(specs[i].name)) total += (size_t)spec_numel(&specs[i]);
    return total;
}

double cz_unet_flops(const cz_unet_arch *a, int h, int w) {
    double f = 0;
    for (int i = 0; i < a->depth; i++) {
        double oh = h >> (i + 1), ow = w >> (i + 1);
        f += 2.0 * oh * ow * cz_unet_width(a, i) * down_in(a, i) * 16; /* down conv */
        f += 2.0 * oh * ow * up_in(a, i) * up_out(a, i) * 16;          /* up conv, per input px */
    }
    return f;
}

/* ---------------------------------------------------------------- initialization */

/* pix2pix "normal" init, gain 0.02, for any parameter list in our naming: conv weights
 * N(0, 0.02), BatchNorm gamma N(1, 0.02), beta / biases / running mean 0, running var 1.
 * SplitMix64 + Box-Muller from `rng`; callers pick distinct streams per network. */
static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double normal01(uint64_t *s) {
    double u1 = ((double)(splitmix64(s) >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (double)(splitmix64(s) >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

cz_status cz_init_params_pix2pix(const cz_unet_param_spec *specs, int n, uint64_t rng, cz_st_writer *w) {
    for (int i = 0; i < n; i++) {
        const cz_unet_param_spec *p = &specs[i];
        size_t k = (size_t)spec_numel(p);
        float *v = malloc(k * sizeof *v);
        if (!v) return cz_error_set(CZ_ERR_NOMEM, "init: out of memory for %s", p->name);
        const char *leaf = strrchr(p->name, '.') + 1;
        int is_bn = strstr(p->name, ".bn.") != NULL;
        for (size_t j = 0; j < k; j++) {
            if (!strcmp(leaf, "weight"))
                v[j] = (float)((is_bn ? 1.0 : 0.0) + 0.02 * normal01(&rng));
            else
                v[j] = !strcmp(leaf, "running_var") ? 1.0f : 0.0f; /* biases, beta, running mean */
        }
        cz_status s = cz_st_writer_add(w, p->name, CZ_ST_F32, p->ndim, p->shape, v, k * sizeof *v);
        free(v);
        CZ_TRY(s);
    }
    return CZ_OK;
}

cz_status cz_unet_init_weights(const cz_unet_arch *a, uint64_t seed, cz_st_writer *w) {
    CZ_TRY(cz_unet_arch_validate(a));
    CZ_TRY(cz_unet_arch_to_meta(a, w));
    cz_unet_param_spec specs[CZ_UNET_MAX_PARAMS];
    int n = cz_unet_param_specs(a, specs, CZ_UNET_MAX_PARAMS);
    return cz_init_params_pix2pix(specs, n, seed ^ 0x636f6c6f72697a65ull, w);
}

/* ---------------------------------------------------------------- model */

typedef struct plan {
    int max_batch, h, w;
    uint64_t last_use;
    int kept; /* cz_unet_plan_keep: never evicted */
    /* views of the unet's stores (see "Activation stores" below): owned by no plan */
    cz_tensor x, out;
    cz_tensor s[CZ_UNET_MAX_DEPTH], c[CZ_UNET_MAX_DEPTH], u[CZ_UNET_MAX_DEPTH], r;
    /* Recordings (backends with record_begin): one per padded batch size, the powers of two
     * below max_batch and max_batch itself, indexed by rec_slot(); see cz_unet_forward. */
    cz_recording *rec[CZ_UNET_REC_SLOTS];
    unsigned char rec_state[CZ_UNET_REC_SLOTS];
} plan;

enum { REC_NEW = 0, REC_RAN = 1, REC_READY = 2, REC_OFF = 3 };

struct cz_unet {
    cz_backend *be;
    cz_unet_arch arch;
    cz_dtype precision;
    cz_tensor down_w[CZ_UNET_MAX_DEPTH], down_b[CZ_UNET_MAX_DEPTH];
    cz_tensor up_w[CZ_UNET_MAX_DEPTH], up_b[CZ_UNET_MAX_DEPTH];
    /* Activation stores, one per tensor of a forward pass (input, output and every
     * intermediate activation), each allocated as (1, channels, 1, px) and grown to the largest
     * max_batch * h * w (at that level) of any plan; plans see them through views of their own
     * shape (plan_bind). */
    cz_tensor st_x, st_out;
    cz_tensor st_s[CZ_UNET_MAX_DEPTH], st_c[CZ_UNET_MAX_DEPTH], st_u[CZ_UNET_MAX_DEPTH], st_r;
    /* view[i]: c[i] is filled through channel views (decoder writes its half in place, ReLU of
     * the skip written into the other half) instead of u[i+1] + concat + ReLU. Decided once,
     * when the c stores first exist: it depends on channels and layout, not on h x w. */
    int view[CZ_UNET_MAX_DEPTH];
    int views_known;
    plan plans[CZ_UNET_MAX_PLANS];
    int nplans;
    uint64_t clock;
    int no_rec;                 /* cz_unet_set_recording(u, 0) */
    int full;                   /* cz_unet_set_full_batches(u, 1) */
    cz_unet_rec_stats rec_stats;
};

const cz_unet_arch *cz_unet_get_arch(const cz_unet *u) { return &u->arch; }
cz_dtype cz_unet_precision(const cz_unet *u) { return u->precision; }
cz_backend *cz_unet_backend(const cz_unet *u) { return u->be; }

/* Fetches a validated tensor as fp32; the caller frees *out. */
static cz_status load_param(const cz_safetensors *st, const cz_unet_param_spec *p, float **out) {
    *out = NULL;
    const cz_st_tensor *t = cz_st_find(st, p->name);
    if (!t) return cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: tensor missing", p->name);
    if (t->dtype != CZ_ST_F32 && t->dtype != CZ_ST_F16 && t->dtype != CZ_ST_BF16 && t->dtype != CZ_ST_F64)
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: dtype %s, expected a float type (F32, F16, BF16, F64)",
                            p->name, cz_st_dtype_name(t->dtype));
    int ok = t->ndim == p->ndim;
    for (int d = 0; ok && d < p->ndim; d++) ok = t->shape[d] == p->shape[d];
    if (!ok) {
        char got[96] = "", want[96] = "";
        for (int d = 0; d < t->ndim; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? "," : "", (long long)t->shape[d]);
        for (int d = 0; d < p->ndim; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? "," : "", (long long)p->shape[d]);
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: shape [%s], expected [%s]", p->name, got, want);
    }
    size_t k = (size_t)spec_numel(p);
    float *v = malloc(k * sizeof *v);
    if (!v) return cz_error_set(CZ_ERR_NOMEM, "%s: out of memory", p->name);
    cz_status s = cz_st_to_f32(t, v, k);
    if (s != CZ_OK) {
        free(v);
        return s;
    }
    for (size_t j = 0; j < k; j++) {
        if (!isfinite(v[j])) {
            free(v);
            return cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: element %zu is not finite", p->name, j);
        }
        if (strstr(p->name, ".running_var") && v[j] < 0.f) {
            double bad = v[j];
            free(v);
            return cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: element %zu is negative (%g)", p->name, j, bad);
        }
    }
    *out = v;
    return CZ_OK;
}

/* Refuses down.* / up.* tensors the architecture does not have. */
static cz_status check_unexpected(const cz_safetensors *st, const cz_unet_arch *a,
                                  const cz_unet_param_spec *specs, int n) {
    for (size_t i = 0; i < cz_st_count(st); i++) {
        const char *name = cz_st_at(st, i)->name;
        if (strncmp(name, "down.", 5) && strncmp(name, "up.", 3)) continue;
        int found = 0;
        for (int j = 0; j < n && !found; j++) found = !strcmp(specs[j].name, name);
        if (!found)
            return cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: unexpected tensor for a depth-%d ngf-%d U-Net", name,
                                a->depth, a->ngf);
    }
    return CZ_OK;
}

/* Folds an inference BatchNorm into the preceding conv. `w` has `outer x oc x inner` layout
 * where the BN channel is the middle index (oc): conv OIHW has outer 1, inner I*16; a
 * transposed conv IOHW has outer I, inner 16. `bias` (oc) receives the folded shift. */
static void fold_bn(float *w, int outer, int oc, int inner, const float *gamma, const float *beta,
                    const float *mean, const float *var, float eps, float *bias) {
    for (int o = 0; o < oc; o++) {
        double scale = (double)gamma[o] / sqrt((double)var[o] + (double)eps);
        bias[o] = (float)((double)beta[o] - (double)mean[o] * scale);
        for (int a = 0; a < outer; a++) {
            float *p = w + ((size_t)a * oc + o) * inner;
            for (int k = 0; k < inner; k++) p[k] = (float)((double)p[k] * scale);
        }
    }
}

static cz_status upload(cz_backend *be, cz_tensor *t, cz_dtype dt, cz_role role, int n, int c, int h,
                        int w, const float *data) {
    CZ_TRY(cz_tensor_alloc(be, t, dt, role, n, c, h, w));
    return be->ops->tensor_write(be, t, data);
}

/* Loads one conv layer: weights, optional BN (folded), optional bias. */
static cz_status load_layer(cz_unet *u, const cz_safetensors *st, const cz_unet_param_spec *specs,
                            int nspecs, const char *prefix, int level, int is_up, int has_bn,
                            int has_bias) {
    const cz_unet_arch *a = &u->arch;
    char name[48];
    const cz_unet_param_spec *find[6] = {0};
    const char *fields[6] = {"weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bias"};
    for (int f = 0; f < 6; f++) {
        snprintf(name, sizeof name, "%s.%d.%s", prefix, level, fields[f]);
        for (int j = 0; j < nspecs; j++)
            if (!strcmp(specs[j].name, name)) find[f] = &specs[j];
    }
    float *vals[6] = {0};
    cz_status s = CZ_OK;
    for (int f = 0; f < 6 && s == CZ_OK; f++)
        if (find[f]) s = load_param(st, find[f], &vals[f]);
    if (s == CZ_OK) {
        int d0 = (int)find[0]->shape[0], d1 = (int)find[0]->shape[1];
        int oc = is_up ? d1 : d0;
        float *bias = calloc((size_t)oc, sizeof *bias);
        if (!bias) s = cz_error_set(CZ_ERR_NOMEM, "out of memory");
        if (s == CZ_OK && has_bn)
            fold_bn(vals[0], is_up ? d0 : 1, oc, is_up ? 16 : d1 * 16, vals[1], vals[2], vals[3], vals[4],
                    a->bn_eps, bias);
        if (s == CZ_OK && has_bias) memcpy(bias, vals[5], (size_t)oc * sizeof *bias);
        cz_tensor *wt = is_up ? &u->up_w[level] : &u->down_w[level];
        cz_tensor *bt = is_up ? &u->up_b[level] : &u->down_b[level];
        if (s == CZ_OK)
            s = upload(u->be, wt, u->precision, is_up ? CZ_ROLE_DECONV_W : CZ_ROLE_CONV_W, d0, d1, 4, 4, vals[0]);
        if (s == CZ_OK && (has_bn || has_bias)) s = upload(u->be, bt, CZ_F32, CZ_ROLE_VEC, 1, oc, 1, 1, bias);
        free(bias);
    }
    for (int f = 0; f < 6; f++) free(vals[f]);
    return s;
}

cz_status cz_unet_create(cz_backend *be, const cz_safetensors *st, cz_dtype precision, cz_unet **out) {
    *out = NULL;
    cz_unet_arch a;
    CZ_TRY(cz_unet_arch_from_meta(st, &a));
    if (!be->ops->supports(be, precision))
        return cz_error_set(CZ_ERR_UNSUPPORTED, "backend '%s' does not support %s", be->ops->name,
                            cz_dtype_name(precision));
    cz_unet_param_spec specs[CZ_UNET_MAX_PARAMS];
    int n = cz_unet_param_specs(&a, specs, CZ_UNET_MAX_PARAMS);
    CZ_TRY(check_unexpected(st, &a, specs, n));
    cz_status s = CZ_OK;
    cz_unet *u = calloc(1, sizeof *u);
    if (!u) return cz_error_set(CZ_ERR_NOMEM, "out of memory");
    u->be = be;
    u->arch = a;
    u->precision = precision;
    for (int i = 0; i < a.depth && s == CZ_OK; i++)
        s = load_layer(u, st, specs, n, "down", i, 0, down_has_bn(&a, i), 0);
    for (int i = 0; i < a.depth && s == CZ_OK; i++)
        s = load_layer(u, st, specs, n, "up", i, 1, up_has_bn(&a, i), i == 0);
    if (s != CZ_OK) {
        cz_unet_destroy(u);
        return s;
    }
    *out = u;
    return CZ_OK;
}

static void plan_free(cz_backend *be, plan *p) {
    for (int i = 0; i < CZ_UNET_REC_SLOTS; i++)
        if (p->rec[i]) be->ops->record_free(be, p->rec[i]);
    memset(p, 0, sizeof *p); /* its tensors are views of the unet's stores */
}

/* The stores, one per tensor of a pass: which plan tensor views each, its channels, and how far
 * its level is scaled down (h >> shift). The u stores exist only for levels without channel
 * views (known once views_known). Returns the count. */
typedef struct act_slot {
    cz_tensor *store;
    cz_tensor *view; /* in `p`; NULL without a plan */
    int ch, shift;
} act_slot;
#define ACT_SLOTS (3 * CZ_UNET_MAX_DEPTH + 3)

static int act_slots(cz_unet *u, plan *p, act_slot *out) {
    const cz_unet_arch *a = &u->arch;
    const int D = a->depth;
    int n = 0;
    out[n++] = (act_slot){&u->st_x, p ? &p->x : NULL, a->in_ch, 0};
    out[n++] = (act_slot){&u->st_out, p ? &p->out : NULL, a->out_ch, 0};
    for (int i = 0; i <= D - 2; i++) {
        out[n++] = (act_slot){&u->st_s[i], p ? &p->s[i] : NULL, cz_unet_width(a, i), i + 1};
        out[n++] = (act_slot){&u->st_c[i], p ? &p->c[i] : NULL, 2 * cz_unet_width(a, i), i + 1};
    }
    out[n++] = (act_slot){&u->st_r, p ? &p->r : NULL, cz_unet_width(a, D - 1), D};
    for (int i = 1; u->views_known && i <= D - 1; i++)
        if (!u->view[i - 1]) out[n++] = (act_slot){&u->st_u[i], p ? &p->u[i] : NULL, up_out(a, i), i};
    return n;
}

/* Pixels (batch x h x w) a store holds. */
static size_t store_px(const cz_tensor *t) { return t->data ? (size_t)t->w : 0; }

/* Points the plan's activation tensors at the stores, shaped (max_batch, ch, h >> shift,
 * w >> shift): the same storage, channels, dtype and layout, so that every backend reads the
 * view as a tensor of that shape in the store's first bytes (backend.h, "Storage reuse"). */
static void plan_bind(cz_unet *u, plan *p) {
    act_slot sl[ACT_SLOTS];
    int ns = act_slots(u, p, sl);
    for (int k = 0; k < ns; k++) {
        cz_tensor t = *sl[k].store;
        t.n = t.cap_n = p->max_batch;
        t.h = p->h >> sl[k].shift;
        t.w = p->w >> sl[k].shift;
        *sl[k].view = t;
    }
}

/* Drops every plan's recordings (they point into stores about to move); a size that had one
 * records again on its next pass, its algorithms being chosen already. */
static void drop_recordings(cz_unet *u) {
    for (int k = 0; k < u->nplans; k++) {
        plan *p = &u->plans[k];
        for (int i = 0; i < CZ_UNET_REC_SLOTS; i++) {
            if (p->rec[i]) {
                u->be->ops->record_free(u->be, p->rec[i]);
                p->rec[i] = NULL;
                u->rec_stats.stale++;
            }
            if (p->rec_state[i] == REC_READY) p->rec_state[i] = REC_RAN;
        }
    }
}

/* Grows the stores so that a plan of nb images at h x w fits. New stores are allocated before
 * the old ones go, so a failure (CZ_ERR_NOMEM) leaves every plan as it was. Replacing a store
 * waits for the backend (a queued pass may still use it) and drops all recordings. */
static cz_status stores_reserve(cz_unet *u, int nb, int h, int w) {
    cz_backend *be = u->be;
    act_slot sl[ACT_SLOTS];
    int ns = act_slots(u, NULL, sl);
    cz_tensor fresh[ACT_SLOTS];
    memset(fresh, 0, sizeof fresh);
    cz_status s = CZ_OK;
    int grow = 0, moved = 0;
    for (int k = 0; k < ns && s == CZ_OK; k++) {
        size_t px = (size_t)nb * (size_t)(h >> sl[k].shift) * (size_t)(w >> sl[k].shift);
        if (px <= store_px(sl[k].store)) continue;
        if (px > INT_MAX)
            s = cz_error_set(CZ_ERR_TOO_LARGE, "plan %dx%d for %d images: %zu pixels at one level", w, h, nb, px);
        else
            s = cz_tensor_alloc(be, &fresh[k], u->precision, CZ_ROLE_ACT, 1, sl[k].ch, 1, (int)px);
        grow = 1;
        moved |= sl[k].store->data != NULL;
    }
    if (s == CZ_OK && moved) s = be->ops->sync(be);
    if (s != CZ_OK || !grow) {
        for (int k = 0; k < ns; k++) cz_tensor_free(be, &fresh[k]);
        return s;
    }
    if (moved) drop_recordings(u);
    for (int k = 0; k < ns; k++)
        if (fresh[k].data) {
            cz_tensor_free(be, sl[k].store);
            *sl[k].store = fresh[k];
        }
    if (moved) {
        for (int k = 0; k < u->nplans; k++)
            if (u->plans[k].h > 0) plan_bind(u, &u->plans[k]);
        CZ_LOGD("unet", "activation stores grown for batch %d at %dx%d", nb, w, h);
    }
    return CZ_OK;
}

/* Decides the channel views once the c stores exist (view_ok reads channels and layout). */
static void views_decide(cz_unet *u) {
    if (u->views_known) return;
    const cz_backend_ops *ops = u->be->ops;
    for (int i = 1; i <= u->arch.depth - 1; i++) {
        cz_tensor *c = &u->st_c[i - 1];
        int half = up_out(&u->arch, i);
        u->view[i - 1] = ops->view_ok && ops->view_ok(u->be, c, 0, half) && ops->view_ok(u->be, c, half, half);
    }
    u->views_known = 1;
}

void cz_unet_destroy(cz_unet *u) {
    if (!u) return;
    for (int i = 0; i < u->nplans; i++) plan_free(u->be, &u->plans[i]);
    for (int i = 0; i < CZ_UNET_MAX_DEPTH; i++) {
        cz_tensor_free(u->be, &u->down_w[i]);
        cz_tensor_free(u->be, &u->down_b[i]);
        cz_tensor_free(u->be, &u->up_w[i]);
        cz_tensor_free(u->be, &u->up_b[i]);
        cz_tensor_free(u->be, &u->st_s[i]);
        cz_tensor_free(u->be, &u->st_c[i]);
        cz_tensor_free(u->be, &u->st_u[i]);
    }
    cz_tensor_free(u->be, &u->st_r);
    cz_tensor_free(u->be, &u->st_x);
    cz_tensor_free(u->be, &u->st_out);
    free(u);
}

static size_t tensor_bytes(const cz_tensor *t) {
    return t->data ? (size_t)t->cap_n * t->c * t->h * t->w * cz_dtype_size(t->dtype) : 0;
}

size_t cz_unet_plan_bytes(const cz_unet *u) {
    size_t total = tensor_bytes(&u->st_r) + tensor_bytes(&u->st_x) + tensor_bytes(&u->st_out);
    for (int i = 0; i < CZ_UNET_MAX_DEPTH; i++)
        total += tensor_bytes(&u->st_s[i]) + tensor_bytes(&u->st_c[i]) + tensor_bytes(&u->st_u[i]);
    return total;
}

static cz_status plan_build(cz_unet *u, plan *p, int nb, int h, int w) {
    CZ_TRY(stores_reserve(u, nb, h, w));
    views_decide(u);
    CZ_TRY(stores_reserve(u, nb, h, w)); /* the u stores, now that the views are known */
    p->max_batch = nb;
    p->h = h;
    p->w = w;
    plan_bind(u, p);
    return CZ_OK;
}

cz_status cz_unet_plan(cz_unet *u, int max_batch, int h, int w) {
    int m = cz_unet_multiple(&u->arch);
    if (max_batch < 1 || max_batch > 4096)
        return cz_error_set(CZ_ERR_INVALID_ARG, "plan: max_batch %d out of range 1..4096", max_batch);
    if (h < m || w < m || h % m || w % m || h > 16384 || w > 16384)
        return cz_error_set(CZ_ERR_INVALID_ARG, "plan: %dx%d is not a positive multiple of %d (at most 16384)",
                            w, h, m);
    plan *slot = NULL;
    for (int i = 0; i < u->nplans; i++)
        if (u->plans[i].h == h && u->plans[i].w == w) slot = &u->plans[i];
    if (slot && slot->max_batch >= max_batch) {
        slot->last_use = ++u->clock;
        return CZ_OK;
    }
    if (!slot && u->nplans < CZ_UNET_MAX_PLANS) slot = &u->plans[u->nplans++];
    if (!slot) { /* evict the least recently used one not kept */
        for (int i = 0; i < u->nplans; i++)
            if (!u->plans[i].kept && (!slot || u->plans[i].last_use < slot->last_use)) slot = &u->plans[i];
        if (!slot)
            return cz_error_set(CZ_ERR_UNAVAILABLE, "plan %dx%d: all %d plans are kept for the sizes planned at start",
                                w, h, CZ_UNET_MAX_PLANS);
    }
    int kept = slot->h == h && slot->w == w && slot->kept;
    plan_free(u->be, slot);
    slot->kept = kept;
    cz_status s = plan_build(u, slot, max_batch, h, w);
    if (s != CZ_OK) {
        plan_free(u->be, slot);
        slot->h = slot->w = -1; /* unusable until re-planned */
        return s;
    }
    slot->last_use = ++u->clock;
    CZ_LOGD("unet", "planned batch %d at %dx%d: %.1f MiB of activations in total", max_batch, w, h,
            (double)cz_unet_plan_bytes(u) / 1048576.0);
    return CZ_OK;
}

cz_status cz_unet_plan_keep(cz_unet *u, int h, int w) {
    for (int i = 0; i < u->nplans; i++)
        if (u->plans[i].h == h && u->plans[i].w == w) {
            u->plans[i].kept = 1;
            return CZ_OK;
        }
    return cz_error_set(CZ_ERR_INVALID_ARG, "keep: no plan for %dx%d", w, h);
}

int cz_unet_plan_count(const cz_unet *u) {
    int n = 0;
    for (int i = 0; i < u->nplans; i++) n += u->plans[i].h > 0;
    return n;
}

int cz_unet_plan_kept(const cz_unet *u, int h, int w) {
    for (int i = 0; i < u->nplans; i++)
        if (u->plans[i].h == h && u->plans[i].w == w) return u->plans[i].kept;
    return 0;
}

int cz_unet_has_plan(const cz_unet *u, int max_batch, int h, int w) {
    for (int i = 0; i < u->nplans; i++)
        if (u->plans[i].h == h && u->plans[i].w == w && u->plans[i].max_batch >= max_batch) return 1;
    return 0;
}

/* The device part of the forward pass, x -> out, for a batch of n (no host transfers: this is
 * what a recording holds). */
static cz_status forward_ops(cz_unet *u, plan *p, int n) {
    cz_backend *be = u->be;
    const cz_backend_ops *ops = be->ops;
    const cz_unet_arch *a = &u->arch;
    const int D = a->depth;
    /* every conv is 4x4 stride 2 pad 1; `relu` also serves the innermost down conv, whose
     * output only feeds the up path */
    cz_conv_params down = {.stride = 2, .pad = 1, .act = CZ_ACT_LRELU, .alpha = LRELU_SLOPE};
    cz_conv_params relu = {.stride = 2, .pad = 1, .act = CZ_ACT_RELU, .alpha = 0.f};
#define V(t) cz_tensor_batch_view((t), n)
    cz_tensor x = V(p->x), y = V(p->out), r = V(p->r);
    cz_tensor s[CZ_UNET_MAX_DEPTH], c[CZ_UNET_MAX_DEPTH], uu[CZ_UNET_MAX_DEPTH];
    memset(s, 0, sizeof s); /* depth >= CZ_UNET_MIN_DEPTH, but the compiler cannot know */
    for (int i = 0; i < D; i++) {
        s[i] = V(p->s[i]);
        c[i] = V(p->c[i]);
        uu[i] = V(p->u[i]);
    }
#undef V
    /* encoder: s[i] = lrelu(bn(conv(prev))) */
    for (int i = 0; i <= D - 2; i++) {
        const cz_tensor *b = u->down_b[i].data ? &u->down_b[i] : NULL;
        CZ_TRY(ops->conv2d(be, i == 0 ? &x : &s[i - 1], &u->down_w[i], b, &down, &s[i]));
    }
    CZ_TRY(ops->conv2d(be, &s[D - 2], &u->down_w[D - 1], NULL, &relu, &r));
    /* decoder: u[i] = relu(bn(deconv(...))), c[i] = relu(concat(s[i], u[i+1])) */
    for (int i = D - 1; i >= 1; i--) {
        const cz_tensor *src = i == D - 1 ? &r : &c[i];
        if (u->view[i - 1]) {
            int half = up_out(a, i);
            cz_tensor skip_half = cz_tensor_channel_view(c[i - 1], 0, half);
            cz_tensor up_half = cz_tensor_channel_view(c[i - 1], half, half);
            CZ_TRY(ops->deconv2d(be, src, &u->up_w[i], &u->up_b[i], &relu, &up_half));
            CZ_TRY(ops->act_fwd(be, CZ_ACT_RELU, 0.f, &s[i - 1], &skip_half));
        } else {
            CZ_TRY(ops->deconv2d(be, src, &u->up_w[i], &u->up_b[i], &relu, &uu[i]));
            CZ_TRY(ops->concat(be, &s[i - 1], &uu[i], &c[i - 1]));
            CZ_TRY(ops->act_fwd(be, CZ_ACT_RELU, 0.f, &c[i - 1], &c[i - 1]));
        }
    }
    cz_conv_params outer = {.stride = 2, .pad = 1, .act = CZ_ACT_TANH, .alpha = 0.f};
    return ops->deconv2d(be, &c[0], &u->up_w[0], &u->up_b[0], &outer, &y);
}

/* Recording slot of a padded batch size: slot k holds 2^k for 2^k < max_batch, the last one
 * max_batch. Sets *m to the padded size for a batch of n. */
static int rec_slot(int max_batch, int n, int *m) {
    int k = 0, size = 1;
    while (size < n && size < max_batch) size <<= 1, k++;
    if (size > max_batch) size = max_batch;
    *m = size;
    return k;
}

/* Runs the device part for a padded batch of m through its recording: the first call for a
 * size runs the ops directly (cuDNN picks its algorithms, scratch buffers reach their size),
 * the second records and replays, later ones replay. A size whose recording fails runs
 * unrecorded from then on (logged once); a stale recording is dropped and made again. */
static cz_status forward_recorded(cz_unet *u, plan *p, int k, int m) {
    cz_backend *be = u->be;
    const cz_backend_ops *ops = be->ops;
    if (p->rec_state[k] == REC_READY) {
        cz_status s = ops->replay(be, p->rec[k]);
        if (s != CZ_ERR_UNAVAILABLE) {
            if (s == CZ_OK) u->rec_stats.replays++;
            return s;
        }
        ops->record_free(be, p->rec[k]); /* stale: the backend moved memory it pointed into */
        p->rec[k] = NULL;
        p->rec_state[k] = REC_NEW;
        u->rec_stats.stale++;
    }
    if (p->rec_state[k] == REC_NEW || p->rec_state[k] == REC_OFF) {
        CZ_TRY(forward_ops(u, p, m));
        if (p->rec_state[k] == REC_NEW) p->rec_state[k] = REC_RAN;
        u->rec_stats.unrecorded++;
        return CZ_OK;
    }
    /* REC_RAN: record it now */
    cz_status s = ops->record_begin(be);
    cz_recording *rec = NULL;
    if (s == CZ_OK) {
        cz_status s_ops = forward_ops(u, p, m);
        cz_status s_end = ops->record_end(be, &rec);
        s = s_ops != CZ_OK ? s_ops : s_end;
        if (s_ops != CZ_OK && rec) {
            ops->record_free(be, rec);
            rec = NULL;
        }
    }
    if (s != CZ_OK) {
        CZ_LOGW("unet", "batch %d at %dx%d runs unrecorded: %s", m, p->w, p->h, cz_error_detail());
        p->rec_state[k] = REC_OFF;
        u->rec_stats.failed++;
        CZ_TRY(forward_ops(u, p, m));
        u->rec_stats.unrecorded++;
        return CZ_OK;
    }
    p->rec[k] = rec;
    p->rec_state[k] = REC_READY;
    u->rec_stats.recorded++;
    CZ_LOGD("unet", "recorded the forward pass for batch %d at %dx%d", m, p->w, p->h);
    s = ops->replay(be, rec);
    if (s == CZ_OK) u->rec_stats.replays++;
    return s;
}

static cz_status find_plan(cz_unet *u, int n, int h, int w, plan **out) {
    plan *p = NULL;
    for (int i = 0; i < u->nplans; i++)
        if (u->plans[i].h == h && u->plans[i].w == w) p = &u->plans[i];
    if (!p || p->max_batch < n || n < 1)
        return cz_error_set(CZ_ERR_INVALID_ARG, "forward: no plan for batch %d at %dx%d", n, w, h);
    p->last_use = ++u->clock;
    *out = p;
    return CZ_OK;
}

/* x -> out on the device for a batch of n: recorded where the backend records. */
static cz_status forward_at(cz_unet *u, plan *p, int n) {
    if (u->be->ops->record_begin && !u->no_rec) {
        /* rows n..m-1 of a padded batch hold whatever an earlier batch left: every image is
         * computed independently (BatchNorm is folded), so they only cost time */
        int m, k = rec_slot(p->max_batch, n, &m);
        return forward_recorded(u, p, k, m);
    }
    return forward_ops(u, p, n);
}

/* With full batches every pass runs the plan's max_batch images, so that the backend sees one
 * problem size whatever n is; a full pass that runs out of device memory is retried at n (the
 * caller's split-and-retry on memory then still works, at the price of those passes' bits). */
static cz_status forward_device(cz_unet *u, plan *p, int n) {
    if (u->full && n < p->max_batch) {
        cz_status s = forward_at(u, p, p->max_batch);
        if (s != CZ_ERR_NOMEM) return s;
        CZ_LOGW("unet", "a full batch of %d at %dx%d ran out of device memory: running its %d image(s) alone (%s)",
                p->max_batch, p->w, p->h, n, cz_error_detail());
    }
    return forward_at(u, p, n);
}

cz_status cz_unet_forward(cz_unet *u, int n, int h, int w, const float *in, float *out) {
    plan *p = NULL;
    CZ_TRY(find_plan(u, n, h, w, &p));
    cz_backend *be = u->be;
    const cz_backend_ops *ops = be->ops;
    cz_tensor x = cz_tensor_batch_view(p->x, n), y = cz_tensor_batch_view(p->out, n);
    CZ_TRY(ops->tensor_write(be, &x, in));
    CZ_TRY(forward_device(u, p, n));
    CZ_TRY(ops->tensor_read(be, &y, out));
    return ops->sync(be);
}

int cz_unet_async(const cz_unet *u) {
    const cz_backend_ops *ops = u->be->ops;
    return ops->write_async && ops->read_async && ops->transfer_wait;
}

cz_status cz_unet_launch(cz_unet *u, int n, int h, int w, const float *in, float *out, uint64_t *ticket) {
    *ticket = 0;
    if (!cz_unet_async(u)) return cz_unet_forward(u, n, h, w, in, out);
    plan *p = NULL;
    CZ_TRY(find_plan(u, n, h, w, &p));
    cz_backend *be = u->be;
    const cz_backend_ops *ops = be->ops;
    cz_tensor x = cz_tensor_batch_view(p->x, n), y = cz_tensor_batch_view(p->out, n);
    uint64_t up;
    CZ_TRY(ops->write_async(be, &x, in, &up));
    CZ_TRY(forward_device(u, p, n));
    return ops->read_async(be, &y, out, ticket); /* its ticket covers the upload too */
}

cz_status cz_unet_launch_device(cz_unet *u, int n, int h, int w, const float *in, cz_tensor *out) {
    memset(out, 0, sizeof *out);
    if (!cz_unet_async(u))
        return cz_error_set(CZ_ERR_UNSUPPORTED, "backend '%s' has no asynchronous transfers", u->be->ops->name);
    plan *p = NULL;
    CZ_TRY(find_plan(u, n, h, w, &p));
    cz_backend *be = u->be;
    cz_tensor x = cz_tensor_batch_view(p->x, n);
    uint64_t up;
    CZ_TRY(be->ops->write_async(be, &x, in, &up));
    CZ_TRY(forward_device(u, p, n));
    *out = cz_tensor_batch_view(p->out, n);
    return CZ_OK;
}

cz_status cz_unet_wait(cz_unet *u, uint64_t ticket) {
    if (!cz_unet_async(u) || ticket == 0) return CZ_OK;
    return u->be->ops->transfer_wait(u->be, ticket);
}

cz_status cz_unet_forward_device(cz_unet *u, int n, int h, int w) {
    plan *p = NULL;
    CZ_TRY(find_plan(u, n, h, w, &p));
    CZ_TRY(forward_device(u, p, n));
    return u->be->ops->sync(u->be);
}

void cz_unet_set_recording(cz_unet *u, int on) { u->no_rec = !on; }
void cz_unet_set_full_batches(cz_unet *u, int on) { u->full = on != 0; }
int cz_unet_full_batches(const cz_unet *u) { return u->full; }

cz_unet_rec_stats cz_unet_recording_stats(const cz_unet *u) { return u->rec_stats; }
