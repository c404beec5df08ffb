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
 *   SIGHUP: the model file is loaded again ON THE DEVICE THREAD (cz_batcher_call, because the
 *     backend belongs to that thread), checked to have the same depth and channel layout as
 *     the one serving (jobs already prepared must stay valid), and swapped in between
 *     batches under the model write lock; on any failure the old model keeps serving and the
 *     reason is logged.
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

/* ---- SIGHUP reload (runs on the device thread) ---- */

typedef struct reload_ctx {
    srv_ctx *s;
    char err[600];
} reload_ctx;

static cz_status reload_on_device(cz_colorizer **czp, void *arg) {
    reload_ctx *rc = arg;
    srv_ctx *s = rc->s;
    cz_colorizer_opts co = {.max_batch = s->cfg.max_batch, .precision = (cz_dtype)cz_dtype_parse(s->cfg.precision)};
    cz_colorizer *fresh = NULL;
    cz_status st = cz_colorizer_create(s->be, s->cfg.model_path, &co, &fresh);
    if (st != CZ_OK) {
        snprintf(rc->err, sizeof rc->err, "%s", cz_error_detail());
        return st;
    }
    const cz_unet_arch *a = cz_colorizer_arch(*czp), *b = cz_colorizer_arch(fresh);
    if (a->depth != b->depth || a->in_ch != b->in_ch || a->out_ch != b->out_ch || a->mode != b->mode) {
        snprintf(rc->err, sizeof rc->err,
                 "%s: depth %d, %d->%d channels, %s; the model in service has depth %d, %d->%d channels, %s "
                 "(restart the daemon to change the architecture)",
                 s->cfg.model_path, b->depth, b->in_ch, b->out_ch, cz_color_mode_name(b->mode), a->depth, a->in_ch,
                 a->out_ch, cz_color_mode_name(a->mode));
        cz_colorizer_destroy(fresh);
        return CZ_ERR_BAD_WEIGHTS;
    }
    pthread_rwlock_wrlock(&s->cz_lock);
    cz_colorizer *old = *czp;
    *czp = fresh;
    s->cz = fresh;
    pthread_rwlock_unlock(&s->cz_lock);
    cz_colorizer_destroy(old);
    srv_model_snapshot(s, fresh);
    return CZ_OK;
}

static void reload(srv_ctx *s) {
    CZ_LOGI("main", "SIGHUP: reloading %s", s->cfg.model_path);
    reload_ctx rc = {.s = s};
    cz_status st = cz_batcher_call(s->batcher, reload_on_device, &rc);
    if (st != CZ_OK) {
        CZ_LOGE("main", "reload failed, the previous model keeps serving: %s",
                rc.err[0] ? rc.err : cz_strerror(st));
        return;
    }
    pthread_mutex_lock(&s->model_mu);
    char sum[40];
    memcpy(sum, s->model_checksum, sizeof sum);
    pthread_mutex_unlock(&s->model_mu);
    CZ_LOGI("main", "model reloaded from %s (checksum %s)", s->cfg.model_path, sum);
}

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

    cz_backend_options bo = {.threads = s.cfg.threads};
    if (cz_backend_create(s.cfg.backend, &bo, &s.be) != CZ_OK) {
        CZ_LOGE("main", "backend %s: %s", s.cfg.backend, cz_error_detail());
        return 1;
    }
    s.backend_name = s.be->ops->name;
    int prec = cz_dtype_parse(s.cfg.precision);
    cz_colorizer_opts co = {.max_batch = s.cfg.max_batch, .precision = (cz_dtype)(prec < 0 ? 0 : prec)};
    if (cz_colorizer_create(s.be, s.cfg.model_path, &co, &s.cz) != CZ_OK) {
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
        .max_wait_us = s.cfg.max_wait_us,
        .max_queue = s.cfg.max_queue,
        .high_water = s.cfg.queue_high_water,
        .warmup_render = s.cfg.render,
    };
    if (cz_batcher_create(s.cz, &bopt, &s.batcher) != CZ_OK) {
        CZ_LOGE("main", "cannot start the batcher: %s", cz_error_detail());
        cz_colorizer_destroy(s.cz); /* still ours when create fails */
        cz_backend_destroy(s.be);
        return 1;
    }
    if (srv_http_start(&s) != CZ_OK) {
        CZ_LOGE("main", "%s", cz_error_detail());
        cz_batcher_destroy(s.batcher);
        cz_backend_destroy(s.be);
        return 1;
    }
    char where[96];
    listen_text(&s, where, sizeof where);
    CZ_LOGI("main", "listening on %s", where);
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
    cz_backend_destroy(s.be);
    free(s.model_json);
    pthread_rwlock_destroy(&s.cz_lock);
    pthread_mutex_destroy(&s.model_mu);
    close(sfd);
    CZ_LOGI("main", "exiting");
    return 0;
}
