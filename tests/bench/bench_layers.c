/* bench_layers.c: per-layer timing of the pix2pix U-Net generator through the backend interface, on any
 * backend (ref, dnnl, cuda), with a roofline estimate per layer; for finding the slow layers and for the
 * GPU report of where the time goes.
 *
 * What is timed. The generator at --size (default 256: 8 levels, widths ngf*{1,2,4,8,8,8,8,8}, 4x4
 * stride-2 convs and transposed convs; smaller sizes get fewer levels so that the innermost is 1x1,
 * or --depth D): each conv / transposed conv with the epilogue the inference graph gives it (the
 * folded-BatchNorm bias and the following activation fused), and each up level's concat [skip, up] +
 * ReLU. One table per (dtype, batch); its total is the generator's forward pass with BatchNorm folded
 * (an images/s estimate without the host transfers and glue). Every figure is the fastest single call
 * (wall clock, backend sync after each call, so queued GPU work is inside the figure) after two warm-up
 * calls, over at least --min-ms and 5 calls: the minimum is the figure least disturbed by other work on
 * a shared machine (OpenMP's spinning threads turn competition for the cores into multi-millisecond
 * stalls, so rerun CPU figures on an idle machine). On the first call of a shape the backends pick
 * their algorithms (cuDNN's find, oneDNN's primitive creation); the warm-up calls absorb that.
 *
 * Roofline columns. FLOP of a conv: 2*cin*cout*k*k*out_pixels*batch; of a transposed conv the same
 * with its input pixels (it is the adjoint of the conv whose output is its input), as cz_unet_flops
 * counts. Bytes: the input and output activations, weights and bias at the dtype's size (the
 * compulsory traffic; caches, halos and workspace ignored); for concat + ReLU the traffic of the two
 * ops as called (read skip and up, write the concatenation, then read and write it again for the
 * in-place ReLU). AI = FLOP/byte. The roofline bound of a layer is the longer of FLOP/peak_flops and
 * bytes/peak_bw (the same as achieved FLOP/s over min(peak_flops, AI*peak_bw), and meaningful for the
 * zero-FLOP concat too); roof% = bound time / measured time; "bound" says which side limits it. A
 * memory-bound layer small enough to stay in cache (GPU L2, CPU L2/L3) between the repeated calls can
 * show more than 100%: the bound assumes its bytes come from DRAM each time.
 * Peaks: --peak-tflops (one value, or one per --dtype entry in order) and --peak-gbps. Defaults for
 * the cuda backend are ASSUMED figures for an H200 SXM, from issue 5: 790 TFLOP/s dense for bf16 and
 * fp16 (tensor cores), 67 TFLOP/s for fp32 (the non-tensor fp32 peak of H100/H200 SXM; the backend
 * leaves TF32 off unless COLORIZE_CUDA_TF32=1, in which case pass the TF32 figure), 4300 GB/s. On an
 * H100 or any other card pass its own figures. CPU backends have no defaults: without both flags the
 * roof% and bound columns print '-'.
 * The total row: the sum of the rows' times -> ms per batch and images/s, overall TFLOP/s, its
 * fraction of peak_flops, and the whole graph's roofline fraction (sum of bound times / sum of times);
 * then the 5 rows that take the most time, with their share.
 * --json prints one JSON object per forward row instead of the table (fields engine "colorize", bench
 * "layers", pass, backend, dtype, batch, ngf, size, layer, kind, cin, cout, hin, ms, gflop, mbytes,
 * ai, tflops, gbps, roofline_frac (null without peaks), bound) and one row with layer "total" (plus
 * images_per_s and peak_frac); --json-file FILE appends the same lines to FILE while the table goes to
 * stdout (tests/gpu/check.sh keeps them that way). Rows are flushed as they are printed, so a run cut
 * short by a timeout keeps the layers it finished.
 *
 * dnnl only: transposed convs are also timed in each of the backend's forms (deconvolution forward,
 * convolution backward-data, phase decomposition into stride-1 convolutions), with the fastest named,
 * and the implementation column names the oneDNN kernel (--compare 0 skips the extra forms). --pass bwd
 * times the training backward of each conv instead (no roofline columns): backward-data (dx in the
 * model dtype) and backward-weights (fp32 dw, as the trainer keeps it; bias gradient on the outermost
 * up conv only), each as GFLOP/s of the forward FLOP count; on dnnl also conv2d_bwd_data's direct
 * oneDNN form beside the default transposed-conv form.
 *
 * Build: tests/bench/CMakeLists.txt, target bench_layers (build-dir/tests/bench/bench_layers).
 * Usage: see usage() below or run with --help. Examples:
 *   bench_layers --backend dnnl --dtype fp32,bf16 --batch 1,8
 *   bench_layers --backend cuda --ngf 64 --batch 64 --dtype bf16 --min-ms 200
 *   bench_layers --backend dnnl --dtype fp32,bf16 --peak-tflops 3.5,14 --peak-gbps 200
 *
 * A benchmark prints numbers; it asserts nothing (it exits non-zero only when an op fails).
 * Single-threaded driver; the backend uses its own threads. Tested by running it: the default build
 * compiles it (so CI keeps it compiling) but no test runs it; tests/gpu/check.sh step 4 runs it with
 * --backend cuda on the GPU machine, and a CZ_CUDA=EMU build runs the same path on the CPU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "backend_dnnl.h"

/* Assumed peaks of the cuda backend's card (H200 SXM, issue 5), overridable by the flags. */
#define CUDA_PEAK_TFLOPS_TENSOR 790.0 /* bf16 / fp16 dense */
#define CUDA_PEAK_TFLOPS_FP32 67.0    /* fp32 without tensor cores */
#define CUDA_PEAK_GBPS 4300.0

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what, cz_status s) {
    fflush(stdout);
    fprintf(stderr, "bench_layers: %s failed: %s (%s)\n", what, cz_strerror(s), cz_error_detail());
    exit(1);
}
#define CK(what, expr)                  \
    do {                                \
        cz_status s_ = (expr);          \
        if (s_ != CZ_OK) die(what, s_); \
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

/* Everything the command line sets, plus the backend and the layer list built from it. */
typedef struct {
    const char *backend, *dtypes, *passes;
    int threads, ngf, size, depth;
    int batches[8], nb;
    double min_s;
    int compare;
    double peak_tf[8];
    int npeak_tf;     /* 0: not given */
    double peak_gbps; /* 0: not given */
    int json_only;    /* --json: JSON lines on stdout, no table */
    FILE *jf;         /* where JSON lines go, NULL for none */
    cz_backend *be;
    int is_dnnl;
    layer L[32];
    int nl;
} bench;

/* One printed row of a forward table, kept for the totals and the top-5 list. */
typedef struct {
    char name[16];
    double ms, gflop, mbytes, bound_ms; /* bound_ms < 0: no peaks */
} row;

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

/* Fastest single call (seconds) after two warm-up calls, over at least min_s and 5 calls; the backend
 * is synchronized after every call so that asynchronous (GPU) work is inside the figure. */
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
    if (!h) {
        fprintf(stderr, "bench_layers: out of host memory (%zu floats)\n", n);
        exit(1);
    }
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

static int parse_dlist(const char *s, double *out, int max) {
    int n = 0;
    while (s && *s && n < max) {
        out[n++] = atof(s);
        s = strchr(s, ',');
        if (s) s++;
    }
    return n;
}

/* The peaks that apply to the di-th entry of --dtype: the flags, else the cuda defaults, else 0
 * (unknown). */
static void peaks_for(const bench *B, int di, cz_dtype dt, double *tflops, double *gbps) {
    int cuda = !strcmp(B->be->ops->name, "cuda");
    if (B->npeak_tf)
        *tflops = B->peak_tf[di < B->npeak_tf ? di : B->npeak_tf - 1];
    else
        *tflops = cuda ? (dt == CZ_F32 ? CUDA_PEAK_TFLOPS_FP32 : CUDA_PEAK_TFLOPS_TENSOR) : 0;
    *gbps = B->peak_gbps > 0 ? B->peak_gbps : cuda ? CUDA_PEAK_GBPS : 0;
}

/* Roofline time in ms of gflop of work moving mbytes at the peaks (GFLOP / (TFLOP/s) = ms and
 * MB / (GB/s) = ms); -1 when a peak is unknown. *mem says whether bandwidth is the limit. */
static double bound_ms(double gflop, double mbytes, double tflops, double gbps, int *mem) {
    if (tflops <= 0 || gbps <= 0) return -1;
    double tc = gflop / tflops, tm = mbytes / gbps;
    *mem = tm >= tc;
    return *mem ? tm : tc;
}

/* "%*.*f" of v into buf, or "-" right-aligned to the same width when !ok. */
static const char *num(char *buf, size_t n, int width, int prec, double v, int ok) {
    if (ok)
        snprintf(buf, n, "%*.*f", width, prec, v);
    else
        snprintf(buf, n, "%*s", width, "-");
    return buf;
}

static void table_header(void) {
    printf("%-7s %5s %5s %4s %9s %9s %7s %10s %8s %8s %6s %5s  %s\n", "layer", "cin", "cout", "hin", "GFLOP", "MB",
           "FLOP/B", "ms", "TFLOP/s", "GB/s", "roof%", "bound", "implementation");
}

/* Prints one forward row (table and/or JSON) and records it in rows[*nr]. */
static void emit_row(bench *B, cz_dtype dt, int n, const char *name, const char *kind, int ci, int co, int hin,
                     double gflop, double mbytes, double ms, double tflops_peak, double gbps_peak,
                     const char *impl, row *rows, int *nr) {
    int mem = 0;
    if (ms < 1e-6) ms = 1e-6; /* below the clock's resolution: keeps the rates finite */
    double bms = bound_ms(gflop, mbytes, tflops_peak, gbps_peak, &mem);
    double ai = gflop * 1e3 / mbytes; /* GFLOP / MB * 1e3 = FLOP / byte */
    double tf = gflop / ms, gb = mbytes / ms, frac = bms >= 0 ? bms / ms : 0;
    if (!B->json_only) {
        char a[32], b[32], c[32];
        printf("%-7s %5d %5d %4d %9s %9.2f %7.1f %10.3f %8s %8.1f %6s %5s  %s\n", name, ci, co, hin,
               num(a, sizeof a, 9, 4, gflop, gflop > 0), mbytes, ai, ms, num(b, sizeof b, 8, 3, tf, gflop > 0),
               gb, num(c, sizeof c, 6, 1, 100 * frac, bms >= 0), bms < 0 ? "-" : mem ? "mem" : "flop", impl);
    }
    if (B->jf) {
        fprintf(B->jf,
                "{\"engine\":\"colorize\",\"bench\":\"layers\",\"pass\":\"fwd\",\"backend\":\"%s\",\"dtype\":\"%s\","
                "\"batch\":%d,\"ngf\":%d,\"size\":%d,\"layer\":\"%s\",\"kind\":\"%s\",\"cin\":%d,\"cout\":%d,"
                "\"hin\":%d,\"ms\":%.6g,\"gflop\":%.6g,\"mbytes\":%.6g,\"ai\":%.6g,\"tflops\":%.6g,\"gbps\":%.6g,",
                B->be->ops->name, cz_dtype_name(dt), n, B->ngf, B->size, name, kind, ci, co, hin, ms, gflop, mbytes,
                ai, tf, gb);
        if (bms >= 0)
            fprintf(B->jf, "\"roofline_frac\":%.6g,\"bound\":\"%s\"}\n", frac, mem ? "memory" : "compute");
        else
            fprintf(B->jf, "\"roofline_frac\":null,\"bound\":null}\n");
        fflush(B->jf);
    }
    fflush(stdout);
    row *r = &rows[(*nr)++];
    snprintf(r->name, sizeof r->name, "%s", name);
    r->ms = ms;
    r->gflop = gflop;
    r->mbytes = mbytes;
    r->bound_ms = bms;
}

static int by_time_desc(const void *a, const void *b) {
    double x = ((const row *)a)->ms, y = ((const row *)b)->ms;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The total row and the top 5 rows by time (table and/or JSON). */
static void emit_totals(bench *B, cz_dtype dt, int n, row *rows, int nr, double tflops_peak) {
    double ms = 0, gflop = 0, mbytes = 0, bms = 0;
    int have_bound = nr > 0;
    for (int i = 0; i < nr; i++) {
        ms += rows[i].ms;
        gflop += rows[i].gflop;
        mbytes += rows[i].mbytes;
        if (rows[i].bound_ms < 0) have_bound = 0;
        bms += rows[i].bound_ms;
    }
    double tf = gflop / ms, ips = n * 1e3 / ms;
    if (!B->json_only) {
        char pk[64] = "no peak given", rl[32] = "-";
        if (tflops_peak > 0)
            snprintf(pk, sizeof pk, "%.2f%% of the %g TFLOP/s peak", 100 * tf / tflops_peak, tflops_peak);
        if (have_bound) snprintf(rl, sizeof rl, "%.1f%%", 100 * bms / ms);
        printf("total: %.3f ms/batch = %.2f images/s; %.3f GFLOP at %.3f TFLOP/s (%s), %.1f GB/s; roofline %s\n", ms,
               ips, gflop, tf, pk, mbytes / ms, rl);
        qsort(rows, (size_t)nr, sizeof *rows, by_time_desc);
        printf("top 5 by time:");
        for (int i = 0; i < nr && i < 5; i++)
            printf("%s %s %.3f ms (%.1f%%)", i ? "," : "", rows[i].name, rows[i].ms, 100 * rows[i].ms / ms);
        printf("\n");
    }
    if (B->jf) {
        fprintf(B->jf,
                "{\"engine\":\"colorize\",\"bench\":\"layers\",\"pass\":\"fwd\",\"backend\":\"%s\",\"dtype\":\"%s\","
                "\"batch\":%d,\"ngf\":%d,\"size\":%d,\"layer\":\"total\",\"kind\":\"total\",\"ms\":%.6g,"
                "\"gflop\":%.6g,\"mbytes\":%.6g,\"tflops\":%.6g,\"gbps\":%.6g,\"images_per_s\":%.6g,",
                B->be->ops->name, cz_dtype_name(dt), n, B->ngf, B->size, ms, gflop, mbytes, tf, mbytes / ms, ips);
        if (tflops_peak > 0)
            fprintf(B->jf, "\"peak_frac\":%.6g,", tf / tflops_peak);
        else
            fprintf(B->jf, "\"peak_frac\":null,");
        if (have_bound)
            fprintf(B->jf, "\"roofline_frac\":%.6g}\n", bms / ms);
        else
            fprintf(B->jf, "\"roofline_frac\":null}\n");
        fflush(B->jf);
    }
    fflush(stdout);
}

/* Output pixels per image of layer l, and FLOP of one call at batch n (see the file comment). */
static int layer_hout(const layer *l) { return l->up ? l->hin * 2 : l->hin / 2; }
static double layer_gflop(const layer *l, int n) {
    double px = l->up ? (double)l->hin * l->hin : (double)layer_hout(l) * layer_hout(l);
    return 2.0 * l->ci * l->co * 16.0 * px * n / 1e9;
}

/* One forward table for (dt, batch n). di: index of dt in --dtype (for --peak-tflops). */
static void bench_fwd(bench *B, int di, cz_dtype dt, int n) {
    cz_backend *be = B->be;
    double es = (double)cz_dtype_size(dt), ptf, pbw;
    peaks_for(B, di, dt, &ptf, &pbw);
    row rows[64];
    int nr = 0;
    if (!B->json_only) {
        char pk[96] = "need --peak-tflops and --peak-gbps; roof% and bound print '-'";
        if (ptf > 0 && pbw > 0) snprintf(pk, sizeof pk, "%g TFLOP/s, %g GB/s", ptf, pbw);
        printf("\n== %s, batch %d (roofline peaks: %s) ==\n", cz_dtype_name(dt), n, pk);
        table_header();
        fflush(stdout);
    }
    for (int li = 0; li < B->nl; li++) {
        const layer *l = &B->L[li];
        int hout = layer_hout(l);
        double gf = layer_gflop(l, n);
        double mb = es * ((double)n * l->ci * l->hin * l->hin + (double)n * l->co * hout * hout +
                          (double)l->ci * l->co * 16 + l->co) / 1e6;
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
        char impl[256] = "";
        double ms;
        if (l->up && B->is_dnnl && B->compare) {
            static const char *mname[3] = {"fwd", "bwd_d", "phase"};
            double t[3];
            char keep[3][48];
            int win = 0;
            for (int m = 0; m < 3; m++) {
                CK("deconv mode", cz_backend_dnnl_set_deconv_mode(be, m + 1));
                t[m] = time_job(&j, B->min_s) * 1e3;
                snprintf(keep[m], sizeof keep[m], "%s", cz_backend_dnnl_last_impl(be, "deconv2d"));
                if (t[m] < t[win]) win = m;
            }
            CK("deconv mode", cz_backend_dnnl_set_deconv_mode(be, 0));
            ms = time_job(&j, B->min_s) * 1e3; /* what the default picks */
            snprintf(impl, sizeof impl, "%s | GFLOP/s fwd %.1f bwd_d %.1f phase %.1f (%s) best %s",
                     cz_backend_dnnl_last_impl(be, "deconv2d"), gf / t[0] * 1e3, gf / t[1] * 1e3, gf / t[2] * 1e3,
                     keep[2], mname[win]);
        } else {
            ms = time_job(&j, B->min_s) * 1e3;
            if (B->is_dnnl)
                snprintf(impl, sizeof impl, "%s", cz_backend_dnnl_last_impl(be, l->up ? "deconv2d" : "conv2d"));
        }
        emit_row(B, dt, n, l->name, l->up ? "deconv" : "conv", l->ci, l->co, l->hin, gf, mb, ms, ptf, pbw, impl,
                 rows, &nr);
        /* the up level's concat [skip, up] + ReLU that feeds the next transposed conv */
        if (l->up && li != B->nl - 1) {
            job c;
            memset(&c, 0, sizeof c);
            c.be = be;
            c.cat = 1;
            c.x = j.y;
            CK("alloc skip", cz_tensor_alloc(be, &c.skip, dt, CZ_ROLE_ACT, n, l->co, hout, hout));
            CK("alloc cat", cz_tensor_alloc(be, &c.y, dt, CZ_ROLE_ACT, n, 2 * l->co, hout, hout));
            fill(be, &c.skip, 1.f, 300 + li);
            double tc = time_job(&c, B->min_s / 3) * 1e3;
            double cmb = es * 8.0 * n * l->co * hout * hout / 1e6; /* see the file comment */
            char cname[16];
            snprintf(cname, sizeof cname, "%s+cat", l->name);
            emit_row(B, dt, n, cname, "concat_relu", l->co, 2 * l->co, hout, 0, cmb, tc, ptf, pbw,
                     "concat [skip, up] + relu in place", rows, &nr);
            cz_tensor_free(be, &c.skip);
            cz_tensor_free(be, &c.y);
        }
        cz_tensor_free(be, &j.x);
        cz_tensor_free(be, &j.w);
        cz_tensor_free(be, &j.b);
        cz_tensor_free(be, &j.y);
    }
    emit_totals(B, dt, n, rows, nr, ptf);
}

/* One table of backward timings for (dt, batch n): per layer backward-data and backward-weights, and the
 * totals (the generator's conv backward per training step). */
static void bench_bwd(bench *B, cz_dtype dt, int n) {
    cz_backend *be = B->be;
    int is_dnnl = B->is_dnnl;
    printf("\n== backward, %s activations, fp32 weight gradients, batch %d ==\n", cz_dtype_name(dt), n);
    printf("%-7s %5s %5s %4s %8s %9s %8s %9s %8s  %s\n", "layer", "cin", "cout", "hin", "GFLOP", "dx ms", "GFLOP/s",
           "dw ms", "GFLOP/s", "dx form / dw implementation");
    double tot_gf = 0, tot_d = 0, tot_w = 0;
    for (int li = 0; li < B->nl; li++) {
        const layer *l = &B->L[li];
        int hout = layer_hout(l);
        double gf = layer_gflop(l, n);
        job j;
        memset(&j, 0, sizeof j);
        j.be = be;
        j.up = l->up;
        j.has_bias = l->up && li == B->nl - 1; /* only the outermost up conv has a bias */
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
        double td = time_job(&j, B->min_s) * 1e3;
        char form[64] = "";
        if (is_dnnl) snprintf(form, sizeof form, "%s", cz_backend_dnnl_last_impl(be, l->up ? "conv2d" : "deconv2d"));
        char alt[64] = "";
        if (is_dnnl && B->compare && !l->up) {
            CK("bwd-data mode", cz_backend_dnnl_set_bwd_data_mode(be, 1));
            double tdd = time_job(&j, B->min_s) * 1e3;
            CK("bwd-data mode", cz_backend_dnnl_set_bwd_data_mode(be, 0));
            snprintf(alt, sizeof alt, " (direct %.1f GFLOP/s)", gf / tdd * 1e3);
        }
        j.bwd = 2;
        double tw = time_job(&j, B->min_s) * 1e3;
        printf("%-7s %5d %5d %4d %8.3f %9.3f %8.1f %9.3f %8.1f  %s%s%s%s\n", l->name, l->ci, l->co, l->hin, gf, td,
               gf / td * 1e3, tw, gf / tw * 1e3, form, alt, is_dnnl ? " / " : "",
               is_dnnl ? cz_backend_dnnl_last_impl(be, "conv_bwd_weights") : "");
        fflush(stdout);
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
    fflush(stdout);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench_layers [--backend dnnl|cuda|ref|auto] [--threads N] [--ngf 64] [--size 256] [--depth D]\n"
            "                    [--batch 1,8] [--dtype fp32,bf16] [--min-ms 300] [--pass fwd|bwd|fwd,bwd]\n"
            "                    [--peak-tflops T[,T...]] [--peak-gbps G] [--json | --json-file FILE]\n"
            "                    [--compare 0|1]\n"
            "Per-layer forward (or --pass bwd: backward) timing of the U-Net generator, with roofline columns.\n"
            "  --depth        levels (default 8, fewer when --size is below 256: the innermost is 1x1)\n"
            "  --min-ms       time spent per layer; each figure is the fastest call (backend synced)\n"
            "  --peak-tflops  peak FLOP rate for the roofline: one value, or one per --dtype entry in order\n"
            "  --peak-gbps    peak memory bandwidth for the roofline\n"
            "                 Defaults for --backend cuda (ASSUMED: H200 SXM figures from issue 5): bf16 and\n"
            "                 fp16 %.0f TFLOP/s dense, fp32 %.0f TFLOP/s (non-tensor; TF32 is off unless\n"
            "                 COLORIZE_CUDA_TF32=1), %.0f GB/s; pass your card's own figures otherwise.\n"
            "                 CPU backends have no defaults: roof%% and bound print '-' without both flags.\n"
            "  --json         forward rows (and a \"total\" row) as JSON lines on stdout instead of the table\n"
            "  --json-file    append those JSON lines to FILE, table on stdout\n"
            "  --compare 0    dnnl: skip timing each transposed-conv form separately\n",
            CUDA_PEAK_TFLOPS_TENSOR, CUDA_PEAK_TFLOPS_FP32, CUDA_PEAK_GBPS);
}

/* Fills B->L with the generator's 2*depth convolutions (lab: 1 channel in, 2 out). */
static void build_layers(bench *B) {
    int mult[16];
    for (int d = 0; d < B->depth; d++) mult[d] = d < 3 ? 1 << d : 8;
    B->nl = 0;
    for (int d = 0; d < B->depth; d++) {
        layer *l = &B->L[B->nl++];
        snprintf(l->name, sizeof l->name, "down%d", d);
        l->up = 0;
        l->ci = d ? B->ngf * mult[d - 1] : 1;
        l->co = B->ngf * mult[d];
        l->hin = B->size >> d;
        l->act = d == B->depth - 1 ? CZ_ACT_RELU : CZ_ACT_LRELU; /* feeds the next level / the up ReLU */
    }
    for (int d = B->depth - 1; d >= 0; d--) {
        layer *l = &B->L[B->nl++];
        snprintf(l->name, sizeof l->name, "up%d", d);
        l->up = 1;
        l->ci = d == B->depth - 1 ? B->ngf * mult[d] : 2 * B->ngf * mult[d];
        l->co = d ? B->ngf * mult[d - 1] : 2;
        l->hin = B->size >> (d + 1);
        l->act = d ? CZ_ACT_NONE : CZ_ACT_TANH;
    }
}

int main(int argc, char **argv) {
    bench B;
    memset(&B, 0, sizeof B);
    B.backend = "dnnl";
    B.dtypes = "fp32,bf16";
    B.passes = "fwd";
    B.ngf = 64;
    B.size = 256;
    B.batches[0] = 1;
    B.batches[1] = 8;
    B.nb = 2;
    B.min_s = 0.3;
    B.compare = 1; /* dnnl: time every deconv form too */
    const char *json_file = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--json")) {
            B.json_only = 1;
            continue;
        }
        if (strncmp(a, "--", 2) || i + 1 >= argc) {
            fprintf(stderr, "bench_layers: %s: unknown option or missing value\n", a);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--backend")) B.backend = v;
        else if (!strcmp(a, "--threads")) B.threads = atoi(v);
        else if (!strcmp(a, "--ngf")) B.ngf = atoi(v);
        else if (!strcmp(a, "--size")) B.size = atoi(v);
        else if (!strcmp(a, "--depth")) B.depth = atoi(v);
        else if (!strcmp(a, "--batch")) B.nb = parse_list(v, B.batches, 8);
        else if (!strcmp(a, "--dtype")) B.dtypes = v;
        else if (!strcmp(a, "--min-ms")) B.min_s = atof(v) / 1000.0;
        else if (!strcmp(a, "--compare")) B.compare = atoi(v);
        else if (!strcmp(a, "--pass")) B.passes = v;
        else if (!strcmp(a, "--peak-tflops")) B.npeak_tf = parse_dlist(v, B.peak_tf, 8);
        else if (!strcmp(a, "--peak-gbps")) B.peak_gbps = atof(v);
        else if (!strcmp(a, "--json-file")) json_file = v;
        else {
            fprintf(stderr, "bench_layers: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!B.depth)
        for (B.depth = 8; B.depth > 1 && (B.size >> B.depth) < 1; B.depth--) {}
    int bad = B.ngf < 1 || B.depth < 1 || B.depth > 16 || B.size < 2 || B.size % (1 << B.depth) || B.nb < 1 ||
              B.min_s < 0 || B.peak_gbps < 0;
    for (int i = 0; i < B.nb; i++) bad |= B.batches[i] < 1;
    for (int i = 0; i < B.npeak_tf; i++) bad |= B.peak_tf[i] <= 0;
    if (bad) {
        fprintf(stderr, "bench_layers: bad arguments (ngf >= 1, size a multiple of 2^depth, batches >= 1, "
                        "peaks > 0)\n");
        usage(stderr);
        return 2;
    }
    if (B.json_only) {
        if (json_file) {
            fprintf(stderr, "bench_layers: --json and --json-file exclude each other\n");
            return 2;
        }
        B.jf = stdout;
    } else if (json_file) {
        B.jf = fopen(json_file, "a");
        if (!B.jf) {
            perror(json_file);
            return 1;
        }
    }
    build_layers(&B);

    cz_backend_options opt = {.threads = B.threads};
    CK("backend create", cz_backend_create(B.backend, &opt, &B.be));
    B.is_dnnl = !strcmp(B.be->ops->name, "dnnl");
    if (!B.json_only)
        printf("backend %s, threads %d (0 = default), ngf %d, %dx%d, depth %d, min %.0f ms per figure\n",
               B.be->ops->name, B.threads, B.ngf, B.size, B.size, B.depth, B.min_s * 1e3);
    fflush(stdout);

    char dl[64];
    snprintf(dl, sizeof dl, "%s", B.dtypes);
    int di = 0;
    for (char *dn = strtok(dl, ","); dn; dn = strtok(NULL, ","), di++) {
        int dti = cz_dtype_parse(dn);
        if (dti < 0 || !B.be->ops->supports(B.be, (cz_dtype)dti)) {
            if (!B.json_only) printf("\n%s: not supported by this backend\n", dn);
            continue;
        }
        cz_dtype dt = (cz_dtype)dti;
        if (strstr(B.passes, "bwd") && !B.json_only)
            for (int bi = 0; bi < B.nb; bi++) bench_bwd(&B, dt, B.batches[bi]);
        if (strstr(B.passes, "fwd"))
            for (int bi = 0; bi < B.nb; bi++) bench_fwd(&B, di, dt, B.batches[bi]);
    }
    cz_backend_destroy(B.be);
    if (B.jf && B.jf != stdout) fclose(B.jf);
    return 0;
}
