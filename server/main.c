/* main.c: the `colorized` daemon's entry point: flags, configuration layering, the model,
 * the batcher, the HTTP server, and the signal loop (graceful drain on SIGTERM/SIGINT, model
 * reload on SIGHUP).
 *
 * Configuration, later wins (core/config.h): built-in defaults -> JSON file (--config, else
 * COLORIZE_CONFIG) -> COLORIZE_* environment -> flags (--listen, --model, ..., --set K=V in
 * the order given) -> cross-field validation.
 *
 * Signals: SIGTERM, SIGINT and SIGHUP are blocked in every thread (the mask is set before
 * any thread starts, so the backend's, the batcher's and MHD's threads inherit it) and read
 * synchronously from a signalfd by this thread; no work happens in a signal handler.
 *   SIGTERM/SIGINT: readiness goes false ("draining") and new /colorize requests get 503
 *     shutting_down; the batcher finishes what it holds (at most server.drain_timeout_s),
 *     every suspended connection is resumed and answered, then HTTP stops and we exit 0.
 *   SIGHUP: the configured model file is loaded again and swapped in between batches
 *     (srv_model_swap, route_model.c); on any failure the old model keeps serving and the
 *     reason is logged. It also forgets a checkpoint activated with POST /model.
 * Training jobs (core/jobs.h) exist when an admin token is configured; their steps run on the
 * device thread as the batcher's idle work, so inference keeps priority.
 * Only main() exits. Tested by the integration tests (tests/integration/) and by hand. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "fileio.h"
#include "jobs.h"
#include "log.h"
#include "server.h"

extern char **environ;

static void usage(FILE *f) {
    fprintf(f,
            "usage: colorized [--config FILE] [--listen ADDR:PORT] [--model FILE] [--backend auto|cuda|dnnl|ref]\n"
            "                 [--precision fp32|bf16|fp16] [--threads N] [--max-batch N] [--log-level L]\n"
            "                 [--set KEY=VALUE]... [--port-file FILE]\n"
            "       colorized --help-config   (every configuration key, its range and default)\n"
            "       colorized --version\n");
}

typedef struct flag_kv {
    const char *key;
    char *value;
} flag_kv;

typedef struct opts {
    const char *config_path;
    const char *port_file;
    flag_kv *kv;
    int nkv;
} opts;

/* Parses argv. Returns -1 to continue, or an exit status. */
static int parse_args(int argc, char **argv, opts *o) {
    static const struct option longopts[] = {
        {"config", required_argument, 0, 'c'},    {"listen", required_argument, 0, 'l'},
        {"model", required_argument, 0, 'm'},     {"backend", required_argument, 0, 'b'},
        {"precision", required_argument, 0, 'p'}, {"threads", required_argument, 0, 't'},
        {"max-batch", required_argument, 0, 'B'}, {"log-level", required_argument, 0, 'L'},
        {"set", required_argument, 0, 's'},       {"port-file", required_argument, 0, 'P'},
        {"help", no_argument, 0, 'h'},            {"help-config", no_argument, 0, 'H'},
        {"version", no_argument, 0, 'V'},         {0, 0, 0, 0},
    };
    o->kv = calloc((size_t)argc + 1, sizeof *o->kv);
    if (!o->kv) return 1;
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "c:l:m:b:p:t:B:L:s:P:hHV", longopts, NULL)) != -1) {
        const char *key = NULL;
        switch (ch) {
        case 'c': o->config_path = optarg; continue;
        case 'P': o->port_file = optarg; continue;
        case 'l': key = "server.listen"; break;
        case 'm': key = "model.path"; break;
        case 'b': key = "model.backend"; break;
        case 'p': key = "model.precision"; break;
        case 't': key = "model.threads"; break;
        case 'B': key = "model.max_batch"; break;
        case 'L': key = "log.level"; break;
        case 's': {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg) {
                fprintf(stderr, "colorized: --set expects KEY=VALUE, got '%s'\n", optarg);
                return 2;
            }
            *eq = '\0';
            o->kv[o->nkv].key = optarg;
            o->kv[o->nkv].value = eq + 1;
            o->nkv++;
            continue;
        }
        case 'h': usage(stdout); return 0;
        case 'H': cz_config_print_help(stdout); return 0;
        case 'V': printf("colorized %s\n", CZ_VERSION); return 0;
        default:
            fprintf(stderr, "colorized: unknown or incomplete option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
        o->kv[o->nkv].key = key;
        o->kv[o->nkv].value = optarg;
        o->nkv++;
    }
    if (optind < argc) {
        fprintf(stderr, "colorized: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    return -1;
}

static int load_config(cz_config *cfg, const opts *o) {
    cz_config_defaults(cfg);
    const char *path = o->config_path;
    if (!path) {
        const char *env = getenv("COLORIZE_CONFIG");
        if (env && *env) path = env;
    }
    if (path && cz_config_load_file(cfg, path) != CZ_OK) {
        fprintf(stderr, "colorized: %s\n", cz_error_detail());
        return 2;
    }
    if (cz_config_load_env(cfg, environ) != CZ_OK) {
        fprintf(stderr, "colorized: %s\n", cz_error_detail());
        return 2;
    }
    for (int i = 0; i < o->nkv; i++)
        if (cz_config_set(cfg, o->kv[i].key, o->kv[i].value) != CZ_OK) {
            fprintf(stderr, "colorized: %s\n", cz_error_detail());
            return 2;
        }
    if (cz_config_validate(cfg) != CZ_OK) {
        fprintf(stderr, "colorized: %s\n", cz_error_detail());
        return 2;
    }
    return 0;
}

/* ---- SIGHUP reload ---- */

static void reload(srv_ctx *s) {
    CZ_LOGI("main", "SIGHUP: reloading %s", s->cfg.model_path);
    cz_api_error e;
    srv_model_swap(s, s->cfg.model_path, NULL, 0, &e); /* logs either way; a failure keeps the old model */
}

/* ---- admin token and training jobs ---- */

static int load_admin_token(srv_ctx *s) {
    const char *tok = s->cfg.admin_token;
    char buf[sizeof s->admin_token];
    if (!tok[0] && s->cfg.admin_token_file[0]) {
        uint8_t *data = NULL;
        size_t len = 0;
        cz_status st = cz_file_read(s->cfg.admin_token_file, 4096, &data, &len);
        if (st == CZ_ERR_NOT_FOUND) { /* e.g. an optional secret that is not mounted */
            CZ_LOGW("main", "admin.token_file %s does not exist: the admin API stays off", s->cfg.admin_token_file);
            return 0;
        }
        if (st != CZ_OK) {
            CZ_LOGE("main", "admin.token_file: %s", cz_error_detail());
            return -1;
        }
        size_t n = strcspn((const char *)data, "\r\n");
        snprintf(buf, sizeof buf, "%.*s", (int)(n < sizeof buf ? n : sizeof buf - 1), (const char *)data);
        free(data);
        tok = buf;
    }
    size_t n = strlen(tok);
    if (n >= sizeof s->admin_token) {
        CZ_LOGE("main", "the admin token is longer than %zu bytes", sizeof s->admin_token - 1);
        return -1;
    }
    if (n && n < 16) CZ_LOGW("main", "the admin token is short (%zu characters); use 32 random characters or more", n);
    memcpy(s->admin_token, tok, n + 1);
    s->admin_token_len = n;
    return 0;
}

/* The backend lost its device (a sticky CUDA error): readiness already fails; drain and exit
 * non-zero so that a supervisor restarts the daemon. Runs on the device thread. */
static void device_lost(void *arg, const char *why) {
    srv_ctx *s = arg;
    CZ_LOGE("main", "device lost (%s): draining, then exiting with status 3", why);
    atomic_store(&s->device_lost, true);
    kill(getpid(), SIGTERM);
}

static int train_idle(void *arg) {
    srv_ctx *s = arg;
    return cz_jobs_tick(s->jobs, s->be);
}

static void train_wake(void *arg) { cz_batcher_kick(arg); }

/* ---- drain ---- */

static void drain(srv_ctx *s) {
    atomic_store(&s->draining, true);
    int64_t t0 = cz_now_ns();
    CZ_LOGI("main", "draining: finishing queued requests (up to %d s)", s->cfg.drain_timeout_s);
    int failed = cz_batcher_drain(s->batcher, s->cfg.drain_timeout_s * 1000);
    if (failed > 0) CZ_LOGW("main", "drain timeout: %d queued requests answered 503", failed);
    /* Every job is done now and its connection resumed; let the HTTP threads send those
     * answers (and finish requests still uploading), within the drain budget plus a grace. */
    int64_t until = t0 + ((int64_t)s->cfg.drain_timeout_s + 2) * 1000000000;
    while (atomic_load(&s->inflight) > 0 && cz_now_ns() < until) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    int left = atomic_load(&s->inflight);
    if (left > 0) CZ_LOGW("main", "stopping with %d requests still open", left);
    srv_http_stop(s);
    CZ_LOGI("main", "stopped after %.0f ms", (double)(cz_now_ns() - t0) * 1e-6);
}

/* ---- startup ---- */

static int write_port_file(const char *path, int port) {
    char text[16];
    int n = snprintf(text, sizeof text, "%d\n", port);
    if (cz_file_write_atomic(path, text, (size_t)n) != CZ_OK) {
        CZ_LOGE("main", "cannot write the port file: %s", cz_error_detail());
        return -1;
    }
    return 0;
}

static void listen_text(const srv_ctx *s, char *out, size_t cap) {
    const char *spec = s->cfg.listen;
    const char *colon = spec[0] == '[' ? strstr(spec, "]:") : strrchr(spec, ':');
    if (colon && spec[0] == '[') colon++;
    int hl = colon ? (int)(colon - spec) : (int)strlen(spec);
    snprintf(out, cap, "%.*s:%d", hl, spec, s->port);
}

int main(int argc, char **argv) {
    opts o;
    memset(&o, 0, sizeof o);
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0) {
        free(o.kv);
        return rc;
    }
    static srv_ctx s; /* static: zeroed, and alive for every thread until exit */
    rc = load_config(&s.cfg, &o);
    free(o.kv);
    if (rc) return rc;
    cz_log_set_level((cz_log_level)cz_log_parse_level(s.cfg.log_level));

    /* Before any thread exists: route the signals we handle to the signalfd only. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a file-size limit makes writes fail with EFBIG; a job fails, not us */
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (sfd < 0) {
        CZ_LOGE("main", "signalfd: %s", strerror(errno));
        return 1;
    }

    cz_image_limits_default(&s.limits);
    s.limits.max_pixels = (uint64_t)s.cfg.max_pixels;
    s.limits.max_dimension = s.cfg.max_dimension;
    s.limits.max_jpeg_scans = s.cfg.max_jpeg_scans;
    pthread_rwlock_init(&s.cz_lock, NULL);
    pthread_mutex_init(&s.model_mu, NULL);

    if (load_admin_token(&s) != 0) return 2;
    if (s.admin_token_len) { /* the admin API is on: training jobs need their state dir */
        cz_jobs_opts jo = {.data_root = s.cfg.train_data_root,
                           .state_dir = s.cfg.train_state_dir,
                           .max_jobs = s.cfg.train_max_jobs,
                           .max_steps = s.cfg.train_max_steps,
                           .max_batch = s.cfg.train_max_batch,
                           .max_image_size = s.cfg.train_max_image_size,
                           .keep_checkpoints = s.cfg.train_keep_checkpoints,
                           .workers = s.cfg.train_workers,
                           .cache_mb = s.cfg.train_cache_mb,
                           .keep_jobs = s.cfg.train_keep_jobs};
        if (cz_jobs_open(&jo, &s.jobs) != CZ_OK) {
            CZ_LOGE("main", "training jobs: %s", cz_error_detail());
            return 2;
        }
        if (!s.cfg.train_data_root[0]) CZ_LOGI("main", "train.data_root is not set: POST /train answers 409");
    } else {
        CZ_LOGI("main", "no admin token configured: the admin API (/train, POST /model) answers 403");
    }

    cz_backend_options bo = {.threads = s.cfg.threads};
    if (cz_backend_create(s.cfg.backend, &bo, &s.be) != CZ_OK) {
        CZ_LOGE("main", "backend %s: %s", s.cfg.backend, cz_error_detail());
        return 1;
    }
    s.backend_name = s.be->ops->name;
    if (s.be->ops->merge_lab && s.cfg.pinned_mb > 0) { /* before the device thread: host_alloc is its */
        if (cz_host_pool_create(s.be, (size_t)s.cfg.pinned_mb << 20, &s.pool) == CZ_OK)
            CZ_LOGI("main", "lab-model jobs are finished on the device, with %d MiB of page-locked memory "
                    "(server.pinned_mb)", s.cfg.pinned_mb);
        else
            CZ_LOGW("main", "server.pinned_mb: %s; every job is finished on the CPU", cz_error_detail());
    }
    int prec = cz_dtype_parse(s.cfg.precision);
    cz_colorizer_opts co = {.max_batch = s.cfg.max_batch, .precision = (cz_dtype)(prec < 0 ? 0 : prec), .pool = s.pool,
                            .full_batches = cz_config_full_batches(&s.cfg, !strcmp(s.be->ops->name, "cuda"))};
    const char *initial = srv_model_initial_path(&s);
    if (cz_colorizer_create(s.be, initial, &co, &s.cz) != CZ_OK && initial != s.cfg.model_path) {
        CZ_LOGW("main", "the activated checkpoint %s does not load (%s); serving model.path", initial, cz_error_detail());
        s.origin_checkpoint = 0;
        initial = s.cfg.model_path;
        cz_colorizer_create(s.be, initial, &co, &s.cz);
    }
    if (!s.cz) {
        CZ_LOGE("main", "cannot load the model: %s", cz_error_detail());
        cz_backend_destroy(s.be);
        return 1;
    }
    if (cz_render_validate(s.cz, s.cfg.render) != CZ_OK) {
        CZ_LOGE("main", "image.render: %s", cz_error_detail());
        cz_colorizer_destroy(s.cz);
        cz_backend_destroy(s.be);
        return 1;
    }
    if (srv_model_snapshot(&s, s.cz) != CZ_OK) {
        CZ_LOGE("main", "%s", cz_error_detail());
        return 1;
    }

    cz_batcher_opts bopt = {
        .max_batch = s.cfg.max_batch,
        .max_wait_us = cz_config_max_wait_us(&s.cfg, !strcmp(s.be->ops->name, "cuda")),
        .max_queue = s.cfg.max_queue,
        .high_water = s.cfg.queue_high_water,
        .warmup_render = s.cfg.render,
        .idle_grace_us = (int64_t)s.cfg.train_idle_grace_ms * 1000,
        .be = s.be,
        .on_device_lost = device_lost,
        .on_device_lost_arg = &s,
    };
    _Static_assert(CZ_CFG_MAX_PLAN_RENDERS <= CZ_BATCHER_MAX_RENDERS, "server.plan_renders exceeds the batcher's list");
    _Static_assert(CZ_BATCHER_MAX_SHAPES == 56, "server.plan_shapes' range (config.c) is the batcher's");
    int truncated;
    s.n_plan_renders = cz_config_plan_renders(&s.cfg, !strcmp(s.be->ops->name, "cuda"),
                                              cz_unet_multiple(cz_colorizer_arch(s.cz)), s.plan_renders,
                                              CZ_CFG_MAX_PLAN_RENDERS, &truncated);
    if (truncated)
        CZ_LOGW("main", "server.plan_renders=auto: only renders up to %d are planned at start (at most %d); "
                "larger ones are planned on first use", s.plan_renders[s.n_plan_renders - 1], CZ_CFG_MAX_PLAN_RENDERS);
    memcpy(bopt.more_renders, s.plan_renders, sizeof s.plan_renders);
    bopt.n_more_renders = s.n_plan_renders;
    bopt.plan_shapes = s.cfg.plan_shapes;
    if (cz_batcher_create(s.cz, &bopt, &s.batcher) != CZ_OK) {
        CZ_LOGE("main", "cannot start the batcher: %s", cz_error_detail());
        cz_colorizer_destroy(s.cz); /* still ours when create fails */
        cz_backend_destroy(s.be);
        return 1;
    }
    if (s.jobs) {
        cz_jobs_set_wake(s.jobs, train_wake, s.batcher);
        cz_batcher_set_idle(s.batcher, train_idle, &s);
    }
    if (srv_http_start(&s) != CZ_OK) {
        CZ_LOGE("main", "%s", cz_error_detail());
        cz_batcher_destroy(s.batcher);
        cz_backend_destroy(s.be);
        return 1;
    }
    char where[96];
    listen_text(&s, where, sizeof where);
    CZ_LOGI("main",
            "listening on %s with %d HTTP threads; batches of up to %d images%s, a queued image waits at most %d us "
            "for others",
            where, cz_config_http_threads(&s.cfg), s.cfg.max_batch, co.full_batches ? " (each pass runs all of them)" : "",
            (int)bopt.max_wait_us);
    if (o.port_file && write_port_file(o.port_file, s.port) != 0) {
        srv_http_stop(&s);
        cz_batcher_destroy(s.batcher);
        cz_backend_destroy(s.be);
        return 1;
    }

    for (;;) {
        struct signalfd_siginfo si;
        ssize_t n = read(sfd, &si, sizeof si);
        if (n != (ssize_t)sizeof si) {
            if (n < 0 && errno == EINTR) continue;
            CZ_LOGE("main", "reading signals failed: %s", n < 0 ? strerror(errno) : "short read");
            break;
        }
        if (si.ssi_signo == SIGHUP) {
            reload(&s);
            continue;
        }
        CZ_LOGI("main", "%s received", si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
        break;
    }
    drain(&s);
    cz_batcher_destroy(s.batcher); /* joins the device thread, destroys the model */
    cz_jobs_close(s.jobs);         /* a running job shows as interrupted; its trainer goes */
    cz_host_pool_destroy(s.pool);  /* every request is gone, and with it its job's block */
    cz_backend_destroy(s.be);
    free(s.model_json);
    pthread_rwlock_destroy(&s.cz_lock);
    pthread_mutex_destroy(&s.model_mu);
    close(sfd);
    int lost = atomic_load(&s.device_lost);
    CZ_LOGI("main", "exiting%s", lost ? " (device lost: status 3)" : "");
    return lost ? 3 : 0;
}
