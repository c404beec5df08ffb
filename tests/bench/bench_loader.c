/* bench_loader.c: training samples per second the data loader (core/dataset.c) delivers, per
 * number of decode worker threads, to set against how fast the GPU trains (the H200 target is
 * about 3,300 images/s at batch 64, 256x256: the loader must keep up with that).
 *
 * Setup: a temporary directory /tmp/cz_bench_loader_XXXXXX (mkdtemp) receives --files
 * synthetic colour photos of --size pixels, written as JPEG quality 90 with cz_image_encode.
 * They are deterministic (smooth per-channel gradients, a soft radial shape and +-6 levels of
 * noise, a different seed per file) and colourful, so the loader's grayscale test keeps them.
 * The directory and its files are removed before exit, also when a call fails.
 *
 * What is timed, for each worker count in --workers:
 *   cz_dataset_open on the directory (lab mode, S = --image-size, B = --batch, val_fraction 0
 *   so every file is a training file, default ring of 4 x B samples, --cache-mb), one warm-up
 *   cz_dataset_next_batch (untimed: the workers start cold; with --cache-mb, a whole epoch's
 *   batches, so that what is timed comes from the cache), then cz_dataset_next_batch calls
 *   until at least --min-time seconds AND at least --min-batches batches have been served.
 *   Each sample is a full trip through the loader: read the file, JPEG decode (at a reduced
 *   DCT scale when the photo is large), grayscale test, stretch to 8-bit load x load (286 for
 *   S = 256), S x S crop, flip and sRGB -> Lab, plus the consumer's copy into the batch; from the
 *   cache, only the crop, flip, Lab and copy.
 *     samples/s      samples served / wall time of the timed calls (CLOCK_MONOTONIC)
 *     ms/smp/worker  workers / (samples/s) * 1000: the CPU time one sample costs a worker,
 *                    when the workers are the bottleneck and each has a core of its own
 *     waits          consumer_waits (cz_dataset_get_stats) during the timed calls only: how
 *                    many samples the consumer had to block for (0: the workers were ahead)
 *     skipped        files the loader skipped (unreadable or grayscale); must be 0, the
 *                    program fails otherwise since the figure would then be wrong
 * Parts (on the calling thread, median of single calls after one warm-up call, at least 5
 * calls and until 0.3 s of calls; shown once, not per row, not added to anything):
 *   jpg dec    cz_image_decode_reduced of the first synthetic file with the loader's floor of
 *              2 x load (its size is printed: 1/2, 1/4 or 1/8 scale, or full size)
 *   stretch    cz_resize_rgb8 of that decode to load x load (load = S * 286 / 256)
 *   lab        cz_srgb8_row_to_lab_f over S rows of S pixels (one sample's colour conversion)
 * What a sample costs beyond these: reading the file, the grayscale test, crop and flip, the
 * normalization into the batch.
 *
 * Options: --files N (32), --size WxH (1024x768), --workers LIST (1,2), --image-size S (256),
 * --batch B (16), --min-time SECONDS (2), --min-batches N (8), --cache-mb MIB (0), --json (one JSON object per row
 * instead of the table; fields engine "colorize", bench "loader", cpu, workers, files, width,
 * height, image_size, batch, samples_per_s, ms_per_sample_per_worker, consumer_waits, and also
 * batches, seconds, jpeg_decode_ms, decoded_width, decoded_height, stretch_ms, lab_ms, cache_mb).
 *
 * Build: tests/bench/CMakeLists.txt, target bench_loader (build-dir/tests/bench/bench_loader).
 * A benchmark prints numbers; it asserts nothing (it exits non-zero only when a call fails or
 * a file was skipped). The default build compiles it; no test runs it. With more workers than
 * free cores the workers, the consumer and anything else running share the CPUs, and the
 * figures say so rather than what the loader could do on a larger machine. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <unistd.h>

#include "dataset.h"
#include "bench_util.h"
#include "image.h"
#include "log.h"

#define JPEG_QUALITY 90
#define MAX_WORKER_COUNTS 16
#define MAX_FILES 100000
#define PART_RUNS 1000
#define PART_MIN_S 0.3

/* ---- temporary directory, removed by cleanup() ---- */

static char g_dir[64];
static int g_nfiles; /* files written so far: photo_00000.jpg .. */

static void file_path(char *buf, size_t n, int i) {
    snprintf(buf, n, "%s/photo_%05d.jpg", g_dir, i);
}

static void cleanup(void) {
    if (!g_dir[0]) return;
    char p[96];
    for (int i = 0; i < g_nfiles; i++) {
        file_path(p, sizeof p, i);
        unlink(p);
    }
    g_nfiles = 0;
    rmdir(g_dir);
    g_dir[0] = 0;
}

/* ---- synthetic photos ---- */

/* Deterministic colour picture: per-channel gradients in different directions, a soft radial
 * shape whose centre moves with the seed, and uniform noise of +-6 levels. */
static void synth_image(cz_image *img, int w, int h, uint64_t seed) {
    BU_CHECK("cz_image_alloc", cz_image_alloc(img, w, h, 3));
    uint64_t s = seed;
    const double cx = 0.3 + 0.4 * (double)(bu_rng(&s) % 1000) / 1000.0;
    const double cy = 0.3 + 0.4 * (double)(bu_rng(&s) % 1000) / 1000.0;
    for (int y = 0; y < h; y++) {
        double fy = (double)y / (h > 1 ? h - 1 : 1);
        for (int x = 0; x < w; x++) {
            double fx = (double)x / (w > 1 ? w - 1 : 1);
            double r = sqrt((fx - cx) * (fx - cx) + (fy - cy) * (fy - cy));
            double blob = 60.0 * cos(9.0 * r);
            uint64_t z = bu_rng(&s);
            uint8_t *p = img->px + ((size_t)y * w + x) * 3;
            p[0] = bu_clamp8((int)(30 + 180 * fx + blob) + (int)(z % 13) - 6);
            p[1] = bu_clamp8((int)(50 + 150 * fy + 0.5 * blob) + (int)((z >> 8) % 13) - 6);
            p[2] = bu_clamp8((int)(200 - 120 * fx * fy - blob) + (int)((z >> 16) % 13) - 6);
        }
    }
}

static void write_file(const char *path, const uint8_t *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        if (f) fclose(f);
        fprintf(stderr, "bench_loader: cannot write %s\n", path);
        unlink(path);
        cleanup();
        exit(1);
    }
}

/* Writes the photos; keeps the first one's JPEG bytes in *first (caller frees). */
static void make_files(int nfiles, int w, int h, uint8_t **first, size_t *first_len) {
    snprintf(g_dir, sizeof g_dir, "/tmp/cz_bench_loader_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("bench_loader: mkdtemp");
        g_dir[0] = 0;
        exit(1);
    }
    for (int i = 0; i < nfiles; i++) {
        cz_image img;
        synth_image(&img, w, h, 0x10ad5eedull + 7919ull * (uint64_t)i);
        uint8_t *jpeg = NULL;
        size_t len = 0;
        cz_status s = cz_image_encode(&img, CZ_FMT_JPEG, JPEG_QUALITY, &jpeg, &len);
        cz_image_free(&img);
        if (s != CZ_OK) bu_fail("cz_image_encode", s);
        char p[96];
        file_path(p, sizeof p, i);
        g_nfiles = i + 1; /* count it before writing so cleanup() removes a partial file */
        write_file(p, jpeg, len);
        if (i == 0) {
            *first = jpeg;
            *first_len = len;
        } else {
            free(jpeg);
        }
    }
}

/* ---- parts: median of single calls ---- */

static double median_ms(double *t, int n) { return 1e3 * bu_median(t, n); }

typedef struct {
    const uint8_t *jpeg;
    size_t len;
    const cz_image_limits *lim;
    int floor;          /* the decode's 2 x load floor */
    const cz_image *photo; /* the reduced decode, for stretch */
    uint8_t *stretched; /* load x load x 3 */
    int load, S;
    float *lab;         /* 3 x S x S */
} part_ctx;

static void part_decode(part_ctx *c) {
    cz_image img;
    memset(&img, 0, sizeof img);
    BU_CHECK("cz_image_decode_reduced", cz_image_decode_reduced(c->jpeg, c->len, c->lim, c->floor, &img, NULL));
    cz_image_free(&img);
}

static void part_stretch(part_ctx *c) {
    BU_CHECK("cz_resize_rgb8",
             cz_resize_rgb8(c->photo->px, c->photo->width, c->photo->height, c->stretched, c->load, c->load));
}

static void part_lab(part_ctx *c) {
    float *L = c->lab, *a = L + (size_t)c->S * c->S, *b = a + (size_t)c->S * c->S;
    for (int y = 0; y < c->S; y++) /* the sample's rows: the top-left S x S of the stretched image */
        cz_srgb8_row_to_lab_f(c->stretched + (size_t)y * c->load * 3, (size_t)c->S, L + (size_t)y * c->S,
                            a + (size_t)y * c->S, b + (size_t)y * c->S);
}

/* Median of single calls of fn, after one warm-up call: at least 5, until PART_MIN_S seconds. */
static double time_part(void (*fn)(part_ctx *), part_ctx *c, double *t) {
    int n = 0;
    double spent = 0;
    for (int k = -1; k < 5 || (spent < PART_MIN_S && k < PART_RUNS); k++) { /* k = -1: warm-up */
        double t0 = bu_now_s();
        fn(c);
        double dt = bu_now_s() - t0;
        if (k < 0) continue;
        t[n++] = dt;
        spent += dt;
    }
    return median_ms(t, n);
}

/* ---- one row ---- */

typedef struct {
    int files, width, height, image_size, batch, min_batches, json;
    double min_s;
    const char *cpu;
    int cache_mb;
    double dec_ms, stretch_ms, lab_ms;
    int dec_w, dec_h; /* the reduced decode's size */
} opts;

static void bench_row(const opts *o, int workers) {
    cz_dataset_config cfg;
    cz_dataset_config_default(&cfg);
    cfg.root = g_dir;
    cfg.val_fraction = 0.0; /* allowed by check_config: every file is a training file */
    cfg.mode = CZ_COLOR_LAB;
    cfg.image_size = o->image_size;
    cfg.batch_size = o->batch;
    cfg.workers = workers;
    cfg.seed = 1;
    cfg.cache_bytes = (size_t)o->cache_mb << 20;
    cz_dataset *ds = NULL;
    BU_CHECK("cz_dataset_open", cz_dataset_open(&cfg, &ds));
    if (cz_dataset_train_count(ds) != (size_t)o->files) {
        fprintf(stderr, "bench_loader: %zu training files listed, %d written\n", cz_dataset_train_count(ds),
                o->files);
        cz_dataset_destroy(ds);
        cleanup();
        exit(1);
    }
    cz_batch b;
    cz_status s = cz_dataset_batch_alloc(ds, &b);
    if (s != CZ_OK) {
        cz_dataset_destroy(ds);
        bu_fail("cz_dataset_batch_alloc", s);
    }
    /* warm-up: one batch (the workers start cold), or with the cache a whole epoch, so that the
     * timed batches are made from it */
    const int warm = o->cache_mb ? (o->files + o->batch - 1) / o->batch : 1;
    s = CZ_OK;
    for (int k = 0; k < warm && s == CZ_OK; k++) s = cz_dataset_next_batch(ds, &b);
    cz_dataset_stats st0, st1;
    cz_dataset_get_stats(ds, &st0);
    const double t0 = bu_now_s();
    double t1 = t0;
    uint64_t batches = 0;
    while (s == CZ_OK && (batches < (uint64_t)o->min_batches || t1 - t0 < o->min_s)) {
        s = cz_dataset_next_batch(ds, &b);
        t1 = bu_now_s();
        batches += s == CZ_OK;
    }
    cz_dataset_get_stats(ds, &st1);
    cz_batch_free(&b);
    cz_dataset_destroy(ds);
    if (s != CZ_OK) bu_fail("cz_dataset_next_batch", s);

    const size_t skipped = st1.skipped_unreadable + st1.skipped_gray;
    const double secs = t1 - t0;
    const uint64_t samples = st1.samples_served - st0.samples_served;
    const double rate = secs > 0 ? (double)samples / secs : 0.0;
    const double ms_worker = rate > 0 ? (double)workers / rate * 1e3 : 0.0;
    const uint64_t waits = st1.consumer_waits - st0.consumer_waits;
    if (o->json) {
        char cpu[512];
        cz_json_escape(cpu, (int)sizeof cpu, o->cpu);
        printf("{\"engine\":\"colorize\",\"bench\":\"loader\",\"cpu\":\"%s\",\"workers\":%d,\"files\":%d,"
               "\"width\":%d,\"height\":%d,\"image_size\":%d,\"batch\":%d,\"samples_per_s\":%.6g,"
               "\"ms_per_sample_per_worker\":%.6g,\"consumer_waits\":%llu,\"batches\":%llu,\"seconds\":%.6g,"
               "\"jpeg_decode_ms\":%.6g,\"decoded_width\":%d,\"decoded_height\":%d,\"stretch_ms\":%.6g,"
               "\"lab_ms\":%.6g,\"cache_mb\":%d}\n",
               cpu, workers, o->files, o->width, o->height, o->image_size, o->batch, rate, ms_worker,
               (unsigned long long)waits, (unsigned long long)batches, secs, o->dec_ms, o->dec_w, o->dec_h,
               o->stretch_ms, o->lab_ms, o->cache_mb);
    } else {
        printf("%7d %10.1f %14.3f %8llu %8llu %8.2f %8zu\n", workers, rate, ms_worker, (unsigned long long)waits,
               (unsigned long long)batches, secs, skipped);
    }
    fflush(stdout);
    if (skipped) {
        fprintf(stderr,
                "bench_loader: the loader skipped %zu file(s) (%zu unreadable, %zu grayscale): "
                "the figures above are not valid\n",
                skipped, st1.skipped_unreadable, st1.skipped_gray);
        cleanup();
        exit(1);
    }
}

/* ---- command line ---- */

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench_loader [--files 32] [--size 1024x768] [--workers 1,2] [--image-size 256] [--batch 16]\n"
            "                    [--min-time 2] [--min-batches 8] [--cache-mb 0] [--json]\n"
            "  --files        synthetic JPEG photos written to a temporary directory (default 32)\n"
            "  --size         their size, WxH (default 1024x768)\n"
            "  --workers      comma-separated worker thread counts, one row each, 1..64 (default 1,2)\n"
            "  --image-size   S, the training crop (default 256; load size round(S * 286 / 256))\n"
            "  --batch        batch size (default 16)\n"
            "  --min-time     seconds of timed batches per row (default 2)\n"
            "  --min-batches  timed batches per row, at least (default 8)\n"
            "  --cache-mb     the loader's photo cache (cz_dataset_config.cache_bytes; colorize train's\n"
            "                 default is 1024): with room for every file, the rows after the warm-up\n"
            "                 epoch time samples made from the cache (default 0: every sample decodes)\n"
            "  --json         one JSON object per row instead of the table\n"
            "Training samples per second the data loader delivers, per worker count.\n");
}

/* Whole decimal number in [lo, hi]; -1 when malformed or out of range. */
static long parse_int(const char *v, long lo, long hi) {
    char *end;
    long x = strtol(v, &end, 10);
    return end == v || *end || x < lo || x > hi ? -1 : x;
}

static int parse_list(const char *v, int *out, int cap) {
    int n = 0;
    while (*v) {
        char *end;
        long x = strtol(v, &end, 10);
        if (end == v || x < 1 || x > 64 || n == cap) return -1;
        out[n++] = (int)x;
        v = end;
        if (*v == ',') v++;
        else if (*v) return -1;
    }
    return n;
}

static int parse_size(const char *v, int *w, int *h) {
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || (*end != 'x' && *end != 'X')) return -1;
    v = end + 1;
    long y = strtol(v, &end, 10);
    if (end == v || *end || x < 1 || y < 1 || x > 16384 || y > 16384) return -1;
    *w = (int)x;
    *h = (int)y;
    return 0;
}

int main(int argc, char **argv) {
    bu_init("bench_loader", cleanup);
    int wl[MAX_WORKER_COUNTS] = {1, 2}, nw = 2;
    opts o;
    memset(&o, 0, sizeof o);
    o.files = 32;
    o.width = 1024;
    o.height = 768;
    o.image_size = 256;
    o.batch = 16;
    o.min_s = 2.0;
    o.min_batches = 8;
    int bad = 0;
    for (int i = 1; i < argc && !bad; i++) {
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
            fprintf(stderr, "bench_loader: %s: unknown option or missing value\n", a);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        long x = 0;
        if (!strcmp(a, "--files")) {
            bad = (x = parse_int(v, 1, MAX_FILES)) < 0;
            o.files = (int)x;
        } else if (!strcmp(a, "--size")) {
            bad = parse_size(v, &o.width, &o.height) != 0;
        } else if (!strcmp(a, "--workers")) {
            bad = (nw = parse_list(v, wl, MAX_WORKER_COUNTS)) < 1;
        } else if (!strcmp(a, "--image-size")) {
            bad = (x = parse_int(v, 8, 4096)) < 0;
            o.image_size = (int)x;
        } else if (!strcmp(a, "--batch")) {
            bad = (x = parse_int(v, 1, 4096)) < 0;
            o.batch = (int)x;
        } else if (!strcmp(a, "--min-time")) {
            char *end;
            o.min_s = strtod(v, &end);
            bad = end == v || *end || !(o.min_s >= 0 && o.min_s <= 3600);
        } else if (!strcmp(a, "--min-batches")) {
            bad = (x = parse_int(v, 1, 1000000)) < 0;
            o.min_batches = (int)x;
        } else if (!strcmp(a, "--cache-mb")) {
            bad = (x = parse_int(v, 0, 1 << 20)) < 0;
            o.cache_mb = (int)x;
        } else {
            fprintf(stderr, "bench_loader: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (bad) {
        fprintf(stderr, "bench_loader: bad option value\n");
        usage(stderr);
        return 2;
    }
    cz_log_set_level(CZ_LOG_WARN); /* keep the loader's info lines out; skip warnings still show */

    char cpu[256];
    bu_cpu_model(cpu, sizeof cpu);
    o.cpu = cpu;
    const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    cz_image_limits lim;
    cz_image_limits_default(&lim);

    uint8_t *first = NULL;
    size_t first_len = 0;
    make_files(o.files, o.width, o.height, &first, &first_len);
    const int load = (o.image_size * 286 + 128) / 256; /* dataset.h: the loader's stretch size */
    double *t = bu_xmalloc((PART_RUNS + 8) * sizeof(double));
    cz_image photo;
    BU_CHECK("cz_image_decode_reduced", cz_image_decode_reduced(first, first_len, &lim, 2 * load, &photo, NULL));
    part_ctx pc = {first, first_len, &lim, 2 * load, &photo, bu_xmalloc(3 * (size_t)load * load), load,
                   o.image_size, bu_xmalloc(3 * (size_t)o.image_size * o.image_size * sizeof(float))};
    o.dec_w = photo.width;
    o.dec_h = photo.height;
    o.dec_ms = time_part(part_decode, &pc, t);
    o.stretch_ms = time_part(part_stretch, &pc, t);
    o.lab_ms = time_part(part_lab, &pc, t);
    cz_image_free(&photo);
    free(pc.stretched);
    free(pc.lab);
    free(t);
    free(first);

    if (!o.json) {
        printf("== training data loader (core/dataset.c), %s, %ld online CPUs ==\n", cpu, ncpu);
        printf("%d synthetic colour JPEGs (q%d) of %dx%d; lab mode, S %d (load %d), batch %d; wall clock,\n"
               "%s, then >= %.3g s and >= %d batches per row\n",
               o.files, JPEG_QUALITY, o.width, o.height, o.image_size, load, o.batch,
               o.cache_mb ? "photo cache on (--cache-mb), one warm-up epoch" : "no photo cache, one warm-up batch",
               o.min_s, o.min_batches);
        printf("parts, one core, median of single calls (not per row): jpg dec at %dx%d %.3f ms, "
               "stretch to %dx%d %.3f ms, lab of %dx%d %.3f ms\n",
               o.dec_w, o.dec_h, o.dec_ms, load, load, o.stretch_ms, o.image_size, o.image_size, o.lab_ms);
        printf("ms/smp/worker = workers / (samples/s) * 1000; waits = consumer_waits in the timed batches\n");
        printf("%7s %10s %14s %8s %8s %8s %8s\n", "workers", "samples/s", "ms/smp/worker", "waits", "batches",
               "seconds", "skipped");
    }
    for (int i = 0; i < nw; i++) bench_row(&o, wl[i]);

    cleanup();
    return 0;
}
