/* cmd_colorize.c: `colorize FILE...`: decode each file, group prepared jobs by network size,
 * run full batches through the model, then finish, encode and write each output atomically.
 * A file that fails (unreadable, corrupt, too large) is reported and skipped; the exit status
 * is 0 only when every file succeeded. At most max_batch prepared jobs per network size are
 * held in memory at once. */
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend.h"
#include "cli.h"
#include "colorize.h"
#include "fileio.h"
#include "host_pool.h"
#include "image.h"
#include "log.h"

typedef struct pending {
    cz_cjob job;
    const char *in_path;
    char *out_path;
    cz_image_format out_fmt;
} pending;

typedef struct group {
    int net_w, net_h, n;
    pending *items; /* max_batch slots */
} group;

typedef struct run_ctx {
    cz_colorizer *cz;
    const cz_config *cfg;
    cli_progress prog;
    int failures;
    group groups[8];
    int ngroups;
    int max_batch;
} run_ctx;

static void report(run_ctx *r, const char *path, const char *msg) {
    if (r->prog.enabled) fputs("\r\033[K", stderr);
    fprintf(stderr, "colorize: %s: %s\n", path, msg);
    r->failures++;
}

static void finish_one(run_ctx *r, pending *p) {
    cz_image out = {0};
    uint8_t *enc = NULL;
    size_t len = 0;
    cz_status s = cz_cjob_finish(r->cz, &p->job, &out);
    if (s == CZ_OK)
        s = cz_image_encode_ex(&out, p->out_fmt, r->cfg->jpeg_quality, r->cfg->jpeg_optimize, &enc, &len);
    if (s == CZ_OK) s = cz_file_write_atomic(p->out_path, enc, len);
    if (s != CZ_OK) report(r, p->in_path, cz_error_detail());
    cli_progress_step(&r->prog, s == CZ_OK);
    free(enc);
    cz_image_free(&out);
}

static void flush_group(run_ctx *r, group *g) {
    if (!g->n) return;
    cz_cjob *jobs[1024];
    for (int i = 0; i < g->n; i++) jobs[i] = &g->items[i].job;
    cz_status s = cz_colorizer_run(r->cz, jobs, g->n);
    for (int i = 0; i < g->n; i++) {
        pending *p = &g->items[i];
        if (s == CZ_OK)
            finish_one(r, p);
        else {
            report(r, p->in_path, cz_error_detail());
            cli_progress_step(&r->prog, 0);
        }
        cz_cjob_release(&p->job);
        free(p->out_path);
    }
    g->n = 0;
}

static group *group_for(run_ctx *r, int w, int h) {
    for (int i = 0; i < r->ngroups; i++)
        if (r->groups[i].net_w == w && r->groups[i].net_h == h) return &r->groups[i];
    if (r->ngroups == (int)(sizeof r->groups / sizeof r->groups[0])) {
        /* too many distinct sizes: flush the first group and reuse its slot */
        group *g = &r->groups[0];
        flush_group(r, g);
        g->net_w = w;
        g->net_h = h;
        return g;
    }
    group *g = &r->groups[r->ngroups++];
    g->net_w = w;
    g->net_h = h;
    g->n = 0;
    g->items = calloc((size_t)r->max_batch, sizeof *g->items);
    return g->items ? g : NULL;
}

static const char *ext_of(cz_image_format f) { return f == CZ_FMT_PNG ? "png" : "jpg"; }

static char *output_path(const char *in, const char *out_dir, cz_image_format fmt) {
    char *copy = strdup(in);
    if (!copy) return NULL;
    char *base = basename(copy);
    char *dot = strrchr(base, '.');
    if (dot && dot != base) *dot = '\0';
    size_t n = strlen(out_dir) + strlen(base) + 16;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s.%s", out_dir, base, ext_of(fmt));
    free(copy);
    return p;
}

static void process_file(run_ctx *r, const char *path, const char *out_path, const char *out_dir,
                         cz_image_format forced_fmt, const cz_image_limits *lim) {
    uint8_t *data = NULL;
    size_t len = 0;
    cz_image img = {0};
    cz_image_format in_fmt = CZ_FMT_UNKNOWN;
    cz_status s = cz_file_read(path, (size_t)r->cfg->max_input_bytes, &data, &len);
    if (s == CZ_OK) s = cz_image_decode(data, len, lim, &img, &in_fmt);
    free(data);
    if (s != CZ_OK) {
        report(r, path, cz_error_detail());
        cli_progress_step(&r->prog, 0);
        return;
    }
    cz_image_format fmt = forced_fmt != CZ_FMT_UNKNOWN ? forced_fmt : in_fmt;
    cz_cjob job;
    s = cz_cjob_prepare(r->cz, &img, r->cfg->render, &job);
    cz_image_free(&img);
    group *g = NULL;
    if (s == CZ_OK) {
        g = group_for(r, job.geom.net_w, job.geom.net_h);
        if (!g) s = cz_error_set(CZ_ERR_NOMEM, "out of memory");
    }
    char *op = NULL;
    if (s == CZ_OK) {
        op = out_path ? strdup(out_path) : output_path(path, out_dir, fmt);
        if (!op) s = cz_error_set(CZ_ERR_NOMEM, "out of memory");
    }
    if (s != CZ_OK) {
        cz_cjob_release(&job);
        report(r, path, cz_error_detail());
        cli_progress_step(&r->prog, 0);
        return;
    }
    pending *p = &g->items[g->n++];
    p->job = job;
    p->in_path = path;
    p->out_path = op;
    p->out_fmt = fmt;
    if (g->n == r->max_batch) flush_group(r, g);
}

int cz_cmd_colorize(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},     {"backend", required_argument, 0, 'b'},
        {"render", required_argument, 0, 'r'},    {"format", required_argument, 0, 'f'},
        {"quality", required_argument, 0, 'q'},   {"output", required_argument, 0, 'o'},
        {"out-dir", required_argument, 0, 'd'},   {"precision", required_argument, 0, 'p'},
        {"batch", required_argument, 0, 'B'},     {"threads", required_argument, 0, 't'},
        {"config", required_argument, 0, 'c'},    {"log-level", required_argument, 0, 'L'},
        {0, 0, 0, 0}};
    const char *out = NULL, *out_dir = NULL, *format = NULL, *config_path = NULL;
    struct {
        const char *key, *val;
    } sets[16];
    int nsets = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:b:r:f:q:o:d:p:B:t:c:L:", opts, NULL)) != -1) {
        const char *key = NULL;
        switch (c) {
        case 'm': key = "model.path"; break;
        case 'b': key = "model.backend"; break;
        case 'r': key = "image.render"; break;
        case 'q': key = "image.jpeg_quality"; break;
        case 'p': key = "model.precision"; break;
        case 'B': key = "model.max_batch"; break;
        case 't': key = "model.threads"; break;
        case 'L': key = "log.level"; break;
        case 'f': format = optarg; break;
        case 'o': out = optarg; break;
        case 'd': out_dir = optarg; break;
        case 'c': config_path = optarg; break;
        default: fprintf(stderr, "colorize: see 'colorize --help'\n"); return 2;
        }
        if (key && nsets < 16) {
            sets[nsets].key = key;
            sets[nsets++].val = optarg;
        }
    }
    int nfiles = argc - optind;
    if (nfiles < 1) {
        fprintf(stderr, "colorize: no input files\n");
        return 2;
    }
    if ((out != NULL) == (out_dir != NULL)) {
        fprintf(stderr, "colorize: give exactly one of -o OUT (one input) or --out-dir DIR\n");
        return 2;
    }
    if (out && nfiles != 1) {
        fprintf(stderr, "colorize: -o takes one input file; use --out-dir for %d files\n", nfiles);
        return 2;
    }
    cz_image_format forced = CZ_FMT_UNKNOWN;
    if (format && (forced = cz_image_format_parse(format)) == CZ_FMT_UNKNOWN) {
        fprintf(stderr, "colorize: --format must be jpeg or png, not '%s'\n", format);
        return 2;
    }
    cz_config cfg;
    if (cli_load_config(&cfg, config_path)) return 2;
    for (int i = 0; i < nsets; i++)
        if (cz_config_set(&cfg, sets[i].key, sets[i].val) != CZ_OK) {
            fprintf(stderr, "colorize: %s\n", cz_error_detail());
            return 2;
        }
    if (cz_config_validate(&cfg) != CZ_OK) {
        fprintf(stderr, "colorize: %s\n", cz_error_detail());
        return 2;
    }
    cz_log_set_level((cz_log_level)cz_log_parse_level(cfg.log_level));
    if (out_dir) {
        struct stat st;
        if (stat(out_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
            fprintf(stderr, "colorize: --out-dir %s is not a directory\n", out_dir);
            return 2;
        }
    }
    if (out && forced == CZ_FMT_UNKNOWN) { /* infer the output format from -o's extension */
        const char *dot = strrchr(out, '.');
        if (dot) forced = cz_image_format_parse(dot + 1);
    }

    cz_backend_options bo = {.threads = cfg.threads};
    cz_backend *be = NULL;
    if (cz_backend_create(cfg.backend, &bo, &be) != CZ_OK) {
        fprintf(stderr, "colorize: backend %s: %s\n", cfg.backend, cz_error_detail());
        return 1;
    }
    int batch = cfg.max_batch < nfiles ? cfg.max_batch : nfiles;
    /* on a device that finishes jobs itself, page-locked memory for them (server.pinned_mb) */
    cz_host_pool *pool = NULL;
    if (be->ops->merge_lab && cfg.pinned_mb > 0 && cz_host_pool_create(be, (size_t)cfg.pinned_mb << 20, &pool) != CZ_OK)
        CZ_LOGW("cli", "server.pinned_mb: %s; the CPU finishes every image", cz_error_detail());
    cz_colorizer_opts co = {.max_batch = batch, .precision = (cz_dtype)cz_dtype_parse(cfg.precision), .pool = pool};
    cz_colorizer *cz = NULL;
    if (cz_colorizer_create(be, cfg.model_path, &co, &cz) != CZ_OK) {
        fprintf(stderr, "colorize: %s\n", cz_error_detail());
        cz_host_pool_destroy(pool);
        cz_backend_destroy(be);
        return 1;
    }
    if (cz_render_validate(cz, cfg.render) != CZ_OK) {
        fprintf(stderr, "colorize: %s\n", cz_error_detail());
        cz_colorizer_destroy(cz);
        cz_host_pool_destroy(pool);
        cz_backend_destroy(be);
        return 2;
    }
    cz_image_limits lim;
    cz_image_limits_default(&lim);
    lim.max_pixels = (uint64_t)cfg.max_pixels;
    lim.max_dimension = cfg.max_dimension;
    lim.max_jpeg_scans = cfg.max_jpeg_scans;

    run_ctx r = {.cz = cz, .cfg = &cfg, .max_batch = batch};
    cli_progress_start(&r.prog, nfiles);
    for (int i = optind; i < argc; i++) process_file(&r, argv[i], out, out_dir, forced, &lim);
    for (int i = 0; i < r.ngroups; i++) {
        flush_group(&r, &r.groups[i]);
        free(r.groups[i].items);
    }
    cli_progress_end(&r.prog);
    double el = cli_now() - r.prog.t0;
    CZ_LOGI("cli", "%d of %d images colorized in %.2f s", nfiles - r.failures, nfiles, el);
    cz_colorizer_destroy(cz);
    cz_host_pool_destroy(pool); /* every job has been released */
    cz_backend_destroy(be);
    return r.failures ? 1 : 0;
}
