/* bench_dnnl_layers.c: per-layer throughput of the pix2pix U-Net generator (256x256, 8 levels,
 * widths ngf*{1,2,4,8,8,8,8,8}, 4x4 stride-2 convs and transposed convs) through the backend
 * interface, for finding the slow layers. Prints one table per (dtype, batch): each conv /
 * transposed conv with the epilogue the inference graph gives it (folded-BN bias and the
 * following activation fused), each up level's concat + ReLU, and the sum, which is the
 * generator's forward pass with BatchNorm folded (an images/s estimate without the glue).
 * Transposed convs are timed in the default (auto) form, and for the dnnl backend also in
 * each of its forms (deconvolution forward, convolution backward-data, phase decomposition
 * into stride-1 convolutions) as GFLOP/s, with the fastest named.
 *
 * Build (from the source root, after building build-dnnl):
 *   cc -O2 -std=c11 -D_GNU_SOURCE -Icore tests/bench/bench_dnnl_layers.c build-dnnl/libcz_core.a \
 *      -ldnnl -ljansson -lspng -lturbojpeg -ljpeg -lpthread -lm -o build-dnnl/bench_dnnl_layers
 * or through tests/bench/CMakeLists.txt (target bench_dnnl_layers).
 * Usage: bench_dnnl_layers [--backend dnnl] [--threads N] [--ngf 64] [--size 256]
 *                          [--batch 1,8] [--dtype fp32,bf16] [--min-ms 300] [--compare 0|1]
 *                          [--pass fwd|bwd|fwd,bwd]
 * (--compare 0 skips timing the deconv forms one by one). --pass bwd times the training
 * backward of each conv instead: backward-data (dx in the model dtype) and backward-weights
 * (fp32 dw, as the trainer keeps it; bias gradient on the outermost up conv only, as in the
 * model), each as GFLOP/s of the same 2*cin*cout*16*spatial*batch FLOP count as forward; for
 * the down convs on dnnl also conv2d_bwd_data's direct oneDNN form ("direct") beside the
 * default transposed-conv form. Every figure is the fastest of at
 * least 5 calls: on a machine shared with other work, OpenMP's spinning threads turn any
 * competition for the cores into multi-millisecond stalls, so rerun when the machine is idle.
 * A benchmark prints numbers; it asserts nothing. Single-threaded driver. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "backend_dnnl.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what, cz_status s) {
    fprintf(stderr, "bench: %s failed: %s (%s)\n", what, cz_strerror(s), cz_error_detail());
    exit(1);
}
#define CK(what, expr)                        \
    do {                                      \
        cz_status s_ = (expr);                \
        if (s_ != CZ_OK) die(what, s_);       \
    } while (0)

typedef struct {
    char name[16];
    int up;     /* transposed conv */
    int ci, co; /* channels in / out */
    int hin;    /* input height = width */
    cz_act act; /* fused epilogue */
} layer;

typedef struct {
    cz_backend *be;
    int cat, up, has_bias;
    int bwd; /* 0 forward, 1 backward-data, 2 backward-weights */
    cz_tensor x, w, b, y, skip;
    cz_tensor dw, db; /* fp32 gradients for bwd = 2 */
    cz_conv_params p;
} job;

static void run_once(job *j) {
    const cz_backend_ops *o = j->be->ops;
    const cz_tensor *bias = j->has_bias ? &j->b : NULL;
    if (j->bwd == 1) {
        if (j->up)
            CK("deconv2d_bwd_data", o->deconv2d_bwd_data(j->be, &j->y, &j->w, &j->p, &j->x));
        else
            CK("conv2d_bwd_data", o->conv2d_bwd_data(j->be, &j->y, &j->w, &j->p, &j->x));
    } else if (j->bwd == 2) {
        cz_tensor *db = j->has_bias ? &j->db : NULL;
        if (j->up)
            CK("deconv2d_bwd_weights", o->deconv2d_bwd_weights(j->be, &j->x, &j->y, &j->p, &j->dw, db, 0));
        else
            CK("conv2d_bwd_weights", o->conv2d_bwd_weights(j->be, &j->x, &j->y, &j->p, &j->dw, db, 0));
    } else if (j->cat) {
        CK("concat", o->concat(j->be, &j->skip, &j->x, &j->y));
        CK("act_fwd", o->act_fwd(j->be, CZ_ACT_RELU, 0.f, &j->y, &j->y));
    } else if (j->up) {
        CK("deconv2d", o->deconv2d(j->be, &j->x, &j->w, bias, &j->p, &j->y));
    } else {
        CK("conv2d", o->conv2d(j->be, &j->x, &j->w, bias, &j->p, &j->y));
    }
}

/* Fastest single call (seconds) after two warm-up calls, over at least min_s and 5 calls:
 * the minimum is the figure least disturbed by other work on a shared machine. */
static double time_job(job *j, double min_s) {
    run_once(j);
    run_once(j);
    CK("sync", j->be->ops->sync(j->be));
    int reps = 0;
    double t0 = now_s(), best = 1e30;
    do {
        double a = now_s();
        run_once(j);
        CK("sync", j->be->ops->sync(j->be));
        double d = now_s() - a;
        if (d < best) best = d;
        reps++;
    } while (now_s() - t0 < min_s || reps < 5);
    return best;
}

static void fill(cz_backend *be, cz_tensor *t, float scale, unsigned seed) {
    size_t n = cz_tensor_numel(t);
    float *h = malloc(n * sizeof *h);
    uint32_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        h[i] = scale * ((float)(s >> 8) / 16777216.0f - 0.5f);
    }
    CK("tensor_write", be->ops->tensor_write(be, t, h));
    free(h);
}

static int parse_list(const char *s, int *out, int max) {
    int n = 0;
    while (s && *s && n < max) {
        out[n++] = atoi(s);
        s = strchr(s, ',');
        if (s) s++;
    }
    return n;
}

/* One table of backward timings for (dt, batch n): per layer backward-data and
 * backward-weights, and the totals (the generator's conv backward per training step). */
static void bench_bwd(cz_backend *be, int is_dnnl, cz_dtype dt, int n, const layer *L, int nl, double min_s,
                      int compare) {
    printf("\n== backward, %s activations, fp32 weight gradients, batch %d ==\n", cz_dtype_name(dt), n);
    printf("%-7s %5s %5s %4s %8s %9s %8s %9s %8s  %s\n", "layer", "cin", "cout", "hin", "GFLOP", "dx ms", "GFLOP/s",
           "dw ms", "GFLOP/s", "dx form / dw implementation");
    double tot_gf = 0, tot_d = 0, tot_w = 0;
    for (int li = 0; li < nl; li++) {
        const layer *l = &L[li];
        int hout = l->up ? l->hin * 2 : l->hin / 2;
        double spatial = (double)(l->up ? l->hin : hout) * (l->up ? l->hin : hout);
        double gf = 2.0 * l->ci * l->co * 16.0 * spatial * n / 1e9;
        job j;
        memset(&j, 0, sizeof j);
        j.be = be;
        j.up = l->up;
        j.has_bias = l->up && li == nl - 1; /* only the outermost up conv has a bias */
        j.p = (cz_conv_params){2, 1, CZ_ACT_NONE, 0.2f};
        CK("alloc x", cz_tensor_alloc(be, &j.x, dt, CZ_ROLE_ACT, n, l->ci, l->hin, l->hin));
        if (l->up) {
            CK("alloc w", cz_tensor_alloc(be, &j.w, dt, CZ_ROLE_DECONV_W, l->ci, l->co, 4, 4));
            CK("alloc dw", cz_tensor_alloc(be, &j.dw, CZ_F32, CZ_ROLE_DECONV_W, l->ci, l->co, 4, 4));
        } else {
            CK("alloc w", cz_tensor_alloc(be, &j.w, dt, CZ_ROLE_CONV_W, l->co, l->ci, 4, 4));
            CK("alloc dw", cz_tensor_alloc(be, &j.dw, CZ_F32, CZ_ROLE_CONV_W, l->co, l->ci, 4, 4));
        }
        CK("alloc db", cz_tensor_alloc(be, &j.db, CZ_F32, CZ_ROLE_VEC, 1, l->co, 1, 1));
        CK("alloc dy", cz_tensor_alloc(be, &j.y, dt, CZ_ROLE_ACT, n, l->co, hout, hout));
        fill(be, &j.x, 2.f, 1 + li);
        fill(be, &j.w, 0.1f, 100 + li);
        fill(be, &j.y, 0.5f, 200 + li);
        j.bwd = 1;
        double td = time_job(&j, min_s) * 1e3;
        char form[64] = "";
        if (is_dnnl) snprintf(form, sizeof form, "%s", cz_backend_dnnl_last_impl(be, l->up ? "conv2d" : "deconv2d"));
        char alt[64] = "";
        if (is_dnnl && compare && !l->up) {
            CK("bwd-data mode", cz_backend_dnnl_set_bwd_data_mode(be, 1));
            double tdd = time_job(&j, min_s) * 1e3;
            CK("bwd-data mode", cz_backend_dnnl_set_bwd_data_mode(be, 0));
            snprintf(alt, sizeof alt, " (direct %.1f GFLOP/s)", gf / tdd * 1e3);
        }
        j.bwd = 2;
        double tw = time_job(&j, min_s) * 1e3;
        printf("%-7s %5d %5d %4d %8.3f %9.3f %8.1f %9.3f %8.1f  %s%s / %s\n", l->name, l->ci, l->co, l->hin, gf, td,
               gf / td * 1e3, tw, gf / tw * 1e3, form, alt, is_dnnl ? cz_backend_dnnl_last_impl(be, "conv_bwd_weights") : "");
        tot_gf += gf;
        tot_d += td;
        tot_w += tw;
        cz_tensor_free(be, &j.x);
        cz_tensor_free(be, &j.w);
        cz_tensor_free(be, &j.dw);
        cz_tensor_free(be, &j.db);
        cz_tensor_free(be, &j.y);
    }
    printf("backward-data: %.2f GFLOP in %.2f ms = %.1f GFLOP/s; backward-weights: %.2f ms = %.1f GFLOP/s\n", tot_gf,
           tot_d, tot_gf / tot_d * 1e3, tot_w, tot_gf / tot_w * 1e3);
    printf("generator conv backward (%s, batch %d): %.2f ms/step\n", cz_dtype_name(dt), n, tot_d + tot_w);
}

int main(int argc, char **argv) {
    const char *backend = "dnnl", *dtypes = "fp32,bf16";
    int threads = 0, ngf = 64, size = 256, batches[8] = {1, 8}, nb = 2;
    double min_s = 0.3;
    int compare = 1; /* time every deconv form too */
    const char *passes = "fwd";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--backend")) backend = argv[i + 1];
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ngf")) ngf = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--size")) size = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch")) nb = parse_list(argv[i + 1], batches, 8);
        else if (!strcmp(argv[i], "--dtype")) dtypes = argv[i + 1];
        else if (!strcmp(argv[i], "--min-ms")) min_s = atof(argv[i + 1]) / 1000.0;
        else if (!strcmp(argv[i], "--compare")) compare = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--pass")) passes = argv[i + 1];
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    cz_backend_options opt = {.threads = threads};
    cz_backend *be;
    CK("backend create", cz_backend_create(backend, &opt, &be));
    int is_dnnl = !strcmp(be->ops->name, "dnnl");

    /* the generator's 16 convolutions (lab: 1 channel in, 2 out) */
    static const int mult[8] = {1, 2, 4, 8, 8, 8, 8, 8};
    layer L[16];
    int nl = 0;
    for (int d = 0; d < 8; d++) {
        layer *l = &L[nl++];
        snprintf(l->name, sizeof l->name, "down%d", d);
        l->up = 0;
        l->ci = d ? ngf * mult[d - 1] : 1;
        l->co = ngf * mult[d];
        l->hin = size >> d;
        l->act = d == 7 ? CZ_ACT_RELU : CZ_ACT_LRELU; /* feeds the next level / the up ReLU */
    }
    for (int d = 7; d >= 0; d--) {
        layer *l = &L[nl++];
        snprintf(l->name, sizeof l->name, "up%d", d);
        l->up = 1;
        l->ci = d == 7 ? ngf * mult[7] : 2 * ngf * mult[d];
        l->co = d ? ngf * mult[d - 1] : 2;
        l->hin = size >> (d + 1);
        l->act = d ? CZ_ACT_NONE : CZ_ACT_TANH;
    }

    printf("backend %s, threads %d (0 = default), ngf %d, %dx%d\n", be->ops->name, threads, ngf, size, size);
    char dl[64];
    snprintf(dl, sizeof dl, "%s", dtypes);
    for (char *dn = strtok(dl, ","); dn; dn = strtok(NULL, ",")) {
        int dti = cz_dtype_parse(dn);
        if (dti < 0 || !be->ops->supports(be, (cz_dtype)dti)) {
            printf("\n%s: not supported by this backend\n", dn);
            continue;
        }
        cz_dtype dt = (cz_dtype)dti;
        if (strstr(passes, "bwd"))
            for (int bi = 0; bi < nb; bi++) bench_bwd(be, is_dnnl, dt, batches[bi], L, nl, min_s, compare);
        if (!strstr(passes, "fwd")) continue;
        for (int bi = 0; bi < nb; bi++) {
            int n = batches[bi];
            printf("\n== %s, batch %d ==\n", cz_dtype_name(dt), n);
            printf("%-7s %5s %5s %4s %9s %10s %9s  %s\n", "layer", "cin", "cout", "hin", "GFLOP", "ms", "GFLOP/s",
                   "implementation");
            double total_ms = 0, total_gf = 0, cat_ms = 0;
            for (int li = 0; li < nl; li++) {
                layer *l = &L[li];
                int hout = l->up ? l->hin * 2 : l->hin / 2;
                double spatial = (double)(l->up ? l->hin : hout) * (l->up ? l->hin : hout);
                double gf = 2.0 * l->ci * l->co * 16.0 * spatial * n / 1e9;
                job j;
                memset(&j, 0, sizeof j);
                j.be = be;
                j.up = l->up;
                j.has_bias = 1;
                j.p = (cz_conv_params){2, 1, l->act, 0.2f};
                CK("alloc x", cz_tensor_alloc(be, &j.x, dt, CZ_ROLE_ACT, n, l->ci, l->hin, l->hin));
                if (l->up)
                    CK("alloc w", cz_tensor_alloc(be, &j.w, dt, CZ_ROLE_DECONV_W, l->ci, l->co, 4, 4));
                else
                    CK("alloc w", cz_tensor_alloc(be, &j.w, dt, CZ_ROLE_CONV_W, l->co, l->ci, 4, 4));
                CK("alloc b", cz_tensor_alloc(be, &j.b, dt, CZ_ROLE_VEC, 1, l->co, 1, 1));
                CK("alloc y", cz_tensor_alloc(be, &j.y, dt, CZ_ROLE_ACT, n, l->co, hout, hout));
                fill(be, &j.x, 2.f, 1 + li);
                fill(be, &j.w, 0.1f, 100 + li);
                fill(be, &j.b, 0.2f, 200 + li);
                double best = 0;
                if (l->up && is_dnnl && compare) {
                    static const char *mname[3] = {"fwd", "bwd_d", "phase"};
                    double t[3];
                    char keep[3][48];
                    int win = 0;
                    for (int m = 0; m < 3; m++) {
                        CK("deconv mode", cz_backend_dnnl_set_deconv_mode(be, m + 1));
                        t[m] = time_job(&j, min_s) * 1e3;
                        snprintf(keep[m], sizeof keep[m], "%s", cz_backend_dnnl_last_impl(be, "deconv2d"));
                        if (t[m] < t[win]) win = m;
                    }
                    CK("deconv mode", cz_backend_dnnl_set_deconv_mode(be, 0));
                    double ta = time_job(&j, min_s) * 1e3; /* what the default picks */
                    best = ta;
                    printf("%-7s %5d %5d %4d %9.3f %10.3f %9.1f  %s | fwd %.1f bwd_d %.1f phase %.1f (%s) best %s\n",
                           l->name, l->ci, l->co, l->hin, gf, best, gf / best * 1e3,
                           cz_backend_dnnl_last_impl(be, "deconv2d"), gf / t[0] * 1e3, gf / t[1] * 1e3,
                           gf / t[2] * 1e3, keep[2], mname[win]);
                } else {
                    best = time_job(&j, min_s) * 1e3;
                    printf("%-7s %5d %5d %4d %9.3f %10.3f %9.1f  %s\n", l->name, l->ci, l->co, l->hin, gf, best,
                           gf / best * 1e3,
                           is_dnnl ? cz_backend_dnnl_last_impl(be, l->up ? "deconv2d" : "conv2d") : "");
                }
                total_ms += best;
                total_gf += gf;
                /* the up level's concat [skip, up] + ReLU that feeds the next transposed conv */
                if (l->up && li != nl - 1) {
                    job c;
                    memset(&c, 0, sizeof c);
                    c.be = be;
                    c.cat = 1;
                    c.x = j.y;
                    CK("alloc skip", cz_tensor_alloc(be, &c.skip, dt, CZ_ROLE_ACT, n, l->co, hout, hout));
                    CK("alloc cat", cz_tensor_alloc(be, &c.y, dt, CZ_ROLE_ACT, n, 2 * l->co, hout, hout));
                    fill(be, &c.skip, 1.f, 300 + li);
                    double tc = time_job(&c, min_s / 3) * 1e3;
                    cat_ms += tc;
                    printf("%-7s %5d %5d %4d %9s %10.3f %9s  concat [skip, up] + relu in place\n", "  +cat", l->co,
                           2 * l->co, hout, "", tc, "");
                    cz_tensor_free(be, &c.skip);
                    cz_tensor_free(be, &c.y);
                }
                cz_tensor_free(be, &j.x);
                cz_tensor_free(be, &j.w);
                cz_tensor_free(be, &j.b);
                cz_tensor_free(be, &j.y);
            }
            printf("convs: %.2f GFLOP in %.2f ms = %.1f GFLOP/s; concat+relu %.2f ms\n", total_gf, total_ms,
                   total_gf / total_ms * 1e3, cat_ms);
            printf("generator estimate (%s, batch %d): %.2f ms/batch, %.2f images/s\n", cz_dtype_name(dt), n,
                   total_ms + cat_ms, n * 1e3 / (total_ms + cat_ms));
        }
    }
    cz_backend_destroy(be);
    return 0;
}
