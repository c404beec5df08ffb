/* bench_stages.c: CPU cost per photo of the stages around the U-Net forward pass, on one core, for
 * deciding whether Lab conversion and ab upsampling should move to the GPU (issue: "Lab/pixel
 * conversion and ab upsampling [on the GPU] if they pay off").
 *
 * What one HTTP worker thread does per photo besides the forward pass, and what is timed here, for
 * each source size (--sizes, default 256x256,1024x768,2048x1536,4000x3000) and for gray (1 channel)
 * and color (3 channel) sources:
 *   jpg dec   cz_image_decode of the source as a JPEG (made first with cz_image_encode, quality 90)
 *   png dec   cz_image_decode of the same source as a PNG (shown beside, not in the total)
 *   prepare   cz_cjob_prepare at --render (default 256): full-resolution Lab L, resize to the
 *             network size, reflect padding; its buffers are allocated inside the call
 *   finish    cz_cjob_finish: scale the predicted ab, crop, bilinear upsample to the source size,
 *             merge with the original L, Lab -> sRGB 8-bit (the output image is allocated inside)
 *   jpg enc   cz_image_encode of finish's RGB output as a JPEG, quality 90
 *   total     jpg dec + prepare + finish + jpg enc (a JPEG in, JPEG out request)
 *   x0.04ms   total / 0.04 ms: how many times the per-image GPU forward budget (about 25,000
 *             images/s at 256x256 on an H200) those CPU stages take on one core
 * The forward pass is NOT run: job.net_out is filled with a smooth synthetic ab pattern in
 * [-0.5, 0.5] (the network's tanh range is [-1, 1]) before finish is timed.
 * Breakdown columns (in parentheses in the header; parts of a stage, not added to the total):
 *   L         cz_image_lightness alone (the per-pixel sRGB -> Lab L of prepare)
 *   merge     cz_render_merge_ab alone (finish minus the ab scaling and its buffer)
 *   lab>rgb   cz_lab_to_srgb8 over every source pixel, with the ab planes already at full
 *             resolution: the per-pixel conversion part of the merge; merge - lab>rgb is the
 *             upsampling (per-pixel tap computation and bilinear interpolation) part
 *   ups       cz_crop_plane + cz_resize_plane of both ab planes to the source size, as a separate
 *             pass into float planes (what a stand-alone upsampling pass costs with the library's
 *             resize; the merge does it fused, per pixel)
 * Each figure is the median wall time of single calls (CLOCK_MONOTONIC), over at least 3 calls
 * and until --min-time seconds (default 0.5) of calls, after one warm-up call. Buffers a call
 * allocates are freed outside the timed region. Single-threaded (libjpeg-turbo, libspng and the
 * image code run on the calling thread). Source images are synthetic and deterministic: smooth
 * gradients plus a little noise (noise makes the codecs work harder than on a flat image, and
 * less than on a busy photo).
 *
 * --json prints one JSON object per row instead of the table (fields engine "colorize", bench
 * "stages", cpu, width, height, channels, render, net_w, net_h, jpeg_bytes, png_bytes, runs_min,
 * the *_ms figures, total_ms, gpu_budget_ms, budget_ratio, forward_run false).
 *
 * Build: tests/bench/CMakeLists.txt, target bench_stages (build-dir/tests/bench/bench_stages).
 * A benchmark prints numbers; it asserts nothing (it exits non-zero only when a call fails). The
 * default build compiles it; no test runs it. The model used is a tiny freshly initialized U-Net
 * (ngf 4, depth 8, lab) on the "ref" backend, written to a temporary file under /tmp that is
 * removed before exit: only its architecture matters here (render validation, channel counts). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "colorize.h"
#include "bench_util.h"
#include "image.h"
#include "safetensors.h"
#include "unet.h"

#define GPU_BUDGET_MS 0.04 /* per-image forward pass target at 256x256 on an H200 */
#define JPEG_QUALITY 90
#define MAX_SIZES 16
#define MAX_RUNS 200000

static char g_weights[64]; /* temporary weights file, removed by cleanup() */

static void cleanup(void) {
    if (g_weights[0]) unlink(g_weights);
    g_weights[0] = 0;
}

/* ---- timing: median of single calls ---- */

typedef enum {
    ST_JPEG_DEC,
    ST_PNG_DEC,
    ST_PREPARE,
    ST_LIGHTNESS,
    ST_FINISH,
    ST_MERGE,
    ST_LAB2RGB,
    ST_UPSAMPLE,
    ST_JPEG_ENC,
    ST_COUNT
} stage;

/* Everything the stages read; each call's own output is freed by the caller of run_stage. */
typedef struct {
    const cz_colorizer *cz;
    const cz_image *src;
    const cz_image_limits *lim;
    int render;
    const uint8_t *jpeg, *png;
    size_t jpeg_len, png_len;
    const cz_cjob *job;    /* prepared, net_out filled */
    const float *ab_net;   /* net_out * 110: ab in Lab units at network resolution */
    const float *a_full;   /* ab upsampled to the source size */
    const float *b_full;
    float *L_scratch;      /* source-size plane for the lightness stage */
    float *crop_scratch;   /* scaled_w * scaled_h */
    float *a_scratch, *b_scratch; /* source-size planes for the upsample stage */
    uint8_t *rgb_scratch;  /* source-size RGB for the lab>rgb stage */
    const cz_image *result; /* finish's output, for the encode stage */
} ctx;

static volatile uint8_t g_sink; /* keeps the lab>rgb loop from being optimized away */

/* One call of stage `s`, timed; returns seconds. */
static double run_stage(const ctx *c, stage s) {
    double t0 = 0, t1 = 0;
    cz_image img;
    memset(&img, 0, sizeof img);
    switch (s) {
    case ST_JPEG_DEC:
    case ST_PNG_DEC: {
        const uint8_t *d = s == ST_JPEG_DEC ? c->jpeg : c->png;
        size_t n = s == ST_JPEG_DEC ? c->jpeg_len : c->png_len;
        t0 = bu_now_s();
        BU_CHECK("cz_image_decode", cz_image_decode(d, n, c->lim, &img, NULL));
        t1 = bu_now_s();
        cz_image_free(&img);
        break;
    }
    case ST_PREPARE: {
        cz_cjob job;
        t0 = bu_now_s();
        BU_CHECK("cz_cjob_prepare", cz_cjob_prepare(c->cz, c->src, c->render, &job));
        t1 = bu_now_s();
        cz_cjob_release(&job);
        break;
    }
    case ST_LIGHTNESS:
        t0 = bu_now_s();
        BU_CHECK("cz_image_lightness", cz_image_lightness(c->src, c->L_scratch));
        t1 = bu_now_s();
        break;
    case ST_FINISH:
        t0 = bu_now_s();
        BU_CHECK("cz_cjob_finish", cz_cjob_finish(c->cz, c->job, &img));
        t1 = bu_now_s();
        cz_image_free(&img);
        break;
    case ST_MERGE:
        t0 = bu_now_s();
        BU_CHECK("cz_render_merge_ab", cz_render_merge_ab(c->job->L_full, c->ab_net, &c->job->geom, &img));
        t1 = bu_now_s();
        cz_image_free(&img);
        break;
    case ST_LAB2RGB: {
        const cz_render_geom *g = &c->job->geom;
        size_t n = (size_t)g->src_w * g->src_h;
        const float *L = c->job->L_full;
        t0 = bu_now_s();
        for (size_t i = 0; i < n; i++) {
            float lab[3] = {L[i], c->a_full[i], c->b_full[i]};
            cz_lab_to_srgb8(lab, c->rgb_scratch + 3 * i);
        }
        t1 = bu_now_s();
        g_sink = c->rgb_scratch[3 * (n / 2)];
        break;
    }
    case ST_UPSAMPLE: {
        const cz_render_geom *g = &c->job->geom;
        size_t plane = (size_t)g->net_w * g->net_h;
        t0 = bu_now_s();
        cz_crop_plane(c->ab_net, g->net_w, c->crop_scratch, g->scaled_w, g->scaled_h, g->off_x, g->off_y);
        cz_resize_plane(c->crop_scratch, g->scaled_w, g->scaled_h, c->a_scratch, g->src_w, g->src_h);
        cz_crop_plane(c->ab_net + plane, g->net_w, c->crop_scratch, g->scaled_w, g->scaled_h, g->off_x,
                      g->off_y);
        cz_resize_plane(c->crop_scratch, g->scaled_w, g->scaled_h, c->b_scratch, g->src_w, g->src_h);
        t1 = bu_now_s();
        break;
    }
    case ST_JPEG_ENC: {
        uint8_t *out = NULL;
        size_t len = 0;
        t0 = bu_now_s();
        BU_CHECK("cz_image_encode", cz_image_encode(c->result, CZ_FMT_JPEG, JPEG_QUALITY, &out, &len));
        t1 = bu_now_s();
        free(out);
        break;
    }
    default:
        break;
    }
    return t1 - t0;
}

/* Median ms of single calls: one warm-up, then at least 3 calls and until min_s of calls. */
static double time_stage(const ctx *c, stage s, double min_s, double *scratch, int *runs) {
    run_stage(c, s);
    double spent = 0;
    int n = 0;
    while (n < 3 || (spent < min_s && n < MAX_RUNS)) {
        double t = run_stage(c, s);
        scratch[n++] = t;
        spent += t;
    }
    if (runs) *runs = n;
    return bu_median(scratch, n) * 1e3;
}

/* ---- inputs ---- */

/* Deterministic test picture: per-channel gradients in different directions, a soft radial
 * shape, and uniform noise of +-6 levels. */
static void synth_image(cz_image *img, int w, int h, int ch, uint64_t seed) {
    BU_CHECK("cz_image_alloc", cz_image_alloc(img, w, h, ch));
    uint64_t s = seed;
    for (int y = 0; y < h; y++) {
        double fy = (double)y / (h > 1 ? h - 1 : 1);
        for (int x = 0; x < w; x++) {
            double fx = (double)x / (w > 1 ? w - 1 : 1);
            double r = sqrt((fx - 0.6) * (fx - 0.6) + (fy - 0.4) * (fy - 0.4));
            double blob = 60.0 * cos(9.0 * r);
            uint64_t z = bu_rng(&s);
            uint8_t *p = img->px + ((size_t)y * w + x) * ch;
            if (ch == 1) {
                p[0] = bu_clamp8((int)(40 + 150 * fx + 30 * fy + blob) + (int)(z % 13) - 6);
            } else {
                p[0] = bu_clamp8((int)(30 + 180 * fx + blob) + (int)(z % 13) - 6);
                p[1] = bu_clamp8((int)(50 + 150 * fy + 0.5 * blob) + (int)((z >> 8) % 13) - 6);
                p[2] = bu_clamp8((int)(200 - 120 * fx * fy - blob) + (int)((z >> 16) % 13) - 6);
            }
        }
    }
}

/* Smooth ab in [-0.5, 0.5] in place of the forward pass output. */
static void fill_ab(cz_cjob *job) {
    int w = job->geom.net_w, h = job->geom.net_h;
    size_t plane = (size_t)w * h;
    const double two_pi = 6.283185307179586;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double u = (double)x / w, v = (double)y / h;
            job->net_out[(size_t)y * w + x] = (float)(0.5 * sin(two_pi * (u + 0.3 * v)));
            job->net_out[plane + (size_t)y * w + x] = (float)(0.5 * cos(two_pi * (0.7 * v - 0.4 * u)));
        }
}

static char *write_weights(void) {
    cz_unet_arch a = cz_unet_arch_default(4, CZ_COLOR_LAB);
    a.depth = 8;
    cz_st_writer *w = NULL;
    BU_CHECK("cz_st_writer_create", cz_st_writer_create(&w));
    BU_CHECK("cz_unet_init_weights", cz_unet_init_weights(&a, 1, w));
    snprintf(g_weights, sizeof g_weights, "/tmp/cz_bench_stages_XXXXXX");
    int fd = mkstemp(g_weights);
    if (fd < 0) {
        perror("bench_stages: mkstemp");
        g_weights[0] = 0;
        exit(1);
    }
    close(fd);
    BU_CHECK("cz_st_writer_save", cz_st_writer_save(w, g_weights));
    cz_st_writer_destroy(w);
    return g_weights;
}

/* JSON string body: the CPU name with quotes and backslashes escaped. */
static void json_escape(const char *in, char *out, size_t n) {
    size_t j = 0;
    for (; *in && j + 2 < n; in++) {
        if (*in == '"' || *in == '\\') out[j++] = '\\';
        out[j++] = (char)((unsigned char)*in < 0x20 ? ' ' : *in);
    }
    out[j] = 0;
}

/* ---- one row ---- */

typedef struct {
    double min_s;
    int render, json;
    const char *cpu;
    const cz_colorizer *cz;
    const cz_image_limits *lim;
    double *scratch;
} opts;

static void bench_row(const opts *o, int w, int h, int ch) {
    cz_image src;
    synth_image(&src, w, h, ch, 0x5eedull + (uint64_t)w * 31 + (uint64_t)h * 7 + (uint64_t)ch);
    ctx c;
    memset(&c, 0, sizeof c);
    c.cz = o->cz;
    c.src = &src;
    c.lim = o->lim;
    c.render = o->render;
    uint8_t *jpeg = NULL, *png = NULL;
    BU_CHECK("cz_image_encode jpeg", cz_image_encode(&src, CZ_FMT_JPEG, JPEG_QUALITY, &jpeg, &c.jpeg_len));
    BU_CHECK("cz_image_encode png", cz_image_encode(&src, CZ_FMT_PNG, 0, &png, &c.png_len));
    c.jpeg = jpeg;
    c.png = png;

    cz_cjob job;
    BU_CHECK("cz_cjob_prepare", cz_cjob_prepare(o->cz, &src, o->render, &job));
    fill_ab(&job);
    c.job = &job;
    const cz_render_geom *g = &job.geom;
    size_t full = (size_t)w * h, net = (size_t)g->net_w * g->net_h;
    float *ab_net = bu_xmalloc(2 * net * sizeof(float));
    for (size_t i = 0; i < 2 * net; i++) ab_net[i] = job.net_out[i] * 110.0f; /* colorize.c's AB_SCALE */
    c.ab_net = ab_net;
    c.L_scratch = bu_xmalloc(full * sizeof(float));
    c.crop_scratch = bu_xmalloc((size_t)g->scaled_w * g->scaled_h * sizeof(float));
    c.a_scratch = bu_xmalloc(full * sizeof(float));
    c.b_scratch = bu_xmalloc(full * sizeof(float));
    c.rgb_scratch = bu_xmalloc(full * 3);
    /* full-resolution ab for the lab>rgb stage: one upsample pass made now, untimed */
    float *a_full = bu_xmalloc(full * sizeof(float)), *b_full = bu_xmalloc(full * sizeof(float));
    run_stage(&c, ST_UPSAMPLE);
    memcpy(a_full, c.a_scratch, full * sizeof(float));
    memcpy(b_full, c.b_scratch, full * sizeof(float));
    c.a_full = a_full;
    c.b_full = b_full;
    cz_image result;
    BU_CHECK("cz_cjob_finish", cz_cjob_finish(o->cz, &job, &result));
    c.result = &result;

    double ms[ST_COUNT];
    int runs_min = MAX_RUNS;
    for (int s = 0; s < ST_COUNT; s++) {
        int runs = 0;
        ms[s] = time_stage(&c, (stage)s, o->min_s, o->scratch, &runs);
        if (runs < runs_min) runs_min = runs;
    }
    double total = ms[ST_JPEG_DEC] + ms[ST_PREPARE] + ms[ST_FINISH] + ms[ST_JPEG_ENC];
    double ratio = total / GPU_BUDGET_MS;
    if (o->json) {
        char cpu[256];
        json_escape(o->cpu, cpu, sizeof cpu);
        printf("{\"engine\":\"colorize\",\"bench\":\"stages\",\"cpu\":\"%s\",\"width\":%d,\"height\":%d,"
               "\"channels\":%d,\"render\":%d,\"net_w\":%d,\"net_h\":%d,\"jpeg_bytes\":%zu,\"png_bytes\":%zu,"
               "\"runs_min\":%d,\"jpeg_decode_ms\":%.6g,\"png_decode_ms\":%.6g,\"prepare_ms\":%.6g,"
               "\"lightness_ms\":%.6g,\"finish_ms\":%.6g,\"merge_ab_ms\":%.6g,\"lab_to_srgb_ms\":%.6g,"
               "\"upsample_ms\":%.6g,\"jpeg_encode_ms\":%.6g,\"total_ms\":%.6g,\"gpu_budget_ms\":%g,"
               "\"budget_ratio\":%.6g,\"forward_run\":false}\n",
               cpu, w, h, ch, o->render, g->net_w, g->net_h, c.jpeg_len, c.png_len, runs_min, ms[ST_JPEG_DEC],
               ms[ST_PNG_DEC], ms[ST_PREPARE], ms[ST_LIGHTNESS], ms[ST_FINISH], ms[ST_MERGE], ms[ST_LAB2RGB],
               ms[ST_UPSAMPLE], ms[ST_JPEG_ENC], total, GPU_BUDGET_MS, ratio);
    } else {
        char size[24];
        snprintf(size, sizeof size, "%dx%d", w, h);
        printf("%-10s %2d %7.0f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %9.3f %8.0f\n", size, ch,
               c.jpeg_len / 1024.0, ms[ST_JPEG_DEC], ms[ST_PNG_DEC], ms[ST_PREPARE], ms[ST_LIGHTNESS],
               ms[ST_FINISH], ms[ST_MERGE], ms[ST_LAB2RGB], ms[ST_UPSAMPLE], ms[ST_JPEG_ENC], total, ratio);
    }
    fflush(stdout);

    cz_image_free(&result);
    free(a_full);
    free(b_full);
    free(c.rgb_scratch);
    free(c.b_scratch);
    free(c.a_scratch);
    free(c.crop_scratch);
    free(c.L_scratch);
    free(ab_net);
    cz_cjob_release(&job);
    free(png);
    free(jpeg);
    cz_image_free(&src);
}

/* ---- command line ---- */

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench_stages [--sizes WxH[,WxH...]] [--channels 1,3] [--render 256] [--min-time 0.5] [--json]\n"
            "  --sizes     source sizes (default 256x256,1024x768,2048x1536,4000x3000)\n"
            "  --channels  1 (gray), 3 (color) or both (default 1,3)\n"
            "  --render    long side the network sees, a multiple of 256 here (default 256)\n"
            "  --min-time  seconds of timed calls per figure, at least 3 calls (default 0.5)\n"
            "  --json      one JSON object per row instead of the table\n"
            "Times per image on one core, median of single calls, ms. The forward pass is not run.\n");
}

static int parse_sizes(const char *v, int *ws, int *hs, int cap) {
    int n = 0;
    while (*v && n < cap) {
        char *end;
        long w = strtol(v, &end, 10);
        if (end == v || (*end != 'x' && *end != 'X')) return -1;
        v = end + 1;
        long h = strtol(v, &end, 10);
        if (end == v || w < 1 || h < 1 || w > 65535 || h > 65535) return -1;
        ws[n] = (int)w;
        hs[n] = (int)h;
        n++;
        v = end;
        if (*v == ',') v++;
        else if (*v) return -1;
    }
    return *v ? -1 : n;
}

int main(int argc, char **argv) {
    bu_init("bench_stages", cleanup);
    int ws[MAX_SIZES] = {256, 1024, 2048, 4000}, hs[MAX_SIZES] = {256, 768, 1536, 3000}, nsizes = 4;
    int chans[2] = {1, 3}, nch = 2;
    opts o;
    memset(&o, 0, sizeof o);
    o.min_s = 0.5;
    o.render = 256;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--json")) {
            o.json = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "bench_stages: %s: unknown option or missing value\n", a);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--sizes")) {
            nsizes = parse_sizes(v, ws, hs, MAX_SIZES);
        } else if (!strcmp(a, "--channels")) {
            if (!strcmp(v, "1")) chans[0] = 1, nch = 1;
            else if (!strcmp(v, "3")) chans[0] = 3, nch = 1;
            else if (!strcmp(v, "1,3")) nch = 2;
            else nch = 0;
        } else if (!strcmp(a, "--render")) {
            o.render = atoi(v);
        } else if (!strcmp(a, "--min-time")) {
            o.min_s = atof(v);
        } else {
            fprintf(stderr, "bench_stages: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (nsizes < 1 || nch < 1 || o.min_s < 0 || !(o.min_s <= 3600)) {
        fprintf(stderr, "bench_stages: bad arguments\n");
        usage(stderr);
        return 2;
    }

    char cpu[256];
    bu_cpu_model(cpu, sizeof cpu);
    o.cpu = cpu;
    cz_image_limits lim;
    cz_image_limits_default(&lim);
    o.lim = &lim;
    o.scratch = bu_xmalloc(MAX_RUNS * sizeof(double));

    cz_backend *be = NULL;
    BU_CHECK("cz_backend_create(ref)", cz_backend_create("ref", NULL, &be));
    const char *wpath = write_weights();
    cz_colorizer_opts copt = {.max_batch = 1, .precision = CZ_F32};
    cz_colorizer *cz = NULL;
    BU_CHECK("cz_colorizer_create", cz_colorizer_create(be, wpath, &copt, &cz));
    cleanup(); /* the colorizer has read the file */
    BU_CHECK("--render", cz_render_validate(cz, o.render));
    o.cz = cz;

    if (!o.json) {
        printf("== CPU stages per image, one core, %s; render %d; median of single calls, ms ==\n", cpu, o.render);
        printf("forward pass NOT run: net_out is a synthetic smooth ab pattern in [-0.5, 0.5]\n");
        printf("total = jpg dec + prepare + finish + jpg enc; (columns) are parts of a stage, not in the total;\n"
               "x0.04ms = total / %.2f ms, the per-image GPU forward budget (25,000 images/s at 256x256)\n",
               GPU_BUDGET_MS);
        printf("%-10s %2s %7s %8s %8s %8s %8s %8s %8s %8s %8s %8s %9s %8s\n", "size", "ch", "jpg KB", "jpg dec",
               "png dec", "prepare", "(L)", "finish", "(merge)", "(lab>rgb)", "(ups)", "jpg enc", "total", "x0.04ms");
    }
    for (int si = 0; si < nsizes; si++)
        for (int ci = 0; ci < nch; ci++) bench_row(&o, ws[si], hs[si], chans[ci]);

    cz_colorizer_destroy(cz);
    cz_backend_destroy(be);
    free(o.scratch);
    (void)g_sink;
    return 0;
}
